//! Data-parallel training wired by hand from shoal's actors instead of by `shoal
//! train`: a `Coach` actor of your own starts two `Rank` actors (each with its
//! `DataFeeder`, `ParameterShard` and `GradientReducer`) linked to itself, so it
//! supervises them, over the in-process ring, under ZeRO stage 3. It drives the
//! steps, watches the global gradient norm and the samples each rank consumed, and
//! stops the run, aborting the ring at once, if the norm explodes or a rank fails.
//!
//! Run: `cargo run --release --example rank_actors [max_grad_norm]`
//! (the default 100 lets the run finish; try 0.5 to see the coach stop it).

use std::sync::Arc;

use ractor::concurrency::oneshot;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use shoal::actors::rank::{RankArgs, RankMsg};
use shoal::actors::{FeedPlan, Fill, Rank, Replicas, StepHyper, ZeroShard, ZeroStage, buckets};
use shoal::collectives::{AbortHandle, CommConfig, LocalHub, shard_range};
use shoal::data::SyntheticCorpus;
use shoal::models::{Gpt, GptConfig};

const WORLD: usize = 2;
const BATCH: usize = 8;
const SEQ: usize = 64;
const STEPS: u64 = 40;

/// The user's supervisor: drives and watches the ranks.
struct Coach;

struct CoachState {
    ranks: Vec<ActorRef<RankMsg>>,
    aborts: Vec<AbortHandle>,
    limit: f32,
    step: u64,
}

/// The coach's only message: take the next step.
struct Next;

impl Actor for Coach {
    type Msg = Next;
    type State = CoachState;
    type Arguments = (Vec<RankArgs>, f32);

    async fn pre_start(
        &self,
        myself: ActorRef<Next>,
        (args, limit): (Vec<RankArgs>, f32),
    ) -> Result<CoachState, ActorProcessingErr> {
        let aborts = args.iter().map(|a| a.comm.abort_handle()).collect();
        let mut ranks = Vec::new();
        for a in args {
            let (rank, _) = Actor::spawn_linked(None, Rank, a, myself.get_cell()).await?;
            ranks.push(rank);
        }
        myself.cast(Next)?;
        Ok(CoachState {
            ranks,
            aborts,
            limit,
            step: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Next>,
        _: Next,
        s: &mut CoachState,
    ) -> Result<(), ActorProcessingErr> {
        let hp = StepHyper {
            lr: 3e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
            grad_accum: 1,
            moment_steps: 0,
        };
        // Every rank takes the step at once; each answers with its outcome.
        let mut replies = Vec::new();
        for rank in &s.ranks {
            let (tx, rx) = oneshot();
            rank.cast(RankMsg::Step {
                step: s.step,
                hp,
                reply: tx.into(),
            })?;
            replies.push(rx);
        }
        let mut outs = Vec::new();
        for rx in replies {
            outs.push(rx.await??);
        }
        s.step += 1;
        let (loss, norm) = (outs[0].loss, outs[0].grad_norm);
        let samples: Vec<_> = outs.iter().map(|o| o.samples.len()).collect();
        println!(
            "step {:3}  loss {loss:.4}  grad norm {norm:.3}  samples per rank {samples:?}",
            s.step
        );
        if norm > s.limit {
            println!("grad norm {norm:.3} over {}: stopping", s.limit);
            myself.stop(None);
        } else if s.step < STEPS {
            myself.cast(Next)?;
        } else {
            myself.stop(None);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Next>,
        _: &mut CoachState,
    ) -> Result<(), ActorProcessingErr> {
        shoal::actors::stop_children(&myself).await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Next>,
        event: SupervisionEvent,
        s: &mut CoachState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(who, why) = event {
            println!("{} failed ({why}): aborting the ring", who.get_id());
            s.aborts.iter().for_each(|a| a.abort(None));
            myself.stop(None);
        }
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let limit: f32 = std::env::args().nth(1).map_or(Ok(100.0), |a| a.parse())?;
    let config = GptConfig {
        n_layer: 2,
        n_embd: 64,
        n_head: 2,
        n_positions: SEQ,
        ..GptConfig::preset("tiny")?
    };
    let model = Arc::new(Gpt::new(config.clone())?);
    let params = model.init_params(1);
    let zeros = vec![0.0; params.len()];
    let mixture = SyntheticCorpus::new(7).mixture(20_000, 0.05)?;
    let fill: Fill = Arc::new(move |index, x, y| {
        mixture.sample(42, index, SEQ, x, y)?;
        Ok(())
    });
    let stage = ZeroStage::ParametersSharded;
    // Stage 3 gathers parameters part by part: one bucket per part.
    let parts = buckets(&model, 1);
    let comms = LocalHub::new().group(WORLD, CommConfig::default())?;
    let mut ranks = Vec::new();
    for comm in comms {
        let rank = comm.rank();
        let rows = shard_range(BATCH, WORLD, rank);
        let mut zero = ZeroShard::new(stage, parts.clone(), rank, WORLD);
        zero.load_params(&params);
        zero.load_moments(&zeros, &zeros);
        ranks.push(RankArgs {
            model: model.clone(),
            compute: Some(Replicas::new(&config, rows.len(), SEQ, 1)?),
            gpu: None,
            comm: comm.into(),
            zero,
            // Stage 3 keeps no whole copy of the parameters.
            params: Vec::new(),
            spans: model.layout.decay_spans(),
            plan: FeedPlan {
                batch: BATCH,
                accum: 1,
                seq_len: SEQ,
                rows,
                placeholder_rows: 1,
            },
            fill: fill.clone(),
        });
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let (_, done) = Actor::spawn(Some("coach".into()), Coach, (ranks, limit)).await?;
        done.await?;
        Ok(())
    })
}
