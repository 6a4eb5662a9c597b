//! Helpers shared by the CLI tests: running the binary, clean failures, a small
//! training run, and comparing runs.
// Each test binary uses its own subset.
#![allow(dead_code)]

pub mod procs;

use std::path::Path;
use std::process::{Command, Output};

/// Runs the `shoal` binary with `args` in `cwd`.
pub fn shoal(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the shoal binary runs")
}

/// What a run printed on stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// What a run printed on stdout.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts a clean failure: exit status 1, `error:` naming every needle, no panic.
pub fn assert_fails(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.starts_with("error: ") || err.contains("\nerror: "),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "expected `{n}` in stderr: {err}");
    }
}

/// Asserts a successful run.
pub fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}

/// Flags of a very small, fast run on the built-in corpus.
pub const SMALL: &[&str] = &[
    "--data-builtin",
    "--tokens-per-domain",
    "6000",
    "--n-layer",
    "1",
    "--n-embd",
    "32",
    "--n-head",
    "2",
    "--batch-size",
    "2",
    "--seq-len",
    "32",
    "--eval-every",
    "2",
    "--eval-batches",
    "1",
    "--threads",
    "2",
];

/// `shoal train` with [`SMALL`], then `extra`, in `dir`.
pub fn train(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train"];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(extra);
    shoal(&args, dir)
}

/// The training losses logged in a run's `metrics.jsonl`, step by step.
pub fn losses(path: &Path) -> Vec<f64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"loss\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

/// `got` is within 1e-5 of `want`'s norm.
pub fn assert_close(want: &[f32], got: &[f32], what: &str) {
    assert_eq!(want.len(), got.len(), "{what}: lengths");
    let norm = want.iter().map(|v| (v * v) as f64).sum::<f64>().sqrt();
    let diff = want
        .iter()
        .zip(got)
        .map(|(u, v)| ((u - v) * (u - v)) as f64)
        .sum::<f64>()
        .sqrt();
    assert!(
        diff <= 1e-5 * norm,
        "{what}: differ by {diff} (norm {norm})"
    );
}

/// Two runs' per-step losses agree within 1e-5 relative.
pub fn assert_losses_match(want: &[f64], got: &[f64], what: &str) {
    assert_eq!(want.len(), got.len(), "{what}: steps");
    for (step, (x, y)) in want.iter().zip(got).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs(),
            "{what} step {}: {x} vs {y}",
            step + 1
        );
    }
}
