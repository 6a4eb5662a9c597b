//! The GPU path: the kernels of this crate as CUDA kernels and cuBLAS calls,
//! on buffers that live on the device (built with the `cuda` feature).
//!
//! Every function here mirrors the CPU kernel of the same name (same math,
//! layouts and argument order: outputs, inputs, dimensions; backward kernels
//! accumulate), taking a [`Gpu`] first and device buffers (`CudaSlice`,
//! `CudaView`, `CudaViewMut`) in place of slices, so GPU results can be held to
//! the CPU kernels. Launches are asynchronous on the `Gpu`'s one stream; read a
//! result back with [`Gpu::download`].
//!
//! The CUDA driver, NVRTC and cuBLAS are loaded at run time: this builds with no
//! CUDA toolkit, and [`Gpu::new`] returns [`CudaError::LibraryMissing`] or
//! [`CudaError::NoDevice`] on a machine without them. The `.cu` sources under
//! `kernels/cuda/` are compiled by NVRTC on first use, for the device's own
//! architecture, and cached per `Gpu`.
//!
//! Activations and weights can be stored in fp32 or bf16: the kernels that
//! read or write them are generic over the element type ([`Storage`]: `f32`
//! or [`Bf16`]) and each `.cu` source is compiled once per type, computing in
//! fp32 either way. Gradients of parameters, moments, statistics (layernorm
//! mean and rstd, log-sum-exps) and losses are always fp32.
//!
//! Dimension letters as in the crate root: B, T, C, OC, NH, hs, V, N = B*T.

mod adamw;
mod attention;
mod attention_gemm;
pub mod compile;
mod crossentropy;
mod elementwise;
mod embedding;
mod error;
mod layernorm;
mod matmul;
mod reduce;
mod storage;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_bf16;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::{CudaBlas, sys as blas_sys};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
    LaunchConfig, PushKernelArg, ValidAsZeroBits, sys as driver_sys,
};
use cudarc::nvrtc::Ptx;

pub use adamw::{adamw_update, adamw_update_with_copy, scale_inplace, sum_of_squares};
pub use attention::{attention_backward, attention_forward};
pub use attention_gemm::{
    GemmAttentionScratch, attention_backward_gemm, attention_forward_gemm, gemm_attention_probs_len,
};
pub use compile::{KernelSource, SOURCES, compile_cubin, nvrtc_available, nvrtc_version};
pub use crossentropy::{crossentropy_backward_inplace, crossentropy_forward};
pub use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
pub use elementwise::{
    add_inplace, f32_to_bf16, f32_to_storage, gelu_backward, gelu_forward, residual_forward,
    storage_to_f32,
};
pub use embedding::{embedding_backward, embedding_forward};
pub use error::CudaError;
pub use layernorm::{layernorm_backward, layernorm_forward};
pub use matmul::{Products, gemm_bf16, matmul_backward, matmul_forward};
pub use storage::{Bf16, Dtype, Storage, to_f32s, to_storage};

/// Threads per block of the elementwise (grid-stride) kernels.
const THREADS: u32 = 256;

/// Most blocks launched by a grid-stride kernel.
const MAX_BLOCKS: usize = 1 << 16;

/// A 1-D launch: `blocks` blocks of `threads` threads, no dynamic shared memory.
fn config_1d(blocks: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A launch of `n` elements with grid-stride loops.
fn elementwise_config(n: usize) -> LaunchConfig {
    config_1d(n.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS), THREADS)
}

/// What the driver says about the device.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// The device's name, e.g. `NVIDIA H200`.
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Total memory in bytes.
    pub total_memory: usize,
    /// Free memory in bytes.
    pub free_memory: usize,
    /// Streaming multiprocessors.
    pub multiprocessors: i32,
    /// The driver's CUDA version, e.g. 13000 for 13.0.
    pub driver_version: i32,
}

/// How far a GPU result is from the CPU's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Comparison {
    /// `max |got - want|` (infinite if any `got` is NaN where `want` is not).
    pub max_abs: f64,
    /// `max |want|`.
    pub max_want: f64,
}

impl Comparison {
    /// Compares `got` with `want` elementwise.
    pub fn new(got: &[f32], want: &[f32]) -> Self {
        assert_eq!(got.len(), want.len(), "compared buffers differ in length");
        let (mut max_abs, mut max_want) = (0.0f64, 0.0f64);
        for (&g, &w) in got.iter().zip(want) {
            let err = (g as f64 - w as f64).abs();
            max_abs = if err.is_nan() && !w.is_nan() {
                f64::INFINITY
            } else {
                max_abs.max(err)
            };
            max_want = max_want.max((w as f64).abs());
        }
        Comparison { max_abs, max_want }
    }

    /// The error relative to the largest magnitude: `max_abs / max |want|`.
    pub fn relative(&self) -> f64 {
        if self.max_want > 0.0 {
            self.max_abs / self.max_want
        } else {
            self.max_abs
        }
    }
}

/// Whether the CUDA driver library can be loaded (checked before any driver
/// call, which would panic without it).
pub fn driver_available() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { driver_sys::is_culib_present() }
}

/// How many GPUs the driver sees (0 when the driver is installed but no GPU is
/// visible); [`CudaError::LibraryMissing`] without a driver.
pub fn device_count() -> Result<usize, CudaError> {
    if !driver_available() {
        return Err(CudaError::LibraryMissing { library: "cuda" });
    }
    match CudaContext::device_count() {
        Ok(count) => Ok(count.max(0) as usize),
        // cuInit says so when the driver is installed but no GPU is visible.
        Err(e) if e.0 == driver_sys::CUresult::CUDA_ERROR_NO_DEVICE => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// A kernel argument: a device address or a scalar.
#[derive(Clone, Copy, Debug)]
enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
}

/// A compiled module's source name, head size (`-DHS`, attention only) and
/// storage type.
type ModuleKey = (&'static str, Option<usize>, Dtype);

/// One GPU: its context, its one stream, a cuBLAS handle and the kernels
/// compiled so far.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    arch: String,
    modules: Mutex<HashMap<ModuleKey, Arc<CudaModule>>>,
    products: Mutex<Products>,
}

impl Gpu {
    /// Opens device `ordinal`, or says why there is none.
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        if !driver_available() {
            return Err(CudaError::LibraryMissing { library: "cuda" });
        }
        let count = device_count()?;
        if ordinal >= count {
            let count = count as i32;
            return Err(CudaError::NoDevice { ordinal, count });
        }
        // SAFETY: only tries to open the library.
        if !unsafe { blas_sys::is_culib_present() } {
            return Err(CudaError::LibraryMissing { library: "cublas" });
        }
        let ctx = CudaContext::new(ordinal)?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone())?;
        let (major, minor) = ctx.compute_capability()?;
        let gpu = Gpu {
            ctx,
            stream,
            blas,
            arch: format!("sm_{major}{minor}"),
            modules: Mutex::new(HashMap::new()),
            products: Mutex::new(Products::Fp32),
        };
        // Plain fp32 products unless asked otherwise (no TF32).
        gpu.set_products(Products::Fp32)?;
        Ok(gpu)
    }

    /// The device's name, compute capability, memory and driver version.
    pub fn info(&self) -> Result<DeviceInfo, CudaError> {
        let (free_memory, total_memory) = self.ctx.mem_get_info()?;
        let multiprocessors = self
            .ctx
            .attribute(driver_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        Ok(DeviceInfo {
            name: self.ctx.name()?,
            compute_capability: self.ctx.compute_capability()?,
            total_memory,
            free_memory,
            multiprocessors,
            driver_version: {
                let mut version = 0;
                // SAFETY: the driver is loaded (a context exists); the pointer is valid.
                unsafe { driver_sys::cuDriverGetVersion(&mut version) }.result()?;
                version
            },
        })
    }

    /// The architecture kernels are compiled for, e.g. `sm_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The stream every operation runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The cuBLAS handle (bound to [`Gpu::stream`]).
    pub fn blas(&self) -> &CudaBlas {
        &self.blas
    }

    /// Sets the arithmetic of the dense products ([`matmul_forward`],
    /// [`matmul_backward`]) from now on.
    pub fn set_products(&self, products: Products) -> Result<(), CudaError> {
        let mode = match products {
            Products::Tf32 => blas_sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
            Products::Fp32 | Products::Bf16 => blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
        };
        // SAFETY: the handle is live; the mode is a valid enum value.
        unsafe { blas_sys::cublasSetMathMode(*self.blas.handle(), mode) }.result()?;
        *self.products.lock().unwrap_or_else(|e| e.into_inner()) = products;
        Ok(())
    }

    /// The arithmetic of the dense products.
    pub fn products(&self) -> Products {
        *self.products.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies `host` to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>, CudaError> {
        Ok(self.stream.clone_htod(host)?)
    }

    /// Copies a device buffer back (waits for the work queued before).
    pub fn download<T: DeviceRepr>(&self, dev: &impl DevicePtr<T>) -> Result<Vec<T>, CudaError> {
        Ok(self.stream.clone_dtoh(dev)?)
    }

    /// A new zeroed device buffer of `n` elements.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>, CudaError> {
        Ok(self.stream.alloc_zeros(n)?)
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        Ok(self.stream.synchronize()?)
    }

    /// Mean GPU milliseconds per call of `f` over `iters` calls, after one
    /// warm-up call, measured with CUDA events.
    pub fn time_ms(
        &self,
        iters: usize,
        mut f: impl FnMut() -> Result<(), CudaError>,
    ) -> Result<f64, CudaError> {
        f()?;
        let flags = Some(driver_sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.ctx.new_event(flags)?;
        let end = self.ctx.new_event(flags)?;
        start.record(&self.stream)?;
        for _ in 0..iters {
            f()?;
        }
        end.record(&self.stream)?;
        end.synchronize()?;
        Ok(start.elapsed_ms(&end)? as f64 / iters.max(1) as f64)
    }

    /// Compiles every source for this device now (otherwise each compiles on
    /// first use), in every storage type, with `head_size` for the attention
    /// kernels.
    pub fn compile_all(&self, head_size: usize) -> Result<(), CudaError> {
        for source in &SOURCES {
            for &dtype in source.dtypes() {
                self.module(source, source.needs_head_size.then_some(head_size), dtype)?;
            }
        }
        Ok(())
    }

    /// The module of `source` (head size, storage type), compiled and loaded on
    /// first use.
    fn module(
        &self,
        source: &KernelSource,
        head_size: Option<usize>,
        dtype: Dtype,
    ) -> Result<Arc<CudaModule>, CudaError> {
        // A source without `floatX` has one module for both types.
        let dtype = if source.per_dtype { dtype } else { Dtype::F32 };
        let key = (source.name, head_size, dtype);
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(module) = modules.get(&key) {
            return Ok(module.clone());
        }
        let cubin = compile_cubin(source, &self.arch, head_size, dtype)?;
        let module = self.ctx.load_module(Ptx::from_binary(cubin))?;
        modules.insert(key, module.clone());
        Ok(module)
    }

    /// Kernel `name` of `source`, compiled for `dtype`.
    fn function(
        &self,
        source: &KernelSource,
        head_size: Option<usize>,
        dtype: Dtype,
        name: &str,
    ) -> Result<CudaFunction, CudaError> {
        Ok(self.module(source, head_size, dtype)?.load_function(name)?)
    }

    /// Launches `f` with `args`.
    ///
    /// # Safety
    /// `args` must match the kernel's parameters in number and type, and every
    /// address must point to a live buffer at least as large as the kernel
    /// reads or writes for the dimensions passed.
    unsafe fn launch(
        &self,
        f: &CudaFunction,
        cfg: LaunchConfig,
        args: &[Arg],
    ) -> Result<(), CudaError> {
        let mut builder = self.stream.launch_builder(f);
        for arg in args {
            match arg {
                Arg::Ptr(p) => builder.arg(p),
                Arg::I32(v) => builder.arg(v),
                Arg::I64(v) => builder.arg(v),
                Arg::F32(v) => builder.arg(v),
            };
        }
        // SAFETY: guaranteed by the caller.
        unsafe { builder.launch(cfg) }?;
        Ok(())
    }

    /// The address of an input buffer. Every operation runs on this `Gpu`'s
    /// one stream, so cudarc's cross-stream synchronization guard has nothing
    /// to do and is dropped at once.
    fn input<T>(&self, x: &impl DevicePtr<T>) -> Arg {
        let (ptr, _sync) = x.device_ptr(&self.stream);
        Arg::Ptr(ptr)
    }

    /// The address of an output buffer (see [`Gpu::input`]).
    fn output<T>(&self, x: &mut impl DevicePtrMut<T>) -> Arg {
        let (ptr, _sync) = x.device_ptr_mut(&self.stream);
        Arg::Ptr(ptr)
    }
}

/// A dimension as a kernel's `int`.
fn dim(x: usize) -> Arg {
    Arg::I32(i32::try_from(x).expect("dimension fits in an i32"))
}

/// A flat length as a kernel's `long long`.
fn len(x: usize) -> Arg {
    Arg::I64(x as i64)
}
