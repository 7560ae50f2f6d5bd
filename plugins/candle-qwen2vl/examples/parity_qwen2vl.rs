//! The Qwen2-VL goldens on any device and dtype, from a plain binary (`vlm_core::parity_run` says
//! what is checked): per golden case, the image through our processor, then 24 pure-argmax steps
//! (no EOS stop) from the golden input ids, as the parity tests run them.
//! `cargo xtask gpu-check` runs it on CUDA; `parity_qwen2vl bench ARGS` runs the bench binary's code
//! (`examples/bench_qwen2vl.rs`), so that one binary per family travels.

use std::process::ExitCode;

use vlm_core::parity_run::{ParityCheckpoint, case_request, cases, golden, ids, main_with};
use vlsbench_backend_candle_qwen2vl::CandleQwen2Vl;
use vlsbench_backend_candle_qwen2vl::processor::ProcessedImage;
use vlsbench_plugin_api::{Backend, BackendConfig};

const ARCH: &str = "qwen2vl";
const CHECKPOINTS: [ParityCheckpoint; 2] =
    [ParityCheckpoint { name: "qwen2vl", arch: ARCH }, ParityCheckpoint { name: "qwen2vl_old_layout", arch: ARCH }];

// `parity_qwen2vl bench ARGS` is `bench_qwen2vl ARGS`: one binary per family to carry to a GPU machine.
#[path = "bench_qwen2vl.rs"]
#[allow(dead_code)]
mod bench;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("bench") {
        return match vlm_core::bench::BenchArgs::parse(std::env::args().skip(2)).and_then(bench::run) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench_qwen2vl: {e}");
                ExitCode::FAILURE
            }
        };
    }
    main_with("qwen2vl", &CHECKPOINTS, |args, ck, dtype, report| {
        let b = CandleQwen2Vl::create(BackendConfig {
            arch: ck.arch.into(),
            checkpoint: Some(format!("checkpoints/{}", ck.name)),
            device: Some(args.device.clone()),
            dtype: Some(dtype.into()),
            options: serde_json::Value::Null,
            base_dir: args.fixtures.clone(),
        })?;
        let layout = CandleQwen2Vl::describe().message_layout(ck.arch);
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
