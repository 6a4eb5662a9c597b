//! Data-parallel training with ranks that are threads of this process: each rank
//! runs [`zero_step`] on its rows of every batch over the in-process collectives.
//! Rank 0 is the trainer's own thread and does everything a single-process run does
//! besides (metrics, evaluation, checkpoints); the other ranks only step, and join
//! the collective that gathers the sharded AdamW moments for a checkpoint, so
//! checkpoints keep the single-process format and resume at any world size.

use std::ops::Range;
use std::time::Duration;

use shoal_collectives::{CommConfig, Communicator, LocalHub, shard_range};
use shoal_data::Mixture;
use shoal_kernels::DecaySpan;
use shoal_models::Gpt;

use crate::config::TrainConfig;
use crate::error::Result;
use crate::replicas::Replicas;
use crate::schedule::LrSchedule;
use crate::step::{StepHyper, TrainState};
use crate::zero::{ZeroOutcome, ZeroShard, ZeroStage, buckets, zero_step};

/// Gradient bucket size: PyTorch DDP's default of 25 MiB.
const BUCKET_BYTES: usize = 25 << 20;

/// What every rank needs to take a step; each rank has its own copy (the
/// datasets' tokens are shared, not copied).
#[derive(Clone)]
pub(crate) struct StepContext {
    pub model: Gpt,
    pub spans: Vec<DecaySpan>,
    pub schedule: LrSchedule,
    pub config: TrainConfig,
    pub mixture: Mixture,
}

/// One rank: its links, its share of the optimizer and its compute.
pub(crate) struct Rank {
    pub comm: Communicator,
    pub shard: ZeroShard,
    compute: Option<Replicas>,
}

/// Deadline of the training collectives. A rank that dies is seen at once (its
/// links close, or QUIC's idle timeout fires); the long deadline covers rank 0
/// evaluating or writing a checkpoint while the others wait in the next step's
/// first collective.
pub const TRAIN_COMM_TIMEOUT: Duration = Duration::from_secs(3600);

/// `ranks` in-process communicators for training.
pub(crate) fn local_comms(ranks: usize) -> Result<Vec<Communicator>> {
    let config = CommConfig {
        timeout: TRAIN_COMM_TIMEOUT,
        ..CommConfig::default()
    };
    Ok(LocalHub::new().group(ranks, config)?)
}

/// The ranks of `comms` (this process's ranks of one ring) for `ctx`, each with the
/// moments of its pieces taken from the full-layout `adam_m`/`adam_v` (zeros or a
/// checkpoint's).
pub(crate) fn form_ranks(
    ctx: &StepContext,
    comms: Vec<Communicator>,
    stage: ZeroStage,
    params: &[f32],
    adam_m: &[f32],
    adam_v: &[f32],
) -> Result<Vec<Rank>> {
    let ranks = comms.first().map_or(1, Communicator::world);
    let c = &ctx.config;
    let threads = (c.resolved_threads() / ranks).max(1);
    // Stage 3 gathers parameters part by part: one bucket per part.
    let bucket_elems = if stage.shards_parameters() {
        1
    } else {
        BUCKET_BYTES / 4
    };
    let buckets = buckets(&ctx.model, bucket_elems);
    comms
        .into_iter()
        .map(|comm| {
            let rank = comm.rank();
            let rows = shard_range(c.batch_size, ranks, rank).len();
            let cfg = &ctx.model.config;
            // Sharded gradients go through one model replica per rank.
            let replicas = if stage.shards_gradients() { 1 } else { threads };
            // At stages 2 and 3 a rank without rows computes on a placeholder row.
            let rows = rows.max(usize::from(stage.shards_gradients()));
            let compute = (rows > 0)
                .then(|| Replicas::with_replicas(cfg, rows, c.seq_len, threads, replicas))
                .transpose()?;
            let mut shard = ZeroShard::new(stage, buckets.clone(), rank, ranks);
            shard.load_moments(adam_m, adam_v);
            shard.load_params(params);
            Ok(Rank {
                comm,
                shard,
                compute,
            })
        })
        .collect()
}

/// Whether the trainer evaluates or writes a checkpoint after `step`, so that a
/// stage-3 rank must gather the full parameters (every rank decides alike).
fn needs_params_after(c: &TrainConfig, step: u64) -> bool {
    let last = step == c.max_steps;
    let every = |k: u64| k > 0 && step.is_multiple_of(k);
    (c.eval_every > 0 && (every(c.eval_every) || last)) || every(c.checkpoint_every) || last
}

impl Rank {
    /// One optimizer step of this rank on `state` (its parameters and gradients).
    pub fn step(
        &mut self,
        ctx: &StepContext,
        state: &mut TrainState,
    ) -> Result<(ZeroOutcome, f32)> {
        let c = &ctx.config;
        let lr = ctx.schedule.lr(state.step);
        let hp = StepHyper {
            lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            grad_clip: c.grad_clip,
            grad_accum: c.grad_accum,
        };
        let (seed, t) = (c.seed, c.seq_len);
        let fill = |index: u64, x: &mut [u32], y: &mut [u32]| -> Result<()> {
            ctx.mixture.sample(seed, index, t, x, y)?;
            Ok(())
        };
        // What the stage keeps sharded is dropped from the whole-layout state (the
        // parameters gathered for the last evaluation or checkpoint, at stage 3).
        self.shard.trim(state);
        let out = zero_step(
            &mut self.comm,
            &ctx.model,
            state,
            &mut self.shard,
            self.compute.as_mut(),
            &ctx.spans,
            &hp,
            c.batch_size,
            fill,
        )?;
        if needs_params_after(c, state.step) {
            let n = ctx.model.num_params();
            self.shard.materialize_params(&mut self.comm, state, n)?;
        }
        Ok((out, lr))
    }

    /// The full-layout AdamW moments (every rank must call this at the same step).
    pub fn gather_moments(&mut self, len: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        self.shard.gather_moments(&mut self.comm, len)
    }

    /// Steps `steps` from `state.step` as a rank other than 0, joining the moment
    /// gathers of the checkpoints rank 0 writes.
    pub fn follow(
        mut self,
        ctx: &StepContext,
        mut state: TrainState,
        steps: Range<u64>,
    ) -> Result<()> {
        let n = state.params.len();
        let every = ctx.config.checkpoint_every;
        for _ in steps.clone() {
            self.step(ctx, &mut state)?;
            let s = state.step;
            if (every > 0 && s.is_multiple_of(every)) || s == steps.end {
                self.gather_moments(n)?;
            }
        }
        Ok(())
    }
}
