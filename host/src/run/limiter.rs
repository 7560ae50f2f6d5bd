//! How many calls go to one endpoint at once: a fixed number, or found as the run goes
//! (`[run] concurrency = "auto"`, the default for remote backends).
//!
//! The automatic limit is TCP's congestion control over calls instead of packets: it starts at
//! [`AUTO_START`] and grows by one per success while below the threshold (slow start, doubling
//! per round trip), then by `1/limit` per success (additive increase, one per round trip). A
//! throttle (HTTP 429, or 503 with Retry-After) halves it, once per round of calls (a cut applies
//! to the calls started after the previous cut, so a burst of 429s from one round counts once),
//! and no new call starts before the server's Retry-After. The model's endpoint and the judge
//! model's each have their own limiter.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use vlsbench_plugin_api::{BackendError, ErrorKind};

/// Where an automatic limit starts.
pub const AUTO_START: f64 = 4.0;

/// Whether `error` is the server asking for fewer calls: a rate limit, or a 503 / a server error
/// that says when to come back.
pub fn is_throttle(error: &BackendError) -> bool {
    match error.kind {
        ErrorKind::RateLimited => true,
        ErrorKind::ServerError => error.retry_after_secs.is_some() || error.message.contains("HTTP 503"),
        _ => false,
    }
}

/// One endpoint's limit.
#[derive(Debug)]
pub struct Limiter {
    name: &'static str,
    /// `None`: fixed, so the worker count is the limit and [`Limiter::acquire`] never waits.
    auto_max: Option<usize>,
    state: Mutex<State>,
    changed: Condvar,
    /// The current limit, for the progress line.
    shown: AtomicUsize,
}

#[derive(Debug)]
struct State {
    limit: f64,
    threshold: f64,
    in_flight: usize,
    /// Bumped by each cut; a throttled call started in an older epoch does not cut again.
    epoch: u64,
    not_before: Option<Instant>,
    peak: f64,
    throttled: u64,
    cuts: u64,
}

/// What a limiter did over a run (recorded in `run.json`, shown at the end).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct LimiterStats {
    pub endpoint: String,
    /// `"auto"` or `"fixed"`.
    pub mode: String,
    /// The limit at the end (the fixed value when fixed).
    pub last: usize,
    pub peak: usize,
    /// Calls the server throttled.
    pub throttled: u64,
    /// How many times the limit was halved.
    pub cuts: u64,
}

/// A call in flight; report how it ended with [`Permit::finish`] (dropping it counts as neither
/// a success nor a throttle).
pub struct Permit<'a> {
    limiter: &'a Limiter,
    epoch: u64,
    finished: bool,
}

impl Limiter {
    /// A fixed limit of `n` (the worker count enforces it).
    pub fn fixed(name: &'static str, n: usize) -> Self {
        Self::new(name, None, n as f64)
    }

    /// A limit found as the run goes, between 1 and `max`.
    pub fn auto(name: &'static str, max: usize) -> Self {
        Self::new(name, Some(max.max(1)), AUTO_START.min(max.max(1) as f64))
    }

    fn new(name: &'static str, auto_max: Option<usize>, limit: f64) -> Self {
        let state = State {
            limit,
            threshold: f64::INFINITY,
            in_flight: 0,
            epoch: 0,
            not_before: None,
            peak: limit,
            throttled: 0,
            cuts: 0,
        };
        Self {
            name,
            auto_max,
            state: Mutex::new(state),
            changed: Condvar::new(),
            shown: AtomicUsize::new(limit as usize),
        }
    }

    pub fn is_auto(&self) -> bool {
        self.auto_max.is_some()
    }

    /// The current limit.
    pub fn current(&self) -> usize {
        self.shown.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for room under the limit (and past any Retry-After); `None` when `cancel` is set.
    pub fn acquire(&self, cancel: &AtomicBool) -> Option<Permit<'_>> {
        let mut state = self.lock();
        loop {
            if cancel.load(Ordering::Relaxed) {
                return None;
            }
            let now = Instant::now();
            let wait = match state.not_before {
                Some(t) if t > now => Some(t - now),
                _ if self.auto_max.is_none() || (state.in_flight as f64) < state.limit.floor().max(1.0) => None,
                _ => Some(Duration::from_millis(50)),
            };
            let Some(wait) = wait else {
                state.in_flight += 1;
                return Some(Permit { limiter: self, epoch: state.epoch, finished: false });
            };
            // Woken by a finished call, or at the latest every 50 ms to look at `cancel`.
            state =
                self.changed.wait_timeout(state, wait.min(Duration::from_millis(50))).map(|(g, _)| g).unwrap_or_else(
                    |e| {
                        let (g, _) = e.into_inner();
                        g
                    },
                );
        }
    }

    fn release(&self, epoch: u64, outcome: Option<&Result<(), &BackendError>>) {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if let Some(max) = self.auto_max {
            match outcome {
                Some(Ok(())) => {
                    s.limit += if s.limit < s.threshold { 1.0 } else { 1.0 / s.limit };
                    s.limit = s.limit.min(max as f64);
                    s.peak = s.peak.max(s.limit);
                }
                Some(Err(e)) if is_throttle(e) => {
                    s.throttled += 1;
                    if epoch == s.epoch {
                        s.limit = (s.limit / 2.0).max(1.0);
                        s.threshold = s.limit;
                        s.epoch += 1;
                        s.cuts += 1;
                        tracing::debug!(endpoint = self.name, limit = s.limit, "throttled: concurrency halved");
                    }
                    if let Some(secs) = e.retry_after_secs.filter(|s| s.is_finite() && *s > 0.0) {
                        let until = Instant::now() + Duration::from_secs_f64(secs.min(3600.0));
                        s.not_before = Some(s.not_before.map_or(until, |t| t.max(until)));
                    }
                }
                _ => {}
            }
            self.shown.store(s.limit.floor() as usize, Ordering::Relaxed);
        }
        drop(s);
        self.changed.notify_all();
    }

    /// What it did so far.
    pub fn stats(&self) -> LimiterStats {
        let s = self.lock();
        LimiterStats {
            endpoint: self.name.to_owned(),
            mode: if self.is_auto() { "auto" } else { "fixed" }.to_owned(),
            last: s.limit.floor() as usize,
            peak: s.peak.floor() as usize,
            throttled: s.throttled,
            cuts: s.cuts,
        }
    }
}

impl Permit<'_> {
    /// Reports how the call ended.
    pub fn finish<T>(mut self, result: &Result<T, BackendError>) {
        self.finished = true;
        let outcome = result.as_ref().map(|_| ());
        self.limiter.release(self.epoch, Some(&outcome));
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.limiter.release(self.epoch, None);
        }
    }
}

impl std::fmt::Display for LimiterStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.mode == "fixed" {
            return write!(f, "{} {} (fixed), {} throttled", self.endpoint, self.last, self.throttled);
        }
        write!(
            f,
            "{} auto: ended at {}, peak {}, {} throttled, halved {} times",
            self.endpoint, self.last, self.peak, self.throttled, self.cuts
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Result<(), BackendError> {
        Ok(())
    }

    fn throttled(retry_after: Option<f64>) -> Result<(), BackendError> {
        let mut e = BackendError::new(ErrorKind::RateLimited, "rate limited (HTTP 429)");
        e.retry_after_secs = retry_after;
        Err(e)
    }

    #[test]
    fn an_automatic_limit_doubles_per_round_until_throttled_then_halves_once_per_round() {
        let l = Limiter::auto("model", 256);
        let cancel = AtomicBool::new(false);
        // Round 1: 4 calls succeed → 8.
        let permits: Vec<_> = (0..4).map(|_| l.acquire(&cancel).expect("not cancelled")).collect();
        permits.into_iter().for_each(|p| p.finish(&ok()));
        assert_eq!(l.current(), 8);
        // Round 2: 8 calls, all throttled: one cut, to 4.
        let permits: Vec<_> = (0..8).map(|_| l.acquire(&cancel).expect("not cancelled")).collect();
        permits.into_iter().for_each(|p| p.finish(&throttled(None)));
        assert_eq!(l.stats().cuts, 1);
        assert_eq!(l.current(), 4);
        // Past the threshold: +1/limit per success, so one round of 4 adds one.
        let permits: Vec<_> = (0..4).map(|_| l.acquire(&cancel).expect("not cancelled")).collect();
        permits.into_iter().for_each(|p| p.finish(&ok()));
        assert_eq!(l.current(), 4, "4 + 4 × ~1/4 is just under 5");
        let stats = l.stats();
        assert_eq!((stats.peak, stats.throttled), (8, 8));
    }

    #[test]
    fn no_call_starts_before_the_servers_retry_after() {
        let l = Limiter::auto("judge", 16);
        let cancel = AtomicBool::new(false);
        l.acquire(&cancel).expect("not cancelled").finish(&throttled(Some(0.3)));
        let start = Instant::now();
        let p = l.acquire(&cancel).expect("not cancelled");
        assert!(start.elapsed() >= Duration::from_millis(250), "{:?}", start.elapsed());
        drop(p);
    }

    #[test]
    fn a_full_limit_waits_until_a_call_finishes_or_the_run_is_cancelled() {
        let l = Limiter::auto("model", 1);
        let cancel = AtomicBool::new(false);
        let held = l.acquire(&cancel).expect("not cancelled");
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| l.acquire(&cancel).is_some());
            std::thread::sleep(Duration::from_millis(120));
            cancel.store(true, Ordering::Relaxed);
            assert!(!waiter.join().expect("the waiter ends"), "a cancelled wait gives no permit");
        });
        held.finish(&ok());
    }

    #[test]
    fn a_fixed_limit_never_waits_and_a_503_with_retry_after_is_a_throttle() {
        let l = Limiter::fixed("model", 2);
        let cancel = AtomicBool::new(false);
        let permits: Vec<_> = (0..5).map(|_| l.acquire(&cancel).expect("not cancelled")).collect();
        drop(permits);
        let mut e = BackendError::new(ErrorKind::ServerError, "server unavailable (HTTP 503)");
        assert!(is_throttle(&e));
        e.message = "server error (HTTP 500)".into();
        assert!(!is_throttle(&e));
        e.retry_after_secs = Some(2.0);
        assert!(is_throttle(&e));
    }
}
