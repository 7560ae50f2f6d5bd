//! The onnxruntime side of `cargo xtask bench onnx` (see `vlm_core::bench` for what is measured and
//! how), on a Qwen2-VL export: the requests are prepared once (`qwen_vl_utils` + processor,
//! template, tokenizer), then the timed part runs the vision graph, the embedding graph, the
//! prompt and the decode steps, without the repetition penalty (as the candle and Python sides).
//! The library: `ORT_DYLIB_PATH`. Usage: `bench_onnx EXPORT_DIR --image I ... [--batch N]
//! [--new-tokens N] [--prompt Q] [--threads N]`.

use vlm_core::bench::{BenchArgs, BenchResult, measure};
use vlsbench_backend_onnxruntime::backend::{ARCH_QWEN2VL, OnnxBackend, OnnxOptions};
use vlsbench_plugin_api::Backend;

fn main() -> BenchResult<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `--threads N` is ours; the rest is the shared bench command line.
    let mut threads = None;
    if let Some(i) = args.iter().position(|a| a == "--threads") {
        threads = args.get(i + 1).and_then(|t| t.parse().ok());
        args.drain(i..(i + 2).min(args.len()));
    }
    let args = BenchArgs::parse(args)?;
    let options = OnnxOptions { ort_library: None, repetition_penalty: Some(1.0), threads };
    let backend = OnnxBackend::load(&args.checkpoint, ARCH_QWEN2VL, &args.device, None, &options)?;
    let model = backend.qwen2vl().ok_or("not a qwen2vl export")?;
    let layout = OnnxBackend::describe().message_layout(ARCH_QWEN2VL);
    let prepared = args.requests(&layout).iter().map(|r| model.inputs.prepare(r)).collect::<Result<Vec<_>, _>>()?;
    let prompt_tokens = prepared.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
    eprintln!("onnxruntime {} from {}", backend.runtime().version, backend.runtime().path.display());
    measure("onnxruntime", &args, prompt_tokens, |n| {
        let mut prompts = Vec::with_capacity(prepared.len());
        for (ids, imgs) in &prepared {
            let refs: Vec<_> = imgs.iter().collect();
            let (positions, rope_delta) = model.inputs.rope_index(ids, &refs)?;
            let prompt = model.embed(ids, imgs, positions)?;
            prompts.push(vlsbench_backend_onnxruntime::qwen2vl::QwenPrompt { prompt, rope_delta });
        }
        let (_, out) = model.greedy(&prompts, &vec![n; prepared.len()], &[], 1.0)?;
        assert!(out.iter().all(|o| o.len() == n));
        Ok(())
    })
}
