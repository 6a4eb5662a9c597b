//! `shoal bench zero`: data-parallel training steps per ZeRO stage, W ranks as
//! actors of one node in this process (one compute thread each) over the in-process
//! ring and, with `--quic`, over a QUIC ring on loopback, on the 6-layer
//! 384-wide model: step time, tokens/s, how much of the communication backward hid,
//! and bytes per rank next to ZeRO's accounting and the process's resident memory. With
//! `--torch-python`, PyTorch DDP / FSDP / FSDP2 over gloo run the same model, batch and
//! processes (`torch_gpt_train.py`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use shoal_actors::{Fill, Node, NodeSpec, StartState, ZeroStage};
use shoal_collectives::{CommConfig, Communicator, LocalHub, QuicNode, loopback_ring};
use shoal_models::{Activations, Gpt, GptConfig};

use super::train::{PEER_HYPER, PeerShape, random_row, torch_peer_run};

/// Flags of `shoal bench zero`.
#[derive(Args, Debug)]
pub struct BenchZeroArgs {
    /// Ranks (threads of this process, one compute thread each).
    #[arg(long, default_value_t = 2)]
    pub world: usize,
    /// ZeRO stages to measure.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3")]
    pub stages: Vec<u8>,
    /// Sequences per rank per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Timed steps per stage.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed warm-up steps per stage.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Gradient bucket size in MiB (PyTorch DDP's default is 25).
    #[arg(long, default_value_t = 25.0)]
    pub bucket_mib: f64,
    /// Also run the stages over a QUIC ring (loopback, mutual TLS).
    #[arg(long)]
    pub quic: bool,
    /// A Python with PyTorch: run DDP, FSDP and FSDP2 over gloo on the same model.
    #[arg(long, value_name = "PYTHON")]
    pub torch_python: Option<PathBuf>,
    /// Run one stage in this process and print what it measured as JSON (the
    /// benchmark runs each stage in a fresh process, so that its peak resident
    /// memory is its own).
    #[arg(long, hide = true)]
    pub child_stage: Option<u8>,
    /// Where the peer baselines live.
    #[arg(long, default_value = "../shared/bench/peers")]
    pub peers_dir: PathBuf,
}

/// The model: 6 layers, 6 heads, 384 wide, 8192 tokens.
fn model_config(seq_len: usize) -> GptConfig {
    GptConfig {
        vocab_size: 8192,
        n_positions: seq_len,
        n_layer: 6,
        n_head: 6,
        n_embd: 384,
        layer_norm_eps: 1e-5,
    }
}

/// Bytes per rank ZeRO's paper counts for fp32 AdamW with `psi` parameters.
fn zero_formula(stage: ZeroStage, psi: f64, world: f64) -> f64 {
    match stage {
        ZeroStage::Replicated => 16.0 * psi,
        ZeroStage::OptimizerSharded => 8.0 * psi + 8.0 * psi / world,
        ZeroStage::GradientsSharded => 4.0 * psi + 12.0 * psi / world,
        ZeroStage::ParametersSharded => 16.0 * psi / world,
    }
}

/// What one stage measured (rank 0's view; ranks run in lock step).
#[derive(serde::Serialize, serde::Deserialize)]
struct Measured {
    step_s: f64,
    exposed_s: f64,
    optimizer_s: f64,
    /// Parameters, gradients and moments held between steps.
    bytes: usize,
    /// Communication buffers held at once during a step.
    buffers: usize,
    /// Activations of this rank's model replica.
    acts: usize,
    /// Peak resident memory of the stage's process over its resident memory before
    /// the ranks started, per rank.
    rss: usize,
    loss: f32,
}

/// The process's resident set size (`VmRSS`) or its peak (`VmHWM`) in bytes (Linux;
/// 0 elsewhere).
fn resident_bytes(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The ring the ranks train over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    /// In-process, zero copy.
    Local,
    /// QUIC over loopback, each rank its own endpoint and certificate.
    Quic,
}

/// `world` communicators of one ring over `transport`, and the QUIC endpoints that
/// must live as long as they do.
fn ring(transport: Transport, world: usize) -> Result<(Vec<Communicator>, Vec<QuicNode>)> {
    if transport == Transport::Local {
        return Ok((LocalHub::new().group(world, CommConfig::default())?, vec![]));
    }
    let (nodes, comms) = loopback_ring(world, 0, &CommConfig::default())?;
    Ok((comms, nodes))
}

fn run_stage(
    a: &BenchZeroArgs,
    stage: ZeroStage,
    world: usize,
    transport: Transport,
) -> Result<Measured> {
    let config = model_config(a.seq_len);
    let model = Gpt::new(config.clone())?;
    let params = model.init_params(1);
    let zeros = vec![0.0; params.len()];
    let vocab = config.vocab_size as u64;
    let fill: Fill = Arc::new(move |index, x, y| {
        let mut seed = index;
        random_row(&mut seed, vocab, x, y);
        Ok(())
    });
    let spec = NodeSpec {
        spans: model.layout.decay_spans(),
        model,
        stage,
        bucket_elems: ((a.bucket_mib * 1048576.0) / 4.0).max(1.0) as usize,
        batch: a.batch * world,
        accum: 1,
        seq_len: a.seq_len,
        threads_per_rank: 1,
        fill,
        recompute: Default::default(),
        gpu: None,
    };
    let rss_before = resident_bytes("VmRSS");
    let (comms, _endpoints) = ring(transport, world)?;
    let start = StartState {
        params: &params,
        adam_m: &zeros,
        adam_v: &zeros,
    };
    let node = Node::start(&spec, comms, start)?;
    let (mut steps, mut exposed, mut optimizer, mut loss) = (vec![], vec![], vec![], 0.0);
    for i in 0..a.warmup + a.steps {
        let begin = Instant::now();
        let outs = node.step(i as u64, PEER_HYPER)?;
        if i >= a.warmup {
            steps.push(begin.elapsed().as_secs_f64());
            exposed.push(outs[0].exposed_comm_seconds);
            optimizer.push(outs[0].optimizer_seconds);
        }
        loss = outs[0].loss;
    }
    let m = node.memory()?.first().copied().context("no ranks")?;
    let rss = resident_bytes("VmHWM").saturating_sub(rss_before) / world;
    Ok(Measured {
        step_s: median(steps),
        exposed_s: median(exposed),
        optimizer_s: median(optimizer),
        bytes: m.params + m.grads + m.optimizer,
        buffers: m.buffers,
        acts: Activations::new(&config, a.batch, a.seq_len)?.bytes(),
        rss,
        loss,
    })
}

/// Runs `stage` on `world` ranks in a child process (see `--child-stage`).
fn measure(a: &BenchZeroArgs, stage: u8, world: usize, transport: Transport) -> Result<Measured> {
    let exe = std::env::current_exe().context("cannot find the shoal executable")?;
    let n = |x: usize| x.to_string();
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "bench",
        "zero",
        "--world",
        &n(world),
        "--batch",
        &n(a.batch),
    ])
    .args(["--seq-len", &n(a.seq_len), "--steps", &n(a.steps)])
    .args([
        "--warmup",
        &n(a.warmup),
        "--bucket-mib",
        &a.bucket_mib.to_string(),
    ])
    .args(["--child-stage", &stage.to_string()]);
    if transport == Transport::Quic {
        cmd.arg("--quic");
    }
    let out = cmd.output().context("cannot run the stage's process")?;
    anyhow::ensure!(
        out.status.success(),
        "stage {stage} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .last()
        .context("the stage's process printed nothing")?;
    Ok(serde_json::from_str(line)?)
}

/// Runs the benchmark and prints its table.
pub fn run(a: BenchZeroArgs) -> Result<()> {
    anyhow::ensure!(
        a.world >= 1 && a.steps >= 1,
        "--world and --steps must be at least 1"
    );
    if let Some(stage) = a.child_stage {
        let transport = if a.quic {
            Transport::Quic
        } else {
            Transport::Local
        };
        let m = run_stage(&a, ZeroStage::from_number(stage)?, a.world, transport)?;
        println!("{}", serde_json::to_string(&m)?);
        return Ok(());
    }
    let config = model_config(a.seq_len);
    let psi = Gpt::new(config.clone())?.layout.len() as f64;
    let tokens = (a.batch * a.world * a.seq_len) as f64;
    println!(
        "shoal bench zero: 6 layers x 384, vocab 8192, {:.2} M parameters, W = {} ranks (threads, 1 compute thread each), {} x {} tokens per rank, buckets of {} MiB, median of {} steps",
        psi / 1e6,
        a.world,
        a.batch,
        a.seq_len,
        a.bucket_mib,
        a.steps
    );
    let single = measure(&a, 0, 1, Transport::Local)?;
    println!(
        "one rank alone (same per-rank batch, no communication): {:.3} s/step",
        single.step_s
    );
    let transports: &[Transport] = if a.quic {
        &[Transport::Local, Transport::Quic]
    } else {
        &[Transport::Local]
    };
    for &transport in transports {
        match transport {
            Transport::Local => println!("\nin-process ring (zero copy):"),
            Transport::Quic => println!(
                "\nQUIC ring over loopback (mutual TLS, one endpoint and certificate per rank):"
            ),
        }
        println!(
            "{:<6} {:>8} {:>9} {:>9} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8}",
            "stage",
            "step s",
            "tokens/s",
            "vs alone",
            "exposed",
            "optim s",
            "state MiB",
            "formula",
            "buffers",
            "acts",
            "RSS/rank",
            "loss"
        );
        for &n in &a.stages {
            let stage = ZeroStage::from_number(n)?;
            let m = measure(&a, n, a.world, transport)?;
            let mib = |b: usize| b as f64 / 1048576.0;
            println!(
                "{:<6} {:>8.3} {:>9.0} {:>8.0}% {:>7.0}% {:>8.3} {:>9.1} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>8.4}",
                n,
                m.step_s,
                tokens / m.step_s,
                100.0 * (m.step_s / single.step_s - 1.0),
                100.0 * m.exposed_s / m.step_s,
                m.optimizer_s,
                mib(m.bytes),
                zero_formula(stage, psi, a.world as f64) / 1048576.0,
                mib(m.buffers),
                mib(m.acts),
                mib(m.rss),
                m.loss
            );
        }
    }
    println!(
        "\nvs alone: step time over one rank's step on the same per-rank batch (the cost of communication). exposed: share of the step spent waiting for collectives (gradient reductions after backward; at stage 3 also parameter gathers not yet done when a layer needed them). state MiB: parameters + gradients + AdamW moments held between steps by rank 0; formula: ZeRO's 16Ψ, 8Ψ + 8Ψ/W, 4Ψ + 12Ψ/W, 16Ψ/W. buffers: the most communication buffers held at once in a step (gradient buckets staged or in flight; at stage 3 also the gathered parts). acts: the rank's activations. RSS/rank: the peak resident memory of the stage's own process over its resident memory before the ranks started, divided by W: state + buffers + acts + the batches, gradient staging and allocator slack that the accounting leaves out."
    );
    if let Some(python) = &a.torch_python {
        let shape = PeerShape {
            seq_len: a.seq_len,
            batch: a.batch,
            threads: 1,
            steps: a.steps,
            warmup: a.warmup,
        };
        let world = a.world.to_string();
        println!(
            "\nPyTorch peers, {} processes x 1 thread over gloo:",
            a.world
        );
        for mode in ["ddp", "fsdp1", "fsdp2"] {
            let extra = ["--mode", mode, "--world", world.as_str()];
            match torch_peer_run(python, &a.peers_dir, &config, &shape, &extra) {
                Ok(tps) => println!("  {mode:<6} {tps:>9.0} tokens/s"),
                Err(e) => println!("  {mode:<6} failed: {e:#}"),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_matches_the_paper_at_the_extremes() {
        let psi = 1e6;
        assert_eq!(zero_formula(ZeroStage::Replicated, psi, 4.0), 16e6);
        assert_eq!(zero_formula(ZeroStage::OptimizerSharded, psi, 1.0), 16e6);
        assert_eq!(zero_formula(ZeroStage::GradientsSharded, psi, 1.0), 16e6);
        assert_eq!(zero_formula(ZeroStage::GradientsSharded, psi, 4.0), 7e6);
        assert_eq!(zero_formula(ZeroStage::ParametersSharded, psi, 4.0), 4e6);
    }
}
