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
use vlm_core::batch::GreedyBackend;
use vlm_core::checkpoint::{ImageToken, eos_and_penalty, prompt_files, require_dir};
use vlm_core::generation::OtherProcessors;
use vlm_core::request::{checkpoint_dtype_device, image_paths, one_arch_info};
use vlm_core::template::ChatTemplate;
use vlm_core::tokenizer::PromptTokenizer;
use vlsbench_plugin_api::{
    Backend, BackendConfig, BackendError, BackendInfo, ChatMessage, GenerateRequest, Generation, MessageLayout,
};

use crate::config::{ImageProcessorConfig, MllamaConfig, read_json};
use crate::model::Mllama;
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
        require_dir(dir)?;
        let bad = |e: &dyn std::fmt::Display| BackendError::bad_config(e.to_string());
        let cfg = MllamaConfig::from_dir(dir).map_err(|e| bad(&e))?;
        let processor = ImageProcessorConfig::from_dir(dir).map_err(|e| bad(&e))?;
        processor.check_against(&cfg.vision).map_err(|e| bad(&e))?;
        let image_token = ImageToken { text: IMAGE_TOKEN, id: cfg.image_token_id, config_key: "image_token_index" };
        let (template, tokenizer) = prompt_files(dir, image_token)?;
        let bos_token = bos_token(dir)?;
        let (eos, repetition_penalty) = eos_and_penalty(dir, OtherProcessors::Refuse, &cfg.text.eos_token_ids)?;
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

    /// The checkpoint folder it was loaded from.
    pub fn checkpoint(&self) -> &Path {
        &self.checkpoint
    }

    pub fn processor(&self) -> &ImageProcessorConfig {
        &self.processor
    }

    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }
}

/// Decoding is [`GreedyBackend`]'s: every request prepared alone, then the prepared ones with the
/// same number of images decoded together [`MAX_BATCH`] at a time.
impl GreedyBackend for CandleMllama {
    type Model = Mllama;
    const MAX_BATCH: usize = MAX_BATCH;

    /// A request's input ids and images, as `MllamaProcessor(text, images, add_special_tokens=False)`
    /// makes them.
    fn prepare(&self, req: &GenerateRequest) -> Result<(Vec<u32>, Vec<ProcessedImage>), BackendError> {
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

    fn model(&self) -> &Mllama {
        &self.model
    }

    /// `processor.apply_chat_template(messages, add_generation_prompt=True)`.
    fn rendered_prompt(&self, messages: &[ChatMessage]) -> Result<String, BackendError> {
        self.template.render(messages).map_err(|e| BackendError::bad_request(e.to_string()))
    }

    fn eos(&self) -> &[u32] {
        &self.eos
    }

    fn repetition_penalty(&self) -> f32 {
        self.repetition_penalty
    }

    fn context_length(&self) -> usize {
        self.model.config.text.max_position_embeddings
    }

    /// The answer text for generated tokens (EOS not included), before stripping.
    fn decode(&self, tokens: &[u32]) -> Result<String, BackendError> {
        self.tokenizer.decode(tokens).map_err(|e| BackendError::model_failure(e.to_string()))
    }

    /// A batch must agree on its number of images.
    fn batch_key(&self, req: &GenerateRequest) -> usize {
        image_paths(&req.messages).len()
    }
}

/// `[model.options]` of candle-mllama: none, so any key is refused by name.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct NoOptions {}

impl Backend for CandleMllama {
    fn describe() -> BackendInfo {
        let description = "Llama 3.2 Vision on candle: Mllama image processor (Pillow-exact bilinear, tiles), vision \
                           encoder, gated cross-attention, greedy decoding, batched, parity-tested against transformers";
        // The reference's mllama loader: user content [image, text], no system message (the Llama
        // 3.2 Vision template refuses a system message with an image).
        let layout = MessageLayout::image_then_text();
        one_arch_info("candle-mllama", env!("CARGO_PKG_VERSION"), description, ARCH, MAX_BATCH, layout)
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
