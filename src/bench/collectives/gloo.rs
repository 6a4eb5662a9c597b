//! The gloo peer: `gloo_allreduce.py` (torch.distributed, gloo backend on
//! 127.0.0.1) run on the same worlds and sizes, its busbw read from the final
//! `JSON ` line it prints.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{ByPoint, Op, Plan, peer_script};

/// The gloo peer's results.
pub(super) struct Gloo {
    busbw: ByPoint<f64>,
    /// Its first table line (torch version, threads, ...).
    pub header: String,
    /// Its notes (unsupported ops, a busy machine).
    pub notes: Vec<String>,
}

impl Gloo {
    /// gloo's busbw (GB/s) for `op` on `world` ranks and a `bytes` buffer.
    pub fn busbw(&self, op: Op, world: usize, bytes: u64) -> Option<f64> {
        self.busbw.get(&(op, world, bytes)).copied()
    }
}

fn list<T: ToString>(xs: &[T]) -> String {
    xs.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}

/// Runs the peer with `python` on `worlds` and the plan's sizes, ops and
/// iterations (0 lets the peer choose its own: 512 MiB / size in 10..=50).
pub(super) fn run(python: &Path, peers_dir: &Path, worlds: &[usize], plan: &Plan) -> Result<Gloo> {
    let script = peer_script(peers_dir, "gloo_allreduce.py")?;
    eprintln!("running the gloo peer ({})...", script.display());
    let ops: Vec<&str> = plan.ops.iter().map(|op| op.name()).collect();
    let out = Command::new(python)
        .arg(&script)
        .args(["--world-sizes", &list(worlds)])
        .args(["--sizes-mib", &list(&plan.sizes_mib)])
        .args(["--iters", &plan.iters.to_string()])
        .args(["--warmup", &plan.warmup.to_string()])
        .args(["--ops", &ops.join(",")])
        .output()
        .with_context(|| format!("cannot run {} {}", python.display(), script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let json = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("JSON "))
        .with_context(|| format!("{} printed no JSON line", script.display()))?;
    let v: Value = serde_json::from_str(json).context("the gloo peer's JSON line")?;
    let mut busbw = ByPoint::new();
    for r in v["results"].as_array().into_iter().flatten() {
        let op = plan
            .ops
            .iter()
            .copied()
            .find(|op| r["op"] == op.gloo_name());
        let world = r["world"].as_u64();
        let bytes = r["bytes"].as_u64();
        let bw = r["busbw_GBps"].as_f64();
        if let (Some(op), Some(world), Some(bytes), Some(bw)) = (op, world, bytes, bw) {
            busbw.insert((op, world as usize, bytes), bw);
        }
    }
    if busbw.is_empty() {
        bail!("the gloo peer reported no results: {json}");
    }
    let notes = v["notes"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or_default()))
        .collect();
    let header = stdout
        .lines()
        .find_map(|l| l.strip_prefix("# "))
        .unwrap_or("gloo")
        .to_string();
    Ok(Gloo {
        busbw,
        header,
        notes,
    })
}
