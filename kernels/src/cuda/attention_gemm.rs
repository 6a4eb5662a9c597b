//! Causal self-attention with its products on cuBLAS (strided-batched GEMMs on
//! the tensor cores) and the full `[T, T]` probability matrix of every head kept
//! for backward: the layout of [`crate::attention`] (`qkv [B, T, 3C]`,
//! `out [B, T, C]`, `lse [B, NH, T]`), quadratic memory in T where the tiled
//! kernels of [`super::attention_forward`] are linear, for the speed of the
//! matrix units at moderate T.
//!
//! Forward: split q, k, v into head-major `[B·NH, T, hs]`, `S = Q·Kᵀ` (fp32),
//! `P = causal_softmax(S / √hs)` (kept, in the storage type), `O = P·V`, merged
//! back into `out`. Backward: `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP)) / √hs`
//! (written over P), `dQ = dS·K`, `dK = dSᵀ·Q`, accumulated into `dqkv`.
//!
//! The products follow [`Gpu::set_products`] for fp32 buffers (fp32 or TF32;
//! `Products::Bf16` runs them as fp32 here, without per-call bf16 copies) and take
//! bf16 buffers as they are, always accumulating in fp32.
//!
//! Dimension legend: B batch, T time, C channels = NH · hs, NH heads, hs head
//! size, BNH = B · NH.

use std::ffi::{c_int, c_longlong, c_void};

use cudarc::cublas::result::gemm_strided_batched_ex;
use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};

use super::compile::ATTENTION_GEMM;
use super::storage::{Dtype, Storage};
use super::{Arg, CudaError, Gpu, dim, elementwise_config};

const N: cublasOperation_t = cublasOperation_t::CUBLAS_OP_N;
const T: cublasOperation_t = cublasOperation_t::CUBLAS_OP_T;

/// Threads per row of the softmax kernels.
const ROW_THREADS: u32 = 256;

/// The head-major and score buffers of one attention shape, shared by every
/// layer: q, k, v and an output (or its gradient) `[BNH, T, hs]` in the storage
/// type, the scores (or their gradients) `[BNH, T, T]` in fp32, and the q, k, v
/// gradients.
pub struct GemmAttentionScratch<X> {
    q: CudaSlice<X>,
    k: CudaSlice<X>,
    v: CudaSlice<X>,
    o: CudaSlice<X>,
    dq: CudaSlice<X>,
    dk: CudaSlice<X>,
    dv: CudaSlice<X>,
    scores: CudaSlice<f32>,
    shape: Shape,
}

/// B, T, NH, hs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    b: usize,
    t: usize,
    nh: usize,
    hs: usize,
}

impl Shape {
    fn new(b: usize, t: usize, c: usize, nh: usize) -> Self {
        assert!(
            nh > 0 && c > 0 && c.is_multiple_of(nh),
            "C = {c} must be a positive multiple of NH = {nh}"
        );
        Shape {
            b,
            t,
            nh,
            hs: c / nh,
        }
    }

    /// Elements of one head-major tensor, `[BNH, T, hs]`.
    fn heads(&self) -> usize {
        self.b * self.nh * self.t * self.hs
    }

    /// Elements of one score tensor, `[BNH, T, T]`.
    fn scores(&self) -> usize {
        self.b * self.nh * self.t * self.t
    }
}

/// Elements of the probability matrices one layer keeps for backward: `[BNH, T, T]`.
pub fn gemm_attention_probs_len(b: usize, t: usize, nh: usize) -> usize {
    b * nh * t * t
}

impl<X: Storage> GemmAttentionScratch<X> {
    /// The buffers for `[B, T, C]` streams with `nh` heads.
    pub fn new(gpu: &Gpu, b: usize, t: usize, c: usize, nh: usize) -> Result<Self, CudaError> {
        let shape = Shape::new(b, t, c, nh);
        let h = || gpu.zeros::<X>(shape.heads());
        Ok(Self {
            q: h()?,
            k: h()?,
            v: h()?,
            o: h()?,
            dq: h()?,
            dk: h()?,
            dv: h()?,
            scores: gpu.zeros::<f32>(shape.scores())?,
            shape,
        })
    }

    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        7 * self.shape.heads() * X::DTYPE.size() + 4 * self.shape.scores()
    }

    fn check(&self, b: usize, t: usize, c: usize, nh: usize) {
        assert_eq!(
            self.shape,
            Shape::new(b, t, c, nh),
            "the scratch was made for another shape"
        );
    }

    /// q, k, v of `qkv` into the head-major buffers.
    fn split_qkv(&mut self, gpu: &Gpu, qkv: &impl DevicePtr<X>, c: usize) -> Result<(), CudaError> {
        let sh = self.shape;
        split(gpu, &mut self.q, qkv, sh, (3 * c, 0))?;
        split(gpu, &mut self.k, qkv, sh, (3 * c, c))?;
        split(gpu, &mut self.v, qkv, sh, (3 * c, 2 * c))
    }
}

/// GPU attention forward through cuBLAS: `out = softmax(q kᵀ/√hs + mask) v` per
/// head (overwrites `out`), `lse` the rows' log-sum-exp, `probs` (`[BNH, T, T]`,
/// [`gemm_attention_probs_len`]) the probabilities backward needs.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_gemm<X: Storage>(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<X>,
    lse: &mut impl DevicePtrMut<f32>,
    probs: &mut CudaSlice<X>,
    qkv: &impl DevicePtr<X>,
    scratch: &mut GemmAttentionScratch<X>,
    (b, t, c, nh): (usize, usize, usize, usize),
) -> Result<(), CudaError> {
    scratch.check(b, t, c, nh);
    let sh = scratch.shape;
    assert_eq!(qkv.len(), b * t * 3 * c);
    assert_eq!(out.len(), b * t * c);
    assert_eq!(lse.len(), b * nh * t);
    assert_eq!(probs.len(), sh.scores());
    scratch.split_qkv(gpu, qkv, c)?;
    let s = &mut scratch.scores;
    // S = Q·Kᵀ per head: column-major Sᵀ = (Kᵀ)ᵀ·Qᵀ.
    let (k, q) = ((&scratch.k, Mat::Heads), (&scratch.q, Mat::Heads));
    batched(gpu, (T, N), (t, t, sh.hs), k, q, (s, Mat::Scores), sh)?;
    let f = gpu.function(&ATTENTION_GEMM, None, X::DTYPE, "causal_softmax")?;
    let scale = 1.0 / (sh.hs as f32).sqrt();
    let args = [
        gpu.output(probs),
        gpu.output(lse),
        gpu.input(&scratch.scores),
        dim(t),
        Arg::F32(scale),
    ];
    // SAFETY: the arguments match the kernel; one block per row of the BNH·T rows
    // of the [BNH, T, T] buffers checked above.
    unsafe { gpu.launch(&f, rows_config(b * nh * t), &args) }?;
    // O = P·V per head: column-major Oᵀ = Vᵀ·Pᵀ.
    let o = &mut scratch.o;
    let (v, p) = ((&scratch.v, Mat::Heads), (&*probs, Mat::Scores));
    batched(gpu, (N, N), (sh.hs, t, t), v, p, (o, Mat::Heads), sh)?;
    merge(gpu, out, &scratch.o, sh, (c, 0), false)
}

/// GPU attention backward through cuBLAS: accumulates into `dqkv` the gradient of
/// `out` given `dout`, from the `probs` of the forward pass, which it overwrites
/// (with the score gradients).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_gemm<X: Storage>(
    gpu: &Gpu,
    dqkv: &mut impl DevicePtrMut<X>,
    dout: &impl DevicePtr<X>,
    qkv: &impl DevicePtr<X>,
    probs: &mut CudaSlice<X>,
    scratch: &mut GemmAttentionScratch<X>,
    (b, t, c, nh): (usize, usize, usize, usize),
) -> Result<(), CudaError> {
    scratch.check(b, t, c, nh);
    let sh = scratch.shape;
    assert_eq!(qkv.len(), b * t * 3 * c);
    assert_eq!(dqkv.len(), b * t * 3 * c);
    assert_eq!(dout.len(), b * t * c);
    assert_eq!(probs.len(), sh.scores());
    scratch.split_qkv(gpu, qkv, c)?;
    let d_o = &mut scratch.o;
    split(gpu, d_o, dout, sh, (c, 0))?;
    // dV = Pᵀ·dO: column-major dVᵀ = dOᵀ·P.
    let (d_o, dv) = (&scratch.o, &mut scratch.dv);
    let (d_o, p) = ((d_o, Mat::Heads), (&*probs, Mat::Scores));
    batched(gpu, (N, T), (sh.hs, t, t), d_o, p, (dv, Mat::Heads), sh)?;
    // dP = dO·Vᵀ: column-major dPᵀ = (Vᵀ)ᵀ·dOᵀ.
    let dp = &mut scratch.scores;
    let (v, d_o) = ((&scratch.v, Mat::Heads), (&scratch.o, Mat::Heads));
    batched(gpu, (T, N), (t, t, sh.hs), v, d_o, (dp, Mat::Scores), sh)?;
    let f = gpu.function(&ATTENTION_GEMM, None, X::DTYPE, "causal_softmax_backward")?;
    let scale = 1.0 / (sh.hs as f32).sqrt();
    let args = [
        gpu.output(probs),
        gpu.input(&scratch.scores),
        dim(t),
        Arg::F32(scale),
    ];
    // SAFETY: the arguments match the kernel; one block per row of the BNH·T rows
    // of the [BNH, T, T] buffers checked above.
    unsafe { gpu.launch(&f, rows_config(b * nh * t), &args) }?;
    // dQ = dS·K: column-major dQᵀ = Kᵀ·dSᵀ; dK = dSᵀ·Q: column-major dKᵀ = Qᵀ·dS.
    let ds = (&*probs, Mat::Scores);
    let (k, dq) = ((&scratch.k, Mat::Heads), (&mut scratch.dq, Mat::Heads));
    batched(gpu, (N, N), (sh.hs, t, t), k, ds, dq, sh)?;
    let (q, dk) = ((&scratch.q, Mat::Heads), (&mut scratch.dk, Mat::Heads));
    batched(gpu, (N, T), (sh.hs, t, t), q, ds, dk, sh)?;
    merge(gpu, dqkv, &scratch.dq, sh, (3 * c, 0), true)?;
    merge(gpu, dqkv, &scratch.dk, sh, (3 * c, c), true)?;
    merge(gpu, dqkv, &scratch.dv, sh, (3 * c, 2 * c), true)
}

/// One block of [`ROW_THREADS`] per row.
fn rows_config(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (u32::try_from(rows).expect("rows fit in a grid"), 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `dst` (head-major) = the part at `offset` of the `[B, T, stride]` stream `src`.
fn split<X: Storage>(
    gpu: &Gpu,
    dst: &mut CudaSlice<X>,
    src: &impl DevicePtr<X>,
    sh: Shape,
    (stride, offset): (usize, usize),
) -> Result<(), CudaError> {
    assert_eq!(src.len(), sh.b * sh.t * stride);
    let (d, s) = (gpu.output(dst), gpu.input(src));
    // SAFETY: `dst` holds BNH·T·hs elements and `src` B·T·stride, offset + C <= stride.
    unsafe { heads::<X>(gpu, "heads_split", (d, s), sh, (stride, offset), None) }
}

/// The part at `offset` of the `[B, T, stride]` stream `dst` = (or +=, with
/// `accumulate`) the head-major `src`.
fn merge<X: Storage>(
    gpu: &Gpu,
    dst: &mut impl DevicePtrMut<X>,
    src: &CudaSlice<X>,
    sh: Shape,
    (stride, offset): (usize, usize),
    accumulate: bool,
) -> Result<(), CudaError> {
    assert_eq!(dst.len(), sh.b * sh.t * stride);
    let (d, s) = (gpu.output(dst), gpu.input(src));
    // SAFETY: as in `split`, the other way round.
    unsafe {
        heads::<X>(
            gpu,
            "heads_merge",
            (d, s),
            sh,
            (stride, offset),
            Some(accumulate),
        )
    }
}

/// Launches `heads_split` or `heads_merge` (with its `accumulate` flag).
///
/// # Safety
/// `dst` and `src` must hold what the kernel addresses for `sh`, `stride`, `offset`.
unsafe fn heads<X: Storage>(
    gpu: &Gpu,
    kernel: &str,
    (dst, src): (Arg, Arg),
    sh: Shape,
    (stride, offset): (usize, usize),
    accumulate: Option<bool>,
) -> Result<(), CudaError> {
    let f = gpu.function(&ATTENTION_GEMM, None, X::DTYPE, kernel)?;
    let mut args = vec![dst, src];
    args.extend([sh.b, sh.t, sh.nh, sh.hs, stride, offset].map(dim));
    args.extend(accumulate.map(|a| dim(usize::from(a))));
    // SAFETY: guaranteed by the caller; the arguments match the kernel.
    unsafe { gpu.launch(&f, elementwise_config(sh.heads()), &args) }
}

/// The layout of one head's matrix in a batch of BNH.
#[derive(Clone, Copy)]
enum Mat {
    /// Head-major `[BNH, T, hs]`: leading dimension hs.
    Heads,
    /// Scores or probabilities `[BNH, T, T]`: leading dimension T.
    Scores,
}

impl Mat {
    /// (leading dimension, elements between heads).
    fn layout(self, sh: Shape) -> (usize, usize) {
        match self {
            Mat::Heads => (sh.hs, sh.t * sh.hs),
            Mat::Scores => (sh.t, sh.t * sh.t),
        }
    }
}

/// One strided-batched product per head, column-major `c = op(a)·op(b)`
/// (`m × n`, inner `k`), each operand laid out as its [`Mat`] says.
#[allow(clippy::too_many_arguments)]
fn batched<X: Storage, Y: Storage>(
    gpu: &Gpu,
    ops: (cublasOperation_t, cublasOperation_t),
    mnk: (usize, usize, usize),
    (a, a_mat): (&CudaSlice<X>, Mat),
    (b, b_mat): (&CudaSlice<X>, Mat),
    (c, c_mat): (&mut CudaSlice<Y>, Mat),
    sh: Shape,
) -> Result<(), CudaError> {
    let stream = gpu.stream();
    let (a_ptr, _a) = a.device_ptr(stream);
    let (b_ptr, _b) = b.device_ptr(stream);
    let (c_ptr, _c) = c.device_ptr_mut(stream);
    let at = |p: u64, mat: Mat| {
        let (ld, stride) = mat.layout(sh);
        Operand { p, ld, stride }
    };
    // SAFETY: every buffer holds BNH matrices of its layout.
    unsafe {
        strided(
            gpu,
            ops,
            mnk,
            (at(a_ptr, a_mat), at(b_ptr, b_mat), X::DTYPE),
            (at(c_ptr, c_mat), Y::DTYPE),
            sh.b * sh.nh,
        )
    }
}

/// A matrix operand of a strided-batched product: address, leading dimension,
/// elements between batches.
struct Operand {
    p: u64,
    ld: usize,
    stride: usize,
}

/// cuBLAS's name for a storage type.
fn data_type(dtype: Dtype) -> cudaDataType_t {
    match dtype {
        Dtype::F32 => cudaDataType_t::CUDA_R_32F,
        Dtype::Bf16 => cudaDataType_t::CUDA_R_16BF,
    }
}

/// `cublasGemmStridedBatchedEx` with fp32 accumulation, `beta = 0`.
///
/// # Safety
/// The operands must hold `batches` matrices at their strides, of the sizes the
/// dimensions and leading dimensions address, in the types named.
unsafe fn strided(
    gpu: &Gpu,
    (transa, transb): (cublasOperation_t, cublasOperation_t),
    (m, n, k): (usize, usize, usize),
    (a, b, ab): (Operand, Operand, Dtype),
    (c, c_type): (Operand, Dtype),
    batches: usize,
) -> Result<(), CudaError> {
    let int = |x: usize| c_int::try_from(x).expect("matrix dimension fits in an i32");
    let long = |x: usize| x as c_longlong;
    let (alpha, beta) = (1.0f32, 0.0f32);
    // SAFETY: guaranteed by the caller; the host scalars outlive the call.
    unsafe {
        gemm_strided_batched_ex(
            *gpu.blas().handle(),
            transa,
            transb,
            int(m),
            int(n),
            int(k),
            &alpha as *const f32 as *const c_void,
            a.p as *const c_void,
            data_type(ab),
            int(a.ld),
            long(a.stride),
            b.p as *const c_void,
            data_type(ab),
            int(b.ld),
            long(b.stride),
            &beta as *const f32 as *const c_void,
            c.p as *mut c_void,
            data_type(c_type),
            int(c.ld),
            long(c.stride),
            int(batches),
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }?;
    Ok(())
}
