//! The training configuration: what to train, on what data, with which hyper-parameters.
//!
//! A [`TrainConfig`] is read from TOML (every field optional, unknown fields rejected),
//! overridden by command-line flags, checked by [`TrainConfig::validate`], and stored in
//! every checkpoint so a run can be resumed without repeating its flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal_data::MixtureWeights;
use shoal_models::GptConfig;

use crate::continual::ReplaySpec;
use crate::error::{Result, TrainError};
use crate::schedule::Schedule;

/// Everything a single-process training run needs to know.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// The model architecture: a preset plus optional overrides.
    pub model: ModelSpec,
    /// Where the training and validation tokens come from.
    pub data: DataSpec,
    /// Sequences per micro-batch (B).
    pub batch_size: usize,
    /// Tokens per sequence (T); at most the model's `n_positions`.
    pub seq_len: usize,
    /// Micro-batches accumulated into one optimizer step.
    pub grad_accum: usize,
    /// Optimizer steps of the whole run.
    pub max_steps: u64,
    /// Peak learning rate, reached at the end of warm-up.
    pub lr: f32,
    /// Learning rate at the end of the cosine decay.
    pub min_lr: f32,
    /// Steps of linear warm-up from zero.
    pub warmup_steps: u64,
    /// AdamW decoupled weight decay, applied to matrices only.
    pub weight_decay: f32,
    /// AdamW first-moment decay.
    pub beta1: f32,
    /// AdamW second-moment decay.
    pub beta2: f32,
    /// AdamW denominator epsilon.
    pub eps: f32,
    /// Maximum global gradient L2 norm; 0 turns clipping off.
    pub grad_clip: f32,
    /// Evaluate on the validation split every this many steps (0: never).
    pub eval_every: u64,
    /// Micro-batches of validation windows per domain and evaluation.
    pub eval_batches: usize,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// How many of the newest checkpoints to keep on disk.
    pub keep_checkpoints: usize,
    /// Directory for checkpoints, metrics and plots.
    pub out_dir: PathBuf,
    /// Seed of the parameter initialisation and of the data order.
    pub seed: u64,
    /// Compute threads (0: one per available core), shared out among the ranks.
    pub threads: usize,
    /// Data-parallel ranks, as threads of this process (over the in-process
    /// collectives); the global batch stays `batch_size · grad_accum`.
    pub ranks: usize,
    /// ZeRO stage of the ranks: 0 (replicated), 1 (optimizer state sharded) or 2
    /// (gradients sharded too).
    pub zero: u8,
    /// Start from these weights (a shoal checkpoint or a Hugging Face GPT-2 directory)
    /// instead of a random initialisation; the architecture then comes from there.
    pub init: Option<PathBuf>,
    /// Where the steps run: `cpu`, or `cuda` / `cuda:N` (needs a binary built with
    /// the `cuda` feature). One rank trains on GPU N; data-parallel ranks go round
    /// the host's GPUs from N. See [`Device`].
    pub device: String,
    /// Arithmetic of the GPU's matrix products: `fp32` (exact), `tf32` (tensor cores,
    /// 10-bit mantissa inputs) or `bf16` (bf16 inputs); fp32 accumulation always.
    pub gpu_matmul: String,
    /// Storage of the GPU model: `fp32`, or `bf16` mixed precision (bf16 parameter
    /// copy and activations for compute; fp32 master weights, gradients, AdamW
    /// moments, statistics and loss). The products then take bf16 inputs whatever
    /// `gpu_matmul` says.
    pub gpu_precision: String,
    /// How data-parallel GPU ranks reduce gradients: `host` (copied to the host and
    /// reduced over the training ring), or on the devices before they leave the
    /// GPU, by `nccl` (one GPU per rank; any topology NCCL reaches) or `ipc` (a
    /// CUDA IPC ring: every rank on this host; ranks may share a GPU). The device
    /// ones need every rank with rows of the batch.
    pub gpu_collectives: String,
    /// How the GPU model runs attention: `flash` (the tiled kernels, memory linear
    /// in the sequence length) or `gemm` (cuBLAS products on the tensor cores,
    /// keeping every layer's `[B·NH, T, T]` probabilities).
    pub gpu_attention: String,
    /// Activation recomputation (on a GPU `none` and `full` only): `none`,
    /// `selective` (the attention core's output), `full` (each layer from its input) on every layer, or `auto`: the
    /// plan that fits `activation_budget` and recomputes least (keeping everything
    /// when there is no budget). See [`crate::recompute`].
    pub recompute: String,
    /// Bytes of activations each rank may hold, e.g. `"2GiB"` or `"512MiB"`, beside
    /// the parameters, gradients and optimizer state; unbounded when absent.
    pub activation_budget: Option<String>,
    /// Domain weights of the training mixture: `uniform`, `natural` (in proportion to each
    /// domain's training tokens) or the path of a weights file (as `shoal doremi` writes).
    pub mixture: MixtureWeights,
    /// The learning-rate schedule in tokens (phases of warm-up and decay); when absent,
    /// one cosine phase from `lr`, `min_lr`, `warmup_steps` and `max_steps`. See
    /// [`crate::schedule`] and [`TrainConfig::lr_schedule`].
    pub schedule: Option<Schedule>,
    /// The old (upstream) data of a continual run: evaluated beside `data`, and a
    /// fraction of the samples drawn from it. See [`crate::continual`].
    pub replay: Option<ReplaySpec>,
    /// With `init` a trained shoal checkpoint: start the AdamW moments at zero (true)
    /// or keep the checkpoint's (false). Imported and Hugging Face weights have none.
    pub reset_moments: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: ModelSpec::default(),
            data: DataSpec::default(),
            batch_size: 16,
            seq_len: 128,
            grad_accum: 1,
            max_steps: 500,
            lr: 3e-3,
            min_lr: 3e-4,
            warmup_steps: 50,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            eval_every: 100,
            eval_batches: 4,
            checkpoint_every: 250,
            keep_checkpoints: 3,
            out_dir: PathBuf::from("runs/train"),
            seed: 1337,
            threads: 0,
            ranks: 1,
            zero: 0,
            init: None,
            device: "cpu".into(),
            gpu_matmul: "fp32".into(),
            gpu_precision: "fp32".into(),
            gpu_collectives: "host".into(),
            gpu_attention: "flash".into(),
            recompute: "auto".into(),
            activation_budget: None,
            mixture: MixtureWeights::Uniform,
            schedule: None,
            replay: None,
            reset_moments: true,
        }
    }
}

/// A model preset name plus optional overrides of any [`GptConfig`] field.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSpec {
    /// One of [`shoal_models::PRESETS`], e.g. `tiny` or `gpt2`.
    pub preset: String,
    /// Overrides the preset's vocabulary size.
    pub vocab_size: Option<usize>,
    /// Overrides the preset's position table length.
    pub n_positions: Option<usize>,
    /// Overrides the preset's number of blocks.
    pub n_layer: Option<usize>,
    /// Overrides the preset's number of heads.
    pub n_head: Option<usize>,
    /// Overrides the preset's width.
    pub n_embd: Option<usize>,
    /// Overrides the preset's LayerNorm epsilon.
    pub layer_norm_eps: Option<f32>,
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self {
            preset: "tiny".into(),
            vocab_size: None,
            n_positions: None,
            n_layer: None,
            n_head: None,
            n_embd: None,
            layer_norm_eps: None,
        }
    }
}

impl ModelSpec {
    /// The preset with the overrides applied, validated.
    pub fn resolve(&self) -> Result<GptConfig> {
        let mut c = GptConfig::preset(&self.preset)?;
        if let Some(v) = self.vocab_size {
            c.vocab_size = v;
        }
        if let Some(v) = self.n_positions {
            c.n_positions = v;
        }
        if let Some(v) = self.n_layer {
            c.n_layer = v;
        }
        if let Some(v) = self.n_head {
            c.n_head = v;
        }
        if let Some(v) = self.n_embd {
            c.n_embd = v;
        }
        if let Some(v) = self.layer_norm_eps {
            c.layer_norm_eps = v;
        }
        c.validate()?;
        Ok(c)
    }
}

/// The training data: the built-in synthetic corpus or token files grouped into domains.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum DataSpec {
    /// The generated corpus (grammar, arithmetic, copy, noise), byte-level.
    Builtin {
        /// Seed of the generator (independent of the training seed).
        #[serde(default)]
        seed: u64,
        /// Tokens generated per domain, train and validation together.
        #[serde(default = "default_tokens_per_domain")]
        tokens_per_domain: usize,
        /// Fraction of each domain held out for validation.
        #[serde(default = "default_val_fraction")]
        val_fraction: f64,
    },
    /// `.txt`, `.jsonl` or `.tok` files, one list per domain.
    Files {
        /// Domain name → files (relative paths are relative to the working directory).
        domains: BTreeMap<String, Vec<PathBuf>>,
        /// A Hugging Face `tokenizer.json`; byte-level tokens when absent.
        #[serde(default)]
        tokenizer: Option<PathBuf>,
        /// Fraction of each domain held out for validation.
        #[serde(default = "default_val_fraction")]
        val_fraction: f64,
    },
    /// Token shards `shoal data tokenize` wrote: every domain of its manifest, with its own
    /// validation split and tokenizer.
    Shards {
        /// The `manifest.json` (or the directory holding it).
        manifest: PathBuf,
    },
}

fn default_tokens_per_domain() -> usize {
    200_000
}

fn default_val_fraction() -> f64 {
    0.1
}

impl Default for DataSpec {
    fn default() -> Self {
        DataSpec::Builtin {
            seed: 0,
            tokens_per_domain: default_tokens_per_domain(),
            val_fraction: default_val_fraction(),
        }
    }
}

/// Where a run's training steps execute, parsed from [`TrainConfig::device`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The CPU kernels on the rayon pool.
    Cpu,
    /// The CUDA GPU with this ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl Device {
    /// Parses `cpu`, `cuda` or `cuda:N`.
    pub fn parse(text: &str) -> Result<Self> {
        let wrong = || {
            invalid(
                "device",
                format!("must be `cpu`, `cuda` or `cuda:N` (N a GPU number), got `{text}`"),
            )
        };
        match text {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match text.strip_prefix("cuda:") {
                Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                    n.parse().map(Device::Cuda).map_err(|_| wrong())
                }
                _ => Err(wrong()),
            },
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The error of a `cuda` device in a binary built without the `cuda` feature.
pub(crate) fn built_without_cuda(device: &str) -> TrainError {
    invalid(
        "device",
        format!(
            "is `{device}` but this shoal was built without CUDA; rebuild with \
             `cargo build --release --features cuda`"
        ),
    )
}

fn invalid(field: &'static str, reason: impl Into<String>) -> TrainError {
    TrainError::InvalidConfig {
        field,
        reason: reason.into(),
    }
}

impl TrainConfig {
    /// Parses a config from TOML text; `origin` names the source in errors.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Self> {
        toml::from_str(text).map_err(|e| TrainError::ConfigParse {
            path: origin.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Reads a config from a TOML file (not yet validated: flags may still override it).
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, path)
    }

    /// The config as TOML text.
    pub fn to_toml_string(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Optimizer steps consume `batch_size * grad_accum * seq_len` tokens each.
    pub fn tokens_per_step(&self) -> u64 {
        (self.batch_size * self.grad_accum * self.seq_len) as u64
    }

    /// The number of compute threads to use (resolving 0 to the available cores).
    pub fn resolved_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// The device the steps run on (`device` parsed; see [`Device::parse`]).
    pub fn device(&self) -> Result<Device> {
        Device::parse(&self.device)
    }

    /// The GPU model's storage, `gpu_precision` parsed.
    pub fn gpu_precision(&self) -> Result<shoal_models::Precision> {
        self.gpu_precision.parse().map_err(|_| {
            invalid(
                "gpu_precision",
                format!("must be fp32 or bf16, not `{}`", self.gpu_precision),
            )
        })
    }

    /// How the GPU model runs attention, `gpu_attention` parsed.
    #[cfg(feature = "cuda")]
    pub fn gpu_attention(&self) -> Result<shoal_models::gpu::GpuAttention> {
        self.gpu_attention
            .parse()
            .map_err(|_| self.bad_gpu_attention())
    }

    /// `gpu_attention` checked (built without CUDA there is no GPU model).
    #[cfg(not(feature = "cuda"))]
    pub fn gpu_attention(&self) -> Result<()> {
        match self.gpu_attention.as_str() {
            "flash" | "gemm" => Ok(()),
            _ => Err(self.bad_gpu_attention()),
        }
    }

    fn bad_gpu_attention(&self) -> TrainError {
        invalid(
            "gpu_attention",
            format!("must be flash or gemm, not `{}`", self.gpu_attention),
        )
    }

    /// The device collectives of GPU ranks, `gpu_collectives` parsed (`None`:
    /// `host`).
    pub fn gpu_collectives(&self) -> Result<Option<shoal_collectives::DeviceBackend>> {
        match self.gpu_collectives.as_str() {
            "host" => Ok(None),
            other => other.parse().map(Some).map_err(|_| {
                invalid(
                    "gpu_collectives",
                    format!("must be host, nccl or ipc, not `{other}`"),
                )
            }),
        }
    }

    /// Checks every field and returns the model configuration it describes.
    ///
    /// When `init` is set the architecture comes from the initial weights; call
    /// [`TrainConfig::validate_for`] with that configuration instead.
    pub fn validate(&self) -> Result<GptConfig> {
        let model = self.model.resolve()?;
        self.validate_for(&model)?;
        Ok(model)
    }

    /// Checks every field against a given model configuration.
    pub fn validate_for(&self, model: &GptConfig) -> Result<()> {
        model.validate()?;
        let positive = |field, v: usize| {
            if v == 0 {
                Err(invalid(field, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        positive("batch_size", self.batch_size)?;
        positive("seq_len", self.seq_len)?;
        positive("grad_accum", self.grad_accum)?;
        positive("keep_checkpoints", self.keep_checkpoints)?;
        positive("ranks", self.ranks)?;
        crate::zero::ZeroStage::from_number(self.zero)?;
        self.validate_continual()?;
        let recompute = crate::recompute::RecomputeSettings::from_config(self)?;
        if !["fp32", "tf32", "bf16"].contains(&self.gpu_matmul.as_str()) {
            return Err(invalid(
                "gpu_matmul",
                format!("must be fp32, tf32 or bf16, not `{}`", self.gpu_matmul),
            ));
        }
        self.gpu_precision()?;
        self.gpu_attention()?;
        if let Some(backend) = self.gpu_collectives()? {
            if !matches!(self.device()?, Device::Cuda(_)) {
                return Err(invalid(
                    "gpu_collectives",
                    format!("is `{backend}`, which needs a `cuda` device"),
                ));
            }
            if self.batch_size < self.ranks {
                return Err(invalid(
                    "gpu_collectives",
                    format!(
                        "is `{backend}`, which needs rows of the batch on every rank \
                         (batch_size {} < ranks {})",
                        self.batch_size, self.ranks
                    ),
                ));
            }
        }
        if let Device::Cuda(_) = self.device()? {
            if !cfg!(feature = "cuda") {
                return Err(built_without_cuda(&self.device));
            }
            recompute.on_gpu()?;
        }
        if self.seq_len > model.n_positions {
            return Err(invalid(
                "seq_len",
                format!(
                    "({}) exceeds the model's n_positions ({})",
                    self.seq_len, model.n_positions
                ),
            ));
        }
        if self.max_steps == 0 {
            return Err(invalid("max_steps", "must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(invalid("lr", format!("must be positive, got {}", self.lr)));
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return Err(invalid(
                "min_lr",
                format!("must be in [0, lr = {}], got {}", self.lr, self.min_lr),
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(invalid("weight_decay", "must be finite and non-negative"));
        }
        for (field, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(invalid(field, format!("must be in [0, 1), got {b}")));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(invalid(
                "eps",
                format!("must be positive, got {}", self.eps),
            ));
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return Err(invalid(
                "grad_clip",
                format!("must be non-negative (0 = off), got {}", self.grad_clip),
            ));
        }
        if self.eval_every > 0 {
            positive("eval_batches", self.eval_batches)?;
        }
        if self.out_dir.as_os_str().is_empty() {
            return Err(invalid("out_dir", "must not be empty"));
        }
        let fraction_ok = |f: f64| f.is_finite() && f > 0.0 && f < 1.0;
        match &self.data {
            DataSpec::Builtin {
                tokens_per_domain,
                val_fraction,
                ..
            } => {
                if *tokens_per_domain == 0 {
                    return Err(invalid("data.tokens_per_domain", "must be at least 1"));
                }
                if !fraction_ok(*val_fraction) {
                    return Err(invalid("data.val_fraction", "must be in (0, 1)"));
                }
            }
            DataSpec::Files {
                domains,
                val_fraction,
                ..
            } => {
                if domains.is_empty() {
                    return Err(invalid("data.domains", "needs at least one domain"));
                }
                if let Some((name, _)) = domains.iter().find(|(_, paths)| paths.is_empty()) {
                    return Err(invalid(
                        "data.domains",
                        format!("domain `{name}` has no files"),
                    ));
                }
                if !fraction_ok(*val_fraction) {
                    return Err(invalid("data.val_fraction", "must be in (0, 1)"));
                }
            }
            DataSpec::Shards { manifest } => {
                if manifest.as_os_str().is_empty() {
                    return Err(invalid("data.manifest", "must name a manifest"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
