//! vlsbench backend for Llama 3.2 Vision on candle (arch `mllama`), checkpoints in transformers'
//! format (the 2024 hub layout and today's), one module per stage:
//!
//! - [`config`]: `config.json` and the image processor, in both layouts (`generation_config.json`
//!   through `vlm_core::generation`).
//! - [`processor`]: `convert("RGB")` then `MllamaImageProcessor` (canvas, resize, pad, tiles,
//!   aspect-ratio ids and mask, Pillow's bilinear or bicubic from `vlm_core::resize`) and the
//!   cross-attention mask from the `<|image|>` positions.
//! - [`vision`]: the vision encoder (local and gated global transformers, tile embeddings,
//!   intermediate layers) and the multi-modal projector.
//! - [`text`]: the Llama 3 decoder with gated cross-attention layers and llama3 RoPE.
//! - [`model`]: `MllamaForConditionalGeneration`: greedy decoding one prompt or a left-padded batch.
//! - [`backend`]: the vlsbench `Backend` (chat template and tokenizer from `vlm_core`).
//!
//! Attention in blocks of query rows (bounded memory for four tiles) is `vlm_core::attention`.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod backend;
pub mod config;
pub mod model;
pub mod processor;
pub mod text;
pub mod vision;

#[cfg(test)]
mod parity;

pub use backend::CandleMllama;

vlsbench_plugin_api::export_backend!(backend::CandleMllama);
