//! Parameter initialization as GPT-2 does it.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::Gpt;

impl Gpt {
    /// Fresh parameters, deterministic in `seed`: matrices and embeddings ~ N(0, 0.02), the
    /// two residual projections of each block scaled by 1/sqrt(2L) (GPT-2 paper), LayerNorm
    /// weights 1, biases 0.
    pub fn init_params(&self, seed: u64) -> Vec<f32> {
        let mut params = vec![0.0f32; self.layout.len()];
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let residual_scale = 1.0 / (2.0 * self.config.n_layer as f32).sqrt();
        for t in self.layout.tensors() {
            let dst = &mut params[t.range()];
            if t.name.contains("ln_") && t.name.ends_with(".weight") {
                dst.fill(1.0);
            } else if t.shape.len() >= 2 {
                let std = if t.name.ends_with("c_proj.weight") {
                    0.02 * residual_scale
                } else {
                    0.02
                };
                let normal = Normal::new(0.0f32, std).expect("positive std");
                dst.iter_mut().for_each(|x| *x = normal.sample(&mut rng));
            }
        }
        params
    }
}

#[cfg(test)]
mod tests {
    use crate::{Gpt, GptConfig};

    #[test]
    fn init_is_deterministic_and_shaped() {
        let gpt = Gpt::new(GptConfig::preset("tiny").unwrap()).unwrap();
        let a = gpt.init_params(1);
        assert_eq!(a, gpt.init_params(1));
        assert_ne!(a, gpt.init_params(2));
        let ln = gpt.layout.get("h.0.ln_1.weight").unwrap();
        assert!(a[ln.range()].iter().all(|&x| x == 1.0));
        let wte = gpt.layout.get("wte.weight").unwrap();
        let w = &a[wte.range()];
        let std = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
        assert!((std - 0.02).abs() < 0.002, "{std}");
    }
}
