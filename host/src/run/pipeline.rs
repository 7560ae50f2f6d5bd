//! The pipeline: worker threads take batches of items; each item is generated (unless a reusable
//! answer is stored) then judged (unless a reusable verdict is stored), and every outcome is
//! appended to the store before the next step starts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use anyhow::Context;
use vlsbench_plugin_api::{
    BackendConfig, BackendError, ErrorKind, GenerateRequest, Generation, GenerationSettings, python_strip,
};

use super::limiter::{Limiter, LimiterStats};
use super::prepare::{Prepared, backend_config, judge_config_text};
use super::progress::{Progress, monitor, progress_bar};
use super::retry::{RetryPolicy, Tried, with_retries};
use crate::backend::{Backend, BackendLibrary};
use crate::dataset::Item;
use crate::judge::{ChatFailure, ChatProvider, JudgeItem};
use crate::manifest::{Concurrency, DEFAULT_LOCAL_CONCURRENCY};
use crate::store::{self, AnswerOutcome, AnswerRecord, Store, Stored, VerdictOutcome, VerdictRecord};

/// One item's generation: the result and how many tries it took.
type Attempt = (Result<Generation, BackendError>, u32);

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

/// The judge's `chat` capability: the judge model's backend, with the run's retries.
struct JudgeChat<'a> {
    backend: Option<&'a LazyBackend>,
    settings: &'a GenerationSettings,
    policy: &'a RetryPolicy,
    limiter: &'a Limiter,
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
        match with_retries(self.policy, self.cancel, self.progress, self.limiter, || backend.generate_one(&request)) {
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
pub(super) struct Pipeline<'a> {
    prepared: &'a Prepared,
    store: &'a Store,
    stored: &'a Stored,
    /// The model under test; `None` when re-judging stored answers.
    model: Option<LazyBackend>,
    judge_model: Option<LazyBackend>,
    judge_settings: GenerationSettings,
    judge_config: String,
    policy: RetryPolicy,
    /// Worker threads: the fixed concurrency, or `"auto"`'s ceiling.
    workers: usize,
    model_limiter: Limiter,
    judge_limiter: Limiter,
    cancel: Arc<AtomicBool>,
    progress: Progress,
    judge_only: bool,
    /// Records written in this run, by id (the report reads stored ⊕ these).
    answers: Mutex<BTreeMap<u32, AnswerRecord>>,
    verdicts: Mutex<BTreeMap<u32, VerdictRecord>>,
    fatal: Mutex<Option<anyhow::Error>>,
}

/// What a pipeline wrote, once it has finished.
pub(super) struct Written {
    pub answers: BTreeMap<u32, AnswerRecord>,
    pub verdicts: BTreeMap<u32, VerdictRecord>,
    /// What each endpoint's limiter did.
    pub concurrency: Vec<LimiterStats>,
}

impl<'a> Pipeline<'a> {
    pub(super) fn new(
        prepared: &'a Prepared,
        (store, stored): (&'a Store, &'a Stored),
        judge_only: bool,
        cancel: Arc<AtomicBool>,
    ) -> Self {
        let m = &prepared.manifest;
        let base_dir = &m.base_dir;
        let judge_model = m.manifest.judge.model.as_ref().zip(prepared.judge_model_library.as_ref());
        let run = &m.manifest.run;
        let is_remote = |lib: &crate::backend::BackendLibrary| lib.info.devices.iter().any(|d| d == "remote");
        // "auto" by default when the calls that set the pace go to an API: the model's, or (when
        // only judging) the judge model's.
        let remote = match &prepared.model_library {
            Some(lib) => is_remote(lib),
            None => prepared.judge_model_library.as_ref().is_some_and(is_remote),
        };
        let mode = run.concurrency.unwrap_or(if remote {
            Concurrency::Auto
        } else {
            Concurrency::Fixed(DEFAULT_LOCAL_CONCURRENCY)
        });
        let (workers, model_limiter, judge_limiter) = match mode {
            Concurrency::Fixed(n) => (n, Limiter::fixed("model", n), Limiter::fixed("judge model", n)),
            Concurrency::Auto => (
                run.max_concurrency,
                Limiter::auto("model", run.max_concurrency),
                Limiter::auto("judge model", run.max_concurrency),
            ),
        };
        let mut policy = RetryPolicy::from_manifest(m);
        policy.throttles_use_tries = mode != Concurrency::Auto;
        Pipeline {
            prepared,
            store,
            stored,
            model: prepared.model_library.as_ref().map(|lib| {
                LazyBackend::new(
                    lib.clone().with_call_timeout(&m.manifest.model),
                    backend_config(&m.manifest.model, base_dir),
                )
            }),
            judge_model: judge_model
                .map(|(jm, lib)| LazyBackend::new(lib.clone().with_call_timeout(jm), backend_config(jm, base_dir))),
            judge_settings: m.manifest.judge.model.as_ref().map(|jm| jm.generation.clone()).unwrap_or_default(),
            judge_config: judge_config_text(&prepared.judge_provenance),
            policy,
            workers,
            model_limiter,
            judge_limiter,
            cancel,
            progress: Progress::default(),
            judge_only: judge_only || prepared.model_library.is_none(),
            answers: Mutex::new(BTreeMap::new()),
            verdicts: Mutex::new(BTreeMap::new()),
            fatal: Mutex::new(None),
        }
    }

    /// The model under test, created on first use.
    fn model_backend(&self) -> Result<&Backend, BackendError> {
        match &self.model {
            Some(model) => model.get(),
            None => Err(BackendError::bad_config("no model backend: this run only judges stored answers")),
        }
    }

    pub(super) fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    fn fail(&self, e: anyhow::Error) {
        let mut f = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Runs every selected item on `[run] concurrency` workers, in batches as large as the backend
    /// accepts, with a progress bar (or log lines) until they finish or the run is cancelled.
    pub(super) fn run(&self, show_progress: bool) {
        let items = &self.prepared.dataset.items;
        let total = items.len();
        // A model that cannot be created fails the run before any item: every item would fail the
        // same way, and a missing library or a bad option is better said before than recorded
        // against the first item.
        let prov = &self.prepared.model_provenance;
        let to_generate = items.iter().any(|i| store::reusable_answer(self.stored, i.instruction_id, prov).is_none());
        if to_generate && !self.judge_only {
            match self.model_backend() {
                Err(e) if !e.kind.is_retryable() => {
                    self.fail(anyhow::anyhow!("cannot create the model under test: {e}"));
                    return;
                }
                _ => {}
            }
        }
        let workers = self.workers.min(total).max(1);
        // Items go to the model in batches as large as the backend accepts (1 when it batches nothing).
        let max_batch = self.prepared.model_library.as_ref().map_or(1, |l| l.info.max_batch.max(1)) as usize;
        let batch_size = max_batch.min(total.div_ceil(workers).max(1));
        let bar = progress_bar(total as u64, show_progress);
        bar.set_position(0);
        let (next, started, monitor_done) = (AtomicUsize::new(0), Instant::now(), AtomicBool::new(false));
        std::thread::scope(|scope| {
            let (limiters, bar, monitor_done) = ([&self.model_limiter, &self.judge_limiter], &bar, &monitor_done);
            scope.spawn(move || monitor(&self.progress, &limiters, bar, (total, started), monitor_done));
            let handles: Vec<_> = (0..workers).map(|_| scope.spawn(|| self.work(&next, batch_size))).collect();
            for h in handles {
                let _ = h.join();
            }
            monitor_done.store(true, Ordering::Relaxed);
        });
        bar.finish_and_clear();
    }

    /// One worker: takes the next batch until none is left, the run is cancelled, or a batch fails
    /// for good (a store that cannot be written).
    fn work(&self, next: &AtomicUsize, batch_size: usize) {
        let items = &self.prepared.dataset.items;
        while !self.cancelled() {
            let i = next.fetch_add(batch_size, Ordering::Relaxed);
            let batch: Vec<&Item> = items.iter().skip(i).take(batch_size).collect();
            if batch.is_empty() {
                break;
            }
            if let Err(e) = self.process_batch(&batch) {
                let ids: Vec<String> = batch.iter().map(|i| i.instruction_id.to_string()).collect();
                self.fail(e.context(format!("item(s) {}", crate::fsread::list_ids(&ids, 10))));
                break;
            }
        }
    }

    /// What this run wrote, or the error that stopped it.
    pub(super) fn finish(self) -> anyhow::Result<Written> {
        if let Some(e) = self.fatal.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(e);
        }
        Ok(Written {
            answers: self.answers.into_inner().unwrap_or_else(|e| e.into_inner()),
            verdicts: self.verdicts.into_inner().unwrap_or_else(|e| e.into_inner()),
            concurrency: vec![self.model_limiter.stats(), self.judge_limiter.stats()],
        })
    }

    /// Generates (unless stored) then judges (unless stored) a batch of items: the items that need
    /// an answer go to the backend in one `generate` call (a backend that declares `max_batch` 1
    /// gets batches of one), then each answer is judged.
    fn process_batch(&self, batch: &[&Item]) -> anyhow::Result<()> {
        let prov = &self.prepared.model_provenance;
        let mut answers: Vec<Option<String>> = batch
            .iter()
            .map(|item| store::reusable_answer(self.stored, item.instruction_id, prov).map(str::to_owned))
            .collect();
        let todo: Vec<usize> = (0..batch.len()).filter(|&k| answers[k].is_none()).collect();
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

    /// Answers for `items` (none stored): one batched call, then each item the batch left without
    /// a result, or with a retryable error and tries to spare, tried on its own. Records every
    /// outcome; `None` where there is no answer (an error, or a cancellation that leaves the item
    /// for the next run).
    fn generate(&self, items: &[&Item]) -> anyhow::Result<Vec<Option<String>>> {
        let requests = self.requests(items)?;
        let start = Instant::now();
        let Some(batch) = self.generate_batch(&requests) else {
            return Ok(vec![None; items.len()]);
        };
        let batch_ms = start.elapsed().as_millis() as u64 / requests.len().max(1) as u64;
        let mut out = Vec::with_capacity(items.len());
        for ((item, request), first) in items.iter().zip(&requests).zip(batch) {
            let item_start = Instant::now();
            let Some((result, attempts)) = self.finish_item(request, first) else {
                out.push(None);
                continue;
            };
            let elapsed_ms = batch_ms + item_start.elapsed().as_millis() as u64;
            out.push(self.record_answer(item, result, attempts, elapsed_ms)?);
        }
        Ok(out)
    }

    /// The requests of `items`, laid out as the backend declares for the arch.
    fn requests(&self, items: &[&Item]) -> anyhow::Result<Vec<GenerateRequest>> {
        let p = self.prepared;
        let library = p.model_library.as_ref().context("no model backend: this run only judges stored answers")?;
        let layout = library.info.message_layout(&p.manifest.manifest.model.arch);
        items
            .iter()
            .map(|item| {
                let image = p.dataset.image_file(item).context("image was not validated")?;
                Ok(GenerateRequest {
                    id: item.instruction_id.to_string(),
                    messages: layout.messages(&item.instruction, image),
                    settings: p.model_provenance.settings.clone(),
                    response_format: None,
                })
            })
            .collect()
    }

    /// One call for a batch of more than one request (a single request is left to
    /// [`Self::finish_item`]): a result per request, or `None` when cancelled.
    fn generate_batch(&self, requests: &[GenerateRequest]) -> Option<Vec<Option<Attempt>>> {
        if requests.len() == 1 {
            return Some(vec![None]);
        }
        let all = |e: BackendError, n| requests.iter().map(|_| Some((Err(e.clone()), n))).collect();
        match with_retries(&self.policy, &self.cancel, &self.progress, &self.model_limiter, || {
            self.model_backend().and_then(|b| b.generate(requests))
        }) {
            Tried::Done(Ok(rs), n) if rs.len() == requests.len() => {
                Some(rs.into_iter().map(|r| Some((r, n))).collect())
            }
            Tried::Done(Ok(rs), n) => Some(all(
                BackendError::model_failure(format!(
                    "the backend returned {} results for {} requests",
                    rs.len(),
                    requests.len()
                )),
                n,
            )),
            Tried::Done(Err(e), n) => Some(all(e, n)),
            Tried::Cancelled => None,
        }
    }

    /// An item's final result: the batch's, unless there is none, or it is a retryable error with
    /// tries to spare: then the item is tried alone, counting the batch's tries. `None` when
    /// cancelled.
    fn finish_item(&self, request: &GenerateRequest, first: Option<Attempt>) -> Option<Attempt> {
        let tries_so_far = match first {
            Some((Err(e), n)) if e.kind.is_retryable() && n < self.policy.max_tries => n,
            Some(done) => return Some(done),
            None => 0,
        };
        match with_retries(&self.policy, &self.cancel, &self.progress, &self.model_limiter, || {
            self.model_backend().and_then(|b| b.generate_one(request))
        }) {
            Tried::Done(result, n) => Some((result, tries_so_far + n)),
            Tried::Cancelled => None,
        }
    }

    /// Stores one generation outcome; the answer if there is one. A model that cannot be created
    /// stops the run: every other item would fail the same way.
    fn record_answer(
        &self,
        item: &Item,
        result: Result<Generation, BackendError>,
        attempts: u32,
        elapsed_ms: u64,
    ) -> anyhow::Result<Option<String>> {
        let outcome = match &result {
            Ok(g) => AnswerOutcome::Ok { answer: python_strip(&g.text).to_string() },
            Err(e) => AnswerOutcome::Error { kind: e.kind.as_str().to_string(), message: e.message.clone() },
        };
        let id = item.instruction_id;
        let provenance = self.prepared.model_provenance.clone();
        let input_sha256 = self.prepared.dataset.input_sha256(item);
        let record = AnswerRecord { id, outcome, provenance, attempts, elapsed_ms, input_sha256 };
        self.store.append_answer(&record)?;
        let answer = record.outcome.answer().map(str::to_string);
        self.answers.lock().unwrap_or_else(|e| e.into_inner()).insert(id, record);
        if let Err(e) = &result {
            tracing::warn!("item {id}: generation failed: {e}");
            if e.kind == ErrorKind::BadConfig {
                self.fail(anyhow::anyhow!("cannot create the model under test: {e}"));
            }
            self.progress.generation_errors.fetch_add(1, Ordering::Relaxed);
        }
        Ok(answer)
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
            limiter: &self.judge_limiter,
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
