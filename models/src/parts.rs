//! Where forward and backward get parameters from and put gradients: the layout cut
//! into *parts* (the embeddings, each block, the final layer norm) that the model
//! asks for one at a time.
//!
//! A single process passes whole buffers ([`Whole`], [`WholeGrads`]). A ZeRO stage-3
//! rank passes a source that all-gathers each part just before it is used and frees
//! it after, and a sink that reduce-scatters each part's gradient as soon as backward
//! has finished it; the model does not know which it runs under.

use std::ops::Range;

use crate::{Gpt, ModelError};

/// A contiguous range of the flat layout that forward and backward use as a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    /// `wte` and `wpe` (the token table is also the tied LM head).
    Embeddings,
    /// Transformer block `l`.
    Block(usize),
    /// The final layer norm.
    Final,
}

/// Supplies the parameters of each part, on demand.
///
/// The model calls `fetch(part, next)`, then `get(part)` as often as it needs while
/// computing with it, then `release(part)`. Forward fetches `Embeddings`, each block
/// in order, `Final`, then `Embeddings` again (the LM head); backward fetches
/// `Embeddings` and `Final` (the LM head and `ln_f`), then the blocks from last to
/// first. `next` names the part that will be fetched after this one, so a source can
/// start bringing it in early.
pub trait ParamSource {
    /// Makes `part` readable; `next` is a hint for prefetching.
    fn fetch(&mut self, part: Part, next: Option<Part>) -> Result<(), ModelError>;
    /// The parameters of `part`: its whole layout range, between `fetch` and `release`.
    fn get(&self, part: Part) -> &[f32];
    /// The model is done with `part` for now.
    fn release(&mut self, part: Part);
}

/// Takes the gradients of each part from backward.
///
/// Backward asks for a part's gradient buffer (its whole layout range) each time it
/// accumulates into it, and calls `done(part)` once that part's gradient for this
/// micro-batch is final: `Final`, each block from last to first, then `Embeddings`
/// (whose token table also takes the LM head's gradient first, so it is final only
/// at the end).
pub trait GradSink {
    /// The buffer to accumulate `part`'s gradient into.
    fn grads(&mut self, part: Part) -> Result<&mut [f32], ModelError>;
    /// `part`'s gradient for this micro-batch is final.
    fn done(&mut self, part: Part) -> Result<(), ModelError>;
}

/// A whole parameter buffer in the model's layout as a [`ParamSource`].
pub struct Whole<'a> {
    model: &'a Gpt,
    params: &'a [f32],
}

impl<'a> Whole<'a> {
    /// `params` (checked against the layout's length).
    pub fn new(model: &'a Gpt, params: &'a [f32]) -> Result<Self, ModelError> {
        check_len("params", model.layout.len(), params.len())?;
        Ok(Self { model, params })
    }
}

impl ParamSource for Whole<'_> {
    fn fetch(&mut self, _: Part, _: Option<Part>) -> Result<(), ModelError> {
        Ok(())
    }

    fn get(&self, part: Part) -> &[f32] {
        &self.params[self.model.part_range(part)]
    }

    fn release(&mut self, _: Part) {}
}

/// A whole gradient buffer as a [`GradSink`], calling `done(range, grads[range])` as
/// each part's gradient becomes final.
pub struct WholeGrads<'a, 'f> {
    model: &'a Gpt,
    grads: &'a mut [f32],
    done: &'f mut dyn FnMut(Range<usize>, &[f32]),
}

impl<'a, 'f> WholeGrads<'a, 'f> {
    /// `grads` (checked against the layout's length) and the callback.
    pub fn new(
        model: &'a Gpt,
        grads: &'a mut [f32],
        done: &'f mut dyn FnMut(Range<usize>, &[f32]),
    ) -> Result<Self, ModelError> {
        check_len("grads", model.layout.len(), grads.len())?;
        Ok(Self { model, grads, done })
    }
}

impl GradSink for WholeGrads<'_, '_> {
    fn grads(&mut self, part: Part) -> Result<&mut [f32], ModelError> {
        Ok(&mut self.grads[self.model.part_range(part)])
    }

    fn done(&mut self, part: Part) -> Result<(), ModelError> {
        let r = self.model.part_range(part);
        (self.done)(r.clone(), &self.grads[r]);
        Ok(())
    }
}

pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), ModelError> {
    if expected == got {
        Ok(())
    } else {
        Err(ModelError::Shape {
            what,
            expected,
            got,
        })
    }
}

impl Gpt {
    /// The layout range of `part`.
    pub fn part_range(&self, part: Part) -> Range<usize> {
        match part {
            Part::Embeddings => self.wte.start..self.wpe.end,
            Part::Block(l) => self.layout.layer_range(l),
            Part::Final => self.lnf_w.start..self.lnf_b.end,
        }
    }

    /// Every part, in the order backward finishes them (last in the layout first).
    pub fn parts_in_backward_order(&self) -> Vec<Part> {
        let blocks = (0..self.config.n_layer).rev().map(Part::Block);
        std::iter::once(Part::Final)
            .chain(blocks)
            .chain(std::iter::once(Part::Embeddings))
            .collect()
    }
}

/// `r` (a range of the layout) inside the buffer of a part that starts at `base`.
pub(crate) fn within(r: &Range<usize>, base: usize) -> Range<usize> {
    r.start - base..r.end - base
}
