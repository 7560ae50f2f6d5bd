//! ONNX Runtime, loaded at run time (`ort` with `load-dynamic`): where the library comes from,
//! whether its version is one `ort` can drive, and sessions on the manifest's device.
//!
//! The library is, in order: the backend option `ort_library`, the environment variable
//! `ORT_DYLIB_PATH`, or `libonnxruntime.so` found by the dynamic loader. PyPI's `onnxruntime` wheel
//! ships it as `onnxruntime/capi/libonnxruntime.so.<version>`. Every failure names the path, the
//! version found and the version this build needs, and happens when the backend checks its config
//! (`Backend::check`: at `validate`, and before a run makes its folder) or, at the latest, when it
//! is created; never in the middle of a run.
//!
//! A process holds one ONNX Runtime: a second backend that asks for a different library is refused
//! with both paths named.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::ep::{self, ExecutionProvider};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

/// The oldest ONNX Runtime (1.x) this build's `ort` drives.
pub const MIN_ORT_MINOR: u32 = ort::MINOR_VERSION;
/// The variable `ort` itself reads.
pub const ENV_VAR: &str = "ORT_DYLIB_PATH";
/// The file name the dynamic loader searches for when neither the option nor the variable is set.
pub const DEFAULT_NAME: &str = "libonnxruntime.so";

/// Why ONNX Runtime cannot be used; every message names the library or the graph.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "cannot load ONNX Runtime from {path} ({source_desc}): {message}; this backend needs ONNX Runtime >= \
         1.{needed}.0 (e.g. `pip install onnxruntime` and point `[model.options] ort_library` or {ENV_VAR} at \
         <site-packages>/onnxruntime/capi/libonnxruntime.so.<version>)"
    )]
    Load { path: PathBuf, source_desc: &'static str, message: String, needed: u32 },
    #[error(
        "ONNX Runtime at {path} ({source_desc}) is version {found}; this backend needs ONNX Runtime >= 1.{needed}.0 \
         (its API version 1.{needed})"
    )]
    Version { path: PathBuf, source_desc: &'static str, found: String, needed: u32 },
    #[error("ONNX Runtime is already loaded from {loaded} in this process; a second library ({asked}) cannot be")]
    AlreadyLoaded { loaded: PathBuf, asked: PathBuf },
    #[error(
        "device {device:?} needs ONNX Runtime's CUDA execution provider, which the library at {path} does not have \
         (install `onnxruntime-gpu` and point to its libonnxruntime.so); not falling back to the CPU"
    )]
    NoCuda { device: String, path: PathBuf },
    #[error("device {0:?} is not served: use \"cpu\", \"cuda\" or \"cuda:N\"")]
    BadDevice(String),
    #[error("{path}: {message}")]
    Session { path: PathBuf, message: String },
}

/// Where the library path came from (said in errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibrarySource {
    Option,
    Env,
    Default,
}

impl LibrarySource {
    /// Where the path came from, as errors and `validate` say it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Option => "from [model.options] ort_library",
            Self::Env => "from ORT_DYLIB_PATH",
            Self::Default => "neither [model.options] ort_library nor ORT_DYLIB_PATH is set; the loader's search",
        }
    }
}

/// The library to load: the option, else `ORT_DYLIB_PATH`, else [`DEFAULT_NAME`].
pub fn library_path(option: Option<&Path>) -> (PathBuf, LibrarySource) {
    if let Some(p) = option {
        return (p.to_owned(), LibrarySource::Option);
    }
    match std::env::var_os(ENV_VAR) {
        Some(v) if !v.is_empty() => (PathBuf::from(v), LibrarySource::Env),
        _ => (PathBuf::from(DEFAULT_NAME), LibrarySource::Default),
    }
}

/// `1.N.x` → N.
fn minor_of(version: &str) -> Option<u32> {
    let mut parts = version.split('.');
    match (parts.next(), parts.next()) {
        (Some("1"), Some(m)) => m.parse().ok(),
        _ => None,
    }
}

/// The version string a library reports (`OrtGetApiBase()->GetVersionString()`), read with our
/// own handle so that an unusable version is refused before `ort` holds it.
fn probe_version(path: &Path) -> Result<String, String> {
    // SAFETY: loading ONNX Runtime runs its initialisers, which is what loading it at all means;
    // the handle is dropped at the end of this function (`ort` keeps its own).
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: `OrtGetApiBase` has this signature in every ONNX Runtime release.
    let getter: libloading::Symbol<GetApiBase> =
        unsafe { lib.get(b"OrtGetApiBase") }.map_err(|_| "the library does not export OrtGetApiBase".to_owned())?;
    // SAFETY: documented to return a static table, never null.
    let base = unsafe { getter() };
    if base.is_null() {
        return Err("OrtGetApiBase returned null".into());
    }
    // SAFETY: `base` is the library's static API base; GetVersionString returns a static C string.
    let s = unsafe { std::ffi::CStr::from_ptr(((*base).GetVersionString)()) };
    Ok(s.to_string_lossy().into_owned())
}

/// A library reporting `version` is usable when it is 1.x with x >= [`MIN_ORT_MINOR`].
pub fn check_version(path: &Path, source: LibrarySource, version: &str) -> Result<(), RuntimeError> {
    match minor_of(version) {
        Some(m) if m >= MIN_ORT_MINOR => Ok(()),
        _ => Err(RuntimeError::Version {
            path: path.to_owned(),
            source_desc: source.describe(),
            found: version.to_owned(),
            needed: MIN_ORT_MINOR,
        }),
    }
}

/// The process's ONNX Runtime: its path and version, and the environment sessions are built in.
pub struct Runtime {
    pub path: PathBuf,
    pub version: String,
    env: ort::environment::Environment,
}

static LOADED: OnceLock<Mutex<Option<&'static Runtime>>> = OnceLock::new();

impl Runtime {
    /// Loads (once per process) the library `option` or the environment names and checks its
    /// version.
    pub fn load(option: Option<&Path>) -> Result<&'static Runtime, RuntimeError> {
        let (path, source) = library_path(option);
        let desc = source.describe();
        let load_err = |message: String| RuntimeError::Load {
            path: path.clone(),
            source_desc: desc,
            message,
            needed: MIN_ORT_MINOR,
        };
        if source != LibrarySource::Default && !path.is_file() {
            return Err(load_err("no such file".into()));
        }
        // The same file under another spelling is the same library.
        let path = std::fs::canonicalize(&path).unwrap_or(path.clone());
        let slot = LOADED.get_or_init(|| Mutex::new(None));
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rt) = *slot {
            if rt.path == path || source == LibrarySource::Default {
                return Ok(rt);
            }
            return Err(RuntimeError::AlreadyLoaded { loaded: rt.path.clone(), asked: path });
        }
        let load_err = |message: String| RuntimeError::Load {
            path: path.clone(),
            source_desc: desc,
            message,
            needed: MIN_ORT_MINOR,
        };
        let version = probe_version(&path).map_err(load_err)?;
        check_version(&path, source, &version)?;
        let env = ort::init_from(&path)
            .map_err(|e| load_err(e.to_string()))?
            .with_name("vlsbench")
            .build()
            .map_err(|e| load_err(e.to_string()))?;
        let rt: &'static Runtime = Box::leak(Box::new(Runtime { path, version, env }));
        *slot = Some(rt);
        Ok(rt)
    }

    /// Whether the library was built with the CUDA execution provider.
    pub fn has_cuda(&self) -> bool {
        ep::CUDA::is_available().unwrap_or(false)
    }

    /// A session for the graph at `path` on `device` (`cpu`, `cuda`, `cuda:N`). `threads`: the
    /// intra-op thread count (0: ONNX Runtime's default).
    pub fn session(&self, path: &Path, device: &str, threads: usize) -> Result<Session, RuntimeError> {
        let err = |e: &dyn std::fmt::Display| RuntimeError::Session { path: path.to_owned(), message: e.to_string() };
        let mut b = Session::builder(&self.env).map_err(|e| err(&e))?;
        b = b.with_optimization_level(GraphOptimizationLevel::Level3).map_err(|e| err(&e))?;
        if threads > 0 {
            b = b.with_intra_threads(threads).map_err(|e| err(&e))?;
        }
        let cuda_device = parse_device(device)?;
        if let Some(id) = cuda_device {
            if !self.has_cuda() {
                return Err(RuntimeError::NoCuda { device: device.to_owned(), path: self.path.clone() });
            }
            b = b
                .with_execution_providers([ep::CUDA::default().with_device_id(id).build().error_on_failure()])
                .map_err(|e| err(&e))?;
        }
        b.commit_from_file(path).map_err(|e| err(&e))
    }
}

/// `cpu` → None, `cuda` → Some(0), `cuda:N` → Some(N).
pub fn parse_device(device: &str) -> Result<Option<i32>, RuntimeError> {
    match device {
        "cpu" => Ok(None),
        "cuda" => Ok(Some(0)),
        d => d
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<i32>().ok())
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| RuntimeError::BadDevice(d.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_as_one_dot_minor() {
        assert_eq!(minor_of("1.32.0"), Some(32));
        assert_eq!(minor_of("1.22.1"), Some(22));
        assert_eq!(minor_of("2.0.0"), None);
        assert_eq!(minor_of("garbage"), None);
    }

    #[test]
    fn a_library_too_old_for_ort_names_the_path_the_version_found_and_the_version_needed() {
        let p = Path::new("/opt/ort/libonnxruntime.so.1.16.3");
        let e = check_version(p, LibrarySource::Env, "1.16.3").unwrap_err().to_string();
        assert!(e.contains("/opt/ort/libonnxruntime.so.1.16.3") && e.contains("ORT_DYLIB_PATH"), "{e}");
        assert!(e.contains("version 1.16.3") && e.contains(&format!(">= 1.{MIN_ORT_MINOR}.0")), "{e}");
        assert!(check_version(p, LibrarySource::Option, "1.32.0").is_ok());
        assert!(check_version(p, LibrarySource::Option, &format!("1.{MIN_ORT_MINOR}.0")).is_ok());
        assert!(check_version(p, LibrarySource::Option, "2.0.0").is_err());
    }

    #[test]
    fn devices_are_cpu_cuda_or_cuda_n() {
        assert_eq!(parse_device("cpu").unwrap(), None);
        assert_eq!(parse_device("cuda").unwrap(), Some(0));
        assert_eq!(parse_device("cuda:3").unwrap(), Some(3));
        let e = parse_device("metal").unwrap_err().to_string();
        assert!(e.contains("metal"), "{e}");
    }

    #[test]
    fn the_option_wins_over_the_environment() {
        let (p, s) = library_path(Some(Path::new("/x/libonnxruntime.so.1.32.0")));
        assert_eq!((p.as_path(), s), (Path::new("/x/libonnxruntime.so.1.32.0"), LibrarySource::Option));
    }
}
