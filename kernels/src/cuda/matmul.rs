//! Dense layers on the GPU through cuBLAS, in the arithmetic that
//! [`Gpu::set_products`] chose (fp32 `sgemm` by default; TF32 tensor cores; or
//! bf16 inputs with fp32 accumulation and output through `GemmEx`), plus a
//! plain bf16 `GemmEx`; the CPU version is [`crate::matmul`].
//!
//! Dimension legend: N rows (B*T), C input channels, OC output channels.
//!
//! cuBLAS is column-major: a row-major `[R, K]` buffer is, to cuBLAS, the
//! `K × R` matrix holding its transpose. So each row-major product
//! `X = A · B` is issued as `Xᵀ = Bᵀ · Aᵀ`.

use std::ffi::c_int;

use cudarc::cublas::result::gemm_ex;
use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
};
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use super::compile::MATMUL;
use super::reduce::column_sums_accumulate;
use super::{CudaError, Gpu, dim, elementwise_config, f32_to_bf16};
use crate::WeightLayout;

const N: cublasOperation_t = cublasOperation_t::CUBLAS_OP_N;
const T: cublasOperation_t = cublasOperation_t::CUBLAS_OP_T;

/// A cuBLAS dimension.
fn int(x: usize) -> c_int {
    c_int::try_from(x).expect("matrix dimension fits in an i32")
}

/// The arithmetic of the dense products (see [`Gpu::set_products`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Products {
    /// fp32 inputs and accumulation (`sgemm`, no tensor cores): matches the CPU.
    Fp32,
    /// fp32 inputs rounded to TF32 on the tensor cores, fp32 accumulation.
    Tf32,
    /// Inputs rounded to bf16 (a copy per product), fp32 accumulation and output.
    Bf16,
}

/// A bf16 copy of `x` (raw bit patterns).
fn bf16_copy(gpu: &Gpu, x: &impl DevicePtr<f32>) -> Result<CudaSlice<u16>, CudaError> {
    let mut out = gpu.zeros::<u16>(x.len())?;
    f32_to_bf16(gpu, &mut out, x)?;
    Ok(out)
}

/// Column-major `c = op(a) · op(b) + beta · c` in the chosen [`Products`].
fn sgemm(
    gpu: &Gpu,
    (transa, transb): (cublasOperation_t, cublasOperation_t),
    (m, n, k): (usize, usize, usize),
    a: &impl DevicePtr<f32>,
    lda: usize,
    b: &impl DevicePtr<f32>,
    ldb: usize,
    beta: f32,
    c: &mut impl DevicePtrMut<f32>,
    ldc: usize,
) -> Result<(), CudaError> {
    if gpu.products() == Products::Bf16 {
        let (a16, b16) = (bf16_copy(gpu, a)?, bf16_copy(gpu, b)?);
        let stream = gpu.stream();
        let (a_ptr, _a) = a16.device_ptr(stream);
        let (b_ptr, _b) = b16.device_ptr(stream);
        let (c_ptr, _c) = c.device_ptr_mut(stream);
        let alpha = 1.0f32;
        // SAFETY: as below; the bf16 copies have the layouts of `a` and `b`, and
        // the host scalars outlive the call.
        unsafe {
            gemm_ex(
                *gpu.blas().handle(),
                transa,
                transb,
                int(m),
                int(n),
                int(k),
                &alpha as *const f32 as *const _,
                a_ptr as *const _,
                cudaDataType_t::CUDA_R_16BF,
                int(lda),
                b_ptr as *const _,
                cudaDataType_t::CUDA_R_16BF,
                int(ldb),
                &beta as *const f32 as *const _,
                c_ptr as *mut _,
                cudaDataType_t::CUDA_R_32F,
                int(ldc),
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }?;
        return Ok(());
    }
    let cfg = GemmConfig {
        transa,
        transb,
        m: int(m),
        n: int(n),
        k: int(k),
        alpha: 1.0f32,
        lda: int(lda),
        ldb: int(ldb),
        beta,
        ldc: int(ldc),
    };
    // SAFETY: the callers assert that every buffer holds the elements that
    // these dimensions and leading dimensions address.
    unsafe { gpu.blas().gemm(cfg, a, b, c) }?;
    Ok(())
}

/// GPU [`crate::matmul_forward`]: `out[N, OC] = inp[N, C] · W (+ bias[OC])`;
/// overwrites `out`. `weight` is `[C, OC]` for [`WeightLayout::InOut`] and
/// `[OC, C]` for [`WeightLayout::OutIn`].
pub fn matmul_forward<B: DevicePtr<f32>>(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<f32>,
    inp: &impl DevicePtr<f32>,
    weight: &impl DevicePtr<f32>,
    bias: Option<&B>,
    n: usize,
    c: usize,
    oc: usize,
    layout: WeightLayout,
) -> Result<(), CudaError> {
    assert_eq!(out.len(), n * oc);
    assert_eq!(inp.len(), n * c);
    assert_eq!(weight.len(), c * oc);
    if n == 0 || oc == 0 {
        return Ok(());
    }
    // outᵀ [OC × N] = Wᵀ · inpᵀ; inp is the C × N matrix inpᵀ to cuBLAS.
    let (transa, lda) = match layout {
        // weight [C, OC] is the OC × C matrix Wᵀ.
        WeightLayout::InOut => (N, oc),
        // weight [OC, C] is the C × OC matrix W.
        WeightLayout::OutIn => (T, c),
    };
    sgemm(
        gpu,
        (transa, N),
        (oc, n, c),
        weight,
        lda,
        inp,
        c,
        0.0,
        out,
        oc,
    )?;
    if let Some(bias) = bias {
        assert_eq!(bias.len(), oc);
        let f = gpu.function(&MATMUL, None, "add_bias_rows")?;
        let args = [gpu.output(out), gpu.input(bias), dim(n), dim(oc)];
        // SAFETY: the arguments match the kernel; `out` holds N*OC floats and
        // `bias` OC.
        unsafe { gpu.launch(&f, elementwise_config(n * oc), &args) }?;
    }
    Ok(())
}

/// GPU [`crate::matmul_backward`]; accumulates into every gradient:
/// `dinp += dout · Wᵀ` (skipped when `None`), `dweight += inpᵀ · dout` (stored in
/// `layout`), `dbias += Σ_rows dout` (fixed order).
pub fn matmul_backward<DI: DevicePtrMut<f32>, DB: DevicePtrMut<f32>>(
    gpu: &Gpu,
    dinp: Option<&mut DI>,
    dweight: &mut impl DevicePtrMut<f32>,
    dbias: Option<&mut DB>,
    dout: &impl DevicePtr<f32>,
    inp: &impl DevicePtr<f32>,
    weight: &impl DevicePtr<f32>,
    n: usize,
    c: usize,
    oc: usize,
    layout: WeightLayout,
) -> Result<(), CudaError> {
    assert_eq!(dout.len(), n * oc);
    assert_eq!(inp.len(), n * c);
    assert_eq!(weight.len(), c * oc);
    assert_eq!(dweight.len(), c * oc);
    if n == 0 || c == 0 || oc == 0 {
        return Ok(());
    }
    if let Some(dinp) = dinp {
        assert_eq!(dinp.len(), n * c);
        // dinpᵀ [C × N] += W · doutᵀ; dout is the OC × N matrix doutᵀ.
        let (transa, lda) = match layout {
            WeightLayout::InOut => (T, oc),
            WeightLayout::OutIn => (N, c),
        };
        sgemm(
            gpu,
            (transa, N),
            (c, n, oc),
            weight,
            lda,
            dout,
            oc,
            1.0,
            dinp,
            c,
        )?;
    }
    match layout {
        // dweight [C, OC] is the OC × C matrix dWᵀ += doutᵀ · inp.
        WeightLayout::InOut => sgemm(gpu, (N, T), (oc, c, n), dout, oc, inp, c, 1.0, dweight, oc)?,
        // dweight [OC, C] is the C × OC matrix (doutᵀ · inp)ᵀ = inpᵀ · dout.
        WeightLayout::OutIn => sgemm(gpu, (N, T), (c, oc, n), inp, c, dout, oc, 1.0, dweight, c)?,
    }
    if let Some(dbias) = dbias {
        assert_eq!(dbias.len(), oc);
        column_sums_accumulate(gpu, dbias, dout, n, oc)?;
    }
    Ok(())
}

/// Row-major `out[M, N] = a[M, K] · b[K, N]` with bf16 inputs (raw bit patterns,
/// see [`super::f32_to_bf16`]), fp32 output and fp32 accumulation
/// (`cublasGemmEx`, tensor cores).
pub fn gemm_bf16(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<f32>,
    a: &impl DevicePtr<u16>,
    b: &impl DevicePtr<u16>,
    m: usize,
    n: usize,
    k: usize,
) -> Result<(), CudaError> {
    assert_eq!(out.len(), m * n);
    assert_eq!(a.len(), m * k);
    assert_eq!(b.len(), k * n);
    let stream = gpu.stream();
    let (a_ptr, _a) = a.device_ptr(stream);
    let (b_ptr, _b) = b.device_ptr(stream);
    let (out_ptr, _out) = out.device_ptr_mut(stream);
    let (alpha, beta) = (1.0f32, 0.0f32);
    // outᵀ [N × M] = bᵀ · aᵀ: b is the N × K matrix bᵀ, a the K × M matrix aᵀ.
    // SAFETY: the buffers hold the asserted sizes; the scalars live across the
    // call (cuBLAS reads host scalars before returning).
    unsafe {
        gemm_ex(
            *gpu.blas().handle(),
            N,
            N,
            int(n),
            int(m),
            int(k),
            &alpha as *const f32 as *const _,
            b_ptr as *const _,
            cudaDataType_t::CUDA_R_16BF,
            int(n),
            a_ptr as *const _,
            cudaDataType_t::CUDA_R_16BF,
            int(k),
            &beta as *const f32 as *const _,
            out_ptr as *mut _,
            cudaDataType_t::CUDA_R_32F,
            int(n),
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }?;
    Ok(())
}
