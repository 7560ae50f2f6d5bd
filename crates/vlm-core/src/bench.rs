//! Our side of `cargo xtask bench <family>`, shared by every native backend's `examples/bench_<family>.rs`:
//! the command line, the requests, the timings and the one JSON line, measured exactly as the
//! `tests/fixtures/bench_<family>.py` scripts measure transformers:
//!
//! - the requests are prepared (images through the processor, prompts through the template and
//!   tokenizer) once, outside the timings, as the Python side prepares its inputs once;
//! - prefill: the time to the first token (vision tower, projector, the prompt's forward pass),
//!   best of two;
//! - decode tokens/s: batch * (T - 1) / (time(T tokens) - prefill), every row decoding T tokens
//!   (EOS ignored);
//! - peak resident memory (VmHWM).
//!
//! Usage of a bench binary: `bench CHECKPOINT --image PNG [--image PNG ...] --prompt TEXT
//! [--batch B] [--new-tokens T] [--dtype f32|f16|bf16] [--device cpu|cuda[:N]]` (`cuda` in a build
//! with the `cuda` feature: `cargo xtask gpu-check`).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::DType;
use vlsbench_plugin_api::{GenerateRequest, GenerationSettings, MessageLayout};

use crate::batch::{GreedyBackend, ImageOf};
use crate::greedy::GreedyModel;

pub type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// A bench binary's command line.
#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub checkpoint: PathBuf,
    pub images: Vec<PathBuf>,
    pub prompt: String,
    pub batch: usize,
    pub new_tokens: usize,
    pub dtype: String,
    /// `cpu` (default), `cuda` or `cuda:N`, as a manifest's `device`.
    pub device: String,
}

impl BenchArgs {
    /// Reads the process's arguments.
    pub fn from_env() -> BenchResult<Self> {
        Self::parse(std::env::args().skip(1))
    }

    pub fn parse(args: impl IntoIterator<Item = String>) -> BenchResult<Self> {
        let mut checkpoint = None;
        let (mut images, mut prompt, mut batch, mut new_tokens, mut dtype) =
            (Vec::new(), String::new(), 1usize, 128usize, "f32".to_owned());
        let mut device = "cpu".to_owned();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
            match a.as_str() {
                "--image" => images.push(PathBuf::from(val()?)),
                "--prompt" => prompt = val()?,
                "--batch" => batch = val()?.parse()?,
                "--new-tokens" => new_tokens = val()?.parse()?,
                "--dtype" => dtype = val()?,
                "--device" => device = val()?,
                _ if checkpoint.is_none() => checkpoint = Some(PathBuf::from(&a)),
                _ => return Err(format!("unexpected argument {a}").into()),
            }
        }
        let checkpoint = checkpoint.ok_or("usage: bench CHECKPOINT --image PNG --prompt TEXT [--batch B]")?;
        if images.is_empty() {
            return Err("at least one --image".into());
        }
        if new_tokens < 2 || batch == 0 {
            return Err("--new-tokens must be at least 2 and --batch at least 1".into());
        }
        Ok(Self { checkpoint, images, prompt, batch, new_tokens, dtype, device })
    }

    /// `--dtype` (f32, f16 or bf16) as candle's dtype.
    pub fn dtype(&self) -> BenchResult<DType> {
        // As a manifest's dtype is read.
        let dtype = crate::request::parse_dtype(Some(&self.dtype))?;
        crate::request::check_dtype_on_device(dtype, &candle_core::Device::Cpu)?;
        Ok(dtype)
    }

    /// `--device` as candle's device, as a manifest's `device` is read.
    pub fn device(&self) -> BenchResult<candle_core::Device> {
        Ok(crate::request::parse_device(Some(&self.device))?)
    }

    /// `batch` requests, the images taken in turn, laid out as the backend declares for its arch.
    pub fn requests(&self, layout: &MessageLayout) -> Vec<GenerateRequest> {
        (0..self.batch)
            .map(|i| GenerateRequest {
                id: i.to_string(),
                messages: layout.messages(&self.prompt, &self.images[i % self.images.len()]),
                settings: GenerationSettings {
                    max_new_tokens: Some(self.new_tokens as u32),
                    temperature: Some(0.0),
                    top_p: Some(1.0),
                },
                response_format: None,
            })
            .collect()
    }
}

/// [`measure`] for a [`GreedyBackend`] named `implementation`: `args`' requests (in `layout`)
/// prepared once, then the timed part makes each prompt (the vision side and the embeddings) and
/// decodes them all in one batch, without a repetition penalty (the Python side switches it off
/// too, so both sides do the same work).
pub fn measure_greedy<B: GreedyBackend>(
    implementation: &str,
    args: &BenchArgs,
    backend: &B,
    layout: &MessageLayout,
) -> BenchResult<()> {
    let prepared = args.requests(layout).iter().map(|r| backend.prepare(r)).collect::<Result<Vec<_>, _>>()?;
    let prompt_tokens = prepared.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
    measure(implementation, args, prompt_tokens, |n| {
        let mut prompts = Vec::with_capacity(prepared.len());
        for (ids, imgs) in &prepared {
            let refs: Vec<&ImageOf<B>> = imgs.iter().collect();
            prompts.push(backend.model().prompt(ids, &refs)?);
        }
        let out = backend.model().greedy_batch(&prompts, &vec![n; prepared.len()], &[], 1.0)?;
        assert!(out.iter().all(|o| o.len() == n));
        Ok(())
    })
}

/// This process's peak resident memory in MiB (VmHWM).
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Times `decode(n)` (every row decoding exactly `n` tokens from prepared inputs) as the module
/// docs say and prints the JSON line, naming our side `implementation`.
pub fn measure(
    implementation: &str,
    args: &BenchArgs,
    prompt_tokens: usize,
    mut decode: impl FnMut(usize) -> BenchResult<()>,
) -> BenchResult<()> {
    let mut timed = |n: usize| -> BenchResult<f64> {
        let t = Instant::now();
        decode(n)?;
        Ok(t.elapsed().as_secs_f64())
    };
    timed(2)?; // warm-up: first-call allocations
    let prefill = timed(1)?.min(timed(1)?);
    let total = timed(args.new_tokens)?;
    let decode_tok_s = (args.batch * (args.new_tokens - 1)) as f64 / (total - prefill).max(1e-9);
    println!(
        "{}",
        serde_json::json!({
            "impl": implementation, "batch": args.batch, "dtype": args.dtype, "device": args.device,
            "prompt_tokens": prompt_tokens,
            "prefill_s": prefill, "decode_tok_s": decode_tok_s, "peak_rss_mib": peak_rss_mib(),
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_reads_like_the_python_sides() {
        let a = BenchArgs::parse(
            ["ck", "--image", "a.png", "--image", "b.png", "--prompt", "Q?", "--batch", "3", "--new-tokens", "8"]
                .map(String::from),
        )
        .unwrap();
        assert_eq!((a.batch, a.new_tokens, a.dtype.as_str(), a.device.as_str()), (3, 8, "f32", "cpu"));
        assert!(matches!(a.device(), Ok(candle_core::Device::Cpu)));
        let gpu = BenchArgs::parse(["ck", "--image", "a.png", "--device", "cuda:0"].map(String::from)).unwrap();
        assert_eq!(gpu.device, "cuda:0");
        if !cfg!(feature = "cuda") {
            assert!(gpu.device().unwrap_err().to_string().contains("no CUDA"));
        }
        let r = a.requests(&MessageLayout::image_then_text());
        assert_eq!(r.len(), 3);
        assert_eq!(r[2].messages, MessageLayout::image_then_text().messages("Q?", std::path::Path::new("a.png")));
        assert!(BenchArgs::parse(["ck".to_owned()]).is_err());
        assert_eq!(a.dtype().unwrap(), DType::F32);
        let f16 = BenchArgs::parse(["ck", "--image", "a.png", "--dtype", "f16"].map(String::from)).unwrap();
        assert_eq!(f16.dtype().unwrap(), DType::F16);
        let bad = BenchArgs::parse(["ck", "--image", "a.png", "--dtype", "f64"].map(String::from)).unwrap();
        assert!(bad.dtype().unwrap_err().to_string().contains("dtype \"f64\" is not supported"));
        let bf16 = BenchArgs::parse(["ck", "--image", "a.png", "--dtype", "bf16"].map(String::from)).unwrap();
        assert_eq!(bf16.dtype().unwrap(), DType::BF16);
    }
}
