//! Arch `llava_hf` (LLaVA-1.5) on the three graphs: the chat template, tokenizer and
//! `CLIPImageProcessor` are [`vlm_core::llava`] (what candle-llava runs). The vision graph takes
//! `pixel_values` (1, 3, h, w) and gives the projected features (1, patches, hidden) (the
//! transformers.js export includes the projector); they replace the `<image>` embeddings in order.
//! Positions are 1-D and count from each row's first real token, as transformers gives left-padded
//! rows (`vlm_core::kv::padded_positions`). Like candle-llava, no repetition penalty unless
//! `[model.options] repetition_penalty` sets one (LLaVA-1.5's generation config has none).

use std::path::Path;

use vlm_core::kernels::splice_rows;
use vlm_core::kv::padded_positions;
use vlm_core::llava::LlavaHfInputs;
use vlm_core::{ModelError, Result};
use vlsbench_plugin_api::{BackendError, GenerateRequest};

use crate::decode::{PositionScheme, Prompt, model_err};
use crate::graphs::{ExpectedDecoder, Graphs};

/// A loaded LLaVA-1.5 export.
pub struct LlavaOnnx {
    pub inputs: LlavaHfInputs,
    pub graphs: Graphs,
    pub eos: Vec<u32>,
    pub repetition_penalty: f32,
    pub max_positions: usize,
}

/// 1-D positions, padding at 0.
struct Linear;

impl PositionScheme for Linear {
    fn prefill(&self, _prompts: &[Prompt], pads: &[usize], n: usize) -> Vec<i64> {
        padded_positions(pads, 0, n).into_iter().map(i64::from).collect()
    }

    fn step(&self, cached: usize, pads: &[usize]) -> Vec<i64> {
        padded_positions(pads, cached, 1).into_iter().map(i64::from).collect()
    }
}

impl LlavaOnnx {
    pub fn load(
        dir: &Path,
        graphs: impl FnOnce(&ExpectedDecoder) -> std::result::Result<Graphs, BackendError>,
    ) -> std::result::Result<Self, BackendError> {
        let inputs = LlavaHfInputs::from_dir(dir)?;
        let t = &inputs.config.llava.text;
        let expect = ExpectedDecoder {
            layers: t.num_hidden_layers,
            kv_heads: t.num_key_value_heads,
            head_dim: t.head_dim,
            hidden: t.hidden_size,
            position_rows: 1,
        };
        let graphs = graphs(&expect)?;
        let eos = inputs.eos.clone();
        let max_positions = t.max_position_embeddings;
        Ok(Self { inputs, graphs, eos, repetition_penalty: 1.0, max_positions })
    }

    /// A request's prompt: ids and pixels from `vlm_core`, the graphs for the embeddings.
    pub fn prompt(&self, req: &GenerateRequest) -> std::result::Result<Prompt, BackendError> {
        let (ids, images) = self.inputs.prepare(req)?;
        let run = || -> Result<Prompt> {
            let mut feats = Vec::new();
            for img in &images {
                let shape = vec![1, 3, img.height as i64, img.width as i64];
                feats.extend(self.graphs.vision(shape, &img.pixels, None).map_err(model_err)?);
            }
            let mut embeds = self.graphs.embed(&ids).map_err(model_err)?;
            let hidden = embeds.len() / ids.len().max(1);
            splice_rows(&mut embeds, hidden, &ids, self.inputs.config.llava.image_token_id, &feats)?;
            let positions = vec![(0..ids.len() as i64).collect()];
            Ok(Prompt { ids: ids.clone(), embeds, positions })
        };
        run().map_err(|e: ModelError| vlm_core::request::model_error(&req.id, e))
    }

    /// The prefill's last logits (b, vocab) and each row's greedy tokens.
    pub fn greedy(
        &self,
        prompts: &[Prompt],
        budgets: &[usize],
        eos: &[u32],
        repetition_penalty: f32,
    ) -> Result<(Vec<f32>, Vec<Vec<u32>>)> {
        crate::decode::greedy(&self.graphs, &Linear, prompts, budgets, eos, repetition_penalty)
    }

    pub fn decode(&self, tokens: &[u32]) -> std::result::Result<String, BackendError> {
        self.inputs.decode(tokens)
    }
}
