//! The `Rank` actor: one data-parallel rank. It runs forward and backward on its
//! rows of every micro-batch and wires its three helpers, which it starts as linked
//! children: a [`DataFeeder`] (batches, one step ahead), a [`ParameterShard`] (its
//! share of the optimizer) and a [`GradientReducer`] (its collectives).
//!
//! One step, as messages: the rank fetches the step's batch from its feeder; runs the
//! micro-batches on a blocking thread, casting each gradient bucket to the reducer as
//! backward finishes it (and, at stage 3, asking shard and reducer for each part's
//! parameters just before use); then asks its shard to apply the update once every
//! reduced bucket has arrived. Tensors move through the collectives and the shared
//! whole-layout buffers; messages carry control, buckets by ownership (no copies).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use ractor::concurrency::oneshot;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use shoal_models::{Gpt, GradSink, ParamSource, Part, RecomputePlan, Whole};

use crate::error::{Result, TrainError};
use crate::feeder::{DataFeeder, FeedPlan, FeederMsg, Fill, StepBatch};
use crate::reducer::{GradientReducer, RankComm, ReducerMsg};
use crate::replicas::Replicas;
use crate::shard::{ApplyArgs, ParameterShard, ShardArgs, ShardMsg, Shared, read, write};
use crate::step::StepHyper;
use crate::zero::{ZeroOutcome, ZeroShard, ZeroStage};

mod gpu;
mod parts;

#[cfg(feature = "cuda")]
pub(crate) use gpu::products_of;
pub use gpu::{GpuBackward, GpuCompute};
pub(crate) use gpu::{ordinal_of, with_device_collectives};
use parts::{Gathered, Scattered, lift, part_index};

/// Messages of the [`Rank`].
pub enum RankMsg {
    /// Take step `step` (0-based: the step being taken) with `hp`.
    Step {
        /// The step.
        step: u64,
        /// Its hyper-parameters.
        hp: StepHyper,
        /// The outcome.
        reply: RpcReplyPort<Result<ZeroOutcome>>,
    },
    /// Requests for the rank's shard ([`ShardMsg::SaveShard`], [`ShardMsg::Params`],
    /// [`ShardMsg::Memory`]), passed on.
    Shard(ShardMsg),
    /// Lay the rank's activations out by this recompute plan from the next step on.
    SetRecompute(RecomputePlan, RpcReplyPort<Result<()>>),
}

/// What a [`Rank`] starts from.
pub struct RankArgs {
    /// The model.
    pub model: Arc<Gpt>,
    /// Its ring (with device collectives when its gradient is reduced on the GPUs).
    pub comm: RankComm,
    /// Compute for its rows on the CPU (`None`: no rows, at stages 0 and 1, or
    /// computing on a GPU).
    pub compute: Option<Replicas>,
    /// Compute for its rows on a GPU (then `compute` is `None`).
    pub gpu: Option<GpuCompute>,
    /// Its share of the optimizer, moments and pieces loaded.
    pub zero: ZeroShard,
    /// The whole-layout parameters (an empty vector at stage 3).
    pub params: Vec<f32>,
    /// Weight-decay spans.
    pub spans: Vec<shoal_kernels::DecaySpan>,
    /// Its rows of every step.
    pub plan: FeedPlan,
    /// The data.
    pub fill: Fill,
}

/// One data-parallel rank (see the module documentation).
pub struct Rank;

/// The rank's compute and the references it needs during a step.
struct Worker {
    model: Arc<Gpt>,
    compute: Option<Replicas>,
    gpu: Option<GpuCompute>,
    stage: ZeroStage,
    buckets: Vec<Range<usize>>,
    /// Bucket of each part.
    index: HashMap<Part, usize>,
    /// This rank's weight in the global mean loss.
    weight: f32,
    shared: Arc<Shared>,
    shard: ActorRef<ShardMsg>,
    reducer: ActorRef<ReducerMsg>,
}

/// The rank's state: the worker is lent to a blocking thread during a step.
pub struct RankState {
    worker: Option<Worker>,
    feeder: ActorRef<FeederMsg>,
}

/// What forward and backward of a step produced.
struct Backward {
    loss_sum: f64,
    buckets_sent: usize,
    waited: f64,
    peak_elems: usize,
}

impl Worker {
    /// Forward and backward of every micro-batch of `batch`.
    fn backward(&mut self, batch: &StepBatch, accum: usize, step: u64) -> Result<Backward> {
        let rows = batch.rows;
        let t = self.compute.as_ref().map_or(0, Replicas::seq_len);
        let per_micro = rows * t;
        let scale = self.weight / accum as f32;
        let mut out = Backward {
            loss_sum: 0.0,
            buckets_sent: 0,
            waited: 0.0,
            peak_elems: 0,
        };
        let check = |loss: f32| -> Result<f32> {
            if loss.is_finite() {
                Ok(loss)
            } else {
                Err(TrainError::NonFiniteLoss {
                    step: step + 1,
                    loss,
                })
            }
        };
        if self.stage.shards_gradients() && self.gpu.is_some() {
            return self.backward_sharded_on_gpu(batch, accum, scale, check, out);
        }
        if self.stage.shards_gradients() {
            let Some(compute) = self.compute.as_mut() else {
                return Err(TrainError::InvalidConfig {
                    field: "batch_size",
                    reason: "at ZeRO stages 2 and 3 every rank computes".into(),
                });
            };
            for micro in 0..accum {
                let span = micro * per_micro..(micro + 1) * per_micro;
                let (x, y) = (&batch.tokens[span.clone()], &batch.targets[span]);
                let m = &*self.model;
                let mut sink = Scattered::new(m, &self.reducer, &self.buckets, &self.index);
                let (loss, gathered) = if self.stage.shards_parameters() {
                    let mut src = Gathered::new(m, &self.shard, &self.reducer, &self.index);
                    let loss = compute.forward_backward_parts(m, &mut src, &mut sink, x, y, scale);
                    out.waited += src.waited.as_secs_f64();
                    let held = src.peak_elems;
                    src.finish()?;
                    (loss, held)
                } else {
                    let params = read(&self.shared.params);
                    let mut src = Whole::new(m, &params)?;
                    let loss = compute.forward_backward_parts(m, &mut src, &mut sink, x, y, scale);
                    (loss, 0)
                };
                let loss = loss.map_err(lift)?;
                out.peak_elems = out.peak_elems.max(gathered + sink.peak_elems);
                out.buckets_sent += sink.sent;
                out.loss_sum += f64::from(check(loss)? * self.weight);
            }
            return Ok(out);
        }
        // Stages 0 and 1: accumulate in the whole gradient buffer; the last
        // micro-batch's backward hands each bucket to the reducer as it completes.
        let params = read(&self.shared.params);
        let mut grads = write(&self.shared.grads);
        grads.fill(0.0);
        let mut hook = BucketHook {
            reducer: &self.reducer,
            buckets: &self.buckets,
            staging: Vec::new(),
            next: 0,
            peak_elems: 0,
            failed: None,
        };
        if let Some(gpu) = self.gpu.as_mut() {
            let (x, y) = (&batch.tokens[..], &batch.targets[..]);
            let (p, g, r) = (&params[..], &mut grads[..], &self.reducer);
            let back = gpu.forward_backward(p, g, x, y, accum, scale, check, r)?;
            out.loss_sum = back.loss_sum * f64::from(self.weight);
            if back.reduced {
                out.buckets_sent = self.hand_over_reduced(&grads)?;
                return Ok(out);
            }
        }
        if let Some(compute) = self.compute.as_mut() {
            for micro in 0..accum {
                let span = micro * per_micro..(micro + 1) * per_micro;
                let (x, y) = (&batch.tokens[span.clone()], &batch.targets[span]);
                let m = &*self.model;
                let loss = if micro + 1 == accum && compute.replicas() == 1 {
                    let mut f = |range: Range<usize>, g: &[f32]| hook.ready(range, g);
                    compute.forward_backward_hooked(m, &params, &mut grads, x, y, scale, &mut f)?
                } else {
                    compute.forward_backward(m, &params, &mut grads, x, y, scale)?
                };
                out.loss_sum += f64::from(check(loss)? * self.weight);
            }
            compute.reduce_into(&mut grads);
        }
        // Buckets backward did not report (no rows, or several replicas).
        while let Some(bucket) = self.buckets.get(hook.next) {
            let buf = grads[bucket.clone()].to_vec();
            hook.launch(buf);
        }
        if let Some(e) = hook.failed {
            return Err(e);
        }
        out.buckets_sent = hook.next;
        out.peak_elems = hook.peak_elems;
        Ok(out)
    }
}

impl Worker {
    /// Hands every bucket of `grads`, already reduced over the ring on the devices,
    /// to the shard as the reducer would have; returns how many.
    fn hand_over_reduced(&self, grads: &[f32]) -> Result<usize> {
        for (index, bucket) in self.buckets.iter().enumerate() {
            let result = Ok(grads[bucket.clone()].to_vec());
            self.shard
                .cast(ShardMsg::Reduced { index, result })
                .map_err(|e| stopped("ParameterShard", e))?;
        }
        Ok(self.buckets.len())
    }

    /// Stages 2 and 3 on a GPU: the parameters come whole (stage 2) or gathered part
    /// by part (stage 3, in forward order, as the CPU ranks gather them) into one host
    /// buffer for the GPU; the gradient, accumulated there over the micro-batches,
    /// comes back whole and goes to the reducer part by part in backward order, each
    /// bucket reduce-scattered once. The whole buffers live only for the step.
    fn backward_sharded_on_gpu(
        &mut self,
        batch: &StepBatch,
        accum: usize,
        scale: f32,
        check: impl FnMut(f32) -> Result<f32>,
        mut out: Backward,
    ) -> Result<Backward> {
        let m = &*self.model;
        let Some(gpu) = self.gpu.as_mut() else {
            return Ok(out);
        };
        // The whole parameters: gathered (stage 3) or the rank's shared copy.
        let (mut gathered, shared);
        let params: &[f32] = if self.stage.shards_parameters() {
            gathered = vec![0.0; m.num_params()];
            let mut src = Gathered::new(m, &self.shard, &self.reducer, &self.index);
            let mut order = m.parts_in_backward_order();
            order.reverse();
            for (i, &part) in order.iter().enumerate() {
                src.fetch(part, order.get(i + 1).copied())
                    .map_err(|e| lift(e.into()))?;
                gathered[m.part_range(part)].copy_from_slice(src.get(part));
                src.release(part);
            }
            out.waited += src.waited.as_secs_f64();
            out.peak_elems = src.peak_elems;
            src.finish()?;
            &gathered
        } else {
            shared = read(&self.shared.params);
            &shared
        };
        let mut grads = vec![0.0; m.num_params()];
        let (x, y) = (&batch.tokens[..], &batch.targets[..]);
        let r = &self.reducer;
        let back = gpu.forward_backward(params, &mut grads, x, y, accum, scale, check, r)?;
        out.loss_sum = back.loss_sum * f64::from(self.weight);
        if back.reduced {
            out.buckets_sent = self.hand_over_reduced(&grads)?;
            return Ok(out);
        }
        let mut sink = Scattered::new(m, &self.reducer, &self.buckets, &self.index);
        for part in m.parts_in_backward_order() {
            let range = m.part_range(part);
            let staged = sink.grads(part).map_err(|e| lift(e.into()))?;
            staged.copy_from_slice(&grads[range]);
            sink.done(part).map_err(|e| lift(e.into()))?;
        }
        out.buckets_sent = sink.sent;
        out.peak_elems = out.peak_elems.max(sink.peak_elems);
        Ok(out)
    }
}

/// Stages 0 and 1: stages the gradient ranges backward reports into buckets and casts
/// each complete bucket to the reducer.
struct BucketHook<'a> {
    reducer: &'a ActorRef<ReducerMsg>,
    buckets: &'a [Range<usize>],
    staging: Vec<f32>,
    next: usize,
    peak_elems: usize,
    failed: Option<TrainError>,
}

impl BucketHook<'_> {
    /// Backward finished `range` (ranges arrive last to first).
    fn ready(&mut self, range: Range<usize>, grads: &[f32]) {
        let Some(bucket) = self.buckets.get(self.next) else {
            return;
        };
        if self.staging.len() != bucket.len() {
            self.staging = vec![0.0; bucket.len()];
        }
        let at = range.start - bucket.start;
        self.staging[at..at + grads.len()].copy_from_slice(grads);
        if range.start == bucket.start {
            let buf = std::mem::take(&mut self.staging);
            self.launch(buf);
        }
    }

    fn launch(&mut self, buf: Vec<f32>) {
        self.peak_elems = self.peak_elems.max(buf.len());
        let msg = ReducerMsg::Bucket {
            index: self.next,
            buf,
            scatter: false,
        };
        if self.reducer.cast(msg).is_err() {
            self.failed.get_or_insert(TrainError::Actor {
                actor: "GradientReducer",
                reason: "stopped during backward".into(),
            });
        }
        self.next += 1;
    }
}

fn stopped(actor: &'static str, e: impl std::fmt::Display) -> TrainError {
    TrainError::Actor {
        actor,
        reason: e.to_string(),
    }
}

impl Rank {
    /// One step: batch, forward and backward on a blocking thread, update.
    async fn step(state: &mut RankState, step: u64, hp: StepHyper) -> Result<ZeroOutcome> {
        let (tx, rx) = oneshot();
        state
            .feeder
            .cast(FeederMsg::Fetch {
                step,
                reply: tx.into(),
            })
            .map_err(|e| stopped("DataFeeder", e))?;
        let batch = rx.await.map_err(|e| stopped("DataFeeder", e))??;
        let mut worker = state.worker.take().ok_or_else(|| TrainError::Actor {
            actor: "Rank",
            reason: "a step is already running".into(),
        })?;
        let accum = hp.grad_accum.max(1);
        let job = tokio::task::spawn_blocking(move || {
            let out = worker.backward(&batch, accum, step);
            (worker, batch, out)
        });
        let (worker, batch, out) = job.await.map_err(|e| stopped("Rank", e))?;
        let shard = worker.shard.clone();
        state.worker = Some(worker);
        let back = out?;
        let (tx, rx) = oneshot();
        let args = ApplyArgs {
            expect: back.buckets_sent,
            hp,
            step: step + 1,
            loss_sum: back.loss_sum,
            compute_buffer_elems: back.peak_elems,
            reply: tx.into(),
        };
        shard
            .cast(ShardMsg::Apply(Box::new(args)))
            .map_err(|e| stopped("ParameterShard", e))?;
        let applied = rx.await.map_err(|e| stopped("ParameterShard", e))??;
        Ok(ZeroOutcome {
            loss: applied.loss,
            grad_norm: applied.grad_norm,
            exposed_comm_seconds: back.waited + applied.waited_seconds,
            optimizer_seconds: applied.optimizer_seconds,
            samples: batch.indices,
        })
    }
}

impl Actor for Rank {
    type Msg = RankMsg;
    type State = RankState;
    type Arguments = RankArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RankMsg>,
        args: RankArgs,
    ) -> std::result::Result<RankState, ActorProcessingErr> {
        let stage = args.zero.stage;
        let buckets = args.zero.buckets.clone();
        let index = part_index(&args.model, &buckets, stage.shards_parameters())?;
        let len = args.model.num_params();
        let grads = if stage.shards_gradients() {
            Vec::new()
        } else {
            vec![0.0; len]
        };
        let shared = Arc::new(Shared {
            params: args.params.into(),
            grads: grads.into(),
        });
        let weight = args.plan.rows.len() as f32 / args.plan.batch as f32;
        let cell = myself.get_cell();
        let shard_args = ShardArgs {
            zero: args.zero,
            shared: shared.clone(),
            spans: args.spans,
            len,
            rank: args.comm.rank(),
            world: args.comm.world(),
        };
        let (shard, _) =
            Actor::spawn_linked(None, ParameterShard, shard_args, cell.clone()).await?;
        let reducer_args = (args.comm, shard.clone());
        let (reducer, _) =
            Actor::spawn_linked(None, GradientReducer, reducer_args, cell.clone()).await?;
        shard.cast(ShardMsg::Connect(reducer.clone()))?;
        let feeder_args = (args.plan, args.fill);
        let (feeder, _) = Actor::spawn_linked(None, DataFeeder, feeder_args, cell).await?;
        Ok(RankState {
            worker: Some(Worker {
                model: args.model,
                compute: args.compute,
                gpu: args.gpu,
                stage,
                buckets,
                index,
                weight,
                shared,
                shard,
                reducer,
            }),
            feeder,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<RankMsg>,
        msg: RankMsg,
        state: &mut RankState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            RankMsg::Step { step, hp, reply } => {
                let out = Rank::step(state, step, hp).await;
                let _ = reply.send(out);
            }
            RankMsg::Shard(msg) => {
                if let Some(w) = &state.worker {
                    w.shard.cast(msg)?;
                }
            }
            RankMsg::SetRecompute(plan, reply) => {
                // Steps run inside `handle`, so the worker is back between them.
                let out = match state.worker.as_mut() {
                    Some(Worker {
                        compute: Some(compute),
                        ..
                    }) => compute.set_plan(&plan),
                    Some(Worker { gpu: Some(gpu), .. }) => gpu.set_recompute(&plan),
                    _ => Ok(()),
                };
                let _ = reply.send(out);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<RankMsg>,
        _: &mut RankState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        crate::node::stop_children(&myself).await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RankMsg>,
        event: SupervisionEvent,
        _: &mut RankState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        // A helper that stops takes the rank with it; the node sees the rank fail.
        match event {
            SupervisionEvent::ActorFailed(who, why) => {
                myself.stop(Some(format!("{} failed: {why}", who.get_id())));
            }
            SupervisionEvent::ActorTerminated(who, _, why) => {
                let why = why.unwrap_or_default();
                myself.stop(Some(format!("{} stopped: {why}", who.get_id())));
            }
            _ => {}
        }
        Ok(())
    }
}
