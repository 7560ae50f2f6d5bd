//! Arch `qwen2vl` on the three graphs: everything before and after them is
//! [`vlm_core::qwen2vl`] (the chat template, tokenizer, `qwen_vl_utils` + `Qwen2VLImageProcessor`,
//! `get_rope_index`, padded M-RoPE positions, answer decoding), exactly what candle-qwen2vl runs.
//! Each image goes through the vision encoder alone (`pixel_values` (patches, 1176), `grid_thw`
//! (1, 3)); its features replace the prompt's `<|image_pad|>` embeddings in order.

use std::path::Path;

use vlm_core::kernels::splice_rows;
use vlm_core::qwen2vl::Qwen2VlInputs;
use vlm_core::qwen2vl::config::Qwen2VlConfig;
use vlm_core::qwen2vl::rope::{Positions, decode_step_positions, padded_deltas, padded_prefill_positions};
use vlm_core::{ModelError, Result};
use vlsbench_plugin_api::{BackendError, GenerateRequest};

use crate::decode::{PositionScheme, Prompt, model_err};
use crate::graphs::{ExpectedDecoder, Graphs};

/// What `config.json` says the decoder graph takes.
pub fn expected_decoder(c: &Qwen2VlConfig) -> ExpectedDecoder {
    ExpectedDecoder {
        layers: c.text.num_hidden_layers,
        kv_heads: c.text.num_key_value_heads,
        head_dim: c.text.head_dim,
        hidden: c.text.hidden_size,
        position_rows: 3,
    }
}

/// A loaded Qwen2-VL export.
pub struct Qwen2VlOnnx {
    pub inputs: Qwen2VlInputs,
    pub graphs: Graphs,
}

/// M-RoPE: padding at (1, 1, 1), steps at the padded length plus each row's padded delta.
struct MRope {
    deltas: Vec<i64>,
}

impl PositionScheme for MRope {
    fn prefill(&self, prompts: &[Prompt], pads: &[usize], n: usize) -> Vec<i64> {
        let rows: Vec<Positions> = prompts
            .iter()
            .map(|p| (0..p.ids.len()).map(|i| [0, 1, 2].map(|r| p.positions[r][i] as u32)).collect())
            .collect();
        let refs: Vec<&Positions> = rows.iter().collect();
        let all = padded_prefill_positions(&refs, pads);
        debug_assert_eq!(all.len(), pads.len() * n);
        (0..3).flat_map(|r| all.iter().map(move |p| i64::from(p[r]))).collect()
    }

    fn step(&self, cached: usize, _pads: &[usize]) -> Vec<i64> {
        let pos = decode_step_positions(cached, &self.deltas);
        (0..3).flat_map(|r| pos.iter().map(move |p| i64::from(p[r]))).collect()
    }
}

/// A prompt with its `rope_delta` (taken against its unpadded length).
pub struct QwenPrompt {
    pub prompt: Prompt,
    pub rope_delta: i64,
}

impl Qwen2VlOnnx {
    pub fn load(
        dir: &Path,
        graphs: impl FnOnce(&ExpectedDecoder) -> std::result::Result<Graphs, BackendError>,
    ) -> std::result::Result<Self, BackendError> {
        let inputs = Qwen2VlInputs::from_dir(dir)?;
        let graphs = graphs(&expected_decoder(&inputs.config))?;
        Ok(Self { inputs, graphs })
    }

    /// A request's prompt: ids and images from `vlm_core`, the images through the vision graph,
    /// the ids through the embedding graph, the features spliced over the image tokens.
    pub fn prompt(&self, req: &GenerateRequest) -> std::result::Result<QwenPrompt, BackendError> {
        let (ids, images) = self.inputs.prepare(req)?;
        let refs: Vec<_> = images.iter().collect();
        let at = |e: ModelError| vlm_core::request::model_error(&req.id, e);
        let (positions, rope_delta) = self.inputs.rope_index(&ids, &refs).map_err(at)?;
        let prompt = self.embed(&ids, &images, positions).map_err(at)?;
        Ok(QwenPrompt { prompt, rope_delta })
    }

    /// A prepared request's prompt (ids and images from [`Qwen2VlInputs::prepare`]): the vision and
    /// embedding graphs, the features spliced over the image tokens.
    pub fn embed(
        &self,
        ids: &[u32],
        images: &[vlm_core::qwen2vl::processor::ProcessedImage],
        positions: Positions,
    ) -> Result<Prompt> {
        let dim = self.inputs.config.vision.patch_dim();
        let mut feats = Vec::new();
        for img in images {
            let n = img.patches.len() / dim;
            feats.extend(
                self.graphs.vision(vec![n as i64, dim as i64], &img.patches, Some(img.grid)).map_err(model_err)?,
            );
        }
        let mut embeds = self.graphs.embed(ids).map_err(model_err)?;
        let hidden = embeds.len() / ids.len().max(1);
        splice_rows(&mut embeds, hidden, ids, self.inputs.config.image_token_id, &feats)?;
        let positions = (0..3).map(|r| positions.iter().map(|p| i64::from(p[r])).collect()).collect();
        Ok(Prompt { ids: ids.to_vec(), embeds, positions })
    }

    /// The prefill's last logits (b, vocab) and each row's greedy tokens.
    pub fn greedy(
        &self,
        prompts: &[QwenPrompt],
        budgets: &[usize],
        eos: &[u32],
        repetition_penalty: f32,
    ) -> Result<(Vec<f32>, Vec<Vec<u32>>)> {
        let n = prompts.iter().map(|p| p.prompt.ids.len()).max().unwrap_or(0);
        let pads: Vec<usize> = prompts.iter().map(|p| n - p.prompt.ids.len()).collect();
        let deltas: Vec<i64> = prompts.iter().map(|p| p.rope_delta).collect();
        let scheme = MRope { deltas: padded_deltas(&deltas, &pads) };
        let plain: Vec<Prompt> = prompts.iter().map(|p| p.prompt.clone()).collect();
        crate::decode::greedy(&self.graphs, &scheme, &plain, budgets, eos, repetition_penalty)
    }
}
