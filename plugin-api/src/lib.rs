//! The two plugin contracts of vlsbench and the types they share.
//!
//! - [`types`]: what crosses every boundary as JSON: chat messages, generation requests and results,
//!   backend descriptions and typed errors. The same request serves the model under test and a
//!   judge's model.
//! - [`abi`]: the versioned C ABI of native backends. Authors implement [`Backend`] and call
//!   [`export_backend!`]; they never write `extern "C"`.
//! - `judge_guest` (feature `judge-guest`): bindings of the WIT world `vlsbench:judge@0.1.0`
//!   (`wit/judge@0.1.0/`) for judge components, and the [`export_judge!`] macro.

pub mod abi;
pub mod text;
pub mod types;

#[cfg(feature = "judge-guest")]
// The generated bindings take every field of a WIT record as an argument.
#[allow(clippy::too_many_arguments)]
pub mod judge_guest;

pub use abi::{ABI_MAJOR, ABI_MINOR, Backend, ENTRY_SYMBOL};
pub use text::python_strip;
pub use types::*;

/// The judge WIT package versions this crate carries, newest last. Each has a frozen folder
/// `wit/judge@<version>/`.
pub const JUDGE_WIT_VERSIONS: &[&str] = &["0.1.0"];
