//! The Llama 3.2 Vision goldens on any device and dtype, from a plain binary (`vlm_core::parity_run` says
//! what is checked): per golden case, the image through our processor, then 24 pure-argmax steps
//! (no EOS stop) from the golden input ids, as the parity tests run them.
//! `cargo xtask gpu-check` runs it on CUDA; `parity_mllama bench ARGS` runs the bench binary's code
//! (`examples/bench_mllama.rs`), so that one binary per family travels.

use std::process::ExitCode;

use vlm_core::parity_run::{ParityCheckpoint, case_request, cases, fixture_config, golden, ids, main_with};
use vlsbench_backend_candle_mllama::CandleMllama;
use vlsbench_backend_candle_mllama::processor::ProcessedImage;
use vlsbench_plugin_api::Backend;

const ARCH: &str = "mllama";
const CHECKPOINTS: [ParityCheckpoint; 2] =
    [ParityCheckpoint { name: "mllama", arch: ARCH }, ParityCheckpoint { name: "mllama_old_layout", arch: ARCH }];

// `parity_mllama bench ARGS` is `bench_mllama ARGS`: one binary per family to carry to a GPU machine.
#[path = "bench_mllama.rs"]
#[allow(dead_code)]
mod bench;

fn main() -> ExitCode {
    if let Some(code) = vlm_core::parity_run::bench_subcommand("mllama", bench::run) {
        return code;
    }
    main_with("mllama", &CHECKPOINTS, |args, ck, dtype, report| {
        let b = CandleMllama::create(fixture_config(args, &ck, dtype))?;
        let layout = CandleMllama::describe().message_layout(ck.arch);
        let g = golden(&args.fixtures, ck.name)?;
        for case in cases(&g) {
            let (_, images) = b.prepare(&case_request(&args.fixtures, case, &layout))?;
            let refs: Vec<&ProcessedImage> = images.iter().collect();
            let (logits, tokens) = b.model().greedy(&ids(&case["input_ids"]), &refs, 24, &[])?;
            report.record_case(case, &logits.to_vec1::<f32>()?, &tokens)?;
        }
        Ok(())
    })
}
