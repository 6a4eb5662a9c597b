//! The GPU kernels against the CPU kernels on small random inputs (skipped with
//! a message on machines without a GPU), and a compile check of every `.cu`
//! file for sm_90 that needs only NVRTC (skipped without it).

use super::*;
use crate::testutil::{random, random_tokens, to_f32};
use crate::{AdamW, DecaySpan, WeightLayout};

/// The GPU, or `None` after printing why the test is skipped.
pub(super) fn gpu_or_skip() -> Option<Gpu> {
    match Gpu::new(0) {
        Ok(gpu) => Some(gpu),
        Err(e) => {
            eprintln!("skipping: no CUDA driver or device ({e})");
            None
        }
    }
}

/// Panics unless `max |got - want| <= tol · max |want|`.
#[track_caller]
pub(super) fn assert_close_to_norm(name: &str, got: &[f32], want: &[f32], tol: f64) {
    let cmp = Comparison::new(got, want);
    assert!(
        cmp.relative() <= tol,
        "{name}: max error {:e} is {:e} of max |want| {:e} (tolerance {tol:e})",
        cmp.max_abs,
        cmp.relative(),
        cmp.max_want
    );
}

pub(super) fn rand32(n: usize, seed: u64) -> Vec<f32> {
    to_f32(&random(n, seed))
}

#[test]
fn every_kernel_compiles_for_sm_90() {
    if !nvrtc_available() {
        eprintln!("skipping: NVRTC is not loadable (set LD_LIBRARY_PATH to a libnvrtc.so folder)");
        return;
    }
    let version = nvrtc_version().expect("NVRTC reports its version");
    for source in &SOURCES {
        let head_sizes: &[Option<usize>] = if source.needs_head_size {
            &[Some(32), Some(64), Some(128)]
        } else {
            &[None]
        };
        for &hs in head_sizes {
            for &dtype in source.dtypes() {
                let cubin = compile_cubin(source, "sm_90", hs, dtype)
                    .unwrap_or_else(|e| panic!("NVRTC {version:?}: {e}"));
                assert!(
                    !cubin.is_empty(),
                    "{} ({dtype:?}): empty cubin",
                    source.name
                );
            }
        }
    }
}

#[test]
fn layernorm_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    for (n, c) in [(1, 1), (5, 17), (70, 100), (600, 768)] {
        let (inp, w, bias, dout) = (
            rand32(n * c, 1),
            rand32(c, 2),
            rand32(c, 3),
            rand32(n * c, 4),
        );
        let (mut out, mut mean, mut rstd) = (vec![0f32; n * c], vec![0f32; n], vec![0f32; n]);
        crate::layernorm_forward(&mut out, &mut mean, &mut rstd, &inp, &w, &bias, n, c, 1e-5);
        let (dinp0, dw0, db0) = (rand32(n * c, 5), rand32(c, 6), rand32(c, 7));
        let (mut dinp, mut dw, mut db) = (dinp0.clone(), dw0.clone(), db0.clone());
        crate::layernorm_backward(
            &mut dinp, &mut dw, &mut db, &dout, &inp, &w, &mean, &rstd, n, c,
        );

        let up = |x: &[f32]| gpu.upload(x).unwrap();
        let (ginp, gw, gb, gdout) = (up(&inp), up(&w), up(&bias), up(&dout));
        let (mut gout, mut gmean, mut grstd) = (up(&out), gpu.zeros(n).unwrap(), up(&rstd));
        layernorm_forward(
            &gpu, &mut gout, &mut gmean, &mut grstd, &ginp, &gw, &gb, n, c, 1e-5,
        )
        .unwrap();
        let (mut gdinp, mut gdw, mut gdb) = (up(&dinp0), up(&dw0), up(&db0));
        layernorm_backward(
            &gpu, &mut gdinp, &mut gdw, &mut gdb, &gdout, &ginp, &gw, &gmean, &grstd, n, c,
        )
        .unwrap();
        let tol = if c == 1 { 1e-3 } else { 1e-5 };
        assert_close_to_norm("out", &gpu.download(&gout).unwrap(), &out, tol);
        assert_close_to_norm("mean", &gpu.download(&gmean).unwrap(), &mean, tol);
        assert_close_to_norm("rstd", &gpu.download(&grstd).unwrap(), &rstd, tol);
        assert_close_to_norm("dinp", &gpu.download(&gdinp).unwrap(), &dinp, tol);
        assert_close_to_norm("dweight", &gpu.download(&gdw).unwrap(), &dw, tol);
        assert_close_to_norm("dbias", &gpu.download(&gdb).unwrap(), &db, tol);
    }
}

#[test]
fn elementwise_kernels_match_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let n = 20_001;
    let x: Vec<f32> = rand32(n, 1).iter().map(|v| v * 12.0).collect();
    let (g, d0, y) = (rand32(n, 2), rand32(n, 3), rand32(n, 4));
    let mut out = vec![0f32; n];
    crate::gelu_forward(&mut out, &x);
    let mut dinp = d0.clone();
    crate::gelu_backward(&mut dinp, &x, &g);
    let mut sum = vec![0f32; n];
    crate::residual_forward(&mut sum, &x, &y);
    let mut acc = d0.clone();
    crate::add_inplace(&mut acc, &y);

    let (gx, gg, gy) = (
        gpu.upload(&x).unwrap(),
        gpu.upload(&g).unwrap(),
        gpu.upload(&y).unwrap(),
    );
    let mut gout = gpu.zeros(n).unwrap();
    gelu_forward(&gpu, &mut gout, &gx).unwrap();
    let mut gdinp = gpu.upload(&d0).unwrap();
    gelu_backward(&gpu, &mut gdinp, &gx, &gg).unwrap();
    let mut gsum = gpu.zeros(n).unwrap();
    residual_forward(&gpu, &mut gsum, &gx, &gy).unwrap();
    let mut gacc = gpu.upload(&d0).unwrap();
    add_inplace(&gpu, &mut gacc, &gy).unwrap();
    assert_close_to_norm("gelu", &gpu.download(&gout).unwrap(), &out, 1e-5);
    assert_close_to_norm("dgelu", &gpu.download(&gdinp).unwrap(), &dinp, 1e-5);
    assert_close_to_norm("residual", &gpu.download(&gsum).unwrap(), &sum, 1e-6);
    assert_close_to_norm("add_inplace", &gpu.download(&gacc).unwrap(), &acc, 1e-6);
}

#[test]
fn crossentropy_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    for (n, v) in [(1, 1), (5, 17), (4, 1000), (3, 50_257)] {
        let logits: Vec<f32> = rand32(n * v, 1).iter().map(|x| x * 8.0).collect();
        let targets = random_tokens(n, v, 2);
        let (mut losses, mut lse) = (vec![0f32; n], vec![0f32; n]);
        crate::crossentropy_forward(&mut losses, &mut lse, &logits, &targets, n, v);
        let mut dlogits = logits.clone();
        crate::crossentropy_backward_inplace(&mut dlogits, &lse, &targets, 0.25, n, v);

        let (mut glogits, gtargets) = (gpu.upload(&logits).unwrap(), gpu.upload(&targets).unwrap());
        let (mut glosses, mut glse) = (gpu.zeros(n).unwrap(), gpu.zeros(n).unwrap());
        crossentropy_forward(&gpu, &mut glosses, &mut glse, &glogits, &gtargets, n, v).unwrap();
        crossentropy_backward_inplace(&gpu, &mut glogits, &glse, &gtargets, 0.25, n, v).unwrap();
        assert_close_to_norm("lse", &gpu.download(&glse).unwrap(), &lse, 1e-5);
        assert_close_to_norm("losses", &gpu.download(&glosses).unwrap(), &losses, 1e-5);
        assert_close_to_norm("dlogits", &gpu.download(&glogits).unwrap(), &dlogits, 1e-5);
    }
}

#[test]
fn embedding_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let (b, t, c, v, maxt) = (3, 65, 17, 10, 80);
    let tokens = random_tokens(b * t, v, 5);
    let (wte, wpe, dout) = (rand32(v * c, 1), rand32(maxt * c, 2), rand32(b * t * c, 3));
    let mut out = vec![0f32; b * t * c];
    crate::embedding_forward(&mut out, &tokens, &wte, &wpe, b, t, c);
    let (dwte0, dwpe0) = (rand32(v * c, 4), rand32(maxt * c, 5));
    let (mut dwte, mut dwpe) = (dwte0.clone(), dwpe0.clone());
    crate::embedding_backward(&mut dwte, &mut dwpe, &dout, &tokens, b, t, c);

    let up = |x: &[f32]| gpu.upload(x).unwrap();
    let gtokens = gpu.upload(&tokens).unwrap();
    let mut gout = gpu.zeros(b * t * c).unwrap();
    embedding_forward(&gpu, &mut gout, &gtokens, &up(&wte), &up(&wpe), b, t, c).unwrap();
    let (mut gdwte, mut gdwpe) = (up(&dwte0), up(&dwpe0));
    embedding_backward(&gpu, &mut gdwte, &mut gdwpe, &up(&dout), &gtokens, b, t, c).unwrap();
    assert_close_to_norm("out", &gpu.download(&gout).unwrap(), &out, 1e-6);
    assert_close_to_norm("dwte", &gpu.download(&gdwte).unwrap(), &dwte, 1e-5);
    assert_close_to_norm("dwpe", &gpu.download(&gdwpe).unwrap(), &dwpe, 1e-5);
}

#[test]
fn adamw_and_norm_match_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let hp = AdamW {
        lr: 6e-4,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let n = 70_001;
    let split = 30_007;
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
    let (mut gp, mut gm, mut gv) = (
        gpu.upload(&p).unwrap(),
        gpu.zeros(n).unwrap(),
        gpu.zeros(n).unwrap(),
    );
    for step in 1..=3 {
        let g = rand32(n, 10 + step);
        crate::adamw_update(&mut p, &g, &mut m, &mut v, &hp, step, &spans);
        let gg = gpu.upload(&g).unwrap();
        adamw_update(&gpu, &mut gp, &gg, &mut gm, &mut gv, &hp, step, &spans).unwrap();
    }
    assert_close_to_norm("params", &gpu.download(&gp).unwrap(), &p, 1e-5);
    assert_close_to_norm("m", &gpu.download(&gm).unwrap(), &m, 1e-5);
    assert_close_to_norm("v", &gpu.download(&gv).unwrap(), &v, 1e-5);

    let want = crate::sum_of_squares(&p);
    let got = sum_of_squares(&gpu, &gp).unwrap();
    assert!((got - want).abs() <= 1e-5 * want, "{got} vs {want}");
    crate::scale_inplace(&mut p, 0.5);
    scale_inplace(&gpu, &mut gp, 0.5).unwrap();
    assert_close_to_norm("scaled", &gpu.download(&gp).unwrap(), &p, 1e-5);
}

#[test]
fn matmul_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let (n, c, oc) = (37, 48, 70);
    let (in_out, out_in) = (WeightLayout::InOut, WeightLayout::OutIn);
    for (layout, products, tol) in [
        (in_out, Products::Fp32, 1e-5),
        (out_in, Products::Fp32, 1e-5),
        // bf16 inputs keep 8 bits: ~2^-9 relative rounding per factor.
        (in_out, Products::Bf16, 1e-2),
        (out_in, Products::Bf16, 1e-2),
    ] {
        let (inp, w, bias, dout) = (
            rand32(n * c, 1),
            rand32(c * oc, 2),
            rand32(oc, 3),
            rand32(n * oc, 4),
        );
        let mut out = vec![0f32; n * oc];
        crate::matmul_forward(&mut out, &inp, &w, Some(&bias), n, c, oc, layout);
        let (dinp0, dw0, db0) = (rand32(n * c, 5), rand32(c * oc, 6), rand32(oc, 7));
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

        gpu.set_products(products).unwrap();
        let up = |x: &[f32]| gpu.upload(x).unwrap();
        let (ginp, gw, gbias, gdout) = (up(&inp), up(&w), up(&bias), up(&dout));
        let mut gout = gpu.zeros(n * oc).unwrap();
        matmul_forward(&gpu, &mut gout, &ginp, &gw, Some(&gbias), n, c, oc, layout).unwrap();
        let (mut gdinp, mut gdw, mut gdb) = (up(&dinp0), up(&dw0), up(&db0));
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
        assert_close_to_norm("out", &gpu.download(&gout).unwrap(), &out, tol);
        assert_close_to_norm("dinp", &gpu.download(&gdinp).unwrap(), &dinp, tol);
        assert_close_to_norm("dweight", &gpu.download(&gdw).unwrap(), &dw, tol);
        assert_close_to_norm("dbias", &gpu.download(&gdb).unwrap(), &db, tol);
    }
}

/// Random attention inputs (`dqkv0`: what the gradient accumulates onto) and
/// the CPU attention's results.
struct AttentionCase {
    qkv: Vec<f32>,
    dout: Vec<f32>,
    out: Vec<f32>,
    lse: Vec<f32>,
    dqkv0: Vec<f32>,
    dqkv: Vec<f32>,
}

impl AttentionCase {
    fn new(b: usize, t: usize, c: usize, nh: usize) -> Self {
        let qkv = rand32(b * t * 3 * c, 1);
        let dout = rand32(b * t * c, 2);
        let (mut out, mut lse) = (vec![0f32; b * t * c], vec![0f32; b * nh * t]);
        crate::attention_forward(&mut out, &mut lse, &qkv, b, t, c, nh);
        let dqkv0 = rand32(b * t * 3 * c, 3);
        let mut dqkv = dqkv0.clone();
        crate::attention_backward(&mut dqkv, &dout, &qkv, &out, &lse, b, t, c, nh);
        AttentionCase {
            qkv,
            dout,
            out,
            lse,
            dqkv0,
            dqkv,
        }
    }
}

/// The shapes the attention kernels are checked at.
const ATTENTION_SHAPES: [(usize, usize, usize, usize); 3] =
    [(1, 1, 4, 1), (2, 70, 64, 2), (1, 130, 96, 3)];

impl AttentionCase {
    /// `out`, `lse` and `dqkv` computed by a GPU attention against the CPU's.
    fn assert_matches(&self, what: &str, gpu: &Gpu, got: [&CudaSlice<f32>; 3]) {
        let [out, lse, dqkv] = got.map(|x| gpu.download(x).unwrap());
        assert_close_to_norm(&format!("{what} out"), &out, &self.out, 1e-5);
        assert_close_to_norm(&format!("{what} lse"), &lse, &self.lse, 1e-5);
        assert_close_to_norm(&format!("{what} dqkv"), &dqkv, &self.dqkv, 1e-4);
    }
}

#[test]
fn attention_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    for (b, t, c, nh) in ATTENTION_SHAPES {
        let case = AttentionCase::new(b, t, c, nh);
        let (gqkv, gdout) = (
            gpu.upload(&case.qkv).unwrap(),
            gpu.upload(&case.dout).unwrap(),
        );
        let mut gout = gpu.zeros(b * t * c).unwrap();
        let mut glse = gpu.zeros(b * nh * t).unwrap();
        attention_forward(&gpu, &mut gout, &mut glse, &gqkv, b, t, c, nh).unwrap();
        let mut gdqkv = gpu.upload(&case.dqkv0).unwrap();
        attention_backward(&gpu, &mut gdqkv, &gdout, &gqkv, &gout, &glse, b, t, c, nh).unwrap();
        case.assert_matches("tiled", &gpu, [&gout, &glse, &gdqkv]);

        // The cuBLAS attention on the same inputs.
        let shape = (b, t, c, nh);
        let mut scratch = GemmAttentionScratch::<f32>::new(&gpu, b, t, c, nh).unwrap();
        let mut probs = gpu.zeros(gemm_attention_probs_len(b, t, nh)).unwrap();
        let (p, s) = (&mut probs, &mut scratch);
        attention_forward_gemm(&gpu, &mut gout, &mut glse, p, &gqkv, s, shape).unwrap();
        let mut gdqkv = gpu.upload(&case.dqkv0).unwrap();
        attention_backward_gemm(&gpu, &mut gdqkv, &gdout, &gqkv, p, s, shape).unwrap();
        case.assert_matches("cuBLAS", &gpu, [&gout, &glse, &gdqkv]);
    }
}
