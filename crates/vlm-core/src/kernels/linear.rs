//! Linear layers on the CPU with weights kept as stored (f32, f16 or bf16, 2 bytes a value for the
//! half types) and f32 inputs, products and outputs: y (rows, out) = x (rows, in) · Wᵀ + b.
//!
//! - **Decode** (at most [`GEMV_MAX_ROWS`] input rows): a GEMV bound by memory bandwidth. The
//!   weight rows are streamed once for all input rows (up to 8 at a time share one pass), split
//!   across rayon's threads; each 16-value chunk is widened to f32 in registers and multiplied
//!   into f32 accumulators. With AVX-512 (detected at run time, [`Isa::Avx512`]): bf16 → f32 is a
//!   16-bit left shift (exact), f16 → f32 is `vcvtph2ps` (`_mm512_cvtph_ps`, exact); tails are
//!   masked loads. Elsewhere [`Isa::Portable`]: the `half` crate's conversions and a 16-lane dot
//!   product the compiler vectorises.
//! - **Prefill** (more rows): a GEMM. The weight rows are cut into panels; each panel is widened
//!   to f32 in a per-thread scratch buffer (O(out·in) work, small beside the product's
//!   O(rows·out·in)) and multiplied by the `gemm` crate (candle's own f32 kernel) single-threaded
//!   into its columns of the output; panels are spread across rayon's threads, so every core
//!   works. f32 weights skip the widening.
//!
//! Why exact widening and not `vdpbf16ps` (AVX512-BF16) or AMX tiles: those products round the
//! *activations* to bf16 too (8 mantissa bits), so a bf16 run would differ from the f32 run with
//! the same rounded weights by more than summation order, and f16 weights (10 mantissa bits) would
//! lose bits they have. With exact widening the only difference from f32 is the rounding of the
//! weights themselves, which the parity tests bound. Decode is bound by reading the weights, so
//! the faster dot instruction would not make it faster. AMX intrinsics are nightly-only in Rust
//! (1.95), so they are not used.

// The kernels take a block's geometry (rows, offsets, strides) as plain arguments.
#![allow(clippy::too_many_arguments)]

use half::{bf16, f16};
use rayon::prelude::*;

/// At most this many input rows take the GEMV (decode) path; more take the GEMM (prefill) path.
pub const GEMV_MAX_ROWS: usize = 16;

/// The input rows that share one pass over the weights in the GEMV.
const GEMV_GROUP: usize = 8;

/// A weight matrix (out, in), row-major, in the dtype it is stored in.
#[derive(Clone, Copy, Debug)]
pub enum WeightRows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

impl WeightRows<'_> {
    fn len(&self) -> usize {
        match self {
            Self::F32(w) => w.len(),
            Self::F16(w) => w.len(),
            Self::Bf16(w) => w.len(),
        }
    }
}

/// The instructions the kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 F + BW + VL (x86-64, detected at run time).
    Avx512,
    /// Plain Rust: the `half` crate's conversions, auto-vectorised dot products.
    Portable,
}

/// The best [`Isa`] this processor has, detected once.
pub fn detected_isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
        {
            return Isa::Avx512;
        }
        Isa::Portable
    })
}

/// A shape that does not fit: the weight's, the input's or the bias's length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("linear layer {out_dim}x{in_dim}: {what}")]
pub struct ShapeError {
    pub out_dim: usize,
    pub in_dim: usize,
    pub what: String,
}

/// y (rows, out) = x (rows, in) · wᵀ + bias, in f32, with the kernels of `isa` (use
/// [`detected_isa`]; [`Isa::Portable`] runs anywhere). `x` holds whole rows of `in_dim` values.
pub fn linear(
    w: WeightRows,
    out_dim: usize,
    in_dim: usize,
    x: &[f32],
    bias: Option<&[f32]>,
    isa: Isa,
) -> Result<Vec<f32>, ShapeError> {
    let bad = |what: String| Err(ShapeError { out_dim, in_dim, what });
    if w.len() != out_dim * in_dim {
        return bad(format!("{} weights", w.len()));
    }
    if in_dim == 0 || !x.len().is_multiple_of(in_dim) {
        return bad(format!("an input of {} values", x.len()));
    }
    if let Some(b) = bias
        && b.len() != out_dim
    {
        return bad(format!("a bias of {} values", b.len()));
    }
    #[cfg(target_arch = "x86_64")]
    let isa = if isa == Isa::Avx512 && detected_isa() != Isa::Avx512 { Isa::Portable } else { isa };
    let rows = x.len() / in_dim;
    let mut y = if rows <= GEMV_MAX_ROWS {
        gemv(w, out_dim, in_dim, x, rows, isa)
    } else {
        gemm_panels(w, out_dim, in_dim, x, rows, isa)
    };
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(out_dim) {
            for (v, b) in row.iter_mut().zip(b) {
                *v += b;
            }
        }
    }
    Ok(y)
}

/// The decode path: output rows split across threads, each weight row read once for every group
/// of up to [`GEMV_GROUP`] input rows. Returns (rows, out).
fn gemv(w: WeightRows, out_dim: usize, k: usize, x: &[f32], rows: usize, isa: Isa) -> Vec<f32> {
    // (out, rows): each task owns a contiguous run of output rows.
    let mut yt = vec![0f32; out_dim * rows];
    let per_task = out_dim.div_ceil(rayon::current_num_threads().max(1) * 4).max(16).next_multiple_of(4);
    yt.par_chunks_mut(per_task * rows).enumerate().for_each(|(c, ys)| {
        let first = c * per_task;
        let n = ys.len() / rows;
        let mut col = 0;
        while col < rows {
            let r = GEMV_GROUP.min(rows - col);
            let xs = &x[col * k..(col + r) * k];
            block(w, first, n, k, xs, r, ys, rows, col, isa);
            col += r;
        }
    });
    if rows == 1 {
        return yt;
    }
    let mut y = vec![0f32; rows * out_dim];
    for (o, vals) in yt.chunks_exact(rows).enumerate() {
        for (r, v) in vals.iter().enumerate() {
            y[r * out_dim + o] = *v;
        }
    }
    y
}

/// Output rows `first..first + n` for `r` input rows `xs`: `out[(o - first) * stride + col + j]`.
fn block(
    w: WeightRows,
    first: usize,
    n: usize,
    k: usize,
    xs: &[f32],
    r: usize,
    out: &mut [f32],
    stride: usize,
    col: usize,
    isa: Isa,
) {
    debug_assert!(out.len() >= n * stride && xs.len() == r * k && (first + n) * k <= w.len());
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: Avx512 is only chosen when the processor has AVX-512 F, BW and VL (`linear`
        // re-checks); the slices' bounds are checked above and by the callers' arithmetic.
        unsafe { avx512::block(w, first, n, k, xs, r, out, stride, col) };
        return;
    }
    let _ = isa;
    match w {
        WeightRows::F32(w) => portable_block(w, first, n, k, xs, r, out, stride, col),
        WeightRows::F16(w) => portable_block(w, first, n, k, xs, r, out, stride, col),
        WeightRows::Bf16(w) => portable_block(w, first, n, k, xs, r, out, stride, col),
    }
}

/// A value widened to f32 (exactly, for every type here).
trait Widen: Copy + Send + Sync {
    fn widen(self) -> f32;
}

impl Widen for f32 {
    fn widen(self) -> f32 {
        self
    }
}

impl Widen for f16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl Widen for bf16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// [`block`] in plain Rust: each weight row widened once into a buffer, then dotted with each
/// input row.
fn portable_block<T: Widen>(
    w: &[T],
    first: usize,
    n: usize,
    k: usize,
    xs: &[f32],
    r: usize,
    out: &mut [f32],
    stride: usize,
    col: usize,
) {
    let mut row = vec![0f32; k];
    for o in 0..n {
        for (d, s) in row.iter_mut().zip(&w[(first + o) * k..(first + o + 1) * k]) {
            *d = s.widen();
        }
        for j in 0..r {
            out[o * stride + col + j] = dot(&row, &xs[j * k..(j + 1) * k]);
        }
    }
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

/// `dst` = weight values `start..start + dst.len()` widened to f32.
fn widen_into(w: WeightRows, start: usize, dst: &mut [f32], isa: Isa) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: as in `block`; `start + dst.len()` is within the weights (the caller's panel).
        unsafe { avx512::widen_into(w, start, dst) };
        return;
    }
    let _ = isa;
    let n = dst.len();
    match w {
        WeightRows::F32(w) => dst.copy_from_slice(&w[start..start + n]),
        WeightRows::F16(w) => dst.iter_mut().zip(&w[start..start + n]).for_each(|(d, s)| *d = s.to_f32()),
        WeightRows::Bf16(w) => dst.iter_mut().zip(&w[start..start + n]).for_each(|(d, s)| *d = s.to_f32()),
    }
}

/// A raw output pointer shared by the panel tasks, each writing its own columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the tasks write disjoint columns of one buffer that outlives them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// The prefill path: panels of weight rows widened to f32 and multiplied by `gemm`, one panel a
/// task. Returns (rows, out).
fn gemm_panels(w: WeightRows, out_dim: usize, k: usize, x: &[f32], rows: usize, isa: Isa) -> Vec<f32> {
    let mut y = vec![0f32; rows * out_dim];
    let threads = rayon::current_num_threads().max(1);
    let panel = out_dim.div_ceil(threads * 2).next_multiple_of(16).clamp(16, 256);
    let panels = out_dim.div_ceil(panel);
    let yp = OutPtr(y.as_mut_ptr());
    (0..panels).into_par_iter().for_each_init(Vec::new, |scratch: &mut Vec<f32>, p| {
        let a = p * panel;
        let n = panel.min(out_dim - a);
        let rhs: *const f32 = match w {
            WeightRows::F32(w) => w[a * k..(a + n) * k].as_ptr(),
            _ => {
                scratch.resize(n * k, 0.0);
                widen_into(w, a * k, &mut scratch[..n * k], isa);
                scratch.as_ptr()
            }
        };
        // SAFETY: dst is columns a..a+n of the (rows, out_dim) output, no other task writes them;
        // lhs is x (rows, k) row-major; rhs (k, n) is the panel (n, k) row-major read transposed
        // (row stride 1, column stride k). All three stay alive for the call.
        unsafe {
            gemm::gemm(
                rows,
                n,
                k,
                yp.get().add(a),
                1,
                out_dim as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                rhs,
                k as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        };
    });
    y
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! The AVX-512 kernels: 16 weights a load, widened to f32 in registers.

    use std::arch::x86_64::*;

    use half::{bf16, f16};

    use super::WeightRows;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load_f32(p: *const f32, m: __mmask16) -> __m512 {
        // SAFETY: the caller's mask covers only values inside the slice.
        unsafe { _mm512_maskz_loadu_ps(m, p) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load_f16(p: *const f16, m: __mmask16) -> __m512 {
        // SAFETY: as in load_f32.
        unsafe { _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p.cast())) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load_bf16(p: *const bf16, m: __mmask16) -> __m512 {
        // SAFETY: as in load_f32. bf16 is the high half of an f32: widen to 32 bits, shift left.
        unsafe {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p.cast()))))
        }
    }

    /// `O` weight rows × `R` input rows: `out[a * stride + col + j] = Σ_i w[(row + a)·k + i] · x[j·k + i]`.
    macro_rules! tile {
        ($name:ident, $t:ty, $load:ident) => {
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
            unsafe fn $name<const O: usize, const R: usize>(
                w: *const $t,
                k: usize,
                x: *const f32,
                out: *mut f32,
                stride: usize,
            ) {
                let mut acc = [[_mm512_setzero_ps(); R]; O];
                let mut i = 0;
                while i < k {
                    let m: __mmask16 = if k - i >= 16 { 0xFFFF } else { ((1u32 << (k - i)) - 1) as __mmask16 };
                    let mut wv = [_mm512_setzero_ps(); O];
                    for (a, v) in wv.iter_mut().enumerate() {
                        // SAFETY: row a of the tile, values i..i + 16 masked to the row's end.
                        *v = unsafe { $load(w.add(a * k + i), m) };
                    }
                    for j in 0..R {
                        // SAFETY: input row j, the same masked range.
                        let xv = unsafe { _mm512_maskz_loadu_ps(m, x.add(j * k + i)) };
                        for a in 0..O {
                            acc[a][j] = _mm512_fmadd_ps(wv[a], xv, acc[a][j]);
                        }
                    }
                    i += 16;
                }
                for a in 0..O {
                    for j in 0..R {
                        // SAFETY: the caller's output holds O rows of `stride`.
                        unsafe { *out.add(a * stride + j) = _mm512_reduce_add_ps(acc[a][j]) };
                    }
                }
            }
        };
    }

    tile!(tile_f32, f32, load_f32);
    tile!(tile_f16, f16, load_f16);
    tile!(tile_bf16, bf16, load_bf16);

    /// Rows `first..first + n` of one weight type, `R` input rows, 2 weight rows a tile (4 for
    /// one or two input rows, so enough loads are in flight).
    macro_rules! rows {
        ($name:ident, $t:ty, $tile:ident) => {
            #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
            unsafe fn $name<const R: usize>(
                w: &[$t],
                first: usize,
                n: usize,
                k: usize,
                xs: &[f32],
                out: &mut [f32],
                stride: usize,
                col: usize,
            ) {
                let (wp, xp, op) = (w.as_ptr(), xs.as_ptr(), out.as_mut_ptr());
                let mut o = 0;
                // SAFETY (all tiles): rows first + o .. first + o + O exist (o + O <= n, checked by
                // the caller's debug assertion on (first + n)·k); the output holds n rows of
                // `stride` from `col`.
                if R <= 2 {
                    while o + 4 <= n {
                        unsafe { $tile::<4, R>(wp.add((first + o) * k), k, xp, op.add(o * stride + col), stride) };
                        o += 4;
                    }
                }
                while o + 2 <= n {
                    unsafe { $tile::<2, R>(wp.add((first + o) * k), k, xp, op.add(o * stride + col), stride) };
                    o += 2;
                }
                if o < n {
                    unsafe { $tile::<1, R>(wp.add((first + o) * k), k, xp, op.add(o * stride + col), stride) };
                }
            }
        };
    }

    rows!(rows_f32, f32, tile_f32);
    rows!(rows_f16, f16, tile_f16);
    rows!(rows_bf16, bf16, tile_bf16);

    /// [`super::block`] with AVX-512.
    ///
    /// # Safety
    /// The processor has AVX-512 F, BW and VL; rows `first..first + n` of `w` exist; `xs` holds
    /// `r` rows of `k`; `out` holds `n` rows of `stride` values from `col`, `col + r <= stride`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn block(
        w: WeightRows,
        first: usize,
        n: usize,
        k: usize,
        xs: &[f32],
        r: usize,
        out: &mut [f32],
        stride: usize,
        col: usize,
    ) {
        macro_rules! by_rows {
            ($f:ident, $w:expr) => {
                // SAFETY: the caller's contract.
                unsafe {
                    match r {
                        1 => $f::<1>($w, first, n, k, xs, out, stride, col),
                        2 => $f::<2>($w, first, n, k, xs, out, stride, col),
                        3 => $f::<3>($w, first, n, k, xs, out, stride, col),
                        4 => $f::<4>($w, first, n, k, xs, out, stride, col),
                        5 => $f::<5>($w, first, n, k, xs, out, stride, col),
                        6 => $f::<6>($w, first, n, k, xs, out, stride, col),
                        7 => $f::<7>($w, first, n, k, xs, out, stride, col),
                        _ => $f::<8>($w, first, n, k, xs, out, stride, col),
                    }
                }
            };
        }
        match w {
            WeightRows::F32(w) => by_rows!(rows_f32, w),
            WeightRows::F16(w) => by_rows!(rows_f16, w),
            WeightRows::Bf16(w) => by_rows!(rows_bf16, w),
        }
    }

    /// `dst` = weight values `start..start + dst.len()` widened to f32.
    ///
    /// # Safety
    /// The processor has AVX-512 F, BW and VL; `start + dst.len()` is within `w`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn widen_into(w: WeightRows, start: usize, dst: &mut [f32]) {
        let n = dst.len();
        let d = dst.as_mut_ptr();
        let mut i = 0;
        while i < n {
            let m: __mmask16 = if n - i >= 16 { 0xFFFF } else { ((1u32 << (n - i)) - 1) as __mmask16 };
            // SAFETY: values i..i + 16 masked to n, within the caller's range.
            unsafe {
                let v = match w {
                    WeightRows::F32(w) => load_f32(w.as_ptr().add(start + i), m),
                    WeightRows::F16(w) => load_f16(w.as_ptr().add(start + i), m),
                    WeightRows::Bf16(w) => load_bf16(w.as_ptr().add(start + i), m),
                };
                _mm512_mask_storeu_ps(d.add(i), m, v);
            }
            i += 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The product in f64 of the weights as `linear` sees them (already rounded to their dtype),
    /// and for each output the sum of |terms| (the scale a relative error is taken against).
    fn reference(w: &[f32], out_dim: usize, k: usize, x: &[f32], bias: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
        let rows = x.len() / k;
        let (mut y, mut scale) = (vec![0f32; rows * out_dim], vec![0f32; rows * out_dim]);
        for r in 0..rows {
            for o in 0..out_dim {
                let (mut s, mut a) = (bias.map_or(0.0, |b| b[o] as f64), bias.map_or(0.0, |b| b[o].abs() as f64));
                for i in 0..k {
                    let t = w[o * k + i] as f64 * x[r * k + i] as f64;
                    s += t;
                    a += t.abs();
                }
                y[r * out_dim + o] = s as f32;
                scale[r * out_dim + o] = a as f32;
            }
        }
        (y, scale)
    }

    fn check(isa: Isa) {
        // Odd sizes: neither is a multiple of 16 (masked tails, uneven tasks and panels).
        let (out_dim, k) = (77, 83);
        let w32 = values(out_dim * k, 1);
        let w16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
        let wb16: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
        let up16: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
        let upb16: Vec<f32> = wb16.iter().map(|v| v.to_f32()).collect();
        let bias = values(out_dim, 2);
        let cases: [(&str, WeightRows, &[f32]); 3] = [
            ("f32", WeightRows::F32(&w32), &w32),
            ("f16", WeightRows::F16(&w16), &up16),
            ("bf16", WeightRows::Bf16(&wb16), &upb16),
        ];
        for (name, w, upcast) in cases {
            for rows in [1, 3, 11, 100] {
                let x = values(rows * k, 3 + rows as u64);
                for b in [None, Some(bias.as_slice())] {
                    let got = linear(w, out_dim, k, &x, b, isa).unwrap();
                    let (want, scale) = reference(upcast, out_dim, k, &x, b);
                    for (i, ((g, w), s)) in got.iter().zip(&want).zip(&scale).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-5 * s.max(1e-6),
                            "{isa:?} {name} rows {rows} bias {}: y[{i}] {g} vs {w}",
                            b.is_some()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_portable_kernels_equal_the_f32_product_of_the_upcast_weights() {
        check(Isa::Portable);
    }

    #[test]
    fn the_detected_kernels_equal_the_f32_product_of_the_upcast_weights() {
        println!("detected: {:?}", detected_isa());
        check(detected_isa());
    }

    #[test]
    fn shapes_that_disagree_are_errors_naming_them() {
        let w = [0f32; 6];
        let e = linear(WeightRows::F32(&w), 2, 3, &[1.0; 4], None, Isa::Portable).unwrap_err();
        assert_eq!(e.to_string(), "linear layer 2x3: an input of 4 values");
        let e = linear(WeightRows::F32(&w), 3, 3, &[1.0; 3], None, Isa::Portable).unwrap_err();
        assert_eq!(e.to_string(), "linear layer 3x3: 6 weights");
        let e = linear(WeightRows::F32(&w), 2, 3, &[1.0; 3], Some(&[1.0]), Isa::Portable).unwrap_err();
        assert_eq!(e.to_string(), "linear layer 2x3: a bias of 1 values");
    }
}
