//! Slow, obvious f64 implementations that the tests hold the kernels to.

use super::WeightLayout;

/// `W[i, o]` for either layout.
fn w(weight: &[f64], i: usize, o: usize, c: usize, oc: usize, layout: WeightLayout) -> f64 {
    match layout {
        WeightLayout::InOut => weight[i * oc + o],
        WeightLayout::OutIn => weight[o * c + i],
    }
}

/// Reference [`super::matmul_forward`].
pub fn matmul_forward(
    out: &mut [f64],
    inp: &[f64],
    weight: &[f64],
    bias: Option<&[f64]>,
    n: usize,
    c: usize,
    oc: usize,
    layout: WeightLayout,
) {
    for r in 0..n {
        for o in 0..oc {
            let mut s = bias.map_or(0.0, |b| b[o]);
            for i in 0..c {
                s += inp[r * c + i] * w(weight, i, o, c, oc, layout);
            }
            out[r * oc + o] = s;
        }
    }
}

/// Reference [`super::matmul_backward`] (accumulates).
pub fn matmul_backward(
    mut dinp: Option<&mut [f64]>,
    dweight: &mut [f64],
    mut dbias: Option<&mut [f64]>,
    dout: &[f64],
    inp: &[f64],
    weight: &[f64],
    n: usize,
    c: usize,
    oc: usize,
    layout: WeightLayout,
) {
    for r in 0..n {
        for o in 0..oc {
            let g = dout[r * oc + o];
            if let Some(db) = dbias.as_deref_mut() {
                db[o] += g;
            }
            for i in 0..c {
                if let Some(di) = dinp.as_deref_mut() {
                    di[r * c + i] += g * w(weight, i, o, c, oc, layout);
                }
                let wi = match layout {
                    WeightLayout::InOut => i * oc + o,
                    WeightLayout::OutIn => o * c + i,
                };
                dweight[wi] += g * inp[r * c + i];
            }
        }
    }
}
