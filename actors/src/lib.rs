//! shoal's training machinery: the configuration, the training step and loop,
//! checkpoints, learning-rate schedule and metrics.
//!
//! One process trains on one rayon pool ([`Trainer`]), or as one of several
//! data-parallel ranks: [`zero_step`] runs a rank's share of a step under ZeRO stage 0,
//! 1 or 2 over the ring collectives, with ranks as threads (`ranks` in the config) or
//! as processes ([`Trainer::attach`]). The flat-buffer state, checkpoint format and data
//! order are independent of the world size. The actors that will own these pieces
//! (parameter shards, gradient reducers, a data feeder) come next.

#![warn(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod metrics;
pub mod ranks;
pub mod replicas;
pub mod schedule;
pub mod step;
pub mod trainer;
pub mod zero;

pub use checkpoint::{
    Checkpoint, CheckpointMeta, CheckpointStore, META_FILE, STATE_FILE, resolve_checkpoint_dir,
};
pub use config::{DataSpec, ModelSpec, TrainConfig};
pub use error::{Result, TrainError};
pub use metrics::{DomainEval, EvalStats, MetricsRecord, MetricsWriter, StepStats, read_metrics};
pub use replicas::Replicas;
pub use schedule::LrSchedule;
pub use step::{StepHyper, StepOutcome, TrainState, train_step};
pub use trainer::{
    LoadedData, NoopObserver, RunSummary, TrainObserver, Trainer, load_data, load_weights,
};
pub use zero::{MemoryReport, ZeroOutcome, ZeroShard, ZeroStage, buckets, spans_within, zero_step};
