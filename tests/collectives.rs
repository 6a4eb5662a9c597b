//! The collectives across processes over QUIC on 127.0.0.1: every op at world sizes
//! 2, 3 and 4 gives bitwise the in-process result; a rank killed with SIGKILL in the
//! middle of an all-reduce is reported by every survivor within the deadline and the
//! survivors carry on as a new generation; a process without the cluster's
//! certificate cannot join.

use std::path::Path;
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};
use shoal::collectives::pattern::pattern;
use shoal::collectives::{CommConfig, Communicator, LocalHub, ReduceOp};
use shoal::launch::{RingWorker, form, make_cluster, run_all};

const CHUNK: usize = 4096;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_shoal"))
}

fn workers(cluster: &Path, n: usize, idle_ms: u64) -> Vec<RingWorker> {
    (0..n)
        .map(|i| RingWorker::spawn(exe(), cluster, &format!("node-{i}"), idle_ms).unwrap())
        .collect()
}

fn reduce(name: &str) -> ReduceOp {
    match name {
        "sum" => ReduceOp::Sum,
        "mean" => ReduceOp::Mean,
        _ => ReduceOp::Max,
    }
}

/// What rank `c.rank()` of an in-process ring computes for `op`: the crc32 the
/// workers report.
fn in_process(c: &mut Communicator, op: &str, red: &str, len: usize, seed: u64, input: u64) -> u32 {
    let mut buf = pattern(seed, input * 1024 + c.rank() as u64, len);
    let mut bytes: Vec<u8> = bytemuck::cast_slice(&buf).to_vec();
    let mut own = 0..len;
    match op {
        "all_reduce" => c.all_reduce(&mut buf, reduce(red)).unwrap(),
        "reduce_scatter" => own = c.reduce_scatter(&mut buf, reduce(red)).unwrap(),
        "all_gather" => c.all_gather(&mut buf).unwrap(),
        "broadcast" => c.broadcast(&mut buf, c.world() - 1).unwrap(),
        "all_gather_bytes" => c.all_gather_bytes(&mut bytes).unwrap(),
        "broadcast_bytes" => c.broadcast_bytes(&mut bytes, c.world() - 1).unwrap(),
        _ => c.barrier().unwrap(),
    }
    if op.ends_with("_bytes") {
        crc32fast::hash(&bytes)
    } else {
        crc32fast::hash(bytemuck::cast_slice(&buf[own]))
    }
}

fn expected(world: usize, op: &str, red: &str, len: usize, seed: u64, input: u64) -> Vec<u32> {
    let config = CommConfig {
        chunk_bytes: CHUNK,
        ..CommConfig::default()
    };
    let comms = LocalHub::new().group(world, config).unwrap();
    thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|mut c| s.spawn(move || in_process(&mut c, op, red, len, seed, input)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn crcs(outcomes: &[Value]) -> Vec<u32> {
    outcomes
        .iter()
        .map(|o| {
            assert_eq!(o["event"], "done", "{o}");
            o["crc32"].as_u64().unwrap() as u32
        })
        .collect()
}

#[test]
fn every_op_over_quic_equals_in_process_at_world_2_3_4() {
    let dir = tempfile::tempdir().unwrap();
    make_cluster(dir.path(), 4).unwrap();
    let ops = [
        ("all_reduce", "sum"),
        ("all_reduce", "mean"),
        ("all_reduce", "max"),
        ("reduce_scatter", "sum"),
        ("reduce_scatter", "mean"),
        ("all_gather", "sum"),
        ("broadcast", "sum"),
        ("all_gather_bytes", "sum"),
        ("broadcast_bytes", "sum"),
        ("barrier", "sum"),
    ];
    for world in [2, 3, 4] {
        let mut ws = workers(dir.path(), world, 3000);
        for f in form(&mut ws, 0, Duration::from_secs(20), CHUNK).unwrap() {
            assert_eq!(f["event"], "formed", "{f}");
        }
        // A length no world size divides, and one shorter than the world.
        for len in [10_007, world - 1] {
            for (input, (op, red)) in ops.iter().enumerate() {
                let request = json!({"cmd": "run", "op": op, "reduce": red, "len": len,
                                     "seed": 42, "input": input, "root": world - 1});
                let got = crcs(&run_all(&mut ws, &request, Duration::from_secs(30)).unwrap());
                let want = expected(world, op, red, len, 42, input as u64);
                assert_eq!(got, want, "{op}/{red} world {world} len {len}");
            }
        }
    }
}

#[test]
fn sigkill_mid_all_reduce_then_survivors_form_a_new_generation() {
    let dir = tempfile::tempdir().unwrap();
    make_cluster(dir.path(), 3).unwrap();
    let idle_ms = 1000;
    let timeout = Duration::from_secs(10);
    let mut ws = workers(dir.path(), 3, idle_ms);
    for f in form(&mut ws, 0, timeout, 64 << 10).unwrap() {
        assert_eq!(f["event"], "formed", "{f}");
    }
    // Long enough that the kill lands in the middle of an all-reduce.
    let request = json!({"cmd": "run", "op": "all_reduce", "len": 1 << 21, "seed": 1,
                         "input": 0, "iters": 1000});
    for w in ws.iter_mut() {
        w.send(&request).unwrap();
    }
    for w in &ws {
        assert_eq!(w.event(timeout).unwrap()["event"], "started");
    }
    thread::sleep(Duration::from_millis(300));
    let mut victim = ws.remove(1);
    victim.kill().unwrap();
    for w in &ws {
        let outcome = w.outcome(timeout + Duration::from_secs(5)).unwrap();
        assert_eq!(outcome["event"], "error", "{outcome}");
        assert_eq!(outcome["kind"], "peer_lost", "{outcome}");
        assert_eq!(outcome["rank"], 1, "{outcome}");
        // Detected through the idle timeout (or its neighbour's notice), well
        // within the op's deadline.
        let after = outcome["after_ms"].as_u64().unwrap();
        eprintln!("survivor saw the loss after {after} ms of its op");
        assert!(after < timeout.as_millis() as u64, "{outcome}");
    }
    for f in form(&mut ws, 1, timeout, 64 << 10).unwrap() {
        assert_eq!(f["event"], "formed", "{f}");
    }
    let request = json!({"cmd": "run", "op": "all_reduce", "len": 5000, "seed": 1, "input": 0});
    let got = crcs(&run_all(&mut ws, &request, timeout).unwrap());
    assert_eq!(got, expected(2, "all_reduce", "sum", 5000, 1, 0));
}

#[test]
fn process_without_the_cluster_certificate_cannot_join() {
    let good = tempfile::tempdir().unwrap();
    let rogue = tempfile::tempdir().unwrap();
    make_cluster(good.path(), 1).unwrap();
    make_cluster(rogue.path(), 2).unwrap();
    let mut ws = vec![
        RingWorker::spawn(exe(), good.path(), "node-0", 1000).unwrap(),
        RingWorker::spawn(exe(), rogue.path(), "node-1", 1000).unwrap(),
    ];
    let outcomes = form(&mut ws, 0, Duration::from_secs(3), CHUNK).unwrap();
    for o in &outcomes {
        assert_eq!(o["event"], "error", "{o}");
    }
    assert!(
        outcomes[0]["rejected_connections"].as_u64().unwrap() >= 1,
        "the good node refused the rogue one: {}",
        outcomes[0]
    );
}
