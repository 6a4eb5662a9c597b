//! The collectives over QUIC between nodes in one process (each rank its own
//! endpoint and certificate): results bitwise equal to the in-process
//! transport's, re-forming after a node goes away, and refusing a node
//! without the cluster's certificate.

use std::thread;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shoal_collectives::tls::ClusterCa;
use shoal_collectives::{
    CollectiveError, CommConfig, Communicator, LocalHub, QuicNode, QuicOptions, ReduceOp, form_ring,
};

fn inputs(world: usize, len: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..world)
        .map(|_| (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect())
        .collect()
}

fn nodes(ca: &ClusterCa, n: usize, options: &QuicOptions) -> Vec<QuicNode> {
    (0..n)
        .map(|i| {
            let id = ca.issue(&format!("node-{i}")).unwrap();
            QuicNode::bind("127.0.0.1:0".parse().unwrap(), &id, options.clone()).unwrap()
        })
        .collect()
}

fn config() -> CommConfig {
    CommConfig {
        chunk_bytes: 4096,
        timeout: Duration::from_secs(10),
        ..CommConfig::default()
    }
}

/// The ops every transport must agree on, run on one rank.
fn script(c: &mut Communicator, input: &[f32]) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
        let mut b = input.to_vec();
        c.all_reduce(&mut b, op).unwrap();
        out.push(b);
        let mut b = input.to_vec();
        let r = c.reduce_scatter(&mut b, op).unwrap();
        out.push(b[r].to_vec());
    }
    let mut b = input.to_vec();
    c.all_gather(&mut b).unwrap();
    out.push(b);
    let mut b = input.to_vec();
    c.broadcast(&mut b, c.world() - 1).unwrap();
    out.push(b);
    let pending = c.all_reduce_async(input.to_vec(), ReduceOp::Sum);
    c.barrier().unwrap();
    out.push(pending.wait().unwrap());
    out
}

#[test]
fn quic_ring_equals_in_process_ring() {
    let ca = ClusterCa::generate("test").unwrap();
    for world in [2, 3, 4] {
        let len = 10_000 + world;
        let ins = inputs(world, len, world as u64);
        let quic_nodes = nodes(&ca, world, &QuicOptions::default());
        let comms = form_ring(&quic_nodes, 0, &config()).unwrap();
        let local = LocalHub::new().group(world, config()).unwrap();
        let (over_quic, in_process): (Vec<_>, Vec<_>) = thread::scope(|s| {
            let q: Vec<_> = comms
                .into_iter()
                .map(|mut c| {
                    let input = &ins[c.rank()];
                    s.spawn(move || script(&mut c, input))
                })
                .collect();
            let l: Vec<_> = local
                .into_iter()
                .map(|mut c| {
                    let input = &ins[c.rank()];
                    s.spawn(move || script(&mut c, input))
                })
                .collect();
            (
                q.into_iter().map(|h| h.join().unwrap()).collect(),
                l.into_iter().map(|h| h.join().unwrap()).collect(),
            )
        });
        assert_eq!(over_quic, in_process, "world {world}");
    }
}

/// A node vanishes in the middle of an all-reduce; the survivors get
/// `PeerLost` within the deadline and re-form as generation 1.
#[test]
fn lost_node_then_new_generation() {
    let ca = ClusterCa::generate("test").unwrap();
    let options = QuicOptions {
        idle_timeout: Duration::from_millis(1500),
        keep_alive: Duration::from_millis(200),
        ..QuicOptions::default()
    };
    let mut quic_nodes = nodes(&ca, 3, &options);
    let timeout = Duration::from_secs(8);
    let cfg = CommConfig {
        timeout,
        ..config()
    };
    let comms = form_ring(&quic_nodes, 0, &cfg).unwrap();
    let ins = inputs(3, 1 << 20, 1);
    let victim = 1;
    let results: Vec<Option<(CollectiveError, Duration)>> = thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|mut c| {
                let input = ins[c.rank()].clone();
                s.spawn(move || {
                    let r = c.rank();
                    if r == victim {
                        // Leave while the others are mid-op: its links close.
                        // (A silent death, SIGKILL, is tested across
                        // processes in the workspace's tests/.)
                        thread::sleep(Duration::from_millis(20));
                        drop(c);
                        return None;
                    }
                    let start = Instant::now();
                    let mut b = input;
                    let mut err = None;
                    for _ in 0..1000 {
                        if let Err(e) = c.all_reduce(&mut b, ReduceOp::Sum) {
                            err = Some(e);
                            break;
                        }
                    }
                    Some((err.expect("the op must fail"), start.elapsed()))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Every survivor fails promptly with a lost peer. Which peer it blames depends
    // on which of its links broke first (a survivor that aborted closes its links
    // too, so under load the other may see that first); at least one names the
    // victim.
    let mut blamed = Vec::new();
    for (err, elapsed) in results.into_iter().flatten() {
        match err {
            CollectiveError::PeerLost { rank } => blamed.push(rank),
            other => panic!("{other}"),
        }
        assert!(elapsed < timeout, "{elapsed:?}");
    }
    assert!(blamed.contains(&victim), "{blamed:?}");
    // The victim's endpoint goes away; survivors form generation 1.
    drop(quic_nodes.remove(victim));
    let comms = form_ring(&quic_nodes, 1, &cfg).unwrap();
    let survivors = [ins[0].clone(), ins[2].clone()];
    let sums: Vec<Vec<f32>> = thread::scope(|s| {
        comms
            .into_iter()
            .map(|mut c| {
                let mut b = survivors[c.rank()].clone();
                s.spawn(move || {
                    c.all_reduce(&mut b, ReduceOp::Sum).unwrap();
                    b
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect()
    });
    for (i, x) in sums[0].iter().enumerate() {
        assert_eq!(*x, survivors[0][i] + survivors[1][i]);
    }
    assert_eq!(sums[0], sums[1]);
}

#[test]
fn node_without_cluster_certificate_cannot_join() {
    let ca = ClusterCa::generate("test").unwrap();
    let rogue_ca = ClusterCa::generate("test").unwrap();
    let good = nodes(&ca, 1, &QuicOptions::default()).remove(0);
    let rogue = nodes(&rogue_ca, 1, &QuicOptions::default()).remove(0);
    let members = [good.local_addr().unwrap(), rogue.local_addr().unwrap()];
    let cfg = CommConfig {
        timeout: Duration::from_secs(3),
        ..config()
    };
    let start = Instant::now();
    let (a, b) = thread::scope(|s| {
        let a = s.spawn(|| good.communicator(0, &members, 0, cfg.clone()));
        let b = s.spawn(|| rogue.communicator(0, &members, 1, cfg.clone()));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(a.is_err() && b.is_err());
    // Well before any op deadline; generous for a loaded CI machine.
    assert!(start.elapsed() < Duration::from_secs(15));
    assert!(
        good.rejected_connections() >= 1,
        "the good node refused the rogue one"
    );
}
