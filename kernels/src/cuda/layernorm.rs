//! Layer normalization on the GPU (`kernels/cuda/layernorm.cu`); the CPU
//! version is [`crate::layernorm`]. Inputs, outputs and weights are `f32` or
//! [`super::Bf16`] ([`Storage`]); statistics and weight gradients are fp32.
//!
//! Dimension legend: N rows (B*T), C channels.

use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::compile::LAYERNORM;
use super::reduce::{ROWS_PER_CHUNK, accumulate_partials, column_chunks_config};
use super::storage::Storage;
use super::{Arg, CudaError, Gpu, config_1d, dim};

/// Rows per block of the one-warp-per-row kernels (8 warps).
const ROWS_PER_BLOCK: usize = 8;

/// One warp per row over `n` rows.
fn rows_config(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(ROWS_PER_BLOCK).max(1);
    config_1d(blocks, 32 * ROWS_PER_BLOCK as u32)
}

/// GPU [`crate::layernorm_forward`]: `out = (inp - mean) * rstd * weight + bias`
/// per row; saves `mean[N]`, `rstd[N]`.
pub fn layernorm_forward<X: Storage>(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<X>,
    mean: &mut impl DevicePtrMut<f32>,
    rstd: &mut impl DevicePtrMut<f32>,
    inp: &impl DevicePtr<X>,
    weight: &impl DevicePtr<X>,
    bias: &impl DevicePtr<X>,
    n: usize,
    c: usize,
    eps: f32,
) -> Result<(), CudaError> {
    assert_eq!(out.len(), n * c);
    assert_eq!(inp.len(), n * c);
    assert_eq!(mean.len(), n);
    assert_eq!(rstd.len(), n);
    assert_eq!(weight.len(), c);
    assert_eq!(bias.len(), c);
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&LAYERNORM, None, X::DTYPE, "layernorm_forward")?;
    let args = [
        gpu.output(out),
        gpu.output(mean),
        gpu.output(rstd),
        gpu.input(inp),
        gpu.input(weight),
        gpu.input(bias),
        dim(n),
        dim(c),
        Arg::F32(eps),
    ];
    // SAFETY: the arguments match the kernel; the lengths are asserted above.
    unsafe { gpu.launch(&f, rows_config(n), &args) }
}

/// GPU [`crate::layernorm_backward`]; accumulates into `dinp`, `dweight`, `dbias`.
/// The weight and bias gradients are summed in a fixed order (deterministic).
pub fn layernorm_backward<X: Storage>(
    gpu: &Gpu,
    dinp: &mut impl DevicePtrMut<X>,
    dweight: &mut impl DevicePtrMut<f32>,
    dbias: &mut impl DevicePtrMut<f32>,
    dout: &impl DevicePtr<X>,
    inp: &impl DevicePtr<X>,
    weight: &impl DevicePtr<X>,
    mean: &impl DevicePtr<f32>,
    rstd: &impl DevicePtr<f32>,
    n: usize,
    c: usize,
) -> Result<(), CudaError> {
    assert_eq!(dinp.len(), n * c);
    assert_eq!(dout.len(), n * c);
    assert_eq!(inp.len(), n * c);
    assert_eq!(mean.len(), n);
    assert_eq!(rstd.len(), n);
    assert_eq!(weight.len(), c);
    assert_eq!(dweight.len(), c);
    assert_eq!(dbias.len(), c);
    if n == 0 || c == 0 {
        return Ok(());
    }
    let input_grad = gpu.function(&LAYERNORM, None, X::DTYPE, "layernorm_backward_input")?;
    let args = [
        gpu.output(dinp),
        gpu.input(dout),
        gpu.input(inp),
        gpu.input(weight),
        gpu.input(mean),
        gpu.input(rstd),
        dim(n),
        dim(c),
    ];
    // SAFETY: the arguments match the kernel; the lengths are asserted above.
    unsafe { gpu.launch(&input_grad, rows_config(n), &args) }?;

    let chunks = n.div_ceil(ROWS_PER_CHUNK);
    let mut partial = gpu.zeros::<f32>(chunks * 2 * c)?;
    let partial_kernel = gpu.function(
        &LAYERNORM,
        None,
        X::DTYPE,
        "layernorm_backward_params_partial",
    )?;
    let cfg = column_chunks_config(c, chunks);
    let args = [
        gpu.output(&mut partial),
        gpu.input(dout),
        gpu.input(inp),
        gpu.input(mean),
        gpu.input(rstd),
        dim(n),
        dim(c),
        dim(ROWS_PER_CHUNK),
    ];
    // SAFETY: `partial` holds chunks * 2C floats; the rest as above.
    unsafe { gpu.launch(&partial_kernel, cfg, &args) }?;
    // Chunk r's weight partials start at r·2C and its bias partials at r·2C + C.
    let (weight_part, bias_part) = (partial.slice(..), partial.slice(c..));
    accumulate_partials(gpu, dweight, &weight_part, chunks, c, 2 * c)?;
    accumulate_partials(gpu, dbias, &bias_part, chunks, c, 2 * c)
}
