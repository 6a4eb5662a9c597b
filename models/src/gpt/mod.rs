//! GPT-2 forward and backward over a flat parameter buffer.
//!
//! Dimensions: B batch, T time, C channels (n_embd), NH heads, V vocab, L layers, N = B·T.
//! The model holds no parameters: `params`, `grads` and the optimizer state are flat buffers
//! described by [`ParamLayout`], owned by whoever runs the model (a trainer, a ZeRO shard).
//! Nor does it choose what to keep for backward: the [`RecomputePlan`] the [`Activations`]
//! are laid out by does (see [`recompute`]).
//!
//! Files: `activations.rs` (the buffers), [`recompute`] (the policies and their bytes),
//! `forward.rs` and `backward.rs` (the passes, with one block's forward, recomputation
//! and backward as functions of their own).

use std::ops::Range;

use crate::parts::{Whole, WholeGrads, check_len};
use crate::{GptConfig, ModelError, ParamLayout};

mod activations;
mod backward;
mod forward;
pub mod recompute;

pub use activations::Activations;
pub use recompute::{ActivationBytes, Recompute, RecomputePlan};

/// Ranges of one block's tensors in the flat buffer.
#[derive(Clone, Debug)]
pub(crate) struct BlockRanges {
    pub(crate) ln1_w: Range<usize>,
    pub(crate) ln1_b: Range<usize>,
    pub(crate) qkv_w: Range<usize>,
    pub(crate) qkv_b: Range<usize>,
    pub(crate) attproj_w: Range<usize>,
    pub(crate) attproj_b: Range<usize>,
    pub(crate) ln2_w: Range<usize>,
    pub(crate) ln2_b: Range<usize>,
    pub(crate) fc_w: Range<usize>,
    pub(crate) fc_b: Range<usize>,
    pub(crate) fcproj_w: Range<usize>,
    pub(crate) fcproj_b: Range<usize>,
}

impl BlockRanges {
    /// The ranges of every block of `layout`'s model, first to last.
    pub(crate) fn all(layout: &ParamLayout, n_layer: usize) -> Vec<Self> {
        let r = |name: &str| -> Range<usize> {
            layout
                .get(name)
                .map(|t| t.range())
                .expect("layout holds every GPT tensor")
        };
        (0..n_layer)
            .map(|l| {
                let p = |s: &str| r(&format!("h.{l}.{s}"));
                BlockRanges {
                    ln1_w: p("ln_1.weight"),
                    ln1_b: p("ln_1.bias"),
                    qkv_w: p("attn.c_attn.weight"),
                    qkv_b: p("attn.c_attn.bias"),
                    attproj_w: p("attn.c_proj.weight"),
                    attproj_b: p("attn.c_proj.bias"),
                    ln2_w: p("ln_2.weight"),
                    ln2_b: p("ln_2.bias"),
                    fc_w: p("mlp.c_fc.weight"),
                    fc_b: p("mlp.c_fc.bias"),
                    fcproj_w: p("mlp.c_proj.weight"),
                    fcproj_b: p("mlp.c_proj.bias"),
                }
            })
            .collect()
    }
}

/// A GPT-2 architecture: configuration plus the layout of its flat parameter buffer.
#[derive(Clone, Debug)]
pub struct Gpt {
    /// The shapes.
    pub config: GptConfig,
    /// Where every tensor lives in the flat buffer.
    pub layout: ParamLayout,
    pub(crate) wte: Range<usize>,
    pub(crate) wpe: Range<usize>,
    blocks: Vec<BlockRanges>,
    pub(crate) lnf_w: Range<usize>,
    pub(crate) lnf_b: Range<usize>,
}

impl Gpt {
    /// A model of this configuration (validated).
    pub fn new(config: GptConfig) -> Result<Self, ModelError> {
        config.validate()?;
        let layout = ParamLayout::new(&config);
        let r = |name: &str| -> Range<usize> {
            layout
                .get(name)
                .map(|t| t.range())
                .expect("layout holds every GPT tensor")
        };
        let blocks = BlockRanges::all(&layout, config.n_layer);
        Ok(Self {
            wte: r("wte.weight"),
            wpe: r("wpe.weight"),
            lnf_w: r("ln_f.weight"),
            lnf_b: r("ln_f.bias"),
            blocks,
            layout,
            config,
        })
    }

    /// Number of parameters (length of the flat buffers).
    pub fn num_params(&self) -> usize {
        self.layout.len()
    }

    fn check_tokens(&self, what: &'static str, ids: &[u32], n: usize) -> Result<(), ModelError> {
        check_len(what, n, ids.len())?;
        let vocab_size = self.config.vocab_size;
        match ids.iter().position(|&x| x as usize >= vocab_size) {
            Some(index) => Err(ModelError::TokenOutOfRange {
                index,
                token: ids[index],
                vocab_size,
            }),
            None => Ok(()),
        }
    }

    /// Runs the model on `tokens` `[B, T]` (B and T from `acts`). With `targets`, returns the
    /// mean cross-entropy and keeps what `backward` needs; the logits are in `acts.logits()`.
    pub fn forward(
        &self,
        params: &[f32],
        acts: &mut Activations,
        tokens: &[u32],
        targets: Option<&[u32]>,
    ) -> Result<Option<f32>, ModelError> {
        self.forward_parts(&mut Whole::new(self, params)?, acts, tokens, targets)
    }

    /// Accumulates `d(loss_scale · mean cross-entropy) / d params` of the last forward pass
    /// into `grads` (the caller zeroes it at the start of a step). Consumes the logits.
    pub fn backward(
        &self,
        params: &[f32],
        acts: &mut Activations,
        grads: &mut [f32],
        loss_scale: f32,
    ) -> Result<(), ModelError> {
        self.backward_hooked(params, acts, grads, loss_scale, &mut |_, _| {})
    }

    /// [`Gpt::backward`], calling `done(range, grads[range])` as soon as a range of the
    /// layout has its final gradient for this micro-batch: `ln_f`, then each block from
    /// the last to the first, then the embeddings (`wte` also takes the LM head's
    /// gradient, so it is final only at the end). The ranges come in reverse layout
    /// order and cover it exactly once, so a caller can reduce them (gradient buckets)
    /// while the rest of backward runs.
    pub fn backward_hooked(
        &self,
        params: &[f32],
        acts: &mut Activations,
        grads: &mut [f32],
        loss_scale: f32,
        done: &mut dyn FnMut(Range<usize>, &[f32]),
    ) -> Result<(), ModelError> {
        let mut src = Whole::new(self, params)?;
        let mut sink = WholeGrads::new(self, grads, done)?;
        self.backward_parts(&mut src, acts, &mut sink, loss_scale)
    }
}

/// One block's parameters, as slices of its part's buffer.
struct BlockParams<'a> {
    ln1_w: &'a [f32],
    ln1_b: &'a [f32],
    qkv_w: &'a [f32],
    qkv_b: &'a [f32],
    attproj_w: &'a [f32],
    attproj_b: &'a [f32],
    ln2_w: &'a [f32],
    ln2_b: &'a [f32],
    fc_w: &'a [f32],
    fc_b: &'a [f32],
    fcproj_w: &'a [f32],
    fcproj_b: &'a [f32],
}

impl BlockRanges {
    /// The block's parameters in `buf`, the buffer of its part, which starts at `base`
    /// of the layout.
    fn params<'a>(&self, buf: &'a [f32], base: usize) -> BlockParams<'a> {
        let p = |r: &Range<usize>| &buf[crate::parts::within(r, base)];
        BlockParams {
            ln1_w: p(&self.ln1_w),
            ln1_b: p(&self.ln1_b),
            qkv_w: p(&self.qkv_w),
            qkv_b: p(&self.qkv_b),
            attproj_w: p(&self.attproj_w),
            attproj_b: p(&self.attproj_b),
            ln2_w: p(&self.ln2_w),
            ln2_b: p(&self.ln2_b),
            fc_w: p(&self.fc_w),
            fc_b: p(&self.fc_b),
            fcproj_w: p(&self.fcproj_w),
            fcproj_b: p(&self.fcproj_b),
        }
    }
}

/// Two disjoint mutable sub-slices of `buf`, `first` strictly before `second`.
fn split_two<'a>(
    buf: &'a mut [f32],
    first: &Range<usize>,
    second: &Range<usize>,
) -> (&'a mut [f32], &'a mut [f32]) {
    debug_assert!(first.end <= second.start);
    let (head, tail) = buf.split_at_mut(second.start);
    (
        &mut head[first.clone()],
        &mut tail[..second.end - second.start],
    )
}
