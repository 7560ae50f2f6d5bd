//! `Qwen2VLForConditionalGeneration` on candle: the vision tower's merged features written over
//! the `<|image_pad|>` positions of the token embeddings (`masked_scatter`), M-RoPE positions
//! from `get_rope_index`, then the Qwen2 decoder; greedy decoding one prompt at a time
//! ([`GreedyModel::greedy`], for tests) or a left-padded batch ([`GreedyModel::greedy_batch`]).
//!
//! Both weight-name layouts load: the 2024 hub upload's (`model.embed_tokens`, `model.layers.*`,
//! `model.norm`, `visual.*`, `lm_head`) and transformers 5.x's (`model.language_model.*`,
//! `model.visual.*`, `lm_head`).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use vlm_core::generation::RepetitionPenalty;
use vlm_core::greedy::{GreedyModel, greedy_loop};
use vlm_core::kernels::splice_image_features;
use vlm_core::kv::left_pad;
use vlm_core::precision::compute_dtype;
use vlm_core::qwen2vl::rope::{decode_step_positions, padded_deltas, padded_prefill_positions};
use vlm_core::weights::{load_error, require_prefix, under, var_builder};
use vlm_core::{ModelError, Result};

use crate::config::Qwen2VlConfig;
use crate::processor::ProcessedImage;
use crate::text::{Positions, TextModel, rope_index};
use crate::vision::VisionTower;

/// One prompt ready for the decoder: its ids, input embeddings (1, n, hidden), M-RoPE positions
/// and `rope_delta`.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub ids: Vec<u32>,
    pub embeds: Tensor,
    pub positions: Positions,
    pub rope_delta: i64,
}

pub struct Qwen2Vl {
    pub config: Qwen2VlConfig,
    pub vision: VisionTower,
    pub text: TextModel,
    pub device: Device,
    /// The run's dtype: the linear layers' weights; activations run in
    /// [`vlm_core::precision::compute_dtype`] (f32 on the CPU).
    pub dtype: DType,
}

impl Qwen2Vl {
    pub fn load(dir: &Path, config: Qwen2VlConfig, dtype: DType, device: &Device) -> Result<Self> {
        let vb = var_builder(dir, dtype, device)?;
        let txt = require_prefix(
            &vb,
            dir,
            &["model.language_model.", "model."],
            "embed_tokens.weight",
            "text model",
            "model.embed_tokens.weight",
        )?;
        let vis = require_prefix(
            &vb,
            dir,
            &["model.visual.", "visual."],
            "patch_embed.proj.weight",
            "vision tower",
            "visual.patch_embed.proj.weight",
        )?;
        let vision =
            VisionTower::load(under(&vb, vis), &config.vision).map_err(|e| load_error(dir, "vision tower", e))?;
        let text = TextModel::load(under(&vb, txt), vb.pp("lm_head"), &config.text, compute_dtype(dtype, device))
            .map_err(|e| load_error(dir, "text model", e))?;
        Ok(Self { config, vision, text, device: device.clone(), dtype })
    }

    /// The merged features of several images, concatenated in order: (Σ tokens, hidden), or
    /// `None` without images. Each image attends only to itself.
    pub fn image_features(&self, images: &[&ProcessedImage]) -> Result<Option<Tensor>> {
        if images.is_empty() {
            return Ok(None);
        }
        let dim = self.config.vision.patch_dim();
        let mut rows = Vec::new();
        for img in images {
            rows.extend_from_slice(&img.patches);
        }
        let n = rows.len() / dim;
        let px = Tensor::from_vec(rows, (n, dim), &self.device)?;
        let grids: Vec<[usize; 3]> = images.iter().map(|i| i.grid).collect();
        Ok(Some(self.vision.forward(&px, &grids)?))
    }

    /// Token embeddings with `features` written over the image-token positions, in order.
    pub fn merged_embeddings(&self, ids: &[u32], features: Option<&Tensor>) -> Result<Tensor> {
        let image_id = self.config.image_token_id;
        let emb = self.text.embed(ids, &self.device)?;
        let n_img = ids.iter().filter(|&&t| t == image_id).count();
        let n_feat = features.map_or(Ok(0), |f| f.dim(0))?;
        if n_img != n_feat {
            return Err(ModelError::Input(format!(
                "Image features and image tokens do not match: tokens: {n_img}, features {n_feat}"
            )));
        }
        let Some(feats) = features else { return Ok(emb.unsqueeze(0)?) };
        Ok(splice_image_features(&emb, ids, image_id, feats)?.unsqueeze(0)?)
    }

    /// `get_rope_index` for one unpadded prompt.
    pub fn rope_index(&self, ids: &[u32], grids: &[[usize; 3]]) -> Result<(Positions, i64)> {
        let c = &self.config;
        rope_index(ids, grids, c.image_token_id, c.vision_start_token_id, c.vision.spatial_merge_size)
            .map_err(ModelError::Input)
    }
}

impl GreedyModel for Qwen2Vl {
    type Image = ProcessedImage;
    type Prompt = Prompt;

    /// A prompt's embeddings and positions from its ids and images.
    fn prompt(&self, ids: &[u32], images: &[&ProcessedImage]) -> Result<Prompt> {
        let grids: Vec<[usize; 3]> = images.iter().map(|i| i.grid).collect();
        let (positions, rope_delta) = self.rope_index(ids, &grids)?;
        let feats = self.image_features(images)?;
        let embeds = self.merged_embeddings(ids, feats.as_ref())?;
        Ok(Prompt { ids: ids.to_vec(), embeds, positions, rope_delta })
    }

    /// The prefill's last logits (b, vocab, before any penalty) and each row's greedy tokens.
    /// Padding positions get position ids (1, 1, 1) as transformers gives them (they are masked
    /// out); a decode step's position is the padded length so far + the row's delta, with delta =
    /// rope_delta - pad (transformers' delta is taken against the padded row). With a
    /// `repetition_penalty` other than 1, each row's logits are penalised over the ids it has seen
    /// (its prompt, without padding, and its answer so far) before the argmax.
    fn greedy_prompts(
        &self,
        prompts: &[Prompt],
        max_new_tokens: &[usize],
        eos: &[u32],
        repetition_penalty: f32,
    ) -> Result<(Tensor, Vec<Vec<u32>>)> {
        let b = prompts.len();
        if b == 0 || max_new_tokens.len() != b {
            return Err(ModelError::Input(format!("{b} prompts and {} budgets", max_new_tokens.len())));
        }
        let embeds: Vec<Tensor> = prompts.iter().map(|p| p.embeds.clone()).collect();
        let (embeds, pads) = left_pad(&embeds)?;
        let n = embeds.dim(1)?;
        let rows: Vec<&Positions> = prompts.iter().map(|p| &p.positions).collect();
        let positions = padded_prefill_positions(&rows, &pads);
        debug_assert_eq!(positions.len(), b * n);
        let rope_deltas: Vec<i64> = prompts.iter().map(|p| p.rope_delta).collect();
        let deltas = padded_deltas(&rope_deltas, &pads);
        let mut penalty = RepetitionPenalty::new(repetition_penalty, prompts.iter().map(|p| p.ids.clone()).collect());
        let mut cache = self.text.new_cache();
        let first = self.text.forward(&embeds, &positions, &pads, &mut cache)?;
        let tokens = greedy_loop(penalty.apply(first.clone())?, max_new_tokens, eos, |next| {
            let e = self.text.embed(next, &self.device)?.unsqueeze(1)?;
            let pos = decode_step_positions(cache.len, &deltas);
            let logits = self.text.forward(&e, &pos, &pads, &mut cache)?;
            penalty.push(next);
            penalty.apply(logits)
        })?;
        Ok((first, tokens))
    }
}
