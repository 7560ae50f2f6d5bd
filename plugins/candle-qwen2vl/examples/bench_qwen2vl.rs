//! Our side of `cargo xtask bench qwen2vl` (see `vlm_core::bench` for what is measured and how):
//! the requests are prepared once (`qwen_vl_utils` + processor, template, tokenizer), then the
//! timed part runs the vision tower, the merger, the prompt and the decode steps, without the
//! repetition penalty (the Python side switches it off too) so both sides do the same work.

use vlm_core::bench::{BenchArgs, BenchResult, measure};
use vlsbench_backend_candle_qwen2vl::CandleQwen2Vl;
use vlsbench_backend_candle_qwen2vl::backend::ARCH;
use vlsbench_backend_candle_qwen2vl::processor::ProcessedImage;
use vlsbench_plugin_api::Backend;

fn main() -> BenchResult<()> {
    run(BenchArgs::from_env()?)
}

/// The bench on `args` (also `parity_qwen2vl bench ARGS`: the GPU check carries one binary per family).
pub fn run(args: BenchArgs) -> BenchResult<()> {
    let dtype = args.dtype()?;
    let backend = CandleQwen2Vl::load(&args.checkpoint, dtype, &args.device()?)?;
    let layout = CandleQwen2Vl::describe().message_layout(ARCH);
    let prepared = args.requests(&layout).iter().map(|r| backend.prepare(r)).collect::<Result<Vec<_>, _>>()?;
    let prompt_tokens = prepared.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
    measure("candle-qwen2vl", &args, prompt_tokens, |n| {
        let mut prompts = Vec::with_capacity(prepared.len());
        for (ids, imgs) in &prepared {
            let refs: Vec<&ProcessedImage> = imgs.iter().collect();
            prompts.push(backend.model().prompt(ids, &refs)?);
        }
        let out = backend.model().greedy_batch(&prompts, &vec![n; prepared.len()], &[], 1.0)?;
        assert!(out.iter().all(|o| o.len() == n));
        Ok(())
    })
}
