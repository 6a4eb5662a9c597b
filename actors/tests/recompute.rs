//! A node's ranks under an activation budget: the scheduler's plan recomputes, the
//! steps match a run that keeps everything, a budget changed between steps reaches
//! the ranks, and a budget nothing fits is an error at start.

use std::sync::Arc;

use shoal_actors::{
    Fill, Node, NodeSpec, RecomputeMode, RecomputeSettings, StartState, StepHyper, TrainError,
    ZeroStage,
};
use shoal_collectives::{CommConfig, LocalHub};
use shoal_models::{ActivationBytes, Gpt, GptConfig, Recompute, RecomputePlan};

const WORLD: usize = 2;
const BATCH: usize = 4;
const SEQ: usize = 16;

fn spec(stage: ZeroStage, budget: Option<u64>) -> NodeSpec {
    let model = Gpt::new(GptConfig {
        vocab_size: 37,
        n_positions: SEQ,
        n_layer: 4,
        n_head: 2,
        n_embd: 16,
        layer_norm_eps: 1e-5,
    })
    .unwrap();
    let fill: Fill = Arc::new(|index, x, y| {
        for (i, (t, u)) in x.iter_mut().zip(y.iter_mut()).enumerate() {
            *t = ((index as usize * 7 + i * 3) % 37) as u32;
            *u = ((index as usize * 5 + i * 11 + 1) % 37) as u32;
        }
        Ok(())
    });
    NodeSpec {
        spans: model.layout.decay_spans(),
        model,
        stage,
        bucket_elems: 1000,
        batch: BATCH,
        accum: 1,
        seq_len: SEQ,
        threads_per_rank: 1,
        fill,
        recompute: RecomputeSettings {
            mode: RecomputeMode::Auto,
            budget,
        },
        gpu: None,
    }
}

const HP: StepHyper = StepHyper {
    lr: 1e-2,
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weight_decay: 0.1,
    grad_clip: 1.0,
    grad_accum: 1,
    moment_steps: 0,
};

/// What a rank saw: each step's loss, the plan before and after the budget change.
struct Seen {
    losses: Vec<f32>,
    plans: Vec<RecomputePlan>,
    params: Vec<f32>,
}

/// Four steps on `WORLD` ranks; after two, the budget becomes `later` if given.
fn run(spec: &NodeSpec, later: Option<Option<u64>>) -> Vec<Seen> {
    let params = spec.model.init_params(9);
    let zeros = vec![0.0; params.len()];
    let comms = LocalHub::new().group(WORLD, CommConfig::default()).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                let (params, zeros) = (&params, &zeros);
                s.spawn(move || {
                    let start = StartState {
                        params,
                        adam_m: zeros,
                        adam_v: zeros,
                    };
                    let node = Node::start(spec, vec![comm], start).unwrap();
                    let mut seen = Seen {
                        losses: Vec::new(),
                        plans: vec![node.recompute().unwrap().plan],
                        params: Vec::new(),
                    };
                    for step in 0..4 {
                        if step == 2
                            && let Some(budget) = later
                        {
                            seen.plans
                                .push(node.set_activation_budget(budget).unwrap().plan);
                        }
                        seen.losses.push(node.step(step, HP).unwrap()[0].loss);
                    }
                    seen.params = node.params().unwrap();
                    seen
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn close(what: &str, got: &[f32], want: &[f32]) {
    let scale = want.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= 1e-5 * scale, "{what} {i}: {a} vs {b}");
    }
}

#[test]
fn ranks_under_a_budget_train_as_ranks_without_one() {
    let rows = BATCH / WORLD;
    let probe = spec(ZeroStage::Replicated, None);
    let bytes = |p: Recompute| {
        let plan = RecomputePlan::uniform(4, p);
        ActivationBytes::new(&probe.model.config, rows, SEQ, &plan).total() as u64
    };
    // Room for about half of what keeping everything takes above full recomputation.
    let tight = (bytes(Recompute::None) + bytes(Recompute::Full)) / 2;
    for stage in [ZeroStage::Replicated, ZeroStage::GradientsSharded] {
        let keep = run(&spec(stage, None), None);
        let tight_run = run(&spec(stage, Some(tight)), Some(None));
        for (k, t) in keep.iter().zip(&tight_run) {
            assert!(!k.plans[0].recomputes());
            assert!(t.plans[0].recomputes(), "{stage:?}: {}", t.plans[0]);
            assert!(
                !t.plans[1].recomputes(),
                "{stage:?}: no budget, no recomputation"
            );
            close(&format!("{stage:?} loss"), &t.losses, &k.losses);
            close(&format!("{stage:?} params"), &t.params, &k.params);
        }
        // And into a budget between steps: the ranks lay their activations out anew.
        let later = run(&spec(stage, None), Some(Some(bytes(Recompute::Full))));
        for (k, l) in keep.iter().zip(&later) {
            assert_eq!(l.plans[1], RecomputePlan::uniform(4, Recompute::Full));
            close(&format!("{stage:?} loss"), &l.losses, &k.losses);
        }
    }
}

#[test]
fn a_budget_nothing_fits_fails_the_start() {
    let spec = spec(ZeroStage::Replicated, Some(10_000));
    let params = spec.model.init_params(1);
    let zeros = vec![0.0; params.len()];
    let comm = LocalHub::new()
        .group(1, CommConfig::default())
        .unwrap()
        .remove(0);
    let start = StartState {
        params: &params,
        adam_m: &zeros,
        adam_v: &zeros,
    };
    let e = Node::start(&spec, vec![comm], start).err().unwrap();
    assert!(
        matches!(
            e,
            TrainError::ActivationBudget {
                budget: 10_000,
                rows: BATCH,
                ..
            }
        ),
        "{e}"
    );
}
