//! The numeric precision of training, and what it costs in memory: the bytes of
//! the model states (parameters, gradients, optimizer state) per rank, per ZeRO
//! stage, as the ZeRO paper counts them (Rajbhandari et al. 2020, §3.1 and
//! Figure 1).
//!
//! Mixed precision keeps bf16 parameters and gradients for compute (2Ψ + 2Ψ
//! bytes for Ψ parameters) and, for the optimizer, an fp32 master copy of the
//! parameters and AdamW's two fp32 moments (K·Ψ with K = 12): 16Ψ in all. Plain
//! fp32 training keeps fp32 parameters and gradients (4Ψ + 4Ψ) and the two
//! moments (8Ψ): also 16Ψ. ZeRO stage 1 shards the optimizer state over the
//! world, stage 2 also the gradients, stage 3 also the parameters.

use std::fmt;
use std::str::FromStr;

use crate::ModelError;

/// The precision of a training step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Everything in fp32.
    #[default]
    Fp32,
    /// Mixed precision: bf16 parameters and activations for compute, fp32
    /// accumulation in every product and sum, fp32 master weights, AdamW
    /// moments and loss.
    Bf16,
}

impl Precision {
    /// Both precisions.
    pub const ALL: [Precision; 2] = [Precision::Fp32, Precision::Bf16];

    /// The name on the command line: `fp32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Bytes per parameter of each model state, unsharded, as the ZeRO paper
    /// counts them: (2, 2, 12) in mixed precision, (4, 4, 8) in fp32.
    pub fn bytes_per_param(self) -> StateBytes {
        match self {
            Precision::Fp32 => StateBytes {
                params: 4,
                grads: 4,
                optimizer: 8,
            },
            Precision::Bf16 => StateBytes {
                params: 2,
                grads: 2,
                optimizer: 12,
            },
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(ModelError::InvalidConfig(format!(
                "unknown precision `{other}` (known: fp32, bf16)"
            ))),
        }
    }
}

/// Bytes of the three model states (per parameter, or in total).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateBytes {
    /// Parameters used for compute (bf16 in mixed precision).
    pub params: u64,
    /// Gradients.
    pub grads: u64,
    /// Optimizer state: AdamW's two moments, and in mixed precision the fp32
    /// master parameters.
    pub optimizer: u64,
}

impl StateBytes {
    /// All three.
    pub fn total(&self) -> u64 {
        self.params + self.grads + self.optimizer
    }
}

/// The model-state bytes one rank of `world` holds for `num_params` parameters
/// in `precision` at ZeRO `stage` (0 replicates everything; 1 shards the
/// optimizer state, 2 also the gradients, 3 also the parameters). A sharded
/// state holds `ceil(num_params / world)` parameters' worth: the largest share.
pub fn model_state_bytes(
    precision: Precision,
    stage: u8,
    num_params: u64,
    world: usize,
) -> Result<StateBytes, ModelError> {
    if stage > 3 {
        return Err(ModelError::InvalidConfig(format!(
            "ZeRO stage {stage} does not exist (0 to 3)"
        )));
    }
    if world == 0 {
        return Err(ModelError::InvalidConfig("a world of 0 ranks".into()));
    }
    let share = num_params.div_ceil(world as u64);
    let count = |sharded_from: u8| {
        if stage >= sharded_from {
            share
        } else {
            num_params
        }
    };
    let per = precision.bytes_per_param();
    Ok(StateBytes {
        params: per.params * count(3),
        grads: per.grads * count(2),
        optimizer: per.optimizer * count(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Figure 1 of the ZeRO paper: 7.5B parameters, 64 GPUs, mixed precision.
    #[test]
    fn matches_the_zero_paper() {
        let (psi, world) = (7_500_000_000u64, 64);
        let gb = |stage| {
            let bytes = model_state_bytes(Precision::Bf16, stage, psi, world).unwrap();
            bytes.total() as f64 / 1e9
        };
        let want = [120.0, 31.4, 16.6, 1.9];
        for (stage, want) in (0..=3).zip(want) {
            let got = gb(stage);
            assert!(
                (got - want).abs() < 0.05,
                "stage {stage}: {got} GB, paper {want}"
            );
        }
        // Exactly: 16Ψ, 4Ψ + 12Ψ/64, 2Ψ + 14Ψ/64, 16Ψ/64.
        let share = psi / 64;
        let exact = |stage| model_state_bytes(Precision::Bf16, stage, psi, world).unwrap();
        assert_eq!(exact(0).total(), 16 * psi);
        assert_eq!(exact(1).total(), 4 * psi + 12 * share);
        assert_eq!(exact(2).total(), 2 * psi + 14 * share);
        assert_eq!(exact(3).total(), 16 * share);
    }

    #[test]
    fn fp32_keeps_no_master_copy() {
        let psi = 124_000_000;
        let s = |stage| model_state_bytes(Precision::Fp32, stage, psi, 4).unwrap();
        assert_eq!(
            s(0),
            StateBytes {
                params: 4 * psi,
                grads: 4 * psi,
                optimizer: 8 * psi
            }
        );
        assert_eq!(s(1).total(), 8 * psi + 8 * psi / 4);
        assert_eq!(s(2).total(), 4 * psi + 12 * psi / 4);
        assert_eq!(s(3).total(), 16 * psi / 4);
        // One rank: nothing to shard.
        let one = model_state_bytes(Precision::Fp32, 3, psi, 1).unwrap();
        assert_eq!(one.total(), 16 * psi);
    }

    #[test]
    fn shares_round_up_and_bad_inputs_are_errors() {
        let s = model_state_bytes(Precision::Bf16, 3, 10, 4).unwrap();
        assert_eq!(
            s,
            StateBytes {
                params: 6,
                grads: 6,
                optimizer: 36
            }
        );
        assert!(model_state_bytes(Precision::Bf16, 4, 10, 4).is_err());
        assert!(model_state_bytes(Precision::Bf16, 1, 10, 0).is_err());
    }

    #[test]
    fn names_round_trip() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        assert!("fp16".parse::<Precision>().is_err());
    }
}
