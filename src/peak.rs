//! The physical limit a benchmark is measured against: the CPU's fp32 fused multiply-add
//! throughput, measured by running independent FMA chains on every thread of a pool.

use std::time::Instant;

/// Independent accumulator chains: enough to cover the FMA latency on both FMA ports.
const CHAINS: usize = 12;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_chains(iters: u64) -> f32 {
    use std::arch::x86_64::{_mm256_fmadd_ps, _mm256_set1_ps, _mm256_storeu_ps};
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(1.0); CHAINS];
    for _ in 0..iters {
        for x in &mut acc {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let mut out = [0.0f32; 8];
    let mut sum = 0.0;
    for x in acc {
        // SAFETY: `out` holds 8 f32, the width of one AVX register.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), x) };
        sum += out.iter().sum::<f32>();
    }
    sum
}

/// GFLOP/s of 256-bit FMAs on one thread over `iters` iterations (2 FLOPs per lane).
fn one_thread_gflops(iters: u64) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        let start = Instant::now();
        // SAFETY: the CPU has AVX2 and FMA, checked just above.
        let sink = unsafe { fma_chains(iters) };
        let secs = start.elapsed().as_secs_f64();
        std::hint::black_box(sink);
        return Some((iters as f64 * CHAINS as f64 * 8.0 * 2.0) / secs / 1e9);
    }
    let _ = iters;
    None
}

/// Measured fp32 FMA peak of all threads of the current rayon pool, in GFLOP/s (each thread
/// runs the probe at once; the best of five rounds, since one round can lose a vCPU to
/// the hypervisor). `None` on CPUs without AVX2+FMA.
pub fn fma_peak_gflops() -> Option<f64> {
    let mut best: Option<f64> = None;
    for _ in 0..5 {
        let per_thread = rayon::broadcast(|_| one_thread_gflops(20_000_000));
        let total = per_thread.into_iter().sum::<Option<f64>>()?;
        best = Some(best.map_or(total, |b: f64| b.max(total)));
    }
    best
}
