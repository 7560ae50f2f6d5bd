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

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Embedding, Linear, RmsNorm, VarBuilder};
use vlm_core::attention::{attention, repeat_kv};
use vlm_core::kernels::{act, dense};
use vlm_core::kv::{Cache, KvBuffer, padded_causal_mask};
use vlm_core::precision::{compute, linear};
use vlm_core::weights::need;
use vlm_core::{ModelError, Result};

use crate::config::TextConfig;
pub use vlm_core::qwen2vl::rope::{Positions, rope_index};

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(vb: VarBuilder, c: &TextConfig) -> Result<Self> {
        let (h, hd) = (c.hidden_size, c.head_dim);
        Ok(Self {
            q: linear(vb.pp("q_proj"), h, c.num_attention_heads * hd, true)?,
            k: linear(vb.pp("k_proj"), h, c.num_key_value_heads * hd, true)?,
            v: linear(vb.pp("v_proj"), h, c.num_key_value_heads * hd, true)?,
            o: linear(vb.pp("o_proj"), c.num_attention_heads * hd, h, false)?,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: hd,
        })
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &Tensor, kv: &mut KvBuffer) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let split = |t: Tensor, h: usize| t.reshape((b, n, h, self.head_dim))?.transpose(1, 2)?.contiguous();
        let q = split(dense(&self.q, x)?, self.heads)?;
        let k = split(dense(&self.k, x)?, self.kv_heads)?;
        let v = split(dense(&self.v, x)?, self.kv_heads)?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        let (k, v) = kv.append(&k, &v)?;
        let rep = self.heads / self.kv_heads;
        let (k, v) = (repeat_kv(k, rep)?, repeat_kv(v, rep)?);
        let y = attention(&q, &k, &v, Some(mask), (self.head_dim as f64).powf(-0.5))?;
        let y = y.transpose(1, 2)?.reshape((b, n, self.heads * self.head_dim))?;
        Ok(dense(&self.o, &y)?)
    }
}

struct DecoderLayer {
    ln1: RmsNorm,
    attn: Attention,
    ln2: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    act: String,
}

impl DecoderLayer {
    fn load(vb: VarBuilder, c: &TextConfig) -> Result<Self> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        need(&vb, "input_layernorm.weight")?;
        need(&vb, "post_attention_layernorm.weight")?;
        Ok(Self {
            ln1: candle_nn::rms_norm(h, c.rms_norm_eps, compute(&vb.pp("input_layernorm")))?,
            attn: Attention::load(vb.pp("self_attn"), c)?,
            ln2: candle_nn::rms_norm(h, c.rms_norm_eps, compute(&vb.pp("post_attention_layernorm")))?,
            gate: linear(vb.pp("mlp.gate_proj"), h, i, false)?,
            up: linear(vb.pp("mlp.up_proj"), h, i, false)?,
            down: linear(vb.pp("mlp.down_proj"), i, h, false)?,
            act: c.hidden_act.clone(),
        })
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &Tensor, kv: &mut KvBuffer) -> Result<Tensor> {
        let h = (x + self.attn.forward(&self.ln1.forward(x)?, cos, sin, mask, kv)?)?;
        let n = self.ln2.forward(&h)?;
        let m = dense(&self.down, &(act(&self.act, &dense(&self.gate, &n)?)? * dense(&self.up, &n)?)?)?;
        Ok((h + m)?)
    }
}

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
        let layers = (0..c.num_hidden_layers)
            .map(|i| DecoderLayer::load(model.pp(format!("layers.{i}")), c))
            .collect::<Result<_>>()?;
        need(&model, "norm.weight")?;
        let norm = candle_nn::rms_norm(c.hidden_size, c.rms_norm_eps, compute(&model.pp("norm")))?;
        let lm_head = if lm_head.contains_tensor("weight") {
            linear(lm_head, c.hidden_size, c.vocab_size, false)?
        } else if c.tie_word_embeddings {
            Linear::new(embed.embeddings().clone(), None)
        } else {
            return Err(ModelError::Load("missing weight lm_head.weight (and tie_word_embeddings is false)".into()));
        };
        // The default rope: 1 / base^(arange(0, dim, 2) / dim), in f32.
        let hd = c.head_dim;
        let inv_freq = (0..hd).step_by(2).map(|i| 1.0 / (c.rope_theta as f32).powf(i as f32 / hd as f32)).collect();
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
        let needed = n - pads.iter().copied().min().unwrap_or(0);
        if cache.len == 0 && needed > self.max_positions {
            return Err(ModelError::Input(format!(
                "the sequence needs {needed} positions, more than the model's context of {} (max_position_embeddings)",
                self.max_positions
            )));
        }
        let dev = embeds.device();
        let (cos, sin) = self.mrope(positions, b, n, dev)?;
        let mask = padded_causal_mask(pads, cache.len, n, DType::F32, dev)?;
        let mut x = embeds.to_dtype(self.dtype)?;
        for (layer, kv) in self.layers.iter().zip(cache.kvs.iter_mut()) {
            x = layer.forward(&x, &cos, &sin, &mask, kv)?;
        }
        cache.len += n;
        let last = self.norm.forward(&x.i((.., n - 1..n, ..))?)?;
        Ok(dense(&self.lm_head, &last)?.squeeze(1)?.to_dtype(DType::F32)?)
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
