//! Layer normalization over the channel dimension, forward and backward.
//!
//! Dimension legend:
//! - N: rows = B*T (batch times time)
//! - C: channels
//!
//! Rows are independent and split into fixed chunks, so results never depend
//! on the thread count; `dweight`/`dbias` are reduced per chunk and the chunk
//! partials are added in chunk order.

use rayon::prelude::*;

use crate::simd::{LANES, lanes_sum};

/// Rows per task in the forward pass.
const FORWARD_ROWS_PER_TASK: usize = 16;

/// Partials for `dweight`/`dbias` are kept for at most this many row chunks.
const MAX_BACKWARD_CHUNKS: usize = 64;

/// `out = (inp - mean) * rstd * weight + bias` per row, with
/// `rstd = 1 / sqrt(var + eps)` (biased variance); saves `mean[N]`, `rstd[N]`.
pub fn layernorm_forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    n: usize,
    c: usize,
    eps: f32,
) {
    assert_eq!(out.len(), n * c);
    assert_eq!(inp.len(), n * c);
    assert_eq!(mean.len(), n);
    assert_eq!(rstd.len(), n);
    assert_eq!(weight.len(), c);
    assert_eq!(bias.len(), c);
    if n == 0 || c == 0 {
        // Mean of nothing is NaN, as in PyTorch.
        mean.fill(f32::NAN);
        rstd.fill(f32::NAN);
        return;
    }
    let rows = FORWARD_ROWS_PER_TASK;
    out.par_chunks_mut(rows * c)
        .zip(inp.par_chunks(rows * c))
        .zip(mean.par_chunks_mut(rows).zip(rstd.par_chunks_mut(rows)))
        .for_each(|((out, inp), (mean, rstd))| {
            for (((o, x), m), s) in out
                .chunks_exact_mut(c)
                .zip(inp.chunks_exact(c))
                .zip(mean)
                .zip(rstd)
            {
                let mu = lanes_sum(x) / c as f32;
                let var = sum_squared_deviation(x, mu) / c as f32;
                let r = 1.0 / (var + eps).sqrt();
                for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(weight).zip(bias) {
                    *o = (x - mu) * r * w + b;
                }
                *m = mu;
                *s = r;
            }
        });
}

/// `Σ (x - mu)²` with independent lanes.
fn sum_squared_deviation(x: &[f32], mu: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += (v - mu) * (v - mu);
        }
    }
    lanes_sum(&acc) + tail.iter().map(|&v| (v - mu) * (v - mu)).sum::<f32>()
}

/// Backward of [`layernorm_forward`]; accumulates into `dinp`, `dweight`, `dbias`.
pub fn layernorm_backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    n: usize,
    c: usize,
) {
    assert_eq!(dinp.len(), n * c);
    assert_eq!(dout.len(), n * c);
    assert_eq!(inp.len(), n * c);
    assert_eq!(mean.len(), n);
    assert_eq!(rstd.len(), n);
    assert_eq!(weight.len(), c);
    assert_eq!(dweight.len(), c);
    assert_eq!(dbias.len(), c);
    if n == 0 || c == 0 {
        return;
    }
    // Chunking depends only on n: deterministic for any thread count.
    let rows = n.div_ceil(MAX_BACKWARD_CHUNKS).max(8);
    let partials: Vec<Vec<f32>> = dinp
        .par_chunks_mut(rows * c)
        .zip(dout.par_chunks(rows * c))
        .zip(inp.par_chunks(rows * c))
        .zip(mean.par_chunks(rows).zip(rstd.par_chunks(rows)))
        .map(|(((dinp, dout), inp), (mean, rstd))| {
            // [dweight | dbias] partial sums of this chunk.
            let mut partial = vec![0f32; 2 * c];
            let (pdw, pdb) = partial.split_at_mut(c);
            let mut dnorm = vec![0f32; c];
            let rows = dinp
                .chunks_exact_mut(c)
                .zip(dout.chunks_exact(c))
                .zip(inp.chunks_exact(c));
            for (((di, g), x), (&mu, &r)) in rows.zip(mean.iter().zip(rstd)) {
                for ((d, &w), &g) in dnorm.iter_mut().zip(weight).zip(g) {
                    *d = w * g;
                }
                let mut acc = [0f32; LANES];
                let chunks = dnorm.chunks_exact(LANES).zip(x.chunks_exact(LANES));
                for (d, x) in chunks {
                    for ((a, &d), &x) in acc.iter_mut().zip(d).zip(x) {
                        *a += d * ((x - mu) * r);
                    }
                }
                let tail = (c / LANES) * LANES;
                let tail_sum: f32 = dnorm[tail..]
                    .iter()
                    .zip(&x[tail..])
                    .map(|(&d, &x)| d * ((x - mu) * r))
                    .sum();
                let dnorm_norm_mean = (lanes_sum(&acc) + tail_sum) / c as f32;
                let dnorm_mean = lanes_sum(&dnorm) / c as f32;
                for ((((di, &d), &x), &g), (dw, db)) in di
                    .iter_mut()
                    .zip(&dnorm)
                    .zip(x)
                    .zip(g)
                    .zip(pdw.iter_mut().zip(pdb.iter_mut()))
                {
                    let norm = (x - mu) * r;
                    *db += g;
                    *dw += norm * g;
                    *di += (d - dnorm_mean - norm * dnorm_norm_mean) * r;
                }
            }
            partial
        })
        .collect();
    for partial in &partials {
        let (pdw, pdb) = partial.split_at(c);
        for (d, &p) in dweight.iter_mut().zip(pdw) {
            *d += p;
        }
        for (d, &p) in dbias.iter_mut().zip(pdb) {
            *d += p;
        }
    }
}

/// Slow, obvious f64 implementations that the tests hold the kernels to.
pub mod reference {
    /// Reference [`super::layernorm_forward`].
    pub fn layernorm_forward(
        out: &mut [f64],
        mean: &mut [f64],
        rstd: &mut [f64],
        inp: &[f64],
        weight: &[f64],
        bias: &[f64],
        n: usize,
        c: usize,
        eps: f64,
    ) {
        for r in 0..n {
            let x = &inp[r * c..(r + 1) * c];
            let m = x.iter().sum::<f64>() / c as f64;
            let v = x.iter().map(|&v| (v - m) * (v - m)).sum::<f64>() / c as f64;
            let s = 1.0 / (v + eps).sqrt();
            for i in 0..c {
                out[r * c + i] = (x[i] - m) * s * weight[i] + bias[i];
            }
            mean[r] = m;
            rstd[r] = s;
        }
    }

    /// Reference [`super::layernorm_backward`] (accumulates).
    pub fn layernorm_backward(
        dinp: &mut [f64],
        dweight: &mut [f64],
        dbias: &mut [f64],
        dout: &[f64],
        inp: &[f64],
        weight: &[f64],
        mean: &[f64],
        rstd: &[f64],
        n: usize,
        c: usize,
    ) {
        for r in 0..n {
            let norm: Vec<f64> = (0..c)
                .map(|i| (inp[r * c + i] - mean[r]) * rstd[r])
                .collect();
            let dnorm: Vec<f64> = (0..c).map(|i| weight[i] * dout[r * c + i]).collect();
            let dnorm_mean = dnorm.iter().sum::<f64>() / c as f64;
            let dnorm_norm_mean = (0..c).map(|i| dnorm[i] * norm[i]).sum::<f64>() / c as f64;
            for i in 0..c {
                dbias[i] += dout[r * c + i];
                dweight[i] += norm[i] * dout[r * c + i];
                dinp[r * c + i] += (dnorm[i] - dnorm_mean - norm[i] * dnorm_norm_mean) * rstd[r];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, finite_difference, on_threads, random, to_f32};

    const EPS: f32 = 1e-5;

    #[test]
    fn matches_reference_on_odd_shapes() {
        for (n, c) in [(1, 1), (3, 2), (5, 17), (33, 16), (70, 100), (600, 48)] {
            let inp = random(n * c, n as u64);
            let weight = random(c, 1);
            let bias = random(c, 2);
            let dout = random(n * c, 3);
            let (mut out, mut mean, mut rstd) = (vec![0f32; n * c], vec![0f32; n], vec![0f32; n]);
            let (inp32, w32) = (to_f32(&inp), to_f32(&weight));
            layernorm_forward(
                &mut out,
                &mut mean,
                &mut rstd,
                &inp32,
                &w32,
                &to_f32(&bias),
                n,
                c,
                EPS,
            );
            let (mut rout, mut rmean, mut rrstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            reference::layernorm_forward(
                &mut rout, &mut rmean, &mut rrstd, &inp, &weight, &bias, n, c, EPS as f64,
            );
            assert_close("out", &out, &rout, 1e-5, 1e-5);
            assert_close("mean", &mean, &rmean, 1e-6, 1e-6);
            // rstd can be large when c = 1 (variance 0): relative check.
            assert_close("rstd", &rstd, &rrstd, 1e-6, 1e-5);

            let (dinp0, dw0, db0) = (random(n * c, 4), random(c, 5), random(c, 6));
            let (mut dinp, mut dw, mut db) = (to_f32(&dinp0), to_f32(&dw0), to_f32(&db0));
            layernorm_backward(
                &mut dinp,
                &mut dw,
                &mut db,
                &to_f32(&dout),
                &inp32,
                &w32,
                &mean,
                &rstd,
                n,
                c,
            );
            let (mut rdinp, mut rdw, mut rdb) = (dinp0.clone(), dw0.clone(), db0.clone());
            reference::layernorm_backward(
                &mut rdinp, &mut rdw, &mut rdb, &dout, &inp, &weight, &rmean, &rrstd, n, c,
            );
            // c = 1 multiplies f32 noise by rstd ~ 316; scale the tolerance with it.
            let tol = if c == 1 { 1e-3 } else { 2e-5 };
            assert_close("dinp", &dinp, &rdinp, tol, 1e-4);
            assert_close("dweight", &dw, &rdw, 2e-5, 1e-5);
            assert_close("dbias", &db, &rdb, 2e-5, 1e-5);
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (n, c) = (3, 7);
        let inp = random(n * c, 11);
        let weight = random(c, 12);
        let bias = random(c, 13);
        let dout = random(n * c, 14);
        // loss = Σ dout ∘ layernorm(inp, weight, bias), in f64.
        let loss = |inp: &[f64], weight: &[f64], bias: &[f64]| {
            let (mut out, mut m, mut s) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            reference::layernorm_forward(
                &mut out, &mut m, &mut s, inp, weight, bias, n, c, EPS as f64,
            );
            out.iter().zip(&dout).map(|(o, g)| o * g).sum::<f64>()
        };
        let fd_inp = finite_difference(&inp, |x| loss(x, &weight, &bias));
        let fd_w = finite_difference(&weight, |w| loss(&inp, w, &bias));
        let fd_b = finite_difference(&bias, |b| loss(&inp, &weight, b));

        let (mut out, mut mean, mut rstd) = (vec![0f32; n * c], vec![0f32; n], vec![0f32; n]);
        let (inp32, w32) = (to_f32(&inp), to_f32(&weight));
        layernorm_forward(
            &mut out,
            &mut mean,
            &mut rstd,
            &inp32,
            &w32,
            &to_f32(&bias),
            n,
            c,
            EPS,
        );
        let (mut dinp, mut dw, mut db) = (vec![0f32; n * c], vec![0f32; c], vec![0f32; c]);
        layernorm_backward(
            &mut dinp,
            &mut dw,
            &mut db,
            &to_f32(&dout),
            &inp32,
            &w32,
            &mean,
            &rstd,
            n,
            c,
        );
        assert_close("dinp", &dinp, &fd_inp, 1e-4, 1e-4);
        assert_close("dweight", &dw, &fd_w, 1e-4, 1e-4);
        assert_close("dbias", &db, &fd_b, 1e-4, 1e-4);
    }

    #[test]
    fn deterministic_across_thread_counts() {
        let (n, c) = (1000, 64);
        let inp = to_f32(&random(n * c, 21));
        let weight = to_f32(&random(c, 22));
        let bias = to_f32(&random(c, 23));
        let dout = to_f32(&random(n * c, 24));
        let run = |threads: usize| {
            on_threads(threads, || {
                let (mut out, mut mean, mut rstd) =
                    (vec![0f32; n * c], vec![0f32; n], vec![0f32; n]);
                layernorm_forward(
                    &mut out, &mut mean, &mut rstd, &inp, &weight, &bias, n, c, EPS,
                );
                let (mut dinp, mut dw, mut db) = (vec![0f32; n * c], vec![0f32; c], vec![0f32; c]);
                layernorm_backward(
                    &mut dinp, &mut dw, &mut db, &dout, &inp, &weight, &mean, &rstd, n, c,
                );
                (out, dinp, dw, db)
            })
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
    }
}
