//! AdamW, elementwise over flat parameter buffers, as `torch.optim.AdamW`
//! (single-tensor path, `amsgrad=False`, `maximize=False`) computes it:
//!
//! ```text
//! p -= lr·wd·p                       (decoupled weight decay, only where `decay`)
//! m += (1-β1)·(g - m)                (torch's lerp; = β1·m + (1-β1)·g)
//! v  = β2·v + (1-β2)·g²
//! p -= (lr / (1-β1^t)) · m / (√v / √(1-β2^t) + eps)
//! ```
//!
//! Scalars are formed in f64 and rounded to f32 once, like PyTorch's Python
//! floats; the per-element math is f32.
//!
//! Dimension legend: flat slices of any length (a ZeRO shard of the parameters).

use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// AdamW hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f32,
    /// Decay rate of the first moment.
    pub beta1: f32,
    /// Decay rate of the second moment.
    pub beta2: f32,
    /// Added to the denominator for numerical stability.
    pub eps: f32,
    /// Decoupled weight decay coefficient.
    pub weight_decay: f32,
}

/// A range of the slices passed to [`adamw_update`] and whether weight decay
/// applies to it (PyTorch convention: decay matrices, not biases or norms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecaySpan {
    /// First element, relative to the slices passed.
    pub start: usize,
    /// One past the last element.
    pub end: usize,
    /// Whether weight decay applies.
    pub decay: bool,
}

/// One AdamW step at 1-based `step` over `params`, with `grads` and the moment
/// buffers `m`, `v` of the same length. `spans` must cover every element
/// exactly once (checked in debug builds); uncovered elements are not updated.
pub fn adamw_update(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    hp: &AdamW,
    step: u64,
    spans: &[DecaySpan],
) {
    let n = params.len();
    assert_eq!(grads.len(), n);
    assert_eq!(m.len(), n);
    assert_eq!(v.len(), n);
    assert!(step >= 1, "AdamW steps are 1-based");
    debug_assert!(
        covers_exactly(spans, n),
        "decay spans must cover 0..{n} exactly once: {spans:?}"
    );

    let lr = hp.lr as f64;
    let step = step.min(i32::MAX as u64) as i32;
    let bias_correction1 = 1.0 - (hp.beta1 as f64).powi(step);
    let bias_correction2 = 1.0 - (hp.beta2 as f64).powi(step);
    let step_size = (lr / bias_correction1) as f32;
    let bc2_sqrt = bias_correction2.sqrt() as f32;
    let beta2 = hp.beta2;
    let one_minus_beta1 = (1.0 - hp.beta1 as f64) as f32;
    let one_minus_beta2 = (1.0 - hp.beta2 as f64) as f32;
    let eps = hp.eps;

    for span in spans {
        let range = span.start..span.end;
        let decay = if span.decay {
            (1.0 - lr * hp.weight_decay as f64) as f32
        } else {
            1.0
        };
        params[range.clone()]
            .par_chunks_mut(CHUNK)
            .zip(grads[range.clone()].par_chunks(CHUNK))
            .zip(
                m[range.clone()]
                    .par_chunks_mut(CHUNK)
                    .zip(v[range].par_chunks_mut(CHUNK)),
            )
            .for_each(|((p, g), (m, v))| {
                for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                    let mt = *m + one_minus_beta1 * (g - *m);
                    let vt = beta2 * *v + one_minus_beta2 * (g * g);
                    let denom = vt.sqrt() / bc2_sqrt + eps;
                    *p = *p * decay - step_size * (mt / denom);
                    *m = mt;
                    *v = vt;
                }
            });
    }
}

/// Whether `spans` are in range and cover `0..n` exactly once.
fn covers_exactly(spans: &[DecaySpan], n: usize) -> bool {
    let mut ranges: Vec<(usize, usize)> = spans.iter().map(|s| (s.start, s.end)).collect();
    ranges.sort_unstable();
    let mut covered = 0;
    for (start, end) in ranges {
        if start != covered || end < start {
            return false;
        }
        covered = end;
    }
    covered == n
}

/// Slow, obvious f64 implementations that the tests hold the kernels to.
pub mod reference {
    use super::AdamW;

    /// Reference [`super::adamw_update`] for one element range, written as in the
    /// PyTorch documentation.
    pub fn adamw_update(
        params: &mut [f64],
        grads: &[f64],
        m: &mut [f64],
        v: &mut [f64],
        hp: &AdamW,
        step: u64,
        decay: bool,
    ) {
        let (lr, b1, b2) = (hp.lr as f64, hp.beta1 as f64, hp.beta2 as f64);
        let wd = if decay { hp.weight_decay as f64 } else { 0.0 };
        let bc1 = 1.0 - b1.powi(step as i32);
        let bc2 = 1.0 - b2.powi(step as i32);
        for (((p, &g), m), v) in params.iter_mut().zip(grads).zip(m).zip(v) {
            *p -= lr * wd * *p;
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            let m_hat = *m / bc1;
            let v_hat_sqrt = v.sqrt() / bc2.sqrt();
            *p -= lr * m_hat / (v_hat_sqrt + hp.eps as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, random, to_f32};

    const HP: AdamW = AdamW {
        lr: 6e-4,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };

    #[test]
    fn matches_reference_over_steps() {
        let n = 3 * CHUNK + 5;
        let split = CHUNK + 7;
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
        let p0 = random(n, 1);
        let (mut p, mut m, mut v) = (to_f32(&p0), vec![0f32; n], vec![0f32; n]);
        let (mut rp, mut rm, mut rv) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
        for step in 1..=5 {
            let g = random(n, 100 + step);
            adamw_update(&mut p, &to_f32(&g), &mut m, &mut v, &HP, step, &spans);
            let (a, b) = rp.split_at_mut(split);
            let (ma, mb) = rm.split_at_mut(split);
            let (va, vb) = rv.split_at_mut(split);
            reference::adamw_update(a, &g[..split], ma, va, &HP, step, true);
            reference::adamw_update(b, &g[split..], mb, vb, &HP, step, false);
            assert_close("params", &p, &rp, 1e-6, 1e-6);
            assert_close("m", &m, &rm, 1e-6, 1e-5);
            assert_close("v", &v, &rv, 1e-7, 1e-5);
        }
    }

    #[test]
    fn span_coverage_check() {
        let s = |start, end| DecaySpan {
            start,
            end,
            decay: false,
        };
        assert!(covers_exactly(&[s(0, 3), s(3, 5)], 5));
        assert!(covers_exactly(&[s(3, 5), s(0, 3)], 5));
        assert!(covers_exactly(&[], 0));
        assert!(!covers_exactly(&[s(0, 3)], 5));
        assert!(!covers_exactly(&[s(0, 3), s(2, 5)], 5));
        assert!(!covers_exactly(&[s(0, 6)], 5));
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "decay spans")]
    fn uncovered_elements_panic_in_debug() {
        let mut p = vec![0f32; 4];
        let (mut m, mut v) = (p.clone(), p.clone());
        adamw_update(
            &mut p,
            &[0.0; 4],
            &mut m,
            &mut v,
            &HP,
            1,
            &[DecaySpan {
                start: 0,
                end: 3,
                decay: true,
            }],
        );
    }
}
