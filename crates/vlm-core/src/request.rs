//! What a backend reads from a request and from the manifest's `[model]`: the images and the text
//! of the chat messages, the checkpoint folder, `dtype` and `device` ([`checkpoint_dtype_device`]),
//! a request's budget of new tokens ([`greedy_budget`], [`budget_in_context`]), and how a model
//! error reaches the host; what `describe` says of a backend of one arch ([`one_arch_info`]).
//! (`[model.options]` are read by each backend into its own serde type, `BackendConfig::options`.)

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use vlsbench_plugin_api::{
    BackendConfig, BackendError, BackendInfo, ChatMessage, ContentPart, GenerateRequest, MessageLayout,
};

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

/// Whether `dtype` runs on `device`. Every dtype the manifest takes (f32, f16, bf16) runs on the
/// CPU (half weights kept half, math in f32: [`crate::precision`]) and on CUDA.
pub fn check_dtype_on_device(dtype: DType, device: &Device) -> Result<(), BackendError> {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => Ok(()),
        other => {
            Err(BackendError::bad_config(format!("dtype {other:?} is not supported on {device:?} (f32, f16, bf16)")))
        }
    }
}

/// The devices a backend built with this crate serves, as `describe` lists them: `cpu`, and `cuda`
/// in a build with the `cuda` feature.
pub fn devices() -> Vec<String> {
    let mut devices = vec!["cpu".to_owned()];
    if cfg!(feature = "cuda") {
        devices.push("cuda".to_owned());
    }
    devices
}

/// What `describe` says of a backend that serves one `arch` from a checkpoint folder, in
/// `layout`, `max_batch` requests at a time (not concurrently), on [`devices`].
pub fn one_arch_info(
    name: &str,
    version: &str,
    description: &str,
    arch: &str,
    max_batch: usize,
    layout: MessageLayout,
) -> BackendInfo {
    BackendInfo {
        name: name.into(),
        version: version.into(),
        description: description.into(),
        archs: vec![arch.into()],
        max_batch: max_batch as u32,
        concurrent: false,
        devices: devices(),
        checkpoint_is_path: true,
        path_options: vec![],
        message_layouts: [(arch.to_owned(), layout)].into(),
    }
}

/// The manifest's `[model]` as a native backend loads it: the checkpoint folder (a relative path is
/// relative to the manifest's folder), the dtype and the device, checked together
/// ([`check_dtype_on_device`]).
pub fn checkpoint_dtype_device(config: &BackendConfig) -> Result<(PathBuf, DType, Device), BackendError> {
    let ck = config
        .checkpoint
        .as_deref()
        .ok_or_else(|| BackendError::bad_config("no checkpoint: set [model].checkpoint to a checkpoint folder"))?;
    let ck = Path::new(ck);
    let dir = if ck.is_absolute() { ck.to_owned() } else { config.base_dir.join(ck) };
    let dtype = parse_dtype(config.dtype.as_deref())?;
    let device = parse_device(config.device.as_deref())?;
    check_dtype_on_device(dtype, &device)?;
    Ok((dir, dtype, device))
}

/// A request's budget of new tokens (`max_new_tokens`, default 128, the reference's); a sampling
/// temperature and a response format are refused: every native backend decodes greedily and
/// cannot constrain its output to a schema.
pub fn greedy_budget(req: &GenerateRequest) -> Result<usize, BackendError> {
    // A judge that asks for a JSON schema must not get unconstrained text back as if it obeyed.
    if req.response_format.is_some() {
        return Err(BackendError::unsupported(format!(
            "item {}: response formats (structured output) are not supported by the local backends",
            req.id
        )));
    }
    if req.settings.temperature.is_some_and(|t| t > 0.0) {
        return Err(BackendError::unsupported(format!(
            "item {}: only greedy decoding (temperature 0) is supported",
            req.id
        )));
    }
    Ok(req.settings.max_new_tokens.unwrap_or(128) as usize)
}

/// `max_new` cut to the room a prompt of `prompt_len` tokens leaves in a `context`-token model; a
/// prompt that fills it is the item's fault, named with its images.
pub fn budget_in_context(
    req: &GenerateRequest,
    max_new: usize,
    prompt_len: usize,
    context: usize,
) -> Result<usize, BackendError> {
    let room = context.saturating_sub(prompt_len);
    if room == 0 {
        let files: Vec<String> = image_paths(&req.messages).iter().map(|p| p.display().to_string()).collect();
        return Err(BackendError::bad_request(format!(
            "item {}: the prompt (images {}) has {prompt_len} tokens, the model's context is {context}",
            req.id,
            files.join(", "),
        )));
    }
    Ok(max_new.min(room))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(checkpoint: Option<&str>, dtype: Option<&str>) -> BackendConfig {
        BackendConfig {
            arch: "x".into(),
            checkpoint: checkpoint.map(Into::into),
            device: None,
            dtype: dtype.map(Into::into),
            options: serde_json::Value::Null,
            base_dir: PathBuf::from("/manifests"),
        }
    }

    #[test]
    fn the_checkpoint_is_relative_to_the_manifest() {
        let (dir, dtype, device) = checkpoint_dtype_device(&config(Some("ck"), None)).unwrap();
        assert_eq!((dir, dtype, device.is_cpu()), (PathBuf::from("/manifests/ck"), DType::F32, true));
        assert_eq!(checkpoint_dtype_device(&config(Some("/abs"), Some("f16"))).unwrap().0, PathBuf::from("/abs"));
        assert!(checkpoint_dtype_device(&config(None, None)).unwrap_err().to_string().contains("no checkpoint"));
        let (_, dtype, device) = checkpoint_dtype_device(&config(Some("ck"), Some("bf16"))).unwrap();
        assert_eq!((dtype, device.is_cpu()), (DType::BF16, true));
        assert!(check_dtype_on_device(DType::F64, &Device::Cpu).is_err());
    }

    #[test]
    fn budgets_are_greedy_and_fit_the_context() {
        let layout = vlsbench_plugin_api::MessageLayout::image_then_text();
        let mut req = crate::testing::request("7", "Q", Path::new("a.png"), 10, &layout);
        assert_eq!(greedy_budget(&req).unwrap(), 10);
        assert_eq!(budget_in_context(&req, 10, 95, 100).unwrap(), 5);
        let e = budget_in_context(&req, 10, 100, 100).unwrap_err();
        assert_eq!(e.message, "item 7: the prompt (images a.png) has 100 tokens, the model's context is 100");
        req.settings.temperature = Some(0.7);
        assert!(greedy_budget(&req).unwrap_err().message.contains("only greedy decoding"));
        req.settings = Default::default();
        assert_eq!(greedy_budget(&req).unwrap(), 128);
    }
}
