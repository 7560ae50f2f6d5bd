//! The two plugin contracts of vlsbench and the types they share.
//!
//! - [`types`]: what crosses every boundary as JSON: chat messages, generation requests and results,
//!   backend descriptions and typed errors. The same request serves the model under test and a
//!   judge's model.
//! - [`abi`]: the versioned C ABI of native backends. Authors implement [`Backend`] and call
//!   [`export_backend!`]; they never write `extern "C"`. [`BackendConfig::options`] reads the
//!   backend's own options into a serde type.
//! - `judge` (feature `judge-guest`): the judge SDK. Authors implement `judge::Judge` over this
//!   crate's types and call `export_judge!`, which targets the WIT world `vlsbench:judge@0.2.0`
//!   (`wit/judge@0.2.0/`); the generated bindings stay hidden.
//! - [`options`]: a plugin's options table read into a serde type, unknown keys refused by name.
//! - [`text`]: rules every side shares, such as Python's `str.strip()` ([`python_strip`]).

#![deny(missing_docs)]

pub mod abi;
#[cfg(feature = "judge-guest")]
pub mod judge;
pub mod options;
pub mod text;
pub mod types;

pub use abi::{ABI_MAJOR, ABI_MINOR, Backend, ENTRY_SYMBOL};
pub use text::python_strip;
pub use types::*;

/// wit-bindgen, for a component that generates its own bindings of a frozen WIT version (the host's
/// compatibility fixture built on 0.1.0). Judges use [`judge`] instead.
#[cfg(feature = "judge-guest")]
#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// The judge WIT package versions this crate carries, oldest first. Each has a frozen folder
/// `wit/judge@<version>/`; the SDK targets the last.
pub const JUDGE_WIT_VERSIONS: &[&str] = &["0.1.0", "0.2.0"];
