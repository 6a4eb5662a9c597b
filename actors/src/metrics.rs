//! Training metrics as JSON lines: one object per step and one per evaluation.
//!
//! Step lines: `{"step","loss","lr","grad_norm","tokens","tokens_per_s","seconds"}`.
//! Eval lines: `{"step","eval":{domain: loss},"floor":{domain: nats}}`; a continual run
//! with old (upstream) data adds `"upstream":[domain, ...]` and the mean losses
//! `"downstream_mean"` (new data) and `"upstream_mean"` (old data).
//! Memory lines (data-parallel runs, once): `{"step","memory":[{"params","grads","optimizer","buffers"}]}`,
//! bytes per local rank.
//! Each line is flushed as it is written, so a crashed run leaves a readable file; a
//! resumed run drops the lines after its checkpoint's step before appending.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::zero::MemoryReport;

/// What one optimizer step did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StepStats {
    /// Steps completed, counting this one (1-based).
    pub step: u64,
    /// Mean training cross-entropy over the step's micro-batches (nats/token).
    pub loss: f32,
    /// Learning rate of this step's update.
    pub lr: f32,
    /// Global gradient L2 norm before clipping.
    pub grad_norm: f32,
    /// Tokens processed by this step.
    pub tokens: u64,
    /// Wall-clock seconds of this step.
    pub seconds: f64,
}

impl StepStats {
    /// Throughput of this step.
    pub fn tokens_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.tokens as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Validation loss of one domain.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DomainEval {
    /// Domain name.
    pub name: String,
    /// Mean validation cross-entropy (nats/token).
    pub loss: f32,
    /// The domain's entropy floor (nats/token), the best loss any model can reach, if known.
    pub floor: Option<f64>,
    /// Whether the domain belongs to the old (upstream) data of a continual run rather
    /// than the data it trains on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub upstream: bool,
}

/// One evaluation over every domain's validation split.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EvalStats {
    /// Steps completed when it ran.
    pub step: u64,
    /// Per-domain results, in mixture order (the new data's, then the old data's).
    pub domains: Vec<DomainEval>,
}

/// The mean of `losses`, if there are any.
fn mean(losses: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = losses.fold((0.0, 0usize), |(s, n), l| (s + l, n + 1));
    (n > 0).then(|| sum / n as f64)
}

impl EvalStats {
    /// Mean validation loss over the domains of the data the run trains on.
    pub fn downstream_mean(&self) -> Option<f64> {
        mean(
            self.domains
                .iter()
                .filter(|d| !d.upstream)
                .map(|d| f64::from(d.loss)),
        )
    }

    /// Mean validation loss over the old (upstream) data's domains, if there are any.
    pub fn upstream_mean(&self) -> Option<f64> {
        mean(
            self.domains
                .iter()
                .filter(|d| d.upstream)
                .map(|d| f64::from(d.loss)),
        )
    }

    /// Whether any domain is upstream.
    pub fn has_upstream(&self) -> bool {
        self.domains.iter().any(|d| d.upstream)
    }
}

/// Mean losses of an eval record's `(downstream, upstream)` domains; `upstream` names
/// the old data's domains.
pub fn split_means(
    eval: &BTreeMap<String, f64>,
    upstream: &[String],
) -> (Option<f64>, Option<f64>) {
    let is_up = |name: &String| upstream.contains(name);
    (
        mean(eval.iter().filter(|(n, _)| !is_up(n)).map(|(_, l)| *l)),
        mean(eval.iter().filter(|(n, _)| is_up(n)).map(|(_, l)| *l)),
    )
}

/// One parsed line of a metrics file.
#[derive(Clone, Debug, PartialEq)]
pub enum MetricsRecord {
    /// A training step.
    Step(StepStats),
    /// An evaluation: step, domain → loss, domain → floor.
    Eval {
        /// Steps completed when it ran.
        step: u64,
        /// Domain → validation loss.
        eval: BTreeMap<String, f64>,
        /// Domain → entropy floor, for domains that have one.
        floor: BTreeMap<String, f64>,
        /// The domains of the old (upstream) data, when the run has any.
        upstream: Vec<String>,
    },
    /// What each rank of a data-parallel run holds, in bytes (written once, after
    /// the first step).
    Memory {
        /// Steps completed when it was measured.
        step: u64,
        /// This process's ranks, in order.
        ranks: Vec<MemoryReport>,
    },
}

impl MetricsRecord {
    /// The step the record belongs to.
    pub fn step(&self) -> u64 {
        match self {
            MetricsRecord::Step(s) => s.step,
            MetricsRecord::Eval { step, .. } | MetricsRecord::Memory { step, .. } => *step,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StepLine {
    step: u64,
    loss: f32,
    lr: f32,
    grad_norm: f32,
    tokens: u64,
    tokens_per_s: f64,
    seconds: f64,
}

#[derive(Serialize, Deserialize)]
struct EvalLine {
    step: u64,
    eval: BTreeMap<String, f64>,
    #[serde(default)]
    floor: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    upstream: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    downstream_mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upstream_mean: Option<f64>,
}

#[derive(Serialize, Deserialize)]
struct MemoryLine {
    step: u64,
    memory: Vec<RankBytes>,
}

/// One rank's bytes as a metrics line holds them.
#[derive(Serialize, Deserialize)]
struct RankBytes {
    params: usize,
    grads: usize,
    optimizer: usize,
    buffers: usize,
}

/// Appends metrics lines to `metrics.jsonl`.
pub struct MetricsWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl MetricsWriter {
    /// Opens `path` for a run that starts after `start_step` completed steps.
    ///
    /// A fresh run (`start_step == 0`) truncates the file; a resumed run keeps the lines
    /// up to `start_step` and drops later ones (written after the checkpoint it resumes).
    pub fn open(path: &Path, start_step: u64) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        }
        let kept = if start_step > 0 && path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
            text.lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                        .is_some_and(|s| s <= start_step)
                })
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        } else {
            String::new()
        };
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .map_err(|e| TrainError::io(path, e))?;
        let mut w = Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        };
        w.write_raw(&kept)?;
        Ok(w)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_raw(&mut self, text: &str) -> Result<()> {
        self.out
            .write_all(text.as_bytes())
            .and_then(|_| self.out.flush())
            .map_err(|e| TrainError::io(&self.path, e))
    }

    /// Writes any record with a `step` field as one line (a file of such records
    /// is cut back at a resumed step like the metrics themselves).
    pub fn write_line(&mut self, value: &impl Serialize) -> Result<()> {
        let line = serde_json::to_string(value).map_err(|e| TrainError::BadMetrics {
            path: self.path.clone(),
            line: 0,
            reason: e.to_string(),
        })?;
        self.write_raw(&format!("{line}\n"))
    }

    /// Writes one step line.
    pub fn log_step(&mut self, s: &StepStats) -> Result<()> {
        self.write_line(&StepLine {
            step: s.step,
            loss: s.loss,
            lr: s.lr,
            grad_norm: s.grad_norm,
            tokens: s.tokens,
            tokens_per_s: s.tokens_per_s(),
            seconds: s.seconds,
        })
    }

    /// Writes what each rank holds after `step` steps.
    pub fn log_memory(&mut self, step: u64, ranks: &[MemoryReport]) -> Result<()> {
        let memory = ranks
            .iter()
            .map(|m| RankBytes {
                params: m.params,
                grads: m.grads,
                optimizer: m.optimizer,
                buffers: m.buffers,
            })
            .collect();
        self.write_line(&MemoryLine { step, memory })
    }

    /// Writes one evaluation line.
    pub fn log_eval(&mut self, e: &EvalStats) -> Result<()> {
        self.write_line(&EvalLine {
            step: e.step,
            eval: e
                .domains
                .iter()
                .map(|d| (d.name.clone(), f64::from(d.loss)))
                .collect(),
            floor: e
                .domains
                .iter()
                .filter_map(|d| d.floor.map(|f| (d.name.clone(), f)))
                .collect(),
            upstream: e
                .domains
                .iter()
                .filter(|d| d.upstream)
                .map(|d| d.name.clone())
                .collect(),
            downstream_mean: e.has_upstream().then(|| e.downstream_mean()).flatten(),
            upstream_mean: e.upstream_mean(),
        })
    }
}

/// Reads a metrics file back; a line that is not a metrics record is an error naming it.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRecord>> {
    let file = File::open(path).map_err(|e| TrainError::io(path, e))?;
    let mut records = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| TrainError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| TrainError::BadMetrics {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let record = if value.get("memory").is_some() {
            let m: MemoryLine = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
            MetricsRecord::Memory {
                step: m.step,
                ranks: m
                    .memory
                    .into_iter()
                    .map(|r| MemoryReport {
                        params: r.params,
                        grads: r.grads,
                        optimizer: r.optimizer,
                        buffers: r.buffers,
                    })
                    .collect(),
            }
        } else if value.get("eval").is_some() {
            let e: EvalLine = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
            MetricsRecord::Eval {
                step: e.step,
                eval: e.eval,
                floor: e.floor,
                upstream: e.upstream,
            }
        } else {
            let s: StepLine = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
            MetricsRecord::Step(StepStats {
                step: s.step,
                loss: s.loss,
                lr: s.lr,
                grad_norm: s.grad_norm,
                tokens: s.tokens,
                seconds: s.seconds,
            })
        };
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(n: u64) -> StepStats {
        StepStats {
            step: n,
            loss: 5.0 / n as f32,
            lr: 1e-3,
            grad_norm: 0.5,
            tokens: 512,
            seconds: 0.25,
        }
    }

    fn eval(n: u64) -> EvalStats {
        EvalStats {
            step: n,
            domains: vec![
                DomainEval {
                    name: "copy".into(),
                    loss: 1.5,
                    floor: Some(0.7),
                    upstream: false,
                },
                DomainEval {
                    name: "text".into(),
                    loss: 2.5,
                    floor: None,
                    upstream: false,
                },
            ],
        }
    }

    #[test]
    fn writes_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m/metrics.jsonl");
        let mut w = MetricsWriter::open(&path, 0).unwrap();
        w.log_step(&step(1)).unwrap();
        w.log_step(&step(2)).unwrap();
        w.log_eval(&eval(2)).unwrap();
        drop(w);
        let text = std::fs::read_to_string(&path).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["tokens_per_s"], 2048.0);
        let r = read_metrics(&path).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[1], MetricsRecord::Step(step(2)));
        match &r[2] {
            MetricsRecord::Eval {
                step,
                eval,
                floor,
                upstream,
            } => {
                assert_eq!(*step, 2);
                assert_eq!(eval["text"], 2.5);
                assert_eq!(floor.len(), 1);
                assert!((floor["copy"] - 0.7).abs() < 1e-12);
                assert!(upstream.is_empty());
            }
            other => panic!("{other:?}"),
        }
        // No upstream data: the line is as before.
        assert!(!text.contains("upstream"), "{text}");
    }

    #[test]
    fn upstream_domains_and_means_are_written_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut e = eval(4);
        e.domains.push(DomainEval {
            name: "old/copy".into(),
            loss: 3.5,
            floor: None,
            upstream: true,
        });
        assert_eq!(e.downstream_mean(), Some(2.0));
        assert_eq!(e.upstream_mean(), Some(3.5));
        let mut w = MetricsWriter::open(&path, 0).unwrap();
        w.log_eval(&e).unwrap();
        drop(w);
        let line: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
        assert_eq!(line["upstream"], serde_json::json!(["old/copy"]));
        assert_eq!(line["downstream_mean"], 2.0);
        assert_eq!(line["upstream_mean"], 3.5);
        match &read_metrics(&path).unwrap()[0] {
            MetricsRecord::Eval { eval, upstream, .. } => {
                assert_eq!(upstream, &vec!["old/copy".to_string()]);
                assert_eq!(split_means(eval, upstream), (Some(2.0), Some(3.5)));
            }
            other => panic!("{other:?}"),
        }
        // EvalStats travels as JSON (the elastic coordinator's copy) with the flag.
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<EvalStats>(&json).unwrap(), e);
    }

    #[test]
    fn resume_drops_lines_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut w = MetricsWriter::open(&path, 0).unwrap();
        for n in 1..=5 {
            w.log_step(&step(n)).unwrap();
        }
        drop(w);
        let mut w = MetricsWriter::open(&path, 3).unwrap();
        w.log_step(&step(4)).unwrap();
        drop(w);
        let steps: Vec<u64> = read_metrics(&path)
            .unwrap()
            .iter()
            .map(|r| r.step())
            .collect();
        assert_eq!(steps, vec![1, 2, 3, 4]);
        // A fresh run starts a new file.
        drop(MetricsWriter::open(&path, 0).unwrap());
        assert!(read_metrics(&path).unwrap().is_empty());
    }

    #[test]
    fn bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        std::fs::write(&path, "{\"step\":1,\"eval\":{}}\nnot json\n").unwrap();
        let e = read_metrics(&path).unwrap_err().to_string();
        assert!(
            e.contains("metrics.jsonl:2") && e.contains("not JSON"),
            "{e}"
        );
    }
}
