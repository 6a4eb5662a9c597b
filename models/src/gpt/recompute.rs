//! Activation recomputation (Korthikanti et al. 2022): which of its forward tensors
//! each layer keeps for backward, and what that costs in bytes.
//!
//! A [`RecomputePlan`] (one [`Recompute`] per layer) is set on the
//! [`crate::Activations`] from outside, as a ZeRO stage is applied through the
//! parameter source: forward and backward read it from there and the model does
//! not otherwise know. A dropped tensor is not allocated per layer: every layer
//! that drops it shares one buffer, which forward writes and reads at once and
//! backward refills, just before that layer's backward, by re-running what
//! produced it.
//!
//! Per layer, with N = B·T tokens, C channels and NH heads, forward produces (f32):
//!
//! | tensor | elements | backward needs it for |
//! | --- | --- | --- |
//! | `ln1`, `ln1_mean`, `ln1_rstd` | N·C, N, N | `qkv` weight gradient; `ln_1` backward |
//! | `qkv` | 3·N·C | the attention core's backward (its q, k, v) |
//! | `atty`, `att_lse` | N·C, NH·N | `attproj` weight gradient; the core's backward |
//! | `residual2` | N·C | `ln_2` backward (its input) |
//! | `ln2`, `ln2_mean`, `ln2_rstd` | N·C, N, N | `fc` weight gradient; `ln_2` backward |
//! | `fch`, `fch_gelu` | 4·N·C each | GELU backward; `fcproj` weight gradient |
//! | output (`residual3`) | N·C | the next layer's input (or `ln_f`'s) |
//!
//! - [`Recompute::None`] keeps all of them: 16·N·C + (4 + NH)·N floats.
//! - [`Recompute::Selective`] drops the attention core's activations. The core here
//!   is already FlashAttention-2 style (`shoal_kernels::attention`): the T×T scores,
//!   softmax and (absent) dropout mask that the paper's selective recomputation
//!   drops are never stored, only the row log-sum-exp. What is left of the core is
//!   its output `atty` (N·C) and `att_lse` (NH·N); both come back from one
//!   `attention_forward` over the kept `qkv`, the cheapest recomputation that frees
//!   them (the core's backward re-derives the probabilities from `att_lse` anyway).
//!   `qkv` stays, as the paper keeps Q, K and V: recomputing it would cost a 3C×C
//!   matmul per token, not the core. Keeps 15·N·C + 4·N floats.
//! - [`Recompute::Full`] keeps only the layer's output, which is the next layer's
//!   input (the first layer's input is the embeddings' output, kept anyway): N·C
//!   floats. Backward re-runs the layer's forward from its input up to the GELU;
//!   the last matmul (`fcproj`) is not re-run, since only its input is needed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{GptConfig, ModelError};

/// What one layer keeps from forward for backward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recompute {
    /// Keep everything backward needs.
    #[default]
    None,
    /// Drop the attention core's output and log-sum-exp; recompute them in backward.
    Selective,
    /// Keep only the layer's output (the next layer's input); recompute the layer.
    Full,
}

impl Recompute {
    /// Every policy, from the most memory to the least.
    pub const ALL: [Recompute; 3] = [Recompute::None, Recompute::Selective, Recompute::Full];

    /// The policy's name (`none`, `selective`, `full`).
    pub fn name(self) -> &'static str {
        match self {
            Recompute::None => "none",
            Recompute::Selective => "selective",
            Recompute::Full => "full",
        }
    }
}

impl fmt::Display for Recompute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Recompute {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, ModelError> {
        Recompute::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                ModelError::InvalidConfig(format!(
                    "recompute policy `{s}` is not none, selective or full"
                ))
            })
    }
}

/// One [`Recompute`] policy per layer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecomputePlan {
    layers: Vec<Recompute>,
}

impl RecomputePlan {
    /// `policy` on each of `n_layer` layers.
    pub fn uniform(n_layer: usize, policy: Recompute) -> Self {
        Self {
            layers: vec![policy; n_layer],
        }
    }

    /// The given policies, layer 0 first.
    pub fn from_layers(layers: Vec<Recompute>) -> Self {
        Self { layers }
    }

    /// The policies, layer 0 first.
    pub fn layers(&self) -> &[Recompute] {
        &self.layers
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether the plan has no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// How many layers run each policy, in the order of [`Recompute::ALL`].
    pub fn counts(&self) -> [usize; 3] {
        let mut out = [0; 3];
        for &p in &self.layers {
            out[p as usize] += 1;
        }
        out
    }

    /// Whether some layer recomputes anything.
    pub fn recomputes(&self) -> bool {
        self.layers.iter().any(|&p| p != Recompute::None)
    }
}

/// Layers as runs, e.g. `0-1 full, 2 selective, 3-5 none`.
impl fmt::Display for RecomputePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut start = 0;
        let mut first = true;
        for l in 1..=self.layers.len() {
            if l < self.layers.len() && self.layers[l] == self.layers[start] {
                continue;
            }
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            if l - start == 1 {
                write!(f, "{start} {}", self.layers[start])?;
            } else {
                write!(f, "{start}-{} {}", l - 1, self.layers[start])?;
            }
            start = l;
        }
        if first {
            f.write_str("no layers")?;
        }
        Ok(())
    }
}

/// The dimensions activations are sized by.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub b: usize,
    pub t: usize,
    pub c: usize,
    pub nh: usize,
}

impl Dims {
    pub(crate) fn new(config: &GptConfig, b: usize, t: usize) -> Self {
        Self {
            b,
            t,
            c: config.n_embd,
            nh: config.n_head,
        }
    }

    /// Rows, N = B·T.
    pub(crate) fn n(self) -> usize {
        self.b * self.t
    }
}

/// A tensor of one layer's forward that backward reads (the layer's output aside).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Saved {
    Ln1,
    Ln1Mean,
    Ln1Rstd,
    Qkv,
    Atty,
    AttLse,
    Residual2,
    Ln2,
    Ln2Mean,
    Ln2Rstd,
    Fch,
    FchGelu,
}

impl Saved {
    /// Every saved tensor, in forward order.
    pub(crate) const ALL: [Saved; 12] = [
        Saved::Ln1,
        Saved::Ln1Mean,
        Saved::Ln1Rstd,
        Saved::Qkv,
        Saved::Atty,
        Saved::AttLse,
        Saved::Residual2,
        Saved::Ln2,
        Saved::Ln2Mean,
        Saved::Ln2Rstd,
        Saved::Fch,
        Saved::FchGelu,
    ];

    /// Elements of the tensor.
    pub(crate) fn len(self, d: Dims) -> usize {
        let (n, c) = (d.n(), d.c);
        match self {
            Saved::Ln1 | Saved::Atty | Saved::Residual2 | Saved::Ln2 => n * c,
            Saved::Ln1Mean | Saved::Ln1Rstd | Saved::Ln2Mean | Saved::Ln2Rstd => n,
            Saved::Qkv => 3 * n * c,
            Saved::AttLse => d.nh * n,
            Saved::Fch | Saved::FchGelu => 4 * n * c,
        }
    }

    /// Whether a layer under `policy` keeps the tensor in a buffer of its own
    /// (otherwise the shared recompute buffer holds it while it is needed).
    pub(crate) fn kept(self, policy: Recompute) -> bool {
        match policy {
            Recompute::None => true,
            Recompute::Selective => !matches!(self, Saved::Atty | Saved::AttLse),
            Recompute::Full => false,
        }
    }
}

/// Bytes a set of activations holds, computed from the shapes without allocating:
/// exactly what [`crate::Activations::bytes`] reports once they are built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivationBytes {
    /// Bytes each layer keeps, layer 0 first: its own saved tensors and its output.
    pub layers: Vec<usize>,
    /// The buffers the plan's dropped tensors share (one layer's worth of each
    /// tensor some layer drops; none when nothing is recomputed).
    pub recompute_scratch: usize,
    /// Everything else: tokens and targets, the embeddings' output, `ln_f`, logits,
    /// losses and backward's gradient scratch (the same for every plan).
    pub rest: usize,
}

const F32: usize = std::mem::size_of::<f32>();

impl ActivationBytes {
    /// The bytes of activations for batch `b`, length `t` and `plan` (one policy per
    /// layer of `config`).
    pub fn new(config: &GptConfig, b: usize, t: usize, plan: &RecomputePlan) -> Self {
        let d = Dims::new(config, b, t);
        let layers = plan
            .layers()
            .iter()
            .map(|&p| Self::layer(config, b, t, p))
            .collect();
        let recompute_scratch = Saved::ALL
            .iter()
            .filter(|s| plan.layers().iter().any(|&p| !s.kept(p)))
            .map(|s| s.len(d) * F32)
            .sum();
        let (n, c, v) = (d.n(), d.c, config.vocab_size);
        // tokens, targets (u32); encoded, lnf [N, C]; lnf_mean, lnf_rstd, lse, losses [N];
        // logits [N, V]; gradient scratch dresidual, dln, datty [N, C], dqkv [N, 3C],
        // dfch_gelu, dfch [N, 4C].
        let rest = 2 * n * std::mem::size_of::<u32>()
            + F32 * (2 * n * c + 4 * n + n * v + (3 + 3 + 8) * n * c);
        Self {
            layers,
            recompute_scratch,
            rest,
        }
    }

    /// Bytes one layer keeps under `policy`: its own saved tensors and its output.
    pub fn layer(config: &GptConfig, b: usize, t: usize, policy: Recompute) -> usize {
        let d = Dims::new(config, b, t);
        let kept: usize = Saved::ALL
            .iter()
            .filter(|s| s.kept(policy))
            .map(|s| s.len(d))
            .sum();
        F32 * (kept + d.n() * d.c)
    }

    /// All of it.
    pub fn total(&self) -> usize {
        self.layers.iter().sum::<usize>() + self.recompute_scratch + self.rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_print_as_runs_and_policies_parse() {
        use Recompute::*;
        let plan = RecomputePlan::from_layers(vec![Full, Full, Selective, None, None, None]);
        assert_eq!(plan.to_string(), "0-1 full, 2 selective, 3-5 none");
        assert_eq!(plan.counts(), [3, 1, 2]);
        assert!(plan.recomputes());
        assert!(!RecomputePlan::uniform(3, None).recomputes());
        assert_eq!(RecomputePlan::uniform(1, Full).to_string(), "0 full");
        assert_eq!(RecomputePlan::uniform(0, Full).to_string(), "no layers");
        for p in Recompute::ALL {
            assert_eq!(p.name().parse::<Recompute>().unwrap(), p);
        }
        assert!("some".parse::<Recompute>().is_err());
    }

    #[test]
    fn layer_bytes_follow_the_table() {
        let config = GptConfig::preset("small").unwrap();
        let (b, t) = (2, 64);
        let (n, c, nh) = (b * t, config.n_embd, config.n_head);
        let none = ActivationBytes::layer(&config, b, t, Recompute::None);
        let sel = ActivationBytes::layer(&config, b, t, Recompute::Selective);
        let full = ActivationBytes::layer(&config, b, t, Recompute::Full);
        assert_eq!(none, 4 * (16 * n * c + (4 + nh) * n));
        assert_eq!(sel, 4 * (15 * n * c + 4 * n));
        assert_eq!(full, 4 * n * c);
    }
}
