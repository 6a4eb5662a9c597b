//! Errors of the control plane: one enum for starting it, one for the drains
//! the coordinator refuses.

use std::net::SocketAddr;

/// Why the control plane could not start (or its metrics recorder could not be installed).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The listening socket could not be bound (address in use, no permission, ...).
    #[error("cannot bind the control plane to {addr}: {source}")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server could not be set up on the bound socket.
    #[error("cannot start the control plane's HTTP server: {0}")]
    Server(#[source] std::io::Error),
    /// The server thread could not be spawned.
    #[error("cannot spawn the control plane thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The server thread did not report that it was serving within the start-up deadline.
    #[error("the control plane did not come up within {0:?}")]
    StartTimeout(std::time::Duration),
    /// An empty cluster token was given: mutating requests could never be authenticated.
    #[error("the cluster token is empty")]
    EmptyToken,
    /// The Prometheus recorder could not be installed, usually because another
    /// `metrics` recorder was installed in this process first.
    #[error("cannot install the Prometheus recorder: {0}")]
    Recorder(String),
}

/// Why the coordinator did not drain a node (see [`crate::Cluster::drain`]).
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// No member of the cluster has this name (HTTP 404).
    #[error("no node `{0}` in the cluster")]
    Unknown(String),
    /// The node exists but cannot be drained now, e.g. it is the last one (HTTP 409).
    #[error("{0}")]
    Refused(String),
}
