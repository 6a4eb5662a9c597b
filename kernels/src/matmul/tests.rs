//! Tests of the matmul kernels against the reference.

use super::*;
use crate::testutil::{assert_close, on_threads, random, to_f32, to_f64};

fn check(n: usize, c: usize, oc: usize, layout: WeightLayout, with_bias: bool, seed: u64) {
    let inp = random(n * c, seed);
    let weight = random(c * oc, seed + 1);
    let bias = random(oc, seed + 2);
    let dout = random(n * oc, seed + 3);
    let bias32 = with_bias.then(|| to_f32(&bias));
    let mut out = vec![f32::NAN; n * oc];
    matmul_forward(
        &mut out,
        &to_f32(&inp),
        &to_f32(&weight),
        bias32.as_deref(),
        n,
        c,
        oc,
        layout,
    );
    let mut want = vec![0.0; n * oc];
    reference::matmul_forward(
        &mut want,
        &inp,
        &weight,
        with_bias.then_some(&bias[..]),
        n,
        c,
        oc,
        layout,
    );
    assert_close("out", &out, &want, 1e-5, 1e-5);

    // Gradients start non-zero to check accumulation.
    let dinp0 = random(n * c, seed + 4);
    let dw0 = random(c * oc, seed + 5);
    let db0 = random(oc, seed + 6);
    let (mut dinp, mut dw, mut db) = (to_f32(&dinp0), to_f32(&dw0), to_f32(&db0));
    matmul_backward(
        Some(&mut dinp),
        &mut dw,
        with_bias.then_some(&mut db[..]),
        &to_f32(&dout),
        &to_f32(&inp),
        &to_f32(&weight),
        n,
        c,
        oc,
        layout,
    );
    let (mut rdinp, mut rdw, mut rdb) = (dinp0.clone(), dw0.clone(), db0.clone());
    reference::matmul_backward(
        Some(&mut rdinp),
        &mut rdw,
        with_bias.then_some(&mut rdb[..]),
        &dout,
        &inp,
        &weight,
        n,
        c,
        oc,
        layout,
    );
    assert_close("dinp", &dinp, &rdinp, 1e-5, 1e-5);
    assert_close("dweight", &dw, &rdw, 1e-5, 1e-5);
    assert_close("dbias", &db, &rdb, 1e-5, 1e-5);

    // dinp = None leaves only dweight/dbias.
    let mut dw2 = to_f32(&dw0);
    matmul_backward(
        None,
        &mut dw2,
        None,
        &to_f32(&dout),
        &to_f32(&inp),
        &to_f32(&weight),
        n,
        c,
        oc,
        layout,
    );
    assert_eq!(to_f64(&dw2), to_f64(&dw));
}

#[test]
fn matches_reference_on_odd_shapes() {
    let mut seed = 10;
    for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
        for (n, c, oc) in [
            (1, 1, 1),
            (3, 1, 5),
            (7, 13, 1),
            (37, 29, 41),
            (64, 48, 96),
            (130, 67, 300),
        ] {
            for with_bias in [false, true] {
                check(n, c, oc, layout, with_bias, seed);
                seed += 10;
            }
        }
    }
}

#[test]
fn large_product_is_deterministic_and_correct() {
    // Big enough to run gemm multithreaded.
    let (n, c, oc) = (256, 192, 384);
    check(n, c, oc, WeightLayout::OutIn, true, 999);
    let inp = to_f32(&random(n * c, 1));
    let weight = to_f32(&random(c * oc, 2));
    let run = |threads: usize| {
        on_threads(threads, || {
            let mut out = vec![0f32; n * oc];
            matmul_forward(&mut out, &inp, &weight, None, n, c, oc, WeightLayout::InOut);
            let mut dw = vec![0f32; c * oc];
            let mut db = vec![0f32; oc];
            let mut dinp = vec![0f32; n * c];
            matmul_backward(
                Some(&mut dinp),
                &mut dw,
                Some(&mut db),
                &out,
                &inp,
                &weight,
                n,
                c,
                oc,
                WeightLayout::InOut,
            );
            (out, dw, db, dinp)
        })
    };
    assert_eq!(run(2), run(2));
    assert_eq!(run(1), run(1));
}

#[test]
fn outin_weight_grad_spans_several_panels() {
    // C = 4096 gives 256-channel panels: OC = 600 takes three, the last partial.
    let (n, c, oc) = (3, 4096, 600);
    let panel = (OUTIN_PANEL_FLOATS / c).max(TRANSPOSE_TILE);
    assert!(panel < oc && !oc.is_multiple_of(panel));
    let inp = random(n * c, 21);
    let dout = random(n * oc, 22);
    let dw0 = random(c * oc, 23);
    let mut dw = to_f32(&dw0);
    let weight = vec![0f32; c * oc];
    matmul_backward(
        None,
        &mut dw,
        None,
        &to_f32(&dout),
        &to_f32(&inp),
        &weight,
        n,
        c,
        oc,
        WeightLayout::OutIn,
    );
    let mut want = dw0.clone();
    reference::matmul_backward(
        None,
        &mut want,
        None,
        &dout,
        &inp,
        &vec![0.0; c * oc],
        n,
        c,
        oc,
        WeightLayout::OutIn,
    );
    assert_close("dweight", &dw, &want, 1e-5, 1e-5);
    let mut again = to_f32(&dw0);
    matmul_backward(
        None,
        &mut again,
        None,
        &to_f32(&dout),
        &to_f32(&inp),
        &weight,
        n,
        c,
        oc,
        WeightLayout::OutIn,
    );
    assert_eq!(again, dw);
}

#[test]
fn transpose_add_matches_naive() {
    for (rows, cols) in [(1, 1), (8, 8), (13, 37), (24, 40), (300, 17)] {
        let src = to_f32(&random(rows * cols, 7));
        let dst0 = to_f32(&random(rows * cols, 8));
        let mut dst = dst0.clone();
        transpose_add(&mut dst, &src, rows, cols);
        for i in 0..rows {
            for j in 0..cols {
                assert_eq!(dst[j * rows + i], dst0[j * rows + i] + src[i * cols + j]);
            }
        }
    }
}

#[test]
fn empty_dimensions_are_fine() {
    let mut out = vec![1.0f32; 6];
    matmul_forward(
        &mut out,
        &[],
        &[],
        Some(&[0.5, 0.5, 0.5]),
        2,
        0,
        3,
        WeightLayout::InOut,
    );
    assert_eq!(out, vec![0.5; 6]);
    let mut out = vec![1.0f32; 6];
    matmul_forward(&mut out, &[], &[], None, 2, 0, 3, WeightLayout::OutIn);
    assert_eq!(out, vec![0.0; 6]);
}

#[test]
fn measure_reports_positive_rate() {
    assert!(measure_gemm_gflops(32, 16, 8, 2) > 0.0);
}
