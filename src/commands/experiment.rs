//! `shoal experiment rewarm`: the shape of the continual-pretraining findings of Gupta et
//! al. 2023 ("How to (re)warm your model?") and Ibrahim et al. 2024 ("Simple and
//! Scalable Strategies to Continually Pre-train LLMs") at a scale two CPU cores run in
//! well under an hour.
//!
//! A small byte-level model is pretrained on the upstream data A (by default
//! `en_drama` of `../shared/data/corpus`) with a cosine schedule, then continued on the
//! downstream data B (the three Chinese domains) from that checkpoint in several
//! variants: no re-warming (constant at the final pretraining rate), re-warming to
//! several maximum rates, several warm-up lengths, and 0% vs 5% replay of A. Every
//! variant evaluates A and B side by side. The results are `results.md` (the table),
//! `results.json`, `rewarm.svg` (per variant, the mean validation loss on B and on A
//! against the continual run's steps) and each run's own directory (metrics.jsonl,
//! loss.svg, checkpoint).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use shoal_actors::{
    DataSpec, Decay, EvalStats, MetricsRecord, ModelSpec, ReplaySpec, Schedule, StepStats,
    TrainConfig, TrainObserver, Trainer, final_lr, read_metrics, resolve_checkpoint_dir,
    split_means,
};
use shoal_data::MixtureWeights;

use crate::plot::{DOWNSTREAM, Panel, Series, UPSTREAM, plot_panels};

/// Experiments.
#[derive(Subcommand, Debug)]
pub enum ExperimentCommand {
    /// Continual pretraining: re-warming, warm-up length and replay (see the README).
    Rewarm(RewarmArgs),
}

/// Flags of `shoal experiment rewarm`.
#[derive(Args, Debug, Clone)]
pub struct RewarmArgs {
    /// Directory of the runs and results.
    #[arg(long, default_value = "runs/rewarm")]
    pub out_dir: PathBuf,
    /// Where the default domains' `.jsonl` files are.
    #[arg(long, default_value = "../shared/data/corpus")]
    pub corpus: PathBuf,
    /// Upstream (pretraining) domains, DOMAIN=PATH[,PATH]; default en_drama of --corpus.
    #[arg(long, value_name = "DOMAIN=PATH[,PATH]")]
    pub upstream: Vec<String>,
    /// Downstream (continual) domains; default zh_tang, zh_songci, zh_classics of --corpus.
    #[arg(long, value_name = "DOMAIN=PATH[,PATH]")]
    pub downstream: Vec<String>,
    /// Optimizer steps of pretraining.
    #[arg(long, default_value_t = 800)]
    pub pretrain_steps: u64,
    /// Optimizer steps of every continual variant.
    #[arg(long, default_value_t = 300)]
    pub steps: u64,
    /// Peak learning rate of pretraining (cosine to a tenth of it).
    #[arg(long, default_value_t = 3e-3)]
    pub pretrain_lr: f32,
    /// Maximum rates the re-warmed variants reach (1% warm-up, cosine to a tenth of
    /// the pretraining peak).
    #[arg(long, value_delimiter = ',', default_values_t = [1e-3, 3e-3, 6e-3])]
    pub max_lrs: Vec<f32>,
    /// Warm-up lengths, as shares of the continual run, of the variants at the
    /// pretraining peak rate.
    #[arg(long, value_delimiter = ',', default_values_t = [0.0, 0.005, 0.01, 0.02])]
    pub warmups: Vec<f64>,
    /// Replay share of the replay variants.
    #[arg(long, default_value_t = 0.05)]
    pub replay: f64,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Tokens (bytes) per sequence.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = 4)]
    pub n_layer: usize,
    /// Width.
    #[arg(long, default_value_t = 128)]
    pub n_embd: usize,
    /// Evaluations per continual run (and per pretraining), evenly spaced.
    #[arg(long, default_value_t = 20)]
    pub evals: u64,
    /// Validation micro-batches per domain and evaluation.
    #[arg(long, default_value_t = 4)]
    pub eval_batches: usize,
    /// Compute threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Train only the variants with these names; the report also takes in the other
    /// variants' finished runs (the pretraining is reused when present).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Train nothing: rebuild the table and the plot from the finished runs.
    #[arg(long, conflicts_with_all = ["only", "overwrite"])]
    pub report_only: bool,
    /// Start over: delete the runs of an earlier invocation in --out-dir.
    #[arg(long)]
    pub overwrite: bool,
}

/// `shoal experiment ...`.
pub fn run(c: ExperimentCommand) -> Result<()> {
    match c {
        ExperimentCommand::Rewarm(a) => rewarm(&a),
    }
}

/// One continual variant.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Variant {
    name: String,
    /// Learning-rate description for the table.
    schedule: String,
    /// Maximum rate (the constant rate without re-warming).
    max_lr: f32,
    /// Warm-up share of the run; `None` without re-warming.
    warmup: Option<f64>,
    replay: f64,
}

/// What one variant measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Outcome {
    variant: Variant,
    /// Mean validation loss on the downstream (new) data at the start, at ~10% of the
    /// run, at the end, and the lowest seen.
    downstream_start: f64,
    downstream_early: f64,
    downstream_final: f64,
    /// The same on the upstream (old) data, and the highest seen.
    upstream_start: f64,
    upstream_final: f64,
    upstream_peak: f64,
    /// Steps of the continual run and the step of `downstream_early`.
    steps: u64,
    early_step: u64,
    seconds: f64,
    /// (step, downstream mean, upstream mean) of every evaluation.
    #[serde(skip)]
    curve: Vec<(u64, f64, f64)>,
}

fn domains(list: &[String], corpus: &Path, default: &[&str]) -> Result<DataSpec> {
    let mut map = std::collections::BTreeMap::new();
    if list.is_empty() {
        for name in default {
            let path = corpus.join(format!("{name}.jsonl"));
            if !path.is_file() {
                bail!(
                    "{} not found: pass --corpus DIR, or --upstream/--downstream DOMAIN=PATH",
                    path.display()
                );
            }
            map.insert(name.to_string(), vec![path]);
        }
    }
    for spec in list {
        let (name, paths) = super::train::parse_domain(spec)?;
        map.entry(name).or_insert_with(Vec::new).extend(paths);
    }
    Ok(DataSpec::Files {
        domains: map,
        tokenizer: None,
        val_fraction: 0.05,
    })
}

/// The variants: no re-warming, each maximum rate (1% warm-up), each warm-up at the
/// pretraining peak, and replay at the pretraining peak with 1% warm-up.
fn variants(a: &RewarmArgs, final_rate: f32) -> Vec<Variant> {
    let pct = |w: f64| format!("{}%", 100.0 * w);
    let mut out = vec![Variant {
        name: "constant".into(),
        schedule: format!("constant {final_rate:.1e} (no re-warming)"),
        max_lr: final_rate,
        warmup: None,
        replay: 0.0,
    }];
    let rewarm = |lr: f32, w: f64, replay: f64| {
        let mut name = format!("lr{lr:.0e}-warm{}", pct(w));
        if replay > 0.0 {
            name += &format!("-replay{}", pct(replay));
        }
        Variant {
            name,
            schedule: format!("warm-up {} to {lr:.1e}, cosine", pct(w)),
            max_lr: lr,
            warmup: Some(w),
            replay,
        }
    };
    for &lr in &a.max_lrs {
        out.push(rewarm(lr, 0.01, 0.0));
    }
    for &w in &a.warmups {
        out.push(rewarm(a.pretrain_lr, w, 0.0));
    }
    out.push(rewarm(a.pretrain_lr, 0.01, a.replay));
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|v| seen.insert(v.name.clone()));
    out
}

/// The config both stages share.
fn base_config(a: &RewarmArgs, out_dir: PathBuf, steps: u64) -> TrainConfig {
    TrainConfig {
        model: ModelSpec {
            preset: "tiny".into(),
            n_layer: Some(a.n_layer),
            n_embd: Some(a.n_embd),
            n_positions: Some(a.seq_len.max(128)),
            ..ModelSpec::default()
        },
        batch_size: a.batch_size,
        seq_len: a.seq_len,
        max_steps: steps,
        eval_every: (steps / a.evals.max(1)).max(1),
        eval_batches: a.eval_batches,
        checkpoint_every: 0,
        keep_checkpoints: 1,
        threads: a.threads,
        out_dir,
        ..TrainConfig::default()
    }
}

/// Prints one line per evaluation.
struct Lines {
    name: String,
    started: Instant,
}

impl TrainObserver for Lines {
    fn on_step(&mut self, _: &StepStats) {}

    fn on_eval(&mut self, e: &EvalStats) {
        let mean = |m: Option<f64>| m.map_or("-".into(), |m| format!("{m:.3}"));
        let losses = match e.upstream_mean() {
            Some(up) => format!("downstream {}  upstream {up:.3}", mean(e.downstream_mean())),
            None => format!("validation {}", mean(e.downstream_mean())),
        };
        eprintln!(
            "  {:<28} step {:>5}  {losses}  ({:.0} s)",
            self.name,
            e.step,
            self.started.elapsed().as_secs_f64()
        );
    }
}

fn train(config: TrainConfig, name: &str) -> Result<f64> {
    let started = Instant::now();
    let mut trainer = Trainer::new(config)?;
    let mut lines = Lines {
        name: name.to_string(),
        started,
    };
    let summary = trainer.run(&mut lines)?;
    let plot = trainer.config().out_dir.join("loss.svg");
    crate::plot::plot_metrics(&summary.metrics, &plot)?;
    Ok(started.elapsed().as_secs_f64())
}

/// `(step, downstream mean, upstream mean)` of every evaluation of a metrics file.
fn curve(metrics: &Path) -> Result<Vec<(u64, f64, f64)>> {
    let mut out = Vec::new();
    for r in read_metrics(metrics)? {
        if let MetricsRecord::Eval {
            step,
            eval,
            upstream,
            ..
        } = r
        {
            let (down, up) = split_means(&eval, &upstream);
            out.push((step, down.unwrap_or(f64::NAN), up.unwrap_or(f64::NAN)));
        }
    }
    Ok(out)
}

fn outcome(variant: Variant, run_dir: &Path, steps: u64, seconds: f64) -> Result<Outcome> {
    let curve = curve(&run_dir.join("metrics.jsonl"))?;
    let (first, last) = match (curve.first(), curve.last()) {
        (Some(f), Some(l)) => (*f, *l),
        _ => bail!("{}: no evaluations", run_dir.display()),
    };
    // The evaluation nearest 10% of the run: after the warm-ups, early in the decay.
    let early = *curve
        .iter()
        .min_by_key(|(s, _, _)| s.abs_diff(steps / 10))
        .unwrap_or(&first);
    Ok(Outcome {
        variant,
        downstream_start: first.1,
        downstream_early: early.1,
        downstream_final: last.1,
        upstream_start: first.2,
        upstream_final: last.2,
        upstream_peak: curve.iter().map(|c| c.2).fold(f64::NEG_INFINITY, f64::max),
        steps,
        early_step: early.0,
        seconds,
        curve,
    })
}

fn table(outcomes: &[Outcome], a: &RewarmArgs, pretrain: &str) -> String {
    let mut t = String::new();
    t += &format!(
        "Continual pretraining from {pretrain}: {} steps of {} tokens per variant; mean \
         validation loss (nats/byte) over the downstream (new) and the upstream (old) \
         domains.\n\n",
        a.steps,
        a.batch_size * a.seq_len
    );
    t += "| variant | schedule | replay | downstream start | downstream @~10% | downstream final | upstream start | upstream max | upstream final | forgetting (final − start) | seconds |\n";
    t += "|---|---|---|---|---|---|---|---|---|---|---|\n";
    for o in outcomes {
        t += &format!(
            "| {} | {} | {}% | {:.3} | {:.3} (step {}) | {:.3} | {:.3} | {:.3} | {:.3} | {:+.3} | {:.0} |\n",
            o.variant.name,
            o.variant.schedule,
            100.0 * o.variant.replay,
            o.downstream_start,
            o.downstream_early,
            o.early_step,
            o.downstream_final,
            o.upstream_start,
            o.upstream_peak,
            o.upstream_final,
            o.upstream_final - o.upstream_start,
            o.seconds
        );
    }
    t
}

fn plot(outcomes: &[Outcome], out: &Path) -> Result<()> {
    let series = |o: &Outcome, pick: fn(&(u64, f64, f64)) -> f64| -> Series {
        o.curve.iter().map(|c| (c.0 as f64, pick(c))).collect()
    };
    let mut panels: Vec<Panel> = outcomes
        .iter()
        .map(|o| Panel {
            title: format!("{} ({})", o.variant.name, o.variant.schedule),
            curves: vec![
                ("downstream (new)".into(), series(o, |c| c.1), DOWNSTREAM),
                ("upstream (old)".into(), series(o, |c| c.2), UPSTREAM),
            ],
            own_y: false,
        })
        .collect();
    let palette = [
        plotters::style::RGBColor(0, 0, 0),
        plotters::style::RGBColor(31, 119, 180),
        plotters::style::RGBColor(255, 127, 14),
        plotters::style::RGBColor(44, 160, 44),
        plotters::style::RGBColor(214, 39, 40),
        plotters::style::RGBColor(148, 103, 189),
        plotters::style::RGBColor(140, 86, 75),
        plotters::style::RGBColor(227, 119, 194),
        plotters::style::RGBColor(127, 127, 127),
    ];
    for (title, pick) in [
        (
            "downstream (new data), all variants",
            (|c: &(u64, f64, f64)| c.1) as fn(&(u64, f64, f64)) -> f64,
        ),
        ("upstream (old data), all variants", |c| c.2),
    ] {
        panels.push(Panel {
            title: title.into(),
            curves: outcomes
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    (
                        o.variant.name.clone(),
                        series(o, pick),
                        palette[i % palette.len()],
                    )
                })
                .collect(),
            // Its own axis: the variants differ by less than the shared axis spans.
            own_y: true,
        });
    }
    plot_panels(
        &panels,
        3,
        "continual step",
        "continual pretraining: mean validation loss (nats/byte; a start above the axis is \
         clipped; the last two panels have axes of their own)",
        out,
    )
}

fn rewarm(a: &RewarmArgs) -> Result<()> {
    if a.steps < 10 || a.pretrain_steps < 10 {
        bail!("--steps and --pretrain-steps must be at least 10");
    }
    if a.overwrite && a.out_dir.exists() {
        std::fs::remove_dir_all(&a.out_dir)
            .with_context(|| format!("cannot remove {}", a.out_dir.display()))?;
    }
    std::fs::create_dir_all(&a.out_dir)
        .with_context(|| format!("cannot create {}", a.out_dir.display()))?;
    let upstream = domains(&a.upstream, &a.corpus, &["en_drama"])?;
    let downstream = domains(
        &a.downstream,
        &a.corpus,
        &["zh_tang", "zh_songci", "zh_classics"],
    )?;
    let total = Instant::now();

    // Pretraining on the upstream data, reused when an earlier invocation finished it.
    let pre_dir = a.out_dir.join("pretrain");
    let pre_ckpt = match resolve_checkpoint_dir(&pre_dir) {
        Ok(dir) if shoal_actors::Checkpoint::load_meta(&dir)?.step == a.pretrain_steps => {
            eprintln!("pretraining: reusing {}", dir.display());
            dir
        }
        _ if a.report_only => bail!(
            "--report-only: no pretraining of {} steps in {}",
            a.pretrain_steps,
            pre_dir.display()
        ),
        _ => {
            if pre_dir.exists() {
                std::fs::remove_dir_all(&pre_dir)
                    .with_context(|| format!("cannot remove {}", pre_dir.display()))?;
            }
            let config = TrainConfig {
                data: upstream.clone(),
                lr: a.pretrain_lr,
                min_lr: a.pretrain_lr / 10.0,
                warmup_steps: (a.pretrain_steps / 50).max(1),
                ..base_config(a, pre_dir.clone(), a.pretrain_steps)
            };
            eprintln!(
                "pretraining on {} for {} steps",
                names(&upstream),
                a.pretrain_steps
            );
            let s = train(config, "pretrain")?;
            eprintln!("pretraining took {s:.0} s");
            resolve_checkpoint_dir(&pre_dir)?
        }
    };
    let pre_meta = shoal_actors::Checkpoint::load_meta(&pre_ckpt)?;
    let final_rate = final_lr(&pre_meta).context("the pretraining checkpoint has no schedule")?;

    let all = variants(a, final_rate);
    if let Some(name) = a.only.iter().find(|n| !all.iter().any(|v| &v.name == *n)) {
        let known: Vec<&str> = all.iter().map(|v| v.name.as_str()).collect();
        bail!(
            "--only: there is no variant `{name}`; the variants are {}",
            known.join(", ")
        );
    }
    // Wall-clock seconds of the runs an earlier invocation reported.
    let json_path = a.out_dir.join("results.json");
    let earlier: Vec<Outcome> = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let mut outcomes = Vec::new();
    for v in all {
        let dir = a.out_dir.join(&v.name);
        let wanted = !a.report_only && (a.only.is_empty() || a.only.contains(&v.name));
        if !wanted {
            let done = curve(&dir.join("metrics.jsonl"))
                .is_ok_and(|c| c.last().is_some_and(|l| l.0 == a.steps));
            if done {
                let seconds = earlier
                    .iter()
                    .find(|o| o.variant.name == v.name)
                    .map_or(f64::NAN, |o| o.seconds);
                outcomes.push(outcome(v, &dir, a.steps, seconds)?);
            }
            continue;
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        let base = base_config(a, dir.clone(), a.steps);
        let tokens = a.steps * base.tokens_per_step();
        let schedule = match v.warmup {
            None => Schedule::single(tokens, 0, v.max_lr, v.max_lr, Decay::Constant),
            Some(w) => Schedule::single(
                tokens,
                (w * tokens as f64).round() as u64,
                v.max_lr,
                (a.pretrain_lr / 10.0).min(v.max_lr),
                Decay::Cosine,
            ),
        };
        let config = TrainConfig {
            // The architecture comes from the pretrained checkpoint.
            model: ModelSpec::default(),
            data: downstream.clone(),
            init: Some(pre_ckpt.clone()),
            lr: v.max_lr,
            min_lr: schedule.phases[0].min_lr,
            schedule: Some(schedule),
            replay: Some(ReplaySpec {
                fraction: v.replay,
                mixture: MixtureWeights::Uniform,
                data: upstream.clone(),
            }),
            ..base
        };
        eprintln!(
            "variant {}: {}, replay {}%",
            v.name,
            v.schedule,
            100.0 * v.replay
        );
        let seconds = train(config, &v.name)?;
        outcomes.push(outcome(v, &dir, a.steps, seconds)?);
    }

    if outcomes.is_empty() {
        bail!("no finished variant in {}", a.out_dir.display());
    }
    let pretrain = format!(
        "{} ({} steps on {}, final rate {final_rate:.1e})",
        pre_ckpt.display(),
        pre_meta.step,
        names(&upstream)
    );
    let md = table(&outcomes, a, &pretrain);
    let md_path = a.out_dir.join("results.md");
    std::fs::write(&md_path, &md).with_context(|| format!("cannot write {}", md_path.display()))?;
    let json = serde_json::to_string_pretty(&outcomes)?;
    std::fs::write(&json_path, json)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let svg = a.out_dir.join("rewarm.svg");
    plot(&outcomes, &svg)?;
    println!("{md}");
    println!("table: {}", md_path.display());
    println!("plot:  {}", svg.display());
    println!("total: {:.0} s", total.elapsed().as_secs_f64());
    Ok(())
}

fn names(spec: &DataSpec) -> String {
    match spec {
        DataSpec::Files { domains, .. } => domains.keys().cloned().collect::<Vec<_>>().join(", "),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        c: ExperimentCommand,
    }

    #[test]
    fn the_default_variants_cover_the_papers_questions() {
        let Cli {
            c: ExperimentCommand::Rewarm(a),
        } = Cli::parse_from(["x", "rewarm"]);
        let v = variants(&a, 3e-4);
        let names: Vec<&str> = v.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "constant",
                "lr1e-3-warm1%",
                "lr3e-3-warm1%",
                "lr6e-3-warm1%",
                "lr3e-3-warm0%",
                "lr3e-3-warm0.5%",
                "lr3e-3-warm2%",
                "lr3e-3-warm1%-replay5%",
            ]
        );
        assert_eq!(v[0].max_lr, 3e-4);
        assert!(v[0].warmup.is_none());
        assert_eq!(v.last().unwrap().replay, 0.05);
    }
}
