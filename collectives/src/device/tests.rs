//! Device collectives against the host ring's results. They need a GPU: without
//! one each test prints why it skipped and passes. Worlds of one (NCCL and IPC)
//! and two ranks on GPU 0 in one process (IPC; NCCL refuses two ranks per GPU).

use std::sync::Arc;
use std::time::Duration;

use shoal_kernels::cuda::Gpu;

use super::*;
use crate::{CommConfig, LocalHub, ReduceOp, shard_range};

/// GPU 0, or `None` after saying why the test skips.
fn gpu() -> Option<Arc<Gpu>> {
    match Gpu::new(0) {
        Ok(gpu) => Some(Arc::new(gpu)),
        Err(e) => {
            println!("skipped: no usable GPU ({e})");
            None
        }
    }
}

/// Small integers, so every order of summation gives the same floats.
fn input(rank: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((rank * 31 + i * 7) % 13) as f32 - 6.0)
        .collect()
}

/// What each rank's buffer holds after each op, from the host ring.
struct Want {
    all_reduce_sum: Vec<f32>,
    all_reduce_mean: Vec<f32>,
    reduce_scatter: Vec<Vec<f32>>,
    all_gather: Vec<f32>,
    broadcast_from_last: Vec<f32>,
}

fn host_results(world: usize, len: usize) -> Want {
    let comms = LocalHub::new()
        .group(world, CommConfig::default())
        .expect("local ring");
    let per_rank: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(rank, mut comm)| {
                s.spawn(move || {
                    let mut sum = input(rank, len);
                    comm.all_reduce(&mut sum, ReduceOp::Sum)
                        .expect("all_reduce");
                    let mut mean = input(rank, len);
                    comm.all_reduce(&mut mean, ReduceOp::Mean).expect("mean");
                    let mut rs = input(rank, len);
                    let shard = comm.reduce_scatter(&mut rs, ReduceOp::Sum).expect("rs");
                    let mut ag = input(rank, len);
                    comm.all_gather(&mut ag).expect("all_gather");
                    let mut bc = input(rank, len);
                    comm.broadcast(&mut bc, world - 1).expect("broadcast");
                    (sum, mean, rs[shard].to_vec(), ag, bc)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank"))
            .collect()
    });
    Want {
        all_reduce_sum: per_rank[0].0.clone(),
        all_reduce_mean: per_rank[0].1.clone(),
        reduce_scatter: per_rank.iter().map(|r| r.2.clone()).collect(),
        all_gather: per_rank[0].3.clone(),
        broadcast_from_last: per_rank[0].4.clone(),
    }
}

fn close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

/// Runs every op on one rank's device communicator and checks it.
fn check_rank(dc: &mut DeviceCommunicator, len: usize, want: &Want) {
    let (rank, world) = (dc.rank(), dc.world());
    let gpu = dc.gpu().clone();
    let tag = format!("{} world {world} rank {rank} len {len}", dc.backend());
    let mut buf = gpu.upload(&input(rank, len)).expect("upload");
    dc.all_reduce(&mut buf, ReduceOp::Sum).expect("all_reduce");
    close(
        &gpu.download(&buf).expect("download"),
        &want.all_reduce_sum,
        &tag,
    );

    let mut buf = gpu.upload(&input(rank, len)).expect("upload");
    dc.all_reduce(&mut buf, ReduceOp::Mean)
        .expect("all_reduce mean");
    close(
        &gpu.download(&buf).expect("download"),
        &want.all_reduce_mean,
        &tag,
    );

    let mut buf = gpu.upload(&input(rank, len)).expect("upload");
    let shard = dc
        .reduce_scatter(&mut buf, ReduceOp::Sum)
        .expect("reduce_scatter");
    assert_eq!(shard, shard_range(len, world, rank));
    let got = gpu.download(&buf).expect("download");
    close(&got[shard], &want.reduce_scatter[rank], &tag);

    let mut buf = gpu.upload(&input(rank, len)).expect("upload");
    dc.all_gather(&mut buf).expect("all_gather");
    close(
        &gpu.download(&buf).expect("download"),
        &want.all_gather,
        &tag,
    );

    // A view of a larger buffer works as well as a whole slice.
    let mut padded = input(rank, len);
    padded.push(42.0);
    let mut buf = gpu.upload(&padded).expect("upload");
    dc.broadcast(&mut buf.slice_mut(..len), world - 1)
        .expect("broadcast");
    let got = gpu.download(&buf).expect("download");
    close(&got[..len], &want.broadcast_from_last, &tag);
    assert_eq!(got[len], 42.0, "{tag}: broadcast wrote past the view");
}

/// Forms `world` device communicators as threads on GPU 0 and checks every op.
fn check_world(world: usize, backend: DeviceBackend, staging_bytes: usize) {
    if gpu().is_none() {
        return;
    }
    // No empty buffer: the driver refuses zero-byte allocations (cuMemAlloc), so
    // a device buffer is never empty; the schedule tests cover length 0.
    let lens = [1, 5, 64, 1000, 4099];
    let wants: Vec<_> = lens
        .iter()
        .map(|&len| (len, host_results(world, len)))
        .collect();
    let comms = LocalHub::new()
        .group(world, CommConfig::default())
        .expect("local ring");
    let config = DeviceConfig {
        backend,
        timeout: Duration::from_secs(30),
        staging_bytes,
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                let (config, wants) = (config.clone(), &wants);
                s.spawn(move || {
                    let gpu = Arc::new(Gpu::new(0).expect("GPU 0"));
                    let mut dc = DeviceCommunicator::new(comm, gpu, config).expect("form");
                    for (len, want) in wants {
                        check_rank(&mut dc, *len, want);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("rank thread");
        }
    });
}

#[test]
fn nccl_world_of_one_matches_the_host() {
    if gpu().is_none() {
        return;
    }
    match nccl_version() {
        Ok(v) => println!("NCCL {v}"),
        Err(e) => {
            println!("skipped: no usable NCCL ({e})");
            return;
        }
    }
    check_world(1, DeviceBackend::Nccl, 1 << 20);
}

#[test]
fn ipc_world_of_one_matches_the_host() {
    check_world(1, DeviceBackend::Ipc, 1 << 20);
}

#[test]
fn ipc_two_ranks_on_one_gpu_match_the_host() {
    check_world(2, DeviceBackend::Ipc, 1 << 20);
}

#[test]
fn ipc_small_staging_slots_split_shards_into_pieces() {
    // 64 floats per slot: every shard of the longer buffers goes in pieces.
    check_world(2, DeviceBackend::Ipc, 256);
}

#[test]
fn ipc_refuses_max() {
    let Some(gpu) = gpu() else { return };
    let mut comms = LocalHub::new()
        .group(1, CommConfig::default())
        .expect("local ring");
    let config = DeviceConfig {
        backend: DeviceBackend::Ipc,
        ..DeviceConfig::default()
    };
    let comm = comms.remove(0);
    let mut dc = DeviceCommunicator::new(comm, gpu.clone(), config).expect("form");
    let mut buf = gpu.upload(&[1.0f32, 2.0]).expect("upload");
    let err = dc
        .all_reduce(&mut buf, ReduceOp::Max)
        .expect_err("max is not supported");
    assert!(
        matches!(err, DeviceCollectiveError::Unsupported { .. }),
        "{err}"
    );
    // Refused before any work: the communicator still works.
    dc.all_reduce(&mut buf, ReduceOp::Sum)
        .expect("sum after a refused max");
    assert_eq!(gpu.download(&buf).expect("download"), [1.0, 2.0]);
}

#[test]
fn bad_root_is_an_argument_error() {
    let Some(gpu) = gpu() else { return };
    let mut comms = LocalHub::new()
        .group(1, CommConfig::default())
        .expect("local ring");
    let config = DeviceConfig {
        backend: DeviceBackend::Ipc,
        ..DeviceConfig::default()
    };
    let mut dc = DeviceCommunicator::new(comms.remove(0), gpu.clone(), config).expect("form");
    let mut buf = gpu.upload(&[1.0f32]).expect("upload");
    assert!(matches!(
        dc.broadcast(&mut buf, 1),
        Err(DeviceCollectiveError::InvalidArgument(_))
    ));
}

#[test]
fn nccl_version_says_why_not_instead_of_panicking() {
    match nccl_version() {
        Ok(v) => {
            println!("NCCL {v}");
            assert!(v >= 20000, "NCCL version {v}");
        }
        Err(e) => {
            println!("no NCCL: {e}");
            assert!(matches!(e, DeviceCollectiveError::NcclMissing), "{e}");
        }
    }
}

#[test]
fn device_count_says_why_not_instead_of_panicking() {
    match device_count() {
        Ok(n) => println!("{n} GPU(s)"),
        Err(e) => assert!(
            matches!(e, DeviceCollectiveError::Cuda(_)),
            "unexpected error {e}"
        ),
    }
}
