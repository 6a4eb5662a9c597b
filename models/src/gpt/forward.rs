//! The forward pass, and one block's forward as a function of its own, which backward
//! re-runs for the layers a [`crate::RecomputePlan`] recomputes.

use shoal_kernels::{
    WeightLayout, add_inplace, attention_forward, crossentropy_forward, embedding_forward,
    gelu_forward, layernorm_forward, matmul_forward,
};

use super::activations::LayerBufs;
use super::recompute::Dims;
use super::{Activations, BlockParams, Gpt};
use crate::parts::{ParamSource, Part, within};
use crate::{ModelError, Recompute};

impl Gpt {
    /// [`Gpt::forward`] with parameters fetched part by part from `src` (see
    /// [`ParamSource`] for the order). With targets, `Embeddings` and `Final` stay
    /// fetched for the backward pass that follows.
    pub fn forward_parts(
        &self,
        src: &mut dyn ParamSource,
        acts: &mut Activations,
        tokens: &[u32],
        targets: Option<&[u32]>,
    ) -> Result<Option<f32>, ModelError> {
        let cfg = &self.config;
        let (b, t) = (acts.b, acts.t);
        let (n, c, v) = (b * t, cfg.n_embd, cfg.vocab_size);
        if acts.blocks.len() != cfg.n_layer || acts.lnf.len() != n * c || acts.logits.len() != n * v
        {
            return Err(ModelError::InvalidConfig(
                "activations were built for another model config".into(),
            ));
        }
        self.check_tokens("tokens", tokens, n)?;
        if let Some(tg) = targets {
            self.check_tokens("targets", tg, n)?;
        }
        let d = Dims::new(cfg, b, t);
        acts.ready_for_backward = false;
        acts.tokens.copy_from_slice(tokens);
        let first = if cfg.n_layer > 0 {
            Part::Block(0)
        } else {
            Part::Final
        };
        src.fetch(Part::Embeddings, Some(first))?;
        {
            let e = src.get(Part::Embeddings);
            let wte = &e[within(&self.wte, self.wte.start)];
            let wpe = &e[within(&self.wpe, self.wte.start)];
            embedding_forward(&mut acts.encoded, tokens, wte, wpe, b, t, c);
        }
        src.release(Part::Embeddings);
        for (l, w) in self.blocks.iter().enumerate() {
            let part = Part::Block(l);
            let next = if l + 1 < cfg.n_layer {
                Part::Block(l + 1)
            } else {
                Part::Final
            };
            src.fetch(part, Some(next))?;
            let p = w.params(src.get(part), self.part_range(part).start);
            let (before, rest) = acts.blocks.split_at_mut(l);
            let a = &mut rest[0];
            let input: &[f32] = match before.last() {
                Some(prev) => &prev.out,
                None => &acts.encoded,
            };
            let mut bufs = a.kept.views(&mut acts.recompute);
            block_forward(
                &mut bufs,
                Some(&mut a.out),
                input,
                &p,
                d,
                cfg.layer_norm_eps,
            );
            src.release(part);
        }
        let last: &[f32] = match acts.blocks.last() {
            Some(a) => &a.out,
            None => &acts.encoded,
        };
        src.fetch(Part::Final, Some(Part::Embeddings))?;
        src.fetch(Part::Embeddings, None)?;
        {
            let f = src.get(Part::Final);
            layernorm_forward(
                &mut acts.lnf,
                &mut acts.lnf_mean,
                &mut acts.lnf_rstd,
                last,
                &f[within(&self.lnf_w, self.lnf_w.start)],
                &f[within(&self.lnf_b, self.lnf_w.start)],
                n,
                c,
                cfg.layer_norm_eps,
            );
            // Tied LM head: logits = lnf · wteᵀ, wte is [V, C].
            let e = src.get(Part::Embeddings);
            matmul_forward(
                &mut acts.logits,
                &acts.lnf,
                &e[within(&self.wte, self.wte.start)],
                None,
                n,
                c,
                v,
                WeightLayout::OutIn,
            );
        }
        let Some(targets) = targets else {
            src.release(Part::Final);
            src.release(Part::Embeddings);
            return Ok(None);
        };
        acts.targets.copy_from_slice(targets);
        crossentropy_forward(&mut acts.losses, &mut acts.lse, &acts.logits, targets, n, v);
        acts.ready_for_backward = true;
        // Sum in f64 in a fixed order so the loss is deterministic and exact enough.
        let mean = acts.losses.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        Ok(Some(mean as f32))
    }
}

/// One block's forward from `input` `[N, C]` into `a`; with `out`, the block's output
/// `residual3 = residual2 + fcproj(gelu(fc(ln2(residual2))))` too, where
/// `residual2 = input + attproj(attn(qkv(ln1(input))))`. Without `out` it stops after
/// the GELU: that is all backward reads (what [`Recompute::Full`] re-runs).
pub(super) fn block_forward(
    a: &mut LayerBufs<'_>,
    out: Option<&mut [f32]>,
    input: &[f32],
    p: &BlockParams<'_>,
    d: Dims,
    eps: f32,
) {
    let (n, c) = (d.n(), d.c);
    layernorm_forward(
        a.ln1, a.ln1_mean, a.ln1_rstd, input, p.ln1_w, p.ln1_b, n, c, eps,
    );
    let layout = WeightLayout::InOut;
    matmul_forward(a.qkv, a.ln1, p.qkv_w, Some(p.qkv_b), n, c, 3 * c, layout);
    attention_forward(a.atty, a.att_lse, a.qkv, d.b, d.t, c, d.nh);
    matmul_forward(
        a.residual2,
        a.atty,
        p.attproj_w,
        Some(p.attproj_b),
        n,
        c,
        c,
        layout,
    );
    add_inplace(a.residual2, input);
    layernorm_forward(
        a.ln2,
        a.ln2_mean,
        a.ln2_rstd,
        a.residual2,
        p.ln2_w,
        p.ln2_b,
        n,
        c,
        eps,
    );
    matmul_forward(a.fch, a.ln2, p.fc_w, Some(p.fc_b), n, c, 4 * c, layout);
    gelu_forward(a.fch_gelu, a.fch);
    if let Some(out) = out {
        matmul_forward(
            out,
            a.fch_gelu,
            p.fcproj_w,
            Some(p.fcproj_b),
            n,
            4 * c,
            c,
            layout,
        );
        add_inplace(out, a.residual2);
    }
}

/// Refills what a block under `policy` dropped, from its `input` and the tensors it
/// kept, just before its backward: nothing for [`Recompute::None`]; the attention
/// core's output and log-sum-exp from the kept `qkv` for [`Recompute::Selective`];
/// the block's forward up to the GELU for [`Recompute::Full`]. The kernels are
/// deterministic, so the refilled tensors equal the ones forward computed, bit for bit.
pub(super) fn recompute_block(
    policy: Recompute,
    a: &mut LayerBufs<'_>,
    input: &[f32],
    p: &BlockParams<'_>,
    d: Dims,
    eps: f32,
) {
    match policy {
        Recompute::None => {}
        Recompute::Selective => attention_forward(a.atty, a.att_lse, a.qkv, d.b, d.t, d.c, d.nh),
        Recompute::Full => block_forward(a, None, input, p, d, eps),
    }
}
