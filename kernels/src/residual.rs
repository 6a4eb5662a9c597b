//! Residual connections: `out = a + b` forward; the backward is `add_inplace`
//! into each branch's gradient.
//!
//! Dimension legend: elementwise over any shape, typically N×C (N = B*T rows,
//! C channels).

use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// `out = a + b` elementwise; overwrites `out`.
pub fn residual_forward(out: &mut [f32], a: &[f32], b: &[f32]) {
    assert_eq!(out.len(), a.len());
    assert_eq!(out.len(), b.len());
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = a + b;
            }
        });
}

/// `acc += x` elementwise (the residual backward, and gradient accumulation).
pub fn add_inplace(acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len());
    acc.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(acc, x)| {
            for (a, &x) in acc.iter_mut().zip(x) {
                *a += x;
            }
        });
}

/// Slow, obvious f64 implementations that the tests hold the kernels to.
pub mod reference {
    /// Reference [`super::residual_forward`].
    pub fn residual_forward(out: &mut [f64], a: &[f64], b: &[f64]) {
        for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
            *o = a + b;
        }
    }

    /// Reference [`super::add_inplace`].
    pub fn add_inplace(acc: &mut [f64], x: &[f64]) {
        for (a, x) in acc.iter_mut().zip(x) {
            *a += x;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, random, to_f32};

    #[test]
    fn matches_reference() {
        for n in [0, 1, 17, 40_000] {
            let (a, b) = (random(n, 1), random(n, 2));
            let mut out = vec![0f32; n];
            residual_forward(&mut out, &to_f32(&a), &to_f32(&b));
            let mut want = vec![0.0; n];
            reference::residual_forward(&mut want, &a, &b);
            assert_close("out", &out, &want, 1e-7, 1e-7);

            add_inplace(&mut out, &to_f32(&a));
            reference::add_inplace(&mut want, &a);
            assert_close("acc", &out, &want, 1e-6, 1e-7);
        }
    }
}
