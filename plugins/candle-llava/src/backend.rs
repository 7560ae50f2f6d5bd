//! The vlsbench [`Backend`]: arch `llava_hf`, greedy decoding on CPU (CUDA with the `cuda`
//! feature).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use vlsbench_plugin_api::{Backend, BackendConfig, BackendError, BackendInfo, ContentPart, GenerateRequest, Generation};

use crate::config::{self, LlavaConfig, ProcessorConfig};
use crate::image_proc;
use crate::model::{Llava, ModelError};
use crate::prompt::{ChatTemplate, PromptTokenizer};

pub const ARCH_LLAVA_HF: &str = "llava_hf";

/// One loaded HF-format LLaVA checkpoint.
pub struct CandleLlava {
    checkpoint: PathBuf,
    model: Llava,
    processor: ProcessorConfig,
    template: ChatTemplate,
    tokenizer: PromptTokenizer,
    eos: Vec<u32>,
}

fn parse_dtype(s: Option<&str>) -> Result<DType, BackendError> {
    match s.unwrap_or("f32") {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(BackendError::bad_config(format!("dtype {other:?} is not supported (f32, f16, bf16)"))),
    }
}

fn parse_device(s: Option<&str>) -> Result<Device, BackendError> {
    match s.unwrap_or("cpu") {
        "cpu" => Ok(Device::Cpu),
        d if d == "cuda" || d.starts_with("cuda:") => {
            #[cfg(feature = "cuda")]
            {
                let ord = d.strip_prefix("cuda:").map_or(Ok(0), |n| n.parse::<usize>()).map_err(|_| {
                    BackendError::bad_config(format!("device {d:?}: expected cuda or cuda:<ordinal>"))
                })?;
                Device::new_cuda(ord).map_err(|e| BackendError::bad_config(format!("device {d}: {e}")))
            }
            #[cfg(not(feature = "cuda"))]
            Err(BackendError::unsupported(format!("device {d:?}: this build has no CUDA (cargo feature `cuda`)")))
        }
        other => Err(BackendError::unsupported(format!("device {other:?} is not supported (cpu, cuda)"))),
    }
}

impl CandleLlava {
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self, BackendError> {
        if !dir.is_dir() {
            return Err(BackendError::bad_config(format!("checkpoint {} is not a directory", dir.display())));
        }
        let bad = |e: &dyn std::fmt::Display| BackendError::bad_config(e.to_string());
        let cfg = LlavaConfig::from_dir(dir).map_err(|e| bad(&e))?;
        let processor = ProcessorConfig::from_dir(dir).map_err(|e| bad(&e))?;
        let template = ChatTemplate::from_dir(dir).map_err(|e| bad(&e))?;
        let tokenizer = PromptTokenizer::from_dir(dir).map_err(|e| bad(&e))?;
        let eos = match config::generation_eos_ids(dir).map_err(|e| bad(&e))? {
            Some(e) => e,
            None => cfg.text.eos_token_ids.clone(),
        };
        let model = Llava::load(dir, cfg, dtype, device).map_err(|e| bad(&e))?;
        Ok(Self { checkpoint: dir.to_owned(), model, processor, template, tokenizer, eos })
    }

    /// Token ids and pixel values for one request.
    pub fn prepare(&self, req: &GenerateRequest) -> Result<(Vec<u32>, Option<Tensor>), BackendError> {
        let item = &req.id;
        let mut pixels = Vec::new();
        let mut n_tokens = Vec::new();
        for m in &req.messages {
            for part in &m.content {
                if let ContentPart::Image { path } = part {
                    let (px, h, w) = image_proc::preprocess(path, &self.processor.image)
                        .map_err(|e| BackendError::bad_request(format!("item {item}: {e}")))?;
                    let n = self
                        .processor
                        .num_image_tokens(h, w)
                        .unwrap_or_else(|| self.model.config.image_features_per_image());
                    n_tokens.push(n);
                    pixels.push(
                        Tensor::from_vec(px, (1, 3, h, w), &self.model.device)
                            .map_err(|e| BackendError::model_failure(e.to_string()))?,
                    );
                }
            }
        }
        let rendered = self
            .template
            .render(&req.messages)
            .map_err(|e| BackendError::bad_request(format!("item {item}: {e}")))?;
        let n = n_tokens.first().copied().unwrap_or(0);
        if n_tokens.iter().any(|&k| k != n) {
            return Err(BackendError::bad_request(format!("item {item}: images of different sizes")));
        }
        let ids = self
            .tokenizer
            .encode(&rendered, &self.processor.image_token, n)
            .map_err(|e| BackendError::bad_request(format!("item {item}: {e}")))?;
        let px = if pixels.is_empty() {
            None
        } else {
            Some(Tensor::cat(&pixels, 0).map_err(|e| BackendError::model_failure(e.to_string()))?)
        };
        Ok((ids, px))
    }

    pub fn generate_one(&self, req: &GenerateRequest) -> Result<Generation, BackendError> {
        let item = &req.id;
        if req.response_format.is_some() {
            return Err(BackendError::unsupported(format!("item {item}: response formats are not supported by llava_hf")));
        }
        if req.settings.temperature.is_some_and(|t| t > 0.0) {
            return Err(BackendError::unsupported(format!("item {item}: only greedy decoding (temperature 0) is supported")));
        }
        let max_new = req.settings.max_new_tokens.unwrap_or(128) as usize;
        let (ids, px) = self.prepare(req)?;
        let room = self.model.config.text.max_position_embeddings.saturating_sub(ids.len());
        if room == 0 {
            return Err(BackendError::bad_request(format!(
                "item {item}: the prompt has {} tokens, the model's context is {}",
                ids.len(),
                self.model.config.text.max_position_embeddings
            )));
        }
        let budget = max_new.min(room);
        let (_, mut tokens) = self.model.greedy(&ids, px.as_ref(), budget, &self.eos).map_err(|e| match e {
            ModelError::Input(m) => BackendError::bad_request(format!("item {item}: {m}")),
            e => BackendError::model_failure(format!("item {item}: {e}")),
        })?;
        let stopped = tokens.last().is_some_and(|t| self.eos.contains(t));
        if stopped {
            tokens.pop();
        }
        let n = tokens.len() as u32 + stopped as u32;
        let text = self.tokenizer.decode(&tokens).map_err(|e| BackendError::model_failure(format!("item {item}: {e}")))?;
        Ok(Generation {
            text: text.trim().to_owned(),
            finish_reason: Some(if stopped { "stop" } else { "length" }.into()),
            tokens: Some(n),
        })
    }

    pub fn checkpoint(&self) -> &Path {
        &self.checkpoint
    }
}

impl Backend for CandleLlava {
    fn describe() -> BackendInfo {
        let mut devices = vec!["cpu".to_owned()];
        if cfg!(feature = "cuda") {
            devices.push("cuda".to_owned());
        }
        BackendInfo {
            name: "candle-llava".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "LLaVA-1.5 (HF format) on candle: greedy decoding, parity-tested against transformers".into(),
            archs: vec![ARCH_LLAVA_HF.into()],
            max_batch: 1,
            concurrent: false,
            devices,
        }
    }

    fn create(config: BackendConfig) -> Result<Self, BackendError> {
        if config.arch != ARCH_LLAVA_HF {
            return Err(BackendError::unsupported(format!("arch {:?} is not served (llava_hf)", config.arch)));
        }
        let ck = config
            .checkpoint
            .as_deref()
            .ok_or_else(|| BackendError::bad_config("no checkpoint: set [model].checkpoint to a checkpoint folder"))?;
        let ck = Path::new(ck);
        let dir = if ck.is_absolute() { ck.to_owned() } else { config.base_dir.join(ck) };
        let dtype = parse_dtype(config.dtype.as_deref())?;
        let device = parse_device(config.device.as_deref())?;
        Self::load(&dir, dtype, &device)
    }

    fn generate(&self, requests: Vec<GenerateRequest>) -> Vec<Result<Generation, BackendError>> {
        requests.iter().map(|r| self.generate_one(r)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vlsbench_plugin_api::{ChatMessage, GenerationSettings, Role};

    #[test]
    fn answers_match_goldens_until_eos() {
        let fx = crate::test_util::fixtures();
        let dir = fx.join("checkpoints/llava_hf");
        let b = CandleLlava::create(BackendConfig {
            arch: "llava_hf".into(),
            checkpoint: Some(dir.display().to_string()),
            device: None,
            dtype: None,
            options: serde_json::Value::Null,
            base_dir: fx.clone(),
        })
        .unwrap();
        let g: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fx.join("golden/llava_hf/golden.json")).unwrap()).unwrap();
        for case in g["cases"].as_array().unwrap() {
            let req = GenerateRequest {
                id: "0".into(),
                messages: vec![ChatMessage::new(
                    Role::User,
                    vec![ContentPart::text(case["prompt"].as_str().unwrap()), ContentPart::image(fx.join(case["image"].as_str().unwrap()))],
                )],
                settings: GenerationSettings { max_new_tokens: Some(24), temperature: Some(0.0), top_p: Some(1.0) },
                response_format: None,
            };
            let (ids, _) = b.prepare(&req).unwrap();
            let want: Vec<u32> = case["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            assert_eq!(ids, want);
            let got = b.generate(vec![req]).pop().unwrap().unwrap();
            assert_eq!(got.text, case["decoded_until_eos_stripped"].as_str().unwrap(), "{}", case["image"]);
        }
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let fx = crate::test_util::fixtures();
        let cfg = |ck: &str, arch: &str| BackendConfig {
            arch: arch.into(),
            checkpoint: Some(ck.into()),
            device: None,
            dtype: None,
            options: serde_json::Value::Null,
            base_dir: fx.clone(),
        };
        let e = CandleLlava::create(cfg("checkpoints/llava_next", "llava_hf")).err().unwrap();
        assert!(e.message.contains("llava_next"), "{e}");
        let e = CandleLlava::create(cfg("images", "llava_hf")).err().unwrap();
        assert!(e.message.contains("config.json"), "{e}");
        let e = CandleLlava::create(cfg("checkpoints/llava_hf", "llava")).err().unwrap();
        assert_eq!(e.kind, vlsbench_plugin_api::ErrorKind::Unsupported);
    }
}
