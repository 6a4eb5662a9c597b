//! Learning-rate schedules in tokens: one or more phases, each a linear warm-up from
//! zero to its maximum and then a decay shape, evaluated at the number of training
//! tokens consumed before a step.
//!
//! A schedule is a pure function of the token count (and the step's own token count,
//! which only the warm-up uses), so a resumed run continues the same curve from the
//! tokens its checkpoint records, and a change of world size or of gradient
//! accumulation under the same global batch leaves the learning rate of every token
//! unchanged. Continual pretraining (Gupta et al. 2023, Ibrahim et al. 2024) is a new
//! run with its own schedule that starts from an earlier run's weights: re-warming
//! is its first phase's warm-up to a new maximum.
//!
//! ```toml
//! [[schedule.phases]]
//! tokens = 4_000_000        # length of the phase
//! warmup_tokens = 40_000    # linear warm-up from 0 to max_lr
//! max_lr = 1e-3
//! min_lr = 1e-4
//! decay = "cosine"          # cosine | linear | constant | inverse_sqrt | wsd | wsd:0.1
//! ```
//!
//! Legend: `t` tokens into the phase before the step, `n` tokens of the step, `W`
//! warm-up tokens, `L` the phase's length, `r = (t - W) / (L - W)`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The default share of a phase that `wsd` spends decaying.
pub const WSD_DEFAULT_DECAY_FRACTION: f64 = 0.2;

/// What a phase does after its warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Decay {
    /// Half a cosine from `max_lr` down to `min_lr` at the end of the phase.
    #[default]
    Cosine,
    /// A straight line from `max_lr` down to `min_lr` at the end of the phase.
    Linear,
    /// `max_lr` throughout (`min_lr` unused).
    Constant,
    /// `max_lr · sqrt(τ / (τ + t − W))`, never below `min_lr`; τ is the warm-up length
    /// (1% of the phase when there is no warm-up).
    InverseSqrt,
    /// Warmup-stable-decay: `max_lr` until the last `decay_fraction` of the phase, then
    /// a straight line down to `min_lr` at its end.
    Wsd {
        /// Share of the phase (after warm-up at the latest) spent decaying, in (0, 1].
        decay_fraction: f64,
    },
}

impl fmt::Display for Decay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decay::Cosine => f.write_str("cosine"),
            Decay::Linear => f.write_str("linear"),
            Decay::Constant => f.write_str("constant"),
            Decay::InverseSqrt => f.write_str("inverse_sqrt"),
            Decay::Wsd { decay_fraction } => write!(f, "wsd:{decay_fraction}"),
        }
    }
}

impl FromStr for Decay {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let wsd = |fraction: f64| {
            if fraction.is_finite() && fraction > 0.0 && fraction <= 1.0 {
                Ok(Decay::Wsd {
                    decay_fraction: fraction,
                })
            } else {
                Err(format!(
                    "the decay fraction of `{text}` must be in (0, 1], e.g. wsd:0.2"
                ))
            }
        };
        match text {
            "cosine" => Ok(Decay::Cosine),
            "linear" => Ok(Decay::Linear),
            "constant" => Ok(Decay::Constant),
            "inverse_sqrt" => Ok(Decay::InverseSqrt),
            "wsd" => wsd(WSD_DEFAULT_DECAY_FRACTION),
            _ => match text.strip_prefix("wsd:").map(str::parse::<f64>) {
                Some(Ok(fraction)) => wsd(fraction),
                _ => Err(format!(
                    "unknown decay `{text}`: expected cosine, linear, constant, inverse_sqrt, \
                     wsd or wsd:FRACTION"
                )),
            },
        }
    }
}

impl From<Decay> for String {
    fn from(d: Decay) -> String {
        d.to_string()
    }
}

impl TryFrom<String> for Decay {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

/// One phase: a linear warm-up from zero to `max_lr`, then `decay`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// Length of the phase in training tokens (warm-up included).
    pub tokens: u64,
    /// Tokens of linear warm-up from zero at the start of the phase.
    #[serde(default)]
    pub warmup_tokens: u64,
    /// The learning rate at the end of warm-up.
    pub max_lr: f32,
    /// The learning rate the decay ends at.
    #[serde(default)]
    pub min_lr: f32,
    /// The shape after warm-up.
    #[serde(default)]
    pub decay: Decay,
}

impl Phase {
    /// The learning rate of a step that starts `t` tokens into this phase and consumes
    /// `n` tokens.
    ///
    /// Warm-up counts the step's own tokens, `max_lr · (t + n) / W`, so the first update
    /// is not wasted with a zero rate and the last warm-up step uses exactly `max_lr`;
    /// the decay is evaluated at `t`. Past the end of the phase the rate stays at the
    /// decay's final value.
    pub fn lr(&self, t: u64, n: u64) -> f32 {
        let (max, min) = (f64::from(self.max_lr), f64::from(self.min_lr));
        let (w, len) = (self.warmup_tokens, self.tokens);
        if t < w {
            // Written as the step schedule did, `max · (s + 1) / W` in steps, so that a
            // schedule converted from steps gives bit-identical rates.
            let (done, warm) = reduce(t + n, w, n);
            return (max * done as f64 / warm as f64).min(max) as f32;
        }
        let t = t.min(len);
        let span = len.saturating_sub(w).max(1);
        // Exact integers divided once: the same quotient as the same ratio in steps.
        let ratio = |from: u64, span: u64| (t - from) as f64 / span as f64;
        let lr = match self.decay {
            Decay::Constant => max,
            Decay::Cosine if t >= len => min,
            Decay::Cosine => {
                let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio(w, span)).cos());
                min + coeff * (max - min)
            }
            Decay::Linear => min + (1.0 - ratio(w, span)) * (max - min),
            Decay::InverseSqrt => {
                let tau = if w > 0 { w } else { (len / 100).max(1) } as f64;
                (max * (tau / (tau + (t - w) as f64)).sqrt()).max(min)
            }
            Decay::Wsd { decay_fraction } => {
                let decay = ((len as f64 * decay_fraction).round() as u64).clamp(1, span);
                let start = len - decay;
                if t < start {
                    max
                } else {
                    min + (1.0 - ratio(start, decay)) * (max - min)
                }
            }
        };
        lr as f32
    }

    /// Checks the phase; the message names what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.tokens == 0 {
            return Err("`tokens` must be at least 1".into());
        }
        if self.warmup_tokens > self.tokens {
            return Err(format!(
                "`warmup_tokens` ({}) exceeds the phase's `tokens` ({})",
                self.warmup_tokens, self.tokens
            ));
        }
        if !(self.max_lr.is_finite() && self.max_lr > 0.0) {
            return Err(format!("`max_lr` must be positive, got {}", self.max_lr));
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.max_lr) {
            return Err(format!(
                "`min_lr` must be in [0, max_lr = {}], got {}",
                self.max_lr, self.min_lr
            ));
        }
        if let Decay::Wsd { decay_fraction } = self.decay {
            Decay::from_str(&format!("wsd:{decay_fraction}"))?;
        }
        Ok(())
    }
}

/// `a / b` with both divided by `unit` when it divides both (the same rational number,
/// in whole steps when the token counts are whole steps).
fn reduce(a: u64, b: u64, unit: u64) -> (u64, u64) {
    if unit > 0 && a.is_multiple_of(unit) && b.is_multiple_of(unit) {
        (a / unit, b / unit)
    } else {
        (a, b)
    }
}

/// Where a token count falls in a [`Schedule`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SchedulePosition {
    /// The phase (0-based; the last one once the schedule is over).
    pub phase: usize,
    /// Phases of the schedule.
    pub phases: usize,
    /// Tokens consumed within the phase (beyond its length once the schedule is over).
    pub tokens_into_phase: u64,
    /// The phase's length in tokens.
    pub phase_tokens: u64,
    /// The learning rate of the next step.
    pub lr: f32,
}

impl fmt::Display for SchedulePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "phase {}/{}, {} of {} tokens, lr {:.3e}",
            self.phase + 1,
            self.phases,
            self.tokens_into_phase,
            self.phase_tokens,
            self.lr
        )
    }
}

/// The learning rate as a function of training tokens: phases one after the other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// The phases, in order; the last one's final rate holds after the schedule.
    pub phases: Vec<Phase>,
}

impl Schedule {
    /// The step-based schedule of `lr`, `min_lr`, `warmup_steps` and `max_steps` in
    /// tokens: one cosine phase, warm-up and length in whole steps of
    /// `tokens_per_step`. Gives the same rate at every step as the schedule in steps.
    pub fn from_steps(
        max_lr: f32,
        min_lr: f32,
        warmup_steps: u64,
        total_steps: u64,
        tokens_per_step: u64,
    ) -> Self {
        // Legacy configs allowed a warm-up longer than the run; the warm-up formula
        // applies before the length check, so nothing is lost by not clamping.
        Schedule {
            phases: vec![Phase {
                tokens: total_steps.saturating_mul(tokens_per_step),
                warmup_tokens: warmup_steps.saturating_mul(tokens_per_step),
                max_lr,
                min_lr,
                decay: Decay::Cosine,
            }],
        }
    }

    /// One phase of `tokens` with the given warm-up, maximum, minimum and decay.
    pub fn single(tokens: u64, warmup_tokens: u64, max_lr: f32, min_lr: f32, decay: Decay) -> Self {
        Schedule {
            phases: vec![Phase {
                tokens,
                warmup_tokens,
                max_lr,
                min_lr,
                decay,
            }],
        }
    }

    /// Tokens of all phases together.
    pub fn total_tokens(&self) -> u64 {
        self.phases.iter().map(|p| p.tokens).sum()
    }

    /// The phase that token count `tokens` falls in and the tokens consumed within it.
    fn locate(&self, tokens: u64) -> Option<(usize, u64)> {
        let mut start = 0u64;
        for (i, p) in self.phases.iter().enumerate() {
            if tokens < start.saturating_add(p.tokens) || i + 1 == self.phases.len() {
                return Some((i, tokens - start));
            }
            start = start.saturating_add(p.tokens);
        }
        None
    }

    /// The learning rate of a step that starts after `tokens` training tokens and
    /// consumes `step_tokens` (see [`Phase::lr`]); 0 for a schedule without phases.
    pub fn lr(&self, tokens: u64, step_tokens: u64) -> f32 {
        match self.locate(tokens) {
            Some((i, t)) => self.phases[i].lr(t, step_tokens),
            None => 0.0,
        }
    }

    /// Where `tokens` falls, with the rate of a next step of `step_tokens`.
    pub fn position(&self, tokens: u64, step_tokens: u64) -> SchedulePosition {
        let (phase, into) = self.locate(tokens).unwrap_or((0, tokens));
        SchedulePosition {
            phase,
            phases: self.phases.len(),
            tokens_into_phase: into,
            phase_tokens: self.phases.get(phase).map_or(0, |p| p.tokens),
            lr: self.lr(tokens, step_tokens),
        }
    }

    /// Checks every phase; the message names the phase and what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.phases.is_empty() {
            return Err("needs at least one phase".into());
        }
        for (i, p) in self.phases.iter().enumerate() {
            p.check().map_err(|e| format!("phase {}: {e}", i + 1))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The step schedule this module replaced, verbatim: the reference that schedules
    /// converted from steps must match bit for bit.
    fn step_lr(max_lr: f32, min_lr: f32, warmup_steps: u64, total_steps: u64, step: u64) -> f32 {
        let (max, min) = (f64::from(max_lr), f64::from(min_lr));
        if step < warmup_steps {
            return (max * (step + 1) as f64 / warmup_steps as f64) as f32;
        }
        if step >= total_steps {
            return min_lr;
        }
        let span = total_steps.saturating_sub(warmup_steps).max(1);
        let ratio = (step - warmup_steps) as f64 / span as f64;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
        (min + coeff * (max - min)) as f32
    }

    /// 1e-3 → 1e-4 over 110 steps of 512 tokens, 10 of them warm-up.
    fn legacy() -> Schedule {
        Schedule::from_steps(1e-3, 1e-4, 10, 110, 512)
    }

    #[test]
    fn steps_convert_to_tokens_bit_for_bit() {
        for (max, min, warm, total, tps) in [
            (1e-3, 1e-4, 10, 110, 512),
            (3e-3, 3e-4, 50, 500, 2048),
            (2e-3, 2e-4, 2, 6, 256),
            (6e-4, 6e-5, 700, 19_073, 524_288),
            (1e-3, 1e-3, 0, 37, 96),
            (1e-3, 1e-4, 200, 110, 7),
        ] {
            let s = Schedule::from_steps(max, min, warm, total, tps);
            for step in 0..total + 50 {
                assert_eq!(
                    s.lr(step * tps, tps).to_bits(),
                    step_lr(max, min, warm, total, step).to_bits(),
                    "{max} {min} {warm} {total} {tps} at step {step}"
                );
            }
        }
    }

    #[test]
    fn warms_up_linearly_then_decays_by_cosine_to_the_floor() {
        let s = legacy();
        let lr = |step: u64| s.lr(step * 512, 512);
        assert!((lr(0) - 1e-4).abs() < 1e-9);
        assert!((lr(4) - 5e-4).abs() < 1e-9);
        assert_eq!(lr(9), 1e-3);
        assert_eq!(lr(10), 1e-3);
        // Half-way through the decay the rate is the mean of max and min.
        assert!((lr(60) - 5.5e-4).abs() < 1e-9);
        for step in 0..9 {
            assert!(lr(step) < lr(step + 1));
        }
        for step in 10..110 {
            assert!(lr(step) >= lr(step + 1), "not monotone at {step}");
        }
        assert_eq!(lr(110), 1e-4);
        assert_eq!(lr(10_000), 1e-4);
    }

    /// Two phases: a pretraining cosine, then a continual phase re-warmed to a new
    /// maximum over 100 tokens and decayed linearly.
    fn two_phases() -> Schedule {
        Schedule {
            phases: vec![
                Phase {
                    tokens: 1000,
                    warmup_tokens: 100,
                    max_lr: 1e-3,
                    min_lr: 1e-4,
                    decay: Decay::Cosine,
                },
                Phase {
                    tokens: 2000,
                    warmup_tokens: 100,
                    max_lr: 5e-4,
                    min_lr: 5e-5,
                    decay: Decay::Linear,
                },
            ],
        }
    }

    #[test]
    fn exact_rates_at_phase_boundaries() {
        let s = two_phases();
        // Last step of phase 1 (tokens 990..1000): almost down to its floor.
        assert!(s.lr(990, 10) > 1e-4 && s.lr(990, 10) < 1.003e-4);
        // First step of phase 2: warm-up from zero counts the step's own tokens.
        assert_eq!(s.lr(1000, 10), (f64::from(5e-4f32) / 10.0) as f32);
        // Last warm-up step of phase 2 reaches exactly its maximum, as does the first
        // step after warm-up.
        assert_eq!(s.lr(1090, 10), 5e-4);
        assert_eq!(s.lr(1100, 10), 5e-4);
        // Half-way through the linear decay: the mean.
        assert!((s.lr(2050, 10) - 2.75e-4).abs() < 1e-10);
        // The end of the last phase, and beyond: its floor.
        assert_eq!(s.lr(3000, 10), 5e-5);
        assert_eq!(s.lr(1 << 40, 10), 5e-5);
        assert_eq!(s.total_tokens(), 3000);

        let p = s.position(1100, 10);
        assert_eq!(
            (p.phase, p.phases, p.tokens_into_phase, p.phase_tokens),
            (1, 2, 100, 2000)
        );
        assert_eq!(p.lr, 5e-4);
        assert_eq!(s.position(999, 10).phase, 0);
        assert_eq!(s.position(5000, 10).tokens_into_phase, 4000);
        assert_eq!(p.to_string(), "phase 2/2, 100 of 2000 tokens, lr 5.000e-4");
    }

    #[test]
    fn decay_shapes() {
        let phase = |decay| Phase {
            tokens: 1100,
            warmup_tokens: 100,
            max_lr: 1e-3,
            min_lr: 1e-4,
            decay,
        };
        let constant = phase(Decay::Constant);
        assert_eq!(constant.lr(100, 1), 1e-3);
        assert_eq!(constant.lr(5000, 1), 1e-3);

        let linear = phase(Decay::Linear);
        assert_eq!(linear.lr(100, 1), 1e-3);
        assert!((linear.lr(600, 1) - 5.5e-4).abs() < 1e-10);
        assert_eq!(linear.lr(1100, 1), 1e-4);

        let inv = phase(Decay::InverseSqrt);
        assert_eq!(inv.lr(100, 1), 1e-3);
        // τ = 100: at 300 tokens past warm-up the rate has halved.
        assert!((inv.lr(400, 1) - 5e-4).abs() < 1e-10);
        // Floored at min_lr, and held past the end.
        assert_eq!(inv.lr(1 << 30, 1), inv.lr(1100, 1));
        assert!(inv.lr(1100, 1) >= 1e-4);

        let wsd = phase(Decay::Wsd {
            decay_fraction: 0.1,
        });
        // Stable until the last 110 tokens, then linear to the floor.
        assert_eq!(wsd.lr(989, 1), 1e-3);
        assert_eq!(wsd.lr(990, 1), 1e-3);
        assert!((wsd.lr(1045, 1) - 5.5e-4).abs() < 1e-10);
        assert_eq!(wsd.lr(1100, 1), 1e-4);
        for t in 100..1100 {
            assert!(wsd.lr(t, 1) >= wsd.lr(t + 1, 1));
            assert!(linear.lr(t, 1) >= linear.lr(t + 1, 1));
            assert!(inv.lr(t, 1) >= inv.lr(t + 1, 1));
        }
    }

    #[test]
    fn resumption_mid_warmup_and_mid_decay_continues_the_same_sequence() {
        // A resumed run knows only the tokens its checkpoint recorded: the rates from
        // there on are those of the uninterrupted run.
        let s = two_phases();
        let n = 30;
        let straight: Vec<u32> = (0..100).map(|k| s.lr(k * n, n).to_bits()).collect();
        for resume_at in [2u64, 33, 34, 36, 40, 70] {
            // 2: mid warm-up of phase 1; 33: the step across the phase boundary (990
            // tokens); 34, 36: phase 2's warm-up (1020, 1080 tokens); 40, 70: mid decay.
            let tokens = resume_at * n;
            let resumed: Vec<u32> = (0..100 - resume_at)
                .map(|k| s.lr(tokens + k * n, n).to_bits())
                .collect();
            assert_eq!(
                resumed,
                straight[resume_at as usize..],
                "resumed at step {resume_at}"
            );
        }
    }

    #[test]
    fn same_rate_at_the_same_token_count_for_any_world_size_or_accumulation() {
        // The global batch is tokens_per_step = batch · accum · seq_len whatever the
        // split over ranks or micro-batches: 8 sequences × 64 tokens as 8×1, 4×2, 2×4
        // or 1×8 consume 512 tokens a step, and any split meets the same token counts.
        let s = two_phases();
        let configs = [(8usize, 1usize), (4, 2), (2, 4), (1, 8)];
        let step_tokens: Vec<u64> = configs.iter().map(|&(b, a)| (b * a * 64) as u64).collect();
        assert!(step_tokens.iter().all(|&n| n == 512));
        let big = Schedule::from_steps(1e-3, 1e-4, 3, 40, 512);
        for k in 0..40 {
            let rates: Vec<f32> = step_tokens.iter().map(|&n| big.lr(k * n, n)).collect();
            assert!(rates.windows(2).all(|w| w[0] == w[1]), "{rates:?}");
        }
        // And the decay depends on the token count only: a run with half the global
        // batch takes two steps where the other takes one, at the same rates at every
        // shared token count.
        for k in 0..50u64 {
            let t = 1100 + k * 20;
            assert_eq!(s.lr(t, 10), s.lr(t, 20));
        }
    }

    #[test]
    fn decay_parses_and_prints() {
        for (text, d) in [
            ("cosine", Decay::Cosine),
            ("linear", Decay::Linear),
            ("constant", Decay::Constant),
            ("inverse_sqrt", Decay::InverseSqrt),
            (
                "wsd",
                Decay::Wsd {
                    decay_fraction: WSD_DEFAULT_DECAY_FRACTION,
                },
            ),
            (
                "wsd:0.1",
                Decay::Wsd {
                    decay_fraction: 0.1,
                },
            ),
        ] {
            assert_eq!(text.parse::<Decay>().unwrap(), d);
            assert_eq!(d.to_string().parse::<Decay>().unwrap(), d);
        }
        for bad in ["cos", "wsd:0", "wsd:1.5", "wsd:x", ""] {
            assert!(bad.parse::<Decay>().is_err(), "{bad}");
        }
    }

    #[test]
    fn checks_name_the_problem() {
        let mut s = two_phases();
        s.check().unwrap();
        s.phases[1].warmup_tokens = 3000;
        assert!(s.check().unwrap_err().contains("phase 2: `warmup_tokens`"));
        s.phases[1].warmup_tokens = 0;
        s.phases[1].min_lr = 1.0;
        assert!(s.check().unwrap_err().contains("min_lr"));
        s.phases[1].min_lr = 0.0;
        s.phases[0].max_lr = 0.0;
        assert!(s.check().unwrap_err().contains("phase 1: `max_lr`"));
        assert!(Schedule { phases: vec![] }.check().is_err());
        // A warm-up of zero starts at the maximum.
        assert_eq!(
            Schedule::single(100, 0, 1e-3, 0.0, Decay::Cosine).lr(0, 10),
            1e-3
        );
    }
}
