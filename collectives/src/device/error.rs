//! Errors of the device collectives.

use std::time::Duration;

use cudarc::driver::DriverError;
use shoal_kernels::cuda::CudaError;

use crate::CollectiveError;

/// Why forming a device communicator or running a device collective failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceCollectiveError {
    /// The host communicator (bootstrap or signalling) failed: a peer was lost,
    /// timed out, or the ring was aborted.
    #[error("host communicator: {0}")]
    Host(#[from] CollectiveError),
    /// The GPU path failed (no driver or GPU, a kernel launch).
    #[error(transparent)]
    Cuda(#[from] CudaError),
    /// A raw CUDA driver call failed.
    #[error("CUDA driver call {call}: {source}")]
    Driver {
        /// The driver function.
        call: &'static str,
        /// Its error.
        #[source]
        source: DriverError,
    },
    /// `libnccl.so` could not be loaded (cudarc looks for `libnccl.so`, not the
    /// `libnccl.so.2` the pip wheels ship: link one to the other).
    #[error(
        "could not load libnccl.so: install NCCL and put its lib folder on LD_LIBRARY_PATH \
         (the nvidia-nccl-cu13 wheel ships only libnccl.so.2: add a libnccl.so symlink to it), \
         or use the ipc backend"
    )]
    NcclMissing,
    /// An NCCL call failed.
    #[error("NCCL {call}: {code} ({message})")]
    Nccl {
        /// The NCCL function.
        call: &'static str,
        /// The result code's name.
        code: String,
        /// NCCL's description of it.
        message: String,
    },
    /// Device work did not finish before the deadline (a peer stopped taking part,
    /// or the GPU hung). The communicator is unusable afterwards.
    #[error("{op} did not finish on the device within {after:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// Time waited.
        after: Duration,
    },
    /// The arguments cannot describe a valid operation (length, root, world).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The backend does not implement this operation or setup.
    #[error("unsupported by the {backend} backend: {what}")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
        /// What it cannot do.
        what: String,
    },
    /// An earlier operation failed part-way; form a new communicator.
    #[error("the device communicator failed before; form a new one")]
    Poisoned,
}

impl DeviceCollectiveError {
    /// Wraps a raw driver call's error with the call's name.
    pub(crate) fn driver(call: &'static str) -> impl FnOnce(DriverError) -> Self {
        move |source| DeviceCollectiveError::Driver { call, source }
    }
}
