//! The `shoal` command line: train GPT-style models, sample from them, move weights
//! between shoal checkpoints and Hugging Face directories, and measure throughput.
//!
//! Errors end here: each is printed as `error: ...` with its chain of causes and the
//! process exits with status 1.

mod bench;
mod commands;
mod peak;
mod plot;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Actor-based, elastic training for transformer language models.
#[derive(Parser)]
#[command(name = "shoal", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train the tiny model on the built-in corpus for a minute or two, then sample from it.
    Demo(commands::demo::DemoArgs),
    /// Train a model (flags and/or a TOML config file; flags win).
    Train(Box<commands::train::TrainArgs>),
    /// Continue a prompt with a trained model.
    Generate(commands::generate::GenerateArgs),
    /// Write a shoal checkpoint's weights as a Hugging Face GPT-2 directory.
    Export(commands::convert::ExportArgs),
    /// Turn a Hugging Face GPT-2 directory into a shoal checkpoint (step 0, zero moments).
    Import(commands::convert::ImportArgs),
    /// Corpus preparation: normalize, filter, deduplicate (exact and MinHash LSH, global
    /// across domains).
    #[command(subcommand)]
    Data(commands::data::DataCommand),
    /// DoReMi domain weights (reference + Group DRO proxy), and their evaluation.
    #[command(subcommand)]
    Doremi(commands::doremi::DoremiCommand),
    /// Experiments that reproduce published findings at a small scale.
    #[command(subcommand)]
    Experiment(commands::experiment::ExperimentCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// The cluster's certificate authority and node certificates.
    #[command(subcommand)]
    Cluster(commands::cluster::ClusterCommand),
    /// One node of an elastic run: `--join` a coordinator, or `--listen` with one
    /// embedded.
    Node(commands::node::NodeArgs),
    /// The coordinator of an elastic run, standalone, with its control plane.
    Coordinator(commands::coordinator::CoordinatorArgs),
    /// Change a running cluster: drain a node (through the control plane).
    Scale(commands::coordinator::ScaleArgs),
    /// One rank of a multi-process collectives run, driven by JSON lines on stdin
    /// (used by the tests and `shoal bench collectives`).
    #[command(hide = true)]
    RingWorker(commands::ring_worker::RingWorkerArgs),
    /// Runs every GPU kernel against its CPU kernel and times cuBLAS (built with `--features cuda`).
    #[cfg(feature = "cuda")]
    #[command(hide = true)]
    GpuCheck(commands::gpu_check::GpuCheckArgs),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Demo(a) => commands::demo::run(a),
        Command::Train(a) => commands::train::run(*a),
        Command::Generate(a) => commands::generate::run(a),
        Command::Export(a) => commands::convert::export(a),
        Command::Import(a) => commands::convert::import(a),
        Command::Data(c) => commands::data::run(c),
        Command::Doremi(c) => commands::doremi::run(c),
        Command::Experiment(c) => commands::experiment::run(c),
        Command::Bench(b) => bench::run(b),
        Command::Cluster(c) => commands::cluster::run(c),
        Command::Node(a) => commands::node::run(a),
        Command::Coordinator(a) => commands::coordinator::run(a),
        Command::Scale(a) => commands::coordinator::scale(a),
        Command::RingWorker(a) => commands::ring_worker::run(a),
        #[cfg(feature = "cuda")]
        Command::GpuCheck(a) => commands::gpu_check::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Library errors often repeat their source in their own message; print each
            // cause only when it adds something.
            let mut shown = e.to_string();
            eprintln!("error: {shown}");
            for cause in e.chain().skip(1) {
                let text = cause.to_string();
                if !shown.contains(&text) {
                    eprintln!("  caused by: {text}");
                    shown = text;
                }
            }
            ExitCode::FAILURE
        }
    }
}
