//! `shoal bench device-collectives`: bandwidth of the collectives over GPU buffers
//! (`shoal_collectives::device`), NCCL or the CUDA IPC ring, in the nccl-tests
//! convention, against the device's own copy bandwidth.
//!
//! N ranks run as threads of this process on GPUs `rank % device_count`, each with
//! a device communicator formed from an in-process host ring. Timing: each timed
//! iteration is (buffer reset from the input, untimed) host barrier, t0, op (which
//! returns once the device work is done), t1 on every rank; an iteration's time is
//! the max over ranks; a point's time is the median over iterations. GB = 1e9
//! bytes; algbw = S/t; busbw = algbw·2(W−1)/W for all-reduce, algbw·(W−1)/W for
//! reduce-scatter and all-gather (S = the whole buffer), algbw for broadcast.
//! The physical reference is a device-to-device copy of S bytes on GPU 0 (S/t: the
//! copy reads and writes S each).
//!
//! Needs a build with `--features cuda`; otherwise it says so.

use anyhow::Result;
use clap::Args;
use shoal_collectives::DeviceBackend;

/// Flags of `shoal bench device-collectives`.
#[derive(Args, Debug, Clone)]
pub struct BenchDeviceCollectivesArgs {
    /// Backend: nccl (one GPU per rank) or ipc (CUDA IPC ring; ranks may share a GPU).
    #[arg(long, default_value = "nccl")]
    pub backend: DeviceBackend,
    /// Ranks, as threads of this process, on GPUs rank % device_count.
    #[arg(long, default_value_t = 2)]
    pub ranks: usize,
    /// Buffer sizes in MiB of f32.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    pub size_mib: Vec<f64>,
    /// Timed iterations per point; 0 = 4 GiB / size, clamped to 5..=50.
    #[arg(long, default_value_t = 0)]
    pub iters: usize,
    /// Untimed warm-up iterations per point.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// IPC ring: MiB of each of the two staging slots per rank.
    #[arg(long, default_value_t = 64)]
    pub staging_mib: usize,
}

/// `shoal bench device-collectives`.
pub fn run(args: BenchDeviceCollectivesArgs) -> Result<()> {
    #[cfg(feature = "cuda")]
    {
        gpu::run(args)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = args;
        anyhow::bail!(
            "`shoal bench device-collectives` needs the GPU path: build with \
             `cargo build --release --features cuda`"
        )
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result, bail};
    use shoal_collectives::device::device_count;
    use shoal_collectives::{
        CommConfig, Communicator, DeviceCommunicator, DeviceConfig, LocalHub, ReduceOp, shard_range,
    };
    use shoal_kernels::cuda::{CudaSlice, Gpu};

    use super::BenchDeviceCollectivesArgs;

    const MIB: f64 = (1 << 20) as f64;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Op {
        AllReduce,
        ReduceScatter,
        AllGather,
        Broadcast,
    }

    const OPS: [Op; 4] = [
        Op::AllReduce,
        Op::ReduceScatter,
        Op::AllGather,
        Op::Broadcast,
    ];

    impl Op {
        fn name(self) -> &'static str {
            match self {
                Op::AllReduce => "all_reduce",
                Op::ReduceScatter => "reduce_scatter",
                Op::AllGather => "all_gather",
                Op::Broadcast => "broadcast",
            }
        }

        /// busbw / algbw (nccl-tests).
        fn bus_factor(self, world: usize) -> f64 {
            let w = world as f64;
            match self {
                Op::AllReduce => 2.0 * (w - 1.0) / w,
                Op::ReduceScatter | Op::AllGather => (w - 1.0) / w,
                Op::Broadcast => 1.0,
            }
        }
    }

    /// One rank's timings of one point, and whether its result was right.
    struct RankPoint {
        seconds: Vec<f64>,
        wrong: Option<String>,
    }

    /// Floats of a `mib` MiB buffer.
    fn floats(mib: f64) -> usize {
        ((mib * MIB) as usize / 4).max(1)
    }

    fn iters_for(args: &BenchDeviceCollectivesArgs, mib: f64) -> usize {
        if args.iters > 0 {
            args.iters
        } else {
            ((4096.0 / mib) as usize).clamp(5, 50)
        }
    }

    /// The first element of `got` that is not `want(i)`, described.
    fn first_wrong(got: &[f32], want: impl Fn(usize) -> Option<f32>) -> Option<String> {
        got.iter().enumerate().find_map(|(i, &g)| {
            let w = want(i)?;
            (g != w).then(|| format!("element {i} is {g}, expected {w}"))
        })
    }

    /// Runs `op` once on `buf`.
    fn apply(dc: &mut DeviceCommunicator, op: Op, buf: &mut CudaSlice<f32>) -> Result<()> {
        match op {
            Op::AllReduce => dc.all_reduce(buf, ReduceOp::Sum)?,
            Op::ReduceScatter => {
                dc.reduce_scatter(buf, ReduceOp::Sum)?;
            }
            Op::AllGather => dc.all_gather(buf)?,
            Op::Broadcast => dc.broadcast(buf, 0)?,
        }
        Ok(())
    }

    /// One rank: every op at every size. Inputs are `rank + 1` everywhere, so
    /// results are exact: sums W(W+1)/2, gathered shard j is j + 1, broadcast 1.
    fn rank_main(
        comm: Communicator,
        ordinal: usize,
        args: &BenchDeviceCollectivesArgs,
    ) -> Result<Vec<(Op, f64, RankPoint)>> {
        let (rank, world) = (comm.rank(), comm.world());
        let gpu = Arc::new(Gpu::new(ordinal).with_context(|| format!("rank {rank}: GPU"))?);
        let config = DeviceConfig {
            backend: args.backend,
            timeout: Duration::from_secs(60),
            staging_bytes: args.staging_mib.max(1) << 20,
        };
        let mut dc = DeviceCommunicator::new(comm, gpu.clone(), config)
            .with_context(|| format!("rank {rank}: forming the {} communicator", args.backend))?;
        let mut out = Vec::new();
        for &mib in &args.size_mib {
            let n = floats(mib);
            let input = gpu.upload(&vec![(rank + 1) as f32; n])?;
            let mut buf = gpu.zeros::<f32>(n)?;
            for op in OPS {
                let iters = iters_for(args, mib);
                let mut seconds = Vec::with_capacity(iters);
                for i in 0..args.warmup + iters {
                    gpu.stream().memcpy_dtod(&input, &mut buf)?;
                    gpu.synchronize()?;
                    dc.host().barrier()?;
                    let t0 = Instant::now();
                    apply(&mut dc, op, &mut buf)?;
                    if i >= args.warmup {
                        seconds.push(t0.elapsed().as_secs_f64());
                    }
                }
                let got = gpu.download(&buf)?;
                let total = (world * (world + 1) / 2) as f32;
                let shard = shard_range(n, world, rank);
                let wrong = match op {
                    Op::AllReduce => first_wrong(&got, |_| Some(total)),
                    Op::ReduceScatter => first_wrong(&got, |i| shard.contains(&i).then_some(total)),
                    Op::AllGather => first_wrong(&got, |i| {
                        (0..world)
                            .find(|&j| shard_range(n, world, j).contains(&i))
                            .map(|j| (j + 1) as f32)
                    }),
                    Op::Broadcast => first_wrong(&got, |_| Some(1.0)),
                };
                out.push((op, mib, RankPoint { seconds, wrong }));
            }
        }
        Ok(out)
    }

    /// GB/s of a device-to-device copy of `n` floats on `gpu` (S/t).
    fn copy_gbps(gpu: &Gpu, n: usize) -> Result<f64> {
        let src = gpu.zeros::<f32>(n)?;
        let mut dst = gpu.zeros::<f32>(n)?;
        let ms = gpu.time_ms(10, || Ok(gpu.stream().memcpy_dtod(&src, &mut dst)?))?;
        Ok((n * 4) as f64 / (ms / 1e3) / 1e9)
    }

    fn median(xs: &[f64]) -> f64 {
        let mut v = xs.to_vec();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub(super) fn run(args: BenchDeviceCollectivesArgs) -> Result<()> {
        if args.ranks == 0 {
            bail!("--ranks must be at least 1");
        }
        if args.size_mib.iter().any(|&m| m.is_nan() || m <= 0.0) {
            bail!("--size-mib must be positive");
        }
        let devices = device_count()?;
        if devices == 0 {
            bail!("the CUDA driver sees no GPU");
        }
        let gpu0 = Gpu::new(0)?;
        let info = gpu0.info()?;
        println!(
            "device collectives: backend {}, {} rank(s) on {} of {} GPU(s) ({}), staging {} MiB",
            args.backend,
            args.ranks,
            args.ranks.min(devices),
            devices,
            info.name,
            args.staging_mib
        );
        if let shoal_collectives::DeviceBackend::Nccl = args.backend {
            match shoal_collectives::device::nccl_version() {
                Ok(v) => println!("NCCL {v}"),
                Err(e) => bail!("{e}"),
            }
            if args.ranks > devices {
                println!(
                    "note: {} ranks on {devices} GPU(s): NCCL refuses two ranks on one GPU",
                    args.ranks
                );
            }
        }
        let copies: Vec<(f64, f64)> = args
            .size_mib
            .iter()
            .map(|&mib| Ok((mib, copy_gbps(&gpu0, floats(mib))?)))
            .collect::<Result<_>>()?;
        drop(gpu0);

        let comms = LocalHub::new().group(args.ranks, CommConfig::default())?;
        let results: Vec<Result<Vec<(Op, f64, RankPoint)>>> = std::thread::scope(|s| {
            let handles: Vec<_> = comms
                .into_iter()
                .enumerate()
                .map(|(rank, comm)| {
                    let args = &args;
                    s.spawn(move || rank_main(comm, rank % devices, args))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a rank panicked")))
                })
                .collect()
        });
        let per_rank = results.into_iter().collect::<Result<Vec<_>>>()?;

        println!(
            "\n{:<15} {:>9} {:>10} {:>12} {:>12} {:>12} {:>8}  check",
            "op", "MiB", "time ms", "algbw GB/s", "busbw GB/s", "copy GB/s", "bus/copy"
        );
        let mut failed = false;
        for (i, (op, mib, _)) in per_rank[0].iter().enumerate() {
            let iters = per_rank[0][i].2.seconds.len();
            let worst: Vec<f64> = (0..iters)
                .map(|k| {
                    per_rank
                        .iter()
                        .map(|r| r[i].2.seconds[k])
                        .fold(0.0, f64::max)
                })
                .collect();
            let t = median(&worst);
            let bytes = (floats(*mib) * 4) as f64;
            let algbw = bytes / t / 1e9;
            let busbw = algbw * op.bus_factor(args.ranks);
            let copy = copies
                .iter()
                .find(|(m, _)| m == mib)
                .map_or(f64::NAN, |(_, c)| *c);
            let wrong = per_rank
                .iter()
                .enumerate()
                .find_map(|(r, res)| res[i].2.wrong.as_ref().map(|w| format!("rank {r}: {w}")));
            failed |= wrong.is_some();
            println!(
                "{:<15} {:>9.2} {:>10.3} {:>12.2} {:>12.2} {:>12.1} {:>7.1}%  {}",
                op.name(),
                mib,
                t * 1e3,
                algbw,
                busbw,
                copy,
                100.0 * busbw / copy,
                wrong.as_deref().unwrap_or("ok")
            );
        }
        if failed {
            bail!("a device collective gave a wrong result");
        }
        Ok(())
    }
}
