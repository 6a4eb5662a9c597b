//! Causal multi-head self-attention, FlashAttention-2 style: the scores are
//! computed in `BLOCK`×`BLOCK` tiles with an online softmax, so the T×T score
//! matrix never exists whole; the forward saves each row's log-sum-exp and the
//! backward recomputes the probabilities from it.
//!
//! Dimension legend:
//! - B: batch size
//! - T: time (sequence length)
//! - C: channels, C = NH * hs
//! - NH: heads
//! - hs: head size
//!
//! Layouts: `qkv` is `[B, T, 3C]` holding q | k | v along the last dimension
//! (head h uses channels `h*hs..(h+1)*hs` of each); `out` is `[B, T, C]` with the
//! heads concatenated; `lse` is `[B, NH, T]`. Scores are scaled by `1/√hs`.
//!
//! Parallelism: the forward runs one task per (b, h, query block), the backward
//! one per (b, h) with the FA2 loop order inside (key blocks outer, query
//! blocks inner), so no two tasks touch the same output element and every sum
//! runs in a fixed order: results do not depend on the thread count.
//!
//! Tiles are kept *transposed*, keys along rows and queries along columns
//! (`Sᵀ = K·Qᵀ`), so that the softmax statistics of a query are a column and
//! every row operation is a vector operation across queries, and so that each
//! product's operands are either row-major or column-major views of contiguous
//! buffers: K and V blocks are plain row copies, Q and dout are transposed once
//! per task. (Reading K and V in place is slower: rows of `qkv` are 12·C bytes
//! apart, which maps a tile's rows onto a few L1 cache sets.) The products run
//! on a small register-blocked kernel, `tile::tile_matmul_impl`.

mod tile;

pub mod naive;
pub mod reference;
#[cfg(test)]
mod tests;

use rayon::prelude::*;
use tile::*;

use crate::simd::{exp, fmadd, lanes_dot, multiversion};

/// Query columns and key rows per tile.
const BLOCK: usize = 64;
/// Columns of the tile-kernel's register block (two AVX2 registers).
const NR: usize = 16;
/// Rows of the tile-kernel's register block (12 accumulator registers).
const MR: usize = 6;

/// Head size rounded up to a multiple of [`NR`]: the row stride of the
/// row-major per-head buffers, which serve as the right operand of products.
fn padded(hs: usize) -> usize {
    hs.next_multiple_of(NR)
}

/// A pointer to an output buffer that tasks share because each one writes a
/// disjoint set of elements.
#[derive(Clone, Copy)]
struct DisjointOut(*mut f32);

// SAFETY: only used to write disjoint elements from different tasks (see the
// call sites); the buffer outlives the parallel loop that uses it.
unsafe impl Send for DisjointOut {}
// SAFETY: as above.
unsafe impl Sync for DisjointOut {}

impl DisjointOut {
    /// The `len` elements at `offset`.
    ///
    /// # Safety
    /// `offset + len` must be in bounds, and no other live reference may
    /// overlap the returned slice.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, offset: usize, len: usize) -> &mut [f32] {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(offset), len) }
    }
}

/// The dimensions a task needs: T, C and the head size hs = C / NH.
#[derive(Clone, Copy)]
struct Shape {
    t: usize,
    c: usize,
    hs: usize,
}

impl Shape {
    /// The shape of `nh` heads over `c` channels; panics unless C is a positive multiple of NH.
    fn new(t: usize, c: usize, nh: usize) -> Self {
        assert!(
            nh > 0 && c > 0 && c.is_multiple_of(nh),
            "C = {c} must be a positive multiple of NH = {nh}"
        );
        Self { t, c, hs: c / nh }
    }

    /// Offset in `qkv` of token `pos` of sequence `bi`, head `h`, part `part`
    /// (0 = q, 1 = k, 2 = v).
    fn qkv_offset(self, bi: usize, pos: usize, h: usize, part: usize) -> usize {
        (bi * self.t + pos) * 3 * self.c + part * self.c + h * self.hs
    }
}

/// Per-task buffers of the forward pass.
struct ForwardScratch {
    /// Query block transposed and pre-scaled by `1/√hs`, `[hs, BLOCK]`; columns
    /// past the last query are zero.
    qt: Vec<f32>,
    /// Key and value blocks, `[BLOCK, hp]`.
    k: Vec<f32>,
    v: Vec<f32>,
    /// Scores, then probabilities, transposed: `[BLOCK keys, BLOCK queries]`.
    st: Vec<f32>,
    /// Unnormalized output transposed, `[hs, BLOCK]`.
    ot: Vec<f32>,
    /// Running column maxima, their update, and the rescaling factors.
    m: Vec<f32>,
    m_new: Vec<f32>,
    alpha: Vec<f32>,
    /// Running column sums of `exp(s - m)`; the log-sum-exp at the end.
    l: Vec<f32>,
}

impl ForwardScratch {
    fn new(hs: usize) -> Self {
        let column = vec![0.0; BLOCK];
        ForwardScratch {
            qt: vec![0.0; hs * BLOCK],
            k: vec![0.0; BLOCK * padded(hs)],
            v: vec![0.0; BLOCK * padded(hs)],
            st: vec![0.0; BLOCK * BLOCK],
            ot: vec![0.0; hs * BLOCK],
            m: column.clone(),
            m_new: column.clone(),
            alpha: column.clone(),
            l: column,
        }
    }
}

/// Causal self-attention: `out = softmax(q·kᵀ/√hs + causal mask)·v` per head,
/// saving the row log-sum-exp of the scaled scores in `lse`. Overwrites both.
pub fn attention_forward(
    out: &mut [f32],
    lse: &mut [f32],
    qkv: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    assert_eq!(out.len(), b * t * c);
    assert_eq!(lse.len(), b * nh * t);
    assert_eq!(qkv.len(), b * t * 3 * c);
    if b * t == 0 {
        return;
    }
    let shape = Shape::new(t, c, nh);
    let nq = t.div_ceil(BLOCK);
    let out_ptr = DisjointOut(out.as_mut_ptr());
    let lse_ptr = DisjointOut(lse.as_mut_ptr());
    (0..b * nh * nq).into_par_iter().for_each_init(
        || ForwardScratch::new(shape.hs),
        |scratch, task| {
            // Heavier (later) query blocks first, for better load balance.
            let (bh, qi) = (task / nq, nq - 1 - task % nq);
            let (bi, h) = (bh / nh, bh % nh);
            forward_block(scratch, qkv, shape, bi, h, qi);
            let hs = shape.hs;
            let q0 = qi * BLOCK;
            let qn = BLOCK.min(t - q0);
            // SAFETY: the task (bi, h, qi) alone writes lse[bi, h, q0..q0+qn]
            // and the hs channels of head h at rows q0..q0+qn of sequence bi of
            // `out`; all offsets are in bounds by the asserted lengths.
            unsafe { lse_ptr.slice((bi * nh + h) * t + q0, qn) }.copy_from_slice(&scratch.l[..qn]);
            for r in 0..qn {
                // SAFETY: as above.
                let o = unsafe { out_ptr.slice((bi * t + q0 + r) * c + h * hs, hs) };
                for (d, o) in o.iter_mut().enumerate() {
                    *o = scratch.ot[d * BLOCK + r];
                }
            }
        },
    );
}

multiversion! {
    /// Computes query block `qi` of head `h` of sequence `bi` into `s.ot`
    /// (normalized) and `s.l` (log-sum-exp).
    fn forward_block(s: &mut ForwardScratch, qkv: &[f32], shape: Shape, bi: usize, h: usize, qi: usize) => forward_block_impl;
}

#[inline(always)]
fn forward_block_impl<const FMA: bool>(
    s: &mut ForwardScratch,
    qkv: &[f32],
    shape: Shape,
    bi: usize,
    h: usize,
    qi: usize,
) {
    let Shape { t, hs, .. } = shape;
    let hp = padded(hs);
    let scale = 1.0 / (hs as f32).sqrt();
    let q0 = qi * BLOCK;
    let qn = BLOCK.min(t - q0);
    if qn < BLOCK {
        s.qt.fill(0.0);
    }
    for r in 0..qn {
        let q = &qkv[shape.qkv_offset(bi, q0 + r, h, 0)..][..hs];
        for (d, &x) in q.iter().enumerate() {
            s.qt[d * BLOCK + r] = x * scale;
        }
    }
    s.ot.fill(0.0);
    s.m.fill(f32::NEG_INFINITY);
    s.l.fill(0.0);
    for kj in 0..=qi {
        let k0 = kj * BLOCK;
        let kn = BLOCK.min(t - k0);
        let diagonal = kj == qi;
        copy_rows(&mut s.k, qkv, shape, bi, k0, kn, h, 1);
        copy_rows(&mut s.v, qkv, shape, bi, k0, kn, h, 2);
        // Sᵀ[kn, BLOCK] = K · Qᵀ
        let st = &mut s.st[..kn * BLOCK];
        st.fill(0.0);
        tile_matmul_impl::<FMA>(st, BLOCK, &s.k, hp, 1, &s.qt, BLOCK, kn, BLOCK, hs);
        if diagonal {
            // Causal mask: key j (= query j on the diagonal) is hidden from queries < j.
            for (j, row) in st.chunks_exact_mut(BLOCK).enumerate() {
                row[..j].fill(f32::NEG_INFINITY);
            }
        }
        s.m_new.copy_from_slice(&s.m);
        for row in st.chunks_exact(BLOCK) {
            for (m, &x) in s.m_new.iter_mut().zip(row) {
                *m = if x > *m { x } else { *m };
            }
        }
        // alpha = exp(m - m_new); ~1e-38 instead of 0 on the first tile, where
        // it multiplies zeros.
        for ((a, &m), &m_new) in s.alpha.iter_mut().zip(&s.m).zip(&s.m_new) {
            *a = exp::<FMA>(m - m_new);
        }
        for (j, row) in st.chunks_exact_mut(BLOCK).enumerate() {
            for (x, &m) in row.iter_mut().zip(&s.m_new) {
                *x = exp::<FMA>(*x - m);
            }
            if diagonal {
                row[..j].fill(0.0);
            }
        }
        for (l, &a) in s.l.iter_mut().zip(&s.alpha) {
            *l *= a;
        }
        for row in st.chunks_exact(BLOCK) {
            for (l, &p) in s.l.iter_mut().zip(row) {
                *l += p;
            }
        }
        for row in s.ot.chunks_exact_mut(BLOCK) {
            for (o, &a) in row.iter_mut().zip(&s.alpha) {
                *o *= a;
            }
        }
        // Oᵀ[hs, BLOCK] += Vᵀ · P (Vᵀ as a column-major view of V).
        tile_matmul_impl::<FMA>(&mut s.ot, BLOCK, &s.v, 1, hp, st, BLOCK, hs, BLOCK, kn);
        std::mem::swap(&mut s.m, &mut s.m_new);
    }
    for (inv, &l) in s.alpha.iter_mut().zip(&s.l) {
        *inv = 1.0 / l;
    }
    for row in s.ot.chunks_exact_mut(BLOCK) {
        for (o, &inv) in row.iter_mut().zip(&s.alpha) {
            *o *= inv;
        }
    }
    for (l, &m) in s.l.iter_mut().zip(&s.m) {
        *l = m + l.ln();
    }
}

/// Per-task buffers of the backward pass (one (b, h) at a time). `tp` is T
/// rounded up to a multiple of `BLOCK`; `hp` is `padded(hs)`. "Blocked
/// transposed" buffers hold, for each query block, its `[hs, BLOCK]` transpose
/// (see [`blocked`]), so that every tile operand is contiguous.
struct BackwardScratch {
    /// Queries pre-scaled by `1/√hs`, row-major `[tp, hp]` and blocked transposed.
    q: Vec<f32>,
    qt: Vec<f32>,
    /// Output gradients, row-major `[tp, hp]` and blocked transposed.
    dout: Vec<f32>,
    doutt: Vec<f32>,
    /// Saved log-sum-exp and `D = rowsum(dout ∘ out)`, `[tp]` (zero past T).
    lse: Vec<f32>,
    d: Vec<f32>,
    /// Gradient of the scaled queries, blocked transposed.
    dqt: Vec<f32>,
    /// Gradients of keys and values, `[tp, hp]`.
    dk: Vec<f32>,
    dv: Vec<f32>,
    /// Key and value blocks, `[BLOCK, hp]`.
    k: Vec<f32>,
    v: Vec<f32>,
    /// Probabilities and score gradients of one tile, transposed, `[BLOCK, BLOCK]`.
    pt: Vec<f32>,
    dst: Vec<f32>,
}

impl BackwardScratch {
    fn new(t: usize, hs: usize) -> Self {
        let (tp, hp) = (t.next_multiple_of(BLOCK), padded(hs));
        BackwardScratch {
            q: vec![0.0; tp * hp],
            qt: vec![0.0; hs * tp],
            dout: vec![0.0; tp * hp],
            doutt: vec![0.0; hs * tp],
            lse: vec![0.0; tp],
            d: vec![0.0; tp],
            dqt: vec![0.0; hs * tp],
            dk: vec![0.0; tp * hp],
            dv: vec![0.0; tp * hp],
            k: vec![0.0; BLOCK * hp],
            v: vec![0.0; BLOCK * hp],
            pt: vec![0.0; BLOCK * BLOCK],
            dst: vec![0.0; BLOCK * BLOCK],
        }
    }
}

/// Backward of [`attention_forward`]: recomputes the probabilities from `qkv`
/// and `lse`, uses `D = rowsum(dout ∘ out)`, and accumulates into `dqkv`.
pub fn attention_backward(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    assert_eq!(dqkv.len(), b * t * 3 * c);
    assert_eq!(qkv.len(), b * t * 3 * c);
    assert_eq!(dout.len(), b * t * c);
    assert_eq!(out.len(), b * t * c);
    assert_eq!(lse.len(), b * nh * t);
    if b * t == 0 {
        return;
    }
    let shape = Shape::new(t, c, nh);
    let dqkv_ptr = DisjointOut(dqkv.as_mut_ptr());
    (0..b * nh).into_par_iter().for_each_init(
        || BackwardScratch::new(t, shape.hs),
        |s, bh| {
            let (bi, h) = (bh / nh, bh % nh);
            backward_head(s, qkv, dout, out, &lse[bh * t..(bh + 1) * t], shape, bi, h);
            let (hs, hp) = (shape.hs, padded(shape.hs));
            let scale = 1.0 / (hs as f32).sqrt();
            for pos in 0..t {
                // SAFETY: the task (bi, h) alone touches the hs channels of head
                // h in the q, k and v parts of the rows of sequence bi; offsets
                // are in bounds by the asserted lengths.
                let dq = unsafe { dqkv_ptr.slice(shape.qkv_offset(bi, pos, h, 0), hs) };
                for (d, g) in dq.iter_mut().enumerate() {
                    *g += s.dqt[blocked(pos, d, hs)] * scale;
                }
                for (part, grad) in [(1, &s.dk), (2, &s.dv)] {
                    // SAFETY: as above.
                    let dst = unsafe { dqkv_ptr.slice(shape.qkv_offset(bi, pos, h, part), hs) };
                    for (d, &g) in dst.iter_mut().zip(&grad[pos * hp..pos * hp + hs]) {
                        *d += g;
                    }
                }
            }
        },
    );
}

multiversion! {
    /// Computes the gradients of head `h` of sequence `bi` into `s.dqt` (to be
    /// scaled by `1/√hs`), `s.dk` and `s.dv`.
    fn backward_head(s: &mut BackwardScratch, qkv: &[f32], dout: &[f32], out: &[f32], lse: &[f32], shape: Shape, bi: usize, h: usize) => backward_head_impl;
}

#[inline(always)]
fn backward_head_impl<const FMA: bool>(
    s: &mut BackwardScratch,
    qkv: &[f32],
    dout: &[f32],
    out: &[f32],
    lse: &[f32],
    shape: Shape,
    bi: usize,
    h: usize,
) {
    let Shape { t, c, hs } = shape;
    let (hp, tp) = (padded(hs), t.next_multiple_of(BLOCK));
    let tile = hs * BLOCK;
    let scale = 1.0 / (hs as f32).sqrt();
    // Columns and rows past T stay zero from allocation: no copy writes them.
    for pos in 0..t {
        let q = &qkv[shape.qkv_offset(bi, pos, h, 0)..][..hs];
        let g = &dout[(bi * t + pos) * c + h * hs..][..hs];
        let o = &out[(bi * t + pos) * c + h * hs..][..hs];
        for (d, (&x, &y)) in q.iter().zip(g).enumerate() {
            s.q[pos * hp + d] = x * scale;
            s.qt[blocked(pos, d, hs)] = x * scale;
            s.dout[pos * hp + d] = y;
            s.doutt[blocked(pos, d, hs)] = y;
        }
        s.d[pos] = lanes_dot::<FMA>(g, o);
    }
    s.lse[..t].copy_from_slice(lse);
    s.dqt.fill(0.0);
    s.dk.fill(0.0);
    s.dv.fill(0.0);
    let nblocks = tp / BLOCK;
    for kj in 0..nblocks {
        let k0 = kj * BLOCK;
        let kn = BLOCK.min(t - k0);
        copy_rows(&mut s.k, qkv, shape, bi, k0, kn, h, 1);
        copy_rows(&mut s.v, qkv, shape, bi, k0, kn, h, 2);
        for qi in kj..nblocks {
            let q0 = qi * BLOCK;
            let qn = BLOCK.min(t - q0);
            let diagonal = kj == qi;
            // Pᵀ = exp(K·Qᵀ - lse) and dPᵀ = V·doutᵀ, [kn, BLOCK] each.
            let pt = &mut s.pt[..kn * BLOCK];
            let dst = &mut s.dst[..kn * BLOCK];
            pt.fill(0.0);
            dst.fill(0.0);
            tile_matmul_impl::<FMA>(
                pt,
                BLOCK,
                &s.k,
                hp,
                1,
                &s.qt[qi * tile..],
                BLOCK,
                kn,
                BLOCK,
                hs,
            );
            tile_matmul_impl::<FMA>(
                dst,
                BLOCK,
                &s.v,
                hp,
                1,
                &s.doutt[qi * tile..],
                BLOCK,
                kn,
                BLOCK,
                hs,
            );
            let (lse, d) = (&s.lse[q0..q0 + BLOCK], &s.d[q0..q0 + BLOCK]);
            for (j, (p_row, ds_row)) in pt
                .chunks_exact_mut(BLOCK)
                .zip(dst.chunks_exact_mut(BLOCK))
                .enumerate()
            {
                for (((p, ds), &lse), &d) in p_row.iter_mut().zip(ds_row.iter_mut()).zip(lse).zip(d)
                {
                    *p = exp::<FMA>(*p - lse);
                    // dSᵀ = Pᵀ ∘ (dPᵀ - D)
                    *ds = *p * (*ds - d);
                }
                if diagonal {
                    // Causal mask (these entries may have overflowed: overwrite).
                    p_row[..j].fill(0.0);
                    ds_row[..j].fill(0.0);
                }
            }
            // dV += Pᵀ·dout and dK += dSᵀ·(scaled q), over the qn valid queries.
            tile_matmul_impl::<FMA>(
                &mut s.dv[k0 * hp..],
                hp,
                pt,
                BLOCK,
                1,
                &s.dout[q0 * hp..],
                hp,
                kn,
                hp,
                qn,
            );
            tile_matmul_impl::<FMA>(
                &mut s.dk[k0 * hp..],
                hp,
                dst,
                BLOCK,
                1,
                &s.q[q0 * hp..],
                hp,
                kn,
                hp,
                qn,
            );
            // dQᵀ += Kᵀ·dSᵀ (Kᵀ as a column-major view of K).
            tile_matmul_impl::<FMA>(
                &mut s.dqt[qi * tile..],
                BLOCK,
                &s.k,
                1,
                hp,
                dst,
                BLOCK,
                hs,
                BLOCK,
                kn,
            );
        }
    }
}
