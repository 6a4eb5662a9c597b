//! Where a mixture's domain weights come from: all equal, in proportion to each domain's
//! training tokens, or a weights file (as `shoal doremi` writes it).
//!
//! A weights file is JSON with a `weights` object mapping every domain name to a finite,
//! non-negative number (they need not sum to one); other keys are ignored, so the file can
//! also say how the weights were found.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::mixture::Mixture;

/// The largest weights file read (it names a handful of domains).
const MAX_WEIGHTS_FILE: u64 = 1 << 20;

/// How the domains of a mixture are weighted. Written and read as a string: `uniform`,
/// `natural`, or the path of a weights file.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum MixtureWeights {
    /// Every domain weighs the same.
    #[default]
    Uniform,
    /// Each domain weighs its number of training tokens (the corpus as it is).
    Natural,
    /// The `weights` object of this JSON file.
    File(PathBuf),
}

impl MixtureWeights {
    /// The normalized weight of each domain of `mixture`, in its order.
    pub fn resolve(&self, mixture: &Mixture) -> Result<Vec<f64>, DataError> {
        let raw: Vec<f64> = match self {
            MixtureWeights::Uniform => vec![1.0; mixture.domains.len()],
            MixtureWeights::Natural => mixture
                .domains
                .iter()
                .map(|d| d.train.len() as f64)
                .collect(),
            MixtureWeights::File(path) => {
                let file = WeightsFile::load(path)?;
                let names: Vec<&str> = mixture.domains.iter().map(|d| d.name.as_str()).collect();
                if let Some(extra) = file.weights.keys().find(|k| !names.contains(&k.as_str())) {
                    return Err(weights_error(
                        path,
                        format!("names domain {extra:?}, which the data does not have"),
                    ));
                }
                names
                    .iter()
                    .map(|name| {
                        file.weights.get(*name).copied().ok_or_else(|| {
                            weights_error(path, format!("has no weight for domain {name:?}"))
                        })
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        normalize(&raw).ok_or_else(|| DataError::InvalidMixture {
            reason: format!("{self} gives weights {raw:?}: each must be finite and ≥ 0, one > 0"),
        })
    }

    /// Sets the weight of every domain of `mixture` (normalized to sum to one).
    pub fn apply(&self, mixture: &mut Mixture) -> Result<(), DataError> {
        let weights = self.resolve(mixture)?;
        for (domain, w) in mixture.domains.iter_mut().zip(weights) {
            domain.weight = w;
        }
        Ok(())
    }
}

/// `weights` divided by their sum, or `None` unless all are finite, non-negative, one positive.
fn normalize(weights: &[f64]) -> Option<Vec<f64>> {
    if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
        return None;
    }
    let sum: f64 = weights.iter().sum();
    (sum > 0.0 && sum.is_finite()).then(|| weights.iter().map(|w| w / sum).collect())
}

fn weights_error(path: &Path, reason: String) -> DataError {
    DataError::InvalidMixture {
        reason: format!("weights file {}: {reason}", path.display()),
    }
}

impl fmt::Display for MixtureWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MixtureWeights::Uniform => f.write_str("uniform"),
            MixtureWeights::Natural => f.write_str("natural"),
            MixtureWeights::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl From<String> for MixtureWeights {
    fn from(text: String) -> Self {
        match text.as_str() {
            "uniform" => MixtureWeights::Uniform,
            "natural" => MixtureWeights::Natural,
            _ => MixtureWeights::File(PathBuf::from(text)),
        }
    }
}

impl FromStr for MixtureWeights {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(MixtureWeights::from(text.to_string()))
    }
}

impl From<MixtureWeights> for String {
    fn from(weights: MixtureWeights) -> Self {
        weights.to_string()
    }
}

/// A weights file: domain name → weight, plus whatever else the writer recorded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WeightsFile {
    /// Domain name → unnormalized weight.
    pub weights: BTreeMap<String, f64>,
    /// Anything else (how the weights were found); kept when a file is rewritten.
    #[serde(flatten)]
    pub about: BTreeMap<String, serde_json::Value>,
}

impl WeightsFile {
    /// Reads and checks a weights file: at most 1 MiB of JSON whose `weights` are finite and
    /// non-negative with a positive sum.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let size = std::fs::metadata(path)
            .map_err(|e| weights_error(path, e.to_string()))?
            .len();
        if size > MAX_WEIGHTS_FILE {
            return Err(weights_error(
                path,
                format!("is {size} bytes; at most 1 MiB"),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| weights_error(path, e.to_string()))?;
        let file: WeightsFile =
            serde_json::from_str(&text).map_err(|e| weights_error(path, e.to_string()))?;
        let values: Vec<f64> = file.weights.values().copied().collect();
        if normalize(&values).is_none() {
            return Err(weights_error(
                path,
                "weights must be finite and ≥ 0 with a positive sum".into(),
            ));
        }
        Ok(file)
    }

    /// Writes the file as pretty JSON.
    pub fn save(&self, path: &Path) -> Result<(), DataError> {
        // Maps of strings to numbers and JSON values always serialize.
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        std::fs::write(path, text + "\n").map_err(|e| DataError::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::TokenDataset;
    use crate::mixture::Domain;

    fn mixture(sizes: &[(&str, u32)]) -> Mixture {
        Mixture {
            domains: sizes
                .iter()
                .map(|&(name, n)| Domain {
                    name: name.into(),
                    train: TokenDataset::from_tokens((0..n).collect()),
                    val: TokenDataset::from_tokens(vec![0; 8]),
                    weight: 1.0,
                    entropy_floor: None,
                })
                .collect(),
        }
    }

    #[test]
    fn strings_round_trip() {
        for text in ["uniform", "natural", "runs/doremi/weights.json"] {
            let w: MixtureWeights = text.parse().unwrap();
            assert_eq!(w.to_string(), text);
        }
        assert_eq!(
            "x.json".parse::<MixtureWeights>().unwrap(),
            MixtureWeights::File("x.json".into())
        );
    }

    #[test]
    fn uniform_and_natural() {
        let mut m = mixture(&[("a", 100), ("b", 300)]);
        assert_eq!(MixtureWeights::Uniform.resolve(&m).unwrap(), vec![0.5, 0.5]);
        MixtureWeights::Natural.apply(&mut m).unwrap();
        assert_eq!(m.normalized_weights(), vec![0.25, 0.75]);
        assert_eq!(m.domains[1].weight, 0.75);
    }

    #[test]
    fn files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.json");
        let mut file = WeightsFile::default();
        file.weights.insert("a".into(), 3.0);
        file.weights.insert("b".into(), 1.0);
        file.about.insert("method".into(), "doremi".into());
        file.save(&path).unwrap();
        assert_eq!(WeightsFile::load(&path).unwrap(), file);
        let weights = MixtureWeights::File(path.clone());
        let m = mixture(&[("b", 10), ("a", 10)]);
        assert_eq!(weights.resolve(&m).unwrap(), vec![0.25, 0.75]);

        let err = weights.resolve(&mixture(&[("a", 10)])).unwrap_err();
        assert!(err.to_string().contains("\"b\""), "{err}");
        let err = weights
            .resolve(&mixture(&[("a", 10), ("b", 10), ("c", 10)]))
            .unwrap_err();
        assert!(
            err.to_string().contains("no weight for domain \"c\""),
            "{err}"
        );

        for bad in [
            "{\"weights\": {\"a\": -1}}",
            "{\"weights\": {\"a\": 0}}",
            "{\"nothing\": 1}",
            "not json",
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = WeightsFile::load(&path).unwrap_err();
            assert!(err.to_string().contains("w.json"), "{bad}: {err}");
        }
        let missing = MixtureWeights::File(dir.path().join("none.json"));
        let err = missing.resolve(&m).unwrap_err();
        assert!(err.to_string().contains("weights file"), "{err}");
        assert!(err.to_string().contains("none.json"), "{err}");
    }
}
