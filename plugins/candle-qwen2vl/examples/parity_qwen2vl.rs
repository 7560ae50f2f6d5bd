//! The Qwen2-VL goldens on any device and dtype, from a plain binary (`vlm_core::parity_run` says
//! what is checked): per golden case, the image through our processor, then 24 pure-argmax steps
//! (no EOS stop) from the golden input ids, as the parity tests run them
//! (`vlm_core::parity_run::greedy_main`).
//! `cargo xtask gpu-check` runs it on CUDA; `parity_qwen2vl bench ARGS` runs the bench binary's code
//! (`examples/bench_qwen2vl.rs`), so that one binary per family travels.

use std::process::ExitCode;

use vlm_core::parity_run::{ParityCheckpoint, bench_subcommand, greedy_main};
use vlsbench_backend_candle_qwen2vl::CandleQwen2Vl;

const ARCH: &str = "qwen2vl";
const CHECKPOINTS: [ParityCheckpoint; 2] =
    [ParityCheckpoint { name: "qwen2vl", arch: ARCH }, ParityCheckpoint { name: "qwen2vl_old_layout", arch: ARCH }];

// `parity_qwen2vl bench ARGS` is `bench_qwen2vl ARGS`: one binary per family to carry to a GPU machine.
#[path = "bench_qwen2vl.rs"]
#[allow(dead_code)]
mod bench;

fn main() -> ExitCode {
    bench_subcommand("qwen2vl", bench::run).unwrap_or_else(|| greedy_main::<CandleQwen2Vl>("qwen2vl", &CHECKPOINTS))
}
