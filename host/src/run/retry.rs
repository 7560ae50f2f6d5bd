//! Retries of backend calls: exponential backoff with jitter, honouring Retry-After, within
//! `max_tries` and `retry_budget_secs`, and cut short by a cancellation. Each try waits for room
//! under its endpoint's [`Limiter`]; under an automatic limit a throttle is the limiter's signal,
//! so it does not use up `max_tries` (the retry budget still bounds it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use vlsbench_plugin_api::BackendError;

use super::limiter::{Limiter, is_throttle};
use super::progress::Progress;
use crate::manifest::LoadedManifest;

/// Retry rules for one kind of call.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_tries: u32,
    pub initial: Duration,
    pub max_pause: Duration,
    pub budget: Duration,
    /// Whether a throttled try (429, 503) counts toward `max_tries` (not under `"auto"`).
    pub throttles_use_tries: bool,
}

impl RetryPolicy {
    pub fn from_manifest(m: &LoadedManifest) -> Self {
        let r = &m.manifest.run;
        Self {
            max_tries: r.max_tries,
            initial: r.backoff_initial(),
            max_pause: Duration::from_secs_f64(r.backoff_max_secs.max(0.0)),
            budget: Duration::from_secs_f64(r.retry_budget_secs.max(0.0)),
            throttles_use_tries: true,
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

/// The outcome of one call with retries.
pub(super) enum Tried<T> {
    Done(Result<T, BackendError>, u32),
    Cancelled,
}

/// Calls `call` until it succeeds, fails for good, or the policy says stop; counts retries in
/// `progress`.
pub(super) fn with_retries<T>(
    policy: &RetryPolicy,
    cancel: &AtomicBool,
    progress: &Progress,
    limiter: &Limiter,
    mut call: impl FnMut() -> Result<T, BackendError>,
) -> Tried<T> {
    let start = Instant::now();
    // Calls made, and those that count toward `max_tries`.
    let (mut tries, mut counted) = (0u32, 0u32);
    loop {
        let Some(permit) = limiter.acquire(cancel) else { return Tried::Cancelled };
        tries += 1;
        let result = call();
        permit.finish(&result);
        let err = match result {
            Ok(v) => return Tried::Done(Ok(v), tries),
            Err(e) => e,
        };
        if policy.throttles_use_tries || !is_throttle(&err) {
            counted += 1;
        }
        if !err.kind.is_retryable() || counted >= policy.max_tries {
            return Tried::Done(Err(with_tries(err, tries, start)), tries);
        }
        let pause = policy.pause(counted + 1, err.retry_after_secs);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use vlsbench_plugin_api::ErrorKind;

    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_honours_retry_after() {
        let p = RetryPolicy {
            max_tries: 5,
            initial: Duration::from_millis(100),
            max_pause: Duration::from_secs(1),
            budget: Duration::from_secs(10),
            throttles_use_tries: true,
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
            throttles_use_tries: true,
        };
        let calls = AtomicUsize::new(0);
        let tried = with_retries(
            &p,
            &AtomicBool::new(false),
            &Progress::default(),
            &Limiter::fixed("model", 1),
            || -> Result<(), _> {
                calls.fetch_add(1, Ordering::Relaxed);
                Err(BackendError::new(ErrorKind::ServerError, "boom"))
            },
        );
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
            throttles_use_tries: true,
        };
        let tried = with_retries(
            &p,
            &AtomicBool::new(false),
            &Progress::default(),
            &Limiter::fixed("model", 1),
            || -> Result<(), _> { Err(BackendError::bad_request("no")) },
        );
        assert!(matches!(tried, Tried::Done(Err(_), 1)));
    }

    #[test]
    fn under_an_automatic_limit_throttles_do_not_use_up_the_tries() {
        let p = RetryPolicy {
            max_tries: 2,
            initial: Duration::from_millis(1),
            max_pause: Duration::from_millis(2),
            budget: Duration::from_secs(5),
            throttles_use_tries: false,
        };
        let calls = AtomicUsize::new(0);
        let tried = with_retries(&p, &AtomicBool::new(false), &Progress::default(), &Limiter::auto("model", 8), || {
            // Five 429s, then an answer.
            match calls.fetch_add(1, Ordering::Relaxed) {
                0..5 => Err(BackendError::new(ErrorKind::RateLimited, "rate limited (HTTP 429)")),
                _ => Ok(()),
            }
        });
        assert!(matches!(tried, Tried::Done(Ok(()), 6)));
    }
}
