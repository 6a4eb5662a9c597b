//! GPT-2 forward and backward over a flat parameter buffer.
//!
//! Dimensions: B batch, T time, C channels (n_embd), NH heads, V vocab, L layers, N = B·T.
//! The model holds no parameters: `params`, `grads` and the optimizer state are flat buffers
//! described by [`ParamLayout`], owned by whoever runs the model (a trainer, a ZeRO shard).

use std::ops::Range;

use shoal_kernels::{
    WeightLayout, add_inplace, attention_backward, attention_forward,
    crossentropy_backward_inplace, crossentropy_forward, embedding_backward, embedding_forward,
    gelu_backward, gelu_forward, layernorm_backward, layernorm_forward, matmul_backward,
    matmul_forward,
};

use crate::parts::{GradSink, ParamSource, Part, Whole, WholeGrads, check_len, within};
use crate::{GptConfig, ModelError, ParamLayout};

/// Ranges of one block's tensors in the flat buffer.
#[derive(Clone, Debug)]
struct BlockRanges {
    ln1_w: Range<usize>,
    ln1_b: Range<usize>,
    qkv_w: Range<usize>,
    qkv_b: Range<usize>,
    attproj_w: Range<usize>,
    attproj_b: Range<usize>,
    ln2_w: Range<usize>,
    ln2_b: Range<usize>,
    fc_w: Range<usize>,
    fc_b: Range<usize>,
    fcproj_w: Range<usize>,
    fcproj_b: Range<usize>,
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

/// One block's activations, kept from forward for backward.
struct BlockActs {
    ln1: Vec<f32>,       // [N, C]
    ln1_mean: Vec<f32>,  // [N]
    ln1_rstd: Vec<f32>,  // [N]
    qkv: Vec<f32>,       // [N, 3C]
    atty: Vec<f32>,      // [N, C]
    att_lse: Vec<f32>,   // [B, NH, T]
    residual2: Vec<f32>, // [N, C]
    ln2: Vec<f32>,       // [N, C]
    ln2_mean: Vec<f32>,  // [N]
    ln2_rstd: Vec<f32>,  // [N]
    fch: Vec<f32>,       // [N, 4C]
    fch_gelu: Vec<f32>,  // [N, 4C]
    residual3: Vec<f32>, // [N, C]
}

/// Scratch buffers for backward, reused across blocks.
struct GradScratch {
    dresidual: Vec<f32>, // [N, C]
    dln: Vec<f32>,       // [N, C]
    datty: Vec<f32>,     // [N, C]
    dqkv: Vec<f32>,      // [N, 3C]
    dfch_gelu: Vec<f32>, // [N, 4C]
    dfch: Vec<f32>,      // [N, 4C]
}

/// Activations of one forward pass at a fixed (B, T), reused across steps.
pub struct Activations {
    b: usize,
    t: usize,
    tokens: Vec<u32>,
    targets: Vec<u32>,
    encoded: Vec<f32>, // [N, C]
    blocks: Vec<BlockActs>,
    lnf: Vec<f32>,      // [N, C]
    lnf_mean: Vec<f32>, // [N]
    lnf_rstd: Vec<f32>, // [N]
    logits: Vec<f32>,   // [N, V]; overwritten by dlogits in backward
    lse: Vec<f32>,      // [N]
    losses: Vec<f32>,   // [N]
    /// Per-sequence weights of the loss backward differentiates (`[B]`); empty means all 1.
    seq_weights: Vec<f32>,
    scratch: GradScratch,
    /// Whether `logits` holds logits of a forward pass with targets (not yet consumed).
    ready_for_backward: bool,
}

impl Activations {
    /// Buffers for batch `b` and sequence length `t`.
    pub fn new(config: &GptConfig, b: usize, t: usize) -> Result<Self, ModelError> {
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
        let (n, c, nh) = (b * t, config.n_embd, config.n_head);
        let z = |len: usize| vec![0.0f32; len];
        let blocks = (0..config.n_layer)
            .map(|_| BlockActs {
                ln1: z(n * c),
                ln1_mean: z(n),
                ln1_rstd: z(n),
                qkv: z(n * 3 * c),
                atty: z(n * c),
                att_lse: z(b * nh * t),
                residual2: z(n * c),
                ln2: z(n * c),
                ln2_mean: z(n),
                ln2_rstd: z(n),
                fch: z(n * 4 * c),
                fch_gelu: z(n * 4 * c),
                residual3: z(n * c),
            })
            .collect();
        Ok(Self {
            b,
            t,
            tokens: vec![0; n],
            targets: vec![0; n],
            encoded: z(n * c),
            blocks,
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

    /// Bytes held by these activations (for memory accounting).
    pub fn bytes(&self) -> usize {
        let block: usize = self
            .blocks
            .iter()
            .map(|a| {
                a.ln1.len()
                    + a.ln1_mean.len()
                    + a.ln1_rstd.len()
                    + a.qkv.len()
                    + a.atty.len()
                    + a.att_lse.len()
                    + a.residual2.len()
                    + a.ln2.len()
                    + a.ln2_mean.len()
                    + a.ln2_rstd.len()
                    + a.fch.len()
                    + a.fch_gelu.len()
                    + a.residual3.len()
            })
            .sum();
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
        4 * (block + rest) + 8 * self.tokens.len()
    }
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
        let blocks = (0..config.n_layer)
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
            .collect();
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
        let (n, c, nh, v) = (b * t, cfg.n_embd, cfg.n_head, cfg.vocab_size);
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
            let (buf, base) = (src.get(part), self.part_range(part).start);
            let p = |r: &Range<usize>| &buf[within(r, base)];
            let (before, rest) = acts.blocks.split_at_mut(l);
            let a = &mut rest[0];
            let residual: &[f32] = match before.last() {
                Some(prev) => &prev.residual3,
                None => &acts.encoded,
            };
            layernorm_forward(
                &mut a.ln1,
                &mut a.ln1_mean,
                &mut a.ln1_rstd,
                residual,
                p(&w.ln1_w),
                p(&w.ln1_b),
                n,
                c,
                cfg.layer_norm_eps,
            );
            matmul_forward(
                &mut a.qkv,
                &a.ln1,
                p(&w.qkv_w),
                Some(p(&w.qkv_b)),
                n,
                c,
                3 * c,
                WeightLayout::InOut,
            );
            attention_forward(&mut a.atty, &mut a.att_lse, &a.qkv, b, t, c, nh);
            matmul_forward(
                &mut a.residual2,
                &a.atty,
                p(&w.attproj_w),
                Some(p(&w.attproj_b)),
                n,
                c,
                c,
                WeightLayout::InOut,
            );
            add_inplace(&mut a.residual2, residual);
            layernorm_forward(
                &mut a.ln2,
                &mut a.ln2_mean,
                &mut a.ln2_rstd,
                &a.residual2,
                p(&w.ln2_w),
                p(&w.ln2_b),
                n,
                c,
                cfg.layer_norm_eps,
            );
            matmul_forward(
                &mut a.fch,
                &a.ln2,
                p(&w.fc_w),
                Some(p(&w.fc_b)),
                n,
                c,
                4 * c,
                WeightLayout::InOut,
            );
            gelu_forward(&mut a.fch_gelu, &a.fch);
            matmul_forward(
                &mut a.residual3,
                &a.fch_gelu,
                p(&w.fcproj_w),
                Some(p(&w.fcproj_b)),
                n,
                4 * c,
                c,
                WeightLayout::InOut,
            );
            add_inplace(&mut a.residual3, &a.residual2);
            src.release(part);
        }
        let last: &[f32] = match acts.blocks.last() {
            Some(a) => &a.residual3,
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
        let (n, c, nh, v) = (b * t, cfg.n_embd, cfg.n_head, cfg.vocab_size);

        let Activations {
            tokens,
            targets,
            encoded,
            blocks,
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
            Some(a) => &a.residual3,
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
            let (buf, base) = (src.get(part), self.part_range(part).start);
            let p = |r: &Range<usize>| &buf[within(r, base)];
            let (before, rest) = blocks.split_at(l);
            let a = &rest[0];
            let residual: &[f32] = match before.last() {
                Some(prev) => &prev.residual3,
                None => encoded,
            };
            let g = sink.grads(part)?;
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
                    &a.fch_gelu,
                    p(&w.fcproj_w),
                    n,
                    4 * c,
                    c,
                    WeightLayout::InOut,
                );
            }
            gelu_backward(&mut s.dfch, &a.fch, &s.dfch_gelu);
            {
                let (wr, br) = rel(&w.fc_w, &w.fc_b);
                let (dw, db) = split_two(&mut *g, &wr, &br);
                matmul_backward(
                    Some(&mut s.dln),
                    dw,
                    Some(db),
                    &s.dfch,
                    &a.ln2,
                    p(&w.fc_w),
                    n,
                    c,
                    4 * c,
                    WeightLayout::InOut,
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
                    &a.residual2,
                    p(&w.ln2_w),
                    &a.ln2_mean,
                    &a.ln2_rstd,
                    n,
                    c,
                );
            }
            // Attention: residual2 = residual + attproj(attn(qkv(ln1(residual)))).
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
                    &a.atty,
                    p(&w.attproj_w),
                    n,
                    c,
                    c,
                    WeightLayout::InOut,
                );
            }
            attention_backward(
                &mut s.dqkv,
                &s.datty,
                &a.qkv,
                &a.atty,
                &a.att_lse,
                b,
                t,
                c,
                nh,
            );
            {
                let (wr, br) = rel(&w.qkv_w, &w.qkv_b);
                let (dw, db) = split_two(&mut *g, &wr, &br);
                matmul_backward(
                    Some(&mut s.dln),
                    dw,
                    Some(db),
                    &s.dqkv,
                    &a.ln1,
                    p(&w.qkv_w),
                    n,
                    c,
                    3 * c,
                    WeightLayout::InOut,
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
                    residual,
                    p(&w.ln1_w),
                    &a.ln1_mean,
                    &a.ln1_rstd,
                    n,
                    c,
                );
            }
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
