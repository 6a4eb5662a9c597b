//! Replay: a fraction of a continual run's samples drawn from the old (upstream) data.
//!
//! Whether global sample `index` replays is decided by a hash of (seed, index) of its
//! own, independent of the domain pick of either mixture, so every rank of any world
//! size agrees on every sample, and the share of replayed samples is `fraction` up to
//! sampling error whatever the mixtures' weights. A replayed sample then picks its
//! domain and window from the old mixture under a seed derived from the run's, so its
//! windows do not correlate with the new mixture's.

use rand::Rng;

use crate::error::DataError;
use crate::mixture::Mixture;
use crate::rng::{derive_seed, sample_rng};

/// Label of the replay decision's random stream.
const REPLAY_LABEL: u64 = 0x7265_706c_6179; // "replay"
/// Label of the seed a replayed sample is drawn from the old mixture with.
const OLD_DATA_LABEL: u64 = 0x006f_6c64_6461_7461; // "olddata"

/// The old data a continual run replays, and how much of it.
#[derive(Clone, Debug)]
pub struct Replay {
    /// The old (upstream) mixture.
    pub old: Mixture,
    /// Probability, in [0, 1], that a global sample reads `old` instead of the new data.
    pub fraction: f64,
}

impl Replay {
    /// Whether global sample `index` reads the old data (see the module documentation).
    pub fn replays(&self, seed: u64, index: u64) -> bool {
        self.fraction > 0.0
            && sample_rng(derive_seed(seed, REPLAY_LABEL), index).random::<f64>() < self.fraction
    }

    /// Writes the `[T]` tokens and targets of global sample `index`: from `new`, or when
    /// it replays from the old data. Returns its domain, counting the old mixture's
    /// domains after `new`'s.
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &self,
        new: &Mixture,
        seed: u64,
        index: u64,
        t: usize,
        tokens: &mut [u32],
        targets: &mut [u32],
    ) -> Result<usize, DataError> {
        if self.replays(seed, index) {
            let d =
                self.old
                    .sample(derive_seed(seed, OLD_DATA_LABEL), index, t, tokens, targets)?;
            Ok(new.domains.len() + d)
        } else {
            new.sample(seed, index, t, tokens, targets)
        }
    }

    /// The domain [`Replay::sample`] returns for `index`, without reading the sample.
    pub fn domain_of(&self, new: &Mixture, seed: u64, index: u64) -> Result<usize, DataError> {
        if self.replays(seed, index) {
            let d = self
                .old
                .domain_of(derive_seed(seed, OLD_DATA_LABEL), index)?;
            Ok(new.domains.len() + d)
        } else {
            new.domain_of(seed, index)
        }
    }
}

/// [`Replay::sample`] when there is old data to replay, else `new`'s own sample.
pub fn sample_with_replay(
    new: &Mixture,
    replay: Option<&Replay>,
    seed: u64,
    index: u64,
    t: usize,
    tokens: &mut [u32],
    targets: &mut [u32],
) -> Result<usize, DataError> {
    match replay {
        Some(r) => r.sample(new, seed, index, t, tokens, targets),
        None => new.sample(seed, index, t, tokens, targets),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::TokenDataset;
    use crate::mixture::Domain;

    fn mixture(names: &[&str], base: u32, weights: &[f64]) -> Mixture {
        Mixture {
            domains: names
                .iter()
                .zip(weights)
                .enumerate()
                .map(|(i, (name, &weight))| {
                    let first = base + 10_000 * i as u32;
                    let (train, val) =
                        TokenDataset::from_tokens((first..first + 1000).collect()).split(0.1);
                    Domain {
                        name: name.to_string(),
                        train,
                        val,
                        weight,
                        entropy_floor: None,
                    }
                })
                .collect(),
        }
    }

    #[test]
    fn replays_the_requested_fraction_from_the_old_data() {
        let new = mixture(&["a", "b"], 0, &[1.0, 3.0]);
        let old = mixture(&["x", "y"], 100_000, &[1.0, 1.0]);
        let t = 8;
        for fraction in [0.0, 0.05, 0.25] {
            let r = Replay {
                old: old.clone(),
                fraction,
            };
            let n = 20_000u64;
            let mut counts = [0u64; 4];
            let (mut x, mut y) = (vec![0; t], vec![0; t]);
            for i in 0..n {
                let d = r.sample(&new, 5, i, t, &mut x, &mut y).unwrap();
                assert_eq!(r.domain_of(&new, 5, i).unwrap(), d);
                // The tokens come from the domain it names.
                let base = if d < 2 {
                    10_000 * d
                } else {
                    100_000 + 10_000 * (d - 2)
                };
                assert_eq!(
                    x[0] as usize / 10_000,
                    base / 10_000,
                    "sample {i} domain {d}"
                );
                counts[d] += 1;
            }
            let replayed = (counts[2] + counts[3]) as f64 / n as f64;
            // Four standard errors of a binomial share.
            let tolerance = 4.0 * (fraction * (1.0 - fraction) / n as f64).sqrt() + 1e-12;
            assert!(
                (replayed - fraction).abs() <= tolerance,
                "{fraction}: replayed {replayed} ({counts:?})"
            );
            // The new data keeps its own weights among the samples it supplies.
            let fresh = (counts[0] + counts[1]) as f64;
            assert!((counts[1] as f64 / fresh - 0.75).abs() < 0.02, "{counts:?}");
        }
    }

    #[test]
    fn the_replay_decision_is_independent_of_the_domain_pick() {
        // Among the samples the new mixture would give domain `a`, the replayed share
        // is still the fraction: the two decisions use different streams.
        let new = mixture(&["a", "b"], 0, &[1.0, 1.0]);
        let r = Replay {
            old: mixture(&["x"], 100_000, &[1.0]),
            fraction: 0.5,
        };
        let (mut on_a, mut replayed_on_a) = (0u32, 0u32);
        for i in 0..10_000 {
            if new.domain_of(9, i).unwrap() == 0 {
                on_a += 1;
                replayed_on_a += u32::from(r.replays(9, i));
            }
        }
        let share = f64::from(replayed_on_a) / f64::from(on_a);
        assert!((share - 0.5).abs() < 0.03, "{share}");
        // Deterministic, and nothing replays at fraction 0.
        assert_eq!(r.replays(9, 17), r.replays(9, 17));
        let none = Replay {
            fraction: 0.0,
            ..r.clone()
        };
        assert!((0..1000).all(|i| !none.replays(9, i)));
        let (mut x, mut y) = (vec![0; 4], vec![0; 4]);
        let (mut x2, mut y2) = (vec![0; 4], vec![0; 4]);
        for i in 0..100 {
            let a = sample_with_replay(&new, Some(&none), 9, i, 4, &mut x, &mut y).unwrap();
            let b = sample_with_replay(&new, None, 9, i, 4, &mut x2, &mut y2).unwrap();
            assert_eq!((a, &x, &y), (b, &x2, &y2));
        }
    }
}
