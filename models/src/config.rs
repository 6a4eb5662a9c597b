//! GPT-2 model configuration and presets.

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Shape of a GPT-2 style decoder (pre-LayerNorm, learned positions, tied LM head, 4x GELU MLP).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct GptConfig {
    /// Number of token ids (V).
    pub vocab_size: usize,
    /// Length of the learned position table, the longest sequence (maxT).
    pub n_positions: usize,
    /// Number of transformer blocks (L).
    pub n_layer: usize,
    /// Number of attention heads (NH).
    pub n_head: usize,
    /// Width of the residual stream (C).
    pub n_embd: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f32,
}

/// Names accepted by [`GptConfig::preset`].
pub const PRESETS: &[&str] = &["tiny", "small", "bench-5m", "bench-30m", "gpt2"];

impl GptConfig {
    /// A named configuration: `tiny` (demo/tests, byte vocab), `small`, `bench-5m` and
    /// `bench-30m` (the benchmark models) or `gpt2` (the 124M model).
    pub fn preset(name: &str) -> Result<Self, ModelError> {
        let (vocab_size, n_positions, n_layer, n_head, n_embd) = match name {
            "tiny" => (256, 128, 4, 4, 128),
            "small" => (256, 256, 6, 6, 384),
            "bench-5m" => (8192, 256, 4, 4, 256),
            "bench-30m" => (50304, 256, 6, 6, 384),
            "gpt2" => (50257, 1024, 12, 12, 768),
            _ => {
                return Err(ModelError::UnknownPreset {
                    name: name.to_string(),
                    known: PRESETS.join(", "),
                });
            }
        };
        Ok(Self {
            vocab_size,
            n_positions,
            n_layer,
            n_head,
            n_embd,
            layer_norm_eps: 1e-5,
        })
    }

    /// Checks that the shapes are consistent and non-degenerate.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::InvalidConfig(m));
        if self.vocab_size == 0 || self.n_positions == 0 || self.n_layer == 0 {
            return bad("vocab_size, n_positions and n_layer must be positive".into());
        }
        if self.n_head == 0 || self.n_embd == 0 {
            return bad("n_head and n_embd must be positive".into());
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!(
                "n_embd ({}) must be divisible by n_head ({})",
                self.n_embd, self.n_head
            ));
        }
        if self.vocab_size > u32::MAX as usize {
            return bad(format!("vocab_size {} does not fit u32", self.vocab_size));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return bad(format!(
                "layer_norm_eps must be positive, got {}",
                self.layer_norm_eps
            ));
        }
        // Guard against absurd sizes before anything allocates: 2^36 parameters is 256 GiB.
        let c = self.n_embd as u128;
        let per_layer = 12 * c * c + 13 * c;
        let total = (self.vocab_size as u128 + self.n_positions as u128) * c
            + self.n_layer as u128 * per_layer
            + 2 * c;
        if total > 1 << 36 {
            return bad(format!(
                "{total} parameters is more than this build supports"
            ));
        }
        Ok(())
    }

    /// Size of one head (hs = C / NH).
    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Total number of parameters (the tied LM head is counted once).
    pub fn num_params(&self) -> usize {
        crate::ParamLayout::new(self).len()
    }

    /// Training FLOPs per token at sequence length `t`: 6 per multiply-add-counted parameter
    /// (every weight matrix including the tied LM head; the position table and the
    /// LayerNorm/bias vectors are not matmul weights and are left out), plus causal-free
    /// attention `6 * 2 * L * T * C` (scores and weighted sum, forward and backward,
    /// counting the full T×T as PyTorch/PaLM accounting does).
    pub fn flops_per_token(&self, t: usize) -> f64 {
        let c = self.n_embd as f64;
        let l = self.n_layer as f64;
        let matmul_params = l * 12.0 * c * c + self.vocab_size as f64 * c;
        6.0 * matmul_params + 12.0 * l * t as f64 * c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_count() {
        for p in PRESETS {
            GptConfig::preset(p).unwrap().validate().unwrap();
        }
        // GPT-2 small is the well-known 124,439,808 parameters (tied head).
        assert_eq!(GptConfig::preset("gpt2").unwrap().num_params(), 124_439_808);
        assert!(matches!(
            GptConfig::preset("huge"),
            Err(ModelError::UnknownPreset { .. })
        ));
    }

    #[test]
    fn rejects_bad_heads() {
        let mut c = GptConfig::preset("tiny").unwrap();
        c.n_head = 3;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("divisible by n_head"), "{e}");
        c.n_head = 0;
        assert!(c.validate().is_err());
    }
}
