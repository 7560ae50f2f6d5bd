//! Our side of `cargo xtask bench llava` (see `vlm_core::bench` for what is measured and how):
//! the requests are prepared once, then the timed part runs the vision tower, the projector, the
//! prompt and the decode steps.

use candle_core::Tensor;
use vlm_core::bench::{BenchArgs, BenchResult, measure};
use vlsbench_backend_candle_llava::CandleLlava;
use vlsbench_plugin_api::Backend;

fn main() -> BenchResult<()> {
    run(BenchArgs::from_env()?)
}

/// The bench on `args` (also `parity_llava bench ARGS`: the GPU check carries one binary per family).
pub fn run(args: BenchArgs) -> BenchResult<()> {
    let dtype = args.dtype()?;
    let backend = CandleLlava::load(&args.checkpoint, dtype, &args.device()?)?;
    let layout = CandleLlava::describe().message_layout(backend.arch());
    let prepared = args.requests(&layout).iter().map(|r| backend.prepare(r)).collect::<Result<Vec<_>, _>>()?;
    let prompt_tokens = prepared.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
    measure("candle-llava", &args, prompt_tokens, |n| {
        let mut embeds: Vec<Tensor> = Vec::with_capacity(prepared.len());
        for (ids, px) in &prepared {
            embeds.push(backend.model().prompt_embeddings(ids, px)?);
        }
        let out = backend.model().greedy_batch(&embeds, &vec![n; prepared.len()], &[])?;
        assert!(out.iter().all(|o| o.len() == n));
        Ok(())
    })
}
