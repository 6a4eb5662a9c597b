//! `shoal bench`: programs that measure shoal against physical limits and peer
//! baselines and print tables.
//! - [`train`]: training throughput against the GEMM/FMA peak and PyTorch;
//! - [`collectives`]: ring collectives (in-process and QUIC) against memcpy, a raw
//!   QUIC stream and gloo;
//! - [`device_collectives`]: collectives over GPU buffers (NCCL, CUDA IPC ring)
//!   against the device's copy bandwidth;
//! - [`zero`]: data-parallel steps per ZeRO stage against one rank alone and PyTorch
//!   DDP/FSDP;
//! - [`elastic`]: failure detection, recovery, joining and mirroring of elastic runs;
//! - [`recompute`]: activation bytes per recompute policy against Korthikanti et al.'s
//!   accounting, its step-time price, tiled vs naive attention, the longest sequence a
//!   budget allows.

use anyhow::Result;
use clap::Subcommand;

pub mod collectives;
pub mod device_collectives;
pub mod elastic;
mod heap;
pub mod recompute;
pub mod train;
pub mod zero;

/// Benchmarks.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Training throughput (tokens/s, step time, model FLOP utilisation).
    Train(train::BenchTrainArgs),
    /// Collectives bandwidth (all-reduce, reduce-scatter, all-gather) over threads and
    /// over QUIC between processes, against memcpy, one raw QUIC stream and gloo.
    Collectives(collectives::BenchCollectivesArgs),
    /// Collectives over GPU buffers (NCCL or the CUDA IPC ring), against the device's
    /// copy bandwidth (needs `--features cuda`).
    DeviceCollectives(device_collectives::BenchDeviceCollectivesArgs),
    /// Data-parallel training steps per ZeRO stage (ranks as threads).
    Zero(zero::BenchZeroArgs),
    /// Elastic runs on loopback: failure detection and recovery, joining, mirroring.
    Elastic(elastic::BenchElasticArgs),
    /// Activation memory per recompute policy, its step-time price, tiled vs naive
    /// attention, and the longest sequence an activation budget allows.
    Recompute(recompute::BenchRecomputeArgs),
}

/// `shoal bench ...`.
pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Train(a) => train::run(a),
        BenchCommand::Collectives(a) => collectives::run(a),
        BenchCommand::DeviceCollectives(a) => device_collectives::run(a),
        BenchCommand::Zero(a) => zero::run(a),
        BenchCommand::Elastic(a) => elastic::run(a),
        BenchCommand::Recompute(a) => recompute::run(a),
    }
}
