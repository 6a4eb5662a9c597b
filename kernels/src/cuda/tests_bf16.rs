//! The bf16 builds of the GPU kernels against the CPU kernels (skipped without a
//! GPU); the helpers are the fp32 tests'.

use super::tests::{assert_close_to_norm, gpu_or_skip, rand32};
use super::*;
use crate::testutil::random_tokens;
use crate::{AdamW, DecaySpan, WeightLayout};

// The bf16 builds of the kernels against the CPU kernels: inputs are rounded
// to bf16 on the host and the CPU kernel runs on those exact values in fp32, so
// what differs is the rounding of the bf16 outputs (2^-9 relative, held to
// 1e-2 of the largest magnitude) and, for fp32 outputs computed from bf16
// inputs (statistics, losses, weight gradients), the order of fp32 sums.

/// Tolerance of bf16 outputs, relative to max |want|.
const TOL_BF16: f64 = 1e-2;
/// Tolerance of fp32 outputs of the bf16 kernels.
const TOL_F32: f64 = 1e-4;

/// Random values already representable in bf16.
fn rand_bf16(n: usize, seed: u64) -> Vec<f32> {
    to_f32s(&to_storage::<Bf16>(&rand32(n, seed)))
}

/// Uploads `x` (bf16-representable) as bf16.
fn up_bf16(gpu: &Gpu, x: &[f32]) -> CudaSlice<Bf16> {
    gpu.upload(&to_storage::<Bf16>(x)).unwrap()
}

/// Downloads a bf16 buffer as fp32.
fn down_bf16(gpu: &Gpu, x: &CudaSlice<Bf16>) -> Vec<f32> {
    to_f32s(&gpu.download(x).unwrap())
}

#[test]
fn bf16_conversions_match_the_host() {
    let Some(gpu) = gpu_or_skip() else { return };
    let mut x: Vec<f32> = rand32(10_001, 1).iter().map(|v| v * 1e3).collect();
    x.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NAN,
        f32::MAX,
        1.0 + 2f32.powi(-8),
    ]);
    let gx = gpu.upload(&x).unwrap();
    let mut g16 = gpu.zeros::<Bf16>(x.len()).unwrap();
    f32_to_storage(&gpu, &mut g16, &gx).unwrap();
    let want: Vec<u16> = to_storage::<Bf16>(&x).iter().map(|b| b.0).collect();
    let got: Vec<u16> = gpu.download(&g16).unwrap().iter().map(|b| b.0).collect();
    assert_eq!(got, want, "device and host bf16 rounding differ");
    let mut back = gpu.zeros::<f32>(x.len()).unwrap();
    storage_to_f32(&gpu, &mut back, &g16).unwrap();
    let want = to_f32s(&to_storage::<Bf16>(&x));
    let got = gpu.download(&back).unwrap();
    assert!(
        got.iter()
            .zip(&want)
            .all(|(g, w)| g.to_bits() == w.to_bits())
    );
}

#[test]
fn layernorm_bf16_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    for (n, c) in [(5, 17), (70, 100), (600, 768)] {
        let (inp, w, bias, dout) = (
            rand_bf16(n * c, 1),
            rand_bf16(c, 2),
            rand_bf16(c, 3),
            rand_bf16(n * c, 4),
        );
        let (mut out, mut mean, mut rstd) = (vec![0f32; n * c], vec![0f32; n], vec![0f32; n]);
        crate::layernorm_forward(&mut out, &mut mean, &mut rstd, &inp, &w, &bias, n, c, 1e-5);
        let (dinp0, dw0, db0) = (rand_bf16(n * c, 5), rand32(c, 6), rand32(c, 7));
        let (mut dinp, mut dw, mut db) = (dinp0.clone(), dw0.clone(), db0.clone());
        crate::layernorm_backward(
            &mut dinp, &mut dw, &mut db, &dout, &inp, &w, &mean, &rstd, n, c,
        );

        let up = |x: &[f32]| up_bf16(&gpu, x);
        let (ginp, gw, gb, gdout) = (up(&inp), up(&w), up(&bias), up(&dout));
        let mut gout = gpu.zeros::<Bf16>(n * c).unwrap();
        let (mut gmean, mut grstd) = (gpu.zeros(n).unwrap(), gpu.zeros(n).unwrap());
        layernorm_forward(
            &gpu, &mut gout, &mut gmean, &mut grstd, &ginp, &gw, &gb, n, c, 1e-5,
        )
        .unwrap();
        let mut gdinp = up(&dinp0);
        let (mut gdw, mut gdb) = (gpu.upload(&dw0).unwrap(), gpu.upload(&db0).unwrap());
        layernorm_backward(
            &gpu, &mut gdinp, &mut gdw, &mut gdb, &gdout, &ginp, &gw, &gmean, &grstd, n, c,
        )
        .unwrap();
        assert_close_to_norm("out", &down_bf16(&gpu, &gout), &out, TOL_BF16);
        assert_close_to_norm("mean", &gpu.download(&gmean).unwrap(), &mean, TOL_F32);
        assert_close_to_norm("rstd", &gpu.download(&grstd).unwrap(), &rstd, TOL_F32);
        assert_close_to_norm("dinp", &down_bf16(&gpu, &gdinp), &dinp, TOL_BF16);
        assert_close_to_norm("dweight", &gpu.download(&gdw).unwrap(), &dw, TOL_F32);
        assert_close_to_norm("dbias", &gpu.download(&gdb).unwrap(), &db, TOL_F32);
    }
}

#[test]
fn elementwise_bf16_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let n = 20_001;
    let x = to_f32s(&to_storage::<Bf16>(
        &rand32(n, 1).iter().map(|v| v * 12.0).collect::<Vec<_>>(),
    ));
    let (g, d0, y) = (rand_bf16(n, 2), rand_bf16(n, 3), rand_bf16(n, 4));
    let mut out = vec![0f32; n];
    crate::gelu_forward(&mut out, &x);
    let mut dinp = d0.clone();
    crate::gelu_backward(&mut dinp, &x, &g);
    let mut sum = vec![0f32; n];
    crate::residual_forward(&mut sum, &x, &y);
    let mut acc = d0.clone();
    crate::add_inplace(&mut acc, &y);

    let (gx, gg, gy) = (up_bf16(&gpu, &x), up_bf16(&gpu, &g), up_bf16(&gpu, &y));
    let mut gout = gpu.zeros::<Bf16>(n).unwrap();
    gelu_forward(&gpu, &mut gout, &gx).unwrap();
    let mut gdinp = up_bf16(&gpu, &d0);
    gelu_backward(&gpu, &mut gdinp, &gx, &gg).unwrap();
    let mut gsum = gpu.zeros::<Bf16>(n).unwrap();
    residual_forward(&gpu, &mut gsum, &gx, &gy).unwrap();
    let mut gacc = up_bf16(&gpu, &d0);
    add_inplace(&gpu, &mut gacc, &gy).unwrap();
    assert_close_to_norm("gelu", &down_bf16(&gpu, &gout), &out, TOL_BF16);
    assert_close_to_norm("dgelu", &down_bf16(&gpu, &gdinp), &dinp, TOL_BF16);
    assert_close_to_norm("residual", &down_bf16(&gpu, &gsum), &sum, TOL_BF16);
    assert_close_to_norm("add_inplace", &down_bf16(&gpu, &gacc), &acc, TOL_BF16);
}

#[test]
fn crossentropy_bf16_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    for (n, v) in [(5, 17), (4, 1000), (3, 50_257)] {
        let logits = to_f32s(&to_storage::<Bf16>(
            &rand32(n * v, 1).iter().map(|x| x * 8.0).collect::<Vec<_>>(),
        ));
        let targets = random_tokens(n, v, 2);
        let (mut losses, mut lse) = (vec![0f32; n], vec![0f32; n]);
        crate::crossentropy_forward(&mut losses, &mut lse, &logits, &targets, n, v);
        let mut dlogits = logits.clone();
        crate::crossentropy_backward_inplace(&mut dlogits, &lse, &targets, 0.25, n, v);

        let (mut glogits, gtargets) = (up_bf16(&gpu, &logits), gpu.upload(&targets).unwrap());
        let (mut glosses, mut glse) = (gpu.zeros(n).unwrap(), gpu.zeros(n).unwrap());
        crossentropy_forward(&gpu, &mut glosses, &mut glse, &glogits, &gtargets, n, v).unwrap();
        crossentropy_backward_inplace(&gpu, &mut glogits, &glse, &gtargets, 0.25, n, v).unwrap();
        assert_close_to_norm("lse", &gpu.download(&glse).unwrap(), &lse, TOL_F32);
        assert_close_to_norm("losses", &gpu.download(&glosses).unwrap(), &losses, TOL_F32);
        assert_close_to_norm("dlogits", &down_bf16(&gpu, &glogits), &dlogits, TOL_BF16);
    }
}

#[test]
fn embedding_bf16_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let (b, t, c, v, maxt) = (3, 65, 17, 10, 80);
    let tokens = random_tokens(b * t, v, 5);
    let (wte, wpe, dout) = (
        rand_bf16(v * c, 1),
        rand_bf16(maxt * c, 2),
        rand_bf16(b * t * c, 3),
    );
    let mut out = vec![0f32; b * t * c];
    crate::embedding_forward(&mut out, &tokens, &wte, &wpe, b, t, c);
    let (dwte0, dwpe0) = (rand32(v * c, 4), rand32(maxt * c, 5));
    let (mut dwte, mut dwpe) = (dwte0.clone(), dwpe0.clone());
    crate::embedding_backward(&mut dwte, &mut dwpe, &dout, &tokens, b, t, c);

    let gtokens = gpu.upload(&tokens).unwrap();
    let mut gout = gpu.zeros::<Bf16>(b * t * c).unwrap();
    let (gwte, gwpe) = (up_bf16(&gpu, &wte), up_bf16(&gpu, &wpe));
    embedding_forward(&gpu, &mut gout, &gtokens, &gwte, &gwpe, b, t, c).unwrap();
    let (mut gdwte, mut gdwpe) = (gpu.upload(&dwte0).unwrap(), gpu.upload(&dwpe0).unwrap());
    let gdout = up_bf16(&gpu, &dout);
    embedding_backward(&gpu, &mut gdwte, &mut gdwpe, &gdout, &gtokens, b, t, c).unwrap();
    assert_close_to_norm("out", &down_bf16(&gpu, &gout), &out, TOL_BF16);
    assert_close_to_norm("dwte", &gpu.download(&gdwte).unwrap(), &dwte, TOL_F32);
    assert_close_to_norm("dwpe", &gpu.download(&gdwpe).unwrap(), &dwpe, TOL_F32);
}

#[test]
fn adamw_writes_the_bf16_copy() {
    let Some(gpu) = gpu_or_skip() else { return };
    let hp = AdamW {
        lr: 6e-4,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let (n, split) = (70_001, 30_007);
    let spans = [
        DecaySpan {
            start: split,
            end: n,
            decay: false,
        },
        DecaySpan {
            start: 0,
            end: split,
            decay: true,
        },
    ];
    let (mut p, mut m, mut v) = (rand32(n, 1), vec![0f32; n], vec![0f32; n]);
    let mut gp = gpu.upload(&p).unwrap();
    let (mut gm, mut gv) = (gpu.zeros(n).unwrap(), gpu.zeros(n).unwrap());
    let mut copy = gpu.zeros::<Bf16>(n).unwrap();
    for step in 1..=3 {
        let g = rand32(n, 10 + step);
        crate::adamw_update(&mut p, &g, &mut m, &mut v, &hp, step, &spans);
        let gg = gpu.upload(&g).unwrap();
        adamw_update_with_copy(
            &gpu, &mut gp, &mut copy, &gg, &mut gm, &mut gv, &hp, step, &spans,
        )
        .unwrap();
    }
    let master = gpu.download(&gp).unwrap();
    assert_close_to_norm("params", &master, &p, 1e-5);
    assert_close_to_norm("m", &gpu.download(&gm).unwrap(), &m, 1e-5);
    assert_close_to_norm("v", &gpu.download(&gv).unwrap(), &v, 1e-5);
    // The copy is the master parameters rounded, bit for bit.
    let want: Vec<u16> = to_storage::<Bf16>(&master).iter().map(|b| b.0).collect();
    let got: Vec<u16> = gpu.download(&copy).unwrap().iter().map(|b| b.0).collect();
    assert_eq!(got, want, "the bf16 copy is not the rounded master");
}

#[test]
fn matmul_bf16_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let (n, c, oc) = (37, 48, 70);
    for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
        let (inp, w, bias, dout) = (
            rand_bf16(n * c, 1),
            rand_bf16(c * oc, 2),
            rand_bf16(oc, 3),
            rand_bf16(n * oc, 4),
        );
        let mut out = vec![0f32; n * oc];
        crate::matmul_forward(&mut out, &inp, &w, Some(&bias), n, c, oc, layout);
        let (dinp0, dw0, db0) = (rand_bf16(n * c, 5), rand32(c * oc, 6), rand32(oc, 7));
        let (mut dinp, mut dw, mut db) = (dinp0.clone(), dw0.clone(), db0.clone());
        crate::matmul_backward(
            Some(&mut dinp),
            &mut dw,
            Some(&mut db),
            &dout,
            &inp,
            &w,
            n,
            c,
            oc,
            layout,
        );

        let up = |x: &[f32]| up_bf16(&gpu, x);
        let (ginp, gw, gbias, gdout) = (up(&inp), up(&w), up(&bias), up(&dout));
        let mut gout = gpu.zeros::<Bf16>(n * oc).unwrap();
        matmul_forward(&gpu, &mut gout, &ginp, &gw, Some(&gbias), n, c, oc, layout).unwrap();
        let mut gdinp = up(&dinp0);
        let (mut gdw, mut gdb) = (gpu.upload(&dw0).unwrap(), gpu.upload(&db0).unwrap());
        matmul_backward(
            &gpu,
            Some(&mut gdinp),
            &mut gdw,
            Some(&mut gdb),
            &gdout,
            &ginp,
            &gw,
            n,
            c,
            oc,
            layout,
        )
        .unwrap();
        assert_close_to_norm("out", &down_bf16(&gpu, &gout), &out, TOL_BF16);
        assert_close_to_norm("dinp", &down_bf16(&gpu, &gdinp), &dinp, TOL_BF16);
        // Exact bf16 products summed in fp32: only the order of sums differs.
        assert_close_to_norm("dweight", &gpu.download(&gdw).unwrap(), &dw, TOL_F32);
        assert_close_to_norm("dbias", &gpu.download(&gdb).unwrap(), &db, TOL_F32);
    }
}

#[test]
fn attention_bf16_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    for (b, t, c, nh) in [(1, 1, 4, 1), (2, 70, 64, 2), (1, 130, 96, 3)] {
        let (qkv, dout) = (rand_bf16(b * t * 3 * c, 1), rand_bf16(b * t * c, 2));
        let (mut out, mut lse) = (vec![0f32; b * t * c], vec![0f32; b * nh * t]);
        crate::attention_forward(&mut out, &mut lse, &qkv, b, t, c, nh);
        let dqkv0 = rand_bf16(b * t * 3 * c, 3);
        let mut dqkv = dqkv0.clone();
        crate::attention_backward(&mut dqkv, &dout, &qkv, &out, &lse, b, t, c, nh);

        let (gqkv, gdout) = (up_bf16(&gpu, &qkv), up_bf16(&gpu, &dout));
        let mut gout = gpu.zeros::<Bf16>(b * t * c).unwrap();
        let mut glse = gpu.zeros(b * nh * t).unwrap();
        attention_forward(&gpu, &mut gout, &mut glse, &gqkv, b, t, c, nh).unwrap();
        let mut gdqkv = up_bf16(&gpu, &dqkv0);
        attention_backward(&gpu, &mut gdqkv, &gdout, &gqkv, &gout, &glse, b, t, c, nh).unwrap();
        assert_close_to_norm("out", &down_bf16(&gpu, &gout), &out, TOL_BF16);
        assert_close_to_norm("lse", &gpu.download(&glse).unwrap(), &lse, TOL_F32);
        assert_close_to_norm("dqkv", &down_bf16(&gpu, &gdqkv), &dqkv, TOL_BF16);
    }
}
