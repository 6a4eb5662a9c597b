//! Long-running `shoal` processes (nodes, coordinators) whose stderr is read line
//! by line, and a cluster of certificates for them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use super::{assert_ok, shoal};

/// How long any process may take.
pub const PATIENCE: Duration = Duration::from_secs(240);

/// A running `shoal` process whose stderr lines arrive on a channel; killed when
/// dropped.
pub struct Proc {
    child: Child,
    lines: Receiver<String>,
    /// Its stderr so far.
    pub stderr: String,
}

impl Proc {
    /// Starts `shoal ARGS` in `cwd`.
    pub fn spawn(args: &[&str], cwd: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(args)
            .current_dir(cwd)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the shoal binary runs");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            stderr: String::new(),
        }
    }

    /// Reads stderr up to the first line containing `needle`.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr.push_str(&line);
                    self.stderr.push('\n');
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no `{needle}` from the process; stderr:\n{}", self.stderr),
            }
        }
    }

    /// The word after `marker` in the first stderr line that has it.
    pub fn word_after(&mut self, marker: &str) -> String {
        let line = self.wait_for(marker);
        let rest = line.split(marker).nth(1).unwrap();
        let word = rest.split_whitespace().next().unwrap();
        word.to_string()
    }

    /// Kills the process at once (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to end; whether it succeeded, and all its stderr.
    pub fn finish(mut self) -> (bool, String) {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the process hangs; stderr:\n{}", self.stderr);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader thread ends with the pipe.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            self.stderr.push_str(&line);
            self.stderr.push('\n');
        }
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        (status.success(), std::mem::take(&mut self.stderr))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `shoal cluster init DIR/ca`, then a directory `DIR/NAME` per name with its
/// certificate, the CA's certificate and the cluster token.
pub fn cluster(dir: &Path, ca: &str, names: &[&str]) {
    assert_ok(&shoal(&["cluster", "init", ca], dir));
    for name in names {
        assert_ok(&shoal(
            &["cluster", "issue", ca, "--node", name, "--out", name],
            dir,
        ));
    }
}

/// An HTTP/1.1 request to `addr` (`Connection: close`); the status code and body.
pub fn http(addr: &str, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("the control plane answers");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let code = reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = reply
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (code, body)
}

/// `GET /status` of a control plane, as JSON (`None` while it does not answer).
pub fn status(addr: &str) -> Option<serde_json::Value> {
    let (code, body) = http(addr, "GET", "/status", &[], "");
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}
