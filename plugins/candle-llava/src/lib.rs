//! vlsbench backend for the LLaVA family on candle: arch `llava_hf` (LLaVA-1.5) and arch
//! `llava_next` (LLaVA-NeXT, anyres tiling), both in transformers' HF format, and arch `llava`
//! (original-format LLaVA-1.5, as the LLaVA code base runs it).
//!
//! - [`config`]: the checkpoint's configuration files, every layout transformers reads.
//! - [`original`]: the original format's config, CLIP folder, pickle weights and `expand2square`.
//! - [`image_proc`]: `CLIPImageProcessor` with Pillow's bicubic, bit for bit.
//! - [`anyres`]: LLaVA-NeXT's tiling: `LlavaNextImageProcessor`, the processor's image-token
//!   count and the model's feature packing.
//! - [`conversation`]: the `llava_v1` conversation and `tokenizer_image_token` (over
//!   `vlm_core::sentencepiece`'s slow Llama tokenizer).
//! - [`clip`]: the CLIP vision tower; [`llama`]: the Llama text model with its KV cache.
//! - [`model`]: LLaVA itself: tower, projector and text model joined, batched greedy decoding.
//! - [`backend`]: the vlsbench `Backend`.
//!
//! What every native backend shares (weights, templates, tokenizers, image loading, resizing, KV
//! cache, greedy loop, kernels) comes from `vlm_core`.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod anyres;
pub mod clip;
pub mod config;
pub mod conversation;
pub mod image_proc;
pub mod llama;
pub mod model;
pub mod original;

#[cfg(test)]
pub(crate) mod test_util {
    use serde_json::Value;
    pub use vlm_core::testing::{Parity, fixtures, golden};

    /// A golden case's list of ids (`input_ids`, `greedy_tokens`).
    pub fn ids(case: &Value, key: &str) -> Vec<u32> {
        vlm_core::testing::ids(&case[key])
    }
}

pub mod backend;

pub use backend::CandleLlava;

vlsbench_plugin_api::export_backend!(backend::CandleLlava);
