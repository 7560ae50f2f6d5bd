//! The Qwen2 text decoder of Qwen2-VL (`Qwen2VLTextModel`) with multimodal rotary position
//! embedding (M-RoPE):
//!
//! - decoder layers: RMSNorm, attention with q/k/v biases and no o bias, grouped-query heads,
//!   RMSNorm, SiLU-gated MLP; the KV cache and left padding from [`vlm_core::kv`].
//! - M-RoPE: every position has three ids (temporal, height, width). cos/sin are built per id
//!   row and combined by `mrope_section` exactly as `apply_multimodal_rotary_pos_emb` does: the
//!   sections (doubled across the two halves of the head) take their frequencies from rows
//!   0, 1, 2 in turn. Built directly: frequency `f` takes its angle from the row whose section
//!   holds `f`.
//! - [`rope_index`] (from `vlm_core::qwen2vl::rope`, shared with the ONNX backend): `Qwen2VLModel.get_rope_index` for one row of ids (text counts on from the
//!   largest position so far; an image's tokens get (t, h / merge, w / merge) grid positions
//!   offset by the text before it), and its `rope_delta`, so a decode step's position is
//!   `cache length + delta`.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear, RmsNorm, VarBuilder};
use vlm_core::kv::{Cache, check_context, padded_causal_mask};
use vlm_core::layers::{self, DecoderLayer, DecoderShape, default_inv_freq, last_logits, rms_norm};
use vlm_core::weights::need;
use vlm_core::{ModelError, Result};

use crate::config::TextConfig;
pub use vlm_core::qwen2vl::rope::{Positions, rope_index};

/// `Qwen2VLTextModel` plus `lm_head`.
pub struct TextModel {
    embed: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    inv_freq: Vec<f32>,
    /// For each rotary frequency, the position row (0 temporal, 1 height, 2 width) it reads.
    section_of: Vec<usize>,
    max_positions: usize,
    /// The dtype activations run in ([`vlm_core::precision::compute_dtype`]).
    dtype: DType,
}

impl TextModel {
    /// `model` holds `embed_tokens`, `layers.*`, `norm`; `lm_head` the output projection; both in
    /// the run's dtype, `dtype` the compute dtype.
    pub fn load(model: VarBuilder, lm_head: VarBuilder, c: &TextConfig, dtype: DType) -> Result<Self> {
        need(&model, "embed_tokens.weight")?;
        let embed = candle_nn::embedding(c.vocab_size, c.hidden_size, model.pp("embed_tokens"))?;
        // Attention with q/k/v biases and no o bias, no MLP bias.
        let heads = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let shape = DecoderShape {
            qkv_bias: true,
            ..DecoderShape::new(c.hidden_size, c.intermediate_size, heads, c.rms_norm_eps, &c.hidden_act)
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| DecoderLayer::load(model.pp(format!("layers.{i}")), &shape))
            .collect::<Result<_>>()?;
        let norm = rms_norm(model.pp("norm"), c.hidden_size, c.rms_norm_eps)?;
        let lm_head = layers::lm_head(lm_head, embed.embeddings(), c.hidden_size, c.vocab_size, c.tie_word_embeddings)?;
        let inv_freq = default_inv_freq(c.rope_theta, c.head_dim);
        let section_of = c.mrope_section.iter().enumerate().flat_map(|(s, &n)| std::iter::repeat_n(s, n)).collect();
        Ok(Self { embed, layers, norm, lm_head, inv_freq, section_of, max_positions: c.max_position_embeddings, dtype })
    }

    pub fn embed(&self, ids: &[u32], device: &Device) -> candle_core::Result<Tensor> {
        self.embed.forward(&Tensor::new(ids, device)?)?.to_dtype(self.dtype)
    }

    pub fn new_cache(&self) -> Cache {
        Cache::new(self.layers.len())
    }

    /// M-RoPE cos and sin (b, n, head_dim / 2) for `positions` (b·n triples, row-major).
    fn mrope(&self, positions: &[[u32; 3]], b: usize, n: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut angles = Vec::with_capacity(positions.len() * half);
        for p in positions {
            angles.extend(self.inv_freq.iter().zip(&self.section_of).map(|(f, &s)| p[s] as f32 * f));
        }
        let a = Tensor::from_vec(angles, (b, n, half), device)?;
        Ok((a.cos()?.to_dtype(self.dtype)?, a.sin()?.to_dtype(self.dtype)?))
    }

    /// Runs a left-padded batch `embeds` (b, n, hidden) after what `cache` holds: row `r` has
    /// `pads[r]` padding positions at the start of the whole sequence (masked out) and
    /// `positions` the M-RoPE ids of every new position (b·n triples, row-major). Returns each
    /// row's last logits, (b, vocab), f32.
    pub fn forward(
        &self,
        embeds: &Tensor,
        positions: &[[u32; 3]],
        pads: &[usize],
        cache: &mut Cache,
    ) -> Result<Tensor> {
        let (b, n, _) = embeds.dims3()?;
        if pads.len() != b || positions.len() != b * n {
            return Err(ModelError::Input(format!(
                "{} pads and {} positions for a batch of {b} x {n}",
                pads.len(),
                positions.len()
            )));
        }
        // The prompt must fit the context; decode steps are bounded by each row's budget.
        check_context(pads, b, cache.len, n, self.max_positions)?;
        let dev = embeds.device();
        let (cos, sin) = self.mrope(positions, b, n, dev)?;
        let mask = padded_causal_mask(pads, cache.len, n, DType::F32, dev)?;
        let mut x = embeds.to_dtype(self.dtype)?;
        for (layer, kv) in self.layers.iter().zip(cache.kvs.iter_mut()) {
            x = layer.forward(&x, (&cos, &sin), &mask, kv)?;
        }
        cache.len += n;
        Ok(last_logits(&self.norm, &self.lm_head, &x)?)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mrope_sections_pick_rows_as_apply_multimodal_rotary_pos_emb_does() {
        // head_dim 8: 4 frequencies, sections [1, 2, 1]. transformers: cat of chunks of sizes
        // [1, 2, 1, 1, 2, 1] over the doubled emb, chunk i from row i % 3.
        let section = [1usize, 2, 1];
        let section_of: Vec<usize> = section.iter().enumerate().flat_map(|(s, &n)| std::iter::repeat_n(s, n)).collect();
        let doubled: Vec<usize> = section.iter().chain(section.iter()).copied().collect();
        let mut rows_hf = Vec::new();
        for (i, &n) in doubled.iter().enumerate() {
            rows_hf.extend(std::iter::repeat_n(i % 3, n));
        }
        let ours: Vec<usize> = section_of.iter().chain(section_of.iter()).copied().collect();
        assert_eq!(ours, rows_hf);
    }
}
