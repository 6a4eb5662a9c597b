//! Run-time instruction-set selection and the vectorizable building blocks of
//! the hand-written loops.
//!
//! The crate is compiled for baseline x86-64 (SSE2, no FMA), because shoal does
//! not build with `target-cpu=native`. The compute-heavy loops (attention,
//! `exp` in softmax, GELU) are therefore written once as `#[inline(always)]`
//! functions generic over `const FMA: bool`, and [`multiversion!`] instantiates
//! each inside a `#[target_feature(enable = "avx2,fma")]` wrapper that is picked
//! at run time when the CPU has those features. Everything inlined into such a
//! wrapper is auto-vectorized for AVX2 and uses fused multiply-adds (except
//! where the compiler cannot be relied on to keep accumulators in registers:
//! attention's tile product uses AVX2 intrinsics directly). There is
//! no AVX-512 level: the virtual machines we train on expose AVX2 and FMA only
//! (`/proc/cpuinfo` of the 2-vCPU AMD EPYC dev machine lists no `avx512*`), and
//! on Zen 4 AVX-512 would not raise the FMA peak anyway (double-pumped units).
//!
//! Reductions here use a fixed number of independent lanes combined in a fixed
//! order, so their results never depend on the vector width or the thread count.
//!
//! Dimension legend: not applicable (all helpers take flat slices).

/// Number of independent accumulators in the reductions below: two AVX2
/// registers, enough to hide the latency of a vector add.
pub(crate) const LANES: usize = 16;

/// Whether the CPU supports AVX2 and FMA (cached by `std` after the first call).
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `fn $name(args) -> ret` that runs `$imp::<true>(args)` compiled for
/// AVX2+FMA when the CPU has them, and `$imp::<FMA>(args)` for the baseline
/// target otherwise (FMA is native on aarch64, emulated by a slow libm call on
/// baseline x86-64, hence `false` there). `$imp` must be `#[inline(always)]`,
/// as must everything it calls in its hot loops.
macro_rules! multiversion {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $imp:ident;) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2_fma($($arg: $ty),*) $(-> $ret)? {
                    $imp::<true>($($arg),*)
                }
                if $crate::simd::has_avx2_fma() {
                    // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                    return unsafe { avx2_fma($($arg),*) };
                }
            }
            $imp::<{ cfg!(target_arch = "aarch64") }>($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// `a * b + c`, fused (one rounding) when `FMA`, else two roundings.
#[inline(always)]
pub(crate) fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `e^x` to about 2 ulp, written branch-free so that loops over it vectorize
/// (`f32::exp` is an opaque libm call). Inputs are clamped to
/// [-87.3, 88.3]: results below ~1.3e-38 come out as ~1.3e-38 instead of
/// underflowing, large inputs saturate at ~2.2e38 instead of `inf`; NaN stays NaN.
#[inline(always)]
pub(crate) fn exp<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in a part exact in 9 bits and a remainder (Cody-Waite).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUNDER: f32 = 12_582_912.0;
    let x = if x < -87.3 { -87.3 } else { x };
    let x = if x > 88.3 { 88.3 } else { x };
    let t = fmadd::<FMA>(x, LOG2E, ROUNDER);
    let n = t - ROUNDER;
    let ni = t.to_bits() as i32 - ROUNDER.to_bits() as i32;
    let r = fmadd::<FMA>(n, -LN2_HI, x);
    let r = fmadd::<FMA>(n, -LN2_LO, r);
    // Minimax polynomial for e^r on |r| <= ln2/2 (Cephes expf).
    let mut p = 1.987_569_1e-4;
    p = fmadd::<FMA>(p, r, 1.398_2e-3);
    p = fmadd::<FMA>(p, r, 8.333_452e-3);
    p = fmadd::<FMA>(p, r, 4.166_579_6e-2);
    p = fmadd::<FMA>(p, r, 1.666_666_5e-1);
    p = fmadd::<FMA>(p, r, 0.5);
    let p = fmadd::<FMA>(p, r * r, r) + 1.0;
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    p * scale
}

/// Sum of `x` with [`LANES`] independent accumulators, combined in a fixed order.
#[inline(always)]
pub(crate) fn lanes_sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += v;
        }
    }
    combine(acc) + tail.iter().sum::<f32>()
}

/// Dot product of `a` and `b` (same length) with [`LANES`] accumulators.
#[inline(always)]
pub(crate) fn lanes_dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let tail = ca.remainder().iter().zip(cb.remainder());
    for (xa, xb) in ca.zip(cb) {
        for ((s, &u), &v) in acc.iter_mut().zip(xa).zip(xb) {
            *s = fmadd::<FMA>(u, v, *s);
        }
    }
    tail.fold(combine(acc), |s, (&u, &v)| fmadd::<FMA>(u, v, s))
}

/// Maximum of `x` (`-inf` when empty); NaNs are ignored unless all are NaN.
#[inline(always)]
pub(crate) fn lanes_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = if v > *a { v } else { *a };
        }
    }
    acc.iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// Pairwise combination of the lanes in a fixed tree order.
#[inline(always)]
fn combine(mut acc: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            acc[i] += acc[i + width];
        }
        width /= 2;
    }
    acc[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    multiversion! {
        fn exp_all(out: &mut [f32], x: &[f32]) => exp_all_impl;
    }

    #[inline(always)]
    fn exp_all_impl<const FMA: bool>(out: &mut [f32], x: &[f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = exp::<FMA>(v);
        }
    }

    #[test]
    fn exp_matches_libm_within_3_ulp() {
        let x: Vec<f32> = (0..200_001)
            .map(|i| -87.0 + i as f32 * (175.0 / 200_000.0))
            .collect();
        let mut fast = vec![0f32; x.len()];
        exp_all(&mut fast, &x);
        let mut slow_path = vec![0f32; x.len()];
        exp_all_impl::<false>(&mut slow_path, &x);
        for ((&v, &f), &s) in x.iter().zip(&fast).zip(&slow_path) {
            let exact = (v as f64).exp();
            for got in [f, s] {
                let rel = ((got as f64 - exact) / exact).abs();
                assert!(
                    rel < 3.0 * f32::EPSILON as f64,
                    "exp({v}) = {got}, want {exact}"
                );
            }
        }
    }

    #[test]
    fn exp_clamps_and_keeps_nan() {
        let x = [
            f32::NEG_INFINITY,
            -1000.0,
            0.0,
            1000.0,
            f32::INFINITY,
            f32::NAN,
        ];
        let mut out = [0f32; 6];
        exp_all(&mut out, &x);
        assert!(out[0] >= 0.0 && out[0] < 1.3e-38);
        assert!(out[1] >= 0.0 && out[1] < 1.3e-38);
        assert_eq!(out[2], 1.0);
        assert!(out[3].is_finite() && out[3] > 1e38);
        assert!(out[4].is_finite() && out[4] > 1e38);
        assert!(out[5].is_nan());
    }

    #[test]
    fn reductions_match_naive() {
        for n in [0usize, 1, 15, 16, 17, 100, 1000] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|i| ((i * 104_729) % 89) as f32 / 40.0 - 1.0)
                .collect();
            let sum: f64 = a.iter().map(|&v| v as f64).sum();
            let dot: f64 = a.iter().zip(&b).map(|(&u, &v)| u as f64 * v as f64).sum();
            let max = a.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            assert!((lanes_sum(&a) as f64 - sum).abs() < 1e-4);
            assert!((lanes_dot::<false>(&a, &b) as f64 - dot).abs() < 1e-4);
            assert!((lanes_dot::<true>(&a, &b) as f64 - dot).abs() < 1e-4);
            assert_eq!(lanes_max(&a), max);
        }
    }
}
