//! `shoal bench recompute`: activation memory and its price.
//! - `bytes`: activation bytes per layer under each recompute policy at several
//!   (B, T), measured (the buffers' lengths, and the heap the allocator saw), next to
//!   Korthikanti et al. 2022's accounting in 16-bit and translated to this code's fp32;
//! - `step`: forward + backward time per policy against the cost model;
//! - `attention`: the tiled (FlashAttention-2 style) attention against the naive f32
//!   one that keeps the T×T probabilities: time and peak heap per T, and the
//!   longest T each fits in a fixed budget, checked by running it;
//! - `longest`: the longest sequence a model trains at batch 1 under an activation
//!   budget per policy, from the measured bytes, checked by running a step.
//!
//! Run: `shoal bench recompute` (all, ~10 minutes on 2 cores), or
//! `--sections bytes,longest` and the flags below for a part.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use shoal_actors::recompute::{format_bytes, parse_bytes};
use shoal_actors::{PlanInputs, RecomputeMode, RecomputeSettings, ZeroStage, plan_recompute};
use shoal_kernels::attention::{attention_backward, attention_forward, naive};
use shoal_models::{ActivationBytes, Activations, Gpt, GptConfig, Recompute, RecomputePlan};

use super::heap;

/// Flags of `shoal bench recompute`.
#[derive(Args, Debug)]
pub struct BenchRecomputeArgs {
    /// Which parts to run: bytes, step, attention, longest.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "bytes,step,attention,longest"
    )]
    pub sections: Vec<String>,
    /// Model preset (n_positions is raised to the longest T asked for).
    #[arg(long, default_value = "small")]
    pub model: String,
    /// (B, T) shapes of the bytes table, as BxT.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1x1024,4x256,8x512,1x4096"
    )]
    pub shapes: Vec<String>,
    /// (B, T) shapes of the step-time table, as BxT.
    #[arg(long, value_delimiter = ',', default_value = "8x128,4x512,1x2048")]
    pub step_shapes: Vec<String>,
    /// Timed steps per policy and shape (after one untimed), interleaved.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Sequence lengths of the attention table.
    #[arg(long, value_delimiter = ',', default_value = "256,512,1024,2048,4096")]
    pub attn_t: Vec<usize>,
    /// Heap budget of one attention forward + backward (inputs, outputs and
    /// gradients included) for the longest-T row.
    #[arg(long, default_value = "256MiB")]
    pub attn_budget: String,
    /// Activation budget per rank of the longest-sequence table.
    #[arg(long, default_value = "4GiB")]
    pub budget: String,
    /// Models of the longest-sequence table.
    #[arg(long, value_delimiter = ',', default_value = "small,bench-30m")]
    pub longest_models: Vec<String>,
    /// Policies whose longest sequence is checked by running one step of the first
    /// model at that length (full recomputation at its limit takes long on 2 cores).
    #[arg(long, value_delimiter = ',', default_value = "none,selective")]
    pub verify: Vec<String>,
}

fn parse_shape(s: &str) -> Result<(usize, usize)> {
    let (b, t) = s
        .split_once('x')
        .with_context(|| format!("`{s}` is not a BxT shape"))?;
    let (b, t) = (b.trim().parse()?, t.trim().parse()?);
    if b == 0 || t == 0 {
        bail!("`{s}`: B and T must be positive");
    }
    Ok((b, t))
}

fn mib(bytes: f64) -> f64 {
    bytes / (1u64 << 20) as f64
}

/// `config` with a position table of at least `t`.
fn with_positions(config: &GptConfig, t: usize) -> GptConfig {
    let mut c = config.clone();
    c.n_positions = c.n_positions.max(t);
    c
}

/// Korthikanti et al.'s bytes per layer: (16-bit as published; fp32 without dropout).
///
/// 16-bit, as published (s·b·h, a heads): none `sbh·(34 + 5as/h)`, selective `34·sbh`,
/// full `2·sbh`. In fp32 without dropout (this model has none) every kept term
/// doubles and the dropout terms go: the two dropout masks (`sbh` each), and of the
/// attention's `5as²b` the mask (`as²b`) and the dropout output (`2as²b`, the same
/// tensor as the softmax output without dropout), leaving the softmax output,
/// `4as²b`. So: none `64·sbh + 4·as²b`, selective `64·sbh`, full `4·sbh`.
fn paper_bytes(b: usize, t: usize, c: usize, nh: usize, policy: Recompute) -> (f64, f64) {
    let sbh = (b * t * c) as f64;
    let as2b = (nh * t * t * b) as f64;
    match policy {
        Recompute::None => (34.0 * sbh + 5.0 * as2b, 64.0 * sbh + 4.0 * as2b),
        Recompute::Selective => (34.0 * sbh, 64.0 * sbh),
        Recompute::Full => (2.0 * sbh, 4.0 * sbh),
    }
}

fn bytes_table(a: &BenchRecomputeArgs, config: &GptConfig) -> Result<()> {
    let (c, nh, l) = (config.n_embd, config.n_head, config.n_layer);
    println!(
        "\n## Activation bytes per layer ({}: L={l}, C={c}, NH={nh}, V={}; fp32)",
        a.model, config.vocab_size
    );
    println!(
        "{:>3} {:>5} {:<9} {:>11} {:>11} {:>11} {:>7} {:>10} {:>11} {:>11}",
        "B",
        "T",
        "policy",
        "layer MiB",
        "paper 16b",
        "paper fp32",
        "ratio",
        "shared MiB",
        "total MiB",
        "heap MiB"
    );
    for shape in &a.shapes {
        let (b, t) = parse_shape(shape)?;
        let cfg = with_positions(config, t);
        for policy in Recompute::ALL {
            let plan = RecomputePlan::uniform(l, policy);
            let (acts, heap) = heap::measure(|| Activations::with_plan(&cfg, b, t, plan.clone()));
            let acts = acts?;
            let layer = acts.layer_bytes(0) as f64;
            let (p16, p32) = paper_bytes(b, t, c, nh, policy);
            println!(
                "{:>3} {:>5} {:<9} {:>11.2} {:>11.2} {:>11.2} {:>7.3} {:>10.2} {:>11.1} {:>11.1}",
                b,
                t,
                policy.name(),
                mib(layer),
                mib(p16),
                mib(p32),
                layer / p32,
                mib(acts.recompute_scratch_bytes() as f64),
                mib(acts.bytes() as f64),
                mib(heap.peak as f64),
            );
        }
    }
    println!(
        "layer MiB: what one layer's own buffers hold (from the allocated buffers): none = \
         64·sbh + 16·sb + 4·a·sb bytes (ln1, qkv, atty, residual2, ln2, fch, fch_gelu and the \
         layer's output; two LayerNorm mean/rstd pairs; the attention's log-sum-exp in place of \
         the paper's 4·as²b softmax output, which the tiled kernel never stores), selective = \
         60·sbh + 16·sb (drops atty and the log-sum-exp; the paper's selective keeps the \
         attention output and drops only the s² terms, which this code never keeps), full = \
         4·sbh (the output, which is the next layer's input). paper 16b / fp32: the per-layer \
         accounting as published and translated (see `paper_bytes`). ratio = layer / paper fp32. \
         shared: one layer's worth of what the policy drops, shared by all layers. total: the \
         whole Activations (all layers, shared buffers, embeddings' output, ln_f, logits, losses, \
         backward's gradient scratch); heap: the most the allocator saw the heap grow while \
         building it (total plus the few hundred bytes of the per-layer Vec headers)."
    );
    Ok(())
}

fn step_table(a: &BenchRecomputeArgs, config: &GptConfig) -> Result<()> {
    println!(
        "\n## Forward + backward time per policy ({}, {} threads, median of {})",
        a.model,
        rayon::current_num_threads(),
        a.steps
    );
    println!(
        "{:>3} {:>5} {:<9} {:>9} {:>9} {:>10} {:>12}",
        "B", "T", "policy", "ms", "vs none", "model", "act. MiB"
    );
    for shape in &a.step_shapes {
        let (b, t) = parse_shape(shape)?;
        let cfg = with_positions(config, t);
        let gpt = Gpt::new(cfg.clone())?;
        let params = gpt.init_params(1);
        let v = cfg.vocab_size as u64;
        let mut rng = 7u64;
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((rng >> 33) % v) as u32
        };
        let tokens: Vec<u32> = (0..b * t).map(|_| next()).collect();
        let targets: Vec<u32> = (0..b * t).map(|_| next()).collect();
        let mut grads = vec![0.0f32; gpt.num_params()];
        let mut acts = Recompute::ALL
            .iter()
            .map(|&p| Activations::with_plan(&cfg, b, t, RecomputePlan::uniform(cfg.n_layer, p)))
            .collect::<Result<Vec<_>, _>>()?;
        // Policies interleaved round by round, so that a slow spell of a shared
        // machine falls on all of them; round 0 is not timed.
        let mut times = vec![Vec::new(); acts.len()];
        for round in 0..=a.steps {
            for (acts, times) in acts.iter_mut().zip(&mut times) {
                let start = Instant::now();
                gpt.forward(&params, acts, &tokens, Some(&targets))?;
                gpt.backward(&params, acts, &mut grads, 1.0)?;
                if round > 0 {
                    times.push(start.elapsed().as_secs_f64());
                }
            }
        }
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2] * 1e3
        };
        let base_ms = median(&times[0]);
        for ((policy, times), acts) in Recompute::ALL.into_iter().zip(&times).zip(&acts) {
            let ms = median(times);
            // The cost model: recomputation over a step of forward + backward ≈ 3 forwards.
            let choice = plan_recompute(&PlanInputs {
                model: cfg.clone(),
                stage: ZeroStage::Replicated,
                world: 1,
                batch: b,
                seq_len: t,
                settings: RecomputeSettings {
                    mode: RecomputeMode::Fixed(policy),
                    budget: None,
                },
            })?;
            println!(
                "{:>3} {:>5} {:<9} {:>9.0} {:>+8.1}% {:>+9.1}% {:>12.1}",
                b,
                t,
                policy.name(),
                ms,
                100.0 * (ms / base_ms - 1.0),
                100.0 * choice.extra_forward() / 3.0,
                mib(acts.bytes() as f64)
            );
        }
    }
    println!(
        "ms: one forward + backward (no optimizer). vs none: measured. model: the scheduler's \
         cost model, recomputed FLOPs over 3 forwards' FLOPs (full = the layer up to its GELU, \
         16·C² + 2·(T+1)·C per token; selective = the attention core, 2·(T+1)·C). act. MiB: \
         the whole Activations."
    );
    Ok(())
}

/// Random values in [-1, 1) from a seed.
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// One attention measurement: forward and backward seconds and peak heap of the
/// attention's own memory (what forward keeps and both passes' scratch), inputs,
/// outputs and gradients (allocated before) not counted.
struct AttnRun {
    fwd: f64,
    bwd: f64,
    peak: usize,
}

fn attn_run(naive_kernel: bool, t: usize, c: usize, nh: usize, reps: usize) -> AttnRun {
    let b = 1;
    let qkv = random(b * t * 3 * c, t as u64);
    let dout = random(b * t * c, t as u64 + 1);
    let mut out = vec![0.0f32; b * t * c];
    let mut dqkv = vec![0.0f32; b * t * 3 * c];
    let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
    let mut peak = 0;
    for _ in 0..reps {
        let ((f, g), h) = heap::measure(|| {
            let start = Instant::now();
            let saved = if naive_kernel {
                let mut att = vec![0.0f32; b * nh * t * t];
                naive::attention_forward(&mut out, &mut att, &qkv, b, t, c, nh);
                att
            } else {
                let mut lse = vec![0.0f32; b * nh * t];
                attention_forward(&mut out, &mut lse, &qkv, b, t, c, nh);
                lse
            };
            let f = start.elapsed().as_secs_f64();
            let start = Instant::now();
            if naive_kernel {
                naive::attention_backward(&mut dqkv, &dout, &qkv, &saved, b, t, c, nh);
            } else {
                attention_backward(&mut dqkv, &dout, &qkv, &out, &saved, b, t, c, nh);
            }
            (f, start.elapsed().as_secs_f64())
        });
        fwd.push(f);
        bwd.push(g);
        peak = peak.max(h.peak);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    AttnRun {
        fwd: median(fwd),
        bwd: median(bwd),
        peak,
    }
}

/// Bytes of the inputs, outputs and gradients of one attention at batch 1: qkv, out,
/// dout, dqkv.
fn attn_io(t: usize, c: usize) -> usize {
    4 * t * (3 * c + c + c + 3 * c)
}

fn attention_table(a: &BenchRecomputeArgs, config: &GptConfig) -> Result<()> {
    let (c, nh) = (config.n_embd, config.n_head);
    let budget = parse_bytes(&a.attn_budget).map_err(anyhow::Error::msg)? as usize;
    println!(
        "\n## Attention forward + backward, tiled vs naive f32 (B=1, C={c}, NH={nh}, {} threads)",
        rayon::current_num_threads()
    );
    println!(
        "{:>6} {:>9} {:>9} {:>11} {:>9} {:>9} {:>11} {:>9}",
        "T", "tiled fw", "tiled bw", "tiled MiB", "naive fw", "naive bw", "naive MiB", "speedup"
    );
    let mut tiled_pts = Vec::new();
    let mut naive_pts = Vec::new();
    for &t in &a.attn_t {
        let reps = if t <= 1024 { 3 } else { 1 };
        let tiled = attn_run(false, t, c, nh, reps);
        let naive_r = attn_run(true, t, c, nh, reps);
        tiled_pts.push((t, tiled.peak));
        naive_pts.push((t, naive_r.peak));
        println!(
            "{:>6} {:>8.1}ms {:>7.1}ms {:>11.2} {:>7.1}ms {:>7.1}ms {:>11.1} {:>8.2}x",
            t,
            tiled.fwd * 1e3,
            tiled.bwd * 1e3,
            mib(tiled.peak as f64),
            naive_r.fwd * 1e3,
            naive_r.bwd * 1e3,
            mib(naive_r.peak as f64),
            (naive_r.fwd + naive_r.bwd) / (tiled.fwd + tiled.bwd),
        );
    }
    println!(
        "MiB: peak heap of the attention's own memory (what forward keeps: the log-sum-exp \
         B·NH·T floats, or the probabilities B·NH·T²; and each pass's scratch), inputs, \
         outputs and gradients (8·T·C floats, {:.1} MiB at T = {}) not counted. The naive \
         kernel computes the masked half too; both use the same f32 arithmetic.",
        mib(attn_io(*a.attn_t.last().unwrap_or(&0), c) as f64),
        a.attn_t.last().unwrap_or(&0)
    );
    // The longest T within the budget, I/O included: the tiled peak grows like T, the
    // naive like T²; fitted through the two longest measurements, then run.
    println!(
        "\nLongest T within {} (attention memory + inputs, outputs, gradients), fitted, then run:",
        format_bytes(budget as u64)
    );
    for (name, pts, power) in [("tiled", &tiled_pts, 1), ("naive", &naive_pts, 2)] {
        let Some(t) = longest_fit(pts, power, budget, c) else {
            println!("{name:>6}: needs two T to fit");
            continue;
        };
        let run = attn_run(name == "naive", t, c, nh, 1);
        let total = run.peak + attn_io(t, c);
        println!(
            "{name:>6}: T = {t:>6}: ran in {:.1} s, peak {} ({} with I/O){}",
            run.fwd + run.bwd,
            format_bytes(run.peak as u64),
            format_bytes(total as u64),
            if total <= budget {
                ""
            } else {
                " (over: the fit was off)"
            }
        );
    }
    Ok(())
}

/// The longest T (a multiple of 64) whose predicted total, attention memory
/// `x + y·T^power` through the two longest measurements plus the I/O, fits `budget`.
fn longest_fit(pts: &[(usize, usize)], power: i32, budget: usize, c: usize) -> Option<usize> {
    let n = pts.len();
    if n < 2 {
        return None;
    }
    let ((t0, p0), (t1, p1)) = (pts[n - 2], pts[n - 1]);
    let f = |t: usize| (t as f64).powi(power);
    let slope = (p1 as f64 - p0 as f64) / (f(t1) - f(t0));
    let intercept = p1 as f64 - slope * f(t1);
    let fits = |t: usize| intercept + slope * f(t) + attn_io(t, c) as f64 <= budget as f64;
    let mut t = 64;
    if !fits(t) {
        return None;
    }
    while fits(t * 2) {
        t *= 2;
    }
    let mut step = t / 2;
    while step >= 64 {
        if fits(t + step) {
            t += step;
        }
        step /= 2;
    }
    Some(t)
}

/// The longest T at batch 1 whose activations under `plan` fit `budget`.
fn longest_t(config: &GptConfig, policy: Recompute, budget: u64) -> usize {
    let plan = RecomputePlan::uniform(config.n_layer, policy);
    let fits = |t: usize| ActivationBytes::new(config, 1, t, &plan).total() as u64 <= budget;
    if !fits(1) {
        return 0;
    }
    let (mut lo, mut hi) = (1usize, 2usize);
    while fits(hi) {
        lo = hi;
        hi *= 2;
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

fn longest_table(a: &BenchRecomputeArgs) -> Result<()> {
    let budget = parse_bytes(&a.budget).map_err(anyhow::Error::msg)?;
    println!(
        "\n## Longest sequence at batch 1 with activations within {}",
        format_bytes(budget)
    );
    println!(
        "{:<10} {:<9} {:>7} {:>12} {:>12} {:>13} {:>14}",
        "model", "policy", "T", "act. MiB", "state MiB", "step s", "step heap MiB"
    );
    for (i, name) in a.longest_models.iter().enumerate() {
        let base = GptConfig::preset(name)?;
        for policy in Recompute::ALL {
            let t = longest_t(&base, policy, budget);
            let cfg = with_positions(&base, t);
            let plan = RecomputePlan::uniform(cfg.n_layer, policy);
            let bytes = ActivationBytes::new(&cfg, 1, t, &plan).total();
            // Parameters, gradients and AdamW moments at this n_positions (one rank).
            let state = 16 * cfg.num_params();
            let verify = i == 0 && a.verify.iter().any(|p| p == policy.name());
            let (secs, heap) = if verify && t > 0 {
                let (s, h) = run_step(&cfg, t, plan)?;
                (format!("{s:.0}"), format!("{:.1}", mib(h as f64)))
            } else {
                ("-".into(), "-".into())
            };
            println!(
                "{:<10} {:<9} {:>7} {:>12.1} {:>12.1} {:>13} {:>14}",
                name,
                policy.name(),
                t,
                mib(bytes as f64),
                mib(state as f64),
                secs,
                heap
            );
        }
    }
    println!(
        "T: the longest T whose Activations (as built, every buffer; ActivationBytes predicts \
         them to the byte) fit the budget. state: parameters, gradients and AdamW moments (16 \
         bytes a parameter, n_positions = T), outside the activation budget. step: one forward \
         + backward at that T (policies in --verify, first model only), and the most the heap \
         grew during it: the Activations plus the kernels' transient scratch (attention backward \
         per thread, matmul panels)."
    );
    Ok(())
}

/// One forward + backward at batch 1 and length `t`: seconds and peak heap growth
/// (activations built inside).
fn run_step(config: &GptConfig, t: usize, plan: RecomputePlan) -> Result<(f64, usize)> {
    let gpt = Gpt::new(config.clone())?;
    let params = gpt.init_params(3);
    let mut grads = vec![0.0f32; gpt.num_params()];
    let v = config.vocab_size;
    let tokens: Vec<u32> = (0..t).map(|i| ((i * 7919 + 1) % v) as u32).collect();
    let targets: Vec<u32> = (0..t).map(|i| ((i * 104_729 + 5) % v) as u32).collect();
    let start = Instant::now();
    let (out, heap) = heap::measure(|| -> Result<()> {
        let mut acts = Activations::with_plan(config, 1, t, plan)?;
        gpt.forward(&params, &mut acts, &tokens, Some(&targets))?;
        gpt.backward(&params, &mut acts, &mut grads, 1.0)?;
        Ok(())
    });
    out?;
    Ok((start.elapsed().as_secs_f64(), heap.peak))
}

/// `shoal bench recompute`.
pub fn run(a: BenchRecomputeArgs) -> Result<()> {
    let config = GptConfig::preset(&a.model)?;
    for s in &a.sections {
        match s.as_str() {
            "bytes" | "step" | "attention" | "longest" => {}
            other => bail!("unknown section `{other}` (bytes, step, attention, longest)"),
        }
    }
    for p in a.verify.iter().filter(|p| !p.is_empty()) {
        p.parse::<Recompute>()?;
    }
    if a.steps == 0 {
        bail!("--steps must be positive");
    }
    let has = |name: &str| a.sections.iter().any(|s| s == name);
    println!(
        "shoal bench recompute: {} threads; activation bytes are fp32",
        rayon::current_num_threads()
    );
    if has("bytes") {
        bytes_table(&a, &config)?;
    }
    if has("step") {
        step_table(&a, &config)?;
    }
    if has("attention") {
        attention_table(&a, &config)?;
    }
    if has("longest") {
        longest_table(&a)?;
    }
    Ok(())
}
