//! The limits the collectives are measured against: memcpy for ranks that are
//! threads, one raw QUIC stream for ranks that are processes, and the gloo peer.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use shoal::launch::StreamProbe;

use super::{BenchCollectivesArgs, MIB, Plan, Point, gloo, median, quic};

/// The limits rows are compared against.
pub(super) struct Ceilings {
    /// Single-thread memcpy, GB/s copied.
    pub memcpy_gbps: f64,
    /// memcpy on every cpu at once, GB/s copied by all threads together.
    pub memcpy_all_gbps: f64,
    /// One raw QUIC stream between two worker processes, GB/s.
    pub stream_gbps: Option<f64>,
    /// The gloo peer's results.
    pub gloo: Option<gloo::Gloo>,
}

impl Ceilings {
    /// gloo's busbw for the same op, world and bytes as `p`.
    pub fn gloo_busbw(&self, p: &Point) -> Option<f64> {
        self.gloo.as_ref()?.busbw(p.op, p.world, p.bytes)
    }

    /// Measures (and prints) every ceiling the flags ask for; `cluster` holds the
    /// certificates of the stream probe's two workers when `quic` is set.
    pub fn measure(
        a: &BenchCollectivesArgs,
        plan: &Plan,
        exe: &Path,
        cluster: &Path,
        quic: bool,
    ) -> Result<Self> {
        println!("\nceilings");
        let memcpy_gbps = memcpy_gbps(256 << 20, 8);
        println!("  memcpy, 1 thread, 256 MiB buffer, median of 8:        {memcpy_gbps:>7.2} GB/s");
        let memcpy_all_gbps = memcpy_all_cpus_gbps(128 << 20, 8);
        println!(
            "  memcpy, all cpus at once, 128 MiB each, all together: {memcpy_all_gbps:>7.2} GB/s"
        );
        let stream_gbps = if quic {
            let probes = quic::stream_ceiling(exe, cluster, a.stream_mib * MIB, 3)?;
            let rate = |p: &StreamProbe| p.bytes as f64 / p.sender_s / 1e9;
            let best = probes
                .iter()
                .max_by(|x, y| rate(x).total_cmp(&rate(y)))
                .context("no stream probe ran")?;
            let all: Vec<String> = probes.iter().map(|p| format!("{:.3}", rate(p))).collect();
            let cores =
                |cpu: Option<f64>, s: f64| cpu.map_or("-".into(), |c| format!("{:.2}", c / s));
            println!(
                "  QUIC, 1 stream, TLS, loopback, {} MiB, best of {}:  {:>7.3} GB/s  ({}; CPU \
                 cores of the best: sender {}, receiver {})",
                a.stream_mib,
                probes.len(),
                rate(best),
                all.join(", "),
                cores(best.sender_cpu_s, best.sender_s),
                cores(best.receiver_cpu_s, best.receiver_s),
            );
            Some(rate(best))
        } else {
            None
        };
        let gloo = match &a.gloo_python {
            Some(python) => {
                let g = gloo::run(python, &a.peers_dir, &a.worlds, plan)?;
                println!("  gloo peer: {}", g.header);
                for note in &g.notes {
                    println!("  gloo note: {note}");
                }
                Some(g)
            }
            None => None,
        };
        Ok(Self {
            memcpy_gbps,
            memcpy_all_gbps,
            stream_gbps,
            gloo,
        })
    }
}

/// Single-thread memcpy bandwidth (bytes copied per second, GB/s): the median of
/// `copies` copies of a `bytes` buffer, after one untimed copy that faults the
/// pages in.
fn memcpy_gbps(bytes: usize, copies: usize) -> f64 {
    let src = vec![0x5au8; bytes];
    let mut dst = vec![0u8; bytes];
    dst.copy_from_slice(&src);
    let rates: Vec<f64> = (0..copies)
        .map(|_| {
            let start = Instant::now();
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
            bytes as f64 / start.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    median(&rates)
}

/// memcpy on every cpu at once (GB/s copied, all threads together): each thread
/// copies its own `bytes` buffer `copies` times after one untimed copy; the rate is
/// all bytes over the slowest thread's time. Ranks that are threads share this.
fn memcpy_all_cpus_gbps(bytes: usize, copies: usize) -> f64 {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ready = std::sync::Barrier::new(threads);
    let slowest = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let src = vec![0x5au8; bytes];
                    let mut dst = vec![0u8; bytes];
                    dst.copy_from_slice(&src);
                    ready.wait();
                    let start = Instant::now();
                    for _ in 0..copies {
                        dst.copy_from_slice(std::hint::black_box(&src));
                        std::hint::black_box(&mut dst);
                    }
                    start.elapsed().as_secs_f64()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(f64::NAN))
            .fold(0.0, f64::max)
    });
    (threads * copies * bytes) as f64 / slowest / 1e9
}
