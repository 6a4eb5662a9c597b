//! The device ring's schedule: which range of the buffer each rank sends, receives
//! and combines at each transfer of a reduce-scatter, all-gather or broadcast. Pure
//! functions, no CUDA, so the schedule is tested here on host vectors.
//!
//! The executor ([`super::ipc`]) gives every rank a receive staging area of two
//! slots of `capacity` elements. Transfer `t` writes into slot `t % 2` of the next
//! rank's staging area; after a barrier (every copy of transfer `t` complete), each
//! rank combines its slot into its buffer. Shards are split into pieces of at most
//! `capacity` elements, as in the host ring, so any buffer fits the staging area.
//!
//! Every rank of a ring gets the same number of transfers for the same arguments
//! (the barriers pair up), and the range rank `r` sends at transfer `t` is the
//! range rank `r + 1` receives at `t` (the lengths match).

use std::ops::Range;

use crate::ring::shard_range;

/// What a receiver does with the range it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// Add the received values into the range.
    Add,
    /// Overwrite the range with the received values.
    Copy,
}

/// One transfer of a ring op, seen from one rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Range of the buffer this rank copies into the next rank's staging slot,
    /// if it sends at this transfer.
    pub send: Option<Range<usize>>,
    /// Range of the buffer this rank combines from its own staging slot, if it
    /// receives at this transfer.
    pub recv: Option<Range<usize>>,
    /// How the received values combine into `recv`.
    pub combine: Combine,
}

/// Pieces per shard so that no piece is longer than `capacity` elements (at
/// least one, so every rank takes the same number of steps even for empty buffers).
pub fn pieces(len: usize, world: usize, capacity: usize) -> usize {
    len.div_ceil(world.max(1)).div_ceil(capacity.max(1)).max(1)
}

/// Piece `k` of `pieces` of shard `shard`.
fn piece(len: usize, world: usize, shard: usize, pieces: usize, k: usize) -> Range<usize> {
    let s = shard_range(len, world, shard);
    let p = shard_range(s.len(), pieces, k);
    s.start + p.start..s.start + p.end
}

/// The world-1 ring steps of a pass, each split into pieces: at step `s` send
/// shard `send_shard(s)` and receive the shard before it.
fn ring_pass(
    len: usize,
    world: usize,
    capacity: usize,
    send_shard: impl Fn(usize) -> usize,
    combine: Combine,
) -> Vec<Transfer> {
    let k = pieces(len, world, capacity);
    let mut out = Vec::with_capacity(world.saturating_sub(1) * k);
    for s in 0..world.saturating_sub(1) {
        let send = send_shard(s) % world;
        let recv = (send + world - 1) % world;
        for p in 0..k {
            out.push(Transfer {
                send: Some(piece(len, world, send, k, p)),
                recv: Some(piece(len, world, recv, k, p)),
                combine,
            });
        }
    }
    out
}

/// Reduce-scatter of a `len`-element buffer: afterwards shard `rank`
/// ([`shard_range`]) holds the sum over ranks (the host ring's order of steps:
/// at step `s` send shard `rank - s - 1`, receive and add shard `rank - s - 2`).
pub fn reduce_scatter(len: usize, world: usize, rank: usize, capacity: usize) -> Vec<Transfer> {
    ring_pass(
        len,
        world,
        capacity,
        |s| rank + 2 * world - s - 1,
        Combine::Add,
    )
}

/// All-gather of a `len`-element buffer whose shard `rank` is this rank's input:
/// at step `s` send shard `rank - s`, receive and copy shard `rank - s - 1`.
pub fn all_gather(len: usize, world: usize, rank: usize, capacity: usize) -> Vec<Transfer> {
    ring_pass(len, world, capacity, |s| rank + world - s, Combine::Copy)
}

/// Broadcast of `root`'s buffer along the ring, pipelined in pieces of at most
/// `capacity` elements: the rank at position `q` (= `rank - root`) sends piece
/// `t - q` at transfer `t`, which the next rank receives at the same transfer and
/// forwards at the next. `pieces + world - 2` transfers; none on a ring of one.
pub fn broadcast(
    len: usize,
    world: usize,
    rank: usize,
    root: usize,
    capacity: usize,
) -> Vec<Transfer> {
    if world < 2 {
        return Vec::new();
    }
    let k = len.div_ceil(capacity.max(1)).max(1);
    let q = (rank + world - root % world) % world;
    let piece_at = |t: usize, position: usize| {
        t.checked_sub(position)
            .filter(|&p| p < k)
            .map(|p| shard_range(len, k, p))
    };
    (0..k + world - 2)
        .map(|t| Transfer {
            send: if q < world - 1 { piece_at(t, q) } else { None },
            recv: if q > 0 { piece_at(t, q - 1) } else { None },
            combine: Combine::Copy,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CommConfig, LocalHub, ReduceOp};

    /// Runs every rank's schedule on host vectors, as the device ring would:
    /// all copies of a transfer into the next rank's slot, then all combines.
    #[allow(clippy::needless_range_loop)] // `t` and `r` index several ranks' state
    fn simulate(bufs: &mut [Vec<f32>], schedules: &[Vec<Transfer>], capacity: usize) {
        let world = bufs.len();
        let n = schedules[0].len();
        assert!(
            schedules.iter().all(|s| s.len() == n),
            "transfer counts differ"
        );
        let mut staging = vec![[vec![f32::NAN; capacity], vec![f32::NAN; capacity]]; world];
        for t in 0..n {
            let slot = t % 2;
            for r in 0..world {
                let next = (r + 1) % world;
                let (send, recv) = (&schedules[r][t].send, &schedules[next][t].recv);
                assert_eq!(
                    send.as_ref().map(|s| s.len()),
                    recv.as_ref().map(|s| s.len())
                );
                if let Some(send) = send {
                    assert!(send.len() <= capacity);
                    staging[next][slot][..send.len()].copy_from_slice(&bufs[r][send.clone()]);
                }
            }
            for r in 0..world {
                let step = &schedules[r][t];
                if let Some(recv) = &step.recv {
                    let got = &staging[r][slot][..recv.len()];
                    let dst = &mut bufs[r][recv.clone()];
                    match step.combine {
                        Combine::Add => dst.iter_mut().zip(got).for_each(|(d, g)| *d += g),
                        Combine::Copy => dst.copy_from_slice(got),
                    }
                }
            }
        }
    }

    /// Small integers, so every order of summation gives the same floats.
    fn inputs(world: usize, len: usize) -> Vec<Vec<f32>> {
        (0..world)
            .map(|r| (0..len).map(|i| ((r * 31 + i * 7) % 13) as f32).collect())
            .collect()
    }

    fn sum(inputs: &[Vec<f32>]) -> Vec<f32> {
        let mut out = vec![0.0; inputs[0].len()];
        for x in inputs {
            out.iter_mut().zip(x).for_each(|(o, v)| *o += v);
        }
        out
    }

    const LENS: [usize; 9] = [0, 1, 2, 3, 5, 7, 13, 64, 101];
    const CAPACITIES: [usize; 3] = [1, 3, 1000];

    #[test]
    fn reduce_scatter_then_all_gather_is_the_sum() {
        for world in 1..=7 {
            for len in LENS {
                for capacity in CAPACITIES {
                    let input = inputs(world, len);
                    let want = sum(&input);
                    let mut bufs = input.clone();
                    let rs: Vec<_> = (0..world)
                        .map(|r| reduce_scatter(len, world, r, capacity))
                        .collect();
                    simulate(&mut bufs, &rs, capacity);
                    for (r, buf) in bufs.iter().enumerate() {
                        let shard = shard_range(len, world, r);
                        assert_eq!(buf[shard.clone()], want[shard], "w{world} n{len} r{r}");
                    }
                    let ag: Vec<_> = (0..world)
                        .map(|r| all_gather(len, world, r, capacity))
                        .collect();
                    simulate(&mut bufs, &ag, capacity);
                    for buf in &bufs {
                        assert_eq!(buf, &want, "world {world} len {len} capacity {capacity}");
                    }
                }
            }
        }
    }

    #[test]
    fn all_gather_fills_every_shard_from_its_owner() {
        for world in 1..=7 {
            for len in LENS {
                let input = inputs(world, len);
                let mut want = vec![0.0; len];
                for (r, x) in input.iter().enumerate() {
                    let shard = shard_range(len, world, r);
                    want[shard.clone()].copy_from_slice(&x[shard]);
                }
                let mut bufs = input.clone();
                let ag: Vec<_> = (0..world).map(|r| all_gather(len, world, r, 4)).collect();
                simulate(&mut bufs, &ag, 4);
                assert!(bufs.iter().all(|b| *b == want), "world {world} len {len}");
            }
        }
    }

    #[test]
    fn broadcast_copies_the_root_everywhere() {
        for world in 1..=7 {
            for root in 0..world {
                for len in LENS {
                    for capacity in CAPACITIES {
                        let input = inputs(world, len);
                        let mut bufs = input.clone();
                        let sched: Vec<_> = (0..world)
                            .map(|r| broadcast(len, world, r, root, capacity))
                            .collect();
                        simulate(&mut bufs, &sched, capacity);
                        assert!(bufs.iter().all(|b| *b == input[root]), "w{world} r{root}");
                    }
                }
            }
        }
    }

    #[test]
    fn shards_match_the_host_communicator() {
        let config = CommConfig {
            chunk_bytes: 16,
            ..CommConfig::default()
        };
        for world in [1, 2, 3, 5] {
            for len in [0, 2, 7, 37] {
                let input = inputs(world, len);
                let mut bufs = input.clone();
                let rs: Vec<_> = (0..world)
                    .map(|r| reduce_scatter(len, world, r, 3))
                    .collect();
                simulate(&mut bufs, &rs, 3);
                let comms = LocalHub::new()
                    .group(world, config.clone())
                    .expect("local ring");
                let host: Vec<(Vec<f32>, Range<usize>)> = std::thread::scope(|s| {
                    let handles: Vec<_> = comms
                        .into_iter()
                        .zip(input.clone())
                        .map(|(mut comm, mut buf)| {
                            s.spawn(move || {
                                let shard = comm
                                    .reduce_scatter(&mut buf, ReduceOp::Sum)
                                    .expect("host reduce-scatter");
                                (buf, shard)
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().expect("rank thread"))
                        .collect()
                });
                for (r, (host_buf, host_shard)) in host.iter().enumerate() {
                    assert_eq!(*host_shard, shard_range(len, world, r));
                    assert_eq!(host_buf[host_shard.clone()], bufs[r][host_shard.clone()]);
                }
            }
        }
    }

    #[test]
    fn every_piece_fits_the_staging_slot() {
        for world in 1..=7 {
            for len in LENS {
                for capacity in CAPACITIES {
                    for r in 0..world {
                        let all = reduce_scatter(len, world, r, capacity)
                            .into_iter()
                            .chain(all_gather(len, world, r, capacity))
                            .chain(broadcast(len, world, r, 0, capacity));
                        for t in all {
                            let longest = t.send.iter().chain(&t.recv).map(|x| x.len()).max();
                            assert!(longest.unwrap_or(0) <= capacity);
                        }
                    }
                }
            }
        }
    }
}
