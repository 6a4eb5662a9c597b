//! Token plus position embeddings: `out[b, t, :] = wte[tokens[b, t], :] + wpe[t, :]`.
//!
//! Dimension legend:
//! - B: batch size
//! - T: time (sequence length; `wpe` has at least T rows)
//! - C: channels
//! - V: vocabulary size (rows of `wte`)
//!
//! The backward is deterministic for any thread count: every gradient row is
//! owned by one task, which adds its contributions in (b, t) order.

use rayon::prelude::*;

/// Rows of `out` per forward task.
const ROWS_PER_TASK: usize = 32;

/// `out[b, t, :] = wte[tokens[b, t], :] + wpe[t, :]`; overwrites `out`.
pub fn embedding_forward(
    out: &mut [f32],
    tokens: &[u32],
    wte: &[f32],
    wpe: &[f32],
    b: usize,
    t: usize,
    c: usize,
) {
    assert_eq!(out.len(), b * t * c);
    assert_eq!(tokens.len(), b * t);
    assert!(wpe.len() >= t * c);
    if c == 0 {
        return;
    }
    assert_eq!(wte.len() % c, 0);
    out.par_chunks_mut(c)
        .zip(tokens.par_iter())
        .enumerate()
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(row, (o, &tok))| {
            let tok = tok as usize;
            let pos = row % t;
            let e = &wte[tok * c..(tok + 1) * c];
            let p = &wpe[pos * c..(pos + 1) * c];
            for ((o, &e), &p) in o.iter_mut().zip(e).zip(p) {
                *o = e + p;
            }
        });
}

/// Backward of [`embedding_forward`]; accumulates into `dwte` (`[V, C]`) and
/// the first T rows of `dwpe`.
pub fn embedding_backward(
    dwte: &mut [f32],
    dwpe: &mut [f32],
    dout: &[f32],
    tokens: &[u32],
    b: usize,
    t: usize,
    c: usize,
) {
    assert_eq!(dout.len(), b * t * c);
    assert_eq!(tokens.len(), b * t);
    assert!(dwpe.len() >= t * c);
    if c == 0 || b * t == 0 {
        return;
    }
    assert_eq!(dwte.len() % c, 0);
    let v = dwte.len() / c;

    // dwpe[t] += Σ_b dout[b, t]
    dwpe[..t * c]
        .par_chunks_mut(c)
        .enumerate()
        .for_each(|(pos, dp)| {
            for bi in 0..b {
                let g = &dout[(bi * t + pos) * c..(bi * t + pos + 1) * c];
                for (d, &g) in dp.iter_mut().zip(g) {
                    *d += g;
                }
            }
        });

    // Group positions by token with a counting sort (stable: positions stay in
    // increasing order), then let each dwte row sum its positions.
    let mut start = vec![0usize; v + 1];
    for &tok in tokens {
        assert!(
            (tok as usize) < v,
            "token {tok} out of range for vocabulary {v}"
        );
        start[tok as usize + 1] += 1;
    }
    for i in 0..v {
        start[i + 1] += start[i];
    }
    let mut next = start.clone();
    let mut positions = vec![0usize; tokens.len()];
    for (pos, &tok) in tokens.iter().enumerate() {
        positions[next[tok as usize]] = pos;
        next[tok as usize] += 1;
    }
    dwte.par_chunks_mut(c)
        .enumerate()
        .with_min_len(256)
        .for_each(|(tok, dw)| {
            for &pos in &positions[start[tok]..start[tok + 1]] {
                for (d, &g) in dw.iter_mut().zip(&dout[pos * c..(pos + 1) * c]) {
                    *d += g;
                }
            }
        });
}

/// Slow, obvious f64 implementations that the tests hold the kernels to.
pub mod reference {
    /// Reference [`super::embedding_forward`].
    pub fn embedding_forward(
        out: &mut [f64],
        tokens: &[u32],
        wte: &[f64],
        wpe: &[f64],
        b: usize,
        t: usize,
        c: usize,
    ) {
        for bi in 0..b {
            for ti in 0..t {
                let tok = tokens[bi * t + ti] as usize;
                for i in 0..c {
                    out[(bi * t + ti) * c + i] = wte[tok * c + i] + wpe[ti * c + i];
                }
            }
        }
    }

    /// Reference [`super::embedding_backward`] (accumulates).
    pub fn embedding_backward(
        dwte: &mut [f64],
        dwpe: &mut [f64],
        dout: &[f64],
        tokens: &[u32],
        b: usize,
        t: usize,
        c: usize,
    ) {
        for bi in 0..b {
            for ti in 0..t {
                let tok = tokens[bi * t + ti] as usize;
                for i in 0..c {
                    let g = dout[(bi * t + ti) * c + i];
                    dwte[tok * c + i] += g;
                    dwpe[ti * c + i] += g;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, on_threads, random, random_tokens, to_f32};

    #[test]
    fn matches_reference_and_is_deterministic() {
        for (b, t, c, v, maxt) in [
            (1, 1, 1, 1, 1),
            (2, 3, 5, 4, 7),
            (3, 65, 17, 10, 80),
            (4, 64, 64, 1000, 64),
        ] {
            let tokens = random_tokens(b * t, v, 5);
            let (wte, wpe) = (random(v * c, 1), random(maxt * c, 2));
            let mut out = vec![0f32; b * t * c];
            embedding_forward(&mut out, &tokens, &to_f32(&wte), &to_f32(&wpe), b, t, c);
            let mut want = vec![0.0; b * t * c];
            reference::embedding_forward(&mut want, &tokens, &wte, &wpe, b, t, c);
            assert_close("out", &out, &want, 1e-7, 1e-7);

            let dout = random(b * t * c, 3);
            let (dwte0, dwpe0) = (random(v * c, 4), random(maxt * c, 5));
            let run = |threads: usize| {
                on_threads(threads, || {
                    let (mut dwte, mut dwpe) = (to_f32(&dwte0), to_f32(&dwpe0));
                    embedding_backward(&mut dwte, &mut dwpe, &to_f32(&dout), &tokens, b, t, c);
                    (dwte, dwpe)
                })
            };
            let (dwte, dwpe) = run(1);
            let (mut rdwte, mut rdwpe) = (dwte0.clone(), dwpe0.clone());
            reference::embedding_backward(&mut rdwte, &mut rdwpe, &dout, &tokens, b, t, c);
            assert_close("dwte", &dwte, &rdwte, 1e-5, 1e-6);
            assert_close("dwpe", &dwpe, &rdwpe, 1e-5, 1e-6);
            assert_eq!((dwte, dwpe), run(2));
        }
    }
}
