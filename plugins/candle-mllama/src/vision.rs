//! The Mllama vision encoder (`MllamaVisionModel` of transformers' `modeling_mllama.py`) and the
//! multi-modal projector, one image (its `max_num_tiles` tiles) at a time:
//!
//! 1. patch embedding: a Conv2d whose kernel equals its stride, so a linear layer (no bias) over
//!    each patch's (channel, row, column) values; patches row-major within each tile.
//! 2. pre-tile positional embedding: `embedding(aspect_ratio_id)` as one vector per tile, times
//!    `tanh(gate)`.
//! 3. the class embedding prepended to each tile; the gated positional embedding:
//!    `(1 - tanh(gate)) · embedding` for every tile plus `tanh(gate) · tile_embedding(id)` per tile.
//! 4. `layernorm_pre`, then each tile padded with zero patches to a multiple of 8; the attention
//!    mask over all tiles' patches as `_prepare_aspect_ratio_attention_mask` builds it: a patch is
//!    padding when its tile is masked by `aspect_ratio_mask` or it is one of the padding patches,
//!    and the additive mask is `finfo.min` exactly where BOTH the query and the key are padding
//!    (real patches see the padding ones; padding patches see only the real ones).
//! 5. the local transformer (`num_hidden_layers`), the hidden states `intermediate_layers_indices`
//!    names kept. Index `i` is layer `i`'s INPUT (0 = the embeddings after `layernorm_pre`, `n` = the
//!    last layer's output), as transformers 4.45-4.46 (the paper's era, what the reference harness
//!    ran) and Meta's code collect them; transformers 5.24 takes layer `i`'s output instead, one
//!    layer later (it has regressed on this before: huggingface/transformers#39785, #40083), so the
//!    fixture script records the goldens with the 4.45 collection;
//!    `layernorm_post`, the post-tile positional embedding, the global transformer
//!    (`num_global_layers`, attention and MLP each scaled by `tanh` of their gate).
//! 6. the padding patches dropped; output per patch = [final, intermediates interleaved feature by
//!    feature (`torch.stack(dim=-1)` then flattened)]: `vision_output_dim` values.
//!
//! The projector maps each of the `max_num_tiles · num_patches` outputs to the text model's
//! hidden size: the image's cross-attention states.

use candle_core::{D, DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use vlm_core::attention::attention;
use vlm_core::kernels::{act, dense};
use vlm_core::layers::layer_norm;
use vlm_core::precision::{compute, linear};
use vlm_core::weights::need;
use vlm_core::{ModelError, Result};

use crate::config::VisionConfig;
use crate::processor::ProcessedImage;

/// A scalar gate parameter (shape (1,)) as `tanh(gate)`.
fn tanh_gate(vb: &VarBuilder, name: &str) -> Result<f64> {
    need(vb, name)?;
    let g: Vec<f32> = vb.get(1, name)?.to_dtype(DType::F32)?.to_vec1()?;
    Ok((g[0] as f64).tanh())
}

struct EncoderLayer {
    ln1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    act: String,
    /// `tanh(gate_attn)`, `tanh(gate_ffn)` for the global layers.
    gates: Option<(f64, f64)>,
}

impl EncoderLayer {
    fn load(vb: VarBuilder, c: &VisionConfig, gated: bool) -> Result<Self> {
        let d = c.hidden_size;
        let gates = if gated { Some((tanh_gate(&vb, "gate_attn")?, tanh_gate(&vb, "gate_ffn")?)) } else { None };
        Ok(Self {
            ln1: layer_norm(vb.pp("input_layernorm"), d, c.norm_eps)?,
            q: linear(vb.pp("self_attn.q_proj"), d, d, false)?,
            k: linear(vb.pp("self_attn.k_proj"), d, d, false)?,
            v: linear(vb.pp("self_attn.v_proj"), d, d, false)?,
            o: linear(vb.pp("self_attn.o_proj"), d, d, false)?,
            ln2: layer_norm(vb.pp("post_attention_layernorm"), d, c.norm_eps)?,
            fc1: linear(vb.pp("mlp.fc1"), d, c.intermediate_size, true)?,
            fc2: linear(vb.pp("mlp.fc2"), c.intermediate_size, d, true)?,
            heads: c.attention_heads,
            act: c.hidden_act.clone(),
            gates,
        })
    }

    /// `x` (1, n, d); `mask` (1, 1, n, n) additive f32.
    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let hd = d / self.heads;
        let h = self.ln1.forward(x)?;
        let split = |t: Tensor| t.reshape((b, n, self.heads, hd))?.transpose(1, 2)?.contiguous();
        let q = split(dense(&self.q, &h)?)?;
        let k = split(dense(&self.k, &h)?)?;
        let v = split(dense(&self.v, &h)?)?;
        let y = attention(&q, &k, &v, Some(mask), (hd as f64).powf(-0.5))?;
        let y = dense(&self.o, &y.transpose(1, 2)?.reshape((b, n, d))?)?;
        let y = match self.gates {
            Some((g, _)) => (y * g)?,
            None => y,
        };
        let x = (x + y)?;
        let m = dense(&self.fc2, &act(&self.act, &dense(&self.fc1, &self.ln2.forward(&x)?)?)?)?;
        let m = match self.gates {
            Some((_, g)) => (m * g)?,
            None => m,
        };
        Ok((x + m)?)
    }
}

/// `MllamaVisionModel` plus `multi_modal_projector`.
pub struct VisionEncoder {
    patch_embed: Linear,
    class_embedding: Tensor,
    /// `(1 - tanh(gate)) · embedding`, (num_patches, d).
    position_embedding: Tensor,
    /// `tanh(gate) · tile_embedding`: rows of max_tiles · num_patches · d.
    tile_position_embedding: Embedding,
    pre_tile: Embedding,
    post_tile: Embedding,
    layernorm_pre: LayerNorm,
    layernorm_post: LayerNorm,
    local: Vec<EncoderLayer>,
    global: Vec<EncoderLayer>,
    projector: Linear,
    config: VisionConfig,
}

/// A gated aspect-ratio embedding (`MllamaPrecomputedAspectRatioEmbedding`), its table already
/// scaled by `tanh(gate)`.
fn aspect_ratio_embedding(vb: VarBuilder, c: &VisionConfig) -> Result<Embedding> {
    need(&vb, "embedding.weight")?;
    let w = compute(&vb).get((c.max_aspect_ratio_id() + 1, c.max_num_tiles * c.hidden_size), "embedding.weight")?;
    let g = tanh_gate(&vb, "gate")?;
    Ok(Embedding::new((w * g)?, c.max_num_tiles * c.hidden_size))
}

impl VisionEncoder {
    /// `vb` is the vision model's prefix; `projector` the projector's.
    pub fn load(vb: VarBuilder, projector: VarBuilder, c: &VisionConfig, text_hidden: usize) -> Result<Self> {
        let (d, p) = (c.hidden_size, c.patch_size);
        need(&vb, "patch_embedding.weight")?;
        // The patch convolution, class and position embeddings in the compute dtype (f32 on the
        // CPU); only the encoder layers' and the projector's matrices stay in the run's dtype.
        let cvb = compute(&vb);
        let w = cvb.get((d, c.num_channels, p, p), "patch_embedding.weight")?;
        let patch_embed = Linear::new(w.reshape((d, c.num_channels * p * p))?, None);
        need(&vb, "class_embedding")?;
        let class_embedding = cvb.get(d, "class_embedding")?;
        let gp = cvb.pp("gated_positional_embedding");
        let gate = tanh_gate(&gp, "gate")?;
        need(&gp, "embedding")?;
        let position_embedding = (gp.get((c.num_patches(), d), "embedding")? * (1.0 - gate))?;
        need(&gp, "tile_embedding.weight")?;
        let tile_w =
            gp.get((c.max_aspect_ratio_id() + 1, c.max_num_tiles * c.num_patches() * d), "tile_embedding.weight")?;
        let tile_position_embedding = Embedding::new((tile_w * gate)?, c.max_num_tiles * c.num_patches() * d);
        let local = (0..c.num_hidden_layers)
            .map(|i| EncoderLayer::load(vb.pp(format!("transformer.layers.{i}")), c, false))
            .collect::<Result<Vec<_>>>()?;
        let global = (0..c.num_global_layers)
            .map(|i| EncoderLayer::load(vb.pp(format!("global_transformer.layers.{i}")), c, true))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_embed,
            class_embedding,
            position_embedding,
            tile_position_embedding,
            pre_tile: aspect_ratio_embedding(vb.pp("pre_tile_positional_embedding"), c)?,
            post_tile: aspect_ratio_embedding(vb.pp("post_tile_positional_embedding"), c)?,
            // nn.LayerNorm(hidden_size): the default eps.
            layernorm_pre: layer_norm(vb.pp("layernorm_pre"), d, 1e-5)?,
            layernorm_post: layer_norm(vb.pp("layernorm_post"), d, 1e-5)?,
            local,
            global,
            projector: linear(projector, c.vision_output_dim, text_hidden, true)?,
            config: c.clone(),
        })
    }

    /// The per-tile aspect-ratio embedding (max_tiles, 1, d) of an image.
    fn per_tile(&self, e: &Embedding, id: usize, device: &Device) -> Result<Tensor> {
        let c = &self.config;
        Ok(e.forward(&Tensor::new(&[id as u32], device)?)?.reshape((c.max_num_tiles, 1, c.hidden_size))?)
    }

    /// `_prepare_aspect_ratio_attention_mask` for one image: (1, 1, T·L, T·L) additive f32.
    fn attention_mask(&self, tile_mask: &[u8], len: usize, real: usize, device: &Device) -> Result<Tensor> {
        // `attention_mask[:, :, -pad:] = 0` with pad = 0 clears every position (`-0:` is all).
        let pad = len - real;
        let padding: Vec<bool> =
            tile_mask.iter().flat_map(|&t| (0..len).map(move |i| t == 0 || pad == 0 || i >= real)).collect();
        let n = padding.len();
        let mut m = vec![0f32; n * n];
        for (a, &pa) in padding.iter().enumerate() {
            if pa {
                for (b, &pb) in padding.iter().enumerate() {
                    if pb {
                        m[a * n + b] = f32::MIN;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(m, (1, 1, n, n), device)?)
    }

    /// The vision outputs (max_tiles, num_patches, vision_output_dim) of one image.
    pub fn encode(&self, img: &ProcessedImage, device: &Device) -> Result<Tensor> {
        let c = &self.config;
        let (t, d, p, s) = (c.max_num_tiles, c.hidden_size, c.patch_size, c.image_size);
        if img.tile_size != s || img.max_tiles != t || img.pixel_values.len() != t * 3 * s * s {
            return Err(ModelError::Input(format!(
                "the image has {} tiles of {} px, the vision encoder takes {t} of {s}",
                img.max_tiles, img.tile_size
            )));
        }
        let dtype = self.patch_embed.weight().dtype();
        let g = s / p;
        // (t, 3, g, p, g, p) -> (t, g, g, 3, p, p): each patch's values channel, row, column.
        let px = Tensor::from_slice(&img.pixel_values, (t, 3, g, p, g, p), device)?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((t, g * g, 3 * p * p))?
            .to_dtype(dtype)?;
        let x = dense(&self.patch_embed, &px)?; // (t, g², d)
        let x = x.broadcast_add(&self.per_tile(&self.pre_tile, img.aspect_ratio_id, device)?)?;
        let cls = self.class_embedding.reshape((1, 1, d))?.broadcast_as((t, 1, d))?;
        let x = Tensor::cat(&[&cls, &x], 1)?; // (t, P, d)
        let np = c.num_patches();
        let x = x.broadcast_add(&self.position_embedding.unsqueeze(0)?)?;
        let tile_pos = self
            .tile_position_embedding
            .forward(&Tensor::new(&[img.aspect_ratio_id as u32], device)?)?
            .reshape((t, np, d))?;
        let x = (x + tile_pos)?;
        let x = self.layernorm_pre.forward(&x)?;
        let pad = (8 - np % 8) % 8;
        let len = np + pad;
        let x = if pad > 0 { x.pad_with_zeros(1, 0, pad)? } else { x };
        let mask = self.attention_mask(&img.aspect_ratio_mask, len, np, device)?;
        let mut h = x.reshape((1, t * len, d))?;
        let mut intermediate = Vec::with_capacity(c.intermediate_layers_indices.len());
        for (i, layer) in self.local.iter().enumerate() {
            // Layer i's input, as the reference era collects it (see the module docs).
            if c.intermediate_layers_indices.contains(&i) {
                intermediate.push((i, h.clone()));
            }
            h = layer.forward(&h, &mask)?;
        }
        if c.intermediate_layers_indices.contains(&self.local.len()) {
            intermediate.push((self.local.len(), h.clone()));
        }
        let h = self.layernorm_post.forward(&h)?.reshape((t, len, d))?;
        let h = h.broadcast_add(&self.per_tile(&self.post_tile, img.aspect_ratio_id, device)?)?;
        let mut h = h.reshape((1, t * len, d))?;
        for layer in &self.global {
            h = layer.forward(&h, &mask)?;
        }
        let h = h.reshape((t, len, d))?.i((.., ..np, ..))?;
        // In the order of intermediate_layers_indices, stacked on a new last axis.
        let stacked: Vec<Tensor> = c
            .intermediate_layers_indices
            .iter()
            .map(|want| {
                let (_, x) = intermediate
                    .iter()
                    .find(|(i, _)| i == want)
                    .ok_or_else(|| ModelError::Input(format!("intermediate layer {want} was not computed")))?;
                Ok(x.unsqueeze(D::Minus1)?)
            })
            .collect::<Result<_>>()?;
        let k = stacked.len();
        let inter = Tensor::cat(&stacked, D::Minus1)?.reshape((t, len, d * k))?.i((.., ..np, ..))?;
        Ok(Tensor::cat(&[&h, &inter], D::Minus1)?)
    }

    /// The cross-attention states of one image: (max_tiles · num_patches, text hidden).
    pub fn cross_states(&self, img: &ProcessedImage, device: &Device) -> Result<Tensor> {
        let out = self.encode(img, device)?;
        let (t, np, dim) = out.dims3()?;
        Ok(dense(&self.projector, &out.reshape((t * np, dim))?)?)
    }

    pub fn config(&self) -> &VisionConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stacking_on_a_new_last_axis_interleaves_the_layers_feature_by_feature() {
        use candle_core::{D, Device, Tensor};
        let a = Tensor::new(&[[1f32, 2.]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[10f32, 20.]], &Device::Cpu).unwrap();
        let s = Tensor::cat(&[a.unsqueeze(D::Minus1).unwrap(), b.unsqueeze(D::Minus1).unwrap()], D::Minus1).unwrap();
        let flat: Vec<f32> = s.reshape((1, 4)).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(flat, vec![1., 10., 2., 20.]);
    }
}
