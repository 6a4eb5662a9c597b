//! `shoal doremi`: domain weights by DoReMi, and the evaluation that compares them with the
//! baseline on a main model.
//!
//! `shoal doremi run [training flags]` trains the reference on the baseline mixture
//! (`--mixture`, uniform by default) and the proxy with Group DRO, then writes
//! `OUT/weights.json`. `shoal doremi eval [training flags] --weights OUT/weights.json`
//! trains the main model once with the baseline and once with those weights, for the same
//! steps and tokens, and prints per-domain and average validation losses.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use shoal_actors::{Comparison, DoremiSpec, compare_mixtures, run_doremi};
use shoal_data::MixtureWeights;

use super::train::{TrainArgs, fresh_config};
use crate::progress::ProgressObserver;

/// `shoal doremi` subcommands.
#[derive(Subcommand, Debug)]
pub enum DoremiCommand {
    /// Train the reference and the Group DRO proxy; write OUT/weights.json.
    Run(RunArgs),
    /// Train the main model with the baseline mixture and with DoReMi's weights; compare.
    Eval(EvalArgs),
}

/// Flags of `shoal doremi run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The reference's and proxy's training flags (`--mixture` is the baseline).
    #[command(flatten)]
    pub train: Box<TrainArgs>,
    /// Use this reference checkpoint (or run directory) instead of training one.
    #[arg(long, value_name = "DIR")]
    pub reference: Option<PathBuf>,
    /// Exponentiated-gradient step size of the domain weights (η).
    #[arg(long, default_value_t = 1.0)]
    pub step_size: f64,
    /// Share of uniform mixed into the domain weights at every step (c).
    #[arg(long, default_value_t = 1e-3)]
    pub smoothing: f64,
}

/// Flags of `shoal doremi eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The main model's training flags (`--mixture` is the baseline).
    #[command(flatten)]
    pub train: Box<TrainArgs>,
    /// The weights file to compare with the baseline (as `shoal doremi run` writes it).
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
}

/// `shoal doremi`.
pub fn run(command: DoremiCommand) -> Result<()> {
    match command {
        DoremiCommand::Run(a) => doremi_run(a),
        DoremiCommand::Eval(a) => doremi_eval(a),
    }
}

/// The configuration the training flags describe, for a fresh run.
fn config_of(train: &TrainArgs) -> Result<shoal_actors::TrainConfig> {
    if train.resume.is_some() || train.procs.is_some() {
        bail!("`shoal doremi` takes neither --resume nor --procs");
    }
    let config = fresh_config(train, None)?;
    if train.overwrite && config.out_dir.exists() {
        std::fs::remove_dir_all(&config.out_dir)
            .with_context(|| format!("cannot remove {}", config.out_dir.display()))?;
    }
    Ok(config)
}

fn doremi_run(args: RunArgs) -> Result<()> {
    let config = config_of(&args.train)?;
    eprintln!(
        "DoReMi: reference {}, then a Group DRO proxy, {} steps each of {} tokens, baseline `{}` -> {}",
        if args.reference.is_some() {
            "given"
        } else {
            "trained"
        },
        config.max_steps,
        config.tokens_per_step(),
        config.mixture,
        config.out_dir.display()
    );
    let spec = DoremiSpec {
        config,
        reference: args.reference,
        step_size: args.step_size,
        smoothing: args.smoothing,
    };
    let mut progress = ProgressObserver::new();
    let result = run_doremi(&spec, &mut progress);
    progress.finish();
    let r = result?;
    println!(
        "{:<16} {:>9} {:>9} {:>9}",
        "domain", "baseline", "doremi", "last"
    );
    for (i, name) in r.domains.iter().enumerate() {
        println!(
            "{name:<16} {:>9.4} {:>9.4} {:>9.4}",
            r.baseline[i], r.average[i], r.last[i]
        );
    }
    println!(
        "weights (averaged over the proxy's steps) -> {}",
        r.weights_file.display()
    );
    Ok(())
}

fn doremi_eval(args: EvalArgs) -> Result<()> {
    let config = config_of(&args.train)?;
    let variants = vec![
        ("baseline".to_string(), config.mixture.clone()),
        ("doremi".to_string(), MixtureWeights::File(args.weights)),
    ];
    eprintln!(
        "training the main model twice ({} steps of {} tokens): `{}` and `{}` -> {}",
        config.max_steps,
        config.tokens_per_step(),
        variants[0].1,
        variants[1].1,
        config.out_dir.display()
    );
    let mut progress = ProgressObserver::new();
    let curves = compare_mixtures(&config, &variants, &mut progress);
    progress.finish();
    let curves = curves?;
    for (name, _) in &variants {
        let dir = config.out_dir.join(name);
        crate::plot::plot_metrics(&dir.join("metrics.jsonl"), &dir.join("loss.svg"))?;
    }
    let Some(c) = Comparison::of(&curves) else {
        bail!("a run made no evaluation to compare");
    };
    print!("{:<10}", "variant");
    for d in &c.domains {
        print!(" {:>12}", d);
    }
    println!(" {:>9} {:>9} {:>14}", "average", "worst", "reaches base");
    for row in &c.rows {
        print!("{:<10}", row.name);
        for l in &row.final_losses {
            print!(" {l:>12.4}");
        }
        let reach = row
            .reaches_baseline_at
            .map_or("never".to_string(), |s| format!("step {s}"));
        println!(
            " {:>9.4} {:>9.4} {reach:>14}",
            row.final_average, row.final_worst
        );
    }
    let path = config.out_dir.join("comparison.json");
    std::fs::write(&path, serde_json::to_string_pretty(&c)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "validation loss in nats per token at step {}; comparison -> {}",
        c.rows[0].final_step,
        path.display()
    );
    Ok(())
}
