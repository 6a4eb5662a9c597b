//! Helpers shared by the unit tests: seeded random inputs, f32/f64 conversion,
//! tolerance checks and central finite differences.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` values uniform in [-1, 1), exactly representable in f32 so that the f32
/// kernels and the f64 references see the same inputs.
pub fn random(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| rng.random_range(-1.0f32..1.0) as f64)
        .collect()
}

/// `n` token ids below `v`.
pub fn random_tokens(n: usize, v: usize, seed: u64) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..v as u32)).collect()
}

/// Rounds to f32.
pub fn to_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

/// Widens to f64.
pub fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// Panics unless `|got - want| <= atol + rtol * |want|` everywhere.
#[track_caller]
pub fn assert_close(name: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let mut worst = (0.0, 0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let excess = err - (atol + rtol * w.abs());
        assert!(!g.is_nan() || w.is_nan(), "{name}[{i}]: got NaN, want {w}");
        if excess > worst.0 {
            worst = (excess, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= 0.0,
        "{name}[{i}]: got {}, want {} (atol {atol}, rtol {rtol})",
        got[i],
        want[i]
    );
}

/// Central finite differences of the scalar `f` at `x`, one coordinate at a time.
pub fn finite_difference(x: &[f64], mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    const H: f64 = 1e-5;
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = x[i];
            x[i] = orig + H;
            let up = f(&x);
            x[i] = orig - H;
            let down = f(&x);
            x[i] = orig;
            (up - down) / (2.0 * H)
        })
        .collect()
}

/// Runs `f` on a fresh rayon pool of `threads` threads.
pub fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool builds")
        .install(f)
}
