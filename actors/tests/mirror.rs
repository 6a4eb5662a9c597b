//! Mirroring: after a few steps at every ZeRO stage, each of three ranks (one
//! node each) holds its own piece of the state and exactly the previous rank's,
//! as the full-layout state cuts them; placing the pieces rebuilds the state.

use std::sync::Arc;

use shoal_actors::pieces::{FullState, export_ranges};
use shoal_actors::{Fill, Node, NodeSpec, StartState, StepHyper, ZeroStage};
use shoal_collectives::{CommConfig, LocalHub};
use shoal_models::{Gpt, GptConfig};

const WORLD: usize = 3;

fn spec(stage: ZeroStage) -> NodeSpec {
    let model = Gpt::new(GptConfig {
        vocab_size: 37,
        n_positions: 8,
        n_layer: 2,
        n_head: 2,
        n_embd: 16,
        layer_norm_eps: 1e-5,
    })
    .unwrap();
    let fill: Fill = Arc::new(|index, x, y| {
        for (i, (t, u)) in x.iter_mut().zip(y.iter_mut()).enumerate() {
            *t = ((index as usize * 7 + i) % 37) as u32;
            *u = ((index as usize * 7 + i + 1) % 37) as u32;
        }
        Ok(())
    });
    NodeSpec {
        spans: model.layout.decay_spans(),
        model,
        stage,
        // Small buckets: several per part.
        bucket_elems: 300,
        batch: 3,
        accum: 1,
        seq_len: 8,
        threads_per_rank: 1,
        fill,
        recompute: Default::default(),
        gpu: None,
    }
}

/// One piece of `full`, flattened as a mirror holds it.
fn piece(full: &FullState, spec: &NodeSpec, rank: usize) -> Vec<f32> {
    let ranges = export_ranges(&Node::buckets(spec), WORLD, rank);
    let mut out = Vec::new();
    for buf in [&full.adam_m, &full.adam_v, &full.params] {
        for r in &ranges {
            out.extend_from_slice(&buf[r.clone()]);
        }
    }
    out
}

#[test]
fn every_rank_holds_its_piece_and_the_previous_ranks() {
    for stage in [
        ZeroStage::Replicated,
        ZeroStage::OptimizerSharded,
        ZeroStage::GradientsSharded,
        ZeroStage::ParametersSharded,
    ] {
        let spec = spec(stage);
        let params = spec.model.init_params(3);
        let zeros = vec![0.0; params.len()];
        let comms = LocalHub::new().group(WORLD, CommConfig::default()).unwrap();
        let outs: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = comms
                .into_iter()
                .map(|comm| {
                    let (spec, params, zeros) = (&spec, &params, &zeros);
                    s.spawn(move || {
                        let start = StartState {
                            params,
                            adam_m: zeros,
                            adam_v: zeros,
                        };
                        let node = Node::start(spec, vec![comm], start).unwrap();
                        let hp = StepHyper {
                            lr: 1e-2,
                            beta1: 0.9,
                            beta2: 0.95,
                            eps: 1e-8,
                            weight_decay: 0.1,
                            grad_clip: 1.0,
                            grad_accum: 1,
                            moment_steps: 0,
                        };
                        for step in 0..3 {
                            node.step(step, hp).unwrap();
                        }
                        let mirror = node.mirror().unwrap();
                        let params = node.params().unwrap();
                        let (adam_m, adam_v) = node.gather_moments().unwrap();
                        (
                            mirror,
                            FullState {
                                params,
                                adam_m,
                                adam_v,
                            },
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let full = &outs[0].1;
        assert!(
            full.adam_v.iter().any(|&v| v > 0.0),
            "{stage:?}: moments moved"
        );
        let mut rebuilt = FullState::zeros(full.params.len());
        for (rank, (mirror, f)) in outs.iter().enumerate() {
            assert_eq!(f, full, "{stage:?}: every rank sees the same state");
            let prev = (rank + WORLD - 1) % WORLD;
            assert_eq!(
                mirror.own(),
                piece(full, &spec, rank),
                "{stage:?} rank {rank}: own"
            );
            assert_eq!(
                mirror.left(),
                piece(full, &spec, prev),
                "{stage:?} rank {rank}: left"
            );
            rebuilt
                .place(&Node::buckets(&spec), WORLD, prev, mirror.left())
                .unwrap();
        }
        assert_eq!(&rebuilt, full, "{stage:?}: the mirrors rebuild the state");
    }
}
