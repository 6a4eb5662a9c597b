//! One node of an elastic run: the trainer's side of the coordinator's protocol
//! ([`crate::coordinator`]).
//!
//! For each generation the node forms the ring the coordinator names, rebuilds
//! the committed state (from scratch, from the newest checkpoint, or from the
//! pieces the survivors hold, summed over the new ring: every piece is contributed
//! by exactly one member and the rest of the buffer is zero, so the sum is exact),
//! starts its rank as the actors of a [`Node`], and steps. After each step (or
//! every `mirror_every` steps) the rank mirrors its piece of the state on the next
//! rank ([`Node::mirror`]), reports the step and waits for the coordinator to
//! commit it: only then does the mirrored state replace the one it held. An abort (a member was lost)
//! wakes the rank's collectives at once; the node drops the generation, step in
//! flight included, and waits for the next one.
//!
//! The generation's rank 0 also evaluates and commits checkpoints, as rank 0 of
//! a static run does; every rank writes its checkpoint shard.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use shoal_collectives::membership::{
    CoordinatorLink, Plan, Restore, StepReport, ToCoordinator, ToNode,
};
use shoal_collectives::{AbortHandle, CommConfig, QuicNode, ReduceOp};

use super::Trainer;
use super::data_parallel::needs_params_after;
use crate::checkpoint::{CheckpointStore, load_checkpoint};
use crate::error::{Result, TrainError};
use crate::node::Node;
use crate::pieces::{FullState, Mirror};
use crate::step::TrainState;

/// Deadline of forming a ring and of every collective of an elastic run. A lost
/// member is noticed by the coordinator's heartbeats, which abort the
/// collectives much sooner; this bounds a wait on a member that is alive but
/// stuck, and the others' wait while rank 0 evaluates or writes a checkpoint.
pub const ELASTIC_COMM_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest wait for the coordinator's next message while idle: the link's own
/// liveness (QUIC's idle timeout) notices a dead coordinator much sooner.
const IDLE_WAIT: Duration = Duration::from_secs(24 * 3600);

/// How an elastic node's part in the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElasticEnd {
    /// The run finished.
    Finished,
    /// The node was drained.
    Drained,
}

/// What a node does next.
enum Next {
    Generation(Plan),
    End(ElasticEnd),
}

/// The committed state a node holds: its piece and its mirror of the previous
/// rank's, in the layout of the generation that committed them.
struct Held {
    world: usize,
    rank: usize,
    pieces: Mirror,
}

impl Held {
    /// The flattened piece of old rank `piece`, if this node holds it.
    fn piece(&self, world: usize, piece: usize) -> Result<&[f32]> {
        let prev = (self.rank + self.world - 1) % self.world;
        match piece {
            _ if world != self.world => Err(TrainError::Protocol(format!(
                "asked for a piece of a world of {world}; this node holds pieces of a world of {}",
                self.world
            ))),
            p if p == self.rank => Ok(self.pieces.own()),
            p if p == prev && self.world > 1 => Ok(self.pieces.left()),
            p => Err(TrainError::Protocol(format!(
                "asked for piece {p}; this node (rank {} of {}) holds {} and {prev}",
                self.rank, self.world, self.rank
            ))),
        }
    }
}

/// Waits for the coordinator's next generation (or the end), skipping what
/// belonged to the previous one.
fn next_generation(link: &CoordinatorLink) -> Result<Next> {
    next_generation_within(link, IDLE_WAIT)
}

/// [`next_generation`], waiting at most `wait`.
fn next_generation_within(link: &CoordinatorLink, wait: Duration) -> Result<Next> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match link.recv(left)? {
            ToNode::Generation(plan) => return Ok(Next::Generation(plan)),
            ToNode::Leave => return Ok(Next::End(ElasticEnd::Drained)),
            ToNode::Stop => return Ok(Next::End(ElasticEnd::Finished)),
            ToNode::Refused(why) => return Err(TrainError::Refused(why)),
            ToNode::Abort { .. } | ToNode::Commit { .. } | ToNode::Welcome { .. } => {}
        }
    }
}

impl Trainer {
    /// Takes part in the elastic run of the coordinator at the other end of `link`
    /// (which welcomed this node with this trainer's config) until it is over or
    /// this node is drained; `quic` is this node's collective endpoint. Fails if
    /// no generation starts within `first_wait`.
    pub fn run_elastic(
        &mut self,
        link: &CoordinatorLink,
        quic: &QuicNode,
        first_wait: Duration,
    ) -> Result<ElasticEnd> {
        // Each generation's ranks open their own GPUs (see `crate::rank`).
        self.gpu = None;
        let mut held: Option<Held> = None;
        let mut next = next_generation_within(link, first_wait)?;
        loop {
            let plan = match next {
                Next::Generation(plan) => plan,
                Next::End(end) => return Ok(end),
            };
            let generation = plan.generation;
            next = match self.run_generation(&plan, link, quic, &mut held) {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(generation, error = %e, "this generation failed on this node");
                    link.set_abort_hook(None);
                    link.send(ToCoordinator::Failed {
                        generation,
                        reason: e.to_string(),
                    })?;
                    // The link itself failing ends the node; anything else waits
                    // for the coordinator's next generation.
                    if let TrainError::Membership(_) | TrainError::Refused(_) = e {
                        return Err(e);
                    }
                    next_generation(link)?
                }
            };
        }
    }

    /// The state `plan` starts from, in this trainer's `state`.
    fn restore(
        &mut self,
        plan: &Plan,
        comm: &mut shoal_collectives::Communicator,
        buckets: &[std::ops::Range<usize>],
        held: Option<&Held>,
    ) -> Result<()> {
        match &plan.restore {
            Restore::Fresh => match &self.config.init {
                Some(path) => {
                    let init = crate::continual::load_init(path, self.config.reset_moments)?;
                    self.state = TrainState::new(init.params);
                    if let Some((m, v)) = init.moments {
                        (self.state.adam_m, self.state.adam_v) = (m, v);
                    }
                }
                None => self.state = TrainState::new(self.model.init_params(self.config.seed)),
            },
            Restore::Checkpoint => {
                let (dir, ckpt) = load_checkpoint(&self.config.out_dir)?;
                if ckpt.meta.step != plan.step {
                    return Err(TrainError::Protocol(format!(
                        "the coordinator restarts from step {} but the newest checkpoint here \
                         ({}) is of step {}",
                        plan.step,
                        dir.display(),
                        ckpt.meta.step
                    )));
                }
                self.state = TrainState::new(ckpt.params);
                self.state.adam_m = ckpt.adam_m;
                self.state.adam_v = ckpt.adam_v;
                self.state.step = plan.step;
                // The schedule resumes from the tokens the checkpoint consumed.
                self.tokens_seen = ckpt.meta.tokens_seen;
                return Ok(());
            }
            Restore::Pieces { world, contribute } => {
                let len = self.model.layout.len();
                let mut full = FullState::zeros(len);
                for &piece in contribute {
                    let held = held.ok_or_else(|| {
                        TrainError::Protocol("asked for a piece by a node that holds none".into())
                    })?;
                    let (w, p) = (*world as usize, piece as usize);
                    full.place(buckets, w, p, held.piece(w, p)?)?;
                }
                let mut flat = full.into_flat();
                comm.all_reduce(&mut flat, ReduceOp::Sum)?;
                let full = FullState::from_flat(flat)?;
                self.state = TrainState::new(full.params);
                self.state.adam_m = full.adam_m;
                self.state.adam_v = full.adam_v;
            }
        }
        // Every generation of a run steps the same global batch from step 0, so the
        // committed step fixes the tokens consumed, and with them the schedule's
        // position, whatever the world size.
        self.state.step = plan.step;
        self.tokens_seen = plan.step * self.config.tokens_per_step();
        Ok(())
    }

    /// One generation: form, restore, step until it ends.
    fn run_generation(
        &mut self,
        plan: &Plan,
        link: &CoordinatorLink,
        quic: &QuicNode,
        held: &mut Option<Held>,
    ) -> Result<Next> {
        let (generation, rank, world) = (plan.generation, plan.rank as usize, plan.members.len());
        let config = CommConfig {
            timeout: ELASTIC_COMM_TIMEOUT,
            ..CommConfig::default()
        };
        // An abort of this generation cancels the ring while it forms and wakes
        // its collectives once it has formed.
        let formed: Arc<Mutex<Option<AbortHandle>>> = Arc::default();
        let canceller = quic.canceller();
        let (cancel, slot) = (canceller.clone(), formed.clone());
        link.set_abort_hook(Some(Box::new(move |g| {
            if g == generation {
                cancel.cancel(g);
                if let Some(abort) = slot.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
                    abort.abort(None);
                }
            }
        })));
        let mut comm = quic.communicator(generation, &plan.members, rank, config)?;
        *formed.lock().unwrap_or_else(PoisonError::into_inner) = Some(comm.abort_handle());
        // An abort between the ring forming and the handle above is not lost.
        if canceller.is_cancelled(generation) {
            comm.abort_handle().abort(None);
        }
        let spec = self.node_spec(world)?;
        let buckets = Node::buckets(&spec);
        self.restore(plan, &mut comm, &buckets, held.as_ref())?;
        link.send(ToCoordinator::Ready { generation })?;
        let node = self.start_node(vec![comm])?;
        self.state.params = Vec::new();
        let tokens = self.config.tokens_per_step();
        let mut sent = node.comm_stats()?.bytes_sent;
        for step in plan.step..self.config.max_steps {
            let start = Instant::now();
            let hp = self.hyper(step);
            let outs = node.step(step, hp)?;
            let s = step + 1;
            let mirror_now =
                s.is_multiple_of(u64::from(plan.mirror_every.max(1))) || s == self.config.max_steps;
            let mirrored = Instant::now();
            let pieces = mirror_now.then(|| node.mirror()).transpose()?;
            let mirror_seconds = mirrored.elapsed().as_secs_f64();
            let now_sent = node.comm_stats()?.bytes_sent;
            let out = &outs[0];
            link.send(ToCoordinator::Done(StepReport {
                generation,
                step: step + 1,
                loss: out.loss,
                grad_norm: out.grad_norm,
                lr: hp.lr,
                seconds: start.elapsed().as_secs_f64(),
                mirror_seconds,
                comm_seconds: out.exposed_comm_seconds,
                samples: out.samples.clone(),
                bytes_sent: now_sent.saturating_sub(sent),
                mirrored: mirror_now,
            }))?;
            sent = now_sent;
            let reconfigure = loop {
                match link.recv(IDLE_WAIT)? {
                    ToNode::Commit {
                        step: s,
                        reconfigure,
                    } if s == step + 1 => break reconfigure,
                    ToNode::Abort { generation: g } if g == generation => {
                        return next_generation(link);
                    }
                    ToNode::Abort { .. } => {}
                    ToNode::Leave => return Ok(Next::End(ElasticEnd::Drained)),
                    ToNode::Generation(p) => return Ok(Next::Generation(p)),
                    other => {
                        return Err(TrainError::Protocol(format!(
                            "{other:?} while waiting for step {} to commit",
                            step + 1
                        )));
                    }
                }
            };
            if let Some(pieces) = pieces {
                *held = Some(Held {
                    world,
                    rank,
                    pieces,
                });
            }
            self.state.step = step + 1;
            self.tokens_seen += tokens;
            self.after_commit(&node, link, rank, world)?;
            if reconfigure {
                return next_generation(link);
            }
        }
        next_generation(link)
    }

    /// What follows a committed step: the parameters for rank 0's evaluation or
    /// checkpoint (gathered by every rank at stage 3), the evaluation, the
    /// checkpoint shards.
    fn after_commit(
        &mut self,
        node: &Node,
        link: &CoordinatorLink,
        rank: usize,
        world: usize,
    ) -> Result<()> {
        let c = &self.config;
        let s = self.state.step;
        let (max, eval_every, every) = (c.max_steps, c.eval_every, c.checkpoint_every);
        if !needs_params_after(c, s) {
            return Ok(());
        }
        self.state.params = node.params()?;
        if rank == 0 && eval_every > 0 && (s.is_multiple_of(eval_every) || s == max) {
            let e = self.evaluate()?;
            let json =
                serde_json::to_string(&e).map_err(|e| TrainError::Protocol(e.to_string()))?;
            link.send(ToCoordinator::Eval { step: s, json })?;
        }
        if (every > 0 && s.is_multiple_of(every)) || s == max {
            let store = CheckpointStore::new(&self.config.out_dir, self.config.keep_checkpoints);
            let staging = store.staging_dir(s);
            if node.save_shards(&staging)? {
                if rank == 0 {
                    let dir = store.commit_sharded(&self.checkpoint(), world)?;
                    link.send(ToCoordinator::Checkpoint {
                        step: s,
                        path: dir.display().to_string(),
                    })?;
                }
            } else {
                super::data_parallel::remove_staging(&staging)?;
                let (m, v) = node.gather_moments()?;
                if rank == 0 {
                    let mut ckpt = self.checkpoint();
                    (ckpt.adam_m, ckpt.adam_v) = (m, v);
                    let dir = store.save(&ckpt)?;
                    link.send(ToCoordinator::Checkpoint {
                        step: s,
                        path: dir.display().to_string(),
                    })?;
                }
            }
        }
        self.state.params = Vec::new();
        Ok(())
    }
}
