//! Run stage: the pipeline. Every selected item goes through **generate** (the backend answers the
//! query with the image) then **judge** (the component labels the answer), on `[run] concurrency`
//! worker threads. Each finished step is stored before the next starts, so a crash or a kill loses
//! at most the items in flight, and the same command picks up where it stopped.
//!
//! Retryable backend failures (rate limits, server errors, timeouts, unreadable replies) are retried
//! with exponential backoff and jitter, honouring Retry-After, within `max_tries` and
//! `retry_budget_secs`. A failure is stored as an error, never as an answer or a label.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::Rng;
use vlsbench_plugin_api::{BackendConfig, BackendError, ErrorKind, GenerateRequest, Generation, GenerationSettings};

use crate::backend::{self, Backend, BackendLibrary};
use crate::dataset::{self, Dataset, Filters, Item};
use crate::judge::{ChatFailure, ChatProvider, Grants, JudgeComponent, JudgeEngine, JudgeItem, JudgeLimits};
use crate::manifest::{Capability, JudgeSection, LoadedManifest, ModelSection};
use crate::report::{self, ReportInput, Summary};
use crate::store::{
    self, AnswerOutcome, AnswerProvenance, AnswerRecord, JudgeProvenance, Store, Stored, VerdictOutcome, VerdictRecord,
};

/// Strips an answer as the reference's evaluation loop does, with Python's `str.strip()`: Rust's
/// white space plus the ASCII separators U+001C..U+001F, which Python's `str.isspace()` accepts too.
pub fn strip_answer(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// Settings of one run that do not come from the manifest.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Extra plugin folders (the `--plugin-path` flag), searched first.
    pub plugin_dirs: Vec<PathBuf>,
    /// Where compiled judge components are cached (default: the user's cache folder).
    pub cache_dir: Option<PathBuf>,
    /// Draw a progress bar (it hides itself when stderr is not a terminal).
    pub progress: bool,
    /// Judge stored answers only; never call the model under test.
    pub judge_only: bool,
    /// Exit non-zero when any selected item ends without a label (`--fail-on-unscored`).
    pub fail_on_unscored: bool,
}

/// How a run ended.
#[derive(Debug)]
pub struct RunOutcome {
    pub run_dir: PathBuf,
    pub summary: Summary,
    pub terminal_summary: String,
    pub interrupted: bool,
    /// Selected items that have no label.
    pub unscored: usize,
}

/// Retry rules for one kind of call.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_tries: u32,
    pub initial: Duration,
    pub max_pause: Duration,
    pub budget: Duration,
}

impl RetryPolicy {
    pub fn from_manifest(m: &LoadedManifest) -> Self {
        let r = &m.manifest.run;
        Self {
            max_tries: r.max_tries,
            initial: r.backoff_initial(),
            max_pause: Duration::from_secs_f64(r.backoff_max_secs.max(0.0)),
            budget: Duration::from_secs_f64(r.retry_budget_secs.max(0.0)),
        }
    }

    /// The pause before try `next_try` (2, 3, ...): exponential with full jitter in [½, 1], at least
    /// the server's Retry-After.
    pub fn pause(&self, next_try: u32, retry_after: Option<f64>) -> Duration {
        let exp = self.initial.saturating_mul(1u32 << (next_try.saturating_sub(2)).min(20));
        let capped = exp.min(self.max_pause);
        let jitter = rand::rng().random_range(0.5..=1.0);
        let pause = capped.mul_f64(jitter);
        match retry_after {
            Some(secs) if secs.is_finite() && secs > 0.0 => pause.max(Duration::from_secs_f64(secs.min(3600.0))),
            _ => pause,
        }
    }
}

/// Shared counters for progress and the final line.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicUsize,
    pub generation_errors: AtomicUsize,
    pub judge_errors: AtomicUsize,
    pub retrying: AtomicUsize,
    pub retries: AtomicUsize,
}

/// The outcome of one call with retries.
enum Tried<T> {
    Done(Result<T, BackendError>, u32),
    Cancelled,
}

fn with_retries<T>(
    policy: &RetryPolicy,
    cancel: &AtomicBool,
    progress: &Progress,
    mut call: impl FnMut() -> Result<T, BackendError>,
) -> Tried<T> {
    let start = Instant::now();
    let mut tries = 0u32;
    loop {
        tries += 1;
        let result = call();
        let err = match result {
            Ok(v) => return Tried::Done(Ok(v), tries),
            Err(e) => e,
        };
        if !err.kind.is_retryable() || tries >= policy.max_tries {
            return Tried::Done(Err(with_tries(err, tries, start)), tries);
        }
        let pause = policy.pause(tries + 1, err.retry_after_secs);
        if start.elapsed() + pause > policy.budget {
            return Tried::Done(Err(with_tries(err, tries, start)), tries);
        }
        tracing::debug!(kind = %err.kind, ?pause, "retrying: {}", err.message);
        progress.retrying.fetch_add(1, Ordering::Relaxed);
        progress.retries.fetch_add(1, Ordering::Relaxed);
        let cancelled = sleep_unless_cancelled(pause, cancel);
        progress.retrying.fetch_sub(1, Ordering::Relaxed);
        if cancelled {
            return Tried::Cancelled;
        }
    }
}

fn with_tries(mut e: BackendError, tries: u32, start: Instant) -> BackendError {
    if tries > 1 {
        e.message = format!("{} (gave up after {tries} tries in {:.1}s)", e.message, start.elapsed().as_secs_f64());
    }
    e
}

/// Sleeps, waking early when `cancel` is set; returns whether it was cancelled.
fn sleep_unless_cancelled(d: Duration, cancel: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if cancel.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    cancel.load(Ordering::Relaxed)
}

fn sha256_json(v: &serde_json::Value) -> String {
    store::sha256_hex(&serde_json::to_string(v).unwrap_or_default())
}

/// The provenance of answers a model section produces through `library`.
pub fn answer_provenance(lib: &BackendLibrary, model: &ModelSection, settings: GenerationSettings) -> AnswerProvenance {
    AnswerProvenance {
        backend: lib.info.name.clone(),
        backend_version: lib.info.version.clone(),
        arch: model.arch.clone(),
        checkpoint: model.checkpoint.clone(),
        device: model.device.clone(),
        dtype: model.dtype.clone(),
        settings,
        // The backend declares each arch's message layout; the host never decides it from the name.
        prompt: lib.info.message_layout(&model.arch).id(),
        options_sha256: sha256_json(&model.options_json()),
    }
}

fn backend_config(model: &ModelSection, base_dir: &Path) -> BackendConfig {
    BackendConfig {
        arch: model.arch.clone(),
        checkpoint: model.checkpoint.clone(),
        device: model.device.clone(),
        dtype: model.dtype.clone(),
        options: model.options_json(),
        base_dir: base_dir.to_path_buf(),
    }
}

/// Checks, before any model is loaded, that the local paths a backend will read exist: the
/// checkpoint folder when the backend says it is one, and the options it names as paths.
pub fn check_local_paths(lib: &BackendLibrary, model: &ModelSection, base_dir: &Path) -> anyhow::Result<()> {
    backend::check_options(lib, model)?;
    let resolve = |p: &str| if Path::new(p).is_absolute() { PathBuf::from(p) } else { base_dir.join(p) };
    if lib.info.checkpoint_is_path {
        let Some(ck) = model.checkpoint.as_deref() else {
            bail!("arch {} needs `checkpoint = \"<folder>\"`: the checkpoint folder to load", model.arch);
        };
        let dir = resolve(ck);
        if !dir.is_dir() {
            bail!(
                "checkpoint {}: {} (set `checkpoint` to the folder that holds the model's config.json and weights)",
                dir.display(),
                if dir.exists() { "not a folder" } else { "no such folder" }
            );
        }
    }
    for key in &lib.info.path_options {
        if let Some(v) = model.options.get(key).and_then(|v| v.as_str()) {
            let p = resolve(v);
            if !p.exists() {
                bail!("options.{key} {}: no such file or folder", p.display());
            }
        }
    }
    Ok(())
}

/// A backend created on first use, so a resumed run whose answers are all stored never loads the
/// model.
struct LazyBackend {
    library: BackendLibrary,
    config: BackendConfig,
    cell: OnceLock<Result<Backend, BackendError>>,
    init: Mutex<()>,
}

impl LazyBackend {
    fn new(library: BackendLibrary, config: BackendConfig) -> Self {
        Self { library, config, cell: OnceLock::new(), init: Mutex::new(()) }
    }

    fn get(&self) -> Result<&Backend, BackendError> {
        if self.cell.get().is_none() {
            let _guard = self.init.lock().unwrap_or_else(|e| e.into_inner());
            if self.cell.get().is_none() {
                tracing::info!("creating backend {} for arch {}", self.library.label(), self.config.arch);
                let created = Backend::create(self.library.clone(), &self.config);
                let _ = self.cell.set(created);
            }
        }
        match self.cell.get() {
            Some(Ok(b)) => Ok(b),
            Some(Err(e)) => Err(e.clone()),
            None => Err(BackendError::model_failure("backend was not created")),
        }
    }
}

/// Finds the judge component a manifest names: a `.wasm` path, or a judge name on the plugin path
/// (`vlsbench_judge_<name>.wasm`, dashes as underscores).
pub fn find_judge(component: &str, base_dir: &Path, dirs: &[PathBuf]) -> anyhow::Result<PathBuf> {
    if component.ends_with(".wasm") || component.contains('/') || component.contains('\\') {
        let p = Path::new(component);
        let p = if p.is_absolute() { p.to_path_buf() } else { base_dir.join(p) };
        crate::fsread::check_regular(&p, crate::fsread::FileKind::JudgeComponent)?;
        return Ok(p);
    }
    let file = format!("vlsbench_judge_{}.wasm", component.replace('-', "_"));
    for d in dirs {
        let p = d.join(&file);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "no judge named `{component}` ({file}) on the plugin path ({}); build the judges with `cargo xtask build` or give a .wasm path",
        backend::describe_dirs(dirs)
    )
}

/// Judge `.wasm` files on the search path.
pub fn judge_files(dirs: &[PathBuf]) -> Vec<PathBuf> {
    backend::files_on_path(dirs, |name| name.starts_with("vlsbench_judge_") && name.ends_with(".wasm"))
}

/// Limits from `[judge.limits]` over the defaults.
pub fn judge_limits(section: &JudgeSection) -> JudgeLimits {
    let d = JudgeLimits::default();
    let l = &section.limits;
    JudgeLimits {
        fuel: l.fuel.unwrap_or(d.fuel),
        timeout: l.timeout_secs.map(|s| Duration::from_secs_f64(s.max(0.001))).unwrap_or(d.timeout),
        memory_bytes: l.memory_mib.map(|m| (m as usize).saturating_mul(1 << 20)).unwrap_or(d.memory_bytes),
        max_output_bytes: l.max_output_kib.map(|k| (k as usize).saturating_mul(1 << 10)).unwrap_or(d.max_output_bytes),
    }
}

/// Everything a run needs, resolved and checked, before any item runs. `validate` stops here.
pub struct Prepared {
    pub manifest: LoadedManifest,
    pub dataset: Dataset,
    pub model_library: BackendLibrary,
    pub model_provenance: AnswerProvenance,
    pub judge: JudgeComponent,
    pub judge_model_library: Option<BackendLibrary>,
    pub judge_provenance: JudgeProvenance,
    pub grants: Grants,
    pub limits: JudgeLimits,
    pub search_path: Vec<PathBuf>,
}

/// Resolves the manifest's dataset, backends and judge; runs nothing.
pub fn prepare(manifest: LoadedManifest, opts: &RunOptions) -> anyhow::Result<Prepared> {
    let m = &manifest.manifest;
    let dirs = backend::search_path(&opts.plugin_dirs);
    let root = manifest.dataset_root();
    let dataset = dataset::load(&root, &m.dataset.data_file, &Filters::from_section(&m.dataset))
        .with_context(|| format!("{}: [dataset]", manifest.path.display()))?;
    for w in &dataset.warnings {
        tracing::warn!("dataset: {w}");
    }
    let model_library = backend::find(&m.model.arch, m.model.backend.as_deref(), &manifest.base_dir, &dirs)
        .with_context(|| format!("{}: [model]", manifest.path.display()))?;
    check_local_paths(&model_library, &m.model, &manifest.base_dir)
        .with_context(|| format!("{}: [model]", manifest.path.display()))?;
    let model_provenance = answer_provenance(&model_library, &m.model, m.model.settings());

    let engine = JudgeEngine::new(opts.cache_dir.clone()).context("cannot start the judge engine")?;
    let judge_path = find_judge(&m.judge.component, &manifest.base_dir, &dirs)
        .with_context(|| format!("{}: [judge]", manifest.path.display()))?;
    let judge = engine.load(&judge_path).with_context(|| format!("{}: [judge]", manifest.path.display()))?;
    let info = judge.info().clone();
    let grants =
        Grants { chat: m.judge.grant.contains(&Capability::Chat), log: m.judge.grant.contains(&Capability::Log) };
    if info.wants_chat && !grants.chat {
        bail!(
            "{}: judge {} {} asks for the `chat` capability, which [judge] does not grant (add grant = [\"chat\"] and a [judge.model])",
            manifest.path.display(),
            info.name,
            info.version
        );
    }
    let judge_model_library = match (&m.judge.model, info.wants_chat) {
        (Some(jm), true) => Some(
            backend::find(&jm.arch, jm.backend.as_deref(), &manifest.base_dir, &dirs)
                .with_context(|| format!("{}: [judge.model]", manifest.path.display()))?,
        ),
        _ => None,
    };
    if let (Some(jm), Some(lib)) = (&m.judge.model, &judge_model_library) {
        check_local_paths(lib, jm, &manifest.base_dir)
            .with_context(|| format!("{}: [judge.model]", manifest.path.display()))?;
    }
    let judge_model_provenance = match (&m.judge.model, &judge_model_library) {
        (Some(jm), Some(lib)) => Some(answer_provenance(lib, jm, jm.generation.clone())),
        _ => None,
    };
    let judge_provenance = JudgeProvenance {
        judge: info.name.clone(),
        judge_version: info.version.clone(),
        component_sha256: judge.sha256().to_string(),
        config: m.judge.config_json(),
        model: judge_model_provenance,
    };
    let limits = judge_limits(&m.judge);
    Ok(Prepared {
        manifest,
        dataset,
        model_library,
        model_provenance,
        judge,
        judge_model_library,
        judge_provenance,
        grants,
        limits,
        search_path: dirs,
    })
}

/// The judge's `chat` capability: the judge model's backend, with the run's retries.
struct JudgeChat<'a> {
    backend: Option<&'a LazyBackend>,
    settings: &'a GenerationSettings,
    policy: &'a RetryPolicy,
    cancel: &'a AtomicBool,
    progress: &'a Progress,
}

impl ChatProvider for JudgeChat<'_> {
    fn chat(&self, mut request: GenerateRequest) -> Result<String, ChatFailure> {
        let Some(lazy) = self.backend else {
            return Err(ChatFailure::Failed("no [judge.model] is configured".into()));
        };
        let backend = lazy.get().map_err(|e| ChatFailure::Failed(e.to_string()))?;
        // Manifest settings fill what the judge left open; the judge's own choices stand.
        let s = &mut request.settings;
        s.max_new_tokens = s.max_new_tokens.or(self.settings.max_new_tokens);
        s.temperature = s.temperature.or(self.settings.temperature);
        s.top_p = s.top_p.or(self.settings.top_p);
        match with_retries(self.policy, self.cancel, self.progress, || backend.generate_one(&request)) {
            Tried::Done(Ok(g), _) => Ok(g.text),
            Tried::Done(Err(e), _) if matches!(e.kind, ErrorKind::Refused | ErrorKind::ContentFiltered) => {
                Err(ChatFailure::Refused(e.to_string()))
            }
            Tried::Done(Err(e), _) => Err(ChatFailure::Failed(e.to_string())),
            Tried::Cancelled => Err(ChatFailure::Failed("cancelled".into())),
        }
    }
}

/// The pipeline's shared state.
struct Pipeline<'a> {
    prepared: &'a Prepared,
    store: &'a Store,
    stored: &'a Stored,
    model: LazyBackend,
    judge_model: Option<LazyBackend>,
    judge_settings: GenerationSettings,
    judge_config: String,
    policy: RetryPolicy,
    cancel: Arc<AtomicBool>,
    progress: Progress,
    judge_only: bool,
    /// Records written in this run, by id (the report reads stored ⊕ these).
    answers: Mutex<std::collections::BTreeMap<u32, AnswerRecord>>,
    verdicts: Mutex<std::collections::BTreeMap<u32, VerdictRecord>>,
    fatal: Mutex<Option<anyhow::Error>>,
}

impl Pipeline<'_> {
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    fn fail(&self, e: anyhow::Error) {
        let mut f = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Generates (unless stored) then judges (unless stored) a batch of items: the items that need
    /// an answer go to the backend in one `generate` call (a backend that declares `max_batch` 1
    /// gets batches of one), then each answer is judged.
    fn process_batch(&self, batch: &[&Item]) -> anyhow::Result<()> {
        let p = self.prepared;
        let mut answers: Vec<Option<String>> = Vec::with_capacity(batch.len());
        let mut todo = Vec::new();
        for (k, item) in batch.iter().enumerate() {
            match store::reusable_answer(self.stored, item.instruction_id, &p.model_provenance) {
                Some(a) => answers.push(Some(a.to_string())),
                None => {
                    answers.push(None);
                    todo.push(k);
                }
            }
        }
        if !todo.is_empty() && !self.judge_only {
            let generated = self.generate(&todo.iter().map(|&k| batch[k]).collect::<Vec<_>>())?;
            for (k, a) in todo.into_iter().zip(generated) {
                answers[k] = a;
            }
        }
        for (item, answer) in batch.iter().zip(answers) {
            if self.cancelled() {
                break;
            }
            if let Some(answer) = answer {
                self.judge_one(item, &answer)?;
            }
            self.progress.done.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Answers for `items` (none stored): one batched call, then each item whose result is a
    /// retryable error tried again on its own. Records every outcome; `None` where there is no
    /// answer (an error, or a cancellation that leaves the item for the next run).
    fn generate(&self, items: &[&Item]) -> anyhow::Result<Vec<Option<String>>> {
        let p = self.prepared;
        let mut requests = Vec::with_capacity(items.len());
        let layout = p.model_library.info.message_layout(&p.manifest.manifest.model.arch);
        for item in items {
            let image = p.dataset.image_file(item).context("image was not validated")?;
            requests.push(GenerateRequest {
                id: item.instruction_id.to_string(),
                messages: layout.messages(&item.instruction, image),
                settings: p.model_provenance.settings.clone(),
                response_format: None,
            });
        }
        let start = Instant::now();
        let mut results: Vec<Option<(Result<Generation, BackendError>, u32)>> = if requests.len() == 1 {
            vec![None]
        } else {
            match with_retries(&self.policy, &self.cancel, &self.progress, || {
                self.model.get().and_then(|b| b.generate(&requests))
            }) {
                Tried::Done(Ok(rs), n) if rs.len() == requests.len() => rs.into_iter().map(|r| Some((r, n))).collect(),
                Tried::Done(Ok(rs), n) => {
                    let e = BackendError::model_failure(format!(
                        "the backend returned {} results for {} requests",
                        rs.len(),
                        requests.len()
                    ));
                    requests.iter().map(|_| Some((Err(e.clone()), n))).collect()
                }
                Tried::Done(Err(e), n) => requests.iter().map(|_| Some((Err(e.clone()), n))).collect(),
                Tried::Cancelled => return Ok(vec![None; items.len()]),
            }
        };
        let batch_ms = start.elapsed().as_millis() as u64 / requests.len().max(1) as u64;
        let mut out = Vec::with_capacity(items.len());
        for ((item, request), slot) in items.iter().zip(&requests).zip(results.iter_mut()) {
            let id = item.instruction_id;
            let item_start = Instant::now();
            // A batch member that failed retryably is tried again alone, counting the batch's try.
            let (result, attempts) = match slot.take() {
                Some((Err(e), n)) if e.kind.is_retryable() && n < self.policy.max_tries => {
                    match with_retries(&self.policy, &self.cancel, &self.progress, || {
                        self.model.get().and_then(|b| b.generate_one(request))
                    }) {
                        Tried::Done(r, m) => (r, n + m),
                        Tried::Cancelled => {
                            out.push(None);
                            continue;
                        }
                    }
                }
                Some(done) => done,
                None => match with_retries(&self.policy, &self.cancel, &self.progress, || {
                    self.model.get().and_then(|b| b.generate_one(request))
                }) {
                    Tried::Done(r, n) => (r, n),
                    Tried::Cancelled => {
                        out.push(None);
                        continue;
                    }
                },
            };
            let outcome = match &result {
                Ok(g) => AnswerOutcome::Ok { answer: strip_answer(&g.text).to_string() },
                Err(e) => AnswerOutcome::Error { kind: e.kind.as_str().to_string(), message: e.message.clone() },
            };
            let record = AnswerRecord {
                id,
                outcome,
                provenance: p.model_provenance.clone(),
                attempts,
                elapsed_ms: batch_ms + item_start.elapsed().as_millis() as u64,
                input_sha256: p.dataset.input_sha256(item),
            };
            self.store.append_answer(&record)?;
            let answer = record.outcome.answer().map(str::to_string);
            self.answers.lock().unwrap_or_else(|e| e.into_inner()).insert(id, record);
            if answer.is_none()
                && let Err(e) = &result
            {
                tracing::warn!("item {id}: generation failed: {e}");
                if e.kind == ErrorKind::BadConfig {
                    // The model cannot be created: every other item would fail the same way.
                    self.fail(anyhow::anyhow!("cannot create the model under test: {e}"));
                }
                self.progress.generation_errors.fetch_add(1, Ordering::Relaxed);
            }
            out.push(answer);
        }
        Ok(out)
    }

    /// Judges one answer unless a verdict for it is stored.
    fn judge_one(&self, item: &Item, answer: &str) -> anyhow::Result<()> {
        let id = item.instruction_id;
        let p = self.prepared;
        if store::reusable_verdict(self.stored, id, answer, &p.judge_provenance).is_some() {
            return Ok(());
        }
        let chat = JudgeChat {
            backend: self.judge_model.as_ref(),
            settings: &self.judge_settings,
            policy: &self.policy,
            cancel: &self.cancel,
            progress: &self.progress,
        };
        let judge_item = JudgeItem {
            id,
            question: &item.instruction,
            category: &item.category,
            sub_category: &item.sub_category,
            source: &item.source,
            image: p.dataset.image_file(item),
        };
        let start = Instant::now();
        let result = p.judge.judge(&self.judge_config, &judge_item, answer, p.grants, &p.limits, &chat);
        if self.cancelled() && result.is_err() {
            // The failure may come from the cancellation itself: leave the item for the next run.
            return Ok(());
        }
        let outcome = match result {
            Ok(v) => VerdictOutcome::ok(v.label, v.explanation, v.raw),
            Err(e) => {
                tracing::warn!("item {id}: judge failed: {} ({e})", e.kind());
                self.progress.judge_errors.fetch_add(1, Ordering::Relaxed);
                VerdictOutcome::Error { kind: e.kind().to_string(), message: e.to_string() }
            }
        };
        let record = VerdictRecord {
            id,
            answer_sha256: store::sha256_hex(answer),
            outcome,
            provenance: p.judge_provenance.clone(),
            attempts: 1,
            elapsed_ms: start.elapsed().as_millis() as u64,
            input_sha256: p.dataset.input_sha256(item),
        };
        self.store.append_verdict(&record)?;
        self.verdicts.lock().unwrap_or_else(|e| e.into_inner()).insert(id, record);
        Ok(())
    }
}

/// Takes the run folder's lock file for the whole run: two processes appending to the same
/// answers would interleave their work. The OS releases the lock when the process dies.
fn lock_run_dir(run_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = run_dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!("another vlsbench-host is running in {} (its lock file is held)", run_dir.display())
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

/// Writes the manifest copy and `run.json` (where the manifest's relative paths start).
fn write_run_files(run_dir: &Path, manifest: &LoadedManifest) -> anyhow::Result<()> {
    std::fs::create_dir_all(run_dir).with_context(|| format!("cannot create run folder {}", run_dir.display()))?;
    std::fs::write(run_dir.join("manifest.toml"), &manifest.text)
        .with_context(|| format!("cannot write {}", run_dir.join("manifest.toml").display()))?;
    let base = manifest.base_dir.canonicalize().unwrap_or_else(|_| manifest.base_dir.clone());
    let info = serde_json::json!({
        "manifest": manifest.path.canonicalize().unwrap_or_else(|_| manifest.path.clone()),
        "manifest_base_dir": base,
        "host_version": env!("CARGO_PKG_VERSION"),
    });
    let text = serde_json::to_string_pretty(&info).context("cannot serialise run.json")?;
    std::fs::write(run_dir.join("run.json"), text)
        .with_context(|| format!("cannot write {}/run.json", run_dir.display()))
}

/// Runs a prepared manifest to the end (or until `cancel` is set), then writes the reports.
pub fn execute(prepared: &Prepared, opts: &RunOptions, cancel: Arc<AtomicBool>) -> anyhow::Result<RunOutcome> {
    let m = &prepared.manifest;
    let run_dir = m.run_dir();
    std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create run folder {}", run_dir.display()))?;
    let _lock = lock_run_dir(&run_dir)?;
    write_run_files(&run_dir, m)?;
    let (store, mut stored) = Store::open(&run_dir)?;
    stored.forget_stale(&prepared.dataset.input_hashes()).log();
    if stored.dropped_torn_lines > 0 {
        tracing::warn!("dropped {} torn line(s) left by an interrupted run", stored.dropped_torn_lines);
    }
    let items = &prepared.dataset.items;
    let base_dir = &m.base_dir;
    let model = LazyBackend::new(
        prepared.model_library.clone().with_call_timeout(&m.manifest.model),
        backend_config(&m.manifest.model, base_dir),
    );
    let judge_model = match (&m.manifest.judge.model, &prepared.judge_model_library) {
        (Some(jm), Some(lib)) => {
            Some(LazyBackend::new(lib.clone().with_call_timeout(jm), backend_config(jm, base_dir)))
        }
        _ => None,
    };
    let pipeline = Pipeline {
        prepared,
        store: &store,
        stored: &stored,
        model,
        judge_model,
        judge_settings: m.manifest.judge.model.as_ref().map(|jm| jm.generation.clone()).unwrap_or_default(),
        judge_config: serde_json::to_string(&m.manifest.judge.config_json()).unwrap_or_else(|_| "{}".into()),
        policy: RetryPolicy::from_manifest(m),
        cancel,
        progress: Progress::default(),
        judge_only: opts.judge_only,
        answers: Mutex::new(Default::default()),
        verdicts: Mutex::new(Default::default()),
        fatal: Mutex::new(None),
    };

    let total = items.len();
    let already = items
        .iter()
        .filter(|i| {
            store::reusable_answer(&stored, i.instruction_id, &prepared.model_provenance).is_some_and(|a| {
                store::reusable_verdict(&stored, i.instruction_id, a, &prepared.judge_provenance).is_some()
            })
        })
        .count();
    if already > 0 {
        tracing::info!("resuming: {already} of {total} items already finished");
    }
    let bar = progress_bar(total as u64, opts.progress);
    bar.set_position(0);
    let next = AtomicUsize::new(0);
    let workers = m.manifest.run.concurrency.min(total).max(1);
    // Items go to the model in batches as large as the backend accepts (1 when it batches nothing).
    let batch_size = (prepared.model_library.info.max_batch.max(1) as usize).min(total.div_ceil(workers).max(1));
    let started = Instant::now();
    let monitor_done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| monitor(&pipeline.progress, &bar, total, started, &monitor_done));
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    loop {
                        if pipeline.cancelled() {
                            break;
                        }
                        let i = next.fetch_add(batch_size, Ordering::Relaxed);
                        let batch: Vec<&Item> = items.iter().skip(i).take(batch_size).collect();
                        if batch.is_empty() {
                            break;
                        }
                        if let Err(e) = pipeline.process_batch(&batch) {
                            let ids: Vec<String> = batch.iter().map(|i| i.instruction_id.to_string()).collect();
                            pipeline.fail(e.context(format!("item(s) {}", crate::fsread::list_ids(&ids, 10))));
                            break;
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            let _ = h.join();
        }
        monitor_done.store(true, Ordering::Relaxed);
    });
    bar.finish_and_clear();

    let interrupted = pipeline.cancelled();
    if let Some(e) = pipeline.fatal.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(e);
    }
    // Final state: what was stored before, replaced by what this run wrote.
    let mut answers = stored.answers.clone();
    answers.extend(pipeline.answers.into_inner().unwrap_or_else(|e| e.into_inner()));
    let mut verdicts = stored.verdicts.clone();
    verdicts.extend(pipeline.verdicts.into_inner().unwrap_or_else(|e| e.into_inner()));
    let root_text = m.manifest.dataset.root.display().to_string();
    let input = ReportInput {
        arch: &m.manifest.model.arch,
        dataset_root: &root_text,
        dataset_items: prepared.dataset.all_items,
        items,
        answers: &answers,
        verdicts: &verdicts,
        model: &prepared.model_provenance,
        judge: &prepared.judge_provenance,
    };
    report::write_all(&run_dir, &input)?;
    let summary = Summary::compute(&input);
    let unscored = summary.not_scored.total();
    Ok(RunOutcome { run_dir, terminal_summary: report::terminal_summary(&summary), summary, interrupted, unscored })
}

fn progress_bar(total: u64, enabled: bool) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    let style = indicatif::ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} {msg} ETA {eta}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// Updates the bar; when stderr is not a terminal, logs a progress line every 10 seconds instead.
fn monitor(p: &Progress, bar: &indicatif::ProgressBar, total: usize, started: Instant, stop: &AtomicBool) {
    let mut last_log = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let done = p.done.load(Ordering::Relaxed);
        let msg = format!(
            "gen errors {} · judge errors {} · retrying {}",
            p.generation_errors.load(Ordering::Relaxed),
            p.judge_errors.load(Ordering::Relaxed),
            p.retrying.load(Ordering::Relaxed)
        );
        bar.set_position(done as u64);
        bar.set_message(msg.clone());
        if bar.is_hidden() && last_log.elapsed() >= Duration::from_secs(10) {
            tracing::info!("{done}/{total} items · {msg} · {:.0}s", started.elapsed().as_secs_f64());
            last_log = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_stripped_as_python_strips_them() {
        assert_eq!(strip_answer("\u{1f} \u{a0}answer\u{3000}\n\u{1c}"), "answer");
        assert_eq!(strip_answer("\u{200b}x "), "\u{200b}x");
    }

    #[test]
    fn backoff_doubles_within_jitter_and_honours_retry_after() {
        let p = RetryPolicy {
            max_tries: 5,
            initial: Duration::from_millis(100),
            max_pause: Duration::from_secs(1),
            budget: Duration::from_secs(10),
        };
        let second = p.pause(2, None);
        assert!(second >= Duration::from_millis(50) && second <= Duration::from_millis(100), "{second:?}");
        let fourth = p.pause(4, None);
        assert!(fourth >= Duration::from_millis(200) && fourth <= Duration::from_millis(400), "{fourth:?}");
        assert!(p.pause(30, None) <= Duration::from_secs(1));
        assert!(p.pause(2, Some(2.0)) >= Duration::from_secs(2));
    }

    #[test]
    fn retries_stop_at_max_tries_and_keep_the_last_error() {
        let p = RetryPolicy {
            max_tries: 3,
            initial: Duration::from_millis(1),
            max_pause: Duration::from_millis(2),
            budget: Duration::from_secs(5),
        };
        let calls = AtomicUsize::new(0);
        let tried = with_retries(&p, &AtomicBool::new(false), &Progress::default(), || -> Result<(), _> {
            calls.fetch_add(1, Ordering::Relaxed);
            Err(BackendError::new(ErrorKind::ServerError, "boom"))
        });
        match tried {
            Tried::Done(Err(e), 3) => assert!(e.message.contains("gave up after 3 tries"), "{e}"),
            _ => panic!("expected a final error after 3 tries"),
        }
        assert_eq!(calls.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_non_retryable_error_is_not_retried() {
        let p = RetryPolicy {
            max_tries: 3,
            initial: Duration::from_millis(1),
            max_pause: Duration::from_millis(2),
            budget: Duration::from_secs(5),
        };
        let tried = with_retries(&p, &AtomicBool::new(false), &Progress::default(), || -> Result<(), _> {
            Err(BackendError::bad_request("no"))
        });
        assert!(matches!(tried, Tried::Done(Err(_), 1)));
    }
}
