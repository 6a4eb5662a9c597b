//! The ring algorithms as a deterministic state machine with no I/O.
//!
//! A [`Schedule`] lists, for one rank and one op, the ranges of its buffer it
//! sends to the next rank and the ranges it receives from the previous one,
//! with how each received range is combined into the buffer. Send `i` of a
//! rank pairs with receive `i` of the next rank. A [`RingOp`] walks the
//! schedule: a send becomes ready once the receives it depends on are done,
//! receives complete in order. Transports drive it; it never blocks or reads
//! the clock.
//!
//! Buffers of any length are split into `world` shards with
//! [`shard_range`]; each shard into `chunks` near-equal pieces so that sending,
//! receiving and reducing overlap (a piece can go on as soon as it arrived).
//!
//! All-reduce is reduce-scatter followed by all-gather: each rank sends
//! 2(W−1)/W of the buffer. At reduce-scatter step `s` rank `r` sends shard
//! `r−s−1` and receives shard `r−s−2` (mod W), so after W−1 steps it holds
//! shard `r` fully reduced; at all-gather step `s` it sends shard `r−s` and
//! receives shard `r−s−1`.

use std::ops::Range;

/// Pieces a [`Schedule::shift`] sends before it waits for the previous rank's.
const SHIFT_AHEAD: usize = 4;

/// How a collective combines values from different ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise mean: the sum scaled by 1/world.
    Mean,
    /// Element-wise maximum.
    Max,
}

/// What a receiver does with a received range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Combine {
    /// Overwrite the range with the payload.
    Copy,
    /// Add the payload into the range.
    Sum,
    /// Add the payload, then multiply by the factor (the last step of a mean).
    SumScale(f32),
    /// Element-wise maximum with the payload.
    Max,
}

/// The range of shard `rank` when `len` elements are split over `world`
/// ranks: the first `len % world` shards hold one element more.
pub fn shard_range(len: usize, world: usize, rank: usize) -> Range<usize> {
    debug_assert!(rank < world);
    let base = len / world;
    let extra = len % world;
    let start = rank * base + rank.min(extra);
    let size = base + usize::from(rank < extra);
    start..start + size
}

/// A send of one range to the next rank, ready once `needs` receives are done.
#[derive(Debug, Clone, PartialEq)]
struct SendStep {
    range: Range<usize>,
    needs: usize,
}

/// A receive of one range from the previous rank.
#[derive(Debug, Clone, PartialEq)]
struct RecvStep {
    range: Range<usize>,
    combine: Combine,
}

/// Everything one rank sends and receives in one op, in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Schedule {
    sends: Vec<SendStep>,
    recvs: Vec<RecvStep>,
}

/// A transfer the driver performs next.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    /// Index of the transfer (send `i` pairs with the next rank's receive `i`).
    pub index: u32,
    /// Element range of the buffer.
    pub range: Range<usize>,
    /// For receives, how the payload combines into the range.
    pub combine: Combine,
}

fn combine_for(op: ReduceOp) -> Combine {
    match op {
        ReduceOp::Sum | ReduceOp::Mean => Combine::Sum,
        ReduceOp::Max => Combine::Max,
    }
}

/// Pieces per shard so that no piece is longer than `chunk` elements (at
/// least one, so that even empty buffers exchange a frame per step).
fn pieces(len: usize, world: usize, chunk: usize) -> usize {
    let largest = len.div_ceil(world);
    largest.div_ceil(chunk.max(1)).max(1)
}

/// Piece `k` of shard `shard`.
fn piece(len: usize, world: usize, shard: usize, pieces: usize, k: usize) -> Range<usize> {
    let s = shard_range(len, world, shard);
    let p = shard_range(s.len(), pieces, k);
    s.start + p.start..s.start + p.end
}

impl Schedule {
    /// Steps `first..first+count` of the generic ring pass: at step `s` send
    /// shard `send_shard(s)` and receive shard `send_shard(s) - 1`, combining
    /// with `combine(s)`. Sends after the first step wait for the piece they
    /// forward.
    fn ring_steps(
        &mut self,
        len: usize,
        world: usize,
        chunk: usize,
        steps: Range<usize>,
        send_shard: impl Fn(usize) -> usize,
        combine: impl Fn(usize) -> Combine,
    ) {
        let k = pieces(len, world, chunk);
        for s in steps {
            let out = send_shard(s) % world;
            let inn = (out + world - 1) % world;
            for p in 0..k {
                let index = self.sends.len();
                // The first step sends local data; later ones forward what the
                // receive one step earlier (same piece) brought in.
                let needs = if index < k { 0 } else { index - k + 1 };
                self.sends.push(SendStep {
                    range: piece(len, world, out, k, p),
                    needs,
                });
                self.recvs.push(RecvStep {
                    range: piece(len, world, inn, k, p),
                    combine: combine(s),
                });
            }
        }
    }

    /// All-reduce of `len` elements: reduce-scatter then all-gather.
    pub fn all_reduce(len: usize, world: usize, rank: usize, chunk: usize, op: ReduceOp) -> Self {
        let mut sched = Self::reduce_scatter(len, world, rank, chunk, op);
        let w = world;
        sched.ring_steps(
            len,
            world,
            chunk,
            w - 1..2 * (w - 1),
            |s| rank + 2 * w - (s - (w - 1)),
            |_| Combine::Copy,
        );
        sched
    }

    /// Reduce-scatter: afterwards shard `rank` of the buffer holds the
    /// reduction of everyone's shard `rank`; the rest of the buffer holds
    /// partial sums.
    pub fn reduce_scatter(
        len: usize,
        world: usize,
        rank: usize,
        chunk: usize,
        op: ReduceOp,
    ) -> Self {
        let mut sched = Self::default();
        let last = world.saturating_sub(2);
        let base = combine_for(op);
        sched.ring_steps(
            len,
            world,
            chunk,
            0..world - 1,
            |s| rank + 2 * world - s - 1,
            |s| match (op, s == last) {
                (ReduceOp::Mean, true) => Combine::SumScale(1.0 / world as f32),
                _ => base,
            },
        );
        sched
    }

    /// All-gather: shard `rank` of the buffer is this rank's input; afterwards
    /// every shard holds its owner's input.
    pub fn all_gather(len: usize, world: usize, rank: usize, chunk: usize) -> Self {
        let mut sched = Self::default();
        sched.ring_steps(
            len,
            world,
            chunk,
            0..world - 1,
            |s| rank + world - s,
            |_| Combine::Copy,
        );
        sched
    }

    /// Broadcast from `root` along the ring, pipelined in pieces of at most
    /// `chunk` elements: each rank forwards a piece as soon as it arrived.
    pub fn broadcast(len: usize, world: usize, rank: usize, root: usize, chunk: usize) -> Self {
        let mut sched = Self::default();
        if world == 1 {
            return sched;
        }
        let k = len.div_ceil(chunk.max(1)).max(1);
        let position = (rank + world - root) % world;
        for p in 0..k {
            let range = shard_range(len, k, p);
            if position > 0 {
                sched.recvs.push(RecvStep {
                    range: range.clone(),
                    combine: Combine::Copy,
                });
            }
            if position < world - 1 {
                let needs = if position == 0 { 0 } else { p + 1 };
                sched.sends.push(SendStep { range, needs });
            }
        }
        sched
    }

    /// Shift along the ring: send range `send` of the buffer to the next rank and
    /// receive range `recv` from the previous one (whose `send` must be as long as
    /// this rank's `recv`), each in pieces of at most `chunk` elements. The two
    /// ranges must not overlap. Nothing moves on a ring of one.
    pub fn shift(world: usize, send: Range<usize>, recv: Range<usize>, chunk: usize) -> Self {
        let mut sched = Self::default();
        if world < 2 {
            return sched;
        }
        let split = |r: &Range<usize>| -> Vec<Range<usize>> {
            let k = r.len().div_ceil(chunk.max(1)).max(1);
            (0..k)
                .map(|p| {
                    let piece = shard_range(r.len(), k, p);
                    r.start + piece.start..r.start + piece.end
                })
                .collect()
        };
        sched.recvs = split(&recv)
            .into_iter()
            .map(|range| RecvStep {
                range,
                combine: Combine::Copy,
            })
            .collect();
        // Sending runs at most SHIFT_AHEAD pieces ahead of receiving, so the ring
        // streams instead of every rank pushing its whole block first.
        let recvs = sched.recvs.len();
        sched.sends = split(&send)
            .into_iter()
            .enumerate()
            .map(|(p, range)| SendStep {
                range,
                needs: p.saturating_sub(SHIFT_AHEAD).min(recvs),
            })
            .collect();
        sched
    }

    /// Number of sends.
    pub fn sends(&self) -> usize {
        self.sends.len()
    }

    /// Number of receives.
    pub fn recvs(&self) -> usize {
        self.recvs.len()
    }
}

/// Progress of one rank through a [`Schedule`].
#[derive(Debug, Clone)]
pub struct RingOp {
    schedule: Schedule,
    sent: usize,
    received: usize,
}

impl RingOp {
    /// Starts walking `schedule`.
    pub fn new(schedule: Schedule) -> Self {
        Self {
            schedule,
            sent: 0,
            received: 0,
        }
    }

    /// The next send, if the receives it depends on are done; marks it sent.
    pub fn next_send(&mut self) -> Option<Transfer> {
        let step = self.schedule.sends.get(self.sent)?;
        if step.needs > self.received {
            return None;
        }
        let transfer = Transfer {
            index: self.sent as u32,
            range: step.range.clone(),
            combine: Combine::Copy,
        };
        self.sent += 1;
        Some(transfer)
    }

    /// The receive the op waits for next, if any.
    pub fn next_recv(&self) -> Option<Transfer> {
        self.schedule.recvs.get(self.received).map(|step| Transfer {
            index: self.received as u32,
            range: step.range.clone(),
            combine: step.combine,
        })
    }

    /// Records that the receive returned by [`RingOp::next_recv`] was combined.
    pub fn received(&mut self) {
        debug_assert!(self.received < self.schedule.recvs.len());
        self.received += 1;
    }

    /// Whether every send was issued and every receive combined.
    pub fn is_done(&self) -> bool {
        self.sent == self.schedule.sends.len() && self.received == self.schedule.recvs.len()
    }
}

/// Combines `src` into `dst` element-wise.
pub fn combine_f32(combine: Combine, dst: &mut [f32], src: &[f32]) {
    debug_assert_eq!(dst.len(), src.len());
    match combine {
        Combine::Copy => dst.copy_from_slice(src),
        Combine::Sum => dst.iter_mut().zip(src).for_each(|(d, s)| *d += *s),
        Combine::SumScale(f) => dst
            .iter_mut()
            .zip(src)
            .for_each(|(d, s)| *d = (*d + *s) * f),
        Combine::Max => dst.iter_mut().zip(src).for_each(|(d, s)| *d = d.max(*s)),
    }
}

#[cfg(test)]
mod tests;
