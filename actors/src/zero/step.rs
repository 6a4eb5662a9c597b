//! One rank's ZeRO step: the micro-batches' forward and backward with their gradient
//! reductions, the global norm, clipping, AdamW on the rank's pieces and the
//! parameter all-gather.

use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shoal_collectives::{Communicator, Pending, ReduceOp, shard_range};
use shoal_kernels::DecaySpan;
use shoal_models::{Gpt, Whole};

use super::parts::{Gathered, Scattered, lift, offsets};
use super::{ZeroOutcome, ZeroShard, ZeroStage, spans_within};
use crate::error::{Result, TrainError};
use crate::replicas::Replicas;
use crate::step::{StepHyper, TrainState};

/// Launches bucket all-reductions (stages 0 and 1) as backward finishes them, and
/// collects them.
struct Reducer<'a> {
    comm: &'a mut Communicator,
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
        self.pending
            .push(self.comm.all_reduce_async(buf, ReduceOp::Sum));
        self.next += 1;
    }

    /// Launches the buckets backward did not report (all of them when this rank had
    /// no rows or several replicas), then waits for every reduction in order and
    /// writes the reduced buckets back.
    fn finish(mut self, grads: &mut [f32]) -> Result<()> {
        while let Some(bucket) = self.buckets.get(self.next) {
            let buf = grads[bucket.clone()].to_vec();
            self.launch(buf);
        }
        for (pending, bucket) in self.pending.into_iter().zip(self.buckets) {
            grads[bucket.clone()].copy_from_slice(&pending.wait()?);
        }
        Ok(())
    }
}

/// This rank's rows of one micro-batch: global sample indices `first + row`.
struct Rows<'f, F> {
    fill: &'f mut F,
    rows: Range<usize>,
    tokens: Vec<u32>,
    targets: Vec<u32>,
    t: usize,
}

impl<F: FnMut(u64, &mut [u32], &mut [u32]) -> Result<()>> Rows<'_, F> {
    fn load(&mut self, first: u64) -> Result<()> {
        if self.rows.is_empty() {
            // A rank without rows computes on a placeholder row with weight zero.
            return Ok(());
        }
        let rows = self
            .tokens
            .chunks_mut(self.t)
            .zip(self.targets.chunks_mut(self.t));
        for (i, (x, y)) in rows.enumerate() {
            (self.fill)(first + (self.rows.start + i) as u64, x, y)?;
        }
        Ok(())
    }
}

fn check_finite(loss: f32, step: u64) -> Result<f32> {
    if loss.is_finite() {
        Ok(loss)
    } else {
        Err(TrainError::NonFiniteLoss { step, loss })
    }
}

/// Runs one step on rank `comm.rank()`. `compute` is sized for this rank's rows
/// (`shard_range(batch, world, rank)`); at stages 2 and 3 it has one model replica,
/// and a rank with no rows still computes, on one placeholder row weighted zero, so
/// that its collectives come in the same order as everyone's. `fill(index, tokens,
/// targets)` writes the `[T]` row of global sample `index`.
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
    let rows = shard_range(batch, comm.world(), comm.rank());
    let (t, b) = compute
        .as_ref()
        .map_or((0, 0), |c| (c.seq_len(), c.batch()));
    if b != rows.len().max(usize::from(shard.stage.shards_gradients())) && compute.is_some() {
        return Err(TrainError::InvalidConfig {
            field: "batch_size",
            reason: format!(
                "rank {} computes on {} rows of the batch but was given compute for {b}",
                comm.rank(),
                rows.len()
            ),
        });
    }
    let mut rows = Rows {
        fill: &mut fill,
        tokens: vec![0; b * t],
        targets: vec![0; b * t],
        rows,
        t,
    };
    let (mut loss_sum, exposed) = if shard.stage.shards_gradients() {
        let compute = compute.ok_or_else(|| TrainError::InvalidConfig {
            field: "batch_size",
            reason: "at ZeRO stages 2 and 3 every rank computes (on one placeholder row \
                     when it has none of the batch)"
                .into(),
        })?;
        sharded_backward(comm, model, state, shard, compute, hp, batch, &mut rows)?
    } else {
        replicated_backward(comm, model, state, shard, compute, hp, batch, &mut rows)?
    };
    let optimizer_start = Instant::now();
    let grad_norm = global_norm_and_loss(comm, state, shard, &mut loss_sum)?;
    let offsets = offsets(&shard.pieces);
    if hp.grad_clip > 0.0 {
        let coef = shoal_kernels::clip_coefficient(grad_norm, hp.grad_clip);
        if coef < 1.0 {
            if shard.stage.shards_gradients() {
                shoal_kernels::scale_inplace(&mut shard.grads, coef);
            } else {
                for piece in &shard.pieces {
                    shoal_kernels::scale_inplace(&mut state.grads[piece.clone()], coef);
                }
            }
        }
    }
    state.step += 1;
    for (piece, &at) in shard.pieces.iter().zip(&offsets) {
        let own = at..at + piece.len();
        let params = if shard.stage.shards_parameters() {
            &mut shard.params[own.clone()]
        } else {
            &mut state.params[piece.clone()]
        };
        let grads = if shard.stage.shards_gradients() {
            &shard.grads[own.clone()]
        } else {
            &state.grads[piece.clone()]
        };
        shoal_kernels::adamw_update(
            params,
            grads,
            &mut shard.adam_m[own.clone()],
            &mut shard.adam_v[own],
            &hp.adamw(),
            state.step,
            &spans_within(spans, piece),
        );
    }
    if matches!(
        shard.stage,
        ZeroStage::OptimizerSharded | ZeroStage::GradientsSharded
    ) {
        for bucket in &shard.buckets {
            comm.all_gather(&mut state.params[bucket.clone()])?;
        }
    }
    Ok(ZeroOutcome {
        loss: loss_sum as f32 / hp.grad_accum.max(1) as f32,
        grad_norm,
        exposed_comm_seconds: exposed.as_secs_f64(),
        optimizer_seconds: optimizer_start.elapsed().as_secs_f64(),
    })
}

/// Stages 0 and 1: gradients accumulate in the full buffer; the last micro-batch's
/// backward launches the bucket all-reductions. Returns this rank's share of the
/// loss sum and the time spent waiting for the reductions.
#[allow(clippy::too_many_arguments)]
fn replicated_backward<F: FnMut(u64, &mut [u32], &mut [u32]) -> Result<()>>(
    comm: &mut Communicator,
    model: &Gpt,
    state: &mut TrainState,
    shard: &mut ZeroShard,
    compute: Option<&mut Replicas>,
    hp: &StepHyper,
    batch: usize,
    rows: &mut Rows<'_, F>,
) -> Result<(f64, Duration)> {
    let accum = hp.grad_accum.max(1);
    state.grads.fill(0.0);
    let mut loss_sum = 0.0f64;
    let mut reducer = Reducer {
        comm,
        buckets: &shard.buckets,
        staging: Vec::new(),
        next: 0,
        pending: Vec::new(),
    };
    if let Some(compute) = compute {
        // This rank's share of the global mean loss.
        let weight = rows.rows.len() as f32 / batch as f32;
        let scale = weight / accum as f32;
        for micro in 0..accum {
            rows.load(state.step * (batch * accum) as u64 + (micro * batch) as u64)?;
            let (params, grads) = (&state.params, &mut state.grads);
            let (x, y) = (&rows.tokens, &rows.targets);
            let loss = if micro + 1 == accum && compute.replicas() == 1 {
                let mut hook = |range: Range<usize>, g: &[f32]| reducer.ready(range, g);
                compute.forward_backward_hooked(model, params, grads, x, y, scale, &mut hook)?
            } else {
                compute.forward_backward(model, params, grads, x, y, scale)?
            };
            loss_sum += f64::from(check_finite(loss, state.step + 1)? * weight);
        }
        compute.reduce_into(&mut state.grads);
    }
    let waiting = Instant::now();
    reducer.finish(&mut state.grads)?;
    shard.peak_buffer_elems = shard.buckets.iter().map(Range::len).max().unwrap_or(0);
    Ok((loss_sum, waiting.elapsed()))
}

/// Stages 2 and 3: every micro-batch's buckets are reduce-scattered as backward
/// finishes them and this rank's pieces accumulated in `shard.grads`; at stage 3 the
/// parameters come part by part from all-gathers. Returns this rank's share of the
/// loss sum and the time spent waiting for collectives.
#[allow(clippy::too_many_arguments)]
fn sharded_backward<F: FnMut(u64, &mut [u32], &mut [u32]) -> Result<()>>(
    comm: &mut Communicator,
    model: &Gpt,
    state: &mut TrainState,
    shard: &mut ZeroShard,
    compute: &mut Replicas,
    hp: &StepHyper,
    batch: usize,
    rows: &mut Rows<'_, F>,
) -> Result<(f64, Duration)> {
    let accum = hp.grad_accum.max(1);
    let weight = rows.rows.len() as f32 / batch as f32;
    let scale = weight / accum as f32;
    let offsets = offsets(&shard.pieces);
    shard.grads.fill(0.0);
    let (mut loss_sum, mut exposed, mut peak) = (0.0f64, Duration::ZERO, 0);
    for micro in 0..accum {
        rows.load(state.step * (batch * accum) as u64 + (micro * batch) as u64)?;
        let (x, y) = (&rows.tokens, &rows.targets);
        let cell = Mutex::new(&mut *comm);
        let mut sink = Scattered::new(model, &cell, &shard.buckets)?;
        let (loss, gathered) = if shard.stage.shards_parameters() {
            let mut src = Gathered::new(
                model,
                &cell,
                &shard.buckets,
                &shard.pieces,
                &offsets,
                &shard.params,
            )?;
            let loss = compute.forward_backward_parts(model, &mut src, &mut sink, x, y, scale);
            exposed += src.waited;
            let held = src.peak_elems;
            src.finish()?;
            (loss, held)
        } else {
            let mut src = Whole::new(model, &state.params)?;
            let loss = compute.forward_backward_parts(model, &mut src, &mut sink, x, y, scale);
            (loss, 0)
        };
        let loss = loss.map_err(|e| match e {
            TrainError::Model(m) => lift(m),
            other => other,
        })?;
        peak = peak.max(gathered + sink.peak_elems);
        let waiting = Instant::now();
        sink.finish(&shard.pieces, &offsets, &mut shard.grads)?;
        exposed += waiting.elapsed();
        loss_sum += f64::from(check_finite(loss, state.step + 1)? * weight);
    }
    shard.peak_buffer_elems = peak;
    Ok((loss_sum, exposed))
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
    let norm = if shard.stage.shards_gradients() {
        // Each rank holds only its pieces: sum their squares over all ranks.
        scalars[1] = shoal_kernels::sum_of_squares(&shard.grads) as f32;
        comm.all_reduce(&mut scalars, ReduceOp::Sum)?;
        scalars[1].sqrt()
    } else {
        comm.all_reduce(&mut scalars[..1], ReduceOp::Sum)?;
        shoal_kernels::sum_of_squares(&state.grads).sqrt() as f32
    };
    *loss_sum = f64::from(scalars[0]);
    Ok(norm)
}
