//! The synchronous handle of a running coordinator, and the drain handle the
//! control plane uses.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use ractor::concurrency::oneshot;
use ractor::{Actor, ActorRef};
use shoal_collectives::QuicOptions;
use shoal_collectives::membership::{MembershipError, MembershipServer};

use super::status::Recorder;
use super::{
    CoordinatorActor, CoordinatorArgs, CoordinatorMsg, CoordinatorSpec, DrainRefused, Rules,
    Status, io_error, newest_checkpoint,
};
use crate::checkpoint::CheckpointStore;
use crate::error::{Result, TrainError};

/// A running coordinator: the actor, its membership endpoint and the runtime
/// they run on.
pub struct Coordinator {
    runtime: tokio::runtime::Runtime,
    actor: ActorRef<CoordinatorMsg>,
    server: Option<MembershipServer>,
    addr: SocketAddr,
    status: Arc<Mutex<Status>>,
    done: Option<ractor::concurrency::OneshotReceiver<Result<u64>>>,
}

impl Coordinator {
    /// Starts the coordinator of `spec` and listens for nodes.
    pub fn start(spec: CoordinatorSpec) -> Result<Self> {
        spec.config.validate()?;
        if spec.min_nodes == 0 || spec.max_nodes < spec.min_nodes {
            return Err(TrainError::InvalidConfig {
                field: "nodes",
                reason: format!(
                    "min {} and max {} nodes (1 ≤ min ≤ max)",
                    spec.min_nodes, spec.max_nodes
                ),
            });
        }
        let store = CheckpointStore::new(&spec.config.out_dir, spec.config.keep_checkpoints);
        let committed = if spec.resume {
            newest_checkpoint(&store)?
        } else if !store.list()?.is_empty() {
            return Err(TrainError::CheckpointsExist {
                path: store.root().to_path_buf(),
            });
        } else {
            0
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("shoal-coordinator")
            .enable_all()
            .build()
            .map_err(|e| TrainError::io("tokio runtime", e))?;
        let status = Arc::new(Mutex::new(Status {
            run: spec.config.out_dir.display().to_string(),
            max_steps: spec.config.max_steps,
            step: committed,
            ..Status::default()
        }));
        let (done_tx, done) = oneshot();
        let out = &spec.config.out_dir;
        std::fs::create_dir_all(out).map_err(|e| io_error(out, e))?;
        let recorder = Recorder::new(status.clone(), &out.join("elastic.jsonl"), committed)?;
        let args = CoordinatorArgs {
            rules: Rules {
                token: spec.token,
                first: spec.first,
                mirror_every: spec.mirror_every.max(1),
                min_nodes: spec.min_nodes,
                max_nodes: spec.max_nodes,
                heartbeat_timeout: spec.heartbeat_timeout,
            },
            config: spec.config,
            committed,
            recorder,
            done: done_tx,
        };
        let (actor, _) = runtime
            .block_on(Actor::spawn(None, CoordinatorActor, args))
            .map_err(|e| TrainError::Actor {
                actor: "Coordinator",
                reason: e.to_string(),
            })?;
        let to_actor = actor.clone();
        let server = MembershipServer::bind(
            spec.listen,
            &spec.identity,
            &QuicOptions::default(),
            move |e| {
                let _ = to_actor.cast(CoordinatorMsg::Net(e));
            },
        )
        .map_err(MembershipError::from)?;
        let addr = server.local_addr().map_err(MembershipError::from)?;
        Ok(Self {
            runtime,
            actor,
            server: Some(server),
            addr,
            status,
            done: Some(done),
        })
    }

    /// Where nodes dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of the cluster.
    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A shared view of the cluster's status, kept up to date by the coordinator.
    pub fn status_handle(&self) -> Arc<Mutex<Status>> {
        self.status.clone()
    }

    /// A handle that drains nodes from another thread.
    pub fn drainer(&self) -> Drainer {
        Drainer {
            actor: self.actor.clone(),
            runtime: self.runtime.handle().clone(),
        }
    }

    /// Waits until the run is over; the last committed step.
    pub fn wait(mut self) -> Result<u64> {
        let done = self.done.take().ok_or_else(|| TrainError::Actor {
            actor: "Coordinator",
            reason: "already waited".into(),
        })?;
        self.runtime.block_on(done).map_err(|e| TrainError::Actor {
            actor: "Coordinator",
            reason: e.to_string(),
        })?
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.actor.stop(None);
        self.server.take();
    }
}

/// Drains nodes of a running coordinator (cloneable, usable from any thread but
/// the coordinator's own runtime).
#[derive(Clone)]
pub struct Drainer {
    actor: ActorRef<CoordinatorMsg>,
    runtime: tokio::runtime::Handle,
}

impl Drainer {
    /// Drains `node`: it leaves at the next step boundary.
    pub fn drain(&self, node: &str) -> std::result::Result<String, DrainRefused> {
        let (tx, rx) = oneshot();
        let gone = || DrainRefused::Refused("the coordinator stopped".into());
        self.actor
            .cast(CoordinatorMsg::Drain(node.into(), tx.into()))
            .map_err(|_| gone())?;
        self.runtime.block_on(rx).map_err(|_| gone())?
    }
}
