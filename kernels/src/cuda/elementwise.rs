//! Elementwise kernels on the GPU: GELU (`kernels/cuda/gelu.cu`, CPU version
//! [`crate::gelu`]), the residual add and accumulation ([`crate::residual`]),
//! and fp32 to bf16 conversion (`kernels/cuda/elementwise.cu`).
//!
//! Dimension legend: elementwise over n elements.

use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::compile::{ELEMENTWISE, GELU};
use super::{CudaError, Gpu, elementwise_config, len};

/// GPU [`crate::gelu_forward`]: `out = gelu(inp)`; overwrites `out`.
pub fn gelu_forward(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<f32>,
    inp: &impl DevicePtr<f32>,
) -> Result<(), CudaError> {
    let n = inp.len();
    assert_eq!(out.len(), n);
    let f = gpu.function(&GELU, None, "gelu_forward")?;
    let args = [gpu.output(out), gpu.input(inp), len(n)];
    // SAFETY: the arguments match the kernel; both buffers hold n floats.
    unsafe { gpu.launch(&f, elementwise_config(n), &args) }
}

/// GPU [`crate::gelu_backward`]: `dinp += gelu'(inp) · dout`.
pub fn gelu_backward(
    gpu: &Gpu,
    dinp: &mut impl DevicePtrMut<f32>,
    inp: &impl DevicePtr<f32>,
    dout: &impl DevicePtr<f32>,
) -> Result<(), CudaError> {
    let n = inp.len();
    assert_eq!(dinp.len(), n);
    assert_eq!(dout.len(), n);
    let f = gpu.function(&GELU, None, "gelu_backward")?;
    let args = [gpu.output(dinp), gpu.input(inp), gpu.input(dout), len(n)];
    // SAFETY: the arguments match the kernel; all buffers hold n floats.
    unsafe { gpu.launch(&f, elementwise_config(n), &args) }
}

/// GPU [`crate::residual_forward`]: `out = a + b`; overwrites `out`.
pub fn residual_forward(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<f32>,
    a: &impl DevicePtr<f32>,
    b: &impl DevicePtr<f32>,
) -> Result<(), CudaError> {
    let n = out.len();
    assert_eq!(a.len(), n);
    assert_eq!(b.len(), n);
    let f = gpu.function(&ELEMENTWISE, None, "residual_forward")?;
    let args = [gpu.output(out), gpu.input(a), gpu.input(b), len(n)];
    // SAFETY: the arguments match the kernel; all buffers hold n floats.
    unsafe { gpu.launch(&f, elementwise_config(n), &args) }
}

/// GPU [`crate::add_inplace`]: `acc += x`.
pub fn add_inplace(
    gpu: &Gpu,
    acc: &mut impl DevicePtrMut<f32>,
    x: &impl DevicePtr<f32>,
) -> Result<(), CudaError> {
    let n = acc.len();
    assert_eq!(x.len(), n);
    let f = gpu.function(&ELEMENTWISE, None, "add_inplace")?;
    let args = [gpu.output(acc), gpu.input(x), len(n)];
    // SAFETY: the arguments match the kernel; both buffers hold n floats.
    unsafe { gpu.launch(&f, elementwise_config(n), &args) }
}

/// `out = bf16(x)` (round to nearest even), as raw bf16 bit patterns.
pub fn f32_to_bf16(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<u16>,
    x: &impl DevicePtr<f32>,
) -> Result<(), CudaError> {
    let n = x.len();
    assert_eq!(out.len(), n);
    let f = gpu.function(&ELEMENTWISE, None, "f32_to_bf16")?;
    let args = [gpu.output(out), gpu.input(x), len(n)];
    // SAFETY: the arguments match the kernel; both buffers hold n elements.
    unsafe { gpu.launch(&f, elementwise_config(n), &args) }
}
