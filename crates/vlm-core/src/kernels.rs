//! The CPU kernels the models share: a linear layer over any leading dimensions as one matrix
//! product, a threaded f32 GEMV for a single row (a decode step at batch 1), the activations
//! transformers names in configs, and image features spliced over a prompt's image tokens
//! ([`splice_image_features`]).

use candle_core::{DType, Module, Tensor};
use candle_nn::Linear;

/// A linear layer over any leading dimensions as one matrix product: (…, in) → (…, out). candle's
/// `Linear` on a 3-D input runs one product per batch row, reading the weights once per row;
/// flattened, a batch of decode steps reads them once.
pub fn dense(l: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
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

/// An activation by its transformers name (`hidden_act`, `projector_hidden_act`).
pub fn act(name: &str, x: &Tensor) -> candle_core::Result<Tensor> {
    match name {
        "quick_gelu" => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
        "gelu" => x.gelu_erf(),
        "gelu_pytorch_tanh" | "gelu_new" => x.gelu(),
        "silu" => candle_nn::ops::silu(x),
        "relu" => x.relu(),
        other => candle_core::bail!("activation {other} is not supported"),
    }
}

/// Token embeddings `emb` (n, hidden) with the rows at the image-token positions (`ids[i] ==
/// image_id`) replaced, in order, by the rows of `features` (one per image token, cast to `emb`'s
/// dtype): (n, hidden). The caller checks that the counts agree.
pub fn splice_image_features(
    emb: &Tensor,
    ids: &[u32],
    image_id: u32,
    features: &Tensor,
) -> candle_core::Result<Tensor> {
    let feats = features.to_dtype(emb.dtype())?;
    let mut parts = Vec::new();
    let (mut i, mut f) = (0usize, 0usize);
    while i < ids.len() {
        let is_img = ids[i] == image_id;
        let mut j = i;
        while j < ids.len() && (ids[j] == image_id) == is_img {
            j += 1;
        }
        if is_img {
            parts.push(feats.narrow(0, f, j - i)?);
            f += j - i;
        } else {
            parts.push(emb.narrow(0, i, j - i)?);
        }
        i = j;
    }
    Tensor::cat(&parts, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn a_single_row_and_a_batch_give_the_products_candle_gives() {
        let dev = Device::Cpu;
        let w = Tensor::arange(0f32, 40.0, &dev).unwrap().reshape((5, 8)).unwrap();
        let b = Tensor::new(&[1f32, 2., 3., 4., 5.], &dev).unwrap();
        let l = Linear::new((w * 0.01).unwrap(), Some(b));
        let x = Tensor::arange(0f32, 8.0, &dev).unwrap().reshape((1, 1, 8)).unwrap();
        let want = l.forward(&x.reshape((1, 8)).unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = dense(&l, &x).unwrap();
        assert_eq!(got.dims(), &[1, 1, 5]);
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{got:?} {want:?}");
        }
        let xb = Tensor::arange(0f32, 24.0, &dev).unwrap().reshape((3, 1, 8)).unwrap();
        assert_eq!(dense(&l, &xb).unwrap().dims(), &[3, 1, 5]);
    }

    #[test]
    fn image_features_replace_the_image_tokens_in_order() {
        let dev = candle_core::Device::Cpu;
        let emb = Tensor::new(&[[0f32], [1.], [2.], [3.], [4.]], &dev).unwrap();
        let feats = Tensor::new(&[[10f32], [11.], [12.]], &dev).unwrap();
        let got = splice_image_features(&emb, &[5, 9, 9, 5, 9], 9, &feats).unwrap();
        assert_eq!(got.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![0., 10., 11., 3., 12.]);
    }
}
