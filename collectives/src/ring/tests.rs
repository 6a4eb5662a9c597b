//! The ring schedules on a simulated in-memory network: every rank's state
//! machine is stepped in a random order (any interleaving across links and
//! any delay, frames on one link in order), and the results are compared with
//! a naive reduction.

use std::collections::VecDeque;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

/// Which collective a simulated run performs.
#[derive(Debug, Clone, Copy)]
enum Kind {
    AllReduce(ReduceOp),
    ReduceScatter(ReduceOp),
    AllGather,
    Broadcast(usize),
}

fn schedule(kind: Kind, len: usize, world: usize, rank: usize, chunk: usize) -> Schedule {
    match kind {
        Kind::AllReduce(op) => Schedule::all_reduce(len, world, rank, chunk, op),
        Kind::ReduceScatter(op) => Schedule::reduce_scatter(len, world, rank, chunk, op),
        Kind::AllGather => Schedule::all_gather(len, world, rank, chunk),
        Kind::Broadcast(root) => Schedule::broadcast(len, world, rank, root, chunk),
    }
}

/// Runs one op on `world` simulated ranks; panics on a deadlock.
fn simulate(kind: Kind, inputs: &[Vec<f32>], chunk: usize, seed: u64) -> Vec<Vec<f32>> {
    let world = inputs.len();
    let len = inputs[0].len();
    let mut bufs = inputs.to_vec();
    let mut ops: Vec<RingOp> = (0..world)
        .map(|r| RingOp::new(schedule(kind, len, world, r, chunk)))
        .collect();
    // links[r] carries frames from rank r to rank r+1.
    let mut links: Vec<VecDeque<(u32, Vec<f32>)>> = vec![VecDeque::new(); world];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut idle_rounds = 0;
    while !ops.iter().all(RingOp::is_done) {
        let r = rng.random_range(0..world);
        let mut progressed = false;
        // Send at most a random number of ready pieces, so that senders run
        // ahead of or behind their receivers in every possible way.
        for _ in 0..rng.random_range(1..4) {
            if let Some(t) = ops[r].next_send() {
                links[r].push_back((t.index, bufs[r][t.range].to_vec()));
                progressed = true;
            }
        }
        let prev = (r + world - 1) % world;
        if rng.random_bool(0.7)
            && let Some(t) = ops[r].next_recv()
            && let Some((index, payload)) = links[prev].pop_front()
        {
            assert_eq!(index, t.index, "frames arrive in order");
            combine_f32(t.combine, &mut bufs[r][t.range], &payload);
            ops[r].received();
            progressed = true;
        }
        idle_rounds = if progressed { 0 } else { idle_rounds + 1 };
        assert!(idle_rounds < 10_000, "ring deadlocked");
    }
    assert!(links.iter().all(VecDeque::is_empty), "frames left over");
    bufs
}

fn naive_reduce(inputs: &[Vec<f32>], op: ReduceOp) -> Vec<f32> {
    let world = inputs.len();
    (0..inputs[0].len())
        .map(|i| {
            let values = inputs.iter().map(|b| b[i] as f64);
            match op {
                ReduceOp::Sum => values.sum::<f64>() as f32,
                ReduceOp::Mean => (values.sum::<f64>() / world as f64) as f32,
                ReduceOp::Max => values.fold(f64::NEG_INFINITY, f64::max) as f32,
            }
        })
        .collect()
}

fn inputs(world: usize, len: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    (0..world)
        .map(|_| (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect())
        .collect()
}

fn check(kind: Kind, world: usize, len: usize, chunk: usize, seed: u64) {
    let ins = inputs(world, len, seed);
    let outs = simulate(kind, &ins, chunk, seed);
    let tol = 1e-5 * world as f32;
    match kind {
        Kind::AllReduce(op) => {
            let want = naive_reduce(&ins, op);
            for out in &outs {
                for (a, b) in out.iter().zip(&want) {
                    assert!((a - b).abs() <= tol, "{a} vs {b}");
                }
                // Every rank holds bitwise the same result.
                assert_eq!(out, &outs[0]);
            }
        }
        Kind::ReduceScatter(op) => {
            let want = naive_reduce(&ins, op);
            for (r, out) in outs.iter().enumerate() {
                let range = shard_range(len, world, r);
                for (a, b) in out[range.clone()].iter().zip(&want[range]) {
                    assert!((a - b).abs() <= tol, "{a} vs {b}");
                }
            }
        }
        Kind::AllGather => {
            let mut want = vec![0.0; len];
            for (r, input) in ins.iter().enumerate() {
                let range = shard_range(len, world, r);
                want[range.clone()].copy_from_slice(&input[range]);
            }
            assert!(outs.iter().all(|out| out == &want));
        }
        Kind::Broadcast(root) => assert!(outs.iter().all(|out| out == &ins[root])),
    }
}

#[test]
fn shards_cover_the_buffer_in_order() {
    for len in [0, 1, 5, 8, 1001] {
        for world in 1..9 {
            let mut next = 0;
            for r in 0..world {
                let range = shard_range(len, world, r);
                assert_eq!(range.start, next);
                assert!(range.len() == len / world || range.len() == len / world + 1);
                next = range.end;
            }
            assert_eq!(next, len);
        }
    }
}

#[test]
fn all_reduce_sends_two_w_minus_one_over_w_of_the_buffer() {
    let (len, world) = (1000, 4);
    for r in 0..world {
        let s = Schedule::all_reduce(len, world, r, 64, ReduceOp::Sum);
        let sent: usize = s.sends.iter().map(|t| t.range.len()).sum();
        let recv: usize = s.recvs.iter().map(|t| t.range.len()).sum();
        let shard = shard_range(len, world, r).len();
        // Everything but the own shard goes out once in each phase, give or
        // take the one-element difference between shards.
        assert!(sent.abs_diff(2 * (len - shard)) <= 2 * world, "{sent}");
        assert_eq!(
            sent,
            recv + shard_range(len, world, (r + 1) % world).len() - shard
        );
    }
}

#[test]
fn mean_divides_once() {
    check(Kind::AllReduce(ReduceOp::Mean), 3, 7, 2, 1);
    check(Kind::ReduceScatter(ReduceOp::Mean), 5, 11, 1, 2);
}

#[test]
fn empty_buffers_still_exchange_one_frame_per_step() {
    let s = Schedule::all_reduce(0, 4, 1, 16, ReduceOp::Sum);
    assert_eq!(s.sends(), 6);
    assert_eq!(s.recvs(), 6);
    check(Kind::AllReduce(ReduceOp::Sum), 4, 0, 16, 3);
}

fn kind_strategy() -> impl Strategy<Value = (Kind, usize)> {
    (1usize..=8, 0usize..5, 0usize..3, 0usize..8).prop_map(|(world, k, o, root)| {
        let op = [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max][o];
        let kind = match k {
            0 => Kind::AllReduce(op),
            1 => Kind::ReduceScatter(op),
            2 => Kind::AllGather,
            _ => Kind::Broadcast(root % world),
        };
        (kind, world)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Every op, any length (0 and 1 included), world sizes 1..8, pieces of
    /// any size, any interleaving: the result equals the naive reduction.
    #[test]
    fn ring_matches_naive((kind, world) in kind_strategy(), len in prop_oneof![Just(0usize), Just(1), 0usize..300], chunk in 1usize..40, seed: u64) {
        check(kind, world, len, chunk, seed);
    }
}
