//! ZeRO data parallelism over the ring collectives: one rank's share of a training
//! step, for stages 0, 1 and 2 (Rajbhandari et al. 2020).
//!
//! Every rank holds the full parameters and computes on its rows of every
//! micro-batch (`shard_range(B, W, rank)` of the B rows, so any batch works on any
//! world size); the global batch, the data order (global sample index
//! `step·B·A + micro·B + row`) and the loss are those of the single-rank trainer.
//!
//! Gradients are reduced in buckets: contiguous ranges of the flat buffer cut at
//! the model's backward boundaries ([`buckets`]). On the last micro-batch each
//! bucket's reduction starts as soon as backward has finished it, while backward
//! goes on with the layers below. Each bucket is split over the ranks with
//! `shard_range`; a rank's *pieces* (one per bucket) are what it owns at stages ≥ 1.
//! - stage 0 (DDP): buckets all-reduced; every rank updates everything;
//! - stage 1: buckets all-reduced; AdamW moments only for the rank's pieces; each
//!   rank updates its pieces, then every bucket's parameters are all-gathered;
//! - stage 2: buckets reduce-scattered, so a rank only receives its pieces summed.
//!
//! Clipping uses the global gradient norm (at stage 2 one scalar all-reduce, which
//! also carries the loss).
//!
//! Not yet here (issue #4 goes on): the gradient buffer is still full size at
//! stage 2 (backward writes the whole layout), stage 3, the actors that own these
//! pieces, and multi-process runs from the CLI.

use std::ops::Range;
use std::time::Instant;

use shoal_collectives::{Communicator, Pending, ReduceOp, shard_range};
use shoal_kernels::DecaySpan;
use shoal_models::Gpt;

use crate::error::{Result, TrainError};
use crate::replicas::Replicas;
use crate::step::{StepHyper, TrainState};

/// How much of the training state each rank keeps whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZeroStage {
    /// Everything replicated; gradients all-reduced (DDP).
    Replicated,
    /// Optimizer moments sharded.
    OptimizerSharded,
    /// Optimizer moments and the reduced gradients sharded.
    GradientsSharded,
}

impl ZeroStage {
    /// The stage with ZeRO's number.
    pub fn from_number(stage: u8) -> Result<Self> {
        match stage {
            0 => Ok(Self::Replicated),
            1 => Ok(Self::OptimizerSharded),
            2 => Ok(Self::GradientsSharded),
            3 => Err(TrainError::InvalidConfig {
                field: "zero",
                reason: "stage 3 (sharded parameters) is not implemented yet".into(),
            }),
            other => Err(TrainError::InvalidConfig {
                field: "zero",
                reason: format!("{other} is not a ZeRO stage (0, 1, 2 or 3)"),
            }),
        }
    }
}

/// Gradient buckets of `model`: its backward ranges (last layer first) merged into
/// runs of at least `bucket_elems` elements (the last bucket may be shorter).
pub fn buckets(model: &Gpt, bucket_elems: usize) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut open: Option<Range<usize>> = None;
    for r in model.layout.backward_ranges() {
        let merged = match open.take() {
            // Backward goes from the end of the buffer to its start.
            Some(o) => r.start..o.end,
            None => r,
        };
        if merged.len() >= bucket_elems {
            out.push(merged);
        } else {
            open = Some(merged);
        }
    }
    out.extend(open);
    out
}

/// Bytes one rank holds for each part of the training state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryReport {
    /// Parameters.
    pub params: usize,
    /// Gradients.
    pub grads: usize,
    /// AdamW moments.
    pub optimizer: usize,
}

/// What one rank owns of the optimizer under a ZeRO stage: the gradient buckets,
/// its piece of each, and the AdamW moments of those pieces. Parameters and the
/// gradient buffer stay in the rank's [`TrainState`] (whose own moment buffers are
/// left empty).
#[derive(Clone, Debug, PartialEq)]
pub struct ZeroShard {
    /// The stage.
    pub stage: ZeroStage,
    /// Gradient buckets, in the order they are reduced.
    pub buckets: Vec<Range<usize>>,
    /// The ranges this rank updates: one piece of every bucket (the whole bucket at
    /// stage 0).
    pub pieces: Vec<Range<usize>>,
    /// AdamW first moments of the pieces, one after the other.
    pub adam_m: Vec<f32>,
    /// AdamW second moments of the pieces.
    pub adam_v: Vec<f32>,
}

impl ZeroShard {
    /// Zero moments for rank `rank` of `world`.
    pub fn new(stage: ZeroStage, buckets: Vec<Range<usize>>, rank: usize, world: usize) -> Self {
        let pieces: Vec<Range<usize>> = buckets
            .iter()
            .map(|b| match stage {
                ZeroStage::Replicated => b.clone(),
                _ => {
                    let p = shard_range(b.len(), world, rank);
                    b.start + p.start..b.start + p.end
                }
            })
            .collect();
        let owned: usize = pieces.iter().map(Range::len).sum();
        Self {
            stage,
            buckets,
            pieces,
            adam_m: vec![0.0; owned],
            adam_v: vec![0.0; owned],
        }
    }

    /// Takes this rank's pieces of full-layout moments (from a checkpoint written at
    /// any world size).
    pub fn load_moments(&mut self, full_m: &[f32], full_v: &[f32]) {
        let mut at = 0;
        for piece in &self.pieces {
            let own = at..at + piece.len();
            self.adam_m[own.clone()].copy_from_slice(&full_m[piece.clone()]);
            self.adam_v[own].copy_from_slice(&full_v[piece.clone()]);
            at += piece.len();
        }
    }

    /// The full-layout moments, gathered from every rank (a collective: every rank
    /// calls it at the same point).
    pub fn gather_moments(
        &self,
        comm: &mut Communicator,
        len: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut full = [vec![0.0f32; len], vec![0.0f32; len]];
        for (own, out) in [&self.adam_m, &self.adam_v]
            .into_iter()
            .zip(full.iter_mut())
        {
            let mut at = 0;
            for piece in &self.pieces {
                out[piece.clone()].copy_from_slice(&own[at..at + piece.len()]);
                at += piece.len();
            }
            if self.stage != ZeroStage::Replicated {
                for bucket in &self.buckets {
                    comm.all_gather(&mut out[bucket.clone()])?;
                }
            }
        }
        let [m, v] = full;
        Ok((m, v))
    }

    /// Bytes held for parameters, gradients and moments with `state`.
    pub fn memory(&self, state: &TrainState) -> MemoryReport {
        let f = std::mem::size_of::<f32>();
        MemoryReport {
            params: state.params.len() * f,
            grads: state.grads.len() * f,
            optimizer: (self.adam_m.len() + self.adam_v.len()) * f,
        }
    }
}

impl MemoryReport {
    /// What one rank of `world` holds for `psi` fp32 parameters at `stage` (up to the
    /// one-element differences between ranks' pieces): parameters and the gradient
    /// buffer whole, AdamW moments for the rank's share.
    pub fn per_rank(stage: ZeroStage, psi: usize, world: usize) -> Self {
        let f = std::mem::size_of::<f32>();
        let moments = match stage {
            ZeroStage::Replicated => 2 * psi,
            _ => 2 * psi.div_ceil(world.max(1)),
        };
        Self {
            params: psi * f,
            grads: psi * f,
            optimizer: moments * f,
        }
    }

    /// Total bytes.
    pub fn total(&self) -> usize {
        self.params + self.grads + self.optimizer
    }
}

/// What one rank's step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ZeroOutcome {
    /// Mean training loss of the global batch.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Time spent waiting for gradient reductions after backward: the part of the
    /// communication that was not hidden behind it.
    pub exposed_comm_seconds: f64,
    /// Seconds from the end of the reductions to the end of the step: norm,
    /// clipping, AdamW and the parameter all-gather.
    pub optimizer_seconds: f64,
}

/// The decay spans of `spans` that fall in `range`, relative to its start.
pub fn spans_within(spans: &[DecaySpan], range: &Range<usize>) -> Vec<DecaySpan> {
    spans
        .iter()
        .filter_map(|s| {
            let (start, end) = (s.start.max(range.start), s.end.min(range.end));
            (start < end).then(|| DecaySpan {
                start: start - range.start,
                end: end - range.start,
                decay: s.decay,
            })
        })
        .collect()
}

/// Launches bucket reductions as backward finishes them, and collects them.
struct Reducer<'a> {
    comm: &'a mut Communicator,
    state_stage: ZeroStage,
    buckets: &'a [Range<usize>],
    /// Staging buffer of the bucket being filled and the next bucket to launch.
    staging: Vec<f32>,
    next: usize,
    pending: Vec<Pending<Vec<f32>>>,
}

impl Reducer<'_> {
    /// Backward finished `range` (ranges arrive last to first): stage it, and launch
    /// the current bucket once its first element is final.
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
        let pending = match self.state_stage {
            ZeroStage::GradientsSharded => self.comm.reduce_scatter_async(buf, ReduceOp::Sum),
            _ => self.comm.all_reduce_async(buf, ReduceOp::Sum),
        };
        self.pending.push(pending);
        self.next += 1;
    }

    /// Launches the buckets backward did not report (all of them when this rank had
    /// no rows or several replicas), then waits for every reduction in order and
    /// writes the reduced values back: whole buckets, or this rank's pieces.
    fn finish(mut self, grads: &mut [f32], pieces: &[Range<usize>]) -> Result<()> {
        while let Some(bucket) = self.buckets.get(self.next) {
            let buf = grads[bucket.clone()].to_vec();
            self.launch(buf);
        }
        for (i, pending) in self.pending.into_iter().enumerate() {
            let reduced = pending.wait()?;
            let bucket = &self.buckets[i];
            // An all-reduce brings the whole bucket; a reduce-scatter only the piece.
            let keep = match self.state_stage {
                ZeroStage::GradientsSharded => pieces[i].clone(),
                _ => bucket.clone(),
            };
            let at = keep.start - bucket.start;
            grads[keep.clone()].copy_from_slice(&reduced[at..at + keep.len()]);
        }
        Ok(())
    }
}

/// Runs one step on rank `comm.rank()`. `compute` is sized for this rank's rows
/// (`shard_range(batch, world, rank)`, possibly none); `fill(index, tokens, targets)`
/// writes the `[T]` row of global sample `index`.
#[allow(clippy::too_many_arguments)]
pub fn zero_step(
    comm: &mut Communicator,
    model: &Gpt,
    state: &mut TrainState,
    shard: &mut ZeroShard,
    compute: Option<&mut Replicas>,
    spans: &[DecaySpan],
    hp: &StepHyper,
    batch: usize,
    mut fill: impl FnMut(u64, &mut [u32], &mut [u32]) -> Result<()>,
) -> Result<ZeroOutcome> {
    let accum = hp.grad_accum.max(1);
    let rows = shard_range(batch, comm.world(), comm.rank());
    state.grads.fill(0.0);
    let mut loss_sum = 0.0f64;
    let mut reducer = Reducer {
        comm,
        state_stage: shard.stage,
        buckets: &shard.buckets,
        staging: Vec::new(),
        next: 0,
        pending: Vec::new(),
    };
    if let Some(compute) = compute {
        let t = compute.seq_len();
        let mut tokens = vec![0u32; rows.len() * t];
        let mut targets = vec![0u32; rows.len() * t];
        // This rank's share of the global mean loss.
        let weight = rows.len() as f32 / batch as f32;
        let scale = weight / accum as f32;
        for micro in 0..accum {
            let first = state.step * (batch * accum) as u64 + (micro * batch) as u64;
            for (i, (x, y)) in tokens.chunks_mut(t).zip(targets.chunks_mut(t)).enumerate() {
                fill(first + (rows.start + i) as u64, x, y)?;
            }
            let (params, grads) = (&state.params, &mut state.grads);
            let loss = if micro + 1 == accum && compute.replicas() == 1 {
                let mut hook = |range: Range<usize>, g: &[f32]| reducer.ready(range, g);
                compute.forward_backward_hooked(
                    model, params, grads, &tokens, &targets, scale, &mut hook,
                )?
            } else {
                compute.forward_backward(model, params, grads, &tokens, &targets, scale)?
            };
            if !loss.is_finite() {
                return Err(TrainError::NonFiniteLoss {
                    step: state.step + 1,
                    loss,
                });
            }
            loss_sum += f64::from(loss * weight);
        }
        compute.reduce_into(&mut state.grads);
    }
    let waiting = Instant::now();
    reducer.finish(&mut state.grads, &shard.pieces)?;
    let exposed = waiting.elapsed();
    let optimizer_start = Instant::now();
    let grad_norm = global_norm_and_loss(comm, state, shard, &mut loss_sum)?;
    if hp.grad_clip > 0.0 {
        let coef = shoal_kernels::clip_coefficient(grad_norm, hp.grad_clip);
        if coef < 1.0 {
            for piece in &shard.pieces {
                shoal_kernels::scale_inplace(&mut state.grads[piece.clone()], coef);
            }
        }
    }
    state.step += 1;
    let mut at = 0;
    for piece in &shard.pieces {
        let moments = at..at + piece.len();
        shoal_kernels::adamw_update(
            &mut state.params[piece.clone()],
            &state.grads[piece.clone()],
            &mut shard.adam_m[moments.clone()],
            &mut shard.adam_v[moments],
            &hp.adamw(),
            state.step,
            &spans_within(spans, piece),
        );
        at += piece.len();
    }
    if shard.stage != ZeroStage::Replicated {
        for bucket in &shard.buckets {
            comm.all_gather(&mut state.params[bucket.clone()])?;
        }
    }
    Ok(ZeroOutcome {
        loss: loss_sum as f32 / accum as f32,
        grad_norm,
        exposed_comm_seconds: exposed.as_secs_f64(),
        optimizer_seconds: optimizer_start.elapsed().as_secs_f64(),
    })
}

/// The global gradient norm (every rank gets the same value), and the global loss sum
/// in `loss_sum`.
fn global_norm_and_loss(
    comm: &mut Communicator,
    state: &TrainState,
    shard: &ZeroShard,
    loss_sum: &mut f64,
) -> Result<f32> {
    let mut scalars = [*loss_sum as f32, 0.0];
    let norm = if shard.stage == ZeroStage::GradientsSharded {
        // Only the own pieces are reduced here: sum their squares over all ranks.
        scalars[1] = shard
            .pieces
            .iter()
            .map(|p| shoal_kernels::sum_of_squares(&state.grads[p.clone()]))
            .sum::<f64>() as f32;
        comm.all_reduce(&mut scalars, ReduceOp::Sum)?;
        scalars[1].sqrt()
    } else {
        comm.all_reduce(&mut scalars[..1], ReduceOp::Sum)?;
        shoal_kernels::sum_of_squares(&state.grads).sqrt() as f32
    };
    *loss_sum = f64::from(scalars[0]);
    Ok(norm)
}
