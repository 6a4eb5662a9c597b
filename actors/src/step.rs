//! One optimizer step on flat buffers: accumulate gradients over micro-batches, clip by
//! the global norm, update with AdamW.
//!
//! This is the whole training step of one process, separate from where the batches
//! come from, so the [`crate::Trainer`] and `shoal bench train` run the same code.

use shoal_kernels::{AdamW, DecaySpan};
use shoal_models::Gpt;

use crate::replicas::Replicas;

use crate::error::{Result, TrainError};

/// Parameters, gradients and AdamW moments, all in the model's flat layout.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    /// Flat parameters.
    pub params: Vec<f32>,
    /// Gradient buffer (zeroed at the start of each step).
    pub grads: Vec<f32>,
    /// AdamW first moments.
    pub adam_m: Vec<f32>,
    /// AdamW second moments.
    pub adam_v: Vec<f32>,
    /// Optimizer steps completed.
    pub step: u64,
}

impl TrainState {
    /// State for fresh parameters: zero gradients and moments, step 0.
    pub fn new(params: Vec<f32>) -> Self {
        let n = params.len();
        Self {
            params,
            grads: vec![0.0; n],
            adam_m: vec![0.0; n],
            adam_v: vec![0.0; n],
            step: 0,
        }
    }
}

impl TrainState {
    /// State whose optimizer moments live elsewhere (a ZeRO rank's
    /// [`crate::ZeroShard`]): the moment buffers stay empty.
    pub fn without_moments(params: Vec<f32>) -> Self {
        let n = params.len();
        Self {
            params,
            grads: vec![0.0; n],
            adam_m: Vec::new(),
            adam_v: Vec::new(),
            step: 0,
        }
    }
}

/// The hyper-parameters of one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepHyper {
    /// Learning rate of this step's update.
    pub lr: f32,
    /// AdamW first-moment decay.
    pub beta1: f32,
    /// AdamW second-moment decay.
    pub beta2: f32,
    /// AdamW epsilon.
    pub eps: f32,
    /// Decoupled weight decay (applied where the decay spans say).
    pub weight_decay: f32,
    /// Maximum global gradient norm; 0 turns clipping off.
    pub grad_clip: f32,
    /// Micro-batches per step; each backward is scaled by `1 / grad_accum`.
    pub grad_accum: usize,
    /// AdamW steps already folded into the moments before this run (moments kept
    /// from a continual run's `init`): AdamW's bias correction counts them, so kept
    /// moments are not scaled up as if they were new. 0 otherwise.
    pub moment_steps: u64,
}

impl StepHyper {
    /// The AdamW settings of this step.
    pub fn adamw(&self) -> AdamW {
        AdamW {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }
}

/// What one step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    /// Mean training loss over the micro-batches.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Seconds spent after the last backward: norm, clipping and the AdamW update.
    pub optimizer_seconds: f64,
}

/// Runs one optimizer step: for each micro-batch `fill(micro, tokens, targets)` writes the
/// `[B, T]` inputs (B and T from `compute`), then forward and backward on the compute
/// replicas; then the replicas' gradients are summed, and the global gradient norm,
/// clipping and AdamW run on all compute threads.
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    model: &Gpt,
    state: &mut TrainState,
    compute: &mut Replicas,
    spans: &[DecaySpan],
    hp: &StepHyper,
    tokens: &mut [u32],
    targets: &mut [u32],
    mut fill: impl FnMut(usize, &mut [u32], &mut [u32]) -> Result<()>,
) -> Result<StepOutcome> {
    let accum = hp.grad_accum.max(1);
    state.grads.fill(0.0);
    let mut loss_sum = 0.0f64;
    for micro in 0..accum {
        fill(micro, tokens, targets)?;
        let loss = compute.forward_backward(
            model,
            &state.params,
            &mut state.grads,
            tokens,
            targets,
            1.0 / accum as f32,
        )?;
        if !loss.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                step: state.step + 1,
                loss,
            });
        }
        loss_sum += f64::from(loss);
    }
    let optimizer_start = std::time::Instant::now();
    compute.reduce_into(&mut state.grads);
    compute
        .install(|| optimizer_update(state, spans, hp))
        .map(|grad_norm| StepOutcome {
            loss: (loss_sum / accum as f64) as f32,
            grad_norm,
            optimizer_seconds: optimizer_start.elapsed().as_secs_f64(),
        })
}

/// Global gradient norm, clipping and the AdamW update; returns the norm before clipping.
pub(crate) fn optimizer_update(
    state: &mut TrainState,
    spans: &[DecaySpan],
    hp: &StepHyper,
) -> Result<f32> {
    let grad_norm = shoal_kernels::sum_of_squares(&state.grads).sqrt() as f32;
    if hp.grad_clip > 0.0 {
        let coef = shoal_kernels::clip_coefficient(grad_norm, hp.grad_clip);
        if coef < 1.0 {
            shoal_kernels::scale_inplace(&mut state.grads, coef);
        }
    }
    state.step += 1;
    shoal_kernels::adamw_update(
        &mut state.params,
        &state.grads,
        &mut state.adam_m,
        &mut state.adam_v,
        &hp.adamw(),
        state.step + hp.moment_steps,
        spans,
    );
    Ok(grad_norm)
}
