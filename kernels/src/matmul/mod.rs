//! Dense layers: `out = inp · W (+ bias)` and its backward, on the `gemm` crate.
//!
//! Dimension legend:
//! - N: rows = B*T (batch times time)
//! - C: input channels
//! - OC: output channels
//!
//! `gemm` runs on rayon's current pool (pick the thread count with
//! `ThreadPool::install`). It parallelizes over tiles of the output and keeps
//! the reduction dimension sequential, so results are bitwise deterministic for
//! a given thread count.
//!
//! Notes on `gemm` 0.19 (measured on a 2-vCPU Zen 3 VM, 1 thread): it detects
//! the caches correctly there (L1d 32 KiB/8-way, L2 512 KiB/8-way, L3 32 MiB)
//! and picks kc ≤ 512 (balanced over K), mc = 128, nc = all columns; it offers
//! no way to override that blocking. It always makes the contiguous direction
//! of `dst` its row dimension (transposing the problem itself), so the order
//! in which the operands are passed does not matter, only `dst`'s layout.
//! Splitting K into smaller chunks (accumulating into `dst`) or the rows into
//! panels did not help: each extra pass re-reads `dst` and repacks an operand.

use gemm::Parallelism;
use rayon::prelude::*;

/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 18;

/// Rows per task in the row-parallel helper loops.
const ROWS_PER_TASK: usize = 64;

/// Columns per task when summing `dout` over rows for `dbias`.
const BIAS_COLS_PER_TASK: usize = 256;

/// How a weight matrix is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[C, OC]`: input channels major (Hugging Face `Conv1D`, llm.c's transpose).
    InOut,
    /// `[OC, C]`: output channels major (`nn.Linear`; the tied LM head `wte [V, C]`).
    OutIn,
}

impl WeightLayout {
    /// Strides (column step, row step) of the weight seen as the `[C, OC]` matrix `W`.
    fn as_in_out_strides(self, c: usize, oc: usize) -> (isize, isize) {
        match self {
            WeightLayout::InOut => (1, oc as isize),
            WeightLayout::OutIn => (c as isize, 1),
        }
    }
}

/// A strided row-major view for `gemm`: base pointer, column stride, row stride.
struct View {
    ptr: *const f32,
    cs: isize,
    rs: isize,
}

/// `dst[m, n] = (dst if accumulate) + lhs[m, k] · rhs[k, n]`, `dst` row-major with
/// row stride `n`.
fn gemm_into(
    dst: &mut [f32],
    accumulate: bool,
    lhs: View,
    rhs: View,
    m: usize,
    n: usize,
    k: usize,
) {
    assert!(dst.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 && m * n * k >= PARALLEL_MIN_WORK {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: `dst` holds m*n elements (asserted); the callers assert that the
    // views cover k*m and k*n elements at the given strides; the output does not
    // alias the inputs (it is a `&mut` slice and they come from `&` slices).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `out[N, OC] = inp[N, C] · W (+ bias[OC])`; overwrites `out`.
///
/// `weight` is `[C, OC]` for [`WeightLayout::InOut`] and `[OC, C]` for
/// [`WeightLayout::OutIn`].
pub fn matmul_forward(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    n: usize,
    c: usize,
    oc: usize,
    layout: WeightLayout,
) {
    assert_eq!(out.len(), n * oc);
    assert_eq!(inp.len(), n * c);
    assert_eq!(weight.len(), c * oc);
    let accumulate = match bias {
        Some(bias) => {
            assert_eq!(bias.len(), oc);
            if oc > 0 {
                out.par_chunks_mut(oc)
                    .with_min_len(ROWS_PER_TASK)
                    .for_each(|row| row.copy_from_slice(bias));
            }
            true
        }
        None => false,
    };
    let (w_cs, w_rs) = layout.as_in_out_strides(c, oc);
    let lhs = View {
        ptr: inp.as_ptr(),
        cs: 1,
        rs: c as isize,
    };
    let rhs = View {
        ptr: weight.as_ptr(),
        cs: w_cs,
        rs: w_rs,
    };
    gemm_into(out, accumulate, lhs, rhs, n, oc, c);
}

/// Backward of [`matmul_forward`]; accumulates into every gradient:
/// `dinp += dout · Wᵀ` (skipped when `None`), `dweight += inpᵀ · dout` (stored in
/// `layout`), `dbias += Σ_rows dout`.
pub fn matmul_backward(
    dinp: Option<&mut [f32]>,
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    n: usize,
    c: usize,
    oc: usize,
    layout: WeightLayout,
) {
    assert_eq!(dout.len(), n * oc);
    assert_eq!(inp.len(), n * c);
    assert_eq!(weight.len(), c * oc);
    assert_eq!(dweight.len(), c * oc);
    if let Some(dinp) = dinp {
        assert_eq!(dinp.len(), n * c);
        // dinp[N, C] += dout[N, OC] · Wᵀ, where Wᵀ[o, i] = W[i, o].
        let (w_cs, w_rs) = layout.as_in_out_strides(c, oc);
        let lhs = View {
            ptr: dout.as_ptr(),
            cs: 1,
            rs: oc as isize,
        };
        let rhs = View {
            ptr: weight.as_ptr(),
            cs: w_rs,
            rs: w_cs,
        };
        gemm_into(dinp, true, lhs, rhs, n, c, oc);
    }
    match layout {
        WeightLayout::InOut => {
            // dweight[C, OC] += inpᵀ[C, N] · dout[N, OC]
            let lhs = View {
                ptr: inp.as_ptr(),
                cs: c as isize,
                rs: 1,
            };
            let rhs = View {
                ptr: dout.as_ptr(),
                cs: 1,
                rs: oc as isize,
            };
            gemm_into(dweight, true, lhs, rhs, c, oc, n);
        }
        WeightLayout::OutIn => outin_weight_grad(dweight, dout, inp, n, c, oc),
    }
    if let Some(dbias) = dbias {
        assert_eq!(dbias.len(), oc);
        dbias
            .par_chunks_mut(BIAS_COLS_PER_TASK)
            .enumerate()
            .for_each(|(block, db)| {
                // Each column is summed over rows in row order: deterministic.
                let col0 = block * BIAS_COLS_PER_TASK;
                let mut sum = vec![0f32; db.len()];
                for row in dout.chunks_exact(oc) {
                    for (s, &g) in sum.iter_mut().zip(&row[col0..col0 + db.len()]) {
                        *s += g;
                    }
                }
                for (d, s) in db.iter_mut().zip(sum) {
                    *d += s;
                }
            });
    }
}

/// Target size in floats of the scratch panel of [`outin_weight_grad`] (4 MiB).
const OUTIN_PANEL_FLOATS: usize = 1 << 20;

/// Rows and columns of the square tiles of the transpose-add.
const TRANSPOSE_TILE: usize = 16;

std::thread_local! {
    /// Per-thread scratch of [`outin_weight_grad`], kept to avoid page faults.
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `dweight[OC, C] += doutᵀ[OC, N] · inp[N, C]` for the [`WeightLayout::OutIn`]
/// layout.
///
/// Called directly, `gemm` would make `C` (the contiguous direction of
/// `dweight`) its row dimension and stream `dout` through its narrow, strided
/// right-hand packing (6 floats per row of `dout`); for the LM head
/// (`OC = V`) that runs at ~60 GFLOP/s. Instead each panel of `P` output
/// channels is computed as `tmp[C, P] = inpᵀ · dout[:, panel]`, whose
/// contiguous direction is `P`: `dout` then goes through the wide left-hand
/// packing (whole cache lines) and `inp`, the small operand, through the right
/// one. `tmp` is transposed and added into `dweight`. Fixed order:
/// deterministic for a given thread count.
fn outin_weight_grad(
    dweight: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    n: usize,
    c: usize,
    oc: usize,
) {
    if c == 0 || oc == 0 {
        return;
    }
    let panel = (OUTIN_PANEL_FLOATS / c)
        .next_multiple_of(TRANSPOSE_TILE)
        .max(TRANSPOSE_TILE)
        .min(oc);
    let mut tmp = SCRATCH.with(|s| s.take());
    if tmp.len() < c * panel {
        tmp = vec![0f32; c * panel];
    }
    let mut o0 = 0;
    while o0 < oc {
        let p = panel.min(oc - o0);
        // tmp[C, p] = inpᵀ[C, N] · dout[N, o0..o0 + p]
        let lhs = View {
            ptr: inp.as_ptr(),
            cs: c as isize,
            rs: 1,
        };
        let rhs = View {
            ptr: dout[o0..].as_ptr(),
            cs: 1,
            rs: oc as isize,
        };
        gemm_into(&mut tmp[..c * p], false, lhs, rhs, c, p, n);
        transpose_add(&mut dweight[o0 * c..(o0 + p) * c], &tmp[..c * p], c, p);
        o0 += p;
    }
    SCRATCH.with(|s| s.set(tmp));
}

/// `dst[j, i] += src[i, j]` for `src` `[rows, cols]` and `dst` `[cols, rows]`,
/// both row-major; bands of `TRANSPOSE_TILE` `dst` rows run in parallel.
fn transpose_add(dst: &mut [f32], src: &[f32], rows: usize, cols: usize) {
    const T: usize = TRANSPOSE_TILE;
    assert_eq!(dst.len(), rows * cols);
    assert_eq!(src.len(), rows * cols);
    dst.par_chunks_mut(T * rows)
        .enumerate()
        .for_each(|(band, dst)| {
            let j0 = band * T;
            let nj = dst.len() / rows;
            let mut i = 0;
            #[cfg(target_arch = "x86_64")]
            if crate::simd::has_avx2_fma() {
                let full_j = nj / 8 * 8;
                while i + 8 <= rows {
                    for jj in (0..full_j).step_by(8) {
                        // SAFETY: AVX2 is available (checked above); the 8x8
                        // block at src[i.., j0 + jj..] and dst[jj.., i..] is in
                        // bounds (i + 8 <= rows, jj + 8 <= nj, j0 + nj <= cols).
                        unsafe {
                            transpose_add_8x8(
                                dst.as_mut_ptr().add(jj * rows + i),
                                rows,
                                src.as_ptr().add(i * cols + j0 + jj),
                                cols,
                            )
                        };
                    }
                    for r in i..i + 8 {
                        for jj in full_j..nj {
                            dst[jj * rows + r] += src[r * cols + j0 + jj];
                        }
                    }
                    i += 8;
                }
            }
            for r in i..rows {
                for jj in 0..nj {
                    dst[jj * rows + r] += src[r * cols + j0 + jj];
                }
            }
        });
}

/// `dst[j * ld_dst + i] += src[i * ld_src + j]` for `i, j < 8`.
///
/// # Safety
/// The CPU must support AVX2, and both 8x8 blocks must be in bounds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_add_8x8(dst: *mut f32, ld_dst: usize, src: *const f32, ld_src: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees that the 8 rows of 8 floats are in bounds.
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|k| _mm256_loadu_ps(src.add(k * ld_src)));
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let cols = [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ];
        for (k, col) in cols.into_iter().enumerate() {
            let d = dst.add(k * ld_dst);
            _mm256_storeu_ps(d, _mm256_add_ps(_mm256_loadu_ps(d), col));
        }
    }
}

/// Times [`matmul_forward`] for `out[m, n] = inp[m, k] · W[k, n]` (no bias,
/// [`WeightLayout::InOut`]) on rayon's current pool and returns GFLOP/s
/// (`2·m·n·k` per call) of the fastest of `reps` timed calls after one warm-up.
pub fn measure_gemm_gflops(m: usize, n: usize, k: usize, reps: usize) -> f64 {
    let inp: Vec<f32> = (0..m * k).map(|i| (i % 97) as f32 * 0.01 - 0.5).collect();
    let weight: Vec<f32> = (0..k * n).map(|i| (i % 89) as f32 * 0.01 - 0.4).collect();
    let mut out = vec![0f32; m * n];
    matmul_forward(&mut out, &inp, &weight, None, m, k, n, WeightLayout::InOut);
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let start = std::time::Instant::now();
        matmul_forward(&mut out, &inp, &weight, None, m, k, n, WeightLayout::InOut);
        best = best.min(start.elapsed().as_secs_f64());
    }
    2.0 * (m * n * k) as f64 / best.max(1e-12) / 1e9
}

pub mod reference;
#[cfg(test)]
mod tests;
