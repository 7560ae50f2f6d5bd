//! Where the time of `cargo xtask bench qwen2vl` goes, stage by stage, timed from inside (no
//! `perf` on these machines): the vision tower (with the merger), the prompt's embeddings, the
//! text prefill, and the mean decode step, each with the share spent in the linear layers
//! (`vlm_core::kernels::dense_seconds`). Same command line as the bench binary:
//! `profile_qwen2vl CHECKPOINT --image PNG ... --prompt TEXT [--batch B] [--new-tokens T]
//! [--dtype f32|f16|bf16]`; three repetitions, the first one warming up.

use std::time::Instant;

use candle_core::Device;
use vlm_core::batch::GreedyBackend;
use vlm_core::bench::{BenchArgs, BenchResult};
use vlm_core::greedy::GreedyModel;
use vlm_core::kernels::dense_seconds;
use vlsbench_backend_candle_qwen2vl::CandleQwen2Vl;
use vlsbench_backend_candle_qwen2vl::backend::ARCH;
use vlsbench_backend_candle_qwen2vl::processor::ProcessedImage;
use vlsbench_plugin_api::Backend;

/// Seconds of wall time and of `dense` for `f`.
fn timed<T>(f: impl FnOnce() -> BenchResult<T>) -> BenchResult<(T, f64, f64)> {
    let (t, d) = (Instant::now(), dense_seconds());
    let out = f()?;
    Ok((out, t.elapsed().as_secs_f64(), dense_seconds() - d))
}

fn main() -> BenchResult<()> {
    let args = BenchArgs::from_env()?;
    let b = CandleQwen2Vl::load(&args.checkpoint, args.dtype()?, &Device::Cpu)?;
    let layout = CandleQwen2Vl::describe().message_layout(ARCH);
    let prepared = args.requests(&layout).iter().map(|r| b.prepare(r)).collect::<Result<Vec<_>, _>>()?;
    let (batch, n) = (prepared.len(), args.new_tokens);
    println!("stage (batch {batch}, {}): wall s, of which linear layers s", args.dtype);
    for rep in 0..3 {
        let (_, vis, vis_d) = timed(|| {
            for (_, imgs) in &prepared {
                let refs: Vec<&ProcessedImage> = imgs.iter().collect();
                b.model().image_features(&refs)?;
            }
            Ok(())
        })?;
        let (prompts, emb, _) = timed(|| {
            let mut prompts = Vec::new();
            for (ids, imgs) in &prepared {
                let refs: Vec<&ProcessedImage> = imgs.iter().collect();
                prompts.push(b.model().prompt(ids, &refs)?);
            }
            Ok(prompts)
        })?;
        let (_, pre, pre_d) = timed(|| Ok(b.model().greedy_batch(&prompts, &vec![1; batch], &[], 1.0)?))?;
        let (_, all, all_d) = timed(|| Ok(b.model().greedy_batch(&prompts, &vec![n; batch], &[], 1.0)?))?;
        let (step, step_d) = ((all - pre) / (n - 1) as f64, (all_d - pre_d) / (n - 1) as f64);
        println!(
            "rep {rep}: vision+merger {vis:.4} ({vis_d:.4}) | vision+embeddings {emb:.4} | text prefill {pre:.4} \
             ({pre_d:.4}) | decode step {:.2} ms ({:.2} ms) = {:.1} tok/s",
            step * 1e3,
            step_d * 1e3,
            batch as f64 / step
        );
    }
    Ok(())
}
