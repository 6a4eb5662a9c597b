//! Frames on the wire: a fixed-size header (bincode, fixed-width integers)
//! followed by `len` payload bytes.
//!
//! Every frame carries the generation of the communicator that sent it, the op
//! id (ops are numbered from 0 in each generation, in the order every rank
//! issues them), the transfer index inside the op and the payload length.
//! Decoding never trusts the length: it is checked against a limit before any
//! buffer is sized by it.

use bincode::{Decode, Encode};

use crate::error::FrameError;

/// First four bytes of every frame header: `SHL1` in little endian.
pub const MAGIC: u32 = u32::from_le_bytes(*b"SHL1");

/// Bytes in an encoded header.
pub const HEADER_LEN: usize = 29;

/// Largest hello payload accepted.
pub const MAX_HELLO_LEN: u32 = 256;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// First frame on a link: who is speaking, for which generation.
    Hello = 1,
    /// A slice of an op's buffer.
    Data = 2,
    /// The sender gave up on the op; `transfer` holds the rank it found lost
    /// (or `u32::MAX` when it only timed out).
    Abort = 3,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Result<Self, FrameError> {
        match byte {
            1 => Ok(Self::Hello),
            2 => Ok(Self::Data),
            3 => Ok(Self::Abort),
            other => Err(FrameError::UnknownKind(other)),
        }
    }
}

/// The header in front of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Generation of the sending communicator.
    pub generation: u64,
    /// Op id within the generation.
    pub op: u64,
    /// Transfer index within the op (for `Abort`, the lost rank).
    pub transfer: u32,
    /// What the frame is.
    pub kind: FrameKind,
    /// Payload bytes that follow the header.
    pub len: u32,
}

/// Header as laid out on the wire.
#[derive(Encode, Decode)]
struct WireHeader {
    magic: u32,
    generation: u64,
    op: u64,
    transfer: u32,
    kind: u8,
    len: u32,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<64>()
}

impl FrameHeader {
    /// A data frame header.
    pub fn data(generation: u64, op: u64, transfer: u32, len: usize) -> Self {
        Self {
            generation,
            op,
            transfer,
            kind: FrameKind::Data,
            len: len as u32,
        }
    }

    /// Encodes into exactly [`HEADER_LEN`] bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let wire = WireHeader {
            magic: MAGIC,
            generation: self.generation,
            op: self.op,
            transfer: self.transfer,
            kind: self.kind as u8,
            len: self.len,
        };
        let mut out = [0u8; HEADER_LEN];
        // Fixed-width fields into a buffer of exactly their size cannot fail.
        let written = bincode::encode_into_slice(wire, &mut out, config())
            .expect("a fixed-width header fits its buffer");
        debug_assert_eq!(written, HEADER_LEN);
        out
    }

    /// Decodes a header from untrusted bytes, rejecting a payload length over
    /// `max_len`.
    pub fn decode(bytes: &[u8], max_len: u32) -> Result<Self, FrameError> {
        if bytes.len() < HEADER_LEN {
            return Err(FrameError::Malformed(format!(
                "{} bytes, a header has {HEADER_LEN}",
                bytes.len()
            )));
        }
        let (wire, _): (WireHeader, usize) =
            bincode::decode_from_slice(&bytes[..HEADER_LEN], config())
                .map_err(|e| FrameError::Malformed(e.to_string()))?;
        if wire.magic != MAGIC {
            return Err(FrameError::BadMagic(wire.magic));
        }
        let kind = FrameKind::from_byte(wire.kind)?;
        let limit = match kind {
            FrameKind::Hello => MAX_HELLO_LEN.min(max_len),
            FrameKind::Data => max_len,
            FrameKind::Abort => 0,
        };
        if wire.len > limit {
            return Err(FrameError::TooLong {
                len: wire.len.into(),
                limit: limit.into(),
            });
        }
        Ok(Self {
            generation: wire.generation,
            op: wire.op,
            transfer: wire.transfer,
            kind,
            len: wire.len,
        })
    }
}

/// The payload of the hello frame that opens a link from one rank to the next.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Hello {
    /// Rank of the sender in the new generation.
    pub from: u32,
    /// Rank the sender believes it is talking to.
    pub to: u32,
    /// World size of the new generation.
    pub world: u32,
}

impl Hello {
    /// Encodes the hello payload.
    pub fn encode(&self) -> Vec<u8> {
        bincode::encode_to_vec(self, config()).expect("a hello always encodes")
    }

    /// Decodes a hello payload from untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        let (hello, used): (Hello, usize) = bincode::decode_from_slice(bytes, config())
            .map_err(|e| FrameError::BadHello(e.to_string()))?;
        if used != bytes.len() {
            return Err(FrameError::BadHello(format!(
                "{} trailing bytes",
                bytes.len() - used
            )));
        }
        Ok(hello)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_roundtrip_and_size() {
        let h = FrameHeader::data(7, 123_456, 42, 1 << 20);
        let bytes = h.encode();
        assert_eq!(bytes.len(), HEADER_LEN);
        assert_eq!(FrameHeader::decode(&bytes, 1 << 20), Ok(h));
    }

    #[test]
    fn rejects_long_unknown_and_foreign_frames() {
        let h = FrameHeader::data(1, 0, 0, 1000);
        assert_eq!(
            FrameHeader::decode(&h.encode(), 999),
            Err(FrameError::TooLong {
                len: 1000,
                limit: 999
            })
        );
        let mut bytes = h.encode();
        bytes[28 - 4] = 9; // kind byte sits before the 4-byte length
        assert_eq!(
            FrameHeader::decode(&bytes, 1 << 20),
            Err(FrameError::UnknownKind(9))
        );
        let mut bytes = h.encode();
        bytes[0] = b'X';
        assert!(matches!(
            FrameHeader::decode(&bytes, 1 << 20),
            Err(FrameError::BadMagic(_))
        ));
        assert!(matches!(
            FrameHeader::decode(&bytes[..10], 1 << 20),
            Err(FrameError::Malformed(_))
        ));
        let abort = FrameHeader {
            kind: FrameKind::Abort,
            len: 1,
            ..h
        };
        assert!(FrameHeader::decode(&abort.encode(), 1 << 20).is_err());
    }

    #[test]
    fn hello_roundtrip_rejects_trailing_bytes() {
        let hello = Hello {
            from: 3,
            to: 0,
            world: 4,
        };
        let mut bytes = hello.encode();
        assert_eq!(Hello::decode(&bytes), Ok(hello));
        bytes.push(0);
        assert!(Hello::decode(&bytes).is_err());
        assert!(Hello::decode(&bytes[..3]).is_err());
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder, and whatever it accepts
        /// respects the length limit and re-encodes to the same bytes.
        #[test]
        fn decoder_survives_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64), limit in 0u32..4096) {
            if let Ok(h) = FrameHeader::decode(&bytes, limit) {
                prop_assert!(h.len <= limit);
                prop_assert_eq!(&h.encode()[..], &bytes[..HEADER_LEN]);
            }
            let _ = Hello::decode(&bytes);
        }

        /// Headers with a valid magic and kind but random fields decode exactly.
        #[test]
        fn valid_headers_roundtrip(generation: u64, op: u64, transfer: u32, len in 0u32..1_000_000) {
            let h = FrameHeader::data(generation, op, transfer, len as usize);
            prop_assert_eq!(FrameHeader::decode(&h.encode(), 1_000_000), Ok(h));
        }
    }
}
