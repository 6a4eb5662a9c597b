//! Data-parallel ranks computing on GPUs (built with the `cuda` feature) against the
//! same ranks on the CPU: ZeRO 0 to 3, W = 1..3 in-process ranks (ranks share the
//! GPUs when there are fewer GPUs than ranks), gradient accumulation 2. Per-step
//! losses within 1e-4 relative, final parameters within 1e-4 of their norm, the same
//! global sample indices. Skips with a message when no GPU is usable.
#![cfg(feature = "cuda")]

use std::sync::Arc;

use shoal_actors::rank::GpuCompute;
use shoal_actors::{Fill, GpuRanks, Node, NodeSpec, StartState, StepHyper, ZeroStage};
use shoal_collectives::{CommConfig, DeviceBackend, LocalHub};
use shoal_models::{Gpt, GptConfig, Precision};

const BATCH: usize = 6;
const SEQ: usize = 16;
const STEPS: u64 = 6;
const TOL: f32 = 1e-4;

fn config() -> GptConfig {
    GptConfig {
        vocab_size: 67,
        n_positions: SEQ,
        n_layer: 2,
        n_head: 2,
        n_embd: 32,
        layer_norm_eps: 1e-5,
    }
}

fn hyper() -> StepHyper {
    StepHyper {
        lr: 3e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        grad_clip: 0.5,
        grad_accum: 2,
        moment_steps: 0,
    }
}

/// Sample `index`: a noisy counting sequence.
fn sample(index: u64, tokens: &mut [u32], targets: &mut [u32]) {
    let v = config().vocab_size as u64;
    let mut x = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) % v;
    for (t, y) in tokens.iter_mut().zip(targets.iter_mut()) {
        *t = x as u32;
        x = (x + 1 + (index % 5)) % v;
        *y = x as u32;
    }
}

struct Run {
    losses: Vec<Vec<f32>>,
    indices: Vec<Vec<u64>>,
    params: Vec<f32>,
}

fn run(world: usize, stage: ZeroStage, gpu: Option<GpuRanks>) -> Run {
    let model = Gpt::new(config()).unwrap();
    let params = model.init_params(11);
    let zeros = vec![0.0; params.len()];
    let fill: Fill = Arc::new(|index, x, y| {
        sample(index, x, y);
        Ok(())
    });
    let spec = NodeSpec {
        spans: model.layout.decay_spans(),
        model,
        stage,
        bucket_elems: 2000,
        batch: BATCH,
        accum: 2,
        seq_len: SEQ,
        threads_per_rank: 1,
        fill,
        recompute: Default::default(),
        gpu,
    };
    let comms = LocalHub::new().group(world, CommConfig::default()).unwrap();
    let start = StartState {
        params: &params,
        adam_m: &zeros,
        adam_v: &zeros,
    };
    let node = Node::start(&spec, comms, start).unwrap();
    let (mut losses, mut indices) = (vec![], vec![]);
    for step in 0..STEPS {
        let outs = node.step(step, hyper()).unwrap();
        let mut seen: Vec<u64> = outs.iter().flat_map(|o| o.samples.clone()).collect();
        seen.sort();
        indices.push(seen);
        losses.push(outs.iter().map(|o| o.loss).collect());
    }
    Run {
        losses,
        indices,
        params: node.params().unwrap(),
    }
}

/// Whether a GPU is usable (says why not when not).
fn gpu_present() -> bool {
    match GpuCompute::device_count() {
        Ok(n) if n > 0 => true,
        Ok(_) => {
            eprintln!("skipped: the CUDA driver sees no GPU");
            false
        }
        Err(e) => {
            eprintln!("skipped: no usable GPU ({e})");
            false
        }
    }
}

/// The GPU ranks' settings: fp32 unless `bf16`, gradients reduced by `collectives`.
fn on_gpu(bf16: bool, collectives: Option<DeviceBackend>) -> Option<GpuRanks> {
    let (matmul, precision) = if bf16 {
        ("bf16", Precision::Bf16)
    } else {
        ("fp32", Precision::Fp32)
    };
    Some(GpuRanks {
        first: 0,
        matmul: matmul.into(),
        precision,
        collectives,
        gemm_attention: false,
    })
}

/// `got` follows `want`: the same samples, every loss within `tol` relative and
/// (with `params_tol`) the final parameters within that much of their largest.
fn assert_close(what: &str, got: &Run, want: &Run, tol: f32, params_tol: Option<f32>) {
    assert_eq!(got.indices, want.indices, "{what}: samples differ");
    for (step, (g, w)) in got.losses.iter().zip(&want.losses).enumerate() {
        for (a, b) in g.iter().zip(w) {
            let rel = (a - b).abs() / b.abs().max(1e-6);
            assert!(rel <= tol, "{what}, step {step}: loss {a} vs {b}");
        }
    }
    if let Some(params_tol) = params_tol {
        let scale = want.params.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = got
            .params
            .iter()
            .zip(&want.params)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff <= params_tol * scale,
            "{what}: parameters differ by {diff:e}"
        );
    }
}

#[test]
fn gpu_ranks_match_cpu_ranks_at_every_zero_stage() {
    if !gpu_present() {
        return;
    }
    for stage in [
        ZeroStage::Replicated,
        ZeroStage::OptimizerSharded,
        ZeroStage::GradientsSharded,
        ZeroStage::ParametersSharded,
    ] {
        for world in 1..=3 {
            let (cpu, gpu) = (
                run(world, stage, None),
                run(world, stage, on_gpu(false, None)),
            );
            let what = format!("{stage:?}, {world} ranks: GPU vs CPU");
            assert_close(&what, &gpu, &cpu, TOL, Some(TOL));
        }
    }
}

#[test]
fn bf16_gpu_ranks_follow_the_fp32_cpu_ranks() {
    if !gpu_present() {
        return;
    }
    let stage = ZeroStage::OptimizerSharded;
    let (cpu, gpu) = (run(2, stage, None), run(2, stage, on_gpu(true, None)));
    assert_close("bf16 GPU vs fp32 CPU", &gpu, &cpu, 2e-2, None);
}

#[test]
fn gradients_reduced_on_the_devices_match_the_host_ring() {
    if !gpu_present() {
        return;
    }
    let gpus = GpuCompute::device_count().unwrap();
    // NCCL takes one GPU per rank; the IPC ring lets ranks share one.
    let cases = [
        (DeviceBackend::Ipc, 2, ZeroStage::Replicated),
        (DeviceBackend::Ipc, 3, ZeroStage::GradientsSharded),
        (
            DeviceBackend::Nccl,
            gpus.min(2),
            ZeroStage::OptimizerSharded,
        ),
    ];
    for (backend, world, stage) in cases {
        let host = run(world, stage, on_gpu(false, None));
        let device = run(world, stage, on_gpu(false, Some(backend)));
        let what = format!("{backend}, {world} ranks, {stage:?}: device vs host");
        assert_close(&what, &device, &host, TOL, Some(TOL));
    }
}

#[test]
fn gpu_ranks_with_cublas_attention_match_cpu_ranks() {
    if !gpu_present() {
        return;
    }
    let stage = ZeroStage::OptimizerSharded;
    let mut gemm = on_gpu(false, None);
    if let Some(g) = gemm.as_mut() {
        g.gemm_attention = true;
    }
    let (cpu, gpu) = (run(2, stage, None), run(2, stage, gemm));
    assert_close("gemm attention GPU vs CPU", &gpu, &cpu, TOL, Some(TOL));
}
