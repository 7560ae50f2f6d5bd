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
//!
//! What every native backend shares (weights, templates, tokenizers, image loading, resizing, KV
//! cache, greedy loop, kernels) comes from `vlm_core`.
//! - [`backend`]: the vlsbench `Backend`.

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
    use std::path::{Path, PathBuf};

    use serde_json::Value;

    pub fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
    }

    /// `tests/fixtures/golden/<checkpoint>/golden.json`.
    pub fn golden(checkpoint: &str) -> Value {
        let path = fixtures().join("golden").join(checkpoint).join("golden.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap()
    }

    /// A golden case's list of ids (`input_ids`, `greedy_tokens`).
    pub fn ids(case: &Value, key: &str) -> Vec<u32> {
        case[key].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
    }

    /// First-step logits and greedy tokens against a checkpoint's goldens, case by case, as a
    /// table: the largest |Δlogit| must stay within 1e-4 and every token sequence be equal.
    pub struct Parity {
        checkpoint: String,
        table: String,
        worst: f32,
        all_equal: bool,
    }

    impl Parity {
        pub fn new(checkpoint: &str) -> Self {
            let table = "image      prompt     max|dlogit|   tokens equal\n".to_owned();
            Self { checkpoint: checkpoint.to_owned(), table, worst: 0.0, all_equal: true }
        }

        pub fn record(&mut self, case: &Value, logits: &[f32], tokens: &[u32]) {
            let npy = case["first_step_logits"]["npy"].as_str().unwrap();
            let want = vlm_core::npy::read_f32(&fixtures().join("golden").join(&self.checkpoint).join(npy)).unwrap();
            assert_eq!(want.data.len(), logits.len());
            let d = logits.iter().zip(&want.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            self.worst = self.worst.max(d);
            let equal = tokens == ids(case, "greedy_tokens");
            self.all_equal &= equal;
            let image = case["image"].as_str().unwrap().trim_start_matches("images/");
            self.table += &format!("{image:<10} {:<10} {d:<13.3e} {equal}\n", case["prompt_id"].as_str().unwrap());
        }

        pub fn check(self) {
            println!("{}:\n{}", self.checkpoint, self.table);
            assert!(self.worst <= 1e-4, "{}", self.table);
            assert!(self.all_equal, "{}", self.table);
        }
    }
}

pub mod backend;

pub use backend::CandleLlava;

vlsbench_plugin_api::export_backend!(backend::CandleLlava);
