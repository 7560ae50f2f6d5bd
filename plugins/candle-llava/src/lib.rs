//! vlsbench backend for the LLaVA family on candle: arch `llava_hf` (LLaVA-1.5) and arch
//! `llava_next` (LLaVA-NeXT, anyres tiling), both in transformers' HF format.
//!
//! - [`config`]: the checkpoint's configuration files, every layout transformers reads.
//! - [`image_proc`]: `CLIPImageProcessor` with Pillow's bicubic, bit for bit.
//! - [`anyres`]: LLaVA-NeXT's tiling: `LlavaNextImageProcessor`, the processor's image-token
//!   count and the model's feature packing.
//! - [`model`]: CLIP vision tower, projector and Llama text model (our own, checked against
//!   transformers by the parity tests).
//! - [`prompt`]: the checkpoint's chat template (minijinja) and tokenizer.

pub mod anyres;
pub mod config;
pub mod conversation;
pub mod image_proc;
pub mod model;
pub mod npy;
pub mod original;
pub mod prompt;
pub mod sentencepiece;

#[cfg(test)]
pub(crate) mod test_util {
    use std::path::{Path, PathBuf};

    pub fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
    }
}

pub mod backend;

pub use backend::CandleLlava;

vlsbench_plugin_api::export_backend!(backend::CandleLlava);
