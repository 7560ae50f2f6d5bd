//! vlsbench host: runs the VLSBench safety benchmark from one TOML manifest.
//!
//! One module per stage of the data flow, in order:
//! [`manifest`] → [`dataset`] → [`backend`] (generate) → [`judge`] → [`store`] → [`report`],
//! driven by [`run`] and exposed by [`cli`]. Two helpers every stage uses: [`fsread`] (every file
//! read from outside is a regular file read under a size limit) and [`secrets`] (the values of the
//! API-key variables the host read, redacted from everything it writes).

pub mod backend;
pub mod cli;
pub mod dataset;
pub mod fsread;
pub mod fsutil;
pub mod judge;
pub mod manifest;
pub mod report;
pub mod run;
pub mod secrets;
pub mod serve;
pub mod shard;
pub mod store;
