//! Group DRO over the domains of a mixture: DoReMi's proxy training (Xie et al. 2023,
//! Algorithm 1).
//!
//! Each step draws the batch from the run's (baseline) mixture as usual. A fixed reference
//! model scores the same batch; a domain's excess loss is the proxy's per-token loss minus
//! the reference's, clipped at zero, averaged over that domain's tokens in the batch. The
//! domain weights take one exponentiated-gradient ascent step on the excess losses and are
//! smoothed toward uniform; the proxy then descends on the loss reweighted by them (every
//! domain's mean token loss times its weight). The weights averaged over all steps are
//! DoReMi's result.

use shoal_models::{Activations, Gpt, GptConfig};

use super::Trainer;
use crate::error::{Result, TrainError};
use crate::metrics::StepStats;
use crate::step::optimizer_update;

/// The state of a Group DRO run: the reference model and the domain weights.
pub struct GroupDro {
    reference: Gpt,
    reference_params: Vec<f32>,
    reference_acts: Activations,
    /// The proxy's activations, made at the first step (when its shape is known).
    acts: Option<Activations>,
    step_size: f64,
    smoothing: f64,
    weights: Vec<f64>,
    weight_sums: Vec<f64>,
    steps: u64,
}

/// What one Group DRO step saw, per domain in mixture order (`None`: no sequence of the
/// domain was in the batch).
#[derive(Clone, Debug, PartialEq)]
pub struct DroStep {
    /// The step as a plain training step; its loss is the unweighted mean.
    pub stats: StepStats,
    /// Domain weights used for this step's update.
    pub weights: Vec<f64>,
    /// Clipped excess loss per token.
    pub excess: Vec<Option<f64>>,
    /// The proxy's mean token loss.
    pub proxy_loss: Vec<Option<f64>>,
    /// The reference's mean token loss.
    pub reference_loss: Vec<Option<f64>>,
}

impl GroupDro {
    /// Group DRO over `domains` domains against a reference model, for micro-batches of
    /// `batch` sequences of `seq_len` tokens. `step_size` is the exponentiated-gradient step
    /// (η, 1 in the paper); `smoothing` the share of uniform mixed into the weights (c,
    /// 1e-3 in the paper). The weights start uniform.
    pub fn new(
        reference: GptConfig,
        reference_params: Vec<f32>,
        domains: usize,
        batch: usize,
        seq_len: usize,
        step_size: f64,
        smoothing: f64,
    ) -> Result<Self> {
        let invalid = |field, reason: String| TrainError::InvalidConfig { field, reason };
        if domains == 0 {
            return Err(invalid(
                "data",
                "Group DRO needs at least one domain".into(),
            ));
        }
        if !(step_size.is_finite() && step_size > 0.0) {
            return Err(invalid(
                "step_size",
                format!("must be positive, got {step_size}"),
            ));
        }
        if !(0.0..=1.0).contains(&smoothing) {
            return Err(invalid(
                "smoothing",
                format!("must be in [0, 1], got {smoothing}"),
            ));
        }
        let reference = Gpt::new(reference)?;
        if reference_params.len() != reference.num_params() {
            return Err(invalid(
                "reference",
                format!(
                    "holds {} parameters; its architecture needs {}",
                    reference_params.len(),
                    reference.num_params()
                ),
            ));
        }
        let reference_acts = Activations::new(&reference.config, batch, seq_len)?;
        Ok(Self {
            reference,
            reference_params,
            reference_acts,
            acts: None,
            step_size,
            smoothing,
            weights: vec![1.0 / domains as f64; domains],
            weight_sums: vec![0.0; domains],
            steps: 0,
        })
    }

    /// The current domain weights.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// The weights averaged over the steps taken so far (DoReMi's output); uniform before
    /// the first step.
    pub fn average(&self) -> Vec<f64> {
        if self.steps == 0 {
            return self.weights.clone();
        }
        let n = self.steps as f64;
        self.weight_sums.iter().map(|s| s / n).collect()
    }
}

/// One exponentiated-gradient ascent step on the domain weights, then smoothing toward
/// uniform: `α' ∝ α · exp(η · excess)`, `α = (1 − c) · α' + c / k`. Computed in log space.
pub fn update_weights(weights: &[f64], excess: &[f64], step_size: f64, smoothing: f64) -> Vec<f64> {
    let logits: Vec<f64> = weights
        .iter()
        .zip(excess)
        .map(|(&w, &e)| w.max(f64::MIN_POSITIVE).ln() + step_size * e)
        .collect();
    let top = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = logits.iter().map(|l| (l - top).exp()).collect();
    let sum: f64 = exp.iter().sum();
    let k = weights.len() as f64;
    exp.iter()
        .map(|e| (1.0 - smoothing) * e / sum + smoothing / k)
        .collect()
}

/// The loss weight of each sequence so that the weighted batch mean equals the sum over
/// domains of `weight · (mean token loss of the domain's sequences)`: a sequence of domain
/// `d` weighs `weights[d] · B / n_d`, where `n_d` of the batch's `B` sequences are of `d`.
pub fn sequence_weights(weights: &[f64], domains: &[usize]) -> Vec<f32> {
    let mut counts = vec![0usize; weights.len()];
    for &d in domains {
        counts[d] += 1;
    }
    let b = domains.len() as f64;
    domains
        .iter()
        .map(|&d| (weights[d] * b / counts[d] as f64) as f32)
        .collect()
}

/// Per-domain means of `values` (one per token, `t` tokens per sequence) over the sequences
/// of each domain; `None` for a domain with no sequence.
fn domain_means(values: &[f64], domains: &[usize], k: usize, t: usize) -> Vec<Option<f64>> {
    let mut sums = vec![(0.0f64, 0usize); k];
    for (seq, &d) in domains.iter().enumerate() {
        sums[d].0 += values[seq * t..(seq + 1) * t].iter().sum::<f64>();
        sums[d].1 += t;
    }
    sums.into_iter()
        .map(|(s, n)| (n > 0).then(|| s / n as f64))
        .collect()
}

impl Trainer {
    /// Takes one Group DRO step (see the module doc): the same batch as [`Trainer::step`]
    /// would draw, the update reweighted by the domain weights `dro` keeps. CPU, one rank and
    /// no gradient accumulation only.
    pub fn group_dro_step(&mut self, dro: &mut GroupDro) -> Result<DroStep> {
        let c = &self.config;
        let unsupported = |reason: &str| TrainError::InvalidConfig {
            field: "doremi",
            reason: format!("the proxy run {reason}"),
        };
        if self.gpu.is_some() || self.comm.is_some() || c.ranks > 1 {
            return Err(unsupported("runs on one CPU rank only"));
        }
        if c.grad_accum != 1 {
            return Err(unsupported(
                "takes no gradient accumulation (grad_accum = 1)",
            ));
        }
        let k = self.data.mixture.domains.len();
        if dro.weights.len() != k {
            return Err(unsupported(
                "has a different number of domains than its weights",
            ));
        }
        let start = std::time::Instant::now();
        let (b, t, seed) = (c.batch_size, c.seq_len, c.seed);
        let acts = match dro.acts.take() {
            Some(a) if a.batch() == b && a.seq_len() == t => a,
            _ => {
                dro.reference_acts = Activations::new(&dro.reference.config, b, t)?;
                Activations::new(&self.model.config, b, t)?
            }
        };
        let acts = dro.acts.insert(acts);
        let step = self.state.step;
        let hp = self.hyper(step);
        let first = step * b as u64;
        let mut domains = Vec::with_capacity(b);
        for (i, (x, y)) in self
            .tokens
            .chunks_mut(t)
            .zip(self.targets.chunks_mut(t))
            .enumerate()
        {
            domains.push(self.data.mixture.sample(seed, first + i as u64, t, x, y)?);
        }
        let (model, state, spans) = (&self.model, &mut self.state, &self.spans);
        let (tokens, targets) = (&self.tokens, &self.targets);
        let out = self.compute.install(|| -> Result<_> {
            dro.reference.forward(
                &dro.reference_params,
                &mut dro.reference_acts,
                tokens,
                Some(targets),
            )?;
            acts.set_sequence_weights(None)?;
            let loss = model
                .forward(&state.params, acts, tokens, Some(targets))?
                .unwrap_or(f32::NAN);
            if !loss.is_finite() {
                return Err(TrainError::NonFiniteLoss {
                    step: step + 1,
                    loss,
                });
            }
            let proxy: Vec<f64> = acts.losses().iter().map(|&x| f64::from(x)).collect();
            let reference: Vec<f64> = dro
                .reference_acts
                .losses()
                .iter()
                .map(|&x| f64::from(x))
                .collect();
            let clipped: Vec<f64> = proxy
                .iter()
                .zip(&reference)
                .map(|(p, r)| (p - r).max(0.0))
                .collect();
            let excess = domain_means(&clipped, &domains, k, t);
            let flat: Vec<f64> = excess.iter().map(|e| e.unwrap_or(0.0)).collect();
            dro.weights = update_weights(&dro.weights, &flat, dro.step_size, dro.smoothing);
            acts.set_sequence_weights(Some(&sequence_weights(&dro.weights, &domains)))?;
            state.grads.fill(0.0);
            model.backward(&state.params, acts, &mut state.grads, 1.0)?;
            let grad_norm = optimizer_update(state, spans, &hp)?;
            Ok(DroStep {
                stats: StepStats {
                    step: state.step,
                    loss,
                    lr: hp.lr,
                    grad_norm,
                    tokens: (b * t) as u64,
                    seconds: 0.0,
                },
                weights: dro.weights.clone(),
                excess,
                proxy_loss: domain_means(&proxy, &domains, k, t),
                reference_loss: domain_means(&reference, &domains, k, t),
            })
        })?;
        for (sum, w) in dro.weight_sums.iter_mut().zip(&dro.weights) {
            *sum += w;
        }
        dro.steps += 1;
        self.tokens_seen += out.stats.tokens;
        Ok(DroStep {
            stats: StepStats {
                seconds: start.elapsed().as_secs_f64(),
                ..out.stats
            },
            ..out
        })
    }

    /// Runs the proxy to `max_steps` with [`Trainer::group_dro_step`], evaluating and
    /// checkpointing like [`Trainer::run`]; `on_step` sees every step.
    pub fn run_group_dro(
        &mut self,
        dro: &mut GroupDro,
        observer: &mut dyn super::TrainObserver,
        on_step: &mut dyn FnMut(&DroStep) -> Result<()>,
    ) -> Result<super::RunSummary> {
        self.run_loop(
            observer,
            &mut |trainer| {
                let s = trainer.group_dro_step(dro)?;
                on_step(&s)?;
                Ok(s.stats)
            },
            &mut |trainer, store| store.save(&trainer.checkpoint()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_rise_with_excess_and_stay_smoothed() {
        let w = update_weights(&[0.25; 4], &[0.0; 4], 1.0, 1e-3);
        assert!(w.iter().all(|x| (x - 0.25).abs() < 1e-12), "{w:?}");
        // exp(1·[1, 0]) normalized, then 1e-3 of uniform mixed in.
        let w = update_weights(&[0.5, 0.5], &[1.0, 0.0], 1.0, 1e-3);
        let e = std::f64::consts::E;
        let want = 0.999 * e / (e + 1.0) + 0.0005;
        assert!((w[0] - want).abs() < 1e-12, "{w:?}");
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // A domain with no excess for long decays to the smoothing floor, never below.
        let mut w = vec![0.5, 0.5];
        for _ in 0..10_000 {
            w = update_weights(&w, &[5.0, 0.0], 1.0, 1e-3);
        }
        assert!(w[1] >= 0.0005 && w[1] < 0.0006, "{w:?}");
        // Huge excess does not overflow.
        let w = update_weights(&[0.5, 0.5], &[1e6, 0.0], 1.0, 0.0);
        assert_eq!(w, vec![1.0, 0.0]);
    }

    #[test]
    fn sequence_weights_make_a_weighted_sum_of_domain_means() {
        // Domains of a batch of 4: 0, 1, 1, 2 (domain 3 absent).
        let alpha = [0.1, 0.2, 0.3, 0.4];
        let w = sequence_weights(&alpha, &[0, 1, 1, 2]);
        assert_eq!(w, vec![0.4, 0.4, 0.4, 1.2]);
        // Batch mean of w · per-sequence loss = Σ α_d · mean loss of domain d.
        let losses = [1.0f32, 2.0, 4.0, 8.0];
        let weighted: f32 = w.iter().zip(&losses).map(|(a, b)| a * b).sum::<f32>() / 4.0;
        let want = 0.1 * 1.0 + 0.2 * 3.0 + 0.3 * 8.0;
        assert!((weighted - want as f32).abs() < 1e-6);
    }

    #[test]
    fn domain_means_skip_absent_domains() {
        let values = [1.0, 3.0, 5.0, 7.0, 2.0, 2.0];
        let m = domain_means(&values, &[1, 0, 1], 3, 2);
        assert_eq!(m, vec![Some(6.0), Some(2.0), None]);
    }
}
