//! QUIC points: W `shoal ring-worker` processes on loopback, driven with
//! [`shoal::launch`]; and the single raw stream that is their ceiling.
//!
//! Results are checked with the CRCs the workers report: every rank's all-reduce
//! and all-gather result must be bitwise the same, and each rank's reduce-scatter
//! shard bitwise the same as that shard of the all-reduce of the same size (both
//! reduce in the same ring order).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use shoal::launch::{RingWorker, StreamProbe, form, run_all, stream_probe};

use super::{Check, Op, Plan, Point, iteration_time};

/// QUIC idle timeout of the workers: generous, since on a busy 2-core machine
/// keep-alives can be late.
const IDLE_TIMEOUT_MS: u64 = 10_000;

/// Shortest timed loop whose CPU share is shown: CPU time comes in 10 ms ticks.
const MIN_CPU_WINDOW_S: f64 = 0.5;

/// Deadline of every op inside the workers.
const OP_TIMEOUT: Duration = Duration::from_secs(60);

fn spawn(exe: &Path, cluster: &Path, world: usize) -> Result<Vec<RingWorker>> {
    (0..world)
        .map(|i| {
            RingWorker::spawn(exe, cluster, &format!("node-{i}"), IDLE_TIMEOUT_MS)
                .with_context(|| format!("cannot start ring worker node-{i}"))
        })
        .collect()
}

/// `reps` raw streams of `bytes` bytes from node-1 to node-0.
pub(super) fn stream_ceiling(
    exe: &Path,
    cluster: &Path,
    bytes: u64,
    reps: usize,
) -> Result<Vec<StreamProbe>> {
    let mut workers = spawn(exe, cluster, 2)?;
    let (sink, source) = workers.split_at_mut(1);
    (0..reps)
        .map(|_| {
            stream_probe(
                &mut sink[0],
                &mut source[0],
                bytes,
                Duration::from_secs(120),
            )
            .context("the raw QUIC stream probe failed")
        })
        .collect()
}

/// What one worker's `done` event says.
struct Done {
    seconds: Vec<f64>,
    crc32: u64,
    shard_crc32: Option<u64>,
    combine_s: Option<f64>,
    wait_s: Option<f64>,
    cpu_s: Option<f64>,
    loop_s: Option<f64>,
}

fn parse_done(rank: usize, e: &Value) -> Result<Done> {
    if e["event"] != "done" {
        bail!("rank {rank}: {e}");
    }
    let seconds = e["seconds"]
        .as_array()
        .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
        .with_context(|| format!("rank {rank}: no seconds in {e}"))?;
    let timed = &e["timed"];
    Ok(Done {
        seconds,
        crc32: e["crc32"]
            .as_u64()
            .with_context(|| format!("rank {rank}: no crc32 in {e}"))?,
        shard_crc32: e["shard_crc32"].as_u64(),
        combine_s: timed["combine_s"].as_f64(),
        wait_s: timed["wait_s"].as_f64(),
        cpu_s: timed["cpu_s"].as_f64(),
        loop_s: timed["loop_s"].as_f64(),
    })
}

/// The sum of `f` over ranks, if every rank reported it.
fn total(done: &[Done], f: impl Fn(&Done) -> Option<f64>) -> Option<f64> {
    done.iter().map(f).sum()
}

fn check(op: Op, done: &[Done], all_reduce_shards: Option<&[Option<u64>]>) -> Check {
    let same = |what: &str| match done.iter().position(|d| d.crc32 != done[0].crc32) {
        Some(r) => Check::Failed(format!("rank {r}'s {what} result differs from rank 0's")),
        None => Check::Ok,
    };
    match op {
        Op::AllReduce => same("all-reduce"),
        Op::AllGather => same("all-gather"),
        Op::ReduceScatter => {
            let Some(shards) = all_reduce_shards else {
                return Check::Skipped;
            };
            match done
                .iter()
                .zip(shards)
                .position(|(d, s)| Some(d.crc32) != *s)
            {
                Some(r) => Check::Failed(format!(
                    "rank {r}'s reduce-scatter shard differs from its all-reduce shard"
                )),
                None => Check::Ok,
            }
        }
    }
}

/// Measures every size and op of `plan` on a ring of `world` worker processes.
pub(super) fn run_world(
    exe: &Path,
    cluster: &Path,
    world: usize,
    plan: &Plan,
    report: &mut dyn FnMut(Point),
) -> Result<()> {
    let mut workers = spawn(exe, cluster, world)?;
    // A form request's timeout is also the deadline of every op of the ring.
    let formed = form(&mut workers, 1, OP_TIMEOUT, plan.chunk_bytes)?;
    for (rank, f) in formed.iter().enumerate() {
        if f["event"] != "formed" {
            bail!("rank {rank} could not join the ring: {f}");
        }
    }
    for (index, &size_mib) in plan.sizes_mib.iter().enumerate() {
        let len = plan.len(size_mib, world);
        let bytes = (len * 4) as u64;
        let mut all_reduce_shards: Option<Vec<Option<u64>>> = None;
        for &op in &plan.ops {
            let iters = plan.iters_for(bytes);
            let request = json!({"cmd": "run", "op": op.name(), "len": len,
                                 "seed": plan.seed, "input": index, "iters": iters,
                                 "warmup": plan.warmup});
            // Each op has its deadline inside the workers; this only bounds a hang.
            let limit = OP_TIMEOUT * (plan.warmup + iters + 2) as u32;
            let outcomes = run_all(&mut workers, &request, limit)
                .with_context(|| format!("{} of {size_mib} MiB", op.name()))?;
            let done = outcomes
                .iter()
                .enumerate()
                .map(|(rank, e)| parse_done(rank, e))
                .collect::<Result<Vec<_>>>()
                .with_context(|| format!("{} of {size_mib} MiB", op.name()))?;
            if op == Op::AllReduce {
                all_reduce_shards = Some(done.iter().map(|d| d.shard_crc32).collect());
            }
            let per_rank: Vec<Vec<f64>> = done.iter().map(|d| d.seconds.clone()).collect();
            let op_time: f64 = per_rank.iter().flatten().sum();
            let share = |x: Option<f64>| x.filter(|_| op_time > 0.0).map(|x| x / op_time);
            let loop_s = total(&done, |d| d.loop_s).map(|s| s / world as f64);
            let cpu = total(&done, |d| d.cpu_s);
            report(Point {
                op,
                world,
                size_mib,
                bytes,
                iters,
                seconds: iteration_time(&per_rank),
                combine: share(total(&done, |d| d.combine_s)),
                wait: share(total(&done, |d| d.wait_s)),
                cpu_cores: cpu
                    .zip(loop_s.filter(|&s| s >= MIN_CPU_WINDOW_S))
                    .map(|(c, s)| c / s),
                check: check(op, &done, all_reduce_shards.as_deref()),
            });
        }
    }
    Ok(())
}
