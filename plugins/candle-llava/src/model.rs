//! `LlavaForConditionalGeneration` and `LlavaNextForConditionalGeneration` on candle: the CLIP
//! vision tower ([`crate::clip`]), the multimodal projector, the Llama text model
//! ([`crate::llama`]), image features spliced in at the image-token positions, greedy decoding
//! (`vlm_core::greedy`). LLaVA-NeXT runs the tower on every tile of an image and packs the tiles'
//! features with its `image_newline` vector ([`crate::anyres::pack_image_features`]).

use std::path::Path;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::Linear;
use vlm_core::greedy::greedy_loop;
use vlm_core::kernels::{act, dense, splice_image_features};
use vlm_core::kv::left_pad;
use vlm_core::precision::{compute, compute_dtype, linear};
use vlm_core::weights::{load_error, pick_prefix, require_prefix, under, var_builder};
pub use vlm_core::{ModelError, Result};

use crate::anyres::{self, AnyresError, PackGeometry, Size};
use crate::clip::ClipVisionTower;
use crate::config::{LlavaConfig, SelectStrategy};
use crate::llama::LlamaModel;

impl From<AnyresError> for ModelError {
    fn from(e: AnyresError) -> Self {
        match e {
            AnyresError::Candle(e) => ModelError::Candle(e),
            e => ModelError::Input(e.to_string()),
        }
    }
}

/// One image's pixel values, as the model takes them.
#[derive(Debug, Clone)]
pub enum PixelInput {
    /// LLaVA-1.5: one tile, (1, 3, H, W).
    Single(Tensor),
    /// LLaVA-NeXT: the base image then the grid's tiles, (tiles, 3, H, W), and the image's
    /// original (height, width) (`image_sizes`).
    Anyres { tiles: Tensor, image_size: Size },
}

/// What LLaVA-NeXT adds to the model: the grid (`config.image_grid_pinpoints`) and the
/// `image_newline` vector (text hidden,).
pub struct AnyresHead {
    pub pinpoints: Vec<Size>,
    pub image_newline: Tensor,
}

pub struct Llava {
    pub config: LlavaConfig,
    vision: ClipVisionTower,
    proj1: Linear,
    proj2: Linear,
    /// LLaVA-NeXT only.
    anyres: Option<AnyresHead>,
    pub text: LlamaModel,
    pub device: Device,
    /// The run's dtype: the linear layers' weights; activations run in
    /// [`vlm_core::precision::compute_dtype`] (f32 on the CPU).
    pub dtype: DType,
}

impl Llava {
    pub fn load(dir: &Path, config: LlavaConfig, dtype: DType, device: &Device) -> Result<Self> {
        let vb = var_builder(dir, dtype, device)?;
        let vis = require_prefix(
            &vb,
            dir,
            &["vision_tower.vision_model.", "vision_tower.", "model.vision_tower.vision_model.", "model.vision_tower."],
            "embeddings.class_embedding",
            "vision tower",
            "vision_tower.*",
        )?;
        let txt = require_prefix(
            &vb,
            dir,
            &["language_model.model.", "model.language_model.", "language_model."],
            "embed_tokens.weight",
            "text model",
            "language_model.*",
        )?;
        let head = pick_prefix(&vb, &["language_model.lm_head.", "lm_head."], "weight").unwrap_or("lm_head.");
        let proj = require_prefix(
            &vb,
            dir,
            &["multi_modal_projector.", "model.multi_modal_projector."],
            "linear_1.weight",
            "projector",
            "multi_modal_projector.*",
        )?;

        // Only the layers up to the deepest selected hidden state are ever run.
        let n_hidden = config.vision.num_hidden_layers as i64 + 1;
        let deepest = config
            .vision_feature_layers
            .iter()
            .map(|&l| if l < 0 { n_hidden + l } else { l })
            .max()
            .unwrap_or(n_hidden - 1) as usize;
        let vision = ClipVisionTower::load(under(&vb, vis), &config.vision, deepest)
            .map_err(|e| load_error(dir, "vision tower", e))?;
        let feat_in = config.vision.hidden_size * config.vision_feature_layers.len();
        let th = config.text.hidden_size;
        let bias = config.multimodal_projector_bias;
        let pvb = under(&vb, proj);
        let proj1 = linear(pvb.pp("linear_1"), feat_in, th, bias).map_err(|e| load_error(dir, "projector", e))?;
        let proj2 = linear(pvb.pp("linear_2"), th, th, bias).map_err(|e| load_error(dir, "projector", e))?;
        let text =
            LlamaModel::load(under(&vb, txt), under(&vb, head), &config.text, compute_dtype(dtype, device), device)
                .map_err(|e| load_error(dir, "text model", e))?;
        Ok(Self { config, vision, proj1, proj2, anyres: None, text, device: device.clone(), dtype })
    }

    /// An original-format LLaVA (`LlavaLlamaForCausalLM`): the text model and `model.mm_projector.{0,2}`
    /// from the checkpoint's weights (pickle shards or safetensors), the vision tower from its CLIP
    /// folder (`vision_model.*`).
    pub fn load_original(ck: &crate::original::OriginalCheckpoint, dtype: DType, device: &Device) -> Result<Self> {
        let config = ck.config.clone();
        let dir = &ck.dir;
        let vb = var_builder(dir, dtype, device)?;
        let clip = var_builder(&ck.vision_dir, dtype, device)?;
        let vis = require_prefix(
            &clip,
            &ck.vision_dir,
            &["vision_model.", "vision_tower.vision_model.", ""],
            "embeddings.class_embedding",
            "CLIP vision",
            "vision_model.*",
        )?;
        let deepest = config.deepest_vision_layer();
        let vision = ClipVisionTower::load(under(&clip, vis), &config.vision, deepest)
            .map_err(|e| load_error(&ck.vision_dir, "vision tower", e))?;
        let (vh, th) = (config.vision.hidden_size, config.text.hidden_size);
        let proj = |i: usize, fan_in: usize| {
            linear(vb.pp(format!("model.mm_projector.{i}")), fan_in, th, true)
                .map_err(|e| load_error(dir, "projector", e))
        };
        let (proj1, proj2) = (proj(0, vh)?, proj(2, th)?);
        let text =
            LlamaModel::load(vb.pp("model"), vb.pp("lm_head"), &config.text, compute_dtype(dtype, device), device)
                .map_err(|e| load_error(dir, "text model", e))?;
        Ok(Self { config, vision, proj1, proj2, anyres: None, text, device: device.clone(), dtype })
    }

    /// A LLaVA-NeXT checkpoint: [`Llava::load`] plus the grid and `image_newline`, which
    /// LLaVA-NeXT cannot do without (transformers would fill a missing one with random values).
    pub fn load_next(
        dir: &Path,
        config: LlavaConfig,
        pinpoints: Vec<Size>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let hidden = config.text.hidden_size;
        let mut model = Self::load(dir, config, dtype, device)?;
        let vb = var_builder(dir, dtype, device)?;
        // Top level in transformers 4.x saves (and the fixtures), under `model.` in 5.x's layout.
        let prefix = pick_prefix(&vb, &["", "model."], "image_newline")
            .ok_or_else(|| ModelError::Load(format!("{}: missing weight image_newline (LLaVA-NeXT)", dir.display())))?;
        let image_newline = compute(&vb)
            .get(hidden, &format!("{prefix}image_newline"))
            .map_err(|e| load_error(dir, "image_newline", e))?;
        model.anyres = Some(AnyresHead { pinpoints, image_newline });
        Ok(model)
    }

    /// LLaVA-NeXT's grid and newline, when this is a LLaVA-NeXT model.
    pub fn anyres(&self) -> Option<&AnyresHead> {
        self.anyres.as_ref()
    }

    /// Projected image features for pixel values (b, 3, H, W): (b * features, text hidden).
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let x = self.tile_features(pixel_values)?;
        let (b, n, h) = x.dims3()?;
        Ok(x.reshape((b * n, h))?)
    }

    /// Projected features per tile for pixel values (b, 3, H, W): (b, features, text hidden).
    pub fn tile_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let hs = self.vision.hidden_states(&pixel_values.to_dtype(compute_dtype(self.dtype, &self.device))?)?;
        let n_hidden = hs.len() as i64; // deepest + 1 states; indices are relative to the full tuple
        let full = self.config.vision.num_hidden_layers as i64 + 1;
        let mut picked = Vec::new();
        for &l in &self.config.vision_feature_layers {
            let idx = if l < 0 { full + l } else { l };
            if idx < 0 || idx >= n_hidden {
                return Err(ModelError::Input(format!("vision feature layer {l} out of range")));
            }
            let mut h = hs[idx as usize].clone();
            if self.config.select_strategy == SelectStrategy::Default {
                let n = h.dim(1)?;
                h = h.narrow(1, 1, n - 1)?;
            }
            picked.push(h);
        }
        let feats = Tensor::cat(&picked, D::Minus1)?;
        let x = act(&self.config.projector_hidden_act, &dense(&self.proj1, &feats)?)?;
        Ok(dense(&self.proj2, &x)?)
    }

    /// LLaVA-NeXT's features for one image (`get_image_features`, then `pack_image_features`):
    /// `tiles` (n, 3, H, W) from the processor, of which the first `image_size_to_num_patches`
    /// are read, and the image's original (height, width). Returns (rows, text hidden).
    pub fn anyres_image_features(&self, tiles: &Tensor, image_size: Size) -> Result<Tensor> {
        let head = self
            .anyres
            .as_ref()
            .ok_or_else(|| ModelError::Input("anyres (LLaVA-NeXT) pixel values for a LLaVA-1.5 model".into()))?;
        let geometry = PackGeometry::new(&head.pinpoints, &self.config.vision);
        let wanted = geometry.num_patches(image_size)?;
        let have = tiles.dim(0)?;
        if have < wanted {
            return Err(ModelError::Input(format!(
                "an image of {}x{} needs {wanted} tiles, the pixel values hold {have}",
                image_size.0, image_size.1
            )));
        }
        let feats = self.tile_features(&tiles.narrow(0, 0, wanted)?)?;
        Ok(anyres::pack_image_features(&feats, image_size, &geometry, Some(&head.image_newline))?)
    }

    /// The features of a prompt's images, in order, concatenated: (rows, text hidden), or `None`
    /// without images.
    pub fn features_for(&self, images: &[PixelInput]) -> Result<Option<Tensor>> {
        let parts = images
            .iter()
            .map(|img| match img {
                PixelInput::Single(px) => self.image_features(px),
                PixelInput::Anyres { tiles, image_size } => self.anyres_image_features(tiles, *image_size),
            })
            .collect::<Result<Vec<_>>>()?;
        if parts.is_empty() {
            return Ok(None);
        }
        Ok(Some(Tensor::cat(&parts, 0)?))
    }

    /// Token embeddings with the image features written over the image-token positions.
    pub fn merged_embeddings(&self, ids: &[u32], image_features: Option<&Tensor>) -> Result<Tensor> {
        let image_id = self.config.image_token_id;
        // Image positions are overwritten below; their id need not even be in the vocabulary (the
        // original format marks them with -200).
        let embeddable: Vec<u32> = ids.iter().map(|&t| if t == image_id { 0 } else { t }).collect();
        let emb = self.text.embed(&Tensor::new(embeddable.as_slice(), &self.device)?)?;
        let n_img = ids.iter().filter(|&&t| t == image_id).count();
        let n_feat = image_features.map_or(Ok(0), |f| f.dim(0))?;
        if n_img != n_feat {
            return Err(ModelError::Input(format!(
                "the prompt has {n_img} image tokens but the images give {n_feat} features"
            )));
        }
        if n_img == 0 {
            return Ok(emb.unsqueeze(0)?);
        }
        let Some(feats) = image_features else { return Ok(emb.unsqueeze(0)?) };
        Ok(splice_image_features(&emb, ids, image_id, feats)?.unsqueeze(0)?)
    }

    /// Greedy decoding: the first step's logits and the generated tokens (stops after
    /// `max_new_tokens` or at the first of `eos` when given; the EOS token is included).
    pub fn greedy(
        &self,
        ids: &[u32],
        pixel_values: Option<&Tensor>,
        max_new_tokens: usize,
        eos: &[u32],
    ) -> Result<(Tensor, Vec<u32>)> {
        let feats = pixel_values.map(|p| self.image_features(p)).transpose()?;
        self.greedy_from_features(ids, feats.as_ref(), max_new_tokens, eos)
    }

    /// [`Llava::greedy`] from image features already computed ([`Llava::features_for`]).
    pub fn greedy_from_features(
        &self,
        ids: &[u32],
        image_features: Option<&Tensor>,
        max_new_tokens: usize,
        eos: &[u32],
    ) -> Result<(Tensor, Vec<u32>)> {
        let embeds = self.merged_embeddings(ids, image_features)?;
        let mut cache = self.text.new_cache();
        let first = self.text.forward_embeds(&embeds, &mut cache)?;
        let mut out = greedy_loop(first.unsqueeze(0)?, &[max_new_tokens], eos, |next| {
            let e = self.text.embed(&Tensor::new(next, &self.device)?)?.unsqueeze(0)?;
            Ok(self.text.forward_embeds(&e, &mut cache)?.unsqueeze(0)?)
        })?;
        Ok((first, out.pop().unwrap_or_default()))
    }

    /// Greedy decoding of several prompts at once, left-padded into one batch: each prompt's
    /// (input embeddings (1, n, hidden)) in, each one's generated tokens out (stopping at its
    /// first `eos`, which is included, or after `max_new_tokens`).
    pub fn greedy_batch(&self, prompts: &[Tensor], max_new_tokens: &[usize], eos: &[u32]) -> Result<Vec<Vec<u32>>> {
        if prompts.is_empty() {
            return Ok(vec![]);
        }
        let (embeds, pads) = left_pad(prompts)?;
        let mut cache = self.text.new_cache();
        let first = self.text.forward_batch(&embeds, &pads, &mut cache)?;
        greedy_loop(first, max_new_tokens, eos, |next| {
            let e = self.text.embed(&Tensor::new(next, &self.device)?)?.unsqueeze(1)?;
            self.text.forward_batch(&e, &pads, &mut cache)
        })
    }

    /// The input embeddings of one prompt: token embeddings with its images' features spliced in.
    pub fn prompt_embeddings(&self, ids: &[u32], images: &[PixelInput]) -> Result<Tensor> {
        let feats = self.features_for(images)?;
        self.merged_embeddings(ids, feats.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProcessorConfig;
    use crate::image_proc;

    use crate::test_util::{Parity, golden, ids};

    /// First-step logits and 24 greedy tokens against transformers, from the golden input ids, in
    /// both on-disk layouts (the old one stores f16 weights, run in f32 like the reference run).
    #[test]
    fn llava_hf_logits_and_greedy_tokens_match_goldens() {
        let fx = crate::test_util::fixtures();
        for checkpoint in ["llava_hf", "llava_hf_old_layout"] {
            let dir = fx.join("checkpoints").join(checkpoint);
            let cfg = LlavaConfig::from_dir(&dir).unwrap();
            let proc = ProcessorConfig::from_dir(&dir).unwrap();
            let model = Llava::load(&dir, cfg, DType::F32, &Device::Cpu).unwrap();
            let mut parity = Parity::new(checkpoint);
            for case in golden(checkpoint)["cases"].as_array().unwrap() {
                let image = fx.join(case["image"].as_str().unwrap());
                let (px, h, w) = image_proc::preprocess(&image, &proc.image).unwrap();
                let px = Tensor::from_vec(px, (1, 3, h, w), &Device::Cpu).unwrap();
                let (logits, tokens) = model.greedy(&ids(case, "input_ids"), Some(&px), 24, &[]).unwrap();
                parity.record_case(case, &logits.to_vec1::<f32>().unwrap(), &tokens);
            }
            parity.check();
        }
    }

    /// LLaVA-NeXT: first-step logits and 24 greedy tokens (no EOS stop) against transformers,
    /// from the golden input ids and our own anyres pixel values.
    #[test]
    fn llava_next_logits_and_greedy_tokens_match_goldens() {
        use crate::anyres;
        use crate::config::ModelConfig;
        let fx = crate::test_util::fixtures();
        // The old layout stores bf16 weights; both run in f32 like the reference run.
        for checkpoint in ["llava_next", "llava_next_old_layout"] {
            let dir = fx.join("checkpoints").join(checkpoint);
            let cfg = ModelConfig::from_dir(&dir).unwrap();
            let proc = ProcessorConfig::from_dir(&dir).unwrap();
            let model = Llava::load_next(&dir, cfg.llava, cfg.image_grid_pinpoints, DType::F32, &Device::Cpu).unwrap();
            let g = golden(checkpoint);
            let cases = g["cases"].as_array().unwrap();
            assert_eq!(cases.len(), 21);
            let mut parity = Parity::new(checkpoint);
            for case in cases {
                let px = anyres::preprocess(&fx.join(case["image"].as_str().unwrap()), &proc.image).unwrap();
                let tiles =
                    Tensor::from_vec(px.values, (px.num_patches, 3, px.height, px.width), &Device::Cpu).unwrap();
                let feats = model.features_for(&[PixelInput::Anyres { tiles, image_size: px.image_size }]).unwrap();
                let (logits, tokens) =
                    model.greedy_from_features(&ids(case, "input_ids"), feats.as_ref(), 24, &[]).unwrap();
                parity.record_case(case, &logits.to_vec1::<f32>().unwrap(), &tokens);
            }
            parity.check();
        }
    }
}
