//! The wire between an elastic run's coordinator and its nodes.
//!
//! A node dials the coordinator over QUIC with the same mutual TLS as the
//! collectives (a peer without a certificate of the cluster CA fails the handshake),
//! opens one bidirectional stream and sends [`ToCoordinator::Hello`] with the cluster
//! token. From then on both directions carry a sequence of messages, each a 4-byte
//! little-endian length and then bincode (variable-length integers) of [`MAGIC`]
//! and the message, at most [`MAX_MESSAGE_BYTES`]: a longer length is refused
//! before anything is allocated. The node sends a heartbeat every
//! `heartbeat_every`; its other messages report its steps. The coordinator answers
//! with the run's configuration, generations, commits and aborts
//! ([`ToNode`]). Which messages are valid when is the coordinator's business
//! (`shoal_actors::coordinator`); this module only moves them.
//!
//! An `Abort` reaches the node's abort hook at once, from the link's reader task,
//! so that a rank blocked in a collective on a dead peer is woken without waiting
//! for the node's own loop.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bincode::{Decode, Encode};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, unbounded};
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::dial::{DialError, any_port_like, connect};
use crate::quic::{QuicOptions, endpoint, runtime, transport_config};
use crate::tls::NodeIdentity;

/// First field of every membership message ("SHMB").
pub const MAGIC: u32 = 0x5348_4D42;

/// Largest membership message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// How long a new connection may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest node name.
const MAX_NODE_NAME: usize = 64;

/// A node's introduction.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Hello {
    /// The node's name, unique in the run.
    pub node: String,
    /// The address of its collective endpoint.
    pub addr: SocketAddr,
    /// The cluster token.
    pub token: String,
}

/// One rank's report of a step it finished.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct StepReport {
    /// The generation the step ran in.
    pub generation: u64,
    /// Steps completed, counting this one.
    pub step: u64,
    /// Mean training loss of the global batch.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Learning rate of the update.
    pub lr: f32,
    /// Seconds the step took on this rank (mirroring included).
    pub seconds: f64,
    /// Seconds of the step spent mirroring the shard to the next rank.
    pub mirror_seconds: f64,
    /// Seconds of communication not hidden behind compute.
    pub comm_seconds: f64,
    /// Global indices of the samples this rank consumed.
    pub samples: Vec<u64>,
    /// Bytes this rank's collectives sent during the step.
    pub bytes_sent: u64,
    /// Whether the rank mirrored its piece after this step.
    pub mirrored: bool,
}

/// Messages from a node to the coordinator.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum ToCoordinator {
    /// The first message of a connection.
    Hello(Hello),
    /// The node is alive.
    Heartbeat,
    /// The node formed the ring of a generation and restored its state.
    Ready {
        /// The generation.
        generation: u64,
    },
    /// The node finished a step and mirrored its shard.
    Done(StepReport),
    /// An evaluation by the generation's rank 0 after a committed step (JSON).
    Eval {
        /// The step evaluated after.
        step: u64,
        /// The evaluation record, as the metrics file holds it.
        json: String,
    },
    /// A checkpoint was committed by the generation's rank 0.
    Checkpoint {
        /// Its step.
        step: u64,
        /// Its directory.
        path: String,
    },
    /// The node's step or generation failed locally.
    Failed {
        /// The generation.
        generation: u64,
        /// What happened.
        reason: String,
    },
}

/// How a node gets the state of a new generation.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Restore {
    /// The run starts: the state every node builds from the configuration.
    Fresh,
    /// Pieces of the previous generation's state, held by the survivors (each
    /// rank's own piece and its mirror of its left neighbour's).
    Pieces {
        /// The previous generation's world size.
        world: u32,
        /// Old ranks whose piece this node contributes (its own, or the mirror it
        /// holds of a lost neighbour's).
        contribute: Vec<u32>,
    },
    /// The newest checkpoint in the run's directory (when a piece is lost with
    /// its mirror).
    Checkpoint,
}

/// A generation: the ring every member forms and how it restores its state.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Plan {
    /// The generation number (increasing).
    pub generation: u64,
    /// This node's rank.
    pub rank: u32,
    /// The members' names, by rank.
    pub names: Vec<String>,
    /// The members' collective addresses, by rank.
    pub members: Vec<SocketAddr>,
    /// Committed steps: the step the generation starts from.
    pub step: u64,
    /// Where the state comes from.
    pub restore: Restore,
    /// Mirror the pieces after every this many steps (and the last).
    pub mirror_every: u32,
}

/// Messages from the coordinator to a node.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ToNode {
    /// The node is in: the run's configuration (TOML).
    Welcome {
        /// The training configuration.
        config: String,
    },
    /// The node is refused, and why.
    Refused(String),
    /// Form this generation's ring.
    Generation(Plan),
    /// Step `step` is committed on every rank; `reconfigure`: a new generation
    /// follows before the next step.
    Commit {
        /// Steps completed.
        step: u64,
        /// Whether a [`ToNode::Generation`] (or [`ToNode::Leave`]) follows.
        reconfigure: bool,
    },
    /// A member was lost: abandon the step in flight of `generation`.
    Abort {
        /// The generation to abandon.
        generation: u64,
    },
    /// The node is drained: it leaves the run.
    Leave,
    /// The run is over.
    Stop,
}

/// Errors of the membership wire.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The endpoint could not be set up or the coordinator could not be dialed
    /// (TLS configuration, handshake, network).
    #[error(transparent)]
    Connect(#[from] DialError),
    /// Bytes that are not a membership message.
    #[error("malformed membership message: {0}")]
    Malformed(String),
    /// The link is closed.
    #[error("the link to the coordinator is closed: {0}")]
    Closed(String),
    /// Nothing arrived in time.
    #[error("no message from the coordinator within {0:?}")]
    Timeout(Duration),
}

fn wire_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

/// Encodes a message as one length-prefixed frame.
pub fn encode<T: Encode>(msg: &T) -> Result<Vec<u8>, MembershipError> {
    let body = bincode::encode_to_vec((MAGIC, msg), wire_config())
        .map_err(|e| MembershipError::Malformed(e.to_string()))?;
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(MembershipError::Malformed(format!(
            "{} bytes, the limit is {MAX_MESSAGE_BYTES}",
            body.len()
        )));
    }
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Decodes one frame's body (without its length) from untrusted bytes.
pub fn decode<T: Decode<()>>(body: &[u8]) -> Result<T, MembershipError> {
    let malformed = |reason: String| MembershipError::Malformed(reason);
    let ((magic, msg), used): ((u32, T), usize) =
        bincode::decode_from_slice(body, wire_config()).map_err(|e| malformed(e.to_string()))?;
    if magic != MAGIC {
        return Err(malformed(format!(
            "not a shoal membership message (starts with {magic:#x})"
        )));
    }
    if used != body.len() {
        return Err(malformed(format!("{} trailing bytes", body.len() - used)));
    }
    Ok(msg)
}

/// Reads one message: its length is checked before its body is allocated.
async fn read_message<T: Decode<()>>(recv: &mut RecvStream) -> Result<T, MembershipError> {
    let closed = |e: &dyn std::fmt::Display| MembershipError::Closed(e.to_string());
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(|e| closed(&e))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(MembershipError::Malformed(format!(
            "a message of {len} bytes, the limit is {MAX_MESSAGE_BYTES}"
        )));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| closed(&e))?;
    decode(&body)
}

/// Writes every message of `queue` to `send` until the queue closes or a write fails.
async fn write_loop<T: Encode>(mut send: SendStream, mut queue: UnboundedReceiver<T>) {
    while let Some(msg) = queue.recv().await {
        let Ok(frame) = encode(&msg) else {
            tracing::warn!("dropped a membership message that does not encode");
            continue;
        };
        if send.write_all(&frame).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

/// Checks a hello's contents; the reason goes back to the node.
fn check_hello(hello: &Hello) -> Result<(), String> {
    let name = &hello.node;
    if name.is_empty() || name.len() > MAX_NODE_NAME || name.chars().any(char::is_control) {
        return Err(format!(
            "invalid node name {name:?} (1 to {MAX_NODE_NAME} bytes, no control characters)"
        ));
    }
    if hello.addr.port() == 0 {
        return Err(format!("node `{name}` reported port 0 for its collectives"));
    }
    Ok(())
}

/// The coordinator's way to one node.
#[derive(Clone, Debug)]
pub struct NodeLink {
    queue: UnboundedSender<ToNode>,
    conn: Connection,
}

impl NodeLink {
    /// Queues `msg` for the node; false once the link is closed.
    pub fn send(&self, msg: ToNode) -> bool {
        self.queue.send(msg).is_ok()
    }

    /// Closes the connection (the node is gone or refused).
    pub fn close(&self, why: &str) {
        self.conn.close(VarInt::from_u32(1), why.as_bytes());
    }
}

/// What the coordinator hears from its nodes. `conn` numbers connections.
#[derive(Debug)]
pub enum ServerEvent {
    /// A node connected (TLS passed) and said hello; nothing is checked beyond
    /// the hello's form: the token is the coordinator's to check.
    Hello {
        /// The connection.
        conn: u64,
        /// The hello, with an unspecified address replaced by the source IP.
        hello: Hello,
        /// Where to answer.
        link: NodeLink,
    },
    /// A message after the hello.
    Message {
        /// The connection.
        conn: u64,
        /// The message.
        msg: ToCoordinator,
    },
    /// The connection closed or sent something malformed.
    Closed {
        /// The connection.
        conn: u64,
        /// Why.
        reason: String,
    },
}

/// The coordinator's endpoint: accepts nodes and hands every event to a callback.
pub struct MembershipServer {
    runtime: tokio::runtime::Runtime,
    endpoint: Endpoint,
}

impl MembershipServer {
    /// Listens at `addr` (port 0: a free port) with the coordinator's identity;
    /// `on_event` is called from the server's threads.
    pub fn bind(
        addr: SocketAddr,
        identity: &NodeIdentity,
        options: &QuicOptions,
        on_event: impl Fn(ServerEvent) + Send + Sync + 'static,
    ) -> Result<Self, DialError> {
        let mut server = identity.server_config()?;
        server.transport_config(transport_config(options)?);
        let runtime = runtime("shoal-membership")?;
        let endpoint = endpoint(&runtime, addr, Some(server))?;
        let on_event: Arc<dyn Fn(ServerEvent) + Send + Sync> = Arc::new(on_event);
        runtime.spawn(accept_loop(endpoint.clone(), on_event));
        Ok(Self { runtime, endpoint })
    }

    /// The address nodes dial.
    pub fn local_addr(&self) -> Result<SocketAddr, DialError> {
        self.endpoint.local_addr().map_err(|e| {
            DialError::Endpoint(crate::CollectiveError::Network(format!(
                "local address: {e}"
            )))
        })
    }
}

impl Drop for MembershipServer {
    fn drop(&mut self) {
        self.endpoint
            .close(VarInt::from_u32(0), b"coordinator stopped");
        let endpoint = self.endpoint.clone();
        let _ = self.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await
        });
    }
}

async fn accept_loop(endpoint: Endpoint, on_event: Arc<dyn Fn(ServerEvent) + Send + Sync>) {
    let mut next = 0u64;
    while let Some(incoming) = endpoint.accept().await {
        next += 1;
        tokio::spawn(serve_node(incoming, next, on_event.clone()));
    }
}

/// One node's connection: TLS, hello, then its messages until it closes.
async fn serve_node(
    incoming: quinn::Incoming,
    conn_id: u64,
    on_event: Arc<dyn Fn(ServerEvent) + Send + Sync>,
) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(%remote, error = %e, "refused a connection to the coordinator");
            return;
        }
    };
    let opened = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi()).await;
    let Ok(Ok((send, mut recv))) = opened else {
        tracing::warn!(%remote, "a connection to the coordinator opened no stream");
        conn.close(VarInt::from_u32(1), b"no hello");
        return;
    };
    let (queue, outgoing) = unbounded_channel();
    tokio::spawn(write_loop(send, outgoing));
    let link = NodeLink {
        queue,
        conn: conn.clone(),
    };
    let hello = tokio::time::timeout(HELLO_TIMEOUT, read_message::<ToCoordinator>(&mut recv)).await;
    let hello = match hello {
        Ok(Ok(ToCoordinator::Hello(h))) => check_hello(&h).map(|()| h),
        Ok(Ok(other)) => Err(format!("expected a hello, got {other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no hello within {HELLO_TIMEOUT:?}")),
    };
    let mut hello = match hello {
        Ok(h) => h,
        Err(reason) => {
            tracing::warn!(%remote, %reason, "refused a node");
            link.send(ToNode::Refused(reason));
            tokio::time::sleep(Duration::from_millis(200)).await;
            link.close("refused");
            return;
        }
    };
    if hello.addr.ip().is_unspecified() {
        hello.addr.set_ip(remote.ip().to_canonical());
    }
    on_event(ServerEvent::Hello {
        conn: conn_id,
        hello,
        link,
    });
    loop {
        match read_message::<ToCoordinator>(&mut recv).await {
            Ok(msg) => on_event(ServerEvent::Message { conn: conn_id, msg }),
            Err(e) => {
                on_event(ServerEvent::Closed {
                    conn: conn_id,
                    reason: e.to_string(),
                });
                conn.close(VarInt::from_u32(1), b"closed");
                return;
            }
        }
    }
}

/// Called with the generation of every abort, as it arrives.
pub type AbortHook = Box<dyn Fn(u64) + Send + Sync>;

/// A node's link to the coordinator: a synchronous handle over the link's own
/// runtime, which also sends the heartbeats.
pub struct CoordinatorLink {
    runtime: tokio::runtime::Runtime,
    endpoint: Endpoint,
    conn: Connection,
    queue: UnboundedSender<ToCoordinator>,
    inbox: Receiver<Result<ToNode, MembershipError>>,
    abort_hook: Arc<Mutex<Option<AbortHook>>>,
}

impl CoordinatorLink {
    /// Dials the coordinator at `addr` (retrying while it is not up, until
    /// `timeout`), says `hello` and starts heartbeats every `heartbeat_every`.
    pub fn connect(
        addr: SocketAddr,
        identity: &NodeIdentity,
        hello: Hello,
        options: &QuicOptions,
        timeout: Duration,
        heartbeat_every: Duration,
    ) -> Result<Self, MembershipError> {
        let mut client = identity.client_config().map_err(DialError::from)?;
        client.transport_config(transport_config(options).map_err(DialError::from)?);
        let runtime = runtime("shoal-link").map_err(DialError::from)?;
        let endpoint = endpoint(&runtime, any_port_like(addr), None).map_err(DialError::from)?;
        let abort_hook: Arc<Mutex<Option<AbortHook>>> = Arc::default();
        let (tx, inbox) = unbounded();
        let (queue, outgoing) = unbounded_channel();
        let conn = runtime.block_on(async {
            let conn = tokio::time::timeout(timeout, connect(&endpoint, client, addr))
                .await
                .map_err(|_| MembershipError::Timeout(timeout))??;
            let (mut send, recv) = conn
                .open_bi()
                .await
                .map_err(|e| MembershipError::Closed(e.to_string()))?;
            let frame = encode(&ToCoordinator::Hello(hello))?;
            send.write_all(&frame)
                .await
                .map_err(|e| MembershipError::Closed(e.to_string()))?;
            tokio::spawn(write_loop(send, outgoing));
            tokio::spawn(read_loop(recv, tx, abort_hook.clone()));
            Ok::<_, MembershipError>(conn)
        })?;
        let beats = queue.clone();
        runtime.spawn(async move {
            let mut every = tokio::time::interval(heartbeat_every);
            loop {
                every.tick().await;
                if beats.send(ToCoordinator::Heartbeat).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            runtime,
            endpoint,
            conn,
            queue,
            inbox,
            abort_hook,
        })
    }

    /// Queues `msg` for the coordinator.
    pub fn send(&self, msg: ToCoordinator) -> Result<(), MembershipError> {
        self.queue
            .send(msg)
            .map_err(|_| MembershipError::Closed("the writer stopped".into()))
    }

    /// The next message from the coordinator, waiting at most `timeout`.
    pub fn recv(&self, timeout: Duration) -> Result<ToNode, MembershipError> {
        match self.inbox.recv_timeout(timeout) {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => Err(MembershipError::Timeout(timeout)),
            Err(RecvTimeoutError::Disconnected) => {
                Err(MembershipError::Closed("the reader stopped".into()))
            }
        }
    }

    /// Sets the hook every [`ToNode::Abort`] calls as soon as it arrives (before it
    /// is queued for [`CoordinatorLink::recv`]); `None` removes it.
    pub fn set_abort_hook(&self, hook: Option<AbortHook>) {
        *self
            .abort_hook
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = hook;
    }
}

impl Drop for CoordinatorLink {
    fn drop(&mut self) {
        self.conn.close(VarInt::from_u32(0), b"node leaving");
        let endpoint = self.endpoint.clone();
        let _ = self.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await
        });
    }
}

async fn read_loop(
    mut recv: RecvStream,
    inbox: Sender<Result<ToNode, MembershipError>>,
    abort_hook: Arc<Mutex<Option<AbortHook>>>,
) {
    loop {
        let msg = read_message::<ToNode>(&mut recv).await;
        if let Ok(ToNode::Abort { generation }) = &msg
            && let Some(hook) = abort_hook
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
        {
            hook(*generation);
        }
        let end = msg.is_err();
        if inbox.send(msg).is_err() || end {
            return;
        }
    }
}

#[cfg(test)]
#[path = "membership_tests.rs"]
mod tests;
