//! The `GradientReducer` actor: owns its rank's [`Communicator`] and runs every
//! collective of the rank on the ring, in the order the requests arrive.
//!
//! Its main traffic is gradient buckets, cast by the rank's backward pass as soon as
//! each is final: the reducer starts the bucket's reduction (all-reduce at ZeRO stages
//! 0 and 1, reduce-scatter at 2 and 3) and backward goes on; the reduced bucket goes
//! to the rank's [`crate::shard::ParameterShard`], which keeps its piece. Every other
//! collective (stage-3 parameter gathers, the norm, the parameter all-gather) comes
//! as a [`ReducerMsg::Run`] with a reply port.
//!
//! Ordering is what keeps a ring correct: every rank must issue the same collectives
//! in the same order. Each rank has one client of its reducer at a time (the rank's
//! compute thread during forward and backward, then the parameter shard during the
//! update), so a mailbox in arrival order is issue order.

use std::ops::Range;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use shoal_collectives::{CollectiveError, CommStats, Communicator, Pending, ReduceOp};

use crate::shard::ShardMsg;

/// A collective on an owned buffer.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// All-reduce the whole buffer.
    AllReduce(ReduceOp),
    /// Reduce so that this rank's shard of the buffer holds the result.
    ReduceScatter(ReduceOp),
    /// Fill every shard of the buffer with its owner's values.
    AllGather,
    /// All-gather each range of the buffer in turn.
    AllGatherRanges(Vec<Range<usize>>),
    /// Send range `send` to the next rank, receive range `recv` from the previous.
    Shift {
        /// What goes to the next rank.
        send: Range<usize>,
        /// Where the previous rank's block lands.
        recv: Range<usize>,
    },
}

/// What a collective gives back: the buffer, reduced or gathered.
pub type Reply = Result<Vec<f32>, CollectiveError>;

/// Messages of the [`GradientReducer`].
pub enum ReducerMsg {
    /// Gradient bucket `index` (of the shard's buckets) is final for this
    /// micro-batch: reduce it and hand the result to the parameter shard.
    Bucket {
        /// The bucket's index.
        index: usize,
        /// Its gradient.
        buf: Vec<f32>,
        /// Reduce-scatter (sharded gradients) or all-reduce.
        scatter: bool,
    },
    /// Any collective, answered on `reply`.
    Run {
        /// The collective.
        op: Op,
        /// Its buffer.
        buf: Vec<f32>,
        /// Where the result goes.
        reply: RpcReplyPort<Reply>,
    },
    /// Bytes moved and time spent so far.
    Stats(RpcReplyPort<CommStats>),
    /// All-reduce (sum) a device buffer over the rank's device communicator, in
    /// turn with the host collectives; the buffer comes back on `reply`.
    #[cfg(feature = "cuda")]
    DeviceAllReduce {
        /// The buffer, on the rank's GPU.
        buf: shoal_kernels::cuda::CudaSlice<f32>,
        /// The reduced buffer.
        reply: RpcReplyPort<DeviceReply>,
    },
}

/// What a device all-reduce gives back: the reduced buffer.
#[cfg(feature = "cuda")]
pub type DeviceReply =
    Result<shoal_kernels::cuda::CudaSlice<f32>, shoal_collectives::DeviceCollectiveError>;

/// A rank's ring: host buffers only, or with collectives over device buffers too
/// (built with the `cuda` feature), whose host communicator serves the host ops.
pub enum RankComm {
    /// Collectives over host buffers.
    Host(Communicator),
    /// Collectives over device buffers, and over host buffers through its host
    /// communicator.
    #[cfg(feature = "cuda")]
    Device(Box<shoal_collectives::DeviceCommunicator>),
}

impl RankComm {
    /// The host communicator.
    pub fn host(&mut self) -> &mut Communicator {
        match self {
            RankComm::Host(comm) => comm,
            #[cfg(feature = "cuda")]
            RankComm::Device(dc) => dc.host(),
        }
    }

    /// A handle that aborts the ring's host communicator from another thread.
    pub fn abort_handle(&self) -> shoal_collectives::AbortHandle {
        match self {
            RankComm::Host(comm) => comm.abort_handle(),
            #[cfg(feature = "cuda")]
            RankComm::Device(dc) => dc.abort_handle(),
        }
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        match self {
            RankComm::Host(comm) => comm.rank(),
            #[cfg(feature = "cuda")]
            RankComm::Device(dc) => dc.rank(),
        }
    }

    /// Number of ranks.
    pub fn world(&self) -> usize {
        match self {
            RankComm::Host(comm) => comm.world(),
            #[cfg(feature = "cuda")]
            RankComm::Device(dc) => dc.world(),
        }
    }
}

impl From<Communicator> for RankComm {
    fn from(comm: Communicator) -> Self {
        RankComm::Host(comm)
    }
}

/// Runs a rank's collectives (see the module documentation).
pub struct GradientReducer;

/// The reducer's state: the communicator and where reduced buckets go.
pub struct ReducerState {
    comm: RankComm,
    shard: ActorRef<ShardMsg>,
}

fn start(comm: &mut Communicator, op: Op, buf: Vec<f32>) -> Pending<Vec<f32>> {
    match op {
        Op::AllReduce(r) => comm.all_reduce_async(buf, r),
        Op::ReduceScatter(r) => comm.reduce_scatter_async(buf, r),
        Op::AllGather => comm.all_gather_async(buf),
        Op::AllGatherRanges(ranges) => comm.all_gather_ranges_async(buf, ranges),
        Op::Shift { send, recv } => comm.shift_async(buf, send, recv),
    }
}

/// Waits for `pending` off the actor's task and passes the result to `then`.
fn when_done(pending: Pending<Vec<f32>>, then: impl FnOnce(Reply) + Send + 'static) {
    tokio::task::spawn_blocking(move || then(pending.wait()));
}

impl Actor for GradientReducer {
    type Msg = ReducerMsg;
    type State = ReducerState;
    type Arguments = (RankComm, ActorRef<ShardMsg>);

    async fn pre_start(
        &self,
        _: ActorRef<ReducerMsg>,
        (comm, shard): (RankComm, ActorRef<ShardMsg>),
    ) -> Result<ReducerState, ActorProcessingErr> {
        Ok(ReducerState { comm, shard })
    }

    async fn handle(
        &self,
        _: ActorRef<ReducerMsg>,
        msg: ReducerMsg,
        state: &mut ReducerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ReducerMsg::Bucket {
                index,
                buf,
                scatter,
            } => {
                let op = if scatter {
                    Op::ReduceScatter(ReduceOp::Sum)
                } else {
                    Op::AllReduce(ReduceOp::Sum)
                };
                let shard = state.shard.clone();
                when_done(start(state.comm.host(), op, buf), move |result| {
                    // A stopped shard means the rank is shutting down.
                    let _ = shard.cast(ShardMsg::Reduced { index, result });
                });
            }
            ReducerMsg::Run { op, buf, reply } => {
                when_done(start(state.comm.host(), op, buf), move |result| {
                    let _ = reply.send(result);
                });
            }
            ReducerMsg::Stats(reply) => {
                let _ = reply.send(state.comm.host().stats());
            }
            #[cfg(feature = "cuda")]
            ReducerMsg::DeviceAllReduce { mut buf, reply } => {
                let out = match &mut state.comm {
                    // The op blocks (its IPC signals queue behind the host ops issued
                    // before it): this worker's other tasks move to another thread.
                    RankComm::Device(dc) => tokio::task::block_in_place(|| {
                        dc.all_reduce(&mut buf, ReduceOp::Sum).map(|()| buf)
                    }),
                    RankComm::Host(_) => {
                        Err(shoal_collectives::DeviceCollectiveError::InvalidArgument(
                            "this rank's ring has no device communicator".into(),
                        ))
                    }
                };
                let _ = reply.send(out);
            }
        }
        Ok(())
    }
}
