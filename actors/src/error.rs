//! Errors of the actors crate: configuration, training, checkpoints and metrics.

use std::path::PathBuf;

use shoal_data::DataError;
use shoal_models::ModelError;

/// Everything that can go wrong while configuring, running or checkpointing training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A training configuration value is out of range or inconsistent.
    #[error("invalid training config: `{field}` {reason}")]
    InvalidConfig {
        /// The offending field, as spelled in the TOML file.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// No recompute plan fits the activation budget (or the fixed policy asked for
    /// does not).
    #[error(
        "`activation_budget` {} is too small: recompute `{plan}` needs {} of activations per \
         rank ({rows} sequence(s) of {seq_len} tokens on each of {world} rank(s)); raise the \
         budget or shorten the micro-batch or the sequences",
        crate::recompute::format_bytes(*budget),
        crate::recompute::format_bytes(*needed)
    )]
    ActivationBudget {
        /// The plan that came closest (full recomputation, or the fixed policy).
        plan: String,
        /// Its bytes.
        needed: u64,
        /// The budget.
        budget: u64,
        /// Sequences per micro-batch on the busiest rank.
        rows: usize,
        /// Tokens per sequence.
        seq_len: usize,
        /// Ranks in the ring.
        world: usize,
    },
    /// A collective operation between ranks failed (a peer lost, a deadline passed).
    #[error(transparent)]
    Collective(#[from] shoal_collectives::CollectiveError),
    /// A config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ConfigRead {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A config file is not valid TOML for a [`crate::TrainConfig`].
    #[error("cannot parse config file {path}: {message}")]
    ConfigParse {
        /// The config file.
        path: PathBuf,
        /// The TOML error, with line and column.
        message: String,
    },
    /// The model crate rejected a configuration, an input or a file.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// An actor of the run stopped or could not be reached (the failure that
    /// stopped it, if known, is in the message).
    #[error("actor {actor}: {reason}")]
    Actor {
        /// Which actor.
        actor: &'static str,
        /// What happened.
        reason: String,
    },
    /// The data crate could not read, tokenize or sample the data.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A domain's tokens cannot be used with this model (e.g. a token id outside the vocabulary).
    #[error("data domain `{domain}` ({split} split): {source}")]
    DomainData {
        /// The domain name.
        domain: String,
        /// `train` or `validation`.
        split: &'static str,
        /// What the data crate found.
        source: DataError,
    },
    /// The rayon thread pool could not be built.
    #[error("cannot start a pool of {threads} compute threads: {source}")]
    ThreadPool {
        /// Requested number of threads.
        threads: usize,
        /// The rayon error.
        source: rayon::ThreadPoolBuildError,
    },
    /// The loss became NaN or infinite: training diverged.
    #[error(
        "loss is not finite ({loss}) at step {step}; lower the learning rate or check the data"
    )]
    NonFiniteLoss {
        /// The step (1-based) whose forward pass produced it.
        step: u64,
        /// The value.
        loss: f32,
    },
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A checkpoint directory or file does not exist.
    #[error("checkpoint not found: {path} does not exist")]
    CheckpointMissing {
        /// The path that was looked for.
        path: PathBuf,
    },
    /// A checkpoint file exists but cannot be used (truncated, malformed, wrong version).
    #[error("corrupt checkpoint {path}: {reason}")]
    CheckpointCorrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor's bytes do not match the checksum recorded in `meta.json`.
    #[error(
        "corrupt checkpoint {path}: tensor `{tensor}` has crc32 {actual:08x}, meta.json records {expected:08x}"
    )]
    ChecksumMismatch {
        /// The safetensors file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// Checksum recorded at save time.
        expected: u32,
        /// Checksum of the bytes on disk.
        actual: u32,
    },
    /// A tensor's size does not match the parameter layout of the recorded model config.
    #[error(
        "checkpoint {path}: tensor `{tensor}` has {actual} elements but the model layout needs {expected}"
    )]
    LayoutMismatch {
        /// The safetensors file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// Elements the layout needs.
        expected: usize,
        /// Elements found.
        actual: usize,
    },
    /// A fresh run would mix its checkpoints with those of an earlier run.
    #[error(
        "{path} already holds checkpoints of an earlier run; resume it, pick another out_dir, or remove them"
    )]
    CheckpointsExist {
        /// The checkpoints directory.
        path: PathBuf,
    },
    /// The GPU of a `device = "cuda"` run could not be opened or failed during a step
    /// (no driver or GPU on this machine, out of memory, a kernel error).
    #[cfg(feature = "cuda")]
    #[error("CUDA device {device}: {source}")]
    Gpu {
        /// The device, e.g. `cuda:0`.
        device: String,
        /// What the GPU code reported.
        source: shoal_models::gpu::GpuModelError,
    },
    /// A collective over GPU buffers (NCCL or the CUDA IPC ring) failed.
    #[cfg(feature = "cuda")]
    #[error("device collective on {device}: {source}")]
    DeviceCollective {
        /// The device, e.g. `cuda:0`.
        device: String,
        /// What the device collectives reported.
        source: shoal_collectives::DeviceCollectiveError,
    },
    /// The elastic runtime's link to the coordinator or its endpoint failed.
    #[error(transparent)]
    Membership(#[from] shoal_collectives::membership::MembershipError),
    /// The coordinator refused this node.
    #[error("the coordinator refused this node: {0}")]
    Refused(String),
    /// The coordinator sent something this node cannot follow.
    #[error("unexpected message from the coordinator: {0}")]
    Protocol(String),
    /// A metrics file line is not a valid metrics record.
    #[error("{path}:{line}: {reason}")]
    BadMetrics {
        /// The metrics file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

impl TrainError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
