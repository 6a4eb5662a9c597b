//! The `ParameterShard` actor: owns a rank's share of the optimizer, its AdamW
//! moments (the fp32 master state), at ZeRO stage ≥ 2 its pieces' gradients and at
//! stage 3 its pieces of the parameters ([`ZeroShard`]); takes the reduced gradient
//! buckets from the [`crate::reducer::GradientReducer`]; applies clipping and AdamW
//! to its pieces; serves its pieces for the stage-3 all-gathers; and all-gathers the
//! updated parameters at stages 1 and 2.
//!
//! The whole-layout buffers a stage keeps on every rank (the parameters at stages
//! 0–2, the gradient accumulation buffer at stages 0–1) are [`Shared`] with the rank's
//! compute thread: the rank reads the parameters and writes the gradients during
//! forward and backward, the shard writes both during the update, and the step's
//! protocol keeps the two apart in time.

use std::ops::Range;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use shoal_collectives::{CollectiveError, CommStats, ReduceOp};
use shoal_kernels::DecaySpan;

use crate::checkpoint::sharded::write_shard;
use crate::error::{Result, TrainError};
use crate::pieces::{Export, Mirror, export_ranges};
use crate::reducer::{Op, ReducerMsg, Reply};
use crate::step::StepHyper;
use crate::zero::{MemoryReport, ZeroShard, ZeroStage, spans_within};

/// Whole-layout buffers of a rank, shared by its compute thread and its shard.
#[derive(Debug, Default)]
pub struct Shared {
    /// Parameters (empty at stage 3).
    pub params: RwLock<Vec<f32>>,
    /// Gradient accumulation buffer (empty at stages 2 and 3).
    pub grads: RwLock<Vec<f32>>,
}

/// A read guard that survives a panic elsewhere (the data is plain floats).
pub(crate) fn read(lock: &RwLock<Vec<f32>>) -> RwLockReadGuard<'_, Vec<f32>> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// A write guard, as [`read`].
pub(crate) fn write(lock: &RwLock<Vec<f32>>) -> RwLockWriteGuard<'_, Vec<f32>> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// What the update measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Applied {
    /// Mean training loss of the global batch.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Seconds between the update request and the last reduced bucket.
    pub waited_seconds: f64,
    /// Seconds of the update itself: norm, clipping, AdamW, parameter all-gather.
    pub optimizer_seconds: f64,
}

/// Messages of the [`ParameterShard`].
pub enum ShardMsg {
    /// The reducer this shard sends its collectives to.
    Connect(ActorRef<ReducerMsg>),
    /// A bucket-sized buffer holding this rank's piece of bucket `index` of the
    /// parameters, zeros elsewhere: this rank's input to the bucket's all-gather.
    Piece {
        /// The bucket.
        index: usize,
        /// Where the buffer goes.
        reply: RpcReplyPort<Vec<f32>>,
    },
    /// A reduced gradient bucket from the reducer.
    Reduced {
        /// The bucket.
        index: usize,
        /// The reduced bucket (whole, or with this rank's piece reduced).
        result: Reply,
    },
    /// Apply the step once `expect` reduced buckets have arrived.
    Apply(Box<ApplyArgs>),
    /// Write this rank's shard of a sharded checkpoint into the directory, wait for
    /// every rank's, and answer whether every rank sees all the shards there (a
    /// shared file system) or not (a collective: every rank's shard is asked).
    SaveShard {
        /// The checkpoint's staging directory.
        dir: std::path::PathBuf,
        /// Whether all ranks see every shard, or why the shards could not be written.
        reply: RpcReplyPort<Result<bool>>,
    },
    /// The full-layout AdamW moments (a collective: every rank's shard is asked).
    GatherMoments(RpcReplyPort<Result<(Vec<f32>, Vec<f32>)>>),
    /// The full-layout parameters (a collective at stage 3: every rank's shard is
    /// asked; a copy of the shared buffer otherwise).
    Params(RpcReplyPort<Result<Vec<f32>>>),
    /// Bytes held.
    Memory(RpcReplyPort<MemoryReport>),
    /// Mirror this rank's export on the next rank and take the previous rank's (a
    /// collective: every rank's shard is asked).
    Mirror(RpcReplyPort<Result<Mirror>>),
    /// The rank's communication counters (from its reducer).
    CommStats(RpcReplyPort<Result<CommStats>>),
}

/// The arguments of [`ShardMsg::Apply`].
pub struct ApplyArgs {
    /// Reduced buckets to wait for.
    pub expect: usize,
    /// This step's hyper-parameters.
    pub hp: StepHyper,
    /// The step number after this update (AdamW's bias correction).
    pub step: u64,
    /// This rank's share of the global loss sum over the micro-batches.
    pub loss_sum: f64,
    /// Elements of communication buffers the rank's compute held at once.
    pub compute_buffer_elems: usize,
    /// Where the outcome goes.
    pub reply: RpcReplyPort<Result<Applied>>,
}

/// Owns a rank's share of the optimizer (see the module documentation).
pub struct ParameterShard;

/// What [`ParameterShard`] starts from.
pub struct ShardArgs {
    /// The rank's pieces, moments (and gradients, parameters) loaded.
    pub zero: ZeroShard,
    /// The whole-layout buffers.
    pub shared: Arc<Shared>,
    /// Weight-decay spans of the layout.
    pub spans: Vec<DecaySpan>,
    /// Length of the layout.
    pub len: usize,
    /// This rank's number and the world size (for its checkpoint shard's name).
    pub rank: usize,
    /// The world size.
    pub world: usize,
}

/// The shard's state.
pub struct ShardState {
    zero: ZeroShard,
    shared: Arc<Shared>,
    spans: Vec<DecaySpan>,
    len: usize,
    rank: usize,
    world: usize,
    offsets: Vec<usize>,
    reducer: Option<ActorRef<ReducerMsg>>,
    received: usize,
    /// Reduced whole buckets (stages 0 and 1), written back at the update.
    stash: Vec<(usize, Vec<f32>)>,
    stash_peak: usize,
    failed: Option<CollectiveError>,
    waiting: Option<(Box<ApplyArgs>, Instant)>,
}

impl ShardState {
    fn reducer(&self) -> Result<ActorRef<ReducerMsg>> {
        self.reducer.clone().ok_or_else(|| TrainError::Actor {
            actor: "ParameterShard",
            reason: "no gradient reducer connected".into(),
        })
    }

    /// Runs `op` on the reducer and waits for it.
    async fn run(&self, op: Op, buf: Vec<f32>) -> Result<Vec<f32>> {
        let reducer = self.reducer()?;
        let gone = |e: String| TrainError::Actor {
            actor: "GradientReducer",
            reason: e,
        };
        let result = reducer
            .call(|reply| ReducerMsg::Run { op, buf, reply }, None)
            .await
            .map_err(|e| gone(e.to_string()))?;
        match result {
            ractor::rpc::CallResult::Success(r) => Ok(r?),
            other => Err(gone(format!("no answer ({other:?})"))),
        }
    }

    /// Full-layout buffer from the concatenated pieces `own`, all-gathered unless the
    /// stage keeps everything whole.
    async fn gather(&self, own: &[f32]) -> Result<Vec<f32>> {
        let full = self.zero.spread(own, self.len);
        if self.zero.stage == ZeroStage::Replicated {
            return Ok(full);
        }
        let ranges = self.zero.buckets.clone();
        self.run(Op::AllGatherRanges(ranges), full).await
    }

    /// Writes this rank's shard into `dir`; once every rank has (a barrier), answers
    /// whether every rank sees all the shards in its `dir`.
    async fn save_shard(&self, dir: &std::path::Path) -> Result<bool> {
        tokio::task::block_in_place(|| self.write_shard(dir))?;
        self.run(Op::AllReduce(ReduceOp::Sum), vec![0.0]).await?;
        let names = crate::checkpoint::sharded::record_names(self.world);
        let missing = names.iter().filter(|n| !dir.join(n).is_file()).count();
        let everyone = self
            .run(Op::AllReduce(ReduceOp::Sum), vec![missing as f32])
            .await?;
        Ok(everyone[0] == 0.0)
    }

    /// This rank's export: its [`export_ranges`] of the layout and the parameters
    /// and moments over them (at stage 0, where every rank holds everything, its
    /// `shard_range` of each bucket, so the ranks share the writing and mirroring).
    fn export(&self) -> Export {
        self.export_of(self.rank)
    }

    /// Rank `rank`'s export, from what this rank holds: any rank's at stage 0,
    /// where every rank holds everything; only its own otherwise.
    fn export_of(&self, rank: usize) -> Export {
        let z = &self.zero;
        let shared = read(&self.shared.params);
        let ranges = export_ranges(&z.buckets, self.world, rank);
        let n: usize = ranges.iter().map(Range::len).sum();
        let mut own = [
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        ];
        for ((piece, &at), r) in z.pieces.iter().zip(&self.offsets).zip(&ranges) {
            let local = at + (r.start - piece.start)..at + (r.end - piece.start);
            let params = if z.stage.shards_parameters() {
                &z.params[local.clone()]
            } else {
                &shared[r.clone()]
            };
            own[0].extend_from_slice(params);
            own[1].extend_from_slice(&z.adam_m[local.clone()]);
            own[2].extend_from_slice(&z.adam_v[local]);
        }
        let [params, adam_m, adam_v] = own;
        Export {
            ranges,
            params,
            adam_m,
            adam_v,
        }
    }

    /// Writes this rank's export into `dir`.
    fn write_shard(&self, dir: &std::path::Path) -> Result<()> {
        let e = self.export();
        write_shard(
            dir, self.rank, self.world, &e.ranges, &e.params, &e.adam_m, &e.adam_v,
        )
    }

    /// Sends this rank's piece to the next rank and takes the previous rank's. Only
    /// what the previous rank alone holds travels: at stage 3 its parameters and
    /// moments, at stages 1 and 2 its moments (every rank holds the same whole
    /// parameters, so those of its ranges are copied here), at stage 0 nothing
    /// (every rank holds everything).
    async fn mirror(&self) -> Result<Mirror> {
        let stage = self.zero.stage;
        let prev = (self.rank + self.world - 1) % self.world;
        let prev_ranges = export_ranges(&self.zero.buckets, self.world, prev);
        let n_prev: usize = prev_ranges.iter().map(Range::len).sum();
        if self.world == 1 || stage == ZeroStage::Replicated {
            let left = if self.world == 1 {
                Export::default()
            } else {
                self.export_of(prev)
            };
            let mut buf = self.export().flatten_with_room(3 * n_prev);
            let split = buf.len();
            buf.extend_from_slice(&left.flatten());
            return Ok(Mirror { buf, split });
        }
        // The moments (and at stage 3 the parameters) go to the next rank: they
        // lead a flattened piece.
        let travels = if stage.shards_parameters() { 3 } else { 2 };
        let mut buf = self.export().flatten_with_room(3 * n_prev);
        let split = buf.len();
        let send = 0..travels * (split / 3);
        buf.resize(split + travels * n_prev, 0.0);
        let recv = split..buf.len();
        let mut buf = self.run(Op::Shift { send, recv }, buf).await?;
        if !stage.shards_parameters() {
            let shared = read(&self.shared.params);
            for r in &prev_ranges {
                buf.extend_from_slice(&shared[r.clone()]);
            }
        }
        Ok(Mirror { buf, split })
    }

    fn take_reduced(&mut self, index: usize, result: Reply) {
        self.received += 1;
        let buf = match result {
            Ok(buf) => buf,
            Err(e) => {
                self.failed.get_or_insert(e);
                return;
            }
        };
        if self.zero.stage.shards_gradients() {
            let (bucket, piece) = (&self.zero.buckets[index], &self.zero.pieces[index]);
            let from = &buf[piece.start - bucket.start..piece.end - bucket.start];
            let at = self.offsets[index];
            let to = &mut self.zero.grads[at..at + piece.len()];
            to.iter_mut().zip(from).for_each(|(g, r)| *g += r);
        } else {
            self.stash.push((index, buf));
            let held = self.stash.iter().map(|(_, b)| b.len()).sum::<usize>();
            self.stash_peak = self.stash_peak.max(held);
        }
    }

    /// The update, once every reduced bucket is in.
    async fn apply(&mut self, args: &ApplyArgs, waited: f64) -> Result<Applied> {
        self.received = 0;
        if let Some(e) = self.failed.take() {
            self.stash.clear();
            return Err(e.into());
        }
        let start = Instant::now();
        let stage = self.zero.stage;
        if !stage.shards_gradients() {
            let mut grads = write(&self.shared.grads);
            for (i, buf) in self.stash.drain(..) {
                grads[self.zero.buckets[i].clone()].copy_from_slice(&buf);
            }
        }
        self.zero.peak_buffer_elems = args.compute_buffer_elems.max(self.stash_peak);
        self.stash_peak = 0;
        // The global norm (every rank gets the same value) and the global loss.
        let (grad_norm, loss_sum) = if stage.shards_gradients() {
            let sq = shoal_kernels::sum_of_squares(&self.zero.grads) as f32;
            let s = self
                .run(Op::AllReduce(ReduceOp::Sum), vec![args.loss_sum as f32, sq])
                .await?;
            (s[1].sqrt(), s[0])
        } else {
            let s = self
                .run(Op::AllReduce(ReduceOp::Sum), vec![args.loss_sum as f32])
                .await?;
            let sq = shoal_kernels::sum_of_squares(&read(&self.shared.grads));
            (sq.sqrt() as f32, s[0])
        };
        tokio::task::block_in_place(|| self.update(&args.hp, args.step, grad_norm));
        if matches!(
            stage,
            ZeroStage::OptimizerSharded | ZeroStage::GradientsSharded
        ) {
            let params = std::mem::take(&mut *write(&self.shared.params));
            let ranges = self.zero.buckets.clone();
            let gathered = self.run(Op::AllGatherRanges(ranges), params).await;
            // A failed gather leaves the rank without parameters: it cannot go on.
            *write(&self.shared.params) = gathered?;
        }
        if stage.shards_gradients() {
            self.zero.grads.fill(0.0);
        }
        Ok(Applied {
            loss: loss_sum / args.hp.grad_accum.max(1) as f32,
            grad_norm,
            waited_seconds: waited,
            optimizer_seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Clipping and AdamW on this rank's pieces.
    fn update(&mut self, hp: &StepHyper, step: u64, grad_norm: f32) {
        let z = &mut self.zero;
        let mut params = write(&self.shared.params);
        let mut grads = write(&self.shared.grads);
        let coef = if hp.grad_clip > 0.0 {
            shoal_kernels::clip_coefficient(grad_norm, hp.grad_clip)
        } else {
            1.0
        };
        for (piece, &at) in z.pieces.iter().zip(&self.offsets) {
            let own = at..at + piece.len();
            let g = if z.stage.shards_gradients() {
                &mut z.grads[own.clone()]
            } else {
                &mut grads[piece.clone()]
            };
            if coef < 1.0 {
                shoal_kernels::scale_inplace(g, coef);
            }
            let p = if z.stage.shards_parameters() {
                &mut z.params[own.clone()]
            } else {
                &mut params[piece.clone()]
            };
            shoal_kernels::adamw_update(
                p,
                g,
                &mut z.adam_m[own.clone()],
                &mut z.adam_v[own],
                &hp.adamw(),
                step + hp.moment_steps,
                &spans_within(&self.spans, piece),
            );
        }
    }
}

impl Actor for ParameterShard {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        _: ActorRef<ShardMsg>,
        args: ShardArgs,
    ) -> std::result::Result<ShardState, ActorProcessingErr> {
        Ok(ShardState {
            offsets: crate::zero::offsets(&args.zero.pieces),
            zero: args.zero,
            shared: args.shared,
            spans: args.spans,
            len: args.len,
            rank: args.rank,
            world: args.world,
            reducer: None,
            received: 0,
            stash: Vec::new(),
            stash_peak: 0,
            failed: None,
            waiting: None,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<ShardMsg>,
        msg: ShardMsg,
        state: &mut ShardState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Connect(reducer) => state.reducer = Some(reducer),
            ShardMsg::Piece { index, reply } => {
                let _ = reply.send(state.zero.piece_buffer(index, &state.offsets));
            }
            ShardMsg::Reduced { index, result } => {
                state.take_reduced(index, result);
                let ready = state
                    .waiting
                    .as_ref()
                    .is_some_and(|(a, _)| state.received >= a.expect);
                if let Some((args, since)) = state.waiting.take_if(|_| ready) {
                    let out = state.apply(&args, since.elapsed().as_secs_f64()).await;
                    let _ = args.reply.send(out);
                }
            }
            ShardMsg::Apply(args) => {
                if state.received >= args.expect {
                    let out = state.apply(&args, 0.0).await;
                    let _ = args.reply.send(out);
                } else {
                    state.waiting = Some((args, Instant::now()));
                }
            }
            ShardMsg::SaveShard { dir, reply } => {
                let _ = reply.send(state.save_shard(&dir).await);
            }
            ShardMsg::GatherMoments(reply) => {
                let m = state.gather(&state.zero.adam_m).await;
                let out = match m {
                    Ok(m) => state.gather(&state.zero.adam_v).await.map(|v| (m, v)),
                    Err(e) => Err(e),
                };
                let _ = reply.send(out);
            }
            ShardMsg::Params(reply) => {
                let out = if state.zero.stage.shards_parameters() {
                    state.gather(&state.zero.params).await
                } else {
                    Ok(read(&state.shared.params).clone())
                };
                let _ = reply.send(out);
            }
            ShardMsg::CommStats(reply) => {
                let out = match state.reducer() {
                    Ok(r) => r
                        .call(ReducerMsg::Stats, None)
                        .await
                        .map_err(|e| TrainError::Actor {
                            actor: "GradientReducer",
                            reason: e.to_string(),
                        })
                        .and_then(|c| match c {
                            ractor::rpc::CallResult::Success(s) => Ok(s),
                            other => Err(TrainError::Actor {
                                actor: "GradientReducer",
                                reason: format!("no answer ({other:?})"),
                            }),
                        }),
                    Err(e) => Err(e),
                };
                let _ = reply.send(out);
            }
            ShardMsg::Mirror(reply) => {
                let _ = reply.send(state.mirror().await);
            }
            ShardMsg::Memory(reply) => {
                let f = std::mem::size_of::<f32>();
                let mut m = state.zero.memory();
                m.params += read(&state.shared.params).len() * f;
                m.grads += read(&state.shared.grads).len() * f;
                let _ = reply.send(m);
            }
        }
        Ok(())
    }
}
