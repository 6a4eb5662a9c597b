//! What the coordinator reports: the cluster snapshot served at `GET /status`,
//! and the [`Cluster`] trait the control plane calls.

use crate::error::DrainError;

/// Something that happened to the cluster.
pub use shoal_actors::coordinator::Event;
/// One member of the cluster as the coordinator sees it.
pub use shoal_actors::coordinator::MemberStatus as Member;
/// A snapshot of the cluster: what `GET /status` returns (as JSON) and the
/// dashboard shows.
pub use shoal_actors::coordinator::Status as ClusterStatus;

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
