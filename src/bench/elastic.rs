//! `shoal bench elastic`: what elasticity costs on loopback. A coordinator in this
//! process and node processes (`shoal node --join`), for the tiny model and the
//! 6-layer 384-wide one:
//! - steady state: the slowest rank's step, how much of it went to mirroring its
//!   ZeRO piece on the ring neighbour, and the committed-step wall time;
//! - a node SIGKILLed mid-run: time until the coordinator declares it lost
//!   (heartbeat timeout plus up to one check), and until the survivors commit
//!   their first step;
//! - a node started mid-run: time from its process start until it is in a formed
//!   ring, and until the first step of the larger world is committed.
//!
//! Times come from this process's clock, polling the coordinator's status every
//! 2 ms.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use shoal_actors::TrainConfig;
use shoal_actors::coordinator::{Coordinator, CoordinatorSpec, Status};
use shoal_collectives::tls::ClusterCa;

/// Flags of `shoal bench elastic`.
#[derive(Args, Debug)]
pub struct BenchElasticArgs {
    /// Models: `tiny` and/or `6x384`.
    #[arg(long, value_delimiter = ',', default_value = "tiny,6x384")]
    pub models: Vec<String>,
    /// Nodes at the start (one is killed, one joins).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Steps before the kill; as many again before the join, and after it.
    #[arg(long, default_value_t = 6)]
    pub phase: u64,
    /// Heartbeat timeout of the coordinator, milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_timeout_ms: u64,
    /// Mirror the pieces after every this many steps.
    #[arg(long, default_value_t = 1)]
    pub mirror_every: u32,
}

/// A model and batch: TOML `[model]` lines, sequences per step, tokens per sequence.
fn shape(name: &str) -> Result<(&'static str, usize, usize)> {
    Ok(match name {
        "tiny" => ("n_layer = 2\nn_embd = 128\nn_head = 4\n", 12, 128),
        "6x384" => (
            "n_layer = 6\nn_embd = 384\nn_head = 6\nvocab_size = 8192\n",
            6,
            128,
        ),
        other => bail!("unknown model `{other}` (tiny or 6x384)"),
    })
}

/// What one model's run measured.
struct Measured {
    params: usize,
    rank_step: f64,
    mirror: f64,
    commit_step: f64,
    detect: f64,
    recover: f64,
    join_ready: f64,
    join_commit: f64,
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// Polls the coordinator every 2 ms until `until` holds; panics into an error after
/// five minutes.
fn poll(c: &Coordinator, what: &str, until: impl Fn(&Status) -> bool) -> Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if until(&c.status()) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn node(dir: &Path, at: &str, name: &str) -> Result<Child> {
    Command::new(std::env::current_exe()?)
        .args(["node", "--join", at, "--cluster", "certs", "--node", name])
        .current_dir(dir)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting a node process")
}

fn measure(a: &BenchElasticArgs, model: &str) -> Result<Measured> {
    let (model_toml, batch, seq_len) = shape(model)?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let certs = dir.join("certs");
    let ca = ClusterCa::generate("bench")?;
    ca.save(&certs)?;
    let names: Vec<String> = (0..=a.nodes).map(|i| format!("n{i}")).collect();
    for n in names.iter().map(String::as_str).chain(["coordinator"]) {
        ca.issue(n)?.save(&certs, n)?;
    }
    let token = "bench-token";
    std::fs::write(certs.join("token"), token)?;
    let steps = 3 * a.phase + 4;
    let text = format!(
        "max_steps = {steps}\nbatch_size = {batch}\nseq_len = {seq_len}\neval_every = 0\n\
         checkpoint_every = 0\nthreads = 1\nzero = 2\nout_dir = \"{}\"\n\n[model]\n{model_toml}\n\
         [data]\nsource = \"builtin\"\ntokens_per_domain = 20000\n",
        dir.join("run").display()
    );
    let config = TrainConfig::from_toml_str(&text, Path::new("<bench>"))?;
    let params = config.model.resolve()?.num_params();
    let coordinator = Coordinator::start(CoordinatorSpec {
        config,
        min_nodes: a.nodes,
        max_nodes: a.nodes + 1,
        token: token.into(),
        heartbeat_timeout: Duration::from_millis(a.heartbeat_timeout_ms),
        listen: "127.0.0.1:0".parse()?,
        identity: ca.issue("coordinator")?,
        resume: false,
        first: None,
        mirror_every: a.mirror_every,
    })?;
    let at = coordinator.addr().to_string();
    let mut children: Vec<Child> = names[..a.nodes]
        .iter()
        .map(|n| node(dir, &at, n))
        .collect::<Result<_>>()?;
    let result = (|| {
        let k = a.phase;
        poll(&coordinator, "the first steps", |s| s.step >= k)?;
        let killed = Instant::now();
        children[a.nodes - 1].kill()?;
        let lost = poll(&coordinator, "the failure", |s| {
            s.events.iter().any(|e| e.kind == "failure")
        })?;
        let after = coordinator.status().step;
        let recovered = poll(&coordinator, "a step after the failure", |s| s.step > after)?;
        poll(&coordinator, "more steps", |s| s.step > 2 * k)?;
        let joined = Instant::now();
        children.push(node(dir, &at, &names[a.nodes])?);
        let world = a.nodes as u32;
        let ready = poll(&coordinator, "the joined node's ring", |s| {
            s.world == world && s.events.last().is_some_and(|e| e.kind == "ready")
        })?;
        let at_join = coordinator.status().step;
        let grown = poll(&coordinator, "a step of the larger world", |s| {
            s.step > at_join
        })?;
        poll(&coordinator, "the end", |s| s.finished)?;
        Ok::<_, anyhow::Error>((
            lost - killed,
            recovered - killed,
            ready - joined,
            grown - joined,
        ))
    })();
    let (detect, recover, join_ready, join_commit) = match result {
        Ok(t) => t,
        Err(e) => {
            for c in &mut children {
                let _ = c.kill();
            }
            return Err(e);
        }
    };
    drop(coordinator.wait());
    for c in &mut children {
        let _ = c.wait();
    }
    // Steady state: steps of the first generation after the first two.
    let text = std::fs::read_to_string(dir.join("run/commits.jsonl"))?;
    let (mut rank, mut mirror) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if v["generation"] == 1 && v["step"].as_u64().unwrap_or(0) > 2 {
            rank.push(v["rank_seconds"].as_f64().unwrap_or(f64::NAN));
            mirror.push(v["mirror_seconds"].as_f64().unwrap_or(f64::NAN));
        }
    }
    let metrics = shoal_actors::read_metrics(&dir.join("run/metrics.jsonl"))?;
    let walls: Vec<f64> = metrics
        .iter()
        .filter_map(|r| match r {
            shoal_actors::MetricsRecord::Step(s) if s.step > 2 && s.step <= a.phase => {
                Some(s.seconds)
            }
            _ => None,
        })
        .collect();
    Ok(Measured {
        params,
        rank_step: mean(&rank),
        mirror: mean(&mirror),
        commit_step: mean(&walls),
        detect: detect.as_secs_f64(),
        recover: recover.as_secs_f64(),
        join_ready: join_ready.as_secs_f64(),
        join_commit: join_commit.as_secs_f64(),
    })
}

/// `shoal bench elastic`.
pub fn run(a: BenchElasticArgs) -> Result<()> {
    if a.nodes < 2 {
        bail!("--nodes must be at least 2 (one is killed)");
    }
    println!(
        "elastic runs on loopback: {} nodes (one process each, one compute thread), ZeRO 2, \
         heartbeat timeout {} ms; one node SIGKILLed after step {}, one joining after step {}",
        a.nodes,
        a.heartbeat_timeout_ms,
        a.phase,
        2 * a.phase + 1
    );
    println!(
        "| model | params | rank step s | mirroring s | mirroring % | committed step s | \
         kill → lost s | kill → next commit s | join → in ring s | join → commit at W+1 s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for model in &a.models {
        let m = measure(&a, model)?;
        println!(
            "| {model} | {:.1}M | {:.3} | {:.4} | {:.1} | {:.3} | {:.2} | {:.2} | {:.2} | {:.2} |",
            m.params as f64 / 1e6,
            m.rank_step,
            m.mirror,
            100.0 * m.mirror / m.rank_step,
            m.commit_step,
            m.detect,
            m.recover,
            m.join_ready,
            m.join_commit
        );
    }
    Ok(())
}
