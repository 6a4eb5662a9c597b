//! The backward pass, and one block's backward as a function of its own. A block that
//! its [`crate::RecomputePlan`] recomputes has what it dropped refilled
//! ([`super::forward::recompute_block`]) just before its backward.

use std::ops::Range;

use shoal_kernels::{
    WeightLayout, attention_backward, crossentropy_backward_inplace, embedding_backward,
    gelu_backward, layernorm_backward, matmul_backward,
};

use super::activations::{GradScratch, LayerBufs};
use super::forward::recompute_block;
use super::recompute::Dims;
use super::{Activations, BlockParams, BlockRanges, Gpt, split_two};
use crate::ModelError;
use crate::parts::{GradSink, ParamSource, Part, within};

impl Gpt {
    /// [`Gpt::backward`] with parameters from `src` and gradients into `sink`, part by
    /// part (see [`ParamSource`] and [`GradSink`] for the order).
    pub fn backward_parts(
        &self,
        src: &mut dyn ParamSource,
        acts: &mut Activations,
        sink: &mut dyn GradSink,
        loss_scale: f32,
    ) -> Result<(), ModelError> {
        if !acts.ready_for_backward {
            return Err(ModelError::NoForward);
        }
        acts.ready_for_backward = false;
        let cfg = &self.config;
        let (b, t) = (acts.b, acts.t);
        let (n, c, v) = (b * t, cfg.n_embd, cfg.vocab_size);
        let d = Dims::new(cfg, b, t);

        let Activations {
            tokens,
            targets,
            encoded,
            blocks,
            recompute,
            lnf,
            lnf_mean,
            lnf_rstd,
            logits,
            lse,
            seq_weights,
            scratch: s,
            ..
        } = acts;
        for buf in [&mut s.dresidual, &mut s.dln] {
            buf.fill(0.0);
        }

        let dloss = loss_scale / n as f32;
        if seq_weights.is_empty() {
            crossentropy_backward_inplace(logits, lse, targets, dloss, n, v);
        } else {
            for (i, &w) in seq_weights.iter().enumerate() {
                let rows = i * t..(i + 1) * t;
                crossentropy_backward_inplace(
                    &mut logits[rows.start * v..rows.end * v],
                    &lse[rows.clone()],
                    &targets[rows],
                    dloss * w,
                    t,
                    v,
                );
            }
        }
        let dlogits: &[f32] = logits;
        src.fetch(Part::Embeddings, Some(Part::Final))?;
        let (ebase, fbase) = (self.wte.start, self.lnf_w.start);
        matmul_backward(
            Some(&mut s.dln),
            &mut sink.grads(Part::Embeddings)?[within(&self.wte, ebase)],
            None,
            dlogits,
            lnf,
            &src.get(Part::Embeddings)[within(&self.wte, ebase)],
            n,
            c,
            v,
            WeightLayout::OutIn,
        );
        src.release(Part::Embeddings);
        let last: &[f32] = match blocks.last() {
            Some(a) => &a.out,
            None => encoded,
        };
        let after_final = if cfg.n_layer > 0 {
            Some(Part::Block(cfg.n_layer - 1))
        } else {
            None
        };
        src.fetch(Part::Final, after_final)?;
        {
            let g = sink.grads(Part::Final)?;
            let (dw, db) = split_two(g, &within(&self.lnf_w, fbase), &within(&self.lnf_b, fbase));
            layernorm_backward(
                &mut s.dresidual,
                dw,
                db,
                &s.dln,
                last,
                &src.get(Part::Final)[within(&self.lnf_w, fbase)],
                lnf_mean,
                lnf_rstd,
                n,
                c,
            );
        }
        src.release(Part::Final);
        sink.done(Part::Final)?;

        for l in (0..cfg.n_layer).rev() {
            let w = &self.blocks[l];
            let part = Part::Block(l);
            src.fetch(part, l.checked_sub(1).map(Part::Block))?;
            let base = self.part_range(part).start;
            let p = w.params(src.get(part), base);
            let (before, rest) = blocks.split_at_mut(l);
            let a = &mut rest[0];
            let input: &[f32] = match before.last() {
                Some(prev) => &prev.out,
                None => encoded,
            };
            let mut bufs = a.kept.views(recompute);
            recompute_block(a.policy, &mut bufs, input, &p, d, cfg.layer_norm_eps);
            let g = sink.grads(part)?;
            block_backward(s, g, &bufs, input, &p, w, base, d);
            src.release(part);
            sink.done(part)?;
        }
        {
            let g = sink.grads(Part::Embeddings)?;
            let (wr, br) = (within(&self.wte, ebase), within(&self.wpe, ebase));
            let (dwte, dwpe) = split_two(g, &wr, &br);
            embedding_backward(dwte, dwpe, &s.dresidual, tokens, b, t, c);
        }
        sink.done(Part::Embeddings)
    }
}

/// One block's backward: takes the gradient of its output in `s.dresidual` and leaves
/// there the gradient of its `input`, accumulating the parameter gradients into `g`
/// (the block's part of the layout, which starts at `base`; `w` holds the ranges).
#[allow(clippy::too_many_arguments)]
fn block_backward(
    s: &mut GradScratch,
    g: &mut [f32],
    a: &LayerBufs<'_>,
    input: &[f32],
    p: &BlockParams<'_>,
    w: &BlockRanges,
    base: usize,
    d: Dims,
) {
    let (n, c) = (d.n(), d.c);
    let layout = WeightLayout::InOut;
    let rel = |wr: &Range<usize>, br: &Range<usize>| (within(wr, base), within(br, base));
    // MLP: residual3 = residual2 + fcproj(gelu(fc(ln2(residual2)))).
    s.dfch_gelu.fill(0.0);
    s.dfch.fill(0.0);
    s.dln.fill(0.0);
    {
        let (wr, br) = rel(&w.fcproj_w, &w.fcproj_b);
        let (dw, db) = split_two(&mut *g, &wr, &br);
        matmul_backward(
            Some(&mut s.dfch_gelu),
            dw,
            Some(db),
            &s.dresidual,
            a.fch_gelu,
            p.fcproj_w,
            n,
            4 * c,
            c,
            layout,
        );
    }
    gelu_backward(&mut s.dfch, a.fch, &s.dfch_gelu);
    {
        let (wr, br) = rel(&w.fc_w, &w.fc_b);
        let (dw, db) = split_two(&mut *g, &wr, &br);
        matmul_backward(
            Some(&mut s.dln),
            dw,
            Some(db),
            &s.dfch,
            a.ln2,
            p.fc_w,
            n,
            c,
            4 * c,
            layout,
        );
    }
    {
        let (wr, br) = rel(&w.ln2_w, &w.ln2_b);
        let (dw, db) = split_two(&mut *g, &wr, &br);
        layernorm_backward(
            &mut s.dresidual,
            dw,
            db,
            &s.dln,
            a.residual2,
            p.ln2_w,
            a.ln2_mean,
            a.ln2_rstd,
            n,
            c,
        );
    }
    // Attention: residual2 = input + attproj(attn(qkv(ln1(input)))).
    s.datty.fill(0.0);
    s.dqkv.fill(0.0);
    s.dln.fill(0.0);
    {
        let (wr, br) = rel(&w.attproj_w, &w.attproj_b);
        let (dw, db) = split_two(&mut *g, &wr, &br);
        matmul_backward(
            Some(&mut s.datty),
            dw,
            Some(db),
            &s.dresidual,
            a.atty,
            p.attproj_w,
            n,
            c,
            c,
            layout,
        );
    }
    attention_backward(
        &mut s.dqkv,
        &s.datty,
        a.qkv,
        a.atty,
        a.att_lse,
        d.b,
        d.t,
        c,
        d.nh,
    );
    {
        let (wr, br) = rel(&w.qkv_w, &w.qkv_b);
        let (dw, db) = split_two(&mut *g, &wr, &br);
        matmul_backward(
            Some(&mut s.dln),
            dw,
            Some(db),
            &s.dqkv,
            a.ln1,
            p.qkv_w,
            n,
            c,
            3 * c,
            layout,
        );
    }
    {
        let (wr, br) = rel(&w.ln1_w, &w.ln1_b);
        let (dw, db) = split_two(&mut *g, &wr, &br);
        layernorm_backward(
            &mut s.dresidual,
            dw,
            db,
            &s.dln,
            input,
            p.ln1_w,
            a.ln1_mean,
            a.ln1_rstd,
            n,
            c,
        );
    }
}
