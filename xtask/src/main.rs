//! `cargo xtask`: the one entry point that builds everything a run needs (the host, the native
//! backend plugins, the Wasm judge components), runs the whole test suite, the offline demo and the
//! benchmarks.
//!
//! - `cargo xtask build [--release]`
//! - `cargo xtask build --cuda [--check]`  the candle backends with CUDA, in target/cuda (see `gpu`)
//! - `cargo xtask gpu-check [--prepare]`  stage, then run, the CUDA parity + bench on a GPU machine
//! - `cargo xtask test`            build, then `cargo test --workspace`
//! - `cargo xtask demo`            build, then run `examples/demo/demo.toml` offline
//! - `cargo xtask bench api [--delay-ms 100] [--concurrency 64] [--items N] [--rate-limit R[,R...]]`
//!   (see `bench_api`)
//! - `cargo xtask bench llava|qwen2vl|mllama [--dtype f32|f16|bf16] [--max-batch 8] [--new-tokens 128]` (needs
//!   Python): our backend against transformers on one random checkpoint, with the processor named
//! - `cargo xtask bench llava --shape 7b [--dtype f16] [--new-tokens 16] [--with-transformers]`: a
//!   llava-1.5-7b-shaped f16 checkpoint through our bench binary and one `vlsbench-host run` item
//!   (peak RSS against the weights), see `bench7b`
//! - `cargo xtask bench onnx [--max-batch 8] [--new-tokens 128]`: the onnxruntime backend against
//!   the candle backend and transformers on the Qwen2-VL bench checkpoint (see `bench_onnx`)
//! - `cargo xtask fixtures [--check]`  regenerate (or check) the parity fixtures (needs Python)

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

mod bench7b;
mod bench_api;
mod bench_onnx;
mod gpu;

/// Native crates the host loads or tests against.
const NATIVE: &[&str] = &[
    "vlsbench-host",
    "vlsbench-backend-openai",
    "vlsbench-backend-answers-file",
    "vlsbench-backend-candle-llava",
    "vlsbench-backend-candle-qwen2vl",
    "vlsbench-backend-candle-mllama",
    "vlsbench-backend-onnxruntime",
    "vlsbench-fixture-wrong-abi-backend",
    "vlsbench-fixture-echo-backend",
    "vlsbench-fixture-hostile-backend",
];
/// Judge components, built for wasm32-wasip2.
const WASM: &[&str] = &["vlsbench-judge-vlsbench", "vlsbench-judge-refusal-keywords", "vlsbench-fixture-hostile-judge"];
const WASM_TARGET: &str = "wasm32-wasip2";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    std::env::set_current_dir(&root).with_context(|| format!("cannot enter {}", root.display()))?;
    match args.first().map(String::as_str) {
        Some("build") if args.iter().any(|a| a == "--cuda") => gpu::build_cuda(&args[1..]),
        Some("build") => build(args.iter().any(|a| a == "--release")),
        Some("gpu-check") => gpu::gpu_check(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("demo") => demo(),
        Some("bench") => match args.get(1).map(String::as_str) {
            Some("api") => bench_api::bench_api(&args[2..]),
            Some("llava") if flag_str(&args[2..], "--shape", "")? == "7b" => bench7b::bench_llava_7b(&args[2..]),
            Some("llava") => bench_family(&LLAVA_BENCH, &args[2..]),
            Some("qwen2vl") => bench_family(&QWEN2VL_BENCH, &args[2..]),
            Some("mllama") => bench_family(&MLLAMA_BENCH, &args[2..]),
            Some("onnx") => bench_onnx::bench_onnx(&args[2..]),
            _ => bail!(
                "usage: cargo xtask bench api [--delay-ms MS] [--concurrency N] [--items N]\n       \
                 cargo xtask bench llava|qwen2vl|mllama [--dtype f32|f16|bf16] [--max-batch N] [--new-tokens N]\n       \
                 cargo xtask bench onnx [--max-batch N] [--new-tokens N]\n       \
                 cargo xtask bench llava --shape 7b [--dtype f16] [--new-tokens N] [--with-transformers]"
            ),
        },
        Some("fixtures") => fixtures(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <build [--release] | build --cuda [--check] | gpu-check [--prepare] | test | demo | fixtures [--check] | bench api|llava|qwen2vl|mllama|onnx>"
            );
            std::process::exit(2);
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn ensure_wasm_target() -> anyhow::Result<()> {
    let out = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match out {
        Ok(o) if String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == WASM_TARGET) => Ok(()),
        Ok(_) => run(Command::new("rustup").args(["target", "add", WASM_TARGET])),
        Err(_) => {
            eprintln!("rustup not found; assuming the {WASM_TARGET} target is installed");
            Ok(())
        }
    }
}

/// Builds the host, the backends and the judges.
fn build(release: bool) -> anyhow::Result<()> {
    ensure_wasm_target()?;
    let mut native = cargo();
    native.arg("build");
    if release {
        native.arg("--release");
    }
    for p in NATIVE {
        native.args(["-p", p]);
    }
    run(&mut native)?;
    let mut wasm = cargo();
    wasm.args(["build", "--release", "--target", WASM_TARGET]);
    for p in WASM {
        wasm.args(["-p", p]);
    }
    run(&mut wasm)
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    build(false)?;
    run(cargo().args(["test", "--workspace"]).args(extra))
}

fn host_binary(release: bool) -> PathBuf {
    Path::new("target").join(if release { "release" } else { "debug" }).join("vlsbench-host")
}

/// A small solid-colour PNG with a stripe, so each demo image differs.
fn write_png(path: &Path, seed: u32, size: (u32, u32)) -> anyhow::Result<()> {
    let (w, h) = size;
    let base = [(seed * 67 % 256) as u8, (seed * 131 % 256) as u8, (seed * 197 % 256) as u8];
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        if (x + y + seed).is_multiple_of(7) {
            image::Rgb([255 - base[0], 255 - base[1], 255 - base[2]])
        } else {
            image::Rgb(base)
        }
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    img.save(path).with_context(|| format!("cannot write {}", path.display()))
}

fn demo() -> anyhow::Result<()> {
    build(false)?;
    let demo = Path::new("examples/demo");
    let data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(demo.join("data.json")).context("examples/demo/data.json")?)?;
    for (i, item) in data.as_array().into_iter().flatten().enumerate() {
        if let Some(rel) = item.get("image_path").and_then(|v| v.as_str()) {
            let p = demo.join(rel);
            if !p.exists() {
                write_png(&p, i as u32 + 1, (48, 32))?;
            }
        }
    }
    run(Command::new(host_binary(false)).args(["run", "examples/demo/demo.toml"]))
}

fn flag(args: &[String], name: &str, default: u64) -> anyhow::Result<u64> {
    match args.iter().position(|a| a == name) {
        Some(i) => {
            args.get(i + 1).context(format!("{name} needs a value"))?.parse().context(format!("{name}: a number"))
        }
        None => Ok(default),
    }
}

// ---------------------------------------------------------------------------------------------
// Python-side tools: the parity fixtures and the LLaVA speed benchmark

const FIXTURE_PACKAGES: &str = "tests/fixtures/requirements.txt";

/// The Python that has the fixture packages: `$VLSBENCH_PYTHON`, else `python3`. Fails naming
/// the packages when one is missing.
fn python() -> anyhow::Result<PathBuf> {
    let py = PathBuf::from(std::env::var("VLSBENCH_PYTHON").unwrap_or_else(|_| "python3".into()));
    let probe = Command::new(&py)
        .args([
            "-c",
            "import torch, transformers, PIL, sentencepiece, numpy, safetensors; print(transformers.__version__)",
        ])
        .output();
    match probe {
        Ok(o) if o.status.success() => {
            eprintln!("python: {} (transformers {})", py.display(), String::from_utf8_lossy(&o.stdout).trim());
            Ok(py)
        }
        _ => bail!(
            "{} lacks the fixture packages. They are pinned in {FIXTURE_PACKAGES} (torch, transformers, tokenizers, \
             sentencepiece, protobuf, pillow, numpy, safetensors, jinja2; no torchvision):\n  \
             python3 -m venv /tmp/venv && /tmp/venv/bin/pip install -r {FIXTURE_PACKAGES}\n  \
             VLSBENCH_PYTHON=/tmp/venv/bin/python cargo xtask ...",
            py.display()
        ),
    }
}

/// Regenerates tests/fixtures (checkpoints, images, goldens), or with `--check` regenerates into a
/// temporary folder and compares hashes with the committed MANIFEST.
fn fixtures(args: &[String]) -> anyhow::Result<()> {
    let py = python()?;
    let mut cmd = Command::new(py);
    cmd.arg("tests/fixtures/make_fixtures.py");
    if args.iter().any(|a| a == "--check") {
        cmd.arg("--check");
    }
    run(&mut cmd)
}

fn flag_str(args: &[String], name: &str, default: &str) -> anyhow::Result<String> {
    match args.iter().position(|a| a == name) {
        Some(i) => Ok(args.get(i + 1).context(format!("{name} needs a value"))?.clone()),
        None => Ok(default.to_owned()),
    }
}

/// One measurement line, as both sides print it.
#[derive(serde::Deserialize)]
struct Measure {
    batch: u64,
    prompt_tokens: u64,
    prefill_s: f64,
    decode_tok_s: f64,
    peak_rss_mib: f64,
}

fn measure(cmd: &mut Command) -> anyhow::Result<Measure> {
    eprintln!("$ {cmd:?}");
    let out = cmd.stderr(std::process::Stdio::inherit()).output().with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed with {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.starts_with('{')).context("no JSON line in the output")?;
    serde_json::from_str(line).with_context(|| format!("cannot read {line}"))
}

/// A model family `cargo xtask bench` compares with transformers.
struct BenchFamily {
    /// Shown in the table.
    label: &'static str,
    /// Our crate, whose example `example` is our side (named per family: examples of different
    /// crates share one output folder).
    crate_name: &'static str,
    example: &'static str,
    /// Our side's name in the table.
    ours: &'static str,
    /// transformers' side.
    script: &'static str,
    /// The `make_fixtures.py` flag that writes the benchmark checkpoint.
    checkpoint_flag: &'static str,
    folder: &'static str,
    images: &'static [&'static str],
}

const LLAVA_BENCH: BenchFamily = BenchFamily {
    label: "LLaVA-1.5 shape, ~100M parameters (336 px, patch 14, 32,064-token vocabulary)",
    crate_name: "vlsbench-backend-candle-llava",
    example: "bench_llava",
    ours: "candle-llava",
    script: "tests/fixtures/bench_llava.py",
    checkpoint_flag: "--bench-checkpoint",
    folder: "target/bench-llava",
    images: &["tests/fixtures/images/large.png", "tests/fixtures/images/wide.png", "tests/fixtures/images/square.png"],
};

const QWEN2VL_BENCH: BenchFamily = BenchFamily {
    label: "Qwen2-VL shape, ~98.5M parameters (patch 14, merge 2, M-RoPE, 32,064-token vocabulary)",
    crate_name: "vlsbench-backend-candle-qwen2vl",
    example: "bench_qwen2vl",
    ours: "candle-qwen2vl",
    script: "tests/fixtures/bench_qwen2vl.py",
    checkpoint_flag: "--bench-checkpoint-qwen2vl",
    folder: "target/bench-qwen2vl",
    images: &["tests/fixtures/images/wide.png", "tests/fixtures/images/tall.png", "tests/fixtures/images/square.png"],
};

const MLLAMA_BENCH: BenchFamily = BenchFamily {
    label: "Llama 3.2 Vision shape, ~103M parameters (tile 224, patch 14, cross-attention, 32,000-token vocabulary)",
    crate_name: "vlsbench-backend-candle-mllama",
    example: "bench_mllama",
    ours: "candle-mllama",
    script: "tests/fixtures/bench_mllama.py",
    checkpoint_flag: "--bench-checkpoint-mllama",
    folder: "target/bench-mllama",
    images: &["tests/fixtures/images/wide.png", "tests/fixtures/images/tall.png", "tests/fixtures/images/square.png"],
};

/// The processor this bench ran on: its model name and the SIMD flags that decide which kernels
/// either side runs (a ratio is a claim only with the processor it was measured on).
fn cpu_line() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown processor".into());
    let flags: Vec<&str> = info
        .lines()
        .find_map(|l| l.strip_prefix("flags").and_then(|r| r.split_once(':')).map(|(_, v)| v))
        .unwrap_or("")
        .split_whitespace()
        .filter(|f| ["avx", "avx2", "fma", "f16c"].contains(f) || f.starts_with("avx512") || f.starts_with("amx"))
        .collect();
    format!(
        "{model}; {} threads; flags: {}",
        std::thread::available_parallelism().map_or(2, |n| n.get()),
        flags.join(" ")
    )
}

/// Our backend and transformers on the same ~100M-parameter random checkpoint of `family`, the
/// same prompt and images, the same dtype, greedy, at batch 1 and at the largest batch; each
/// configuration in its own process. Prints the processor, then the table.
fn bench_family(family: &BenchFamily, args: &[String]) -> anyhow::Result<()> {
    let dtype = flag_str(args, "--dtype", "f32")?;
    let max_batch = flag(args, "--max-batch", 8)?;
    let new_tokens = flag(args, "--new-tokens", 128)?;
    let py = python()?;
    let dir = Path::new(family.folder);
    let ck = dir.join("checkpoint");
    if !ck.join("config.json").is_file() {
        run(Command::new(&py).arg("tests/fixtures/make_fixtures.py").arg(family.checkpoint_flag).arg(&ck))?;
    }
    run(cargo().args(["build", "--release", "-p", family.crate_name, "--example", family.example]))?;
    let ours_bin = Path::new("target/release/examples").join(family.example);
    let prompt = "What is the person in this picture about to do, and how could they do it more effectively?";
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut rows = Vec::new();
    let mut batches = vec![1];
    if max_batch > 1 {
        batches.push(max_batch);
    }
    for &b in &batches {
        let common = |c: &mut Command| {
            c.arg(&ck).args(["--prompt", prompt, "--batch", &b.to_string(), "--new-tokens", &new_tokens.to_string()]);
            c.args(["--dtype", &dtype]);
            for i in family.images {
                c.args(["--image", i]);
            }
        };
        let mut ours = Command::new(&ours_bin);
        common(&mut ours);
        let mut theirs = Command::new(&py);
        theirs.arg(family.script);
        common(&mut theirs);
        theirs.args(["--threads", &threads.to_string()]);
        rows.push((measure(&mut ours)?, measure(&mut theirs)?));
    }
    println!("\n{}, {dtype}, CPU, {new_tokens} new tokens, greedy", family.label);
    println!("processor: {}", cpu_line());
    println!("| batch | prompt tokens | impl | prefill s | decode tok/s | peak RSS MiB |");
    println!("|---:|---:|---|---:|---:|---:|");
    for (o, t) in &rows {
        for (name, m) in [(family.ours, o), ("transformers", t)] {
            println!(
                "| {} | {} | {name} | {:.2} | {:.1} | {:.0} |",
                m.batch, m.prompt_tokens, m.prefill_s, m.decode_tok_s, m.peak_rss_mib
            );
        }
    }
    println!("\n| batch | decode speed-up (ours / transformers) | prefill speed-up |");
    println!("|---:|---:|---:|");
    for (o, t) in &rows {
        println!("| {} | {:.2}x | {:.2}x |", o.batch, o.decode_tok_s / t.decode_tok_s, t.prefill_s / o.prefill_s);
    }
    Ok(())
}
