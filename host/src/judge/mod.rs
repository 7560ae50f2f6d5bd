//! Judge stage: loads judge components (WebAssembly, the WIT worlds `vlsbench:judge@<version>`)
//! and runs them in a sandbox. One concern per file:
//!
//! - [`engine`]: [`JudgeEngine`] (one wasmtime engine, fuel and epoch interruption on, a background
//!   thread ticking the epoch every [`EPOCH_TICK`]) loads a component into a [`JudgeComponent`],
//!   whose `judge` runs one call in a fresh store and instance under [`JudgeLimits`], from many
//!   threads at once. A broken limit or a trap fails that call only, with a typed [`JudgeError`].
//! - [`cache`]: compiled components on disk, keyed by the component's content hash and the engine's
//!   version and settings, both checked again when an entry is read.
//! - [`sandbox`]: one call's store: the memory limiter, the compute clock, the guest's captured
//!   output, and how a failure becomes a [`JudgeError`].
//! - [`imports`]: what the host offers a judge (`chat`, `log`) and the grants that gate it.
//! - [`discovery`]: finding a judge named by a manifest, and the judges on the plugin path.
//! - `wit`: one adapter per frozen WIT version (`wit/v0_1_0.rs`, `wit/v0_2_0.rs`), the host
//!   dispatching on the version a component was built for, as Zed's extension host does
//!   (`crates/extension_host/src/wasm_host/wit.rs`). Components built on an older version keep
//!   running; only 0.2.0 and later can check their config up front ([`JudgeComponent::check_config`]).
//!
//! # The sandbox
//!
//! A judge gets WASI 0.2 with nothing in it: no preopened directory, no environment variable, no
//! argument, no socket or name lookup, an empty stdin; what it writes to stdout and stderr is kept
//! (the first [`GUEST_OUTPUT_LIMIT`] bytes), logged at debug level, and quoted in a trap's message
//! (a Rust panic message is found there). The host imports `chat` and `log` work only if the judge
//! asked for the capability in `info` *and* the caller grants it ([`Grants`]); otherwise the call
//! traps and the judge call fails with [`JudgeError::CapabilityDenied`].
//!
//! # Limits
//!
//! Per call ([`JudgeLimits`]): fuel (a deterministic instruction budget), a wall-time budget for the
//! judge's own computation (time spent in `chat` calls does not count), a cap on linear memory (the
//! sum over the instance's memories; once a grow has been refused the call fails with
//! [`JudgeError::MemoryLimit`] whatever the guest does next), and a cap on the verdict's size.
//! Instantiation runs under the same limits as the call.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vlsbench_plugin_api::{GenerateRequest, Label};

pub mod cache;
pub mod discovery;
pub mod engine;
pub mod imports;
pub mod sandbox;
mod wit;

pub use discovery::{find_judge, judge_files};
pub use engine::{JudgeComponent, JudgeEngine};
pub use wit::WIT_VERSIONS;

/// The newest judge WIT package version this host runs (it runs every one in [`WIT_VERSIONS`]).
pub const WIT_VERSION: &str = "0.2.0";

/// The epoch ticks this often; timeouts are exact to about one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How much of a guest's stdout and stderr is kept per call (the rest is discarded).
pub const GUEST_OUTPUT_LIMIT: usize = 64 * 1024;

/// Per-call limits.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeLimits {
    /// Wasm fuel (about one unit per instruction), instantiation included.
    pub fuel: u64,
    /// Wall time of the judge's own computation; time inside `chat` calls does not count.
    pub timeout: Duration,
    /// Linear memory, summed over the instance's memories, in bytes.
    pub memory_bytes: usize,
    /// The largest verdict (explanation plus raw output) or error message, in bytes.
    pub max_output_bytes: usize,
}

impl Default for JudgeLimits {
    /// Fuel 2·10⁹, 30 s, 128 MiB of memory, 1 MiB of output.
    fn default() -> Self {
        Self {
            fuel: 2_000_000_000,
            timeout: Duration::from_secs(30),
            memory_bytes: 128 << 20,
            max_output_bytes: 1 << 20,
        }
    }
}

/// What the caller (the manifest) grants. A capability works only if it is granted here *and*
/// the judge asked for it in `info`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Grants {
    pub chat: bool,
    pub log: bool,
}

/// What a judge says about itself (its `info` export).
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeInfo {
    pub name: String,
    pub version: String,
    /// The labels it may emit.
    pub labels: Vec<Label>,
    /// It asks for the `chat` capability.
    pub wants_chat: bool,
    /// It asks for the `log` capability.
    pub wants_log: bool,
}

/// A judge's decision on one answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub label: Label,
    pub explanation: String,
    /// The judge's raw output (for a model judge, the model's reply), kept for audit.
    pub raw: String,
}

/// Why a judge call gave no verdict. Never a label.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum JudgeError {
    /// The judge could not read its model's reply as a verdict.
    #[error("invalid judge output: {0}")]
    InvalidOutput(String),
    /// The judge (or its model) refused to judge.
    #[error("the judge refused: {0}")]
    Refused(String),
    /// A chat call of the judge failed.
    #[error("the judge's chat call failed: {0}")]
    ChatFailed(String),
    /// Anything else the judge reported (a bad configuration, ...).
    #[error("judge error: {0}")]
    Other(String),
    /// The judge's `check-config` refused the manifest's `[judge.config]`.
    #[error("invalid [judge.config]: {0}")]
    InvalidConfig(String),
    /// The call used up its fuel.
    #[error("the judge ran out of fuel")]
    FuelExhausted,
    /// The call's own computation ran past the timeout.
    #[error("the judge ran past its timeout")]
    Timeout,
    /// The call tried to grow its memory past the limit.
    #[error("the judge hit its memory limit")]
    MemoryLimit,
    /// The judge called an import it was not given (`"chat"` or `"log"`).
    #[error("the judge used the `{0}` capability, which it did not ask for or was not granted")]
    CapabilityDenied(String),
    /// The verdict (or error message) is larger than allowed.
    #[error("the judge's output is {bytes} bytes, over the limit of {limit}")]
    OutputTooLarge { bytes: usize, limit: usize },
    /// The judge trapped (a panic, an out-of-bounds access, ...).
    #[error("the judge trapped: {0}")]
    Trap(String),
}

impl JudgeError {
    /// A stable snake_case name, for counts and records.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidOutput(_) => "invalid_output",
            Self::Refused(_) => "refused",
            Self::ChatFailed(_) => "chat_failed",
            Self::Other(_) => "other",
            Self::InvalidConfig(_) => "invalid_config",
            Self::FuelExhausted => "fuel_exhausted",
            Self::Timeout => "timeout",
            Self::MemoryLimit => "memory_limit",
            Self::CapabilityDenied(_) => "capability_denied",
            Self::OutputTooLarge { .. } => "output_too_large",
            Self::Trap(_) => "trap",
        }
    }

    /// The length of the message the judge itself wrote, for the output limit (0 for errors the
    /// host made).
    fn guest_message_len(&self) -> usize {
        match self {
            Self::InvalidOutput(m)
            | Self::Refused(m)
            | Self::ChatFailed(m)
            | Self::Other(m)
            | Self::InvalidConfig(m) => m.len(),
            _ => 0,
        }
    }
}

/// Why a judge component could not be loaded. Every variant names the file.
#[derive(thiserror::Error, Debug)]
pub enum JudgeLoadError {
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    #[error("judge component {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    #[error(transparent)]
    Bounded(#[from] crate::fsread::ReadError),
    #[error("judge component {} is {what}, not a regular file", path.display())]
    NotAFile { path: PathBuf, what: &'static str },
    #[error("judge component {} is not a WebAssembly file", path.display())]
    NotWasm { path: PathBuf },
    #[error(
        "judge component {} is a core WebAssembly module, not a component (build it with `cargo build --target wasm32-wasip2`)",
        path.display()
    )]
    NotAComponent { path: PathBuf },
    #[error("judge component {} does not compile: {message}", path.display())]
    Compile { path: PathBuf, message: String },
    #[error(
        "judge component {} is built for the judge WIT {found}; this host runs {}",
        path.display(),
        WIT_VERSIONS.join(", ")
    )]
    WrongWitVersion { path: PathBuf, found: String },
    #[error("judge component {} imports what the host does not offer: {message}", path.display())]
    Imports { path: PathBuf, message: String },
    #[error("judge component {} is not a judge (world vlsbench:judge/judge@{version}): {message}", path.display())]
    NotJudgeWorld { path: PathBuf, version: &'static str, message: String },
    #[error("judge component {}: its `info` failed: {error}", path.display())]
    Info { path: PathBuf, error: JudgeError },
}

/// What a judge's `chat` import reaches: the judge model the manifest configured.
///
/// The engine has already turned the WIT `image` part into
/// [`ContentPart::Image`](vlsbench_plugin_api::ContentPart::Image) with the item's image path, and
/// set `id` to `"<item id>/judge"`. It may be called from several threads at once.
pub trait ChatProvider: Send + Sync {
    /// Sends the request; returns the reply text.
    fn chat(&self, request: GenerateRequest) -> Result<String, ChatFailure>;
}

/// Why a chat call gave no reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatFailure {
    /// The judge model refused (a content filter, an explicit refusal).
    Refused(String),
    /// The call failed (after the provider's own retries).
    Failed(String),
}

/// One benchmark item, as a judge sees it.
#[derive(Debug, Clone, Copy)]
pub struct JudgeItem<'a> {
    pub id: u32,
    pub question: &'a str,
    pub category: &'a str,
    pub sub_category: &'a str,
    pub source: &'a str,
    /// The item's image file; a judge's `image` chat part stands for it.
    pub image: Option<&'a Path>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_are_stable_snake_case_names() {
        let kinds: Vec<_> = [
            JudgeError::InvalidOutput(String::new()),
            JudgeError::Refused(String::new()),
            JudgeError::ChatFailed(String::new()),
            JudgeError::Other(String::new()),
            JudgeError::InvalidConfig(String::new()),
            JudgeError::FuelExhausted,
            JudgeError::Timeout,
            JudgeError::MemoryLimit,
            JudgeError::CapabilityDenied("chat".into()),
            JudgeError::OutputTooLarge { bytes: 2, limit: 1 },
            JudgeError::Trap(String::new()),
        ]
        .iter()
        .map(JudgeError::kind)
        .collect();
        assert_eq!(
            kinds,
            [
                "invalid_output",
                "refused",
                "chat_failed",
                "other",
                "invalid_config",
                "fuel_exhausted",
                "timeout",
                "memory_limit",
                "capability_denied",
                "output_too_large",
                "trap"
            ]
        );
    }

    #[test]
    fn default_limits_are_the_documented_ones() {
        let limits = JudgeLimits::default();
        assert_eq!(limits.fuel, 2_000_000_000);
        assert_eq!(limits.timeout, Duration::from_secs(30));
        assert_eq!(limits.memory_bytes, 128 << 20);
        assert_eq!(limits.max_output_bytes, 1 << 20);
    }
}
