//! vlsbench backend for Qwen2-VL on candle (arch `qwen2vl`), checkpoints in transformers' format
//! (the 2024 hub layout and today's), one module per stage:
//!
//! - [`config`]: `config.json` and the image processor, in both layouts (`generation_config.json`
//!   through `vlm_core::generation`).
//! - [`processor`]: `qwen_vl_utils.process_vision_info` (composite onto white, `smart_resize`,
//!   Pillow bicubic) then `Qwen2VLImageProcessor` (rescale, normalise, patches in merge-block order).
//! - [`vision`]: the vision tower (patch embedding, 2-D rotary attention per image, patch merger).
//! - [`text`]: the Qwen2 decoder with M-RoPE and `get_rope_index`.
//! - [`model`]: `Qwen2VLForConditionalGeneration`: image features over the `<|image_pad|>`
//!   positions, greedy decoding one prompt or a left-padded batch.
//! - [`backend`]: the vlsbench `Backend` (chat template and tokenizer from `vlm_core`).
//!
//! Attention in blocks of query rows (bounded memory for large images) is `vlm_core::attention`.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod backend;
pub mod config;
pub mod model;
pub mod processor;
pub mod text;
pub mod vision;

#[cfg(test)]
mod parity;

pub use backend::CandleQwen2Vl;

vlsbench_plugin_api::export_backend!(backend::CandleQwen2Vl);
