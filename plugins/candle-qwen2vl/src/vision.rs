//! The Qwen2-VL vision tower, `Qwen2VisionTransformerPretrainedModel` of transformers'
//! `modeling_qwen2_vl.py`:
//!
//! - `PatchEmbed`: a Conv3d whose kernel equals its stride over each flattened patch row, so a
//!   linear layer (no bias) with the kernel flattened to (embed, c·t·p·p).
//! - 2-D rotary position embedding: each patch's (row, column) in the 2x2 merge-block order the
//!   processor cut them in; `VisionRotaryEmbedding(head_dim / 2)` with theta 10000; the first half
//!   of the rotary dims rotate by the row, the second by the column; applied to q and k in f32.
//! - `depth` blocks: LayerNorm (eps 1e-6), full attention within each image only (`cu_seqlens`:
//!   patches of different images never see each other), LayerNorm, MLP with `hidden_act`.
//! - `PatchMerger`: LayerNorm `ln_q`, each 4 consecutive patches (one merge block) concatenated,
//!   Linear, exact GELU, Linear to the text model's hidden size.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use vlm_core::attention::attention;
use vlm_core::kernels::{act, dense};
use vlm_core::layers;
use vlm_core::precision::{compute, linear};
use vlm_core::weights::need;
use vlm_core::{ModelError, Result};

use crate::config::VisionConfig;

/// The vision LayerNorms' epsilon (hard-coded in transformers).
const LN_EPS: f64 = 1e-6;

fn layer_norm(vb: VarBuilder, dim: usize) -> Result<LayerNorm> {
    layers::layer_norm(vb, dim, LN_EPS)
}

struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    act: String,
}

impl Block {
    fn load(vb: VarBuilder, c: &VisionConfig) -> Result<Self> {
        let d = c.embed_dim;
        Ok(Self {
            norm1: layer_norm(vb.pp("norm1"), d)?,
            qkv: linear(vb.pp("attn.qkv"), d, 3 * d, true)?,
            proj: linear(vb.pp("attn.proj"), d, d, true)?,
            norm2: layer_norm(vb.pp("norm2"), d)?,
            fc1: linear(vb.pp("mlp.fc1"), d, c.mlp_hidden_dim(), true)?,
            fc2: linear(vb.pp("mlp.fc2"), c.mlp_hidden_dim(), d, true)?,
            heads: c.num_heads,
            act: c.hidden_act.clone(),
        })
    }

    /// `x` (patches, embed); `cos`/`sin` (patches, head_dim / 2) in f32; `spans` each image's
    /// (first patch, patches).
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, spans: &[(usize, usize)]) -> Result<Tensor> {
        let (n, d) = x.dims2()?;
        let hd = d / self.heads;
        let qkv = dense(&self.qkv, &self.norm1.forward(x)?)?.reshape((n, 3, self.heads, hd))?;
        // (1, heads, n, hd) each, rotated in f32 as apply_rotary_pos_emb_vision does.
        let part = |i: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(1, i, 1)?.squeeze(1)?.transpose(0, 1)?.unsqueeze(0)?.contiguous()
        };
        let dtype = x.dtype();
        let q = candle_nn::rotary_emb::rope(&part(0)?.to_dtype(DType::F32)?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&part(1)?.to_dtype(DType::F32)?, cos, sin)?;
        let v = part(2)?.to_dtype(DType::F32)?;
        // Back to the model's dtype after rotating, as transformers does; attention in f32.
        let (q, k) = (q.to_dtype(dtype)?.to_dtype(DType::F32)?, k.to_dtype(dtype)?.to_dtype(DType::F32)?);
        let scale = (hd as f64).powf(-0.5);
        let mut outs = Vec::with_capacity(spans.len());
        for &(start, len) in spans {
            let (q, k, v) = (q.narrow(2, start, len)?, k.narrow(2, start, len)?, v.narrow(2, start, len)?);
            outs.push(attention(&q, &k, &v, None, scale)?);
        }
        let y = Tensor::cat(&outs, 2)?.to_dtype(dtype)?; // (1, heads, n, hd)
        let y = y.squeeze(0)?.transpose(0, 1)?.reshape((n, d))?;
        let h = (x + dense(&self.proj, &y)?)?;
        let m = dense(&self.fc2, &act(&self.act, &dense(&self.fc1, &self.norm2.forward(&h)?)?)?)?;
        Ok((h + m)?)
    }
}

/// `Qwen2VisionTransformerPretrainedModel`.
pub struct VisionTower {
    patch_embed: Linear,
    blocks: Vec<Block>,
    ln_q: LayerNorm,
    mlp0: Linear,
    mlp2: Linear,
    merge: usize,
    /// `VisionRotaryEmbedding`'s inverse frequencies (head_dim / 4 of them).
    inv_freq: Vec<f32>,
    embed_dim: usize,
}

impl VisionTower {
    /// `vb` is the tower's prefix (`visual` or `model.visual`).
    pub fn load(vb: VarBuilder, c: &VisionConfig) -> Result<Self> {
        // The Conv3d kernel in the compute dtype (f32 on the CPU), as every non-linear weight.
        let pe = compute(&vb.pp("patch_embed.proj"));
        need(&pe, "weight")?;
        let w = pe.get((c.embed_dim, c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size), "weight")?;
        let patch_embed = Linear::new(w.reshape((c.embed_dim, c.patch_dim()))?, None);
        let blocks = (0..c.depth).map(|i| Block::load(vb.pp(format!("blocks.{i}")), c)).collect::<Result<Vec<_>>>()?;
        let m = vb.pp("merger");
        let merged = c.embed_dim * c.spatial_merge_size * c.spatial_merge_size;
        let ln_q = layer_norm(m.pp("ln_q"), c.embed_dim)?;
        let mlp0 = linear(m.pp("mlp.0"), merged, merged, true)?;
        let mlp2 = linear(m.pp("mlp.2"), merged, c.hidden_size, true)?;
        // VisionRotaryEmbedding(dim = head_dim / 2): 1 / theta^(arange(0, dim, 2) / dim), in f32
        // (theta 10000).
        let dim = c.head_dim() / 2;
        let theta = c.rope_theta as f32;
        let inv_freq = (0..dim).step_by(2).map(|i| 1.0 / theta.powf(i as f32 / dim as f32)).collect();
        Ok(Self {
            patch_embed,
            blocks,
            ln_q,
            mlp0,
            mlp2,
            merge: c.spatial_merge_size,
            inv_freq,
            embed_dim: c.embed_dim,
        })
    }

    /// Each patch's (row, column) in the processor's merge-block order (`rot_pos_emb`'s
    /// hpos_ids / wpos_ids), for every frame.
    pub fn patch_positions(&self, grid: [usize; 3]) -> Vec<(usize, usize)> {
        let [t, h, w] = grid;
        let m = self.merge;
        let mut out = Vec::with_capacity(t * h * w);
        for _ in 0..t {
            for bh in 0..h / m {
                for bw in 0..w / m {
                    for mh in 0..m {
                        for mw in 0..m {
                            out.push((bh * m + mh, bw * m + mw));
                        }
                    }
                }
            }
        }
        out
    }

    /// cos and sin (patches, head_dim / 2), f32: per patch [row · inv_freq, column · inv_freq].
    fn rotary(&self, grids: &[[usize; 3]], device: &Device) -> Result<(Tensor, Tensor)> {
        let q = self.inv_freq.len();
        let mut angles = Vec::new();
        for &g in grids {
            for (r, c) in self.patch_positions(g) {
                angles.extend(self.inv_freq.iter().map(|f| r as f32 * f));
                angles.extend(self.inv_freq.iter().map(|f| c as f32 * f));
            }
        }
        let n = angles.len() / (2 * q);
        let a = Tensor::from_vec(angles, (n, 2 * q), device)?;
        Ok((a.cos()?, a.sin()?))
    }

    /// The merged features of several images' patch rows, concatenated in order:
    /// `pixel_values` (Σ t·h·w, c·t·p·p) → (Σ t·h·w / merge², text hidden).
    pub fn forward(&self, pixel_values: &Tensor, grids: &[[usize; 3]]) -> Result<Tensor> {
        let n: usize = grids.iter().map(|g| g.iter().product::<usize>()).sum();
        if pixel_values.dim(0)? != n {
            return Err(ModelError::Input(format!(
                "the pixel values hold {} patches, the grids {grids:?} need {n}",
                pixel_values.dim(0)?
            )));
        }
        let dtype = self.patch_embed.weight().dtype();
        let mut x = dense(&self.patch_embed, &pixel_values.to_dtype(dtype)?)?;
        let (cos, sin) = self.rotary(grids, pixel_values.device())?;
        // cu_seqlens: one span per frame of each image.
        let mut spans = Vec::new();
        let mut start = 0;
        for &[t, h, w] in grids {
            for _ in 0..t {
                spans.push((start, h * w));
                start += h * w;
            }
        }
        for b in &self.blocks {
            x = b.forward(&x, &cos, &sin, &spans)?;
        }
        let group = self.embed_dim * self.merge * self.merge;
        let x = self.ln_q.forward(&x)?.reshape((n / (self.merge * self.merge), group))?;
        let x = dense(&self.mlp0, &x)?.gelu_erf()?;
        Ok(dense(&self.mlp2, &x)?)
    }
}
