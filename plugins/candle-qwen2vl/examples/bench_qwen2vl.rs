//! Our side of `cargo xtask bench qwen2vl` (see `vlm_core::bench` for what is measured and how):
//! the requests are prepared once (`qwen_vl_utils` + processor, template, tokenizer), then the
//! timed part runs the vision tower, the merger, the prompt and the decode steps, without the
//! repetition penalty (the Python side switches it off too) so both sides do the same work
//! (`vlm_core::bench::measure_greedy`).

use vlm_core::bench::{BenchArgs, BenchResult, measure_greedy};
use vlsbench_backend_candle_qwen2vl::CandleQwen2Vl;
use vlsbench_backend_candle_qwen2vl::backend::ARCH;
use vlsbench_plugin_api::Backend;

fn main() -> BenchResult<()> {
    run(BenchArgs::from_env()?)
}

/// The bench on `args` (also `parity_qwen2vl bench ARGS`: the GPU check carries one binary per family).
pub fn run(args: BenchArgs) -> BenchResult<()> {
    let backend = CandleQwen2Vl::load(&args.checkpoint, args.dtype()?, &args.device()?)?;
    measure_greedy("candle-qwen2vl", &args, &backend, &CandleQwen2Vl::describe().message_layout(ARCH))
}
