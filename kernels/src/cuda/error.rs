//! The GPU path's errors.

use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;
use cudarc::nvrtc::result::NvrtcError;

/// Why a GPU operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// A CUDA shared library could not be loaded (no driver, no toolkit library
    /// on `LD_LIBRARY_PATH`).
    #[error(
        "could not load lib{library}.so (no NVIDIA driver or CUDA library on this machine, or \
         LD_LIBRARY_PATH lacks the folder that holds it)"
    )]
    LibraryMissing {
        /// The library's name without `lib` and `.so` (`cuda`, `nvrtc`, `cublas`).
        library: &'static str,
    },
    /// The driver loaded but sees no GPU with this ordinal.
    #[error("no CUDA device {ordinal}: the driver sees {count} device(s)")]
    NoDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// How many devices the driver reports.
        count: i32,
    },
    /// A call into the CUDA driver failed.
    #[error("CUDA driver: {0}")]
    Driver(#[from] DriverError),
    /// A cuBLAS call failed.
    #[error("cuBLAS: {0:?}")]
    Cublas(#[from] CublasError),
    /// NVRTC failed outside of compiling (creating a program, reading its output).
    #[error("NVRTC: {0:?}")]
    Nvrtc(#[from] NvrtcError),
    /// A kernel source did not compile.
    #[error("NVRTC could not compile {source_name} for {arch} ({options}):\n{log}")]
    Compile {
        /// The `.cu` file's name.
        source_name: &'static str,
        /// The target, e.g. `sm_90`.
        arch: String,
        /// The options passed to NVRTC, space-separated.
        options: String,
        /// NVRTC's log.
        log: String,
    },
    /// A kernel's compile-time limits do not fit the arguments.
    #[error("unsupported shape for {kernel}: {reason}")]
    Unsupported {
        /// The kernel.
        kernel: &'static str,
        /// What does not fit.
        reason: String,
    },
}
