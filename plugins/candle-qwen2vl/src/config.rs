//! A Qwen2-VL checkpoint's configuration files: `vlm_core::qwen2vl::config` (shared with the ONNX
//! backend), re-exported under this crate's historical path.

pub use vlm_core::qwen2vl::config::*;
