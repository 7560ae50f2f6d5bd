//! The Llama 3.2 Vision goldens on any device and dtype, from a plain binary (`vlm_core::parity_run` says
//! what is checked): per golden case, the image through our processor, then 24 pure-argmax steps
//! (no EOS stop) from the golden input ids, as the parity tests run them
//! (`vlm_core::parity_run::greedy_main`).
//! `cargo xtask gpu-check` runs it on CUDA; `parity_mllama bench ARGS` runs the bench binary's code
//! (`examples/bench_mllama.rs`), so that one binary per family travels.

use std::process::ExitCode;

use vlm_core::parity_run::{ParityCheckpoint, bench_subcommand, greedy_main};
use vlsbench_backend_candle_mllama::CandleMllama;

const ARCH: &str = "mllama";
const CHECKPOINTS: [ParityCheckpoint; 2] =
    [ParityCheckpoint { name: "mllama", arch: ARCH }, ParityCheckpoint { name: "mllama_old_layout", arch: ARCH }];

// `parity_mllama bench ARGS` is `bench_mllama ARGS`: one binary per family to carry to a GPU machine.
#[path = "bench_mllama.rs"]
#[allow(dead_code)]
mod bench;

fn main() -> ExitCode {
    bench_subcommand("mllama", bench::run).unwrap_or_else(|| greedy_main::<CandleMllama>("mllama", &CHECKPOINTS))
}
