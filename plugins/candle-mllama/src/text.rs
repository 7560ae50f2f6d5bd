//! The Llama 3 text model of Mllama (`MllamaTextModel` + `lm_head`): self-attention decoder
//! layers (RMSNorm, grouped-query attention with Llama 3 RoPE, SiLU MLP) and, at
//! `cross_attention_layers`, gated cross-attention layers:
//!
//! - queries from the text, each head RMS-normed (`q_norm`); keys and values from the image's
//!   cross-attention states, keys RMS-normed per head (`k_norm`). The keys and values are
//!   computed once per request, at prefill, and read by every decode step ([`CrossKv`]).
//! - the cross-attention mask: a token sees the tiles of the images its `<|image|>` range gives it
//!   (`finfo.min` elsewhere); a token that sees no tile at all (the text before the first image,
//!   padding) gets an all-zero mask row, so it attends to every image token uniformly, as
//!   transformers does, and `full_text_row_masked_out_mask` zeroes its MLP output (not its
//!   attention output).
//! - `x + tanh(cross_attn_attn_gate) · attention`, then `x + tanh(cross_attn_mlp_gate) · row mask ·
//!   MLP`.
//!
//! Without images the cross-attention layers are skipped, as transformers skips them when there
//! are no cross-attention states and nothing cached. The KV cache and left padding come from
//! [`vlm_core::kv`]; positions count from each row's first real token.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear, RmsNorm, VarBuilder};
use vlm_core::attention::attention;
use vlm_core::kernels::dense;
use vlm_core::kv::{Cache, check_context, held_positions, padded_causal_mask};
use vlm_core::layers::{self, DecoderLayer, DecoderShape, GatedMlp, last_logits, rms_norm};
use vlm_core::precision::linear;
use vlm_core::weights::need;
use vlm_core::{ModelError, Result};

use crate::config::TextConfig;

/// A self-attention layer's sizes (no biases); the cross-attention layers' MLP is the same.
fn layer_shape(c: &TextConfig) -> DecoderShape<'_> {
    let heads = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    DecoderShape::new(c.hidden_size, c.intermediate_size, heads, c.rms_norm_eps, &c.hidden_act)
}

/// One cross-attention layer's keys and values for a batch: (b, kv heads, K, head_dim) each.
/// Not repeated per query head: K is 6,404 image tokens per image, and the query heads of a kv
/// head are folded into the query rows instead (see [`CrossAttentionLayer::forward`]).
#[derive(Clone)]
pub struct CrossKv {
    k: Tensor,
    v: Tensor,
}

struct CrossAttentionLayer {
    ln1: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    attn_gate: f64,
    ln2: RmsNorm,
    mlp: GatedMlp,
    mlp_gate: f64,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

fn gate(vb: &VarBuilder, name: &str) -> Result<f64> {
    need(vb, name)?;
    let g: Vec<f32> = vb.get(1, name)?.to_dtype(DType::F32)?.to_vec1()?;
    Ok((g[0] as f64).tanh())
}

impl CrossAttentionLayer {
    fn load(vb: VarBuilder, c: &TextConfig) -> Result<Self> {
        let (h, hd) = (c.hidden_size, c.head_dim);
        let a = vb.pp("cross_attn");
        Ok(Self {
            ln1: rms_norm(vb.pp("input_layernorm"), h, c.rms_norm_eps)?,
            q: linear(a.pp("q_proj"), h, c.num_attention_heads * hd, false)?,
            k: linear(a.pp("k_proj"), h, c.num_key_value_heads * hd, false)?,
            v: linear(a.pp("v_proj"), h, c.num_key_value_heads * hd, false)?,
            o: linear(a.pp("o_proj"), c.num_attention_heads * hd, h, false)?,
            q_norm: rms_norm(a.pp("q_norm"), hd, c.rms_norm_eps)?,
            k_norm: rms_norm(a.pp("k_norm"), hd, c.rms_norm_eps)?,
            attn_gate: gate(&vb, "cross_attn_attn_gate")?,
            ln2: rms_norm(vb.pp("post_attention_layernorm"), h, c.rms_norm_eps)?,
            mlp: GatedMlp::load(vb.pp("mlp"), &layer_shape(c))?,
            mlp_gate: gate(&vb, "cross_attn_mlp_gate")?,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: hd,
        })
    }

    /// Keys and values of `states` (b, K, hidden).
    fn cross_kv(&self, states: &Tensor) -> Result<CrossKv> {
        let (b, n, _) = states.dims3()?;
        let split = |t: Tensor| t.reshape((b, n, self.kv_heads, self.head_dim))?.transpose(1, 2)?.contiguous();
        let k = self.k_norm.forward(&split(dense(&self.k, states)?)?)?;
        let v = split(dense(&self.v, states)?)?;
        Ok(CrossKv { k, v })
    }

    /// `mask` (b, 1, n, K) additive; `rows` (b, n, 1) the full-text-row mask. Grouped-query
    /// attention without repeating the keys: query head `g·rep + r` reads kv head `g`, so the
    /// queries (b, heads, n, d) are viewed as (b, kv heads, rep·n, d) and the mask repeated `rep`
    /// times along the query rows: the same products as `repeat_kv`.
    fn forward(&self, x: &Tensor, kv: &CrossKv, mask: &Tensor, rows: &Tensor) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let h = self.ln1.forward(x)?;
        let q = dense(&self.q, &h)?.reshape((b, n, self.heads, self.head_dim))?.transpose(1, 2)?.contiguous()?;
        let q = self.q_norm.forward(&q)?;
        let rep = self.heads / self.kv_heads;
        let q = q.reshape((b, self.kv_heads, rep * n, self.head_dim))?;
        let mask = if rep == 1 { mask.clone() } else { Tensor::cat(&vec![mask; rep], 2)? };
        let y = attention(&q, &kv.k, &kv.v, Some(&mask), (self.head_dim as f64).powf(-0.5))?;
        let y = y.reshape((b, self.heads, n, self.head_dim))?;
        let y = dense(&self.o, &y.transpose(1, 2)?.reshape((b, n, self.heads * self.head_dim))?)?;
        let x = (x + (y * self.attn_gate)?)?;
        let m = self.mlp.forward(&self.ln2.forward(&x)?)?.broadcast_mul(&rows.to_dtype(x.dtype())?)?;
        Ok((&x + (m * self.mlp_gate)?)?)
    }
}

enum Layer {
    SelfAttention(DecoderLayer),
    CrossAttention(CrossAttentionLayer),
}

/// The image side of a batch: every row's cross-attention keys and values per cross-attention
/// layer, and which image tokens each row's tokens see.
pub struct CrossContext {
    /// One per cross-attention layer, in layer order.
    pub kvs: Vec<CrossKv>,
}

/// `MllamaTextModel` plus `lm_head`.
pub struct TextModel {
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    inv_freq: Vec<f32>,
    max_positions: usize,
    /// The dtype activations run in ([`vlm_core::precision::compute_dtype`]).
    dtype: DType,
    self_layers: usize,
}

impl TextModel {
    /// `model` holds `embed_tokens`, `layers.*`, `norm`; `lm_head` the output projection; both in
    /// the run's dtype, `dtype` the compute dtype.
    pub fn load(model: VarBuilder, lm_head: VarBuilder, c: &TextConfig, dtype: DType) -> Result<Self> {
        need(&model, "embed_tokens.weight")?;
        // vocab_size + 8 rows: the image token and 7 reserved ones past the text vocabulary.
        let rows = model.get_unchecked_dtype("embed_tokens.weight", model.dtype())?.dim(0)?;
        if rows < c.vocab_size {
            return Err(ModelError::Load(format!("embed_tokens has {rows} rows, vocab_size is {}", c.vocab_size)));
        }
        let embed = candle_nn::embedding(rows, c.hidden_size, model.pp("embed_tokens"))?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let vb = model.pp(format!("layers.{i}"));
                Ok(if c.cross_attention_layers.contains(&i) {
                    Layer::CrossAttention(CrossAttentionLayer::load(vb, c)?)
                } else {
                    Layer::SelfAttention(DecoderLayer::load(vb, &layer_shape(c))?)
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = rms_norm(model.pp("norm"), c.hidden_size, c.rms_norm_eps)?;
        let lm_head = layers::lm_head(lm_head, embed.embeddings(), c.hidden_size, c.vocab_size, c.tie_word_embeddings)?;
        let self_layers = layers.iter().filter(|l| matches!(l, Layer::SelfAttention(_))).count();
        Ok(Self {
            embed,
            layers,
            norm,
            lm_head,
            inv_freq: c.rope.inv_freq(c.head_dim),
            max_positions: c.max_position_embeddings,
            dtype,
            self_layers,
        })
    }

    pub fn embed(&self, ids: &[u32], device: &Device) -> candle_core::Result<Tensor> {
        self.embed.forward(&Tensor::new(ids, device)?)?.to_dtype(self.dtype)
    }

    /// A KV cache for the self-attention layers.
    pub fn new_cache(&self) -> Cache {
        Cache::new(self.self_layers)
    }

    /// The cross-attention keys and values of `states` (b, K, hidden), once per batch.
    pub fn cross_context(&self, states: &Tensor) -> Result<CrossContext> {
        let states = states.to_dtype(self.dtype)?;
        let kvs = self
            .layers
            .iter()
            .filter_map(|l| match l {
                Layer::CrossAttention(c) => Some(c.cross_kv(&states)),
                Layer::SelfAttention(_) => None,
            })
            .collect::<Result<_>>()?;
        Ok(CrossContext { kvs })
    }

    /// RoPE cos and sin (b, n, head_dim / 2) for `positions` (b·n, row-major), in f32 as
    /// transformers computes them, then in the model's dtype.
    fn rope(&self, positions: &[u32], b: usize, n: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut angles = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            angles.extend(self.inv_freq.iter().map(|f| p as f32 * f));
        }
        let a = Tensor::from_vec(angles, (b, n, half), device)?;
        Ok((a.cos()?.to_dtype(self.dtype)?, a.sin()?.to_dtype(self.dtype)?))
    }

    /// Runs a left-padded batch `embeds` (b, n, hidden) after what `cache` holds: row `r` has
    /// `pads[r]` padding positions at the start of the whole sequence. With images, `cross` holds
    /// the batch's cross-attention keys and values, `cross_mask` (b, 1, n, K) and `rows`
    /// (b, n, 1) the new positions' masks. Returns each row's last logits, (b, vocab), f32.
    pub fn forward(
        &self,
        embeds: &Tensor,
        pads: &[usize],
        cache: &mut Cache,
        cross: Option<(&CrossContext, &Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        let (b, n, _) = embeds.dims3()?;
        let start = cache.len;
        check_context(pads, b, start, n, self.max_positions)?;
        let dev = embeds.device();
        let positions = held_positions(pads, start, n, self.max_positions);
        let (cos, sin) = self.rope(&positions, b, n, dev)?;
        let mask = padded_causal_mask(pads, start, n, DType::F32, dev)?;
        let mut x = embeds.to_dtype(self.dtype)?;
        let (mut si, mut ci) = (0, 0);
        for layer in &self.layers {
            match layer {
                Layer::SelfAttention(l) => {
                    x = l.forward(&x, (&cos, &sin), &mask, &mut cache.kvs[si])?;
                    si += 1;
                }
                Layer::CrossAttention(l) => {
                    if let Some((ctx, cmask, rows)) = cross {
                        let kv = ctx
                            .kvs
                            .get(ci)
                            .ok_or_else(|| ModelError::Input("cross-attention states missing".into()))?;
                        x = l.forward(&x, kv, cmask, rows)?;
                    }
                    ci += 1;
                }
            }
        }
        cache.len += n;
        Ok(last_logits(&self.norm, &self.lm_head, &x)?)
    }
}
