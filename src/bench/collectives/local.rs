//! In-process points: W threads of this process, one [`LocalHub`] ring, checked
//! against a sum (or the inputs) computed here once per size.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use shoal_collectives::pattern::pattern;
use shoal_collectives::{
    CollectiveError, CommConfig, Communicator, LocalHub, ReduceOp, shard_range,
};

use super::{Check, Op, Plan, Point, iteration_time};

/// Largest difference from the sum computed here that a ring sum may show: values
/// are in [-0.5, 0.5) and the ring adds them in another order.
const TOLERANCE: f32 = 1e-5;

/// One rank's timed iterations.
struct RankRun {
    seconds: Vec<f64>,
    combine: Duration,
    wait: Duration,
}

/// Runs `warmup + iters` iterations of `op` on one rank: reset, barrier, op.
fn rank_loop(
    c: &mut Communicator,
    input: &[f32],
    buf: &mut [f32],
    op: Op,
    warmup: usize,
    iters: usize,
) -> Result<RankRun, CollectiveError> {
    let mut run = RankRun {
        seconds: Vec::with_capacity(iters),
        combine: Duration::ZERO,
        wait: Duration::ZERO,
    };
    for i in 0..warmup + iters {
        buf.copy_from_slice(input);
        c.barrier()?;
        let before = c.stats();
        let t0 = std::time::Instant::now();
        match op {
            Op::AllReduce => c.all_reduce(buf, ReduceOp::Sum),
            Op::ReduceScatter => c.reduce_scatter(buf, ReduceOp::Sum).map(|_| ()),
            Op::AllGather => c.all_gather(buf),
        }?;
        let dt = t0.elapsed().as_secs_f64();
        if i >= warmup {
            let after = c.stats();
            run.seconds.push(dt);
            run.combine += after.combine_time.saturating_sub(before.combine_time);
            run.wait += after.wait_time.saturating_sub(before.wait_time);
        }
    }
    Ok(run)
}

/// The first element where `got` is further than [`TOLERANCE`] from `want`.
fn first_far(got: &[f32], want: &[f32], offset: usize) -> Option<String> {
    got.iter()
        .zip(want)
        .position(|(g, w)| (g - w).abs() > TOLERANCE)
        .map(|i| format!("element {}: {} instead of {}", offset + i, got[i], want[i]))
}

/// Checks every rank's buffer after `op`.
fn check(op: Op, inputs: &[Vec<f32>], bufs: &[Vec<f32>], sum: Option<&[f32]>) -> Check {
    let world = bufs.len();
    let len = bufs[0].len();
    let failed = |rank: usize, why: String| Check::Failed(format!("rank {rank}: {why}"));
    match op {
        Op::AllReduce => {
            let first: &[u8] = bytemuck::cast_slice(&bufs[0]);
            if let Some(r) =
                (1..world).find(|&r| bytemuck::cast_slice::<f32, u8>(&bufs[r]) != first)
            {
                return failed(r, "all-reduce result differs from rank 0's".into());
            }
            match sum.and_then(|s| first_far(&bufs[0], s, 0)) {
                Some(why) => failed(0, why),
                None => Check::Ok,
            }
        }
        Op::ReduceScatter => {
            let Some(sum) = sum else {
                return Check::Skipped;
            };
            for (r, buf) in bufs.iter().enumerate() {
                let s = shard_range(len, world, r);
                if let Some(why) = first_far(&buf[s.clone()], &sum[s.clone()], s.start) {
                    return failed(r, why);
                }
            }
            Check::Ok
        }
        Op::AllGather => {
            for (r, buf) in bufs.iter().enumerate() {
                for (owner, input) in inputs.iter().enumerate() {
                    let s = shard_range(len, world, owner);
                    if buf[s.clone()] != input[s.clone()] {
                        return failed(r, format!("shard {owner} is not rank {owner}'s input"));
                    }
                }
            }
            Check::Ok
        }
    }
}

/// Measures every size and op of `plan` on a ring of `world` threads.
pub(super) fn run_world(world: usize, plan: &Plan, report: &mut dyn FnMut(Point)) -> Result<()> {
    let config = CommConfig {
        chunk_bytes: plan.chunk_bytes,
        timeout: Duration::from_secs(60),
        ..CommConfig::default()
    };
    let mut comms = LocalHub::new().group(world, config)?;
    for (index, &size_mib) in plan.sizes_mib.iter().enumerate() {
        let len = plan.len(size_mib, world);
        let bytes = (len * 4) as u64;
        // Rank r's input, generated on r's thread.
        let inputs: Vec<Vec<f32>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..world)
                .map(|r| s.spawn(move || pattern(plan.seed, (index * 1024 + r) as u64, len)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| anyhow!("input generation panicked")))
                .collect::<Result<_>>()
        })?;
        let sum = plan.ops.iter().any(|&op| op != Op::AllGather).then(|| {
            let mut sum = inputs[0].clone();
            for input in &inputs[1..] {
                sum.iter_mut().zip(input).for_each(|(s, x)| *s += x);
            }
            sum
        });
        let mut bufs = inputs.clone();
        for &op in &plan.ops {
            let iters = plan.iters_for(bytes);
            let runs: Vec<RankRun> = std::thread::scope(|s| {
                let handles: Vec<_> = comms
                    .iter_mut()
                    .zip(&inputs)
                    .zip(bufs.iter_mut())
                    .map(|((c, input), buf)| {
                        s.spawn(move || rank_loop(c, input, buf, op, plan.warmup, iters))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| match h.join() {
                        Ok(run) => run.context("a rank failed"),
                        Err(_) => Err(anyhow!("a rank panicked")),
                    })
                    .collect::<Result<_>>()
            })
            .with_context(|| format!("{} of {size_mib} MiB", op.name()))?;
            let per_rank: Vec<Vec<f64>> = runs.iter().map(|r| r.seconds.clone()).collect();
            let op_time: f64 = per_rank.iter().flatten().sum();
            let share = |d: Duration| (op_time > 0.0).then(|| d.as_secs_f64() / op_time);
            report(Point {
                op,
                world,
                size_mib,
                bytes,
                iters,
                seconds: iteration_time(&per_rank),
                combine: share(runs.iter().map(|r| r.combine).sum()),
                wait: share(runs.iter().map(|r| r.wait).sum()),
                cpu_cores: None,
                check: check(op, &inputs, &bufs, sum.as_deref()),
            });
        }
    }
    Ok(())
}
