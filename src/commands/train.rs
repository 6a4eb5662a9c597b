//! `shoal train`: build a [`TrainConfig`] from a file and flags, then run the trainer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use shoal_actors::{
    Checkpoint, DataSpec, MemoryReport, RunSummary, TrainConfig, Trainer, ZeroStage,
    resolve_checkpoint_dir,
};

use crate::progress::ProgressObserver;

/// Flags of `shoal train`; every one overrides the config file's value.
#[derive(Args, Debug, Default)]
pub struct TrainArgs {
    /// TOML config file (fields as in `TrainConfig`; flags override it).
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Model preset: tiny, small, bench-5m, bench-30m, gpt2.
    #[arg(long)]
    pub preset: Option<String>,
    /// Override the preset's number of layers.
    #[arg(long)]
    pub n_layer: Option<usize>,
    /// Override the preset's number of heads.
    #[arg(long)]
    pub n_head: Option<usize>,
    /// Override the preset's width.
    #[arg(long)]
    pub n_embd: Option<usize>,
    /// Override the preset's position table length.
    #[arg(long)]
    pub n_positions: Option<usize>,
    /// Override the preset's vocabulary size.
    #[arg(long)]
    pub vocab_size: Option<usize>,
    /// Train on the built-in synthetic corpus.
    #[arg(long, conflicts_with = "data")]
    pub data_builtin: bool,
    /// Tokens per domain of the built-in corpus.
    #[arg(long)]
    pub tokens_per_domain: Option<usize>,
    /// A data domain and its files (.txt, .jsonl, .tok); repeat for more domains.
    #[arg(long, value_name = "DOMAIN=PATH[,PATH]")]
    pub data: Vec<String>,
    /// Token shards written by `shoal data tokenize`: its output directory or manifest.json.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["data", "data_builtin"])]
    pub shards: Option<PathBuf>,
    /// A Hugging Face tokenizer.json for --data files (default: bytes).
    #[arg(long, value_name = "tokenizer.json")]
    pub tokenizer: Option<PathBuf>,
    /// Fraction of each domain held out for validation.
    #[arg(long)]
    pub val_fraction: Option<f64>,
    /// Domain weights: uniform, natural (by training tokens) or a weights file (as
    /// `shoal doremi` writes it).
    #[arg(long, value_name = "uniform|natural|FILE")]
    pub mixture: Option<shoal_data::MixtureWeights>,
    /// Sequences per micro-batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Tokens per sequence.
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Total optimizer steps.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f32>,
    /// Final learning rate of the cosine decay.
    #[arg(long)]
    pub min_lr: Option<f32>,
    /// Linear warm-up steps.
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// AdamW weight decay (matrices only).
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// Global gradient-norm clip (0: off).
    #[arg(long)]
    pub grad_clip: Option<f32>,
    /// Evaluate every N steps (0: never).
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Validation micro-batches per domain.
    #[arg(long)]
    pub eval_batches: Option<usize>,
    /// Checkpoint every N steps (0: only at the end).
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Checkpoints to keep.
    #[arg(long)]
    pub keep_checkpoints: Option<usize>,
    /// Output directory (checkpoints, metrics.jsonl, loss.svg).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Seed of initialisation and data order.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Compute threads (0: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Data-parallel ranks, as threads of this process.
    #[arg(long)]
    pub ranks: Option<usize>,
    /// ZeRO stage of the ranks: 0, 1, 2 or 3.
    #[arg(long)]
    pub zero: Option<u8>,
    /// Where the steps run: cpu, or cuda / cuda:N (needs a build with `--features
    /// cuda`); data-parallel ranks go round the GPUs from N.
    #[arg(long, value_name = "cpu|cuda|cuda:N")]
    pub device: Option<String>,
    /// Arithmetic of the GPU's matrix products (fp32 accumulation always).
    #[arg(long, value_name = "fp32|tf32|bf16")]
    pub gpu_matmul: Option<String>,
    /// Storage of the GPU model: fp32, or bf16 mixed precision (fp32 master
    /// weights, gradients and moments).
    #[arg(long, value_name = "fp32|bf16")]
    pub gpu_precision: Option<String>,
    /// How GPU ranks reduce gradients: host (over the training ring), or on the
    /// devices with nccl (one GPU per rank) or ipc (every rank on this host).
    #[arg(long, value_name = "host|nccl|ipc")]
    pub gpu_collectives: Option<String>,
    /// GPU attention: flash (tiled kernels, memory linear in T) or gemm (cuBLAS
    /// tensor-core products, [B·NH, T, T] probabilities kept per layer).
    #[arg(long, value_name = "flash|gemm")]
    pub gpu_attention: Option<String>,
    /// Activation recomputation (CPU): none, selective or full on every layer, or
    /// auto: the plan that fits --activation-budget and recomputes least.
    #[arg(long, value_name = "none|selective|full|auto")]
    pub recompute: Option<String>,
    /// Bytes of activations each rank may hold (beside parameters, gradients and
    /// optimizer state), e.g. 2GiB or 512MiB.
    #[arg(long, value_name = "SIZE")]
    pub activation_budget: Option<String>,
    /// Start from these weights: a shoal checkpoint or a Hugging Face GPT-2 directory.
    #[arg(long, value_name = "DIR")]
    pub init: Option<PathBuf>,
    /// Resume a run: a checkpoint directory, a run's out_dir, or `latest` (of --out-dir).
    #[arg(long, value_name = "DIR|latest", conflicts_with = "init")]
    pub resume: Option<String>,
    /// Delete the checkpoints and metrics of an earlier run in --out-dir first.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Data-parallel ranks as processes on this machine, talking QUIC with mutual TLS
    /// (a cluster CA is made for the run); this process is rank 0.
    #[arg(long, conflicts_with = "ranks")]
    pub procs: Option<usize>,
    /// (Set by `--procs` for the other processes.) This process is rank R.
    #[arg(long, hide = true, requires = "cluster")]
    pub proc_rank: Option<usize>,
    /// (Set by `--procs`.) Directory with the run's cluster certificates.
    #[arg(long, hide = true)]
    pub cluster: Option<PathBuf>,
    /// Continual pretraining: re-warming, replay, moments.
    #[command(flatten)]
    pub continual: super::continual::ContinualArgs,
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// Parses `DOMAIN=PATH[,PATH...]`.
pub(crate) fn parse_domain(spec: &str) -> Result<(String, Vec<PathBuf>)> {
    let (name, paths) = spec
        .split_once('=')
        .with_context(|| format!("--data `{spec}`: expected DOMAIN=PATH[,PATH]"))?;
    let paths: Vec<PathBuf> = paths
        .split(',')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();
    if name.is_empty() || paths.is_empty() {
        bail!("--data `{spec}`: expected DOMAIN=PATH[,PATH]");
    }
    Ok((name.to_string(), paths))
}

impl TrainArgs {
    /// Applies the flags on top of `c`.
    pub fn apply(&self, c: &mut TrainConfig) -> Result<()> {
        set(&mut c.model.preset, self.preset.clone());
        for (slot, v) in [
            (&mut c.model.n_layer, self.n_layer),
            (&mut c.model.n_head, self.n_head),
            (&mut c.model.n_embd, self.n_embd),
            (&mut c.model.n_positions, self.n_positions),
            (&mut c.model.vocab_size, self.vocab_size),
        ] {
            if v.is_some() {
                *slot = v;
            }
        }
        if self.data_builtin && !matches!(c.data, DataSpec::Builtin { .. }) {
            c.data = DataSpec::default();
        }
        if !self.data.is_empty() {
            let mut domains = BTreeMap::new();
            for spec in &self.data {
                let (name, paths) = parse_domain(spec)?;
                domains.entry(name).or_insert_with(Vec::new).extend(paths);
            }
            let val_fraction = match &c.data {
                DataSpec::Files { val_fraction, .. } => *val_fraction,
                DataSpec::Builtin { .. } | DataSpec::Shards { .. } => 0.1,
            };
            c.data = DataSpec::Files {
                domains,
                tokenizer: None,
                val_fraction,
            };
        }
        if let Some(manifest) = &self.shards {
            c.data = DataSpec::Shards {
                manifest: manifest.clone(),
            };
        }
        match &mut c.data {
            DataSpec::Shards { .. } => {
                if self.tokenizer.is_some()
                    || self.tokens_per_domain.is_some()
                    || self.val_fraction.is_some()
                {
                    bail!(
                        "--shards brings its own tokenizer and validation split: \
                         --tokenizer, --tokens-per-domain and --val-fraction do not apply"
                    );
                }
            }
            DataSpec::Builtin {
                tokens_per_domain,
                val_fraction,
                ..
            } => {
                if self.tokenizer.is_some() {
                    bail!("--tokenizer applies to --data files, not to the built-in corpus");
                }
                set(tokens_per_domain, self.tokens_per_domain);
                set(val_fraction, self.val_fraction);
            }
            DataSpec::Files {
                tokenizer,
                val_fraction,
                ..
            } => {
                if self.tokens_per_domain.is_some() {
                    bail!("--tokens-per-domain applies to the built-in corpus only");
                }
                if self.tokenizer.is_some() {
                    *tokenizer = self.tokenizer.clone();
                }
                set(val_fraction, self.val_fraction);
            }
        }
        set(&mut c.mixture, self.mixture.clone());
        set(&mut c.batch_size, self.batch_size);
        set(&mut c.seq_len, self.seq_len);
        set(&mut c.grad_accum, self.grad_accum);
        set(&mut c.max_steps, self.max_steps);
        set(&mut c.lr, self.lr);
        set(&mut c.min_lr, self.min_lr);
        set(&mut c.warmup_steps, self.warmup_steps);
        set(&mut c.weight_decay, self.weight_decay);
        set(&mut c.grad_clip, self.grad_clip);
        set(&mut c.eval_every, self.eval_every);
        set(&mut c.eval_batches, self.eval_batches);
        set(&mut c.checkpoint_every, self.checkpoint_every);
        set(&mut c.keep_checkpoints, self.keep_checkpoints);
        set(&mut c.out_dir, self.out_dir.clone());
        set(&mut c.seed, self.seed);
        set(&mut c.threads, self.threads);
        set(&mut c.ranks, self.ranks);
        set(&mut c.zero, self.zero);
        set(&mut c.device, self.device.clone());
        set(&mut c.gpu_matmul, self.gpu_matmul.clone());
        set(&mut c.gpu_precision, self.gpu_precision.clone());
        set(&mut c.gpu_collectives, self.gpu_collectives.clone());
        set(&mut c.gpu_attention, self.gpu_attention.clone());
        set(&mut c.recompute, self.recompute.clone());
        if self.activation_budget.is_some() {
            c.activation_budget = self.activation_budget.clone();
        }
        if self.init.is_some() {
            c.init = self.init.clone();
        }
        self.continual.apply(c)
    }
}

/// The configuration of a fresh run: `--config`'s file (read by the caller, or here when
/// `file` is `None`) with the flags applied, validated unless `--init` names the model.
pub fn fresh_config(args: &TrainArgs, file: Option<TrainConfig>) -> Result<TrainConfig> {
    let file = match (file, &args.config) {
        (Some(f), _) => Some(f),
        (None, Some(path)) => Some(TrainConfig::from_toml_file(path)?),
        (None, None) => None,
    };
    let mut config = file.unwrap_or_default();
    args.apply(&mut config)?;
    // Name the config file in validation errors, since most values come from it.
    if config.init.is_none() {
        config.validate().with_context(|| match &args.config {
            Some(p) => format!("invalid training config (from {} and flags)", p.display()),
            None => "invalid training config (from flags)".to_string(),
        })?;
    }
    Ok(config)
}

/// Builds the trainer the flags describe: fresh, from `--init`, or resumed.
pub fn build_trainer(args: &TrainArgs) -> Result<Trainer> {
    let file = match &args.config {
        Some(path) => Some(TrainConfig::from_toml_file(path)?),
        None => None,
    };
    let Some(resume) = &args.resume else {
        let config = fresh_config(args, file)?;
        if args.overwrite {
            remove_previous_run(&config.out_dir)?;
        }
        return Ok(Trainer::new(config)?);
    };
    let dir = if resume == "latest" {
        let mut c = file.clone().unwrap_or_default();
        args.apply(&mut c)?;
        let root = c.out_dir.join("checkpoints");
        resolve_checkpoint_dir(&root)
            .with_context(|| format!("--resume latest: no checkpoint under {}", root.display()))?
    } else {
        resolve_checkpoint_dir(Path::new(resume))?
    };
    let meta = Checkpoint::load_meta(&dir)?;
    let mut config = file.or(meta.train).unwrap_or_default();
    args.apply(&mut config)?;
    config.init = None;
    let trainer = Trainer::resume_with(&dir, config)
        .with_context(|| format!("cannot resume from {}", dir.display()))?;
    eprintln!(
        "resuming from {} at step {}",
        dir.display(),
        trainer.step_count()
    );
    Ok(trainer)
}

/// Removes what an earlier run left in `out_dir` (checkpoints, metrics, plot).
pub fn remove_previous_run(out_dir: &Path) -> Result<()> {
    let ckpts = out_dir.join("checkpoints");
    if ckpts.exists() {
        std::fs::remove_dir_all(&ckpts)
            .with_context(|| format!("cannot remove {}", ckpts.display()))?;
    }
    for f in ["metrics.jsonl", "loss.svg"] {
        let p = out_dir.join(f);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
        }
    }
    Ok(())
}

/// Runs `trainer` to its `max_steps` with a progress bar, then plots the metrics.
pub fn train_with_progress(trainer: &mut Trainer) -> Result<(RunSummary, PathBuf)> {
    let mut progress = ProgressObserver::new();
    let result = trainer.run(&mut progress);
    progress.finish();
    let summary = result?;
    let plot = trainer.config().out_dir.join("loss.svg");
    crate::plot::plot_metrics(&summary.metrics, &plot)?;
    Ok((summary, plot))
}

/// What each GPU holds of the model states in this run, beside ZeRO's count for
/// the same precision, stage and world (the paper's bf16 gradients and device-side
/// sharding, which this run's host-side optimizer does not do).
fn gpu_state_line(c: &TrainConfig, psi: usize, world: usize) -> Result<String> {
    let precision = c.gpu_precision()?;
    let mib = |b: u64| b as f64 / 1048576.0;
    let psi = psi as u64;
    // Parameters (the fp32 master and, in bf16, the compute copy) and fp32 gradients;
    // a single rank also keeps the AdamW moments on the GPU, data-parallel ranks on
    // the host (sharded by the ZeRO stage).
    let copy = match precision {
        shoal_models::Precision::Fp32 => 0,
        shoal_models::Precision::Bf16 => 2 * psi,
    };
    let moments = if world > 1 { 0 } else { 8 * psi };
    let held = 4 * psi + copy + 4 * psi + moments;
    let paper = shoal_models::model_state_bytes(precision, c.zero, psi, world)?;
    Ok(format!(
        "each GPU holds {:.1} MiB of model states ({precision}: parameters{}, fp32 gradients{}); \
         ZeRO's count for {precision} at stage {} over {world} rank(s) is {:.1} MiB",
        mib(held),
        if copy > 0 { " fp32 + bf16" } else { "" },
        if moments > 0 { ", AdamW moments" } else { "" },
        c.zero,
        mib(paper.params + paper.grads + paper.optimizer),
    ))
}

/// `shoal train`.
pub fn run(args: TrainArgs) -> Result<()> {
    if let (Some(rank), Some(cluster)) = (args.proc_rank, &args.cluster) {
        return super::procs::run_child(build_trainer(&args)?, cluster, rank);
    }
    let mut trainer = build_trainer(&args)?;
    let procs = match args.procs {
        Some(n) if n > 1 => Some(super::procs::start(&mut trainer, n)?),
        _ => None,
    };
    let c = trainer.config();
    let on = match c.device.as_str() {
        "cpu" => format!("{} threads", c.resolved_threads()),
        gpu => gpu.to_string(),
    };
    eprintln!(
        "training {} params ({} layers, width {}) for {} steps of {} tokens on {on}, {} rank(s), ZeRO {} -> {}",
        trainer.model().num_params(),
        trainer.model().config.n_layer,
        trainer.model().config.n_embd,
        c.max_steps,
        c.tokens_per_step(),
        c.ranks,
        c.zero,
        c.out_dir.display()
    );
    let world = args.procs.unwrap_or(c.ranks).max(1);
    if world > 1 {
        let stage = ZeroStage::from_number(c.zero)?;
        let m = MemoryReport::per_rank(stage, trainer.model().num_params(), world);
        let mib = |b: usize| b as f64 / 1048576.0;
        eprintln!(
            "each of {world} ranks holds {:.1} MiB: parameters {:.1}, gradients {:.1}, AdamW {:.1} \
             (plus communication buffers: gradient buckets in flight, and at stage 3 the parameter parts gathered for the layer at work and the next)",
            mib(m.total()),
            mib(m.params),
            mib(m.grads),
            mib(m.optimizer)
        );
    }
    if c.device != "cpu" {
        eprintln!(
            "{}",
            gpu_state_line(c, trainer.model().num_params(), world)?
        );
    }
    for line in super::continual::describe(&trainer) {
        eprintln!("{line}");
    }
    let (summary, plot) = train_with_progress(&mut trainer)?;
    if let Some(procs) = procs {
        procs.wait()?;
    }
    if let Some(line) = super::continual::replayed_line(&trainer) {
        println!("{line}");
    }
    if let Some(s) = &summary.last_step {
        println!(
            "final step {}: train loss {:.4} ({:.0} tokens/s)",
            s.step,
            s.loss,
            s.tokens_per_s()
        );
    }
    if let Some(dir) = &summary.checkpoint {
        println!("checkpoint: {}", dir.display());
    }
    println!("metrics:    {}", summary.metrics.display());
    println!("plot:       {}", plot.display());
    Ok(())
}
