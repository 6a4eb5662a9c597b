//! DoReMi (Xie et al. 2023): domain weights from a reference and a Group DRO proxy model,
//! and the comparison of main runs trained with different domain weights.
//!
//! [`run_doremi`] trains the reference on the baseline mixture (or takes an existing
//! checkpoint), then the proxy of the same configuration with [`GroupDro`], and writes the
//! proxy's averaged domain weights as a weights file the trainer reads (`mixture = FILE`).
//! [`compare_mixtures`] trains one main model per mixture for the same steps and tokens and
//! reads back their validation curves; [`Comparison`] sums them up.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use shoal_data::{MixtureWeights, WeightsFile};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::metrics::{MetricsRecord, read_metrics};
use crate::trainer::{DroStep, GroupDro, TrainObserver, Trainer, load_weights};

/// What a DoReMi run needs.
#[derive(Clone, Debug)]
pub struct DoremiSpec {
    /// The reference's and the proxy's training configuration: model, the baseline mixture
    /// (`mixture`), steps, learning rate. `out_dir` is the root of the run's files.
    pub config: TrainConfig,
    /// An existing reference checkpoint (or run directory) instead of training one.
    pub reference: Option<PathBuf>,
    /// Exponentiated-gradient step size of the domain weights (η; 1 in the paper).
    pub step_size: f64,
    /// Share of uniform mixed into the weights every step (c; 1e-3 in the paper).
    pub smoothing: f64,
}

/// What a DoReMi run found.
#[derive(Clone, Debug, PartialEq)]
pub struct DoremiResult {
    /// Domain names, in mixture order.
    pub domains: Vec<String>,
    /// The baseline weights the reference trained with (and the proxy's batches came from).
    pub baseline: Vec<f64>,
    /// The proxy's weights averaged over its steps: DoReMi's result.
    pub average: Vec<f64>,
    /// The proxy's weights after its last step.
    pub last: Vec<f64>,
    /// The weights file written (`OUT/weights.json`).
    pub weights_file: PathBuf,
    /// The reference checkpoint used.
    pub reference: PathBuf,
}

/// One line of `proxy/doremi.jsonl`.
#[derive(Serialize)]
struct DroLine<'a> {
    step: u64,
    loss: f32,
    weights: BTreeMap<&'a str, f64>,
    excess: BTreeMap<&'a str, f64>,
    proxy_loss: BTreeMap<&'a str, f64>,
    reference_loss: BTreeMap<&'a str, f64>,
}

/// Trains (or loads) the reference, trains the proxy with Group DRO, and writes
/// `OUT/weights.json` with the averaged weights (`reference/` and `proxy/` hold the runs;
/// `proxy/doremi.jsonl` the weights and excess losses of every step).
pub fn run_doremi(spec: &DoremiSpec, observer: &mut dyn TrainObserver) -> Result<DoremiResult> {
    let root = spec.config.out_dir.clone();
    std::fs::create_dir_all(&root).map_err(|e| TrainError::io(&root, e))?;
    let reference = match &spec.reference {
        Some(path) => path.clone(),
        None => {
            let mut config = spec.config.clone();
            config.out_dir = root.join("reference");
            let summary = Trainer::new(config)?.run(observer)?;
            summary
                .checkpoint
                .ok_or_else(|| TrainError::InvalidConfig {
                    field: "max_steps",
                    reason: "the reference run took no step, so there is no reference".into(),
                })?
        }
    };
    let (reference_model, reference_params) = load_weights(&reference)?;

    let mut config = spec.config.clone();
    config.out_dir = root.join("proxy");
    let mut proxy = Trainer::new(config)?;
    let domains: Vec<String> = proxy
        .mixture()
        .domains
        .iter()
        .map(|d| d.name.clone())
        .collect();
    let baseline = proxy.mixture().normalized_weights();
    let c = proxy.config();
    let mut dro = GroupDro::new(
        reference_model,
        reference_params,
        domains.len(),
        c.batch_size,
        c.seq_len,
        spec.step_size,
        spec.smoothing,
    )?;
    let proxy_dir = root.join("proxy");
    std::fs::create_dir_all(&proxy_dir).map_err(|e| TrainError::io(&proxy_dir, e))?;
    let log_path = proxy_dir.join("doremi.jsonl");
    let log = std::fs::File::create(&log_path).map_err(|e| TrainError::io(&log_path, e))?;
    let mut log = std::io::BufWriter::new(log);
    let names: Vec<&str> = domains.iter().map(String::as_str).collect();
    proxy.run_group_dro(&mut dro, observer, &mut |s: &DroStep| {
        let line = dro_line(&names, s);
        serde_json::to_writer(&mut log, &line)
            .map_err(std::io::Error::from)
            .and_then(|()| log.write_all(b"\n"))
            .map_err(|e| TrainError::io(&log_path, e))
    })?;
    log.flush().map_err(|e| TrainError::io(&log_path, e))?;

    let average = dro.average();
    let last = dro.weights().to_vec();
    let weights_file = root.join("weights.json");
    let mut file = WeightsFile::default();
    let by_name = |w: &[f64]| -> serde_json::Value {
        domains
            .iter()
            .zip(w)
            .map(|(n, &x)| (n.clone(), serde_json::Value::from(x)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    file.weights = domains
        .iter()
        .cloned()
        .zip(average.iter().copied())
        .collect();
    let about = [
        ("method", "doremi".into()),
        ("reference", reference.display().to_string().into()),
        ("baseline", spec.config.mixture.to_string().into()),
        ("baseline_weights", by_name(&baseline)),
        ("last_weights", by_name(&last)),
        ("proxy_steps", proxy.step_count().into()),
        ("step_size", spec.step_size.into()),
        ("smoothing", spec.smoothing.into()),
    ];
    file.about = about.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    file.save(&weights_file)?;
    Ok(DoremiResult {
        domains,
        baseline,
        average,
        last,
        weights_file,
        reference,
    })
}

fn dro_line<'a>(names: &[&'a str], s: &DroStep) -> DroLine<'a> {
    let present = |values: &[Option<f64>]| -> BTreeMap<&'a str, f64> {
        names
            .iter()
            .zip(values)
            .filter_map(|(n, v)| v.map(|v| (*n, v)))
            .collect()
    };
    DroLine {
        step: s.stats.step,
        loss: s.stats.loss,
        weights: names
            .iter()
            .copied()
            .zip(s.weights.iter().copied())
            .collect(),
        excess: present(&s.excess),
        proxy_loss: present(&s.proxy_loss),
        reference_loss: present(&s.reference_loss),
    }
}

/// The validation curve of one main run.
#[derive(Clone, Debug, PartialEq)]
pub struct MixtureCurve {
    /// The variant's name (`baseline`, `doremi`, ...).
    pub name: String,
    /// The domain weights it trained with.
    pub mixture: MixtureWeights,
    /// (step, domain → validation loss) of every evaluation, in step order.
    pub evals: Vec<(u64, BTreeMap<String, f64>)>,
}

impl MixtureCurve {
    /// The unweighted mean over domains of an evaluation's losses.
    pub fn average(losses: &BTreeMap<String, f64>) -> f64 {
        losses.values().sum::<f64>() / losses.len().max(1) as f64
    }

    /// The last evaluation.
    pub fn last(&self) -> Option<&(u64, BTreeMap<String, f64>)> {
        self.evals.last()
    }

    /// The first evaluated step whose average loss is at or below `target`.
    pub fn first_step_at_or_below(&self, target: f64) -> Option<u64> {
        self.evals
            .iter()
            .find(|(_, l)| Self::average(l) <= target)
            .map(|(s, _)| *s)
    }
}

/// Trains one main model per `(name, weights)` with `config` (the same model, steps and
/// batch, so the same tokens), each in `OUT/NAME`, and returns their validation curves.
/// `config.eval_every` should be positive, or only the final evaluation is taken.
pub fn compare_mixtures(
    config: &TrainConfig,
    variants: &[(String, MixtureWeights)],
    observer: &mut dyn TrainObserver,
) -> Result<Vec<MixtureCurve>> {
    let mut curves = Vec::with_capacity(variants.len());
    for (name, mixture) in variants {
        let mut c = config.clone();
        c.out_dir = config.out_dir.join(name);
        c.mixture = mixture.clone();
        if c.eval_every == 0 {
            c.eval_every = c.max_steps.max(1);
        }
        let summary = Trainer::new(c)?.run(observer)?;
        curves.push(MixtureCurve {
            name: name.clone(),
            mixture: mixture.clone(),
            evals: read_evals(&summary.metrics)?,
        });
    }
    Ok(curves)
}

/// The evaluations of a metrics file.
fn read_evals(path: &Path) -> Result<Vec<(u64, BTreeMap<String, f64>)>> {
    Ok(read_metrics(path)?
        .into_iter()
        .filter_map(|r| match r {
            MetricsRecord::Eval { step, eval, .. } => Some((step, eval)),
            _ => None,
        })
        .collect())
}

/// The DoReMi evaluation's summary: final losses per variant, and when each other variant
/// reached the first (baseline) variant's final average loss.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// Domain names (sorted).
    pub domains: Vec<String>,
    /// One row per variant.
    pub rows: Vec<ComparisonRow>,
}

/// One variant of a [`Comparison`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ComparisonRow {
    /// Variant name.
    pub name: String,
    /// Its domain weights (as written in the config).
    pub mixture: String,
    /// Final validation loss per domain, in [`Comparison::domains`] order.
    pub final_losses: Vec<f64>,
    /// Their unweighted mean.
    pub final_average: f64,
    /// The worst domain's final loss.
    pub final_worst: f64,
    /// The first evaluated step at which its average loss reached the baseline's final
    /// average (`None`: never).
    pub reaches_baseline_at: Option<u64>,
    /// The step of its final evaluation.
    pub final_step: u64,
}

impl Comparison {
    /// Summarizes curves; the first is the baseline. `None` if a curve has no evaluation.
    pub fn of(curves: &[MixtureCurve]) -> Option<Self> {
        let (_, base) = curves.first()?.last()?;
        let target = MixtureCurve::average(base);
        let domains: Vec<String> = base.keys().cloned().collect();
        let rows = curves
            .iter()
            .map(|c| {
                let (step, last) = c.last()?;
                let losses: Vec<f64> = domains
                    .iter()
                    .map(|d| last.get(d).copied().unwrap_or(f64::NAN))
                    .collect();
                Some(ComparisonRow {
                    name: c.name.clone(),
                    mixture: c.mixture.to_string(),
                    final_average: MixtureCurve::average(last),
                    final_worst: losses.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    final_losses: losses,
                    reaches_baseline_at: c.first_step_at_or_below(target),
                    final_step: *step,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Comparison { domains, rows })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(name: &str, points: &[(u64, [f64; 2])]) -> MixtureCurve {
        MixtureCurve {
            name: name.into(),
            mixture: MixtureWeights::Uniform,
            evals: points
                .iter()
                .map(|(s, l)| {
                    let m = [("a".to_string(), l[0]), ("b".to_string(), l[1])];
                    (*s, m.into_iter().collect())
                })
                .collect(),
        }
    }

    #[test]
    fn comparison_finds_when_the_baseline_is_reached() {
        let base = curve(
            "baseline",
            &[(0, [5.0, 5.0]), (10, [3.0, 2.0]), (20, [2.0, 2.0])],
        );
        let other = curve(
            "doremi",
            &[(0, [5.0, 5.0]), (10, [2.0, 2.0]), (20, [1.5, 2.1])],
        );
        let never = curve("bad", &[(0, [5.0, 5.0]), (20, [3.0, 3.0])]);
        let c = Comparison::of(&[base, other, never]).unwrap();
        assert_eq!(c.domains, vec!["a", "b"]);
        assert_eq!(c.rows[0].reaches_baseline_at, Some(20));
        assert_eq!(c.rows[1].reaches_baseline_at, Some(10));
        assert_eq!(c.rows[2].reaches_baseline_at, None);
        assert_eq!(c.rows[1].final_losses, vec![1.5, 2.1]);
        assert!((c.rows[1].final_average - 1.8).abs() < 1e-12);
        assert_eq!(c.rows[1].final_worst, 2.1);
        assert!(Comparison::of(&[curve("empty", &[])]).is_none());
    }
}
