//! ZeRO data parallelism over the ring collectives: one rank's share of a training
//! step, for stages 0, 1 and 2 (Rajbhandari et al. 2020).
//!
//! Every rank holds the full parameters and computes on its rows of every
//! micro-batch (`shard_range(B, W, rank)` of the B rows, so any batch works on any
//! world size); the global batch, the data order (global sample index
//! `step·B·A + micro·B + row`) and the loss are those of the single-rank trainer.
//! - stage 0 (DDP): gradients all-reduced, every rank updates everything;
//! - stage 1: gradients all-reduced, AdamW moments sharded: each rank updates its
//!   range of the flat buffer, then the parameters are all-gathered;
//! - stage 2: gradients reduce-scattered, so each rank only gets its range summed.
//!
//! Clipping uses the global gradient norm (one scalar all-reduce at stage 2).
//!
//! Not yet here (issue #4 goes on): the gradient buffer is still full size at
//! stage 2 (backward writes the whole layout; reducing per-layer buckets while
//! backward goes on is what frees it), stage 3, the actors that own these pieces,
//! and multi-process runs from the CLI.

use std::ops::Range;

use shoal_collectives::{Communicator, ReduceOp, shard_range};
use shoal_kernels::DecaySpan;
use shoal_models::Gpt;

use crate::error::{Result, TrainError};
use crate::replicas::Replicas;
use crate::step::{StepHyper, StepOutcome};

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

/// One rank's training state under a ZeRO stage.
#[derive(Clone, Debug, PartialEq)]
pub struct ZeroState {
    /// The stage.
    pub stage: ZeroStage,
    /// Full parameters.
    pub params: Vec<f32>,
    /// Gradient buffer in the full layout.
    pub grads: Vec<f32>,
    /// The range of the flat buffer this rank updates.
    pub shard: Range<usize>,
    /// AdamW first moments of `shard`.
    pub adam_m: Vec<f32>,
    /// AdamW second moments of `shard`.
    pub adam_v: Vec<f32>,
    /// Optimizer steps completed.
    pub step: u64,
}

impl ZeroState {
    /// Fresh state for rank `rank` of `world`: zero gradients and moments.
    pub fn new(params: Vec<f32>, stage: ZeroStage, rank: usize, world: usize) -> Self {
        let n = params.len();
        let shard = match stage {
            ZeroStage::Replicated => 0..n,
            _ => shard_range(n, world, rank),
        };
        Self {
            stage,
            grads: vec![0.0; n],
            adam_m: vec![0.0; shard.len()],
            adam_v: vec![0.0; shard.len()],
            params,
            shard,
            step: 0,
        }
    }

    /// Bytes held for parameters, gradients and moments.
    pub fn memory(&self) -> MemoryReport {
        let f = std::mem::size_of::<f32>();
        MemoryReport {
            params: self.params.len() * f,
            grads: self.grads.len() * f,
            optimizer: (self.adam_m.len() + self.adam_v.len()) * f,
        }
    }
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

/// Runs one step on rank `comm.rank()`. `compute` is sized for this rank's rows
/// (`shard_range(batch, world, rank)`, possibly none); `fill(index, tokens, targets)`
/// writes the `[T]` row of global sample `index`.
#[allow(clippy::too_many_arguments)]
pub fn zero_step(
    comm: &mut Communicator,
    model: &Gpt,
    state: &mut ZeroState,
    compute: Option<&mut Replicas>,
    spans: &[DecaySpan],
    hp: &StepHyper,
    batch: usize,
    mut fill: impl FnMut(u64, &mut [u32], &mut [u32]) -> Result<()>,
) -> Result<StepOutcome> {
    let accum = hp.grad_accum.max(1);
    let rows = shard_range(batch, comm.world(), comm.rank());
    state.grads.fill(0.0);
    let mut loss_sum = 0.0f64;
    if let Some(compute) = compute {
        let t = compute.seq_len();
        let mut tokens = vec![0u32; rows.len() * t];
        let mut targets = vec![0u32; rows.len() * t];
        // This rank's share of the global mean loss.
        let weight = rows.len() as f32 / batch as f32;
        for micro in 0..accum {
            let first = state.step * (batch * accum) as u64 + (micro * batch) as u64;
            for (i, (x, y)) in tokens.chunks_mut(t).zip(targets.chunks_mut(t)).enumerate() {
                fill(first + (rows.start + i) as u64, x, y)?;
            }
            let loss = compute.forward_backward(
                model,
                &state.params,
                &mut state.grads,
                &tokens,
                &targets,
                weight / accum as f32,
            )?;
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
    let optimizer_start = std::time::Instant::now();
    let mut scalars = [loss_sum as f32, 0.0];
    let shard = state.shard.clone();
    let grad_norm = match state.stage {
        ZeroStage::Replicated | ZeroStage::OptimizerSharded => {
            comm.all_reduce(&mut state.grads, ReduceOp::Sum)?;
            comm.all_reduce(&mut scalars[..1], ReduceOp::Sum)?;
            shoal_kernels::sum_of_squares(&state.grads).sqrt() as f32
        }
        ZeroStage::GradientsSharded => {
            comm.reduce_scatter(&mut state.grads, ReduceOp::Sum)?;
            scalars[1] = shoal_kernels::sum_of_squares(&state.grads[shard.clone()]) as f32;
            comm.all_reduce(&mut scalars, ReduceOp::Sum)?;
            scalars[1].sqrt()
        }
    };
    if hp.grad_clip > 0.0 {
        let coef = shoal_kernels::clip_coefficient(grad_norm, hp.grad_clip);
        if coef < 1.0 {
            shoal_kernels::scale_inplace(&mut state.grads[shard.clone()], coef);
        }
    }
    state.step += 1;
    shoal_kernels::adamw_update(
        &mut state.params[shard.clone()],
        &state.grads[shard.clone()],
        &mut state.adam_m,
        &mut state.adam_v,
        &hp.adamw(),
        state.step,
        &spans_within(spans, &shard),
    );
    if state.stage != ZeroStage::Replicated {
        comm.all_gather(&mut state.params)?;
    }
    Ok(StepOutcome {
        loss: scalars[0] / accum as f32,
        grad_norm,
        optimizer_seconds: optimizer_start.elapsed().as_secs_f64(),
    })
}
