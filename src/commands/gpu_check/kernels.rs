//! The kernel table of `shoal gpu-check`: every GPU kernel against its CPU
//! kernel on random inputs, small and medium shapes.

use std::time::Instant;

use shoal_kernels::cuda::{self as gpu_ops, CudaSlice, Gpu, Products};
use shoal_kernels::{AdamW, DecaySpan, WeightLayout};

use super::{TOL, TOL_BF16, TOL_PRODUCT, Table, random, tokens};

/// Every kernel against the CPU, small and medium shapes.
pub(super) fn kernel_table(gpu: &Gpu, it: usize) -> anyhow::Result<Table> {
    let mut table = Table::new();
    let fp32 = Products::Fp32;
    let bf16 = Products::Bf16;
    let (inout, outin) = (WeightLayout::InOut, WeightLayout::OutIn);
    let t = &mut table;
    t.guarded("layernorm 64x96", |t| check_layernorm(gpu, t, it, 64, 96));
    t.guarded("layernorm 1024x768", |t| {
        check_layernorm(gpu, t, it, 4 * 256, 768)
    });
    t.guarded("elementwise 1000", |t| check_elementwise(gpu, t, it, 1000));
    let n = 4 * 256 * 3072;
    t.guarded("elementwise 3M", |t| check_elementwise(gpu, t, it, n));
    t.guarded("crossentropy 8x1000", |t| {
        check_crossentropy(gpu, t, it, 8, 1000)
    });
    let (n, v) = (4 * 256, 50257);
    t.guarded("crossentropy 1024x50257", |t| {
        check_crossentropy(gpu, t, it, n, v)
    });
    let small = (2, 33, 64, 100);
    t.guarded("embedding small", |t| check_embedding(gpu, t, it, small));
    let gpt2 = (4, 256, 768, 50257);
    t.guarded("embedding gpt2", |t| check_embedding(gpu, t, it, gpt2));
    let cases = [
        ((37, 48, 70), inout, fp32),
        ((1024, 768, 3072), inout, fp32),
        ((1024, 768, 50257), outin, fp32),
        ((1024, 768, 3072), inout, bf16),
        ((1024, 768, 50257), outin, bf16),
    ];
    for (shape, layout, products) in cases {
        let what = format!("matmul {shape:?} {layout:?} {products:?}");
        t.guarded(&what, |t| check_matmul(gpu, t, it, shape, layout, products));
    }
    for shape in [(2, 70, 64, 2), (4, 256, 768, 12), (4, 1024, 768, 12)] {
        let what = format!("attention {shape:?}");
        t.guarded(&what, |t| check_attention(gpu, t, it, shape));
        let what = format!("attention (cuBLAS) {shape:?}");
        t.guarded(&what, |t| check_attention_gemm(gpu, t, it, shape));
    }
    for n in [70_001, 124_000_000] {
        t.guarded(&format!("adamw {n}"), |t| check_optimizer(gpu, t, it, n));
    }
    Ok(table)
}

fn check_layernorm(
    gpu: &Gpu,
    table: &mut Table,
    it: usize,
    n: usize,
    c: usize,
) -> anyhow::Result<()> {
    let shape = format!("N={n} C={c}");
    let (inp, w, b, dout) = (
        random(n * c, 1),
        random(c, 2),
        random(c, 3),
        random(n * c, 4),
    );
    let (mut out, mut mean, mut rstd) = (vec![0f32; n * c], vec![0f32; n], vec![0f32; n]);
    shoal_kernels::layernorm_forward(&mut out, &mut mean, &mut rstd, &inp, &w, &b, n, c, 1e-5);
    let (mut dinp, mut dw, mut db) = (vec![0f32; n * c], vec![0f32; c], vec![0f32; c]);
    shoal_kernels::layernorm_backward(
        &mut dinp, &mut dw, &mut db, &dout, &inp, &w, &mean, &rstd, n, c,
    );

    let (ginp, gw, gb, gdout) = (
        gpu.upload(&inp)?,
        gpu.upload(&w)?,
        gpu.upload(&b)?,
        gpu.upload(&dout)?,
    );
    let (mut gout, mut gmean, mut grstd) = (gpu.zeros(n * c)?, gpu.zeros(n)?, gpu.zeros(n)?);
    let mut fwd = || {
        gpu_ops::layernorm_forward(
            gpu, &mut gout, &mut gmean, &mut grstd, &ginp, &gw, &gb, n, c, 1e-5,
        )
    };
    fwd()?;
    let ms = gpu.time_ms(it, &mut fwd)?;
    table.add(
        "layernorm_forward out",
        &shape,
        &gpu.download(&gout)?,
        &out,
        TOL,
        ms,
    );
    table.add(
        "layernorm_forward rstd",
        &shape,
        &gpu.download(&grstd)?,
        &rstd,
        TOL,
        ms,
    );
    let (mut gdinp, mut gdw, mut gdb): (CudaSlice<f32>, CudaSlice<f32>, CudaSlice<f32>) =
        (gpu.zeros(n * c)?, gpu.zeros(c)?, gpu.zeros(c)?);
    gpu_ops::layernorm_backward(
        gpu, &mut gdinp, &mut gdw, &mut gdb, &gdout, &ginp, &gw, &gmean, &grstd, n, c,
    )?;
    let (got_dinp, got_dw, got_db) = (
        gpu.download(&gdinp)?,
        gpu.download(&gdw)?,
        gpu.download(&gdb)?,
    );
    let ms = gpu.time_ms(it, || {
        gpu_ops::layernorm_backward(
            gpu, &mut gdinp, &mut gdw, &mut gdb, &gdout, &ginp, &gw, &gmean, &grstd, n, c,
        )
    })?;
    table.add("layernorm_backward dinp", &shape, &got_dinp, &dinp, TOL, ms);
    table.add("layernorm_backward dweight", &shape, &got_dw, &dw, TOL, ms);
    table.add("layernorm_backward dbias", &shape, &got_db, &db, TOL, ms);
    Ok(())
}

fn check_elementwise(gpu: &Gpu, table: &mut Table, it: usize, n: usize) -> anyhow::Result<()> {
    let shape = format!("n={n}");
    let x: Vec<f32> = random(n, 1).iter().map(|v| v * 8.0).collect();
    let (g, y) = (random(n, 2), random(n, 3));
    let mut out = vec![0f32; n];
    shoal_kernels::gelu_forward(&mut out, &x);
    let mut dinp = vec![0f32; n];
    shoal_kernels::gelu_backward(&mut dinp, &x, &g);
    let mut sum = vec![0f32; n];
    shoal_kernels::residual_forward(&mut sum, &x, &y);

    let (gx, gg, gy) = (gpu.upload(&x)?, gpu.upload(&g)?, gpu.upload(&y)?);
    let mut gout = gpu.zeros(n)?;
    gpu_ops::gelu_forward(gpu, &mut gout, &gx)?;
    let ms = gpu.time_ms(it, || gpu_ops::gelu_forward(gpu, &mut gout, &gx))?;
    table.add("gelu_forward", &shape, &gpu.download(&gout)?, &out, TOL, ms);
    let mut gdinp = gpu.zeros(n)?;
    gpu_ops::gelu_backward(gpu, &mut gdinp, &gx, &gg)?;
    let got = gpu.download(&gdinp)?;
    let ms = gpu.time_ms(it, || gpu_ops::gelu_backward(gpu, &mut gdinp, &gx, &gg))?;
    table.add("gelu_backward", &shape, &got, &dinp, TOL, ms);
    let mut gsum = gpu.zeros(n)?;
    gpu_ops::residual_forward(gpu, &mut gsum, &gx, &gy)?;
    let ms = gpu.time_ms(it, || gpu_ops::residual_forward(gpu, &mut gsum, &gx, &gy))?;
    table.add(
        "residual_forward",
        &shape,
        &gpu.download(&gsum)?,
        &sum,
        TOL,
        ms,
    );
    shoal_kernels::add_inplace(&mut sum, &y);
    gpu_ops::add_inplace(gpu, &mut gsum, &gy)?;
    let got = gpu.download(&gsum)?;
    let ms = gpu.time_ms(it, || gpu_ops::add_inplace(gpu, &mut gsum, &gy))?;
    table.add("add_inplace", &shape, &got, &sum, TOL, ms);
    Ok(())
}

fn check_crossentropy(
    gpu: &Gpu,
    table: &mut Table,
    it: usize,
    n: usize,
    v: usize,
) -> anyhow::Result<()> {
    let shape = format!("N={n} V={v}");
    let logits: Vec<f32> = random(n * v, 1).iter().map(|x| x * 8.0).collect();
    let targets = tokens(n, v, 2);
    let (mut losses, mut lse) = (vec![0f32; n], vec![0f32; n]);
    shoal_kernels::crossentropy_forward(&mut losses, &mut lse, &logits, &targets, n, v);
    let mut dlogits = logits.clone();
    let dloss = 1.0 / n as f32;
    shoal_kernels::crossentropy_backward_inplace(&mut dlogits, &lse, &targets, dloss, n, v);

    let (mut glogits, gtargets) = (gpu.upload(&logits)?, gpu.upload(&targets)?);
    let (mut glosses, mut glse) = (gpu.zeros(n)?, gpu.zeros(n)?);
    let mut fwd = |l: &CudaSlice<f32>| {
        gpu_ops::crossentropy_forward(gpu, &mut glosses, &mut glse, l, &gtargets, n, v)
    };
    fwd(&glogits)?;
    let ms = gpu.time_ms(it, || fwd(&glogits))?;
    table.add(
        "crossentropy_forward loss",
        &shape,
        &gpu.download(&glosses)?,
        &losses,
        TOL,
        ms,
    );
    table.add(
        "crossentropy_forward lse",
        &shape,
        &gpu.download(&glse)?,
        &lse,
        TOL,
        ms,
    );
    gpu_ops::crossentropy_backward_inplace(gpu, &mut glogits, &glse, &gtargets, dloss, n, v)?;
    let got = gpu.download(&glogits)?;
    let ms = gpu.time_ms(it, || {
        gpu_ops::crossentropy_backward_inplace(gpu, &mut glogits, &glse, &gtargets, dloss, n, v)
    })?;
    table.add("crossentropy_backward", &shape, &got, &dlogits, TOL, ms);
    Ok(())
}

fn check_embedding(
    gpu: &Gpu,
    table: &mut Table,
    it: usize,
    (b, t, c, v): (usize, usize, usize, usize),
) -> anyhow::Result<()> {
    let shape = format!("B={b} T={t} C={c} V={v}");
    let toks = tokens(b * t, v, 5);
    let (wte, wpe, dout) = (random(v * c, 1), random(t * c, 2), random(b * t * c, 3));
    let mut out = vec![0f32; b * t * c];
    shoal_kernels::embedding_forward(&mut out, &toks, &wte, &wpe, b, t, c);
    let (mut dwte, mut dwpe) = (vec![0f32; v * c], vec![0f32; t * c]);
    shoal_kernels::embedding_backward(&mut dwte, &mut dwpe, &dout, &toks, b, t, c);

    let (gtoks, gwte, gwpe, gdout) = (
        gpu.upload(&toks)?,
        gpu.upload(&wte)?,
        gpu.upload(&wpe)?,
        gpu.upload(&dout)?,
    );
    let mut gout = gpu.zeros(b * t * c)?;
    gpu_ops::embedding_forward(gpu, &mut gout, &gtoks, &gwte, &gwpe, b, t, c)?;
    let ms = gpu.time_ms(it, || {
        gpu_ops::embedding_forward(gpu, &mut gout, &gtoks, &gwte, &gwpe, b, t, c)
    })?;
    table.add(
        "embedding_forward",
        &shape,
        &gpu.download(&gout)?,
        &out,
        TOL,
        ms,
    );
    let (mut gdwte, mut gdwpe) = (gpu.zeros(v * c)?, gpu.zeros(t * c)?);
    gpu_ops::embedding_backward(gpu, &mut gdwte, &mut gdwpe, &gdout, &gtoks, b, t, c)?;
    let (got_wte, got_wpe) = (gpu.download(&gdwte)?, gpu.download(&gdwpe)?);
    let ms = gpu.time_ms(it, || {
        gpu_ops::embedding_backward(gpu, &mut gdwte, &mut gdwpe, &gdout, &gtoks, b, t, c)
    })?;
    table.add("embedding_backward dwte", &shape, &got_wte, &dwte, TOL, ms);
    table.add("embedding_backward dwpe", &shape, &got_wpe, &dwpe, TOL, ms);
    Ok(())
}

fn check_matmul(
    gpu: &Gpu,
    table: &mut Table,
    it: usize,
    (n, c, oc): (usize, usize, usize),
    layout: WeightLayout,
    products: Products,
) -> anyhow::Result<()> {
    let shape = format!("N={n} C={c} OC={oc} {layout:?}");
    // bf16 keeps 8 bits of each input: ~2^-9 relative rounding per factor.
    let (suffix, tol) = match products {
        Products::Bf16 => (" [bf16]", TOL_BF16),
        _ => ("", TOL_PRODUCT),
    };
    let (inp, w, bias, dout) = (
        random(n * c, 1),
        random(c * oc, 2),
        random(oc, 3),
        random(n * oc, 4),
    );
    let bias_ref = (layout == WeightLayout::InOut).then_some(&bias[..]);
    let mut out = vec![0f32; n * oc];
    shoal_kernels::matmul_forward(&mut out, &inp, &w, bias_ref, n, c, oc, layout);
    let (mut dinp, mut dw, mut db) = (vec![0f32; n * c], vec![0f32; c * oc], vec![0f32; oc]);
    shoal_kernels::matmul_backward(
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

    let (ginp, gw, gbias, gdout) = (
        gpu.upload(&inp)?,
        gpu.upload(&w)?,
        gpu.upload(&bias)?,
        gpu.upload(&dout)?,
    );
    let gbias_ref = (layout == WeightLayout::InOut).then_some(&gbias);
    gpu.set_products(products)?;
    let mut gout = gpu.zeros(n * oc)?;
    gpu_ops::matmul_forward(gpu, &mut gout, &ginp, &gw, gbias_ref, n, c, oc, layout)?;
    let ms = gpu.time_ms(it, || {
        gpu_ops::matmul_forward(gpu, &mut gout, &ginp, &gw, gbias_ref, n, c, oc, layout)
    })?;
    table.add(
        &format!("matmul_forward{suffix}"),
        &shape,
        &gpu.download(&gout)?,
        &out,
        tol,
        ms,
    );
    let (mut gdinp, mut gdw, mut gdb): (CudaSlice<f32>, CudaSlice<f32>, CudaSlice<f32>) =
        (gpu.zeros(n * c)?, gpu.zeros(c * oc)?, gpu.zeros(oc)?);
    let bwd = |gdinp: &mut CudaSlice<f32>, gdw: &mut CudaSlice<f32>, gdb: &mut CudaSlice<f32>| {
        gpu_ops::matmul_backward(
            gpu,
            Some(gdinp),
            gdw,
            Some(gdb),
            &gdout,
            &ginp,
            &gw,
            n,
            c,
            oc,
            layout,
        )
    };
    bwd(&mut gdinp, &mut gdw, &mut gdb)?;
    let (got_dinp, got_dw, got_db) = (
        gpu.download(&gdinp)?,
        gpu.download(&gdw)?,
        gpu.download(&gdb)?,
    );
    let ms = gpu.time_ms(it, || bwd(&mut gdinp, &mut gdw, &mut gdb))?;
    gpu.set_products(Products::Fp32)?;
    table.add(
        &format!("matmul_backward dinp{suffix}"),
        &shape,
        &got_dinp,
        &dinp,
        tol,
        ms,
    );
    table.add(
        &format!("matmul_backward dweight{suffix}"),
        &shape,
        &got_dw,
        &dw,
        tol,
        ms,
    );
    table.add(
        &format!("matmul_backward dbias{suffix}"),
        &shape,
        &got_db,
        &db,
        tol,
        ms,
    );
    Ok(())
}

/// Random attention inputs and the CPU attention's results on them.
struct Reference {
    qkv: Vec<f32>,
    dout: Vec<f32>,
    out: Vec<f32>,
    lse: Vec<f32>,
    dqkv: Vec<f32>,
}

impl Reference {
    fn new((b, t, c, nh): (usize, usize, usize, usize)) -> Self {
        let (qkv, dout) = (random(b * t * 3 * c, 1), random(b * t * c, 2));
        let (mut out, mut lse) = (vec![0f32; b * t * c], vec![0f32; b * nh * t]);
        shoal_kernels::attention_forward(&mut out, &mut lse, &qkv, b, t, c, nh);
        let mut dqkv = vec![0f32; b * t * 3 * c];
        shoal_kernels::attention_backward(&mut dqkv, &dout, &qkv, &out, &lse, b, t, c, nh);
        Reference {
            qkv,
            dout,
            out,
            lse,
            dqkv,
        }
    }
}

fn check_attention(
    gpu: &Gpu,
    table: &mut Table,
    it: usize,
    (b, t, c, nh): (usize, usize, usize, usize),
) -> anyhow::Result<()> {
    let shape = format!("B={b} T={t} C={c} NH={nh}");
    let Reference {
        qkv,
        dout,
        out,
        lse,
        dqkv,
    } = Reference::new((b, t, c, nh));

    let (gqkv, gdout) = (gpu.upload(&qkv)?, gpu.upload(&dout)?);
    let (mut gout, mut glse) = (gpu.zeros(b * t * c)?, gpu.zeros(b * nh * t)?);
    gpu_ops::attention_forward(gpu, &mut gout, &mut glse, &gqkv, b, t, c, nh)?;
    let ms = gpu.time_ms(it, || {
        gpu_ops::attention_forward(gpu, &mut gout, &mut glse, &gqkv, b, t, c, nh)
    })?;
    table.add(
        "attention_forward out",
        &shape,
        &gpu.download(&gout)?,
        &out,
        TOL_PRODUCT,
        ms,
    );
    table.add(
        "attention_forward lse",
        &shape,
        &gpu.download(&glse)?,
        &lse,
        TOL_PRODUCT,
        ms,
    );
    let mut gdqkv = gpu.zeros(b * t * 3 * c)?;
    gpu_ops::attention_backward(gpu, &mut gdqkv, &gdout, &gqkv, &gout, &glse, b, t, c, nh)?;
    let got = gpu.download(&gdqkv)?;
    let ms = gpu.time_ms(it, || {
        gpu_ops::attention_backward(gpu, &mut gdqkv, &gdout, &gqkv, &gout, &glse, b, t, c, nh)
    })?;
    table.add(
        "attention_backward dqkv",
        &shape,
        &got,
        &dqkv,
        TOL_PRODUCT,
        ms,
    );
    Ok(())
}

/// The cuBLAS attention (`attention_*_gemm`) against the CPU attention. Its
/// backward consumes the probabilities, so the timed repeats after the checked
/// call run on overwritten ones: the same work, other values.
fn check_attention_gemm(
    gpu: &Gpu,
    table: &mut Table,
    it: usize,
    (b, t, c, nh): (usize, usize, usize, usize),
) -> anyhow::Result<()> {
    let shape = format!("B={b} T={t} C={c} NH={nh}");
    let Reference {
        qkv,
        dout,
        out,
        lse,
        dqkv,
    } = Reference::new((b, t, c, nh));

    let dims = (b, t, c, nh);
    let mut scratch = gpu_ops::GemmAttentionScratch::<f32>::new(gpu, b, t, c, nh)?;
    let mut probs = gpu.zeros(gpu_ops::gemm_attention_probs_len(b, t, nh))?;
    let (gqkv, gdout) = (gpu.upload(&qkv)?, gpu.upload(&dout)?);
    let (mut gout, mut glse) = (gpu.zeros(b * t * c)?, gpu.zeros(b * nh * t)?);
    let mut fwd = || {
        let (o, l, p, s) = (&mut gout, &mut glse, &mut probs, &mut scratch);
        gpu_ops::attention_forward_gemm(gpu, o, l, p, &gqkv, s, dims)
    };
    fwd()?;
    let ms = gpu.time_ms(it, &mut fwd)?;
    let got = gpu.download(&gout)?;
    table.add(
        "attention_forward_gemm out",
        &shape,
        &got,
        &out,
        TOL_PRODUCT,
        ms,
    );
    let got = gpu.download(&glse)?;
    table.add(
        "attention_forward_gemm lse",
        &shape,
        &got,
        &lse,
        TOL_PRODUCT,
        ms,
    );
    let mut gdqkv = gpu.zeros(b * t * 3 * c)?;
    let (p, s) = (&mut probs, &mut scratch);
    gpu_ops::attention_backward_gemm(gpu, &mut gdqkv, &gdout, &gqkv, p, s, dims)?;
    let got = gpu.download(&gdqkv)?;
    let ms = gpu.time_ms(it, || {
        gpu_ops::attention_backward_gemm(gpu, &mut gdqkv, &gdout, &gqkv, p, s, dims)
    })?;
    table.add(
        "attention_backward_gemm dqkv",
        &shape,
        &got,
        &dqkv,
        TOL_PRODUCT,
        ms,
    );
    Ok(())
}

fn check_optimizer(gpu: &Gpu, table: &mut Table, it: usize, n: usize) -> anyhow::Result<()> {
    let shape = format!("n={n}");
    let hp = AdamW {
        lr: 6e-4,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let split = n / 3;
    let spans = [
        DecaySpan {
            start: 0,
            end: split,
            decay: true,
        },
        DecaySpan {
            start: split,
            end: n,
            decay: false,
        },
    ];
    let (mut p, g) = (random(n, 1), random(n, 2));
    let (mut m, mut v) = (
        random(n, 3).iter().map(|x| x * 0.01).collect::<Vec<_>>(),
        random(n, 4),
    );
    v.iter_mut().for_each(|x| *x = *x * *x * 1e-4);
    let (mut gp, gg, mut gm, mut gv) = (
        gpu.upload(&p)?,
        gpu.upload(&g)?,
        gpu.upload(&m)?,
        gpu.upload(&v)?,
    );
    shoal_kernels::adamw_update(&mut p, &g, &mut m, &mut v, &hp, 3, &spans);
    gpu_ops::adamw_update(gpu, &mut gp, &gg, &mut gm, &mut gv, &hp, 3, &spans)?;
    let (got_p, got_m, got_v) = (gpu.download(&gp)?, gpu.download(&gm)?, gpu.download(&gv)?);
    let ms = gpu.time_ms(it, || {
        gpu_ops::adamw_update(gpu, &mut gp, &gg, &mut gm, &mut gv, &hp, 3, &spans)
    })?;
    table.add("adamw_update params", &shape, &got_p, &p, TOL, ms);
    table.add("adamw_update m", &shape, &got_m, &m, TOL, ms);
    table.add("adamw_update v", &shape, &got_v, &v, TOL, ms);
    let want = shoal_kernels::sum_of_squares(&g);
    let got = gpu_ops::sum_of_squares(gpu, &gg)?;
    let start = Instant::now();
    for _ in 0..it {
        gpu_ops::sum_of_squares(gpu, &gg)?;
    }
    let ms = start.elapsed().as_secs_f64() * 1e3 / it.max(1) as f64;
    table.add(
        "sum_of_squares (f64, synced)",
        &shape,
        &[got as f32],
        &[want as f32],
        1e-6,
        ms,
    );
    Ok(())
}
