//! `LlavaForConditionalGeneration` and `LlavaNextForConditionalGeneration` on candle: CLIP
//! vision tower, multimodal projector, Llama text model, image features spliced in at the
//! image-token positions. LLaVA-NeXT runs the tower on every tile of an image and packs the
//! tiles' features with its `image_newline` vector ([`crate::anyres::pack_image_features`]).
//!
//! Written against transformers' modeling files rather than reusing candle-transformers' llava,
//! clip and llama: candle's CLIP `output_hidden_states` omits the embeddings output (so HF's
//! feature layer -2 is off by one) and hard-codes its LayerNorm eps; its llama derives head_dim
//! from hidden/heads, has no attention or MLP bias, and panics on a missing weight.

use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Conv2dConfig, Embedding, LayerNorm, Linear, RmsNorm, VarBuilder};

use crate::anyres::{self, AnyresError, PackGeometry, Size};
use crate::config::{LlavaConfig, SelectStrategy, TextConfig, VisionConfig};

pub type Result<T> = std::result::Result<T, ModelError>;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Load(String),
    #[error("{0}")]
    Input(String),
}

impl From<AnyresError> for ModelError {
    fn from(e: AnyresError) -> Self {
        match e {
            AnyresError::Candle(e) => ModelError::Candle(e),
            e => ModelError::Input(e.to_string()),
        }
    }
}

/// The safetensors files of a checkpoint: `model.safetensors`, or the shards an index names.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text =
            std::fs::read_to_string(&index).map_err(|e| ModelError::Load(format!("{}: {e}", index.display())))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Load(format!("{}: {e}", index.display())))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Load(format!("{}: no weight_map", index.display())))?;
        let mut files: Vec<PathBuf> = map.values().filter_map(|f| f.as_str()).map(|f| dir.join(f)).collect();
        files.sort();
        files.dedup();
        for f in &files {
            if !f.is_file() {
                return Err(ModelError::Load(format!("{} names {}, which is missing", index.display(), f.display())));
            }
        }
        return Ok(files);
    }
    Err(ModelError::Load(format!(
        "{}: no model.safetensors or model.safetensors.index.json (missing weights)",
        dir.display()
    )))
}

/// A linear layer over any leading dimensions as one matrix product: (…, in) → (…, out). candle's
/// `Linear` on a 3-D input runs one product per batch row, reading the weights once per row;
/// flattened, a batch of decode steps reads them once.
fn dense(l: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    if x.elem_count() == *dims.last().unwrap_or(&0)
        && let Some(y) = gemv_cpu_f32(l, x)?
    {
        let mut out = dims[..dims.len().saturating_sub(1)].to_vec();
        out.push(y.dim(1)?);
        return y.reshape(out);
    }
    if dims.len() <= 2 {
        return l.forward(x);
    }
    let inner = dims[dims.len() - 1];
    let rows = x.elem_count() / inner.max(1);
    let y = l.forward(&x.reshape((rows, inner))?)?;
    let mut out = dims[..dims.len() - 1].to_vec();
    out.push(y.dim(1)?);
    y.reshape(out)
}

/// One input row through a linear layer on the CPU in f32 (a decode step at batch 1): the weight
/// rows streamed once, split across rayon's threads, each output a dot product. A decode step is
/// bound by memory bandwidth; candle's general matrix product reaches less of it for a single row
/// (measured: 8 GB/s against 10-11 GB/s here on the 2-core CI machine). `None` when the layer is
/// not a contiguous f32 CPU tensor.
fn gemv_cpu_f32(l: &Linear, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
    use candle_core::Storage;
    use rayon::prelude::*;
    let w = l.weight();
    if w.dtype() != DType::F32 || x.dtype() != DType::F32 || !w.device().is_cpu() || w.rank() != 2 {
        return Ok(None);
    }
    let (out_dim, in_dim) = w.dims2()?;
    if x.elem_count() != in_dim {
        return Ok(None);
    }
    let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let (storage, layout) = w.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { return Ok(None) };
    let Some((start, end)) = layout.contiguous_offsets() else { return Ok(None) };
    let weights = &cpu.as_slice::<f32>()?[start..end];
    let mut y = vec![0f32; out_dim];
    let rows_per_task = out_dim.div_ceil(rayon::current_num_threads().max(1) * 4).max(16);
    y.par_chunks_mut(rows_per_task).enumerate().for_each(|(c, ys)| {
        let first = c * rows_per_task;
        for (r, yo) in ys.iter_mut().enumerate() {
            let row = &weights[(first + r) * in_dim..(first + r + 1) * in_dim];
            *yo = dot(row, &xs);
        }
    });
    drop(storage);
    let y = Tensor::from_vec(y, (1, out_dim), w.device())?;
    Ok(Some(match l.bias() {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    }))
}

/// A dot product in 16 independent lanes (so the compiler vectorises it without reassociating).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn act(name: &str, x: &Tensor) -> candle_core::Result<Tensor> {
    match name {
        "quick_gelu" => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
        "gelu" => x.gelu_erf(),
        "gelu_pytorch_tanh" | "gelu_new" => x.gelu(),
        "silu" => candle_nn::ops::silu(x),
        "relu" => x.relu(),
        other => candle_core::bail!("activation {other} is not supported"),
    }
}

fn need(vb: &VarBuilder, name: &str) -> Result<()> {
    if vb.contains_tensor(name) {
        Ok(())
    } else {
        Err(ModelError::Load(format!("missing weight {}", vb.prefix().to_owned() + "." + name)))
    }
}

// ---------------------------------------------------------------------------------------------
// CLIP vision tower
// ---------------------------------------------------------------------------------------------

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
            q: candle_nn::linear(h, h, vb.pp("q_proj"))?,
            k: candle_nn::linear(h, h, vb.pp("k_proj"))?,
            v: candle_nn::linear(h, h, vb.pp("v_proj"))?,
            o: candle_nn::linear(h, h, vb.pp("out_proj"))?,
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
            ln1: candle_nn::layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("layer_norm1"))?,
            attn: ClipAttention::load(vb.pp("self_attn"), c)?,
            ln2: candle_nn::layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: candle_nn::linear(c.hidden_size, c.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: candle_nn::linear(c.intermediate_size, c.hidden_size, vb.pp("mlp.fc2"))?,
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
    pub fn load(vb: VarBuilder, c: &VisionConfig, layers_needed: usize) -> Result<Self> {
        need(&vb, "embeddings.patch_embedding.weight")?;
        let patch = candle_nn::conv2d_no_bias(
            c.num_channels,
            c.hidden_size,
            c.patch_size,
            Conv2dConfig { stride: c.patch_size, ..Default::default() },
            vb.pp("embeddings.patch_embedding"),
        )?;
        let class_embedding = vb.get(c.hidden_size, "embeddings.class_embedding")?;
        let position_embedding = vb.get((c.num_positions(), c.hidden_size), "embeddings.position_embedding.weight")?;
        let pre_ln = candle_nn::layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("pre_layrnorm"))?;
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

// ---------------------------------------------------------------------------------------------
// Llama text model
// ---------------------------------------------------------------------------------------------

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

fn linear(vb: VarBuilder, i: usize, o: usize, bias: bool) -> Result<Linear> {
    need(&vb, "weight")?;
    Ok(candle_nn::linear_b(i, o, bias, vb)?)
}

impl Attention {
    fn load(vb: VarBuilder, c: &TextConfig) -> Result<Self> {
        let (h, hd) = (c.hidden_size, c.head_dim);
        Ok(Self {
            q: linear(vb.pp("q_proj"), h, c.num_attention_heads * hd, c.attention_bias)?,
            k: linear(vb.pp("k_proj"), h, c.num_key_value_heads * hd, c.attention_bias)?,
            v: linear(vb.pp("v_proj"), h, c.num_key_value_heads * hd, c.attention_bias)?,
            o: linear(vb.pp("o_proj"), c.num_attention_heads * hd, h, c.attention_bias)?,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: hd,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        kv: &mut KvBuffer,
    ) -> candle_core::Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let q = dense(&self.q, x)?.reshape((b, n, self.heads, self.head_dim))?.transpose(1, 2)?.contiguous()?;
        let k = dense(&self.k, x)?.reshape((b, n, self.kv_heads, self.head_dim))?.transpose(1, 2)?.contiguous()?;
        let v = dense(&self.v, x)?.reshape((b, n, self.kv_heads, self.head_dim))?.transpose(1, 2)?.contiguous()?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        let (k, v) = kv.append(&k, &v)?;
        let rep = self.heads / self.kv_heads;
        let (k, v) = if rep == 1 {
            // Views into the cache's buffers: the products read them in place.
            (k, v)
        } else {
            (
                candle_transformers::utils::repeat_kv(k, rep)?.contiguous()?,
                candle_transformers::utils::repeat_kv(v, rep)?.contiguous()?,
            )
        };
        let in_dtype = q.dtype();
        let (q, k, v) = (q.to_dtype(DType::F32)?, k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?);
        let mut att = (q.matmul(&k.t()?)? * (self.head_dim as f64).powf(-0.5))?;
        if let Some(m) = mask {
            att = att.broadcast_add(m)?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?.to_dtype(in_dtype)?;
        let y = y.transpose(1, 2)?.reshape((b, n, self.heads * self.head_dim))?;
        dense(&self.o, &y)
    }
}

struct DecoderLayer {
    ln1: RmsNorm,
    attn: Attention,
    ln2: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl DecoderLayer {
    fn load(vb: VarBuilder, c: &TextConfig) -> Result<Self> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        need(&vb, "input_layernorm.weight")?;
        Ok(Self {
            ln1: candle_nn::rms_norm(h, c.rms_norm_eps, vb.pp("input_layernorm"))?,
            attn: Attention::load(vb.pp("self_attn"), c)?,
            ln2: candle_nn::rms_norm(h, c.rms_norm_eps, vb.pp("post_attention_layernorm"))?,
            gate: linear(vb.pp("mlp.gate_proj"), h, i, c.mlp_bias)?,
            up: linear(vb.pp("mlp.up_proj"), h, i, c.mlp_bias)?,
            down: linear(vb.pp("mlp.down_proj"), i, h, c.mlp_bias)?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        kv: &mut KvBuffer,
    ) -> candle_core::Result<Tensor> {
        let h = (x + self.attn.forward(&self.ln1.forward(x)?, cos, sin, mask, kv)?)?;
        let n = self.ln2.forward(&h)?;
        let m = dense(&self.down, &(candle_nn::ops::silu(&dense(&self.gate, &n)?)? * dense(&self.up, &n)?)?)?;
        h + m
    }
}

/// One layer's keys and values, (batch, kv heads, capacity, head dim), written in place and grown
/// by doubling, so a decode step appends one position instead of copying the whole history.
#[derive(Default)]
pub struct KvBuffer {
    buffers: Option<(Tensor, Tensor)>,
    len: usize,
}

impl KvBuffer {
    /// Appends `k`, `v` (batch, kv heads, n, head dim); returns views of everything held.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (b, h, n, d) = k.dims4()?;
        let need = self.len + n;
        let capacity = self.buffers.as_ref().map_or(0, |(kb, _)| kb.dim(2).unwrap_or(0));
        if need > capacity {
            let cap = need.max(capacity * 2).max(n + 64);
            let kb = Tensor::zeros((b, h, cap, d), k.dtype(), k.device())?;
            let vb = Tensor::zeros((b, h, cap, d), v.dtype(), v.device())?;
            if let Some((ok, ov)) = &self.buffers {
                kb.slice_set(&ok.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                vb.slice_set(&ov.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
            }
            self.buffers = Some((kb, vb));
        }
        let Some((kb, vb)) = self.buffers.as_ref() else {
            candle_core::bail!("the KV buffers were not allocated");
        };
        kb.slice_set(k, 2, self.len)?;
        vb.slice_set(v, 2, self.len)?;
        self.len = need;
        Ok((kb.narrow(2, 0, need)?, vb.narrow(2, 0, need)?))
    }
}

/// The per-sequence KV cache.
pub struct Cache {
    kvs: Vec<KvBuffer>,
    pub len: usize,
}

pub struct LlamaModel {
    embed: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
    max_positions: usize,
}

impl LlamaModel {
    /// `model` holds `embed_tokens`, `layers.*`, `norm`; `lm_head` the output projection.
    pub fn load(model: VarBuilder, lm_head: VarBuilder, c: &TextConfig, dtype: DType, device: &Device) -> Result<Self> {
        need(&model, "embed_tokens.weight")?;
        let embed = candle_nn::embedding(c.vocab_size, c.hidden_size, model.pp("embed_tokens"))?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| DecoderLayer::load(model.pp(format!("layers.{i}")), c))
            .collect::<Result<_>>()?;
        let norm = candle_nn::rms_norm(c.hidden_size, c.rms_norm_eps, model.pp("norm"))?;
        let lm_head = if lm_head.contains_tensor("weight") {
            linear(lm_head, c.hidden_size, c.vocab_size, false)?
        } else if c.tie_word_embeddings {
            Linear::new(embed.embeddings().clone(), None)
        } else {
            return Err(ModelError::Load("missing weight lm_head.weight".into()));
        };
        // RoPE tables as transformers computes them: inv_freq in f32, position * inv_freq in f32.
        let hd = c.head_dim;
        let inv: Vec<f32> =
            (0..hd).step_by(2).map(|i| 1.0 / (c.rope_theta as f32).powf(i as f32 / hd as f32)).collect();
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
        Ok(Self { embed, layers, norm, lm_head, cos, sin, max_positions: n })
    }

    pub fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        self.embed.forward(ids)
    }

    pub fn new_cache(&self) -> Cache {
        Cache { kvs: (0..self.layers.len()).map(|_| KvBuffer::default()).collect(), len: 0 }
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
            x = layer.forward(&x, &cos, &sin, mask.as_ref(), kv)?;
        }
        cache.len += n;
        let last = self.norm.forward(&x.i((.., n - 1..n, ..))?)?;
        Ok(dense(&self.lm_head, &last)?.flatten_all()?.to_dtype(DType::F32)?)
    }

    /// Runs a left-padded batch `embeds` (b, n, hidden) after what the cache holds. Row `r` has
    /// `pads[r]` padding positions at the start of the whole sequence; they are masked out and the
    /// row's positions count from its first real token, as transformers does for left padding
    /// (`position_ids = cumsum(attention_mask) - 1`). Returns each row's last logits, (b, vocab), f32.
    pub fn forward_batch(&self, embeds: &Tensor, pads: &[usize], cache: &mut Cache) -> Result<Tensor> {
        let (b, n, _) = embeds.dims3()?;
        if pads.len() != b {
            return Err(ModelError::Input(format!("{} pads for a batch of {b}", pads.len())));
        }
        let start = cache.len;
        let total = start + n;
        let longest = total - pads.iter().copied().min().unwrap_or(0);
        if longest > self.max_positions {
            return Err(ModelError::Input(format!(
                "the sequence needs {longest} positions, more than the model's {} (max_position_embeddings)",
                self.max_positions
            )));
        }
        let mut positions = Vec::with_capacity(b * n);
        let mut mask = Vec::with_capacity(b * n * total);
        for &pad in pads {
            for i in 0..n {
                positions.push((start + i).saturating_sub(pad) as u32);
                let q = start + i;
                // A padding position sees only itself, so that no row is all -inf (its softmax would
                // be NaN, and 0 * NaN poisons the real rows that mask it out).
                let visible = |k: usize| if q < pad { k == q } else { k >= pad && k <= q };
                mask.extend((0..total).map(|k| if visible(k) { 0.0 } else { f32::NEG_INFINITY }));
            }
        }
        let dev = embeds.device();
        let pos = Tensor::from_vec(positions, b * n, dev)?;
        let half = self.cos.dim(1)?;
        let cos = self.cos.index_select(&pos, 0)?.reshape((b, n, half))?;
        let sin = self.sin.index_select(&pos, 0)?.reshape((b, n, half))?;
        let mask = Tensor::from_vec(mask, (b, 1, n, total), dev)?;
        let mut x = embeds.clone();
        for (layer, kv) in self.layers.iter().zip(cache.kvs.iter_mut()) {
            x = layer.forward(&x, &cos, &sin, Some(&mask), kv)?;
        }
        cache.len += n;
        let last = self.norm.forward(&x.i((.., n - 1..n, ..))?)?;
        Ok(dense(&self.lm_head, &last)?.squeeze(1)?.to_dtype(DType::F32)?)
    }
}

// ---------------------------------------------------------------------------------------------
// LLaVA
// ---------------------------------------------------------------------------------------------

/// One image's pixel values, as the model takes them.
#[derive(Debug, Clone)]
pub enum PixelInput {
    /// LLaVA-1.5: one tile, (1, 3, H, W).
    Single(Tensor),
    /// LLaVA-NeXT: the base image then the grid's tiles, (tiles, 3, H, W), and the image's
    /// original (height, width) (`image_sizes`).
    Anyres { tiles: Tensor, image_size: Size },
}

/// What LLaVA-NeXT adds to the model: the grid (`config.image_grid_pinpoints`) and the
/// `image_newline` vector (text hidden,).
pub struct AnyresHead {
    pub pinpoints: Vec<Size>,
    pub image_newline: Tensor,
}

pub struct Llava {
    pub config: LlavaConfig,
    vision: ClipVisionTower,
    proj1: Linear,
    proj2: Linear,
    /// LLaVA-NeXT only.
    anyres: Option<AnyresHead>,
    pub text: LlamaModel,
    pub device: Device,
    pub dtype: DType,
}

/// The first prefix under which `probe` exists.
fn pick_prefix<'a>(vb: &VarBuilder, candidates: &[&'a str], probe: &str) -> Option<&'a str> {
    candidates.iter().copied().find(|p| vb.contains_tensor(&format!("{p}{probe}")))
}

impl Llava {
    pub fn load(dir: &Path, config: LlavaConfig, dtype: DType, device: &Device) -> Result<Self> {
        let files = weight_files(dir)?;
        // SAFETY: the files are memory-mapped read-only; we never write to them, and a file
        // changed underneath a running process is outside what any mmap-based loader can prevent.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device) }
            .map_err(|e| ModelError::Load(format!("{}: {e}", dir.display())))?;
        let vis = pick_prefix(
            &vb,
            &["vision_tower.vision_model.", "vision_tower.", "model.vision_tower.vision_model.", "model.vision_tower."],
            "embeddings.class_embedding",
        )
        .ok_or_else(|| ModelError::Load(format!("{}: no vision tower weights (vision_tower.*)", dir.display())))?;
        let txt = pick_prefix(
            &vb,
            &["language_model.model.", "model.language_model.", "language_model."],
            "embed_tokens.weight",
        )
        .ok_or_else(|| ModelError::Load(format!("{}: no text model weights (language_model.*)", dir.display())))?;
        let head = pick_prefix(&vb, &["language_model.lm_head.", "lm_head."], "weight").unwrap_or("lm_head.");
        let proj = pick_prefix(&vb, &["multi_modal_projector.", "model.multi_modal_projector."], "linear_1.weight")
            .ok_or_else(|| {
                ModelError::Load(format!("{}: no projector weights (multi_modal_projector.*)", dir.display()))
            })?;
        let strip = |p: &str| p.trim_end_matches('.').to_owned();

        // Only the layers up to the deepest selected hidden state are ever run.
        let n_hidden = config.vision.num_hidden_layers as i64 + 1;
        let deepest = config
            .vision_feature_layers
            .iter()
            .map(|&l| if l < 0 { n_hidden + l } else { l })
            .max()
            .unwrap_or(n_hidden - 1) as usize;
        let vision = ClipVisionTower::load(vb.pp(strip(vis)), &config.vision, deepest)
            .map_err(|e| ModelError::Load(format!("{}: vision tower: {e}", dir.display())))?;
        let feat_in = config.vision.hidden_size * config.vision_feature_layers.len();
        let th = config.text.hidden_size;
        let bias = config.multimodal_projector_bias;
        let pvb = vb.pp(strip(proj));
        let proj1 = linear(pvb.pp("linear_1"), feat_in, th, bias)
            .map_err(|e| ModelError::Load(format!("{}: projector: {e}", dir.display())))?;
        let proj2 = linear(pvb.pp("linear_2"), th, th, bias)
            .map_err(|e| ModelError::Load(format!("{}: projector: {e}", dir.display())))?;
        let text = LlamaModel::load(vb.pp(strip(txt)), vb.pp(strip(head)), &config.text, dtype, device)
            .map_err(|e| ModelError::Load(format!("{}: text model: {e}", dir.display())))?;
        Ok(Self { config, vision, proj1, proj2, anyres: None, text, device: device.clone(), dtype })
    }

    /// An original-format LLaVA (`LlavaLlamaForCausalLM`): the text model and `model.mm_projector.{0,2}`
    /// from the checkpoint's weights (pickle shards or safetensors), the vision tower from its CLIP
    /// folder (`vision_model.*`).
    pub fn load_original(ck: &crate::original::OriginalCheckpoint, dtype: DType, device: &Device) -> Result<Self> {
        let config = ck.config.clone();
        let dir = &ck.dir;
        let vb = crate::original::var_builder(dir, dtype, device)?;
        let clip = crate::original::var_builder(&ck.vision_dir, dtype, device)?;
        let vis =
            pick_prefix(&clip, &["vision_model.", "vision_tower.vision_model.", ""], "embeddings.class_embedding")
                .ok_or_else(|| {
                    ModelError::Load(format!("{}: no CLIP vision weights (vision_model.*)", ck.vision_dir.display()))
                })?;
        let deepest = config.deepest_vision_layer();
        let vision = ClipVisionTower::load(clip.pp(vis.trim_end_matches('.')), &config.vision, deepest)
            .map_err(|e| ModelError::Load(format!("{}: vision tower: {e}", ck.vision_dir.display())))?;
        let (vh, th) = (config.vision.hidden_size, config.text.hidden_size);
        let proj = |i: usize, fan_in: usize| {
            linear(vb.pp(format!("model.mm_projector.{i}")), fan_in, th, true)
                .map_err(|e| ModelError::Load(format!("{}: projector: {e}", dir.display())))
        };
        let (proj1, proj2) = (proj(0, vh)?, proj(2, th)?);
        let text = LlamaModel::load(vb.pp("model"), vb.pp("lm_head"), &config.text, dtype, device)
            .map_err(|e| ModelError::Load(format!("{}: text model: {e}", dir.display())))?;
        Ok(Self { config, vision, proj1, proj2, anyres: None, text, device: device.clone(), dtype })
    }

    /// A LLaVA-NeXT checkpoint: [`Llava::load`] plus the grid and `image_newline`, which
    /// LLaVA-NeXT cannot do without (transformers would fill a missing one with random values).
    pub fn load_next(
        dir: &Path,
        config: LlavaConfig,
        pinpoints: Vec<Size>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let hidden = config.text.hidden_size;
        let mut model = Self::load(dir, config, dtype, device)?;
        let files = weight_files(dir)?;
        // SAFETY: as in `load`: read-only maps of files we never write.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device) }
            .map_err(|e| ModelError::Load(format!("{}: {e}", dir.display())))?;
        // Top level in transformers 4.x saves (and the fixtures), under `model.` in 5.x's layout.
        let prefix = pick_prefix(&vb, &["", "model."], "image_newline")
            .ok_or_else(|| ModelError::Load(format!("{}: missing weight image_newline (LLaVA-NeXT)", dir.display())))?;
        let image_newline = vb
            .get(hidden, &format!("{prefix}image_newline"))
            .map_err(|e| ModelError::Load(format!("{}: image_newline: {e}", dir.display())))?;
        model.anyres = Some(AnyresHead { pinpoints, image_newline });
        Ok(model)
    }

    /// LLaVA-NeXT's grid and newline, when this is a LLaVA-NeXT model.
    pub fn anyres(&self) -> Option<&AnyresHead> {
        self.anyres.as_ref()
    }

    /// Projected image features for pixel values (b, 3, H, W): (b * features, text hidden).
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let x = self.tile_features(pixel_values)?;
        let (b, n, h) = x.dims3()?;
        Ok(x.reshape((b * n, h))?)
    }

    /// Projected features per tile for pixel values (b, 3, H, W): (b, features, text hidden).
    pub fn tile_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let hs = self.vision.hidden_states(&pixel_values.to_dtype(self.dtype)?)?;
        let n_hidden = hs.len() as i64; // deepest + 1 states; indices are relative to the full tuple
        let full = self.config.vision.num_hidden_layers as i64 + 1;
        let mut picked = Vec::new();
        for &l in &self.config.vision_feature_layers {
            let idx = if l < 0 { full + l } else { l };
            if idx < 0 || idx >= n_hidden {
                return Err(ModelError::Input(format!("vision feature layer {l} out of range")));
            }
            let mut h = hs[idx as usize].clone();
            if self.config.select_strategy == SelectStrategy::Default {
                let n = h.dim(1)?;
                h = h.narrow(1, 1, n - 1)?;
            }
            picked.push(h);
        }
        let feats = Tensor::cat(&picked, D::Minus1)?;
        let x = act(&self.config.projector_hidden_act, &dense(&self.proj1, &feats)?)?;
        Ok(dense(&self.proj2, &x)?)
    }

    /// LLaVA-NeXT's features for one image (`get_image_features`, then `pack_image_features`):
    /// `tiles` (n, 3, H, W) from the processor, of which the first `image_size_to_num_patches`
    /// are read, and the image's original (height, width). Returns (rows, text hidden).
    pub fn anyres_image_features(&self, tiles: &Tensor, image_size: Size) -> Result<Tensor> {
        let head = self
            .anyres
            .as_ref()
            .ok_or_else(|| ModelError::Input("anyres (LLaVA-NeXT) pixel values for a LLaVA-1.5 model".into()))?;
        let geometry = PackGeometry::new(&head.pinpoints, &self.config.vision);
        let wanted = geometry.num_patches(image_size)?;
        let have = tiles.dim(0)?;
        if have < wanted {
            return Err(ModelError::Input(format!(
                "an image of {}x{} needs {wanted} tiles, the pixel values hold {have}",
                image_size.0, image_size.1
            )));
        }
        let feats = self.tile_features(&tiles.narrow(0, 0, wanted)?)?;
        Ok(anyres::pack_image_features(&feats, image_size, &geometry, Some(&head.image_newline))?)
    }

    /// The features of a prompt's images, in order, concatenated: (rows, text hidden), or `None`
    /// without images.
    pub fn features_for(&self, images: &[PixelInput]) -> Result<Option<Tensor>> {
        let parts = images
            .iter()
            .map(|img| match img {
                PixelInput::Single(px) => self.image_features(px),
                PixelInput::Anyres { tiles, image_size } => self.anyres_image_features(tiles, *image_size),
            })
            .collect::<Result<Vec<_>>>()?;
        if parts.is_empty() {
            return Ok(None);
        }
        Ok(Some(Tensor::cat(&parts, 0)?))
    }

    /// Token embeddings with the image features written over the image-token positions.
    pub fn merged_embeddings(&self, ids: &[u32], image_features: Option<&Tensor>) -> Result<Tensor> {
        let image_id = self.config.image_token_id;
        // Image positions are overwritten below; their id need not even be in the vocabulary (the
        // original format marks them with -200).
        let embeddable: Vec<u32> = ids.iter().map(|&t| if t == image_id { 0 } else { t }).collect();
        let emb = self.text.embed(&Tensor::new(embeddable.as_slice(), &self.device)?)?;
        let n_img = ids.iter().filter(|&&t| t == image_id).count();
        let n_feat = image_features.map_or(Ok(0), |f| f.dim(0))?;
        if n_img != n_feat {
            return Err(ModelError::Input(format!(
                "the prompt has {n_img} image tokens but the images give {n_feat} features"
            )));
        }
        if n_img == 0 {
            return Ok(emb.unsqueeze(0)?);
        }
        let feats = image_features.map(|f| f.to_dtype(emb.dtype())).transpose()?;
        let mut parts = Vec::new();
        let (mut i, mut f) = (0usize, 0usize);
        while i < ids.len() {
            let is_img = ids[i] == image_id;
            let mut j = i;
            while j < ids.len() && (ids[j] == image_id) == is_img {
                j += 1;
            }
            if is_img {
                if let Some(feats) = &feats {
                    parts.push(feats.narrow(0, f, j - i)?);
                }
                f += j - i;
            } else {
                parts.push(emb.narrow(0, i, j - i)?);
            }
            i = j;
        }
        Ok(Tensor::cat(&parts, 0)?.unsqueeze(0)?)
    }

    /// Greedy decoding: the first step's logits and the generated tokens (stops after
    /// `max_new_tokens` or at the first of `eos` when given; the EOS token is included).
    pub fn greedy(
        &self,
        ids: &[u32],
        pixel_values: Option<&Tensor>,
        max_new_tokens: usize,
        eos: &[u32],
    ) -> Result<(Tensor, Vec<u32>)> {
        let feats = pixel_values.map(|p| self.image_features(p)).transpose()?;
        self.greedy_from_features(ids, feats.as_ref(), max_new_tokens, eos)
    }

    /// [`Llava::greedy`] from image features already computed ([`Llava::features_for`]).
    pub fn greedy_from_features(
        &self,
        ids: &[u32],
        image_features: Option<&Tensor>,
        max_new_tokens: usize,
        eos: &[u32],
    ) -> Result<(Tensor, Vec<u32>)> {
        let embeds = self.merged_embeddings(ids, image_features)?;
        let mut cache = self.text.new_cache();
        let mut logits = self.text.forward_embeds(&embeds, &mut cache)?;
        let first = logits.clone();
        let mut out = Vec::new();
        for step in 0..max_new_tokens {
            let next = logits.argmax(0)?.to_scalar::<u32>()?;
            out.push(next);
            if eos.contains(&next) || step + 1 == max_new_tokens {
                break;
            }
            let e = self.text.embed(&Tensor::new(&[next], &self.device)?)?.unsqueeze(0)?;
            logits = self.text.forward_embeds(&e, &mut cache)?;
        }
        Ok((first, out))
    }

    /// Greedy decoding of several prompts at once, left-padded into one batch: each prompt's
    /// (input embeddings (1, n, hidden)) in, each one's generated tokens out (stopping at its
    /// first `eos`, which is included, or after `max_new_tokens`).
    pub fn greedy_batch(&self, prompts: &[Tensor], max_new_tokens: &[usize], eos: &[u32]) -> Result<Vec<Vec<u32>>> {
        let b = prompts.len();
        if b == 0 {
            return Ok(vec![]);
        }
        let lens: Vec<usize> = prompts.iter().map(|p| p.dim(1)).collect::<candle_core::Result<_>>()?;
        let n = lens.iter().copied().max().unwrap_or(0);
        let hidden = prompts[0].dim(2)?;
        let pads: Vec<usize> = lens.iter().map(|l| n - l).collect();
        let rows = prompts
            .iter()
            .zip(&pads)
            .map(|(p, &pad)| {
                if pad == 0 {
                    Ok(p.clone())
                } else {
                    Tensor::cat(&[&Tensor::zeros((1, pad, hidden), p.dtype(), &self.device)?, p], 1)
                }
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let embeds = Tensor::cat(&rows, 0)?;
        let mut cache = self.text.new_cache();
        let mut logits = self.text.forward_batch(&embeds, &pads, &mut cache)?;
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
        let mut done: Vec<bool> = max_new_tokens.iter().map(|&m| m == 0).collect();
        let steps = max_new_tokens.iter().copied().max().unwrap_or(0);
        for _ in 0..steps {
            let next: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
            for r in 0..b {
                if !done[r] {
                    out[r].push(next[r]);
                    done[r] = eos.contains(&next[r]) || out[r].len() >= max_new_tokens[r];
                }
            }
            if done.iter().all(|&d| d) {
                break;
            }
            let e = self.text.embed(&Tensor::new(next.as_slice(), &self.device)?)?.unsqueeze(1)?;
            logits = self.text.forward_batch(&e, &pads, &mut cache)?;
        }
        Ok(out)
    }

    /// The input embeddings of one prompt: token embeddings with its images' features spliced in.
    pub fn prompt_embeddings(&self, ids: &[u32], images: &[PixelInput]) -> Result<Tensor> {
        let feats = self.features_for(images)?;
        self.merged_embeddings(ids, feats.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProcessorConfig;
    use crate::image_proc;

    use crate::test_util::{Parity, golden, ids};

    /// First-step logits and 24 greedy tokens against transformers, from the golden input ids, in
    /// both on-disk layouts (the old one stores f16 weights, run in f32 like the reference run).
    #[test]
    fn llava_hf_logits_and_greedy_tokens_match_goldens() {
        let fx = crate::test_util::fixtures();
        for checkpoint in ["llava_hf", "llava_hf_old_layout"] {
            let dir = fx.join("checkpoints").join(checkpoint);
            let cfg = LlavaConfig::from_dir(&dir).unwrap();
            let proc = ProcessorConfig::from_dir(&dir).unwrap();
            let model = Llava::load(&dir, cfg, DType::F32, &Device::Cpu).unwrap();
            let mut parity = Parity::new(checkpoint);
            for case in golden(checkpoint)["cases"].as_array().unwrap() {
                let image = fx.join(case["image"].as_str().unwrap());
                let (px, h, w) = image_proc::preprocess(&image, &proc.image).unwrap();
                let px = Tensor::from_vec(px, (1, 3, h, w), &Device::Cpu).unwrap();
                let (logits, tokens) = model.greedy(&ids(case, "input_ids"), Some(&px), 24, &[]).unwrap();
                parity.record(case, &logits.to_vec1::<f32>().unwrap(), &tokens);
            }
            parity.check();
        }
    }

    /// LLaVA-NeXT: first-step logits and 24 greedy tokens (no EOS stop) against transformers,
    /// from the golden input ids and our own anyres pixel values.
    #[test]
    fn llava_next_logits_and_greedy_tokens_match_goldens() {
        use crate::anyres;
        use crate::config::ModelConfig;
        let fx = crate::test_util::fixtures();
        // The old layout stores bf16 weights; both run in f32 like the reference run.
        for checkpoint in ["llava_next", "llava_next_old_layout"] {
            let dir = fx.join("checkpoints").join(checkpoint);
            let cfg = ModelConfig::from_dir(&dir).unwrap();
            let proc = ProcessorConfig::from_dir(&dir).unwrap();
            let model = Llava::load_next(&dir, cfg.llava, cfg.image_grid_pinpoints, DType::F32, &Device::Cpu).unwrap();
            let g = golden(checkpoint);
            let cases = g["cases"].as_array().unwrap();
            assert_eq!(cases.len(), 21);
            let mut parity = Parity::new(checkpoint);
            for case in cases {
                let px = anyres::preprocess(&fx.join(case["image"].as_str().unwrap()), &proc.image).unwrap();
                let tiles =
                    Tensor::from_vec(px.values, (px.num_patches, 3, px.height, px.width), &Device::Cpu).unwrap();
                let feats = model.features_for(&[PixelInput::Anyres { tiles, image_size: px.image_size }]).unwrap();
                let (logits, tokens) =
                    model.greedy_from_features(&ids(case, "input_ids"), feats.as_ref(), 24, &[]).unwrap();
                parity.record(case, &logits.to_vec1::<f32>().unwrap(), &tokens);
            }
            parity.check();
        }
    }
}
