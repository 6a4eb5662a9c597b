//! Helpers shared by the CLI tests.

use std::path::Path;

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
