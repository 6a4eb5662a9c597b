//! GELU with the tanh approximation (Hugging Face `gelu_new`, GPT-2's):
//! `gelu(x) = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
//!
//! Dimension legend: elementwise over any shape, typically N×4C (N = B*T rows,
//! C channels).
//!
//! The kernels use `0.5·(1 + tanh z) = 1 / (1 + e^(-2z))`, which needs a single
//! vectorizable `exp` and no cancellation-prone `1 - tanh²`.

use rayon::prelude::*;

use crate::simd::{exp, fmadd, multiversion};

/// Elements per parallel task.
const CHUNK: usize = 1 << 13;

/// `√(2/π)`.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// Coefficient of the cubic term.
const CUBIC: f32 = 0.044_715;

/// `out = gelu(inp)` elementwise; overwrites `out`.
pub fn gelu_forward(out: &mut [f32], inp: &[f32]) {
    assert_eq!(out.len(), inp.len());
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(o, x)| forward_chunk(o, x));
}

multiversion! {
    fn forward_chunk(out: &mut [f32], inp: &[f32]) => forward_chunk_impl;
}

#[inline(always)]
fn forward_chunk_impl<const FMA: bool>(out: &mut [f32], inp: &[f32]) {
    for (o, &x) in out.iter_mut().zip(inp) {
        let z = SQRT_2_OVER_PI * fmadd::<FMA>(CUBIC * x * x, x, x);
        *o = x / (1.0 + exp::<FMA>(-2.0 * z));
    }
}

/// Backward of [`gelu_forward`]: `dinp += gelu'(inp) · dout` elementwise.
pub fn gelu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    assert_eq!(dinp.len(), inp.len());
    assert_eq!(dout.len(), inp.len());
    dinp.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK).zip(dout.par_chunks(CHUNK)))
        .for_each(|(d, (x, g))| backward_chunk(d, x, g));
}

multiversion! {
    fn backward_chunk(dinp: &mut [f32], inp: &[f32], dout: &[f32]) => backward_chunk_impl;
}

#[inline(always)]
fn backward_chunk_impl<const FMA: bool>(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    for ((d, &x), &g) in dinp.iter_mut().zip(inp).zip(dout) {
        let x2 = x * x;
        let z = SQRT_2_OVER_PI * fmadd::<FMA>(CUBIC * x2, x, x);
        let dz = SQRT_2_OVER_PI * fmadd::<FMA>(3.0 * CUBIC, x2, 1.0);
        // s = sigmoid(2z) = 0.5(1 + tanh z); 0.5·x·d(tanh z)/dx = x·2s(1-s)·dz,
        // and s(1-s) = e/(1+e)² with e = exp(-2z).
        let e = exp::<FMA>(-2.0 * z);
        let s = 1.0 / (1.0 + e);
        let grad = fmadd::<FMA>(2.0 * x * dz, e * s * s, s);
        *d = fmadd::<FMA>(grad, g, *d);
    }
}

/// Slow, obvious f64 implementations that the tests hold the kernels to.
pub mod reference {
    /// `√(2/π)` in f64.
    const S: f64 = 0.797_884_560_802_865_4;

    /// Reference [`super::gelu_forward`], the textbook tanh formula.
    pub fn gelu_forward(out: &mut [f64], inp: &[f64]) {
        for (o, &x) in out.iter_mut().zip(inp) {
            *o = 0.5 * x * (1.0 + (S * (x + 0.044715 * x * x * x)).tanh());
        }
    }

    /// Reference [`super::gelu_backward`] (accumulates).
    pub fn gelu_backward(dinp: &mut [f64], inp: &[f64], dout: &[f64]) {
        for ((d, &x), &g) in dinp.iter_mut().zip(inp).zip(dout) {
            let t = (S * (x + 0.044715 * x * x * x)).tanh();
            let sech2 = 1.0 - t * t;
            *d += g * (0.5 * (1.0 + t) + 0.5 * x * sech2 * S * (1.0 + 3.0 * 0.044715 * x * x));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, finite_difference, random, to_f32};

    /// Inputs spread over [-12, 12], plus the extremes.
    fn inputs(n: usize, seed: u64) -> Vec<f64> {
        let mut x: Vec<f64> = random(n, seed).iter().map(|v| v * 12.0).collect();
        x.extend([0.0, -0.0, 1e-20, -1e-20, 30.0, -30.0, 1e4, -1e4]);
        x
    }

    #[test]
    fn matches_reference() {
        for n in [1, 7, 8192, 20_001] {
            let x = inputs(n, n as u64);
            let mut out = vec![0f32; x.len()];
            gelu_forward(&mut out, &to_f32(&x));
            let mut want = vec![0.0; x.len()];
            reference::gelu_forward(&mut want, &x);
            assert_close("gelu", &out, &want, 1e-6, 1e-6);

            let g = random(x.len(), 7);
            let d0 = random(x.len(), 8);
            let mut dinp = to_f32(&d0);
            gelu_backward(&mut dinp, &to_f32(&x), &to_f32(&g));
            let mut rdinp = d0.clone();
            reference::gelu_backward(&mut rdinp, &x, &g);
            assert_close("dgelu", &dinp, &rdinp, 1e-6, 1e-6);
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let x = random(64, 3).iter().map(|v| v * 5.0).collect::<Vec<_>>();
        let g = random(64, 4);
        let fd = finite_difference(&x, |x| {
            let mut out = vec![0.0; x.len()];
            reference::gelu_forward(&mut out, x);
            out.iter().zip(&g).map(|(o, g)| o * g).sum()
        });
        let mut dinp = vec![0f32; x.len()];
        gelu_backward(&mut dinp, &to_f32(&x), &to_f32(&g));
        assert_close("dgelu", &dinp, &fd, 1e-5, 1e-5);
    }
}
