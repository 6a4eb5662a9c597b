//! Continual pretraining: starting a run from an earlier one's weights (and optionally
//! its AdamW moments), replaying a fraction of the old data, and recording the runs a
//! model went through.
//!
//! ```toml
//! init = "runs/pretrain"          # a shoal checkpoint (or run directory), or a HF GPT-2 directory
//! reset_moments = false           # keep the checkpoint's AdamW moments (zeros: true, the default)
//!
//! [[schedule.phases]]             # re-warm to 1e-3 over 1% of the run, cosine to 1e-4
//! tokens = 2_048_000
//! warmup_tokens = 20_480
//! max_lr = 1e-3
//! min_lr = 1e-4
//!
//! [replay]                        # the old (upstream) data
//! fraction = 0.05                 # 5% of the samples; 0: evaluate on it only
//! mixture = "uniform"
//! [replay.data]
//! source = "files"
//! domains = { en_drama = ["../shared/data/corpus/en_drama.jsonl"] }
//! ```
//!
//! The upstream domains are evaluated beside the new ones (named `old/…` when a name
//! clashes); a checkpoint records the run's [`SchedulePosition`] and its lineage: the
//! earlier runs it continues, each with its schedule and where it stopped in it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal_data::{MixtureWeights, Replay};
use shoal_models::GptConfig;

use crate::checkpoint::{CheckpointMeta, META_FILE, load_checkpoint};
use crate::config::{DataSpec, TrainConfig};
use crate::error::{Result, TrainError};
use crate::schedule::{Schedule, SchedulePosition};
use crate::trainer::{LoadedData, load_data};

/// The prefix given to upstream domains whose names clash with the new data's.
pub const UPSTREAM_PREFIX: &str = "old/";

/// The old (upstream) data of a continual run: evaluated beside the new data, and
/// replayed into training with probability `fraction` per sample.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReplaySpec {
    /// Share of the training samples drawn from this data, in [0, 1); 0 evaluates it
    /// without training on it.
    #[serde(default)]
    pub fraction: f64,
    /// Weights of its domains (`uniform`, `natural` or a weights file).
    #[serde(default)]
    pub mixture: MixtureWeights,
    /// The data (`.jsonl`/`.txt` files without a tokenizer of their own are read with
    /// the run's).
    pub data: DataSpec,
}

/// One earlier run in a model's lineage, as the next run found it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RunRecord {
    /// The run's output directory, or the directory imported weights came from.
    pub run: String,
    /// The checkpoint (or Hugging Face directory) the next run started from.
    pub checkpoint: PathBuf,
    /// Optimizer steps the run had completed there.
    pub step: u64,
    /// Training tokens it had consumed there.
    pub tokens_seen: u64,
    /// Its learning-rate schedule (none for imported weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// Where it stood in that schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<SchedulePosition>,
}

impl std::fmt::Display for RunRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (step {}, {} tokens",
            self.run, self.step, self.tokens_seen
        )?;
        match &self.position {
            Some(p) => write!(f, ", {p})"),
            None => write!(f, ")"),
        }
    }
}

/// Where the run of checkpoint `meta` stands in its schedule: recorded, or computed
/// from its config for checkpoints written before positions were.
pub fn checkpoint_position(meta: &CheckpointMeta) -> Option<SchedulePosition> {
    meta.schedule_position.clone().or_else(|| {
        let c = meta.train.as_ref()?;
        Some(
            c.lr_schedule()
                .position(meta.tokens_seen, c.tokens_per_step()),
        )
    })
}

/// The learning rate the run of checkpoint `meta` would take next (its final rate
/// once its schedule is over); none for imported weights.
pub fn final_lr(meta: &CheckpointMeta) -> Option<f32> {
    checkpoint_position(meta).map(|p| p.lr)
}

/// What a run starts from when `init` names earlier weights.
pub struct InitState {
    /// The architecture of the weights.
    pub model: GptConfig,
    /// The weights.
    pub params: Vec<f32>,
    /// The AdamW moments, when kept (`reset_moments = false` and a trained shoal
    /// checkpoint).
    pub moments: Option<(Vec<f32>, Vec<f32>)>,
    /// AdamW steps already folded into the kept moments (0 without them).
    pub moment_steps: u64,
    /// The runs these weights went through, oldest first, the one they come from last.
    pub lineage: Vec<RunRecord>,
}

/// Loads `path`: a Hugging Face GPT-2 directory (`config.json` + `model.safetensors`,
/// moments always zero) or a shoal checkpoint or run directory (moments kept unless
/// `reset_moments`, when it has any: imported weights have none).
pub fn load_init(path: &Path, reset_moments: bool) -> Result<InitState> {
    if path.join("config.json").is_file() && !path.join(META_FILE).exists() {
        let (model, params) = shoal_models::hf::load(path)?;
        if !reset_moments {
            tracing::info!("Hugging Face weights carry no AdamW moments: they start at zero");
        }
        return Ok(InitState {
            model,
            params,
            moments: None,
            moment_steps: 0,
            lineage: vec![RunRecord {
                run: path.display().to_string(),
                checkpoint: path.to_path_buf(),
                step: 0,
                tokens_seen: 0,
                schedule: None,
                position: None,
            }],
        });
    }
    let (dir, ckpt) = load_checkpoint(path)?;
    let meta = &ckpt.meta;
    let mut lineage = meta.lineage.clone();
    lineage.push(RunRecord {
        run: meta.train.as_ref().map_or_else(
            || dir.display().to_string(),
            |c| c.out_dir.display().to_string(),
        ),
        checkpoint: dir.clone(),
        step: meta.step,
        tokens_seen: meta.tokens_seen,
        schedule: meta.train.as_ref().map(TrainConfig::lr_schedule),
        position: checkpoint_position(meta),
    });
    let trained = meta.train.is_some();
    let keep = trained && !reset_moments;
    if !reset_moments && !trained {
        tracing::info!(
            dir = %dir.display(),
            "imported weights carry no AdamW moments: they start at zero"
        );
    }
    let moment_steps = if keep {
        meta.moment_steps + meta.step
    } else {
        0
    };
    Ok(InitState {
        model: meta.model.clone(),
        moments: keep.then_some((ckpt.adam_m, ckpt.adam_v)),
        params: ckpt.params,
        moment_steps,
        lineage,
    })
}

/// Loads the upstream data of `spec` for a run whose own data is `main`: the same
/// tokenizer (files without one of their own are read with `main`'s), and every
/// domain renamed `old/NAME` when any name clashes with one of `main`'s.
pub fn load_replay(spec: &ReplaySpec, main: &LoadedData) -> Result<Replay> {
    let mut data = spec.data.clone();
    if let DataSpec::Files { tokenizer, .. } = &mut data
        && tokenizer.is_none()
    {
        tokenizer.clone_from(&main.tokenizer_json);
    }
    let mut old = load_data(&data, &spec.mixture)?;
    if old.tokenizer.describe() != main.tokenizer.describe() {
        return Err(TrainError::InvalidConfig {
            field: "replay.data",
            reason: format!(
                "is tokenized as {} but the training data as {}: replayed tokens must be \
                 the model's",
                old.tokenizer.describe(),
                main.tokenizer.describe()
            ),
        });
    }
    let clash = old
        .mixture
        .domains
        .iter()
        .any(|d| main.mixture.domains.iter().any(|n| n.name == d.name));
    if clash {
        for d in &mut old.mixture.domains {
            d.name = format!("{UPSTREAM_PREFIX}{}", d.name);
        }
    }
    Ok(Replay {
        old: old.mixture,
        fraction: spec.fraction,
    })
}

impl TrainConfig {
    /// The run's learning-rate schedule: `schedule`, or one cosine phase in whole steps
    /// from `lr`, `min_lr`, `warmup_steps` and `max_steps` (the same rate at every step
    /// as before schedules were in tokens).
    pub fn lr_schedule(&self) -> Schedule {
        self.schedule.clone().unwrap_or_else(|| {
            Schedule::from_steps(
                self.lr,
                self.min_lr,
                self.warmup_steps,
                self.max_steps,
                self.tokens_per_step(),
            )
        })
    }

    /// Checks `schedule` and `replay`.
    pub(crate) fn validate_continual(&self) -> Result<()> {
        if let Some(s) = &self.schedule {
            s.check().map_err(|reason| TrainError::InvalidConfig {
                field: "schedule",
                reason,
            })?;
        }
        if let Some(r) = &self.replay
            && !(r.fraction.is_finite() && (0.0..1.0).contains(&r.fraction))
        {
            return Err(TrainError::InvalidConfig {
                field: "replay.fraction",
                reason: format!("must be in [0, 1), got {}", r.fraction),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Decay;

    fn parse(text: &str) -> Result<TrainConfig> {
        TrainConfig::from_toml_str(text, Path::new("continual.toml"))
    }

    #[test]
    fn the_module_example_parses_and_roundtrips() {
        let doc = include_str!("continual.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start())
            .map(|l| format!("{l}\n"))
            .collect();
        let c = parse(&example).unwrap();
        c.validate().unwrap();
        assert!(!c.reset_moments);
        let s = c.lr_schedule();
        assert_eq!(s.phases.len(), 1);
        assert_eq!(s.phases[0].decay, Decay::Cosine);
        assert_eq!(s.phases[0].warmup_tokens, 20_480);
        let r = c.replay.as_ref().unwrap();
        assert_eq!(r.fraction, 0.05);
        assert!(
            matches!(&r.data, DataSpec::Files { domains, .. } if domains.contains_key("en_drama"))
        );
        assert_eq!(parse(&c.to_toml_string()).unwrap(), c);
    }

    #[test]
    fn defaults_keep_the_step_schedule() {
        let c = TrainConfig::default();
        assert!(c.schedule.is_none() && c.replay.is_none() && c.reset_moments);
        let s = c.lr_schedule();
        let tps = c.tokens_per_step();
        assert_eq!(s.phases[0].tokens, c.max_steps * tps);
        assert_eq!(s.phases[0].warmup_tokens, c.warmup_steps * tps);
        assert_eq!(s.lr((c.warmup_steps - 1) * tps, tps), c.lr);
        // Configs without the new tables still load, and round-trip.
        assert_eq!(parse(&c.to_toml_string()).unwrap(), c);
    }

    #[test]
    fn bad_schedules_and_fractions_are_named() {
        let e = parse("[[schedule.phases]]\ntokens = 100\nwarmup_tokens = 200\nmax_lr = 1e-3\n")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`schedule`") && e.contains("warmup_tokens"),
            "{e}"
        );
        let e = parse("[[schedule.phases]]\ntokens = 100\nmax_lr = 1e-3\ndecay = \"cos\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown decay `cos`"), "{e}");
        let e = parse("[replay]\nfraction = 1.0\n[replay.data]\nsource = \"builtin\"\n")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("replay.fraction"), "{e}");
        let e = parse("[replay]\nfraction = 0.1\n").unwrap_err().to_string();
        assert!(e.contains("data"), "{e}");
    }
}
