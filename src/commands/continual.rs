//! The continual-pretraining flags of `shoal train`: the learning-rate schedule of the
//! common re-warming case, the old data to replay and evaluate, and the AdamW moments.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use shoal_actors::{
    Checkpoint, DataSpec, Decay, ReplaySpec, Schedule, TrainConfig, Trainer, final_lr,
    resolve_checkpoint_dir,
};
use shoal_data::MixtureWeights;

/// Flags of a continual run (`--init` a pretrained model, new `--data`).
#[derive(Args, Debug, Default, Clone)]
pub struct ContinualArgs {
    /// Re-warm the learning rate: one phase over the whole run, linear warm-up from 0 to
    /// this maximum, then `--decay` down to `--min-lr` (replaces `[schedule]`).
    #[arg(long, value_name = "LR", conflicts_with = "no_rewarm")]
    pub rewarm_lr: Option<f32>,
    /// Warm-up of that phase in training tokens.
    #[arg(long, value_name = "TOKENS", conflicts_with_all = ["warmup_fraction", "no_rewarm"])]
    pub warmup_tokens: Option<u64>,
    /// Warm-up of that phase as a share of the run's tokens (e.g. 0.01).
    #[arg(long, value_name = "FRACTION", conflicts_with = "no_rewarm")]
    pub warmup_fraction: Option<f64>,
    /// Decay shape of that phase: cosine, linear, constant, inverse_sqrt, wsd or
    /// wsd:FRACTION (constant, then a linear decay over the last FRACTION).
    #[arg(long, value_name = "SHAPE", conflicts_with = "no_rewarm")]
    pub decay: Option<Decay>,
    /// No re-warming: a constant learning rate at the final rate of the `--init`
    /// checkpoint's run.
    #[arg(long)]
    pub no_rewarm: bool,
    /// Old (upstream) data, a domain and its files; repeat for more domains. It is
    /// evaluated beside --data, and `--replay-fraction` of the samples come from it.
    #[arg(
        long,
        visible_alias = "upstream-data",
        value_name = "DOMAIN=PATH[,PATH]"
    )]
    pub replay_data: Vec<String>,
    /// The built-in synthetic corpus generated from SEED (default 0) as the old data, of
    /// the training data's size when that is built-in too.
    #[arg(
        long,
        visible_alias = "upstream-builtin",
        value_name = "SEED",
        num_args = 0..=1,
        default_missing_value = "0",
        conflicts_with_all = ["replay_data", "replay_init_data"]
    )]
    pub replay_builtin: Option<u64>,
    /// The data the `--init` checkpoint's run trained on (with its mixture) as the old data.
    #[arg(
        long,
        visible_alias = "upstream-init-data",
        conflicts_with = "replay_data"
    )]
    pub replay_init_data: bool,
    /// Share of the training samples drawn from the old data (0: evaluate only).
    #[arg(long, value_name = "FRACTION")]
    pub replay_fraction: Option<f64>,
    /// Domain weights of the old data: uniform, natural or a weights file.
    #[arg(long, value_name = "uniform|natural|FILE")]
    pub replay_mixture: Option<MixtureWeights>,
    /// Keep the AdamW moments of the `--init` checkpoint (a trained shoal checkpoint).
    #[arg(long, conflicts_with = "reset_moments")]
    pub keep_moments: bool,
    /// Start the AdamW moments at zero (the default).
    #[arg(long)]
    pub reset_moments: bool,
}

impl ContinualArgs {
    /// Applies the flags to `c`, whose other fields (batch shape, `max_steps`, `init`,
    /// `lr`, `min_lr`, `data`) are already final.
    pub fn apply(&self, c: &mut TrainConfig) -> Result<()> {
        if self.keep_moments {
            c.reset_moments = false;
        }
        if self.reset_moments {
            c.reset_moments = true;
        }
        self.apply_schedule(c)?;
        self.apply_replay(c)
    }

    fn apply_schedule(&self, c: &mut TrainConfig) -> Result<()> {
        let tokens = c.max_steps.saturating_mul(c.tokens_per_step());
        if self.no_rewarm {
            let meta = init_meta(c, "--no-rewarm")?;
            let lr = final_lr(&meta).context(
                "--no-rewarm needs the final learning rate of the --init run, but the \
                 checkpoint holds no training config (imported weights?)",
            )?;
            (c.lr, c.min_lr) = (lr, lr);
            c.schedule = Some(Schedule::single(tokens, 0, lr, lr, Decay::Constant));
            return Ok(());
        }
        let flags = self.rewarm_lr.is_some()
            || self.warmup_tokens.is_some()
            || self.warmup_fraction.is_some()
            || self.decay.is_some();
        if !flags {
            return Ok(());
        }
        if let Some(lr) = self.rewarm_lr {
            c.lr = lr;
        }
        let warmup = match (self.warmup_tokens, self.warmup_fraction) {
            (Some(t), _) => t,
            (None, Some(f)) => {
                if !(f.is_finite() && (0.0..=1.0).contains(&f)) {
                    bail!("--warmup-fraction must be in [0, 1], got {f}");
                }
                (f * tokens as f64).round() as u64
            }
            (None, None) => c.warmup_steps.saturating_mul(c.tokens_per_step()),
        };
        let decay = self.decay.unwrap_or_default();
        c.schedule = Some(Schedule::single(tokens, warmup, c.lr, c.min_lr, decay));
        Ok(())
    }

    fn apply_replay(&self, c: &mut TrainConfig) -> Result<()> {
        let data = if !self.replay_data.is_empty() {
            let mut domains = BTreeMap::new();
            for spec in &self.replay_data {
                let (name, paths) = super::train::parse_domain(spec)?;
                domains.entry(name).or_insert_with(Vec::new).extend(paths);
            }
            let val_fraction = match &c.data {
                DataSpec::Files { val_fraction, .. } | DataSpec::Builtin { val_fraction, .. } => {
                    *val_fraction
                }
                _ => 0.1,
            };
            Some((
                DataSpec::Files {
                    domains,
                    tokenizer: None,
                    val_fraction,
                },
                None,
            ))
        } else if let Some(seed) = self.replay_builtin {
            let size = |d: &DataSpec| match d {
                DataSpec::Builtin {
                    tokens_per_domain,
                    val_fraction,
                    ..
                } => Some((*tokens_per_domain, *val_fraction)),
                _ => None,
            };
            let (tokens_per_domain, val_fraction) = size(&c.data)
                .or_else(|| size(&DataSpec::default()))
                .unwrap_or((200_000, 0.1));
            let data = DataSpec::Builtin {
                seed,
                tokens_per_domain,
                val_fraction,
            };
            Some((data, None))
        } else if self.replay_init_data {
            let meta = init_meta(c, "--replay-init-data")?;
            let train = meta
                .train
                .context("--replay-init-data: the --init checkpoint holds no training config")?;
            Some((train.data, Some(train.mixture)))
        } else {
            None
        };
        if let Some((data, mixture)) = data {
            let spec = c.replay.get_or_insert_with(|| ReplaySpec {
                fraction: 0.0,
                mixture: MixtureWeights::Uniform,
                data: data.clone(),
            });
            spec.data = data;
            if let Some(m) = mixture {
                spec.mixture = m;
            }
        }
        if let Some(m) = &self.replay_mixture {
            replay_of(c, "--replay-mixture")?.mixture = m.clone();
        }
        if let Some(f) = self.replay_fraction {
            replay_of(c, "--replay-fraction")?.fraction = f;
        }
        Ok(())
    }
}

/// The replay table `flag` modifies; an error when there is no old data.
fn replay_of<'a>(c: &'a mut TrainConfig, flag: &str) -> Result<&'a mut ReplaySpec> {
    c.replay.as_mut().with_context(|| {
        format!(
            "{flag} needs old data: --replay-data, --replay-builtin or --replay-init-data \
             (or a [replay] table in the config)"
        )
    })
}

/// The metadata of `c.init`'s checkpoint, for `flag`.
fn init_meta(c: &TrainConfig, flag: &str) -> Result<shoal_actors::CheckpointMeta> {
    let init = c
        .init
        .as_ref()
        .with_context(|| format!("{flag} needs --init (the checkpoint the run continues)"))?;
    let dir: PathBuf = resolve_checkpoint_dir(init).with_context(|| {
        format!(
            "{flag}: --init {} is not a shoal checkpoint",
            init.display()
        )
    })?;
    Ok(Checkpoint::load_meta(&dir)?)
}

/// Lines describing what a continual run continues and how it starts: the lineage,
/// the schedule position, the old data.
pub fn describe(trainer: &Trainer) -> Vec<String> {
    let mut lines = Vec::new();
    for (i, r) in trainer.lineage().iter().enumerate() {
        lines.push(format!("continues run {}: {r}", i + 1));
    }
    let c = trainer.config();
    if c.schedule.is_some() || !trainer.lineage().is_empty() {
        let s = trainer.schedule();
        let phases: Vec<String> = s
            .phases
            .iter()
            .map(|p| {
                format!(
                    "{} tokens: warm-up {} to {:.2e}, {} to {:.2e}",
                    p.tokens, p.warmup_tokens, p.max_lr, p.decay, p.min_lr
                )
            })
            .collect();
        lines.push(format!(
            "schedule: {}; now at {}",
            phases.join(" | "),
            trainer.schedule_position()
        ));
    }
    if let Some(r) = trainer.replay() {
        let names: Vec<&str> = r.old.domains.iter().map(|d| d.name.as_str()).collect();
        lines.push(format!(
            "old data (evaluated{}): {}",
            if r.fraction > 0.0 {
                format!(", {:.1}% of the samples replayed", 100.0 * r.fraction)
            } else {
                String::new()
            },
            names.join(", ")
        ));
    }
    if !trainer.lineage().is_empty() {
        lines.push(format!(
            "AdamW moments: {}",
            if trainer.moment_steps() > 0 {
                format!("kept ({} steps)", trainer.moment_steps())
            } else {
                "zero".to_string()
            }
        ));
    }
    lines
}

/// The share of the consumed samples that came from the old data, as a line (none
/// without old data to replay).
pub fn replayed_line(trainer: &Trainer) -> Option<String> {
    let r = trainer.replay()?;
    if r.fraction <= 0.0 {
        return None;
    }
    let counts = trainer.consumed_samples();
    let new = trainer.mixture().domains.len();
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let old: u64 = counts[new..].iter().map(|(_, n)| n).sum();
    (total > 0).then(|| {
        format!(
            "replayed:   {old} of {total} samples from the old data ({:.2}%, asked {:.2}%)",
            100.0 * old as f64 / total as f64,
            100.0 * r.fraction
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use shoal_actors::{Checkpoint, TrainConfig};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        c: ContinualArgs,
    }

    fn args(flags: &[&str]) -> ContinualArgs {
        let mut all = vec!["x"];
        all.extend_from_slice(flags);
        Cli::try_parse_from(all).unwrap().c
    }

    fn config() -> TrainConfig {
        TrainConfig {
            batch_size: 4,
            seq_len: 32,
            max_steps: 100,
            warmup_steps: 5,
            ..TrainConfig::default()
        }
    }

    #[test]
    fn rewarm_flags_make_one_phase_over_the_run() {
        let mut c = config();
        args(&[]).apply(&mut c).unwrap();
        assert!(c.schedule.is_none() && c.replay.is_none() && c.reset_moments);

        let mut c = config();
        args(&[
            "--rewarm-lr",
            "1e-3",
            "--warmup-fraction",
            "0.01",
            "--decay",
            "wsd:0.1",
        ])
        .apply(&mut c)
        .unwrap();
        let s = c.schedule.clone().unwrap();
        assert_eq!(s.phases.len(), 1);
        let p = &s.phases[0];
        assert_eq!((p.tokens, p.warmup_tokens), (12_800, 128));
        assert_eq!((p.max_lr, p.min_lr, c.lr), (1e-3, c.min_lr, 1e-3));
        assert_eq!(
            p.decay,
            Decay::Wsd {
                decay_fraction: 0.1
            }
        );
        c.validate().unwrap();

        // Without a warm-up flag, the config's warm-up steps in tokens.
        let mut c = config();
        args(&["--decay", "linear"]).apply(&mut c).unwrap();
        assert_eq!(c.schedule.unwrap().phases[0].warmup_tokens, 5 * 128);

        assert!(Cli::try_parse_from(["x", "--no-rewarm", "--rewarm-lr", "1e-3"]).is_err());
        assert!(
            Cli::try_parse_from(["x", "--warmup-tokens", "1", "--warmup-fraction", "0.1"]).is_err()
        );
        let e = args(&["--warmup-fraction", "2"])
            .apply(&mut config())
            .unwrap_err();
        assert!(e.to_string().contains("--warmup-fraction"), "{e}");
    }

    #[test]
    fn no_rewarm_holds_the_init_runs_final_rate() {
        let tmp = tempfile::tempdir().unwrap();
        let pre = TrainConfig {
            lr: 2e-3,
            min_lr: 2e-4,
            ..config()
        };
        let model = pre.validate().unwrap();
        let n = shoal_models::ParamLayout::new(&model).len();
        let mut ckpt = Checkpoint::from_weights(model, vec![0.0; n], "bytes".into());
        ckpt.meta.step = 100;
        ckpt.meta.tokens_seen = 100 * pre.tokens_per_step();
        ckpt.meta.train = Some(pre);
        let dir = tmp.path().join("pre");
        ckpt.save(&dir).unwrap();

        let mut c = TrainConfig {
            init: Some(dir.clone()),
            ..config()
        };
        args(&["--no-rewarm", "--keep-moments"])
            .apply(&mut c)
            .unwrap();
        assert!(!c.reset_moments);
        let p = &c.schedule.as_ref().unwrap().phases[0];
        assert_eq!((p.max_lr, p.min_lr, p.decay), (2e-4, 2e-4, Decay::Constant));
        assert_eq!(c.lr_schedule().lr(5000, 128), 2e-4);

        // The init run's data as the old data, and the flags that need old data.
        let mut c = TrainConfig {
            init: Some(dir),
            ..config()
        };
        args(&["--replay-init-data", "--replay-fraction", "0.05"])
            .apply(&mut c)
            .unwrap();
        let r = c.replay.unwrap();
        assert_eq!((r.fraction, &r.data), (0.05, &config().data));
        let e = args(&["--replay-fraction", "0.05"])
            .apply(&mut config())
            .unwrap_err();
        assert!(e.to_string().contains("needs old data"), "{e}");
        let e = args(&["--no-rewarm"]).apply(&mut config()).unwrap_err();
        assert!(e.to_string().contains("--init"), "{e}");
    }

    #[test]
    fn replay_builtin_takes_a_seed_and_the_training_datas_size() {
        let mut c = TrainConfig {
            data: DataSpec::Builtin {
                seed: 3,
                tokens_per_domain: 6000,
                val_fraction: 0.2,
            },
            ..config()
        };
        args(&["--replay-builtin", "7"]).apply(&mut c).unwrap();
        let want = DataSpec::Builtin {
            seed: 7,
            tokens_per_domain: 6000,
            val_fraction: 0.2,
        };
        assert_eq!(c.replay.as_ref().unwrap().data, want);
        assert_eq!(c.replay.unwrap().fraction, 0.0);
        let mut c = config();
        args(&["--upstream-builtin"]).apply(&mut c).unwrap();
        assert!(matches!(
            c.replay.unwrap().data,
            DataSpec::Builtin { seed: 0, .. }
        ));
    }
}
