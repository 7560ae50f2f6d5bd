//! `serve`: any backend, a native one especially, as an OpenAI-compatible endpoint, so a local
//! model can be another tool's model, or the judge model of a run.
//!
//! `vlsbench-host serve MODEL.toml [--port 8000]` loads the `[model]` section of a TOML file (a
//! whole manifest works) as `run` would, and answers `GET /v1/models` and non-streaming
//! `POST /v1/chat/completions` with image parts as data URLs ([`openai`]). Concurrent requests are
//! batched up to the backend's `max_batch` ([`batcher`]). It listens on loopback unless `--host`
//! says otherwise, and with `--api-key-env VAR` it wants `Authorization: Bearer <$VAR>`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use vlsbench_plugin_api::GenerationSettings;

use crate::backend::{self, Backend};
use crate::manifest::{ModelSection, parse_toml};

pub mod batcher;
pub mod openai;

/// What `serve` was asked for.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A TOML file with a `[model]` section.
    pub model_file: PathBuf,
    pub host: IpAddr,
    /// 0: any free port (the address is printed).
    pub port: u16,
    /// The variable holding the bearer key clients must send.
    pub api_key_env: Option<String>,
    /// The model's name in `/v1/models` (default: the checkpoint, else the arch).
    pub model_name: Option<String>,
    /// How long a batch waits for more requests after its first.
    pub batch_window: Duration,
    pub plugin_dirs: Vec<PathBuf>,
}

#[derive(serde::Deserialize)]
struct ModelFile {
    model: ModelSection,
}

/// The loaded model and what the HTTP side needs to answer for it.
pub struct Served {
    pub name: String,
    /// The `[model]` section's settings: what a request leaves open.
    pub defaults: GenerationSettings,
    pub batcher: batcher::Batcher,
    pub api_key: Option<String>,
    /// Where images from data URLs are written for the backend to read.
    pub images: tempfile::TempDir,
}

/// Loads the model, binds, prints `listening on http://ADDR/v1`, and serves until Ctrl-C.
pub fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let served = Arc::new(load(&opts)?);
    let listener = std::net::TcpListener::bind(SocketAddr::new(opts.host, opts.port))
        .with_context(|| format!("cannot listen on {}:{}", opts.host, opts.port))?;
    let addr = listener.local_addr().context("the listener has no address")?;
    if !opts.host.is_loopback() {
        tracing::warn!(
            "serving on {addr}, reachable from other machines{}",
            if served.api_key.is_none() { " and with no key (--api-key-env)" } else { "" }
        );
    }
    println!("serving {} on http://{addr}/v1", served.name);
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the server's runtime")?;
    runtime.block_on(openai::accept_loop(listener, served))
}

/// The backend of the file's `[model]`, created, behind a batcher.
fn load(opts: &ServeOptions) -> anyhow::Result<Served> {
    use crate::fsread::{FileKind, read_to_string};
    let path = &opts.model_file;
    let text = read_to_string(path, FileKind::Manifest)?;
    let model = parse_toml::<ModelFile>(path, &text)?.model;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let base_dir = parent.canonicalize().or_else(|_| std::path::absolute(parent)).unwrap_or(parent.to_path_buf());
    let at = || format!("{}: [model]", path.display());
    let dirs = backend::search_path(&opts.plugin_dirs);
    let library = backend::find(&model.arch, model.backend.as_deref(), &base_dir, &dirs).with_context(at)?;
    crate::run::check_local_paths(&library, &model, &base_dir).with_context(at)?;
    let library = library.with_call_timeout(&model);
    let max_batch = library.info.max_batch.max(1) as usize;
    let workers = if library.info.concurrent { 8 } else { 1 };
    let checkpoint_is_path = library.info.checkpoint_is_path;
    let config = crate::run::backend_config(&model, &base_dir);
    tracing::info!("loading {} for arch {}", library.label(), model.arch);
    let backend = Backend::create(library, &config).map_err(|e| anyhow::anyhow!("{}: {e}", at()))?;
    let api_key = match &opts.api_key_env {
        Some(var) => {
            let key = std::env::var(var).with_context(|| format!("--api-key-env {var}: the variable is not set"))?;
            anyhow::ensure!(!key.is_empty(), "--api-key-env {var}: the variable is empty");
            crate::secrets::register(var, &key);
            Some(key)
        }
        None => None,
    };
    // A local checkpoint is named by its folder, an API model by its name.
    let checkpoint_name = model.checkpoint.as_deref().map(|c| match checkpoint_is_path {
        true => Path::new(c).file_name().map_or(c.to_owned(), |n| n.to_string_lossy().into_owned()),
        false => c.to_owned(),
    });
    let name = opts.model_name.clone().or(checkpoint_name).unwrap_or_else(|| model.arch.clone());
    Ok(Served {
        name,
        defaults: model.settings(),
        batcher: batcher::Batcher::start(Arc::new(backend), max_batch, workers, opts.batch_window),
        api_key,
        images: tempfile::Builder::new()
            .prefix("vlsbench-serve-")
            .tempdir()
            .context("cannot make a folder for images")?,
    })
}
