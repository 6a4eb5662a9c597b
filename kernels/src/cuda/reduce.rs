//! Deterministic column sums on the GPU (`kernels/cuda/reduce.cu`): one partial
//! sum per chunk of rows, then the chunks added in order. Used for the bias,
//! LayerNorm-parameter and position-embedding gradients. The summed rows are
//! `f32` or [`super::Bf16`]; partials and sums are fp32.
//!
//! Dimension legend: N rows, C columns.

use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::compile::REDUCE;
use super::storage::{Dtype, Storage};
use super::{CudaError, Gpu, config_1d, dim};

/// Rows per chunk of the partial sums.
pub(super) const ROWS_PER_CHUNK: usize = 256;

/// One block of (32, 8) threads per 32 columns and chunk of rows: the launch of
/// the partial-sum kernels (reduce.cu's `column_partial_sums`, layernorm.cu's
/// `layernorm_backward_params_partial`).
pub(super) fn column_chunks_config(c: usize, chunks: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (c.div_ceil(32) as u32, chunks as u32, 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    }
}

/// `dst[col] += Σ_{r < chunks} partial[r * stride + col]` in order.
pub(super) fn accumulate_partials(
    gpu: &Gpu,
    dst: &mut impl DevicePtrMut<f32>,
    partial: &impl DevicePtr<f32>,
    chunks: usize,
    c: usize,
    stride: usize,
) -> Result<(), CudaError> {
    assert_eq!(dst.len(), c);
    assert!(chunks == 0 || partial.len() >= (chunks - 1) * stride + c);
    let f = gpu.function(&REDUCE, None, Dtype::F32, "accumulate_partials")?;
    let cfg = config_1d(c.div_ceil(256).max(1), 256);
    let args = [
        gpu.output(dst),
        gpu.input(partial),
        dim(chunks),
        dim(c),
        dim(stride),
    ];
    // SAFETY: the arguments match the kernel; the lengths are asserted above.
    unsafe { gpu.launch(&f, cfg, &args) }
}

/// `dst[col] += Σ_rows x[row, col]` for `x` of `[n, c]`, in a fixed order
/// (reduce.cu's two passes).
pub(super) fn column_sums_accumulate<X: Storage>(
    gpu: &Gpu,
    dst: &mut impl DevicePtrMut<f32>,
    x: &impl DevicePtr<X>,
    n: usize,
    c: usize,
) -> Result<(), CudaError> {
    assert_eq!(dst.len(), c);
    assert_eq!(x.len(), n * c);
    if n == 0 || c == 0 {
        return Ok(());
    }
    let chunks = n.div_ceil(ROWS_PER_CHUNK);
    let mut partial = gpu.zeros::<f32>(chunks * c)?;
    let f = gpu.function(&REDUCE, None, X::DTYPE, "column_partial_sums")?;
    let cfg = column_chunks_config(c, chunks);
    let args = [
        gpu.output(&mut partial),
        gpu.input(x),
        dim(n),
        dim(c),
        dim(ROWS_PER_CHUNK),
    ];
    // SAFETY: `partial` holds chunks * C floats; `x` is asserted above.
    unsafe { gpu.launch(&f, cfg, &args) }?;
    accumulate_partials(gpu, dst, &partial, chunks, c, c)
}
