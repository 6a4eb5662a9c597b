//! `shoal node` end to end: node processes on 127.0.0.1, each with its own
//! certificate of one cluster CA and its own working directory, meet at a rendezvous
//! and train exactly like `--ranks`; a node of another cluster is refused.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

mod common;

use common::{assert_close, assert_losses_match, losses};
use shoal::actors::Checkpoint;

/// A tiny run: three steps, one row of the batch per rank of three.
const CONFIG: &str = r#"
max_steps = 3
batch_size = 3
seq_len = 32
eval_every = 2
eval_batches = 1
threads = 2
out_dir = "run"

[model]
n_layer = 1
n_embd = 32
n_head = 2

[data]
source = "builtin"
tokens_per_domain = 6000
"#;

/// How long any node process may take.
const PATIENCE: Duration = Duration::from_secs(180);

fn shoal(args: &[&str], cwd: &Path) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the shoal binary runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

/// A running `shoal node` whose stderr lines arrive on a channel.
struct Node {
    child: Child,
    lines: Receiver<String>,
    stderr: String,
}

impl Node {
    /// The listener `lead` (rank 0) in `dir/lead`, waiting for `nodes` nodes.
    fn listen(dir: &Path, nodes: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--listen", "127.0.0.1:0", "--nodes", nodes];
        args.extend_from_slice(&[
            "--cluster",
            ".",
            "--node",
            "lead",
            "--config",
            "config.toml",
        ]);
        args.extend_from_slice(extra);
        Self::spawn(&args, &dir.join("lead"))
    }

    fn spawn(args: &[&str], cwd: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .arg("node")
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
    fn wait_for(&mut self, needle: &str) -> String {
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
                Err(_) => panic!("no `{needle}` from the node; stderr:\n{}", self.stderr),
            }
        }
    }

    /// The rendezvous address a listening node reports.
    fn listen_addr(&mut self) -> String {
        let line = self.wait_for(" waiting at ");
        let rest = line.split(" waiting at ").nth(1).unwrap();
        rest.split_whitespace().next().unwrap().to_string()
    }

    /// Waits for the process to end; returns whether it succeeded, and all its stderr.
    fn finish(mut self) -> (bool, String) {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the node hangs; stderr:\n{}", self.stderr);
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

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `shoal cluster init DIR/ca`, then a node directory `DIR/NAME` per name.
fn cluster(dir: &Path, ca: &str, names: &[&str]) {
    shoal(&["cluster", "init", ca], dir);
    for name in names {
        shoal(
            &["cluster", "issue", ca, "--node", name, "--out", name],
            dir,
        );
    }
}

/// One listener and two joiners (which have nothing but their certificates) train
/// the listener's config; rank 0's losses and final weights are the `--ranks 3`
/// run's.
#[test]
fn three_nodes_train_like_three_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    cluster(dir, "ca", &["lead", "a", "b"]);
    std::fs::write(dir.join("lead/config.toml"), CONFIG).unwrap();
    let mut lead = Node::listen(dir, "3", &[]);
    let at = lead.listen_addr();
    let joiners: Vec<Node> = ["a", "b"]
        .iter()
        .map(|name| {
            Node::spawn(
                &["--join", &at, "--cluster", ".", "--node", name],
                &dir.join(name),
            )
        })
        .collect();
    lead.wait_for("joined as rank 2");
    for node in joiners {
        let (ok, err) = node.finish();
        assert!(ok, "{err}");
    }
    let (ok, err) = lead.finish();
    assert!(ok, "{err}");

    shoal(
        &[
            "train",
            "--config",
            "config.toml",
            "--ranks",
            "3",
            "--out-dir",
            "ref",
        ],
        &dir.join("lead"),
    );
    let (a, b) = (
        losses(&dir.join("lead/ref/metrics.jsonl")),
        losses(&dir.join("lead/run/metrics.jsonl")),
    );
    assert_eq!(a.len(), 3);
    assert_losses_match(&a, &b, "three nodes");
    let (p, q) = (
        Checkpoint::load(&dir.join("lead/ref/checkpoints/step-000003")).unwrap(),
        Checkpoint::load(&dir.join("lead/run/checkpoints/step-000003")).unwrap(),
    );
    assert_close(&p.params, &q.params, "three nodes");
}

/// A node whose certificate comes from another cluster CA fails the TLS handshake
/// with a clear error, and the listener never starts training with it.
#[test]
fn a_node_of_another_cluster_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    cluster(dir, "ca", &["lead"]);
    cluster(dir, "other-ca", &["intruder"]);
    std::fs::write(dir.join("lead/config.toml"), CONFIG).unwrap();
    let mut lead = Node::listen(dir, "2", &["--join-timeout", "5"]);
    let at = lead.listen_addr();
    let intruder = Node::spawn(
        &["--join", &at, "--cluster", ".", "--node", "intruder"],
        &dir.join("intruder"),
    );
    let (ok, err) = intruder.finish();
    assert!(!ok);
    assert!(err.contains("error: "), "{err}");
    assert!(err.contains("TLS handshake"), "{err}");
    assert!(err.contains("cluster CA"), "{err}");

    let (ok, err) = lead.finish();
    assert!(!ok);
    assert!(err.contains("refused a rendezvous connection"), "{err}");
    assert!(
        err.contains("timed out") && err.contains("1 more node(s) to join (1 of 2 joined)"),
        "{err}"
    );
    assert!(!dir.join("lead/run/metrics.jsonl").exists());
}
