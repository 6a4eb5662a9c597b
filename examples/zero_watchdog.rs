//! Data-parallel training wired by hand instead of by `shoal train`: two ranks (threads)
//! train a small GPT with ZeRO stage 1 over the in-process ring collectives, and a
//! watchdog of your own (a third thread) reads every step's loss and gradient norm from
//! a channel and aborts the ring if the norm explodes: `AbortHandle` wakes both ranks
//! at once, wherever they are in their collectives.
//!
//! Run: `cargo run --release --example zero_watchdog [max_grad_norm]`
//! (the default 100 lets the run finish; try 0.5 to see the watchdog stop it).

use std::sync::mpsc;
use std::thread;

use shoal::actors::{Replicas, StepHyper, TrainState, ZeroShard, ZeroStage, buckets, zero_step};
use shoal::collectives::{CommConfig, LocalHub, shard_range};
use shoal::data::SyntheticCorpus;
use shoal::models::{Gpt, GptConfig};

const WORLD: usize = 2;
const BATCH: usize = 8;
const SEQ: usize = 64;
const STEPS: u64 = 60;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let limit: f32 = std::env::args().nth(1).map_or(Ok(100.0), |a| a.parse())?;
    let config = GptConfig {
        n_layer: 2,
        n_embd: 64,
        n_head: 2,
        n_positions: SEQ,
        ..GptConfig::preset("tiny")?
    };
    let model = Gpt::new(config.clone())?;
    let params = model.init_params(1);
    let spans = model.layout.decay_spans();
    let mixture = SyntheticCorpus::new(7).mixture(20_000, 0.05)?;
    let hp = StepHyper {
        lr: 3e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        grad_clip: 1.0,
        grad_accum: 1,
    };
    let comms = LocalHub::new().group(WORLD, CommConfig::default())?;
    let aborts: Vec<_> = comms.iter().map(|c| c.abort_handle()).collect();
    let (report, reports) = mpsc::channel::<(u64, f32, f32)>();

    thread::scope(|s| {
        // The watchdog: only rank 0 reports; everyone's norm is the same global norm.
        s.spawn(move || {
            for (step, loss, norm) in reports {
                println!("step {step:3}  loss {loss:.4}  grad norm {norm:.3}");
                if norm > limit {
                    println!("grad norm {norm:.3} over {limit}: aborting the ring");
                    aborts.iter().for_each(|a| a.abort(None));
                    return;
                }
            }
        });
        for mut comm in comms {
            let report = report.clone();
            let (model, spans, mixture, params, config) =
                (&model, &spans, &mixture, params.clone(), &config);
            s.spawn(move || {
                let rank = comm.rank();
                let rows = shard_range(BATCH, WORLD, rank).len();
                let mut compute = Replicas::new(config, rows, SEQ, 1).expect("compute");
                let mut shard = ZeroShard::new(
                    ZeroStage::OptimizerSharded,
                    buckets(model, 1 << 16),
                    rank,
                    WORLD,
                );
                let mut state = TrainState::without_moments(params);
                while state.step < STEPS {
                    let fill = |index: u64, x: &mut [u32], y: &mut [u32]| {
                        mixture.sample(42, index, SEQ, x, y)?;
                        Ok(())
                    };
                    let step = zero_step(
                        &mut comm,
                        model,
                        &mut state,
                        &mut shard,
                        Some(&mut compute),
                        spans,
                        &hp,
                        BATCH,
                        fill,
                    );
                    match step {
                        Ok(out) if rank == 0 => {
                            let _ = report.send((state.step, out.loss, out.grad_norm));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            println!("rank {rank} stopped at step {}: {e}", state.step);
                            return;
                        }
                    }
                }
            });
        }
        drop(report);
    });
    Ok(())
}
