//! The ring driver: runs one [`RingOp`] at a time over a [`Transport`],
//! checking every frame against the generation, op and transfer it expects,
//! with one deadline per op.

use std::ops::Range;
use std::time::{Duration, Instant};

use crate::error::{CollectiveError, FrameError};
use crate::frame::{FrameHeader, FrameKind};
use crate::ring::{Combine, ReduceOp, RingOp, Schedule, combine_f32, shard_range};
use crate::transport::{Delivery, Transport, interrupted};
use crossbeam_channel::{Receiver, Sender, unbounded};

/// Settings of a communicator.
#[derive(Debug, Clone)]
pub struct CommConfig {
    /// Deadline of every operation, from its start.
    pub timeout: Duration,
    /// Largest piece of a buffer sent as one frame; smaller pieces pipeline
    /// better, larger ones cost less per byte.
    pub chunk_bytes: usize,
    /// Largest frame payload accepted from a peer.
    pub max_frame_bytes: u32,
}

impl Default for CommConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            chunk_bytes: 1 << 20,
            max_frame_bytes: 16 << 20,
        }
    }
}

impl CommConfig {
    /// Checks that the settings can work together.
    pub fn validate(&self) -> Result<(), CollectiveError> {
        if self.chunk_bytes < 4 || self.chunk_bytes > self.max_frame_bytes as usize {
            return Err(CollectiveError::InvalidArgument(format!(
                "chunk_bytes {} must be between 4 and max_frame_bytes {}",
                self.chunk_bytes, self.max_frame_bytes
            )));
        }
        if self.timeout.is_zero() {
            return Err(CollectiveError::InvalidArgument(
                "timeout must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Counters of one communicator.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommStats {
    /// Operations completed.
    pub ops: u64,
    /// Data frames sent.
    pub frames_sent: u64,
    /// Data frames received and combined.
    pub frames_received: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Frames of an older generation that were dropped.
    pub stale_frames: u64,
    /// Time spent combining received data into buffers.
    pub combine_time: Duration,
    /// Time spent waiting for frames (not counting combining).
    pub wait_time: Duration,
}

/// A buffer handed to the driver as raw memory, so that ranges already sent
/// can be read by a peer while the driver writes other ranges.
#[derive(Clone, Copy)]
struct RawBuf {
    ptr: *mut u8,
    len: usize,
}

impl RawBuf {
    fn of<T: bytemuck::Pod>(buf: &mut [T]) -> Self {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(buf);
        Self {
            ptr: bytes.as_mut_ptr(),
            len: bytes.len(),
        }
    }
}

/// Which element type an op works on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    F32,
    Byte,
}

/// Element types the copying ops (all-gather, broadcast) move.
pub(crate) trait Element: bytemuck::Pod {
    const ELEM: Elem;
}

impl Element for f32 {
    const ELEM: Elem = Elem::F32;
}

impl Element for u8 {
    const ELEM: Elem = Elem::Byte;
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::Byte => 1,
        }
    }
}

/// Runs ops of one rank of one generation.
pub(crate) struct Engine {
    pub(crate) rank: usize,
    pub(crate) world: usize,
    pub(crate) generation: u64,
    next_op: u64,
    transport: Box<dyn Transport>,
    config: CommConfig,
    stats: CommStats,
    failed: bool,
    /// Abort notices from [`crate::AbortHandle`]s (and the sender that
    /// keeps the channel open).
    interrupt: (Sender<u32>, Receiver<u32>),
}

impl Engine {
    pub(crate) fn new(
        rank: usize,
        world: usize,
        generation: u64,
        transport: Box<dyn Transport>,
        config: CommConfig,
    ) -> Self {
        Self {
            rank,
            world,
            generation,
            next_op: 0,
            transport,
            config,
            stats: CommStats::default(),
            failed: false,
            interrupt: unbounded(),
        }
    }

    /// A sender of abort notices that wake this engine's op in flight.
    pub(crate) fn interrupter(&self) -> Sender<u32> {
        self.interrupt.0.clone()
    }

    pub(crate) fn stats(&self) -> CommStats {
        self.stats.clone()
    }

    fn chunk(&self, elem: Elem) -> usize {
        (self.config.chunk_bytes / elem.size()).max(1)
    }

    pub(crate) fn all_reduce(
        &mut self,
        buf: &mut [f32],
        op: ReduceOp,
    ) -> Result<(), CollectiveError> {
        let s = Schedule::all_reduce(buf.len(), self.world, self.rank, self.chunk(Elem::F32), op);
        self.run("all_reduce", s, RawBuf::of(buf), Elem::F32)
    }

    pub(crate) fn reduce_scatter(
        &mut self,
        buf: &mut [f32],
        op: ReduceOp,
    ) -> Result<Range<usize>, CollectiveError> {
        let s =
            Schedule::reduce_scatter(buf.len(), self.world, self.rank, self.chunk(Elem::F32), op);
        self.run("reduce_scatter", s, RawBuf::of(buf), Elem::F32)?;
        Ok(shard_range(buf.len(), self.world, self.rank))
    }

    pub(crate) fn all_gather<T: Element>(&mut self, buf: &mut [T]) -> Result<(), CollectiveError> {
        let s = Schedule::all_gather(buf.len(), self.world, self.rank, self.chunk(T::ELEM));
        self.run("all_gather", s, RawBuf::of(buf), T::ELEM)
    }

    pub(crate) fn broadcast<T: Element>(
        &mut self,
        buf: &mut [T],
        root: usize,
    ) -> Result<(), CollectiveError> {
        self.check_root(root)?;
        let (len, chunk) = (buf.len(), self.chunk(T::ELEM));
        let s = Schedule::broadcast(len, self.world, self.rank, root, chunk);
        self.run("broadcast", s, RawBuf::of(buf), T::ELEM)
    }

    pub(crate) fn shift(
        &mut self,
        buf: &mut [f32],
        send: Range<usize>,
        recv: Range<usize>,
    ) -> Result<(), CollectiveError> {
        let len = buf.len();
        let overlap = send.start < recv.end && recv.start < send.end;
        if send.end > len
            || recv.end > len
            || send.start > send.end
            || recv.start > recv.end
            || (overlap && !send.is_empty() && !recv.is_empty())
        {
            return Err(CollectiveError::InvalidArgument(format!(
                "shift of {send:?} and {recv:?} in a buffer of {len} elements"
            )));
        }
        let s = Schedule::shift(self.world, send, recv, self.chunk(Elem::F32));
        self.run("shift", s, RawBuf::of(buf), Elem::F32)
    }

    pub(crate) fn barrier(&mut self) -> Result<(), CollectiveError> {
        let s = Schedule::all_reduce(0, self.world, self.rank, 1, ReduceOp::Sum);
        self.run("barrier", s, RawBuf::of::<f32>(&mut []), Elem::F32)
    }

    fn check_root(&self, root: usize) -> Result<(), CollectiveError> {
        if root >= self.world {
            return Err(CollectiveError::InvalidArgument(format!(
                "root {root} is not a rank of a world of {}",
                self.world
            )));
        }
        Ok(())
    }

    /// Runs one op to completion; on any failure the communicator is
    /// aborted (the next rank is told) and every later op fails fast.
    fn run(
        &mut self,
        name: &'static str,
        schedule: Schedule,
        buf: RawBuf,
        elem: Elem,
    ) -> Result<(), CollectiveError> {
        if self.failed {
            return Err(CollectiveError::Aborted {
                generation: self.generation,
            });
        }
        let op_id = self.next_op;
        self.next_op += 1;
        let start = Instant::now();
        let deadline = start + self.config.timeout;
        let result = match self.interrupt.1.try_recv() {
            Ok(lost) => Err(interrupted(lost)),
            Err(_) => self
                .drive(op_id, RingOp::new(schedule), buf, elem, deadline)
                .and_then(|()| self.transport.finish(deadline)),
        };
        let result = result.map_err(|e| match e {
            CollectiveError::Timeout { waiting_for, .. } => CollectiveError::Timeout {
                op: name,
                waiting_for,
                after: start.elapsed(),
            },
            CollectiveError::Aborted { .. } => CollectiveError::Aborted {
                generation: self.generation,
            },
            other => other,
        });
        match result {
            Ok(()) => {
                self.stats.ops += 1;
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                let suspect = match &e {
                    CollectiveError::PeerLost { rank } => *rank as u32,
                    CollectiveError::Timeout { waiting_for, .. } => *waiting_for as u32,
                    _ => u32::MAX,
                };
                tracing::warn!(
                    rank = self.rank,
                    generation = self.generation,
                    op = name,
                    op_id,
                    error = %e,
                    "collective failed; communicator aborted"
                );
                self.transport.abort(FrameHeader {
                    generation: self.generation,
                    op: op_id,
                    transfer: suspect,
                    kind: FrameKind::Abort,
                    len: 0,
                });
                Err(e)
            }
        }
    }

    fn drive(
        &mut self,
        op_id: u64,
        mut op: RingOp,
        buf: RawBuf,
        elem: Elem,
        deadline: Instant,
    ) -> Result<(), CollectiveError> {
        let size = elem.size();
        let prev = (self.rank + self.world - 1) % self.world;
        let generation = self.generation;
        loop {
            while let Some(t) = op.next_send() {
                let bytes = t.range.start * size..t.range.end * size;
                debug_assert!(bytes.end <= buf.len);
                let header = FrameHeader::data(generation, op_id, t.index, bytes.len());
                // SAFETY: the range lies inside `buf`, which the caller lends
                // for the whole op; the schedule never writes a range before
                // the next rank combined what was sent from it, and `finish`
                // or `abort` runs before the op returns.
                unsafe {
                    self.transport
                        .send(header, buf.ptr.add(bytes.start), bytes.len())?;
                }
                self.stats.frames_sent += 1;
                self.stats.bytes_sent += bytes.len() as u64;
            }
            let Some(t) = op.next_recv() else {
                debug_assert!(op.is_done());
                return Ok(());
            };
            let bytes = t.range.start * size..t.range.end * size;
            let waited = Instant::now();
            let stats = &mut self.stats;
            let mut combine_time = Duration::ZERO;
            loop {
                let delivery =
                    self.transport
                        .recv(deadline, &self.interrupt.1, &mut |header, payload| {
                            match header.kind {
                                FrameKind::Data => {}
                                FrameKind::Abort => {
                                    let rank = header.transfer as usize;
                                    return Err(CollectiveError::PeerLost {
                                        rank: if rank < self.world { rank } else { prev },
                                    });
                                }
                                FrameKind::Hello => {
                                    return Err(CollectiveError::BadFrame {
                                        rank: prev,
                                        source: FrameError::Malformed("hello inside an op".into()),
                                    });
                                }
                            }
                            if header.generation < generation {
                                stats.stale_frames += 1;
                                tracing::warn!(
                                    from = prev,
                                    got = header.generation,
                                    current = generation,
                                    "dropped a frame of an older generation"
                                );
                                return Ok(Delivery::Ignored);
                            }
                            let bad = |source| CollectiveError::BadFrame { rank: prev, source };
                            if header.generation > generation {
                                return Err(bad(FrameError::FutureGeneration {
                                    got: header.generation,
                                    current: generation,
                                }));
                            }
                            if header.op != op_id || header.transfer != t.index {
                                return Err(bad(FrameError::OutOfOrder {
                                    op: op_id,
                                    transfer: t.index,
                                    got_op: header.op,
                                    got_transfer: header.transfer,
                                }));
                            }
                            if payload.len() != bytes.len() {
                                return Err(bad(FrameError::WrongLength {
                                    expected: bytes.len(),
                                    got: payload.len(),
                                }));
                            }
                            let started = Instant::now();
                            // SAFETY: the range lies inside `buf` and nobody else
                            // reads or writes it while it is being received.
                            let dst = unsafe {
                                std::slice::from_raw_parts_mut(
                                    buf.ptr.add(bytes.start),
                                    bytes.len(),
                                )
                            };
                            combine_bytes(t.combine, elem, dst, payload);
                            combine_time += started.elapsed();
                            stats.frames_received += 1;
                            stats.bytes_received += payload.len() as u64;
                            Ok(Delivery::Accepted)
                        })?;
                if delivery == Delivery::Accepted {
                    break;
                }
            }
            self.stats.combine_time += combine_time;
            self.stats.wait_time += waited.elapsed().saturating_sub(combine_time);
            op.received();
        }
    }
}

/// Pieces at least this large are copied with streaming stores.
const STREAM_COPY_MIN: usize = 64 << 10;

/// Copies a large piece with non-temporal stores: the destination's cache
/// lines are not read first (no read-for-ownership), which is what makes a
/// large `memcpy` fast; `copy_from_slice` on a 1 MiB piece does not do it.
fn copy_piece(dst: &mut [u8], src: &[u8]) {
    debug_assert_eq!(dst.len(), src.len());
    #[cfg(target_arch = "x86_64")]
    if dst.len() >= STREAM_COPY_MIN {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        // Bytes until the destination is 16-byte aligned.
        let head = dst.as_ptr().align_offset(16).min(dst.len());
        dst[..head].copy_from_slice(&src[..head]);
        let body = (dst.len() - head) / 64 * 64;
        // SAFETY: SSE2 is part of x86_64; both ranges hold `body` bytes from
        // `head`, the destination is 16-byte aligned there, loads are
        // unaligned, and the fence orders the streaming stores before any
        // later store that publishes the data (the claim or the next send).
        unsafe {
            let s = src.as_ptr().add(head);
            let d = dst.as_mut_ptr().add(head);
            for i in (0..body).step_by(64) {
                let v0 = _mm_loadu_si128(s.add(i).cast::<__m128i>());
                let v1 = _mm_loadu_si128(s.add(i + 16).cast::<__m128i>());
                let v2 = _mm_loadu_si128(s.add(i + 32).cast::<__m128i>());
                let v3 = _mm_loadu_si128(s.add(i + 48).cast::<__m128i>());
                _mm_stream_si128(d.add(i).cast::<__m128i>(), v0);
                _mm_stream_si128(d.add(i + 16).cast::<__m128i>(), v1);
                _mm_stream_si128(d.add(i + 32).cast::<__m128i>(), v2);
                _mm_stream_si128(d.add(i + 48).cast::<__m128i>(), v3);
            }
            _mm_sfence();
        }
        let done = head + body;
        dst[done..].copy_from_slice(&src[done..]);
        return;
    }
    dst.copy_from_slice(src);
}

/// Combines a payload into a byte range of the buffer.
fn combine_bytes(combine: Combine, elem: Elem, dst: &mut [u8], src: &[u8]) {
    if combine == Combine::Copy {
        copy_piece(dst, src);
        return;
    }
    debug_assert!(elem == Elem::F32);
    let dst: &mut [f32] = bytemuck::cast_slice_mut(dst);
    match bytemuck::try_cast_slice::<u8, f32>(src) {
        Ok(src) => combine_f32(combine, dst, src),
        Err(_) => {
            // A receive buffer that is not 4-byte aligned: decode element by
            // element rather than fail.
            let src: Vec<f32> = src
                .chunks_exact(4)
                .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            combine_f32(combine, dst, &src);
        }
    }
}

#[cfg(test)]
mod tests;
