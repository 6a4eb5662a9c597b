//! ZeRO stages 0 to 3, the ranks as actors of one node, on W = 1..5 in-process ranks
//! (at W = 5 one rank has no rows) and W = 2, 3 over QUIC, against the single-rank
//! trainer step on the same global batch: per-step losses within 1e-5 relative, final
//! parameters within 1e-5 of their norm, the same global sample indices.

use std::sync::Arc;

use shoal_actors::{
    Fill, MemoryReport, Node, NodeSpec, Replicas, StartState, StepHyper, TrainState, ZeroShard,
    ZeroStage, buckets, train_step,
};
use shoal_collectives::{CommConfig, Communicator, LocalHub, loopback_ring};
use shoal_models::{Gpt, GptConfig};

const BATCH: usize = 4;
const SEQ: usize = 8;
const ACCUM: usize = 2;
const STEPS: usize = 20;

fn config() -> GptConfig {
    GptConfig {
        vocab_size: 61,
        n_positions: SEQ,
        n_layer: 2,
        n_head: 2,
        n_embd: 16,
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
        // Low enough that clipping acts on some steps.
        grad_clip: 0.5,
        grad_accum: ACCUM,
        moment_steps: 0,
    }
}

/// Sample `index` of a small deterministic corpus: a noisy counting sequence.
fn sample(index: u64, tokens: &mut [u32], targets: &mut [u32]) {
    let v = config().vocab_size as u64;
    let mut x = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) % v;
    for (t, y) in tokens.iter_mut().zip(targets.iter_mut()) {
        *t = x as u32;
        x = (x + 1 + (index % 3)) % v;
        *y = x as u32;
    }
}

struct Run {
    losses: Vec<f32>,
    params: Vec<f32>,
    indices: Vec<Vec<u64>>,
}

fn single_rank() -> Run {
    let model = Gpt::new(config()).unwrap();
    let spans = model.layout.decay_spans();
    let mut state = TrainState::new(model.init_params(7));
    let mut compute = Replicas::new(&config(), BATCH, SEQ, 1).unwrap();
    let (mut tokens, mut targets) = (vec![0; BATCH * SEQ], vec![0; BATCH * SEQ]);
    let (mut losses, mut indices) = (vec![], vec![]);
    for step in 0..STEPS as u64 {
        let mut seen = vec![];
        let fill = |micro: usize, tokens: &mut [u32], targets: &mut [u32]| {
            let first = step * (BATCH * ACCUM) as u64 + (micro * BATCH) as u64;
            let rows = tokens.chunks_mut(SEQ).zip(targets.chunks_mut(SEQ));
            for (i, (x, y)) in rows.enumerate() {
                sample(first + i as u64, x, y);
                seen.push(first + i as u64);
            }
            Ok(())
        };
        let (m, s, c, h) = (&model, &mut state, &mut compute, &hyper());
        let out = train_step(m, s, c, &spans, h, &mut tokens, &mut targets, fill).unwrap();
        seen.sort();
        indices.push(seen);
        losses.push(out.loss);
    }
    Run {
        losses,
        params: state.params,
        indices,
    }
}

/// The ranks of `comms` (one ring) as actors of one node, under `stage`.
fn distributed(comms: Vec<Communicator>, stage: ZeroStage, bucket_elems: usize) -> Vec<Run> {
    let world = comms.len();
    let model = Gpt::new(config()).unwrap();
    let params = model.init_params(7);
    let zeros = vec![0.0; params.len()];
    let fill: Fill = Arc::new(|index, x, y| {
        sample(index, x, y);
        Ok(())
    });
    let spec = NodeSpec {
        spans: model.layout.decay_spans(),
        model,
        stage,
        bucket_elems,
        batch: BATCH,
        accum: ACCUM,
        seq_len: SEQ,
        threads_per_rank: 1,
        fill,
        recompute: Default::default(),
        gpu: None,
    };
    let start = StartState {
        params: &params,
        adam_m: &zeros,
        adam_v: &zeros,
    };
    let node = Node::start(&spec, comms, start).unwrap();
    let mut losses = vec![vec![]; world];
    let mut indices = vec![];
    for step in 0..STEPS as u64 {
        let outs = node.step(step, hyper()).unwrap();
        let mut seen: Vec<u64> = outs.iter().flat_map(|o| o.samples.clone()).collect();
        seen.sort();
        indices.push(seen);
        for (rank, o) in outs.iter().enumerate() {
            losses[rank].push(o.loss);
        }
    }
    let params = node.params().unwrap();
    losses
        .into_iter()
        .map(|losses| Run {
            losses,
            params: params.clone(),
            indices: indices.clone(),
        })
        .collect()
}

const STAGES: [ZeroStage; 4] = [
    ZeroStage::Replicated,
    ZeroStage::OptimizerSharded,
    ZeroStage::GradientsSharded,
    ZeroStage::ParametersSharded,
];

/// Every rank's losses within 1e-5 relative of the reference's, the parameters within
/// 1e-5 of their norm, and the same samples consumed at every step.
fn assert_matches(reference: &Run, runs: &[Run], what: &str) {
    let norm = reference
        .params
        .iter()
        .map(|x| (x * x) as f64)
        .sum::<f64>()
        .sqrt();
    for (rank, run) in runs.iter().enumerate() {
        let what = format!("{what} rank {rank}");
        for (step, (a, b)) in run.losses.iter().zip(&reference.losses).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs(),
                "{what} step {step}: {a} vs {b}"
            );
        }
        let diff = run
            .params
            .iter()
            .zip(&reference.params)
            .map(|(a, b)| ((a - b) * (a - b)) as f64)
            .sum::<f64>()
            .sqrt();
        assert!(
            diff <= 1e-5 * norm,
            "{what}: parameters differ by {diff} (norm {norm})"
        );
        assert_eq!(run.indices, reference.indices, "{what}: samples consumed");
    }
}

#[test]
fn zero_stages_match_the_single_rank_step() {
    let reference = single_rank();
    assert!(
        reference.losses[STEPS - 1] < reference.losses[0],
        "the model learns"
    );
    for stage in STAGES {
        // Many small buckets (reduced while backward runs) and one bucket of everything.
        for (world, bucket) in [
            (1, 1000),
            (2, 1000),
            (3, 1000),
            (4, 1000),
            (3, usize::MAX),
            (5, 1000),
        ] {
            let comms = LocalHub::new().group(world, CommConfig::default()).unwrap();
            let runs = distributed(comms, stage, bucket);
            assert_matches(
                &reference,
                &runs,
                &format!("{stage:?} world {world} bucket {bucket}"),
            );
        }
    }
}

/// The same over QUIC: each rank its own endpoint and certificate of one cluster CA.
#[test]
fn zero_stages_over_quic_match_the_single_rank_step() {
    let reference = single_rank();
    for world in [2, 3] {
        for stage in STAGES {
            let (_endpoints, comms) = loopback_ring(world, 0, &CommConfig::default()).unwrap();
            let runs = distributed(comms, stage, 1000);
            assert_matches(&reference, &runs, &format!("QUIC {stage:?} world {world}"));
        }
    }
}

#[test]
fn buckets_cover_the_layout_and_shards_split_the_optimizer_state() {
    let model = Gpt::new(config()).unwrap();
    let n = model.layout.len();
    for size in [1, 500, 3000, usize::MAX] {
        let b = buckets(&model, size);
        let mut end = n;
        for r in &b {
            assert_eq!(r.end, end, "contiguous, from the end of the buffer");
            end = r.start;
        }
        assert_eq!(end, 0);
        assert!(b[..b.len() - 1].iter().all(|r| r.len() >= size.min(n)));
        for world in 1..=4 {
            for stage in (0..=3).map(|s| ZeroStage::from_number(s).unwrap()) {
                // The shard's own holdings plus the whole-layout buffers a rank keeps.
                let f = 4;
                let whole_params = if stage.shards_parameters() { 0 } else { f * n };
                let whole_grads = if stage.shards_gradients() { 0 } else { f * n };
                let held: Vec<MemoryReport> = (0..world)
                    .map(|r| {
                        let mut m = ZeroShard::new(stage, b.clone(), r, world).memory();
                        m.params += whole_params;
                        m.grads += whole_grads;
                        m
                    })
                    .collect();
                let copies = |sharded: bool| if sharded { 1 } else { world };
                let sum = |f: fn(&MemoryReport) -> usize| held.iter().map(f).sum::<usize>();
                let what = format!("{stage:?} world {world} bucket {size}");
                // Sharded state is held once over the ranks, replicated state W times.
                let p = copies(stage.shards_parameters());
                assert_eq!(sum(|m| m.params), 4 * n * p, "{what}");
                assert_eq!(sum(|m| m.grads), 4 * n * copies(stage.shards_gradients()));
                let o = copies(stage != ZeroStage::Replicated);
                assert_eq!(sum(|m| m.optimizer), 8 * n * o, "{what}");
                // Each rank holds ZeRO's share, to within one element per bucket.
                let estimate = MemoryReport::per_rank(stage, n, world);
                for m in &held {
                    assert!(
                        m.total().abs_diff(estimate.total()) <= 16 * b.len(),
                        "{what}"
                    );
                }
            }
        }
    }
    assert!(ZeroStage::from_number(3).is_ok());
    assert!(ZeroStage::from_number(4).is_err());
}
