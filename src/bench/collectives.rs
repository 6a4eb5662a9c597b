//! `shoal bench collectives`: bandwidth of the ring collectives, in the nccl-tests
//! convention, against the physical limits of this machine and against gloo.
//!
//! Printed in order:
//! 1. ceilings: single-thread memcpy (the limit of the in-process transport, which
//!    combines straight from a peer's memory), memcpy on all cpus at once (what W
//!    ranks that are threads share) and one raw QUIC stream between two
//!    `shoal ring-worker` processes with the cluster's TLS (the limit of a QUIC link);
//! 2. in-process: W threads with a [`shoal_collectives::LocalHub`] ring;
//! 3. QUIC: W `shoal ring-worker` processes on loopback;
//! 4. a summary at the largest size: the ratios the targets are stated in.
//!
//! With `--gloo-python`, the gloo peer (`gloo_allreduce.py` in `--peers-dir`) runs on
//! the same sizes and worlds first, and every row shows its busbw and shoal/gloo.
//!
//! Timing, as in the gloo peer: each timed iteration is barrier, t0, op, t1 on every
//! rank (the buffer is reset from the input before, untimed); an iteration's time is
//! the max over ranks; a point's time is the median over iterations. GB = 1e9 bytes;
//! algbw = S/t; busbw = algbw·2(W−1)/W for all-reduce and algbw·(W−1)/W for
//! reduce-scatter (S = whole input) and all-gather (S = whole output). For a ring,
//! busbw is the rate each link carries in its one direction.

mod ceilings;
mod gloo;
mod local;
mod quic;
mod report;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use shoal_collectives::CommConfig;

use ceilings::Ceilings;
use report::{print_legend, print_row, start_table, summary};

const MIB: u64 = 1 << 20;

/// Flags of `shoal bench collectives`.
#[derive(Args, Debug)]
pub struct BenchCollectivesArgs {
    /// Buffer sizes in MiB of f32.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    pub sizes_mib: Vec<f64>,
    /// World sizes (ranks).
    #[arg(long, value_delimiter = ',', default_value = "2,4")]
    pub worlds: Vec<usize>,
    /// Transports: threads of this process, or processes over QUIC.
    #[arg(long, value_delimiter = ',', default_value = "local,quic")]
    pub transports: Vec<Transport>,
    /// Collectives to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "all_reduce,reduce_scatter,all_gather"
    )]
    pub ops: Vec<Op>,
    /// Timed iterations per point; 0 = 512 MiB / size, clamped to 5..=20.
    #[arg(long, default_value_t = 0)]
    pub iters: usize,
    /// Untimed warm-up iterations per point.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Largest piece of a buffer sent as one frame, in KiB (default: the
    /// communicator's default, 1024).
    #[arg(long)]
    pub chunk_kib: Option<usize>,
    /// Bytes of the raw QUIC stream ceiling, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub stream_mib: u64,
    /// A Python with PyTorch: run the gloo peer (`gloo_allreduce.py` in `--peers-dir`)
    /// on the same sizes and worlds and compare against it.
    #[arg(long, value_name = "PYTHON")]
    pub gloo_python: Option<PathBuf>,
    /// Where the peer baselines live.
    #[arg(long, default_value = "../shared/bench/peers")]
    pub peers_dir: PathBuf,
}

/// A transport to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// Ranks are threads of this process (zero-copy in-process transport).
    Local,
    /// Ranks are `shoal ring-worker` processes talking QUIC on loopback.
    Quic,
}

/// A collective to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
pub enum Op {
    /// Sum over all ranks, in place.
    #[value(name = "all_reduce")]
    AllReduce,
    /// Sum over all ranks, each rank keeping its shard.
    #[value(name = "reduce_scatter")]
    ReduceScatter,
    /// Every rank's shard to every rank.
    #[value(name = "all_gather")]
    AllGather,
}

impl Op {
    /// The name in tables and in the ring worker's `run` request.
    pub fn name(self) -> &'static str {
        match self {
            Op::AllReduce => "all_reduce",
            Op::ReduceScatter => "reduce_scatter",
            Op::AllGather => "all_gather",
        }
    }

    /// The name of the same collective in the gloo peer's results.
    pub fn gloo_name(self) -> &'static str {
        match self {
            Op::AllReduce => "all_reduce",
            Op::ReduceScatter => "reduce_scatter_tensor",
            Op::AllGather => "all_gather_into_tensor",
        }
    }

    /// busbw / algbw (nccl-tests): the share of the buffer each rank's link carries.
    pub fn bus_factor(self, world: usize) -> f64 {
        let w = world as f64;
        match self {
            Op::AllReduce => 2.0 * (w - 1.0) / w,
            Op::ReduceScatter | Op::AllGather => (w - 1.0) / w,
        }
    }
}

/// What every transport measures in the same way.
struct Plan {
    sizes_mib: Vec<f64>,
    ops: Vec<Op>,
    iters: usize,
    warmup: usize,
    chunk_bytes: usize,
    seed: u64,
}

impl Plan {
    /// Elements of a `mib` MiB buffer for `world` ranks, as the gloo peer sizes it
    /// (a multiple of `world`, so both compare the same bytes).
    fn len(&self, mib: f64, world: usize) -> usize {
        let len = (mib * MIB as f64) as usize / 4;
        len - len % world
    }

    /// Timed iterations for a buffer of `bytes`.
    fn iters_for(&self, bytes: u64) -> usize {
        if self.iters > 0 {
            self.iters
        } else {
            ((512 * MIB) / bytes.max(1)).clamp(5, 20) as usize
        }
    }
}

/// Whether a point's results were right.
#[derive(Debug, Clone, PartialEq)]
enum Check {
    Ok,
    Failed(String),
    /// Nothing to compare against (say, reduce-scatter over QUIC without an
    /// all-reduce of the same size to check it with).
    Skipped,
}

/// One measured (op, world, size) of one transport.
#[derive(Debug, Clone)]
struct Point {
    op: Op,
    world: usize,
    size_mib: f64,
    bytes: u64,
    iters: usize,
    /// Median over iterations of the max over ranks.
    seconds: f64,
    /// Shares of the ranks' op time spent combining received data into the buffer
    /// and waiting for frames.
    combine: Option<f64>,
    wait: Option<f64>,
    /// CPU cores busy during the timed loop, all ranks together.
    cpu_cores: Option<f64>,
    check: Check,
}

impl Point {
    fn algbw(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e9
    }

    fn busbw(&self) -> f64 {
        self.algbw() * self.op.bus_factor(self.world)
    }
}

/// Median (the mean of the middle two for an even count, as Python's).
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Per-iteration max over ranks of each rank's iteration times, then the median.
fn iteration_time(per_rank: &[Vec<f64>]) -> f64 {
    let iters = per_rank.iter().map(Vec::len).min().unwrap_or(0);
    let worst: Vec<f64> = (0..iters)
        .map(|i| per_rank.iter().map(|r| r[i]).fold(0.0, f64::max))
        .collect();
    median(&worst)
}

/// A directory removed when dropped (the cluster's certificates live here).
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `shoal bench collectives`.
pub fn run(a: BenchCollectivesArgs) -> Result<()> {
    if a.sizes_mib.iter().any(|&s| s.is_nan() || s <= 0.0) || a.worlds.iter().any(|&w| w < 2) {
        bail!("--sizes-mib must be positive and --worlds at least 2");
    }
    if a.ops.is_empty() || a.transports.is_empty() || a.stream_mib == 0 {
        bail!("--ops, --transports and --stream-mib must not be empty");
    }
    let chunk_bytes = a
        .chunk_kib
        .map_or(CommConfig::default().chunk_bytes, |k| k * 1024);
    let plan = Plan {
        sizes_mib: a.sizes_mib.clone(),
        ops: a.ops.clone(),
        iters: a.iters,
        warmup: a.warmup,
        chunk_bytes,
        seed: 0x5e_ed,
    };
    let iters = if a.iters == 0 {
        "512 MiB / size in 5..=20".to_string()
    } else {
        a.iters.to_string()
    };
    println!(
        "shoal bench collectives: f32 sum, {} warm-up + {iters} timed iterations per point, \
         chunks of {} KiB, {} cpus; time = median over iterations of the max over ranks",
        a.warmup,
        chunk_bytes / 1024,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    let started = Instant::now();
    let quic = a.transports.contains(&Transport::Quic);
    let exe = std::env::current_exe().context("cannot find the shoal executable")?;
    let cluster = TempDir::new("shoal-bench-cluster")?;
    if quic {
        let nodes = a.worlds.iter().copied().max().unwrap_or(2);
        shoal::launch::make_cluster(&cluster.0, nodes).context("cannot make a test cluster")?;
    }

    let ceilings = Ceilings::measure(&a, &plan, &exe, &cluster.0, quic)?;

    let mut points: Vec<(Transport, Point)> = Vec::new();
    for &t in &a.transports {
        let title = match t {
            Transport::Local => "in-process (threads, zero-copy LocalHub ring)",
            Transport::Quic => "QUIC (ring-worker processes on loopback, mutual TLS)",
        };
        println!("\n{title}");
        let table = start_table(t, ceilings.gloo.is_some());
        for &world in &a.worlds {
            let mut report = |p: Point| {
                print_row(&table, t, &p, &ceilings);
                points.push((t, p));
            };
            match t {
                Transport::Local => local::run_world(world, &plan, &mut report),
                Transport::Quic => quic::run_world(&exe, &cluster.0, world, &plan, &mut report),
            }
            .with_context(|| format!("{t:?} world {world} failed"))?;
        }
    }
    print_legend(&a.transports, ceilings.gloo.is_some());
    summary(&points, &ceilings);
    println!("\ntotal {:.0} s", started.elapsed().as_secs_f64());
    let failed = points
        .iter()
        .filter(|(_, p)| matches!(p.check, Check::Failed(_)))
        .count();
    if failed > 0 {
        bail!("{failed} point(s) gave wrong results (rows marked FAILED)");
    }
    Ok(())
}

/// The peers directory's script, with a clear error when it is missing.
fn peer_script(peers_dir: &Path, name: &str) -> Result<PathBuf> {
    let script = peers_dir.join(name);
    if !script.is_file() {
        bail!(
            "{} not found (pass --peers-dir with the peer baselines)",
            script.display()
        );
    }
    Ok(script)
}

/// Results keyed by (op, world, bytes).
type ByPoint<T> = HashMap<(Op, usize, u64), T>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_bandwidth_follows_nccl_tests() {
        // 1 GB in 1 s: algbw 1 GB/s for every op.
        let point = |op, world| Point {
            op,
            world,
            size_mib: 0.0,
            bytes: 1_000_000_000,
            iters: 1,
            seconds: 1.0,
            combine: None,
            wait: None,
            cpu_cores: None,
            check: Check::Ok,
        };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(point(Op::AllReduce, 2).algbw(), 1.0));
        assert!(close(point(Op::AllReduce, 2).busbw(), 1.0));
        assert!(close(point(Op::AllReduce, 4).busbw(), 1.5));
        assert!(close(point(Op::ReduceScatter, 4).busbw(), 0.75));
        assert!(close(point(Op::AllGather, 2).busbw(), 0.5));
    }

    #[test]
    fn iteration_time_is_the_median_of_the_slowest_rank() {
        let per_rank = vec![vec![1.0, 5.0, 3.0, 2.0], vec![2.0, 1.0, 4.0, 2.0]];
        // Per-iteration max: 2, 5, 4, 2 -> median of 2, 2, 4, 5 = 3.
        assert_eq!(iteration_time(&per_rank), 3.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn sizes_and_iterations_match_the_gloo_peer() {
        let plan = Plan {
            sizes_mib: vec![],
            ops: vec![],
            iters: 0,
            warmup: 0,
            chunk_bytes: 1 << 20,
            seed: 0,
        };
        assert_eq!(plan.len(1.0, 4), 1 << 18);
        assert_eq!(plan.len(0.001, 3), 261);
        assert_eq!(plan.iters_for(MIB), 20);
        assert_eq!(plan.iters_for(64 * MIB), 8);
        assert_eq!(plan.iters_for(256 * MIB), 5);
    }
}
