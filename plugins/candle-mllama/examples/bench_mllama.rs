//! Our side of `cargo xtask bench mllama` (see `vlm_core::bench` for what is measured and how):
//! the requests are prepared once (image processor, template, tokenizer), then the timed part
//! runs the vision encoder, the projector, the prompt and the decode steps.

use vlm_core::bench::{BenchArgs, BenchResult, measure};
use vlsbench_backend_candle_mllama::CandleMllama;
use vlsbench_backend_candle_mllama::backend::ARCH;
use vlsbench_backend_candle_mllama::processor::ProcessedImage;
use vlsbench_plugin_api::Backend;

fn main() -> BenchResult<()> {
    run(BenchArgs::from_env()?)
}

/// The bench on `args` (also `parity_mllama bench ARGS`: the GPU check carries one binary per family).
pub fn run(args: BenchArgs) -> BenchResult<()> {
    let dtype = args.dtype()?;
    let backend = CandleMllama::load(&args.checkpoint, dtype, &args.device()?)?;
    let layout = CandleMllama::describe().message_layout(ARCH);
    let prepared = args.requests(&layout).iter().map(|r| backend.prepare(r)).collect::<Result<Vec<_>, _>>()?;
    let prompt_tokens = prepared.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
    measure("candle-mllama", &args, prompt_tokens, |n| {
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
