//! The optimizer and gradient-norm kernels on the GPU (`kernels/cuda/adamw.cu`,
//! `kernels/cuda/norm.cu`, `kernels/cuda/elementwise.cu`); the CPU versions
//! are [`crate::adamw`] and [`crate::norm`]. Parameters, gradients and moments
//! are fp32; [`adamw_update_with_copy`] also refreshes a compute copy of the
//! parameters in a storage type (bf16 for mixed precision) in the same pass.
//!
//! Dimension legend: flat buffers of any length (a shard of the parameters).

use cudarc::driver::{CudaFunction, DevicePtr, DevicePtrMut};

use super::compile::{ADAMW, ELEMENTWISE, NORM};
use super::storage::{Dtype, Storage};
use super::{Arg, CudaError, Gpu, config_1d, elementwise_config, len};
use crate::{AdamW, DecaySpan};

/// Threads per block of the sum-of-squares kernels (`THREADS` in norm.cu).
const NORM_THREADS: u32 = 256;

/// Blocks of the first sum-of-squares pass (fixed: the result does not
/// depend on the device).
const NORM_BLOCKS: usize = 1024;

/// GPU [`crate::adamw_update`]: one AdamW step at 1-based `step`, one launch per
/// span, with the scalars formed in f64 and rounded once as on the CPU.
pub fn adamw_update(
    gpu: &Gpu,
    params: &mut impl DevicePtrMut<f32>,
    grads: &impl DevicePtr<f32>,
    m: &mut impl DevicePtrMut<f32>,
    v: &mut impl DevicePtrMut<f32>,
    hp: &AdamW,
    step: u64,
    spans: &[DecaySpan],
) -> Result<(), CudaError> {
    let f = gpu.function(&ADAMW, None, Dtype::F32, "adamw_update")?;
    // A null copy: the kernel writes none.
    let no_copy = (Arg::Ptr(0), 0);
    adamw_launch(gpu, &f, params, no_copy, grads, m, v, hp, step, spans)
}

/// [`adamw_update`] that also writes the updated parameters, rounded to `X`,
/// into `copy` (as long as `params`): the fp32 master weights and the compute
/// copy that forward and backward read, refreshed in one pass.
pub fn adamw_update_with_copy<X: Storage>(
    gpu: &Gpu,
    params: &mut impl DevicePtrMut<f32>,
    copy: &mut impl DevicePtrMut<X>,
    grads: &impl DevicePtr<f32>,
    m: &mut impl DevicePtrMut<f32>,
    v: &mut impl DevicePtrMut<f32>,
    hp: &AdamW,
    step: u64,
    spans: &[DecaySpan],
) -> Result<(), CudaError> {
    assert_eq!(copy.len(), params.len());
    let f = gpu.function(&ADAMW, None, X::DTYPE, "adamw_update")?;
    let copy = (gpu.output(copy), X::DTYPE.size());
    adamw_launch(gpu, &f, params, copy, grads, m, v, hp, step, spans)
}

/// Launches adamw.cu's `adamw_update` (`f`, compiled for the type that `copy`
/// points to) once per span; `copy` is the copy's address (null for none) and
/// its element size in bytes.
fn adamw_launch(
    gpu: &Gpu,
    f: &CudaFunction,
    params: &mut impl DevicePtrMut<f32>,
    (copy, copy_size): (Arg, usize),
    grads: &impl DevicePtr<f32>,
    m: &mut impl DevicePtrMut<f32>,
    v: &mut impl DevicePtrMut<f32>,
    hp: &AdamW,
    step: u64,
    spans: &[DecaySpan],
) -> Result<(), CudaError> {
    let n = params.len();
    assert_eq!(grads.len(), n);
    assert_eq!(m.len(), n);
    assert_eq!(v.len(), n);
    assert!(step >= 1, "AdamW steps are 1-based");
    let lr = hp.lr as f64;
    let step = step.min(i32::MAX as u64) as i32;
    let bias_correction1 = 1.0 - (hp.beta1 as f64).powi(step);
    let bias_correction2 = 1.0 - (hp.beta2 as f64).powi(step);
    let step_size = (lr / bias_correction1) as f32;
    let bc2_sqrt = bias_correction2.sqrt() as f32;
    let one_minus_beta1 = (1.0 - hp.beta1 as f64) as f32;
    let one_minus_beta2 = (1.0 - hp.beta2 as f64) as f32;
    let bases = [
        gpu.output(params),
        gpu.input(grads),
        gpu.output(m),
        gpu.output(v),
    ];
    for span in spans {
        assert!(
            span.start <= span.end && span.end <= n,
            "span {span:?} out of 0..{n}"
        );
        let count = span.end - span.start;
        if count == 0 {
            continue;
        }
        let decay = if span.decay {
            (1.0 - lr * hp.weight_decay as f64) as f32
        } else {
            1.0
        };
        // Element `span.start` of a buffer of `size`-byte elements (null stays null).
        let at = |base: Arg, size: usize| match base {
            Arg::Ptr(p) if p != 0 => Arg::Ptr(p + (span.start * size) as u64),
            other => other,
        };
        let f32_at = |base: Arg| at(base, size_of::<f32>());
        let args = [
            f32_at(bases[0]),
            at(copy, copy_size),
            f32_at(bases[1]),
            f32_at(bases[2]),
            f32_at(bases[3]),
            len(count),
            Arg::F32(one_minus_beta1),
            Arg::F32(hp.beta2),
            Arg::F32(one_minus_beta2),
            Arg::F32(step_size),
            Arg::F32(bc2_sqrt),
            Arg::F32(hp.eps),
            Arg::F32(decay),
        ];
        // SAFETY: the arguments match the kernel; the span lies inside the four
        // buffers of n floats and the copy of n elements (asserted).
        unsafe { gpu.launch(f, elementwise_config(count), &args) }?;
    }
    Ok(())
}

/// GPU [`crate::sum_of_squares`]: `Σ x²` accumulated in f64, in a fixed order
/// (deterministic). Waits for the result.
pub fn sum_of_squares(gpu: &Gpu, x: &impl DevicePtr<f32>) -> Result<f64, CudaError> {
    let n = x.len();
    let blocks = n.div_ceil(NORM_THREADS as usize).clamp(1, NORM_BLOCKS);
    let mut partial = gpu.zeros::<f64>(blocks)?;
    let mut total = gpu.zeros::<f64>(1)?;
    let first = gpu.function(&NORM, None, Dtype::F32, "sum_of_squares_partial")?;
    let cfg = config_1d(blocks, NORM_THREADS);
    let args = [gpu.output(&mut partial), gpu.input(x), len(n)];
    // SAFETY: the arguments match the kernel; `partial` holds one f64 per block.
    unsafe { gpu.launch(&first, cfg, &args) }?;
    let second = gpu.function(&NORM, None, Dtype::F32, "sum_partials")?;
    let cfg = config_1d(1, NORM_THREADS);
    let args = [
        gpu.output(&mut total),
        gpu.input(&partial),
        Arg::I32(blocks as i32),
    ];
    // SAFETY: the arguments match the kernel; `total` holds one f64.
    unsafe { gpu.launch(&second, cfg, &args) }?;
    Ok(gpu.download(&total)?[0])
}

/// GPU [`crate::scale_inplace`]: `x *= s`.
pub fn scale_inplace(gpu: &Gpu, x: &mut impl DevicePtrMut<f32>, s: f32) -> Result<(), CudaError> {
    let n = x.len();
    let f = gpu.function(&ELEMENTWISE, None, Dtype::F32, "scale_inplace")?;
    let args = [gpu.output(x), Arg::F32(s), len(n)];
    // SAFETY: the arguments match the kernel; `x` holds n floats.
    unsafe { gpu.launch(&f, elementwise_config(n), &args) }
}
