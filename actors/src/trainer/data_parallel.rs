//! The trainer's data-parallel runs: this process's ranks as the actors of a
//! [`Node`], in-process (`ranks` > 1) or as one rank of a multi-process ring
//! ([`Trainer::attach`]).
//!
//! Rank 0's trainer does everything a single-process run does besides (metrics,
//! evaluation, committing checkpoints), with the full parameters fetched from the
//! ranks only after the steps that evaluate or checkpoint (gathered from every rank
//! at stage 3); the other processes only step, and join those gathers. Checkpoints
//! are sharded: every rank writes its own pieces ([`crate::checkpoint::sharded`]);
//! when the ranks turn out not to share a file system, the moments are gathered to
//! rank 0, which writes a whole checkpoint instead. Either resumes at any world size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_collectives::{CommConfig, Communicator, LocalHub};

use super::{RunSummary, TrainObserver, Trainer};
use crate::checkpoint::CheckpointStore;
use crate::config::{Device, TrainConfig};
use crate::error::Result;
use crate::feeder::Fill;
use crate::metrics::StepStats;
use crate::node::{GpuRanks, Node, NodeSpec, StartState};
use crate::zero::{MemoryReport, ZeroStage};

/// Gradient bucket size: PyTorch DDP's default of 25 MiB.
const BUCKET_BYTES: usize = 25 << 20;

/// Deadline of the training collectives. A rank that dies is seen at once (its
/// links close, or QUIC's idle timeout fires); the long deadline covers rank 0
/// evaluating or writing a checkpoint while the others wait in the next step's
/// first collective.
pub const TRAIN_COMM_TIMEOUT: Duration = Duration::from_secs(3600);

/// `ranks` in-process communicators for training.
pub(super) fn local_comms(ranks: usize) -> Result<Vec<Communicator>> {
    let config = CommConfig {
        timeout: TRAIN_COMM_TIMEOUT,
        ..CommConfig::default()
    };
    Ok(LocalHub::new().group(ranks, config)?)
}

/// Whether the trainer evaluates or writes a checkpoint after `step`, so that the
/// ranks must hand over (at stage 3: gather) the full parameters. Every process
/// decides alike.
pub(super) fn needs_params_after(c: &TrainConfig, step: u64) -> bool {
    // The last step always writes a checkpoint.
    let every = |k: u64| k > 0 && step.is_multiple_of(k);
    step == c.max_steps || every(c.eval_every) || every(c.checkpoint_every)
}

/// What each local rank holds, after its first step (when the communication
/// buffers have been measured), logged.
fn rank_memory(node: &Node) -> Result<Vec<MemoryReport>> {
    let mib = |b: usize| b as f64 / 1048576.0;
    let all = node.memory()?;
    for (i, m) in all.iter().enumerate() {
        tracing::info!(
            "local rank {i} holds {:.1} MiB: parameters {:.1}, gradients {:.1}, AdamW {:.1}, communication buffers {:.1} (most at once)",
            mib(m.total()),
            mib(m.params),
            mib(m.grads),
            mib(m.optimizer),
            mib(m.buffers)
        );
    }
    Ok(all)
}

/// Removes a staging directory whose shards rank 0 cannot see.
pub(super) fn remove_staging(dir: &std::path::Path) -> Result<()> {
    std::fs::remove_dir_all(dir).map_err(|e| crate::error::TrainError::io(dir, e))
}

impl Trainer {
    /// What every rank of a ring of `world` runs.
    pub(super) fn node_spec(&self, world: usize) -> Result<NodeSpec> {
        let c = &self.config;
        let t = c.seq_len;
        // The same samples as a single-process run, replay included.
        let sample = self.sampler();
        let fill: Fill = Arc::new(move |index, x, y| {
            sample(index, x, y)?;
            Ok(())
        });
        Ok(NodeSpec {
            model: self.model.clone(),
            spans: self.spans.clone(),
            stage: ZeroStage::from_number(c.zero)?,
            bucket_elems: BUCKET_BYTES / 4,
            batch: c.batch_size,
            accum: c.grad_accum,
            seq_len: t,
            threads_per_rank: (c.resolved_threads() / world).max(1),
            fill,
            recompute: crate::recompute::RecomputeSettings::from_config(c)?,
            gpu: match c.device()? {
                Device::Cuda(first) => Some(GpuRanks {
                    first,
                    matmul: c.gpu_matmul.clone(),
                    precision: c.gpu_precision()?,
                    collectives: c.gpu_collectives()?,
                    gemm_attention: c.gpu_attention == "gemm",
                }),
                Device::Cpu => None,
            },
        })
    }

    /// Starts this process's ranks of the ring(s) of `comms`; the optimizer state
    /// moves into their shards.
    pub(super) fn start_node(&mut self, comms: Vec<Communicator>) -> Result<Node> {
        let world = comms.first().map_or(1, Communicator::world);
        let spec = self.node_spec(world)?;
        let s = &self.state;
        let start = StartState {
            params: &s.params,
            adam_m: &s.adam_m,
            adam_v: &s.adam_v,
        };
        let node = Node::start(&spec, comms, start)?;
        self.state.adam_m = Vec::new();
        self.state.adam_v = Vec::new();
        self.state.grads = Vec::new();
        Ok(node)
    }

    /// [`Trainer::run`] as rank 0 of `comms` (this process's ranks, rank 0 first).
    pub(super) fn run_ranks(
        &mut self,
        observer: &mut dyn TrainObserver,
        comms: Vec<Communicator>,
    ) -> Result<RunSummary> {
        let node = self.start_node(comms)?;
        let first = self.state.step;
        self.run_loop(
            observer,
            &mut |t| {
                let start = Instant::now();
                let step = t.state.step;
                let hp = t.hyper(step);
                // The parameters live in the ranks; this copy is for evaluation only.
                t.state.params = Vec::new();
                let outs = node.step(step, hp)?;
                if step == first {
                    t.rank_memory = rank_memory(&node)?;
                }
                let samples: Vec<u64> = outs.iter().flat_map(|o| o.samples.clone()).collect();
                t.count_consumed(&samples)?;
                t.state.step += 1;
                if needs_params_after(&t.config, t.state.step) {
                    t.state.params = node.params()?;
                }
                let tokens = t.config.tokens_per_step();
                t.tokens_seen += tokens;
                let out = &outs[0];
                Ok(StepStats {
                    step: t.state.step,
                    loss: out.loss,
                    lr: hp.lr,
                    grad_norm: out.grad_norm,
                    tokens,
                    seconds: start.elapsed().as_secs_f64(),
                })
            },
            // Every rank writes its own shard and rank 0 commits the checkpoint; ranks
            // without a shared file system send rank 0 the moments instead.
            &mut |t, store| {
                let staging = store.staging_dir(t.state.step);
                if node.save_shards(&staging)? {
                    return store.commit_sharded(&t.checkpoint(), node.world());
                }
                remove_staging(&staging)?;
                let (m, v) = node.gather_moments()?;
                let mut ckpt = t.checkpoint();
                (ckpt.adam_m, ckpt.adam_v) = (m, v);
                store.save(&ckpt)
            },
        )
    }

    /// Takes this process's part in the steps of a ring whose rank 0 is elsewhere:
    /// the steps, and the parameter and moment gathers of rank 0's evaluations and
    /// checkpoints.
    pub(super) fn follow(&mut self, comm: Communicator) -> Result<RunSummary> {
        let start = Instant::now();
        let node = self.start_node(vec![comm])?;
        self.state.params = Vec::new();
        let (first, max, every) = (
            self.state.step,
            self.config.max_steps,
            self.config.checkpoint_every,
        );
        let store = CheckpointStore::new(&self.config.out_dir, self.config.keep_checkpoints);
        for step in first..max {
            node.step(step, self.hyper(step))?;
            if step == first {
                rank_memory(&node)?;
            }
            let s = step + 1;
            if needs_params_after(&self.config, s) {
                node.params()?;
            }
            if (every > 0 && s.is_multiple_of(every)) || s == max {
                let staging = store.staging_dir(s);
                if !node.save_shards(&staging)? {
                    remove_staging(&staging)?;
                    node.gather_moments()?;
                }
            }
        }
        self.state.step = max.max(first);
        Ok(RunSummary {
            step: self.state.step,
            last_step: None,
            last_eval: None,
            checkpoint: None,
            metrics: self.config.out_dir.join("metrics.jsonl"),
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}
