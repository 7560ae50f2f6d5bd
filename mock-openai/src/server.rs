//! [`MockServer`]: an HTTP/1.1 server on `127.0.0.1`, run by its own tokio runtime on its own
//! thread, that records every request and answers it with a handler's [`MockReply`].
//!
//! The handler runs on the runtime's worker threads and should return quickly; a slow reply is
//! made with [`MockReply::with_delay`], which waits without holding a thread, so many delayed
//! requests are served at once.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::reply::MockReply;

/// One request as the server received it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query: `/v1/chat/completions`.
    pub path: String,
    /// Headers in the order received, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body as JSON; `Null` when it is empty or not JSON.
    pub body: Value,
    pub raw_body: Vec<u8>,
    /// Arrival order: 0 for the first request the server received, then 1, 2, ...
    pub seq: usize,
}

impl RecordedRequest {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

type Handler = dyn Fn(&RecordedRequest) -> MockReply + Send + Sync + 'static;

struct State {
    handler: Box<Handler>,
    log: Mutex<Vec<RecordedRequest>>,
}

impl State {
    fn log(&self) -> std::sync::MutexGuard<'_, Vec<RecordedRequest>> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A loopback OpenAI-compatible server. It serves until dropped; dropping it stops the server
/// and abandons replies still being delayed.
///
/// ```no_run
/// use vlsbench_mock_openai::{MockReply, MockServer};
///
/// let server = MockServer::start(|req| {
///     if req.path.ends_with("/models") { MockReply::models(&["m"]) } else { MockReply::chat("hello") }
/// });
/// let url = format!("{}/chat/completions", server.base_url());
/// // ... point a client at `url` ...
/// assert_eq!(server.request_count(), 0);
/// ```
pub struct MockServer {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .field("requests", &self.request_count())
            .finish_non_exhaustive()
    }
}

impl MockServer {
    /// Binds `127.0.0.1:0` and serves until dropped, answering every request (any method, any
    /// path, `GET /v1/models` included) with `handler`'s reply.
    ///
    /// # Panics
    /// When no loopback port can be bound or the runtime cannot start: a broken test machine.
    pub fn start(handler: impl Fn(&RecordedRequest) -> MockReply + Send + Sync + 'static) -> MockServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("mock-openai: cannot bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("mock-openai: cannot make the listener non-blocking");
        let addr = listener.local_addr().expect("mock-openai: the listener has no address");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mock-openai-worker")
            .enable_all()
            .build()
            .expect("mock-openai: cannot start a tokio runtime");
        let state = Arc::new(State { handler: Box::new(handler), log: Mutex::new(Vec::new()) });
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let serve_state = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name(format!("mock-openai-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(accept_loop(listener, serve_state, shutdown_rx));
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("mock-openai: cannot spawn the server thread");
        MockServer { addr, state, shutdown: Some(shutdown_tx), thread: Some(thread) }
    }

    /// `http://127.0.0.1:PORT/v1`, the base URL an OpenAI client is given.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in arrival order (`seq` 0, 1, 2, ...).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.log().clone()
    }

    /// How many requests were received so far.
    pub fn request_count(&self) -> usize {
        self.state.log().len()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: std::net::TcpListener, state: Arc<State>, mut shutdown: oneshot::Receiver<()>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mock-openai: cannot serve: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let state = Arc::clone(&state);
                    tokio::spawn(async move {
                        let service = service_fn(move |req| handle(Arc::clone(&state), req));
                        let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                    });
                }
                // Out of file descriptors or similar: wait a little rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let arrived = Instant::now();
    let (parts, body) = req.into_parts();
    let raw_body = match body.collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(e) => return Ok(plain(400, format!("mock-openai: cannot read the request body: {e}"))),
    };
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let recorded = {
        let mut log = state.log();
        let recorded = RecordedRequest {
            method: parts.method.as_str().to_string(),
            path: parts.uri.path().to_string(),
            headers,
            body: serde_json::from_slice(&raw_body).unwrap_or(Value::Null),
            raw_body,
            seq: log.len(),
        };
        log.push(recorded.clone());
        recorded
    };
    let reply = match catch_unwind(AssertUnwindSafe(|| (state.handler)(&recorded))) {
        Ok(reply) => reply,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            MockReply::status(500, &json!({"error": {"message": format!("mock handler panicked: {what}")}}).to_string())
        }
    };
    if !reply.delay.is_zero() {
        wait_until(arrived + reply.delay).await;
    }
    Ok(to_response(reply))
}

/// How early the coarse timer hands over to the precise wait.
const PRECISE_WAIT: Duration = Duration::from_millis(3);

/// Waits until `deadline`, to within about a tenth of a millisecond. tokio's timer works in whole
/// milliseconds and wakes late (a 100 ms sleep takes 101.3 ms in the median here), which would
/// make every "100 ms" reply 1.3% slower than the benchmarks' ideal says. So the timer sleeps to
/// a few milliseconds before the deadline and a blocking-pool thread sleeps the rest: each such
/// thread is held for at most [`PRECISE_WAIT`], so hundreds of delayed replies still need few.
async fn wait_until(deadline: Instant) {
    if let Some(coarse) = deadline.checked_sub(PRECISE_WAIT) {
        tokio::time::sleep_until(coarse.into()).await;
    }
    let rest = deadline.saturating_duration_since(Instant::now());
    if !rest.is_zero() {
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
    }
}

fn to_response(reply: MockReply) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Full::new(Bytes::from(reply.body)))
        .unwrap_or_else(|e| plain(500, format!("mock-openai: the handler's reply is not valid HTTP: {e}")))
}

fn plain(status: u16, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response
}
