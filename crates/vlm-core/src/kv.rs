//! The KV cache and left padding, shared by every decoder: one [`KvBuffer`] per layer, written in
//! place and grown by doubling; a batch of prompts of different lengths left-padded into one
//! tensor ([`left_pad`]) with the attention mask transformers builds for it ([`padded_causal_mask`]).

use candle_core::{DType, Device, Tensor};

/// One layer's keys and values, (batch, kv heads, capacity, head dim), written in place and grown
/// by doubling, so a decode step appends one position instead of copying the whole history.
#[derive(Default)]
pub struct KvBuffer {
    buffers: Option<(Tensor, Tensor)>,
    len: usize,
}

impl KvBuffer {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `k`, `v` (batch, kv heads, n, head dim); returns views of everything held.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
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
        kb.slice_set(&k.contiguous()?, 2, self.len)?;
        vb.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = need;
        Ok((kb.narrow(2, 0, need)?, vb.narrow(2, 0, need)?))
    }
}

/// The per-sequence (or per-batch) KV cache: one buffer per layer and the positions held.
pub struct Cache {
    pub kvs: Vec<KvBuffer>,
    pub len: usize,
}

impl Cache {
    pub fn new(layers: usize) -> Self {
        Self { kvs: (0..layers).map(|_| KvBuffer::default()).collect(), len: 0 }
    }
}

/// Prompts (1, n_i, hidden) left-padded with zeros into one (b, max n, hidden) tensor; returns it
/// and each row's number of padding positions.
pub fn left_pad(prompts: &[Tensor]) -> candle_core::Result<(Tensor, Vec<usize>)> {
    let lens: Vec<usize> = prompts.iter().map(|p| p.dim(1)).collect::<candle_core::Result<_>>()?;
    let n = lens.iter().copied().max().unwrap_or(0);
    let pads: Vec<usize> = lens.iter().map(|l| n - l).collect();
    let rows = prompts
        .iter()
        .zip(&pads)
        .map(|(p, &pad)| {
            if pad == 0 {
                Ok(p.clone())
            } else {
                let hidden = p.dim(2)?;
                Tensor::cat(&[&Tensor::zeros((1, pad, hidden), p.dtype(), p.device())?, p], 1)
            }
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok((Tensor::cat(&rows, 0)?, pads))
}

/// The additive attention mask (b, 1, n, start + n) for `n` new positions after `start` cached
/// ones, row `r` having `pads[r]` padding positions at the start of the whole sequence: causal,
/// padding hidden. A padding position sees only itself, so that no row is all -inf (its softmax
/// would be NaN, and 0 * NaN poisons the real rows that mask it out).
pub fn padded_causal_mask(
    pads: &[usize],
    start: usize,
    n: usize,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let total = start + n;
    let mut mask = Vec::with_capacity(pads.len() * n * total);
    for &pad in pads {
        for i in 0..n {
            let q = start + i;
            let visible = |k: usize| if q < pad { k == q } else { k >= pad && k <= q };
            mask.extend((0..total).map(|k| if visible(k) { 0f32 } else { f32::NEG_INFINITY }));
        }
    }
    Tensor::from_vec(mask, (pads.len(), 1, n, total), device)?.to_dtype(dtype)
}

/// The 1-D positions transformers gives left-padded rows (`cumsum(attention_mask) - 1`, padding
/// at 0): row-major (b, n) for `n` new positions after `start` cached ones.
pub fn padded_positions(pads: &[usize], start: usize, n: usize) -> Vec<u32> {
    let mut positions = Vec::with_capacity(pads.len() * n);
    for &pad in pads {
        positions.extend((0..n).map(|i| (start + i).saturating_sub(pad) as u32));
    }
    positions
}

/// A left-padded batch of `b` rows must have one padding a row, and a prompt of `n` new positions
/// (`start` 0) must fit the model's context of `max_positions`: its longest row, without padding.
/// Only the prompt can be too long: each row's budget of new tokens fits its context, and a row
/// that has finished keeps stepping (its tokens ignored) while the others go on (see
/// [`held_positions`]).
pub fn check_context(pads: &[usize], b: usize, start: usize, n: usize, max_positions: usize) -> crate::Result<()> {
    if pads.len() != b {
        return Err(crate::ModelError::Input(format!("{} pads for a batch of {b}", pads.len())));
    }
    let longest = start + n - pads.iter().copied().min().unwrap_or(0);
    if start == 0 && longest > max_positions {
        return Err(crate::ModelError::Input(format!(
            "the sequence needs {longest} positions, more than the model's context of {max_positions} \
             (max_position_embeddings)"
        )));
    }
    Ok(())
}

/// [`padded_positions`], each held at the context's last position (`max_positions - 1`), so that a
/// row that has finished but keeps stepping with the batch never reads past the context.
pub fn held_positions(pads: &[usize], start: usize, n: usize, max_positions: usize) -> Vec<u32> {
    let last = max_positions.saturating_sub(1) as u32;
    padded_positions(pads, start, n).into_iter().map(|p| p.min(last)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_grows_and_keeps_what_it_held() {
        let dev = Device::Cpu;
        let mut kv = KvBuffer::default();
        let k = Tensor::ones((1, 2, 70, 4), DType::F32, &dev).unwrap();
        let (k1, _) = kv.append(&k, &k).unwrap();
        assert_eq!(k1.dims(), &[1, 2, 70, 4]);
        let one = Tensor::full(2f32, (1, 2, 1, 4), &dev).unwrap();
        for _ in 0..100 {
            kv.append(&one, &one).unwrap();
        }
        let (k2, _) = kv.append(&one, &one).unwrap();
        assert_eq!(k2.dims(), &[1, 2, 171, 4]);
        let sum: f32 = k2.sum_all().unwrap().to_scalar().unwrap();
        assert_eq!(sum, (70 * 8 + 101 * 16) as f32);
        assert_eq!(kv.len(), 171);
    }

    #[test]
    fn padding_is_masked_and_positions_start_at_the_first_real_token() {
        let m = padded_causal_mask(&[0, 2], 0, 3, DType::F32, &Device::Cpu).unwrap();
        let m: Vec<Vec<Vec<f32>>> = m.squeeze(1).unwrap().to_vec3().unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(m[0], vec![vec![0., inf, inf], vec![0., 0., inf], vec![0., 0., 0.]]);
        assert_eq!(m[1], vec![vec![0., inf, inf], vec![inf, 0., inf], vec![inf, inf, 0.]]);
        assert_eq!(padded_positions(&[0, 2], 0, 3), vec![0, 1, 2, 0, 0, 0]);
        assert_eq!(padded_positions(&[0, 2], 3, 1), vec![3, 1]);
    }

    #[test]
    fn only_a_prompt_longer_than_the_context_is_refused_and_steps_are_held_at_its_end() {
        assert!(check_context(&[2, 3], 2, 0, 6, 4).is_ok());
        let e = check_context(&[1, 3], 2, 0, 6, 4).unwrap_err().to_string();
        assert!(e.contains("needs 5 positions") && e.contains("context of 4"), "{e}");
        assert!(check_context(&[0], 1, 9, 1, 4).is_ok());
        assert!(check_context(&[0], 2, 0, 1, 4).unwrap_err().to_string().contains("1 pads for a batch of 2"));
        assert_eq!(held_positions(&[0, 2], 3, 2, 4), vec![3, 3, 1, 2]);
    }
}
