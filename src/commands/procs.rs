//! `shoal train --procs N`: data-parallel ranks as processes of this machine.
//!
//! Rank 0 (the process the user started) makes a cluster CA and one certificate per
//! rank in a temporary directory under the run's out_dir, writes the resolved config
//! there, and starts ranks 1..N as `shoal train --config .. --proc-rank R --cluster
//! DIR` (with `--resume` when resuming). Each rank binds a QUIC endpoint and prints
//! its address on stdout; rank 0 sends every rank the member list on stdin; then all
//! form one ring and train, rank 0 writing metrics and checkpoints. A fixed-size
//! group on one machine; runs across hosts, and elastic ones, go through
//! `shoal coordinator` and `shoal node`.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use shoal::launch::make_cluster;
use shoal_actors::TRAIN_COMM_TIMEOUT;
use shoal_actors::{NoopObserver, Trainer};
use shoal_collectives::tls::NodeIdentity;
use shoal_collectives::{CommConfig, Communicator, QuicNode, QuicOptions};

/// How long rank 0 waits for another rank to load its data and report its address.
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// The deadline of forming the ring and of every training collective over QUIC. A dead
/// process is noticed much sooner (QUIC's idle timeout); this bounds the wait for one
/// that is alive but stuck, and for rank 0's evaluations and checkpoints.
const QUIC_COMM_TIMEOUT: Duration = Duration::from_secs(600);

/// The communicator settings of a rank process (here and in `shoal node`).
pub fn comm_config() -> CommConfig {
    CommConfig {
        timeout: QUIC_COMM_TIMEOUT.min(TRAIN_COMM_TIMEOUT),
        ..CommConfig::default()
    }
}

fn bind(cluster: &Path, rank: usize) -> Result<QuicNode> {
    let identity = NodeIdentity::load(cluster, &format!("node-{rank}"))?;
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    Ok(QuicNode::bind(any, &identity, QuicOptions::default())?)
}

/// The other ranks of a `--procs` run, and what must live as long as they train.
pub struct Procs {
    children: Vec<Child>,
    _node: QuicNode,
    _cluster: tempfile::TempDir,
}

/// Starts ranks 1..n and attaches rank 0's communicator to `trainer`.
pub fn start(trainer: &mut Trainer, n: usize) -> Result<Procs> {
    let out_dir = trainer.config().out_dir.clone();
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let cluster = tempfile::Builder::new()
        .prefix(".cluster-")
        .tempdir_in(&out_dir)
        .with_context(|| format!("cannot create a directory in {}", out_dir.display()))?;
    make_cluster(cluster.path(), n)?;
    let config = cluster.path().join("config.toml");
    std::fs::write(&config, trainer.config().to_toml_string())
        .with_context(|| format!("cannot write {}", config.display()))?;
    let node = bind(cluster.path(), 0)?;
    let exe = std::env::current_exe().context("cannot find the shoal executable")?;
    let mut procs = Procs {
        children: Vec::new(),
        _node: node,
        _cluster: cluster,
    };
    let mut stdins: Vec<ChildStdin> = Vec::new();
    let mut members = vec![procs._node.local_addr()?];
    for rank in 1..n {
        let mut cmd = Command::new(&exe);
        cmd.args(["train", "--config"])
            .arg(&config)
            .args(["--proc-rank", &rank.to_string(), "--cluster"])
            .arg(procs._cluster.path());
        if let Some(dir) = trainer.resumed_from() {
            cmd.arg("--resume").arg(dir);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start rank {rank}"))?;
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = child.stdout.take().context("child stdout")?;
        procs.children.push(child);
        stdins.push(stdin);
        members.push(read_address(stdout, rank)?);
    }
    let list = json!({"members": members.iter().map(|a| a.to_string()).collect::<Vec<_>>()});
    for stdin in &mut stdins {
        writeln!(stdin, "{list}").context("cannot reach a rank")?;
        stdin.flush().context("cannot reach a rank")?;
    }
    let comm = procs
        ._node
        .communicator(0, &members, 0, comm_config())
        .context("forming the ring of ranks")?;
    trainer.attach(comm);
    Ok(procs)
}

/// The address a starting rank prints, waiting at most [`START_TIMEOUT`].
fn read_address(stdout: std::process::ChildStdout, rank: usize) -> Result<SocketAddr> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(START_TIMEOUT)
        .with_context(|| format!("rank {rank} did not start within {START_TIMEOUT:?}"))?;
    let v: Value = serde_json::from_str(line.trim())
        .with_context(|| format!("rank {rank} did not report its address (it printed {line:?})"))?;
    v["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("rank {rank} reported no address: {v}"))
}

impl Procs {
    /// Waits for the other ranks to finish; fails if any of them failed.
    pub fn wait(mut self) -> Result<()> {
        for (i, child) in self.children.iter_mut().enumerate() {
            let status = child.wait().context("waiting for a rank")?;
            if !status.success() {
                bail!("rank {} failed ({status})", i + 1);
            }
        }
        self.children.clear();
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        // Rank 0 failed or was interrupted: the others must not linger.
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs rank `rank` of a `--procs` run: report the address, take the member list,
/// form the ring, train.
pub fn run_child(mut trainer: Trainer, cluster: &Path, rank: usize) -> Result<()> {
    let node = bind(cluster, rank)?;
    println!("{}", json!({"addr": node.local_addr()?.to_string()}));
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the member list")?;
    let v: Value = serde_json::from_str(line.trim()).context("the member list")?;
    let members: Vec<SocketAddr> = v["members"]
        .as_array()
        .context("the member list has no members")?
        .iter()
        .map(|a| a.as_str().and_then(|a| a.parse().ok()))
        .collect::<Option<_>>()
        .context("a member address does not parse")?;
    let comm: Communicator = node
        .communicator(0, &members, rank, comm_config())
        .context("forming the ring of ranks")?;
    trainer.attach(comm);
    trainer.run(&mut NoopObserver)?;
    Ok(())
}
