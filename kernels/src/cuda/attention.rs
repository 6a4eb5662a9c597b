//! Causal self-attention on the GPU, FlashAttention-2 style
//! (`kernels/cuda/attention.cu`); the CPU version is [`crate::attention`], with
//! the same layouts: `qkv [B, T, 3C]`, `out [B, T, C]`, `lse [B, NH, T]`.
//!
//! Dimension legend: B batch, T time, C channels = NH * hs, NH heads, hs head size.
//! The kernels are compiled once per head size (`-DHS`), which sizes the
//! per-thread register arrays; head sizes up to [`MAX_HEAD_SIZE`] are supported.
//! `qkv`, `out` and their gradients are `f32` or [`super::Bf16`] ([`Storage`]);
//! the tiles, scores, softmax statistics and sums are fp32.

use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaFunction, DevicePtr, DevicePtrMut, LaunchConfig};

use super::compile::ATTENTION;
use super::storage::{Dtype, Storage};
use super::{CudaError, Gpu, dim, elementwise_config};

/// Largest supported head size (the kernels keep up to 3·hs floats per thread
/// in registers).
pub const MAX_HEAD_SIZE: usize = 128;

/// Queries per block of the forward and dQ kernels (`BR` in attention.cu).
const BR: usize = 64;
/// Keys per shared-memory tile there (`BC`).
const BC: usize = 32;
/// Keys per block of the dK/dV kernel (`BK`).
const BK: usize = 64;
/// Queries per shared-memory tile there (`BQ`).
const BQ: usize = 16;

/// Dynamic shared memory above which a kernel must opt in.
const DEFAULT_SHARED_LIMIT: usize = 48 * 1024;

/// The head size, checked against the kernels' limits.
fn head_size(c: usize, nh: usize) -> Result<usize, CudaError> {
    assert!(
        nh > 0 && c > 0 && c.is_multiple_of(nh),
        "C = {c} must be a positive multiple of NH = {nh}"
    );
    let hs = c / nh;
    if hs > MAX_HEAD_SIZE {
        return Err(CudaError::Unsupported {
            kernel: "attention",
            reason: format!("head size {hs} > {MAX_HEAD_SIZE}"),
        });
    }
    Ok(hs)
}

/// Kernel `name` for head size `hs` and storage `dtype`, allowed `shared` bytes
/// of dynamic shared memory.
fn kernel(
    gpu: &Gpu,
    hs: usize,
    dtype: Dtype,
    name: &str,
    shared: usize,
) -> Result<CudaFunction, CudaError> {
    let f = gpu.function(&ATTENTION, Some(hs), dtype, name)?;
    if shared > DEFAULT_SHARED_LIMIT {
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            shared as i32,
        )?;
    }
    Ok(f)
}

/// One block of `threads` per (row block of `rows`, b*NH + h).
fn blocks_config(t: usize, bnh: usize, rows: usize, shared: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (t.div_ceil(rows) as u32, bnh as u32, 1),
        block_dim: (rows as u32, 1, 1),
        shared_mem_bytes: shared as u32,
    }
}

/// Shared memory of the forward and dQ kernels: a key and a value tile.
fn kv_tile_bytes(hs: usize) -> usize {
    2 * BC * hs * size_of::<f32>()
}

/// GPU [`crate::attention_forward`]: `out = softmax(q·kᵀ/√hs + causal mask)·v`
/// per head, saving the row log-sum-exp of the scaled scores in `lse`.
pub fn attention_forward<X: Storage>(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<X>,
    lse: &mut impl DevicePtrMut<f32>,
    qkv: &impl DevicePtr<X>,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> Result<(), CudaError> {
    assert_eq!(out.len(), b * t * c);
    assert_eq!(lse.len(), b * nh * t);
    assert_eq!(qkv.len(), b * t * 3 * c);
    if b * t == 0 {
        return Ok(());
    }
    let hs = head_size(c, nh)?;
    let shared = kv_tile_bytes(hs);
    let f = kernel(gpu, hs, X::DTYPE, "attention_forward", shared)?;
    let args = [
        gpu.output(out),
        gpu.output(lse),
        gpu.input(qkv),
        dim(t),
        dim(c),
        dim(nh),
    ];
    // SAFETY: the arguments match the kernel; the lengths are asserted above.
    unsafe { gpu.launch(&f, blocks_config(t, b * nh, BR, shared), &args) }
}

/// GPU [`crate::attention_backward`]: recomputes the probabilities from `qkv`
/// and `lse`, uses `D = rowsum(dout ∘ out)`, and accumulates into `dqkv`.
pub fn attention_backward<X: Storage>(
    gpu: &Gpu,
    dqkv: &mut impl DevicePtrMut<X>,
    dout: &impl DevicePtr<X>,
    qkv: &impl DevicePtr<X>,
    out: &impl DevicePtr<X>,
    lse: &impl DevicePtr<f32>,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> Result<(), CudaError> {
    assert_eq!(dqkv.len(), b * t * 3 * c);
    assert_eq!(qkv.len(), b * t * 3 * c);
    assert_eq!(dout.len(), b * t * c);
    assert_eq!(out.len(), b * t * c);
    assert_eq!(lse.len(), b * nh * t);
    if b * t == 0 {
        return Ok(());
    }
    let hs = head_size(c, nh)?;
    let mut dd = gpu.zeros::<f32>(b * nh * t)?;
    let rowdot = kernel(gpu, hs, X::DTYPE, "attention_backward_rowdot", 0)?;
    let args = [
        gpu.output(&mut dd),
        gpu.input(dout),
        gpu.input(out),
        dim(b * nh),
        dim(t),
        dim(c),
        dim(nh),
    ];
    // SAFETY: the arguments match the kernel; `dd` holds B*NH*T floats.
    unsafe { gpu.launch(&rowdot, elementwise_config(b * nh * t), &args) }?;

    // The dQ and the dK/dV kernels take the same arguments.
    let args = [
        gpu.output(dqkv),
        gpu.input(dout),
        gpu.input(qkv),
        gpu.input(lse),
        gpu.input(&dd),
        dim(t),
        dim(c),
        dim(nh),
    ];
    let shared = kv_tile_bytes(hs);
    let dq = kernel(gpu, hs, X::DTYPE, "attention_backward_dq", shared)?;
    // SAFETY: as above.
    unsafe { gpu.launch(&dq, blocks_config(t, b * nh, BR, shared), &args) }?;

    let shared = (2 * BK * (hs + 1) + 2 * BQ * hs + 2 * BQ) * size_of::<f32>();
    let dkv = kernel(gpu, hs, X::DTYPE, "attention_backward_dkv", shared)?;
    // SAFETY: as above.
    unsafe { gpu.launch(&dkv, blocks_config(t, b * nh, BK, shared), &args) }
}
