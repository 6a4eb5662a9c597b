//! The collectives over the in-process transport: every op against a naive
//! reduction for many lengths and world sizes, non-blocking ops, delays, a
//! rank killed in the middle of an all-reduce, and a rank that goes silent.

use std::thread;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shoal_collectives::{
    CollectiveError, CommConfig, Communicator, LocalFaults, LocalHub, ReduceOp, shard_range,
};

fn inputs(world: usize, len: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..world)
        .map(|_| (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect())
        .collect()
}

fn naive(inputs: &[Vec<f32>], op: ReduceOp) -> Vec<f32> {
    (0..inputs[0].len())
        .map(|i| {
            let v = inputs.iter().map(|b| b[i] as f64);
            match op {
                ReduceOp::Sum => v.sum::<f64>() as f32,
                ReduceOp::Mean => (v.sum::<f64>() / inputs.len() as f64) as f32,
                ReduceOp::Max => v.fold(f64::NEG_INFINITY, f64::max) as f32,
            }
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], world: usize) {
    assert_eq!(got.len(), want.len());
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * world as f32,
            "element {i}: {a} vs {b}"
        );
    }
}

/// Runs `f` on every rank's thread and returns the results in rank order.
fn on_ranks<T: Send>(comms: Vec<Communicator>, f: impl Fn(Communicator) -> T + Sync) -> Vec<T> {
    thread::scope(|s| {
        let handles: Vec<_> = comms.into_iter().map(|c| s.spawn(|| f(c))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    })
}

fn small_chunks() -> CommConfig {
    CommConfig {
        chunk_bytes: 64,
        timeout: Duration::from_secs(10),
        ..CommConfig::default()
    }
}

/// Every op, checked on every rank, in one ring.
fn check_all_ops(world: usize, len: usize, seed: u64, faults: LocalFaults) {
    let ins = inputs(world, len, seed);
    let root = seed as usize % world;
    let comms = LocalHub::with_faults(faults)
        .group(world, small_chunks())
        .unwrap();
    let results = on_ranks(comms, |mut c| {
        let r = c.rank();
        let mut out = Vec::new();
        for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
            let mut b = ins[r].clone();
            c.all_reduce(&mut b, op).unwrap();
            out.push(b);
            let mut b = ins[r].clone();
            let range = c.reduce_scatter(&mut b, op).unwrap();
            assert_eq!(range, shard_range(len, world, r));
            out.push(b[range].to_vec());
        }
        let mut b = ins[r].clone();
        c.all_gather(&mut b).unwrap();
        out.push(b);
        let mut b = ins[r].clone();
        c.broadcast(&mut b, root).unwrap();
        out.push(b);
        let mut bytes: Vec<u8> = ins[r].iter().map(|x| (x * 100.0) as i8 as u8).collect();
        c.broadcast_bytes(&mut bytes, root).unwrap();
        out.push(bytes.iter().map(|&b| b as f32).collect());
        c.barrier().unwrap();
        out
    });
    for (r, out) in results.iter().enumerate() {
        let mut i = 0;
        for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
            let want = naive(&ins, op);
            assert_close(&out[i], &want, world);
            assert_eq!(out[i], results[0][i], "all-reduce differs between ranks");
            assert_close(&out[i + 1], &want[shard_range(len, world, r)], world);
            i += 2;
        }
        let mut gathered = vec![0.0; len];
        for (owner, input) in ins.iter().enumerate() {
            let s = shard_range(len, world, owner);
            gathered[s.clone()].copy_from_slice(&input[s]);
        }
        assert_eq!(out[i], gathered);
        assert_eq!(out[i + 1], ins[root]);
        let root_bytes: Vec<f32> = ins[root]
            .iter()
            .map(|x| (x * 100.0) as i8 as u8 as f32)
            .collect();
        assert_eq!(out[i + 2], root_bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Threads, real channels, random lengths (0 and 1 included), worlds 1..8.
    #[test]
    fn every_op_matches_naive(world in 1usize..=8, len in prop_oneof![Just(0usize), Just(1), 0usize..500], seed: u64) {
        check_all_ops(world, len, seed, LocalFaults::default());
    }
}

#[test]
fn random_delays_change_nothing() {
    let faults = LocalFaults {
        max_delay: Duration::from_micros(300),
        seed: 7,
        kill_after_sends: None,
    };
    check_all_ops(5, 333, 11, faults);
}

#[test]
fn large_buffers_pipeline_in_chunks() {
    let (world, len) = (3, 1 << 20);
    let ins = inputs(world, len, 5);
    let want = naive(&ins, ReduceOp::Sum);
    let comms = LocalHub::new()
        .group(
            world,
            CommConfig {
                chunk_bytes: 64 << 10,
                ..CommConfig::default()
            },
        )
        .unwrap();
    let outs = on_ranks(comms, |mut c| {
        let mut b = ins[c.rank()].clone();
        c.all_reduce(&mut b, ReduceOp::Sum).unwrap();
        let stats = c.stats();
        // 2(W-1) steps of 1 MiB / 3 / 64 KiB pieces each.
        assert!(stats.frames_sent >= 2 * 2 * 6, "{stats:?}");
        b
    });
    for out in outs {
        assert_close(&out, &want, world);
    }
}

#[test]
fn non_blocking_ops_run_in_issue_order_and_overlap_with_work() {
    let world = 4;
    let ins = inputs(world, 1000, 3);
    let comms = LocalHub::new().group(world, small_chunks()).unwrap();
    let outs = on_ranks(comms, |mut c| {
        let r = c.rank();
        let a = c.all_reduce_async(ins[r].clone(), ReduceOp::Sum);
        let b = c.reduce_scatter_async(ins[r].clone(), ReduceOp::Max);
        // A blocking op issued after them waits for them.
        let mut x = vec![r as f32];
        c.all_reduce(&mut x, ReduceOp::Sum).unwrap();
        let busy: f32 = (0..10_000).map(|i| (i as f32).sqrt()).sum();
        assert!(busy > 0.0);
        let g = c.all_gather_async(ins[r].clone());
        (
            a.wait().unwrap(),
            b.wait().unwrap(),
            x[0],
            g.wait().unwrap(),
            r,
        )
    });
    let sum = naive(&ins, ReduceOp::Sum);
    let max = naive(&ins, ReduceOp::Max);
    for (a, b, x, g, r) in outs {
        assert_close(&a, &sum, world);
        let s = shard_range(1000, world, r);
        assert_close(&b[s.clone()], &max[s], world);
        assert_eq!(x, 6.0);
        for (owner, input) in ins.iter().enumerate() {
            let s = shard_range(1000, world, owner);
            assert_eq!(g[s.clone()], input[s]);
        }
    }
}

/// A rank dies in the middle of an all-reduce: every survivor gets
/// `PeerLost` well within the deadline, the communicator refuses more work,
/// and the survivors form generation 1 without it and all-reduce correctly.
#[test]
fn killed_rank_is_reported_and_survivors_reform() {
    let world = 4;
    let victim = 2;
    let timeout = Duration::from_secs(5);
    let config = CommConfig {
        chunk_bytes: 256,
        timeout,
        ..CommConfig::default()
    };
    let hub = LocalHub::with_faults(LocalFaults {
        kill_after_sends: Some((victim, 7)),
        ..LocalFaults::default()
    });
    let comms = hub.group(world, config.clone()).unwrap();
    let ins = inputs(world, 2000, 9);
    let survivors_hub = LocalHub::new();
    let members: Vec<u64> = (0..world as u64).filter(|&m| m != victim as u64).collect();
    let outs = on_ranks(comms, |mut c| {
        let r = c.rank();
        let start = Instant::now();
        let mut b = ins[r].clone();
        let err = c.all_reduce(&mut b, ReduceOp::Sum).unwrap_err();
        let elapsed = start.elapsed();
        if r == victim {
            return None;
        }
        assert!(
            matches!(err, CollectiveError::PeerLost { rank } if rank == victim),
            "rank {r}: {err}"
        );
        assert!(elapsed < timeout, "rank {r} took {elapsed:?}");
        assert!(matches!(
            c.barrier(),
            Err(CollectiveError::Aborted { generation: 0 })
        ));
        let mut next = survivors_hub
            .join(1, &members, r as u64, config.clone())
            .unwrap();
        assert_eq!(next.world(), 3);
        let mut b = ins[r].clone();
        next.all_reduce(&mut b, ReduceOp::Sum).unwrap();
        Some(b)
    });
    let survivors: Vec<Vec<f32>> = members.iter().map(|&m| ins[m as usize].clone()).collect();
    let want = naive(&survivors, ReduceOp::Sum);
    for out in outs.into_iter().flatten() {
        assert_close(&out, &want, 3);
    }
}

/// A rank that stays alive but never joins the op: the others time out at
/// the deadline instead of hanging.
#[test]
fn silent_rank_times_out_everyone_at_the_deadline() {
    let timeout = Duration::from_millis(300);
    let config = CommConfig {
        timeout,
        ..CommConfig::default()
    };
    let mut comms = LocalHub::new().group(3, config).unwrap();
    let silent = comms.pop().unwrap();
    let errs = on_ranks(comms, |mut c| {
        let start = Instant::now();
        let err = c.all_reduce(&mut [1.0; 100], ReduceOp::Sum).unwrap_err();
        (err, start.elapsed())
    });
    for (err, elapsed) in errs {
        assert!(
            matches!(
                err,
                CollectiveError::Timeout { .. } | CollectiveError::PeerLost { rank: 2 }
            ),
            "{err}"
        );
        // No hang: back soon after the deadline (generous for a loaded machine).
        assert!(elapsed < timeout + Duration::from_secs(10), "{elapsed:?}");
    }
    drop(silent);
}

#[test]
fn bad_arguments_are_errors() {
    let mut comms = LocalHub::new().group(2, CommConfig::default()).unwrap();
    assert!(matches!(
        comms[0].broadcast(&mut [0.0], 5),
        Err(CollectiveError::InvalidArgument(_))
    ));
    let hub = LocalHub::new();
    assert!(hub.join(0, &[1, 2], 3, CommConfig::default()).is_err());
    let _a = hub.join(0, &[1, 2], 1, CommConfig::default()).unwrap();
    assert!(
        hub.join(0, &[1, 2], 1, CommConfig::default()).is_err(),
        "joined twice"
    );
    assert!(
        hub.join(0, &[2, 1], 2, CommConfig::default()).is_err(),
        "other members"
    );
    let bad = CommConfig {
        chunk_bytes: 1 << 30,
        ..CommConfig::default()
    };
    assert!(LocalHub::new().group(2, bad).is_err());
    assert!(LocalHub::new().group(0, CommConfig::default()).is_err());
}

/// Aborting from another thread (as a coordinator does when heartbeats stop)
/// wakes ranks blocked on a silent peer long before the deadline.
#[test]
fn abort_handle_wakes_ranks_blocked_on_a_silent_peer() {
    let timeout = Duration::from_secs(20);
    let config = CommConfig {
        timeout,
        ..CommConfig::default()
    };
    let mut comms = LocalHub::new().group(3, config).unwrap();
    let silent = comms.pop().unwrap();
    let handles: Vec<_> = comms.iter().map(Communicator::abort_handle).collect();
    let start = Instant::now();
    let errs = thread::scope(|s| {
        s.spawn(|| {
            thread::sleep(Duration::from_millis(50));
            for h in &handles {
                h.abort(Some(2));
            }
        });
        on_ranks(comms, |mut c| {
            let err = c.all_reduce(&mut [1.0; 100], ReduceOp::Sum).unwrap_err();
            (err, c.barrier().unwrap_err())
        })
    });
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    for (err, next) in errs {
        assert!(
            matches!(err, CollectiveError::PeerLost { rank: 2 }),
            "{err}"
        );
        assert!(
            matches!(next, CollectiveError::Aborted { generation: 0 }),
            "{next}"
        );
    }
    drop(silent);
}

/// Shift: every rank's own block (of a length of its own) lands after the next
/// rank's block, in pieces smaller than the blocks; a ring of one moves nothing,
/// and overlapping ranges are refused.
#[test]
fn shift_moves_each_block_to_the_next_rank() {
    for world in 1..=4 {
        let len_of = |r: usize| 5 + 7 * r;
        let comms = LocalHub::new().group(world, small_chunks()).unwrap();
        let out = on_ranks(comms, |mut c| {
            let (r, w) = (c.rank(), c.world());
            let prev = (r + w - 1) % w;
            let (own, theirs) = (len_of(r), len_of(prev));
            let mut buf: Vec<f32> = (0..own).map(|i| (100 * r + i) as f32).collect();
            buf.resize(own + theirs, -1.0);
            c.shift(&mut buf, 0..own, own..own + theirs).unwrap();
            (buf, own, prev)
        });
        for (r, (buf, own, prev)) in out.iter().enumerate() {
            let got = &buf[*own..];
            if world == 1 {
                assert!(got.iter().all(|&x| x == -1.0));
                continue;
            }
            let want: Vec<f32> = (0..len_of(*prev))
                .map(|i| (100 * prev + i) as f32)
                .collect();
            assert_eq!(got, &want[..], "rank {r} of {world}");
        }
    }
    let mut one = LocalHub::new().group(1, small_chunks()).unwrap();
    let err = one[0].shift(&mut [0.0; 8], 0..5, 3..8).unwrap_err();
    assert!(matches!(err, CollectiveError::InvalidArgument(_)), "{err}");
}
