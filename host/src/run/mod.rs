//! Run stage: every selected item goes through **generate** (the backend answers the query with
//! the image) then **judge** (the component labels the answer), on `[run] concurrency` worker
//! threads. Each finished step is stored before the next starts, so a crash or a kill loses at
//! most the items in flight, and the same command picks up where it stopped. One concern per file:
//!
//! - [`prepare`]: the manifest's dataset, backends and judge resolved and checked (`validate`
//!   stops there);
//! - `pipeline`: the workers, batching, the two stages and what they store;
//! - [`retry`]: retryable backend failures (rate limits, server errors, timeouts, unreadable
//!   replies) tried again with exponential backoff and jitter, honouring Retry-After, within
//!   `max_tries` and `retry_budget_secs`. A failure is stored as an error, never as an answer or
//!   a label;
//! - [`limiter`]: how many calls go to each endpoint at once, fixed or found as the run goes;
//! - [`progress`]: the counters, the bar, the log lines.
//!
//! [`execute`] ties them together: the run folder, the pipeline, then the reports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, bail};

use crate::fsutil::write_atomic;
use crate::manifest::LoadedManifest;
use crate::report::{self, ReportInput, Summary};
use crate::shard::Shard;
use crate::store::{self, AnswerProvenance, AnswerRecord, JudgeProvenance, Store, Stored, VerdictRecord};

pub mod limiter;
mod pipeline;
pub mod prepare;
pub mod progress;
pub mod retry;

pub use prepare::{
    AnswerSource, Prepared, answer_provenance, backend_config, check_local_paths, judge_limits, prepare, prepare_with,
};
pub use progress::Progress;
pub use retry::RetryPolicy;

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
    /// Run only this part of the selected items (`--shard`, or the scheduler's variables).
    pub shard: Option<Shard>,
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
    /// What each endpoint's concurrency limit did.
    pub concurrency: Vec<limiter::LimiterStats>,
}

/// Runs a prepared manifest to the end (or until `cancel` is set), then writes the reports.
pub fn execute(prepared: &Prepared, opts: &RunOptions, cancel: Arc<AtomicBool>) -> anyhow::Result<RunOutcome> {
    let run_dir = prepared.manifest.run_dir();
    std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create run folder {}", run_dir.display()))?;
    let _lock = lock_run_dir(&run_dir)?;
    write_run_files(&run_dir, prepared, opts.shard)?;
    let (store, mut stored) = Store::open(&run_dir)?;
    stored.forget_stale(&prepared.dataset.input_hashes()).log();
    if stored.dropped_torn_lines > 0 {
        tracing::warn!("dropped {} torn line(s) left by an interrupted run", stored.dropped_torn_lines);
    }
    log_resume(prepared, &stored);
    // The report's thumbnails are made while the items run, off the run's critical path.
    let images = image_files(&prepared.dataset);
    let half = std::thread::available_parallelism().map_or(1, |n| n.get() / 2);
    let thumbs_dir = run_dir.clone();
    let thumbnails = std::thread::spawn(move || report::thumbs::thumbnails_cached(&thumbs_dir, &images, half));
    let pipeline = pipeline::Pipeline::new(prepared, (&store, &stored), opts.judge_only, cancel);
    let t0 = std::time::Instant::now();
    pipeline.run(opts.progress);
    let items_secs = t0.elapsed().as_secs_f64();
    let interrupted = pipeline.cancelled();
    let written = pipeline.finish()?;
    let concurrency = written.concurrency;
    let mut info = RunInfo::read(&run_dir)?;
    info.concurrency = concurrency.clone();
    info.write(&run_dir)?;

    // Final state: what was stored before, replaced by what this run wrote.
    let mut answers = stored.answers;
    answers.extend(written.answers);
    let mut verdicts = stored.verdicts;
    verdicts.extend(written.verdicts);
    let records = Records { answers: &answers, verdicts: &verdicts };
    let provenance = (&prepared.model_provenance, &prepared.judge_provenance);
    let thumbnails = thumbnails.join().ok();
    let t1 = std::time::Instant::now();
    let summary = write_reports(&run_dir, &prepared.manifest, &prepared.dataset, records, provenance, thumbnails)?;
    tracing::debug!("items ran in {items_secs:.3} s; reports written in {:.3} s", t1.elapsed().as_secs_f64());
    let unscored = summary.not_scored.total();
    let terminal_summary = report::terminal_summary(&summary);
    Ok(RunOutcome { run_dir, terminal_summary, summary, interrupted, unscored, concurrency })
}

/// A run's final records: the latest answer and verdict of each item.
#[derive(Clone, Copy)]
pub struct Records<'a> {
    pub answers: &'a BTreeMap<u32, AnswerRecord>,
    pub verdicts: &'a BTreeMap<u32, VerdictRecord>,
}

/// Computes the summary of `records` over the dataset's selected items and writes the run's
/// reports (`summary.json`, `<arch>_outputs.json`, `report.html`). A run and a merge of its shards
/// both end here, so the same records give the same files. `thumbnails` are the report's, when
/// made beforehand (else they are made here).
pub fn write_reports(
    run_dir: &Path,
    manifest: &LoadedManifest,
    dataset: &crate::dataset::Dataset,
    records: Records<'_>,
    (model, judge): (&AnswerProvenance, &JudgeProvenance),
    thumbnails: Option<BTreeMap<String, String>>,
) -> anyhow::Result<Summary> {
    let m = &manifest.manifest;
    let root_text = m.dataset.root.display().to_string();
    let input = ReportInput {
        arch: &m.model.arch,
        dataset_root: &root_text,
        dataset_items: dataset.all_items,
        items: &dataset.items,
        answers: records.answers,
        verdicts: records.verdicts,
        model,
        judge,
    };
    let summary = Summary::compute(&input);
    let images = dataset.images.iter().map(|(k, i)| (k.clone(), i.path.clone())).collect();
    let thumbnails = thumbnails.unwrap_or_else(|| {
        let all = std::thread::available_parallelism().map_or(1, |n| n.get());
        report::thumbs::thumbnails_cached(run_dir, &image_files(dataset), all)
    });
    report::write_all(run_dir, &input, &summary, &images, Some(thumbnails))?;
    Ok(summary)
}

/// Each image of the dataset (by its path in `data.json`): its file and the SHA-256 of its bytes.
fn image_files(dataset: &crate::dataset::Dataset) -> BTreeMap<String, (PathBuf, String)> {
    dataset.images.iter().map(|(k, i)| (k.clone(), (i.path.clone(), i.sha256.clone()))).collect()
}

/// Says how many items a resumed run finds finished already.
fn log_resume(prepared: &Prepared, stored: &Stored) {
    let items = &prepared.dataset.items;
    let finished = |id| {
        store::reusable_answer(stored, id, &prepared.model_provenance)
            .is_some_and(|a| store::reusable_verdict(stored, id, a, &prepared.judge_provenance).is_some())
    };
    let already = items.iter().filter(|i| finished(i.instruction_id)).count();
    if already > 0 {
        tracing::info!("resuming: {already} of {} items already finished", items.len());
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

/// Writes the manifest copy and `run.json`: where the manifest's relative paths start, what made
/// the answers and verdicts, and the shard this folder holds, if any ([`crate::shard::merge`]
/// checks the shards of one run against each other with it).
fn write_run_files(run_dir: &Path, prepared: &Prepared, shard: Option<Shard>) -> anyhow::Result<()> {
    let manifest = &prepared.manifest;
    let manifest_copy = run_dir.join("manifest.toml");
    write_atomic(&manifest_copy, manifest.text.as_bytes())
        .with_context(|| format!("cannot write {}", manifest_copy.display()))?;
    let base = manifest.base_dir.canonicalize().unwrap_or_else(|_| manifest.base_dir.clone());
    let info = RunInfo {
        manifest: manifest.path.canonicalize().unwrap_or_else(|_| manifest.path.clone()),
        manifest_base_dir: base,
        host_version: env!("CARGO_PKG_VERSION").to_owned(),
        provenance: Some(report::Provenance {
            model: prepared.model_provenance.clone(),
            judge: prepared.judge_provenance.clone(),
        }),
        shard,
        merged_from: Vec::new(),
        concurrency: Vec::new(),
    };
    info.write(run_dir)
}

/// `run.json`: what a run folder holds beside its records.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunInfo {
    /// The manifest the run was started from.
    pub manifest: PathBuf,
    /// Where its relative paths start.
    pub manifest_base_dir: PathBuf,
    pub host_version: String,
    /// What made the answers and the verdicts (absent in folders written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<report::Provenance>,
    /// The shard of the run this folder holds (absent for a whole run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    /// The shard folders a merged run was made from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<PathBuf>,
    /// What each endpoint's concurrency limit did in the last run (not in `summary.json`, which
    /// depends on the records alone, so a merge of shards equals the run made in one go).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub concurrency: Vec<limiter::LimiterStats>,
}

/// The file name of [`RunInfo`].
pub const RUN_INFO_FILE: &str = "run.json";

impl RunInfo {
    /// Reads `run_dir`'s `run.json`.
    pub fn read(run_dir: &Path) -> anyhow::Result<Self> {
        let path = run_dir.join(RUN_INFO_FILE);
        let text = crate::fsread::read_to_string(&path, crate::fsread::FileKind::RunInfo)?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a run.json", path.display()))
    }

    /// Writes it into `run_dir`.
    pub fn write(&self, run_dir: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self).context("cannot serialise run.json")?;
        let path = run_dir.join(RUN_INFO_FILE);
        write_atomic(&path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
    }
}
