//! The QUIC transport, for ranks in different processes or hosts.
//!
//! Each process runs one [`QuicNode`]: a quinn endpoint that is both server
//! and client, with mutual TLS against the cluster CA ([`crate::tls`]), so a
//! peer without a certificate signed by the cluster's CA cannot connect, in
//! either direction. Forming a communicator for a generation opens one
//! connection to the next rank of the ring (one stream, data flows one way)
//! and takes the connection the previous rank opened. The first frame on a
//! link is a hello (generation, from, to, world), acknowledged by the
//! receiver once it formed its side, so a ring is complete when every link
//! was acknowledged.
//!
//! On a link, a writer task sends frames queued by the ring driver (the
//! driver never waits for the network to send), and a reader task decodes
//! frames with hard limits and hands them to the driver. A peer that dies is
//! noticed by QUIC's idle timeout (keep-alives run underneath) or at once
//! when its connection closes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use quinn::{Connection, Endpoint, RecvStream, SendStream, TransportConfig, VarInt};

use crate::comm::Communicator;
use crate::engine::{CommConfig, Engine};
use crate::error::{CollectiveError, FrameError};
use crate::frame::{FrameHeader, FrameKind, HEADER_LEN, Hello, MAX_HELLO_LEN};
use crate::tls::{NodeIdentity, SERVER_NAME};
use crate::transport::{Alone, Consume, Delivery, Transport, interrupted};

/// Network settings of a [`QuicNode`].
#[derive(Debug, Clone)]
pub struct QuicOptions {
    /// A connection silent this long is dead.
    pub idle_timeout: Duration,
    /// Keep-alive interval, well under `idle_timeout`.
    pub keep_alive: Duration,
    /// Flow-control window of a stream and of a connection, in bytes.
    pub window: u64,
    /// How long an accepted connection may take to send its hello.
    pub hello_timeout: Duration,
}

impl Default for QuicOptions {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_millis(500),
            window: 64 << 20,
            hello_timeout: Duration::from_secs(10),
        }
    }
}

fn network(what: &str, e: impl std::fmt::Display) -> CollectiveError {
    CollectiveError::Network(format!("{what}: {e}"))
}

/// The transport settings every endpoint of a node uses for `options`.
pub(crate) fn transport_config(
    options: &QuicOptions,
) -> Result<Arc<TransportConfig>, CollectiveError> {
    let mut transport = TransportConfig::default();
    let window = VarInt::from_u64(options.window).map_err(|e| network("window", e))?;
    transport
        .max_idle_timeout(Some(
            options
                .idle_timeout
                .try_into()
                .map_err(|e| network("idle timeout", e))?,
        ))
        .keep_alive_interval(Some(options.keep_alive))
        .stream_receive_window(window)
        .receive_window(window)
        .send_window(options.window);
    Ok(Arc::new(transport))
}

/// Requested UDP socket buffer size, each direction.
const SOCKET_BUFFER: usize = 4 << 20;

/// The tokio runtime of a node: two worker threads.
pub(crate) fn runtime(name: &str) -> Result<tokio::runtime::Runtime, CollectiveError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| network("tokio runtime", e))
}

/// A quinn endpoint on `addr`, with large socket buffers.
pub(crate) fn endpoint(
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> Result<Endpoint, CollectiveError> {
    let config = quinn::EndpointConfig::default();
    let _guard = runtime.enter();
    let socket =
        std::net::UdpSocket::bind(addr).map_err(|e| network(&format!("bind {addr}"), e))?;
    // Socket buffers large enough for a burst of a window's packets; the
    // kernel caps them at net.core.{r,w}mem_max, and a failure only costs
    // speed.
    if let Ok(state) = quinn::udp::UdpSocketState::new((&socket).into()) {
        let _ = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER);
        let _ = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER);
    }
    let io = quinn::default_runtime().ok_or_else(|| network("quinn", "no async runtime"))?;
    Endpoint::new(config, server, socket, io)
        .map_err(|e| network(&format!("endpoint on {addr}"), e))
}

/// Counters of a node's accept side.
#[derive(Debug, Default)]
struct AcceptStats {
    /// Connections refused: failed TLS (no cluster certificate), bad hello.
    rejected: AtomicU64,
    /// Links of a generation older than the newest one formed.
    stale: AtomicU64,
}

/// A link the previous rank opened, waiting to be taken.
struct IncomingLink {
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
    hello: Hello,
}

/// Links that arrived, by (generation, sender rank).
#[derive(Default)]
struct Inbox {
    links: Mutex<HashMap<(u64, u32), IncomingLink>>,
    arrived: Condvar,
    newest_generation: AtomicU64,
    stats: AcceptStats,
}

impl Inbox {
    /// The link `key` once it arrived; `None` at the deadline or once a newer
    /// generation superseded `key`'s ([`FormCanceller`]).
    fn take(&self, key: (u64, u32), deadline: Instant) -> Option<IncomingLink> {
        let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(link) = links.remove(&key) {
                return Some(link);
            }
            if self.newest_generation.load(Ordering::Relaxed) > key.0 {
                return None;
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            links = self
                .arrived
                .wait_timeout(links, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Drops links of generations older than `generation`, counting them.
    fn purge_before(&self, generation: u64) {
        let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        links.retain(|&(g, from), link| {
            let keep = g >= generation;
            if !keep {
                self.stats.stale.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    generation = g,
                    from,
                    "dropped a link of an older generation"
                );
                link.conn.close(VarInt::from_u32(2), b"stale generation");
            }
            keep
        });
    }
}

/// Cancels the forming of a node's ring of some generation from any thread: what
/// an elastic node does when the coordinator abandons that generation while the
/// ring is still forming (a member died before linking up).
#[derive(Clone)]
pub struct FormCanceller {
    inbox: Arc<Inbox>,
}

impl FormCanceller {
    /// Rings of `generation` and older stop forming (they fail at once) and their
    /// links are refused from now on.
    pub fn cancel(&self, generation: u64) {
        self.inbox
            .newest_generation
            .fetch_max(generation.saturating_add(1), Ordering::Relaxed);
        // Take the lock so a waiter between its check and its wait is not missed.
        let _links = self
            .inbox
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.inbox.arrived.notify_all();
    }

    /// Whether rings of `generation` were cancelled.
    pub fn is_cancelled(&self, generation: u64) -> bool {
        self.inbox.newest_generation.load(Ordering::Relaxed) > generation
    }
}

/// One process's QUIC endpoint: forms communicators with other nodes.
pub struct QuicNode {
    runtime: tokio::runtime::Runtime,
    endpoint: Endpoint,
    client: quinn::ClientConfig,
    inbox: Arc<Inbox>,
}

impl QuicNode {
    /// A handle that cancels the forming of rings of a given generation.
    pub fn canceller(&self) -> FormCanceller {
        FormCanceller {
            inbox: self.inbox.clone(),
        }
    }

    /// Binds `addr` (port 0 picks a free port) with this node's identity.
    pub fn bind(
        addr: SocketAddr,
        identity: &NodeIdentity,
        options: QuicOptions,
    ) -> Result<Self, CollectiveError> {
        let transport = transport_config(&options)?;
        let mut server = identity.server_config()?;
        server.transport_config(transport.clone());
        let mut client = identity.client_config()?;
        client.transport_config(transport);
        let runtime = runtime("shoal-quic")?;
        let endpoint = endpoint(&runtime, addr, Some(server))?;
        let inbox = Arc::new(Inbox::default());
        runtime.spawn(accept_loop(
            endpoint.clone(),
            inbox.clone(),
            options.hello_timeout,
        ));
        Ok(Self {
            runtime,
            endpoint,
            client,
            inbox,
        })
    }

    /// The address peers connect to.
    pub fn local_addr(&self) -> Result<SocketAddr, CollectiveError> {
        self.endpoint
            .local_addr()
            .map_err(|e| network("local address", e))
    }

    /// Connections refused so far (no cluster certificate, bad hello).
    pub fn rejected_connections(&self) -> u64 {
        self.inbox.stats.rejected.load(Ordering::Relaxed)
    }

    /// Links of older generations dropped so far.
    pub fn stale_links(&self) -> u64 {
        self.inbox.stats.stale.load(Ordering::Relaxed)
    }

    /// Forms the ring of `generation` over `members` (node addresses in ring
    /// order) as rank `rank`. Every member must call this with the same
    /// list; it returns once both of this rank's links are up, or fails at
    /// `config.timeout`.
    pub fn communicator(
        &self,
        generation: u64,
        members: &[SocketAddr],
        rank: usize,
        config: CommConfig,
    ) -> Result<Communicator, CollectiveError> {
        config.validate()?;
        let world = members.len();
        if rank >= world {
            return Err(CollectiveError::InvalidArgument(format!(
                "rank {rank} in a world of {world}"
            )));
        }
        let transport: Box<dyn Transport> = if world == 1 {
            Box::new(Alone)
        } else {
            Box::new(self.link_up(generation, members, rank, &config)?)
        };
        Ok(Communicator::new(Engine::new(
            rank, world, generation, transport, config,
        )))
    }

    fn link_up(
        &self,
        generation: u64,
        members: &[SocketAddr],
        rank: usize,
        config: &CommConfig,
    ) -> Result<QuicTransport, CollectiveError> {
        let world = members.len();
        let next = (rank + 1) % world;
        let prev = (rank + world - 1) % world;
        self.inbox
            .newest_generation
            .fetch_max(generation, Ordering::Relaxed);
        self.inbox.purge_before(generation);
        let deadline = Instant::now() + config.timeout;
        let hello = Hello {
            from: rank as u32,
            to: next as u32,
            world: world as u32,
        };
        let connecting = self.runtime.spawn(connect_next(
            self.endpoint.clone(),
            self.client.clone(),
            members[next],
            generation,
            hello,
            config.timeout,
        ));
        let incoming = self
            .inbox
            .take((generation, prev as u32), deadline)
            .ok_or_else(|| {
                if self.inbox.newest_generation.load(Ordering::Relaxed) > generation {
                    CollectiveError::Aborted { generation }
                } else {
                    CollectiveError::Timeout {
                        op: "form ring",
                        waiting_for: prev,
                        after: config.timeout,
                    }
                }
            });
        let incoming = match incoming {
            Ok(link) => link,
            Err(e) => {
                connecting.abort();
                return Err(e);
            }
        };
        let expected = Hello {
            from: prev as u32,
            to: rank as u32,
            world: world as u32,
        };
        if incoming.hello != expected {
            connecting.abort();
            incoming
                .conn
                .close(VarInt::from_u32(3), b"unexpected hello");
            return Err(CollectiveError::BadFrame {
                rank: prev,
                source: FrameError::BadHello(format!(
                    "got {:?}, expected {expected:?}",
                    incoming.hello
                )),
            });
        }
        let IncomingLink {
            conn: prev_conn,
            send: mut ack,
            recv,
            ..
        } = incoming;
        // Tell the previous rank its link is accepted.
        self.runtime
            .block_on(async { ack.write_all(&[1]).await })
            .map_err(|e| network("acknowledging the previous rank", e))?;
        let (next_conn, send) = self
            .runtime
            .block_on(connecting)
            .map_err(|e| network("connect task", e))??;

        let write_failed = Arc::new(AtomicBool::new(false));
        let (to_writer, writes) = tokio::sync::mpsc::unbounded_channel();
        self.runtime
            .spawn(write_loop(send, writes, write_failed.clone(), ack));
        let (frames_tx, frames) = unbounded();
        let (pool_tx, pool_rx) = bounded(16);
        self.runtime
            .spawn(read_loop(recv, frames_tx, pool_rx, config.max_frame_bytes));
        Ok(QuicTransport {
            rank,
            world,
            to_writer,
            write_failed,
            frames,
            pool: pool_tx,
            send_pool: bounded(16),
            conns: [next_conn, prev_conn],
        })
    }
}

impl Drop for QuicNode {
    fn drop(&mut self) {
        self.endpoint
            .close(VarInt::from_u32(0), b"node shutting down");
    }
}

async fn accept_loop(endpoint: Endpoint, inbox: Arc<Inbox>, hello_timeout: Duration) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(accept_one(incoming, inbox.clone(), hello_timeout));
    }
}

/// Takes one incoming connection: TLS (done by quinn against the cluster
/// CA), then the hello on its first stream.
async fn accept_one(incoming: quinn::Incoming, inbox: Arc<Inbox>, hello_timeout: Duration) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            inbox.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%remote, error = %e, "refused a connection");
            return;
        }
    };
    let hello = tokio::time::timeout(hello_timeout, read_hello(&conn)).await;
    let (generation, hello, send, recv) = match hello {
        Ok(Ok(link)) => link,
        Ok(Err(e)) => {
            inbox.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%remote, error = %e, "refused a link with a bad hello");
            conn.close(VarInt::from_u32(1), b"bad hello");
            return;
        }
        Err(_) => {
            inbox.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%remote, "refused a link that sent no hello in time");
            conn.close(VarInt::from_u32(1), b"no hello");
            return;
        }
    };
    if generation < inbox.newest_generation.load(Ordering::Relaxed) {
        inbox.stats.stale.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%remote, generation, "refused a link of an older generation");
        conn.close(VarInt::from_u32(2), b"stale generation");
        return;
    }
    let mut links = inbox.links.lock().unwrap_or_else(PoisonError::into_inner);
    links.insert(
        (generation, hello.from),
        IncomingLink {
            conn,
            send,
            recv,
            hello,
        },
    );
    drop(links);
    inbox.arrived.notify_all();
}

async fn read_hello(
    conn: &Connection,
) -> Result<(u64, Hello, SendStream, RecvStream), CollectiveError> {
    let (send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| network("accept stream", e))?;
    let mut head = [0u8; HEADER_LEN];
    recv.read_exact(&mut head)
        .await
        .map_err(|e| network("read hello", e))?;
    let header = FrameHeader::decode(&head, MAX_HELLO_LEN).map_err(|e| bad_hello(e.to_string()))?;
    if header.kind != FrameKind::Hello {
        return Err(bad_hello(format!("first frame is {:?}", header.kind)));
    }
    let mut payload = vec![0u8; header.len as usize];
    recv.read_exact(&mut payload)
        .await
        .map_err(|e| network("read hello", e))?;
    let hello = Hello::decode(&payload).map_err(|e| bad_hello(e.to_string()))?;
    Ok((header.generation, hello, send, recv))
}

fn bad_hello(reason: String) -> CollectiveError {
    CollectiveError::BadFrame {
        rank: usize::MAX,
        source: FrameError::BadHello(reason),
    }
}

/// Connects to the next rank, sends the hello and waits for its
/// acknowledgement.
async fn connect_next(
    endpoint: Endpoint,
    client: quinn::ClientConfig,
    addr: SocketAddr,
    generation: u64,
    hello: Hello,
    timeout: Duration,
) -> Result<(Connection, SendStream), CollectiveError> {
    let next = hello.to as usize;
    let link = async {
        let conn = endpoint
            .connect_with(client, addr, SERVER_NAME)
            .map_err(|e| network(&format!("connect to {addr}"), e))?
            .await
            .map_err(|e| network(&format!("handshake with {addr}"), e))?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| network(&format!("open stream to {addr}"), e))?;
        let payload = hello.encode();
        let header = FrameHeader {
            generation,
            op: 0,
            transfer: 0,
            kind: FrameKind::Hello,
            len: payload.len() as u32,
        };
        send.write_all(&header.encode())
            .await
            .map_err(|e| network("send hello", e))?;
        send.write_all(&payload)
            .await
            .map_err(|e| network("send hello", e))?;
        let mut ack = [0u8; 1];
        // A peer that refuses our certificate closes the connection here.
        recv.read_exact(&mut ack)
            .await
            .map_err(|e| network(&format!("link to {addr} refused"), e))?;
        Ok((conn, send))
    };
    tokio::time::timeout(timeout, link)
        .await
        .map_err(|_| CollectiveError::Timeout {
            op: "form ring",
            waiting_for: next,
            after: timeout,
        })?
}

/// Sends queued frames in order; on failure flags it for the driver.
async fn write_loop(
    mut send: SendStream,
    mut writes: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
    failed: Arc<AtomicBool>,
    // The accepting half of the link to the previous rank; held so that its
    // stream stays open as long as this link lives.
    _ack: SendStream,
) {
    while let Some(frame) = writes.recv().await {
        if let Err(e) = send.write_chunk(frame).await {
            tracing::warn!(error = %e, "link to the next rank failed");
            failed.store(true, Ordering::Release);
            return;
        }
    }
    // The communicator is gone: close the stream once the peer has it all.
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
}

/// What the reader task hands the driver.
enum Incoming {
    Frame(FrameHeader, Vec<u32>),
    Lost(String),
    Bad(FrameError),
}

/// Reads frames from the previous rank, checking each header before sizing
/// anything by it.
async fn read_loop(
    mut recv: RecvStream,
    frames: Sender<Incoming>,
    pool: Receiver<Vec<u32>>,
    max_frame: u32,
) {
    loop {
        let mut head = [0u8; HEADER_LEN];
        if let Err(e) = recv.read_exact(&mut head).await {
            let _ = frames.send(Incoming::Lost(e.to_string()));
            return;
        }
        let header = match FrameHeader::decode(&head, max_frame) {
            Ok(h) => h,
            Err(e) => {
                let _ = frames.send(Incoming::Bad(e));
                return;
            }
        };
        let len = header.len as usize;
        // Payloads land in u32 words so the driver can view them as f32.
        let mut buf = pool.try_recv().unwrap_or_default();
        buf.resize(len.div_ceil(4), 0);
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
        if let Err(e) = recv.read_exact(&mut bytes[..len]).await {
            let _ = frames.send(Incoming::Lost(e.to_string()));
            return;
        }
        if frames.send(Incoming::Frame(header, buf)).is_err() {
            return;
        }
    }
}

/// A frame buffer that goes back to its pool when quinn drops it (once the
/// peer acknowledged the data).
struct PooledFrame {
    frame: Vec<u8>,
    pool: Sender<Vec<u8>>,
}

impl AsRef<[u8]> for PooledFrame {
    fn as_ref(&self) -> &[u8] {
        &self.frame
    }
}

impl Drop for PooledFrame {
    fn drop(&mut self) {
        let _ = self.pool.try_send(std::mem::take(&mut self.frame));
    }
}

/// One rank's links over QUIC.
struct QuicTransport {
    rank: usize,
    world: usize,
    to_writer: tokio::sync::mpsc::UnboundedSender<Bytes>,
    write_failed: Arc<AtomicBool>,
    frames: Receiver<Incoming>,
    pool: Sender<Vec<u32>>,
    send_pool: (Sender<Vec<u8>>, Receiver<Vec<u8>>),
    conns: [Connection; 2],
}

impl QuicTransport {
    fn next(&self) -> usize {
        (self.rank + 1) % self.world
    }

    fn prev(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    fn queue(&self, header: FrameHeader, payload: &[u8]) -> Result<(), CollectiveError> {
        let lost = CollectiveError::PeerLost { rank: self.next() };
        if self.write_failed.load(Ordering::Acquire) {
            return Err(lost);
        }
        // Reuse a frame buffer quinn has finished with (fresh ones cost page
        // faults at every send).
        let mut frame = self.send_pool.1.try_recv().unwrap_or_default();
        frame.clear();
        frame.extend_from_slice(&header.encode());
        frame.extend_from_slice(payload);
        let pooled = PooledFrame {
            frame,
            pool: self.send_pool.0.clone(),
        };
        self.to_writer
            .send(Bytes::from_owner(pooled))
            .map_err(|_| lost)
    }
}

impl Transport for QuicTransport {
    unsafe fn send(
        &mut self,
        header: FrameHeader,
        data: *const u8,
        len: usize,
    ) -> Result<(), CollectiveError> {
        // SAFETY: the caller guarantees `len` readable bytes at `data`; they
        // are copied before this returns.
        let payload = unsafe { std::slice::from_raw_parts(data, len) };
        self.queue(header, payload)
    }

    fn recv(
        &mut self,
        deadline: Instant,
        interrupt: &Receiver<u32>,
        consume: &mut Consume<'_>,
    ) -> Result<Delivery, CollectiveError> {
        let prev = self.prev();
        let incoming = crossbeam_channel::select! {
            recv(self.frames) -> incoming => incoming,
            recv(interrupt) -> lost => return Err(interrupted(lost.unwrap_or(u32::MAX))),
            default(deadline.saturating_duration_since(Instant::now())) => {
                return Err(CollectiveError::Timeout {
                    op: "recv",
                    waiting_for: prev,
                    after: Duration::ZERO,
                });
            }
        };
        match incoming {
            Ok(Incoming::Frame(header, buf)) => {
                let bytes: &[u8] = bytemuck::cast_slice(&buf);
                let result = consume(&header, &bytes[..header.len as usize]);
                let _ = self.pool.try_send(buf);
                result
            }
            Ok(Incoming::Lost(reason)) => {
                tracing::warn!(rank = self.rank, prev, %reason, "link from the previous rank lost");
                Err(CollectiveError::PeerLost { rank: prev })
            }
            Ok(Incoming::Bad(source)) => Err(CollectiveError::BadFrame { rank: prev, source }),
            Err(_) => Err(CollectiveError::PeerLost { rank: prev }),
        }
    }

    fn finish(&mut self, _deadline: Instant) -> Result<(), CollectiveError> {
        // Sends were copied into the stream; only a failed link matters.
        if self.write_failed.load(Ordering::Acquire) {
            return Err(CollectiveError::PeerLost { rank: self.next() });
        }
        Ok(())
    }

    fn abort(&mut self, notice: FrameHeader) {
        let _ = self.queue(notice, &[]);
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        // The writer drains what is queued (an abort notice, say) and closes
        // its stream; the connection from the previous rank is ours to close.
        self.conns[1].close(VarInt::from_u32(0), b"communicator dropped");
    }
}
