//! The `Coordinator` actor: one per elastic run. It holds the membership (the
//! nodes, their ranks and addresses), the generation number and the last
//! committed step, and decides every change at a step boundary.
//!
//! Nodes dial it over the membership wire ([`shoal_collectives::membership`]:
//! mutual-TLS QUIC with the cluster CA; a node must also present the cluster
//! token) and are welcomed with the run's configuration. Once `min_nodes` are in,
//! generation 0 starts. Every generation runs steps; a step is *committed* when
//! every member has reported it done, its shard mirrored on its ring neighbour.
//! At a commit the coordinator folds in what happened meanwhile:
//! - *scale out*: nodes that joined since are added (a new generation);
//! - *scale in*: drained nodes leave ([`plan::can_leave`]: never a node together
//!   with the neighbour that mirrors it).
//!
//! A node that misses its heartbeats for `heartbeat_timeout` (or whose connection
//! closes) is *lost*: the coordinator aborts the step in flight on every member
//! (their collectives wake at once) and starts a new generation of the survivors
//! from the committed step, each lost piece of the state coming from its mirror
//! ([`plan::next_generation`]), or from the newest checkpoint when a piece and
//! its mirror were both lost. The global batch never changes, so the redone step
//! consumes the same samples and the loss curve goes on.
//!
//! The coordinator writes the run's `metrics.jsonl` (one step line per committed
//! step, evaluations from the generation's rank 0), `commits.jsonl` (per
//! committed step: its generation and world size, the global sample indices it
//! consumed, the slowest rank's step and mirroring times) and `elastic.jsonl` (membership
//! events), records Prometheus metrics through the `metrics` facade, and keeps a
//! [`Status`] for the control plane.
//!
//! The coordinator itself is not replicated: if it dies, the nodes stop (their
//! link times out) and the run resumes from its newest checkpoint.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use shoal_collectives::membership::{
    NodeLink, Plan, Restore, ServerEvent, StepReport, ToCoordinator, ToNode,
};
use shoal_collectives::tls::NodeIdentity;

use crate::checkpoint::{CheckpointStore, load_checkpoint};
use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::metrics::{EvalStats, MetricsWriter};

mod commit;
mod handle;
pub mod plan;
mod status;

pub use handle::{Coordinator, Drainer};
use status::Recorder;
pub use status::{Event, MemberStatus, RecomputeStatus, Status};

/// How often the coordinator checks heartbeats.
const TICK: Duration = Duration::from_millis(100);

/// What a coordinator runs.
pub struct CoordinatorSpec {
    /// The run's configuration (sent to every node).
    pub config: TrainConfig,
    /// Nodes needed before the first generation starts (a running cluster goes on
    /// with any number of survivors).
    pub min_nodes: usize,
    /// Most nodes at once; later ones are refused.
    pub max_nodes: usize,
    /// The cluster token every node must present.
    pub token: String,
    /// A node silent this long is lost.
    pub heartbeat_timeout: Duration,
    /// Where nodes dial.
    pub listen: SocketAddr,
    /// The coordinator's certificate (of the cluster CA).
    pub identity: NodeIdentity,
    /// Continue the run from the newest checkpoint in the config's out_dir.
    pub resume: bool,
    /// A node that takes rank 0 whenever it is in a new generation (the node that
    /// embeds the coordinator, which shares its run directory).
    pub first: Option<String>,
    /// Nodes mirror their pieces after every this many steps (1: every step). A
    /// lost node then costs the steps since the last mirrored one, which are done
    /// again; membership changes wait for a mirrored step.
    pub mirror_every: u32,
}

/// Why a drain was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrainRefused {
    /// No such node.
    #[error("no node `{0}` in the cluster")]
    Unknown(String),
    /// The drain would break the run.
    #[error("{0}")]
    Refused(String),
}

/// Messages of the [`CoordinatorActor`].
pub enum CoordinatorMsg {
    /// Something from the membership wire.
    Net(ServerEvent),
    /// Check heartbeats.
    Tick,
    /// Drain a node.
    Drain(
        String,
        RpcReplyPort<std::result::Result<String, DrainRefused>>,
    ),
}

/// A node the coordinator knows.
struct Known {
    conn: u64,
    link: NodeLink,
    addr: SocketAddr,
    last_seen: Instant,
    /// The generation whose Ready it sent last.
    ready: Option<u64>,
}

/// The running generation.
struct Running {
    generation: u64,
    ranks: Vec<String>,
    /// Reports of the step in flight, by rank.
    reports: Vec<Option<StepReport>>,
    /// When the step in flight began (the previous commit or the generation's start).
    since: Instant,
    /// A member reported a failure; re-form if nobody is found lost by then.
    failed_at: Option<Instant>,
}

/// The membership rules of a run, from its [`CoordinatorSpec`].
pub(crate) struct Rules {
    token: String,
    first: Option<String>,
    mirror_every: u32,
    min_nodes: usize,
    max_nodes: usize,
    heartbeat_timeout: Duration,
}

/// The coordinator's state.
pub struct CoordinatorState {
    rules: Rules,
    max_steps: u64,
    tokens_per_step: u64,
    config_toml: String,
    store: CheckpointStore,
    nodes: HashMap<String, Known>,
    /// Welcomed nodes waiting for the next generation.
    joining: Vec<String>,
    draining: HashSet<String>,
    generation: u64,
    running: Option<Running>,
    /// Members by rank of the layout holding the committed state, with their
    /// connections (a node that reconnects holds nothing).
    pieces: Option<Vec<(String, u64)>>,
    committed: u64,
    /// The committed step the pieces hold (the last mirrored one).
    mirrored: u64,
    /// Whether the run is over.
    finished: bool,
    metrics: MetricsWriter,
    commits: MetricsWriter,
    recorder: Recorder,
    done: Option<ractor::concurrency::OneshotSender<Result<u64>>>,
    /// Set when the run finished: stop once the nodes are gone or this passes.
    stop_by: Option<Instant>,
    /// What the nodes' recompute plans are chosen from, but the world size (none when
    /// the model comes from `init` weights, which the coordinator does not read).
    recompute: Option<crate::recompute::PlanInputs>,
}

/// Drives an elastic run (see the module documentation).
pub struct CoordinatorActor;

/// What [`CoordinatorActor`] starts from.
pub struct CoordinatorArgs {
    rules: Rules,
    config: TrainConfig,
    committed: u64,
    recorder: Recorder,
    done: ractor::concurrency::OneshotSender<Result<u64>>,
}

fn io_error(path: &std::path::Path, e: std::io::Error) -> TrainError {
    TrainError::io(path, e)
}

/// Compares two tokens in time independent of where they differ.
fn same_token(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The step of the newest checkpoint of `store` that loads (a damaged one is
/// passed over, as the nodes do), or 0 when there is none.
fn newest_checkpoint(store: &CheckpointStore) -> Result<u64> {
    if store.list()?.is_empty() {
        return Ok(0);
    }
    let (_, ckpt) = load_checkpoint(store.root())?;
    Ok(ckpt.meta.step)
}

impl CoordinatorState {
    fn send(&self, name: &str, msg: ToNode) {
        if let Some(k) = self.nodes.get(name) {
            k.link.send(msg);
        }
    }

    /// Nodes a generation needs: `min_nodes` gate the start; a running cluster
    /// goes on with any survivor.
    fn needed(&self) -> usize {
        if self.generation == 0 {
            self.rules.min_nodes.max(1)
        } else {
            1
        }
    }

    fn alive(&self) -> HashSet<String> {
        self.nodes.keys().cloned().collect()
    }

    /// Starts the next generation from the running one (or from nothing).
    fn form(&mut self) {
        let members: Vec<String> = self
            .running
            .as_ref()
            .map(|r| r.ranks.clone())
            .unwrap_or_default();
        let leaving = plan::can_leave(&members, &self.draining);
        // Only nodes connected since the layout was committed hold pieces.
        let pieces: Option<Vec<String>> = self.pieces.as_ref().map(|p| {
            p.iter()
                .map(|(n, c)| {
                    let same = self.nodes.get(n).is_some_and(|k| k.conn == *c);
                    if same { n.clone() } else { String::new() }
                })
                .collect()
        });
        let alive = self.alive();
        let joining = std::mem::take(&mut self.joining);
        let mut next =
            plan::next_generation(&members, pieces.as_deref(), &alive, &leaving, &joining);
        if let Some(i) = self
            .rules
            .first
            .as_ref()
            .and_then(|f| next.ranks.iter().position(|n| n == f))
        {
            let name = next.ranks.remove(i);
            next.ranks.insert(0, name);
            let restore = next.restores.remove(i);
            next.restores.insert(0, restore);
        }
        for name in &next.leaving {
            self.draining.remove(name);
            self.send(name, ToNode::Leave);
            // Its link delivers the Leave and closes; that close is no failure.
            self.nodes.remove(name);
            self.recorder
                .event(self.committed, "drain", format!("node `{name}` left"));
        }
        let needed = self.needed();
        let unfit = self.unfit(next.ranks.len());
        if next.ranks.len() < needed || unfit.is_some() {
            // Not enough nodes, or too few for the activation budget: wait for more
            // (the members wait for a generation).
            self.joining = next.ranks;
            self.running = None;
            let n = self.joining.len();
            let why = match unfit {
                Some(e) => format!("{n} node(s), too few: {e}"),
                None => format!("{n} node(s), {needed} needed"),
            };
            self.recorder.event(self.committed, "waiting", why);
            self.publish();
            return;
        }
        if next.lost_state {
            self.restart_from_checkpoint();
        } else if self.mirrored < self.committed {
            self.rewind(
                self.mirrored,
                format!(
                    "the pieces hold step {}: its later steps are done again",
                    self.mirrored
                ),
            );
        }
        self.generation += 1;
        let generation = self.generation;
        let addrs: Vec<SocketAddr> = next
            .ranks
            .iter()
            .filter_map(|n| self.nodes.get(n).map(|k| k.addr))
            .collect();
        for (rank, (name, restore)) in next.ranks.iter().zip(&next.restores).enumerate() {
            let restore = if self.committed == 0 && next.lost_state {
                Restore::Fresh
            } else {
                restore.clone()
            };
            self.send(
                name,
                ToNode::Generation(Plan {
                    generation,
                    rank: rank as u32,
                    names: next.ranks.clone(),
                    members: addrs.clone(),
                    step: self.committed,
                    restore,
                    mirror_every: self.rules.mirror_every,
                }),
            );
        }
        metrics::counter!("shoal_membership_changes_total").increment(1);
        metrics::gauge!("shoal_generation").set(generation as f64);
        metrics::gauge!("shoal_world_size").set(next.ranks.len() as f64);
        self.recorder.event(
            self.committed,
            "generation",
            format!(
                "generation {generation}: {} ({}), from step {}",
                next.ranks.join(", "),
                if next.lost_state && self.committed == 0 {
                    "a fresh state"
                } else if next.lost_state {
                    "state from the checkpoint"
                } else {
                    "state from the survivors"
                },
                self.committed
            ),
        );
        if next.lost_state {
            self.pieces = None;
        }
        self.replan(next.ranks.len());
        self.running = Some(Running {
            generation,
            reports: vec![None; next.ranks.len()],
            ranks: next.ranks,
            since: Instant::now(),
            failed_at: None,
        });
        self.publish();
    }

    /// A piece of the state is gone with its mirror: the run goes back to its newest
    /// checkpoint (or to its start).
    fn restart_from_checkpoint(&mut self) {
        let step = match newest_checkpoint(&self.store) {
            Ok(step) => step,
            Err(e) => {
                tracing::warn!(error = %e, "no usable checkpoint; restarting from step 0");
                0
            }
        };
        if step != self.committed && self.pieces.is_some() {
            self.recorder.event(
                self.committed,
                "state lost",
                format!("a piece and its mirror were lost: back to the checkpoint of step {step}"),
            );
        }
        self.rewind(step, format!("back to the checkpoint of step {step}"));
    }

    /// The run goes back to committed step `step`: the steps after it are done
    /// again, and their metrics and commit lines go.
    fn rewind(&mut self, step: u64, why: String) {
        if step != self.committed {
            self.recorder.event(self.committed, "rewind", why);
        }
        self.committed = step;
        self.mirrored = step;
        for w in [&mut self.metrics, &mut self.commits] {
            match MetricsWriter::open(w.path(), step) {
                Ok(fresh) => *w = fresh,
                Err(e) => tracing::warn!(error = %e, "cannot cut back a metrics file"),
            }
        }
        self.recorder.truncate(step);
    }

    /// A node is gone.
    fn lose(&mut self, names: &[String], why: &str) {
        let mut member = false;
        for name in names {
            if self.nodes.remove(name).is_none() {
                continue;
            }
            self.joining.retain(|n| n != name);
            self.draining.remove(name);
            member |= self
                .running
                .as_ref()
                .is_some_and(|r| r.ranks.contains(name));
            let (kind, what) = if self.finished {
                ("left", format!("node `{name}` left"))
            } else {
                ("failure", format!("node `{name}` lost: {why}"))
            };
            self.recorder.event(self.committed, kind, what);
        }
        // Every loss seen at once goes into one new generation.
        if member && !self.finished {
            self.abort_and_reform();
        } else {
            self.publish();
        }
    }

    /// Abandons the step in flight everywhere and re-forms the ring.
    fn abort_and_reform(&mut self) {
        if let Some(r) = &self.running {
            for name in &r.ranks {
                self.send(
                    name,
                    ToNode::Abort {
                        generation: r.generation,
                    },
                );
            }
        }
        metrics::counter!("shoal_recoveries_total").increment(1);
        self.form();
    }

    fn hello(&mut self, conn: u64, hello: shoal_collectives::membership::Hello, link: NodeLink) {
        let refuse = |why: String| {
            tracing::warn!(node = %hello.node, %why, "refused a node");
            link.send(ToNode::Refused(why));
        };
        if !same_token(&hello.token, &self.rules.token) {
            return refuse("wrong cluster token".into());
        }
        if self.nodes.contains_key(&hello.node) {
            return refuse(format!(
                "a node named `{}` is already in the run",
                hello.node
            ));
        }
        if self.nodes.len() >= self.rules.max_nodes {
            return refuse(format!("the run has its {} nodes", self.rules.max_nodes));
        }
        if self.finished {
            return refuse("the run is over".into());
        }
        link.send(ToNode::Welcome {
            config: self.config_toml.clone(),
        });
        self.recorder.event(
            self.committed,
            "join",
            format!("node `{}` joined from {}", hello.node, hello.addr),
        );
        self.nodes.insert(
            hello.node.clone(),
            Known {
                conn,
                link,
                addr: hello.addr,
                last_seen: Instant::now(),
                ready: None,
            },
        );
        self.joining.push(hello.node);
        let needed = self.needed();
        if self.running.is_none() && self.joining.len() >= needed {
            self.form();
        } else {
            self.publish();
        }
    }

    fn message(&mut self, conn: u64, msg: ToCoordinator) {
        let Some(name) = self
            .nodes
            .iter()
            .find(|(_, k)| k.conn == conn)
            .map(|(n, _)| n.clone())
        else {
            return;
        };
        if let Some(k) = self.nodes.get_mut(&name) {
            k.last_seen = Instant::now();
        }
        match msg {
            ToCoordinator::Heartbeat | ToCoordinator::Hello(_) => {}
            ToCoordinator::Ready { generation } => {
                if let Some(k) = self.nodes.get_mut(&name) {
                    k.ready = Some(generation);
                }
                let all = self.running.as_ref().is_some_and(|r| {
                    r.generation == generation
                        && r.ranks.iter().all(|n| {
                            self.nodes
                                .get(n)
                                .is_some_and(|k| k.ready == Some(generation))
                        })
                });
                if all {
                    self.recorder.event(
                        self.committed,
                        "ready",
                        format!("generation {generation} formed its ring and restored its state"),
                    );
                }
            }
            ToCoordinator::Done(report) => self.done(&name, report),
            ToCoordinator::Eval { step, json } => match serde_json::from_str::<EvalStats>(&json) {
                Ok(e) if step <= self.committed => {
                    if let Err(e) = self.metrics.log_eval(&e) {
                        tracing::warn!(error = %e, "cannot write an evaluation");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(node = %name, error = %e, "an unreadable evaluation"),
            },
            ToCoordinator::Checkpoint { step, path } => {
                self.recorder
                    .event(step, "checkpoint", format!("step {step} in {path}"));
                if self.finished && step == self.max_steps {
                    self.stop_by = Some(Instant::now());
                }
            }
            ToCoordinator::Failed { generation, reason } => {
                tracing::warn!(node = %name, generation, %reason, "a node's step failed");
                if let Some(r) = self.running.as_mut().filter(|r| r.generation == generation) {
                    r.failed_at.get_or_insert_with(Instant::now);
                }
            }
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let lost: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, k)| now.duration_since(k.last_seen) > self.rules.heartbeat_timeout)
            .map(|(n, _)| n.clone())
            .collect();
        if !lost.is_empty() {
            let why = format!("no heartbeat for {:?}", self.rules.heartbeat_timeout);
            self.lose(&lost, &why);
        }
        let retry = self.running.as_ref().is_some_and(|r| {
            r.failed_at
                .is_some_and(|t| now.duration_since(t) > 2 * self.rules.heartbeat_timeout)
        });
        if retry && !self.finished {
            self.recorder.event(
                self.committed,
                "retry",
                "a step failed with every node alive: re-forming the ring".into(),
            );
            self.abort_and_reform();
        }
        self.publish();
    }

    /// Why a generation of `world` ranks could not train: no recompute plan fits
    /// the activation budget at that world (each rank's share of the batch grows as
    /// the world shrinks); `None` when it can.
    fn unfit(&self, world: usize) -> Option<String> {
        let mut inputs = self.recompute.clone()?;
        inputs.world = world.max(1);
        crate::recompute::plan_recompute(&inputs)
            .err()
            .map(|e| e.to_string())
    }

    /// The recompute plan every node of a generation of `world` ranks chooses (the
    /// same pure function of the same inputs), into the status; an event when it
    /// changes.
    fn replan(&mut self, world: usize) {
        let Some(inputs) = self.recompute.as_mut() else {
            return;
        };
        inputs.world = world;
        let planned = crate::recompute::plan_recompute(inputs);
        let status = status::RecomputeStatus::of(world, &planned);
        let before = self.recorder.recompute(Some(status.clone()));
        if before.is_none_or(|b| (&b.plan, &b.error) != (&status.plan, &status.error)) {
            let detail = match &planned {
                Ok(choice) => choice.to_string(),
                Err(e) => e.to_string(),
            };
            self.recorder.event(self.committed, "recompute", detail);
        }
    }

    fn publish(&mut self) {
        let members = self.members();
        let (generation, world) = self
            .running
            .as_ref()
            .map_or((self.generation, 0), |r| (r.generation, r.ranks.len()));
        self.recorder
            .publish(generation, world, self.committed, self.finished, members);
    }

    fn members(&self) -> Vec<MemberStatus> {
        let now = Instant::now();
        let ranks = self.running.as_ref().map(|r| &r.ranks);
        let mut out: Vec<MemberStatus> = self
            .nodes
            .iter()
            .map(|(name, k)| {
                let rank = ranks.and_then(|r| r.iter().position(|n| n == name));
                let state = if self.draining.contains(name) {
                    "draining"
                } else if rank.is_some() {
                    "active"
                } else {
                    "joining"
                };
                MemberStatus {
                    name: name.clone(),
                    rank: rank.map(|r| r as u32),
                    addr: k.addr.to_string(),
                    state: state.into(),
                    since_heartbeat_ms: now.duration_since(k.last_seen).as_millis() as u64,
                }
            })
            .collect();
        out.sort_by(|a, b| {
            (a.rank.is_none(), a.rank, &a.name).cmp(&(b.rank.is_none(), b.rank, &b.name))
        });
        out
    }

    fn drain(&mut self, name: &str) -> std::result::Result<String, DrainRefused> {
        if !self.nodes.contains_key(name) {
            return Err(DrainRefused::Unknown(name.into()));
        }
        if self.finished {
            return Err(DrainRefused::Refused("the run is over".into()));
        }
        let staying = self.nodes.len() - self.draining.len() - 1;
        if staying == 0 {
            return Err(DrainRefused::Refused(format!(
                "draining `{name}` would leave no node"
            )));
        }
        if let Some(i) = self.joining.iter().position(|n| n == name) {
            self.joining.remove(i);
            self.send(name, ToNode::Leave);
            self.nodes.remove(name);
            self.recorder.event(
                self.committed,
                "drain",
                format!("node `{name}` left before its first generation"),
            );
            return Ok(format!("node `{name}` left"));
        }
        self.draining.insert(name.into());
        self.recorder.event(
            self.committed,
            "drain",
            format!("node `{name}` drains at the next step boundary"),
        );
        self.publish();
        Ok(format!("node `{name}` leaves at the next step boundary"))
    }
}

/// The recompute plan inputs of `config` (the world size to be set), or none when
/// the architecture comes from `init` weights.
fn recompute_inputs(config: &TrainConfig) -> Result<Option<crate::recompute::PlanInputs>> {
    if config.init.is_some() {
        return Ok(None);
    }
    Ok(Some(crate::recompute::PlanInputs {
        model: config.model.resolve()?,
        stage: crate::zero::ZeroStage::from_number(config.zero)?,
        world: 1,
        batch: config.batch_size,
        seq_len: config.seq_len,
        settings: crate::recompute::RecomputeSettings::from_config(config)?,
    }))
}

impl Actor for CoordinatorActor {
    type Msg = CoordinatorMsg;
    type State = CoordinatorState;
    type Arguments = CoordinatorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CoordinatorMsg>,
        a: CoordinatorArgs,
    ) -> std::result::Result<CoordinatorState, ActorProcessingErr> {
        let out = a.config.out_dir.clone();
        std::fs::create_dir_all(&out).map_err(|e| io_error(&out, e))?;
        let metrics = MetricsWriter::open(&out.join("metrics.jsonl"), a.committed)?;
        let commits = MetricsWriter::open(&out.join("commits.jsonl"), a.committed)?;
        myself.send_interval(TICK, || CoordinatorMsg::Tick);
        Ok(CoordinatorState {
            rules: a.rules,
            max_steps: a.config.max_steps,
            tokens_per_step: a.config.tokens_per_step(),
            config_toml: a.config.to_toml_string(),
            store: CheckpointStore::new(&out, a.config.keep_checkpoints),
            nodes: HashMap::new(),
            joining: Vec::new(),
            draining: HashSet::new(),
            generation: 0,
            running: None,
            pieces: None,
            committed: a.committed,
            mirrored: a.committed,
            finished: a.committed >= a.config.max_steps,
            metrics,
            commits,
            recorder: a.recorder,
            done: Some(a.done),
            stop_by: None,
            recompute: recompute_inputs(&a.config)?,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<CoordinatorMsg>,
        msg: CoordinatorMsg,
        state: &mut CoordinatorState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            CoordinatorMsg::Net(ServerEvent::Hello { conn, hello, link }) => {
                state.hello(conn, hello, link);
            }
            CoordinatorMsg::Net(ServerEvent::Message { conn, msg }) => state.message(conn, msg),
            CoordinatorMsg::Net(ServerEvent::Closed { conn, reason }) => {
                let name = state
                    .nodes
                    .iter()
                    .find(|(_, k)| k.conn == conn)
                    .map(|(n, _)| n.clone());
                if let Some(name) = name {
                    state.lose(&[name], &format!("connection closed ({reason})"));
                }
            }
            CoordinatorMsg::Tick => state.tick(),
            CoordinatorMsg::Drain(name, reply) => {
                let _ = reply.send(state.drain(&name));
            }
        }
        let over = state
            .stop_by
            .is_some_and(|t| Instant::now() >= t || state.nodes.is_empty());
        if over {
            if let Some(done) = state.done.take() {
                let _ = done.send(Ok(state.committed));
            }
            myself.stop(None);
        }
        Ok(())
    }
}
