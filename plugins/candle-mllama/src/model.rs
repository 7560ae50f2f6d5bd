//! `MllamaForConditionalGeneration` on candle: each image through the vision encoder and the
//! projector into cross-attention states, the prompt's tokens embedded as they are (the
//! `<|image|>` token is an ordinary token of the 128,264-row embedding), the cross-attention
//! mask from the `<|image|>` positions, then the text model; greedy decoding one prompt at a time
//! ([`GreedyModel::greedy`], for tests) or a left-padded batch ([`GreedyModel::greedy_batch`]). A decode
//! step's tokens see what the prompt's last token saw (`_update_model_kwargs_for_generation`
//! repeats the mask's last row).
//!
//! Both weight-name layouts load: the 2024 hub upload's (`language_model.model.*`,
//! `language_model.lm_head`, `vision_model.*`, `multi_modal_projector`) and transformers 5.x's
//! (`model.language_model.*`, `model.vision_model.*`, `model.multi_modal_projector`, `lm_head`).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use vlm_core::generation::RepetitionPenalty;
use vlm_core::greedy::{GreedyModel, greedy_loop};
use vlm_core::kv::left_pad;
use vlm_core::precision::compute_dtype;
use vlm_core::weights::{load_error, require_prefix, under, var_builder};
use vlm_core::{ModelError, Result};

use crate::config::MllamaConfig;
use crate::processor::{ProcessedImage, cross_attention_token_mask, dense_cross_attention_mask};
use crate::text::TextModel;
use crate::vision::VisionEncoder;

/// One prompt ready for the decoder.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub ids: Vec<u32>,
    /// The images' cross-attention states, (images · max_tiles · num_patches, hidden).
    pub cross_states: Option<Tensor>,
    /// The processor's cross-attention mask: (tokens, images, max_tiles), 0/1, row-major.
    pub cross_mask: Vec<u8>,
    pub n_images: usize,
}

pub struct Mllama {
    pub config: MllamaConfig,
    pub vision: VisionEncoder,
    pub text: TextModel,
    pub device: Device,
    /// The run's dtype: the linear layers' weights; activations run in
    /// [`vlm_core::precision::compute_dtype`] (f32 on the CPU).
    pub dtype: DType,
}

impl Mllama {
    pub fn load(dir: &Path, config: MllamaConfig, dtype: DType, device: &Device) -> Result<Self> {
        let vb = var_builder(dir, dtype, device)?;
        let txt = require_prefix(
            &vb,
            dir,
            &["model.language_model.", "language_model.model."],
            "embed_tokens.weight",
            "text model",
            "language_model.model.embed_tokens.weight",
        )?;
        let vis = require_prefix(
            &vb,
            dir,
            &["model.vision_model.", "vision_model."],
            "patch_embedding.weight",
            "vision model",
            "vision_model.patch_embedding.weight",
        )?;
        let (proj, head) = if txt.starts_with("model.") {
            ("model.multi_modal_projector", "lm_head")
        } else {
            ("multi_modal_projector", "language_model.lm_head")
        };
        let vision = VisionEncoder::load(under(&vb, vis), vb.pp(proj), &config.vision, config.text.hidden_size)
            .map_err(|e| load_error(dir, "vision model", e))?;
        let text = TextModel::load(under(&vb, txt), vb.pp(head), &config.text, compute_dtype(dtype, device))
            .map_err(|e| load_error(dir, "text model", e))?;
        Ok(Self { config, vision, text, device: device.clone(), dtype })
    }

    /// The cross-attention states of several images, concatenated in order.
    pub fn cross_states(&self, images: &[&ProcessedImage]) -> Result<Option<Tensor>> {
        if images.is_empty() {
            return Ok(None);
        }
        let states = images.iter().map(|i| self.vision.cross_states(i, &self.device)).collect::<Result<Vec<_>>>()?;
        Ok(Some(Tensor::cat(&states, 0)?))
    }

    /// The additive cross-attention mask (b, 1, n, K) and the full-text-row mask (b, n, 1) for
    /// rows of per-token tile masks (`None`: a padding position). `_prepare_cross_attention_mask`:
    /// each tile's flag repeated over its patches; a row that sees nothing is all zeros and its
    /// row flag 0.
    fn cross_masks(&self, rows: &[Vec<Option<&[u8]>>], n_images: usize) -> Result<(Tensor, Tensor)> {
        let np = self.config.vision.num_patches();
        let per_token = n_images * self.config.vision.max_num_tiles;
        let k = per_token * np;
        let (b, n) = (rows.len(), rows.first().map_or(0, Vec::len));
        let mut mask = vec![0f32; b * n * k];
        let mut full = vec![0f32; b * n];
        for (r, row) in rows.iter().enumerate() {
            for (t, tiles) in row.iter().enumerate() {
                let Some(tiles) = tiles else { continue };
                if !tiles.contains(&1) {
                    continue;
                }
                full[r * n + t] = 1.0;
                let m = &mut mask[(r * n + t) * k..(r * n + t + 1) * k];
                for (j, &seen) in tiles.iter().enumerate().take(per_token) {
                    if seen == 0 {
                        m[j * np..(j + 1) * np].fill(f32::MIN);
                    }
                }
            }
        }
        Ok((Tensor::from_vec(mask, (b, 1, n, k), &self.device)?, Tensor::from_vec(full, (b, n, 1), &self.device)?))
    }
}

impl GreedyModel for Mllama {
    type Image = ProcessedImage;
    type Prompt = Prompt;

    /// A prompt's cross-attention states and mask from its ids and images.
    fn prompt(&self, ids: &[u32], images: &[&ProcessedImage]) -> Result<Prompt> {
        let image_id = self.config.image_token_id;
        let n_tokens = ids.iter().filter(|&&t| t == image_id).count();
        if n_tokens != images.len() {
            return Err(ModelError::Input(format!(
                "the prompt has {n_tokens} <|image|> tokens for {} images",
                images.len()
            )));
        }
        let ranges = cross_attention_token_mask(ids, image_id);
        let tiles: Vec<usize> = images.iter().map(|i| i.num_tiles()).collect();
        let cross_mask = dense_cross_attention_mask(&ranges, &tiles, self.config.vision.max_num_tiles, ids.len());
        let cross_states = self.cross_states(images)?;
        Ok(Prompt { ids: ids.to_vec(), cross_states, cross_mask, n_images: images.len() })
    }

    /// The prefill's last logits (b, vocab, before any penalty) and each row's greedy tokens.
    /// Every prompt of a batch must have the same number of images (rows with fewer images would
    /// need padding images, whose tokens the text before an image attends to: not what one
    /// request alone computes).
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
        let n_images = prompts[0].n_images;
        if prompts.iter().any(|p| p.n_images != n_images) {
            return Err(ModelError::Input("a batch's prompts must have the same number of images".into()));
        }
        let embeds: Vec<Tensor> =
            prompts.iter().map(|p| Ok(self.text.embed(&p.ids, &self.device)?.unsqueeze(0)?)).collect::<Result<_>>()?;
        let (embeds, pads) = left_pad(&embeds)?;
        let cross = if n_images > 0 {
            let states: Vec<Tensor> = prompts
                .iter()
                .map(|p| p.cross_states.clone().ok_or_else(|| ModelError::Input("image states missing".into())))
                .collect::<Result<_>>()?;
            let states = Tensor::stack(&states, 0)?;
            let ctx = self.text.cross_context(&states)?;
            let per_token = n_images * self.config.vision.max_num_tiles;
            let rows: Vec<Vec<Option<&[u8]>>> = prompts
                .iter()
                .zip(&pads)
                .map(|(p, &pad)| {
                    let mut row: Vec<Option<&[u8]>> = vec![None; pad];
                    row.extend(p.cross_mask.chunks(per_token).map(Some));
                    row
                })
                .collect();
            let (mask, full) = self.cross_masks(&rows, n_images)?;
            let last: Vec<Vec<Option<&[u8]>>> = rows.iter().map(|r| vec![r.last().copied().flatten()]).collect();
            let (step_mask, step_full) = self.cross_masks(&last, n_images)?;
            Some((ctx, mask, full, step_mask, step_full))
        } else {
            None
        };
        let mut penalty = RepetitionPenalty::new(repetition_penalty, prompts.iter().map(|p| p.ids.clone()).collect());
        let mut cache = self.text.new_cache();
        let first = self.text.forward(&embeds, &pads, &mut cache, cross.as_ref().map(|(c, m, f, _, _)| (c, m, f)))?;
        let tokens = greedy_loop(penalty.apply(first.clone())?, max_new_tokens, eos, |next| {
            let e = self.text.embed(next, &self.device)?.unsqueeze(1)?;
            let step = cross.as_ref().map(|(c, _, _, m, f)| (c, m, f));
            let logits = self.text.forward(&e, &pads, &mut cache, step)?;
            penalty.push(next);
            penalty.apply(logits)
        })?;
        Ok((first, tokens))
    }
}
