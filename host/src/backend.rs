//! Backend stage: finds, loads and calls native backend libraries through the versioned C ABI of
//! `vlsbench-plugin-api`.
//!
//! A library is loaded once per process and never unloaded. Its ABI version is checked before any
//! other call: the same major and a minor up to ours, else an error naming both versions and the
//! file. Every error a backend returns is prefixed with its name and version.
//!
//! Before a backend is created, [`check_options`] holds `[model.options]` against the options the
//! backend declares (names, types, secret variables). Every call runs on its own thread under the
//! `[model] call_timeout_secs` watchdog; a batch that fails as a whole (a panic, an unreadable reply,
//! a timeout) is tried again item by item, so a hostile item fails alone. Answers and errors pass through
//! [`crate::secrets::redact`] before anything else sees them.
//!
//! A backend that crashes the process (an abort, a segfault) takes the host with it: native
//! plugins share its address space. Finished items are on disk by then; running the same command
//! again resumes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use vlsbench_plugin_api::abi::{self, BackendTable, EntryFn};
use vlsbench_plugin_api::{
    ABI_MAJOR, ABI_MINOR, BackendConfig, BackendError, BackendInfo, ENTRY_SYMBOL, ErrorKind, GenerateRequest,
    Generation, ItemResult, OptionKind, OptionSpec, resolve_path,
};

use crate::manifest::ModelSection;

/// File-name prefix of backend libraries on the plugin path (`libvlsbench_backend_openai.so`).
pub const LIBRARY_PREFIX: &str = "vlsbench_backend_";

/// Why a backend library could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BackendLoadError {
    #[error("{path}: cannot load library: {message}")]
    Open { path: PathBuf, message: String },
    #[error("{path}: not a vlsbench backend (no `vlsbench_backend_entry` symbol)")]
    NotABackend { path: PathBuf },
    #[error(
        "{path}: backend ABI version {plugin_major}.{plugin_minor} is not supported by this host (ABI {host_major}.{host_minor}; a plugin needs major {host_major} and minor <= {host_minor})"
    )]
    AbiMismatch { path: PathBuf, plugin_major: u16, plugin_minor: u16, host_major: u16, host_minor: u16 },
    #[error("{path}: describe failed: {error}")]
    Describe { path: PathBuf, error: BackendError },
    #[error("no backend for arch `{arch}` on the plugin path ({searched}); found: {found}{misnamed}")]
    NoBackendForArch { arch: String, searched: String, found: String, misnamed: Misnamed },
    #[error("no backend named `{name}` on the plugin path ({searched}){broken}{misnamed}")]
    NoBackendNamed { name: String, searched: String, broken: String, misnamed: Misnamed },
    #[error("backend {name} {version} ({path}) does not declare arch `{arch}` (it serves: {archs})")]
    ArchNotServed { name: String, version: String, path: PathBuf, arch: String, archs: String },
}

/// A loaded, version-checked backend library.
#[derive(Debug, Clone)]
pub struct BackendLibrary {
    pub path: PathBuf,
    pub info: BackendInfo,
    pub abi: (u16, u16),
    /// The options it declares (`None`: it declares none and checks them itself).
    pub options: Option<Vec<OptionSpec>>,
    /// Longest wait for one `generate` call ([`DEFAULT_CALL_TIMEOUT`] unless the manifest says).
    pub call_timeout: Duration,
    table: &'static BackendTable,
}

/// The default of `[model] call_timeout_secs`.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(3600);

impl BackendLibrary {
    /// `name version`, the prefix of its errors.
    pub fn label(&self) -> String {
        format!("{} {}", self.info.name, self.info.version)
    }

    /// The backend's own check of what `create` will need (ABI 1.2; nothing for older plugins):
    /// lines saying what it found, or why `create` would fail.
    pub fn check(&self, config: &BackendConfig) -> Result<Vec<String>, BackendError> {
        // SAFETY: the table comes from a loaded, version-checked library that is never unloaded.
        unsafe { abi::host::check(self.table, config) }.map_err(|e| prefix(self, e))
    }

    /// This library with the call timeout a `[model]` section sets (the default when it sets none).
    pub fn with_call_timeout(mut self, model: &ModelSection) -> Self {
        self.call_timeout = model
            .call_timeout_secs
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(|s| Duration::from_secs_f64(s.min(crate::manifest::MAX_SECS)))
            .unwrap_or(DEFAULT_CALL_TIMEOUT);
        self
    }
}

/// Why `[model.options]` does not suit the backend.
#[derive(Debug, thiserror::Error)]
pub enum OptionError {
    #[error("options.{name}: backend {backend} has no such option{suggestion} (its options: {known})")]
    Unknown { name: String, backend: String, suggestion: String, known: String },
    #[error("options.{name}: expected {expected}, got {got}")]
    WrongType { name: String, expected: &'static str, got: String },
    #[error(
        "options.{name}: environment variable `{var}` is not set; it should hold the {what} \
         (export it, or set `{name}` to another variable's name, or to \"\" to send none)"
    )]
    UnsetSecret { name: String, var: String, what: &'static str },
}

/// Checks `[model.options]` against the options the backend declares, before the backend is
/// created: unknown names (with the closest declared name), wrong types, unset secret variables.
/// Registers the value of every secret variable for redaction ([`crate::secrets`]). A backend that
/// declares nothing is not checked.
pub fn check_options(lib: &BackendLibrary, model: &ModelSection) -> Result<(), OptionError> {
    let Some(specs) = &lib.options else {
        tracing::debug!("backend {} declares no options; they are checked when it is created", lib.label());
        return Ok(());
    };
    for (name, value) in &model.options {
        let Some(spec) = specs.iter().find(|s| &s.name == name) else {
            let closest = specs
                .iter()
                .map(|s| (strsim::jaro_winkler(name, &s.name), s.name.as_str()))
                .filter(|(score, _)| *score > 0.7)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, n)| format!("; did you mean `{n}`?"))
                .unwrap_or_default();
            let known = specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
            return Err(OptionError::Unknown {
                name: name.clone(),
                backend: lib.label(),
                suggestion: closest,
                known: if known.is_empty() { "none".into() } else { known },
            });
        };
        let json = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        if !spec.kind.accepts(&json) {
            return Err(OptionError::WrongType {
                name: name.clone(),
                expected: spec.kind.as_str(),
                got: value.type_str().to_string(),
            });
        }
    }
    for spec in specs.iter().filter(|s| s.kind == OptionKind::SecretEnv) {
        let var = match model.options.get(&spec.name) {
            Some(v) => v.as_str().unwrap_or_default().to_string(),
            None => spec.default.as_ref().and_then(|d| d.as_str()).unwrap_or_default().to_string(),
        };
        if var.is_empty() {
            continue;
        }
        match std::env::var(&var) {
            Ok(value) if !value.trim().is_empty() => crate::secrets::register(&var, &value),
            _ => {
                return Err(OptionError::UnsetSecret { name: spec.name.clone(), var, what: "API key" });
            }
        }
    }
    Ok(())
}

fn loaded() -> &'static Mutex<HashMap<PathBuf, BackendLibrary>> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, BackendLibrary>>> = OnceLock::new();
    LOADED.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Loads (once) the backend library at `path` and checks its ABI version.
pub fn load_library(path: &Path) -> Result<BackendLibrary, BackendLoadError> {
    let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mut cache = loaded().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(lib) = cache.get(&key) {
        return Ok(lib.clone());
    }
    // SAFETY: loading a native library runs its initialisers; backends are trusted code that the
    // user installed, like any native library.
    let library = unsafe { libloading::Library::new(&key) }
        .map_err(|e| BackendLoadError::Open { path: key.clone(), message: e.to_string() })?;
    // Never unloaded: tables and instances keep pointing into it.
    let library: &'static libloading::Library = Box::leak(Box::new(library));
    // SAFETY: the symbol's type is fixed by the ABI.
    let entry: libloading::Symbol<'static, EntryFn> =
        unsafe { library.get(ENTRY_SYMBOL) }.map_err(|_| BackendLoadError::NotABackend { path: key.clone() })?;
    // SAFETY: the entry point takes nothing and returns a pointer to a static table.
    let table_ptr = unsafe { entry() };
    // SAFETY: the table is static in a library that is never unloaded.
    let table = match unsafe { abi::host::checked_table(table_ptr) } {
        Ok(Some(table)) => table,
        Ok(None) => return Err(BackendLoadError::NotABackend { path: key }),
        Err(abi::host::AbiMismatch { major, minor }) => {
            return Err(BackendLoadError::AbiMismatch {
                path: key,
                plugin_major: major,
                plugin_minor: minor,
                host_major: ABI_MAJOR,
                host_minor: ABI_MINOR,
            });
        }
    };
    let (major, minor) = (table.abi_major, table.abi_minor);
    // SAFETY: the table is version-checked and static.
    let described = unsafe { abi::host::describe_full(table) }
        .map_err(|error| BackendLoadError::Describe { path: key.clone(), error })?;
    let lib = BackendLibrary {
        path: key.clone(),
        info: described.info,
        abi: (major, minor),
        options: described.options,
        call_timeout: DEFAULT_CALL_TIMEOUT,
        table,
    };
    cache.insert(key, lib.clone());
    Ok(lib)
}

/// The folders searched for plugins, in order: `extra` (the `--plugin-path` flag), then
/// `VLSBENCH_PLUGIN_PATH`, then the folder of this executable and the workspace's judge build folder
/// beside it.
pub fn search_path(extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = extra.to_vec();
    if let Some(var) = std::env::var_os("VLSBENCH_PLUGIN_PATH") {
        dirs.extend(std::env::split_paths(&var).filter(|p| !p.as_os_str().is_empty()));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_path_buf());
        // Integration tests run from target/<profile>/deps.
        if dir.file_name().is_some_and(|n| n == "deps")
            && let Some(parent) = dir.parent()
        {
            dirs.push(parent.to_path_buf());
        }
        if let Some(target) = dirs.last().and_then(|d| d.parent()).map(Path::to_path_buf) {
            dirs.push(target.join("wasm32-wasip2").join("release"));
        }
    }
    let mut unique = Vec::new();
    for d in dirs {
        if !unique.contains(&d) {
            unique.push(d);
        }
    }
    unique
}

/// The search path as one line, for error messages.
pub fn describe_dirs(dirs: &[PathBuf]) -> String {
    dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Files on the search path whose file name `wanted` accepts, folder by folder, sorted by name
/// within a folder.
pub fn files_on_path(dirs: &[PathBuf], wanted: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut here: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| wanted(&n.to_string_lossy())))
            .collect();
        here.sort();
        files.extend(here);
    }
    files
}

/// Backend library files on the search path (by file name, not loaded).
pub fn library_files(dirs: &[PathBuf]) -> Vec<PathBuf> {
    files_on_path(dirs, |name| {
        let stem = name.strip_prefix("lib").unwrap_or(name);
        stem.starts_with(LIBRARY_PREFIX)
            && (name.ends_with(".so") || name.ends_with(".dylib") || name.ends_with(".dll"))
    })
}

/// Libraries on the search path that carry the backend entry point's name but whose file name is
/// not a backend's (`libecho.so`), so discovery skips them. Said in `plugins` and in a "no backend"
/// error, so a misnamed plugin is not ignored without a word. Found by reading each such file for
/// the symbol's name (without loading it); files over 1 GiB are not read.
pub fn misnamed_libraries(dirs: &[PathBuf]) -> Misnamed {
    let symbol = ENTRY_SYMBOL.strip_suffix(b"\0").unwrap_or(ENTRY_SYMBOL);
    let candidates = files_on_path(dirs, |name| {
        let is_library = [".so", ".dylib", ".dll"].iter().any(|ext| name.ends_with(ext) || name.contains(".so."));
        let stem = name.strip_prefix("lib").unwrap_or(name);
        is_library && !stem.starts_with(LIBRARY_PREFIX)
    });
    let files = candidates
        .into_iter()
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() <= 1 << 30))
        .filter(|p| std::fs::read(p).is_ok_and(|data| data.windows(symbol.len()).any(|w| w == symbol)))
        .collect();
    Misnamed(files)
}

/// Misnamed backend libraries ([`misnamed_libraries`]); displays as a sentence (empty when none).
#[derive(Debug, Clone, Default)]
pub struct Misnamed(pub Vec<PathBuf>);

impl std::fmt::Display for Misnamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        let files: Vec<String> = self.0.iter().map(|p| p.display().to_string()).collect();
        write!(
            f,
            "; ignored {} (a backend's entry point is there, but a backend's file must be named lib{LIBRARY_PREFIX}<name>.so)",
            files.join(", ")
        )
    }
}

/// Loads every backend library on the search path; failures are returned beside the successes.
pub fn discover(dirs: &[PathBuf]) -> Vec<Result<BackendLibrary, BackendLoadError>> {
    library_files(dirs).iter().map(|p| load_library(p)).collect()
}

/// Whether `path`'s file name is the library name of backend `name` (`libvlsbench_backend_<name>.so`,
/// dashes as underscores).
fn file_names_backend(path: &Path, name: &str) -> bool {
    let Some(file) = path.file_stem().map(|f| f.to_string_lossy().into_owned()) else { return false };
    let stem = file.strip_prefix("lib").unwrap_or(&file);
    stem.strip_prefix(LIBRARY_PREFIX).is_some_and(|n| n == name.replace('-', "_"))
}

fn looks_like_path(s: &str) -> bool {
    s.contains('/') || s.contains('\\') || s.ends_with(".so") || s.ends_with(".dylib") || s.ends_with(".dll")
}

/// Finds the backend for `arch`: the library `backend` names (a path, or a backend name on the
/// search path), else the first library on the search path that declares `arch`.
pub fn find(
    arch: &str,
    backend: Option<&str>,
    base_dir: &Path,
    dirs: &[PathBuf],
) -> Result<BackendLibrary, BackendLoadError> {
    let lib = match backend {
        Some(b) if looks_like_path(b) => load_library(&resolve_path(base_dir, b))?,
        Some(name) => {
            let all: Vec<_> = library_files(dirs).into_iter().map(|p| (load_library(&p), p)).collect();
            let broken: Vec<String> = all
                .iter()
                .filter_map(|(r, p)| r.as_ref().err().map(|e| (e, p)))
                .filter(|(_, p)| file_names_backend(p, name))
                .map(|(e, _)| format!("; {e}"))
                .collect();
            all.into_iter().filter_map(|(r, _)| r.ok()).find(|l| l.info.name == name).ok_or_else(|| {
                BackendLoadError::NoBackendNamed {
                    name: name.to_string(),
                    searched: describe_dirs(dirs),
                    broken: broken.concat(),
                    misnamed: misnamed_libraries(dirs),
                }
            })?
        }
        None => {
            let all = discover(dirs);
            let found: Vec<String> = all
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .map(|l| format!("{} [{}]", l.info.name, l.info.archs.join(", ")))
                .collect();
            return all.into_iter().filter_map(Result::ok).find(|l| l.info.archs.iter().any(|a| a == arch)).ok_or_else(
                || BackendLoadError::NoBackendForArch {
                    arch: arch.to_string(),
                    searched: describe_dirs(dirs),
                    found: if found.is_empty() { "none".into() } else { found.join("; ") },
                    misnamed: misnamed_libraries(dirs),
                },
            );
        }
    };
    if !lib.info.archs.iter().any(|a| a == arch) {
        return Err(BackendLoadError::ArchNotServed {
            name: lib.info.name.clone(),
            version: lib.info.version.clone(),
            path: lib.path.clone(),
            arch: arch.to_string(),
            archs: lib.info.archs.join(", "),
        });
    }
    Ok(lib)
}

/// A created backend instance, ready to serve requests.
pub struct Backend {
    library: BackendLibrary,
    /// Shared with the thread of each call, which may outlive a call that timed out.
    instance: Arc<abi::host::Instance>,
    /// Held around calls (by the calling thread) when the backend says it is not concurrent.
    serial: Option<Arc<Mutex<()>>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("library", &self.library.path).finish_non_exhaustive()
    }
}

impl Backend {
    /// Creates an instance (loads the model, builds the client).
    pub fn create(library: BackendLibrary, config: &BackendConfig) -> Result<Self, BackendError> {
        // SAFETY: the table comes from a loaded, version-checked library that is never unloaded.
        let instance =
            unsafe { abi::host::Instance::create(library.table, config) }.map_err(|e| prefix(&library, e))?;
        let serial = (!library.info.concurrent).then(|| Arc::new(Mutex::new(())));
        Ok(Self { library, instance: Arc::new(instance), serial })
    }

    pub fn library(&self) -> &BackendLibrary {
        &self.library
    }

    /// Sends a batch; one result per request, each error prefixed with the backend's name.
    ///
    /// A batch that fails as a whole with a panic, an unreadable reply or a timeout is tried again
    /// one request at a time, so only the items that cause it fail. Answers and messages are
    /// redacted.
    pub fn generate(
        &self,
        requests: &[GenerateRequest],
    ) -> Result<Vec<Result<Generation, BackendError>>, BackendError> {
        let results = match self.call(requests) {
            Err(e)
                if requests.len() > 1
                    && matches!(e.kind, ErrorKind::Panic | ErrorKind::InvalidResponse | ErrorKind::Timeout) =>
            {
                tracing::debug!("a batch of {} failed as a whole ({e}); trying its items one by one", requests.len());
                requests
                    .iter()
                    .map(|r| {
                        self.call(std::slice::from_ref(r))
                            .and_then(|mut v| v.pop().ok_or_else(|| BackendError::model_failure("no result")))
                            .unwrap_or_else(ItemResult::Err)
                    })
                    .collect()
            }
            other => other.map_err(|e| prefix(&self.library, e))?,
        };
        Ok(results
            .into_iter()
            .zip(requests)
            .map(|(r, req)| match r {
                ItemResult::Ok(mut g) => {
                    crate::secrets::redact_in_place(&mut g.text, &format!("item {}: the backend's answer", req.id));
                    Ok(g)
                }
                ItemResult::Err(e) => Err(prefix(&self.library, e)),
            })
            .collect())
    }

    /// One call on its own thread, abandoned (its items failed with `timeout`) when it takes longer
    /// than the library's call timeout. The thread goes on until the plugin returns; its result is
    /// dropped.
    fn call(&self, requests: &[GenerateRequest]) -> Result<Vec<ItemResult>, BackendError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let instance = Arc::clone(&self.instance);
        let serial = self.serial.clone();
        let owned = requests.to_vec();
        let spawned = std::thread::Builder::new().name("backend-call".into()).spawn(move || {
            let _guard = serial.as_ref().map(|m| m.lock().unwrap_or_else(|e| e.into_inner()));
            let _ = tx.send(instance.generate(&owned));
        });
        if let Err(e) = spawned {
            return Err(BackendError::model_failure(format!("cannot start a thread for the call: {e}")));
        }
        let timeout = self.library.call_timeout;
        match rx.recv_timeout(timeout) {
            Ok(result) => result,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(BackendError::new(
                ErrorKind::Timeout,
                format!(
                    "no reply within {:.1} s ([model] call_timeout_secs); the call was abandoned",
                    timeout.as_secs_f64()
                ),
            )),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err(BackendError::model_failure("the call's thread ended without a result"))
            }
        }
    }

    /// Sends one request.
    pub fn generate_one(&self, request: &GenerateRequest) -> Result<Generation, BackendError> {
        let mut results = self.generate(std::slice::from_ref(request))?;
        results.pop().unwrap_or_else(|| Err(BackendError::model_failure("backend returned no result")))
    }
}

fn prefix(lib: &BackendLibrary, mut e: BackendError) -> BackendError {
    e.message = format!("{}: {}", lib.label(), crate::secrets::redact(&e.message));
    e
}
