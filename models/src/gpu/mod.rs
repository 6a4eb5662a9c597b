//! GPT-2 training on one GPU (built with the `cuda` feature): the flat
//! parameters, gradients and AdamW moments live on the device, and forward,
//! backward and the optimizer step run on `shoal_kernels::cuda` (cuBLAS
//! products, NVRTC-compiled kernels), in the same op order and layouts as
//! [`crate::Gpt`], so results can be held to the CPU model.
//!
//! In [`Precision::Fp32`] everything is fp32 (and the products follow
//! [`Gpu::set_products`]). In [`Precision::Bf16`] (mixed precision, llm.c's
//! `floatX` design) the model keeps:
//! - fp32 master parameters, fp32 AdamW moments, and fp32 parameter gradients:
//!   cuBLAS writes the weight gradients of bf16 products straight into fp32
//!   (`CUBLAS_COMPUTE_32F`, fp32 output) and the other kernels accumulate in
//!   fp32, so gradients are never rounded to bf16 and accumulate exactly over
//!   micro-batches (2Ψ more than the ZeRO paper's bf16 gradients, see
//!   [`GpuGpt::state_bytes`]);
//! - a bf16 copy of the parameters, rewritten by the fused AdamW kernel at each
//!   step, that every forward and backward kernel and product reads;
//! - bf16 activations and activation gradients (layernorm outputs, qkv,
//!   attention output, MLP hidden states, residual stream, logits), with the
//!   layernorm statistics, softmax / log-sum-exp, losses and every sum in fp32.
//!
//! Dimensions: B batch, T time, C channels, NH heads, V vocab, L layers, N = B·T.

use std::ops::Range;

use shoal_kernels::cuda::{self as k, Bf16, CudaError, CudaSlice, Gpu};
use shoal_kernels::{AdamW, DecaySpan, clip_coefficient};

use crate::gpt::BlockRanges;
use crate::parts::check_len;
use crate::{GptConfig, ModelError, ParamLayout, Precision, Recompute, RecomputePlan, StateBytes};

use forward::{Acts, Layout, forward_pass};

mod backward;
mod forward;
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

/// How a GPU model runs attention.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuAttention {
    /// The tiled FlashAttention-2-style kernels: memory linear in T.
    #[default]
    Flash,
    /// Strided-batched cuBLAS products on the tensor cores, with every layer's
    /// `[B·NH, T, T]` probabilities kept for backward.
    Gemm,
}

impl std::str::FromStr for GpuAttention {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "flash" => Ok(GpuAttention::Flash),
            "gemm" => Ok(GpuAttention::Gemm),
            other => Err(ModelError::InvalidConfig(format!(
                "GPU attention must be flash or gemm, not `{other}`"
            ))),
        }
    }
}

impl std::fmt::Display for GpuAttention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GpuAttention::Flash => "flash",
            GpuAttention::Gemm => "gemm",
        })
    }
}

/// The dimensions of one model at one (B, T).
struct Dims {
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
    v: usize,
    eps: f32,
}

impl Dims {
    /// Rows: N = B·T.
    fn n(&self) -> usize {
        self.b * self.t
    }
}

/// Where each tensor lies in the flat parameter buffers.
struct Ranges {
    wte: Range<usize>,
    wpe: Range<usize>,
    lnf_w: Range<usize>,
    lnf_b: Range<usize>,
    blocks: Vec<BlockRanges>,
}

/// The activations, and in mixed precision the bf16 compute copy of the
/// parameters.
enum Compute {
    /// fp32 activations; the products read the fp32 parameters.
    Fp32(Acts<f32>),
    /// bf16 activations and a bf16 copy of the parameters.
    Bf16 {
        weights: CudaSlice<Bf16>,
        acts: Acts<Bf16>,
    },
}

/// A GPT-2 with its parameters, gradients, AdamW moments and activations (for one
/// (B, T)) on one GPU, in fp32 or mixed precision ([`Precision`]).
pub struct GpuGpt {
    config: GptConfig,
    dims: Dims,
    spans: Vec<DecaySpan>,
    ranges: Ranges,
    params: CudaSlice<f32>,
    /// `None` while lent out ([`GpuGpt::take_grads`]).
    grads: Option<CudaSlice<f32>>,
    /// AdamW's first and second moments; `None` once released.
    moments: Option<(CudaSlice<f32>, CudaSlice<f32>)>,
    tokens: CudaSlice<u32>,
    targets: CudaSlice<u32>,
    /// How the activations are laid out.
    layout: Layout,
    compute: Compute,
    ready_for_backward: bool,
}

impl GpuGpt {
    /// Uploads `params` (in [`ParamLayout`] order) and allocates zeroed
    /// gradients, moments and the activations for batch `b`, sequence length
    /// `t`, all in fp32.
    pub fn new(
        gpu: &Gpu,
        config: GptConfig,
        params: &[f32],
        b: usize,
        t: usize,
    ) -> Result<Self, GpuModelError> {
        Self::with_precision(gpu, config, params, b, t, Precision::Fp32)
    }

    /// [`GpuGpt::new`] in `precision`: with [`Precision::Bf16`], bf16
    /// activations and a bf16 compute copy of the parameters beside the fp32
    /// master parameters, gradients and moments (see the module docs).
    pub fn with_precision(
        gpu: &Gpu,
        config: GptConfig,
        params: &[f32],
        b: usize,
        t: usize,
        precision: Precision,
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
        let dims = Dims {
            b,
            t,
            c: config.n_embd,
            nh: config.n_head,
            v: config.vocab_size,
            eps: config.layer_norm_eps,
        };
        let master = gpu.upload(params)?;
        let acts_layout = Layout {
            full: vec![false; config.n_layer],
            gemm: false,
        };
        let compute = match precision {
            Precision::Fp32 => Compute::Fp32(Acts::new(gpu, &dims, &acts_layout)?),
            Precision::Bf16 => {
                let mut weights = gpu.zeros::<Bf16>(layout.len())?;
                k::f32_to_storage(gpu, &mut weights, &master)?;
                let acts = Acts::new(gpu, &dims, &acts_layout)?;
                Compute::Bf16 { weights, acts }
            }
        };
        let z = |len: usize| gpu.zeros::<f32>(len);
        Ok(GpuGpt {
            spans: layout.decay_spans(),
            ranges: Ranges {
                wte: r("wte.weight"),
                wpe: r("wpe.weight"),
                lnf_w: r("ln_f.weight"),
                lnf_b: r("ln_f.bias"),
                blocks: BlockRanges::all(&layout, config.n_layer),
            },
            params: master,
            grads: Some(z(layout.len())?),
            moments: Some((z(layout.len())?, z(layout.len())?)),
            tokens: gpu.zeros(b * t)?,
            targets: gpu.zeros(b * t)?,
            compute,
            layout: acts_layout,
            ready_for_backward: false,
            dims,
            config,
        })
    }

    /// The precision this model was built with.
    pub fn precision(&self) -> Precision {
        match self.compute {
            Compute::Fp32(_) => Precision::Fp32,
            Compute::Bf16 { .. } => Precision::Bf16,
        }
    }

    /// The device bytes of the model states as this model holds them: the
    /// compute parameters (fp32, or the bf16 copy), the fp32 gradients, and the
    /// optimizer state (the two fp32 moments, plus the fp32 master parameters in
    /// mixed precision). Compare [`crate::model_state_bytes`], the ZeRO paper's
    /// count, which has bf16 gradients.
    pub fn state_bytes(&self) -> StateBytes {
        let psi = self.params.len() as u64;
        let moments = self
            .moments
            .as_ref()
            .map_or(0, |(m, v)| 4 * (m.len() + v.len()) as u64);
        match self.compute {
            Compute::Fp32(_) => StateBytes {
                params: 4 * psi,
                grads: 4 * psi,
                optimizer: moments,
            },
            Compute::Bf16 { .. } => StateBytes {
                params: 2 * psi,
                grads: 4 * psi,
                optimizer: 4 * psi + moments,
            },
        }
    }

    /// Lays the activations out by `plan` (one policy per layer): a
    /// [`Recompute::Full`] layer keeps only its output and is run again in
    /// backward from its input, in activations all such layers share; `None`
    /// keeps everything. [`Recompute::Selective`] is CPU-only (the GPU attention
    /// keeps no scores either way, so it would drop only the attention output) and
    /// is refused. Takes effect from the next forward pass; gradients equal those
    /// of keeping everything.
    pub fn set_recompute(&mut self, gpu: &Gpu, plan: &RecomputePlan) -> Result<(), GpuModelError> {
        check_len("recompute plan", self.config.n_layer, plan.len())?;
        if plan.layers().contains(&Recompute::Selective) {
            let reason = "selective recomputation runs on the CPU only; use none or full on a GPU";
            return Err(ModelError::InvalidConfig(reason.into()).into());
        }
        let full = plan.layers().iter().map(|&p| p == Recompute::Full);
        let layout = Layout {
            full: full.collect(),
            gemm: self.layout.gemm,
        };
        self.relayout(gpu, layout)
    }

    /// Runs attention as `attention` from the next forward pass on:
    /// [`GpuAttention::Flash`] (the tiled kernels, memory linear in T) or
    /// [`GpuAttention::Gemm`] (cuBLAS products on the tensor cores, keeping every
    /// layer's `[B·NH, T, T]` probabilities for backward).
    pub fn set_attention(
        &mut self,
        gpu: &Gpu,
        attention: GpuAttention,
    ) -> Result<(), GpuModelError> {
        let layout = Layout {
            full: self.layout.full.clone(),
            gemm: attention == GpuAttention::Gemm,
        };
        self.relayout(gpu, layout)
    }

    /// Lays the activations out anew (the old ones freed first).
    fn relayout(&mut self, gpu: &Gpu, layout: Layout) -> Result<(), GpuModelError> {
        self.ready_for_backward = false;
        match &mut self.compute {
            Compute::Fp32(acts) => acts.relayout(gpu, &self.dims, &layout)?,
            Compute::Bf16 { acts, .. } => acts.relayout(gpu, &self.dims, &layout)?,
        }
        self.layout = layout;
        Ok(())
    }

    /// Frees the AdamW moments, for a model that only computes gradients (a
    /// data-parallel rank whose optimizer runs elsewhere); [`GpuGpt::step`] then
    /// fails, and [`GpuGpt::state_bytes`] no longer counts them.
    pub fn release_moments(&mut self) {
        self.moments = None;
    }

    /// The (master, fp32) parameters, copied back to the host.
    pub fn params(&self, gpu: &Gpu) -> Result<Vec<f32>, GpuModelError> {
        Ok(gpu.download(&self.params)?)
    }

    /// The gradients, copied back to the host.
    pub fn grads(&self, gpu: &Gpu) -> Result<Vec<f32>, GpuModelError> {
        Ok(gpu.download(self.grads.as_ref().ok_or_else(grads_out)?)?)
    }

    /// Lends the gradient buffer out (e.g. to a device collective that reduces it on
    /// another thread); until [`GpuGpt::put_grads`] gives it back, every operation
    /// that needs the gradients fails.
    pub fn take_grads(&mut self) -> Result<CudaSlice<f32>, GpuModelError> {
        self.grads.take().ok_or_else(grads_out)
    }

    /// Gives back the buffer [`GpuGpt::take_grads`] lent (as long as the
    /// parameters).
    pub fn put_grads(&mut self, grads: CudaSlice<f32>) -> Result<(), GpuModelError> {
        check_len("grads", self.params.len(), grads.len())?;
        self.grads = Some(grads);
        Ok(())
    }

    /// Copies the gradients into `out` (as long as the parameters), e.g. a data-parallel
    /// rank's host buffer that its collectives then reduce.
    pub fn grads_into(&self, gpu: &Gpu, out: &mut [f32]) -> Result<(), GpuModelError> {
        let grads = self.grads.as_ref().ok_or_else(grads_out)?;
        check_len("grads", grads.len(), out.len())?;
        gpu.stream()
            .memcpy_dtoh(grads, out)
            .map_err(CudaError::from)?;
        gpu.synchronize()?;
        Ok(())
    }

    /// Replaces the parameters with `params` (in [`ParamLayout`] order), e.g. those a
    /// data-parallel rank's optimizer shard just updated on the host; in mixed
    /// precision the bf16 copy is refreshed from them.
    pub fn set_params(&mut self, gpu: &Gpu, params: &[f32]) -> Result<(), GpuModelError> {
        check_len("params", self.params.len(), params.len())?;
        gpu.stream()
            .memcpy_htod(params, &mut self.params)
            .map_err(CudaError::from)?;
        if let Compute::Bf16 { weights, .. } = &mut self.compute {
            k::f32_to_storage(gpu, weights, &self.params)?;
        }
        Ok(())
    }
    /// The AdamW first and second moments, copied back to the host.
    pub fn moments(&self, gpu: &Gpu) -> Result<(Vec<f32>, Vec<f32>), GpuModelError> {
        let (m, v) = self.moments.as_ref().ok_or_else(moments_released)?;
        Ok((gpu.download(m)?, gpu.download(v)?))
    }

    /// Replaces the AdamW moments (zero after [`GpuGpt::new`]) with `m` and `v`,
    /// e.g. those of a checkpoint being resumed.
    pub fn set_moments(&mut self, gpu: &Gpu, m: &[f32], v: &[f32]) -> Result<(), GpuModelError> {
        let (dm, dv) = self.moments.as_mut().ok_or_else(moments_released)?;
        check_len("adam_m", dm.len(), m.len())?;
        check_len("adam_v", dv.len(), v.len())?;
        let stream = gpu.stream();
        stream.memcpy_htod(m, dm).map_err(CudaError::from)?;
        stream.memcpy_htod(v, dv).map_err(CudaError::from)?;
        Ok(())
    }

    /// Zeroes the gradients (the start of a step).
    pub fn zero_grads(&mut self, gpu: &Gpu) -> Result<(), GpuModelError> {
        gpu.stream()
            .memset_zeros(self.grads.as_mut().ok_or_else(grads_out)?)
            .map_err(CudaError::from)?;
        Ok(())
    }

    /// Checks that `ids` holds N tokens below V.
    fn check_tokens(&self, what: &'static str, ids: &[u32]) -> Result<(), ModelError> {
        check_len(what, self.dims.n(), ids.len())?;
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
        let stream = gpu.stream();
        stream
            .memcpy_htod(tokens, &mut self.tokens)
            .map_err(CudaError::from)?;
        stream
            .memcpy_htod(targets, &mut self.targets)
            .map_err(CudaError::from)?;
        self.ready_for_backward = false;
        let (d, r) = (&self.dims, &self.ranges);
        let (toks, tgts) = (&self.tokens, &self.targets);
        let losses = match &mut self.compute {
            Compute::Fp32(acts) => {
                forward_pass(gpu, d, r, &self.params, acts, toks, tgts)?;
                &acts.losses
            }
            Compute::Bf16 { weights, acts } => {
                forward_pass(gpu, d, r, weights, acts, toks, tgts)?;
                &acts.losses
            }
        };
        let losses = gpu.download(losses)?;
        self.ready_for_backward = true;
        // Sum in f64 in a fixed order, as the CPU model does.
        let n = self.dims.n();
        Ok((losses.iter().map(|&x| x as f64).sum::<f64>() / n as f64) as f32)
    }

    /// Clips the gradients to global norm `grad_clip` (torch semantics; 0 turns
    /// clipping off, as in the CPU trainer) and takes one AdamW step at 1-based
    /// `step`; returns the norm before clipping. In mixed precision the same
    /// pass rewrites the bf16 copy of the parameters.
    pub fn step(
        &mut self,
        gpu: &Gpu,
        hp: &AdamW,
        step: u64,
        grad_clip: f32,
    ) -> Result<f32, GpuModelError> {
        let (m, v) = self.moments.as_mut().ok_or_else(moments_released)?;
        let g = self.grads.as_mut().ok_or_else(grads_out)?;
        let norm = k::sum_of_squares(gpu, g)?.sqrt() as f32;
        if grad_clip > 0.0 {
            let coef = clip_coefficient(norm, grad_clip);
            if coef < 1.0 {
                k::scale_inplace(gpu, g, coef)?;
            }
        }
        let (p, g) = (&mut self.params, &*g);
        match &mut self.compute {
            Compute::Fp32(_) => k::adamw_update(gpu, p, g, m, v, hp, step, &self.spans)?,
            Compute::Bf16 { weights, .. } => {
                k::adamw_update_with_copy(gpu, p, weights, g, m, v, hp, step, &self.spans)?
            }
        }
        Ok(norm)
    }
}

/// The error of an optimizer operation on a model whose moments were released.
fn moments_released() -> GpuModelError {
    let reason = "the AdamW moments were released: this model only computes gradients";
    ModelError::InvalidConfig(reason.into()).into()
}

/// The error of an operation on the gradients while they are lent out.
fn grads_out() -> GpuModelError {
    let reason = "the gradients are lent out (GpuGpt::take_grads) and not back yet";
    ModelError::InvalidConfig(reason.into()).into()
}
