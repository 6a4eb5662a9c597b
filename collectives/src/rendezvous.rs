//! The rendezvous of a fixed-size run: how the node processes of a run, one per
//! host, find each other before they form their first ring.
//!
//! One node listens ([`Listener`]) and is rank 0. Every other node binds its
//! collective [`QuicNode`](crate::QuicNode) first, then [`join`]s: it connects to
//! the listener over QUIC with the same mutual TLS as the collectives (a node
//! without a certificate of the cluster CA fails the handshake, in either
//! direction) and sends a [`Join`] (its name and collective address) on one
//! stream. The listener ranks the nodes in join order and, once `world` nodes
//! are in, answers each with a [`Start`]: its rank, the members' collective
//! addresses in ring order, and what to run ([`RunSpec`]). A node whose name is
//! taken, a node beyond `world` and a request that does not decode are answered
//! with [`Message::Refused`]; every wait has a deadline.
//!
//! The address the listener hands out for a node is the one it reported, unless
//! that was unspecified (`0.0.0.0`, `::`): then it is the source IP of the node's
//! rendezvous connection with the reported port. Likewise a joiner reads an
//! unspecified member address (the listener's own, when it listens on all
//! interfaces) as the IP it dialed.
//!
//! On the wire, each direction of the stream carries one message and ends: bincode
//! (variable-length integers) of [`MAGIC`] then a [`Message`], at most
//! [`MAX_MESSAGE_BYTES`], decoded with that limit.
//!
//! A node's name is what it claims: its certificate proves that it belongs to the
//! cluster, not which node it is.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bincode::{Decode, Encode};
use quinn::{Connection, ConnectionError, Endpoint, SendStream, VarInt};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::Instant;

use crate::error::CollectiveError;
use crate::quic::{QuicOptions, endpoint, runtime, transport_config};
use crate::tls::{NodeIdentity, SERVER_NAME, TlsError};

/// First field of every rendezvous message ("SHRV").
pub const MAGIC: u32 = 0x5348_5256;

/// Largest rendezvous message, in bytes; longer ones are refused unread.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// The generation of the ring a rendezvous forms.
pub const FIRST_GENERATION: u64 = 0;

/// Longest node name (as for certificate names).
const MAX_NODE_NAME: usize = 64;

/// How long a sent answer may wait for its acknowledgement before its connection
/// is dropped.
const LINGER: Duration = Duration::from_secs(5);

/// A node's request to join the run.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Join {
    /// The node's name, unique in the run.
    pub node: String,
    /// The address of the node's collective endpoint.
    pub addr: SocketAddr,
}

/// The checkpoint a resumed run starts from.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Resume {
    /// The checkpoint directory, as rank 0 names it.
    pub checkpoint: String,
    /// Its step, which every node's copy must have.
    pub step: u64,
}

/// What every node of the run runs; opaque to this crate.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RunSpec {
    /// The training configuration (TOML).
    pub config: String,
    /// The checkpoint to resume from, if the run resumes.
    pub resume: Option<Resume>,
}

/// The listener's answer to a node once every node joined.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Start {
    /// The node's rank.
    pub rank: u32,
    /// The number of nodes.
    pub world: u32,
    /// The generation of the ring to form ([`FIRST_GENERATION`]).
    pub generation: u64,
    /// The collective addresses of the nodes, by rank.
    pub members: Vec<SocketAddr>,
    /// What to run.
    pub run: RunSpec,
}

/// A rendezvous message.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Message {
    /// A node asks to join (node to listener).
    Join(Join),
    /// The run starts (listener to node).
    Start(Start),
    /// The node is not part of the run, and why (listener to node).
    Refused(String),
}

/// Errors of the rendezvous.
#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    /// The QUIC endpoint could not be set up.
    #[error(transparent)]
    Endpoint(#[from] CollectiveError),
    /// This node's certificates could not be turned into a TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The TLS handshake failed: the two nodes' certificates are not of one cluster CA.
    #[error(
        "the TLS handshake with {peer} failed: {reason} (are this node's certificates \
         issued by the same cluster CA as the listener's?)"
    )]
    Handshake {
        /// The other end.
        peer: SocketAddr,
        /// What TLS reported.
        reason: String,
    },
    /// A connection or stream failed.
    #[error("rendezvous with {peer}: {reason}")]
    Network {
        /// The other end.
        peer: SocketAddr,
        /// What failed.
        reason: String,
    },
    /// Bytes that are not a rendezvous message.
    #[error("malformed rendezvous message: {0}")]
    Malformed(String),
    /// A well-formed message that does not fit the protocol.
    #[error("unexpected rendezvous message from {peer}: {reason}")]
    Unexpected {
        /// The sender.
        peer: SocketAddr,
        /// What is wrong with it.
        reason: String,
    },
    /// The listener refused this node.
    #[error("the rendezvous at {peer} refused this node: {reason}")]
    Refused {
        /// The listener.
        peer: SocketAddr,
        /// The listener's reason.
        reason: String,
    },
    /// A wait ran out.
    #[error("timed out after {after:?} waiting for {waiting_for}")]
    Timeout {
        /// What did not happen.
        waiting_for: String,
        /// The deadline's length.
        after: Duration,
    },
    /// A call that cannot be honoured (a world of 0, a second gather).
    #[error("invalid rendezvous argument: {0}")]
    InvalidArgument(String),
}

fn wire_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

impl Message {
    /// Encodes the message; fails if it is longer than [`MAX_MESSAGE_BYTES`].
    pub fn encode(&self) -> Result<Vec<u8>, RendezvousError> {
        let bytes = bincode::encode_to_vec((MAGIC, self), wire_config())
            .map_err(|e| RendezvousError::Malformed(e.to_string()))?;
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(RendezvousError::Malformed(format!(
                "{} bytes, the limit is {MAX_MESSAGE_BYTES}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// Decodes a message from untrusted bytes: every length is checked against
    /// [`MAX_MESSAGE_BYTES`] before anything is allocated, and trailing bytes are an
    /// error.
    pub fn decode(bytes: &[u8]) -> Result<Self, RendezvousError> {
        let malformed = |reason: String| RendezvousError::Malformed(reason);
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(malformed(format!(
                "{} bytes, the limit is {MAX_MESSAGE_BYTES}",
                bytes.len()
            )));
        }
        let (magic, used): (u32, usize) = bincode::decode_from_slice(bytes, wire_config())
            .map_err(|e| malformed(format!("no header: {e}")))?;
        if magic != MAGIC {
            return Err(malformed(format!(
                "not a shoal rendezvous message (starts with {magic:#x})"
            )));
        }
        let rest = &bytes[used..];
        let (message, used): (Message, usize) = bincode::decode_from_slice(rest, wire_config())
            .map_err(|e| malformed(e.to_string()))?;
        if used != rest.len() {
            return Err(malformed(format!("{} trailing bytes", rest.len() - used)));
        }
        Ok(message)
    }

    fn kind(&self) -> &'static str {
        match self {
            Message::Join(_) => "a join request",
            Message::Start(_) => "a start",
            Message::Refused(_) => "a refusal",
        }
    }
}

/// Checks a join request's contents; the reason is sent back to the node.
fn check_join(join: &Join) -> Result<(), String> {
    let name = &join.node;
    if name.is_empty() || name.len() > MAX_NODE_NAME || name.chars().any(char::is_control) {
        return Err(format!(
            "invalid node name {name:?} (1 to {MAX_NODE_NAME} bytes, no control characters)"
        ));
    }
    if join.addr.port() == 0 {
        return Err(format!("node `{name}` reported port 0 for its collectives"));
    }
    Ok(())
}

/// The address others reach a node at: the one it reported, or, if that is
/// unspecified, the IP its connection came from with the reported port.
fn reachable(reported: SocketAddr, seen_from: SocketAddr) -> SocketAddr {
    if reported.ip().is_unspecified() {
        SocketAddr::new(seen_from.ip().to_canonical(), reported.port())
    } else {
        reported
    }
}

/// The TLS handshake failed (a QUIC CRYPTO_ERROR, 0x100-0x1ff), on either side.
fn is_handshake_failure(e: &ConnectionError) -> bool {
    let code = match e {
        ConnectionError::TransportError(t) => t.code,
        ConnectionError::ConnectionClosed(c) => c.error_code,
        _ => return false,
    };
    (0x100..0x200).contains(&u64::from(code))
}

/// A node that sent a valid join request and waits for its answer.
struct Arrival {
    join: Join,
    remote: SocketAddr,
    conn: Connection,
    send: SendStream,
}

/// The first node's side of a rendezvous: accepts join requests from the moment it
/// is bound; [`Listener::gather`] ranks them. Keep it while the run lasts: nodes
/// that come later are told that the run started without them.
pub struct Listener {
    runtime: tokio::runtime::Runtime,
    endpoint: Endpoint,
    arrivals: Option<UnboundedReceiver<Arrival>>,
}

impl Listener {
    /// Listens at `addr` (port 0 picks a free port) with this node's identity.
    pub fn bind(
        addr: SocketAddr,
        identity: &NodeIdentity,
        options: &QuicOptions,
    ) -> Result<Self, RendezvousError> {
        let mut server = identity.server_config()?;
        server.transport_config(transport_config(options)?);
        let runtime = runtime("shoal-rendezvous")?;
        let endpoint = endpoint(&runtime, addr, Some(server))?;
        let (tx, rx) = unbounded_channel();
        runtime.spawn(accept_loop(endpoint.clone(), tx, options.hello_timeout));
        Ok(Self {
            runtime,
            endpoint,
            arrivals: Some(rx),
        })
    }

    /// The address nodes join at.
    pub fn local_addr(&self) -> Result<SocketAddr, RendezvousError> {
        self.endpoint
            .local_addr()
            .map_err(|e| CollectiveError::Network(format!("local address: {e}")).into())
    }

    /// Waits until `world` nodes, this one (`own`, rank 0) included, have joined
    /// (calling `on_join` with each one's rank), then sends each its [`Start`] with
    /// `run`, and returns the members by rank. Fails after `timeout`, refusing the
    /// nodes that joined so far. Runs once per listener.
    pub fn gather(
        &mut self,
        own: &Join,
        world: usize,
        run: &RunSpec,
        timeout: Duration,
        mut on_join: impl FnMut(usize, &Join),
    ) -> Result<Vec<Join>, RendezvousError> {
        if world == 0 || u32::try_from(world).is_err() {
            return Err(RendezvousError::InvalidArgument(format!(
                "a run of {world} nodes"
            )));
        }
        let mut arrivals = self.arrivals.take().ok_or_else(|| {
            RendezvousError::InvalidArgument("a listener gathers one run only".into())
        })?;
        let mut joined = self.runtime.block_on(async {
            let joined = collect(&mut arrivals, own, world, timeout, &mut on_join).await;
            // From now on, every node is too late.
            tokio::spawn(refuse_all(
                arrivals,
                format!("the run already started with its {world} nodes"),
            ));
            joined
        })?;
        let members: Vec<Join> = std::iter::once(own.clone())
            .chain(joined.iter().map(|a| a.join.clone()))
            .collect();
        let addrs: Vec<SocketAddr> = members.iter().map(|m| m.addr).collect();
        let starts = (1..members.len())
            .map(|rank| {
                Message::Start(Start {
                    rank: rank as u32,
                    world: world as u32,
                    generation: FIRST_GENERATION,
                    members: addrs.clone(),
                    run: run.clone(),
                })
                .encode()
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.runtime.block_on(async {
            for (arrival, bytes) in joined.iter_mut().zip(&starts) {
                arrival
                    .send
                    .write_all(bytes)
                    .await
                    .map_err(|e| RendezvousError::Network {
                        peer: arrival.remote,
                        reason: format!(
                            "node `{}` left before the run started: {e}",
                            arrival.join.node
                        ),
                    })?;
                let _ = arrival.send.finish();
            }
            // Hold the connections until the nodes have their starts (or LINGER passed).
            let delivered = async {
                for arrival in &joined {
                    let _ = arrival.send.stopped().await;
                }
            };
            let _ = tokio::time::timeout(LINGER, delivered).await;
            Ok::<_, RendezvousError>(())
        })?;
        Ok(members)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.endpoint
            .close(VarInt::from_u32(0), b"rendezvous closed");
    }
}

/// Collects join requests until `world` nodes are in, refusing taken names.
async fn collect(
    arrivals: &mut UnboundedReceiver<Arrival>,
    own: &Join,
    world: usize,
    timeout: Duration,
    on_join: &mut impl FnMut(usize, &Join),
) -> Result<Vec<Arrival>, RendezvousError> {
    let deadline = Instant::now() + timeout;
    let mut joined: Vec<Arrival> = Vec::new();
    while joined.len() + 1 < world {
        let next = tokio::time::timeout_at(deadline, arrivals.recv()).await;
        // A node that went away while waiting frees its place.
        joined.retain(|a| match a.conn.close_reason() {
            Some(reason) => {
                tracing::warn!(node = %a.join.node, %reason, "a node left before the run started");
                false
            }
            None => true,
        });
        let arrival = match next {
            Ok(Some(arrival)) => arrival,
            Ok(None) => {
                return Err(RendezvousError::InvalidArgument(
                    "the rendezvous endpoint was closed".into(),
                ));
            }
            Err(_) => {
                let n = joined.len() + 1;
                let reason = format!("the rendezvous timed out with {n} of {world} nodes");
                let mut refusals = tokio::task::JoinSet::new();
                for arrival in joined {
                    refusals.spawn(refuse(arrival, reason.clone()));
                }
                refusals.join_all().await;
                return Err(RendezvousError::Timeout {
                    waiting_for: format!(
                        "{} more node(s) to join ({n} of {world} joined)",
                        world - n
                    ),
                    after: timeout,
                });
            }
        };
        let name = &arrival.join.node;
        if *name == own.node || joined.iter().any(|a| a.join.node == *name) {
            let reason = format!("a node named `{name}` has already joined");
            tokio::spawn(refuse(arrival, reason));
            continue;
        }
        on_join(joined.len() + 1, &arrival.join);
        joined.push(arrival);
    }
    Ok(joined)
}

/// Refuses every node that arrives on `arrivals`, with `reason`, until it closes.
async fn refuse_all(mut arrivals: UnboundedReceiver<Arrival>, reason: String) {
    while let Some(arrival) = arrivals.recv().await {
        tokio::spawn(refuse(arrival, reason.clone()));
    }
}

async fn refuse(arrival: Arrival, reason: String) {
    tracing::warn!(node = %arrival.join.node, remote = %arrival.remote, %reason, "refused a node");
    answer_refusal(arrival.conn, arrival.send, reason).await;
}

/// Sends `Refused(reason)` and closes the connection once it arrived.
async fn answer_refusal(conn: Connection, mut send: SendStream, reason: String) {
    if let Ok(bytes) = Message::Refused(reason).encode()
        && send.write_all(&bytes).await.is_ok()
    {
        let _ = send.finish();
        let _ = tokio::time::timeout(LINGER, send.stopped()).await;
    }
    conn.close(VarInt::from_u32(1), b"refused");
}

async fn accept_loop(
    endpoint: Endpoint,
    arrivals: UnboundedSender<Arrival>,
    request_timeout: Duration,
) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(receive_join(incoming, arrivals.clone(), request_timeout));
    }
}

/// Takes one connection: TLS (done by quinn against the cluster CA), then a join
/// request on its first stream within `request_timeout`.
async fn receive_join(
    incoming: quinn::Incoming,
    arrivals: UnboundedSender<Arrival>,
    request_timeout: Duration,
) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(%remote, error = %e, "refused a rendezvous connection");
            return;
        }
    };
    let (send, mut recv) = match tokio::time::timeout(request_timeout, conn.accept_bi()).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::warn!(%remote, error = %e, "a rendezvous connection failed");
            return;
        }
        Err(_) => {
            tracing::warn!(%remote, "refused a rendezvous connection that sent nothing");
            conn.close(VarInt::from_u32(1), b"no join request");
            return;
        }
    };
    let request = tokio::time::timeout(request_timeout, recv.read_to_end(MAX_MESSAGE_BYTES)).await;
    let join = match request {
        Ok(Ok(bytes)) => match Message::decode(&bytes) {
            Ok(Message::Join(join)) => check_join(&join).map(|()| join),
            Ok(other) => Err(format!("expected a join request, got {}", other.kind())),
            Err(e) => Err(e.to_string()),
        },
        Ok(Err(e)) => Err(format!("unreadable join request: {e}")),
        Err(_) => Err(format!("no join request within {request_timeout:?}")),
    };
    let mut join = match join {
        Ok(join) => join,
        Err(reason) => {
            tracing::warn!(%remote, %reason, "refused a node");
            answer_refusal(conn, send, reason).await;
            return;
        }
    };
    join.addr = reachable(join.addr, remote);
    let arrival = Arrival {
        join,
        remote,
        conn,
        send,
    };
    if let Err(rejected) = arrivals.send(arrival) {
        // The listener is shutting down.
        rejected
            .0
            .conn
            .close(VarInt::from_u32(1), b"rendezvous closed");
    }
}

/// All interfaces and a free port, in `addr`'s address family: where a joiner
/// binds by default.
pub fn any_port_like(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// Joins the run whose listener is at `listener` as the node `request` describes,
/// retrying while the listener is not up yet, and returns its [`Start`] (with
/// unspecified member addresses read as the listener's IP). Fails after `timeout`,
/// on a failed TLS handshake (another cluster) and when refused.
pub fn join(
    listener: SocketAddr,
    identity: &NodeIdentity,
    request: &Join,
    options: &QuicOptions,
    timeout: Duration,
) -> Result<Start, RendezvousError> {
    let bytes = Message::Join(request.clone()).encode()?;
    let mut client = identity.client_config()?;
    client.transport_config(transport_config(options)?);
    let runtime = runtime("shoal-rendezvous")?;
    let endpoint = endpoint(&runtime, any_port_like(listener), None)?;
    let reply = runtime.block_on(async {
        let deadline = Instant::now() + timeout;
        let waited = |what: &str| RendezvousError::Timeout {
            waiting_for: format!("{what} at {listener}"),
            after: timeout,
        };
        let conn = tokio::time::timeout_at(deadline, connect(&endpoint, client, listener))
            .await
            .map_err(|_| waited("the listener to answer"))??;
        let reply = tokio::time::timeout_at(deadline, exchange(&conn, &bytes, listener))
            .await
            .map_err(|_| waited("the run to start"));
        conn.close(VarInt::from_u32(0), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        reply?
    })?;
    let unexpected = |reason: String| RendezvousError::Unexpected {
        peer: listener,
        reason,
    };
    let mut start = match reply {
        Message::Start(start) => start,
        Message::Refused(reason) => {
            return Err(RendezvousError::Refused {
                peer: listener,
                reason,
            });
        }
        other => return Err(unexpected(format!("{} instead of a start", other.kind()))),
    };
    let (rank, world) = (start.rank as usize, start.world as usize);
    if rank == 0 || rank >= world || start.members.len() != world {
        return Err(unexpected(format!(
            "rank {rank} of {world} with {} members",
            start.members.len()
        )));
    }
    for member in &mut start.members {
        if member.ip().is_unspecified() {
            member.set_ip(listener.ip());
        }
    }
    Ok(start)
}

/// Connects to the listener, trying again while it does not answer.
pub(crate) async fn connect(
    endpoint: &Endpoint,
    client: quinn::ClientConfig,
    listener: SocketAddr,
) -> Result<Connection, RendezvousError> {
    let network = |reason: String| RendezvousError::Network {
        peer: listener,
        reason,
    };
    loop {
        let connecting = endpoint
            .connect_with(client.clone(), listener, SERVER_NAME)
            .map_err(|e| network(format!("cannot connect: {e}")))?;
        match connecting.await {
            Ok(conn) => return Ok(conn),
            Err(ConnectionError::TimedOut) => {
                tracing::info!(%listener, "the listener does not answer yet; trying again");
            }
            Err(e) if is_handshake_failure(&e) => {
                return Err(RendezvousError::Handshake {
                    peer: listener,
                    reason: e.to_string(),
                });
            }
            Err(e) => return Err(network(format!("cannot connect: {e}"))),
        }
    }
}

/// Sends the join request and reads the listener's answer.
async fn exchange(
    conn: &Connection,
    request: &[u8],
    listener: SocketAddr,
) -> Result<Message, RendezvousError> {
    let network = |what: &str, e: &dyn std::fmt::Display| RendezvousError::Network {
        peer: listener,
        reason: format!("{what}: {e}"),
    };
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| network("cannot open a stream", &e))?;
    send.write_all(request)
        .await
        .map_err(|e| network("cannot send the join request", &e))?;
    let _ = send.finish();
    let reply = recv
        .read_to_end(MAX_MESSAGE_BYTES)
        .await
        .map_err(|e| network("no answer to the join request", &e))?;
    Message::decode(&reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ClusterCa;
    use proptest::prelude::*;

    const WAIT: Duration = Duration::from_secs(20);

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn request(node: &str, at: &str) -> Join {
        Join {
            node: node.into(),
            addr: addr(at),
        }
    }

    fn run_spec() -> RunSpec {
        RunSpec {
            config: "max_steps = 3\n".into(),
            resume: Some(Resume {
                checkpoint: "run/checkpoints/step-000003".into(),
                step: 3,
            }),
        }
    }

    fn messages() -> Vec<Message> {
        vec![
            Message::Join(request("a", "10.0.0.1:7000")),
            Message::Start(Start {
                rank: 1,
                world: 2,
                generation: FIRST_GENERATION,
                members: vec![addr("10.0.0.1:7000"), addr("[::1]:7001")],
                run: run_spec(),
            }),
            Message::Refused("no".into()),
        ]
    }

    /// A cluster CA and identities issued by it.
    fn cluster(names: &[&str]) -> Vec<NodeIdentity> {
        let ca = ClusterCa::generate("rendezvous-test").unwrap();
        names.iter().map(|n| ca.issue(n).unwrap()).collect()
    }

    fn listen(identity: &NodeIdentity) -> (Listener, SocketAddr) {
        let listener =
            Listener::bind(addr("127.0.0.1:0"), identity, &QuicOptions::default()).unwrap();
        let at = listener.local_addr().unwrap();
        (listener, at)
    }

    fn join_in_thread(
        at: SocketAddr,
        identity: &NodeIdentity,
        join_request: Join,
    ) -> std::thread::JoinHandle<Result<Start, RendezvousError>> {
        let identity = identity.clone();
        std::thread::spawn(move || {
            join(at, &identity, &join_request, &QuicOptions::default(), WAIT)
        })
    }

    #[test]
    fn messages_roundtrip() {
        for m in messages() {
            assert_eq!(Message::decode(&m.encode().unwrap()).unwrap(), m);
        }
    }

    #[test]
    fn malformed_messages_are_errors() {
        let valid = messages()[1].encode().unwrap();
        let mut trailing = valid.clone();
        trailing.push(0);
        let mut wrong_magic = valid.clone();
        wrong_magic[1] ^= 0xff;
        // The magic, variant 0 (Join), then a node name claiming 2^64 - 1 bytes.
        let mut huge = bincode::encode_to_vec(MAGIC, wire_config()).unwrap();
        huge.extend_from_slice(&[0, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "no header"),
            ("wrong magic", wrong_magic, "not a shoal rendezvous message"),
            ("truncated", valid[..valid.len() - 1].to_vec(), "malformed"),
            ("trailing", trailing, "1 trailing bytes"),
            ("huge length", huge, "malformed"),
            ("oversized", vec![0; MAX_MESSAGE_BYTES + 1], "the limit is"),
        ];
        for (what, bytes, needle) in cases {
            let e = Message::decode(&bytes).expect_err(what);
            assert!(matches!(e, RendezvousError::Malformed(_)), "{what}: {e}");
            assert!(e.to_string().contains(needle), "{what}: {e}");
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn every_truncation_is_an_error(cut in 0usize..1000) {
            for m in messages() {
                let bytes = m.encode().unwrap();
                let cut = cut % bytes.len();
                prop_assert!(Message::decode(&bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn join_requests_are_checked() {
        assert!(check_join(&request("a", "10.0.0.1:7000")).is_ok());
        for bad in [
            request("", "10.0.0.1:7000"),
            request("a\nb", "10.0.0.1:7000"),
            request(&"x".repeat(MAX_NODE_NAME + 1), "10.0.0.1:7000"),
            request("a", "10.0.0.1:0"),
        ] {
            assert!(check_join(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unspecified_addresses_become_the_connection_source() {
        let seen = addr("192.168.1.5:40000");
        assert_eq!(
            reachable(addr("0.0.0.0:7001"), seen),
            addr("192.168.1.5:7001")
        );
        assert_eq!(
            reachable(addr("[::]:7001"), addr("[::ffff:192.168.1.5]:40000")),
            addr("192.168.1.5:7001")
        );
        assert_eq!(
            reachable(addr("10.0.0.9:7001"), seen),
            addr("10.0.0.9:7001")
        );
    }

    /// Three nodes: ranks in join order, one member list, reachable addresses, the
    /// run's spec for everyone; then a duplicate name, a latecomer and garbage are
    /// refused with reasons.
    #[test]
    fn nodes_gather_and_the_rest_are_refused() {
        let ids = cluster(&["lead", "a", "b"]);
        let (mut listener, at) = listen(&ids[0]);

        // Garbage on a properly authenticated connection: a refusal, not a crash.
        let runtime = runtime("test").unwrap();
        let client_endpoint = endpoint(&runtime, addr("127.0.0.1:0"), None).unwrap();
        let client = ids[1].client_config().unwrap();
        let reply = runtime.block_on(async {
            let conn = client_endpoint
                .connect_with(client, at, SERVER_NAME)
                .unwrap()
                .await
                .unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(b"\x00garbage").await.unwrap();
            send.finish().unwrap();
            recv.read_to_end(MAX_MESSAGE_BYTES).await.unwrap()
        });
        match Message::decode(&reply).unwrap() {
            Message::Refused(reason) => assert!(reason.contains("malformed"), "{reason}"),
            other => panic!("{other:?}"),
        }

        let a = join_in_thread(at, &ids[1], request("a", "0.0.0.0:7001"));
        let own = request("lead", "127.0.0.1:7000");
        let mut seen = Vec::new();
        // Once `a` is in, another `a` tries to join, then `b`.
        let mut rest = None;
        let members = listener
            .gather(&own, 3, &run_spec(), WAIT, |rank, j| {
                seen.push((rank, j.node.clone()));
                if j.node == "a" {
                    let id = ids[2].clone();
                    rest = Some(std::thread::spawn(move || {
                        let options = QuicOptions::default();
                        let dup = join(at, &id, &request("a", "127.0.0.1:7002"), &options, WAIT);
                        let b = join(at, &id, &request("b", "127.0.0.1:7003"), &options, WAIT);
                        (dup, b)
                    }));
                }
            })
            .unwrap();
        assert_eq!(members.len(), 3);
        assert_eq!(members[0], own);
        assert_eq!(seen, [(1, "a".to_string()), (2, "b".to_string())]);
        let addrs: Vec<SocketAddr> = members.iter().map(|m| m.addr).collect();
        // `a` reported the unspecified address: read as the loopback it came from.
        assert_eq!(addrs[1..], [addr("127.0.0.1:7001"), addr("127.0.0.1:7003")]);

        let a = a.join().unwrap().unwrap();
        let (dup, b) = rest.unwrap().join().unwrap();
        let dup = dup.unwrap_err();
        assert!(
            matches!(&dup, RendezvousError::Refused { reason, .. } if reason.contains("`a` has already joined")),
            "{dup}"
        );
        let b = b.unwrap();
        for (rank, start) in [(1, &a), (2, &b)] {
            assert_eq!(start.rank, rank);
            assert_eq!(start.world, 3);
            assert_eq!(start.generation, FIRST_GENERATION);
            assert_eq!(start.members, addrs);
            assert_eq!(start.run, run_spec());
        }

        let late = join(
            at,
            &ids[2],
            &request("c", "127.0.0.1:7004"),
            &QuicOptions::default(),
            WAIT,
        )
        .unwrap_err();
        assert!(
            matches!(&late, RendezvousError::Refused { reason, .. } if reason.contains("already started")),
            "{late}"
        );
        assert!(
            listener
                .gather(&own, 3, &run_spec(), WAIT, |_, _| ())
                .is_err()
        );
    }

    #[test]
    fn gather_times_out_and_refuses_those_who_joined() {
        let ids = cluster(&["lead", "a"]);
        let (mut listener, at) = listen(&ids[0]);
        let a = join_in_thread(at, &ids[1], request("a", "127.0.0.1:7001"));
        let e = listener
            .gather(
                &request("lead", "127.0.0.1:7000"),
                3,
                &run_spec(),
                Duration::from_secs(2),
                |_, _| (),
            )
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("1 more node(s) to join (2 of 3 joined)"),
            "{e}"
        );
        let e = a.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("timed out with 2 of 3 nodes"), "{e}");
    }

    #[test]
    fn a_node_of_another_cluster_fails_the_handshake() {
        let ours = cluster(&["lead"]);
        let theirs = cluster(&["x"]);
        let (_listener, at) = listen(&ours[0]);
        let e = join(
            at,
            &theirs[0],
            &request("x", "127.0.0.1:7001"),
            &QuicOptions::default(),
            WAIT,
        )
        .unwrap_err();
        assert!(matches!(e, RendezvousError::Handshake { .. }), "{e}");
        assert!(e.to_string().contains("cluster CA"), "{e}");
    }
}
