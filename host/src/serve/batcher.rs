//! Requests arriving at once go to the backend together, up to its `max_batch`: a worker takes
//! the first waiting request, waits a short window for more, and sends them in one `generate`
//! call. A backend that may be called concurrently gets several workers.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vlsbench_plugin_api::{BackendError, GenerateRequest, Generation};

use crate::backend::Backend;

/// One request and where its result goes.
struct Job {
    request: GenerateRequest,
    reply: tokio::sync::oneshot::Sender<Result<Generation, BackendError>>,
}

/// The queue in front of the backend.
pub struct Batcher {
    queue: Sender<Job>,
}

impl Batcher {
    /// Starts `workers` threads that call `backend` with batches of at most `max_batch`.
    pub fn start(backend: Arc<Backend>, max_batch: usize, workers: usize, window: Duration) -> Self {
        let (queue, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers.max(1) {
            let (backend, rx) = (backend.clone(), rx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("serve-batch-{i}"))
                .spawn(move || work(&backend, &rx, max_batch.max(1), window));
            if let Err(e) = spawned {
                tracing::error!("cannot start a batch worker: {e}");
            }
        }
        Self { queue }
    }

    /// The backend's result for `request`, once its batch is done.
    pub async fn generate(&self, request: GenerateRequest) -> Result<Generation, BackendError> {
        let (reply, result) = tokio::sync::oneshot::channel();
        self.queue
            .send(Job { request, reply })
            .map_err(|_| BackendError::model_failure("the server's batch workers have stopped"))?;
        result.await.unwrap_or_else(|_| Err(BackendError::model_failure("the batch worker dropped the request")))
    }
}

/// One worker: a batch at a time until the queue closes.
fn work(backend: &Backend, rx: &Mutex<Receiver<Job>>, max_batch: usize, window: Duration) {
    loop {
        let batch = {
            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            let Ok(first) = rx.recv() else { return };
            let mut batch = vec![first];
            let until = Instant::now() + window;
            while batch.len() < max_batch {
                match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(job) => batch.push(job),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            batch
        };
        let requests: Vec<GenerateRequest> = batch.iter().map(|j| j.request.clone()).collect();
        tracing::debug!("generate: a batch of {}", requests.len());
        let results = match backend.generate(&requests) {
            Ok(results) => results,
            Err(e) => requests.iter().map(|_| Err(e.clone())).collect(),
        };
        for (job, result) in batch.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
    }
}
