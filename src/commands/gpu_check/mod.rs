//! `shoal gpu-check` (hidden, built with the `cuda` feature): prints the GPU,
//! runs every GPU kernel against its CPU kernel on random inputs and prints a
//! table (error, tolerance, PASS/FAIL, GPU time per call), then times cuBLAS
//! products at 4096³ against the H200's peaks. With `--train`, also holds the
//! GPU training step to the CPU model and times GPT-2 124M (see [`train`]).
//! Fails if any check fails.

mod kernels;
mod train;

use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use shoal_kernels::WeightLayout;
use shoal_kernels::cuda::{self as gpu_ops, Bf16, Comparison, CudaSlice, Gpu, Products};
use shoal_models::Precision;

/// Options of `shoal gpu-check`.
#[derive(Args, Debug)]
pub struct GpuCheckArgs {
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Timed calls per kernel (after one warm-up call).
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Side of the square matrix products timed (0 skips them).
    #[arg(long, default_value_t = 4096)]
    gemm_size: usize,
    /// Skip the kernel table.
    #[arg(long)]
    skip_kernels: bool,
    /// Also check the GPU training step against the CPU model (tiny preset) and
    /// time GPT-2 124M training steps.
    #[arg(long)]
    train: bool,
    /// Batch size of the timed GPT-2 124M steps (sequence length 1024).
    #[arg(long, default_value_t = 8)]
    train_batch: usize,
    /// Timed GPT-2 124M steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    train_steps: usize,
    /// With `--train`: `bf16` also checks and times the mixed-precision model
    /// (bf16 weights and activations, fp32 master weights and moments) beside
    /// the fp32 one.
    #[arg(long, default_value_t = Precision::Fp32)]
    precision: Precision,
}

/// H200 SXM datasheet peaks in TFLOP/s (dense), and the bf16 rate measured on
/// such a machine with PyTorch (~790).
const PEAK_FP32: f64 = 67.0;
const PEAK_TF32: f64 = 494.0;
const PEAK_BF16: f64 = 989.0;
const ACHIEVABLE_BF16: f64 = 790.0;

/// fp32 tolerance of the elementwise and row kernels, relative to max |CPU result|.
const TOL: f64 = 1e-5;
/// Tolerance of the products and attention (longer sums in another order).
const TOL_PRODUCT: f64 = 1e-4;
/// Tolerance of the products with bf16 inputs (8-bit mantissas).
const TOL_BF16: f64 = 1e-2;

/// One line of the table.
struct Row {
    kernel: String,
    shape: String,
    cmp: Comparison,
    tol: f64,
    ms: f64,
}

impl Row {
    /// Whether the error is within tolerance (a NaN error is not).
    fn passed(&self) -> bool {
        self.cmp.relative() <= self.tol
    }
}

/// The rows so far, printed as they come.
struct Table {
    rows: Vec<Row>,
    /// Checks that stopped with an error or a panic before adding their rows.
    broken: usize,
}

impl Table {
    fn new() -> Self {
        println!(
            "{:<32} {:<26} {:>11} {:>11} {:>8} {:>6} {:>10}",
            "kernel", "shape", "max abs err", "rel err", "tol", "", "GPU ms"
        );
        Table {
            rows: Vec::new(),
            broken: 0,
        }
    }

    /// Compares `got` with `want` and adds a row; `ms` is the GPU time per call.
    fn add(&mut self, kernel: &str, shape: &str, got: &[f32], want: &[f32], tol: f64, ms: f64) {
        let row = Row {
            kernel: kernel.to_string(),
            shape: shape.to_string(),
            cmp: Comparison::new(got, want),
            tol,
            ms,
        };
        let pass = row.passed();
        println!(
            "{:<32} {:<26} {:>11.3e} {:>11.3e} {:>8.0e} {:>6} {:>10.4}",
            row.kernel,
            row.shape,
            row.cmp.max_abs,
            row.cmp.relative(),
            row.tol,
            if pass { "PASS" } else { "FAIL" },
            row.ms
        );
        self.rows.push(row);
    }

    fn failures(&self) -> usize {
        self.rows.iter().filter(|r| !r.passed()).count() + self.broken
    }

    /// Runs one check; an error or a panic in it is reported as a failed check and
    /// the table goes on with the next.
    fn guarded(&mut self, what: &str, check: impl FnOnce(&mut Self) -> anyhow::Result<()>) {
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(self)));
        let why = match out {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("{e:#}"),
            Err(panic) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into()),
        };
        println!("{what:<59} BROKEN: {why}");
        self.broken += 1;
    }
}

/// `n` values uniform in [-1, 1) from a splitmix64 stream (no dependency needed).
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `n` token ids below `v`.
fn tokens(n: usize, v: usize, seed: u64) -> Vec<u32> {
    random(n, seed)
        .iter()
        .map(|x| (((x + 1.0) * 0.5 * v as f32) as usize).min(v - 1) as u32)
        .collect()
}

/// Runs the checks and the timings.
pub fn run(args: GpuCheckArgs) -> anyhow::Result<()> {
    let gpu = Gpu::new(args.device).context("opening the GPU")?;
    let info = gpu.info()?;
    println!(
        "device {}: {} (compute capability {}.{}, {} SMs), {:.1} GiB total, {:.1} GiB free, driver CUDA {}.{}",
        args.device,
        info.name,
        info.compute_capability.0,
        info.compute_capability.1,
        info.multiprocessors,
        info.total_memory as f64 / (1u64 << 30) as f64,
        info.free_memory as f64 / (1u64 << 30) as f64,
        info.driver_version / 1000,
        info.driver_version % 1000 / 10,
    );
    let (major, minor) = gpu_ops::nvrtc_version()?;
    let start = Instant::now();
    for hs in [32, 64] {
        gpu.compile_all(hs)?;
    }
    println!(
        "NVRTC {major}.{minor}: compiled every kernel for {} in {:.2} s",
        gpu.arch(),
        start.elapsed().as_secs_f64()
    );
    let mut failures = 0;
    let mut checks = 0;
    if !args.skip_kernels {
        println!();
        let table = kernels::kernel_table(&gpu, args.iters)?;
        failures += table.failures();
        checks += table.rows.len();
    }
    if args.gemm_size > 0 {
        println!();
        time_gemms(&gpu, args.gemm_size, args.iters)?;
    }
    if args.train {
        println!();
        checks += 1;
        if !train::compare_tiny(&gpu, Precision::Fp32)? {
            failures += 1;
        }
        if args.precision == Precision::Bf16 {
            checks += 1;
            if !train::compare_tiny(&gpu, Precision::Bf16)? {
                failures += 1;
            }
        }
        train::time_gpt2(&gpu, args.train_batch, args.train_steps, args.precision)?;
    }
    println!();
    if failures > 0 {
        bail!("{failures} of {checks} GPU checks failed");
    }
    println!("all {checks} GPU checks passed");
    Ok(())
}

/// Times square products of side `s`: fp32 (sgemm), TF32 and bf16 (GemmEx).
fn time_gemms(gpu: &Gpu, s: usize, it: usize) -> anyhow::Result<()> {
    let flops = 2.0 * (s as f64).powi(3);
    let (a, b) = (
        gpu.upload(&random(s * s, 1))?,
        gpu.upload(&random(s * s, 2))?,
    );
    let mut out: CudaSlice<f32> = gpu.zeros(s * s)?;
    let no_bias: Option<&CudaSlice<f32>> = None;
    let layout = WeightLayout::InOut;
    let report = |name: &str, ms: f64, peak: f64, note: &str| {
        let tflops = flops / (ms * 1e-3) / 1e12;
        println!(
            "{name:<26} {s}³: {ms:>8.3} ms  {tflops:>7.1} TFLOP/s  = {:>5.1}% of {peak:.0} TFLOP/s{note}",
            100.0 * tflops / peak
        );
    };
    let ms = gpu.time_ms(it, || {
        gpu_ops::matmul_forward(gpu, &mut out, &a, &b, no_bias, s, s, s, layout)
    })?;
    report(
        "cuBLAS sgemm fp32",
        ms,
        PEAK_FP32,
        " (fp32 non-tensor peak)",
    );
    gpu.set_products(Products::Tf32)?;
    let ms = gpu.time_ms(it, || {
        gpu_ops::matmul_forward(gpu, &mut out, &a, &b, no_bias, s, s, s, layout)
    });
    gpu.set_products(Products::Fp32)?;
    report("cuBLAS sgemm TF32", ms?, PEAK_TF32, " (dense TF32 peak)");
    let (mut a16, mut b16): (CudaSlice<Bf16>, CudaSlice<Bf16>) =
        (gpu.zeros(s * s)?, gpu.zeros(s * s)?);
    gpu_ops::f32_to_bf16(gpu, &mut a16, &a)?;
    gpu_ops::f32_to_bf16(gpu, &mut b16, &b)?;
    let ms = gpu.time_ms(it, || {
        gpu_ops::gemm_bf16(gpu, &mut out, &a16, &b16, s, s, s)
    })?;
    report(
        "cuBLAS GemmEx bf16->fp32",
        ms,
        PEAK_BF16,
        &format!(
            " (dense bf16 spec; {:.0}% of ~{ACHIEVABLE_BF16:.0} achievable)",
            100.0 * flops / (ms * 1e-3) / 1e12 / ACHIEVABLE_BF16
        ),
    );
    Ok(())
}
