//! Elementwise kernels on the GPU: GELU (`kernels/cuda/gelu.cu`, CPU version
//! [`crate::gelu`]), the residual add and accumulation ([`crate::residual`]),
//! and conversions between fp32 and the storage types
//! (`kernels/cuda/elementwise.cu`). The activations are `f32` or [`Bf16`]
//! ([`Storage`]); the math is fp32.
//!
//! Dimension legend: elementwise over n elements.

use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::compile::{ELEMENTWISE, GELU};
use super::storage::{Bf16, Storage};
use super::{CudaError, Gpu, elementwise_config, len};

/// GPU [`crate::gelu_forward`]: `out = gelu(inp)`; overwrites `out`.
pub fn gelu_forward<X: Storage>(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<X>,
    inp: &impl DevicePtr<X>,
) -> Result<(), CudaError> {
    let n = inp.len();
    assert_eq!(out.len(), n);
    let f = gpu.function(&GELU, None, X::DTYPE, "gelu_forward")?;
    let args = [gpu.output(out), gpu.input(inp), len(n)];
    // SAFETY: the arguments match the kernel; both buffers hold n elements.
    unsafe { gpu.launch(&f, elementwise_config(n), &args) }
}

/// GPU [`crate::gelu_backward`]: `dinp += gelu'(inp) · dout`.
pub fn gelu_backward<X: Storage>(
    gpu: &Gpu,
    dinp: &mut impl DevicePtrMut<X>,
    inp: &impl DevicePtr<X>,
    dout: &impl DevicePtr<X>,
) -> Result<(), CudaError> {
    let n = inp.len();
    assert_eq!(dinp.len(), n);
    assert_eq!(dout.len(), n);
    let f = gpu.function(&GELU, None, X::DTYPE, "gelu_backward")?;
    let args = [gpu.output(dinp), gpu.input(inp), gpu.input(dout), len(n)];
    // SAFETY: the arguments match the kernel; all buffers hold n elements.
    unsafe { gpu.launch(&f, elementwise_config(n), &args) }
}

/// GPU [`crate::residual_forward`]: `out = a + b`; overwrites `out`.
pub fn residual_forward<X: Storage>(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<X>,
    a: &impl DevicePtr<X>,
    b: &impl DevicePtr<X>,
) -> Result<(), CudaError> {
    let n = out.len();
    assert_eq!(a.len(), n);
    assert_eq!(b.len(), n);
    let f = gpu.function(&ELEMENTWISE, None, X::DTYPE, "residual_forward")?;
    let args = [gpu.output(out), gpu.input(a), gpu.input(b), len(n)];
    // SAFETY: the arguments match the kernel; all buffers hold n elements.
    unsafe { gpu.launch(&f, elementwise_config(n), &args) }
}

/// GPU [`crate::add_inplace`]: `acc += x`.
pub fn add_inplace<X: Storage>(
    gpu: &Gpu,
    acc: &mut impl DevicePtrMut<X>,
    x: &impl DevicePtr<X>,
) -> Result<(), CudaError> {
    let n = acc.len();
    assert_eq!(x.len(), n);
    let f = gpu.function(&ELEMENTWISE, None, X::DTYPE, "add_inplace")?;
    let args = [gpu.output(acc), gpu.input(x), len(n)];
    // SAFETY: the arguments match the kernel; both buffers hold n elements.
    unsafe { gpu.launch(&f, elementwise_config(n), &args) }
}

/// `out = X(x)`: rounds fp32 values to the storage type (to nearest even for
/// bf16; a copy for `f32`).
pub fn f32_to_storage<X: Storage>(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<X>,
    x: &impl DevicePtr<f32>,
) -> Result<(), CudaError> {
    let n = x.len();
    assert_eq!(out.len(), n);
    let f = gpu.function(&ELEMENTWISE, None, X::DTYPE, "to_floatx")?;
    let args = [gpu.output(out), gpu.input(x), len(n)];
    // SAFETY: the arguments match the kernel; both buffers hold n elements.
    unsafe { gpu.launch(&f, elementwise_config(n), &args) }
}

/// `out = f32(x)`: widens stored values to fp32 (exact).
pub fn storage_to_f32<X: Storage>(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<f32>,
    x: &impl DevicePtr<X>,
) -> Result<(), CudaError> {
    let n = x.len();
    assert_eq!(out.len(), n);
    let f = gpu.function(&ELEMENTWISE, None, X::DTYPE, "from_floatx")?;
    let args = [gpu.output(out), gpu.input(x), len(n)];
    // SAFETY: the arguments match the kernel; both buffers hold n elements.
    unsafe { gpu.launch(&f, elementwise_config(n), &args) }
}

/// `out = bf16(x)` (round to nearest even): [`f32_to_storage`] into [`Bf16`].
pub fn f32_to_bf16(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<Bf16>,
    x: &impl DevicePtr<f32>,
) -> Result<(), CudaError> {
    f32_to_storage(gpu, out, x)
}
