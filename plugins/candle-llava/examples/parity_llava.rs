//! The LLaVA goldens (`llava_hf`, `llava_next`, original `llava`, both on-disk layouts) on any
//! device and dtype, from a plain binary (`vlm_core::parity_run` says what is checked): per golden
//! case, the request through our backend's `prepare` (template, tokenizer, image processor or
//! anyres tiles), the image features, then 24 argmax steps with no EOS stop, as the parity tests
//! run them. `cargo xtask gpu-check` runs it on CUDA; `parity_llava bench ARGS` runs the bench
//! binary's code (`examples/bench_llava.rs`), so that one binary per family travels.

use std::process::ExitCode;

use vlm_core::parity_run::{ParityCheckpoint, case_request, cases, fixture_config, golden, main_with};
use vlsbench_backend_candle_llava::CandleLlava;
use vlsbench_plugin_api::Backend;

const CHECKPOINTS: [ParityCheckpoint; 5] = [
    ParityCheckpoint { name: "llava_hf", arch: "llava_hf" },
    ParityCheckpoint { name: "llava_hf_old_layout", arch: "llava_hf" },
    ParityCheckpoint { name: "llava_next", arch: "llava_next" },
    ParityCheckpoint { name: "llava_next_old_layout", arch: "llava_next" },
    ParityCheckpoint { name: "llava_original", arch: "llava" },
];

// `parity_llava bench ARGS` is `bench_llava ARGS`: one binary per family to carry to a GPU machine.
#[path = "bench_llava.rs"]
#[allow(dead_code)]
mod bench;

fn main() -> ExitCode {
    if let Some(code) = vlm_core::parity_run::bench_subcommand("llava", bench::run) {
        return code;
    }
    main_with("llava", &CHECKPOINTS, |args, ck, dtype, report| {
        let b = CandleLlava::create(fixture_config(args, &ck, dtype))?;
        let layout = CandleLlava::describe().message_layout(ck.arch);
        let g = golden(&args.fixtures, ck.name)?;
        for case in cases(&g) {
            let (ids, images) = b.prepare(&case_request(&args.fixtures, case, &layout))?;
            let feats = b.model().features_for(&images)?;
            let (logits, tokens) = b.model().greedy_from_features(&ids, feats.as_ref(), 24, &[])?;
            report.record_case(case, &logits.to_vec1::<f32>()?, &tokens)?;
        }
        Ok(())
    })
}
