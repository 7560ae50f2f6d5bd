//! Everything about arch `qwen2vl` before and after the graphs, shared by every backend that
//! serves it (candle-qwen2vl and onnxruntime), so that the engines differ only in the math:
//!
//! - [`config`]: `config.json` and the image processor, in both on-disk layouts.
//! - [`processor`]: `qwen_vl_utils.process_vision_info` then `Qwen2VLImageProcessor`.
//! - [`rope`]: M-RoPE positions (`get_rope_index`, left padding, decode steps).
//! - [`Qwen2VlInputs`]: a checkpoint's configuration, image processor, chat template, tokenizer
//!   and generation defaults, checked against each other; a request made into ids and images; an
//!   answer decoded from tokens.

pub mod config;
pub mod processor;
pub mod rope;

use std::path::Path;

use vlsbench_plugin_api::{BackendError, ChatMessage, GenerateRequest};

use crate::checkpoint::{ImageToken, eos_and_penalty, prompt_files, require_dir};
use crate::generation::OtherProcessors;
use crate::request::image_paths;
use crate::template::ChatTemplate;
use crate::tokenizer::{PromptTokenizer, clean_up_tokenization, expand_image_tokens, python_strip};
use config::{ImageProcessorConfig, Qwen2VlConfig};
use processor::ProcessedImage;
use rope::Positions;

/// `Qwen2VLProcessor.image_token`.
pub const IMAGE_TOKEN: &str = "<|image_pad|>";

/// What a Qwen2-VL checkpoint folder says about its inputs and outputs (all but the weights).
pub struct Qwen2VlInputs {
    pub config: Qwen2VlConfig,
    pub processor: ImageProcessorConfig,
    pub template: ChatTemplate,
    pub tokenizer: PromptTokenizer,
    pub eos: Vec<u32>,
    /// `generation_config.json`'s `repetition_penalty` (the reference leaves it in force).
    pub repetition_penalty: f32,
}

impl Qwen2VlInputs {
    /// Reads `dir`'s `config.json`, image processor, chat template, tokenizer and
    /// `generation_config.json`; an inconsistent pair (patch geometry, image token id) is a
    /// `bad_config` naming the folder.
    pub fn from_dir(dir: &Path) -> Result<Self, BackendError> {
        require_dir(dir)?;
        let bad = |e: &dyn std::fmt::Display| BackendError::bad_config(e.to_string());
        let config = Qwen2VlConfig::from_dir(dir).map_err(|e| bad(&e))?;
        let processor = ImageProcessorConfig::from_dir(dir).map_err(|e| bad(&e))?;
        processor.check_against(&config.vision).map_err(|e| bad(&e))?;
        let image_token = ImageToken { text: IMAGE_TOKEN, id: config.image_token_id, config_key: "image_token_id" };
        let (template, tokenizer) = prompt_files(dir, image_token)?;
        let (eos, repetition_penalty) = eos_and_penalty(dir, OtherProcessors::Ignore, &config.text.eos_token_ids)?;
        Ok(Self { config, processor, template, tokenizer, eos, repetition_penalty })
    }

    /// `processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`.
    pub fn rendered_prompt(&self, messages: &[ChatMessage]) -> Result<String, BackendError> {
        self.template.render(messages).map_err(|e| BackendError::bad_request(e.to_string()))
    }

    /// A request's input ids and images, as `process_vision_info` and `Qwen2VLProcessor` make them.
    pub fn prepare(&self, req: &GenerateRequest) -> Result<(Vec<u32>, Vec<ProcessedImage>), BackendError> {
        let item = &req.id;
        let bad = |e: &dyn std::fmt::Display| BackendError::bad_request(format!("item {item}: {e}"));
        let images = image_paths(&req.messages)
            .into_iter()
            .map(|p| processor::preprocess(p, &self.processor).map_err(|e| bad(&e)))
            .collect::<Result<Vec<_>, _>>()?;
        let text = self.template.render(&req.messages).map_err(|e| bad(&e))?;
        let counts: Vec<usize> = images.iter().map(|i| i.num_tokens(self.processor.merge_size)).collect();
        let expanded = expand_image_tokens(&text, IMAGE_TOKEN, &counts).map_err(|e| bad(&e))?;
        let ids = self.tokenizer.encode_text(&expanded, true).map_err(|e| bad(&e))?;
        Ok((ids, images))
    }

    /// `get_rope_index` for one unpadded prompt: its positions and `rope_delta`.
    pub fn rope_index(&self, ids: &[u32], images: &[&ProcessedImage]) -> crate::Result<(Positions, i64)> {
        let c = &self.config;
        let grids: Vec<[usize; 3]> = images.iter().map(|i| i.grid).collect();
        rope::rope_index(ids, &grids, c.image_token_id, c.vision_start_token_id, c.vision.spatial_merge_size)
            .map_err(crate::ModelError::Input)
    }

    /// The answer text for generated tokens (EOS not included): `skip_special_tokens=True`,
    /// transformers' `clean_up_tokenization`, Python's `strip`.
    pub fn decode(&self, tokens: &[u32]) -> Result<String, BackendError> {
        let raw = self.tokenizer.decode(tokens).map_err(|e| BackendError::model_failure(e.to_string()))?;
        Ok(python_strip(&clean_up_tokenization(&raw)).to_owned())
    }
}
