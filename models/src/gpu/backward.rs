//! The backward pass of [`GpuGpt`], in the op order of [`crate::Gpt::backward`].

use std::ops::Range;

use shoal_kernels::WeightLayout;
use shoal_kernels::cuda::{self as k, CudaError, CudaSlice, Gpu};

use super::{GpuGpt, GpuModelError};
use crate::ModelError;

/// `(dw, db)`: mutable views of two tensors of `$buf`, `$first` before `$second`.
macro_rules! split_two {
    ($buf:expr, $first:expr, $second:expr, $dw:ident, $db:ident) => {
        let (mut head, mut tail) = $buf.split_at_mut($second.start);
        let mut $dw = head.slice_mut($first.clone());
        let mut $db = tail.slice_mut(0..$second.len());
    };
}

/// The flat parameters and gradients, and the row count N, that every layer's
/// backward reads and accumulates into.
struct FlatBuffers<'a> {
    gpu: &'a Gpu,
    params: &'a CudaSlice<f32>,
    grads: &'a mut CudaSlice<f32>,
    n: usize,
}

impl FlatBuffers<'_> {
    /// Backward of a dense layer `out = inp · W + b` (`W` `[C, OC]` at `w`, `b`
    /// `[OC]` at `bias` in the flat buffers): accumulates into `dinp` and the
    /// gradients of `W` and `b`.
    fn dense(
        &mut self,
        (w, bias): (&Range<usize>, &Range<usize>),
        dinp: &mut CudaSlice<f32>,
        dout: &CudaSlice<f32>,
        inp: &CudaSlice<f32>,
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
            &self.params.slice(w.clone()),
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
        dinp: &mut CudaSlice<f32>,
        dout: &CudaSlice<f32>,
        inp: &CudaSlice<f32>,
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
            &self.params.slice(w.clone()),
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
        let (b, t) = (self.b, self.t);
        let cfg = &self.config;
        let (n, c, nh, v) = (b * t, cfg.n_embd, cfg.n_head, cfg.vocab_size);
        let stream = gpu.stream();
        let Self {
            params: p,
            grads: g,
            scratch: s,
            acts,
            ..
        } = self;
        for buf in [&mut s.dresidual, &mut s.dln] {
            stream.memset_zeros(buf).map_err(CudaError::from)?;
        }
        k::crossentropy_backward_inplace(
            gpu,
            &mut self.logits,
            &self.lse,
            &self.targets,
            loss_scale / n as f32,
            n,
            v,
        )?;
        let wte = p.slice(self.wte.clone());
        let no_grad: Option<&mut CudaSlice<f32>> = None;
        k::matmul_backward(
            gpu,
            Some(&mut s.dln),
            &mut g.slice_mut(self.wte.clone()),
            no_grad,
            &self.logits,
            &self.lnf,
            &wte,
            n,
            c,
            v,
            WeightLayout::OutIn,
        )?;
        let mut flat = FlatBuffers {
            gpu,
            params: p,
            grads: g,
            n,
        };
        let last = acts.last().map_or(&self.encoded, |a| &a.residual3);
        flat.layernorm(
            (&self.lnf_w, &self.lnf_b),
            &mut s.dresidual,
            &s.dln,
            last,
            (&self.lnf_mean, &self.lnf_rstd),
            c,
        )?;
        for (l, w) in self.blocks.iter().enumerate().rev() {
            let (before, rest) = acts.split_at(l);
            let a = &rest[0];
            let residual = before.last().map_or(&self.encoded, |prev| &prev.residual3);
            // MLP: residual3 = residual2 + fcproj(gelu(fc(ln2(residual2)))).
            for buf in [&mut s.dfch_gelu, &mut s.dfch, &mut s.dln] {
                stream.memset_zeros(buf).map_err(CudaError::from)?;
            }
            flat.dense(
                (&w.fcproj_w, &w.fcproj_b),
                &mut s.dfch_gelu,
                &s.dresidual,
                &a.fch_gelu,
                4 * c,
                c,
            )?;
            k::gelu_backward(gpu, &mut s.dfch, &a.fch, &s.dfch_gelu)?;
            flat.dense((&w.fc_w, &w.fc_b), &mut s.dln, &s.dfch, &a.ln2, c, 4 * c)?;
            flat.layernorm(
                (&w.ln2_w, &w.ln2_b),
                &mut s.dresidual,
                &s.dln,
                &a.residual2,
                (&a.ln2_mean, &a.ln2_rstd),
                c,
            )?;
            // Attention: residual2 = residual + attproj(attn(qkv(ln1(residual)))).
            for buf in [&mut s.datty, &mut s.dqkv, &mut s.dln] {
                stream.memset_zeros(buf).map_err(CudaError::from)?;
            }
            let attproj = (&w.attproj_w, &w.attproj_b);
            flat.dense(attproj, &mut s.datty, &s.dresidual, &a.atty, c, c)?;
            k::attention_backward(
                gpu,
                &mut s.dqkv,
                &s.datty,
                &a.qkv,
                &a.atty,
                &a.att_lse,
                b,
                t,
                c,
                nh,
            )?;
            flat.dense((&w.qkv_w, &w.qkv_b), &mut s.dln, &s.dqkv, &a.ln1, c, 3 * c)?;
            flat.layernorm(
                (&w.ln1_w, &w.ln1_b),
                &mut s.dresidual,
                &s.dln,
                residual,
                (&a.ln1_mean, &a.ln1_rstd),
                c,
            )?;
        }
        split_two!(flat.grads, self.wte, self.wpe, dwte, dwpe);
        k::embedding_backward(
            gpu,
            &mut dwte,
            &mut dwpe,
            &s.dresidual,
            &self.tokens,
            b,
            t,
            c,
        )?;
        Ok(())
    }
}
