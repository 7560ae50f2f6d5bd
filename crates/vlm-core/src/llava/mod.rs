//! The LLaVA family's inputs, shared by every backend that serves it (candle-llava and, for
//! `llava_hf`, onnxruntime):
//!
//! - [`config`]: an HF-format checkpoint's configuration files, every layout transformers reads.
//! - [`image_proc`]: `CLIPImageProcessor` with Pillow's bicubic, bit for bit.
//! - [`clip_image`] and [`llava15_ids`]: LLaVA-1.5's processor (one CLIP tile per image, its
//!   token count, the rendered prompt's image token expanded and tokenized).
//! - [`LlavaHfInputs`]: an `llava_hf` checkpoint's configuration, processor, chat template,
//!   tokenizer and EOS ids, a request made into ids and pixel values, an answer decoded.

pub mod config;
pub mod image_proc;

use std::path::Path;

use vlsbench_plugin_api::{BackendError, GenerateRequest};

use crate::checkpoint::require_dir;
use crate::request::image_paths;
use crate::template::ChatTemplate;
use crate::tokenizer::PromptTokenizer;
use config::{ImageProcessorKind, ModelConfig, ModelType, ProcessorConfig};

/// One image as LLaVA-1.5's processor makes it: a (1, 3, height, width) tile, channels first,
/// and the number of image tokens it stands for.
#[derive(Debug, Clone)]
pub struct ClipImage {
    pub pixels: Vec<f32>,
    pub height: usize,
    pub width: usize,
    pub tokens: usize,
}

/// `CLIPImageProcessor` on one file and `LlavaProcessor`'s token count (`default_tokens`, the
/// model's features per image, when the processor has no `patch_size`).
pub fn clip_image(path: &Path, processor: &ProcessorConfig, default_tokens: usize) -> Result<ClipImage, String> {
    let (pixels, height, width) = image_proc::preprocess(path, &processor.image).map_err(|e| e.to_string())?;
    let tokens = processor.num_image_tokens(height, width).unwrap_or(default_tokens);
    Ok(ClipImage { pixels, height, width, tokens })
}

/// `LlavaProcessor`'s ids: each image token of the rendered prompt expanded to `n_tokens` copies
/// (all images the same size), then tokenized.
pub fn llava15_ids(
    rendered: &str,
    processor: &ProcessorConfig,
    tokenizer: &PromptTokenizer,
    n_tokens: &[usize],
) -> Result<Vec<u32>, String> {
    let n = n_tokens.first().copied().unwrap_or(0);
    if n_tokens.iter().any(|&k| k != n) {
        return Err("images of different sizes".into());
    }
    tokenizer.encode(rendered, &processor.image_token, n).map_err(|e| e.to_string())
}

/// What an `llava_hf` (LLaVA-1.5) checkpoint folder says about its inputs and outputs.
pub struct LlavaHfInputs {
    pub config: ModelConfig,
    pub processor: ProcessorConfig,
    pub template: ChatTemplate,
    pub tokenizer: PromptTokenizer,
    pub eos: Vec<u32>,
}

impl LlavaHfInputs {
    /// Reads `dir`'s files; the model type must be `llava` and the image processor CLIP's.
    pub fn from_dir(dir: &Path) -> Result<Self, BackendError> {
        require_dir(dir)?;
        let bad = |e: &dyn std::fmt::Display| BackendError::bad_config(e.to_string());
        let config = ModelConfig::from_dir(dir).map_err(|e| bad(&e))?;
        if config.model_type != ModelType::Llava {
            return Err(BackendError::bad_config(format!(
                "{}: config.json's model_type {:?} is arch {}, but the manifest says arch llava_hf",
                dir.display(),
                config.model_type.as_str(),
                config.model_type.arch()
            )));
        }
        let processor = ProcessorConfig::from_dir(dir).map_err(|e| bad(&e))?;
        if let Some(kind) = processor.image.kind
            && kind != ImageProcessorKind::Clip
        {
            return Err(BackendError::bad_config(format!(
                "{}: the image processor is {kind:?}, but model_type \"llava\" needs Clip",
                dir.display()
            )));
        }
        let template = ChatTemplate::from_dir(dir).map_err(|e| bad(&e))?;
        let tokenizer = PromptTokenizer::from_dir(dir).map_err(|e| bad(&e))?;
        let eos = match config::generation_eos_ids(dir).map_err(|e| bad(&e))? {
            Some(e) => e,
            None => config.llava.text.eos_token_ids.clone(),
        };
        Ok(Self { config, processor, template, tokenizer, eos })
    }

    /// A request's ids and images, as `Image.open().convert("RGB")` and `LlavaProcessor` make them.
    pub fn prepare(&self, req: &GenerateRequest) -> Result<(Vec<u32>, Vec<ClipImage>), BackendError> {
        let item = &req.id;
        let bad = |e: &dyn std::fmt::Display| BackendError::bad_request(format!("item {item}: {e}"));
        let per_image = self.config.llava.image_features_per_image();
        let images = image_paths(&req.messages)
            .into_iter()
            .map(|p| clip_image(p, &self.processor, per_image).map_err(|e| bad(&e)))
            .collect::<Result<Vec<_>, _>>()?;
        let rendered = self.template.render(&req.messages).map_err(|e| bad(&e))?;
        let counts: Vec<usize> = images.iter().map(|i| i.tokens).collect();
        let ids = llava15_ids(&rendered, &self.processor, &self.tokenizer, &counts).map_err(|e| bad(&e))?;
        Ok((ids, images))
    }

    /// The answer text for generated tokens (EOS not included), `skip_special_tokens=True`.
    pub fn decode(&self, tokens: &[u32]) -> Result<String, BackendError> {
        self.tokenizer.decode(tokens).map_err(|e| BackendError::model_failure(e.to_string()))
    }
}
