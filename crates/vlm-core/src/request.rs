//! What a backend reads from a request and from the manifest's `[model]`: the images and the text
//! of the chat messages, `dtype` and `device`, and how a model error reaches the host.

use std::path::Path;

use candle_core::{DType, Device};
use vlsbench_plugin_api::{BackendError, ChatMessage, ContentPart};

use crate::ModelError;

/// The manifest's `dtype` (default `f32`).
pub fn parse_dtype(s: Option<&str>) -> Result<DType, BackendError> {
    match s.unwrap_or("f32") {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(BackendError::bad_config(format!("dtype {other:?} is not supported (f32, f16, bf16)"))),
    }
}

/// The manifest's `device` (default `cpu`; `cuda` / `cuda:N` in a build with the `cuda` feature).
pub fn parse_device(s: Option<&str>) -> Result<Device, BackendError> {
    match s.unwrap_or("cpu") {
        "cpu" => Ok(Device::Cpu),
        d if d == "cuda" || d.starts_with("cuda:") => {
            #[cfg(feature = "cuda")]
            {
                let ord = d
                    .strip_prefix("cuda:")
                    .map_or(Ok(0), |n| n.parse::<usize>())
                    .map_err(|_| BackendError::bad_config(format!("device {d:?}: expected cuda or cuda:<ordinal>")))?;
                Device::new_cuda(ord).map_err(|e| BackendError::bad_config(format!("device {d}: {e}")))
            }
            #[cfg(not(feature = "cuda"))]
            Err(BackendError::unsupported(format!("device {d:?}: this build has no CUDA (cargo feature `cuda`)")))
        }
        other => Err(BackendError::unsupported(format!("device {other:?} is not supported (cpu, cuda)"))),
    }
}

/// bf16 on the CPU is refused: candle 0.11's CPU matmul has no bf16 kernel.
pub fn check_dtype_on_device(dtype: DType, device: &Device) -> Result<(), BackendError> {
    if dtype == DType::BF16 && device.is_cpu() {
        return Err(BackendError::bad_config(
            "dtype bf16 needs device cuda: candle 0.11's CPU matrix product has no bf16 kernel (use f32 or f16 on cpu)",
        ));
    }
    Ok(())
}

/// The images of a request's messages, in order.
pub fn image_paths(messages: &[ChatMessage]) -> Vec<&Path> {
    let parts = messages.iter().flat_map(|m| &m.content);
    parts
        .filter_map(|p| match p {
            ContentPart::Image { path } => Some(path.as_path()),
            ContentPart::Text { .. } => None,
        })
        .collect()
}

/// The text of a request's messages, parts joined by new lines.
pub fn question(messages: &[ChatMessage]) -> String {
    let parts = messages.iter().flat_map(|m| &m.content);
    let texts: Vec<&str> = parts
        .filter_map(|p| match p {
            ContentPart::Text { text } => Some(text.as_str()),
            ContentPart::Image { .. } => None,
        })
        .collect();
    texts.join("\n")
}

/// A model error as the host sees it: bad input is the item's fault, anything else the model's.
pub fn model_error(item: &str, e: ModelError) -> BackendError {
    match e {
        ModelError::Input(m) => BackendError::bad_request(format!("item {item}: {m}")),
        e => BackendError::model_failure(format!("item {item}: {e}")),
    }
}
