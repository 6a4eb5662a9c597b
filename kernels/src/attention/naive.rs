//! Causal self-attention the naive way, in f32: the whole T×T probability matrix
//! of every head is computed with matrix products and kept for backward, as llm.c
//! and eager PyTorch without a fused kernel do. The baseline the tiled kernels are
//! measured against (`shoal bench recompute`): the same arithmetic on the same
//! matmul kernel, so that the comparison is of the algorithms; it also computes
//! the masked upper triangle, as those do.
//!
//! Layouts as in [`super`]: `qkv` `[B, T, 3C]`, `out` `[B, T, C]`; `att` is
//! `[B, NH, T, T]`, the probabilities (zero above the diagonal). Memory: B·NH·T²
//! floats kept from forward to backward, plus one T×T score gradient per task
//! (one per thread at most) during backward.

use rayon::prelude::*;

use super::{DisjointOut, Shape};
use crate::matmul::{WeightLayout, matmul_backward, matmul_forward};

/// Copies head `h` of part `part` (0 = q, 1 = k, 2 = v) of sequence `bi` into
/// `dst` `[T, hs]`.
fn gather(dst: &mut [f32], qkv: &[f32], s: Shape, bi: usize, h: usize, part: usize) {
    for (pos, row) in dst.chunks_exact_mut(s.hs).enumerate() {
        row.copy_from_slice(&qkv[s.qkv_offset(bi, pos, h, part)..][..s.hs]);
    }
}

/// Forward: `att = softmax(q·kᵀ/√hs + causal mask)` per head, kept, and
/// `out = att·v`. Overwrites both.
pub fn attention_forward(
    out: &mut [f32],
    att: &mut [f32],
    qkv: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    assert_eq!(out.len(), b * t * c);
    assert_eq!(att.len(), b * nh * t * t);
    assert_eq!(qkv.len(), b * t * 3 * c);
    if b * t == 0 {
        return;
    }
    let s = Shape::new(t, c, nh);
    let hs = s.hs;
    let scale = 1.0 / (hs as f32).sqrt();
    let out_ptr = DisjointOut(out.as_mut_ptr());
    att.par_chunks_mut(t * t).enumerate().for_each(|(bh, att)| {
        let (bi, h) = (bh / nh, bh % nh);
        let mut q = vec![0.0f32; t * hs];
        let mut k = vec![0.0f32; t * hs];
        let mut v = vec![0.0f32; t * hs];
        gather(&mut q, qkv, s, bi, h, 0);
        gather(&mut k, qkv, s, bi, h, 1);
        gather(&mut v, qkv, s, bi, h, 2);
        // att[T, T] = q · kᵀ (k as an [OC = T, C = hs] weight).
        matmul_forward(att, &q, &k, None, t, hs, t, WeightLayout::OutIn);
        for (i, row) in att.chunks_exact_mut(t).enumerate() {
            let max = row[..=i]
                .iter()
                .fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
            let mut sum = 0.0f32;
            for x in &mut row[..=i] {
                *x = (*x * scale - max).exp();
                sum += *x;
            }
            let inv = 1.0 / sum;
            row[..=i].iter_mut().for_each(|x| *x *= inv);
            row[i + 1..].fill(0.0);
        }
        // o[T, hs] = att · v (v as a [C = T, OC = hs] weight); q's buffer is free.
        let o = &mut q;
        matmul_forward(o, att, &v, None, t, t, hs, WeightLayout::InOut);
        for (pos, row) in o.chunks_exact(hs).enumerate() {
            // SAFETY: task (bi, h) alone writes the hs channels of head h in the
            // rows of sequence bi; offsets are in bounds by the asserted lengths.
            unsafe { out_ptr.slice((bi * t + pos) * c + h * hs, hs) }.copy_from_slice(row);
        }
    });
}

/// Backward of [`attention_forward`] from the kept `att`; accumulates into `dqkv`.
pub fn attention_backward(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    assert_eq!(dqkv.len(), b * t * 3 * c);
    assert_eq!(qkv.len(), b * t * 3 * c);
    assert_eq!(dout.len(), b * t * c);
    assert_eq!(att.len(), b * nh * t * t);
    if b * t == 0 {
        return;
    }
    let s = Shape::new(t, c, nh);
    let hs = s.hs;
    let scale = 1.0 / (hs as f32).sqrt();
    let dqkv_ptr = DisjointOut(dqkv.as_mut_ptr());
    att.par_chunks(t * t).enumerate().for_each(|(bh, p)| {
        let (bi, h) = (bh / nh, bh % nh);
        let mut q = vec![0.0f32; t * hs];
        let mut k = vec![0.0f32; t * hs];
        let mut v = vec![0.0f32; t * hs];
        let mut g = vec![0.0f32; t * hs];
        gather(&mut q, qkv, s, bi, h, 0);
        gather(&mut k, qkv, s, bi, h, 1);
        gather(&mut v, qkv, s, bi, h, 2);
        for (pos, row) in g.chunks_exact_mut(hs).enumerate() {
            row.copy_from_slice(&dout[(bi * t + pos) * c + h * hs..][..hs]);
        }
        let mut dq = vec![0.0f32; t * hs];
        let mut dk = vec![0.0f32; t * hs];
        let mut dv = vec![0.0f32; t * hs];
        // dP = dout · vᵀ and dv = Pᵀ · dout.
        let mut dp = vec![0.0f32; t * t];
        matmul_backward(
            Some(&mut dp),
            &mut dv,
            None,
            &g,
            p,
            &v,
            t,
            t,
            hs,
            WeightLayout::InOut,
        );
        // dS = P ∘ (dP - rowsum(P ∘ dP)), times the score scale.
        for (dp_row, p_row) in dp.chunks_exact_mut(t).zip(p.chunks_exact(t)) {
            let dot: f32 = dp_row.iter().zip(p_row).map(|(a, b)| a * b).sum();
            for (d, &pp) in dp_row.iter_mut().zip(p_row) {
                *d = pp * (*d - dot) * scale;
            }
        }
        // dq = dS · k and dk = dSᵀ · q.
        matmul_backward(
            Some(&mut dq),
            &mut dk,
            None,
            &dp,
            &q,
            &k,
            t,
            hs,
            t,
            WeightLayout::OutIn,
        );
        for pos in 0..t {
            for (part, grad) in [(0, &dq), (1, &dk), (2, &dv)] {
                // SAFETY: task (bi, h) alone touches head h's channels of the q, k
                // and v parts in the rows of sequence bi; in bounds by the asserts.
                let dst = unsafe { dqkv_ptr.slice(s.qkv_offset(bi, pos, h, part), hs) };
                for (d, &x) in dst.iter_mut().zip(&grad[pos * hs..(pos + 1) * hs]) {
                    *d += x;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::super::reference;
    use crate::testutil::{assert_close, random, to_f32};

    #[test]
    fn naive_matches_the_reference() {
        for (i, &(b, t, c, nh)) in [(1, 1, 2, 1), (2, 7, 12, 3), (1, 70, 16, 2)]
            .iter()
            .enumerate()
        {
            let qkv = random(b * t * 3 * c, 40 + i as u64);
            let dout = random(b * t * c, 50 + i as u64);
            let qkv32 = to_f32(&qkv);
            let (mut out, mut att) = (vec![0f32; b * t * c], vec![0f32; b * nh * t * t]);
            super::attention_forward(&mut out, &mut att, &qkv32, b, t, c, nh);
            let (mut rout, mut rlse) = (vec![0.0; b * t * c], vec![0.0; b * nh * t]);
            reference::attention_forward(&mut rout, &mut rlse, &qkv, b, t, c, nh);
            assert_close("out", &out, &rout, 1e-5, 1e-5);
            let mut dqkv = vec![0f32; b * t * 3 * c];
            super::attention_backward(&mut dqkv, &to_f32(&dout), &qkv32, &att, b, t, c, nh);
            let mut rdqkv = vec![0.0; b * t * 3 * c];
            reference::attention_backward(&mut rdqkv, &dout, &qkv, b, t, c, nh);
            assert_close("dqkv", &dqkv, &rdqkv, 2e-5, 1e-4);
        }
    }
}
