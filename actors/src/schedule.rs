//! The learning-rate schedule: linear warm-up, then cosine decay to a floor.
//!
//! As in nanoGPT and llm.c, and a pure function of the step so that a resumed run
//! continues the same curve with no schedule state in the checkpoint.

use serde::{Deserialize, Serialize};

/// Linear warm-up from zero to `max_lr`, then half a cosine down to `min_lr` at `total_steps`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    /// Peak learning rate, reached after warm-up.
    pub max_lr: f32,
    /// Final learning rate, held after `total_steps`.
    pub min_lr: f32,
    /// Warm-up steps.
    pub warmup_steps: u64,
    /// Step at which the cosine reaches `min_lr`.
    pub total_steps: u64,
}

impl LrSchedule {
    /// The learning rate of the update made by 0-based step `step`.
    ///
    /// Warm-up: `max_lr * (step + 1) / warmup_steps`, so the first update is not wasted
    /// with a zero rate and the last warm-up step uses exactly `max_lr`. Then cosine:
    /// `min_lr + 0.5 * (1 + cos(pi * r)) * (max_lr - min_lr)` with `r` going from 0 to 1.
    pub fn lr(&self, step: u64) -> f32 {
        let (max, min) = (f64::from(self.max_lr), f64::from(self.min_lr));
        if step < self.warmup_steps {
            return (max * (step + 1) as f64 / self.warmup_steps as f64) as f32;
        }
        if step >= self.total_steps {
            return self.min_lr;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let ratio = (step - self.warmup_steps) as f64 / span as f64;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
        (min + coeff * (max - min)) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: LrSchedule = LrSchedule {
        max_lr: 1e-3,
        min_lr: 1e-4,
        warmup_steps: 10,
        total_steps: 110,
    };

    #[test]
    fn warms_up_linearly() {
        assert!((S.lr(0) - 1e-4).abs() < 1e-9);
        assert!((S.lr(4) - 5e-4).abs() < 1e-9);
        assert_eq!(S.lr(9), 1e-3);
        for s in 0..9 {
            assert!(S.lr(s) < S.lr(s + 1));
        }
    }

    #[test]
    fn decays_by_cosine_to_the_floor() {
        assert_eq!(S.lr(10), 1e-3);
        // Half-way through the decay the rate is the mean of max and min.
        assert!((S.lr(60) - 5.5e-4).abs() < 1e-9);
        for s in 10..110 {
            assert!(S.lr(s) >= S.lr(s + 1), "not monotone at {s}");
        }
        assert_eq!(S.lr(110), 1e-4);
        assert_eq!(S.lr(10_000), 1e-4);
    }

    #[test]
    fn degenerate_schedules_are_finite() {
        let no_warmup = LrSchedule {
            warmup_steps: 0,
            ..S
        };
        assert_eq!(no_warmup.lr(0), 1e-3);
        let all_warmup = LrSchedule {
            warmup_steps: 200,
            ..S
        };
        assert!(all_warmup.lr(150).is_finite());
        let constant = LrSchedule { min_lr: 1e-3, ..S };
        assert!((constant.lr(70) - 1e-3).abs() < 1e-9);
    }
}
