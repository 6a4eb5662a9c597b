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
        WeightLayout::OutIn => {
            // dweight[OC, C] += doutᵀ[OC, N] · inp[N, C]
            let lhs = View {
                ptr: dout.as_ptr(),
                cs: oc as isize,
                rs: 1,
            };
            let rhs = View {
                ptr: inp.as_ptr(),
                cs: 1,
                rs: c as isize,
            };
            gemm_into(dweight, true, lhs, rhs, oc, c, n);
        }
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

/// Slow, obvious f64 implementations that the tests hold the kernels to.
pub mod reference {
    use super::WeightLayout;

    /// `W[i, o]` for either layout.
    fn w(weight: &[f64], i: usize, o: usize, c: usize, oc: usize, layout: WeightLayout) -> f64 {
        match layout {
            WeightLayout::InOut => weight[i * oc + o],
            WeightLayout::OutIn => weight[o * c + i],
        }
    }

    /// Reference [`super::matmul_forward`].
    pub fn matmul_forward(
        out: &mut [f64],
        inp: &[f64],
        weight: &[f64],
        bias: Option<&[f64]>,
        n: usize,
        c: usize,
        oc: usize,
        layout: WeightLayout,
    ) {
        for r in 0..n {
            for o in 0..oc {
                let mut s = bias.map_or(0.0, |b| b[o]);
                for i in 0..c {
                    s += inp[r * c + i] * w(weight, i, o, c, oc, layout);
                }
                out[r * oc + o] = s;
            }
        }
    }

    /// Reference [`super::matmul_backward`] (accumulates).
    pub fn matmul_backward(
        mut dinp: Option<&mut [f64]>,
        dweight: &mut [f64],
        mut dbias: Option<&mut [f64]>,
        dout: &[f64],
        inp: &[f64],
        weight: &[f64],
        n: usize,
        c: usize,
        oc: usize,
        layout: WeightLayout,
    ) {
        for r in 0..n {
            for o in 0..oc {
                let g = dout[r * oc + o];
                if let Some(db) = dbias.as_deref_mut() {
                    db[o] += g;
                }
                for i in 0..c {
                    if let Some(di) = dinp.as_deref_mut() {
                        di[r * c + i] += g * w(weight, i, o, c, oc, layout);
                    }
                    let wi = match layout {
                        WeightLayout::InOut => i * oc + o,
                        WeightLayout::OutIn => o * c + i,
                    };
                    dweight[wi] += g * inp[r * c + i];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, random, to_f32, to_f64};

    fn check(n: usize, c: usize, oc: usize, layout: WeightLayout, with_bias: bool, seed: u64) {
        let inp = random(n * c, seed);
        let weight = random(c * oc, seed + 1);
        let bias = random(oc, seed + 2);
        let dout = random(n * oc, seed + 3);
        let bias32 = with_bias.then(|| to_f32(&bias));
        let mut out = vec![f32::NAN; n * oc];
        matmul_forward(
            &mut out,
            &to_f32(&inp),
            &to_f32(&weight),
            bias32.as_deref(),
            n,
            c,
            oc,
            layout,
        );
        let mut want = vec![0.0; n * oc];
        reference::matmul_forward(
            &mut want,
            &inp,
            &weight,
            with_bias.then_some(&bias[..]),
            n,
            c,
            oc,
            layout,
        );
        assert_close("out", &out, &want, 1e-5, 1e-5);

        // Gradients start non-zero to check accumulation.
        let dinp0 = random(n * c, seed + 4);
        let dw0 = random(c * oc, seed + 5);
        let db0 = random(oc, seed + 6);
        let (mut dinp, mut dw, mut db) = (to_f32(&dinp0), to_f32(&dw0), to_f32(&db0));
        matmul_backward(
            Some(&mut dinp),
            &mut dw,
            with_bias.then_some(&mut db[..]),
            &to_f32(&dout),
            &to_f32(&inp),
            &to_f32(&weight),
            n,
            c,
            oc,
            layout,
        );
        let (mut rdinp, mut rdw, mut rdb) = (dinp0.clone(), dw0.clone(), db0.clone());
        reference::matmul_backward(
            Some(&mut rdinp),
            &mut rdw,
            with_bias.then_some(&mut rdb[..]),
            &dout,
            &inp,
            &weight,
            n,
            c,
            oc,
            layout,
        );
        assert_close("dinp", &dinp, &rdinp, 1e-5, 1e-5);
        assert_close("dweight", &dw, &rdw, 1e-5, 1e-5);
        assert_close("dbias", &db, &rdb, 1e-5, 1e-5);

        // dinp = None leaves only dweight/dbias.
        let mut dw2 = to_f32(&dw0);
        matmul_backward(
            None,
            &mut dw2,
            None,
            &to_f32(&dout),
            &to_f32(&inp),
            &to_f32(&weight),
            n,
            c,
            oc,
            layout,
        );
        assert_eq!(to_f64(&dw2), to_f64(&dw));
    }

    #[test]
    fn matches_reference_on_odd_shapes() {
        let mut seed = 10;
        for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
            for (n, c, oc) in [
                (1, 1, 1),
                (3, 1, 5),
                (7, 13, 1),
                (37, 29, 41),
                (64, 48, 96),
                (130, 67, 300),
            ] {
                for with_bias in [false, true] {
                    check(n, c, oc, layout, with_bias, seed);
                    seed += 10;
                }
            }
        }
    }

    #[test]
    fn large_product_is_deterministic_and_correct() {
        // Big enough to run gemm multithreaded.
        let (n, c, oc) = (256, 192, 384);
        check(n, c, oc, WeightLayout::OutIn, true, 999);
        let inp = to_f32(&random(n * c, 1));
        let weight = to_f32(&random(c * oc, 2));
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut out = vec![0f32; n * oc];
                matmul_forward(&mut out, &inp, &weight, None, n, c, oc, WeightLayout::InOut);
                let mut dw = vec![0f32; c * oc];
                let mut db = vec![0f32; oc];
                let mut dinp = vec![0f32; n * c];
                matmul_backward(
                    Some(&mut dinp),
                    &mut dw,
                    Some(&mut db),
                    &out,
                    &inp,
                    &weight,
                    n,
                    c,
                    oc,
                    WeightLayout::InOut,
                );
                (out, dw, db, dinp)
            })
        };
        assert_eq!(run(2), run(2));
        assert_eq!(run(1), run(1));
    }

    #[test]
    fn empty_dimensions_are_fine() {
        let mut out = vec![1.0f32; 6];
        matmul_forward(
            &mut out,
            &[],
            &[],
            Some(&[0.5, 0.5, 0.5]),
            2,
            0,
            3,
            WeightLayout::InOut,
        );
        assert_eq!(out, vec![0.5; 6]);
        let mut out = vec![1.0f32; 6];
        matmul_forward(&mut out, &[], &[], None, 2, 0, 3, WeightLayout::OutIn);
        assert_eq!(out, vec![0.0; 6]);
    }

    #[test]
    fn measure_reports_positive_rate() {
        assert!(measure_gemm_gflops(32, 16, 8, 2) > 0.0);
    }
}
