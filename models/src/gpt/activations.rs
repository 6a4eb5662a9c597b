//! The buffers of one forward pass that backward reads, laid out by a
//! [`RecomputePlan`]: a layer keeps its own buffer for each tensor its policy keeps
//! and uses the shared recompute buffer for each tensor it drops.

use super::recompute::{Dims, Saved};
use crate::{ActivationBytes, GptConfig, ModelError, Recompute, RecomputePlan};

/// The tensors of one layer's forward that backward reads, its output aside; a
/// buffer that is empty is not held here (see [`LayerActs::views`]).
#[derive(Default)]
pub(crate) struct LayerActs {
    pub ln1: Vec<f32>,       // [N, C]
    pub ln1_mean: Vec<f32>,  // [N]
    pub ln1_rstd: Vec<f32>,  // [N]
    pub qkv: Vec<f32>,       // [N, 3C]
    pub atty: Vec<f32>,      // [N, C]
    pub att_lse: Vec<f32>,   // [B, NH, T]
    pub residual2: Vec<f32>, // [N, C]
    pub ln2: Vec<f32>,       // [N, C]
    pub ln2_mean: Vec<f32>,  // [N]
    pub ln2_rstd: Vec<f32>,  // [N]
    pub fch: Vec<f32>,       // [N, 4C]
    pub fch_gelu: Vec<f32>,  // [N, 4C]
}

/// Mutable views of one layer's saved tensors, wherever they live.
pub(crate) struct LayerBufs<'a> {
    pub ln1: &'a mut [f32],
    pub ln1_mean: &'a mut [f32],
    pub ln1_rstd: &'a mut [f32],
    pub qkv: &'a mut [f32],
    pub atty: &'a mut [f32],
    pub att_lse: &'a mut [f32],
    pub residual2: &'a mut [f32],
    pub ln2: &'a mut [f32],
    pub ln2_mean: &'a mut [f32],
    pub ln2_rstd: &'a mut [f32],
    pub fch: &'a mut [f32],
    pub fch_gelu: &'a mut [f32],
}

impl LayerActs {
    /// Zeroed buffers for the tensors `hold` selects; the others empty.
    fn new(d: Dims, hold: impl Fn(Saved) -> bool) -> Self {
        let z = |s: Saved| {
            if hold(s) {
                vec![0.0f32; s.len(d)]
            } else {
                Vec::new()
            }
        };
        Self {
            ln1: z(Saved::Ln1),
            ln1_mean: z(Saved::Ln1Mean),
            ln1_rstd: z(Saved::Ln1Rstd),
            qkv: z(Saved::Qkv),
            atty: z(Saved::Atty),
            att_lse: z(Saved::AttLse),
            residual2: z(Saved::Residual2),
            ln2: z(Saved::Ln2),
            ln2_mean: z(Saved::Ln2Mean),
            ln2_rstd: z(Saved::Ln2Rstd),
            fch: z(Saved::Fch),
            fch_gelu: z(Saved::FchGelu),
        }
    }

    fn all(&self) -> [&Vec<f32>; 12] {
        [
            &self.ln1,
            &self.ln1_mean,
            &self.ln1_rstd,
            &self.qkv,
            &self.atty,
            &self.att_lse,
            &self.residual2,
            &self.ln2,
            &self.ln2_mean,
            &self.ln2_rstd,
            &self.fch,
            &self.fch_gelu,
        ]
    }

    /// Bytes held.
    fn bytes(&self) -> usize {
        4 * self.all().iter().map(|v| v.len()).sum::<usize>()
    }

    /// The layer's tensors: its own buffer where it has one, else `shared`'s.
    pub(crate) fn views<'a>(&'a mut self, shared: &'a mut LayerActs) -> LayerBufs<'a> {
        fn pick<'a>(own: &'a mut [f32], shared: &'a mut [f32]) -> &'a mut [f32] {
            if own.is_empty() { shared } else { own }
        }
        let s = shared;
        LayerBufs {
            ln1: pick(&mut self.ln1, &mut s.ln1),
            ln1_mean: pick(&mut self.ln1_mean, &mut s.ln1_mean),
            ln1_rstd: pick(&mut self.ln1_rstd, &mut s.ln1_rstd),
            qkv: pick(&mut self.qkv, &mut s.qkv),
            atty: pick(&mut self.atty, &mut s.atty),
            att_lse: pick(&mut self.att_lse, &mut s.att_lse),
            residual2: pick(&mut self.residual2, &mut s.residual2),
            ln2: pick(&mut self.ln2, &mut s.ln2),
            ln2_mean: pick(&mut self.ln2_mean, &mut s.ln2_mean),
            ln2_rstd: pick(&mut self.ln2_rstd, &mut s.ln2_rstd),
            fch: pick(&mut self.fch, &mut s.fch),
            fch_gelu: pick(&mut self.fch_gelu, &mut s.fch_gelu),
        }
    }
}

/// One block's activations: what its policy keeps, and its output.
pub(crate) struct BlockActs {
    pub policy: Recompute,
    pub kept: LayerActs,
    /// The block's output (`residual3`), `[N, C]`: the next block's input.
    pub out: Vec<f32>,
}

/// Scratch buffers for backward, reused across blocks.
pub(crate) struct GradScratch {
    pub dresidual: Vec<f32>, // [N, C]
    pub dln: Vec<f32>,       // [N, C]
    pub datty: Vec<f32>,     // [N, C]
    pub dqkv: Vec<f32>,      // [N, 3C]
    pub dfch_gelu: Vec<f32>, // [N, 4C]
    pub dfch: Vec<f32>,      // [N, 4C]
}

/// Activations of one forward pass at a fixed (B, T), reused across steps, laid out
/// by a [`RecomputePlan`] (all `none` unless set).
pub struct Activations {
    pub(crate) b: usize,
    pub(crate) t: usize,
    /// Channels C and heads NH of the model the buffers are for.
    c: usize,
    nh: usize,
    pub(crate) tokens: Vec<u32>,
    pub(crate) targets: Vec<u32>,
    pub(crate) encoded: Vec<f32>, // [N, C]
    pub(crate) blocks: Vec<BlockActs>,
    /// The buffers of the tensors some layer drops, one layer's worth each: written
    /// by such a layer's forward and refilled before its backward.
    pub(crate) recompute: LayerActs,
    pub(crate) plan: RecomputePlan,
    pub(crate) lnf: Vec<f32>,      // [N, C]
    pub(crate) lnf_mean: Vec<f32>, // [N]
    pub(crate) lnf_rstd: Vec<f32>, // [N]
    pub(crate) logits: Vec<f32>,   // [N, V]; overwritten by dlogits in backward
    pub(crate) lse: Vec<f32>,      // [N]
    pub(crate) losses: Vec<f32>,   // [N]
    /// Per-sequence weights of the loss backward differentiates (`[B]`); empty means all 1.
    pub(crate) seq_weights: Vec<f32>,
    pub(crate) scratch: GradScratch,
    /// Whether `logits` holds logits of a forward pass with targets (not yet consumed).
    pub(crate) ready_for_backward: bool,
}

impl Activations {
    /// Buffers for batch `b` and sequence length `t`, keeping everything backward needs.
    pub fn new(config: &GptConfig, b: usize, t: usize) -> Result<Self, ModelError> {
        Self::with_plan(
            config,
            b,
            t,
            RecomputePlan::uniform(config.n_layer, Recompute::None),
        )
    }

    /// Buffers for batch `b` and sequence length `t`, each layer keeping what its
    /// policy in `plan` keeps (see [`crate::recompute`]).
    pub fn with_plan(
        config: &GptConfig,
        b: usize,
        t: usize,
        plan: RecomputePlan,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        if t > config.n_positions {
            return Err(ModelError::SequenceTooLong {
                t,
                n_positions: config.n_positions,
            });
        }
        if b == 0 || t == 0 {
            return Err(ModelError::InvalidConfig(
                "batch and sequence length must be positive".into(),
            ));
        }
        check_plan(config, &plan)?;
        let d = Dims::new(config, b, t);
        let (n, c) = (d.n(), d.c);
        let z = |len: usize| vec![0.0f32; len];
        let (blocks, recompute) = layer_buffers(d, &plan);
        Ok(Self {
            b,
            t,
            c,
            nh: d.nh,
            tokens: vec![0; n],
            targets: vec![0; n],
            encoded: z(n * c),
            blocks,
            recompute,
            plan,
            lnf: z(n * c),
            lnf_mean: z(n),
            lnf_rstd: z(n),
            logits: z(n * config.vocab_size),
            lse: z(n),
            losses: z(n),
            seq_weights: Vec::new(),
            scratch: GradScratch {
                dresidual: z(n * c),
                dln: z(n * c),
                datty: z(n * c),
                dqkv: z(n * 3 * c),
                dfch_gelu: z(n * 4 * c),
                dfch: z(n * 4 * c),
            },
            ready_for_backward: false,
        })
    }

    /// Lays the layers out anew for `plan` (frees what it drops, allocates what it
    /// keeps); a forward pass must follow before the next backward.
    pub fn set_plan(&mut self, plan: RecomputePlan) -> Result<(), ModelError> {
        if plan == self.plan {
            return Ok(());
        }
        if plan.len() != self.blocks.len() {
            return Err(plan_mismatch(plan.len(), self.blocks.len()));
        }
        let d = Dims {
            b: self.b,
            t: self.t,
            c: self.c,
            nh: self.nh,
        };
        // Free the old buffers before allocating the new ones.
        self.blocks.clear();
        self.recompute = LayerActs::default();
        (self.blocks, self.recompute) = layer_buffers(d, &plan);
        self.plan = plan;
        self.ready_for_backward = false;
        Ok(())
    }

    /// The recompute plan the buffers are laid out for.
    pub fn plan(&self) -> &RecomputePlan {
        &self.plan
    }

    /// Batch size B.
    pub fn batch(&self) -> usize {
        self.b
    }

    /// Sequence length T.
    pub fn seq_len(&self) -> usize {
        self.t
    }

    /// Logits `[B, T, V]` of the last forward pass (invalid after `backward`, which reuses
    /// the buffer for their gradient).
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Per-position cross-entropy `[B, T]` of the last forward pass with targets.
    pub fn losses(&self) -> &[f32] {
        &self.losses
    }

    /// Weights the loss that backward differentiates per sequence: the gradient becomes that of
    /// `mean over positions of weights[b] · loss[b, t]` (Group DRO's domain weighting). The
    /// reported mean loss is unweighted. `None` (the default) weighs every sequence 1.
    pub fn set_sequence_weights(&mut self, weights: Option<&[f32]>) -> Result<(), ModelError> {
        match weights {
            None => self.seq_weights.clear(),
            Some(w) if w.len() == self.b && w.iter().all(|x| x.is_finite()) => {
                self.seq_weights.clear();
                self.seq_weights.extend_from_slice(w);
            }
            Some(w) => {
                return Err(ModelError::InvalidConfig(format!(
                    "{} sequence weights for a batch of {} (each must be finite)",
                    w.len(),
                    self.b
                )));
            }
        }
        Ok(())
    }

    /// Bytes layer `l` holds: the tensors its policy keeps, and its output.
    pub fn layer_bytes(&self, l: usize) -> usize {
        self.blocks
            .get(l)
            .map_or(0, |a| a.kept.bytes() + 4 * a.out.len())
    }

    /// Bytes of the shared buffers the recomputed layers refill.
    pub fn recompute_scratch_bytes(&self) -> usize {
        self.recompute.bytes()
    }

    /// Bytes held by these activations (for memory accounting), measured from the
    /// buffers; [`ActivationBytes`] predicts it.
    pub fn bytes(&self) -> usize {
        let layers: usize = (0..self.blocks.len()).map(|l| self.layer_bytes(l)).sum();
        let s = &self.scratch;
        let rest = self.encoded.len()
            + self.lnf.len()
            + self.lnf_mean.len()
            + self.lnf_rstd.len()
            + self.logits.len()
            + self.lse.len()
            + self.losses.len()
            + s.dresidual.len()
            + s.dln.len()
            + s.datty.len()
            + s.dqkv.len()
            + s.dfch_gelu.len()
            + s.dfch.len();
        layers
            + self.recompute_scratch_bytes()
            + 4 * rest
            + 4 * (self.tokens.len() + self.targets.len())
    }

    /// What [`Activations::bytes`] will be for these shapes and plan, without allocating.
    pub fn predict_bytes(
        config: &GptConfig,
        b: usize,
        t: usize,
        plan: &RecomputePlan,
    ) -> ActivationBytes {
        ActivationBytes::new(config, b, t, plan)
    }
}

/// The per-layer buffers and the shared recompute buffers of `plan`.
fn layer_buffers(d: Dims, plan: &RecomputePlan) -> (Vec<BlockActs>, LayerActs) {
    let blocks = plan
        .layers()
        .iter()
        .map(|&policy| BlockActs {
            policy,
            kept: LayerActs::new(d, |s| s.kept(policy)),
            out: vec![0.0f32; d.n() * d.c],
        })
        .collect();
    let recompute = LayerActs::new(d, |s| plan.layers().iter().any(|&p| !s.kept(p)));
    (blocks, recompute)
}

fn plan_mismatch(plan: usize, layers: usize) -> ModelError {
    ModelError::InvalidConfig(format!(
        "a recompute plan for {plan} layers on a model of {layers}"
    ))
}

fn check_plan(config: &GptConfig, plan: &RecomputePlan) -> Result<(), ModelError> {
    if plan.len() == config.n_layer {
        Ok(())
    } else {
        Err(plan_mismatch(plan.len(), config.n_layer))
    }
}
