//! The engine that loads judge components, and a loaded component's calls (`info`,
//! `check-config`, `judge`), whatever WIT version it was built for.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use super::cache::{CompileCache, default_cache_dir};
use super::imports::serve_chat;
use super::sandbox::{CallContext, CallState, ChatJob, run_call};
use super::wit::{self, JudgePre};
use super::{ChatProvider, EPOCH_TICK, Grants, JudgeError, JudgeInfo, JudgeItem, JudgeLimits, JudgeLoadError, Verdict};

/// The wasmtime engine that loads and runs judge components. Cheap to clone (shared state).
#[derive(Clone)]
pub struct JudgeEngine {
    engine: Engine,
    linker: Arc<Linker<CallState>>,
    cache: CompileCache,
}

impl fmt::Debug for JudgeEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JudgeEngine").field("cache_dir", &self.cache.dir()).finish_non_exhaustive()
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
        wit::add_to_linker(&mut linker)
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

        let cache = CompileCache::new(cache_dir.or_else(default_cache_dir), &engine);
        Ok(Self { engine, linker: Arc::new(linker), cache })
    }

    /// The folder compiled components are cached in, if any.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache.dir()
    }

    /// The cache file of a component whose `.wasm` has this SHA-256 (hex).
    pub fn cache_path(&self, sha256: &str) -> Option<PathBuf> {
        self.cache.path(sha256)
    }

    /// Loads a judge component: reads and hashes the file, compiles it (or takes it from the cache),
    /// finds the WIT version it was built for, links it, and calls its `info`.
    pub fn load(&self, wasm_path: &Path) -> Result<JudgeComponent, JudgeLoadError> {
        let path = wasm_path.to_path_buf();
        let bytes = read_component(&path)?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let (component, from_cache) = match self.cache.get(&self.engine, &sha256) {
            Some(component) => (component, true),
            None => {
                let component = Component::new(&self.engine, &bytes)
                    .map_err(|e| JudgeLoadError::Compile { path: path.clone(), message: format!("{e:#}") })?;
                self.cache.put(&sha256, &component);
                (component, false)
            }
        };
        let version = wit::detect_version(&self.engine, &component)
            .map_err(|found| JudgeLoadError::WrongWitVersion { path: path.clone(), found })?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| JudgeLoadError::Imports { path: path.clone(), message: format!("{e:#}") })?;
        let pre = JudgePre::new(version, pre).map_err(|e| JudgeLoadError::NotJudgeWorld {
            path: path.clone(),
            version: version.as_str(),
            message: format!("{e:#}"),
        })?;
        let info = call_info(&pre).map_err(|error| JudgeLoadError::Info { path: path.clone(), error })?;
        if info.name.trim().is_empty() {
            let error = JudgeError::Other("`info` returned an empty name".to_owned());
            return Err(JudgeLoadError::Info { path, error });
        }
        tracing::debug!(path = %path.display(), name = %info.name, version = %info.version,
            wit = version.as_str(), from_cache, "loaded judge component");
        Ok(JudgeComponent { inner: Arc::new(ComponentInner { pre, info, sha256, path, from_cache }) })
    }
}

/// The bytes of a component file, refusing what is not a file or not a component.
fn read_component(path: &Path) -> Result<Vec<u8>, JudgeLoadError> {
    let bytes = crate::fsread::read(path, crate::fsread::FileKind::JudgeComponent).map_err(|e| match e {
        crate::fsread::ReadError::NotRegular { path, what, .. } => JudgeLoadError::NotAFile { path, what },
        other => other.into(),
    })?;
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Ok(bytes),
        Some([0, b'a', b's', b'm', _, _, 0, 0]) => Err(JudgeLoadError::NotAComponent { path: path.to_path_buf() }),
        _ => Err(JudgeLoadError::NotWasm { path: path.to_path_buf() }),
    }
}

/// Calls `info` under the default limits, with nothing granted.
fn call_info(pre: &JudgePre) -> Result<JudgeInfo, JudgeError> {
    let limits = JudgeLimits::default();
    let info =
        run_call(pre.engine(), "", CallContext::bare(), &limits, |store| pre.instantiate(store)?.call_info(store))?;
    let size = info.name.len() + info.version.len();
    if size > limits.max_output_bytes {
        return Err(JudgeError::OutputTooLarge { bytes: size, limit: limits.max_output_bytes });
    }
    Ok(info)
}

/// A loaded judge component: linked, ready to instantiate, with its `info`. Cheap to clone; may be
/// used from many threads at once.
#[derive(Clone)]
pub struct JudgeComponent {
    inner: Arc<ComponentInner>,
}

struct ComponentInner {
    pre: JudgePre,
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
            .field("wit_version", &self.wit_version())
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

    /// The judge WIT version it was built for (one of [`super::WIT_VERSIONS`]).
    pub fn wit_version(&self) -> &'static str {
        self.inner.pre.version().as_str()
    }

    /// Whether it can check its config before the first item (WIT 0.2.0 and later).
    pub fn checks_config(&self) -> bool {
        self.inner.pre.version() != wit::WitVersion::V0_1_0
    }

    /// Asks the judge whether `config_json` (the manifest's `[judge.config]` as JSON text) is a
    /// config it accepts: [`JudgeError::InvalidConfig`] naming the problem if not. A judge built
    /// on WIT 0.1.0 cannot tell, and every config passes here.
    pub fn check_config(&self, config_json: &str, limits: &JudgeLimits) -> Result<(), JudgeError> {
        let name = &self.inner.info.name;
        let pre = &self.inner.pre;
        let result = run_call(pre.engine(), name, CallContext::bare(), limits, |store| {
            pre.instantiate(store)?.call_check_config(store, config_json)
        })?;
        result.map_err(|message| {
            let error = JudgeError::InvalidConfig(message);
            output_limit(error.guest_message_len(), limits).err().unwrap_or(error)
        })
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
        // The provider is only borrowed, while a store's data must be 'static: the judge's chat
        // calls are handed over a channel to a scoped thread that holds the borrow.
        std::thread::scope(|scope| {
            let chat_link = (grants.chat && info.wants_chat).then(|| {
                let (jobs, queue) = mpsc::channel::<ChatJob>();
                scope.spawn(move || serve_chat(queue, chat));
                jobs
            });
            let context = CallContext {
                item_id: Some(item.id),
                image: item.image.map(Path::to_path_buf),
                chat: chat_link,
                log_allowed: grants.log && info.wants_log,
            };
            let pre = &self.inner.pre;
            let result = run_call(pre.engine(), &info.name, context, limits, |store| {
                pre.instantiate(store)?.call_judge(store, config_json, item, answer)
            })?;
            match result {
                Ok(verdict) => {
                    output_limit(verdict.explanation.len() + verdict.raw.len(), limits)?;
                    Ok(verdict)
                }
                Err(error) => {
                    output_limit(error.guest_message_len(), limits)?;
                    Err(error)
                }
            }
        })
    }
}

/// [`JudgeError::OutputTooLarge`] when `bytes` is over the limit.
fn output_limit(bytes: usize, limits: &JudgeLimits) -> Result<(), JudgeError> {
    if bytes > limits.max_output_bytes {
        return Err(JudgeError::OutputTooLarge { bytes, limit: limits.max_output_bytes });
    }
    Ok(())
}
