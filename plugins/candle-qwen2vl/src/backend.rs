//! The vlsbench [`Backend`] for arch `qwen2vl`: Qwen2-VL checkpoints in transformers' format,
//! greedy decoding on CPU (CUDA with the `cuda` feature).
//!
//! `generate` batches: each request is prepared alone (its images through `qwen_vl_utils` and
//! the image processor, the chat template, the tokenizer; an item that cannot be prepared fails
//! alone with a typed `bad_request`), then the prepared ones are decoded together, left-padded,
//! [`MAX_BATCH`] at a time. Decoding is greedy with the checkpoint's `repetition_penalty` from
//! `generation_config.json` (the reference's `generate(do_sample=False, ...)` leaves it in force:
//! 1.05 for Qwen2-VL-7B-Instruct; `[model.options] repetition_penalty` overrides it). Answers are
//! decoded with `skip_special_tokens=True`, then transformers' `clean_up_tokenization` pass (the
//! reference's qwen2vl loader asks for it), then Python's `strip`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use vlm_core::batch::GreedyBackend;
use vlm_core::qwen2vl::Qwen2VlInputs;
use vlm_core::request::{checkpoint_dtype_device, one_arch_info};
use vlm_core::tokenizer::PromptTokenizer;
use vlsbench_plugin_api::{
    Backend, BackendConfig, BackendError, BackendInfo, ChatMessage, GenerateRequest, Generation, MessageLayout,
};

use crate::config::ImageProcessorConfig;
use crate::model::Qwen2Vl;
use crate::processor::ProcessedImage;

pub const ARCH: &str = "qwen2vl";
/// The most requests decoded together; `describe` says so to the host.
pub const MAX_BATCH: usize = 8;
/// `Qwen2VLProcessor.image_token`.
pub use vlm_core::qwen2vl::IMAGE_TOKEN;

/// One loaded Qwen2-VL checkpoint.
pub struct CandleQwen2Vl {
    checkpoint: PathBuf,
    model: Qwen2Vl,
    /// Configuration, image processor, chat template, tokenizer, EOS ids and the repetition
    /// penalty (`generation_config.json`'s, or `[model.options] repetition_penalty`): the
    /// preprocessing the ONNX backend shares.
    inputs: Qwen2VlInputs,
}

impl CandleQwen2Vl {
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self, BackendError> {
        let inputs = Qwen2VlInputs::from_dir(dir)?;
        let model = Qwen2Vl::load(dir, inputs.config.clone(), dtype, device)
            .map_err(|e| BackendError::bad_config(e.to_string()))?;
        Ok(Self { checkpoint: dir.to_owned(), model, inputs })
    }

    /// The checkpoint folder it was loaded from.
    pub fn checkpoint(&self) -> &Path {
        &self.checkpoint
    }

    pub fn processor(&self) -> &ImageProcessorConfig {
        &self.inputs.processor
    }

    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.inputs.tokenizer
    }
}

/// Decoding is [`GreedyBackend`]'s: every request prepared alone, then decoded together
/// [`MAX_BATCH`] at a time.
impl GreedyBackend for CandleQwen2Vl {
    type Model = Qwen2Vl;
    const MAX_BATCH: usize = MAX_BATCH;

    /// A request's input ids and images, as `process_vision_info` and `Qwen2VLProcessor` make them.
    fn prepare(&self, req: &GenerateRequest) -> Result<(Vec<u32>, Vec<ProcessedImage>), BackendError> {
        self.inputs.prepare(req)
    }

    fn model(&self) -> &Qwen2Vl {
        &self.model
    }

    /// `processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`.
    fn rendered_prompt(&self, messages: &[ChatMessage]) -> Result<String, BackendError> {
        self.inputs.rendered_prompt(messages)
    }

    fn eos(&self) -> &[u32] {
        &self.inputs.eos
    }

    /// `generation_config.json`'s, or `[model.options] repetition_penalty`.
    fn repetition_penalty(&self) -> f32 {
        self.inputs.repetition_penalty
    }

    fn context_length(&self) -> usize {
        self.model.config.text.max_position_embeddings
    }

    /// The answer text for generated tokens (EOS not included), cleaned up and stripped.
    fn decode(&self, tokens: &[u32]) -> Result<String, BackendError> {
        self.inputs.decode(tokens)
    }
}

/// `[model.options]` of candle-qwen2vl.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Qwen2VlOptions {
    /// Overrides `generation_config.json`'s `repetition_penalty`.
    repetition_penalty: Option<f32>,
}

impl Backend for CandleQwen2Vl {
    fn describe() -> BackendInfo {
        let description = "Qwen2-VL on candle: qwen_vl_utils + Qwen2VLImageProcessor preprocessing, M-RoPE, greedy \
                           decoding, batched, parity-tested against transformers";
        // The reference's qwen2vl loader: user content [image, text], the chat template adds its
        // default system prompt.
        let layout = MessageLayout::image_then_text();
        one_arch_info("candle-qwen2vl", env!("CARGO_PKG_VERSION"), description, ARCH, MAX_BATCH, layout)
    }

    fn options() -> Option<Vec<vlsbench_plugin_api::OptionSpec>> {
        use vlsbench_plugin_api::{OptionKind, OptionSpec};
        Some(vec![OptionSpec::new(
            "repetition_penalty",
            OptionKind::Number,
            "overrides generation_config.json's repetition_penalty (the reference keeps the checkpoint's, 1.05)",
        )])
    }

    fn create(config: BackendConfig) -> Result<Self, BackendError> {
        if config.arch != ARCH {
            return Err(BackendError::unsupported(format!("arch {:?} is not served ({ARCH})", config.arch)));
        }
        let (dir, dtype, device) = checkpoint_dtype_device(&config)?;
        let options: Qwen2VlOptions = config.options()?;
        let penalty = match options.repetition_penalty {
            Some(p) if !(p > 0.0 && p.is_finite()) => {
                return Err(BackendError::bad_config(format!(
                    "[model.options]: `repetition_penalty` must be a positive number, got {p}"
                )));
            }
            p => p,
        };
        let mut backend = Self::load(&dir, dtype, &device)?;
        if let Some(p) = penalty {
            backend.inputs.repetition_penalty = p;
        }
        Ok(backend)
    }

    fn generate(&self, requests: Vec<GenerateRequest>) -> Vec<Result<Generation, BackendError>> {
        self.generate_batch(&requests)
    }
}
