//! `cargo xtask bench llava --shape 7b [--dtype f16|bf16|f32] [--new-tokens 16] [--with-transformers]`:
//! the real size. A llava-1.5-7b-shaped random checkpoint in f16 (7.06B parameters, 14 GB; made once
//! into `target/bench-llava-7b/` by `make_fixtures.py --bench-checkpoint-7b`, never committed)
//! through
//!
//! 1. our bench binary at batch 1 (prefill, decode tokens/s, peak RSS), and, with
//!    `--with-transformers`, transformers beside it (off by default: it needs as much memory again
//!    and its f16 CPU kernels can take very long);
//! 2. `vlsbench-host run` on one item of the demo dataset, as a user would run it, its peak RSS read
//!    by `/usr/bin/time -v` and set against the weight bytes plus the KV cache.
//!
//! It proves that the model a user actually has fits a 24 GB machine, and says how fast it decodes.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::{build, cargo, cpu_line, flag, flag_str, measure, python, run};

const CHECKPOINT: &str = "target/bench-llava-7b/checkpoint";
const IMAGE: &str = "tests/fixtures/images/large.png";
const PROMPT: &str = "What is the person in this picture about to do, and how could they do it more effectively?";

pub fn bench_llava_7b(args: &[String]) -> anyhow::Result<()> {
    let dtype = flag_str(args, "--dtype", "f16")?;
    let new_tokens = flag(args, "--new-tokens", 16)?;
    let ck = PathBuf::from(CHECKPOINT);
    if !ck.join("config.json").is_file() {
        eprintln!("making the 7B-shaped checkpoint (14 GB on disk, about 4 minutes)");
        run(Command::new(python()?).arg("tests/fixtures/make_fixtures.py").arg("--bench-checkpoint-7b").arg(&ck))?;
    }
    let weight_bytes = weight_bytes(&ck)?;
    let kv_bytes = kv_cache_bytes(&ck, 700 + new_tokens)?;

    run(cargo().args(["build", "--release", "-p", "vlsbench-backend-candle-llava", "--example", "bench_llava"]))?;
    let common = |c: &mut Command| {
        c.arg(&ck).args(["--image", IMAGE, "--prompt", PROMPT, "--batch", "1"]);
        c.args(["--new-tokens", &new_tokens.to_string(), "--dtype", &dtype]);
    };
    let mut ours = Command::new("target/release/examples/bench_llava");
    common(&mut ours);
    let mut rows = vec![("candle-llava", measure(&mut ours)?)];
    if args.iter().any(|a| a == "--with-transformers") {
        let mut theirs = Command::new(python()?);
        theirs.arg("tests/fixtures/bench_llava.py");
        common(&mut theirs);
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        theirs.args(["--threads", &threads.to_string()]);
        rows.push(("transformers", measure(&mut theirs)?));
    }

    build(true)?;
    let host = host_run_one_item(&ck, &dtype, new_tokens)?;

    let gb = |b: f64| b / 1e9;
    println!(
        "\nLLaVA-1.5-7b shape (7.06B parameters, random f16 weights), {dtype}, CPU, batch 1, {new_tokens} new tokens"
    );
    println!("processor: {}", cpu_line());
    println!("weights: {:.2} GB; KV cache at {} positions: {:.2} GB", gb(weight_bytes), 700 + new_tokens, gb(kv_bytes));
    println!("| impl | prompt tokens | prefill s | decode tok/s | peak RSS GB |");
    println!("|---|---:|---:|---:|---:|");
    for (name, m) in &rows {
        println!(
            "| {name} | {} | {:.1} | {:.2} | {:.2} |",
            m.prompt_tokens,
            m.prefill_s,
            m.decode_tok_s,
            m.peak_rss_mib * 1048576.0 / 1e9
        );
    }
    let budget = 1.15 * weight_bytes + kv_bytes;
    println!(
        "\n`vlsbench-host run`, one demo item: {} in {:.0} s wall; peak RSS {:.2} GB = {:.3}x (weights + KV cache); \
         goal at most 1.15x weights + KV = {:.2} GB: {}",
        host.outcome,
        host.wall_s,
        gb(host.peak_rss_bytes),
        host.peak_rss_bytes / (weight_bytes + kv_bytes),
        gb(budget),
        if host.peak_rss_bytes <= budget { "holds" } else { "does NOT hold" }
    );
    Ok(())
}

/// The bytes of a checkpoint's safetensors files.
fn weight_bytes(ck: &Path) -> anyhow::Result<f64> {
    let mut total = 0u64;
    for e in std::fs::read_dir(ck).with_context(|| format!("cannot list {}", ck.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            total += std::fs::metadata(&p)?.len();
        }
    }
    Ok(total as f64)
}

/// The language model's KV cache for `positions` positions in f32 (keys and values, every layer).
fn kv_cache_bytes(ck: &Path, positions: u64) -> anyhow::Result<f64> {
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ck.join("config.json"))?)?;
    let t = &cfg["text_config"];
    let get = |k: &str| t[k].as_u64().with_context(|| format!("config.json: text_config.{k}"));
    let (layers, hidden, heads) = (get("num_hidden_layers")?, get("hidden_size")?, get("num_attention_heads")?);
    let kv_heads = t["num_key_value_heads"].as_u64().unwrap_or(heads);
    Ok((layers * 2 * (hidden / heads) * kv_heads * positions * 4) as f64)
}

struct HostRun {
    outcome: String,
    wall_s: f64,
    peak_rss_bytes: f64,
}

/// One demo item through the release host with the 7B checkpoint, under `/usr/bin/time -v`.
fn host_run_one_item(ck: &Path, dtype: &str, new_tokens: u64) -> anyhow::Result<HostRun> {
    let root = std::env::current_dir()?;
    let dir = root.join("target/bench-llava-7b");
    let name = format!(
        "7b-{dtype}-{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    );
    let manifest = dir.join("run-one-item.toml");
    let text = format!(
        "# Written by `cargo xtask bench llava --shape 7b`.\n\
         [dataset]\nroot = {demo:?}\nlimit = 1\n\n\
         [model]\narch = \"llava_hf\"\ncheckpoint = {ck:?}\ndtype = {dtype:?}\ndevice = \"cpu\"\n\
         [model.generation]\nmax_new_tokens = {new_tokens}\n\n\
         [judge]\ncomponent = \"refusal-keywords\"\n\n\
         [run]\nname = {name:?}\noutput_dir = {out:?}\n",
        demo = root.join("examples/demo").display().to_string(),
        ck = root.join(ck).display().to_string(),
        out = dir.join("outputs").display().to_string(),
    );
    std::fs::write(&manifest, text).with_context(|| format!("cannot write {}", manifest.display()))?;
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-v").arg(root.join("target/release/vlsbench-host")).args(["run", "--no-progress"]).arg(&manifest);
    eprintln!("$ {cmd:?}");
    let out = cmd.output().context("cannot start /usr/bin/time (Debian package `time`)")?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("the host run failed with {}:\n{err}", out.status);
    }
    let field = |label: &str| err.lines().find_map(|l| l.trim().strip_prefix(label)).map(str::trim);
    let peak_kib: f64 = field("Maximum resident set size (kbytes):")
        .context("no peak RSS in /usr/bin/time's output")?
        .parse()
        .context("peak RSS")?;
    let wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss):").context("no wall time")?;
    let wall_s =
        wall.split(':').try_fold(0.0, |acc, p| p.parse::<f64>().map(|v| acc * 60.0 + v)).context("wall time")?;
    let answers = std::fs::read_to_string(dir.join("outputs").join(&name).join("answers.jsonl"))
        .context("the run wrote no answers.jsonl")?;
    let line: serde_json::Value = serde_json::from_str(answers.lines().next().context("answers.jsonl is empty")?)?;
    let outcome = format!(
        "item {} {} after {:.0} s of generation",
        line["id"],
        line["outcome"]["status"].as_str().unwrap_or("?"),
        line["elapsed_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0
    );
    Ok(HostRun { outcome, wall_s, peak_rss_bytes: peak_kib * 1024.0 })
}
