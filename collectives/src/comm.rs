//! The user-facing communicator: blocking ops on borrowed buffers and
//! non-blocking ops on owned buffers, all run in the order they were issued.
//!
//! Every rank must issue the same ops in the same order (as with MPI or
//! NCCL). Ops run one at a time: a blocking op waits for the non-blocking ops
//! issued before it, and runs on the caller's thread; non-blocking ops run on
//! the communicator's worker thread and hand their buffer back through a
//! [`Pending`].

use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use crate::engine::{CommStats, Engine};
use crate::error::CollectiveError;
use crate::ring::{ReduceOp, shard_range};

type Job = Box<dyn FnOnce() + Send>;

/// The engine and whose turn it is.
struct Slot {
    engine: Engine,
    serving: u64,
}

struct Shared {
    slot: Mutex<Slot>,
    turn: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until op `ticket` is next, runs it, and passes the turn on.
    fn run_turn<T>(&self, ticket: u64, f: impl FnOnce(&mut Engine) -> T) -> T {
        let mut slot = self.lock();
        while slot.serving != ticket {
            slot = self.turn.wait(slot).unwrap_or_else(PoisonError::into_inner);
        }
        let result = f(&mut slot.engine);
        slot.serving += 1;
        drop(slot);
        self.turn.notify_all();
        result
    }
}

/// A non-blocking op in flight; [`Pending::wait`] returns its buffer.
#[must_use = "a pending op must be waited on to get its buffer back"]
pub struct Pending<T> {
    done: Receiver<Result<T, CollectiveError>>,
}

impl<T> Pending<T> {
    /// Blocks until the op finished (each op has its own deadline, so this
    /// does not hang on a dead peer).
    pub fn wait(self) -> Result<T, CollectiveError> {
        self.done.recv().map_err(|_| CollectiveError::WorkerGone)?
    }

    /// Whether the op has finished.
    pub fn is_ready(&self) -> bool {
        !self.done.is_empty()
    }
}

/// Aborts a communicator from any thread: its op in flight (or its next op)
/// fails at once, and the abort notice travels on around the ring.
#[derive(Clone)]
pub struct AbortHandle {
    notices: Sender<u32>,
}

impl AbortHandle {
    /// Aborts, naming the rank found lost if it is known (for example from
    /// missed heartbeats); every rank then fails with
    /// [`CollectiveError::PeerLost`] for it, or [`CollectiveError::Aborted`].
    pub fn abort(&self, lost: Option<usize>) {
        let lost = lost.map_or(u32::MAX, |r| r.min(u32::MAX as usize - 1) as u32);
        let _ = self.notices.send(lost);
    }
}

/// One rank's handle on a ring of one generation.
pub struct Communicator {
    shared: Arc<Shared>,
    worker: Option<(Sender<Job>, JoinHandle<()>)>,
    issued: u64,
    rank: usize,
    world: usize,
    generation: u64,
    aborter: AbortHandle,
}

impl Communicator {
    pub(crate) fn new(engine: Engine) -> Self {
        let (rank, world, generation) = (engine.rank, engine.world, engine.generation);
        let aborter = AbortHandle {
            notices: engine.interrupter(),
        };
        Self {
            aborter,
            shared: Arc::new(Shared {
                slot: Mutex::new(Slot { engine, serving: 0 }),
                turn: Condvar::new(),
            }),
            worker: None,
            issued: 0,
            rank,
            world,
            generation,
        }
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn world(&self) -> usize {
        self.world
    }

    /// Generation of the membership this communicator was formed for.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A handle that aborts this communicator from another thread.
    pub fn abort_handle(&self) -> AbortHandle {
        self.aborter.clone()
    }

    /// The shard of a `len`-element buffer this rank owns after a
    /// reduce-scatter (and provides to an all-gather).
    pub fn shard(&self, len: usize) -> Range<usize> {
        shard_range(len, self.world, self.rank)
    }

    /// Counters so far (waits for ops issued before).
    pub fn stats(&mut self) -> CommStats {
        self.blocking(|e| e.stats())
    }

    fn blocking<T>(&mut self, f: impl FnOnce(&mut Engine) -> T) -> T {
        let ticket = self.issued;
        self.issued += 1;
        self.shared.run_turn(ticket, f)
    }

    fn spawn<T: Send + 'static>(
        &mut self,
        mut buf: T,
        f: impl FnOnce(&mut Engine, &mut T) -> Result<(), CollectiveError> + Send + 'static,
    ) -> Pending<T> {
        let ticket = self.issued;
        self.issued += 1;
        let (done_tx, done) = bounded(1);
        let shared = self.shared.clone();
        let job: Job = Box::new(move || {
            let result = shared.run_turn(ticket, |e| f(e, &mut buf));
            let _ = done_tx.send(result.map(|()| buf));
        });
        let sender = match &self.worker {
            Some((sender, _)) => sender.clone(),
            None => {
                let (sender, jobs) = unbounded::<Job>();
                let handle = std::thread::Builder::new()
                    .name(format!("shoal-comm-{}", self.rank))
                    .spawn(move || {
                        for job in jobs {
                            job();
                        }
                    });
                match handle {
                    Ok(handle) => {
                        self.worker = Some((sender.clone(), handle));
                        sender
                    }
                    Err(_) => return self.worker_gone(ticket),
                }
            }
        };
        if sender.send(job).is_err() {
            return self.worker_gone(ticket);
        }
        Pending { done }
    }

    /// Gives up turn `ticket` so later ops are not stuck behind it.
    fn worker_gone<T>(&self, ticket: u64) -> Pending<T> {
        let (tx, done) = bounded(1);
        self.shared.run_turn(ticket, |_| ());
        let _ = tx.send(Err(CollectiveError::WorkerGone));
        Pending { done }
    }

    /// Sums (or averages, or takes the maximum of) `buf` over all ranks, in
    /// place. Every rank ends with bitwise the same values.
    pub fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<(), CollectiveError> {
        self.blocking(|e| e.all_reduce(buf, op))
    }

    /// Reduces `buf` over all ranks so that this rank's shard
    /// ([`Communicator::shard`]) holds the result, which is returned as a
    /// range; the rest of `buf` is left with partial results.
    pub fn reduce_scatter(
        &mut self,
        buf: &mut [f32],
        op: ReduceOp,
    ) -> Result<Range<usize>, CollectiveError> {
        self.blocking(|e| e.reduce_scatter(buf, op))
    }

    /// Fills every shard of `buf` with its owner's values; this rank's shard
    /// is its input.
    pub fn all_gather(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        self.blocking(|e| e.all_gather(buf))
    }

    /// Raw-byte all-gather, shards as for f32 buffers but counted in bytes.
    pub fn all_gather_bytes(&mut self, buf: &mut [u8]) -> Result<(), CollectiveError> {
        self.blocking(|e| e.all_gather(buf))
    }

    /// Copies `root`'s `buf` to every rank.
    pub fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        self.blocking(|e| e.broadcast(buf, root))
    }

    /// Copies `root`'s bytes to every rank.
    pub fn broadcast_bytes(&mut self, buf: &mut [u8], root: usize) -> Result<(), CollectiveError> {
        self.blocking(|e| e.broadcast(buf, root))
    }

    /// Returns once every rank has entered the barrier.
    pub fn barrier(&mut self) -> Result<(), CollectiveError> {
        self.blocking(|e| e.barrier())
    }

    /// Non-blocking [`Communicator::all_reduce`] on an owned buffer.
    pub fn all_reduce_async(&mut self, buf: Vec<f32>, op: ReduceOp) -> Pending<Vec<f32>> {
        self.spawn(buf, move |e, b| e.all_reduce(b, op))
    }

    /// Non-blocking [`Communicator::reduce_scatter`] on an owned buffer.
    pub fn reduce_scatter_async(&mut self, buf: Vec<f32>, op: ReduceOp) -> Pending<Vec<f32>> {
        self.spawn(buf, move |e, b| e.reduce_scatter(b, op).map(|_| ()))
    }

    /// Non-blocking [`Communicator::all_gather`] on an owned buffer.
    pub fn all_gather_async(&mut self, buf: Vec<f32>) -> Pending<Vec<f32>> {
        self.spawn(buf, |e, b| e.all_gather(b))
    }

    /// Non-blocking [`Communicator::all_gather`] of each of `ranges` of an owned
    /// buffer in turn (one op: the parameter buckets after a ZeRO step).
    pub fn all_gather_ranges_async(
        &mut self,
        buf: Vec<f32>,
        ranges: Vec<Range<usize>>,
    ) -> Pending<Vec<f32>> {
        self.spawn(buf, move |e, b| {
            let len = b.len();
            for r in &ranges {
                let part = b.get_mut(r.clone()).ok_or_else(|| {
                    CollectiveError::InvalidArgument(format!(
                        "range {r:?} is outside a buffer of {len} elements"
                    ))
                })?;
                e.all_gather(part)?;
            }
            Ok(())
        })
    }

    /// Sends range `send` of `buf` to the next rank of the ring and receives range
    /// `recv` from the previous one (whose `send` is as long): one ring step, what
    /// mirroring a shard on a neighbour takes. Nothing moves on a ring of one.
    pub fn shift(
        &mut self,
        buf: &mut [f32],
        send: Range<usize>,
        recv: Range<usize>,
    ) -> Result<(), CollectiveError> {
        self.blocking(|e| e.shift(buf, send, recv))
    }

    /// Non-blocking [`Communicator::shift`] on an owned buffer.
    pub fn shift_async(
        &mut self,
        buf: Vec<f32>,
        send: Range<usize>,
        recv: Range<usize>,
    ) -> Pending<Vec<f32>> {
        self.spawn(buf, move |e, b| e.shift(b, send, recv))
    }

    /// Non-blocking [`Communicator::broadcast`] on an owned buffer.
    pub fn broadcast_async(&mut self, buf: Vec<f32>, root: usize) -> Pending<Vec<f32>> {
        self.spawn(buf, move |e, b| e.broadcast(b, root))
    }
}

impl Drop for Communicator {
    fn drop(&mut self) {
        // Let queued ops finish (each has a deadline), then stop the worker.
        if let Some((sender, handle)) = self.worker.take() {
            drop(sender);
            let _ = handle.join();
        }
    }
}
