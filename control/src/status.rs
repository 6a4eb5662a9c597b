//! What the coordinator reports: the cluster snapshot served at `GET /status`,
//! and the [`Cluster`] trait the control plane calls.

use serde::{Deserialize, Serialize};

use crate::error::DrainError;

/// One member of the cluster as the coordinator sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Member {
    /// The node's name, unique in the cluster (what `POST /scale` drains).
    pub name: String,
    /// Its rank in the current generation; `None` while joining or after it left.
    pub rank: Option<u32>,
    /// The address the coordinator reaches it at.
    pub addr: String,
    /// One of [`Member::STATES`]: `"active"`, `"joining"`, `"draining"`, `"lost"`.
    pub state: String,
    /// Milliseconds since the coordinator last heard from it.
    pub since_heartbeat_ms: u64,
}

impl Member {
    /// The states a member can be in, as the coordinator spells them.
    pub const STATES: [&'static str; 4] = ["active", "joining", "draining", "lost"];
}

/// Something that happened to the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Event {
    /// Seconds since the coordinator started.
    pub seconds: f64,
    /// The last committed step when it happened.
    pub step: u64,
    /// What kind of thing happened, e.g. `"join"`, `"drain"`, `"failure"`,
    /// `"generation"`, `"checkpoint"`, `"recovered"`.
    pub kind: String,
    /// A human-readable description.
    pub detail: String,
}

/// A snapshot of the cluster: what `GET /status` returns (as JSON) and the dashboard shows.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ClusterStatus {
    /// The run's name.
    pub run: String,
    /// The current membership generation.
    pub generation: u64,
    /// The number of ranks in the current generation.
    pub world: u32,
    /// The last committed step.
    pub step: u64,
    /// The step the run ends at.
    pub max_steps: u64,
    /// The loss of the last committed step, once there is one.
    pub loss: Option<f32>,
    /// Recent training throughput, once measured.
    pub tokens_per_s: Option<f64>,
    /// Every node the coordinator knows of, in any state.
    pub members: Vec<Member>,
    /// `(step, loss)` of committed steps, in step order.
    pub losses: Vec<(u64, f32)>,
    /// What happened to the cluster, oldest first.
    pub events: Vec<Event>,
    /// Whether the run has reached `max_steps` (or otherwise ended).
    pub finished: bool,
}

/// What the control plane asks of the coordinator.
///
/// Both methods are called on a blocking thread pool, never on the server's
/// event loop, so they may take a lock; they should still answer promptly.
pub trait Cluster: Send + Sync + 'static {
    /// The current snapshot.
    fn status(&self) -> ClusterStatus;
    /// Drains node `node`: it leaves at the next step boundary.
    /// `Ok` carries a human-readable message for the caller.
    fn drain(&self, node: &str) -> Result<String, DrainError>;
}
