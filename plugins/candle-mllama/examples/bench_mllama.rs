//! Our side of `cargo xtask bench mllama` (see `vlm_core::bench` for what is measured and how):
//! the requests are prepared once (image processor, template, tokenizer), then the timed part
//! runs the vision encoder, the projector, the prompt and the decode steps
//! (`vlm_core::bench::measure_greedy`).

use vlm_core::bench::{BenchArgs, BenchResult, measure_greedy};
use vlsbench_backend_candle_mllama::CandleMllama;
use vlsbench_backend_candle_mllama::backend::ARCH;
use vlsbench_plugin_api::Backend;

fn main() -> BenchResult<()> {
    run(BenchArgs::from_env()?)
}

/// The bench on `args` (also `parity_mllama bench ARGS`: the GPU check carries one binary per family).
pub fn run(args: BenchArgs) -> BenchResult<()> {
    let backend = CandleMllama::load(&args.checkpoint, args.dtype()?, &args.device()?)?;
    measure_greedy("candle-mllama", &args, &backend, &CandleMllama::describe().message_layout(ARCH))
}
