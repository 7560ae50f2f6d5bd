//! The image as the reference prepares it for Qwen2-VL (`qwen_vl_utils` then
//! `Qwen2VLImageProcessor`): `vlm_core::qwen2vl::processor` (shared with the ONNX backend),
//! re-exported under this crate's historical path.

pub use vlm_core::qwen2vl::processor::*;
