//! `CLIPVisionModel` on candle, up to the hidden states LLaVA reads: patch embedding, class
//! token, positions, the pre-layernorm and the encoder layers (the post-layernorm is never used).
//!
//! Written against transformers' `modeling_clip.py` rather than candle-transformers' clip: candle's
//! `output_hidden_states` omits the embeddings output (so HF's feature layer -2 is off by one) and
//! hard-codes its LayerNorm eps.

use candle_core::{DType, Module, Tensor};
use candle_nn::{Conv2dConfig, LayerNorm, Linear, VarBuilder};
use vlm_core::Result;
use vlm_core::kernels::{act, dense};
use vlm_core::layers::layer_norm;
use vlm_core::precision::{compute, linear};
use vlm_core::weights::need;

use crate::config::VisionConfig;

struct ClipAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    head_dim: usize,
}

impl ClipAttention {
    fn load(vb: VarBuilder, c: &VisionConfig) -> Result<Self> {
        let h = c.hidden_size;
        Ok(Self {
            q: linear(vb.pp("q_proj"), h, h, true)?,
            k: linear(vb.pp("k_proj"), h, h, true)?,
            v: linear(vb.pp("v_proj"), h, h, true)?,
            o: linear(vb.pp("out_proj"), h, h, true)?,
            heads: c.num_attention_heads,
            head_dim: h / c.num_attention_heads,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, h) = x.dims3()?;
        let split = |t: Tensor| t.reshape((b, n, self.heads, self.head_dim))?.transpose(1, 2)?.contiguous();
        let q = split(dense(&self.q, x)?)?;
        let k = split(dense(&self.k, x)?)?;
        let v = split(dense(&self.v, x)?)?;
        let in_dtype = q.dtype();
        let (q, k, v) = (q.to_dtype(DType::F32)?, k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?);
        let scale = (self.head_dim as f64).powf(-0.5);
        let att = (q.matmul(&k.t()?)? * scale)?;
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?.to_dtype(in_dtype)?;
        let y = y.transpose(1, 2)?.reshape((b, n, h))?;
        dense(&self.o, &y)
    }
}

struct ClipLayer {
    ln1: LayerNorm,
    attn: ClipAttention,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: String,
}

impl ClipLayer {
    fn load(vb: VarBuilder, c: &VisionConfig) -> Result<Self> {
        Ok(Self {
            ln1: layer_norm(vb.pp("layer_norm1"), c.hidden_size, c.layer_norm_eps)?,
            attn: ClipAttention::load(vb.pp("self_attn"), c)?,
            ln2: layer_norm(vb.pp("layer_norm2"), c.hidden_size, c.layer_norm_eps)?,
            fc1: linear(vb.pp("mlp.fc1"), c.hidden_size, c.intermediate_size, true)?,
            fc2: linear(vb.pp("mlp.fc2"), c.intermediate_size, c.hidden_size, true)?,
            act: c.hidden_act.clone(),
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = (x + self.attn.forward(&self.ln1.forward(x)?)?)?;
        let m = dense(&self.fc2, &act(&self.act, &dense(&self.fc1, &self.ln2.forward(&h)?)?)?)?;
        h + m
    }
}

/// `CLIPVisionModel` up to the hidden states LLaVA reads (the post-layernorm is never used).
pub struct ClipVisionTower {
    patch: candle_nn::Conv2d,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_ln: LayerNorm,
    layers: Vec<ClipLayer>,
}

impl ClipVisionTower {
    /// `vb` in the run's dtype: the encoder layers' matrices stay in it; the patch convolution,
    /// class and position embeddings and the norms are read in the compute dtype.
    pub fn load(vb: VarBuilder, c: &VisionConfig, layers_needed: usize) -> Result<Self> {
        need(&vb, "embeddings.patch_embedding.weight")?;
        let cvb = compute(&vb);
        let patch = candle_nn::conv2d_no_bias(
            c.num_channels,
            c.hidden_size,
            c.patch_size,
            Conv2dConfig { stride: c.patch_size, ..Default::default() },
            cvb.pp("embeddings.patch_embedding"),
        )?;
        let class_embedding = cvb.get(c.hidden_size, "embeddings.class_embedding")?;
        let position_embedding = cvb.get((c.num_positions(), c.hidden_size), "embeddings.position_embedding.weight")?;
        let pre_ln = candle_nn::layer_norm(c.hidden_size, c.layer_norm_eps, cvb.pp("pre_layrnorm"))?;
        let layers = (0..layers_needed)
            .map(|i| ClipLayer::load(vb.pp(format!("encoder.layers.{i}")), c))
            .collect::<Result<_>>()?;
        Ok(Self { patch, class_embedding, position_embedding, pre_ln, layers })
    }

    /// transformers' `hidden_states` tuple, as far as the loaded layers go: index 0 is the
    /// pre-layernormed embeddings, index i the output of layer i.
    pub fn hidden_states(&self, pixel_values: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let b = pixel_values.dim(0)?;
        let patches = self.patch.forward(pixel_values)?.flatten_from(2)?.transpose(1, 2)?;
        let h = self.class_embedding.dim(0)?;
        let cls = self.class_embedding.reshape((1, 1, h))?.expand((b, 1, h))?.to_dtype(patches.dtype())?;
        let emb = Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&self.position_embedding.unsqueeze(0)?)?;
        let mut x = self.pre_ln.forward(&emb)?;
        let mut out = Vec::with_capacity(self.layers.len() + 1);
        out.push(x.clone());
        for l in &self.layers {
            x = l.forward(&x)?;
            out.push(x.clone());
        }
        Ok(out)
    }
}
