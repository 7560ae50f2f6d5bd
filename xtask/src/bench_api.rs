//! `cargo xtask bench api`: all 2,241 items through generate + judge against the loopback mock
//! server, with the host's `openai` backend and the paper's judge (its model on the same server).
//!
//! - Without `--rate-limit`: the server answers every request after `--delay-ms`; the table puts
//!   the wall time of a fixed `--concurrency` (and of `"auto"`) beside the ideal
//!   `2·N·delay/concurrency` and the sequential `2·N·delay`. Goal: fixed within 1.10× of ideal.
//! - With `--rate-limit R[,R...]`: the server admits R requests a second per model (a token bucket
//!   holding one second's worth) and answers 429 with Retry-After beyond it, as providers do. Each R
//!   is run with the fixed `--concurrency` and with `concurrency = "auto"`, from a cold start;
//!   the table gives the achieved rate (items scored a second, each a model and a judge call), the
//!   wall time against the ideal `N/R`, the 429s seen and the items left unscored. Goal for `"auto"`: at least 90% of R, none unscored.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{build, cpu_line, flag, host_binary, run, write_png};

/// One measured run.
struct Measured {
    wall: f64,
    refused: u64,
    unscored: u64,
    concurrency: String,
}

pub(super) fn bench_api(args: &[String]) -> anyhow::Result<()> {
    let delay_ms = flag(args, "--delay-ms", 100)?;
    let concurrency = flag(args, "--concurrency", 64)?;
    let rates: Vec<f64> = match args.iter().position(|a| a == "--rate-limit") {
        Some(i) => args
            .get(i + 1)
            .context("--rate-limit needs a value, e.g. 20 or 20,200")?
            .split(',')
            .map(|r| r.trim().parse::<f64>().with_context(|| format!("--rate-limit: {r} is not a number")))
            .collect::<anyhow::Result<_>>()?,
        None => Vec::new(),
    };
    build(true)?;
    let tmp = tempfile::tempdir()?;
    let n = write_dataset(&tmp.path().join("vlsbench"), args)?;
    let delay = Duration::from_millis(delay_ms);
    println!("processor: {}", cpu_line());

    if rates.is_empty() {
        let ideal = 2.0 * n as f64 * delay.as_secs_f64() / concurrency as f64;
        let sequential = 2.0 * n as f64 * delay.as_secs_f64();
        let fixed = measure(tmp.path(), "fixed", &concurrency.to_string(), delay, None)?;
        let auto = measure(tmp.path(), "auto", "\"auto\"", delay, None)?;
        println!();
        println!("bench api: {n} items, generate + judge, server delay {delay_ms} ms, no rate limit");
        println!("| measure                                  | seconds | × ideal |");
        println!("|------------------------------------------|--------:|--------:|");
        println!(
            "| vlsbench-host run, concurrency {concurrency:<10}| {:>7.2} | {:>7.3} |",
            fixed.wall,
            fixed.wall / ideal
        );
        println!("| vlsbench-host run, concurrency \"auto\"    | {:>7.2} | {:>7.3} |", auto.wall, auto.wall / ideal);
        println!("| ideal 2·N·delay/{concurrency:<25}| {ideal:>7.2} | {:>7.3} |", 1.0);
        println!("| sequential 2·N·delay (reference)         | {sequential:>7.2} | {:>7.3} |", sequential / ideal);
        println!("auto: {}", auto.concurrency);
        let met = fixed.wall <= 1.10 * ideal && fixed.unscored == 0;
        println!(
            "goal: fixed concurrency within 1.10× of ideal, nothing unscored → {}",
            if met { "met" } else { "NOT met" }
        );
        return Ok(());
    }

    println!();
    println!("bench api: {n} items, generate + judge, server delay {delay_ms} ms, a rate limit per endpoint");
    println!("| rate R | concurrency | wall s | ideal N/R s | achieved/s | % of R | 429s | unscored |");
    println!("|-------:|------------:|-------:|------------:|-----------:|-------:|-----:|---------:|");
    let mut all_met = true;
    let mut notes = Vec::new();
    for &rate in &rates {
        let ideal = n as f64 / rate;
        for (tag, value) in [("fixed", concurrency.to_string()), ("auto", "\"auto\"".to_owned())] {
            let m = measure(tmp.path(), &format!("{tag}-{rate}"), &value, delay, Some(rate))?;
            // Items scored per second: an item that failed for rate limits is not throughput.
            let achieved = (n as u64).saturating_sub(m.unscored) as f64 / m.wall;
            let share = 100.0 * achieved / rate;
            println!(
                "| {rate:>6} | {:>11} | {:>6.1} | {ideal:>11.1} | {achieved:>10.1} | {share:>5.1}% | {:>4} | {:>8} |",
                value.trim_matches('"'),
                m.wall,
                m.refused,
                m.unscored
            );
            if tag == "auto" {
                all_met &= share >= 90.0 && m.unscored == 0;
                notes.push(format!("R = {rate}: {}", m.concurrency));
            }
        }
    }
    for note in notes {
        println!("auto at {note}");
    }
    println!(
        "goal: \"auto\" reaches at least 90% of R from a cold start with no item unscored → {}",
        if all_met { "met" } else { "NOT met" }
    );
    Ok(())
}

/// The real annotation file (with placeholder images) when it is on this machine, else 2,241
/// synthetic items; `--items N` keeps the first N. Returns the item count.
fn write_dataset(root: &Path, args: &[String]) -> anyhow::Result<usize> {
    let shared = Path::new("../shared/vlsbench/data.json");
    let items: Vec<serde_json::Value> = if shared.is_file() {
        eprintln!("dataset: the real annotation file {} with placeholder images", shared.display());
        serde_json::from_str(&std::fs::read_to_string(shared)?)?
    } else {
        eprintln!("dataset: {} absent; 2241 synthetic items", shared.display());
        (0..2241)
            .map(|i| {
                serde_json::json!({"instruction_id": i, "instruction": format!("synthetic question {i}"),
                "image_path": format!("imgs/{i}.png"), "category": "Synthetic", "sub_category": "s", "source": "bench"})
            })
            .collect()
    };
    let n_limit = flag(args, "--items", items.len() as u64)? as usize;
    let items: Vec<_> = items.into_iter().take(n_limit).collect();
    std::fs::create_dir_all(root)?;
    std::fs::write(root.join("data.json"), serde_json::to_vec(&items)?)?;
    for (i, item) in items.iter().enumerate() {
        if let Some(rel) = item.get("image_path").and_then(|v| v.as_str()) {
            let p = root.join(rel);
            if !p.exists() {
                write_png(&p, i as u32, (8, 8))?;
            }
        }
    }
    Ok(items.len())
}

/// One cold run (a fresh server and run folder) with `[run] concurrency = <value>`.
fn measure(dir: &Path, name: &str, value: &str, delay: Duration, rate: Option<f64>) -> anyhow::Result<Measured> {
    let scripted = vlsbench_mock_openai::scripted(delay);
    let (server, stats) = match rate {
        Some(r) => {
            let (handler, stats) = vlsbench_mock_openai::rate_limited(r, scripted);
            (vlsbench_mock_openai::MockServer::start(handler), Some(stats))
        }
        None => (vlsbench_mock_openai::MockServer::start(scripted), None),
    };
    let manifest = dir.join(format!("{name}.toml"));
    std::fs::write(
        &manifest,
        format!(
            r#"[dataset]
root = "vlsbench"

[model]
arch = "openai"
checkpoint = "bench-model"
[model.options]
base_url = "{url}"
api_key_env = ""

[judge]
component = "vlsbench"
grant = ["chat", "log"]
[judge.model]
arch = "openai"
checkpoint = "bench-judge"
[judge.model.options]
base_url = "{url}"
api_key_env = ""

[run]
name = "{name}"
output_dir = "out"
concurrency = {value}
"#,
            url = server.base_url()
        ),
    )?;
    let host = host_binary(true);
    let cache = dir.join("cache");
    // Warm-up: compiles the judge into the cache and reads the dataset once.
    run(Command::new(&host).arg("validate").arg(&manifest).arg("--cache-dir").arg(&cache))?;
    let start = Instant::now();
    let output = Command::new(&host)
        .args(["run", "--no-progress", "--cache-dir"])
        .arg(&cache)
        .arg(&manifest)
        .env("VLSBENCH_LOG", "warn")
        .output()?;
    let wall = start.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!("the benchmark run {name} failed with {}:\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out").join(name).join("summary.json"))?)?;
    let unscored = summary["not_scored"]
        .as_object()
        .map_or(0, |o| o.values().map(|v| v.as_array().map_or(0, |a| a.len() as u64)).sum::<u64>());
    let concurrency = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("concurrency: "))
        .collect::<Vec<_>>()
        .join("; ");
    let refused = stats.map_or(0, |s| s.refused.load(Ordering::Relaxed));
    Ok(Measured { wall, refused, unscored, concurrency })
}
