//! Progress: shared counters, a bar on a terminal, and a log line every 10 s otherwise.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::limiter::Limiter;

/// Shared counters for progress and the final line.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicUsize,
    pub generation_errors: AtomicUsize,
    pub judge_errors: AtomicUsize,
    pub retrying: AtomicUsize,
    pub retries: AtomicUsize,
}

/// A bar over `total` items on stderr, or a hidden one.
pub(super) fn progress_bar(total: u64, enabled: bool) -> indicatif::ProgressBar {
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
/// Automatic concurrency limits show their current value.
pub(super) fn monitor(
    p: &Progress,
    limiters: &[&Limiter],
    bar: &indicatif::ProgressBar,
    (total, started): (usize, Instant),
    stop: &AtomicBool,
) {
    let mut last_log = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let done = p.done.load(Ordering::Relaxed);
        let mut msg = format!(
            "gen errors {} · judge errors {} · retrying {}",
            p.generation_errors.load(Ordering::Relaxed),
            p.judge_errors.load(Ordering::Relaxed),
            p.retrying.load(Ordering::Relaxed)
        );
        let auto: Vec<String> = limiters
            .iter()
            .filter(|l| l.is_auto())
            .map(|l| format!("{} {}", l.stats().endpoint, l.current()))
            .collect();
        if !auto.is_empty() {
            msg.push_str(&format!(" · concurrency {}", auto.join(", ")));
        }
        bar.set_position(done as u64);
        bar.set_message(msg.clone());
        if bar.is_hidden() && last_log.elapsed() >= Duration::from_secs(10) {
            tracing::info!("{done}/{total} items · {msg} · {:.0}s", started.elapsed().as_secs_f64());
            last_log = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
