//! Autoregressive sampling with temperature and top-k.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Activations, Gpt, ModelError};

/// How to sample continuations.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleOptions {
    /// Number of tokens to generate.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens before sampling.
    pub top_k: Option<usize>,
    /// Seed of the sampler's random numbers.
    pub seed: u64,
    /// Most tokens the model sees at once (default and upper bound: `n_positions`). A
    /// model trained on windows shorter than its position table has never seen the
    /// positions beyond them; sample it with the trained window length.
    pub context: Option<usize>,
}

impl Default for SampleOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 200,
            temperature: 0.8,
            top_k: Some(40),
            seed: 0,
            context: None,
        }
    }
}

/// Picks a token id from one row of logits.
fn pick(logits: &[f32], opts: &SampleOptions, rng: &mut ChaCha8Rng) -> u32 {
    let argmax = |xs: &[f32]| {
        xs.iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
                if x > best.1 { (i, x) } else { best }
            })
            .0
    };
    if opts.temperature == 0.0 {
        return argmax(logits) as u32;
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    if let Some(k) = opts.top_k.filter(|&k| k < logits.len()) {
        idx.select_nth_unstable_by(k, |&a, &b| logits[b].total_cmp(&logits[a]));
        idx.truncate(k);
    }
    let max = idx
        .iter()
        .map(|&i| logits[i])
        .fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = idx
        .iter()
        .map(|&i| (((logits[i] - max) / opts.temperature) as f64).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (&i, w) in idx.iter().zip(&weights) {
        if u < *w {
            return i as u32;
        }
        u -= w;
    }
    idx[idx.len() - 1] as u32
}

impl Gpt {
    /// Continues `prompt` by `opts.max_new_tokens` tokens and returns only the new tokens.
    /// The model sees the last `opts.context` (at most `n_positions`) tokens.
    pub fn generate(
        &self,
        params: &[f32],
        prompt: &[u32],
        opts: &SampleOptions,
    ) -> Result<Vec<u32>, ModelError> {
        if !(opts.temperature.is_finite() && opts.temperature >= 0.0) {
            return Err(ModelError::InvalidSampling(format!(
                "temperature must be finite and >= 0, got {}",
                opts.temperature
            )));
        }
        if opts.top_k == Some(0) {
            return Err(ModelError::InvalidSampling(
                "top_k must be at least 1".into(),
            ));
        }
        if prompt.is_empty() {
            return Err(ModelError::InvalidSampling("the prompt is empty".into()));
        }
        if opts.context == Some(0) {
            return Err(ModelError::InvalidSampling(
                "context must be at least 1".into(),
            ));
        }
        let window = opts
            .context
            .map_or(self.config.n_positions, |c| c.min(self.config.n_positions));
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        let mut seq = prompt.to_vec();
        let mut acts: Option<Activations> = None;
        let v = self.config.vocab_size;
        for _ in 0..opts.max_new_tokens {
            let start = seq.len().saturating_sub(window);
            let ctx = &seq[start..];
            if acts.as_ref().is_none_or(|a| a.seq_len() != ctx.len()) {
                acts = Some(Activations::new(&self.config, 1, ctx.len())?);
            }
            let a = acts.as_mut().expect("just built");
            self.forward(params, a, ctx, None)?;
            let last = &a.logits()[(ctx.len() - 1) * v..ctx.len() * v];
            seq.push(pick(last, opts, &mut rng));
        }
        Ok(seq.split_off(prompt.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_top1_agree_and_top_k_restricts() {
        let logits = [0.1, 2.0, -1.0, 1.9];
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let greedy = SampleOptions {
            temperature: 0.0,
            ..Default::default()
        };
        assert_eq!(pick(&logits, &greedy, &mut rng), 1);
        let top1 = SampleOptions {
            temperature: 1.0,
            top_k: Some(1),
            ..Default::default()
        };
        assert_eq!(pick(&logits, &top1, &mut rng), 1);
        let top2 = SampleOptions {
            temperature: 5.0,
            top_k: Some(2),
            ..Default::default()
        };
        for _ in 0..100 {
            let x = pick(&logits, &top2, &mut rng);
            assert!(x == 1 || x == 3);
        }
    }
}
