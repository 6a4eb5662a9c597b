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
        let last = acts.last().map_or(&self.encoded, |a| &a.residual3);
        {
            split_two!(g, self.lnf_w, self.lnf_b, dw, db);
            let lnf_w = p.slice(self.lnf_w.clone());
            k::layernorm_backward(
                gpu,
                &mut s.dresidual,
                &mut dw,
                &mut db,
                &s.dln,
                last,
                &lnf_w,
                &self.lnf_mean,
                &self.lnf_rstd,
                n,
                c,
            )?;
        }
        let inout = WeightLayout::InOut;
        for (l, w) in self.blocks.iter().enumerate().rev() {
            let (before, rest) = acts.split_at(l);
            let a = &rest[0];
            let residual = before.last().map_or(&self.encoded, |prev| &prev.residual3);
            let w_ = |r: &Range<usize>| p.slice(r.clone());
            // MLP: residual3 = residual2 + fcproj(gelu(fc(ln2(residual2)))).
            for buf in [&mut s.dfch_gelu, &mut s.dfch, &mut s.dln] {
                stream.memset_zeros(buf).map_err(CudaError::from)?;
            }
            {
                split_two!(g, w.fcproj_w, w.fcproj_b, dw, db);
                k::matmul_backward(
                    gpu,
                    Some(&mut s.dfch_gelu),
                    &mut dw,
                    Some(&mut db),
                    &s.dresidual,
                    &a.fch_gelu,
                    &w_(&w.fcproj_w),
                    n,
                    4 * c,
                    c,
                    inout,
                )?;
            }
            k::gelu_backward(gpu, &mut s.dfch, &a.fch, &s.dfch_gelu)?;
            {
                split_two!(g, w.fc_w, w.fc_b, dw, db);
                k::matmul_backward(
                    gpu,
                    Some(&mut s.dln),
                    &mut dw,
                    Some(&mut db),
                    &s.dfch,
                    &a.ln2,
                    &w_(&w.fc_w),
                    n,
                    c,
                    4 * c,
                    inout,
                )?;
            }
            {
                split_two!(g, w.ln2_w, w.ln2_b, dw, db);
                k::layernorm_backward(
                    gpu,
                    &mut s.dresidual,
                    &mut dw,
                    &mut db,
                    &s.dln,
                    &a.residual2,
                    &w_(&w.ln2_w),
                    &a.ln2_mean,
                    &a.ln2_rstd,
                    n,
                    c,
                )?;
            }
            // Attention: residual2 = residual + attproj(attn(qkv(ln1(residual)))).
            for buf in [&mut s.datty, &mut s.dqkv, &mut s.dln] {
                stream.memset_zeros(buf).map_err(CudaError::from)?;
            }
            {
                split_two!(g, w.attproj_w, w.attproj_b, dw, db);
                k::matmul_backward(
                    gpu,
                    Some(&mut s.datty),
                    &mut dw,
                    Some(&mut db),
                    &s.dresidual,
                    &a.atty,
                    &w_(&w.attproj_w),
                    n,
                    c,
                    c,
                    inout,
                )?;
            }
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
            {
                split_two!(g, w.qkv_w, w.qkv_b, dw, db);
                k::matmul_backward(
                    gpu,
                    Some(&mut s.dln),
                    &mut dw,
                    Some(&mut db),
                    &s.dqkv,
                    &a.ln1,
                    &w_(&w.qkv_w),
                    n,
                    c,
                    3 * c,
                    inout,
                )?;
            }
            {
                split_two!(g, w.ln1_w, w.ln1_b, dw, db);
                k::layernorm_backward(
                    gpu,
                    &mut s.dresidual,
                    &mut dw,
                    &mut db,
                    &s.dln,
                    residual,
                    &w_(&w.ln1_w),
                    &a.ln1_mean,
                    &a.ln1_rstd,
                    n,
                    c,
                )?;
            }
        }
        split_two!(g, self.wte, self.wpe, dwte, dwpe);
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
