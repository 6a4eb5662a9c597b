//! Collectives over device memory for the GPU path: all-reduce, reduce-scatter,
//! all-gather and broadcast of `f32` buffers that live on a GPU, with the same
//! semantics (shards by [`crate::shard_range`]) as the host [`crate::Communicator`].
//!
//! A [`DeviceCommunicator`] (feature `cuda`) is formed from a host communicator of
//! the same ring, which bootstraps it (and, for the IPC ring, signals between
//! steps), and one GPU per rank. Two backends, picked by [`DeviceBackend`]:
//! - `nccl`: NCCL, loaded at run time (`libnccl.so.2`). NCCL refuses two ranks on
//!   the same GPU; a world of one works.
//! - `ipc`: a ring over device memory. Each rank exports a staging buffer with a
//!   CUDA IPC handle; the next rank of the ring copies into it, and a host barrier
//!   per transfer says the copies are done. Works for several ranks on one GPU,
//!   and between processes on one host.
//!
//! The ring's schedule ([`schedule`]) is pure and tested without a GPU; everything
//! else is built only with the `cuda` feature and returns a typed error (never a
//! panic) on a machine without a driver, GPU or NCCL.

use std::fmt;
use std::str::FromStr;

pub mod schedule;

#[cfg(feature = "cuda")]
mod comm;
#[cfg(feature = "cuda")]
mod error;
#[cfg(feature = "cuda")]
mod ipc;
#[cfg(feature = "cuda")]
mod nccl;
#[cfg(all(test, feature = "cuda"))]
mod tests;

#[cfg(feature = "cuda")]
pub use comm::{DeviceBuffer, DeviceCommunicator, DeviceConfig, device_count};
#[cfg(feature = "cuda")]
pub use error::DeviceCollectiveError;
#[cfg(feature = "cuda")]
pub use nccl::nccl_version;

/// Which implementation moves device buffers between ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceBackend {
    /// NCCL (one GPU per rank).
    Nccl,
    /// A ring over CUDA IPC staging buffers, signalled through the host communicator.
    Ipc,
}

impl fmt::Display for DeviceBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceBackend::Nccl => "nccl",
            DeviceBackend::Ipc => "ipc",
        })
    }
}

/// A name that is not a [`DeviceBackend`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device backend {0:?}: expected \"nccl\" or \"ipc\"")]
pub struct UnknownBackend(pub String);

impl FromStr for DeviceBackend {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "nccl" => Ok(DeviceBackend::Nccl),
            "ipc" => Ok(DeviceBackend::Ipc),
            _ => Err(UnknownBackend(s.to_string())),
        }
    }
}

#[cfg(test)]
mod backend_tests {
    use super::*;

    #[test]
    fn backend_names_round_trip() {
        for b in [DeviceBackend::Nccl, DeviceBackend::Ipc] {
            assert_eq!(b.to_string().parse::<DeviceBackend>(), Ok(b));
        }
        assert_eq!("NCCL".parse::<DeviceBackend>(), Ok(DeviceBackend::Nccl));
        assert!("gloo".parse::<DeviceBackend>().is_err());
    }
}
