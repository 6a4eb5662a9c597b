//! Token plus position embeddings on the GPU (`kernels/cuda/embedding.cu`);
//! the CPU version is [`crate::embedding`].
//!
//! Dimension legend: B batch, T time, C channels, V vocabulary (rows of `wte`).
//! A token outside `0..V` (which the CPU kernel rejects with a panic) gives a NaN
//! output row and no gradient. The `wte` gradient is summed with atomics, so its
//! last bits can vary from run to run. Outputs, weights and output gradients are
//! `f32` or [`super::Bf16`] ([`Storage`]); the weight gradients are fp32.

use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::compile::EMBEDDING;
use super::storage::Storage;
use super::{CudaError, Gpu, dim, elementwise_config};

/// GPU [`crate::embedding_forward`]: `out[b, t, :] = wte[tokens[b, t], :] + wpe[t, :]`.
pub fn embedding_forward<X: Storage>(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<X>,
    tokens: &impl DevicePtr<u32>,
    wte: &impl DevicePtr<X>,
    wpe: &impl DevicePtr<X>,
    b: usize,
    t: usize,
    c: usize,
) -> Result<(), CudaError> {
    assert_eq!(out.len(), b * t * c);
    assert_eq!(tokens.len(), b * t);
    assert!(wpe.len() >= t * c);
    if b * t * c == 0 {
        return Ok(());
    }
    assert_eq!(wte.len() % c, 0);
    let f = gpu.function(&EMBEDDING, None, X::DTYPE, "embedding_forward")?;
    let args = [
        gpu.output(out),
        gpu.input(tokens),
        gpu.input(wte),
        gpu.input(wpe),
        dim(b * t),
        dim(t),
        dim(c),
        dim(wte.len() / c),
    ];
    // SAFETY: the arguments match the kernel; the lengths are asserted above
    // and the kernel reads only rows of `wte` below V.
    unsafe { gpu.launch(&f, elementwise_config(b * t * c), &args) }
}

/// GPU [`crate::embedding_backward`]; accumulates into `dwte` (`[V, C]`) and
/// the first T rows of `dwpe`.
pub fn embedding_backward<X: Storage>(
    gpu: &Gpu,
    dwte: &mut impl DevicePtrMut<f32>,
    dwpe: &mut impl DevicePtrMut<f32>,
    dout: &impl DevicePtr<X>,
    tokens: &impl DevicePtr<u32>,
    b: usize,
    t: usize,
    c: usize,
) -> Result<(), CudaError> {
    assert_eq!(dout.len(), b * t * c);
    assert_eq!(tokens.len(), b * t);
    assert!(dwpe.len() >= t * c);
    if b * t * c == 0 {
        return Ok(());
    }
    assert_eq!(dwte.len() % c, 0);
    let v = dwte.len() / c;
    let wte = gpu.function(&EMBEDDING, None, X::DTYPE, "embedding_backward_wte")?;
    let args = [
        gpu.output(dwte),
        gpu.input(dout),
        gpu.input(tokens),
        dim(b * t),
        dim(c),
        dim(v),
    ];
    // SAFETY: the arguments match the kernel; the lengths are asserted above
    // and the kernel writes only rows of `dwte` below V.
    unsafe { gpu.launch(&wte, elementwise_config(b * t * c), &args) }?;
    let wpe = gpu.function(&EMBEDDING, None, X::DTYPE, "embedding_backward_wpe")?;
    let args = [gpu.output(dwpe), gpu.input(dout), dim(b), dim(t), dim(c)];
    // SAFETY: as above; only the first T rows of `dwpe` are touched.
    unsafe { gpu.launch(&wpe, elementwise_config(t * c), &args) }
}
