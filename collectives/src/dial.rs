//! Dialing a peer with the cluster's TLS: the client side of every control
//! connection (a node to its coordinator, [`crate::membership`]).
//!
//! Dialing retries while the peer does not answer (it may not be up yet) and
//! stops at once on a failed TLS handshake, which means that the two ends hold
//! certificates of different cluster CAs and no retry will help.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use quinn::{Connection, ConnectionError, Endpoint};

use crate::error::CollectiveError;
use crate::tls::{SERVER_NAME, TlsError};

/// Errors of setting up a QUIC endpoint with the cluster's TLS and dialing a peer
/// with it.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The QUIC endpoint (or its runtime) could not be set up.
    #[error(transparent)]
    Endpoint(#[from] CollectiveError),
    /// This node's certificates could not be turned into a TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The TLS handshake failed: the two ends' certificates are not of one cluster CA.
    #[error(
        "the TLS handshake with {peer} failed: {reason} (are this node's certificates \
         issued by the same cluster CA as the peer's?)"
    )]
    Handshake {
        /// The other end.
        peer: SocketAddr,
        /// What TLS reported.
        reason: String,
    },
    /// The connection could not be made for another reason than TLS.
    #[error("cannot connect to {peer}: {reason}")]
    Network {
        /// The other end.
        peer: SocketAddr,
        /// What QUIC reported.
        reason: String,
    },
}

/// All interfaces and a free port, in `addr`'s address family: where a node binds
/// by default to dial `addr`.
pub fn any_port_like(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// Connects to `peer` from `endpoint`, trying again while it does not answer; the
/// caller bounds the wait. Fails at once on a failed TLS handshake.
pub(crate) async fn connect(
    endpoint: &Endpoint,
    client: quinn::ClientConfig,
    peer: SocketAddr,
) -> Result<Connection, DialError> {
    let network = |e: &dyn std::fmt::Display| DialError::Network {
        peer,
        reason: e.to_string(),
    };
    loop {
        let connecting = endpoint
            .connect_with(client.clone(), peer, SERVER_NAME)
            .map_err(|e| network(&e))?;
        match connecting.await {
            Ok(conn) => return Ok(conn),
            Err(ConnectionError::TimedOut) => {
                tracing::info!(%peer, "the peer does not answer yet; trying again");
            }
            Err(e) if is_handshake_failure(&e) => {
                return Err(DialError::Handshake {
                    peer,
                    reason: e.to_string(),
                });
            }
            Err(e) => return Err(network(&e)),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::{TransportErrorCode, VarInt};

    #[test]
    fn any_port_like_keeps_the_address_family_only() {
        let v4: SocketAddr = "10.1.2.3:7000".parse().unwrap();
        let v6: SocketAddr = "[fe80::1]:7000".parse().unwrap();
        assert_eq!(any_port_like(v4), "0.0.0.0:0".parse().unwrap());
        assert_eq!(any_port_like(v6), "[::]:0".parse().unwrap());
    }

    #[test]
    fn only_crypto_errors_are_handshake_failures() {
        let transport = |code: TransportErrorCode| ConnectionError::TransportError(code.into());
        let closed = |error_code| {
            ConnectionError::ConnectionClosed(quinn::ConnectionClose {
                error_code,
                frame_type: None,
                reason: Default::default(),
            })
        };
        // CRYPTO_ERROR is 0x100 + the TLS alert: 0 and 0xff are the range's ends, 48
        // (unknown_ca) is what a peer of another cluster CA sends.
        for alert in [0, 48, 0xff] {
            let code = TransportErrorCode::crypto(alert);
            assert!(is_handshake_failure(&transport(code)), "{alert}");
            assert!(is_handshake_failure(&closed(code)), "{alert}");
        }
        for code in [
            TransportErrorCode::PROTOCOL_VIOLATION,
            TransportErrorCode::CONNECTION_REFUSED,
        ] {
            assert!(!is_handshake_failure(&transport(code)), "{code:?}");
            assert!(!is_handshake_failure(&closed(code)), "{code:?}");
        }
        assert!(!is_handshake_failure(&ConnectionError::TimedOut));
        // An application's close code in the same numeric range is not TLS.
        assert!(!is_handshake_failure(&ConnectionError::ApplicationClosed(
            quinn::ApplicationClose {
                error_code: VarInt::from_u32(0x100),
                reason: Default::default(),
            }
        )));
    }
}
