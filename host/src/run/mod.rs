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
//! - [`progress`]: the counters, the bar, the log lines.
//!
//! [`execute`] ties them together: the run folder, the pipeline, then the reports.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, bail};

use crate::fsutil::write_atomic;
use crate::manifest::LoadedManifest;
use crate::report::{self, ReportInput, Summary};
use crate::store::{self, Store, Stored};

mod pipeline;
pub mod prepare;
pub mod progress;
pub mod retry;

pub use prepare::{Prepared, answer_provenance, check_local_paths, judge_limits, prepare};
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

/// Runs a prepared manifest to the end (or until `cancel` is set), then writes the reports.
pub fn execute(prepared: &Prepared, opts: &RunOptions, cancel: Arc<AtomicBool>) -> anyhow::Result<RunOutcome> {
    let run_dir = prepared.manifest.run_dir();
    std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create run folder {}", run_dir.display()))?;
    let _lock = lock_run_dir(&run_dir)?;
    write_run_files(&run_dir, &prepared.manifest)?;
    let (store, mut stored) = Store::open(&run_dir)?;
    stored.forget_stale(&prepared.dataset.input_hashes()).log();
    if stored.dropped_torn_lines > 0 {
        tracing::warn!("dropped {} torn line(s) left by an interrupted run", stored.dropped_torn_lines);
    }
    log_resume(prepared, &stored);
    let pipeline = pipeline::Pipeline::new(prepared, (&store, &stored), opts.judge_only, cancel);
    pipeline.run(opts.progress);
    let interrupted = pipeline.cancelled();
    let written = pipeline.finish()?;

    // Final state: what was stored before, replaced by what this run wrote.
    let mut answers = stored.answers;
    answers.extend(written.answers);
    let mut verdicts = stored.verdicts;
    verdicts.extend(written.verdicts);
    let m = &prepared.manifest.manifest;
    let root_text = m.dataset.root.display().to_string();
    let input = ReportInput {
        arch: &m.model.arch,
        dataset_root: &root_text,
        dataset_items: prepared.dataset.all_items,
        items: &prepared.dataset.items,
        answers: &answers,
        verdicts: &verdicts,
        model: &prepared.model_provenance,
        judge: &prepared.judge_provenance,
    };
    let summary = Summary::compute(&input);
    let images = prepared.dataset.images.iter().map(|(k, i)| (k.clone(), i.path.clone())).collect();
    report::write_all(&run_dir, &input, &summary, &images)?;
    let unscored = summary.not_scored.total();
    Ok(RunOutcome { run_dir, terminal_summary: report::terminal_summary(&summary), summary, interrupted, unscored })
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

/// Writes the manifest copy and `run.json` (where the manifest's relative paths start).
fn write_run_files(run_dir: &Path, manifest: &LoadedManifest) -> anyhow::Result<()> {
    let manifest_copy = run_dir.join("manifest.toml");
    write_atomic(&manifest_copy, manifest.text.as_bytes())
        .with_context(|| format!("cannot write {}", manifest_copy.display()))?;
    let base = manifest.base_dir.canonicalize().unwrap_or_else(|_| manifest.base_dir.clone());
    let info = serde_json::json!({
        "manifest": manifest.path.canonicalize().unwrap_or_else(|_| manifest.path.clone()),
        "manifest_base_dir": base,
        "host_version": env!("CARGO_PKG_VERSION"),
    });
    let text = serde_json::to_string_pretty(&info).context("cannot serialise run.json")?;
    write_atomic(&run_dir.join("run.json"), text.as_bytes())
        .with_context(|| format!("cannot write {}/run.json", run_dir.display()))
}
