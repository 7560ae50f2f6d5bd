//! Our side of `cargo xtask bench qwen2vl`: one batch size, one process (so the peak memory is
//! this configuration's own), greedy decoding of a fixed number of new tokens, measured exactly as
//! `tests/fixtures/bench_qwen2vl.py` measures transformers:
//!
//! - the images go through `qwen_vl_utils` + the processor and the prompts through the template
//!   and tokenizer once, outside the timings (as the Python side prepares its inputs once);
//! - prefill: the time to the first token (vision tower, merger, the prompt's forward pass), best
//!   of two;
//! - decode tokens/s: batch * (T - 1) / (time(T tokens) - prefill), every row decoding T tokens
//!   (EOS ignored, no repetition penalty, as the Python side sets it);
//! - peak resident memory (VmHWM).
//!
//! Prints one JSON line. Usage: `bench CHECKPOINT --image PNG [--image PNG ...] --prompt TEXT
//! [--batch B] [--new-tokens T] [--dtype f32|bf16|f16]`.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device};
use vlsbench_backend_candle_qwen2vl::CandleQwen2Vl;
use vlsbench_backend_candle_qwen2vl::processor::ProcessedImage;
use vlsbench_plugin_api::{ChatMessage, ContentPart, GenerateRequest, GenerationSettings, Role};

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut checkpoint = None;
    let (mut images, mut prompt, mut batch, mut new_tokens, mut dtype) =
        (Vec::new(), String::new(), 1usize, 128usize, "f32".to_owned());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--image" => images.push(PathBuf::from(val()?)),
            "--prompt" => prompt = val()?,
            "--batch" => batch = val()?.parse()?,
            "--new-tokens" => new_tokens = val()?.parse()?,
            "--dtype" => dtype = val()?,
            _ if checkpoint.is_none() => checkpoint = Some(PathBuf::from(&a)),
            _ => return Err(format!("unexpected argument {a}").into()),
        }
    }
    let checkpoint = checkpoint.ok_or("usage: bench CHECKPOINT --image PNG --prompt TEXT [--batch B]")?;
    if images.is_empty() {
        return Err("at least one --image".into());
    }
    let dt = match dtype.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => return Err(format!("dtype {other}").into()),
    };
    let backend = CandleQwen2Vl::load(&checkpoint, dt, &Device::Cpu)?;
    let prepared = (0..batch)
        .map(|i| {
            let req = GenerateRequest {
                id: i.to_string(),
                messages: vec![ChatMessage::new(
                    Role::User,
                    vec![ContentPart::image(&images[i % images.len()]), ContentPart::text(&prompt)],
                )],
                settings: GenerationSettings {
                    max_new_tokens: Some(new_tokens as u32),
                    temperature: Some(0.0),
                    top_p: Some(1.0),
                },
                response_format: None,
            };
            backend.prepare(&req)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let prompt_tokens = prepared.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
    let timed = |n: usize| -> Result<f64, Box<dyn std::error::Error>> {
        let t = Instant::now();
        let mut prompts = Vec::with_capacity(batch);
        for (ids, imgs) in &prepared {
            let refs: Vec<&ProcessedImage> = imgs.iter().collect();
            prompts.push(backend.model().prompt(ids, &refs)?);
        }
        let out = backend.model().greedy_batch(&prompts, &vec![n; batch], &[], 1.0)?;
        assert!(out.iter().all(|o| o.len() == n));
        Ok(t.elapsed().as_secs_f64())
    };
    timed(2)?; // warm-up
    let prefill = timed(1)?.min(timed(1)?);
    let total = timed(new_tokens)?;
    let decode = (batch * (new_tokens - 1)) as f64 / (total - prefill).max(1e-9);
    println!(
        "{}",
        serde_json::json!({
            "impl": "candle-qwen2vl", "batch": batch, "dtype": dtype, "prompt_tokens": prompt_tokens,
            "prefill_s": prefill, "decode_tok_s": decode, "peak_rss_mib": peak_rss_mib(),
        })
    );
    Ok(())
}
