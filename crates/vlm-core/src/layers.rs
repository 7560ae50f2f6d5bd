//! The decoder pieces the text models share, each the same math as transformers' and loaded with
//! a missing weight named: RMSNorm ([`rms_norm`]) and LayerNorm ([`layer_norm`], the vision towers'), the gated MLP (`down(act(gate(x)) · up(x))`,
//! [`GatedMlp`]), grouped-query self-attention with RoPE over the KV cache ([`SelfAttention`]),
//! and the pre-norm layer made of them ([`DecoderLayer`]), all sized by a [`DecoderShape`]; the
//! default rotary frequencies ([`default_inv_freq`]), the output projection, tied or not
//! ([`lm_head`]), and the last position's logits ([`last_logits`]).

use candle_core::{DType, IndexOp, Module, Tensor};
use candle_nn::{LayerNorm, Linear, RmsNorm, VarBuilder};

use crate::attention::{attention, repeat_kv};
use crate::kernels::{act, dense};
use crate::kv::KvBuffer;
use crate::precision::{compute, linear};
use crate::weights::need;
use crate::{ModelError, Result};

/// The sizes and options of a decoder layer.
#[derive(Debug, Clone, Copy)]
pub struct DecoderShape<'a> {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    /// Biases of the q, k and v projections, of the o projection, of the MLP's projections.
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// The MLP's activation, as [`act`] names it.
    pub act: &'a str,
}

impl<'a> DecoderShape<'a> {
    /// A layer of `hidden` values, an MLP of `intermediate`, `(heads, kv heads, head dim)`
    /// attention heads, no biases.
    pub fn new(
        hidden: usize,
        intermediate: usize,
        heads: (usize, usize, usize),
        rms_norm_eps: f64,
        act: &'a str,
    ) -> Self {
        let (heads, kv_heads, head_dim) = heads;
        Self {
            hidden,
            intermediate,
            heads,
            kv_heads,
            head_dim,
            rms_norm_eps,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            act,
        }
    }
}

/// RoPE's cos and sin tables for the positions being run, (b, n, head dim / 2) or (n, head dim / 2).
pub type Rope<'a> = (&'a Tensor, &'a Tensor);

/// An RMSNorm over `dim` values from `vb`'s `weight` (kept in the compute dtype).
pub fn rms_norm(vb: VarBuilder, dim: usize, eps: f64) -> Result<RmsNorm> {
    need(&vb, "weight")?;
    Ok(candle_nn::rms_norm(dim, eps, compute(&vb))?)
}

/// A LayerNorm over `dim` values from `vb`'s `weight` and `bias` (kept in the compute dtype).
pub fn layer_norm(vb: VarBuilder, dim: usize, eps: f64) -> Result<LayerNorm> {
    need(&vb, "weight")?;
    Ok(candle_nn::layer_norm(dim, eps, compute(&vb))?)
}

/// `down(act(gate(x)) · up(x))` (LlamaMLP, Qwen2MLP).
pub struct GatedMlp {
    gate: Linear,
    up: Linear,
    down: Linear,
    act: String,
}

impl GatedMlp {
    /// `gate_proj`, `up_proj` (hidden → intermediate) and `down_proj` from `vb`.
    pub fn load(vb: VarBuilder, s: &DecoderShape) -> Result<Self> {
        let (h, i, bias) = (s.hidden, s.intermediate, s.mlp_bias);
        Ok(Self {
            gate: linear(vb.pp("gate_proj"), h, i, bias)?,
            up: linear(vb.pp("up_proj"), h, i, bias)?,
            down: linear(vb.pp("down_proj"), i, h, bias)?,
            act: s.act.to_owned(),
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        dense(&self.down, &(act(&self.act, &dense(&self.gate, x)?)? * dense(&self.up, x)?)?)
    }
}

/// Grouped-query self-attention with rotary embeddings, its keys and values appended to a
/// [`KvBuffer`] (Qwen2's and Mllama's self-attention layers).
pub struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    /// `q_proj`, `k_proj`, `v_proj` and `o_proj` from `vb`.
    pub fn load(vb: VarBuilder, s: &DecoderShape) -> Result<Self> {
        let (h, hd) = (s.hidden, s.head_dim);
        Ok(Self {
            q: linear(vb.pp("q_proj"), h, s.heads * hd, s.qkv_bias)?,
            k: linear(vb.pp("k_proj"), h, s.kv_heads * hd, s.qkv_bias)?,
            v: linear(vb.pp("v_proj"), h, s.kv_heads * hd, s.qkv_bias)?,
            o: linear(vb.pp("o_proj"), s.heads * hd, h, s.o_bias)?,
            heads: s.heads,
            kv_heads: s.kv_heads,
            head_dim: hd,
        })
    }

    /// (heads, kv heads, head dim).
    pub fn heads(&self) -> (usize, usize, usize) {
        (self.heads, self.kv_heads, self.head_dim)
    }

    /// The queries of `x` (b, n, hidden), (b, heads, n, head dim), and the keys and values of
    /// the cache's earlier positions and `x`'s, (b, kv heads, m, head dim), once `x`'s are
    /// appended to `kv`; `rope` on queries and keys.
    pub fn qkv(
        &self,
        x: &Tensor,
        (cos, sin): Rope,
        kv: &mut KvBuffer,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (b, n, _) = x.dims3()?;
        let split = |t: Tensor, h: usize| t.reshape((b, n, h, self.head_dim))?.transpose(1, 2)?.contiguous();
        let q = split(dense(&self.q, x)?, self.heads)?;
        let k = split(dense(&self.k, x)?, self.kv_heads)?;
        let v = split(dense(&self.v, x)?, self.kv_heads)?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        let (k, v) = kv.append(&k, &v)?;
        Ok((q, k, v))
    }

    /// `o_proj` of the heads' outputs `y` (b, heads, n, head dim): (b, n, hidden).
    pub fn out(&self, y: &Tensor) -> candle_core::Result<Tensor> {
        let (b, _, n, _) = y.dims4()?;
        dense(&self.o, &y.transpose(1, 2)?.reshape((b, n, self.heads * self.head_dim))?)
    }

    /// `x` (b, n, hidden) attending to the cache's earlier positions and itself: `rope` on
    /// queries and keys, the additive `mask`, scale `1/√head_dim`.
    pub fn forward(&self, x: &Tensor, rope: Rope, mask: &Tensor, kv: &mut KvBuffer) -> candle_core::Result<Tensor> {
        let (q, k, v) = self.qkv(x, rope, kv)?;
        let rep = self.heads / self.kv_heads;
        let (k, v) = (repeat_kv(k, rep)?, repeat_kv(v, rep)?);
        let y = attention(&q, &k, &v, Some(mask), (self.head_dim as f64).powf(-0.5))?;
        self.out(&y)
    }
}

/// A pre-norm decoder layer: `x + attn(ln1(x))`, then `h + mlp(ln2(h))`.
pub struct DecoderLayer {
    ln1: RmsNorm,
    attn: SelfAttention,
    ln2: RmsNorm,
    mlp: GatedMlp,
}

impl DecoderLayer {
    /// `input_layernorm`, `self_attn`, `post_attention_layernorm` and `mlp` from `vb`.
    pub fn load(vb: VarBuilder, s: &DecoderShape) -> Result<Self> {
        Ok(Self {
            ln1: rms_norm(vb.pp("input_layernorm"), s.hidden, s.rms_norm_eps)?,
            attn: SelfAttention::load(vb.pp("self_attn"), s)?,
            ln2: rms_norm(vb.pp("post_attention_layernorm"), s.hidden, s.rms_norm_eps)?,
            mlp: GatedMlp::load(vb.pp("mlp"), s)?,
        })
    }

    pub fn forward(&self, x: &Tensor, rope: Rope, mask: &Tensor, kv: &mut KvBuffer) -> candle_core::Result<Tensor> {
        let h = (x + self.attn.forward(&self.ln1.forward(x)?, rope, mask, kv)?)?;
        &h + self.mlp.forward(&self.ln2.forward(&h)?)?
    }
}

/// The default rope's inverse frequencies, `1 / theta^(arange(0, head_dim, 2) / head_dim)`, in
/// f32 as transformers computes them.
pub fn default_inv_freq(theta: f64, head_dim: usize) -> Vec<f32> {
    (0..head_dim).step_by(2).map(|i| 1.0 / (theta as f32).powf(i as f32 / head_dim as f32)).collect()
}

/// The output projection hidden → vocab: `vb`'s `weight`, else the first `vocab` rows of the
/// token embeddings `embeddings` when the config ties them.
pub fn lm_head(vb: VarBuilder, embeddings: &Tensor, hidden: usize, vocab: usize, tied: bool) -> Result<Linear> {
    if vb.contains_tensor("weight") {
        linear(vb, hidden, vocab, false)
    } else if tied {
        Ok(Linear::new(embeddings.narrow(0, 0, vocab)?, None))
    } else {
        Err(ModelError::Load("missing weight lm_head.weight (and tie_word_embeddings is false)".into()))
    }
}

/// Each row's logits at its last position, (b, vocab), f32: `lm_head(norm(x[:, -1]))` for `x`
/// (b, n, hidden).
pub fn last_logits(norm: &RmsNorm, lm_head: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
    let n = x.dim(1)?;
    let last = norm.forward(&x.i((.., n - 1..n, ..))?)?;
    dense(lm_head, &last)?.squeeze(1)?.to_dtype(DType::F32)
}
