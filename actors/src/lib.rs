//! shoal's training machinery: the configuration, the single-process training step and
//! loop, checkpoints, learning-rate schedule and metrics.
//!
//! Today one process trains on one rayon pool ([`Trainer`]). Later issues move the same
//! step into actors (parameter shards, gradient reducers, a data feeder) that run ZeRO
//! over ring collectives; the flat-buffer state, checkpoint format and data order defined
//! here are already independent of the world size.

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
