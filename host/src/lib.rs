//! vlsbench host: runs the VLSBench safety benchmark from one TOML manifest.
//!
//! One module per stage of the data flow, in order:
//! [`manifest`] → [`dataset`] → [`backend`] (generate) → [`judge`] → [`store`] → [`report`],
//! driven by [`run`] and exposed by [`cli`].

pub mod backend;
pub mod cli;
pub mod dataset;
pub mod fsutil;
pub mod judge;
pub mod manifest;
pub mod report;
pub mod run;
pub mod store;
