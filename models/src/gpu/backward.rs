//! The backward pass of [`GpuGpt`], in the op order of [`crate::Gpt::backward`],
//! generic over the storage type of the weights and activations (`f32`, or
//! `Bf16` in mixed precision); the parameter gradients are fp32 in both.

use std::ops::Range;

use shoal_kernels::WeightLayout;
use shoal_kernels::cuda::{self as k, CudaError, CudaSlice, Gpu, Storage};

use super::forward::{Acts, block_forward};
use super::{Compute, Dims, GpuGpt, GpuModelError, Ranges};
use crate::ModelError;

/// `(dw, db)`: mutable views of two tensors of `$buf`, `$first` before `$second`.
macro_rules! split_two {
    ($buf:expr, $first:expr, $second:expr, $dw:ident, $db:ident) => {
        let (mut head, mut tail) = $buf.split_at_mut($second.start);
        let mut $dw = head.slice_mut($first.clone());
        let mut $db = tail.slice_mut(0..$second.len());
    };
}

/// The flat weights and gradients, and the row count N, that every layer's
/// backward reads and accumulates into.
struct FlatBuffers<'a, X> {
    gpu: &'a Gpu,
    weights: &'a CudaSlice<X>,
    grads: &'a mut CudaSlice<f32>,
    n: usize,
}

impl<X: Storage> FlatBuffers<'_, X> {
    /// Backward of a dense layer `out = inp · W + b` (`W` `[C, OC]` at `w`, `b`
    /// `[OC]` at `bias` in the flat buffers): accumulates into `dinp` and the
    /// gradients of `W` and `b`.
    fn dense(
        &mut self,
        (w, bias): (&Range<usize>, &Range<usize>),
        dinp: &mut CudaSlice<X>,
        dout: &CudaSlice<X>,
        inp: &CudaSlice<X>,
        c: usize,
        oc: usize,
    ) -> Result<(), CudaError> {
        split_two!(self.grads, w, bias, dw, db);
        k::matmul_backward(
            self.gpu,
            Some(dinp),
            &mut dw,
            Some(&mut db),
            dout,
            inp,
            &self.weights.slice(w.clone()),
            self.n,
            c,
            oc,
            WeightLayout::InOut,
        )
    }

    /// Backward of a layer norm of `inp` with weight at `w` and bias at `bias`
    /// in the flat buffers: accumulates into `dinp` and their gradients.
    fn layernorm(
        &mut self,
        (w, bias): (&Range<usize>, &Range<usize>),
        dinp: &mut CudaSlice<X>,
        dout: &CudaSlice<X>,
        inp: &CudaSlice<X>,
        (mean, rstd): (&CudaSlice<f32>, &CudaSlice<f32>),
        c: usize,
    ) -> Result<(), CudaError> {
        split_two!(self.grads, w, bias, dw, db);
        k::layernorm_backward(
            self.gpu,
            dinp,
            &mut dw,
            &mut db,
            dout,
            inp,
            &self.weights.slice(w.clone()),
            mean,
            rstd,
            self.n,
            c,
        )
    }
}

impl GpuGpt {
    /// Accumulates `d(loss_scale · mean cross-entropy) / d params` of the last
    /// forward pass into the gradients (as [`crate::Gpt::backward`]); consumes
    /// the logits.
    pub fn backward(&mut self, gpu: &Gpu, loss_scale: f32) -> Result<(), GpuModelError> {
        if !self.ready_for_backward {
            return Err(ModelError::NoForward.into());
        }
        self.ready_for_backward = false;
        let g = self.grads.as_mut().ok_or_else(super::grads_out)?;
        let (d, r) = (&self.dims, &self.ranges);
        let (toks, tgts) = (&self.tokens, &self.targets);
        match &mut self.compute {
            Compute::Fp32(acts) => {
                backward_pass(gpu, (d, r), (&self.params, g), acts, toks, tgts, loss_scale)?
            }
            Compute::Bf16 { weights, acts } => {
                backward_pass(gpu, (d, r), (weights, g), acts, toks, tgts, loss_scale)?
            }
        }
        Ok(())
    }
}

/// The backward pass with weights `p` (at `r`) over the activations `a` of the
/// last forward pass on `tokens`, `targets`: accumulates into `grads`.
fn backward_pass<X: Storage>(
    gpu: &Gpu,
    (d, r): (&Dims, &Ranges),
    (p, grads): (&CudaSlice<X>, &mut CudaSlice<f32>),
    a: &mut Acts<X>,
    tokens: &CudaSlice<u32>,
    targets: &CudaSlice<u32>,
    loss_scale: f32,
) -> Result<(), CudaError> {
    let (b, t, c, nh, v) = (d.b, d.t, d.c, d.nh, d.v);
    let n = d.n();
    let stream = gpu.stream();
    let Acts {
        encoded,
        blocks,
        outputs,
        work,
        gemm,
        lnf,
        lnf_mean,
        lnf_rstd,
        logits,
        lse,
        scratch: s,
        ..
    } = a;
    for buf in [&mut s.dresidual, &mut s.dln] {
        stream.memset_zeros(buf)?;
    }
    k::crossentropy_backward_inplace(gpu, logits, lse, targets, loss_scale / n as f32, n, v)?;
    let wte = p.slice(r.wte.clone());
    let no_grad: Option<&mut CudaSlice<f32>> = None;
    k::matmul_backward(
        gpu,
        Some(&mut s.dln),
        &mut grads.slice_mut(r.wte.clone()),
        no_grad,
        logits,
        lnf,
        &wte,
        n,
        c,
        v,
        WeightLayout::OutIn,
    )?;
    let mut flat = FlatBuffers {
        gpu,
        weights: p,
        grads,
        n,
    };
    let last = outputs.last().unwrap_or(&*encoded);
    flat.layernorm(
        (&r.lnf_w, &r.lnf_b),
        &mut s.dresidual,
        &s.dln,
        last,
        (lnf_mean, lnf_rstd),
        c,
    )?;
    for (l, w) in r.blocks.iter().enumerate().rev() {
        let (before, rest) = outputs.split_at_mut(l);
        let residual = before.last().unwrap_or(&*encoded);
        let x = match blocks[l].as_mut() {
            Some(kept) => kept,
            None => {
                // Recomputed: the layer's forward again, from its kept input (its
                // output, rewritten with the same values, is not read again).
                let x = work
                    .as_mut()
                    .expect("a recomputed layer has the work activations");
                block_forward(gpu, d, (p, w), residual, x, gemm.as_mut(), &mut rest[0])?;
                x
            }
        };
        // MLP: residual3 = residual2 + fcproj(gelu(fc(ln2(residual2)))).
        for buf in [&mut s.dfch_gelu, &mut s.dfch, &mut s.dln] {
            stream.memset_zeros(buf)?;
        }
        flat.dense(
            (&w.fcproj_w, &w.fcproj_b),
            &mut s.dfch_gelu,
            &s.dresidual,
            &x.fch_gelu,
            4 * c,
            c,
        )?;
        k::gelu_backward(gpu, &mut s.dfch, &x.fch, &s.dfch_gelu)?;
        flat.dense((&w.fc_w, &w.fc_b), &mut s.dln, &s.dfch, &x.ln2, c, 4 * c)?;
        flat.layernorm(
            (&w.ln2_w, &w.ln2_b),
            &mut s.dresidual,
            &s.dln,
            &x.residual2,
            (&x.ln2_mean, &x.ln2_rstd),
            c,
        )?;
        // Attention: residual2 = residual + attproj(attn(qkv(ln1(residual)))).
        for buf in [&mut s.datty, &mut s.dqkv, &mut s.dln] {
            stream.memset_zeros(buf)?;
        }
        let attproj = (&w.attproj_w, &w.attproj_b);
        flat.dense(attproj, &mut s.datty, &s.dresidual, &x.atty, c, c)?;
        match (x.probs.as_mut(), gemm.as_mut()) {
            (Some(probs), Some(scratch)) => {
                let shape = (b, t, c, nh);
                let (dqkv, dout) = (&mut s.dqkv, &s.datty);
                k::attention_backward_gemm(gpu, dqkv, dout, &x.qkv, probs, scratch, shape)?
            }
            _ => k::attention_backward(
                gpu,
                &mut s.dqkv,
                &s.datty,
                &x.qkv,
                &x.atty,
                &x.att_lse,
                b,
                t,
                c,
                nh,
            )?,
        }
        flat.dense((&w.qkv_w, &w.qkv_b), &mut s.dln, &s.dqkv, &x.ln1, c, 3 * c)?;
        flat.layernorm(
            (&w.ln1_w, &w.ln1_b),
            &mut s.dresidual,
            &s.dln,
            residual,
            (&x.ln1_mean, &x.ln1_rstd),
            c,
        )?;
    }
    split_two!(flat.grads, r.wte, r.wpe, dwte, dwpe);
    k::embedding_backward(gpu, &mut dwte, &mut dwpe, &s.dresidual, tokens, b, t, c)
}
