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

/// Both sides of one raw QUIC stream probe ([`stream_probe`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamProbe {
    /// Bytes sent.
    pub bytes: u64,
    /// The sender's seconds, from opening the stream until every byte was acknowledged.
    pub sender_s: f64,
    /// The receiver's seconds, from accepting the stream until its end.
    pub receiver_s: f64,
    /// CPU seconds the sending process used meanwhile (Linux only).
    pub sender_cpu_s: Option<f64>,
    /// CPU seconds the receiving process used meanwhile (Linux only).
    pub receiver_cpu_s: Option<f64>,
}

fn expect_event(w: &RingWorker, event: &str, timeout: Duration) -> io::Result<Value> {
    let e = w.outcome(timeout)?;
    if e["event"] == event {
        Ok(e)
    } else {
        Err(fail(format!("{}: expected `{event}`, got {e}", w.node)))
    }
}

/// Sends `bytes` bytes from `source` to `sink` on one raw QUIC stream (the
/// workers' `stream_source` and `stream_sink` requests): the single-stream
/// ceiling of the QUIC transport between them.
pub fn stream_probe(
    sink: &mut RingWorker,
    source: &mut RingWorker,
    bytes: u64,
    timeout: Duration,
) -> io::Result<StreamProbe> {
    let timeout_ms = timeout.as_millis() as u64;
    sink.send(&json!({"cmd": "stream_sink", "timeout_ms": timeout_ms}))?;
    let addr = expect_event(sink, "sink", Duration::from_secs(20))?["addr"].clone();
    source.send(
        &json!({"cmd": "stream_source", "addr": addr, "bytes": bytes,
                        "timeout_ms": timeout_ms}),
    )?;
    let wait = timeout + Duration::from_secs(5);
    let streamed = expect_event(source, "streamed", wait)?;
    let drained = expect_event(sink, "drained", wait)?;
    let seconds = |e: &Value| {
        e["seconds"]
            .as_f64()
            .ok_or_else(|| fail(format!("no seconds in {e}")))
    };
    if drained["bytes"].as_u64() != Some(bytes) {
        return Err(fail(format!("sent {bytes} bytes, the sink got {drained}")));
    }
    Ok(StreamProbe {
        bytes,
        sender_s: seconds(&streamed)?,
        receiver_s: seconds(&drained)?,
        sender_cpu_s: streamed["cpu_s"].as_f64(),
        receiver_cpu_s: drained["cpu_s"].as_f64(),
    })
}

/// CPU time (user + system, all threads) this process used so far, from
/// `/proc/self/stat` (Linux; `None` elsewhere). Resolution is one clock tick,
/// taken to be 10 ms (`CLK_TCK` = 100, as on every mainstream Linux).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces:
    // state is field 3, utime field 14, stime field 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}
