//! [`rate_limited`]: a handler wrapped in a rate limit, as API providers enforce one: a token
//! bucket per model (so a run's model and judge model are limited separately) refilled at `rate`
//! tokens a second and holding at most one second's worth; a request that finds no token is
//! answered 429 with Retry-After (whole seconds, as HTTP writes it) and never reaches the handler.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::reply::MockReply;
use crate::server::RecordedRequest;

/// What a rate limit did.
#[derive(Debug, Default)]
pub struct LimitStats {
    /// Requests admitted (handed to the wrapped handler).
    pub admitted: AtomicU64,
    /// Requests answered 429.
    pub refused: AtomicU64,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// `handler` behind a token bucket of `rate` requests a second per model, and the counters.
pub fn rate_limited<H>(
    rate: f64,
    handler: H,
) -> (impl Fn(&RecordedRequest) -> MockReply + Send + Sync + 'static, Arc<LimitStats>)
where
    H: Fn(&RecordedRequest) -> MockReply + Send + Sync + 'static,
{
    let rate = rate.max(0.001);
    let capacity = rate.max(1.0);
    let stats = Arc::new(LimitStats::default());
    let buckets: Mutex<HashMap<String, Bucket>> = Mutex::new(HashMap::new());
    let counters = stats.clone();
    let limited = move |req: &RecordedRequest| {
        let model = req.body.get("model").and_then(|m| m.as_str()).unwrap_or_default().to_owned();
        let wait_secs = {
            let mut buckets = buckets.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let b = buckets.entry(model).or_insert(Bucket { tokens: capacity, last: now });
            b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(capacity);
            b.last = now;
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                None
            } else {
                Some((1.0 - b.tokens) / rate)
            }
        };
        match wait_secs {
            None => {
                counters.admitted.fetch_add(1, Ordering::Relaxed);
                handler(req)
            }
            Some(secs) => {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                MockReply::rate_limited(secs.ceil().max(1.0) as u64)
            }
        }
    };
    (limited, stats)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request(model: &str) -> RecordedRequest {
        RecordedRequest {
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            headers: vec![],
            body: json!({"model": model}),
            raw_body: vec![],
            seq: 0,
        }
    }

    #[test]
    fn a_burst_past_one_seconds_worth_is_refused_per_model() {
        let (handler, stats) = rate_limited(5.0, |_| MockReply::chat("ok"));
        let codes: Vec<u16> = (0..8).map(|_| handler(&request("a")).status).collect();
        assert_eq!(codes.iter().filter(|&&c| c == 200).count(), 5, "{codes:?}");
        assert_eq!(handler(&request("b")).status, 200, "another model has its own bucket");
        assert_eq!(stats.refused.load(Ordering::Relaxed), 3);
        assert_eq!(stats.admitted.load(Ordering::Relaxed), 6);
    }
}
