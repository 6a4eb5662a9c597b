//! The GPU model against the CPU model on the tiny preset, in fp32 and in mixed
//! precision (skipped with a message on machines without a GPU).

use shoal_kernels::AdamW;
use shoal_kernels::cuda::{Comparison, Gpu};

use super::{GpuAttention, GpuGpt};
use crate::{Activations, Gpt, GptConfig, Precision, Recompute, RecomputePlan};

/// The GPU, or `None` after printing why the test is skipped.
fn gpu_or_skip() -> Option<Gpu> {
    match Gpu::new(0) {
        Ok(gpu) => Some(gpu),
        Err(e) => {
            eprintln!("skipping: no CUDA driver or device ({e})");
            None
        }
    }
}

/// The tiny preset's CPU model, parameters and a batch of (B, T) = (2, 40).
struct Tiny {
    config: GptConfig,
    gpt: Gpt,
    params: Vec<f32>,
    tokens: Vec<u32>,
    targets: Vec<u32>,
    b: usize,
    t: usize,
}

impl Tiny {
    fn new() -> Self {
        let config = GptConfig::preset("tiny").unwrap();
        let (b, t) = (2, 40);
        let gpt = Gpt::new(config.clone()).unwrap();
        let params = gpt.init_params(3);
        let tokens: Vec<u32> = (0..b * t).map(|i| (i * 37 % 256) as u32).collect();
        let targets: Vec<u32> = (0..b * t).map(|i| (i * 91 % 256) as u32).collect();
        Tiny {
            config,
            gpt,
            params,
            tokens,
            targets,
            b,
            t,
        }
    }

    /// The CPU model's loss and gradients (scaled by `loss_scale`).
    fn cpu_step(&self, loss_scale: f32) -> (f32, Vec<f32>) {
        let mut acts = Activations::new(&self.config, self.b, self.t).unwrap();
        let loss = self
            .gpt
            .forward(&self.params, &mut acts, &self.tokens, Some(&self.targets))
            .unwrap()
            .unwrap();
        let mut grads = vec![0f32; self.params.len()];
        self.gpt
            .backward(&self.params, &mut acts, &mut grads, loss_scale)
            .unwrap();
        (loss, grads)
    }

    /// The GPU model's loss and gradients in `precision`.
    fn gpu_step(&self, gpu: &Gpu, precision: Precision, loss_scale: f32) -> (f32, Vec<f32>) {
        let (config, params) = (self.config.clone(), &self.params);
        let mut model =
            GpuGpt::with_precision(gpu, config, params, self.b, self.t, precision).unwrap();
        let loss = model.forward(gpu, &self.tokens, &self.targets).unwrap();
        model.zero_grads(gpu).unwrap();
        model.backward(gpu, loss_scale).unwrap();
        (loss, model.grads(gpu).unwrap())
    }
}

#[test]
fn one_step_matches_the_cpu_model() {
    let Some(gpu) = gpu_or_skip() else { return };
    let tiny = Tiny::new();
    let (loss, grads) = tiny.cpu_step(0.5);
    let mut model = GpuGpt::new(&gpu, tiny.config.clone(), &tiny.params, tiny.b, tiny.t).unwrap();
    assert_eq!(model.precision(), Precision::Fp32);
    let gpu_loss = model.forward(&gpu, &tiny.tokens, &tiny.targets).unwrap();
    model.zero_grads(&gpu).unwrap();
    model.backward(&gpu, 0.5).unwrap();
    assert!(
        (gpu_loss - loss).abs() <= 1e-4 * loss.abs(),
        "{gpu_loss} vs {loss}"
    );
    let cmp = Comparison::new(&model.grads(&gpu).unwrap(), &grads);
    assert!(cmp.relative() <= 1e-4, "gradients: {cmp:?}");
}

#[test]
fn bf16_step_is_close_to_the_cpu_model() {
    let Some(gpu) = gpu_or_skip() else { return };
    let tiny = Tiny::new();
    let (loss, grads) = tiny.cpu_step(0.5);
    let (gpu_loss, gpu_grads) = tiny.gpu_step(&gpu, Precision::Bf16, 0.5);
    assert!(
        (gpu_loss - loss).abs() <= 1e-2 * loss.abs(),
        "bf16 loss {gpu_loss} vs CPU {loss}"
    );
    let cmp = Comparison::new(&gpu_grads, &grads);
    assert!(cmp.relative() <= 5e-2, "bf16 gradients: {cmp:?}");
    // Every tensor's gradient, not just the largest ones.
    for tensor in tiny.gpt.layout.tensors() {
        let r = tensor.range();
        let cmp = Comparison::new(&gpu_grads[r.clone()], &grads[r]);
        assert!(cmp.relative() <= 1e-1, "{}: {cmp:?}", tensor.name);
    }
}

#[test]
fn bf16_training_follows_fp32() {
    let Some(gpu) = gpu_or_skip() else { return };
    let tiny = Tiny::new();
    let hp = AdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let losses = |precision| {
        let (config, params) = (tiny.config.clone(), &tiny.params);
        let mut model =
            GpuGpt::with_precision(&gpu, config, params, tiny.b, tiny.t, precision).unwrap();
        (1..=8)
            .map(|step| {
                model.zero_grads(&gpu).unwrap();
                let loss = model.forward(&gpu, &tiny.tokens, &tiny.targets).unwrap();
                model.backward(&gpu, 1.0).unwrap();
                model.step(&gpu, &hp, step, 1.0).unwrap();
                loss
            })
            .collect::<Vec<f32>>()
    };
    let (fp32, bf16) = (losses(Precision::Fp32), losses(Precision::Bf16));
    for (step, (&a, &b)) in fp32.iter().zip(&bf16).enumerate() {
        assert!(b.is_finite(), "step {step}: bf16 loss {b}");
        assert!(
            (a - b).abs() <= 2e-2 * a.abs(),
            "step {step}: bf16 loss {b} vs fp32 {a}"
        );
    }
    assert!(
        bf16[7] < bf16[0],
        "bf16 training does not lower the loss: {bf16:?}"
    );
}

#[test]
fn set_params_refreshes_the_bf16_copy() {
    let Some(gpu) = gpu_or_skip() else { return };
    let tiny = Tiny::new();
    let (config, params) = (tiny.config.clone(), &tiny.params);
    let mut model =
        GpuGpt::with_precision(&gpu, config, params, tiny.b, tiny.t, Precision::Bf16).unwrap();
    let before = model.forward(&gpu, &tiny.tokens, &tiny.targets).unwrap();
    let zeros = vec![0f32; params.len()];
    model.set_params(&gpu, &zeros).unwrap();
    // All-zero weights give uniform logits: the loss is ln V.
    let after = model.forward(&gpu, &tiny.tokens, &tiny.targets).unwrap();
    let ln_v = (tiny.config.vocab_size as f32).ln();
    assert!(
        (after - ln_v).abs() <= 1e-3 * ln_v,
        "{after} vs ln V {ln_v} (was {before})"
    );
    assert_eq!(model.state_bytes().total(), 18 * params.len() as u64);
}

#[test]
fn recomputed_layers_give_the_gradients_of_kept_ones() {
    let Some(gpu) = gpu_or_skip() else { return };
    let tiny = Tiny::new();
    let layers = tiny.config.n_layer;
    let step = |plan: &RecomputePlan, precision: Precision| {
        let (b, t) = (tiny.b, tiny.t);
        let cfg = tiny.config.clone();
        let mut model = GpuGpt::with_precision(&gpu, cfg, &tiny.params, b, t, precision).unwrap();
        model.set_recompute(&gpu, plan).unwrap();
        // Two micro-batches: the second backward accumulates on recomputed layers too.
        let mut loss = 0.0;
        for _ in 0..2 {
            loss = model.forward(&gpu, &tiny.tokens, &tiny.targets).unwrap();
            model.backward(&gpu, 0.5).unwrap();
        }
        (loss, model.grads(&gpu).unwrap())
    };
    let mixed: Vec<Recompute> = (0..layers)
        .map(|l| {
            if l % 2 == 0 {
                Recompute::Full
            } else {
                Recompute::None
            }
        })
        .collect();
    for precision in [Precision::Fp32, Precision::Bf16] {
        let (loss, grads) = step(&RecomputePlan::uniform(layers, Recompute::None), precision);
        for plan in [
            RecomputePlan::uniform(layers, Recompute::Full),
            RecomputePlan::from_layers(mixed.clone()),
        ] {
            let (l, g) = step(&plan, precision);
            assert_eq!(l, loss, "{precision}, {plan}: loss");
            let c = Comparison::new(&g, &grads);
            assert!(c.relative() <= 1e-6, "{precision}, {plan}: gradients {c:?}");
        }
    }
    // Selective and a plan of the wrong length are refused.
    let cfg = tiny.config.clone();
    let mut model = GpuGpt::new(&gpu, cfg, &tiny.params, tiny.b, tiny.t).unwrap();
    let selective = RecomputePlan::uniform(layers, Recompute::Selective);
    assert!(model.set_recompute(&gpu, &selective).is_err());
    let short = RecomputePlan::uniform(layers - 1, Recompute::Full);
    assert!(model.set_recompute(&gpu, &short).is_err());
}

#[test]
fn gemm_attention_gives_the_flash_attention_model() {
    let Some(gpu) = gpu_or_skip() else { return };
    let tiny = Tiny::new();
    let layers = tiny.config.n_layer;
    let step = |attention: GpuAttention, plan: &RecomputePlan| {
        let (b, t) = (tiny.b, tiny.t);
        let mut model = GpuGpt::new(&gpu, tiny.config.clone(), &tiny.params, b, t).unwrap();
        model.set_recompute(&gpu, plan).unwrap();
        model.set_attention(&gpu, attention).unwrap();
        let loss = model.forward(&gpu, &tiny.tokens, &tiny.targets).unwrap();
        model.backward(&gpu, 1.0).unwrap();
        (loss, model.grads(&gpu).unwrap())
    };
    let keep = RecomputePlan::uniform(layers, Recompute::None);
    let (loss, grads) = step(GpuAttention::Flash, &keep);
    let (cpu_loss, _) = tiny.cpu_step(1.0);
    for plan in [
        keep.clone(),
        RecomputePlan::uniform(layers, Recompute::Full),
    ] {
        let (l, g) = step(GpuAttention::Gemm, &plan);
        assert!(
            (l - loss).abs() <= 1e-5 * loss.abs(),
            "{plan}: loss {l} vs {loss}"
        );
        assert!(
            (l - cpu_loss).abs() <= 1e-5 * cpu_loss.abs(),
            "{plan}: vs CPU {cpu_loss}"
        );
        let c = Comparison::new(&g, &grads);
        assert!(c.relative() <= 1e-4, "{plan}: gradients {c:?}");
    }
}

#[test]
fn gpu_attention_names_parse_and_print() {
    for a in [GpuAttention::Flash, GpuAttention::Gemm] {
        assert_eq!(a.to_string().parse::<GpuAttention>().unwrap(), a);
    }
    assert!("flashy".parse::<GpuAttention>().is_err());
}
