//! The seam between the ring driver and the ways bytes move between ranks.
//!
//! A transport gives the driver two links: one to the next rank, one from the
//! previous rank. The in-process transport ([`crate::local`]) hands the
//! receiver a view of the sender's buffer (no copy on the way); the QUIC
//! transport ([`crate::quic`]) copies into the stream.
//!
//! GPUs (a later issue) fit here in two ways. A CUDA IPC transport for ranks
//! on one host maps the neighbour's device buffer once per generation and is
//! another `Transport`; since its payloads live on the device, the combine
//! step the driver now does on host memory (`consume`) must then run as a
//! kernel, so that issue extends `consume` with where the payload lives. An
//! NCCL communicator replaces the driver and transport together: it is a
//! second implementation of the operations behind [`crate::Communicator`],
//! selected when the communicator is formed.

use std::time::Instant;

use crossbeam_channel::Receiver;

use crate::error::CollectiveError;
use crate::frame::FrameHeader;

/// What the receiver did with a frame handed to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The frame was the one expected; it has been combined.
    Accepted,
    /// The frame was dropped (for example from an older generation); keep
    /// waiting.
    Ignored,
}

/// Takes a received frame's header and payload and combines it (or not).
pub type Consume<'a> = dyn FnMut(&FrameHeader, &[u8]) -> Result<Delivery, CollectiveError> + 'a;

/// The links of one rank in a ring: to the next rank and from the previous.
pub trait Transport: Send {
    /// Queues `len` bytes at `data` as one frame to the next rank. Never
    /// waits for the peer.
    ///
    /// # Safety
    /// The bytes must stay valid and unchanged until [`Transport::finish`] or
    /// [`Transport::abort`] returns, or until the next rank has combined them
    /// (which the ring schedules guarantee before they write the range again).
    unsafe fn send(
        &mut self,
        header: FrameHeader,
        data: *const u8,
        len: usize,
    ) -> Result<(), CollectiveError>;

    /// Waits for the next frame from the previous rank, until `deadline` or
    /// until a notice arrives on `interrupt` (see [`interrupted`]), and hands
    /// its header and payload to `consume`.
    fn recv(
        &mut self,
        deadline: Instant,
        interrupt: &Receiver<u32>,
        consume: &mut Consume<'_>,
    ) -> Result<Delivery, CollectiveError>;

    /// Waits, until `deadline`, for everything sent in this op to be taken
    /// by the next rank; afterwards the sent buffers may be reused.
    fn finish(&mut self, deadline: Instant) -> Result<(), CollectiveError>;

    /// Gives up the op in flight: makes sure nothing sent is read any more,
    /// then sends `notice` (an abort frame) to the next rank, best effort.
    fn abort(&mut self, notice: FrameHeader);
}

/// The error for an abort notice `lost` received on a communicator's
/// interrupt channel: the lost rank, or `u32::MAX` for a plain abort (the
/// driver fills in the generation).
pub fn interrupted(lost: u32) -> CollectiveError {
    if lost == u32::MAX {
        CollectiveError::Aborted {
            generation: u64::MAX,
        }
    } else {
        CollectiveError::PeerLost {
            rank: lost as usize,
        }
    }
}

/// A transport for a world of one rank: there is nobody to talk to.
pub(crate) struct Alone;

impl Transport for Alone {
    unsafe fn send(
        &mut self,
        _: FrameHeader,
        _: *const u8,
        _: usize,
    ) -> Result<(), CollectiveError> {
        Err(CollectiveError::InvalidArgument(
            "a world of one rank has no neighbour".into(),
        ))
    }

    fn recv(
        &mut self,
        _: Instant,
        _: &Receiver<u32>,
        _: &mut Consume<'_>,
    ) -> Result<Delivery, CollectiveError> {
        Err(CollectiveError::InvalidArgument(
            "a world of one rank has no neighbour".into(),
        ))
    }

    fn finish(&mut self, _: Instant) -> Result<(), CollectiveError> {
        Ok(())
    }

    fn abort(&mut self, _: FrameHeader) {}
}
