//! `shoal bench train`: training throughput of the benchmark models against the
//! measured GEMM peak and the PyTorch numbers of issue #2.
//!
//! Same setup as `../shared/bench/peers/torch_gpt_train.py`: uniform random tokens,
//! AdamW (lr 3e-4, betas 0.9/0.95, weight decay 0.1 on matrices), gradient clipping at
//! 1.0, untimed warm-up steps, then timed steps, all on a rayon pool of N threads.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use shoal_actors::{Replicas, StepHyper, TrainState, train_step};
use shoal_models::{Gpt, GptConfig};

/// Flags of `shoal bench train`.
#[derive(Args, Debug)]
pub struct BenchTrainArgs {
    /// Thread counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Timed steps per configuration.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed warm-up steps per configuration.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Model presets to measure.
    #[arg(long, value_delimiter = ',', default_value = "bench-5m,bench-30m")]
    pub models: Vec<String>,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// A Python with PyTorch: run the PyTorch peer (`torch_gpt_train.py` in `--peers-dir`)
    /// on the same model, threads and batch right after each shoal measurement, and
    /// compare against it instead of the table.
    #[arg(long, value_name = "PYTHON")]
    pub torch_python: Option<PathBuf>,
    /// Where the peer baselines live.
    #[arg(long, default_value = "../shared/bench/peers")]
    pub peers_dir: PathBuf,
}

/// The GEMM whose rate counts as the peak: GPT-2's MLP matmul `(B·T = 4096, 4C = 3072,
/// C = 768)`, where `gemm` comes closest to the CPU's FMA peak (see `../shared/CRATES.md`).
const PEAK_SHAPE: (usize, usize, usize) = (4096, 3072, 768);

/// PyTorch 2.15 eager, fp32, 1 process, tokens/s, from the table of issue #2.
fn pytorch_reference(model: &str, threads: usize) -> Option<f64> {
    match (model, threads) {
        ("bench-5m", 1) => Some(1685.0),
        ("bench-5m", 2) => Some(3533.0),
        ("bench-30m", 1) => Some(371.0),
        ("bench-30m", 2) => Some(706.0),
        _ => None,
    }
}

/// Runs the PyTorch peer on the same model, threads and batch; returns its tokens/s.
fn torch_peer(
    a: &BenchTrainArgs,
    python: &Path,
    config: &GptConfig,
    threads: usize,
) -> Result<f64> {
    let shape = PeerShape {
        seq_len: a.seq_len,
        batch: a.batch,
        threads,
        steps: a.steps,
        warmup: a.warmup,
    };
    torch_peer_run(python, &a.peers_dir, config, &shape, &[])
}

/// Sequence length, batch per rank, threads per rank and step counts of a peer run.
pub(crate) struct PeerShape {
    pub seq_len: usize,
    pub batch: usize,
    pub threads: usize,
    pub steps: usize,
    pub warmup: usize,
}

/// Runs `torch_gpt_train.py` from `peers_dir` on `config` with `extra` flags (for
/// example `--mode ddp --world 2`); returns its global tokens/s.
pub(crate) fn torch_peer_run(
    python: &Path,
    peers_dir: &Path,
    config: &GptConfig,
    shape: &PeerShape,
    extra: &[&str],
) -> Result<f64> {
    let script = peers_dir.join("torch_gpt_train.py");
    let arg = |x: usize| x.to_string();
    let out = Command::new(python)
        .arg(&script)
        .args([
            "--n-layer",
            &arg(config.n_layer),
            "--n-head",
            &arg(config.n_head),
        ])
        .args([
            "--n-embd",
            &arg(config.n_embd),
            "--vocab",
            &arg(config.vocab_size),
        ])
        .args([
            "--seq-len",
            &arg(shape.seq_len),
            "--batch",
            &arg(shape.batch),
        ])
        .args([
            "--threads",
            &arg(shape.threads),
            "--steps",
            &arg(shape.steps),
        ])
        .args(["--warmup", &arg(shape.warmup)])
        .args(extra)
        .output()
        .with_context(|| format!("cannot run {} {}", python.display(), script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .find_map(|l| l.strip_prefix("JSON "))
        .with_context(|| format!("{} printed no JSON line", script.display()))?;
    let v: serde_json::Value = serde_json::from_str(json).context("the peer's JSON line")?;
    v.get("tokens_per_s")
        .and_then(serde_json::Value::as_f64)
        .context("the peer's JSON has no tokens_per_s")
}

/// The optimizer settings of the PyTorch peer (`torch_gpt_train.py`): AdamW with lr
/// 3e-4, betas 0.9/0.95, weight decay 0.1, clipping at 1.0, no accumulation.
pub(crate) const PEER_HYPER: StepHyper = StepHyper {
    lr: 3e-4,
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weight_decay: 0.1,
    grad_clip: 1.0,
    grad_accum: 1,
    moment_steps: 0,
};

/// One sequence of T+1 uniform random tokens from `rng`, written as inputs `x` and
/// their next-token targets `y`.
pub(crate) fn random_row(rng: &mut u64, vocab: u64, x: &mut [u32], y: &mut [u32]) {
    let mut prev = (splitmix(rng) % vocab) as u32;
    for (xi, yi) in x.iter_mut().zip(y.iter_mut()) {
        let next = (splitmix(rng) % vocab) as u32;
        (*xi, *yi) = (prev, next);
        prev = next;
    }
}

/// splitmix64: uniform random tokens without a dependency.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One row of the table.
struct Row {
    model: String,
    params: usize,
    threads: usize,
    tokens_per_s: f64,
    step_ms: f64,
    optimizer_ms: f64,
    tflops: f64,
    gemm_gflops: f64,
    fma_gflops: Option<f64>,
    torch: Option<f64>,
}

fn measure(
    a: &BenchTrainArgs,
    name: &str,
    config: &GptConfig,
    threads: usize,
    fma_gflops: Option<f64>,
) -> Result<Row> {
    let model = Gpt::new(config.clone())?;
    let (b, t) = (a.batch, a.seq_len);
    let mut compute = Replicas::new(config, b, t, threads)?;
    let mut state = TrainState::new(model.init_params(1337));
    let spans = model.layout.decay_spans();
    let hp = PEER_HYPER;
    let (mut tokens, mut targets) = (vec![0u32; b * t], vec![0u32; b * t]);
    let vocab = config.vocab_size as u64;
    let mut rng = 1337u64;
    let (m, n, k) = PEAK_SHAPE;
    let gemm_gflops = compute.install(|| shoal_kernels::measure_gemm_gflops(m, n, k, 5));
    let mut times = Vec::with_capacity(a.steps);
    let (mut total, mut optimizer) = (0.0, 0.0);
    for i in 0..a.warmup + a.steps {
        let start = Instant::now();
        let outcome = {
            train_step(
                &model,
                &mut state,
                &mut compute,
                &spans,
                &hp,
                &mut tokens,
                &mut targets,
                |_, x, y| {
                    // A row of T+1 random tokens per sequence, shifted by one for targets.
                    for (xs, ys) in x.chunks_mut(t).zip(y.chunks_mut(t)) {
                        random_row(&mut rng, vocab, xs, ys);
                    }
                    Ok(())
                },
            )?
        };
        let dt = start.elapsed().as_secs_f64();
        if i >= a.warmup {
            times.push(dt);
            total += dt;
            optimizer += outcome.optimizer_seconds;
        }
    }
    times.sort_by(f64::total_cmp);
    let tokens_per_s = (b * t * a.steps) as f64 / total;
    Ok(Row {
        model: name.to_string(),
        params: model.num_params(),
        threads,
        tokens_per_s,
        step_ms: times[times.len() / 2] * 1e3,
        optimizer_ms: optimizer / a.steps as f64 * 1e3,
        tflops: config.flops_per_token(t) * tokens_per_s / 1e12,
        gemm_gflops,
        fma_gflops,
        torch: match &a.torch_python {
            Some(python) => Some(torch_peer(a, python, config, threads)?),
            None => pytorch_reference(name, threads),
        },
    })
}

/// `shoal bench train`.
pub fn run(a: BenchTrainArgs) -> Result<()> {
    if a.steps == 0 || a.threads.contains(&0) || a.batch == 0 || a.seq_len == 0 {
        bail!("--steps, --threads, --batch and --seq-len must be positive");
    }
    println!(
        "shoal bench train: batch {}, seq {}, {} warm-up + {} timed steps, fp32 AdamW + clip",
        a.batch, a.seq_len, a.warmup, a.steps
    );
    println!(
        "{:<10} {:>9} {:>7} {:>9} {:>8} {:>6} {:>9} {:>8} {:>9} {:>5} {:>9} {:>8}",
        "model",
        "params",
        "threads",
        "tokens/s",
        "step ms",
        "opt ms",
        "model GF/s",
        "FMA GF/s",
        "GEMM GF/s",
        "MFU",
        "torch t/s",
        "vs torch"
    );
    // The physical limit of each thread count, measured once before any model runs.
    let peaks = a
        .threads
        .iter()
        .map(|&threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .context("cannot start the probe threads")?;
            Ok(pool.install(crate::peak::fma_peak_gflops))
        })
        .collect::<Result<Vec<_>>>()?;
    for name in &a.models {
        let config = GptConfig::preset(name)?;
        for (&threads, &fma) in a.threads.iter().zip(&peaks) {
            let r = measure(&a, name, &config, threads, fma)
                .with_context(|| format!("benchmark of {name} on {threads} threads failed"))?;
            let mfu = match r.fma_gflops {
                Some(peak) => format!("{:.0}%", r.tflops * 1e5 / peak),
                None => "-".into(),
            };
            let (torch, ratio) = match r.torch {
                Some(x) => (format!("{x:.0}"), format!("{:.2}x", r.tokens_per_s / x)),
                None => ("-".into(), "-".into()),
            };
            println!(
                "{:<10} {:>9} {:>7} {:>9.0} {:>8.0} {:>6.0} {:>10.1} {:>8.1} {:>9.1} {:>5} {:>9} {:>8}",
                r.model,
                r.params,
                r.threads,
                r.tokens_per_s,
                r.step_ms,
                r.optimizer_ms,
                r.tflops * 1e3,
                r.fma_gflops.unwrap_or(f64::NAN),
                r.gemm_gflops,
                mfu,
                torch,
                ratio
            );
        }
    }
    let torch_source = if a.torch_python.is_some() {
        "PyTorch eager run just now by --torch-python on the same machine"
    } else {
        "PyTorch 2.15 eager from issue #2's table (another machine of this kind; pass \
         --torch-python to measure side by side)"
    };
    println!(
        "torch t/s: {torch_source}, 1 process, same model, threads and batch. opt ms: grad norm + clip + AdamW \
         of the step. model GF/s = flops_per_token x tokens/s (6N + attention). FMA GF/s: \
         measured fp32 FMA peak of that many threads (the physical limit); MFU = model GF/s / \
         FMA GF/s. GEMM GF/s: one multithreaded 4096x768 by 768x3072 matmul on that many \
         threads, for reference."
    );
    Ok(())
}
