//! The activations of [`super::GpuGpt`] in a storage type `X` (`f32`, or `Bf16`
//! in mixed precision) and its forward pass, in the op order of
//! [`crate::Gpt::forward`]. Layernorm statistics, log-sum-exps and losses are
//! fp32 in both.

use std::ops::Range;

use shoal_kernels::WeightLayout;
use shoal_kernels::cuda::{self as k, CudaError, CudaSlice, GemmAttentionScratch, Gpu, Storage};

use super::{Dims, Ranges};
use crate::gpt::BlockRanges;

/// One block's activations on the device, kept from forward for backward (its
/// output, the residual stream after it, is kept apart: see [`Acts`]).
pub(super) struct BlockActs<X> {
    pub(super) ln1: CudaSlice<X>,        // [N, C]
    pub(super) ln1_mean: CudaSlice<f32>, // [N]
    pub(super) ln1_rstd: CudaSlice<f32>, // [N]
    pub(super) qkv: CudaSlice<X>,        // [N, 3C]
    pub(super) atty: CudaSlice<X>,       // [N, C]
    pub(super) att_lse: CudaSlice<f32>,  // [B, NH, T]
    pub(super) residual2: CudaSlice<X>,  // [N, C]
    pub(super) ln2: CudaSlice<X>,        // [N, C]
    pub(super) ln2_mean: CudaSlice<f32>, // [N]
    pub(super) ln2_rstd: CudaSlice<f32>, // [N]
    pub(super) fch: CudaSlice<X>,        // [N, 4C]
    pub(super) fch_gelu: CudaSlice<X>,   // [N, 4C]
    /// The attention probabilities `[B·NH, T, T]` when attention runs on cuBLAS
    /// ([`super::GpuAttention::Gemm`]).
    pub(super) probs: Option<CudaSlice<X>>,
}

/// Backward scratch (activation gradients), reused across blocks.
pub(super) struct Scratch<X> {
    pub(super) dresidual: CudaSlice<X>, // [N, C]
    pub(super) dln: CudaSlice<X>,       // [N, C]
    pub(super) datty: CudaSlice<X>,     // [N, C]
    pub(super) dqkv: CudaSlice<X>,      // [N, 3C]
    pub(super) dfch_gelu: CudaSlice<X>, // [N, 4C]
    pub(super) dfch: CudaSlice<X>,      // [N, 4C]
}

/// Every activation of one (B, T), and the backward scratch.
///
/// Each layer's output (`outputs[l]`, the next layer's input) is always kept. A
/// layer under [`crate::Recompute::Full`] keeps nothing else (`blocks[l]` is `None`):
/// forward runs it in the shared `work` activations, and backward runs its
/// forward again there from its input just before its backward.
pub(super) struct Acts<X> {
    pub(super) encoded: CudaSlice<X>, // [N, C]
    pub(super) blocks: Vec<Option<BlockActs<X>>>,
    pub(super) outputs: Vec<CudaSlice<X>>, // L × [N, C]
    pub(super) work: Option<BlockActs<X>>,
    /// The head-major buffers of the cuBLAS attention, when it runs.
    pub(super) gemm: Option<GemmAttentionScratch<X>>,
    pub(super) lnf: CudaSlice<X>,        // [N, C]
    pub(super) lnf_mean: CudaSlice<f32>, // [N]
    pub(super) lnf_rstd: CudaSlice<f32>, // [N]
    pub(super) logits: CudaSlice<X>,     // [N, V]; overwritten by dlogits in backward
    pub(super) lse: CudaSlice<f32>,      // [N]
    pub(super) losses: CudaSlice<f32>,   // [N]
    pub(super) scratch: Scratch<X>,
}

impl<X: Storage> BlockActs<X> {
    /// Zeroed activations of one block for `d` (with the attention
    /// probabilities when `gemm`).
    fn new(gpu: &Gpu, d: &Dims, gemm: bool) -> Result<Self, CudaError> {
        let (n, c) = (d.n(), d.c);
        let x = |len: usize| gpu.zeros::<X>(len);
        let f = |len: usize| gpu.zeros::<f32>(len);
        Ok(BlockActs {
            ln1: x(n * c)?,
            ln1_mean: f(n)?,
            ln1_rstd: f(n)?,
            qkv: x(n * 3 * c)?,
            atty: x(n * c)?,
            att_lse: f(d.b * d.nh * d.t)?,
            residual2: x(n * c)?,
            ln2: x(n * c)?,
            ln2_mean: f(n)?,
            ln2_rstd: f(n)?,
            fch: x(n * 4 * c)?,
            fch_gelu: x(n * 4 * c)?,
            probs: gemm
                .then(|| x(k::gemm_attention_probs_len(d.b, d.t, d.nh)))
                .transpose()?,
        })
    }
}

/// How a model's activations are laid out: which layers are recomputed
/// ([`crate::Recompute::Full`]) and whether attention runs on cuBLAS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Layout {
    pub(super) full: Vec<bool>,
    pub(super) gemm: bool,
}

impl<X: Storage> Acts<X> {
    /// Lays the blocks' activations out anew by `layout` (as [`Acts::new`]),
    /// freeing the old ones first; the rest is kept.
    pub(super) fn relayout(
        &mut self,
        gpu: &Gpu,
        d: &Dims,
        layout: &Layout,
    ) -> Result<(), CudaError> {
        self.blocks.clear();
        self.work = None;
        self.gemm = None;
        let gemm = layout.gemm;
        self.blocks = layout
            .full
            .iter()
            .map(|&full| (!full).then(|| BlockActs::new(gpu, d, gemm)).transpose())
            .collect::<Result<Vec<_>, CudaError>>()?;
        if layout.full.iter().any(|&full| full) {
            self.work = Some(BlockActs::new(gpu, d, gemm)?);
        }
        if gemm {
            self.gemm = Some(GemmAttentionScratch::new(gpu, d.b, d.t, d.c, d.nh)?);
        }
        Ok(())
    }

    /// Zeroed activations for `d`, laid out by `layout`.
    pub(super) fn new(gpu: &Gpu, d: &Dims, layout: &Layout) -> Result<Self, CudaError> {
        let (n, c) = (d.n(), d.c);
        let x = |len: usize| gpu.zeros::<X>(len);
        let f = |len: usize| gpu.zeros::<f32>(len);
        let outputs = layout
            .full
            .iter()
            .map(|_| x(n * c))
            .collect::<Result<Vec<_>, CudaError>>()?;
        let mut acts = Acts {
            encoded: x(n * c)?,
            blocks: Vec::new(),
            outputs,
            work: None,
            gemm: None,
            lnf: x(n * c)?,
            lnf_mean: f(n)?,
            lnf_rstd: f(n)?,
            logits: x(n * d.v)?,
            lse: f(n)?,
            losses: f(n)?,
            scratch: Scratch {
                dresidual: x(n * c)?,
                dln: x(n * c)?,
                datty: x(n * c)?,
                dqkv: x(n * 3 * c)?,
                dfch_gelu: x(n * 4 * c)?,
                dfch: x(n * 4 * c)?,
            },
        };
        acts.relayout(gpu, d, layout)?;
        Ok(acts)
    }
}

/// The forward pass on `tokens` with weights `p` (in [`crate::ParamLayout`]
/// order, at `r`), leaving the per-row losses against `targets` in `a.losses`
/// and what backward needs in `a`.
pub(super) fn forward_pass<X: Storage>(
    gpu: &Gpu,
    d: &Dims,
    r: &Ranges,
    p: &CudaSlice<X>,
    a: &mut Acts<X>,
    tokens: &CudaSlice<u32>,
    targets: &CudaSlice<u32>,
) -> Result<(), CudaError> {
    let (b, t, c, v, eps) = (d.b, d.t, d.c, d.v, d.eps);
    let n = d.n();
    let (wte, wpe) = (p.slice(r.wte.clone()), p.slice(r.wpe.clone()));
    k::embedding_forward(gpu, &mut a.encoded, tokens, &wte, &wpe, b, t, c)?;
    for (l, w) in r.blocks.iter().enumerate() {
        let (before, rest) = a.outputs.split_at_mut(l);
        let residual = before.last().unwrap_or(&a.encoded);
        let x = match a.blocks[l].as_mut() {
            Some(kept) => kept,
            None => a
                .work
                .as_mut()
                .expect("a recomputed layer has the work activations"),
        };
        block_forward(gpu, d, (p, w), residual, x, a.gemm.as_mut(), &mut rest[0])?;
    }
    let last = a.outputs.last().unwrap_or(&a.encoded);
    let (lnf_w, lnf_b) = (p.slice(r.lnf_w.clone()), p.slice(r.lnf_b.clone()));
    k::layernorm_forward(
        gpu,
        &mut a.lnf,
        &mut a.lnf_mean,
        &mut a.lnf_rstd,
        last,
        &lnf_w,
        &lnf_b,
        n,
        c,
        eps,
    )?;
    // Tied LM head: logits = lnf · wteᵀ, wte is [V, C].
    let no_bias: Option<&CudaSlice<X>> = None;
    k::matmul_forward(
        gpu,
        &mut a.logits,
        &a.lnf,
        &wte,
        no_bias,
        n,
        c,
        v,
        WeightLayout::OutIn,
    )?;
    k::crossentropy_forward(gpu, &mut a.losses, &mut a.lse, &a.logits, targets, n, v)
}

/// One block's forward from its input `residual` (the stream before it) with
/// weights `p` at `w`: its activations into `x`, its output into `out`; the
/// attention on cuBLAS through `gemm` when `x` keeps probabilities.
pub(super) fn block_forward<X: Storage>(
    gpu: &Gpu,
    d: &Dims,
    (p, w): (&CudaSlice<X>, &BlockRanges),
    residual: &CudaSlice<X>,
    x: &mut BlockActs<X>,
    gemm: Option<&mut GemmAttentionScratch<X>>,
    out: &mut CudaSlice<X>,
) -> Result<(), CudaError> {
    let (b, t, c, nh, eps) = (d.b, d.t, d.c, d.nh, d.eps);
    let n = d.n();
    let w_ = |range: &Range<usize>| p.slice(range.clone());
    let inout = WeightLayout::InOut;
    k::layernorm_forward(
        gpu,
        &mut x.ln1,
        &mut x.ln1_mean,
        &mut x.ln1_rstd,
        residual,
        &w_(&w.ln1_w),
        &w_(&w.ln1_b),
        n,
        c,
        eps,
    )?;
    let qkv_b = w_(&w.qkv_b);
    k::matmul_forward(
        gpu,
        &mut x.qkv,
        &x.ln1,
        &w_(&w.qkv_w),
        Some(&qkv_b),
        n,
        c,
        3 * c,
        inout,
    )?;
    match (x.probs.as_mut(), gemm) {
        (Some(probs), Some(scratch)) => {
            let shape = (b, t, c, nh);
            let (out, lse) = (&mut x.atty, &mut x.att_lse);
            k::attention_forward_gemm(gpu, out, lse, probs, &x.qkv, scratch, shape)?
        }
        _ => k::attention_forward(gpu, &mut x.atty, &mut x.att_lse, &x.qkv, b, t, c, nh)?,
    }
    let attproj_b = w_(&w.attproj_b);
    k::matmul_forward(
        gpu,
        &mut x.residual2,
        &x.atty,
        &w_(&w.attproj_w),
        Some(&attproj_b),
        n,
        c,
        c,
        inout,
    )?;
    k::add_inplace(gpu, &mut x.residual2, residual)?;
    k::layernorm_forward(
        gpu,
        &mut x.ln2,
        &mut x.ln2_mean,
        &mut x.ln2_rstd,
        &x.residual2,
        &w_(&w.ln2_w),
        &w_(&w.ln2_b),
        n,
        c,
        eps,
    )?;
    let fc_b = w_(&w.fc_b);
    k::matmul_forward(
        gpu,
        &mut x.fch,
        &x.ln2,
        &w_(&w.fc_w),
        Some(&fc_b),
        n,
        c,
        4 * c,
        inout,
    )?;
    k::gelu_forward(gpu, &mut x.fch_gelu, &x.fch)?;
    let fcproj_b = w_(&w.fcproj_b);
    k::matmul_forward(
        gpu,
        out,
        &x.fch_gelu,
        &w_(&w.fcproj_w),
        Some(&fcproj_b),
        n,
        4 * c,
        c,
        inout,
    )?;
    k::add_inplace(gpu, out, &x.residual2)
}
