//! The Llama text model on candle (`LlamaModel` + `lm_head` in transformers' `modeling_llama.py`):
//! grouped-query attention with RoPE, RMSNorm, SiLU MLP, the KV cache from `vlm_core::kv`, one
//! prompt or a left-padded batch at a time.
//!
//! Our own rather than candle-transformers' llama: that one derives head_dim from hidden/heads,
//! has no attention or MLP bias, and panics on a missing weight.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear, RmsNorm, VarBuilder};
use vlm_core::attention::repeat_kv;
use vlm_core::kv::{Cache, KvBuffer, check_context, held_positions, padded_causal_mask};
use vlm_core::layers::{self, DecoderShape, GatedMlp, Rope, SelfAttention, default_inv_freq, last_logits, rms_norm};
use vlm_core::weights::need;
use vlm_core::{ModelError, Result};

use crate::config::TextConfig;

/// Llama's self-attention: [`SelfAttention`]'s projections and RoPE, then the scores in one f32
/// product, with no mask for one decode step.
struct Attention(SelfAttention);

impl Attention {
    fn forward(&self, x: &Tensor, rope: Rope, mask: Option<&Tensor>, kv: &mut KvBuffer) -> candle_core::Result<Tensor> {
        let (q, k, v) = self.0.qkv(x, rope, kv)?;
        let (heads, kv_heads, head_dim) = self.0.heads();
        let rep = heads / kv_heads;
        let (k, v) = if rep == 1 {
            // Views into the cache's buffers: the products read them in place.
            (k, v)
        } else {
            (repeat_kv(k, rep)?.contiguous()?, repeat_kv(v, rep)?.contiguous()?)
        };
        let in_dtype = q.dtype();
        let (q, k, v) = (q.to_dtype(DType::F32)?, k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?);
        let mut att = (q.matmul(&k.t()?)? * (head_dim as f64).powf(-0.5))?;
        if let Some(m) = mask {
            att = att.broadcast_add(m)?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?.to_dtype(in_dtype)?;
        self.0.out(&y)
    }
}

struct DecoderLayer {
    ln1: RmsNorm,
    attn: Attention,
    ln2: RmsNorm,
    mlp: GatedMlp,
}

impl DecoderLayer {
    fn load(vb: VarBuilder, c: &TextConfig) -> Result<Self> {
        let heads = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let shape = DecoderShape {
            qkv_bias: c.attention_bias,
            o_bias: c.attention_bias,
            mlp_bias: c.mlp_bias,
            ..DecoderShape::new(c.hidden_size, c.intermediate_size, heads, c.rms_norm_eps, &c.hidden_act)
        };
        let (h, eps) = (c.hidden_size, c.rms_norm_eps);
        Ok(Self {
            ln1: rms_norm(vb.pp("input_layernorm"), h, eps)?,
            attn: Attention(SelfAttention::load(vb.pp("self_attn"), &shape)?),
            ln2: rms_norm(vb.pp("post_attention_layernorm"), h, eps)?,
            mlp: GatedMlp::load(vb.pp("mlp"), &shape)?,
        })
    }

    fn forward(&self, x: &Tensor, rope: Rope, mask: Option<&Tensor>, kv: &mut KvBuffer) -> candle_core::Result<Tensor> {
        let h = (x + self.attn.forward(&self.ln1.forward(x)?, rope, mask, kv)?)?;
        &h + self.mlp.forward(&self.ln2.forward(&h)?)?
    }
}

pub struct LlamaModel {
    embed: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
    max_positions: usize,
    /// The dtype activations run in ([`vlm_core::precision::compute_dtype`]).
    dtype: DType,
}

impl LlamaModel {
    /// `model` holds `embed_tokens`, `layers.*`, `norm`; `lm_head` the output projection; both in
    /// the run's dtype, `dtype` the compute dtype.
    pub fn load(model: VarBuilder, lm_head: VarBuilder, c: &TextConfig, dtype: DType, device: &Device) -> Result<Self> {
        need(&model, "embed_tokens.weight")?;
        let embed = candle_nn::embedding(c.vocab_size, c.hidden_size, model.pp("embed_tokens"))?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| DecoderLayer::load(model.pp(format!("layers.{i}")), c))
            .collect::<Result<_>>()?;
        let norm = rms_norm(model.pp("norm"), c.hidden_size, c.rms_norm_eps)?;
        let lm_head = layers::lm_head(lm_head, embed.embeddings(), c.hidden_size, c.vocab_size, c.tie_word_embeddings)?;
        // RoPE tables as transformers computes them: inv_freq in f32, position * inv_freq in f32.
        let hd = c.head_dim;
        let inv = default_inv_freq(c.rope_theta, hd);
        let n = c.max_position_embeddings;
        let mut freqs = Vec::with_capacity(n * inv.len());
        for p in 0..n {
            for &f in &inv {
                freqs.push(p as f32 * f);
            }
        }
        let freqs = Tensor::from_vec(freqs, (n, hd / 2), device)?;
        let cos = freqs.cos()?.to_dtype(dtype)?;
        let sin = freqs.sin()?.to_dtype(dtype)?;
        Ok(Self { embed, layers, norm, lm_head, cos, sin, max_positions: n, dtype })
    }

    /// Token embeddings in the compute dtype.
    pub fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        self.embed.forward(ids)?.to_dtype(self.dtype)
    }

    pub fn new_cache(&self) -> Cache {
        Cache::new(self.layers.len())
    }

    /// Runs `embeds` (1, n, hidden) after what the cache holds; returns the last position's
    /// logits in f32, shape (vocab,).
    pub fn forward_embeds(&self, embeds: &Tensor, cache: &mut Cache) -> Result<Tensor> {
        let (_, n, _) = embeds.dims3()?;
        let start = cache.len;
        if start + n > self.max_positions {
            return Err(ModelError::Input(format!(
                "the sequence needs {} positions, more than the model's {} (max_position_embeddings)",
                start + n,
                self.max_positions
            )));
        }
        let cos = self.cos.narrow(0, start, n)?;
        let sin = self.sin.narrow(0, start, n)?;
        let mask = if n > 1 {
            let total = start + n;
            let m: Vec<f32> = (0..n)
                .flat_map(|i| (0..total).map(move |j| if j > start + i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            Some(Tensor::from_vec(m, (1, 1, n, total), embeds.device())?)
        } else {
            None
        };
        let mut x = embeds.clone();
        for (layer, kv) in self.layers.iter().zip(cache.kvs.iter_mut()) {
            x = layer.forward(&x, (&cos, &sin), mask.as_ref(), kv)?;
        }
        cache.len += n;
        Ok(last_logits(&self.norm, &self.lm_head, &x)?.flatten_all()?)
    }

    /// Runs a left-padded batch `embeds` (b, n, hidden) after what the cache holds. Row `r` has
    /// `pads[r]` padding positions at the start of the whole sequence; they are masked out and the
    /// row's positions count from its first real token, as transformers does for left padding
    /// (`position_ids = cumsum(attention_mask) - 1`). Returns each row's last logits, (b, vocab), f32.
    pub fn forward_batch(&self, embeds: &Tensor, pads: &[usize], cache: &mut Cache) -> Result<Tensor> {
        let (b, n, _) = embeds.dims3()?;
        let start = cache.len;
        check_context(pads, b, start, n, self.max_positions)?;
        let dev = embeds.device();
        let positions = held_positions(pads, start, n, self.max_positions);
        let pos = Tensor::from_vec(positions, b * n, dev)?;
        let half = self.cos.dim(1)?;
        let cos = self.cos.index_select(&pos, 0)?.reshape((b, n, half))?;
        let sin = self.sin.index_select(&pos, 0)?.reshape((b, n, half))?;
        let mask = padded_causal_mask(pads, start, n, DType::F32, dev)?;
        let mut x = embeds.clone();
        for (layer, kv) in self.layers.iter().zip(cache.kvs.iter_mut()) {
            x = layer.forward(&x, (&cos, &sin), Some(&mask), kv)?;
        }
        cache.len += n;
        Ok(last_logits(&self.norm, &self.lm_head, &x)?)
    }
}
