//! Fused softmax + cross-entropy over the vocabulary. Only the per-row
//! log-sum-exp is saved; the backward recomputes the softmax from the logits
//! and overwrites them with their gradient, so no `[N, V]` probabilities copy
//! ever exists.
//!
//! Dimension legend:
//! - N: rows = B*T (batch times time)
//! - V: vocabulary size
//!
//! Rows are independent, so results never depend on the thread count.

use rayon::prelude::*;

use crate::simd::{LANES, exp, lanes_max, lanes_sum, multiversion};

/// `lse[i] = log Σ_j exp(logits[i, j])` and `losses[i] = lse[i] - logits[i, targets[i]]`.
pub fn crossentropy_forward(
    losses: &mut [f32],
    lse: &mut [f32],
    logits: &[f32],
    targets: &[u32],
    n: usize,
    v: usize,
) {
    assert_eq!(losses.len(), n);
    assert_eq!(lse.len(), n);
    assert_eq!(logits.len(), n * v);
    assert_eq!(targets.len(), n);
    if n == 0 {
        return;
    }
    assert!(v > 0, "cross-entropy over an empty vocabulary");
    losses
        .par_iter_mut()
        .zip(lse.par_iter_mut())
        .zip(logits.par_chunks(v).zip(targets.par_iter()))
        .for_each(|((loss, lse), (row, &target))| {
            let target = target as usize;
            assert!(
                target < v,
                "target {target} out of range for vocabulary {v}"
            );
            *lse = log_sum_exp(row);
            *loss = *lse - row[target];
        });
}

multiversion! {
    fn log_sum_exp(row: &[f32]) -> f32 => log_sum_exp_impl;
}

#[inline(always)]
fn log_sum_exp_impl<const FMA: bool>(row: &[f32]) -> f32 {
    let max = lanes_max(row);
    let mut acc = [0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a += exp::<FMA>(x - max);
        }
    }
    let tail_sum: f32 = tail.iter().map(|&x| exp::<FMA>(x - max)).sum();
    max + (lanes_sum(&acc) + tail_sum).ln()
}

/// Overwrites `logits` with `dlogits = dloss · (softmax(logits) - onehot(targets))`,
/// using the `lse` saved by [`crossentropy_forward`]. `dloss` is the gradient of
/// the total loss with respect to each row's loss (e.g. `1/N` for the mean).
pub fn crossentropy_backward_inplace(
    logits: &mut [f32],
    lse: &[f32],
    targets: &[u32],
    dloss: f32,
    n: usize,
    v: usize,
) {
    assert_eq!(logits.len(), n * v);
    assert_eq!(lse.len(), n);
    assert_eq!(targets.len(), n);
    if n == 0 {
        return;
    }
    assert!(v > 0, "cross-entropy over an empty vocabulary");
    logits
        .par_chunks_mut(v)
        .zip(lse.par_iter().zip(targets.par_iter()))
        .for_each(|(row, (&lse, &target))| {
            let target = target as usize;
            assert!(
                target < v,
                "target {target} out of range for vocabulary {v}"
            );
            softmax_grad_row(row, lse, dloss);
            row[target] -= dloss;
        });
}

multiversion! {
    fn softmax_grad_row(row: &mut [f32], lse: f32, dloss: f32) => softmax_grad_row_impl;
}

#[inline(always)]
fn softmax_grad_row_impl<const FMA: bool>(row: &mut [f32], lse: f32, dloss: f32) {
    for x in row {
        *x = dloss * exp::<FMA>(*x - lse);
    }
}

/// Slow, obvious f64 implementations that the tests hold the kernels to.
pub mod reference {
    /// Reference [`super::crossentropy_forward`].
    pub fn crossentropy_forward(
        losses: &mut [f64],
        lse: &mut [f64],
        logits: &[f64],
        targets: &[u32],
        n: usize,
        v: usize,
    ) {
        for i in 0..n {
            let row = &logits[i * v..(i + 1) * v];
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            lse[i] = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            losses[i] = lse[i] - row[targets[i] as usize];
        }
    }

    /// Reference [`super::crossentropy_backward_inplace`], via explicit probabilities.
    pub fn crossentropy_backward_inplace(
        logits: &mut [f64],
        lse: &[f64],
        targets: &[u32],
        dloss: f64,
        n: usize,
        v: usize,
    ) {
        for i in 0..n {
            for j in 0..v {
                let p = (logits[i * v + j] - lse[i]).exp();
                let onehot = if j == targets[i] as usize { 1.0 } else { 0.0 };
                logits[i * v + j] = dloss * (p - onehot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, finite_difference, random, random_tokens, to_f32};

    #[test]
    fn matches_reference() {
        for (n, v, scale) in [
            (1, 1, 1.0),
            (3, 2, 5.0),
            (5, 17, 10.0),
            (4, 1000, 30.0),
            (2, 50_304, 8.0),
        ] {
            let logits: Vec<f64> = random(n * v, v as u64).iter().map(|x| x * scale).collect();
            let targets = random_tokens(n, v, 9);
            let (mut losses, mut lse) = (vec![0f32; n], vec![0f32; n]);
            let mut l32 = to_f32(&logits);
            crossentropy_forward(&mut losses, &mut lse, &l32, &targets, n, v);
            let (mut rlosses, mut rlse) = (vec![0.0; n], vec![0.0; n]);
            reference::crossentropy_forward(&mut rlosses, &mut rlse, &logits, &targets, n, v);
            assert_close("lse", &lse, &rlse, 2e-5, 2e-6);
            assert_close("losses", &losses, &rlosses, 2e-5, 2e-6);

            let dloss = 1.0 / n as f32;
            crossentropy_backward_inplace(&mut l32, &lse, &targets, dloss, n, v);
            let mut rl = logits.clone();
            reference::crossentropy_backward_inplace(&mut rl, &rlse, &targets, dloss as f64, n, v);
            assert_close("dlogits", &l32, &rl, 1e-6, 1e-4);
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (n, v) = (3, 11);
        let logits: Vec<f64> = random(n * v, 1).iter().map(|x| x * 3.0).collect();
        let targets = random_tokens(n, v, 2);
        let dloss = 0.25;
        let fd = finite_difference(&logits, |x| {
            let (mut losses, mut lse) = (vec![0.0; n], vec![0.0; n]);
            reference::crossentropy_forward(&mut losses, &mut lse, x, &targets, n, v);
            dloss * losses.iter().sum::<f64>()
        });
        let (mut losses, mut lse) = (vec![0f32; n], vec![0f32; n]);
        let mut l32 = to_f32(&logits);
        crossentropy_forward(&mut losses, &mut lse, &l32, &targets, n, v);
        crossentropy_backward_inplace(&mut l32, &lse, &targets, dloss as f32, n, v);
        assert_close("dlogits", &l32, &fd, 1e-6, 1e-5);
    }

    #[test]
    fn extreme_logits_stay_finite() {
        let logits = [1e30f32, -1e30, 0.0, 88.0, -88.0, 0.5];
        let targets = [0u32, 2];
        let (mut losses, mut lse) = ([0f32; 2], [0f32; 2]);
        crossentropy_forward(&mut losses, &mut lse, &logits, &targets, 2, 3);
        assert_eq!(losses[0], 0.0);
        assert!((losses[1] - 87.5).abs() < 1e-3, "{}", losses[1]);
        let mut grad = logits;
        crossentropy_backward_inplace(&mut grad, &lse, &targets, 1.0, 2, 3);
        assert!(grad.iter().all(|g| g.is_finite()));
    }
}
