//! What the control plane's integration tests share: a fake coordinator and a
//! raw HTTP/1.1 client over `std::net::TcpStream`.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_control::{Cluster, ClusterStatus, ControlPlane, DrainError, Event, Member};

/// The token the fake cluster's control plane is started with.
pub const TOKEN: &str = "s3cret-cluster-token";

/// A coordinator with a fixed snapshot that records the drains asked of it.
pub struct FakeCluster {
    /// What `status` returns.
    pub snapshot: ClusterStatus,
    /// The nodes drained so far, in order.
    pub drained: Mutex<Vec<String>>,
}

impl FakeCluster {
    /// Three members (one of them refuses to drain), a falling loss curve, three events.
    pub fn new() -> Self {
        let member = |name: &str, rank: Option<u32>, state: &str, ms: u64| Member {
            name: name.into(),
            rank,
            addr: format!("10.0.0.{}:7070", name.len()),
            state: state.into(),
            since_heartbeat_ms: ms,
        };
        let losses: Vec<(u64, f32)> = (0..40u64)
            .map(|step| (step, 10.0 * (-(step as f32) / 15.0).exp() + 3.25))
            .collect();
        let event = |seconds: f64, step: u64, kind: &str, detail: &str| Event {
            seconds,
            step,
            kind: kind.into(),
            detail: detail.into(),
        };
        Self {
            snapshot: ClusterStatus {
                run: "fake-run".into(),
                generation: 3,
                world: 2,
                step: 39,
                max_steps: 100,
                loss: losses.last().map(|&(_, loss)| loss),
                tokens_per_s: Some(12_345.5),
                members: vec![
                    member("node-alpha", Some(0), "active", 120),
                    member("node-bravo", Some(1), "active", 340),
                    member("node-charlie", None, "draining", 9_000),
                ],
                losses,
                events: vec![
                    event(0.5, 0, "join", "node-alpha joined"),
                    event(12.0, 20, "failure", "node-charlie stopped answering"),
                    event(13.5, 20, "generation", "generation 3: 2 ranks"),
                ],
                finished: false,
                recompute: None,
            },
            drained: Mutex::new(Vec::new()),
        }
    }
}

impl Cluster for FakeCluster {
    fn status(&self) -> ClusterStatus {
        self.snapshot.clone()
    }

    fn drain(&self, node: &str) -> Result<String, DrainError> {
        match node {
            "node-alpha" | "node-bravo" => {
                self.drained.lock().unwrap().push(node.to_owned());
                Ok(format!("{node} leaves at the next step boundary"))
            }
            "node-charlie" => Err(DrainError::Refused(format!("{node} is already draining"))),
            other => Err(DrainError::Unknown(other.to_owned())),
        }
    }
}

/// A control plane on a free port of 127.0.0.1 serving a fresh [`FakeCluster`].
pub fn start() -> (ControlPlane, Arc<FakeCluster>) {
    let cluster = Arc::new(FakeCluster::new());
    let plane = ControlPlane::start(
        "127.0.0.1:0".parse().unwrap(),
        TOKEN.into(),
        Arc::clone(&cluster) as Arc<dyn Cluster>,
    )
    .expect("control plane starts");
    (plane, cluster)
}

/// An HTTP response as read off the wire.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lower-cased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: String,
}

impl Response {
    /// The first header called `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// Sends one HTTP/1.1 request with `Connection: close` and reads the response to the end.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    raw_request(addr, &out)
}

/// Sends `bytes` as they are and reads the response to the end.
pub fn raw_request(addr: SocketAddr, bytes: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The server may answer (and close) before reading all of an oversized
    // body; the response is what matters.
    let _ = stream.write_all(bytes);
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the response");
    parse(&raw)
}

/// `GET path`.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[], b"")
}

/// `POST /scale` with `body` and, when given, `Authorization: Bearer token`.
pub fn scale(addr: SocketAddr, token: Option<&str>, body: &str) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    request(addr, "POST", "/scale", &headers, body.as_bytes())
}

/// Splits a raw response into status, headers and body.
fn parse(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Response {
        status,
        headers,
        body,
    }
}

/// Undoes `Transfer-Encoding: chunked`.
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    body
}
