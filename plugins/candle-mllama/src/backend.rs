//! The vlsbench [`Backend`] for arch `mllama`: Llama 3.2 Vision checkpoints in transformers'
//! format, greedy decoding on CPU (CUDA with the `cuda` feature).
//!
//! `generate` batches: each request is prepared alone (its images opened with `convert("RGB")`
//! and through the Mllama image processor, the chat template, `build_string_from_input`, the
//! tokenizer with `add_special_tokens=False` as the reference calls the processor; an item that
//! cannot be prepared fails alone with a typed `bad_request`), then the prepared ones with the
//! same number of images are decoded together, left-padded, [`MAX_BATCH`] at a time. Decoding is
//! greedy with the EOS ids of `generation_config.json` (and its `repetition_penalty`, if it sets
//! one). Answers are decoded with `skip_special_tokens=True` and no clean-up pass
//! (`clean_up_tokenization_spaces=False`, as the reference's mllama loader asks), then Python's
//! `strip`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use vlm_core::batch::{finish_generation, generate_in_batches, single};
use vlm_core::generation::{GenerationDefaults, OtherProcessors};
use vlm_core::request::{budget_in_context, checkpoint_dtype_device, devices, greedy_budget, image_paths, model_error};
use vlm_core::template::ChatTemplate;
use vlm_core::tokenizer::PromptTokenizer;
use vlsbench_plugin_api::{
    Backend, BackendConfig, BackendError, BackendInfo, ChatMessage, GenerateRequest, Generation, MessageLayout,
};

use crate::config::{ImageProcessorConfig, MllamaConfig, read_json};
use crate::model::{Mllama, Prompt};
use crate::processor::{self, ProcessedImage, build_string_from_input};

pub const ARCH: &str = "mllama";
/// The most requests decoded together; `describe` says so to the host.
pub const MAX_BATCH: usize = 8;
/// `MllamaProcessor.image_token`.
pub const IMAGE_TOKEN: &str = "<|image|>";

/// One loaded Llama 3.2 Vision checkpoint.
pub struct CandleMllama {
    checkpoint: PathBuf,
    model: Mllama,
    processor: ImageProcessorConfig,
    template: ChatTemplate,
    tokenizer: PromptTokenizer,
    bos_token: String,
    eos: Vec<u32>,
    repetition_penalty: f32,
}

/// The tokenizer's `bos_token` (`tokenizer_config.json`, a string or an added-token object).
fn bos_token(dir: &Path) -> Result<String, BackendError> {
    let p = dir.join("tokenizer_config.json");
    if !p.is_file() {
        return Ok("<|begin_of_text|>".to_owned());
    }
    let v = read_json(&p).map_err(|e| BackendError::bad_config(e.to_string()))?;
    Ok(match v.get("bos_token") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) => o.get("content").and_then(|c| c.as_str()).unwrap_or_default().to_owned(),
        _ => String::new(),
    })
}

impl CandleMllama {
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self, BackendError> {
        if !dir.is_dir() {
            return Err(BackendError::bad_config(format!("checkpoint {} is not a directory", dir.display())));
        }
        let bad = |e: &dyn std::fmt::Display| BackendError::bad_config(e.to_string());
        let cfg = MllamaConfig::from_dir(dir).map_err(|e| bad(&e))?;
        let processor = ImageProcessorConfig::from_dir(dir).map_err(|e| bad(&e))?;
        processor.check_against(&cfg.vision).map_err(|e| bad(&e))?;
        let template = ChatTemplate::from_dir(dir).map_err(|e| bad(&e))?;
        let tokenizer = PromptTokenizer::from_dir(dir).map_err(|e| bad(&e))?;
        match tokenizer.token_id(IMAGE_TOKEN) {
            Some(id) if id == cfg.image_token_id => {}
            other => {
                return Err(BackendError::bad_config(format!(
                    "{}: the tokenizer's {IMAGE_TOKEN} is {other:?}, config.json's image_token_index {}",
                    dir.display(),
                    cfg.image_token_id
                )));
            }
        }
        let bos_token = bos_token(dir)?;
        let generation = GenerationDefaults::from_dir(dir, OtherProcessors::Refuse).map_err(|e| bad(&e))?;
        let eos = generation.eos_token_ids.unwrap_or_else(|| cfg.text.eos_token_ids.clone());
        let repetition_penalty = generation.repetition_penalty as f32;
        let model = Mllama::load(dir, cfg, dtype, device).map_err(|e| bad(&e))?;
        Ok(Self {
            checkpoint: dir.to_owned(),
            model,
            processor,
            template,
            tokenizer,
            bos_token,
            eos,
            repetition_penalty,
        })
    }

    /// `processor.apply_chat_template(messages, add_generation_prompt=True)`.
    pub fn rendered_prompt(&self, messages: &[ChatMessage]) -> Result<String, BackendError> {
        self.template.render(messages).map_err(|e| BackendError::bad_request(e.to_string()))
    }

    /// A request's input ids and images, as `MllamaProcessor(text, images, add_special_tokens=False)`
    /// makes them.
    pub fn prepare(&self, req: &GenerateRequest) -> Result<(Vec<u32>, Vec<ProcessedImage>), BackendError> {
        let item = &req.id;
        let bad = |e: &dyn std::fmt::Display| BackendError::bad_request(format!("item {item}: {e}"));
        let images = image_paths(&req.messages)
            .into_iter()
            .map(|p| processor::preprocess(p, &self.processor).map_err(|e| bad(&e)))
            .collect::<Result<Vec<_>, _>>()?;
        let text = self.template.render(&req.messages).map_err(|e| bad(&e))?;
        let text = build_string_from_input(&text, &self.bos_token, IMAGE_TOKEN);
        let found = text.matches(IMAGE_TOKEN).count();
        if found != images.len() {
            return Err(bad(&format!("the prompt has {found} {IMAGE_TOKEN} tokens for {} images", images.len())));
        }
        let ids = self.tokenizer.encode_text(&text, false).map_err(|e| bad(&e))?;
        Ok((ids, images))
    }

    /// A request prepared for the decoder, with its budget of new tokens.
    fn embed_request(&self, req: &GenerateRequest) -> Result<(Prompt, usize), BackendError> {
        let max_new = greedy_budget(req)?;
        let (ids, images) = self.prepare(req)?;
        let budget = budget_in_context(req, max_new, ids.len(), self.model.config.text.max_position_embeddings)?;
        let refs: Vec<&ProcessedImage> = images.iter().collect();
        let prompt = self.model.prompt(&ids, &refs).map_err(|e| model_error(&req.id, e))?;
        Ok((prompt, budget))
    }

    /// The answer text for generated tokens (EOS not included), before stripping.
    pub fn decode(&self, tokens: &[u32]) -> Result<String, BackendError> {
        self.tokenizer.decode(tokens).map_err(|e| BackendError::model_failure(e.to_string()))
    }

    /// Greedy answers for several requests: grouped by their number of images (a batch must
    /// agree on it), each group decoded [`MAX_BATCH`] at a time.
    pub fn generate_batch(&self, requests: &[GenerateRequest]) -> Vec<Result<Generation, BackendError>> {
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (k, r) in requests.iter().enumerate() {
            let n = image_paths(&r.messages).len();
            match groups.iter_mut().find(|(m, _)| *m == n) {
                Some((_, members)) => members.push(k),
                None => groups.push((n, vec![k])),
            }
        }
        let mut results: Vec<Option<Result<Generation, BackendError>>> = requests.iter().map(|_| None).collect();
        for (_, members) in groups {
            let group: Vec<GenerateRequest> = members.iter().map(|&k| requests[k].clone()).collect();
            let out = generate_in_batches(
                &group,
                MAX_BATCH,
                |req| self.embed_request(req),
                |prompts, budgets| self.model.greedy_batch(&prompts, budgets, &self.eos, self.repetition_penalty),
                |req, tokens| finish_generation(&req.id, tokens, &self.eos, |t| self.decode(t)),
            );
            for (&k, r) in members.iter().zip(out) {
                results[k] = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(BackendError::model_failure("request left unanswered"))))
            .collect()
    }

    /// One request alone.
    pub fn generate_one(&self, req: &GenerateRequest) -> Result<Generation, BackendError> {
        single(self.generate_batch(std::slice::from_ref(req)))
    }

    pub fn model(&self) -> &Mllama {
        &self.model
    }

    pub fn processor(&self) -> &ImageProcessorConfig {
        &self.processor
    }

    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }

    /// Tests: stop at other tokens (the fixtures' greedy runs may never reach their EOS).
    #[cfg(test)]
    pub(crate) fn set_eos(&mut self, eos: Vec<u32>) {
        self.eos = eos;
    }

    pub fn repetition_penalty(&self) -> f32 {
        self.repetition_penalty
    }

    pub fn eos(&self) -> &[u32] {
        &self.eos
    }

    pub fn checkpoint(&self) -> &Path {
        &self.checkpoint
    }
}

/// `[model.options]` of candle-mllama: none, so any key is refused by name.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct NoOptions {}

impl Backend for CandleMllama {
    fn describe() -> BackendInfo {
        BackendInfo {
            name: "candle-mllama".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Llama 3.2 Vision on candle: Mllama image processor (Pillow-exact bilinear, tiles), vision \
                          encoder, gated cross-attention, greedy decoding, batched, parity-tested against transformers"
                .into(),
            archs: vec![ARCH.into()],
            max_batch: MAX_BATCH as u32,
            concurrent: false,
            devices: devices(),
            checkpoint_is_path: true,
            path_options: vec![],
            // The reference's mllama loader: user content [image, text], no system message (the
            // Llama 3.2 Vision template refuses a system message with an image).
            message_layouts: [(ARCH.to_owned(), MessageLayout::image_then_text())].into(),
        }
    }

    fn options() -> Option<Vec<vlsbench_plugin_api::OptionSpec>> {
        Some(Vec::new())
    }

    fn create(config: BackendConfig) -> Result<Self, BackendError> {
        if config.arch != ARCH {
            return Err(BackendError::unsupported(format!("arch {:?} is not served ({ARCH})", config.arch)));
        }
        let (dir, dtype, device) = checkpoint_dtype_device(&config)?;
        let NoOptions {} = config.options()?;
        Self::load(&dir, dtype, &device)
    }

    fn generate(&self, requests: Vec<GenerateRequest>) -> Vec<Result<Generation, BackendError>> {
        self.generate_batch(&requests)
    }
}
