//! Dense layers on the GPU through cuBLAS, in the arithmetic that
//! [`Gpu::set_products`] chose (fp32 `sgemm` by default; TF32 tensor cores; or
//! bf16 inputs with fp32 accumulation and output through `GemmEx`), plus a
//! plain bf16 `GemmEx`; the CPU version is [`crate::matmul`]. With bf16
//! activations and weights ([`Storage`] = [`Bf16`]) the products take them as
//! they are, accumulate in fp32 (`CUBLAS_COMPUTE_32F`) and write bf16
//! activations and fp32 weight gradients.
//!
//! Dimension legend: N rows (B*T), C input channels, OC output channels.
//!
//! cuBLAS is column-major: a row-major `[R, K]` buffer is, to cuBLAS, the
//! `K × R` matrix holding its transpose. So each row-major product
//! `X = A · B` is issued as `Xᵀ = Bᵀ · Aᵀ`.

use std::ffi::c_int;

use cudarc::cublas::result::{gemm_ex, sgemm};
use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use super::compile::{ELEMENTWISE, MATMUL};
use super::reduce::column_sums_accumulate;
use super::storage::{Bf16, Dtype, Storage};
use super::{Arg, CudaError, Gpu, dim, elementwise_config, len};
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

/// A bf16 copy of the `n` fp32 values at address `x` (elementwise.cu's
/// `to_floatx` in its bf16 build).
fn bf16_copy(gpu: &Gpu, x: u64, n: usize) -> Result<CudaSlice<Bf16>, CudaError> {
    let mut out = gpu.zeros::<Bf16>(n)?;
    let f = gpu.function(&ELEMENTWISE, None, Dtype::Bf16, "to_floatx")?;
    let args = [gpu.output(&mut out), Arg::Ptr(x), len(n)];
    // SAFETY: the arguments match the kernel; `out` holds n elements and the
    // caller's buffer at `x` n floats.
    unsafe { gpu.launch(&f, elementwise_config(n), &args) }?;
    Ok(out)
}

/// cuBLAS's name for a storage type.
fn data_type(dtype: Dtype) -> cudaDataType_t {
    match dtype {
        Dtype::F32 => cudaDataType_t::CUDA_R_32F,
        Dtype::Bf16 => cudaDataType_t::CUDA_R_16BF,
    }
}

/// Column-major `c = op(a) · op(b) + beta · c` through `cublasGemmEx` with fp32
/// accumulation (`CUBLAS_COMPUTE_32F`), for inputs at `a_ptr`, `b_ptr` of type
/// `ab` and output at `c_ptr` of type `c`.
///
/// # Safety
/// The addresses must hold the elements that the dimensions and leading
/// dimensions address, in the types named.
unsafe fn gemm_ex_32f(
    gpu: &Gpu,
    (transa, transb): (cublasOperation_t, cublasOperation_t),
    (m, n, k): (usize, usize, usize),
    (a_ptr, lda): (u64, usize),
    (b_ptr, ldb): (u64, usize),
    ab: Dtype,
    beta: f32,
    (c_ptr, ldc): (u64, usize),
    c: Dtype,
) -> Result<(), CudaError> {
    let alpha = 1.0f32;
    // SAFETY: guaranteed by the caller; the host scalars outlive the call
    // (cuBLAS reads them before returning).
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
            data_type(ab),
            int(lda),
            b_ptr as *const _,
            data_type(ab),
            int(ldb),
            &beta as *const f32 as *const _,
            c_ptr as *mut _,
            data_type(c),
            int(ldc),
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }?;
    Ok(())
}

/// Column-major `c = op(a) · op(b) + beta · c`, inputs of type `X`, output of
/// type `Y`, fp32 accumulation. fp32 inputs (with an fp32 output) use the
/// arithmetic of [`Gpu::set_products`]; bf16 inputs go to the tensor cores as
/// they are, into a bf16 or fp32 output.
fn gemm<X: Storage, Y: Storage>(
    gpu: &Gpu,
    trans: (cublasOperation_t, cublasOperation_t),
    (m, n, k): (usize, usize, usize),
    a: &impl DevicePtr<X>,
    lda: usize,
    b: &impl DevicePtr<X>,
    ldb: usize,
    beta: f32,
    c: &mut impl DevicePtrMut<Y>,
    ldc: usize,
) -> Result<(), CudaError> {
    let stream = gpu.stream();
    let (c_ptr, _c) = c.device_ptr_mut(stream);
    match (X::DTYPE, Y::DTYPE) {
        (Dtype::Bf16, out) => {
            let (a_ptr, _a) = a.device_ptr(stream);
            let (b_ptr, _b) = b.device_ptr(stream);
            // SAFETY: the callers assert that every buffer holds the elements
            // that these dimensions address; the types are those of the buffers.
            unsafe {
                gemm_ex_32f(
                    gpu,
                    trans,
                    (m, n, k),
                    (a_ptr, lda),
                    (b_ptr, ldb),
                    Dtype::Bf16,
                    beta,
                    (c_ptr, ldc),
                    out,
                )
            }
        }
        (Dtype::F32, Dtype::F32) if gpu.products() == Products::Bf16 => {
            let (a_ptr, _a) = a.device_ptr(stream);
            let (b_ptr, _b) = b.device_ptr(stream);
            // X is f32 here: the buffers hold fp32 values.
            let (a16, b16) = (
                bf16_copy(gpu, a_ptr, a.len())?,
                bf16_copy(gpu, b_ptr, b.len())?,
            );
            let (a_ptr, _a) = a16.device_ptr(stream);
            let (b_ptr, _b) = b16.device_ptr(stream);
            // SAFETY: as above; the bf16 copies have the layouts of `a` and `b`.
            unsafe {
                gemm_ex_32f(
                    gpu,
                    trans,
                    (m, n, k),
                    (a_ptr, lda),
                    (b_ptr, ldb),
                    Dtype::Bf16,
                    beta,
                    (c_ptr, ldc),
                    Dtype::F32,
                )
            }
        }
        (Dtype::F32, Dtype::F32) => {
            let (a_ptr, _a) = a.device_ptr(stream);
            let (b_ptr, _b) = b.device_ptr(stream);
            let alpha = 1.0f32;
            // SAFETY: as above; all three buffers hold f32.
            unsafe {
                sgemm(
                    *gpu.blas().handle(),
                    trans.0,
                    trans.1,
                    int(m),
                    int(n),
                    int(k),
                    &alpha,
                    a_ptr as *const f32,
                    int(lda),
                    b_ptr as *const f32,
                    int(ldb),
                    &beta,
                    c_ptr as *mut f32,
                    int(ldc),
                )
            }?;
            Ok(())
        }
        (Dtype::F32, Dtype::Bf16) => unreachable!("fp32 products are written to fp32 buffers"),
    }
}

/// GPU [`crate::matmul_forward`]: `out[N, OC] = inp[N, C] · W (+ bias[OC])`;
/// overwrites `out`. `weight` is `[C, OC]` for [`WeightLayout::InOut`] and
/// `[OC, C]` for [`WeightLayout::OutIn`].
pub fn matmul_forward<X: Storage, B: DevicePtr<X>>(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<X>,
    inp: &impl DevicePtr<X>,
    weight: &impl DevicePtr<X>,
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
    gemm(
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
        let f = gpu.function(&MATMUL, None, X::DTYPE, "add_bias_rows")?;
        let args = [gpu.output(out), gpu.input(bias), dim(n), dim(oc)];
        // SAFETY: the arguments match the kernel; `out` holds N*OC elements and
        // `bias` OC.
        unsafe { gpu.launch(&f, elementwise_config(n * oc), &args) }?;
    }
    Ok(())
}

/// GPU [`crate::matmul_backward`]; accumulates into every gradient:
/// `dinp += dout · Wᵀ` (skipped when `None`), `dweight += inpᵀ · dout` (stored in
/// `layout`), `dbias += Σ_rows dout` (fixed order).
pub fn matmul_backward<X: Storage, DI: DevicePtrMut<X>, DB: DevicePtrMut<f32>>(
    gpu: &Gpu,
    dinp: Option<&mut DI>,
    dweight: &mut impl DevicePtrMut<f32>,
    dbias: Option<&mut DB>,
    dout: &impl DevicePtr<X>,
    inp: &impl DevicePtr<X>,
    weight: &impl DevicePtr<X>,
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
        gemm(
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
        WeightLayout::InOut => gemm(gpu, (N, T), (oc, c, n), dout, oc, inp, c, 1.0, dweight, oc)?,
        // dweight [OC, C] is the C × OC matrix (doutᵀ · inp)ᵀ = inpᵀ · dout.
        WeightLayout::OutIn => gemm(gpu, (N, T), (c, oc, n), inp, c, dout, oc, 1.0, dweight, c)?,
    }
    if let Some(dbias) = dbias {
        assert_eq!(dbias.len(), oc);
        column_sums_accumulate(gpu, dbias, dout, n, oc)?;
    }
    Ok(())
}

/// Row-major `out[M, N] = a[M, K] · b[K, N]` with bf16 inputs (see
/// [`super::f32_to_bf16`]), fp32 output and fp32 accumulation
/// (`cublasGemmEx`, tensor cores).
pub fn gemm_bf16(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<f32>,
    a: &impl DevicePtr<Bf16>,
    b: &impl DevicePtr<Bf16>,
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
    // outᵀ [N × M] = bᵀ · aᵀ: b is the N × K matrix bᵀ, a the K × M matrix aᵀ.
    // SAFETY: the buffers hold the asserted sizes, in the types named.
    unsafe {
        gemm_ex_32f(
            gpu,
            (N, N),
            (n, m, k),
            (b_ptr, n),
            (a_ptr, k),
            Dtype::Bf16,
            0.0,
            (out_ptr, n),
            Dtype::F32,
        )
    }
}
