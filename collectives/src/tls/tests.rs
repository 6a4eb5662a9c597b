use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use quinn::{ConnectionError, Endpoint};
use tokio::time::timeout;

use super::*;

/// Upper bound on any single network step, so a test can never hang.
const STEP: Duration = Duration::from_secs(5);

const LOCALHOST: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create temp dir")
}

/// Asserts that `result` failed with an error whose message names `file`.
fn err_naming<T: fmt::Debug>(result: Result<T, TlsError>, file: &str) -> TlsError {
    let err = result.expect_err("expected an error");
    let message = err.to_string();
    assert!(
        message.contains(file),
        "error {message:?} does not name {file}"
    );
    err
}

#[test]
fn ca_save_load_roundtrip_and_no_overwrite() {
    let dir = tempdir();
    let ca = ClusterCa::generate("test-cluster").unwrap();
    ca.save(dir.path()).unwrap();

    let loaded = ClusterCa::load(dir.path()).unwrap();
    assert_eq!(loaded.cluster_name(), "test-cluster");
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    assert_eq!(loaded.cert, ca.cert);
    assert_eq!(loaded.key.serialize_der(), ca.key.serialize_der());

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "ca.key mode {mode:o}");
    }

    // A second CA must not replace the first, and must leave it intact.
    let other = ClusterCa::generate("test-cluster").unwrap();
    let err = err_naming(other.save(dir.path()), CA_KEY_FILE);
    assert!(matches!(err, TlsError::AlreadyExists { .. }), "{err:?}");
    let again = ClusterCa::load(dir.path()).unwrap();
    assert_eq!(again.cert_pem(), ca.cert_pem());

    // Only the three CA files, no temporary leftovers.
    let mut names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [CA_CERT_FILE, CA_KEY_FILE, CA_NAME_FILE]);
}

#[test]
fn node_identity_save_load_roundtrip() {
    let ca_dir = tempdir();
    let node_dir = tempdir();
    let ca = ClusterCa::generate("test-cluster").unwrap();
    ca.save(ca_dir.path()).unwrap();
    let node = ca.issue("worker-0").unwrap();

    // A node directory that does not exist yet gets ca.crt too.
    let dir = node_dir.path().join("nested");
    node.save(&dir, "node").unwrap();
    let loaded = NodeIdentity::load(&dir, "node").unwrap();
    assert_eq!(loaded.cert, node.cert);
    assert_eq!(loaded.ca_cert, node.ca_cert);
    assert_eq!(
        fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap(),
        ca.cert_pem()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.join("node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "node.key mode {mode:o}");
    }

    // Saving into the CA directory reuses its ca.crt; re-saving replaces.
    node.save(ca_dir.path(), "worker-0").unwrap();
    node.save(ca_dir.path(), "worker-0").unwrap();
    NodeIdentity::load(ca_dir.path(), "worker-0").unwrap();
    ClusterCa::load(ca_dir.path()).unwrap();

    // A directory holding another cluster's ca.crt is refused.
    let rogue = ClusterCa::generate("test-cluster")
        .unwrap()
        .issue("rogue")
        .unwrap();
    let err = err_naming(rogue.save(&dir, "rogue"), CA_CERT_FILE);
    assert!(matches!(err, TlsError::DifferentCa { .. }), "{err:?}");

    // Names that could escape the directory or clobber the CA's files.
    for bad in ["ca", "", "../x", "a/b", ".hidden", "sp ace"] {
        let err = node.save(&dir, bad).unwrap_err();
        assert!(
            matches!(err, TlsError::InvalidName { .. }),
            "{bad:?}: {err:?}"
        );
    }
    assert!(matches!(
        ClusterCa::generate("no/slash"),
        Err(TlsError::InvalidName { .. })
    ));
    assert!(matches!(
        ca.issue(&"x".repeat(65)),
        Err(TlsError::InvalidName { .. })
    ));
}

#[test]
fn missing_truncated_and_corrupt_files_are_named() {
    let dir = tempdir();
    let ca = ClusterCa::generate("test-cluster").unwrap();
    ca.save(dir.path()).unwrap();
    ca.issue("worker-0")
        .unwrap()
        .save(dir.path(), "node")
        .unwrap();
    let path = |name: &str| dir.path().join(name);
    let original = |name: &str| fs::read(path(name)).unwrap();
    let (ca_crt, ca_key, ca_name) = (original("ca.crt"), original("ca.key"), original("ca.name"));
    let (node_crt, node_key) = (original("node.crt"), original("node.key"));
    let restore = || {
        for (name, bytes) in [
            ("ca.crt", &ca_crt),
            ("ca.key", &ca_key),
            ("ca.name", &ca_name),
            ("node.crt", &node_crt),
            ("node.key", &node_key),
        ] {
            fs::write(path(name), bytes).unwrap();
        }
    };
    /// Turns a good file's bytes into damaged ones.
    type Damage = fn(&[u8]) -> Vec<u8>;
    let damage: [(&str, Damage); 5] = [
        ("truncated", |b: &[u8]| b[..b.len() / 2].to_vec()),
        ("empty", |_: &[u8]| Vec::new()),
        ("garbage", |_: &[u8]| b"this is not PEM\n".to_vec()),
        ("bad base64", |b: &[u8]| {
            let text = String::from_utf8(b.to_vec()).unwrap();
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            lines[1] = "!!!!".repeat(16);
            (lines.join("\n") + "\n").into_bytes()
        }),
        ("valid base64, bad DER", |b: &[u8]| {
            let text = String::from_utf8(b.to_vec()).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            format!("{}\nAAAAAAAA\n{}\n", lines[0], lines[lines.len() - 1]).into_bytes()
        }),
    ];

    for (file, bytes) in [
        ("ca.crt", &ca_crt),
        ("ca.key", &ca_key),
        ("node.crt", &node_crt),
        ("node.key", &node_key),
    ] {
        for (how, damage) in &damage {
            fs::write(path(file), damage(bytes)).unwrap();
            let result = if file.starts_with("ca") {
                ClusterCa::load(dir.path()).map(|_| ())
            } else {
                NodeIdentity::load(dir.path(), "node").map(|_| ())
            };
            let err = err_naming(result, file);
            assert!(
                matches!(err, TlsError::CorruptFile { .. }),
                "{file} {how}: {err:?}"
            );
            if file == "ca.crt" {
                let err = err_naming(NodeIdentity::load(dir.path(), "node"), file);
                assert!(
                    matches!(err, TlsError::CorruptFile { .. }),
                    "{file} {how}: {err:?}"
                );
            }
            restore();
        }
        fs::remove_file(path(file)).unwrap();
        let result = if file.starts_with("ca") {
            ClusterCa::load(dir.path()).map(|_| ())
        } else {
            NodeIdentity::load(dir.path(), "node").map(|_| ())
        };
        let err = err_naming(result, file);
        assert!(
            matches!(err, TlsError::MissingFile { .. }),
            "{file} missing: {err:?}"
        );
        restore();
    }

    fs::remove_file(path("ca.name")).unwrap();
    let err = err_naming(ClusterCa::load(dir.path()), "ca.name");
    assert!(matches!(err, TlsError::MissingFile { .. }), "{err:?}");
    fs::write(path("ca.name"), "other-cluster\n").unwrap();
    let err = err_naming(ClusterCa::load(dir.path()), "ca.name");
    assert!(matches!(err, TlsError::CaMismatch { .. }), "{err:?}");
    fs::write(path("ca.name"), "bad name\n").unwrap();
    let err = err_naming(ClusterCa::load(dir.path()), "ca.name");
    assert!(matches!(err, TlsError::CorruptFile { .. }), "{err:?}");
    restore();

    // Well-formed files that do not belong together.
    let rogue_ca = ClusterCa::generate("test-cluster").unwrap();
    let rogue = rogue_ca.issue("worker-0").unwrap();
    fs::write(path("ca.key"), rogue_ca.key.serialize_pem()).unwrap();
    let err = err_naming(ClusterCa::load(dir.path()), "ca.key");
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    restore();
    fs::write(path("node.key"), &*rogue.key_pem).unwrap();
    let err = err_naming(NodeIdentity::load(dir.path(), "node"), "node.key");
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    restore();
    fs::write(path("ca.crt"), rogue_ca.cert_pem()).unwrap();
    let err = err_naming(NodeIdentity::load(dir.path(), "node"), "node.crt");
    assert!(matches!(err, TlsError::CaMismatch { .. }), "{err:?}");
    restore();

    // Everything restored loads again.
    ClusterCa::load(dir.path()).unwrap();
    NodeIdentity::load(dir.path(), "node").unwrap();
}

/// A server endpoint on an ephemeral localhost port.
fn server(identity: &NodeIdentity) -> Endpoint {
    Endpoint::server(identity.server_config().unwrap(), LOCALHOST).unwrap()
}

/// Accepts one connection and returns the bytes of its first uni stream.
async fn receive_one(endpoint: Endpoint) -> Result<Vec<u8>, String> {
    let incoming = endpoint.accept().await.ok_or("endpoint closed")?;
    let conn = incoming.await.map_err(|e| format!("accept: {e}"))?;
    let mut recv = conn
        .accept_uni()
        .await
        .map_err(|e| format!("accept_uni: {e}"))?;
    recv.read_to_end(1 << 16)
        .await
        .map_err(|e| format!("read: {e}"))
}

/// Connects with `config` and sends `payload` on a uni stream; returns once
/// the server has acknowledged all of it.
async fn send_one(
    config: quinn::ClientConfig,
    addr: SocketAddr,
    payload: &[u8],
) -> Result<quinn::Connection, String> {
    let endpoint = Endpoint::client(LOCALHOST).map_err(|e| e.to_string())?;
    let conn = endpoint
        .connect_with(config, addr, SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut send = conn.open_uni().await.map_err(|e| e.to_string())?;
    send.write_all(payload).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    send.stopped().await.map_err(|e| e.to_string())?;
    Ok(conn)
}

#[tokio::test]
async fn nodes_of_one_cluster_connect_both_ways() {
    let dir = tempdir();
    let ca = ClusterCa::generate("test-cluster").unwrap();
    ca.save(dir.path()).unwrap();
    // Issued by a CA loaded back from disk, checked by a peer that trusts the
    // ca.crt as originally generated, and the other way round.
    let from_loaded = ClusterCa::load(dir.path())
        .unwrap()
        .issue("node-a")
        .unwrap();
    from_loaded.save(dir.path(), "node-a").unwrap();
    let from_loaded = NodeIdentity::load(dir.path(), "node-a").unwrap();
    let from_original = ca.issue("node-b").unwrap();

    for (srv, cli) in [
        (&from_loaded, &from_original),
        (&from_original, &from_loaded),
    ] {
        let endpoint = server(srv);
        let addr = endpoint.local_addr().unwrap();
        let receiver = tokio::spawn(receive_one(endpoint));
        let conn = timeout(
            STEP,
            send_one(cli.client_config().unwrap(), addr, b"hello shoal"),
        )
        .await
        .expect("client timed out")
        .expect("client failed");
        let received = timeout(STEP, receiver)
            .await
            .expect("server timed out")
            .expect("server task panicked")
            .expect("server failed");
        assert_eq!(received, b"hello shoal");

        let alpn = conn
            .handshake_data()
            .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|data| data.protocol);
        assert_eq!(alpn.as_deref(), Some(ALPN));
        conn.close(0u32.into(), b"done");
    }
}

/// Connects `client` to `srv` and asserts that both ends fail promptly with
/// an error. Returns the (server, client) error messages.
async fn assert_rejected(srv: &NodeIdentity, client: quinn::ClientConfig) -> (String, String) {
    let endpoint = server(srv);
    let addr = endpoint.local_addr().unwrap();
    let receiver = tokio::spawn(receive_one(endpoint));

    let client_side = async {
        let endpoint = Endpoint::client(LOCALHOST).map_err(|e| e.to_string())?;
        let conn = endpoint
            .connect_with(client, addr, SERVER_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| format!("connect: {e}"))?;
        // In TLS 1.3 the client finishes its handshake before the server has
        // checked the client certificate, so a rejected client may connect and
        // only then learn that the server closed the connection.
        match conn.closed().await {
            err @ (ConnectionError::ConnectionClosed(_) | ConnectionError::TransportError(_)) => {
                Err(format!("closed by peer: {err}"))
            }
            other => Ok(format!("connection ended without a TLS error: {other}")),
        }
    };
    let client_err = timeout(STEP, client_side)
        .await
        .expect("client timed out")
        .expect_err("client was not rejected");
    let server_err = timeout(STEP, receiver)
        .await
        .expect("server timed out")
        .expect("server task panicked")
        .expect_err("server accepted a connection");
    (server_err, client_err)
}

#[tokio::test]
async fn a_node_of_another_ca_is_rejected_both_ways() {
    let ca = ClusterCa::generate("test-cluster").unwrap();
    let good_server = ca.issue("server").unwrap();
    let good_client = ca.issue("client").unwrap();
    // An impostor: certificate from another CA with the same cluster name
    // (hence the same CA distinguished name: only the signature tells the CAs
    // apart), trusting the real cluster CA (ca.crt is public). Trusting the
    // real CA means the impostor itself accepts its peer, so each case below
    // exercises the honest node's check alone.
    let rogue = ClusterCa::generate("test-cluster")
        .unwrap()
        .issue("rogue")
        .unwrap();
    let impostor = NodeIdentity {
        ca_cert: good_server.ca_cert.clone(),
        ca_pem: good_server.ca_pem.clone(),
        ..rogue
    };

    // Impostor client -> honest server: the server rejects the client certificate.
    let (server_err, client_err) =
        assert_rejected(&good_server, impostor.client_config().unwrap()).await;
    assert!(
        server_err.contains("invalid peer certificate"),
        "{server_err}"
    );
    assert!(
        !server_err.contains("by peer"),
        "server did not detect it: {server_err}"
    );
    assert!(client_err.contains("by peer"), "{client_err}");

    // Honest client -> impostor server: the client rejects the server certificate.
    let (server_err, client_err) =
        assert_rejected(&impostor, good_client.client_config().unwrap()).await;
    assert!(
        client_err.contains("invalid peer certificate"),
        "{client_err}"
    );
    assert!(
        !client_err.contains("by peer"),
        "client did not detect it: {client_err}"
    );
    assert!(server_err.contains("by peer"), "{server_err}");
}

#[tokio::test]
async fn a_client_without_certificate_is_rejected() {
    let ca = ClusterCa::generate("test-cluster").unwrap();
    let good_server = ca.issue("server").unwrap();
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(root_store(&good_server.ca_cert).unwrap())
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let (server_err, client_err) = assert_rejected(&good_server, config).await;
    assert!(
        !server_err.contains("by peer"),
        "server did not detect it: {server_err}"
    );
    assert!(client_err.contains("by peer"), "{client_err}");
}
