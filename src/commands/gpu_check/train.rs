//! `shoal gpu-check --train`: the GPU training step (`shoal_models::gpu`) held to
//! the CPU model on the tiny preset, then timed on GPT-2 124M (fp32, TF32 and
//! bf16 products; with `--precision bf16` also the mixed-precision model, held
//! to the CPU model with bf16 tolerances).

use std::time::Instant;

use anyhow::Context;
use shoal_kernels::cuda::{Comparison, Gpu, Products};
use shoal_kernels::{AdamW, adamw_update, clip_coefficient, scale_inplace, sum_of_squares};
use shoal_models::gpu::GpuGpt;
use shoal_models::{Activations, Gpt, GptConfig, Precision};

use super::{PEAK_BF16, PEAK_FP32, PEAK_TF32, tokens};

/// Tolerance of the loss and gradients, relative to their largest magnitude, in
/// fp32.
const TOL: f64 = 1e-4;
/// The loss tolerance in mixed precision.
const TOL_BF16_LOSS: f64 = 1e-2;
/// The gradient tolerance in mixed precision (bf16 activations carry 8-bit
/// mantissas through every layer).
const TOL_BF16_GRADS: f64 = 5e-2;

/// The optimizer settings of both sides.
const HP: AdamW = AdamW {
    lr: 6e-4,
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weight_decay: 0.1,
};

/// Gradient clipping threshold of both sides.
const GRAD_CLIP: f32 = 1.0;

/// One step of the tiny preset on both sides, the GPU in `precision`: the loss,
/// every gradient, the gradient norm and the loss after the AdamW step. Returns
/// whether all passed.
pub fn compare_tiny(gpu: &Gpu, precision: Precision) -> anyhow::Result<bool> {
    let (loss_tol, grad_tol) = match precision {
        Precision::Fp32 => (TOL, TOL),
        Precision::Bf16 => (TOL_BF16_LOSS, TOL_BF16_GRADS),
    };
    let config = GptConfig::preset("tiny")?;
    let (b, t) = (4, 64);
    let gpt = Gpt::new(config.clone())?;
    let mut params = gpt.init_params(7);
    let toks = tokens(b * t, config.vocab_size, 11);
    let targets = tokens(b * t, config.vocab_size, 12);

    let mut acts = Activations::new(&config, b, t)?;
    let loss = gpt
        .forward(&params, &mut acts, &toks, Some(&targets))?
        .context("a loss")?;
    let mut grads = vec![0f32; params.len()];
    gpt.backward(&params, &mut acts, &mut grads, 1.0)?;

    let mut model = GpuGpt::with_precision(gpu, config.clone(), &params, b, t, precision)?;
    let gpu_loss = model.forward(gpu, &toks, &targets)?;
    model.zero_grads(gpu)?;
    model.backward(gpu, 1.0)?;
    let gpu_grads = model.grads(gpu)?;

    let mut ok = true;
    let mut report = |what: &str, cmp: Comparison, tol: f64| {
        let pass = cmp.relative() <= tol;
        ok &= pass;
        println!(
            "  {what:<34} max abs err {:>10.3e}  rel {:>10.3e}  tol {tol:.0e}  {}",
            cmp.max_abs,
            cmp.relative(),
            if pass { "PASS" } else { "FAIL" }
        );
    };
    println!(
        "tiny preset, B={b} T={t}, GPU in {precision}: CPU loss {loss:.6}, GPU loss {gpu_loss:.6}"
    );
    report("loss", Comparison::new(&[gpu_loss], &[loss]), loss_tol);
    report(
        "all gradients",
        Comparison::new(&gpu_grads, &grads),
        grad_tol,
    );
    let worst = gpt
        .layout
        .tensors()
        .iter()
        .map(|tensor| {
            let r = tensor.range();
            (
                Comparison::new(&gpu_grads[r.clone()], &grads[r]),
                &tensor.name,
            )
        })
        .max_by(|a, b| a.0.relative().total_cmp(&b.0.relative()));
    if let Some((cmp, name)) = worst {
        // One tensor's small gradients are held to twice the bf16 tolerance.
        let tol = match precision {
            Precision::Fp32 => grad_tol,
            Precision::Bf16 => 2.0 * grad_tol,
        };
        report(&format!("worst tensor ({name})"), cmp, tol);
    }

    let norm = sum_of_squares(&grads).sqrt() as f32;
    let coef = clip_coefficient(norm, GRAD_CLIP);
    if coef < 1.0 {
        scale_inplace(&mut grads, coef);
    }
    let (mut m, mut v) = (vec![0f32; params.len()], vec![0f32; params.len()]);
    adamw_update(
        &mut params,
        &grads,
        &mut m,
        &mut v,
        &HP,
        1,
        &gpt.layout.decay_spans(),
    );
    let gpu_norm = model.step(gpu, &HP, 1, GRAD_CLIP)?;
    report(
        "gradient norm",
        Comparison::new(&[gpu_norm], &[norm]),
        grad_tol,
    );
    let loss = gpt
        .forward(&params, &mut acts, &toks, Some(&targets))?
        .context("a loss")?;
    let gpu_loss = model.forward(gpu, &toks, &targets)?;
    println!("  after one AdamW step: CPU loss {loss:.6}, GPU loss {gpu_loss:.6}");
    report(
        "loss after the step",
        Comparison::new(&[gpu_loss], &[loss]),
        loss_tol,
    );
    Ok(ok)
}

/// Times `steps` training steps (forward, backward, clip, AdamW) of GPT-2 124M
/// at batch `b`, sequence length 1024, with the dense products in fp32, TF32
/// and bf16 (fp32 accumulation; everything else fp32 in all three), and with
/// `precision` bf16 also the mixed-precision model.
pub fn time_gpt2(gpu: &Gpu, b: usize, steps: usize, precision: Precision) -> anyhow::Result<()> {
    let config = GptConfig::preset("gpt2")?;
    let gpt = Gpt::new(config.clone())?;
    let params = gpt.init_params(0);
    time_model(gpu, &config, &params, b, steps, Precision::Fp32)?;
    if precision == Precision::Bf16 {
        time_model(gpu, &config, &params, b, steps, Precision::Bf16)?;
    }
    gpu.set_products(Products::Fp32)?;
    Ok(())
}

/// Times the steps of one model of `precision`: in fp32 once per kind of
/// product, in mixed precision once (its products are bf16 by construction).
fn time_model(
    gpu: &Gpu,
    config: &GptConfig,
    params: &[f32],
    b: usize,
    steps: usize,
    precision: Precision,
) -> anyhow::Result<()> {
    let t = config.n_positions;
    let mut model = GpuGpt::with_precision(gpu, config.clone(), params, b, t, precision)?;
    let toks = tokens(b * t, config.vocab_size, 1);
    let targets = tokens(b * t, config.vocab_size, 2);
    let mut adam_step = 0;
    let mut step = || -> anyhow::Result<f32> {
        adam_step += 1;
        model.zero_grads(gpu)?;
        let loss = model.forward(gpu, &toks, &targets)?;
        model.backward(gpu, 1.0)?;
        model.step(gpu, &HP, adam_step, GRAD_CLIP)?;
        Ok(loss)
    };
    let fp32_runs = [
        ("fp32 products", Products::Fp32, PEAK_FP32),
        ("TF32 products", Products::Tf32, PEAK_TF32),
        ("bf16 products", Products::Bf16, PEAK_BF16),
    ];
    let bf16_runs = [("bf16 mixed precision", Products::Fp32, PEAK_BF16)];
    let runs: &[_] = match precision {
        Precision::Fp32 => &fp32_runs,
        Precision::Bf16 => &bf16_runs,
    };
    for &(products, setting, peak) in runs {
        gpu.set_products(setting)?;
        let first = step()?;
        gpu.synchronize()?;
        let start = Instant::now();
        let mut loss = first;
        for _ in 0..steps {
            loss = step()?;
        }
        gpu.synchronize()?;
        let secs = start.elapsed().as_secs_f64();
        let tok_s = (steps * b * t) as f64 / secs;
        let tflops = tok_s * config.flops_per_token(t) / 1e12;
        println!(
            "GPT-2 124M, {products}, B={b} T={t}: {:.1} ms/step, {tok_s:.0} tokens/s, \
             {tflops:.1} TFLOP/s = MFU {:.1}% of {peak:.0} / {:.1}% of bf16 {PEAK_BF16:.0} \
             TFLOP/s (loss {first:.3} -> {loss:.3})",
            1e3 * secs / steps.max(1) as f64,
            100.0 * tflops / peak,
            100.0 * tflops / PEAK_BF16,
        );
    }
    gpu.set_products(Products::Fp32)?;
    Ok(())
}
