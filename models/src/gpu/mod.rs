//! GPT-2 training on one GPU (built with the `cuda` feature): the flat
//! parameters, gradients and AdamW moments live on the device, and forward,
//! backward and the optimizer step run on `shoal_kernels::cuda` (cuBLAS fp32
//! products, NVRTC-compiled kernels), in the same op order and layouts as
//! [`crate::Gpt`], so results can be held to the CPU model.
//!
//! Dimensions: B batch, T time, C channels, NH heads, V vocab, L layers, N = B·T.

use std::ops::Range;

use shoal_kernels::cuda::{self as k, CudaError, CudaSlice, Gpu};
use shoal_kernels::{AdamW, DecaySpan, WeightLayout, clip_coefficient};

use crate::gpt::BlockRanges;
use crate::parts::check_len;
use crate::{GptConfig, ModelError, ParamLayout};

mod backward;
#[cfg(test)]
mod tests;

/// Why a GPU model operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GpuModelError {
    /// The configuration or inputs are invalid.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The GPU failed.
    #[error(transparent)]
    Cuda(#[from] CudaError),
}

/// One block's activations on the device, kept from forward for backward.
struct BlockActs {
    ln1: CudaSlice<f32>,       // [N, C]
    ln1_mean: CudaSlice<f32>,  // [N]
    ln1_rstd: CudaSlice<f32>,  // [N]
    qkv: CudaSlice<f32>,       // [N, 3C]
    atty: CudaSlice<f32>,      // [N, C]
    att_lse: CudaSlice<f32>,   // [B, NH, T]
    residual2: CudaSlice<f32>, // [N, C]
    ln2: CudaSlice<f32>,       // [N, C]
    ln2_mean: CudaSlice<f32>,  // [N]
    ln2_rstd: CudaSlice<f32>,  // [N]
    fch: CudaSlice<f32>,       // [N, 4C]
    fch_gelu: CudaSlice<f32>,  // [N, 4C]
    residual3: CudaSlice<f32>, // [N, C]
}

/// Backward scratch, reused across blocks.
struct Scratch {
    dresidual: CudaSlice<f32>, // [N, C]
    dln: CudaSlice<f32>,       // [N, C]
    datty: CudaSlice<f32>,     // [N, C]
    dqkv: CudaSlice<f32>,      // [N, 3C]
    dfch_gelu: CudaSlice<f32>, // [N, 4C]
    dfch: CudaSlice<f32>,      // [N, 4C]
}

/// A GPT-2 with its parameters, gradients, AdamW moments and activations (for one
/// (B, T)) on one GPU.
pub struct GpuGpt {
    config: GptConfig,
    b: usize,
    t: usize,
    spans: Vec<DecaySpan>,
    wte: Range<usize>,
    wpe: Range<usize>,
    lnf_w: Range<usize>,
    lnf_b: Range<usize>,
    blocks: Vec<BlockRanges>,
    params: CudaSlice<f32>,
    grads: CudaSlice<f32>,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    tokens: CudaSlice<u32>,
    targets: CudaSlice<u32>,
    encoded: CudaSlice<f32>, // [N, C]
    acts: Vec<BlockActs>,
    lnf: CudaSlice<f32>,      // [N, C]
    lnf_mean: CudaSlice<f32>, // [N]
    lnf_rstd: CudaSlice<f32>, // [N]
    logits: CudaSlice<f32>,   // [N, V]; overwritten by dlogits in backward
    lse: CudaSlice<f32>,      // [N]
    losses: CudaSlice<f32>,   // [N]
    scratch: Scratch,
    ready_for_backward: bool,
}

impl GpuGpt {
    /// Uploads `params` (in [`ParamLayout`] order) and allocates zeroed
    /// gradients, moments and the activations for batch `b`, sequence length `t`.
    pub fn new(
        gpu: &Gpu,
        config: GptConfig,
        params: &[f32],
        b: usize,
        t: usize,
    ) -> Result<Self, GpuModelError> {
        config.validate()?;
        if t > config.n_positions {
            let n_positions = config.n_positions;
            return Err(ModelError::SequenceTooLong { t, n_positions }.into());
        }
        if b == 0 || t == 0 {
            let reason = "batch and sequence length must be positive".into();
            return Err(ModelError::InvalidConfig(reason).into());
        }
        let layout = ParamLayout::new(&config);
        check_len("params", layout.len(), params.len())?;
        let r = |name: &str| layout.get(name).map(|t| t.range()).expect("GPT tensor");
        let blocks = BlockRanges::all(&layout, config.n_layer);
        let (n, c, nh, v) = (b * t, config.n_embd, config.n_head, config.vocab_size);
        let z = |len: usize| gpu.zeros::<f32>(len);
        let acts = (0..config.n_layer)
            .map(|_| {
                Ok(BlockActs {
                    ln1: z(n * c)?,
                    ln1_mean: z(n)?,
                    ln1_rstd: z(n)?,
                    qkv: z(n * 3 * c)?,
                    atty: z(n * c)?,
                    att_lse: z(b * nh * t)?,
                    residual2: z(n * c)?,
                    ln2: z(n * c)?,
                    ln2_mean: z(n)?,
                    ln2_rstd: z(n)?,
                    fch: z(n * 4 * c)?,
                    fch_gelu: z(n * 4 * c)?,
                    residual3: z(n * c)?,
                })
            })
            .collect::<Result<Vec<_>, CudaError>>()?;
        Ok(GpuGpt {
            b,
            t,
            spans: layout.decay_spans(),
            wte: r("wte.weight"),
            wpe: r("wpe.weight"),
            lnf_w: r("ln_f.weight"),
            lnf_b: r("ln_f.bias"),
            blocks,
            params: gpu.upload(params)?,
            grads: z(layout.len())?,
            m: z(layout.len())?,
            v: z(layout.len())?,
            tokens: gpu.zeros(n)?,
            targets: gpu.zeros(n)?,
            encoded: z(n * c)?,
            acts,
            lnf: z(n * c)?,
            lnf_mean: z(n)?,
            lnf_rstd: z(n)?,
            logits: z(n * v)?,
            lse: z(n)?,
            losses: z(n)?,
            scratch: Scratch {
                dresidual: z(n * c)?,
                dln: z(n * c)?,
                datty: z(n * c)?,
                dqkv: z(n * 3 * c)?,
                dfch_gelu: z(n * 4 * c)?,
                dfch: z(n * 4 * c)?,
            },
            ready_for_backward: false,
            config,
        })
    }

    /// The parameters, copied back to the host.
    pub fn params(&self, gpu: &Gpu) -> Result<Vec<f32>, GpuModelError> {
        Ok(gpu.download(&self.params)?)
    }

    /// The gradients, copied back to the host.
    pub fn grads(&self, gpu: &Gpu) -> Result<Vec<f32>, GpuModelError> {
        Ok(gpu.download(&self.grads)?)
    }

    /// Copies the gradients into `out` (as long as the parameters), e.g. a data-parallel
    /// rank's host buffer that its collectives then reduce.
    pub fn grads_into(&self, gpu: &Gpu, out: &mut [f32]) -> Result<(), GpuModelError> {
        check_len("grads", self.grads.len(), out.len())?;
        gpu.stream()
            .memcpy_dtoh(&self.grads, out)
            .map_err(CudaError::from)?;
        gpu.synchronize()?;
        Ok(())
    }

    /// Replaces the parameters with `params` (in [`ParamLayout`] order), e.g. those a
    /// data-parallel rank's optimizer shard just updated on the host.
    pub fn set_params(&mut self, gpu: &Gpu, params: &[f32]) -> Result<(), GpuModelError> {
        check_len("params", self.params.len(), params.len())?;
        gpu.stream()
            .memcpy_htod(params, &mut self.params)
            .map_err(CudaError::from)?;
        Ok(())
    }

    /// The AdamW first and second moments, copied back to the host.
    pub fn moments(&self, gpu: &Gpu) -> Result<(Vec<f32>, Vec<f32>), GpuModelError> {
        Ok((gpu.download(&self.m)?, gpu.download(&self.v)?))
    }

    /// Replaces the AdamW moments (zero after [`GpuGpt::new`]) with `m` and `v`,
    /// e.g. those of a checkpoint being resumed.
    pub fn set_moments(&mut self, gpu: &Gpu, m: &[f32], v: &[f32]) -> Result<(), GpuModelError> {
        check_len("adam_m", self.m.len(), m.len())?;
        check_len("adam_v", self.v.len(), v.len())?;
        let stream = gpu.stream();
        stream
            .memcpy_htod(m, &mut self.m)
            .map_err(CudaError::from)?;
        stream
            .memcpy_htod(v, &mut self.v)
            .map_err(CudaError::from)?;
        Ok(())
    }

    /// Zeroes the gradients (the start of a step).
    pub fn zero_grads(&mut self, gpu: &Gpu) -> Result<(), GpuModelError> {
        gpu.stream()
            .memset_zeros(&mut self.grads)
            .map_err(CudaError::from)?;
        Ok(())
    }

    /// Checks that `ids` holds N tokens below V.
    fn check_tokens(&self, what: &'static str, ids: &[u32]) -> Result<(), ModelError> {
        check_len(what, self.b * self.t, ids.len())?;
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

    /// Runs the model on `tokens` `[B, T]` and returns the mean cross-entropy
    /// against `targets`, keeping what [`GpuGpt::backward`] needs (as
    /// [`crate::Gpt::forward`] with targets).
    pub fn forward(
        &mut self,
        gpu: &Gpu,
        tokens: &[u32],
        targets: &[u32],
    ) -> Result<f32, GpuModelError> {
        self.check_tokens("tokens", tokens)?;
        self.check_tokens("targets", targets)?;
        let (b, t) = (self.b, self.t);
        let cfg = &self.config;
        let (n, c, nh, v, eps) = (
            b * t,
            cfg.n_embd,
            cfg.n_head,
            cfg.vocab_size,
            cfg.layer_norm_eps,
        );
        let stream = gpu.stream();
        stream
            .memcpy_htod(tokens, &mut self.tokens)
            .map_err(CudaError::from)?;
        stream
            .memcpy_htod(targets, &mut self.targets)
            .map_err(CudaError::from)?;
        self.ready_for_backward = false;
        let p = &self.params;
        let (wte, wpe) = (p.slice(self.wte.clone()), p.slice(self.wpe.clone()));
        k::embedding_forward(gpu, &mut self.encoded, &self.tokens, &wte, &wpe, b, t, c)?;
        for (l, w) in self.blocks.iter().enumerate() {
            let (before, rest) = self.acts.split_at_mut(l);
            let a = &mut rest[0];
            let residual = before.last().map_or(&self.encoded, |prev| &prev.residual3);
            let w_ = |r: &Range<usize>| p.slice(r.clone());
            let inout = WeightLayout::InOut;
            k::layernorm_forward(
                gpu,
                &mut a.ln1,
                &mut a.ln1_mean,
                &mut a.ln1_rstd,
                residual,
                &w_(&w.ln1_w),
                &w_(&w.ln1_b),
                n,
                c,
                eps,
            )?;
            k::matmul_forward(
                gpu,
                &mut a.qkv,
                &a.ln1,
                &w_(&w.qkv_w),
                Some(&w_(&w.qkv_b)),
                n,
                c,
                3 * c,
                inout,
            )?;
            k::attention_forward(gpu, &mut a.atty, &mut a.att_lse, &a.qkv, b, t, c, nh)?;
            k::matmul_forward(
                gpu,
                &mut a.residual2,
                &a.atty,
                &w_(&w.attproj_w),
                Some(&w_(&w.attproj_b)),
                n,
                c,
                c,
                inout,
            )?;
            k::add_inplace(gpu, &mut a.residual2, residual)?;
            k::layernorm_forward(
                gpu,
                &mut a.ln2,
                &mut a.ln2_mean,
                &mut a.ln2_rstd,
                &a.residual2,
                &w_(&w.ln2_w),
                &w_(&w.ln2_b),
                n,
                c,
                eps,
            )?;
            k::matmul_forward(
                gpu,
                &mut a.fch,
                &a.ln2,
                &w_(&w.fc_w),
                Some(&w_(&w.fc_b)),
                n,
                c,
                4 * c,
                inout,
            )?;
            k::gelu_forward(gpu, &mut a.fch_gelu, &a.fch)?;
            k::matmul_forward(
                gpu,
                &mut a.residual3,
                &a.fch_gelu,
                &w_(&w.fcproj_w),
                Some(&w_(&w.fcproj_b)),
                n,
                4 * c,
                c,
                inout,
            )?;
            k::add_inplace(gpu, &mut a.residual3, &a.residual2)?;
        }
        let last = self.acts.last().map_or(&self.encoded, |a| &a.residual3);
        let (lnf_w, lnf_b) = (p.slice(self.lnf_w.clone()), p.slice(self.lnf_b.clone()));
        k::layernorm_forward(
            gpu,
            &mut self.lnf,
            &mut self.lnf_mean,
            &mut self.lnf_rstd,
            last,
            &lnf_w,
            &lnf_b,
            n,
            c,
            eps,
        )?;
        // Tied LM head: logits = lnf · wteᵀ, wte is [V, C].
        let no_bias: Option<&CudaSlice<f32>> = None;
        k::matmul_forward(
            gpu,
            &mut self.logits,
            &self.lnf,
            &wte,
            no_bias,
            n,
            c,
            v,
            WeightLayout::OutIn,
        )?;
        k::crossentropy_forward(
            gpu,
            &mut self.losses,
            &mut self.lse,
            &self.logits,
            &self.targets,
            n,
            v,
        )?;
        self.ready_for_backward = true;
        // Sum in f64 in a fixed order, as the CPU model does.
        let losses = gpu.download(&self.losses)?;
        Ok((losses.iter().map(|&x| x as f64).sum::<f64>() / n as f64) as f32)
    }

    /// Clips the gradients to global norm `grad_clip` (torch semantics; 0 turns
    /// clipping off, as in the CPU trainer) and takes one AdamW step at 1-based
    /// `step`; returns the norm before clipping.
    pub fn step(
        &mut self,
        gpu: &Gpu,
        hp: &AdamW,
        step: u64,
        grad_clip: f32,
    ) -> Result<f32, GpuModelError> {
        let norm = k::sum_of_squares(gpu, &self.grads)?.sqrt() as f32;
        if grad_clip > 0.0 {
            let coef = clip_coefficient(norm, grad_clip);
            if coef < 1.0 {
                k::scale_inplace(gpu, &mut self.grads, coef)?;
            }
        }
        k::adamw_update(
            gpu,
            &mut self.params,
            &self.grads,
            &mut self.m,
            &mut self.v,
            hp,
            step,
            &self.spans,
        )?;
        Ok(norm)
    }
}
