//! `shoal bench`: programs that measure shoal against physical limits and peer
//! baselines and print tables.
//! - [`train`]: training throughput against the GEMM/FMA peak and PyTorch;
//! - [`collectives`]: ring collectives (in-process and QUIC) against memcpy, a raw
//!   QUIC stream and gloo.

use anyhow::Result;
use clap::Subcommand;

pub mod collectives;
pub mod train;

/// Benchmarks.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Training throughput (tokens/s, step time, model FLOP utilisation).
    Train(train::BenchTrainArgs),
    /// Collectives bandwidth (all-reduce, reduce-scatter, all-gather) over threads and
    /// over QUIC between processes, against memcpy, one raw QUIC stream and gloo.
    Collectives(collectives::BenchCollectivesArgs),
}

/// `shoal bench ...`.
pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Train(a) => train::run(a),
        BenchCommand::Collectives(a) => collectives::run(a),
    }
}
