//! shoal's training machinery: the configuration, the training step and loop,
//! checkpoints, learning-rate schedule and metrics.
//!
//! One process trains on one rayon pool ([`Trainer`]), or as one of several
//! data-parallel ranks under ZeRO stage 0–3 over the ring collectives, with ranks as
//! threads (`ranks` in the config) or as processes ([`Trainer::attach`]). The ranks are
//! `ractor` actors:
//! - a [`NodeActor`] per process ([`Node`] is its synchronous handle) starts and
//!   supervises the process's ranks and aborts every local ring when one fails;
//! - a [`Rank`] runs forward and backward on its rows and starts, linked, its
//!   - [`DataFeeder`]: the rank's batches, prepared a step ahead;
//!   - [`GradientReducer`]: owns the rank's communicator; reduces gradient buckets as
//!     backward finishes them and runs every other collective of the rank;
//!   - [`ParameterShard`]: owns the rank's share of the optimizer, applies AdamW to it
//!     and serves its parameter pieces for the stage-3 gathers.
//!
//! The flat-buffer state, checkpoint format and data order are independent of the
//! world size.

#![warn(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod continual;
pub mod coordinator;
pub mod doremi;
pub mod error;
pub mod feeder;
mod gpu_step;
pub mod metrics;
pub mod node;
pub mod pieces;
pub mod rank;
pub mod recompute;
pub mod reducer;
pub mod replicas;
pub mod schedule;
pub mod shard;
pub mod step;
pub mod trainer;
pub mod zero;

pub use checkpoint::{
    Checkpoint, CheckpointMeta, CheckpointStore, META_FILE, STATE_FILE, resolve_checkpoint_dir,
};
pub use config::{DataSpec, Device, ModelSpec, TrainConfig};
pub use continual::{ReplaySpec, RunRecord, final_lr, load_init};
pub use coordinator::{Coordinator, CoordinatorActor, CoordinatorSpec};
pub use doremi::{Comparison, DoremiResult, DoremiSpec, compare_mixtures, run_doremi};
pub use error::{Result, TrainError};
pub use feeder::{DataFeeder, FeedPlan, Fill, StepBatch};
pub use metrics::{
    DomainEval, EvalStats, MetricsRecord, MetricsWriter, StepStats, read_metrics, split_means,
};
pub use node::{GpuRanks, Node, NodeActor, NodeSpec, StartState, stop_children};
pub use rank::Rank;
pub use recompute::{
    PlanInputs, RecomputeChange, RecomputeChoice, RecomputeMode, RecomputeScheduler,
    RecomputeSettings, plan_recompute,
};
pub use reducer::{GradientReducer, RankComm};
pub use replicas::Replicas;
pub use schedule::{Decay, Phase, Schedule, SchedulePosition};
pub use shard::ParameterShard;
pub use step::{StepHyper, StepOutcome, TrainState, train_step};
pub use trainer::{DroStep, ELASTIC_COMM_TIMEOUT, ElasticEnd, GroupDro, TRAIN_COMM_TIMEOUT};
pub use trainer::{
    LoadedData, NoopObserver, RunSummary, TrainObserver, Trainer, load_data, load_weights,
};
pub use zero::{MemoryReport, ZeroOutcome, ZeroShard, ZeroStage, buckets, spans_within};
