//! Fused softmax + cross-entropy on the GPU (`kernels/cuda/crossentropy.cu`);
//! the CPU version is [`crate::crossentropy`].
//!
//! Dimension legend: N rows (B*T), V vocabulary size. A target outside `0..V`
//! (which the CPU kernel rejects with a panic) gives a NaN loss and NaN
//! gradients for its row. Logits are `f32` or [`super::Bf16`] ([`Storage`]);
//! the log-sum-exps and losses are fp32.

use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::compile::CROSSENTROPY;
use super::storage::Storage;
use super::{Arg, CudaError, Gpu, config_1d, dim};

/// Threads per row (one block per row).
const THREADS: u32 = 512;

/// One block per row.
fn rows_config(n: usize) -> LaunchConfig {
    config_1d(n, THREADS)
}

/// GPU [`crate::crossentropy_forward`]: `lse[i] = log Σ_j exp(logits[i, j])` and
/// `losses[i] = lse[i] - logits[i, targets[i]]`.
pub fn crossentropy_forward<X: Storage>(
    gpu: &Gpu,
    losses: &mut impl DevicePtrMut<f32>,
    lse: &mut impl DevicePtrMut<f32>,
    logits: &impl DevicePtr<X>,
    targets: &impl DevicePtr<u32>,
    n: usize,
    v: usize,
) -> Result<(), CudaError> {
    assert_eq!(losses.len(), n);
    assert_eq!(lse.len(), n);
    assert_eq!(logits.len(), n * v);
    assert_eq!(targets.len(), n);
    if n == 0 {
        return Ok(());
    }
    assert!(v > 0, "cross-entropy over an empty vocabulary");
    let f = gpu.function(&CROSSENTROPY, None, X::DTYPE, "crossentropy_forward")?;
    let args = [
        gpu.output(losses),
        gpu.output(lse),
        gpu.input(logits),
        gpu.input(targets),
        dim(n),
        dim(v),
    ];
    // SAFETY: the arguments match the kernel; the lengths are asserted above.
    unsafe { gpu.launch(&f, rows_config(n), &args) }
}

/// GPU [`crate::crossentropy_backward_inplace`]: overwrites `logits` with
/// `dloss · (softmax(logits) - onehot(targets))`, using the saved `lse`.
pub fn crossentropy_backward_inplace<X: Storage>(
    gpu: &Gpu,
    logits: &mut impl DevicePtrMut<X>,
    lse: &impl DevicePtr<f32>,
    targets: &impl DevicePtr<u32>,
    dloss: f32,
    n: usize,
    v: usize,
) -> Result<(), CudaError> {
    assert_eq!(logits.len(), n * v);
    assert_eq!(lse.len(), n);
    assert_eq!(targets.len(), n);
    if n == 0 {
        return Ok(());
    }
    assert!(v > 0, "cross-entropy over an empty vocabulary");
    let f = gpu.function(
        &CROSSENTROPY,
        None,
        X::DTYPE,
        "crossentropy_backward_inplace",
    )?;
    let args = [
        gpu.output(logits),
        gpu.input(lse),
        gpu.input(targets),
        Arg::F32(dloss),
        dim(n),
        dim(v),
    ];
    // SAFETY: the arguments match the kernel; the lengths are asserted above.
    unsafe { gpu.launch(&f, rows_config(n), &args) }
}
