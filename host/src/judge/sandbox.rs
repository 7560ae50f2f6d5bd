//! One judge call's sandbox: a fresh store with WASI and nothing in it, what the call may reach
//! ([`CallContext`]), a memory limiter, a clock that counts the judge's own compute time, the
//! guest's captured output, and the mapping of a trap or a broken limit to a [`JudgeError`].

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use vlsbench_plugin_api::GenerateRequest;
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::{ChatFailure, EPOCH_TICK, GUEST_OUTPUT_LIMIT, JudgeError, JudgeLimits};

/// The most elements a table may hold, the most core instances, memories and tables per store.
const TABLE_ELEMENTS_LIMIT: usize = 1 << 20;
const INSTANCES_LIMIT: usize = 256;
const MEMORIES_LIMIT: usize = 16;
const TABLES_LIMIT: usize = 256;

/// The per-call facts the host imports need.
pub(crate) struct CallContext {
    /// `None` while calling `info` or `check-config`.
    pub(super) item_id: Option<u32>,
    pub(super) image: Option<PathBuf>,
    /// Where chat jobs go; `None` when chat is not allowed.
    pub(super) chat: Option<mpsc::Sender<ChatJob>>,
    pub(super) log_allowed: bool,
}

impl CallContext {
    /// A call with nothing granted and no item (`info`, `check-config`).
    pub(super) fn bare() -> Self {
        Self { item_id: None, image: None, chat: None, log_allowed: false }
    }
}

/// What the guest's `chat` import sends to the provider's thread: the request and where to reply.
pub(crate) type ChatJob = (GenerateRequest, mpsc::Sender<Result<String, ChatFailure>>);

/// The error a denied import call traps with; found again by downcasting after the trap.
#[derive(Debug)]
pub(crate) struct CapabilityDeniedTrap(pub(super) &'static str);

impl fmt::Display for CapabilityDeniedTrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "capability `{}` denied", self.0)
    }
}

impl std::error::Error for CapabilityDeniedTrap {}

/// The data of one call's store.
pub(crate) struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    pub(super) context: CallContext,
    pub(super) judge_name: String,
    pub(super) clock: ComputeClock,
    /// The capability a denied import call asked for.
    pub(super) denied: Option<&'static str>,
    pub(super) log_lines: usize,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Runs `call` (which instantiates the component and calls it) in a fresh store set up with
/// `context` and `limits`, and turns a trap or a broken limit into a [`JudgeError`].
pub(super) fn run_call<R>(
    engine: &Engine,
    judge_name: &str,
    context: CallContext,
    limits: &JudgeLimits,
    call: impl FnOnce(&mut Store<CallState>) -> wasmtime::Result<R>,
) -> Result<R, JudgeError> {
    let output = CapturedOutput::new(GUEST_OUTPUT_LIMIT);
    let wasi = WasiCtx::builder()
        .stdout(output.clone())
        .stderr(output.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    let state = CallState {
        wasi,
        table: ResourceTable::new(),
        limiter: MemoryLimiter { max_bytes: limits.memory_bytes, used_bytes: 0, refused: false },
        context,
        judge_name: judge_name.to_owned(),
        clock: ComputeClock { started: Instant::now(), in_chat: Duration::ZERO, timeout: limits.timeout },
        denied: None,
        log_lines: 0,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limiter);
    store.set_fuel(limits.fuel).map_err(|e| JudgeError::Trap(format!("cannot set fuel: {e:#}")))?;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|context| Ok(context.data().clock.on_deadline()));

    let outcome = call(&mut store);
    let state = store.data();
    let guest_output = output.contents();
    if !guest_output.is_empty() {
        tracing::debug!(
            judge = %state.judge_name,
            item = ?state.context.item_id,
            "judge output: {}",
            String::from_utf8_lossy(&guest_output).trim_end()
        );
    }
    match outcome {
        // A refused memory grow fails the call even if the guest carried on.
        Ok(_) if state.limiter.refused => Err(JudgeError::MemoryLimit),
        Ok(value) => Ok(value),
        Err(error) => Err(classify_failure(&error, state, &guest_output)),
    }
}

/// Maps a failed instantiation or call to its [`JudgeError`], the most telling cause first.
fn classify_failure(error: &wasmtime::Error, state: &CallState, guest_output: &[u8]) -> JudgeError {
    if let Some(denied) = error.downcast_ref::<CapabilityDeniedTrap>() {
        return JudgeError::CapabilityDenied(denied.0.to_owned());
    }
    if let Some(capability) = state.denied {
        return JudgeError::CapabilityDenied(capability.to_owned());
    }
    if state.limiter.refused {
        return JudgeError::MemoryLimit;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => return JudgeError::FuelExhausted,
        Some(Trap::Interrupt) => return JudgeError::Timeout,
        _ => {}
    }
    let mut message = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{error:#}"),
    };
    let tail = last_lines(guest_output, 1024);
    if !tail.is_empty() {
        message.push_str("; judge output: ");
        message.push_str(&tail);
    }
    JudgeError::Trap(message)
}

/// The last `max` bytes (about) of `output`, as one trimmed line.
fn last_lines(output: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(output);
    let text = text.trim();
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Caps linear memory for one store: the sum of all its memories' sizes.
struct MemoryLimiter {
    max_bytes: usize,
    used_bytes: usize,
    /// A grow was refused: the call fails with [`JudgeError::MemoryLimit`].
    refused: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // A memory's creation is reported as a grow from 0, so the sum covers every memory.
        let total = self.used_bytes.saturating_add(desired.saturating_sub(current));
        if total > self.max_bytes {
            self.refused = true;
            return Ok(false);
        }
        self.used_bytes = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_LIMIT)
    }

    fn instances(&self) -> usize {
        INSTANCES_LIMIT
    }

    fn tables(&self) -> usize {
        TABLES_LIMIT
    }

    fn memories(&self) -> usize {
        MEMORIES_LIMIT
    }
}

/// The judge's own compute time: wall time since the call started, minus time inside `chat`.
pub(super) struct ComputeClock {
    started: Instant,
    pub(super) in_chat: Duration,
    timeout: Duration,
}

impl ComputeClock {
    /// Called by wasmtime when the epoch deadline passes: interrupt, or wait some more ticks.
    fn on_deadline(&self) -> UpdateDeadline {
        let used = self.started.elapsed().saturating_sub(self.in_chat);
        match self.timeout.checked_sub(used) {
            Some(left) if !left.is_zero() => {
                let ticks = left.as_nanos().div_ceil(EPOCH_TICK.as_nanos()).max(1);
                UpdateDeadline::Continue(u64::try_from(ticks).unwrap_or(u64::MAX))
            }
            _ => UpdateDeadline::Interrupt,
        }
    }
}

/// A guest's stdout and stderr: keeps the first `limit` bytes, quietly drops the rest (so a
/// chatty guest never sees a write error, and never fills the host's memory).
#[derive(Clone)]
struct CapturedOutput {
    buffer: Arc<Mutex<Vec<u8>>>,
    limit: usize,
}

impl CapturedOutput {
    fn new(limit: usize) -> Self {
        Self { buffer: Arc::new(Mutex::new(Vec::new())), limit }
    }

    fn contents(&self) -> Vec<u8> {
        self.buffer.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Ok(mut buffer) = self.buffer.lock() {
            let room = self.limit.saturating_sub(buffer.len());
            buffer.extend_from_slice(&buf[..buf.len().min(room)]);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_limiter_sums_every_memory_and_remembers_a_refusal() {
        let mut limiter = MemoryLimiter { max_bytes: 100, used_bytes: 0, refused: false };
        assert!(limiter.memory_growing(0, 60, None).unwrap_or(false));
        assert!(limiter.memory_growing(0, 30, None).unwrap_or(false));
        assert!(!limiter.refused);
        assert!(!limiter.memory_growing(60, 80, None).unwrap_or(true));
        assert!(limiter.refused);
        assert!(limiter.memory_growing(30, 40, None).unwrap_or(false));
    }

    #[test]
    fn compute_clock_does_not_count_chat_time() {
        let clock = ComputeClock {
            started: Instant::now() - Duration::from_secs(10),
            in_chat: Duration::from_millis(9_950),
            timeout: Duration::from_secs(1),
        };
        assert!(matches!(clock.on_deadline(), UpdateDeadline::Continue(ticks) if (90..=96).contains(&ticks)));
        let clock = ComputeClock { in_chat: Duration::ZERO, ..clock };
        assert!(matches!(clock.on_deadline(), UpdateDeadline::Interrupt));
    }

    #[test]
    fn captured_output_keeps_the_first_bytes_and_accepts_the_rest() {
        use tokio::io::AsyncWrite;
        let mut output = CapturedOutput::new(4);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let written = Pin::new(&mut output).poll_write(&mut cx, b"abcdef");
        assert!(matches!(written, Poll::Ready(Ok(6))));
        assert_eq!(output.contents(), b"abcd");
    }

    #[test]
    fn last_lines_keeps_the_tail_on_one_line() {
        assert_eq!(last_lines(b"a\nb\n c \n", 100), "a b c");
        assert!(last_lines("xé".repeat(10).as_bytes(), 5).len() <= 6);
    }
}
