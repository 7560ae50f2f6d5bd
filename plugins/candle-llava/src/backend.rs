//! The vlsbench [`Backend`]: arch `llava_hf` (LLaVA-1.5) and arch `llava_next` (LLaVA-NeXT,
//! anyres tiling), both HF-format checkpoints, and arch `llava` (original-format LLaVA-1.5, run
//! the way the LLaVA code base runs it); greedy decoding on CPU (CUDA with the `cuda` feature).
//! The checkpoint's format and `model_type` must be the manifest's arch.
//!
//! `generate` batches: the requests of one call are prepared one by one (an item that cannot be
//! prepared fails alone), then decoded together, left-padded, [`MAX_BATCH`] at a time.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use vlsbench_plugin_api::{
    Backend, BackendConfig, BackendError, BackendInfo, ChatMessage, GenerateRequest, Generation, MessageLayout,
};

use crate::anyres::{self, TokenCount};
use crate::config::{self, ImageProcessorKind, ModelConfig, ModelType, ProcessorConfig};
use crate::conversation::{self, PromptToken};
use crate::model::{Llava, PixelInput};
use crate::original::{self, OriginalCheckpoint};
use vlm_core::batch::{finish_generation, generate_in_batches, single};
use vlm_core::checkpoint::require_dir;
use vlm_core::request::{checkpoint_dtype_device, devices, greedy_budget, image_paths, model_error, question};
use vlm_core::sentencepiece::SlowLlamaTokenizer;
use vlm_core::template::ChatTemplate;
use vlm_core::tokenizer::{PromptTokenizer, expand_image_tokens};

pub const ARCH_LLAVA_HF: &str = "llava_hf";
pub const ARCH_LLAVA_NEXT: &str = "llava_next";
pub const ARCH_LLAVA: &str = "llava";
/// The most requests decoded together; `describe` says so to the host.
pub const MAX_BATCH: usize = 8;

/// How prompts and images become model inputs. One per loaded model, so the variants' sizes
/// do not matter.
#[allow(clippy::large_enum_variant)]
enum Frontend {
    /// HF format: the chat template, `tokenizer.json`, the HF image processor.
    Hf {
        model_type: ModelType,
        processor: ProcessorConfig,
        /// LLaVA-NeXT: how the processor counts an image's tokens.
        token_count: Option<TokenCount>,
        template: ChatTemplate,
        tokenizer: PromptTokenizer,
    },
    /// Original format: the `llava_v1` conversation, SentencePiece, `expand2square` + CLIP.
    Original { checkpoint: OriginalCheckpoint, tokenizer: SlowLlamaTokenizer },
}

/// One loaded LLaVA checkpoint.
pub struct CandleLlava {
    checkpoint: PathBuf,
    model: Llava,
    frontend: Frontend,
    eos: Vec<u32>,
}

/// The image processor a checkpoint runs: the one its files name, which must suit the model type,
/// or (unnamed) the model type's own, as transformers' `AutoImageProcessor` falls back to it.
fn check_image_processor(model_type: ModelType, processor: &ProcessorConfig, dir: &Path) -> Result<(), BackendError> {
    let wanted = match model_type {
        ModelType::Llava => ImageProcessorKind::Clip,
        ModelType::LlavaNext => ImageProcessorKind::LlavaNext,
    };
    match processor.image.kind {
        Some(kind) if kind != wanted => Err(BackendError::bad_config(format!(
            "{}: the image processor is {kind:?}, but model_type {:?} needs {wanted:?}",
            dir.display(),
            model_type.as_str()
        ))),
        _ => Ok(()),
    }
}

impl CandleLlava {
    /// Loads a checkpoint as whatever its `config.json` says it is (`llava` or `llava_next`).
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self, BackendError> {
        Self::load_as(dir, None, dtype, device)
    }

    /// Loads a checkpoint, checking first that its `model_type` is served as `arch` when given.
    pub fn load_as(dir: &Path, arch: Option<&str>, dtype: DType, device: &Device) -> Result<Self, BackendError> {
        require_dir(dir)?;
        let bad = |e: &dyn std::fmt::Display| BackendError::bad_config(e.to_string());
        let cfg = ModelConfig::from_dir(dir).map_err(|e| bad(&e))?;
        let model_type = cfg.model_type;
        if let Some(arch) = arch
            && arch != model_type.arch()
        {
            return Err(BackendError::bad_config(format!(
                "{}: config.json's model_type {:?} is arch {}, but the manifest says arch {arch}",
                dir.display(),
                model_type.as_str(),
                model_type.arch()
            )));
        }
        let processor = ProcessorConfig::from_dir(dir).map_err(|e| bad(&e))?;
        check_image_processor(model_type, &processor, dir)?;
        let token_count = match model_type {
            ModelType::Llava => None,
            ModelType::LlavaNext => {
                let grid = processor.image.grid_pinpoints();
                if grid != cfg.image_grid_pinpoints {
                    return Err(BackendError::bad_config(format!(
                        "{}: the image processor's image_grid_pinpoints {grid:?} differ from config.json's {:?}",
                        dir.display(),
                        cfg.image_grid_pinpoints
                    )));
                }
                // Without a patch_size the processor cannot count; count what the model packs.
                Some(TokenCount::from_processor(&processor).unwrap_or_else(|| TokenCount::from_model(&cfg)))
            }
        };
        let template = ChatTemplate::from_dir(dir).map_err(|e| bad(&e))?;
        let tokenizer = PromptTokenizer::from_dir(dir).map_err(|e| bad(&e))?;
        let eos = match config::generation_eos_ids(dir).map_err(|e| bad(&e))? {
            Some(e) => e,
            None => cfg.llava.text.eos_token_ids.clone(),
        };
        let model = match model_type {
            ModelType::Llava => Llava::load(dir, cfg.llava, dtype, device),
            ModelType::LlavaNext => Llava::load_next(dir, cfg.llava, cfg.image_grid_pinpoints, dtype, device),
        }
        .map_err(|e| bad(&e))?;
        let frontend = Frontend::Hf { model_type, processor, token_count, template, tokenizer };
        Ok(Self { checkpoint: dir.to_owned(), model, frontend, eos })
    }

    /// Loads an original-format checkpoint (arch `llava`); `vision_tower` is the CLIP folder
    /// (default: `mm_vision_tower` when it is a folder).
    pub fn load_original(
        dir: &Path,
        vision_tower: Option<&Path>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, BackendError> {
        require_dir(dir)?;
        let bad = |e: &dyn std::fmt::Display| BackendError::bad_config(e.to_string());
        let checkpoint = OriginalCheckpoint::from_dir(dir, vision_tower).map_err(|e| bad(&e))?;
        let tok_path = dir.join("tokenizer.model");
        if !tok_path.is_file() {
            return Err(BackendError::bad_config(format!(
                "{}: missing (an original-format checkpoint ships its SentencePiece tokenizer.model)",
                tok_path.display()
            )));
        }
        let tokenizer = SlowLlamaTokenizer::from_file(&tok_path).map_err(|e| bad(&e))?;
        let model = Llava::load_original(&checkpoint, dtype, device).map_err(|e| bad(&e))?;
        let eos = checkpoint.eos.clone();
        Ok(Self { checkpoint: dir.to_owned(), model, frontend: Frontend::Original { checkpoint, tokenizer }, eos })
    }

    /// The vlsbench arch this checkpoint is served as.
    pub fn arch(&self) -> &'static str {
        match &self.frontend {
            Frontend::Hf { model_type, .. } => model_type.arch(),
            Frontend::Original { .. } => ARCH_LLAVA,
        }
    }

    /// LLaVA-1.5: one (1, 3, H, W) tile and `LlavaProcessor`'s token count.
    fn clip_image(&self, processor: &ProcessorConfig, path: &Path) -> Result<(PixelInput, usize), String> {
        let img = vlm_core::llava::clip_image(path, processor, self.model.config.image_features_per_image())?;
        let px = Tensor::from_vec(img.pixels, (1, 3, img.height, img.width), &self.model.device)
            .map_err(|e| e.to_string())?;
        Ok((PixelInput::Single(px), img.tokens))
    }

    /// LLaVA-NeXT: the base image and the grid's tiles, and `LlavaNextProcessor`'s token count.
    fn anyres_image(
        &self,
        processor: &ProcessorConfig,
        path: &Path,
        count: &TokenCount,
    ) -> Result<(PixelInput, usize), String> {
        let px = anyres::preprocess(path, &processor.image).map_err(|e| e.to_string())?;
        let n = count.num_image_tokens(px.image_size, (px.height, px.width)).map_err(|e| e.to_string())?;
        let tiles = Tensor::from_vec(px.values, (px.num_patches, 3, px.height, px.width), &self.model.device)
            .map_err(|e| e.to_string())?;
        Ok((PixelInput::Anyres { tiles, image_size: px.image_size }, n))
    }

    /// Token ids and each image's pixel values for one request, as the checkpoint's processor
    /// (or, for the original format, the LLaVA code base) makes them. Image positions hold the
    /// model's image token id, once per feature row.
    pub fn prepare(&self, req: &GenerateRequest) -> Result<(Vec<u32>, Vec<PixelInput>), BackendError> {
        let item = &req.id;
        let bad = |e: &dyn std::fmt::Display| BackendError::bad_request(format!("item {item}: {e}"));
        let image_paths = image_paths(&req.messages);
        let (processor, model_type, token_count, template, tokenizer) = match &self.frontend {
            Frontend::Hf { model_type, processor, token_count, template, tokenizer } => {
                (processor, *model_type, token_count, template, tokenizer)
            }
            Frontend::Original { checkpoint, tokenizer } => {
                return self.prepare_original(req, &image_paths, checkpoint, tokenizer);
            }
        };
        let mut images = Vec::new();
        let mut n_tokens = Vec::new();
        for path in image_paths {
            let (image, n) = match token_count {
                None => self.clip_image(processor, path),
                Some(count) => self.anyres_image(processor, path, count),
            }
            .map_err(|e| bad(&e))?;
            images.push(image);
            n_tokens.push(n);
        }
        let rendered = template.render(&req.messages).map_err(|e| bad(&e))?;
        let token = &processor.image_token;
        let ids = match model_type {
            ModelType::Llava => vlm_core::llava::llava15_ids(&rendered, processor, tokenizer, &n_tokens),
            ModelType::LlavaNext => {
                // Each image has its own count; the text is expanded here, so each token stays one.
                let expanded = expand_image_tokens(&rendered, token, &n_tokens).map_err(|e| bad(&e))?;
                tokenizer.encode(&expanded, token, 1).map_err(|e| e.to_string())
            }
        }
        .map_err(|e| bad(&e))?;
        Ok((ids, images))
    }

    /// The original format: one user turn `<image>\n{question}` in the `llava_v1` conversation
    /// (the question is the request's text parts joined), tokenized in chunks around the image.
    fn prepare_original(
        &self,
        req: &GenerateRequest,
        image_paths: &[&Path],
        checkpoint: &OriginalCheckpoint,
        tokenizer: &SlowLlamaTokenizer,
    ) -> Result<(Vec<u32>, Vec<PixelInput>), BackendError> {
        let item = &req.id;
        let bad = |e: &dyn std::fmt::Display| BackendError::bad_request(format!("item {item}: {e}"));
        if image_paths.len() != 1 || req.messages.len() != 1 {
            return Err(BackendError::unsupported(format!(
                "item {item}: arch llava takes one user message with one image ({} messages, {} images given)",
                req.messages.len(),
                image_paths.len()
            )));
        }
        let (px, h, w) = checkpoint.preprocess(image_paths[0]).map_err(|e| bad(&e))?;
        let px = Tensor::from_vec(px, (1, 3, h, w), &self.model.device).map_err(|e| bad(&e))?;
        let prompt = conversation::llava_v1_prompt(&question(&req.messages));
        let per_image = self.model.config.image_features_per_image();
        let mut ids = Vec::new();
        for t in conversation::tokenizer_image_token(&prompt, tokenizer) {
            match t {
                PromptToken::Text(id) => ids.push(id),
                PromptToken::Image => ids.extend(std::iter::repeat_n(original::IMAGE_MARKER_ID, per_image)),
            }
        }
        Ok((ids, vec![PixelInput::Single(px)]))
    }

    /// The prompt text before tokenization: the chat template rendered, or the `llava_v1`
    /// conversation for the original format.
    pub fn rendered_prompt(&self, messages: &[ChatMessage]) -> Result<String, String> {
        match &self.frontend {
            Frontend::Hf { template, .. } => template.render(messages).map_err(|e| e.to_string()),
            Frontend::Original { .. } => Ok(conversation::llava_v1_prompt(&question(messages))),
        }
    }

    /// Answer text from generated tokens (EOS already removed), decoded as the checkpoint's
    /// tokenizer decodes with `skip_special_tokens=True`.
    fn decode(&self, tokens: &[u32]) -> Result<String, String> {
        match &self.frontend {
            Frontend::Hf { tokenizer, .. } => tokenizer.decode(tokens).map_err(|e| e.to_string()),
            Frontend::Original { tokenizer, .. } => tokenizer.decode(tokens, true).map_err(|e| e.to_string()),
        }
    }

    /// Everything one request needs before decoding: its input embeddings and token budget.
    fn embed_request(&self, req: &GenerateRequest) -> Result<(Tensor, usize), BackendError> {
        let item = &req.id;
        let max_new = greedy_budget(req)?;
        let (ids, images) = self.prepare(req)?;
        let context = self.model.config.text.max_position_embeddings;
        let room = context.saturating_sub(ids.len());
        if room == 0 {
            return Err(BackendError::bad_request(format!(
                "item {item}: the prompt has {} tokens, the model's context is {context}",
                ids.len()
            )));
        }
        let embeds = self.model.prompt_embeddings(&ids, &images).map_err(|e| model_error(item, e))?;
        Ok((embeds, max_new.min(room)))
    }

    /// Greedy answers for several requests, decoded together [`MAX_BATCH`] at a time.
    pub fn generate_batch(&self, requests: &[GenerateRequest]) -> Vec<Result<Generation, BackendError>> {
        generate_in_batches(
            requests,
            MAX_BATCH,
            |req| self.embed_request(req),
            |embeds, budgets| self.model.greedy_batch(&embeds, budgets, &self.eos),
            |req, tokens| finish_generation(&req.id, tokens, &self.eos, |t| self.decode(t)),
        )
    }

    /// One request alone.
    pub fn generate_one(&self, req: &GenerateRequest) -> Result<Generation, BackendError> {
        single(self.generate_batch(std::slice::from_ref(req)))
    }

    /// The loaded model (for benchmarks and tests that drive it directly).
    pub fn model(&self) -> &Llava {
        &self.model
    }

    pub fn checkpoint(&self) -> &Path {
        &self.checkpoint
    }
}

/// `[model.options]` of candle-llava.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LlavaOptions {
    /// Arch `llava`: the CLIP vision tower's folder (resolved against the manifest's folder).
    vision_tower: Option<PathBuf>,
}

impl Backend for CandleLlava {
    fn describe() -> BackendInfo {
        BackendInfo {
            name: "candle-llava".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "LLaVA-1.5 (HF and original format) and LLaVA-NeXT on candle: greedy decoding, batched, \
                          parity-tested against transformers"
                .into(),
            archs: vec![ARCH_LLAVA_HF.into(), ARCH_LLAVA_NEXT.into(), ARCH_LLAVA.into()],
            max_batch: MAX_BATCH as u32,
            concurrent: false,
            devices: devices(),
            checkpoint_is_path: true,
            path_options: vec!["vision_tower".into()],
            // The reference's loaders: `llava_hf` and `llava_next` put [text, image] in the user
            // message, the LLaVA code base's `llava` [image, text] (its `<image>\n` comes first).
            message_layouts: [
                (ARCH_LLAVA_HF.to_owned(), MessageLayout::text_then_image()),
                (ARCH_LLAVA_NEXT.to_owned(), MessageLayout::text_then_image()),
                (ARCH_LLAVA.to_owned(), MessageLayout::image_then_text()),
            ]
            .into(),
        }
    }

    fn options() -> Option<Vec<vlsbench_plugin_api::OptionSpec>> {
        use vlsbench_plugin_api::{OptionKind, OptionSpec};
        Some(vec![OptionSpec::new(
            "vision_tower",
            OptionKind::Path,
            "arch llava: the CLIP vision tower's folder (default: mm_vision_tower of the config, when it names a folder)",
        )])
    }

    fn create(config: BackendConfig) -> Result<Self, BackendError> {
        if ![ARCH_LLAVA_HF, ARCH_LLAVA_NEXT, ARCH_LLAVA].contains(&config.arch.as_str()) {
            return Err(BackendError::unsupported(format!(
                "arch {:?} is not served ({ARCH_LLAVA_HF}, {ARCH_LLAVA_NEXT}, {ARCH_LLAVA})",
                config.arch
            )));
        }
        let (dir, dtype, device) = checkpoint_dtype_device(&config)?;
        // A misspelt option is an error naming it, not silently ignored.
        let options: LlavaOptions = config.options()?;
        let vision_tower = options.vision_tower.map(|p| config.resolve(p));
        if config.arch == ARCH_LLAVA {
            return Self::load_original(&dir, vision_tower.as_deref(), dtype, &device);
        }
        if vision_tower.is_some() {
            return Err(BackendError::bad_config(format!(
                "options.vision_tower is for arch llava (original format); an {} checkpoint holds its vision tower",
                config.arch
            )));
        }
        if let Ok(text) = std::fs::read_to_string(dir.join("config.json"))
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && original::is_original_config(&v)
        {
            return Err(BackendError::bad_config(format!(
                "{}: an original-format LLaVA checkpoint (LlavaLlamaForCausalLM): use arch llava",
                dir.join("config.json").display()
            )));
        }
        Self::load_as(&dir, Some(&config.arch), dtype, &device)
    }

    fn generate(&self, requests: Vec<GenerateRequest>) -> Vec<Result<Generation, BackendError>> {
        self.generate_batch(&requests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vlm_core::testing::{checkpoint_without, png_claiming, temp_dir};
    use vlsbench_plugin_api::{ChatMessage, ContentPart, GenerationSettings, Role};

    /// The HF checkpoints' chat template, tokenizer and decoding against transformers' goldens.
    fn prompts_ids_and_decoding_match(checkpoint: &str) {
        let fx = crate::test_util::fixtures();
        let dir = fx.join("checkpoints").join(checkpoint);
        let g = crate::test_util::golden(checkpoint);
        let tmpl = ChatTemplate::from_dir(&dir).unwrap();
        let tok = PromptTokenizer::from_dir(&dir).unwrap();
        let proc = crate::config::ProcessorConfig::from_dir(&dir).unwrap();
        let n = proc.num_image_tokens(proc.image.crop_size.0, proc.image.crop_size.1).unwrap();
        for case in g["cases"].as_array().unwrap() {
            let prompt = case["prompt"].as_str().unwrap();
            let messages = MessageLayout::text_then_image().messages(prompt, Path::new("x.png"));
            let rendered = tmpl.render(&messages).unwrap();
            assert_eq!(rendered, case["rendered_prompt"].as_str().unwrap(), "{checkpoint}: {prompt}");
            let ids = tok.encode(&rendered, &proc.image_token, n).unwrap();
            assert_eq!(ids, crate::test_util::ids(case, "input_ids"), "{checkpoint}: {prompt}");
            let toks = crate::test_util::ids(case, "greedy_tokens");
            assert_eq!(tok.decode(&toks).unwrap(), case["decoded"].as_str().unwrap(), "{checkpoint}: decode");
        }
    }

    #[test]
    fn llava_hf_prompts_ids_and_decoding_match_goldens() {
        prompts_ids_and_decoding_match("llava_hf");
    }

    #[test]
    fn llava_hf_old_layout_prompts_ids_and_decoding_match_goldens() {
        prompts_ids_and_decoding_match("llava_hf_old_layout");
    }

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
                    vec![
                        ContentPart::text(case["prompt"].as_str().unwrap()),
                        ContentPart::image(fx.join(case["image"].as_str().unwrap())),
                    ],
                )],
                settings: GenerationSettings { max_new_tokens: Some(24), temperature: Some(0.0), top_p: Some(1.0) },
                response_format: None,
            };
            let (ids, _) = b.prepare(&req).unwrap();
            let want: Vec<u32> =
                case["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
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
        let e = CandleLlava::create(cfg("checkpoints/llava_hf", "qwen2vl")).err().unwrap();
        assert_eq!(e.kind, vlsbench_plugin_api::ErrorKind::Unsupported);
        // Each format is refused under the other's arch, naming the right one.
        let e = CandleLlava::create(cfg("checkpoints/llava_hf", "llava")).err().unwrap();
        assert_eq!(e.kind, vlsbench_plugin_api::ErrorKind::BadConfig);
        assert!(e.message.contains("llava_hf"), "{e}");
        let e = CandleLlava::create(cfg("checkpoints/llava_original", "llava_hf")).err().unwrap();
        assert!(e.message.contains("use arch llava"), "{e}");
        // Missing pieces are named.
        let e = CandleLlava::create(cfg("checkpoints/llava_original_clip", "llava")).err().unwrap();
        assert!(e.message.contains("config.json"), "{e}");
    }

    fn request(id: &str, prompt: &str, image: &Path, max_new: u32) -> GenerateRequest {
        vlm_core::testing::request(id, prompt, image, max_new, &MessageLayout::text_then_image())
    }

    #[test]
    fn original_format_answers_equal_the_llava_code_bases() {
        let fx = crate::test_util::fixtures();
        let b = CandleLlava::create(backend_config("llava", "checkpoints/llava_original")).unwrap();
        let mut parity = crate::test_util::Parity::new("llava_original");
        for case in crate::test_util::golden("llava_original")["cases"].as_array().unwrap() {
            let image = case["image"].as_str().unwrap();
            let req = request("0", case["prompt"].as_str().unwrap(), &fx.join(image), 24);
            assert_eq!(b.rendered_prompt(&req.messages).unwrap(), case["rendered_prompt"].as_str().unwrap());
            let (ids, images) = b.prepare(&req).unwrap();
            // The golden ids hold -200 once where the image goes; ours hold the marker per feature row.
            let want: Vec<i64> = case["input_ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
            let mut got: Vec<i64> = Vec::new();
            for &t in &ids {
                let t = if t == original::IMAGE_MARKER_ID { -200 } else { i64::from(t) };
                if !(t == -200 && got.last() == Some(&-200)) {
                    got.push(t);
                }
            }
            assert_eq!(got, want, "{image}");
            let n_marker = ids.iter().filter(|&&t| t == original::IMAGE_MARKER_ID).count();
            assert_eq!(n_marker as u64, case["num_image_features"].as_u64().unwrap());
            // Logits and 24 greedy tokens (EOS not stopping), then the answer as the backend gives it.
            let embeds = b.model().prompt_embeddings(&ids, &images).unwrap();
            let mut cache = b.model().text.new_cache();
            let logits: Vec<f32> = b.model().text.forward_embeds(&embeds, &mut cache).unwrap().to_vec1().unwrap();
            let tokens = b.model().greedy_batch(&[embeds], &[24], &[]).unwrap().remove(0);
            parity.record_case(case, &logits, &tokens);
            let answer = b.generate(vec![req]).pop().unwrap().unwrap().text;
            assert_eq!(answer, case["decoded_until_eos_stripped"].as_str().unwrap(), "{image}");
        }
        parity.check();
    }

    /// f16 and bf16 on the CPU (linear-layer weights kept half, math in f32) against the f32
    /// goldens of every checkpoint: the tolerance set from the largest first-step |Δlogit|
    /// measured (every case), with room; the greedy tokens (24, no EOS stop) equal.
    const HALF_TOLERANCES: [(&str, f32); 2] = [("f16", 4e-3), ("bf16", 3e-2)];

    #[test]
    fn half_precision_weights_keep_the_greedy_tokens_and_the_logits_close() {
        let checkpoints = [
            ("llava_hf", "llava_hf"),
            ("llava_hf", "llava_hf_old_layout"),
            ("llava_next", "llava_next"),
            ("llava_next", "llava_next_old_layout"),
            ("llava", "llava_original"),
        ];
        let fx = crate::test_util::fixtures();
        for (dtype, tolerance) in HALF_TOLERANCES {
            for (arch, checkpoint) in checkpoints {
                let mut cfg = backend_config(arch, &format!("checkpoints/{checkpoint}"));
                cfg.dtype = Some(dtype.into());
                let b = CandleLlava::create(cfg).unwrap();
                assert_eq!(b.model().dtype, vlm_core::request::parse_dtype(Some(dtype)).unwrap());
                let layout = CandleLlava::describe().message_layout(arch);
                let mut parity = crate::test_util::Parity::with_tolerance(checkpoint, dtype, tolerance);
                for case in crate::test_util::golden(checkpoint)["cases"].as_array().unwrap() {
                    let image = fx.join(case["image"].as_str().unwrap());
                    let req = vlm_core::testing::request("0", case["prompt"].as_str().unwrap(), &image, 24, &layout);
                    let (ids, images) = b.prepare(&req).unwrap();
                    let feats = b.model().features_for(&images).unwrap();
                    let (logits, tokens) = b.model().greedy_from_features(&ids, feats.as_ref(), 24, &[]).unwrap();
                    parity.record_case(case, &logits.to_vec1::<f32>().unwrap(), &tokens);
                }
                parity.check();
            }
        }
    }

    /// Every golden case of a checkpoint decoded in one batch gives the same answers as one by one.
    fn batch_equals_one_by_one(arch: &str, checkpoint: &str) {
        let fx = crate::test_util::fixtures();
        let b = CandleLlava::create(backend_config(arch, checkpoint)).unwrap();
        let golden = checkpoint.trim_start_matches("checkpoints/");
        let g: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fx.join("golden").join(golden).join("golden.json")).unwrap())
                .unwrap();
        // Different prompt lengths (images of different token counts for llava_next) and budgets.
        let reqs: Vec<GenerateRequest> = g["cases"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let image = fx.join(c["image"].as_str().unwrap());
                request(&i.to_string(), c["prompt"].as_str().unwrap(), &image, 8 + (i as u32 % 3) * 8)
            })
            .collect();
        let batched = b.generate(reqs.clone());
        assert_eq!(batched.len(), reqs.len());
        for (req, got) in reqs.iter().zip(batched) {
            let alone = b.generate_one(req).unwrap();
            assert_eq!(got.unwrap(), alone, "{arch}: item {} batched vs alone", req.id);
        }
    }

    #[test]
    fn a_batch_answers_like_one_request_at_a_time_llava_hf() {
        batch_equals_one_by_one("llava_hf", "checkpoints/llava_hf");
    }

    #[test]
    fn a_batch_answers_like_one_request_at_a_time_llava_next() {
        batch_equals_one_by_one("llava_next", "checkpoints/llava_next");
    }

    #[test]
    fn a_batch_answers_like_one_request_at_a_time_llava() {
        batch_equals_one_by_one("llava", "checkpoints/llava_original");
    }

    /// A prompt that leaves room for only two new tokens, decoded beside a prompt with a budget of
    /// eight: the long row finishes first and keeps stepping with the batch, which must neither
    /// fail the batch nor change either answer.
    #[test]
    fn a_prompt_at_the_edge_of_the_context_does_not_fail_its_batch() {
        let fx = crate::test_util::fixtures();
        let b = CandleLlava::create(backend_config("llava_hf", "checkpoints/llava_hf")).unwrap();
        let image = fx.join("images/square.png");
        let context = b.model().config.text.max_position_embeddings;
        let len = |words: usize| b.prepare(&request("0", &"cat ".repeat(words), &image, 8)).unwrap().0.len();
        let (base, per_word) = (len(100), len(101) - len(100));
        assert!(per_word > 0);
        let words = 100 + (context - 2 - base) / per_word;
        let edge = request("edge", &"cat ".repeat(words), &image, 8);
        let room = context - b.prepare(&edge).unwrap().0.len();
        assert!((1..8).contains(&room), "the edge prompt leaves {room} positions");
        let short = request("short", "What is this?", &image, 8);
        let out = b.generate(vec![edge.clone(), short.clone()]);
        let edge_answer = out[0].as_ref().unwrap();
        assert_eq!(edge_answer.tokens, Some(room as u32), "{edge_answer:?}");
        assert_eq!(edge_answer, &b.generate_one(&edge).unwrap());
        assert_eq!(out[1].as_ref().unwrap(), &b.generate_one(&short).unwrap());
    }

    #[test]
    fn a_bad_item_in_a_batch_fails_alone() {
        let fx = crate::test_util::fixtures();
        let dir = temp_dir("candle-llava");
        let corrupt = dir.join("corrupt.png");
        std::fs::write(&corrupt, b"\x89PNG not really").unwrap();
        let b = CandleLlava::create(backend_config("llava_hf", "checkpoints/llava_hf")).unwrap();
        let good = request("1", "What is this?", &fx.join("images/square.png"), 4);
        let bad = request("2", "What is this?", &corrupt, 4);
        let missing = request("3", "What is this?", &dir.join("absent.png"), 4);
        let mut long = request("4", &"word ".repeat(5000), &fx.join("images/square.png"), 4);
        long.id = "4".into();
        let out = b.generate(vec![good.clone(), bad, missing, long]);
        assert_eq!(out[0].as_ref().unwrap(), &b.generate_one(&good).unwrap());
        for (k, what) in [(1, "corrupt.png"), (2, "absent.png"), (3, "context")] {
            let e = out[k].as_ref().unwrap_err();
            assert_eq!(e.kind, vlsbench_plugin_api::ErrorKind::BadRequest, "{e}");
            assert!(e.message.contains(&format!("item {}", k + 1)) && e.message.contains(what), "{e}");
        }
    }

    #[test]
    fn an_image_over_the_pixel_limit_is_refused_before_decoding() {
        let dir = temp_dir("candle-llava");
        let huge = dir.join("huge.png");
        std::fs::write(&huge, png_claiming(60_000, 60_000)).unwrap();
        let b = CandleLlava::create(backend_config("llava_hf", "checkpoints/llava_hf")).unwrap();
        let e = b.generate_one(&request("9", "What is this?", &huge, 4)).unwrap_err();
        assert_eq!(e.kind, vlsbench_plugin_api::ErrorKind::BadRequest, "{e}");
        assert!(
            e.message.contains("item 9") && e.message.contains("huge.png") && e.message.contains("60000x60000"),
            "{e}"
        );
    }

    #[test]
    fn a_checkpoint_missing_its_weights_or_tokenizer_is_named_at_load() {
        let fx = crate::test_util::fixtures();
        for (missing, named) in
            [("model.safetensors", "no weights (model.safetensors"), ("tokenizer.json", "tokenizer.json")]
        {
            let dir = temp_dir("candle-llava").join(format!("no-{missing}"));
            checkpoint_without(&fx.join("checkpoints/llava_hf"), &dir, missing);
            let mut cfg = backend_config("llava_hf", "x");
            cfg.checkpoint = Some(dir.display().to_string());
            let e = CandleLlava::create(cfg).err().unwrap();
            assert_eq!(e.kind, vlsbench_plugin_api::ErrorKind::BadConfig, "{e}");
            assert!(e.message.contains(named), "{missing}: {e}");
        }
        // The original format without its tokenizer.model.
        let dir = temp_dir("candle-llava").join("original-no-tokenizer");
        checkpoint_without(&fx.join("checkpoints/llava_original"), &dir, "tokenizer.model");
        let mut cfg = backend_config("llava", "x");
        cfg.checkpoint = Some(dir.display().to_string());
        cfg.options = serde_json::json!({"vision_tower": fx.join("checkpoints/llava_original_clip")});
        let e = CandleLlava::create(cfg).err().unwrap();
        assert!(e.message.contains("tokenizer.model"), "{e}");
    }

    fn backend_config(arch: &str, checkpoint: &str) -> BackendConfig {
        BackendConfig {
            arch: arch.into(),
            checkpoint: Some(checkpoint.into()),
            device: None,
            dtype: None,
            options: serde_json::Value::Null,
            base_dir: crate::test_util::fixtures(),
        }
    }

    /// LLaVA-NeXT through the Backend, all 21 golden cases: the rendered prompt, the input ids
    /// (anyres token counts included) and the answer up to EOS.
    #[test]
    fn llava_next_prompts_ids_and_answers_match_goldens() {
        for checkpoint in ["llava_next", "llava_next_old_layout"] {
            llava_next_matches(checkpoint);
        }
    }

    fn llava_next_matches(checkpoint: &str) {
        let fx = crate::test_util::fixtures();
        let b = CandleLlava::create(backend_config("llava_next", &format!("checkpoints/{checkpoint}"))).unwrap();
        assert_eq!(b.arch(), "llava_next");
        let g = crate::test_util::golden(checkpoint);
        let cases = g["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 21);
        let mut table = format!("{checkpoint}:\nimage      prompt     image tokens  ids equal  answer equal\n");
        let mut all_equal = true;
        for case in cases {
            let image = case["image"].as_str().unwrap();
            let messages = vec![ChatMessage::new(
                Role::User,
                vec![ContentPart::text(case["prompt"].as_str().unwrap()), ContentPart::image(fx.join(image))],
            )];
            assert_eq!(b.rendered_prompt(&messages).unwrap(), case["rendered_prompt"].as_str().unwrap(), "{image}");
            let req = GenerateRequest {
                id: "0".into(),
                messages,
                settings: GenerationSettings { max_new_tokens: Some(24), temperature: Some(0.0), top_p: Some(1.0) },
                response_format: None,
            };
            let (ids, images) = b.prepare(&req).unwrap();
            assert_eq!(images.len(), 1);
            let want: Vec<u32> =
                case["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            let n_image = ids.iter().filter(|&&t| t == b.model.config.image_token_id).count();
            assert_eq!(n_image as u64, case["num_image_tokens"].as_u64().unwrap(), "{image}");
            let ids_equal = ids == want;
            let got = b.generate(vec![req]).pop().unwrap().unwrap();
            let answer_equal = got.text == case["decoded_until_eos_stripped"].as_str().unwrap();
            all_equal &= ids_equal && answer_equal;
            table += &format!(
                "{:<10} {:<10} {:<13} {:<10} {}\n",
                image.trim_start_matches("images/"),
                case["prompt_id"].as_str().unwrap(),
                n_image,
                ids_equal,
                answer_equal
            );
        }
        println!("{table}");
        assert!(all_equal, "{table}");
    }

    #[test]
    fn both_archs_are_served_and_checked_against_the_config() {
        let archs = CandleLlava::describe().archs;
        assert_eq!(archs, vec!["llava_hf".to_owned(), "llava_next".to_owned(), "llava".to_owned()]);
        let e = CandleLlava::create(backend_config("llava_next", "checkpoints/llava_hf")).err().unwrap();
        assert_eq!(e.kind, vlsbench_plugin_api::ErrorKind::BadConfig);
        assert!(e.message.contains("llava_next") && e.message.contains("llava_hf"), "{e}");
        let e = CandleLlava::create(backend_config("llava_hf", "checkpoints/llava_next")).err().unwrap();
        assert!(e.message.contains("llava_next") && e.message.contains("llava_hf"), "{e}");
        let e = CandleLlava::create(backend_config("qwen2_vl", "checkpoints/llava_next")).err().unwrap();
        assert!(e.message.contains("llava_hf") && e.message.contains("llava_next"), "{e}");
    }

    #[test]
    fn llava_next_prompt_with_more_image_tokens_than_images_is_a_bad_request() {
        let fx = crate::test_util::fixtures();
        let b = CandleLlava::create(backend_config("llava_next", "checkpoints/llava_next")).unwrap();
        let req = GenerateRequest {
            id: "7".into(),
            messages: vec![ChatMessage::new(
                Role::User,
                vec![ContentPart::text("<image> twice?"), ContentPart::image(fx.join("images/wide.png"))],
            )],
            settings: GenerationSettings { max_new_tokens: Some(4), temperature: Some(0.0), top_p: Some(1.0) },
            response_format: None,
        };
        let e = b.generate(vec![req]).pop().unwrap().err().unwrap();
        assert_eq!(e.kind, vlsbench_plugin_api::ErrorKind::BadRequest);
        assert!(e.message.contains("item 7") && e.message.contains("2 <image> placeholders for 1 images"), "{e}");
    }
}
