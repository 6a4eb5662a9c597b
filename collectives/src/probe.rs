//! The raw QUIC ceiling: how fast one quinn stream moves bytes from one node
//! to another with the cluster's mutual TLS and the flow-control window of
//! [`QuicOptions`], with no framing and no copying by either side. The QUIC
//! transport's per-link bandwidth is measured against it
//! (`shoal bench collectives`).
//!
//! Both ends use the transport and endpoint settings a [`crate::QuicNode`]
//! derives from the same options (windows, keep-alives, socket buffers).
//! A [`StreamSink`] binds an endpoint of its own (not a [`crate::QuicNode`]'s:
//! that one's accept loop expects ring hellos), accepts one connection and
//! drains its first unidirectional stream with `read_chunk`, discarding the
//! data. [`stream_to`] connects to a sink and writes `bytes` bytes as
//! `Bytes` clones of one 1 MiB buffer with `write_chunk`, so the sender never
//! copies.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{Endpoint, VarInt};

use crate::error::CollectiveError;
use crate::quic::{QuicOptions, endpoint, runtime, transport_config};
use crate::tls::{NodeIdentity, SERVER_NAME};

/// Size of the buffer the source sends clones of.
const PIECE: usize = 1 << 20;

/// What one side of a probe measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probed {
    /// Payload bytes moved.
    pub bytes: u64,
    /// Seconds from the first byte to the last: for the source, from opening
    /// the stream until the sink acknowledged all data; for the sink, from
    /// accepting the stream until its end.
    pub seconds: f64,
}

fn network(what: &str, e: impl std::fmt::Display) -> CollectiveError {
    CollectiveError::Network(format!("{what}: {e}"))
}

fn timeout(what: &'static str, after: Duration) -> CollectiveError {
    CollectiveError::Timeout {
        op: what,
        waiting_for: usize::MAX,
        after,
    }
}

/// The receiving end of a stream probe: an endpoint that accepts one
/// connection from a node of the same cluster and discards what it sends.
pub struct StreamSink {
    runtime: tokio::runtime::Runtime,
    endpoint: Endpoint,
}

impl StreamSink {
    /// Binds `addr` (port 0 picks a free port) with this node's identity.
    pub fn bind(
        addr: SocketAddr,
        identity: &NodeIdentity,
        options: &QuicOptions,
    ) -> Result<Self, CollectiveError> {
        let mut server = identity.server_config()?;
        server.transport_config(transport_config(options)?);
        let runtime = runtime("shoal-probe")?;
        let endpoint = endpoint(&runtime, addr, Some(server))?;
        Ok(Self { runtime, endpoint })
    }

    /// The address a source connects to.
    pub fn local_addr(&self) -> Result<SocketAddr, CollectiveError> {
        self.endpoint
            .local_addr()
            .map_err(|e| network("local address", e))
    }

    /// Accepts one connection, reads its first unidirectional stream to the
    /// end and waits for the source to close; fails at `limit`.
    pub fn drain(&self, limit: Duration) -> Result<Probed, CollectiveError> {
        let endpoint = self.endpoint.clone();
        let drain = async move {
            let incoming = endpoint
                .accept()
                .await
                .ok_or_else(|| network("accept", "endpoint closed"))?;
            let conn = incoming.await.map_err(|e| network("handshake", e))?;
            let mut recv = conn
                .accept_uni()
                .await
                .map_err(|e| network("accept stream", e))?;
            let start = Instant::now();
            let mut bytes = 0u64;
            while let Some(chunk) = recv
                .read_chunk(usize::MAX, true)
                .await
                .map_err(|e| network("read", e))?
            {
                bytes += chunk.bytes.len() as u64;
            }
            let seconds = start.elapsed().as_secs_f64();
            // The source closes once it saw every byte acknowledged; closing
            // first could fail its wait.
            conn.closed().await;
            Ok(Probed { bytes, seconds })
        };
        self.runtime
            .block_on(async { tokio::time::timeout(limit, drain).await })
            .map_err(|_| timeout("stream sink", limit))?
    }
}

impl Drop for StreamSink {
    fn drop(&mut self) {
        self.endpoint.close(VarInt::from_u32(0), b"probe done");
    }
}

/// Connects to the [`StreamSink`] at `addr` and sends it `bytes` bytes on one
/// stream; fails at `limit`.
pub fn stream_to(
    addr: SocketAddr,
    identity: &NodeIdentity,
    options: &QuicOptions,
    bytes: u64,
    limit: Duration,
) -> Result<Probed, CollectiveError> {
    let mut client = identity.client_config()?;
    client.transport_config(transport_config(options)?);
    let runtime = runtime("shoal-probe")?;
    let local = SocketAddr::new(
        match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        },
        0,
    );
    let endpoint = endpoint(&runtime, local, None)?;
    let piece = Bytes::from(vec![0xa5u8; PIECE]);
    let source = {
        let endpoint = endpoint.clone();
        async move {
            let conn = endpoint
                .connect_with(client, addr, SERVER_NAME)
                .map_err(|e| network(&format!("connect to {addr}"), e))?
                .await
                .map_err(|e| network(&format!("handshake with {addr}"), e))?;
            let start = Instant::now();
            let mut send = conn
                .open_uni()
                .await
                .map_err(|e| network("open stream", e))?;
            let mut left = bytes;
            while left > 0 {
                let n = left.min(PIECE as u64) as usize;
                send.write_chunk(piece.slice(..n))
                    .await
                    .map_err(|e| network("write", e))?;
                left -= n as u64;
            }
            send.finish().map_err(|e| network("finish", e))?;
            match send.stopped().await {
                Ok(None) => {}
                Ok(Some(code)) => return Err(network("stream", format!("stopped with {code}"))),
                Err(e) => return Err(network("stream", e)),
            }
            let seconds = start.elapsed().as_secs_f64();
            conn.close(VarInt::from_u32(0), b"probe done");
            Ok(Probed { bytes, seconds })
        }
    };
    let result = runtime
        .block_on(async { tokio::time::timeout(limit, source).await })
        .map_err(|_| timeout("stream source", limit))?;
    // Let the close reach the sink before the runtime goes away.
    runtime.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    });
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ClusterCa;

    #[test]
    fn a_stream_arrives_whole() {
        let ca = ClusterCa::generate("probe-test").expect("CA");
        let (a, b) = (ca.issue("a").expect("a"), ca.issue("b").expect("b"));
        let options = QuicOptions::default();
        let sink = StreamSink::bind("127.0.0.1:0".parse().expect("addr"), &a, &options)
            .expect("sink binds");
        let addr = sink.local_addr().expect("address");
        let limit = Duration::from_secs(20);
        let bytes = 3 * PIECE as u64 + 12345;
        let drained = std::thread::spawn(move || sink.drain(limit));
        let sent = stream_to(addr, &b, &options, bytes, limit).expect("stream sent");
        let got = drained
            .join()
            .expect("sink thread")
            .expect("stream drained");
        assert_eq!(sent.bytes, bytes);
        assert_eq!(got.bytes, bytes);
    }
}
