//! The checkpoint's configuration files, every layout transformers reads:
//! `vlm_core::llava::config` (shared with the ONNX backend), re-exported under this crate's
//! historical path.

pub use vlm_core::llava::config::*;
