//! The in-process transport, for ranks that are threads of one process.
//!
//! Nothing is copied on the way: a send posts a view of the sender's buffer
//! (pointer, length) on a `crossbeam` channel, and the receiver combines
//! straight from it into its own buffer. Each posted view carries a claim
//! that the receiver takes before reading and releases after; a sender that
//! gives up revokes the claims nobody took yet and waits for the ones being
//! read, so no view outlives the buffer it points into.
//!
//! [`LocalHub`] forms rings: every generation gets fresh channels, so frames
//! of one generation can never reach another. It can also inject faults
//! (random delays, a rank that dies after a number of sends) for tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::comm::Communicator;
use crate::engine::{CommConfig, Engine};
use crate::error::CollectiveError;
use crate::frame::FrameHeader;
use crate::transport::{Alone, Consume, Delivery, Transport, interrupted};

const POSTED: u8 = 0;
const READING: u8 = 1;
const DONE: u8 = 2;
const REVOKED: u8 = 3;

/// The receiver's right to read one posted view.
struct Claim(AtomicU8);

/// A frame on an in-process link: a view of the sender's memory.
struct Posted {
    header: FrameHeader,
    data: *const u8,
    len: usize,
    claim: Option<Arc<Claim>>,
}

// SAFETY: the pointer is only dereferenced by the receiver while it holds the
// claim, and the sender keeps the memory alive and unchanged until the claim
// is done or revoked.
unsafe impl Send for Posted {}

/// Faults a [`LocalHub`] injects into the rings it forms.
#[derive(Debug, Clone, Default)]
pub struct LocalFaults {
    /// Each send waits a random time up to this long first (seeded by
    /// `seed` and the rank), so links run ahead of and behind each other.
    pub max_delay: Duration,
    /// Seed of the delays.
    pub seed: u64,
    /// `(rank, n)`: that rank dies (drops its links) when it is about to
    /// make its `n`-th send in this generation.
    pub kill_after_sends: Option<(usize, u64)>,
}

struct LocalTransport {
    rank: usize,
    world: usize,
    to_next: Option<Sender<Posted>>,
    from_prev: Option<Receiver<Posted>>,
    outstanding: Vec<Arc<Claim>>,
    faults: LocalFaults,
    rng: ChaCha8Rng,
    sends: u64,
}

impl LocalTransport {
    fn next(&self) -> usize {
        (self.rank + 1) % self.world
    }

    fn prev(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    fn killed(&self) -> CollectiveError {
        CollectiveError::InvalidArgument(format!(
            "rank {} was killed by fault injection",
            self.rank
        ))
    }

    /// Revokes every claim the receiver has not taken and waits for the ones
    /// it is reading (a bounded copy or reduction of one piece).
    fn revoke_all(&mut self) {
        for claim in self.outstanding.drain(..) {
            match claim
                .0
                .compare_exchange(POSTED, REVOKED, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {}
                Err(_) => {
                    while claim.0.load(Ordering::Acquire) == READING {
                        std::hint::spin_loop();
                        std::thread::yield_now();
                    }
                }
            }
        }
    }
}

impl Transport for LocalTransport {
    unsafe fn send(
        &mut self,
        header: FrameHeader,
        data: *const u8,
        len: usize,
    ) -> Result<(), CollectiveError> {
        self.sends += 1;
        if self.faults.kill_after_sends == Some((self.rank, self.sends)) {
            // Dying: the links go away, as when a thread exits.
            self.to_next = None;
            self.from_prev = None;
            return Err(self.killed());
        }
        if !self.faults.max_delay.is_zero() {
            let nanos = self.faults.max_delay.as_nanos() as u64;
            std::thread::sleep(Duration::from_nanos(self.rng.random_range(0..=nanos)));
        }
        let to_next = self.to_next.as_ref().ok_or_else(|| self.killed())?;
        let claim = Arc::new(Claim(AtomicU8::new(POSTED)));
        let posted = Posted {
            header,
            data,
            len,
            claim: Some(claim.clone()),
        };
        to_next
            .send(posted)
            .map_err(|_| CollectiveError::PeerLost { rank: self.next() })?;
        self.outstanding.push(claim);
        Ok(())
    }

    fn recv(
        &mut self,
        deadline: Instant,
        interrupt: &Receiver<u32>,
        consume: &mut Consume<'_>,
    ) -> Result<Delivery, CollectiveError> {
        let from_prev = self.from_prev.as_ref().ok_or_else(|| self.killed())?;
        let prev = self.prev();
        let posted = crossbeam_channel::select! {
            recv(from_prev) -> posted => {
                posted.map_err(|_| CollectiveError::PeerLost { rank: prev })?
            }
            recv(interrupt) -> lost => return Err(interrupted(lost.unwrap_or(u32::MAX))),
            default(deadline.saturating_duration_since(Instant::now())) => {
                return Err(CollectiveError::Timeout {
                    op: "recv",
                    waiting_for: prev,
                    after: Duration::ZERO,
                });
            }
        };
        let Some(claim) = posted.claim else {
            return consume(&posted.header, &[]);
        };
        if claim
            .0
            .compare_exchange(POSTED, READING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // The sender gave up this op; its abort notice follows.
            return Ok(Delivery::Ignored);
        }
        // SAFETY: we hold the claim, so the sender keeps these bytes alive and
        // unchanged until we mark it done. Empty views have a dangling but
        // non-null, aligned pointer, which is valid for zero bytes.
        let payload = unsafe { std::slice::from_raw_parts(posted.data, posted.len) };
        let result = consume(&posted.header, payload);
        claim.0.store(DONE, Ordering::Release);
        result
    }

    fn finish(&mut self, deadline: Instant) -> Result<(), CollectiveError> {
        let mut spins = 0u32;
        while let Some(claim) = self.outstanding.last() {
            // Read the count before the state: a receiver marks the claim
            // done before it lets go of it, so "nobody else holds it" and
            // then "still posted" means it was dropped unread.
            let abandoned = Arc::strong_count(claim) == 1;
            std::sync::atomic::fence(Ordering::Acquire);
            match claim.0.load(Ordering::Acquire) {
                DONE => {
                    self.outstanding.pop();
                    continue;
                }
                POSTED if abandoned => {
                    // The receiver dropped its end with our view unread.
                    return Err(CollectiveError::PeerLost { rank: self.next() });
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(CollectiveError::Timeout {
                    op: "finish",
                    waiting_for: self.next(),
                    after: Duration::ZERO,
                });
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
        Ok(())
    }

    fn abort(&mut self, notice: FrameHeader) {
        self.revoke_all();
        if let Some(to_next) = &self.to_next {
            let _ = to_next.send(Posted {
                header: notice,
                data: std::ptr::NonNull::<u8>::dangling().as_ptr(),
                len: 0,
                claim: None,
            });
        }
    }
}

impl Drop for LocalTransport {
    fn drop(&mut self) {
        self.revoke_all();
    }
}

/// Channels of one generation's ring while its members join.
struct FormingRing {
    members: Vec<u64>,
    links: Vec<Option<(Sender<Posted>, Receiver<Posted>)>>,
    joined: usize,
}

/// Forms in-process rings: ranks that are threads of one process join a
/// generation by member id and get a [`Communicator`] linked to their ring
/// neighbours.
#[derive(Clone, Default)]
pub struct LocalHub {
    forming: Arc<Mutex<HashMap<u64, FormingRing>>>,
    faults: LocalFaults,
}

impl LocalHub {
    /// A hub without faults.
    pub fn new() -> Self {
        Self::default()
    }

    /// A hub whose rings suffer `faults`.
    pub fn with_faults(faults: LocalFaults) -> Self {
        Self {
            faults,
            ..Self::default()
        }
    }

    /// Joins generation `generation` whose ring is `members` (member ids in
    /// ring order) as member `me`. Every member must pass the same list.
    pub fn join(
        &self,
        generation: u64,
        members: &[u64],
        me: u64,
        config: CommConfig,
    ) -> Result<Communicator, CollectiveError> {
        config.validate()?;
        let (rank, transport) = self.join_transport(generation, members, me)?;
        Ok(Communicator::new(Engine::new(
            rank,
            members.len(),
            generation,
            transport,
            config,
        )))
    }

    /// The rank of `me` and its transport in generation `generation`.
    pub(crate) fn join_transport(
        &self,
        generation: u64,
        members: &[u64],
        me: u64,
    ) -> Result<(usize, Box<dyn Transport>), CollectiveError> {
        let world = members.len();
        let rank = members.iter().position(|&m| m == me).ok_or_else(|| {
            CollectiveError::InvalidArgument(format!("member {me} is not in {members:?}"))
        })?;
        let transport: Box<dyn Transport> = if world == 1 {
            Box::new(Alone)
        } else {
            let mut forming = self.forming.lock().unwrap_or_else(PoisonError::into_inner);
            let ring = forming.entry(generation).or_insert_with(|| FormingRing {
                members: members.to_vec(),
                // links[i]: the sending end of link i (rank i -> i+1) and the
                // receiving end of link i-1, both handed to rank i.
                links: {
                    let (senders, receivers): (Vec<_>, Vec<_>) =
                        (0..world).map(|_| unbounded()).unzip();
                    (0..world)
                        .map(|i| {
                            Some((
                                senders[i].clone(),
                                receivers[(i + world - 1) % world].clone(),
                            ))
                        })
                        .collect()
                },
                joined: 0,
            });
            if ring.members != members {
                return Err(CollectiveError::InvalidArgument(format!(
                    "generation {generation} was formed with members {:?}, not {members:?}",
                    ring.members
                )));
            }
            let (to_next, from_prev) = ring.links[rank].take().ok_or_else(|| {
                CollectiveError::InvalidArgument(format!(
                    "member {me} joined generation {generation} twice"
                ))
            })?;
            ring.joined += 1;
            if ring.joined == world {
                forming.remove(&generation);
            }
            Box::new(LocalTransport {
                rank,
                world,
                to_next: Some(to_next),
                from_prev: Some(from_prev),
                outstanding: Vec::new(),
                faults: self.faults.clone(),
                rng: ChaCha8Rng::seed_from_u64(
                    self.faults.seed ^ (rank as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                ),
                sends: 0,
            })
        };
        Ok((rank, transport))
    }

    /// A whole ring of `world` ranks at once (generation 0, members
    /// `0..world`), one communicator per rank, in rank order.
    pub fn group(
        &self,
        world: usize,
        config: CommConfig,
    ) -> Result<Vec<Communicator>, CollectiveError> {
        self.group_generation(0, world, config)
    }

    /// Like [`LocalHub::group`] for generation `generation`.
    pub fn group_generation(
        &self,
        generation: u64,
        world: usize,
        config: CommConfig,
    ) -> Result<Vec<Communicator>, CollectiveError> {
        if world == 0 {
            return Err(CollectiveError::InvalidArgument(
                "a world needs at least one rank".into(),
            ));
        }
        let members: Vec<u64> = (0..world as u64).collect();
        members
            .iter()
            .map(|&m| self.join(generation, &members, m, config.clone()))
            .collect()
    }
}
