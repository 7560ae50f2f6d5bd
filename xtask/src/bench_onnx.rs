//! `cargo xtask bench onnx [--max-batch 8] [--new-tokens 128]`: the onnxruntime backend against the
//! candle backend and transformers on the same mid-size checkpoint (the ~100M-parameter Qwen2-VL of
//! `bench qwen2vl`, exported to transformers.js' three ONNX graphs by
//! `tests/fixtures/onnx_fixtures.py --export`), f32 on the CPU, at batch 1 and batched, in one run;
//! each configuration in its own process. Needs Python with torch, transformers and onnx
//! (`VLSBENCH_PYTHON`) and ONNX Runtime (`ORT_DYLIB_PATH`, else `target/ort-venv`, made here from
//! PyPI when missing). Prints the processor, then the table.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::{QWEN2VL_BENCH, cargo, cpu_line, flag, measure, python, run};

/// `ORT_DYLIB_PATH`, else the library in `target/ort-venv` (installed from PyPI when absent).
fn ort_library() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let find = || -> Option<PathBuf> {
        std::fs::read_dir("target/ort-venv/lib").ok()?.flatten().find_map(|py| {
            std::fs::read_dir(py.path().join("site-packages/onnxruntime/capi"))
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so.")))
        })
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    run(Command::new("python3").args(["-m", "venv", "target/ort-venv"]))?;
    run(Command::new("target/ort-venv/bin/pip").args(["install", "--quiet", "onnxruntime==1.32.0"]))?;
    find().context("onnxruntime installed into target/ort-venv, but no libonnxruntime.so.* in it")
}

pub fn bench_onnx(args: &[String]) -> anyhow::Result<()> {
    let max_batch = flag(args, "--max-batch", 8)?;
    let new_tokens = flag(args, "--new-tokens", 128)?;
    let family = &QWEN2VL_BENCH;
    let py = python()?;
    let probe = Command::new(&py).args(["-c", "import onnx"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        bail!("{} cannot import onnx (needed to export the graphs): pip install onnx==1.23.2", py.display());
    }
    let lib = ort_library()?;
    let dir = Path::new(family.folder);
    let ck = dir.join("checkpoint");
    if !ck.join("config.json").is_file() {
        run(Command::new(&py).arg("tests/fixtures/make_fixtures.py").arg(family.checkpoint_flag).arg(&ck))?;
    }
    let export = dir.join("onnx-export");
    if !export.join("onnx/decoder_model_merged.onnx").is_file() {
        run(Command::new(&py).args(["tests/fixtures/onnx_fixtures.py", "--export", "qwen2vl"]).arg(&ck).arg(&export))?;
    }
    run(cargo().args(["build", "--release", "-p", family.crate_name, "--example", family.example]))?;
    run(cargo().args(["build", "--release", "-p", "vlsbench-backend-onnxruntime", "--example", "bench_onnx"]))?;
    let candle_bin = Path::new("target/release/examples").join(family.example);
    let onnx_bin = Path::new("target/release/examples/bench_onnx");
    let prompt = "What is the person in this picture about to do, and how could they do it more effectively?";
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut batches = vec![1];
    if max_batch > 1 {
        batches.push(max_batch);
    }
    let mut rows = Vec::new();
    for &b in &batches {
        let common = |c: &mut Command, ck: &Path| {
            c.arg(ck).args(["--prompt", prompt, "--batch", &b.to_string(), "--new-tokens", &new_tokens.to_string()]);
            c.args(["--dtype", "f32"]);
            for i in family.images {
                c.args(["--image", i]);
            }
        };
        let mut onnx = Command::new(onnx_bin);
        common(&mut onnx, &export);
        onnx.args(["--threads", &threads.to_string()]).env("ORT_DYLIB_PATH", &lib);
        let mut candle = Command::new(&candle_bin);
        common(&mut candle, &ck);
        let mut theirs = Command::new(&py);
        theirs.arg(family.script);
        common(&mut theirs, &ck);
        theirs.args(["--threads", &threads.to_string()]);
        rows.push([measure(&mut onnx)?, measure(&mut candle)?, measure(&mut theirs)?]);
    }
    println!("\n{}, f32, CPU, {new_tokens} new tokens, greedy", family.label);
    println!("processor: {}", cpu_line());
    println!("onnx runtime: {}", lib.display());
    println!("| batch | prompt tokens | impl | prefill s | decode tok/s | peak RSS MiB |");
    println!("|---:|---:|---|---:|---:|---:|");
    for r in &rows {
        for (name, m) in ["onnxruntime", family.ours, "transformers"].iter().zip(r) {
            println!(
                "| {} | {} | {name} | {:.2} | {:.1} | {:.0} |",
                m.batch, m.prompt_tokens, m.prefill_s, m.decode_tok_s, m.peak_rss_mib
            );
        }
    }
    println!("\n| batch | onnxruntime / transformers decode | onnxruntime / candle decode |");
    println!("|---:|---:|---:|");
    for [o, c, t] in &rows {
        println!("| {} | {:.2}x | {:.2}x |", o.batch, o.decode_tok_s / t.decode_tok_s, o.decode_tok_s / c.decode_tok_s);
    }
    Ok(())
}
