//! Tests of the attention kernels against the reference and finite differences.

use super::*;
use crate::testutil::{assert_close, finite_difference, on_threads, random, to_f32};

/// Runs the fast forward and backward (into a random starting `dqkv`) and
/// checks both against the reference.
fn check(b: usize, t: usize, c: usize, nh: usize, seed: u64) {
    let qkv = random(b * t * 3 * c, seed);
    let dout = random(b * t * c, seed + 1);
    let dqkv0 = random(b * t * 3 * c, seed + 2);
    let (mut out, mut lse) = (vec![f32::NAN; b * t * c], vec![f32::NAN; b * nh * t]);
    let qkv32 = to_f32(&qkv);
    attention_forward(&mut out, &mut lse, &qkv32, b, t, c, nh);
    let (mut rout, mut rlse) = (vec![0.0; b * t * c], vec![0.0; b * nh * t]);
    reference::attention_forward(&mut rout, &mut rlse, &qkv, b, t, c, nh);
    assert_close("out", &out, &rout, 1e-5, 1e-5);
    assert_close("lse", &lse, &rlse, 1e-5, 1e-5);

    let mut dqkv = to_f32(&dqkv0);
    attention_backward(&mut dqkv, &to_f32(&dout), &qkv32, &out, &lse, b, t, c, nh);
    let mut rdqkv = dqkv0.clone();
    reference::attention_backward(&mut rdqkv, &dout, &qkv, b, t, c, nh);
    assert_close("dqkv", &dqkv, &rdqkv, 2e-5, 1e-4);
}

#[test]
fn matches_reference_on_odd_shapes() {
    // (B, T, C, NH): T below, at and across tile edges; hs = 1, 3, 8, 64, 80.
    let shapes = [
        (1, 1, 1, 1),
        (2, 5, 6, 2),
        (1, 64, 16, 1),
        (2, 67, 24, 3),
        (1, 65, 3, 3),
        (1, 130, 64, 1),
        (2, 200, 128, 2),
        (1, 129, 160, 2),
    ];
    for (i, &(b, t, c, nh)) in shapes.iter().enumerate() {
        check(b, t, c, nh, 100 * i as u64);
    }
}

#[test]
fn backward_matches_finite_differences() {
    // T = 70 crosses a tile boundary; small C keeps the f64 FD loop fast.
    for (b, t, c, nh) in [(1, 4, 6, 2), (1, 70, 4, 2)] {
        let qkv = random(b * t * 3 * c, 7);
        let dout = random(b * t * c, 8);
        let fd = finite_difference(&qkv, |x| {
            let (mut out, mut lse) = (vec![0.0; b * t * c], vec![0.0; b * nh * t]);
            reference::attention_forward(&mut out, &mut lse, x, b, t, c, nh);
            out.iter().zip(&dout).map(|(o, g)| o * g).sum()
        });
        let (mut out, mut lse) = (vec![0f32; b * t * c], vec![0f32; b * nh * t]);
        let qkv32 = to_f32(&qkv);
        attention_forward(&mut out, &mut lse, &qkv32, b, t, c, nh);
        let mut dqkv = vec![0f32; b * t * 3 * c];
        attention_backward(&mut dqkv, &to_f32(&dout), &qkv32, &out, &lse, b, t, c, nh);
        assert_close("dqkv", &dqkv, &fd, 1e-5, 1e-4);
    }
}

#[test]
fn deterministic_across_thread_counts() {
    let (b, t, c, nh) = (2, 150, 64, 4);
    let qkv = to_f32(&random(b * t * 3 * c, 1));
    let dout = to_f32(&random(b * t * c, 2));
    let run = |threads: usize| {
        on_threads(threads, || {
            let (mut out, mut lse) = (vec![0f32; b * t * c], vec![0f32; b * nh * t]);
            attention_forward(&mut out, &mut lse, &qkv, b, t, c, nh);
            let mut dqkv = vec![0f32; b * t * 3 * c];
            attention_backward(&mut dqkv, &dout, &qkv, &out, &lse, b, t, c, nh);
            (out, lse, dqkv)
        })
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

#[test]
fn large_scores_do_not_overflow() {
    // Scores of ±hundreds: the online softmax must rescale, not overflow.
    let (b, t, c, nh) = (1, 100, 8, 1);
    let qkv: Vec<f64> = random(b * t * 3 * c, 3).iter().map(|x| x * 30.0).collect();
    let (mut out, mut lse) = (vec![0f32; b * t * c], vec![0f32; b * nh * t]);
    attention_forward(&mut out, &mut lse, &to_f32(&qkv), b, t, c, nh);
    let (mut rout, mut rlse) = (vec![0.0; b * t * c], vec![0.0; b * nh * t]);
    reference::attention_forward(&mut rout, &mut rlse, &qkv, b, t, c, nh);
    assert_close("out", &out, &rout, 1e-3, 1e-4);
    assert_close("lse", &lse, &rlse, 1e-3, 1e-5);
}
