//! `shoal ring-worker`: one rank of a multi-process collectives run, driven over
//! stdin/stdout with JSON lines. Used by the multi-process tests and by
//! `shoal bench collectives`; a later coordinator takes over this job for training.
//!
//! On start it binds its QUIC endpoint and prints `{"event":"listening","addr":..}`.
//! Requests, one JSON object a line:
//! - `{"cmd":"form","generation":G,"members":["ip:port",..],"rank":R,
//!    "timeout_ms":T,"chunk_bytes":C}` -> `{"event":"formed",..}`
//! - `{"cmd":"run","op":"all_reduce","reduce":"sum","len":N,"seed":S,"input":I,
//!    "root":0,"iters":K,"warmup":W}` -> `{"event":"started"}` then
//!   `{"event":"done","crc32":..,"seconds":[..],..}`; rank R's input is
//!   `pattern(S, I * 1024 + R, N)`, reset before every iteration; each timed
//!   iteration is barrier, then the op. `done` also carries `shard_crc32` (of this
//!   rank's shard, [`Communicator::shard`], for f32 ops) and `timed`: over the timed
//!   iterations only, the op's `combine_s` and `wait_s` (barriers excluded), the
//!   process's `cpu_s` (user + system, [`shoal::launch::process_cpu_seconds`]) and
//!   the loop's wall time `loop_s` (barriers included).
//! - `{"cmd":"stream_sink","timeout_ms":T}` -> `{"event":"sink","addr":..}`, then,
//!   once a source sent its stream (the worker reads no request meanwhile),
//!   `{"event":"drained","bytes":N,"seconds":S,"cpu_s":C}`: the raw QUIC ceiling of
//!   [`shoal_collectives::probe`], on an endpoint of its own.
//! - `{"cmd":"stream_source","addr":"ip:port","bytes":N,"timeout_ms":T}` ->
//!   `{"event":"streamed","bytes":N,"seconds":S,"cpu_s":C}`: one stream of N bytes to
//!   a sink (`cpu_s`: the process's CPU time meanwhile).
//! - `{"cmd":"exit"}`
//!
//! Failures are reported as `{"event":"error","kind":..,"rank":..,"message":..}` and
//! the worker keeps listening (a new `form` starts a new generation).

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use serde::Deserialize;
use serde_json::{Value, json};
use shoal::launch::process_cpu_seconds;
use shoal_collectives::pattern::pattern;
use shoal_collectives::probe::{StreamSink, stream_to};
use shoal_collectives::tls::NodeIdentity;
use shoal_collectives::{
    CollectiveError, CommConfig, Communicator, QuicNode, QuicOptions, ReduceOp,
};

/// Flags of `shoal ring-worker`.
#[derive(Args, Debug)]
pub struct RingWorkerArgs {
    /// Directory with the cluster CA certificate and this node's certificate.
    #[arg(long)]
    pub cluster: PathBuf,
    /// This node's name (its files are NAME.crt and NAME.key).
    #[arg(long)]
    pub node: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// A link silent this long is dead (QUIC idle timeout), in milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub idle_timeout_ms: u64,
}

#[derive(Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Form {
        generation: u64,
        members: Vec<SocketAddr>,
        rank: usize,
        timeout_ms: u64,
        chunk_bytes: usize,
    },
    Run(RunRequest),
    StreamSink {
        #[serde(default = "probe_timeout_ms")]
        timeout_ms: u64,
    },
    StreamSource {
        addr: SocketAddr,
        bytes: u64,
        #[serde(default = "probe_timeout_ms")]
        timeout_ms: u64,
    },
    Exit,
}

fn probe_timeout_ms() -> u64 {
    60_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    op: String,
    #[serde(default = "sum")]
    reduce: String,
    len: usize,
    seed: u64,
    input: u64,
    #[serde(default)]
    root: usize,
    #[serde(default = "one")]
    iters: usize,
    #[serde(default)]
    warmup: usize,
}

fn sum() -> String {
    "sum".into()
}

fn one() -> usize {
    1
}

fn emit(value: Value) {
    let mut out = std::io::stdout().lock();
    // A parent that went away cannot be told anything; the worker ends at stdin's EOF.
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

fn error_event(e: &CollectiveError, after: Duration, node: &QuicNode) -> Value {
    let (kind, rank) = match e {
        CollectiveError::PeerLost { rank } => ("peer_lost", Some(*rank)),
        CollectiveError::Timeout { waiting_for, .. } => ("timeout", Some(*waiting_for)),
        CollectiveError::Aborted { .. } => ("aborted", None),
        CollectiveError::BadFrame { rank, .. } => ("bad_frame", Some(*rank)),
        CollectiveError::InvalidArgument(_) => ("invalid_argument", None),
        CollectiveError::Tls(_) => ("tls", None),
        CollectiveError::Network(_) => ("network", None),
        CollectiveError::WorkerGone => ("worker_gone", None),
    };
    json!({
        "event": "error", "kind": kind, "rank": rank, "message": e.to_string(),
        "after_ms": after.as_millis() as u64,
        "rejected_connections": node.rejected_connections(),
    })
}

/// Runs the worker until `exit` or the end of stdin.
pub fn run(a: RingWorkerArgs) -> Result<()> {
    let identity = NodeIdentity::load(&a.cluster, &a.node)?;
    let idle = Duration::from_millis(a.idle_timeout_ms.max(100));
    let options = QuicOptions {
        idle_timeout: idle,
        keep_alive: idle / 5,
        ..QuicOptions::default()
    };
    let node = QuicNode::bind(a.listen, &identity, options.clone())?;
    emit(json!({"event": "listening", "addr": node.local_addr()?.to_string()}));
    let mut comm: Option<Communicator> = None;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let request = match serde_json::from_str::<Request>(&line) {
            Ok(r) => r,
            Err(e) => {
                emit(json!({"event": "error", "kind": "bad_request", "message": e.to_string()}));
                continue;
            }
        };
        match request {
            Request::Form {
                generation,
                members,
                rank,
                timeout_ms,
                chunk_bytes,
            } => {
                comm = None;
                let config = CommConfig {
                    timeout: Duration::from_millis(timeout_ms),
                    chunk_bytes,
                    ..CommConfig::default()
                };
                let start = Instant::now();
                match node.communicator(generation, &members, rank, config) {
                    Ok(c) => {
                        comm = Some(c);
                        emit(json!({"event": "formed", "generation": generation,
                                    "ms": start.elapsed().as_millis() as u64}));
                    }
                    Err(e) => emit(error_event(&e, start.elapsed(), &node)),
                }
            }
            Request::Run(r) => match comm.as_mut() {
                None => emit(json!({"event": "error", "kind": "no_communicator",
                                    "message": "form a communicator first"})),
                Some(c) => emit(match run_op(c, &r) {
                    Ok(done) => done,
                    Err((e, after)) => error_event(&e, after, &node),
                }),
            },
            Request::StreamSink { timeout_ms } => {
                let start = Instant::now();
                let limit = Duration::from_millis(timeout_ms);
                let cpu = process_cpu_seconds();
                let drained =
                    StreamSink::bind(SocketAddr::new(a.listen.ip(), 0), &identity, &options)
                        .and_then(|sink| {
                            emit(json!({"event": "sink", "addr": sink.local_addr()?.to_string()}));
                            sink.drain(limit)
                        });
                emit(match drained {
                    Ok(p) => json!({"event": "drained", "bytes": p.bytes, "seconds": p.seconds,
                                    "cpu_s": cpu_since(cpu)}),
                    Err(e) => error_event(&e, start.elapsed(), &node),
                });
            }
            Request::StreamSource {
                addr,
                bytes,
                timeout_ms,
            } => {
                let start = Instant::now();
                let limit = Duration::from_millis(timeout_ms);
                let cpu = process_cpu_seconds();
                emit(match stream_to(addr, &identity, &options, bytes, limit) {
                    Ok(p) => json!({"event": "streamed", "bytes": p.bytes, "seconds": p.seconds,
                                    "cpu_s": cpu_since(cpu)}),
                    Err(e) => error_event(&e, start.elapsed(), &node),
                });
            }
            Request::Exit => break,
        }
    }
    Ok(())
}

/// CPU seconds this process used since `before` (a [`process_cpu_seconds`] reading).
fn cpu_since(before: Option<f64>) -> Option<f64> {
    before.zip(process_cpu_seconds()).map(|(a, b)| b - a)
}

fn reduce_op(name: &str) -> Result<ReduceOp, CollectiveError> {
    match name {
        "sum" => Ok(ReduceOp::Sum),
        "mean" => Ok(ReduceOp::Mean),
        "max" => Ok(ReduceOp::Max),
        other => Err(CollectiveError::InvalidArgument(format!(
            "unknown reduction `{other}`"
        ))),
    }
}

/// Runs `r.warmup + r.iters` iterations; returns the `done` event.
fn run_op(c: &mut Communicator, r: &RunRequest) -> Result<Value, (CollectiveError, Duration)> {
    let now = Instant::now();
    let reduce = reduce_op(&r.reduce).map_err(|e| (e, now.elapsed()))?;
    let input = pattern(r.seed, r.input * 1024 + c.rank() as u64, r.len);
    let input_bytes: Vec<u8> = bytemuck::cast_slice(&input).to_vec();
    let mut buf = input.clone();
    let mut bytes = input_bytes.clone();
    let mut seconds = Vec::with_capacity(r.iters);
    let mut own = 0..r.len;
    // Over the timed iterations: the op's own combine and wait times, CPU and wall.
    let (mut combine, mut wait) = (Duration::ZERO, Duration::ZERO);
    let (mut cpu, mut wall) = (None, None);
    emit(json!({"event": "started"}));
    for i in 0..r.warmup + r.iters {
        buf.copy_from_slice(&input);
        bytes.copy_from_slice(&input_bytes);
        if i == r.warmup {
            (cpu, wall) = (process_cpu_seconds(), Some(Instant::now()));
        }
        let start = Instant::now();
        let at = |e| (e, start.elapsed());
        c.barrier().map_err(at)?;
        let before = c.stats();
        let t0 = Instant::now();
        match r.op.as_str() {
            "all_reduce" => c.all_reduce(&mut buf, reduce),
            "reduce_scatter" => c.reduce_scatter(&mut buf, reduce).map(|s| own = s),
            "all_gather" => c.all_gather(&mut buf),
            "broadcast" => c.broadcast(&mut buf, r.root),
            "all_gather_bytes" => c.all_gather_bytes(&mut bytes),
            "broadcast_bytes" => c.broadcast_bytes(&mut bytes, r.root),
            "barrier" => c.barrier(),
            other => Err(CollectiveError::InvalidArgument(format!(
                "unknown op `{other}`"
            ))),
        }
        .map_err(at)?;
        if i >= r.warmup {
            seconds.push(t0.elapsed().as_secs_f64());
            let after = c.stats();
            combine += after.combine_time.saturating_sub(before.combine_time);
            wait += after.wait_time.saturating_sub(before.wait_time);
        }
    }
    let loop_s = wall.map(|w| w.elapsed().as_secs_f64());
    let cpu_s = cpu_since(cpu);
    let shard = c.shard(r.len);
    let result: &[u8] = if r.op.ends_with("_bytes") {
        &bytes
    } else {
        bytemuck::cast_slice(&buf[own])
    };
    let stats = c.stats();
    Ok(json!({
        "event": "done", "crc32": crc32fast::hash(result), "seconds": seconds,
        "shard_crc32": crc32fast::hash(bytemuck::cast_slice(&buf[shard])),
        "timed": {
            "combine_s": combine.as_secs_f64(), "wait_s": wait.as_secs_f64(),
            "cpu_s": cpu_s, "loop_s": loop_s,
        },
        "first": buf.first(), "stats": {
            "ops": stats.ops, "frames_sent": stats.frames_sent,
            "bytes_sent": stats.bytes_sent, "stale_frames": stats.stale_frames,
            "combine_s": stats.combine_time.as_secs_f64(),
            "wait_s": stats.wait_time.as_secs_f64(),
        },
    }))
}
