//! The single-process trainer: model, flat state, data mixture and compute pool, and the
//! loop {step; log; evaluate every N; checkpoint every K}.
//!
//! The data order is a pure function of `(seed, step)`: micro-batch `micro` of step `s`
//! holds the global samples `s·B·accum + micro·B + i`, so resuming needs no data state
//! and a resumed run repeats an uninterrupted one bit for bit.

use std::path::{Path, PathBuf};
use std::time::Instant;

use shoal_collectives::Communicator;
use shoal_data::{Domain, Mixture, MixtureWeights, Replay, SyntheticCorpus, Tokenizer};
use shoal_kernels::DecaySpan;
use shoal_models::{Gpt, GptConfig, SampleOptions};

use crate::checkpoint::{Checkpoint, CheckpointStore, load_checkpoint};
use crate::config::{DataSpec, TrainConfig};
use crate::continual::{RunRecord, load_init, load_replay};
use crate::error::{Result, TrainError};
use crate::gpu_step::GpuStep;
use crate::metrics::{DomainEval, EvalStats, MetricsWriter, StepStats};
use crate::replicas::Replicas;
use crate::schedule::Schedule;
use crate::step::{StepHyper, TrainState, train_step};
use crate::zero::MemoryReport;

/// Receives progress from [`Trainer::run`]; every method has an empty default.
pub trait TrainObserver {
    /// The run starts after `start_step` completed steps and stops at `max_steps`.
    fn on_start(&mut self, _start_step: u64, _max_steps: u64) {}
    /// A step finished.
    fn on_step(&mut self, _stats: &StepStats) {}
    /// An evaluation finished.
    fn on_eval(&mut self, _stats: &EvalStats) {}
    /// A checkpoint was written to `dir`.
    fn on_checkpoint(&mut self, _step: u64, _dir: &Path) {}
}

/// An observer that ignores everything.
pub struct NoopObserver;

impl TrainObserver for NoopObserver {}

/// What [`Trainer::run`] did.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// Steps completed at the end.
    pub step: u64,
    /// The last step's statistics (none if the run had nothing left to do).
    pub last_step: Option<StepStats>,
    /// The last evaluation, if any ran.
    pub last_eval: Option<EvalStats>,
    /// The newest checkpoint written.
    pub checkpoint: Option<PathBuf>,
    /// The metrics file.
    pub metrics: PathBuf,
    /// Wall-clock seconds of the run.
    pub seconds: f64,
}

/// The data of a run: the mixture, its tokenizer, and the tokenizer file if there is one.
pub struct LoadedData {
    /// Train and validation splits per domain.
    pub mixture: Mixture,
    /// How text maps to token ids.
    pub tokenizer: Tokenizer,
    /// The `tokenizer.json` the tokenizer came from (copied into checkpoints).
    pub tokenizer_json: Option<PathBuf>,
}

/// Loads the data a [`DataSpec`] describes and weighs its domains as `weights` says.
pub fn load_data(spec: &DataSpec, weights: &MixtureWeights) -> Result<LoadedData> {
    let mut data = load_domains(spec)?;
    weights.apply(&mut data.mixture)?;
    Ok(data)
}

/// The domains a [`DataSpec`] describes, equally weighted.
fn load_domains(spec: &DataSpec) -> Result<LoadedData> {
    match spec {
        DataSpec::Builtin {
            seed,
            tokens_per_domain,
            val_fraction,
        } => Ok(LoadedData {
            mixture: SyntheticCorpus::new(*seed).mixture(*tokens_per_domain, *val_fraction)?,
            tokenizer: Tokenizer::bytes(),
            tokenizer_json: None,
        }),
        DataSpec::Files {
            domains,
            tokenizer,
            val_fraction,
        } => {
            let tok = match tokenizer {
                Some(p) => Tokenizer::from_file(p)?,
                None => Tokenizer::bytes(),
            };
            let list: Vec<(String, Vec<PathBuf>)> = domains
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Ok(LoadedData {
                mixture: shoal_data::mixture_from_files(&list, &tok, *val_fraction)?,
                tokenizer: tok,
                tokenizer_json: tokenizer.clone(),
            })
        }
        DataSpec::Shards { manifest } => {
            let manifest = shoal_data::Manifest::load(manifest)?;
            let tokenizer = manifest.tokenizer()?;
            let tokenizer_json = match &tokenizer {
                Tokenizer::Hf(_, path) => Some(path.clone()),
                Tokenizer::Bytes => None,
            };
            Ok(LoadedData {
                mixture: manifest.mixture()?,
                tokenizer,
                tokenizer_json,
            })
        }
    }
}

/// Loads starting weights from a shoal checkpoint (or run directory) or a Hugging Face
/// GPT-2 directory (`config.json` + `model.safetensors`).
pub fn load_weights(path: &Path) -> Result<(GptConfig, Vec<f32>)> {
    if path.join("config.json").is_file() && !path.join(crate::checkpoint::META_FILE).exists() {
        return Ok(shoal_models::hf::load(path)?);
    }
    let (_, ckpt) = load_checkpoint(path)?;
    Ok((ckpt.meta.model, ckpt.params))
}

/// Trains one model in one process on a rayon pool of `config.threads` threads.
pub struct Trainer {
    config: TrainConfig,
    model: Gpt,
    state: TrainState,
    spans: Vec<DecaySpan>,
    schedule: Schedule,
    data: LoadedData,
    /// The old data a continual run evaluates beside `data` and replays into training.
    replay: Option<Replay>,
    /// The earlier runs this one continues (from `init`), oldest first.
    lineage: Vec<RunRecord>,
    /// AdamW steps folded into the moments before this run (kept `init` moments).
    moment_steps: u64,
    /// Samples consumed by this process's steps per domain: `data`'s, then `replay`'s.
    consumed: Vec<u64>,
    compute: Replicas,
    tokens: Vec<u32>,
    targets: Vec<u32>,
    tokens_seen: u64,
    resumed_from: Option<PathBuf>,
    /// This process's rank of a multi-process ring, if it is one.
    comm: Option<Communicator>,
    /// What the local ranks hold, measured after the first data-parallel step and
    /// not yet written to the metrics.
    rank_memory: Vec<MemoryReport>,
    /// The GPU the steps run on (`device = "cuda"`); `state` is then brought up to
    /// date by [`Trainer::sync_device`].
    gpu: Option<GpuStep>,
    /// The plan inputs of a single-process step when no recompute plan fits them
    /// (the error is reported by [`Trainer::step`]; see [`crate::recompute`]).
    unplanned: Option<crate::recompute::PlanInputs>,
}

impl Trainer {
    /// A fresh run: random initialisation from `seed`, or the weights `config.init` names
    /// (with their AdamW moments unless `reset_moments`; see [`crate::continual`]).
    pub fn new(config: TrainConfig) -> Result<Self> {
        let Some(path) = config.init.clone() else {
            let model = config.model.resolve()?;
            return Self::build(config, model, None);
        };
        if config.model != crate::config::ModelSpec::default() {
            tracing::warn!("`init` is set: the model architecture comes from its weights");
        }
        let init = load_init(&path, config.reset_moments)?;
        tracing::info!(
            path = %path.display(),
            moments = if init.moments.is_some() { "kept" } else { "zero" },
            "initial weights loaded"
        );
        let mut t = Self::build(config, init.model, Some(init.params))?;
        if let Some((m, v)) = init.moments {
            (t.state.adam_m, t.state.adam_v) = (m, v);
        }
        t.moment_steps = init.moment_steps;
        t.lineage = init.lineage;
        Ok(t)
    }

    /// Resumes the run a checkpoint (or run directory) holds, with its stored config.
    pub fn resume(dir: &Path) -> Result<Self> {
        let (dir, ckpt) = load_checkpoint(dir)?;
        let config = ckpt
            .meta
            .train
            .clone()
            .ok_or_else(|| TrainError::CheckpointCorrupt {
                path: dir.join(crate::checkpoint::META_FILE),
                reason: "holds no training config (imported weights?); use it as `init` instead"
                    .into(),
            })?;
        Self::resume_from(dir, ckpt, config)
    }

    /// Resumes from a checkpoint with a (possibly changed) config; the architecture comes
    /// from the checkpoint. Changing batch shape or seed changes the data order.
    pub fn resume_with(dir: &Path, config: TrainConfig) -> Result<Self> {
        let (dir, ckpt) = load_checkpoint(dir)?;
        Self::resume_from(dir, ckpt, config)
    }

    /// Resumes from the loaded checkpoint `ckpt` of directory `dir`.
    fn resume_from(dir: PathBuf, ckpt: Checkpoint, config: TrainConfig) -> Result<Self> {
        let mut t = Self::build(config, ckpt.meta.model.clone(), Some(ckpt.params))?;
        if ckpt.meta.tokenizer != t.data.tokenizer.describe() {
            tracing::warn!(
                checkpoint = %ckpt.meta.tokenizer,
                now = %t.data.tokenizer.describe(),
                "the data is tokenized differently from the checkpoint's run"
            );
        }
        t.state.adam_m = ckpt.adam_m;
        t.state.adam_v = ckpt.adam_v;
        t.state.step = ckpt.meta.step;
        t.tokens_seen = ckpt.meta.tokens_seen;
        t.lineage = ckpt.meta.lineage;
        t.moment_steps = ckpt.meta.moment_steps;
        t.resumed_from = Some(dir);
        Ok(t)
    }

    fn build(config: TrainConfig, model: GptConfig, params: Option<Vec<f32>>) -> Result<Self> {
        config.validate_for(&model)?;
        let data = load_data(&config.data, &config.mixture)?;
        let vocab = model.vocab_size;
        if data.tokenizer.vocab_size() > vocab {
            return Err(TrainError::InvalidConfig {
                field: "model.vocab_size",
                reason: format!(
                    "({vocab}) is smaller than the tokenizer's vocabulary ({}: {})",
                    data.tokenizer.vocab_size(),
                    data.tokenizer.describe()
                ),
            });
        }
        let t = config.seq_len;
        let replay = match &config.replay {
            Some(spec) => Some(load_replay(spec, &data)?),
            None => None,
        };
        let upstream = replay.iter().flat_map(|r| &r.old.domains);
        for d in data.mixture.domains.iter().chain(upstream) {
            for (split, ds) in [("train", &d.train), ("validation", &d.val)] {
                ds.check_vocab(vocab)
                    .map_err(|source| TrainError::DomainData {
                        domain: d.name.clone(),
                        split,
                        source,
                    })?;
                if ds.num_windows(t) == 0 {
                    return Err(TrainError::InvalidConfig {
                        field: "seq_len",
                        reason: format!(
                            "({t}) needs {} tokens per window but the {split} split of domain \
                             `{}` holds only {}",
                            t + 1,
                            d.name,
                            ds.len()
                        ),
                    });
                }
            }
        }
        let gpt = Gpt::new(model)?;
        let params = match params {
            Some(p) => p,
            None => gpt.init_params(config.seed),
        };
        let (compute, unplanned) = crate::recompute::trainer_compute(&config, &gpt.config)?;
        let n = config.batch_size * t;
        // Data-parallel ranks open their own GPUs (see `crate::rank`).
        let gpu = if config.ranks > 1 {
            None
        } else {
            GpuStep::open(&config)?
        };
        let schedule = config.lr_schedule();
        let run_tokens = config.max_steps.saturating_mul(config.tokens_per_step());
        if schedule.total_tokens() < run_tokens {
            tracing::warn!(
                schedule_tokens = schedule.total_tokens(),
                run_tokens,
                "the schedule ends before the run: its final rate holds from there on"
            );
        }
        let domains =
            data.mixture.domains.len() + replay.as_ref().map_or(0, |r| r.old.domains.len());
        Ok(Self {
            spans: gpt.layout.decay_spans(),
            schedule,
            replay,
            lineage: Vec::new(),
            moment_steps: 0,
            consumed: vec![0; domains],
            state: TrainState::new(params),
            model: gpt,
            compute,
            data,
            tokens: vec![0; n],
            targets: vec![0; n],
            tokens_seen: 0,
            resumed_from: None,
            comm: None,
            rank_memory: Vec::new(),
            gpu,
            unplanned,
            config,
        })
    }

    /// The run's configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The model.
    pub fn model(&self) -> &Gpt {
        &self.model
    }

    /// Parameters, gradients, moments and step (on a GPU, the parameters and moments
    /// as of the last [`Trainer::sync_device`]).
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// Optimizer steps completed.
    pub fn step_count(&self) -> u64 {
        self.state.step
    }

    /// Training tokens consumed so far.
    pub fn tokens_seen(&self) -> u64 {
        self.tokens_seen
    }

    /// The data mixture.
    pub fn mixture(&self) -> &Mixture {
        &self.data.mixture
    }

    /// The tokenizer of the data.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.data.tokenizer
    }

    /// The learning-rate schedule (in tokens).
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The old data of a continual run (`config.replay`), evaluated and replayed.
    pub fn replay(&self) -> Option<&Replay> {
        self.replay.as_ref()
    }

    /// The earlier runs this one continues (from `init`), oldest first.
    pub fn lineage(&self) -> &[RunRecord] {
        &self.lineage
    }

    /// AdamW steps folded into the moments before this run (kept `init` moments).
    pub fn moment_steps(&self) -> u64 {
        self.moment_steps
    }

    /// Every domain the run trains or evaluates on: the new data's, then the old
    /// data's (`upstream` true).
    pub fn all_domains(&self) -> impl Iterator<Item = (&Domain, bool)> {
        let old = self.replay.iter().flat_map(|r| &r.old.domains);
        (self.data.mixture.domains.iter().map(|d| (d, false))).chain(old.map(|d| (d, true)))
    }

    /// Training samples this process's steps consumed, per domain of
    /// [`Trainer::all_domains`] (the local ranks' rows in a data-parallel run).
    pub fn consumed_samples(&self) -> Vec<(String, u64)> {
        self.all_domains()
            .zip(&self.consumed)
            .map(|((d, _), &n)| (d.name.clone(), n))
            .collect()
    }

    /// The global sample `index`'s tokens and targets, from the new data or the
    /// replayed old data; returns its domain (as [`Trainer::all_domains`] counts).
    fn sampler(
        &self,
    ) -> impl Fn(u64, &mut [u32], &mut [u32]) -> Result<usize> + Send + Sync + 'static {
        let (mixture, replay) = (self.data.mixture.clone(), self.replay.clone());
        let (seed, t) = (self.config.seed, self.config.seq_len);
        move |index, x, y| {
            Ok(shoal_data::sample_with_replay(
                &mixture,
                replay.as_ref(),
                seed,
                index,
                t,
                x,
                y,
            )?)
        }
    }

    /// Counts global samples `indices` as consumed (their domains computed, not read).
    fn count_consumed(&mut self, indices: &[u64]) -> Result<()> {
        let seed = self.config.seed;
        for &i in indices {
            let d = match &self.replay {
                Some(r) => r.domain_of(&self.data.mixture, seed, i)?,
                None => self.data.mixture.domain_of(seed, i)?,
            };
            self.consumed[d] += 1;
        }
        Ok(())
    }

    /// Where the run stands in its schedule after the steps taken so far.
    pub fn schedule_position(&self) -> crate::schedule::SchedulePosition {
        self.schedule
            .position(self.tokens_seen, self.config.tokens_per_step())
    }

    /// The checkpoint this trainer was resumed from, if any.
    pub fn resumed_from(&self) -> Option<&Path> {
        self.resumed_from.as_deref()
    }

    /// The hyper-parameters of step `step` (0-based: the step being taken). Its
    /// learning rate is the schedule's at the tokens consumed before it: those of the
    /// steps completed ([`Trainer::tokens_seen`] at [`Trainer::step_count`]) plus a
    /// global batch for every step between there and `step`.
    fn hyper(&self, step: u64) -> StepHyper {
        let c = &self.config;
        let per_step = c.tokens_per_step();
        let ahead = step.saturating_sub(self.state.step);
        let tokens = self.tokens_seen + ahead * per_step;
        StepHyper {
            lr: self.schedule.lr(tokens, per_step),
            moment_steps: self.moment_steps,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            grad_clip: c.grad_clip,
            grad_accum: c.grad_accum,
        }
    }

    /// Runs one optimizer step over `grad_accum` micro-batches.
    pub fn step(&mut self) -> Result<StepStats> {
        if let Some(inputs) = &self.unplanned {
            crate::recompute::plan_recompute(inputs)?;
        }
        let start = Instant::now();
        let c = &self.config;
        let (b, t, accum, seed) = (c.batch_size, c.seq_len, c.grad_accum, c.seed);
        let step = self.state.step;
        let hp = self.hyper(step);
        let (mixture, replay) = (&self.data.mixture, self.replay.as_ref());
        let mut picked = Vec::with_capacity(b * accum);
        let fill = |micro: usize, tokens: &mut [u32], targets: &mut [u32]| -> Result<()> {
            let first = (step * (b * accum) as u64) + (micro * b) as u64;
            for (i, (x, y)) in tokens.chunks_mut(t).zip(targets.chunks_mut(t)).enumerate() {
                let index = first + i as u64;
                picked.push(shoal_data::sample_with_replay(
                    mixture, replay, seed, index, t, x, y,
                )?);
            }
            Ok(())
        };
        let (model, state, compute, spans) =
            (&self.model, &mut self.state, &mut self.compute, &self.spans);
        let (tokens, targets) = (&mut self.tokens, &mut self.targets);
        let out = match &mut self.gpu {
            Some(gpu) => gpu.train_step(model, state, &hp, tokens, targets, fill)?,
            None => train_step(model, state, compute, spans, &hp, tokens, targets, fill)?,
        };
        let n_tokens = c.tokens_per_step();
        self.tokens_seen += n_tokens;
        for d in picked {
            self.consumed[d] += 1;
        }
        Ok(StepStats {
            step: self.state.step,
            loss: out.loss,
            lr: hp.lr,
            grad_norm: out.grad_norm,
            tokens: n_tokens,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Mean validation loss of every domain over `eval_batches` micro-batches of windows
    /// spread evenly over its validation split (the same windows every time): the new
    /// data's domains, then the old (upstream) data's of a continual run.
    pub fn evaluate(&mut self) -> Result<EvalStats> {
        self.sync_device()?;
        let (b, t) = (self.config.batch_size, self.config.seq_len);
        let batches = self.config.eval_batches.max(1);
        let wanted = batches * b;
        let (model, params, compute) = (&self.model, &self.state.params, &mut self.compute);
        let (tokens, targets) = (&mut self.tokens, &mut self.targets);
        let old = self.replay.iter().flat_map(|r| &r.old.domains);
        let all = self.data.mixture.domains.iter().map(|d| (d, false));
        let all: Vec<(&Domain, bool)> = all.chain(old.map(|d| (d, true))).collect();
        let domains = (|| -> Result<Vec<DomainEval>> {
            let mut out = Vec::with_capacity(all.len());
            for &(d, upstream) in &all {
                let have = d.val.num_windows(t);
                let mut sum = 0.0f64;
                for batch in 0..batches {
                    for i in 0..b {
                        let j = batch * b + i;
                        let w = if have >= wanted {
                            j * have / wanted
                        } else {
                            j % have
                        };
                        let (x, y) = (
                            &mut tokens[i * t..(i + 1) * t],
                            &mut targets[i * t..(i + 1) * t],
                        );
                        d.val.window(w, t, x, y)?;
                    }
                    sum += f64::from(compute.forward(model, params, tokens, targets)?);
                }
                out.push(DomainEval {
                    name: d.name.clone(),
                    loss: (sum / batches as f64) as f32,
                    floor: d.entropy_floor,
                    upstream,
                });
            }
            Ok(out)
        })()?;
        Ok(EvalStats {
            step: self.state.step,
            domains,
        })
    }

    /// Copies the parameters and AdamW moments of a GPU run back into
    /// [`Trainer::state`] (a no-op on the CPU, or when no step ran since the last
    /// copy). [`Trainer::run`] does this itself before evaluating, checkpointing and
    /// returning; call it after [`Trainer::step`] before reading the state, sampling
    /// or taking a checkpoint.
    pub fn sync_device(&mut self) -> Result<()> {
        match &mut self.gpu {
            Some(gpu) => gpu.download(&mut self.state),
            None => Ok(()),
        }
    }

    /// The current state as a checkpoint.
    pub fn checkpoint(&self) -> Checkpoint {
        let mut ckpt = Checkpoint::from_weights(
            self.model.config.clone(),
            self.state.params.clone(),
            self.data.tokenizer.describe(),
        );
        ckpt.adam_m = self.state.adam_m.clone();
        ckpt.adam_v = self.state.adam_v.clone();
        ckpt.meta.step = self.state.step;
        ckpt.meta.tokens_seen = self.tokens_seen;
        ckpt.meta.train = Some(self.config.clone());
        ckpt.meta.schedule_position = Some(self.schedule_position());
        ckpt.meta.lineage = self.lineage.clone();
        ckpt.meta.moment_steps = self.moment_steps;
        ckpt.tokenizer_json = self.data.tokenizer_json.clone();
        ckpt
    }

    /// Writes a checkpoint into `out_dir/checkpoints/` and returns its directory.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        CheckpointStore::new(&self.config.out_dir, self.config.keep_checkpoints)
            .save(&self.checkpoint())
    }

    /// Continues `prompt` with the current parameters, within the trained context length.
    pub fn sample(&self, prompt: &str, opts: &SampleOptions) -> Result<String> {
        let ids = self.data.tokenizer.encode(prompt)?;
        let params = &self.state.params;
        let new = self.compute.install(|| {
            let opts = SampleOptions {
                context: Some(opts.context.unwrap_or(self.config.seq_len)),
                ..opts.clone()
            };
            self.model.generate(params, &ids, &opts)
        })?;
        Ok(self.data.tokenizer.decode(&new)?)
    }

    /// Trains until `max_steps`, evaluating every `eval_every` steps (and at the start of
    /// a fresh run and at the end), checkpointing every `checkpoint_every` steps and at the
    /// end, and writing `out_dir/metrics.jsonl`.
    ///
    /// With `ranks` > 1 the steps are data-parallel over that many ranks (threads of
    /// this process) under ZeRO stage `zero`; this thread is rank 0. With a
    /// communicator attached ([`Trainer::attach`]) this process is one rank of a
    /// multi-process ring: rank 0 runs the loop as here, the others only take their
    /// part in each step (and return a summary without metrics).
    pub fn run(&mut self, observer: &mut dyn TrainObserver) -> Result<RunSummary> {
        if let Some(comm) = self.comm.take() {
            // A rank of a multi-process ring computes through its node's rank, on
            // the GPU the node gives it; the single-rank GPU step is not used.
            self.gpu = None;
            return if comm.rank() == 0 {
                self.run_ranks(observer, vec![comm])
            } else {
                self.follow(comm)
            };
        }
        if self.config.ranks > 1 {
            let comms = local_comms(self.config.ranks)?;
            return self.run_ranks(observer, comms);
        }
        self.run_loop(observer, &mut |t| t.step(), &mut |t, store| {
            store.save(&t.checkpoint())
        })
    }

    /// Makes this trainer one rank of the ring `comm` belongs to (every process of
    /// the ring runs the same configuration); [`Trainer::run`] then trains as that
    /// rank.
    pub fn attach(&mut self, comm: Communicator) {
        self.comm = Some(comm);
    }

    /// The run loop, taking steps with `step` and writing checkpoints into the store
    /// with `checkpoint` (which returns the new checkpoint's directory).
    fn run_loop(
        &mut self,
        observer: &mut dyn TrainObserver,
        step: &mut dyn FnMut(&mut Self) -> Result<StepStats>,
        checkpoint: &mut dyn FnMut(&mut Self, &CheckpointStore) -> Result<PathBuf>,
    ) -> Result<RunSummary> {
        let start = Instant::now();
        let out_dir = self.config.out_dir.clone();
        std::fs::create_dir_all(&out_dir).map_err(|e| TrainError::io(&out_dir, e))?;
        let store = CheckpointStore::new(&out_dir, self.config.keep_checkpoints);
        if self.resumed_from.is_none() && !store.list()?.is_empty() {
            return Err(TrainError::CheckpointsExist {
                path: store.root().to_path_buf(),
            });
        }
        let config_path = out_dir.join("config.toml");
        std::fs::write(&config_path, self.config.to_toml_string())
            .map_err(|e| TrainError::io(&config_path, e))?;
        let mut metrics = MetricsWriter::open(&out_dir.join("metrics.jsonl"), self.state.step)?;
        let (max, eval_every, ckpt_every) = (
            self.config.max_steps,
            self.config.eval_every,
            self.config.checkpoint_every,
        );
        observer.on_start(self.state.step, max);
        let mut summary = RunSummary {
            step: self.state.step,
            last_step: None,
            last_eval: None,
            checkpoint: self.resumed_from.clone(),
            metrics: metrics.path().to_path_buf(),
            seconds: 0.0,
        };
        if eval_every > 0 && self.state.step == 0 {
            let e = self.evaluate()?;
            metrics.log_eval(&e)?;
            observer.on_eval(&e);
            summary.last_eval = Some(e);
        }
        while self.state.step < max {
            let s = step(self)?;
            metrics.log_step(&s)?;
            if !self.rank_memory.is_empty() {
                metrics.log_memory(s.step, &std::mem::take(&mut self.rank_memory))?;
            }
            observer.on_step(&s);
            let done = s.step == max;
            if eval_every > 0 && (s.step % eval_every == 0 || done) {
                let e = self.evaluate()?;
                metrics.log_eval(&e)?;
                observer.on_eval(&e);
                summary.last_eval = Some(e);
            }
            if (ckpt_every > 0 && s.step % ckpt_every == 0) || done {
                self.sync_device()?;
                let dir = checkpoint(self, &store)?;
                observer.on_checkpoint(s.step, &dir);
                summary.checkpoint = Some(dir);
            }
            summary.last_step = Some(s);
        }
        self.sync_device()?;
        summary.step = self.state.step;
        summary.seconds = start.elapsed().as_secs_f64();
        Ok(summary)
    }
}

mod data_parallel;
mod elastic;
mod group_dro;

pub use data_parallel::TRAIN_COMM_TIMEOUT;
use data_parallel::local_comms;
pub use elastic::{ELASTIC_COMM_TIMEOUT, ElasticEnd};
pub use group_dro::{DroStep, GroupDro, sequence_weights, update_weights};

#[cfg(test)]
#[path = "trainer_tests.rs"]
pub(crate) mod tests;
