//! Which dtype each weight is kept in and which dtype the math runs in, for a run's `dtype` on a
//! device:
//!
//! - on the **CPU** with `f16` or `bf16`: the matrices of the linear layers (and the big token
//!   embedding and `lm_head`) stay in the half dtype, 2 bytes a value, and [`crate::kernels::dense`]
//!   widens them to f32 as it reads them; every activation, norm weight, bias, convolution or
//!   patch-embedding weight, position embedding, and attention is f32 ([`compute_dtype`] is f32).
//!   candle's CPU kernels for half types are slow (f16) or missing (bf16 matmul), and f32 math
//!   keeps the results within the weights' own rounding of the f32 run.
//! - on **CUDA**: the whole model in the run's dtype (cuBLAS has the half kernels).
//!
//! A model loads from a `VarBuilder` in the run's dtype: its linear layers through [`linear`],
//! everything else through [`compute`] (the same weights read in [`compute_dtype`]), and it runs
//! its activations in [`compute_dtype`].

use candle_core::{DType, Device};
use candle_nn::{Linear, VarBuilder};

use crate::Result;
use crate::weights::need;

/// The dtype activations, norms, biases and attention run in for a run's `dtype` on `device`: f32
/// on the CPU, the run's dtype elsewhere.
pub fn compute_dtype(dtype: DType, device: &Device) -> DType {
    if device.is_cpu() { DType::F32 } else { dtype }
}

/// `vb` reading its weights in [`compute_dtype`]: for norms, biases, convolutions, position and
/// class embeddings, gates, anything that is not a linear layer's matrix.
pub fn compute<'a>(vb: &VarBuilder<'a>) -> VarBuilder<'a> {
    vb.clone().set_dtype(compute_dtype(vb.dtype(), vb.device()))
}

/// A linear layer `in_dim` → `out_dim`: its matrix in `vb`'s dtype (the run's), its bias in
/// [`compute_dtype`]; a missing weight is named.
pub fn linear(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
    need(&vb, "weight")?;
    let w = vb.get((out_dim, in_dim), "weight")?;
    let b = if bias {
        need(&vb, "bias")?;
        Some(compute(&vb).get(out_dim, "bias")?)
    } else {
        None
    };
    Ok(Linear::new(w, b))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::Tensor;

    use super::*;

    #[test]
    fn on_the_cpu_matrices_stay_half_and_the_rest_is_f32() {
        let dev = Device::Cpu;
        let mut t = HashMap::new();
        t.insert("l.weight".to_owned(), Tensor::ones((3, 2), DType::F32, &dev).unwrap());
        t.insert("l.bias".to_owned(), Tensor::ones(3, DType::F32, &dev).unwrap());
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let vb = VarBuilder::from_tensors(t.clone(), dtype, &dev);
            let l = linear(vb.pp("l"), 2, 3, true).unwrap();
            assert_eq!(l.weight().dtype(), dtype);
            assert_eq!(l.bias().unwrap().dtype(), DType::F32);
            assert_eq!(compute(&vb).dtype(), DType::F32);
            assert_eq!(compute_dtype(dtype, &dev), DType::F32);
        }
        let vb = VarBuilder::from_tensors(t, DType::BF16, &dev);
        let e = linear(vb.pp("m"), 2, 3, true).unwrap_err();
        assert!(e.to_string().contains("missing weight m.weight"), "{e}");
    }
}
