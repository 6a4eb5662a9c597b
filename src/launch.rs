//! Starting and driving `shoal ring-worker` processes: one rank per process, talking
//! JSON lines over stdin/stdout. Used by `shoal bench collectives` and by the
//! multi-process tests; every wait has a timeout.

use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, unbounded};
use serde_json::{Value, json};
use shoal_collectives::tls::ClusterCa;

fn fail(message: String) -> io::Error {
    io::Error::other(message)
}

/// A cluster CA with one certificate per node `node-0`, `node-1`, ... in `dir`.
pub fn make_cluster(dir: &Path, nodes: usize) -> io::Result<()> {
    let ca = ClusterCa::generate("shoal-bench").map_err(|e| fail(e.to_string()))?;
    ca.save(dir).map_err(|e| fail(e.to_string()))?;
    for i in 0..nodes {
        let name = format!("node-{i}");
        ca.issue(&name)
            .and_then(|id| id.save(dir, &name))
            .map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
}

/// One `shoal ring-worker` process.
pub struct RingWorker {
    child: Child,
    stdin: ChildStdin,
    events: Receiver<Value>,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// Its node name.
    pub node: String,
}

impl RingWorker {
    /// Starts a worker with the certificate `node` from `cluster` and waits for its
    /// address.
    pub fn spawn(exe: &Path, cluster: &Path, node: &str, idle_timeout_ms: u64) -> io::Result<Self> {
        let mut child = Command::new(exe)
            .args(["ring-worker", "--node", node, "--idle-timeout-ms"])
            .arg(idle_timeout_ms.to_string())
            .arg("--cluster")
            .arg(cluster)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| fail("no stdin".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| fail("no stdout".into()))?;
        let (tx, events) = unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| json!({"event": "garbage", "line": line}));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let mut worker = Self {
            child,
            stdin,
            events,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            node: node.to_string(),
        };
        let listening = worker.event(Duration::from_secs(20))?;
        worker.addr = listening["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| fail(format!("{node}: expected its address, got {listening}")))?;
        Ok(worker)
    }

    /// Sends one request.
    pub fn send(&mut self, request: &Value) -> io::Result<()> {
        writeln!(self.stdin, "{request}")?;
        self.stdin.flush()
    }

    /// The next event the worker printed, waiting at most `timeout`.
    pub fn event(&self, timeout: Duration) -> io::Result<Value> {
        match self.events.recv_timeout(timeout) {
            Ok(v) => Ok(v),
            Err(RecvTimeoutError::Timeout) => {
                Err(fail(format!("{}: no answer within {timeout:?}", self.node)))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(fail(format!("{}: the worker exited", self.node)))
            }
        }
    }

    /// The next event other than `started`.
    pub fn outcome(&self, timeout: Duration) -> io::Result<Value> {
        loop {
            let e = self.event(timeout)?;
            if e["event"] != "started" {
                return Ok(e);
            }
        }
    }

    /// Kills the process at once (SIGKILL on unix): no goodbye to its peers.
    pub fn kill(&mut self) -> io::Result<()> {
        self.child.kill()?;
        self.child.wait().map(|_| ())
    }
}

impl Drop for RingWorker {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"cmd": "exit"}));
        let _ = self.stdin.flush();
        // Give it a moment to leave cleanly, then make sure it is gone.
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Forms generation `generation` over `workers` (ring order = slice order); returns
/// each worker's answer (`formed` or `error`).
pub fn form(
    workers: &mut [RingWorker],
    generation: u64,
    timeout: Duration,
    chunk_bytes: usize,
) -> io::Result<Vec<Value>> {
    let members: Vec<String> = workers.iter().map(|w| w.addr.to_string()).collect();
    for (rank, w) in workers.iter_mut().enumerate() {
        w.send(
            &json!({"cmd": "form", "generation": generation, "members": members,
                       "rank": rank, "timeout_ms": timeout.as_millis() as u64,
                       "chunk_bytes": chunk_bytes}),
        )?;
    }
    workers
        .iter()
        .map(|w| w.outcome(timeout + Duration::from_secs(5)))
        .collect()
}

/// Sends the same `run` request to every worker and returns their outcomes.
pub fn run_all(
    workers: &mut [RingWorker],
    request: &Value,
    timeout: Duration,
) -> io::Result<Vec<Value>> {
    for w in workers.iter_mut() {
        w.send(request)?;
    }
    workers.iter().map(|w| w.outcome(timeout)).collect()
}
