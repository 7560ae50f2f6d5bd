//! Judge stage: loads judge components (WebAssembly, WIT world `vlsbench:judge@0.1.0`) and runs
//! them in a sandbox.
//!
//! - [`JudgeEngine`] owns one wasmtime engine (fuel and epoch interruption on, a background thread
//!   ticking the epoch every [`EPOCH_TICK`]) and a cache of compiled components
//!   (`<cache_dir>/<sha256 of the .wasm>-wasmtime48.cwasm`).
//! - [`JudgeEngine::load`] reads, hashes, compiles (or takes from the cache) and pre-links a
//!   component, then calls its `info` once: a [`JudgeComponent`].
//! - [`JudgeComponent::judge`] runs one call in a fresh store and instance, under [`JudgeLimits`];
//!   it may be called from many threads at once. A broken limit or a trap fails that call only,
//!   with a typed [`JudgeError`].
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

use std::fmt;
use std::fs;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use vlsbench_plugin_api::{ChatMessage, ContentPart, GenerateRequest, GenerationSettings, Label, Role};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Host bindings generated from the frozen WIT world.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../plugin-api/wit/judge@0.1.0",
        world: "judge",
        imports: { default: trappable },
    });
}

use bindings::vlsbench::judge::types as wit;
use bindings::{Judge, JudgePre};

/// The judge WIT package version this host runs.
pub const WIT_VERSION: &str = "0.1.0";

/// The epoch ticks this often; timeouts are exact to about one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How much of a guest's stdout and stderr is kept per call (the rest is discarded).
pub const GUEST_OUTPUT_LIMIT: usize = 64 * 1024;

/// The longest `log` line kept (longer ones are cut), and the most lines one call may write.
const LOG_LINE_LIMIT: usize = 4096;
const LOG_LINES_PER_CALL: usize = 1000;

/// The most elements a table may hold, the most core instances, memories and tables per store.
const TABLE_ELEMENTS_LIMIT: usize = 1 << 20;
const INSTANCES_LIMIT: usize = 256;
const MEMORIES_LIMIT: usize = 16;
const TABLES_LIMIT: usize = 256;

/// The trailer that closes a cache file: the SHA-256 of the serialized component, then this tag.
const CACHE_TAG: &[u8; 16] = b"vlsbench-cwasm-1";

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
            Self::FuelExhausted => "fuel_exhausted",
            Self::Timeout => "timeout",
            Self::MemoryLimit => "memory_limit",
            Self::CapabilityDenied(_) => "capability_denied",
            Self::OutputTooLarge { .. } => "output_too_large",
            Self::Trap(_) => "trap",
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
        "judge component {} is built for the judge WIT {found}; this host runs {WIT_VERSION}",
        path.display()
    )]
    WrongWitVersion { path: PathBuf, found: String },
    #[error("judge component {} imports what the host does not offer: {message}", path.display())]
    Imports { path: PathBuf, message: String },
    #[error(
        "judge component {} is not a judge (world vlsbench:judge/judge@{WIT_VERSION}): {message}",
        path.display()
    )]
    NotJudgeWorld { path: PathBuf, message: String },
    #[error("judge component {}: its `info` failed: {error}", path.display())]
    Info { path: PathBuf, error: JudgeError },
}

/// What a judge's `chat` import reaches: the judge model the manifest configured.
///
/// The engine has already turned the WIT `image` part into [`ContentPart::Image`] with the item's
/// image path, and set `id` to `"<item id>/judge"`. It may be called from several threads at once.
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

/// The wasmtime engine that loads and runs judge components. Cheap to clone (shared state).
#[derive(Clone)]
pub struct JudgeEngine {
    engine: Engine,
    linker: Arc<Linker<CallState>>,
    cache_dir: Option<PathBuf>,
}

impl fmt::Debug for JudgeEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JudgeEngine").field("cache_dir", &self.cache_dir).finish_non_exhaustive()
    }
}

impl JudgeEngine {
    /// An engine caching compiled components in `cache_dir`, or by default in
    /// `$XDG_CACHE_HOME/vlsbench` (`~/.cache/vlsbench`); without either variable, nothing is cached.
    /// The folder is created when first written; a cache that cannot be written only costs time.
    ///
    /// Starts a background thread that ticks the epoch every [`EPOCH_TICK`] while the engine (or a
    /// clone, or a component loaded from it) lives.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, JudgeLoadError> {
        let mut config = Config::new();
        config.consume_fuel(true);
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let engine = Engine::new(&config).map_err(|e| JudgeLoadError::Engine(format!("{e:#}")))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| JudgeLoadError::Engine(format!("cannot link WASI: {e:#}")))?;
        Judge::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |state| state)
            .map_err(|e| JudgeLoadError::Engine(format!("cannot link the judge host: {e:#}")))?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("vlsbench-judge-epoch".to_owned())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| JudgeLoadError::Engine(format!("cannot start the epoch thread: {e}")))?;

        Ok(Self { engine, linker: Arc::new(linker), cache_dir: cache_dir.or_else(default_cache_dir) })
    }

    /// The folder compiled components are cached in, if any.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref()
    }

    /// The cache file of a component whose `.wasm` has this SHA-256 (hex).
    pub fn cache_path(&self, sha256: &str) -> Option<PathBuf> {
        self.cache_dir.as_ref().map(|dir| dir.join(format!("{sha256}-wasmtime48.cwasm")))
    }

    /// Loads a judge component: reads and hashes the file, compiles it (or deserializes it from
    /// the cache; a corrupt or stale cache entry is recompiled), links it, and calls its `info`.
    pub fn load(&self, wasm_path: &Path) -> Result<JudgeComponent, JudgeLoadError> {
        let path = wasm_path.to_path_buf();
        let bytes = crate::fsread::read(&path, crate::fsread::FileKind::JudgeComponent).map_err(|e| match e {
            crate::fsread::ReadError::NotRegular { path, what, .. } => JudgeLoadError::NotAFile { path, what },
            other => other.into(),
        })?;
        match bytes.get(..8) {
            Some([0, b'a', b's', b'm', _, _, 1, 0]) => {}
            Some([0, b'a', b's', b'm', _, _, 0, 0]) => return Err(JudgeLoadError::NotAComponent { path }),
            _ => return Err(JudgeLoadError::NotWasm { path }),
        }
        let sha256 = hex::encode(Sha256::digest(&bytes));

        let (component, from_cache) = self.compile(&path, &bytes, &sha256)?;
        check_wit_version(&self.engine, &component, &path)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| JudgeLoadError::Imports { path: path.clone(), message: format!("{e:#}") })?;
        let pre = JudgePre::new(pre)
            .map_err(|e| JudgeLoadError::NotJudgeWorld { path: path.clone(), message: format!("{e:#}") })?;

        let info = call_info(&pre).map_err(|error| JudgeLoadError::Info { path: path.clone(), error })?;
        if info.name.trim().is_empty() {
            return Err(JudgeLoadError::Info {
                path,
                error: JudgeError::Other("`info` returned an empty name".to_owned()),
            });
        }
        let component = JudgeComponent { inner: Arc::new(ComponentInner { pre, info, sha256, path, from_cache }) };
        tracing::debug!(
            path = %component.path().display(),
            name = %component.info().name,
            version = %component.info().version,
            from_cache,
            "loaded judge component"
        );
        Ok(component)
    }

    /// Compiles `bytes`, or deserializes them from the cache; returns whether the cache served.
    fn compile(&self, path: &Path, bytes: &[u8], sha256: &str) -> Result<(Component, bool), JudgeLoadError> {
        let cache_path = self.cache_path(sha256);
        if let Some(cache_path) = &cache_path
            && let Some(component) = self.read_cache(cache_path)
        {
            return Ok((component, true));
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| JudgeLoadError::Compile { path: path.to_path_buf(), message: format!("{e:#}") })?;
        if let Some(cache_path) = &cache_path {
            match component.serialize() {
                Ok(serialized) => {
                    if let Err(e) = write_cache(cache_path, &serialized) {
                        tracing::warn!(path = %cache_path.display(), "cannot write the judge cache: {e}");
                    }
                }
                Err(e) => tracing::warn!("cannot serialize the compiled judge: {e:#}"),
            }
        }
        Ok((component, false))
    }

    fn read_cache(&self, cache_path: &Path) -> Option<Component> {
        let file = fs::read(cache_path).ok()?;
        let Some(serialized) = check_cache_trailer(&file) else {
            tracing::warn!(path = %cache_path.display(), "corrupt judge cache entry; recompiling");
            return None;
        };
        // SAFETY: `Component::deserialize` runs the machine code it is given. These bytes were
        // written by `Component::serialize` of this host (their SHA-256, stored in the trailer, was
        // checked above, so they are not truncated or damaged), and wasmtime itself checks that
        // they come from the same wasmtime version, configuration and target. The cache folder
        // belongs to the user running the host, who could replace the host binary as well.
        match unsafe { Component::deserialize(&self.engine, serialized) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %cache_path.display(), "stale judge cache entry ({e:#}); recompiling");
                None
            }
        }
    }
}

/// `$XDG_CACHE_HOME/vlsbench`, else `$HOME/.cache/vlsbench`.
fn default_cache_dir() -> Option<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    non_empty("XDG_CACHE_HOME")
        .or_else(|| non_empty("HOME").map(|home| home.join(".cache")))
        .map(|dir| dir.join("vlsbench"))
}

/// The serialized component inside a cache file, if its trailer checks out.
fn check_cache_trailer(file: &[u8]) -> Option<&[u8]> {
    let body_len = file.len().checked_sub(32 + CACHE_TAG.len())?;
    let (body, trailer) = file.split_at(body_len);
    let (digest, tag) = trailer.split_at(32);
    (tag == CACHE_TAG && Sha256::digest(body).as_slice() == digest).then_some(body)
}

/// Writes `serialized` plus its trailer to a temporary file beside `cache_path`, then renames it
/// into place, so a reader never sees a half-written entry.
fn write_cache(cache_path: &Path, serialized: &[u8]) -> io::Result<()> {
    let dir = cache_path.parent().ok_or_else(|| io::Error::other("the cache path has no folder"))?;
    fs::create_dir_all(dir)?;
    let mut file = Vec::with_capacity(serialized.len() + 32 + CACHE_TAG.len());
    file.extend_from_slice(serialized);
    file.extend_from_slice(&Sha256::digest(serialized));
    file.extend_from_slice(CACHE_TAG);
    let tmp = dir.join(format!(
        ".{}.{}.{:x}.tmp",
        cache_path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id(),
        rand::random::<u64>()
    ));
    fs::write(&tmp, &file)?;
    fs::rename(&tmp, cache_path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Refuses a component that imports the judge interfaces of another WIT version.
fn check_wit_version(engine: &Engine, component: &Component, path: &Path) -> Result<(), JudgeLoadError> {
    let ty = component.component_type();
    for (name, _) in ty.imports(engine) {
        if let Some(found) = foreign_judge_version(name) {
            return Err(JudgeLoadError::WrongWitVersion { path: path.to_path_buf(), found: found.to_owned() });
        }
    }
    Ok(())
}

/// For an import of a judge interface (`vlsbench:judge/host@0.2.0`) of another version than
/// [`WIT_VERSION`], that version.
fn foreign_judge_version(import: &str) -> Option<&str> {
    let rest = import.strip_prefix("vlsbench:judge/")?;
    let version = rest.split_once('@').map_or("(unversioned)", |(_, v)| v);
    (version != WIT_VERSION).then_some(version)
}

/// A loaded judge component: linked, ready to instantiate, with its `info`. Cheap to clone; may be
/// used from many threads at once.
#[derive(Clone)]
pub struct JudgeComponent {
    inner: Arc<ComponentInner>,
}

struct ComponentInner {
    pre: JudgePre<CallState>,
    info: JudgeInfo,
    sha256: String,
    path: PathBuf,
    from_cache: bool,
}

impl fmt::Debug for JudgeComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JudgeComponent")
            .field("path", &self.inner.path)
            .field("sha256", &self.inner.sha256)
            .field("info", &self.inner.info)
            .finish_non_exhaustive()
    }
}

impl JudgeComponent {
    /// What the judge said about itself when loaded.
    pub fn info(&self) -> &JudgeInfo {
        &self.inner.info
    }

    /// The SHA-256 (lower-case hex) of the `.wasm` file as loaded.
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }

    /// The `.wasm` file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Whether the compiled code came from the cache rather than a fresh compilation.
    pub fn loaded_from_cache(&self) -> bool {
        self.inner.from_cache
    }

    /// Runs one judge call in a fresh Store/instance under the limits; callable concurrently from
    /// many threads.
    ///
    /// `config_json` is the manifest's `[judge.config]` as JSON text (`"{}"` when absent). `chat`
    /// serves the judge's `chat` calls if the capability is both wanted and granted. A broken limit
    /// or a trap fails this call only.
    pub fn judge(
        &self,
        config_json: &str,
        item: &JudgeItem,
        answer: &str,
        grants: Grants,
        limits: &JudgeLimits,
        chat: &dyn ChatProvider,
    ) -> Result<Verdict, JudgeError> {
        let info = &self.inner.info;
        let allow_chat = grants.chat && info.wants_chat;
        let allow_log = grants.log && info.wants_log;
        let wit_item = wit::Item {
            id: item.id,
            question: item.question.to_owned(),
            category: item.category.to_owned(),
            sub_category: item.sub_category.to_owned(),
            source: item.source.to_owned(),
            has_image: item.image.is_some(),
        };
        // The provider is only borrowed, while a store's data must be 'static: the judge's chat
        // calls are handed over a channel to a scoped thread that holds the borrow.
        std::thread::scope(|scope| {
            let chat_link = allow_chat.then(|| {
                let (jobs, queue) = mpsc::channel::<ChatJob>();
                scope.spawn(move || serve_chat(queue, chat));
                jobs
            });
            let context = CallContext {
                item_id: Some(item.id),
                image: item.image.map(Path::to_path_buf),
                chat: chat_link,
                log_allowed: allow_log,
            };
            let result = run_call(&self.inner.pre, &info.name, context, limits, |judge, store| {
                judge.call_judge(store, config_json, &wit_item, answer)
            })?;
            let verdict = match result {
                Ok(verdict) => verdict,
                Err(error) => {
                    let message_len = match &error {
                        wit::JudgeError::InvalidOutput(m)
                        | wit::JudgeError::Refused(m)
                        | wit::JudgeError::ChatFailed(m)
                        | wit::JudgeError::Other(m) => m.len(),
                    };
                    if message_len > limits.max_output_bytes {
                        return Err(JudgeError::OutputTooLarge { bytes: message_len, limit: limits.max_output_bytes });
                    }
                    return Err(match error {
                        wit::JudgeError::InvalidOutput(m) => JudgeError::InvalidOutput(m),
                        wit::JudgeError::Refused(m) => JudgeError::Refused(m),
                        wit::JudgeError::ChatFailed(m) => JudgeError::ChatFailed(m),
                        wit::JudgeError::Other(m) => JudgeError::Other(m),
                    });
                }
            };
            let bytes = verdict.explanation.len() + verdict.raw.len();
            if bytes > limits.max_output_bytes {
                return Err(JudgeError::OutputTooLarge { bytes, limit: limits.max_output_bytes });
            }
            Ok(Verdict { label: label_from_wit(verdict.label), explanation: verdict.explanation, raw: verdict.raw })
        })
    }
}

/// Calls `info` under the default limits, with nothing granted.
fn call_info(pre: &JudgePre<CallState>) -> Result<JudgeInfo, JudgeError> {
    let context = CallContext { item_id: None, image: None, chat: None, log_allowed: false };
    let limits = JudgeLimits::default();
    let info = run_call(pre, "", context, &limits, |judge, store| judge.call_info(store))?;
    let size = info.name.len() + info.version.len();
    if size > limits.max_output_bytes {
        return Err(JudgeError::OutputTooLarge { bytes: size, limit: limits.max_output_bytes });
    }
    Ok(JudgeInfo {
        name: info.name,
        version: info.version,
        labels: info.labels.into_iter().map(label_from_wit).collect(),
        wants_chat: info.capabilities.contains(&wit::Capability::Chat),
        wants_log: info.capabilities.contains(&wit::Capability::Log),
    })
}

/// Instantiates the component in a fresh store set up with `context` and `limits`, runs `call`,
/// and turns a trap or a broken limit into a [`JudgeError`].
fn run_call<R>(
    pre: &JudgePre<CallState>,
    judge_name: &str,
    context: CallContext,
    limits: &JudgeLimits,
    call: impl FnOnce(&Judge, &mut Store<CallState>) -> wasmtime::Result<R>,
) -> Result<R, JudgeError> {
    let output = CapturedOutput::new(GUEST_OUTPUT_LIMIT);
    let wasi = WasiCtx::builder()
        .stdout(output.clone())
        .stderr(output.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    let state = CallState {
        wasi,
        table: ResourceTable::new(),
        limiter: MemoryLimiter { max_bytes: limits.memory_bytes, used_bytes: 0, refused: false },
        context,
        judge_name: judge_name.to_owned(),
        clock: ComputeClock { started: Instant::now(), in_chat: Duration::ZERO, timeout: limits.timeout },
        denied: None,
        log_lines: 0,
    };
    let mut store = Store::new(pre.engine(), state);
    store.limiter(|state| &mut state.limiter);
    store.set_fuel(limits.fuel).map_err(|e| JudgeError::Trap(format!("cannot set fuel: {e:#}")))?;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|context| Ok(context.data().clock.on_deadline()));

    let outcome = pre.instantiate(&mut store).and_then(|judge| call(&judge, &mut store));
    let state = store.data();
    let guest_output = output.contents();
    if !guest_output.is_empty() {
        tracing::debug!(
            judge = %state.judge_name,
            item = ?state.context.item_id,
            "judge output: {}",
            String::from_utf8_lossy(&guest_output).trim_end()
        );
    }
    match outcome {
        // A refused memory grow fails the call even if the guest carried on.
        Ok(_) if state.limiter.refused => Err(JudgeError::MemoryLimit),
        Ok(value) => Ok(value),
        Err(error) => Err(classify_failure(&error, state, &guest_output)),
    }
}

/// Maps a failed instantiation or call to its [`JudgeError`], the most telling cause first.
fn classify_failure(error: &wasmtime::Error, state: &CallState, guest_output: &[u8]) -> JudgeError {
    if let Some(denied) = error.downcast_ref::<CapabilityDeniedTrap>() {
        return JudgeError::CapabilityDenied(denied.0.to_owned());
    }
    if let Some(capability) = state.denied {
        return JudgeError::CapabilityDenied(capability.to_owned());
    }
    if state.limiter.refused {
        return JudgeError::MemoryLimit;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => return JudgeError::FuelExhausted,
        Some(Trap::Interrupt) => return JudgeError::Timeout,
        _ => {}
    }
    let mut message = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{error:#}"),
    };
    let tail = last_lines(guest_output, 1024);
    if !tail.is_empty() {
        message.push_str("; judge output: ");
        message.push_str(&tail);
    }
    JudgeError::Trap(message)
}

/// The last `max` bytes (about) of `output`, as one trimmed line.
fn last_lines(output: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(output);
    let text = text.trim();
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].split_whitespace().collect::<Vec<_>>().join(" ")
}

fn label_from_wit(label: wit::Label) -> Label {
    match label {
        wit::Label::SafeRefusal => Label::SafeRefusal,
        wit::Label::SafeWarning => Label::SafeWarning,
        wit::Label::Unsafe => Label::Unsafe,
    }
}

/// What the guest's `chat` import sends to the provider's thread: the request and where to reply.
type ChatJob = (GenerateRequest, mpsc::Sender<Result<String, ChatFailure>>);

/// Serves chat jobs until the store (holding the sender) is dropped. A panicking provider fails
/// the chat call instead of the host.
fn serve_chat(queue: mpsc::Receiver<ChatJob>, provider: &dyn ChatProvider) {
    for (request, reply) in queue {
        let result = catch_unwind(AssertUnwindSafe(|| provider.chat(request)))
            .unwrap_or_else(|_| Err(ChatFailure::Failed("the chat provider panicked".to_owned())));
        let _ = reply.send(result);
    }
}

/// The per-call facts the host imports need.
struct CallContext {
    /// `None` while calling `info`.
    item_id: Option<u32>,
    image: Option<PathBuf>,
    /// Where chat jobs go; `None` when chat is not allowed.
    chat: Option<mpsc::Sender<ChatJob>>,
    log_allowed: bool,
}

/// The data of one call's store.
struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    context: CallContext,
    judge_name: String,
    clock: ComputeClock,
    /// The capability a denied import call asked for.
    denied: Option<&'static str>,
    log_lines: usize,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// The error a denied import call traps with; found again by downcasting after the trap.
#[derive(Debug)]
struct CapabilityDeniedTrap(&'static str);

impl fmt::Display for CapabilityDeniedTrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "capability `{}` denied", self.0)
    }
}

impl std::error::Error for CapabilityDeniedTrap {}

impl CallState {
    fn deny(&mut self, capability: &'static str) -> wasmtime::Error {
        self.denied = Some(capability);
        wasmtime::Error::new(CapabilityDeniedTrap(capability))
    }

    /// The host's form of a judge's chat request.
    fn generate_request(&self, request: wit::ChatRequest) -> Result<GenerateRequest, String> {
        let item_id = self.context.item_id.ok_or("chat is not available during `info`")?;
        let mut messages = Vec::with_capacity(request.messages.len());
        for message in request.messages {
            let role = match message.role {
                wit::Role::System => Role::System,
                wit::Role::User => Role::User,
                wit::Role::Assistant => Role::Assistant,
            };
            let mut content = Vec::with_capacity(message.content.len());
            for part in message.content {
                content.push(match part {
                    wit::ContentPart::Text(text) => ContentPart::Text { text },
                    wit::ContentPart::Image => match &self.context.image {
                        Some(path) => ContentPart::Image { path: path.clone() },
                        None => return Err("the request has an image part but this item has no image".to_owned()),
                    },
                });
            }
            messages.push(ChatMessage { role, content });
        }
        let response_format = request
            .response_format
            .map(|text| serde_json::from_str(&text).map_err(|e| format!("response_format is not JSON: {e}")))
            .transpose()?;
        Ok(GenerateRequest {
            id: format!("{item_id}/judge"),
            messages,
            settings: GenerationSettings {
                max_new_tokens: request.max_tokens,
                temperature: request.temperature.map(|t| to_f64("temperature", t)).transpose()?,
                top_p: request.top_p.map(|p| to_f64("top_p", p)).transpose()?,
            },
            response_format,
        })
    }
}

/// An `f32` setting as the `f64` with the same shortest decimal form (`0.7f32` → `0.7`, not
/// `0.699999988079071`).
fn to_f64(name: &str, value: f32) -> Result<f64, String> {
    if !value.is_finite() {
        return Err(format!("{name} is not a finite number"));
    }
    Ok(value.to_string().parse().unwrap_or(f64::from(value)))
}

impl wit::Host for CallState {}

impl bindings::vlsbench::judge::host::Host for CallState {
    fn chat(&mut self, request: wit::ChatRequest) -> wasmtime::Result<Result<String, wit::ChatError>> {
        let Some(jobs) = self.context.chat.clone() else {
            return Err(self.deny("chat"));
        };
        let request = match self.generate_request(request) {
            Ok(request) => request,
            Err(message) => return Ok(Err(wit::ChatError::Failed(message))),
        };
        let started = Instant::now();
        let (reply_to, reply) = mpsc::channel();
        let result = match jobs.send((request, reply_to)) {
            Ok(()) => reply.recv().unwrap_or_else(|_| Err(ChatFailure::Failed("the chat provider is gone".to_owned()))),
            Err(_) => Err(ChatFailure::Failed("the chat provider is gone".to_owned())),
        };
        // Time spent waiting for the judge model is not the judge's computation.
        self.clock.in_chat += started.elapsed();
        Ok(result.map_err(|failure| match failure {
            ChatFailure::Refused(why) => wit::ChatError::Refused(why),
            ChatFailure::Failed(why) => wit::ChatError::Failed(why),
        }))
    }

    fn log(&mut self, level: wit::LogLevel, message: String) -> wasmtime::Result<()> {
        if !self.context.log_allowed {
            return Err(self.deny("log"));
        }
        self.log_lines += 1;
        if self.log_lines > LOG_LINES_PER_CALL {
            return Ok(());
        }
        let mut end = message.len().min(LOG_LINE_LIMIT);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let message = &message[..end];
        let (judge, item) = (&self.judge_name, self.context.item_id);
        match level {
            wit::LogLevel::Debug => tracing::debug!(judge = %judge, item = ?item, "{message}"),
            wit::LogLevel::Info => tracing::info!(judge = %judge, item = ?item, "{message}"),
            wit::LogLevel::Warn => tracing::warn!(judge = %judge, item = ?item, "{message}"),
            wit::LogLevel::Error => tracing::error!(judge = %judge, item = ?item, "{message}"),
        }
        Ok(())
    }
}

/// Caps linear memory for one store: the sum of all its memories' sizes.
struct MemoryLimiter {
    max_bytes: usize,
    used_bytes: usize,
    /// A grow was refused: the call fails with [`JudgeError::MemoryLimit`].
    refused: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // A memory's creation is reported as a grow from 0, so the sum covers every memory.
        let total = self.used_bytes.saturating_add(desired.saturating_sub(current));
        if total > self.max_bytes {
            self.refused = true;
            return Ok(false);
        }
        self.used_bytes = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_LIMIT)
    }

    fn instances(&self) -> usize {
        INSTANCES_LIMIT
    }

    fn tables(&self) -> usize {
        TABLES_LIMIT
    }

    fn memories(&self) -> usize {
        MEMORIES_LIMIT
    }
}

/// The judge's own compute time: wall time since the call started, minus time inside `chat`.
struct ComputeClock {
    started: Instant,
    in_chat: Duration,
    timeout: Duration,
}

impl ComputeClock {
    /// Called by wasmtime when the epoch deadline passes: interrupt, or wait some more ticks.
    fn on_deadline(&self) -> UpdateDeadline {
        let used = self.started.elapsed().saturating_sub(self.in_chat);
        match self.timeout.checked_sub(used) {
            Some(left) if !left.is_zero() => {
                let ticks = left.as_nanos().div_ceil(EPOCH_TICK.as_nanos()).max(1);
                UpdateDeadline::Continue(u64::try_from(ticks).unwrap_or(u64::MAX))
            }
            _ => UpdateDeadline::Interrupt,
        }
    }
}

/// A guest's stdout and stderr: keeps the first `limit` bytes, quietly drops the rest (so a
/// chatty guest never sees a write error, and never fills the host's memory).
#[derive(Clone)]
struct CapturedOutput {
    buffer: Arc<Mutex<Vec<u8>>>,
    limit: usize,
}

impl CapturedOutput {
    fn new(limit: usize) -> Self {
        Self { buffer: Arc::new(Mutex::new(Vec::new())), limit }
    }

    fn contents(&self) -> Vec<u8> {
        self.buffer.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Ok(mut buffer) = self.buffer.lock() {
            let room = self.limit.saturating_sub(buffer.len());
            buffer.extend_from_slice(&buf[..buf.len().min(room)]);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
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

    #[test]
    fn memory_limiter_sums_every_memory_and_remembers_a_refusal() {
        let mut limiter = MemoryLimiter { max_bytes: 100, used_bytes: 0, refused: false };
        assert!(limiter.memory_growing(0, 60, None).unwrap_or(false));
        assert!(limiter.memory_growing(0, 30, None).unwrap_or(false));
        assert!(!limiter.refused);
        assert!(!limiter.memory_growing(60, 80, None).unwrap_or(true));
        assert!(limiter.refused);
        assert!(limiter.memory_growing(30, 40, None).unwrap_or(false));
    }

    #[test]
    fn compute_clock_does_not_count_chat_time() {
        let clock = ComputeClock {
            started: Instant::now() - Duration::from_secs(10),
            in_chat: Duration::from_millis(9_950),
            timeout: Duration::from_secs(1),
        };
        assert!(matches!(clock.on_deadline(), UpdateDeadline::Continue(ticks) if (90..=96).contains(&ticks)));
        let clock = ComputeClock { in_chat: Duration::ZERO, ..clock };
        assert!(matches!(clock.on_deadline(), UpdateDeadline::Interrupt));
    }

    #[test]
    fn f32_settings_keep_their_decimal_form() {
        assert_eq!(to_f64("t", 0.7), Ok(0.7));
        assert_eq!(to_f64("t", 0.0), Ok(0.0));
        assert!(to_f64("t", f32::NAN).is_err());
    }

    #[test]
    fn cache_trailer_detects_damage() {
        let mut file = b"compiled".to_vec();
        file.extend_from_slice(&Sha256::digest(b"compiled"));
        file.extend_from_slice(CACHE_TAG);
        assert_eq!(check_cache_trailer(&file), Some(&b"compiled"[..]));
        file[0] ^= 1;
        assert_eq!(check_cache_trailer(&file), None);
        assert_eq!(check_cache_trailer(b"short"), None);
    }

    #[test]
    fn captured_output_keeps_the_first_bytes_and_accepts_the_rest() {
        use tokio::io::AsyncWrite;
        let mut output = CapturedOutput::new(4);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let written = Pin::new(&mut output).poll_write(&mut cx, b"abcdef");
        assert!(matches!(written, Poll::Ready(Ok(6))));
        assert_eq!(output.contents(), b"abcd");
    }

    #[test]
    fn imports_of_another_judge_wit_version_are_spotted() {
        assert_eq!(foreign_judge_version("vlsbench:judge/host@0.1.0"), None);
        assert_eq!(foreign_judge_version("vlsbench:judge/types@0.2.0"), Some("0.2.0"));
        assert_eq!(foreign_judge_version("vlsbench:judge/host"), Some("(unversioned)"));
        assert_eq!(foreign_judge_version("wasi:cli/stdout@0.2.6"), None);
    }

    #[test]
    fn last_lines_keeps_the_tail_on_one_line() {
        assert_eq!(last_lines(b"a\nb\n c \n", 100), "a b c");
        assert!(last_lines("xé".repeat(10).as_bytes(), 5).len() <= 6);
    }
}
