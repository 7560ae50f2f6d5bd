//! vlsbench backend `onnxruntime`: ONNX exports of vision-language models in the layout Hugging
//! Face's ONNX community publishes for transformers.js (`onnx/vision_encoder.onnx`,
//! `onnx/embed_tokens.onnx`, `onnx/decoder_model_merged.onnx` beside the usual config, processor,
//! tokenizer and chat-template files), run by ONNX Runtime loaded at run time. Archs `qwen2vl`
//! and `llava_hf`.
//!
//! The backend only runs graphs. Everything before and after them (image loading per reference
//! loader, resizing, chat template, tokenizer, M-RoPE positions, batching, the greedy loop and
//! decoding) is `vlm_core`'s, the code the candle backends run, so two engines check each other.
//!
//! - [`runtime`]: finding and loading ONNX Runtime, its version, sessions on a device.
//! - [`graphs`]: the three graphs, the decoder's layout read from its inputs and held against
//!   `config.json`, f32 / f16 at the graph's edge.
//! - [`decode`]: the left-padded batch through the decoder graph with `vlm_core`'s greedy loop.
//! - [`qwen2vl`], [`llava`]: what each arch feeds the graphs.
//! - [`backend`]: the vlsbench `Backend`.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod backend;
pub mod decode;
pub mod graphs;
pub mod llava;
pub mod qwen2vl;
pub mod runtime;

pub use backend::OnnxBackend;

vlsbench_plugin_api::export_backend!(backend::OnnxBackend);
