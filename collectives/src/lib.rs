//! Ring collectives for shoal: all-reduce, reduce-scatter, all-gather,
//! broadcast and barrier over f32 (and byte) buffers of any length, for any
//! world size, blocking or not, with a deadline on every op.
//!
//! Layers, bottom up (after quinn's split between a protocol core and I/O):
//! - [`ring`]: the algorithms as a deterministic state machine, no I/O;
//! - [`frame`]: the wire format, decoded with hard limits;
//! - [`transport`]: the seam transports implement; [`local`] (threads of one
//!   process, zero copy) and [`quic`] (processes and hosts, mutual TLS with
//!   the cluster CA from [`tls`]);
//! - [`Communicator`]: what users call;
//! - [`device`]: the same collectives over GPU buffers (NCCL or a CUDA IPC ring,
//!   feature `cuda`), bootstrapped and signalled through a [`Communicator`].
//!
//! Failure semantics: every op has a deadline. A lost peer makes every
//! surviving rank's op fail with [`CollectiveError::PeerLost`] (or
//! [`CollectiveError::Timeout`]) and aborts the communicator; the survivors
//! then form a new one with a new generation and membership. Frames of older
//! generations are dropped and counted, never combined.

pub mod comm;
pub mod device;
pub mod dial;
pub mod engine;
pub mod error;
pub mod frame;
pub mod local;
pub mod loopback;
pub mod membership;
pub mod pattern;
pub mod probe;
pub mod quic;
pub mod ring;
pub mod tls;
pub mod transport;

pub use comm::{AbortHandle, Communicator, Pending};
pub use device::DeviceBackend;
#[cfg(feature = "cuda")]
pub use device::{DeviceCollectiveError, DeviceCommunicator, DeviceConfig};
pub use engine::{CommConfig, CommStats};
pub use error::{CollectiveError, FrameError};
pub use local::{LocalFaults, LocalHub};
pub use loopback::{form_ring, loopback_ring};
pub use quic::{FormCanceller, QuicNode, QuicOptions};
pub use ring::{ReduceOp, shard_range};
