//! Global gradient norm and clipping, with `torch.nn.utils.clip_grad_norm_`
//! semantics: `g *= min(1, max_norm / (‖g‖₂ + 1e-6))`.
//!
//! Dimension legend: flat slices of any length (a shard of the gradients).
//!
//! `sum_of_squares` reduces fixed chunks in f64 and adds the chunk sums in
//! order, so it is bitwise deterministic for any thread count; ZeRO shards
//! all-reduce the scalar and take the square root.

use rayon::prelude::*;

/// Elements per reduction chunk (fixed, independent of the thread count).
const CHUNK: usize = 1 << 14;

/// Independent f64 accumulators per chunk.
const LANES: usize = 8;

/// `Σ x²` accumulated in f64, deterministically.
pub fn sum_of_squares(x: &[f32]) -> f64 {
    let partials: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|chunk| {
            let mut acc = [0f64; LANES];
            let lanes = chunk.chunks_exact(LANES);
            let tail = lanes.remainder();
            for lane in lanes {
                for (a, &v) in acc.iter_mut().zip(lane) {
                    *a += v as f64 * v as f64;
                }
            }
            acc.iter().sum::<f64>() + tail.iter().map(|&v| v as f64 * v as f64).sum::<f64>()
        })
        .collect();
    partials.iter().sum()
}

/// The factor to scale gradients by: `min(1, max_norm / (total_norm + 1e-6))`.
/// A NaN norm gives NaN, as in PyTorch (without `error_if_nonfinite`).
pub fn clip_coefficient(total_norm: f32, max_norm: f32) -> f32 {
    let coef = max_norm / (total_norm + 1e-6);
    if coef > 1.0 { 1.0 } else { coef }
}

/// `x *= s` elementwise.
pub fn scale_inplace(x: &mut [f32], s: f32) {
    x.par_chunks_mut(CHUNK).for_each(|chunk| {
        for v in chunk {
            *v *= s;
        }
    });
}

/// Slow, obvious implementations that the tests hold the kernels to.
pub mod reference {
    /// Reference [`super::sum_of_squares`], one sequential f64 sum.
    pub fn sum_of_squares(x: &[f64]) -> f64 {
        x.iter().map(|v| v * v).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{on_threads, random, to_f32};

    #[test]
    fn sum_of_squares_matches_reference_and_is_deterministic() {
        for n in [0, 1, 9, CHUNK + 3, 5 * CHUNK + 1] {
            let x = random(n, n as u64);
            let x32 = to_f32(&x);
            let want = reference::sum_of_squares(&x);
            let got = sum_of_squares(&x32);
            assert!(
                (got - want).abs() <= 1e-12 * want.max(1.0),
                "{got} vs {want}"
            );
            for threads in [1, 2, 3] {
                assert_eq!(
                    on_threads(threads, || sum_of_squares(&x32)).to_bits(),
                    got.to_bits()
                );
            }
        }
    }

    #[test]
    fn clipping_follows_torch() {
        assert_eq!(clip_coefficient(0.5, 1.0), 1.0);
        assert_eq!(clip_coefficient(0.0, 1.0), 1.0);
        let c = clip_coefficient(4.0, 1.0);
        assert!((c - 1.0 / (4.0 + 1e-6)).abs() < 1e-7);
        assert!(clip_coefficient(f32::NAN, 1.0).is_nan());
        assert_eq!(clip_coefficient(f32::INFINITY, 1.0), 0.0);

        let mut x = vec![1.0f32, -2.0, 3.0];
        scale_inplace(&mut x, 0.5);
        assert_eq!(x, vec![0.5, -1.0, 1.5]);
    }
}
