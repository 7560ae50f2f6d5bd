//! Scaled dot-product attention in f32, computed in blocks of query rows so that the score matrix
//! never exceeds [`SCORE_BUDGET`] floats: a large image has tens of thousands of patches (Qwen2-VL),
//! and the Llama 3.2 Vision encoder's global attention over four tiles is 6,432 x 6,432 per head,
//! so one (heads, n, n) matrix would not fit in memory. Each query row's softmax is independent of
//! the others', so the blocks give exactly what one product gives. Also [`repeat_kv`] for
//! grouped-query heads.

use candle_core::{DType, Tensor};

/// The most f32 attention scores held at once (256 Mi floats = 1 GiB).
pub const SCORE_BUDGET: usize = 256 << 20;

/// `repeat_kv`: (b, kv heads, n, d) → (b, kv heads · rep, n, d), each head repeated `rep` times.
pub fn repeat_kv(x: Tensor, rep: usize) -> candle_core::Result<Tensor> {
    if rep == 1 {
        return Ok(x);
    }
    let (b, h, n, d) = x.dims4()?;
    x.unsqueeze(2)?.expand((b, h, rep, n, d))?.reshape((b, h * rep, n, d))
}

/// softmax(q kᵀ · scale + mask) v for q (b, h, n, d), k and v (b, h, m, d), `mask` broadcastable
/// to (b, h, n, m) (additive, f32); computed in f32, returned in q's dtype.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f64) -> candle_core::Result<Tensor> {
    let (b, h, n, _) = q.dims4()?;
    let m = k.dim(2)?;
    let rows = (SCORE_BUDGET / (b * h * m).max(1)).clamp(1, n.max(1));
    attention_in_blocks(q, k, v, mask, scale, rows)
}

/// [`attention`] with `rows` query rows a block.
fn attention_in_blocks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    rows: usize,
) -> candle_core::Result<Tensor> {
    let n = q.dim(2)?;
    let dtype = q.dtype();
    let k = k.to_dtype(DType::F32)?.contiguous()?;
    let v = v.to_dtype(DType::F32)?.contiguous()?;
    let kt = k.t()?;
    let rows = rows.max(1);
    let mut outs = Vec::with_capacity(n.div_ceil(rows));
    let mut start = 0;
    while start < n {
        let len = rows.min(n - start);
        let qc = q.narrow(2, start, len)?.to_dtype(DType::F32)?;
        let mut att = (qc.matmul(&kt)? * scale)?;
        if let Some(mask) = mask {
            let mc = if mask.dim(2)? == 1 { mask.clone() } else { mask.narrow(2, start, len)? };
            att = att.broadcast_add(&mc)?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        outs.push(att.matmul(&v)?);
        start += len;
    }
    let y = if outs.len() == 1 { outs.remove(0) } else { Tensor::cat(&outs, 2)? };
    y.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn blocks_of_queries_give_what_one_product_gives() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, 2, 37, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (1, 2, 37, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (1, 2, 37, 8), &dev).unwrap();
        let mask = crate::kv::padded_causal_mask(&[3], 0, 37, DType::F32, &dev).unwrap();
        let whole = {
            let att = (q.matmul(&k.t().unwrap()).unwrap() * 0.5).unwrap().broadcast_add(&mask).unwrap();
            candle_nn::ops::softmax_last_dim(&att).unwrap().matmul(&v).unwrap()
        };
        let got = attention_in_blocks(&q, &k, &v, Some(&mask), 0.5, 5).unwrap();
        let d: f32 = (whole - got).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert!(d < 1e-6, "{d}");
        assert_eq!(attention(&q, &k, &v, Some(&mask), 0.5).unwrap().dims(), &[1, 2, 37, 8]);
    }

    #[test]
    fn repeated_kv_heads_follow_each_other() {
        let x = Tensor::arange(0f32, 4.0, &Device::Cpu).unwrap().reshape((1, 2, 1, 2)).unwrap();
        let r: Vec<f32> = repeat_kv(x, 2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(r, vec![0., 1., 0., 1., 2., 3., 2., 3.]);
    }
}
