//! The LLaVA goldens (`llava_hf`, `llava_next`, original `llava`, both on-disk layouts) on any
//! device and dtype, from a plain binary (`vlm_core::parity_run` says what is checked): per golden
//! case, the request through our backend's `prepare` (template, tokenizer, image processor or
//! anyres tiles), the image features, then 24 argmax steps with no EOS stop, as the parity tests
//! run them. `cargo xtask gpu-check` runs it on CUDA; `parity_llava bench ARGS` runs the bench
//! binary's code (`examples/bench_llava.rs`), so that one binary per family travels.

use std::process::ExitCode;

use vlm_core::parity_run::{ParityCheckpoint, case_request, cases, golden, main_with};
use vlsbench_backend_candle_llava::CandleLlava;
use vlsbench_plugin_api::{Backend, BackendConfig};

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
    if std::env::args().nth(1).as_deref() == Some("bench") {
        return match vlm_core::bench::BenchArgs::parse(std::env::args().skip(2)).and_then(bench::run) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench_llava: {e}");
                ExitCode::FAILURE
            }
        };
    }
    main_with("llava", &CHECKPOINTS, |args, ck, dtype, report| {
        let b = CandleLlava::create(BackendConfig {
            arch: ck.arch.into(),
            checkpoint: Some(format!("checkpoints/{}", ck.name)),
            device: Some(args.device.clone()),
            dtype: Some(dtype.into()),
            options: serde_json::Value::Null,
            base_dir: args.fixtures.clone(),
        })?;
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
