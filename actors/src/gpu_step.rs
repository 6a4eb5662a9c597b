//! The single-rank trainer's step on one GPU (`device = "cuda"`), the GPU twin of
//! [`crate::step::train_step`].
//!
//! The parameters (and the AdamW moments of a resumed run) go to the device at the
//! first step and stay there: each step runs every micro-batch's forward and
//! backward, the global-norm clip and AdamW on [`shoal_models::gpu::GpuGpt`]. The
//! host [`TrainState`] keeps the step count; its parameters and moments are brought
//! up to date by [`GpuStep::download`] only when the trainer evaluates, samples or
//! writes a checkpoint, so checkpoints keep the normal format and resume on CPU or
//! GPU.
//!
//! Without the `cuda` feature [`GpuStep`] is an empty type and asking for a GPU is
//! a configuration error naming the build flag.

use shoal_models::Gpt;

use crate::config::TrainConfig;
use crate::error::Result;
use crate::step::{StepHyper, StepOutcome, TrainState};

#[cfg(feature = "cuda")]
pub(crate) use on_gpu::GpuStep;
#[cfg(not(feature = "cuda"))]
pub(crate) use without_cuda::GpuStep;

#[cfg(feature = "cuda")]
mod on_gpu {
    use shoal_kernels::cuda::Gpu;
    use shoal_models::gpu::{GpuAttention, GpuGpt, GpuModelError};
    use shoal_models::{Precision, Recompute, RecomputePlan};

    use super::*;
    use crate::config::Device;
    use crate::error::TrainError;
    use crate::recompute::RecomputeSettings;

    /// One GPU and, from the first step on, the model's state on it.
    pub(crate) struct GpuStep {
        ordinal: usize,
        gpu: Gpu,
        /// Micro-batch shape (B, T) of the device activations.
        b: usize,
        t: usize,
        /// Storage of the device model.
        precision: Precision,
        /// Recomputation of every layer (`none` or `full`).
        recompute: Recompute,
        /// How attention runs.
        attention: GpuAttention,
        /// `None` until the first step uploads the host state.
        model: Option<GpuGpt>,
        /// Whether the device holds steps the host state has not seen.
        host_stale: bool,
    }

    impl GpuStep {
        /// Opens the GPU `config.device` names (`None` for the CPU); fails with the
        /// GPU code's typed error on a machine without a driver or device.
        pub(crate) fn open(config: &TrainConfig) -> Result<Option<Self>> {
            let Device::Cuda(ordinal) = config.device()? else {
                return Ok(None);
            };
            let gpu = Gpu::new(ordinal).map_err(|e| gpu_error(ordinal, e.into()))?;
            gpu.set_products(crate::rank::products_of(&config.gpu_matmul))
                .map_err(|e| gpu_error(ordinal, e.into()))?;
            Ok(Some(Self {
                ordinal,
                gpu,
                b: config.batch_size,
                t: config.seq_len,
                precision: config.gpu_precision()?,
                recompute: RecomputeSettings::from_config(config)?.on_gpu()?,
                attention: config.gpu_attention()?,
                model: None,
                host_stale: false,
            }))
        }

        /// One optimizer step with the semantics of [`crate::step::train_step`]:
        /// gradients accumulated over `hp.grad_accum` micro-batches (each backward
        /// scaled by `1 / grad_accum`), clipped by the global norm, AdamW at the
        /// 1-based step `state.step + 1`.
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn train_step(
            &mut self,
            model: &Gpt,
            state: &mut TrainState,
            hp: &StepHyper,
            tokens: &mut [u32],
            targets: &mut [u32],
            mut fill: impl FnMut(usize, &mut [u32], &mut [u32]) -> Result<()>,
        ) -> Result<StepOutcome> {
            let ordinal = self.ordinal;
            let err = |e: GpuModelError| gpu_error(ordinal, e);
            let gpu = &self.gpu;
            let dev = match self.model.take() {
                Some(dev) => dev,
                None => {
                    let mut dev =
                        upload(gpu, model, state, (self.b, self.t), self.precision).map_err(err)?;
                    let plan = RecomputePlan::uniform(model.config.n_layer, self.recompute);
                    dev.set_recompute(gpu, &plan).map_err(err)?;
                    dev.set_attention(gpu, self.attention).map_err(err)?;
                    dev
                }
            };
            let dev = self.model.insert(dev);
            let accum = hp.grad_accum.max(1);
            dev.zero_grads(gpu).map_err(err)?;
            let mut loss_sum = 0.0f64;
            for micro in 0..accum {
                fill(micro, tokens, targets)?;
                let loss = dev.forward(gpu, tokens, targets).map_err(err)?;
                if !loss.is_finite() {
                    return Err(TrainError::NonFiniteLoss {
                        step: state.step + 1,
                        loss,
                    });
                }
                dev.backward(gpu, 1.0 / accum as f32).map_err(err)?;
                loss_sum += f64::from(loss);
            }
            gpu.synchronize().map_err(|e| err(e.into()))?;
            let optimizer_start = std::time::Instant::now();
            let grad_norm = dev
                .step(
                    gpu,
                    &hp.adamw(),
                    state.step + 1 + hp.moment_steps,
                    hp.grad_clip,
                )
                .map_err(err)?;
            gpu.synchronize().map_err(|e| err(e.into()))?;
            state.step += 1;
            self.host_stale = true;
            Ok(StepOutcome {
                loss: (loss_sum / accum as f64) as f32,
                grad_norm,
                optimizer_seconds: optimizer_start.elapsed().as_secs_f64(),
            })
        }

        /// Copies the device's parameters and AdamW moments into `state` if steps
        /// ran since the last copy.
        pub(crate) fn download(&mut self, state: &mut TrainState) -> Result<()> {
            let (Some(dev), true) = (&self.model, self.host_stale) else {
                return Ok(());
            };
            let err = |e: GpuModelError| gpu_error(self.ordinal, e);
            state.params = dev.params(&self.gpu).map_err(err)?;
            (state.adam_m, state.adam_v) = dev.moments(&self.gpu).map_err(err)?;
            self.host_stale = false;
            Ok(())
        }
    }

    /// The host state on the device: parameters, and the moments if it has any
    /// (a resumed run); gradients and activations for micro-batches of `[b, t]`.
    fn upload(
        gpu: &Gpu,
        model: &Gpt,
        state: &TrainState,
        (b, t): (usize, usize),
        precision: Precision,
    ) -> Result<GpuGpt, GpuModelError> {
        let (cfg, p) = (model.config.clone(), &state.params);
        let mut dev = GpuGpt::with_precision(gpu, cfg, p, b, t, precision)?;
        if !state.adam_m.is_empty() || !state.adam_v.is_empty() {
            dev.set_moments(gpu, &state.adam_m, &state.adam_v)?;
        }
        Ok(dev)
    }

    fn gpu_error(ordinal: usize, source: GpuModelError) -> TrainError {
        TrainError::Gpu {
            device: Device::Cuda(ordinal).to_string(),
            source,
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod without_cuda {
    use super::*;
    use crate::config::{Device, built_without_cuda};

    /// No GPU in a build without the `cuda` feature: this type has no values.
    pub(crate) enum GpuStep {}

    impl GpuStep {
        /// `None` for the CPU; for a GPU, the error saying how to build with CUDA.
        pub(crate) fn open(config: &TrainConfig) -> Result<Option<Self>> {
            match config.device()? {
                Device::Cpu => Ok(None),
                Device::Cuda(_) => Err(built_without_cuda(&config.device)),
            }
        }

        /// Never called: there is no value to call it on.
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn train_step(
            &mut self,
            _model: &Gpt,
            _state: &mut TrainState,
            _hp: &StepHyper,
            _tokens: &mut [u32],
            _targets: &mut [u32],
            _fill: impl FnMut(usize, &mut [u32], &mut [u32]) -> Result<()>,
        ) -> Result<StepOutcome> {
            match *self {}
        }

        /// Never called: there is no value to call it on.
        pub(crate) fn download(&mut self, _state: &mut TrainState) -> Result<()> {
            match *self {}
        }
    }
}

#[cfg(all(test, feature = "cuda"))]
mod tests {
    use std::path::Path;

    use crate::config::TrainConfig;
    use crate::trainer::Trainer;

    /// Relative tolerance of the GPU losses and norms against the CPU's.
    const TOL: f32 = 1e-4;

    /// The trainer tests' small configuration on `device`.
    fn tiny(out_dir: &Path, device: &str) -> TrainConfig {
        TrainConfig {
            device: device.into(),
            ..crate::trainer::tests::small_config(out_dir)
        }
    }

    fn close(what: &str, gpu: f32, cpu: f32) {
        let rel = (gpu - cpu).abs() / cpu.abs().max(1e-6);
        assert!(rel <= TOL, "{what}: GPU {gpu} vs CPU {cpu} (rel {rel:.2e})");
    }

    /// The largest difference relative to the largest magnitude of `cpu`.
    fn rel_max(gpu: &[f32], cpu: &[f32]) -> f32 {
        assert_eq!(gpu.len(), cpu.len());
        let scale = cpu.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
        let diff = gpu
            .iter()
            .zip(cpu)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        diff / scale
    }

    #[test]
    fn gpu_trainer_steps_match_the_cpu_trainer_and_resume_on_either() {
        if let Err(e) = shoal_kernels::cuda::Gpu::new(0) {
            eprintln!("skipped: no usable GPU here ({e})");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut cpu = Trainer::new(tiny(tmp.path(), "cpu")).unwrap();
        let mut gpu = Trainer::new(tiny(tmp.path(), "cuda")).unwrap();
        for _ in 0..3 {
            let (c, g) = (cpu.step().unwrap(), gpu.step().unwrap());
            assert_eq!((g.step, g.lr, g.tokens), (c.step, c.lr, c.tokens));
            close(&format!("step {} loss", c.step), g.loss, c.loss);
            close(
                &format!("step {} grad norm", c.step),
                g.grad_norm,
                c.grad_norm,
            );
        }
        gpu.sync_device().unwrap();
        let (c, g) = (cpu.state(), gpu.state());
        assert_eq!(g.step, 3);
        let params = rel_max(&g.params, &c.params);
        assert!(params <= TOL, "parameters differ by {params:.2e}");
        let m = rel_max(&g.adam_m, &c.adam_m);
        assert!(m <= 1e-3, "first moments differ by {m:.2e}");

        // The GPU run's checkpoint resumes on the CPU and on the GPU alike.
        let dir = tmp.path().join("ckpt");
        gpu.checkpoint().save(&dir).unwrap();
        let mut on_cpu = Trainer::resume_with(&dir, tiny(tmp.path(), "cpu")).unwrap();
        let mut on_gpu = Trainer::resume_with(&dir, tiny(tmp.path(), "cuda")).unwrap();
        let (a, b) = (on_cpu.step().unwrap(), on_gpu.step().unwrap());
        assert_eq!((a.step, b.step), (4, 4));
        close("resumed step 4 loss", b.loss, a.loss);
        close("resumed step 4 grad norm", b.grad_norm, a.grad_norm);
        let next = gpu.step().unwrap();
        close("uninterrupted step 4 loss", next.loss, b.loss);
    }
}
