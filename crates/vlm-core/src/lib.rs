//! What every native vlsbench VLM backend shares, one concern per module, in data-flow order:
//!
//! - [`request`]: a request's images and text, the manifest's checkpoint folder, `dtype`, `device`
//!   and `[model.options]`, the devices a build serves, a request's greedy budget within the context.
//! - [`config_json`]: reading a checkpoint's JSON configuration files (typed optional fields,
//!   EOS ids, errors naming the file); [`checkpoint`]: the folder's chat template, tokenizer and
//!   generation defaults, read the same way for every arch.
//! - [`image`]: opening an image the way each reference loader does ([`image::ImageLoader`]:
//!   alpha dropped, or composited onto white as `qwen_vl_utils` does), with a pixel limit; rescale
//!   + normalise to channels-first f32.
//! - [`resize`]: Pillow's resize, bit for bit, with the bicubic or bilinear filter (Pillow 13's
//!   pass order included).
//! - [`template`]: the checkpoint's chat template rendered as transformers renders it.
//! - [`tokenizer`]: `tokenizer.json`, image-token expansion, decoding with transformers'
//!   clean-up pass, Python's `strip`; [`sentencepiece`]: SentencePiece and the slow Llama tokenizer.
//! - [`weights`]: safetensors (memory-mapped, single or sharded) and PyTorch pickle shards, weight
//!   prefixes, named missing weights.
//! - [`precision`]: which weights stay in the run's dtype and which dtype the math runs in (f32
//!   on the CPU, with f16 / bf16 linear-layer weights kept 2 bytes a value).
//! - [`kernels`]: linear layers over any leading dimensions with f32, f16 or bf16 weights and f32
//!   math on the CPU (a threaded GEMV for decode steps, a panelled GEMM for prefill), activations,
//!   image features spliced over a prompt's image tokens.
//! - [`attention`]: f32 attention in blocks of query rows (bounded memory for large images) and
//!   `repeat_kv` for grouped-query heads; [`layers`]: the decoder pieces the text models share
//!   (RMSNorm, gated MLP, grouped-query self-attention with RoPE, the pre-norm layer).
//! - [`kv`]: the KV cache written in place, left padding and its attention mask.
//! - [`generation`]: `generation_config.json` (EOS ids, repetition penalty, unsupported logits
//!   processors refused) and the repetition penalty over each row's seen ids.
//! - [`greedy`]: the batched greedy loop (argmax, EOS, per-row budgets); `GreedyModel`, a model
//!   that makes prompts and decodes them greedily.
//! - [`batch`]: a backend's `generate`: items prepared alone, decoded `max_batch` at a time,
//!   answers finished (EOS left out, stripped as Python strips); `generate_one`'s single answer;
//!   `GreedyBackend`, all of it for a backend whose model is a `GreedyModel`.
//! - [`bench`]: our side of `cargo xtask bench <family>` (command line and its dtype, timings, JSON
//!   line).
//! - [`parity_run`]: the goldens checked from a plain binary on any device and dtype (the
//!   `parity_<family>` examples that `cargo xtask gpu-check` runs on a GPU machine).
//! - [`llava`]: the LLaVA family's configuration files and CLIP image processor, and LLaVA-1.5's
//!   prompt ids, for the candle and ONNX backends.
//! - [`qwen2vl`]: arch `qwen2vl` before and after the graphs (config, `qwen_vl_utils` + image
//!   processor, M-RoPE positions, prompt ids, answer decoding), for the candle and ONNX backends.
//! - [`error`]: the model error every stage returns.
//! - [`npy`]: reads the goldens' `.npy` files (tests and tools); `testing` (hidden): what every
//!   backend's parity tests share (goldens, requests, a PNG claiming any size, the parity table).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod attention;
pub mod batch;
pub mod bench;
pub mod checkpoint;
pub mod config_json;
pub mod error;
pub mod fsread;
pub mod generation;
pub mod greedy;
pub mod image;
pub mod kernels;
pub mod kv;
pub mod layers;
pub mod llava;
pub mod npy;
pub mod parity_run;
pub mod precision;
pub mod qwen2vl;
pub mod request;
pub mod resize;
pub mod sentencepiece;
pub mod template;
#[doc(hidden)]
pub mod testing;
pub mod tokenizer;
pub mod weights;

pub use error::{ModelError, Result};

/// The repository's `tests/fixtures` folder (tests only).
#[doc(hidden)]
pub fn fixtures_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

#[cfg(test)]
pub(crate) mod test_util {
    pub fn fixtures() -> std::path::PathBuf {
        crate::fixtures_dir()
    }
}
