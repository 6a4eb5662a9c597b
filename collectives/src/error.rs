//! Errors of the collectives: one enum for operations, one for frames on the wire.

use std::time::Duration;

/// Why a frame read from a peer was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The bytes do not decode as a frame header.
    #[error("malformed frame header: {0}")]
    Malformed(String),
    /// The header does not start with the shoal frame magic.
    #[error("bad magic {0:#010x}: not a shoal frame")]
    BadMagic(u32),
    /// The frame kind byte names no kind this version knows.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The payload length is over the limit this endpoint accepts.
    #[error("frame payload of {len} bytes is over the limit of {limit}")]
    TooLong {
        /// Length announced by the header.
        len: u64,
        /// Largest length accepted.
        limit: u64,
    },
    /// A frame of a newer generation than this communicator's arrived.
    #[error("frame of generation {got} arrived at a communicator of generation {current}")]
    FutureGeneration {
        /// Generation in the frame.
        got: u64,
        /// This communicator's generation.
        current: u64,
    },
    /// A frame of the current generation that is not the one the ring expects next.
    #[error("expected op {op} transfer {transfer}, got op {got_op} transfer {got_transfer}")]
    OutOfOrder {
        /// Op id expected.
        op: u64,
        /// Transfer index expected.
        transfer: u32,
        /// Op id received.
        got_op: u64,
        /// Transfer index received.
        got_transfer: u32,
    },
    /// The payload length does not match the range the schedule expects.
    #[error("expected a payload of {expected} bytes, got {got}")]
    WrongLength {
        /// Bytes expected.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// The hello payload that opens a link is not valid.
    #[error("bad hello: {0}")]
    BadHello(String),
}

/// Errors of collective operations and of forming communicators.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    /// A peer died, was cut off, or another rank reported it lost.
    #[error("rank {rank} was lost")]
    PeerLost {
        /// Rank (in this communicator) found lost.
        rank: usize,
    },
    /// Nothing arrived from the previous rank before the operation's deadline.
    #[error("{op} timed out after {after:?} waiting for rank {waiting_for}")]
    Timeout {
        /// Operation that timed out.
        op: &'static str,
        /// Rank this rank was waiting on.
        waiting_for: usize,
        /// Time the operation had been running.
        after: Duration,
    },
    /// The communicator failed or was aborted before; form a new generation.
    #[error("communicator of generation {generation} is aborted; form a new generation")]
    Aborted {
        /// Generation of the aborted communicator.
        generation: u64,
    },
    /// A peer sent a frame this rank rejects.
    #[error("bad frame from rank {rank}: {source}")]
    BadFrame {
        /// Rank that sent the frame.
        rank: usize,
        /// What was wrong with it.
        #[source]
        source: FrameError,
    },
    /// Arguments that cannot describe a valid operation (buffer length, root, membership).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Certificates or TLS configuration.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Setting up or using the network failed (bind, connect, handshake).
    #[error("network: {0}")]
    Network(String),
    /// The communicator's worker thread is gone.
    #[error("the communicator's worker thread stopped")]
    WorkerGone,
}
