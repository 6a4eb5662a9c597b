//! The `DataFeeder` actor: a rank's micro-batches, prepared one step ahead on a
//! thread of their own.
//!
//! The global data order is a pure function of the global sample index (the
//! mixture's sampler already depends only on seed, weights and index): sample
//! `step·B·A + micro·B + row` is row `row` of micro-batch `micro` of `step`, for
//! global batch B and accumulation A. A rank of any world size computes its rows
//! (`shard_range(B, W, rank)`) without asking anyone, and every batch it hands out
//! names the global indices it holds, so the samples a run consumed can be counted
//! exactly.

use std::ops::Range;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;

use crate::error::{Result, TrainError};

/// Writes the `[T]` tokens and targets of global sample `index`.
pub type Fill = Arc<dyn Fn(u64, &mut [u32], &mut [u32]) -> Result<()> + Send + Sync>;

/// Which rows of every step a rank takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedPlan {
    /// Global batch: sequences per micro-batch over all ranks.
    pub batch: usize,
    /// Micro-batches per step.
    pub accum: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// This rank's rows of each micro-batch.
    pub rows: Range<usize>,
    /// Rows to hand out when `rows` is empty: a rank that must compute anyway (ZeRO
    /// stages 2 and 3) gets one placeholder row of token 0, which it weights zero.
    pub placeholder_rows: usize,
}

/// One step's micro-batches for one rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepBatch {
    /// The optimizer step these rows belong to (0-based: the step being taken).
    pub step: u64,
    /// Rows per micro-batch (placeholder rows included).
    pub rows: usize,
    /// Global sample indices, micro-batch after micro-batch (none for placeholders).
    pub indices: Vec<u64>,
    /// Tokens `[A, rows, T]`.
    pub tokens: Vec<u32>,
    /// Targets `[A, rows, T]`.
    pub targets: Vec<u32>,
}

impl FeedPlan {
    /// Builds the rows of `step`.
    pub fn batch_of(&self, fill: &Fill, step: u64) -> Result<StepBatch> {
        let real = self.rows.len();
        let rows = if real == 0 {
            self.placeholder_rows
        } else {
            real
        };
        let per_micro = rows * self.seq_len;
        let mut out = StepBatch {
            step,
            rows,
            indices: Vec::with_capacity(self.accum * real),
            tokens: vec![0; self.accum * per_micro],
            targets: vec![0; self.accum * per_micro],
        };
        for micro in 0..self.accum {
            let first = step * (self.batch * self.accum) as u64 + (micro * self.batch) as u64;
            let span = micro * per_micro..(micro + 1) * per_micro;
            let xs = out.tokens[span.clone()].chunks_mut(self.seq_len);
            let ys = out.targets[span].chunks_mut(self.seq_len);
            for (i, (x, y)) in xs.zip(ys).take(real).enumerate() {
                let index = first + (self.rows.start + i) as u64;
                fill(index, x, y)?;
                out.indices.push(index);
            }
        }
        Ok(out)
    }
}

/// Messages of the [`DataFeeder`].
pub enum FeederMsg {
    /// The rows of `step`; the feeder then starts preparing `step + 1`.
    Fetch {
        /// The step.
        step: u64,
        /// Where the batch goes.
        reply: RpcReplyPort<Result<StepBatch>>,
    },
}

/// Prefetches a rank's batches (see the module documentation).
pub struct DataFeeder;

/// The feeder's state.
pub struct FeederState {
    plan: Arc<FeedPlan>,
    fill: Fill,
    ahead: Option<(u64, JoinHandle<Result<StepBatch>>)>,
}

impl FeederState {
    fn prepare(&self, step: u64) -> JoinHandle<Result<StepBatch>> {
        let (plan, fill) = (self.plan.clone(), self.fill.clone());
        tokio::task::spawn_blocking(move || plan.batch_of(&fill, step))
    }
}

impl Actor for DataFeeder {
    type Msg = FeederMsg;
    type State = FeederState;
    type Arguments = (FeedPlan, Fill);

    async fn pre_start(
        &self,
        _: ActorRef<FeederMsg>,
        (plan, fill): (FeedPlan, Fill),
    ) -> std::result::Result<FeederState, ActorProcessingErr> {
        Ok(FeederState {
            plan: Arc::new(plan),
            fill,
            ahead: None,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<FeederMsg>,
        msg: FeederMsg,
        state: &mut FeederState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let FeederMsg::Fetch { step, reply } = msg;
        let job = match state.ahead.take() {
            Some((s, job)) if s == step => job,
            // Nothing prepared for this step (the first fetch, or a jump): start now.
            _ => state.prepare(step),
        };
        let batch = job.await.unwrap_or_else(|e| {
            Err(TrainError::InvalidConfig {
                field: "data",
                reason: format!("the data feeder's worker failed: {e}"),
            })
        });
        state.ahead = Some((step + 1, state.prepare(step + 1)));
        // The rank may have stopped waiting; nothing to do then.
        let _ = reply.send(batch);
        Ok(())
    }
}
