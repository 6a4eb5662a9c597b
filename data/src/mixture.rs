//! Mixtures of domains, and which domain and window a global sample index reads.

use rand::Rng;

use crate::dataset::TokenDataset;
use crate::error::DataError;
use crate::rng::{derive_seed, sample_rng};

/// One domain of a mixture: its train and validation tokens and its sampling weight.
#[derive(Debug, Clone)]
pub struct Domain {
    /// Name shown in logs and reports.
    pub name: String,
    /// Tokens sampled for training.
    pub train: TokenDataset,
    /// Held-out tokens (the end of the domain's stream) for validation.
    pub val: TokenDataset,
    /// Unnormalized sampling weight (finite, non-negative).
    pub weight: f64,
    /// The lowest achievable loss in nats per token, when known (synthetic domains).
    pub entropy_floor: Option<f64>,
}

/// A weighted set of domains.
#[derive(Debug, Clone)]
pub struct Mixture {
    /// The domains; a sample's domain index points into this.
    pub domains: Vec<Domain>,
}

impl Mixture {
    /// Sample for a global sample index: the domain is chosen by weight with a hash of (seed,
    /// global_index) (a pure function: any rank can compute any sample), then a window from
    /// that domain's train split. Returns the domain index.
    pub fn sample(
        &self,
        seed: u64,
        global_index: u64,
        t: usize,
        tokens: &mut [u32],
        targets: &mut [u32],
    ) -> Result<usize, DataError> {
        let d = self.domain_of(seed, global_index)?;
        // The window position uses a seed of its own, so it does not correlate with the pick.
        let window_seed = derive_seed(seed, d as u64);
        self.domains[d]
            .train
            .sample(window_seed, global_index, t, tokens, targets)?;
        Ok(d)
    }

    /// The domain [`Mixture::sample`] reads global sample `global_index` from, without
    /// reading it.
    pub fn domain_of(&self, seed: u64, global_index: u64) -> Result<usize, DataError> {
        self.check_weights()?;
        let u: f64 = sample_rng(seed, global_index).random();
        Ok(pick(&self.normalized_weights(), u))
    }

    /// The weights divided by their sum. Negative or non-finite weights count as 0; if no
    /// weight is positive, all domains weigh the same.
    pub fn normalized_weights(&self) -> Vec<f64> {
        let clean: Vec<f64> = self
            .domains
            .iter()
            .map(|d| {
                if d.weight.is_finite() && d.weight > 0.0 {
                    d.weight
                } else {
                    0.0
                }
            })
            .collect();
        let sum: f64 = clean.iter().sum();
        if sum > 0.0 && sum.is_finite() {
            clean.iter().map(|w| w / sum).collect()
        } else {
            vec![1.0 / self.domains.len() as f64; self.domains.len()]
        }
    }

    /// Fails unless there is a domain, every weight is finite and non-negative, and one is positive.
    fn check_weights(&self) -> Result<(), DataError> {
        if self.domains.is_empty() {
            return Err(DataError::InvalidMixture {
                reason: "no domains".to_string(),
            });
        }
        if let Some(d) = self
            .domains
            .iter()
            .find(|d| !d.weight.is_finite() || d.weight < 0.0)
        {
            return Err(DataError::InvalidMixture {
                reason: format!("domain {:?} has weight {}", d.name, d.weight),
            });
        }
        let sum: f64 = self.domains.iter().map(|d| d.weight).sum();
        if !(sum > 0.0 && sum.is_finite()) {
            return Err(DataError::InvalidMixture {
                reason: format!("weights sum to {sum}"),
            });
        }
        Ok(())
    }
}

/// The first index whose cumulative weight exceeds `u` in [0, 1), never a zero-weight one.
fn pick(weights: &[f64], u: f64) -> usize {
    let mut cumulative = 0.0;
    let mut last_positive = 0;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            cumulative += w;
            last_positive = i;
            if u < cumulative {
                return i;
            }
        }
    }
    // Rounding left the sum of the weights a hair below u.
    last_positive
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(name: &str, base: u32, weight: f64) -> Domain {
        let (train, val) = TokenDataset::from_tokens((base..base + 1000).collect()).split(0.1);
        Domain {
            name: name.to_string(),
            train,
            val,
            weight,
            entropy_floor: None,
        }
    }

    fn mixture(weights: &[f64]) -> Mixture {
        Mixture {
            domains: weights
                .iter()
                .enumerate()
                .map(|(i, &w)| domain(&format!("d{i}"), 10_000 * i as u32, w))
                .collect(),
        }
    }

    #[test]
    fn weights_normalize() {
        assert_eq!(mixture(&[1.0, 3.0]).normalized_weights(), vec![0.25, 0.75]);
        assert_eq!(mixture(&[0.0, 0.0]).normalized_weights(), vec![0.5, 0.5]);
        assert_eq!(
            mixture(&[-1.0, f64::NAN, 2.0]).normalized_weights(),
            vec![0.0, 0.0, 1.0]
        );
    }

    #[test]
    fn sample_is_deterministic_and_follows_weights() {
        let m = mixture(&[1.0, 2.0, 0.0, 1.0]);
        let t = 16;
        let mut counts = [0usize; 4];
        for i in 0..8000 {
            let (mut a, mut at) = (vec![0; t], vec![0; t]);
            let (mut b, mut bt) = (vec![0; t], vec![0; t]);
            let d = m.sample(11, i, t, &mut a, &mut at).expect("sample");
            let again = m.sample(11, i, t, &mut b, &mut bt).expect("sample");
            assert_eq!((d, &a, &at), (again, &b, &bt));
            assert_eq!(m.domain_of(11, i).expect("domain"), d);
            // The window comes from the chosen domain's train split.
            assert_eq!(a[0] / 10_000, d as u32);
            assert!(at[t - 1] % 10_000 < 900);
            counts[d] += 1;
        }
        assert_eq!(counts[2], 0);
        let frac = |c: usize| c as f64 / 8000.0;
        assert!((frac(counts[0]) - 0.25).abs() < 0.03, "{counts:?}");
        assert!((frac(counts[1]) - 0.5).abs() < 0.03, "{counts:?}");
        assert!((frac(counts[3]) - 0.25).abs() < 0.03, "{counts:?}");
    }

    #[test]
    fn invalid_mixtures_are_errors() {
        let (mut x, mut y) = (vec![0; 4], vec![0; 4]);
        for m in [
            Mixture { domains: vec![] },
            mixture(&[0.0, 0.0]),
            mixture(&[1.0, -1.0]),
            mixture(&[f64::INFINITY]),
        ] {
            assert!(matches!(
                m.sample(0, 0, 4, &mut x, &mut y),
                Err(DataError::InvalidMixture { .. })
            ));
        }
    }

    #[test]
    fn pick_never_returns_zero_weight() {
        assert_eq!(pick(&[0.5, 0.5, 0.0], 0.999_999_999_999), 1);
        assert_eq!(pick(&[0.0, 1.0], 0.0), 1);
        assert_eq!(pick(&[0.3, 0.3, 0.3], 0.95), 2);
    }
}
