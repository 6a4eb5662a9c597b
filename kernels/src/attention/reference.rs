//! Slow, obvious f64 implementations that materialize the whole T×T matrix.

/// `(q, k, v)` offsets of head `h` at token `pos` of sequence `bi`.
fn offsets(bi: usize, pos: usize, h: usize, t: usize, c: usize, hs: usize) -> [usize; 3] {
    let base = (bi * t + pos) * 3 * c + h * hs;
    [base, base + c, base + 2 * c]
}

/// Causal softmax probabilities `p[tq][tk]` (zero above the diagonal) and
/// the row log-sum-exp, for head `h` of sequence `bi`.
fn probabilities(
    qkv: &[f64],
    bi: usize,
    h: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> (Vec<Vec<f64>>, Vec<f64>) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f64).sqrt();
    let mut p = vec![vec![0.0; t]; t];
    let mut lse = vec![0.0; t];
    for tq in 0..t {
        let [q, _, _] = offsets(bi, tq, h, t, c, hs);
        let scores: Vec<f64> = (0..=tq)
            .map(|tk| {
                let [_, k, _] = offsets(bi, tk, h, t, c, hs);
                (0..hs).map(|d| qkv[q + d] * qkv[k + d]).sum::<f64>() * scale
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
        lse[tq] = max + sum.ln();
        for (tk, s) in scores.iter().enumerate() {
            p[tq][tk] = (s - lse[tq]).exp();
        }
    }
    (p, lse)
}

/// Reference [`super::attention_forward`].
pub fn attention_forward(
    out: &mut [f64],
    lse: &mut [f64],
    qkv: &[f64],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    let hs = c / nh;
    for bi in 0..b {
        for h in 0..nh {
            let (p, l) = probabilities(qkv, bi, h, t, c, nh);
            lse[(bi * nh + h) * t..(bi * nh + h + 1) * t].copy_from_slice(&l);
            for tq in 0..t {
                for d in 0..hs {
                    out[(bi * t + tq) * c + h * hs + d] = (0..=tq)
                        .map(|tk| p[tq][tk] * qkv[offsets(bi, tk, h, t, c, hs)[2] + d])
                        .sum();
                }
            }
        }
    }
}

/// Reference [`super::attention_backward`] (accumulates); recomputes the
/// probabilities itself, so it takes no `out` or `lse`.
pub fn attention_backward(
    dqkv: &mut [f64],
    dout: &[f64],
    qkv: &[f64],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f64).sqrt();
    for bi in 0..b {
        for h in 0..nh {
            let (p, _) = probabilities(qkv, bi, h, t, c, nh);
            for tq in 0..t {
                let g = &dout[(bi * t + tq) * c + h * hs..][..hs];
                let [q, _, _] = offsets(bi, tq, h, t, c, hs);
                // dP[tk] = dout · v[tk]
                let dp: Vec<f64> = (0..=tq)
                    .map(|tk| {
                        let [_, _, v] = offsets(bi, tk, h, t, c, hs);
                        (0..hs).map(|d| g[d] * qkv[v + d]).sum()
                    })
                    .collect();
                let dot: f64 = (0..=tq).map(|tk| p[tq][tk] * dp[tk]).sum();
                for tk in 0..=tq {
                    let [_, k, v] = offsets(bi, tk, h, t, c, hs);
                    let ds = p[tq][tk] * (dp[tk] - dot) * scale;
                    for d in 0..hs {
                        dqkv[v + d] += p[tq][tk] * g[d];
                        dqkv[q + d] += ds * qkv[k + d];
                        dqkv[k + d] += ds * qkv[q + d];
                    }
                }
            }
        }
    }
}
