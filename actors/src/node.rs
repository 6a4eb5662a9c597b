//! The `Node` actor: one per process. It starts this process's [`Rank`]s (linked, so
//! it supervises them), steps them together, and turns the failure of any rank into
//! an abort of every local communicator, so no surviving rank waits out a
//! collective's deadline on a peer that is gone.
//!
//! [`Node`] is the synchronous handle a trainer, a benchmark or a user's program
//! holds: it owns the tokio runtime the actors run on.
//!
//! A node also starts a [`RecomputeScheduler`] for its ring: the ranks' activations
//! are laid out by the plan it chooses for the ring's world size, micro-batch and
//! activation budget (an elastic run starts a node per generation, so a new world
//! size gets a new plan), and a budget changed while the node runs reaches the ranks
//! between steps ([`Node::set_activation_budget`]).

use std::ops::Range;
use std::sync::Arc;

use ractor::concurrency::{OneshotReceiver, oneshot};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use shoal_collectives::{AbortHandle, CommStats, Communicator, shard_range};
use shoal_kernels::DecaySpan;
use shoal_models::Gpt;

use crate::error::{Result, TrainError};
use crate::feeder::{FeedPlan, Fill};
use crate::pieces::Mirror;
use crate::rank::{GpuCompute, ordinal_of, with_device_collectives};
use crate::rank::{Rank, RankArgs, RankMsg};
use crate::recompute::{
    PlanInputs, RecomputeChange, RecomputeChoice, RecomputeMsg, RecomputeScheduler,
    RecomputeSettings, plan_recompute,
};
use crate::replicas::Replicas;
use crate::shard::ShardMsg;
use crate::step::StepHyper;
use crate::zero::{MemoryReport, ZeroOutcome, ZeroShard, ZeroStage, buckets};

/// What every rank of a run shares.
#[derive(Clone)]
pub struct NodeSpec {
    /// The model.
    pub model: Gpt,
    /// Its weight-decay spans.
    pub spans: Vec<DecaySpan>,
    /// The ZeRO stage.
    pub stage: ZeroStage,
    /// Gradient bucket size in elements (stage 3 always uses one bucket per part).
    pub bucket_elems: usize,
    /// Global batch: sequences per micro-batch over all ranks.
    pub batch: usize,
    /// Micro-batches per step.
    pub accum: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Compute threads per rank.
    pub threads_per_rank: usize,
    /// The data: tokens and targets of a global sample index.
    pub fill: Fill,
    /// Activation recomputation: the mode and the budget per rank.
    pub recompute: RecomputeSettings,
    /// Forward and backward on GPUs (built with the `cuda` feature); `None`: on the
    /// CPU.
    pub gpu: Option<GpuRanks>,
}

/// Where a node's ranks compute on GPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuRanks {
    /// This process's ranks go round the host's GPUs from this ordinal.
    pub first: usize,
    /// Arithmetic of the matrix products: `fp32`, `tf32` or `bf16` (as the
    /// trainer's `gpu_matmul`).
    pub matmul: String,
    /// Storage of the GPU model (as the trainer's `gpu_precision`).
    pub precision: shoal_models::Precision,
    /// Reduce gradients on the devices with this backend; `None`: on the host,
    /// over the training ring.
    pub collectives: Option<shoal_collectives::DeviceBackend>,
    /// Run attention on cuBLAS products (the trainer's `gpu_attention = "gemm"`)
    /// rather than the tiled kernels.
    pub gemm_attention: bool,
}

/// The training state a node starts from, in the full layout (each rank takes its
/// pieces; a checkpoint of any world size works).
pub struct StartState<'a> {
    /// Parameters.
    pub params: &'a [f32],
    /// AdamW first moments.
    pub adam_m: &'a [f32],
    /// AdamW second moments.
    pub adam_v: &'a [f32],
}

/// Messages of the [`NodeActor`].
pub enum NodeMsg {
    /// Every local rank takes step `step`.
    Step {
        /// The step (0-based: the step being taken).
        step: u64,
        /// Its hyper-parameters.
        hp: StepHyper,
        /// Each local rank's outcome, in rank order.
        reply: RpcReplyPort<Result<Vec<ZeroOutcome>>>,
    },
    /// The first local rank's full-layout parameters (every local rank joins the
    /// gather at stage 3).
    Params(RpcReplyPort<Result<Vec<f32>>>),
    /// Every local rank writes its shard of a sharded checkpoint into the staging
    /// directory; answered once every rank of the ring has, with whether every rank
    /// sees all the shards.
    SaveShards(std::path::PathBuf, RpcReplyPort<Result<bool>>),
    /// The first local rank's full-layout AdamW moments (every local rank joins).
    GatherMoments(RpcReplyPort<Result<(Vec<f32>, Vec<f32>)>>),
    /// What each local rank holds.
    Memory(RpcReplyPort<Vec<MemoryReport>>),
    /// Every local rank mirrors its piece on the next rank; the first local rank's
    /// [`Mirror`].
    Mirror(RpcReplyPort<Result<Mirror>>),
    /// The first local rank's communication counters.
    CommStats(RpcReplyPort<Result<CommStats>>),
    /// The recompute plan in force.
    Recompute(RpcReplyPort<Result<RecomputeChoice>>),
    /// A new activation budget per rank: re-plan, and lay every rank's activations
    /// out by the new plan if it changed.
    SetActivationBudget(Option<u64>, RpcReplyPort<Result<RecomputeChoice>>),
}

/// What a [`NodeActor`] starts from.
pub struct NodeArgs {
    /// The local ranks.
    pub ranks: Vec<RankArgs>,
    /// The ring's recompute scheduler (the node stops it when it stops).
    pub scheduler: ActorRef<RecomputeMsg>,
}

/// Supervises this process's ranks (see the module documentation).
pub struct NodeActor;

/// The node's state.
pub struct NodeState {
    ranks: Vec<ActorRef<RankMsg>>,
    scheduler: ActorRef<RecomputeMsg>,
    aborts: Vec<AbortHandle>,
    /// Why a rank stopped, once one has.
    failed: Option<String>,
}

fn gone(actor: &'static str, e: impl std::fmt::Display) -> TrainError {
    TrainError::Actor {
        actor,
        reason: e.to_string(),
    }
}

impl NodeState {
    fn check(&self) -> Result<()> {
        match &self.failed {
            Some(why) => Err(gone("Rank", why)),
            None => Ok(()),
        }
    }

    /// Sends every rank a message built by `msg` and collects the answers in order.
    async fn ask_all<T: Send + 'static>(
        &self,
        msg: impl Fn(RpcReplyPort<T>) -> RankMsg,
    ) -> Result<Vec<T>> {
        let mut waiting: Vec<OneshotReceiver<T>> = Vec::new();
        for rank in &self.ranks {
            let (tx, rx) = oneshot();
            rank.cast(msg(tx.into())).map_err(|e| gone("Rank", e))?;
            waiting.push(rx);
        }
        let mut out = Vec::with_capacity(waiting.len());
        for rx in waiting {
            out.push(rx.await.map_err(|e| gone("Rank", e))?);
        }
        Ok(out)
    }

    /// Re-plans for `budget` and lays the ranks' activations out by the new plan.
    async fn set_budget(&self, budget: Option<u64>) -> Result<RecomputeChoice> {
        self.check()?;
        let change = RecomputeChange::Budget(budget);
        let replanned = ractor::call!(self.scheduler, RecomputeMsg::Change, change)
            .map_err(|e| gone("RecomputeScheduler", e))??;
        if replanned.changed {
            let plan = &replanned.choice.plan;
            let answers = self
                .ask_all(|reply| RankMsg::SetRecompute(plan.clone(), reply))
                .await?;
            answers.into_iter().collect::<Result<Vec<()>>>()?;
        }
        Ok(replanned.choice)
    }

    /// The first rank's answer of a collective every local rank joins.
    async fn first<T: Send + 'static>(
        &self,
        msg: impl Fn(RpcReplyPort<Result<T>>) -> ShardMsg,
    ) -> Result<T> {
        self.check()?;
        let answers = self.ask_all(|reply| RankMsg::Shard(msg(reply))).await?;
        let mut first = None;
        for a in answers {
            let a = a?;
            first.get_or_insert(a);
        }
        first.ok_or_else(|| gone("Node", "no ranks"))
    }
}

impl Actor for NodeActor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<NodeMsg>,
        NodeArgs {
            mut ranks,
            scheduler,
        }: NodeArgs,
    ) -> std::result::Result<NodeState, ActorProcessingErr> {
        let aborts = ranks.iter_mut().map(|r| r.comm.abort_handle()).collect();
        let mut refs = Vec::new();
        for args in ranks {
            // Unnamed: ractor's registry is process-wide, and a process may run
            // several nodes (two groups, or tests side by side).
            let (rank, _) = Actor::spawn_linked(None, Rank, args, myself.get_cell()).await?;
            refs.push(rank);
        }
        Ok(NodeState {
            ranks: refs,
            scheduler,
            aborts,
            failed: None,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<NodeMsg>,
        msg: NodeMsg,
        state: &mut NodeState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::Step { step, hp, reply } => {
                let out = match state.check() {
                    Ok(()) => state
                        .ask_all(|reply| RankMsg::Step { step, hp, reply })
                        .await
                        .and_then(|v| v.into_iter().collect()),
                    Err(e) => Err(e),
                };
                let _ = reply.send(out);
            }
            NodeMsg::Params(reply) => {
                let _ = reply.send(state.first(ShardMsg::Params).await);
            }
            NodeMsg::SaveShards(dir, reply) => {
                let save = |reply| ShardMsg::SaveShard {
                    dir: dir.clone(),
                    reply,
                };
                let _ = reply.send(state.first(save).await);
            }
            NodeMsg::GatherMoments(reply) => {
                let _ = reply.send(state.first(ShardMsg::GatherMoments).await);
            }
            NodeMsg::CommStats(reply) => {
                let _ = reply.send(state.first(ShardMsg::CommStats).await);
            }
            NodeMsg::Mirror(reply) => {
                let _ = reply.send(state.first(ShardMsg::Mirror).await);
            }
            NodeMsg::Recompute(reply) => {
                let choice = ractor::call!(state.scheduler, RecomputeMsg::Current)
                    .map_err(|e| gone("RecomputeScheduler", e));
                let _ = reply.send(choice);
            }
            NodeMsg::SetActivationBudget(budget, reply) => {
                let _ = reply.send(state.set_budget(budget).await);
            }
            NodeMsg::Memory(reply) => {
                let m = state
                    .ask_all(|reply| RankMsg::Shard(ShardMsg::Memory(reply)))
                    .await;
                let _ = reply.send(m.unwrap_or_default());
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<NodeMsg>,
        state: &mut NodeState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        stop_children(&myself).await;
        state.scheduler.stop(None);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<NodeMsg>,
        event: SupervisionEvent,
        state: &mut NodeState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let why = match event {
            SupervisionEvent::ActorFailed(who, why) => format!("{} failed: {why}", who.get_id()),
            SupervisionEvent::ActorTerminated(who, _, why) => {
                format!("{} stopped: {}", who.get_id(), why.unwrap_or_default())
            }
            _ => return Ok(()),
        };
        // Wake every local collective at once: the others' steps fail promptly
        // instead of waiting for a peer that is gone.
        for abort in &state.aborts {
            abort.abort(None);
        }
        state.failed.get_or_insert(why);
        Ok(())
    }
}

/// Stops the actors linked to `supervisor` and waits for them (up to a minute
/// each): ractor leaves linked children running when their supervisor stops, so
/// an actor that starts children calls this from its `post_stop`.
pub async fn stop_children(supervisor: &ractor::ActorCell) {
    supervisor
        .stop_children_and_wait(None, Some(std::time::Duration::from_secs(60)))
        .await;
}

/// A running node: this process's ranks as actors, and the runtime they run on.
pub struct Node {
    runtime: tokio::runtime::Runtime,
    actor: ActorRef<NodeMsg>,
    handle: Option<tokio::task::JoinHandle<()>>,
    stage: ZeroStage,
    world: usize,
}

impl Node {
    /// Starts one rank per communicator in `comms` (this process's ranks of one
    /// ring), each taking its pieces of `start`.
    pub fn start(spec: &NodeSpec, comms: Vec<Communicator>, start: StartState<'_>) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("shoal-actors")
            .enable_all()
            .build()
            .map_err(|e| TrainError::io("tokio runtime", e))?;
        let model = Arc::new(spec.model.clone());
        let buckets = Self::buckets(spec);
        let world = comms.first().map_or(1, Communicator::world);
        let inputs = PlanInputs {
            model: spec.model.config.clone(),
            stage: spec.stage,
            world,
            batch: spec.batch,
            seq_len: spec.seq_len,
            settings: spec.recompute,
        };
        // Planned here first for a typed error when nothing fits the budget.
        let choice = plan_recompute(&inputs)?;
        let gpus = spec
            .gpu
            .as_ref()
            .map(|_| GpuCompute::device_count())
            .transpose()?;
        // GPUs go round this process's ranks; a process with one rank of a larger
        // ring (`--procs`) takes the GPU of its rank in the ring.
        let one_per_process = comms.len() == 1;
        let ranks = comms
            .into_iter()
            .enumerate()
            .map(|(local, comm)| {
                let index = if one_per_process { comm.rank() } else { local };
                let gpu = spec
                    .gpu
                    .as_ref()
                    .zip(gpus)
                    .map(|(g, n)| ordinal_of(g.first, index, n));
                rank_args(spec, &model, &buckets, comm, &start, &choice, gpu)
            })
            .collect::<Result<Vec<_>>>()?;
        let ranks = match spec.gpu.as_ref().and_then(|g| g.collectives) {
            Some(backend) => with_device_collectives(ranks, backend)?,
            None => ranks,
        };
        let (scheduler, _) = runtime
            .block_on(Actor::spawn(None, RecomputeScheduler, inputs))
            .map_err(|e| gone("RecomputeScheduler", e))?;
        let args = NodeArgs {
            ranks,
            scheduler: scheduler.clone(),
        };
        let (actor, handle) = match runtime.block_on(Actor::spawn(None, NodeActor, args)) {
            Ok(started) => started,
            Err(e) => {
                scheduler.stop(None);
                return Err(gone("Node", e));
            }
        };
        Ok(Self {
            runtime,
            actor,
            handle: Some(handle),
            stage: spec.stage,
            world,
        })
    }

    /// The size of the ring the node's ranks belong to.
    pub fn world(&self) -> usize {
        self.world
    }

    /// The stage the node runs.
    pub fn stage(&self) -> ZeroStage {
        self.stage
    }

    fn ask<T: Send + 'static>(&self, msg: impl FnOnce(RpcReplyPort<T>) -> NodeMsg) -> Result<T> {
        let (tx, rx) = oneshot();
        self.actor
            .cast(msg(tx.into()))
            .map_err(|e| gone("Node", e))?;
        self.runtime.block_on(rx).map_err(|e| gone("Node", e))
    }

    /// Every local rank takes step `step` (0-based) with `hp`; the outcomes in rank
    /// order.
    pub fn step(&self, step: u64, hp: StepHyper) -> Result<Vec<ZeroOutcome>> {
        self.ask(|reply| NodeMsg::Step { step, hp, reply })?
    }

    /// The full-layout parameters (a collective at stage 3: every process of the ring
    /// must ask at the same step).
    pub fn params(&self) -> Result<Vec<f32>> {
        self.ask(NodeMsg::Params)?
    }

    /// Every rank writes its shard of a sharded checkpoint into `dir` (a collective:
    /// every process of the ring must ask at the same step; see
    /// [`crate::checkpoint::sharded`]). True when every rank sees all the shards (the
    /// ranks share a file system); otherwise the shards are of no use to rank 0.
    pub fn save_shards(&self, dir: &std::path::Path) -> Result<bool> {
        let dir = dir.to_path_buf();
        self.ask(|reply| NodeMsg::SaveShards(dir, reply))?
    }

    /// The full-layout AdamW moments, gathered from every rank (a collective: every
    /// process of the ring must ask at the same step).
    pub fn gather_moments(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        self.ask(NodeMsg::GatherMoments)?
    }

    /// Every rank sends its piece of the state ([`crate::pieces`]) to the next rank
    /// of the ring and keeps the previous rank's (a collective: every process of the
    /// ring must ask at the same step); the first local rank's pieces.
    pub fn mirror(&self) -> Result<Mirror> {
        self.ask(NodeMsg::Mirror)?
    }

    /// The recompute plan the ranks run under.
    pub fn recompute(&self) -> Result<RecomputeChoice> {
        self.ask(NodeMsg::Recompute)?
    }

    /// Changes the activation budget per rank (`None`: unbounded): the scheduler
    /// re-plans and, if the plan changed, every local rank lays its activations out
    /// anew before its next step. An error (nothing fits) leaves the plan as it was.
    /// Every process of a ring should set the same budget, so that the ranks keep
    /// running the same plan.
    pub fn set_activation_budget(&self, budget: Option<u64>) -> Result<RecomputeChoice> {
        self.ask(|reply| NodeMsg::SetActivationBudget(budget, reply))?
    }

    /// The first local rank's communication counters so far.
    pub fn comm_stats(&self) -> Result<CommStats> {
        self.ask(NodeMsg::CommStats)?
    }

    /// The gradient buckets of `spec` (what [`crate::pieces::export_ranges`] splits).
    pub fn buckets(spec: &NodeSpec) -> Vec<Range<usize>> {
        let bucket_elems = if spec.stage.shards_parameters() {
            1
        } else {
            spec.bucket_elems
        };
        buckets(&spec.model, bucket_elems)
    }

    /// What each local rank holds.
    pub fn memory(&self) -> Result<Vec<MemoryReport>> {
        self.ask(NodeMsg::Memory)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.actor.stop(None);
        if let Some(handle) = self.handle.take() {
            let _ = self.runtime.block_on(handle);
        }
    }
}

/// A rank's start: its rows, its compute (on GPU `gpu` if given), its pieces.
fn rank_args(
    spec: &NodeSpec,
    model: &Arc<Gpt>,
    buckets: &[Range<usize>],
    comm: Communicator,
    start: &StartState<'_>,
    recompute: &RecomputeChoice,
    gpu: Option<usize>,
) -> Result<RankArgs> {
    let (world, rank) = (comm.world(), comm.rank());
    let rows = shard_range(spec.batch, world, rank);
    // At stages 2 and 3 a rank without rows computes on a placeholder row, so that
    // its gathers and reductions come in the same order as everyone's.
    let placeholder_rows = usize::from(spec.stage.shards_gradients());
    let compute_rows = rows.len().max(placeholder_rows);
    // Sharded gradients go through one model replica per rank.
    let replicas = if spec.stage.shards_gradients() {
        1
    } else {
        spec.threads_per_rank
    };
    let mut on_gpu = gpu
        .filter(|_| compute_rows > 0)
        .map(|ordinal| {
            GpuCompute::open(
                ordinal,
                spec.gpu.as_ref(),
                &model.config,
                start.params,
                compute_rows,
                spec.seq_len,
            )
        })
        .transpose()?;
    if let Some(gpu) = on_gpu.as_mut().filter(|_| recompute.plan.recomputes()) {
        gpu.set_recompute(&recompute.plan)?;
    }
    let compute = (compute_rows > 0 && on_gpu.is_none())
        .then(|| {
            Replicas::with_plan(
                &model.config,
                compute_rows,
                spec.seq_len,
                spec.threads_per_rank,
                replicas,
                &recompute.plan,
            )
        })
        .transpose()?;
    let mut zero = ZeroShard::new(spec.stage, buckets.to_vec(), rank, world);
    zero.load_moments(start.adam_m, start.adam_v);
    zero.load_params(start.params);
    let params = if spec.stage.shards_parameters() {
        Vec::new()
    } else {
        start.params.to_vec()
    };
    Ok(RankArgs {
        model: model.clone(),
        comm: comm.into(),
        compute,
        gpu: on_gpu,
        zero,
        params,
        spans: spec.spans.clone(),
        plan: FeedPlan {
            batch: spec.batch,
            accum: spec.accum,
            seq_len: spec.seq_len,
            rows,
            placeholder_rows,
        },
        fill: spec.fill.clone(),
    })
}
