//! Kernel throughput table: matmul GFLOP/s at GPT-2 shapes and the time of
//! attention, GELU, layernorm and cross-entropy at a small training shape.
//!
//! Run: `RAYON_NUM_THREADS=1 cargo bench -p shoal-kernels` (or 2, ...); an
//! argument such as `-- attention` runs only the groups whose name contains it.

use std::time::Instant;

use shoal_kernels::*;

/// Best wall time in milliseconds of `reps` calls after one warm-up.
fn best_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

fn filled(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

fn main() {
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    let wanted = |group: &str| group.contains(&filter);
    let threads = rayon::current_num_threads();
    println!("threads: {threads}");
    println!("{:<44} {:>10} {:>10}", "kernel", "ms", "GFLOP/s");
    if wanted("matmul") {
        matmul();
    }
    if wanted("lmhead") {
        lm_head();
    }
    if wanted("model") {
        model_shapes();
    }
    if wanted("attention") {
        attention();
    }
    if wanted("gelu layernorm") {
        elementwise();
    }
    if wanted("crossentropy") {
        crossentropy();
    }
}

fn matmul() {
    for (m, n, k) in [
        (2048, 256, 768),
        (2048, 768, 256),
        (2048, 768, 768),
        (2048, 3072, 768),
        (2048, 768, 3072),
    ] {
        let gflops = measure_gemm_gflops(m, n, k, 5);
        let ms = 2.0 * (m * n * k) as f64 / gflops / 1e6;
        println!(
            "{:<44} {ms:>10.2} {gflops:>10.1}",
            format!("matmul_forward (M,N,K)=({m},{n},{k})")
        );
    }

    // matmul backward at a GPT-2 small MLP shape: 2 products of 2·N·C·OC each.
    let (rows, c, oc) = (2048, 768, 3072);
    let (inp, w, dout) = (filled(rows * c, 1), filled(c * oc, 2), filled(rows * oc, 3));
    let (mut dinp, mut dw, mut db) = (vec![0f32; rows * c], vec![0f32; c * oc], vec![0f32; oc]);
    for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
        let ms = best_ms(3, || {
            matmul_backward(
                Some(&mut dinp),
                &mut dw,
                Some(&mut db),
                &dout,
                &inp,
                &w,
                rows,
                c,
                oc,
                layout,
            )
        });
        let gflops = 4.0 * (rows * c * oc) as f64 / ms / 1e6;
        println!(
            "{:<44} {ms:>10.2} {gflops:>10.1}",
            format!("matmul_backward N={rows} C={c} OC={oc} {layout:?}")
        );
    }
}

/// The products of shoal's bench models at N = B*T = 2048 rows: bench-5m
/// (C=256, V=8192) and bench-30m (C=384, V=50304). Per layer: the forward, the
/// weight gradient alone (`dinp = None`) and the whole backward (dinp + dweight
/// + dbias), each as GFLOP/s of its own 2·N·C·OC (backward: twice that).
fn model_shapes() {
    let n = 2048;
    for (model, c, v) in [("5m", 256, 8192), ("30m", 384, 50_304)] {
        for (layer, ic, oc, layout) in [
            ("qkv", c, 3 * c, WeightLayout::InOut),
            ("attproj", c, c, WeightLayout::InOut),
            ("fc", c, 4 * c, WeightLayout::InOut),
            ("fcproj", 4 * c, c, WeightLayout::InOut),
            ("lmhead", c, v, WeightLayout::OutIn),
        ] {
            let (inp, w, dout) = (filled(n * ic, 1), filled(ic * oc, 2), filled(n * oc, 3));
            let mut out = vec![0f32; n * oc];
            let (mut dinp, mut dw, mut db) =
                (vec![0f32; n * ic], vec![0f32; ic * oc], vec![0f32; oc]);
            let flops = 2.0 * (n * ic * oc) as f64;
            let reps = if flops > 1e10 { 2 } else { 5 };
            let bias = (layout == WeightLayout::InOut).then(|| filled(oc, 4));
            let fwd = best_ms(reps, || {
                matmul_forward(&mut out, &inp, &w, bias.as_deref(), n, ic, oc, layout)
            });
            let dweight = best_ms(reps, || {
                matmul_backward(None, &mut dw, None, &dout, &inp, &w, n, ic, oc, layout)
            });
            let bwd = best_ms(reps, || {
                let db = bias.is_some().then_some(&mut db[..]);
                matmul_backward(
                    Some(&mut dinp),
                    &mut dw,
                    db,
                    &dout,
                    &inp,
                    &w,
                    n,
                    ic,
                    oc,
                    layout,
                )
            });
            let name = format!("{model} {layer} N={n} C={ic} OC={oc}");
            for (part, ms, f) in [
                ("fwd", fwd, flops),
                ("dweight", dweight, flops),
                ("bwd", bwd, 2.0 * flops),
            ] {
                println!(
                    "{:<44} {ms:>10.2} {:>10.1}",
                    format!("{name} {part}"),
                    f / ms / 1e6
                );
            }
        }
    }
}

fn lm_head() {
    // The tied LM head: logits[N, V] = x[N, C] · wteᵀ, wte [V, C] (OutIn).
    let (n, v) = (2048, 50_304);
    for c in [256, 768] {
        let (x, wte) = (filled(n * c, 11), filled(v * c, 12));
        let mut logits = vec![0f32; n * v];
        let flops = 2.0 * (n * c * v) as f64;
        let ms = best_ms(2, || {
            matmul_forward(&mut logits, &x, &wte, None, n, c, v, WeightLayout::OutIn)
        });
        println!(
            "{:<44} {ms:>10.2} {:>10.1}",
            format!("lm_head forward N={n} C={c} V={v}"),
            flops / ms / 1e6
        );
        let (mut dx, mut dwte) = (vec![0f32; n * c], vec![0f32; v * c]);
        let ms = best_ms(2, || {
            matmul_backward(
                Some(&mut dx),
                &mut dwte,
                None,
                &logits,
                &x,
                &wte,
                n,
                c,
                v,
                WeightLayout::OutIn,
            )
        });
        println!(
            "{:<44} {ms:>10.2} {:>10.1}",
            format!("lm_head backward N={n} C={c} V={v}"),
            2.0 * flops / ms / 1e6
        );
    }
}

fn attention() {
    // Attention at B=8, NH=4, T=256, hs=64 (C=256). Causal FLOPs: fwd 2 products
    // of T²/2·hs·2 each, bwd 5.
    let (b, nh, t, hs) = (8, 4, 256, 64);
    let c = nh * hs;
    let qkv = filled(b * t * 3 * c, 4);
    let dout = filled(b * t * c, 5);
    let (mut out, mut lse, mut dqkv) = (
        vec![0f32; b * t * c],
        vec![0f32; b * nh * t],
        vec![0f32; b * t * 3 * c],
    );
    let unit = (b * nh * t * t * hs) as f64; // one causal product = T²/2·hs·2 flops
    let fwd = best_ms(10, || {
        attention_forward(&mut out, &mut lse, &qkv, b, t, c, nh)
    });
    let bwd = best_ms(10, || {
        attention_backward(&mut dqkv, &dout, &qkv, &out, &lse, b, t, c, nh)
    });
    println!(
        "{:<44} {fwd:>10.2} {:>10.1}",
        "attention_forward B=8 NH=4 T=256 hs=64",
        2.0 * unit / fwd / 1e6
    );
    println!(
        "{:<44} {bwd:>10.2} {:>10.1}",
        "attention_backward B=8 NH=4 T=256 hs=64",
        5.0 * unit / bwd / 1e6
    );
}

fn elementwise() {
    // Elementwise and row kernels at N = 2048 rows.
    let n = 2048;
    let x = filled(n * 3072, 6);
    let mut y = vec![0f32; n * 3072];
    let ms = best_ms(5, || gelu_forward(&mut y, &x));
    println!("{:<44} {ms:>10.2}", "gelu_forward 2048x3072");
    let ms = best_ms(5, || gelu_backward(&mut y, &x, &x));
    println!("{:<44} {ms:>10.2}", "gelu_backward 2048x3072");

    let c = 768;
    let (inp, w, bias) = (filled(n * c, 7), filled(c, 8), filled(c, 9));
    let (mut out, mut mean, mut rstd) = (vec![0f32; n * c], vec![0f32; n], vec![0f32; n]);
    let ms = best_ms(5, || {
        layernorm_forward(&mut out, &mut mean, &mut rstd, &inp, &w, &bias, n, c, 1e-5)
    });
    println!("{:<44} {ms:>10.2}", "layernorm_forward 2048x768");
    let (mut dinp, mut dw, mut db) = (vec![0f32; n * c], vec![0f32; c], vec![0f32; c]);
    let ms = best_ms(5, || {
        layernorm_backward(
            &mut dinp, &mut dw, &mut db, &inp, &inp, &w, &mean, &rstd, n, c,
        )
    });
    println!("{:<44} {ms:>10.2}", "layernorm_backward 2048x768");
}

fn crossentropy() {
    let n = 2048;
    let v = 50_304;
    let logits = filled(n * v, 10);
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 31) % v as u32).collect();
    let (mut losses, mut lse) = (vec![0f32; n], vec![0f32; n]);
    let ms = best_ms(3, || {
        crossentropy_forward(&mut losses, &mut lse, &logits, &targets, n, v)
    });
    println!("{:<44} {ms:>10.2}", "crossentropy_forward 2048x50304");
    let mut grad = logits.clone();
    let ms = best_ms(3, || {
        crossentropy_backward_inplace(&mut grad, &lse, &targets, 1.0 / n as f32, n, v)
    });
    println!(
        "{:<44} {ms:>10.2}",
        "crossentropy_backward_inplace 2048x50304"
    );
}
