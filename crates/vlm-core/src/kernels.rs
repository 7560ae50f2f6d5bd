//! The CPU kernels the models share: a linear layer over any leading dimensions ([`dense`]) with
//! its weights in f32, f16 or bf16 and its math in f32 on the CPU ([`linear`]: a threaded GEMV for
//! decode steps, a panelled GEMM for prefill), the activations transformers names in configs, and
//! image features spliced over a prompt's image tokens ([`splice_image_features`]).

pub mod linear;

use candle_core::{DType, Module, Storage, Tensor};
use candle_nn::Linear;

/// A linear layer over any leading dimensions: (…, in) → (…, out).
///
/// On the CPU with an f32 input and weights in f32, f16 or bf16, the product runs in
/// [`linear::linear`] (f32 math, the weights read as stored, output f32): a GEMV for up to
/// [`linear::GEMV_MAX_ROWS`] rows (decode steps of a batch share one pass over the weights), else
/// a GEMM over panels of widened weights. Otherwise (CUDA, or an input in a half dtype) candle's
/// `Linear` on the input flattened to 2-D: on a 3-D input candle runs one product per batch row,
/// reading the weights once per row; flattened, it reads them once.
pub fn dense(l: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
    let t = std::time::Instant::now();
    let y = dense_any(l, x);
    DENSE_NANOS.fetch_add(t.elapsed().as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
    y
}

/// Wall time spent in [`dense`] by this process so far, in seconds (calls from every thread
/// summed): stage profiles read it before and after a stage (`examples/profile_qwen2vl.rs`).
pub fn dense_seconds() -> f64 {
    DENSE_NANOS.load(std::sync::atomic::Ordering::Relaxed) as f64 * 1e-9
}

static DENSE_NANOS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// [`dense`] without the timing.
fn dense_any(l: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
    if let Some(y) = dense_cpu(l, x)? {
        return Ok(y);
    }
    let dims = x.dims();
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

/// [`dense`] through [`linear::linear`], or `None` when the layer or the input is not one it
/// takes (not on the CPU, an input not in f32, a weight not a contiguous 2-D f32/f16/bf16 tensor,
/// sizes that disagree: candle then reports them).
fn dense_cpu(l: &Linear, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
    use linear::WeightRows;
    let w = l.weight();
    if !w.device().is_cpu() || x.dtype() != DType::F32 || w.rank() != 2 || x.rank() == 0 {
        return Ok(None);
    }
    let (out_dim, in_dim) = w.dims2()?;
    if x.dims().last() != Some(&in_dim) {
        return Ok(None);
    }
    let bias: Option<Vec<f32>> = match l.bias() {
        Some(b) => Some(b.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?),
        None => None,
    };
    let x = x.contiguous()?;
    let (ws, wl) = w.storage_and_layout();
    let (xs, xl) = x.storage_and_layout();
    let (Storage::Cpu(wc), Storage::Cpu(xc)) = (&*ws, &*xs) else { return Ok(None) };
    let (Some((w0, w1)), Some((x0, x1))) = (wl.contiguous_offsets(), xl.contiguous_offsets()) else {
        return Ok(None);
    };
    let rows = match w.dtype() {
        DType::F32 => WeightRows::F32(&wc.as_slice::<f32>()?[w0..w1]),
        DType::F16 => WeightRows::F16(&wc.as_slice::<half::f16>()?[w0..w1]),
        DType::BF16 => WeightRows::Bf16(&wc.as_slice::<half::bf16>()?[w0..w1]),
        _ => return Ok(None),
    };
    let input = &xc.as_slice::<f32>()?[x0..x1];
    let y = linear::linear(rows, out_dim, in_dim, input, bias.as_deref(), linear::detected_isa())
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    drop((ws, xs));
    let mut shape = x.dims()[..x.rank() - 1].to_vec();
    shape.push(out_dim);
    Ok(Some(Tensor::from_vec(y, shape, w.device())?))
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

/// [`splice_image_features`] on plain rows (the ONNX backend's graphs give `f32` rows):
/// `emb` (n, hidden) row-major has the rows at the image-token positions replaced, in order, by
/// the rows of `features`. The counts must agree, as transformers checks them.
pub fn splice_rows(emb: &mut [f32], hidden: usize, ids: &[u32], image_id: u32, features: &[f32]) -> crate::Result<()> {
    let n_img = ids.iter().filter(|&&t| t == image_id).count();
    let n_feat = features.len() / hidden.max(1);
    if n_img != n_feat || n_feat * hidden != features.len() || emb.len() != ids.len() * hidden {
        return Err(crate::ModelError::Input(format!(
            "Image features and image tokens do not match: tokens: {n_img}, features {n_feat}"
        )));
    }
    let at = ids.iter().enumerate().filter(|(_, t)| **t == image_id).map(|(i, _)| i);
    for (i, row) in at.zip(features.chunks_exact(hidden.max(1))) {
        emb[i * hidden..(i + 1) * hidden].copy_from_slice(row);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rows_are_spliced_in_order_and_a_count_mismatch_is_named() {
        let mut emb = vec![0., 0., 1., 1., 2., 2., 3., 3.];
        splice_rows(&mut emb, 2, &[5, 9, 5, 9], 9, &[7., 7., 8., 8.]).unwrap();
        assert_eq!(emb, vec![0., 0., 7., 7., 2., 2., 8., 8.]);
        let e = splice_rows(&mut emb, 2, &[5, 9, 5, 9], 9, &[7., 7.]).unwrap_err().to_string();
        assert!(e.contains("tokens: 2, features 1"), "{e}");
    }

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
    fn half_weights_give_the_f32_product_of_the_upcast_weights() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (37, 53), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 37, &dev).unwrap();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let half = Linear::new(w.to_dtype(dtype).unwrap(), Some(b.clone()));
            let up = Linear::new(w.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap(), Some(b.clone()));
            for rows in [1, 3, 100] {
                let x = Tensor::randn(0f32, 1.0, (rows, 1, 53), &dev).unwrap();
                let got = dense(&half, &x).unwrap();
                assert_eq!((got.dims(), got.dtype()), (&[rows, 1, 37][..], DType::F32));
                let want = up.forward(&x.reshape((rows, 53)).unwrap()).unwrap().reshape((rows, 1, 37)).unwrap();
                let d: f32 = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
                assert!(d < 1e-4, "{dtype:?} rows {rows}: {d}");
            }
        }
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
