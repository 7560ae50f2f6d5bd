//! `CLIPImageProcessor` with Pillow's bicubic, bit for bit: `vlm_core::llava::image_proc`
//! (shared with the ONNX backend), re-exported under this crate's historical path.

pub use vlm_core::llava::image_proc::*;
