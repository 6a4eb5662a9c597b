//! A data-parallel rank's forward and backward on a GPU (`device = "cuda"` with
//! several ranks), at every ZeRO stage.
//!
//! The GPU is the rank's gradient engine and nothing more: each step uploads the
//! whole-layout parameters (held by the rank at stages 0 to 2, all-gathered part by
//! part at stage 3), runs every micro-batch's forward and backward on
//! [`shoal_models::gpu::GpuGpt`], and copies the accumulated gradients back to the
//! host (the rank's gradient buffer at stages 0 and 1, a buffer for the step whose
//! buckets are reduce-scattered at 2 and 3). From there the step is the CPU rank's: the
//! [`GradientReducer`](crate::reducer::GradientReducer) reduces the buckets over the
//! ring (in-process, or QUIC between hosts), the shard applies AdamW on the host, and
//! elasticity, checkpoints and the data accounting are unchanged. The optimizer on the
//! host is ZeRO-Offload's split; the collectives are staged through host memory (a
//! device-resident NCCL or CUDA IPC reduction is the faster path this does not take).
//!
//! Without the `cuda` feature [`GpuCompute`] is an empty type and a `cuda` device is
//! refused when the configuration is checked.

use crate::error::Result;

#[cfg(feature = "cuda")]
pub use on_gpu::GpuCompute;
#[cfg(feature = "cuda")]
pub(crate) use on_gpu::products_of;
#[cfg(not(feature = "cuda"))]
pub use without_cuda::GpuCompute;

/// The GPU ordinal of the `local`-th rank of this process when the run's device is
/// `cuda:first` and the host has `count` GPUs: ranks go round the GPUs from `first`,
/// so more ranks than GPUs share them.
pub(crate) fn ordinal_of(first: usize, local: usize, count: usize) -> usize {
    (first + local) % count.max(1)
}

/// Forms the device communicators of `ranks` (all `world` ranks of the ring, each
/// on a GPU) over a second in-process ring, one thread per rank since forming is
/// collective.
pub(crate) fn attach_device_collectives(
    ranks: &mut [super::RankArgs],
    world: usize,
    backend: shoal_collectives::DeviceBackend,
) -> Result<()> {
    let invalid = |reason: String| crate::error::TrainError::InvalidConfig {
        field: "gpu_collectives",
        reason,
    };
    if ranks.len() != world {
        return Err(invalid(format!(
            "is `{backend}`, which needs every rank in one process, but this node has {} of \
             the ring's {world} ranks; use `host`",
            ranks.len()
        )));
    }
    let timeout = crate::trainer::TRAIN_COMM_TIMEOUT;
    let config = shoal_collectives::CommConfig {
        timeout,
        ..Default::default()
    };
    let hosts = shoal_collectives::LocalHub::new().group(world, config)?;
    let mut gpus = Vec::with_capacity(world);
    for args in ranks.iter_mut() {
        match args.gpu.as_mut() {
            Some(gpu) => gpus.push(gpu),
            None => {
                return Err(invalid(format!(
                    "is `{backend}`, which needs every rank computing on a GPU"
                )));
            }
        }
    }
    std::thread::scope(|s| {
        let joins: Vec<_> = gpus
            .into_iter()
            .zip(hosts)
            .map(|(gpu, host)| s.spawn(move || gpu.attach(host, backend, timeout)))
            .collect();
        joins.into_iter().try_for_each(|j| {
            j.join().map_err(|_| crate::error::TrainError::Actor {
                actor: "Node",
                reason: "a rank's device communicator panicked while forming".into(),
            })?
        })
    })
}

/// What a GPU rank's step reports.
pub struct GpuBackward {
    /// The sum over micro-batches of each one's mean loss on this rank's rows.
    pub loss_sum: f64,
}

#[cfg(feature = "cuda")]
mod on_gpu {
    use std::sync::Arc;

    use shoal_collectives::{
        Communicator, DeviceBackend, DeviceCollectiveError, DeviceCommunicator, DeviceConfig,
        ReduceOp,
    };
    use shoal_kernels::cuda::{CudaError, Gpu, Products};
    use shoal_models::gpu::{GpuGpt, GpuModelError};
    use shoal_models::{GptConfig, Precision, RecomputePlan};

    use super::{GpuBackward, Result};
    use crate::error::TrainError;
    use crate::node::GpuRanks;

    /// One rank's GPU and its model there (parameters, gradients, activations for
    /// `rows` × `t`).
    pub struct GpuCompute {
        ordinal: usize,
        gpu: Arc<Gpu>,
        model: GpuGpt,
        rows: usize,
        t: usize,
        /// Reduces the gradient on the device before it leaves the GPU (see
        /// [`GpuCompute::attach`]).
        reduce: Option<DeviceCommunicator>,
    }

    impl GpuCompute {
        /// Opens GPU `ordinal` with the products and storage `how` names (fp32
        /// when `None`) and allocates the model for micro-batches of `rows` × `t`
        /// there, with `params` as its first parameters.
        pub fn open(
            ordinal: usize,
            how: Option<&GpuRanks>,
            config: &GptConfig,
            params: &[f32],
            rows: usize,
            t: usize,
        ) -> Result<Self> {
            let err = |e: GpuModelError| gpu_error(ordinal, e);
            let gpu = Gpu::new(ordinal).map_err(|e| err(e.into()))?;
            let (matmul, precision) = how.map_or(("fp32", Precision::Fp32), |g| {
                (g.matmul.as_str(), g.precision)
            });
            gpu.set_products(products_of(matmul))
                .map_err(|e| err(e.into()))?;
            let (cfg, p) = (config.clone(), params);
            let mut model =
                GpuGpt::with_precision(&gpu, cfg, p, rows, t, precision).map_err(err)?;
            // The rank's optimizer runs on the host.
            model.release_moments();
            Ok(Self {
                ordinal,
                gpu: Arc::new(gpu),
                model,
                rows,
                t,
                reduce: None,
            })
        }

        /// Forms this rank's device communicator over `host` (a ring of its own,
        /// whose ranks are the same as the rank's training ring) with `backend`; from
        /// then on each step's gradient is all-reduced (summed) on the devices before
        /// it comes back to the host, and the rank hands it to its shard as reduced.
        /// Collective: every rank of the ring attaches, at the same time.
        pub fn attach(
            &mut self,
            host: Communicator,
            backend: DeviceBackend,
            timeout: std::time::Duration,
        ) -> Result<()> {
            let config = DeviceConfig {
                backend,
                timeout,
                ..DeviceConfig::default()
            };
            let comm = DeviceCommunicator::new(host, self.gpu.clone(), config)
                .map_err(|e| collective_error(self.ordinal, e))?;
            self.reduce = Some(comm);
            Ok(())
        }

        /// Lays the device activations out by `plan` (`none` or `full` per layer:
        /// [`GpuGpt::set_recompute`]).
        pub fn set_recompute(&mut self, plan: &RecomputePlan) -> Result<()> {
            self.bind()?;
            let ordinal = self.ordinal;
            self.model
                .set_recompute(&self.gpu, plan)
                .map_err(|e| gpu_error(ordinal, e))
        }

        /// Makes the GPU's context the current one on this thread (the blocking
        /// pool runs each step on whichever thread is free).
        fn bind(&self) -> Result<()> {
            self.gpu
                .stream()
                .context()
                .bind_to_thread()
                .map_err(|e| gpu_error(self.ordinal, CudaError::from(e).into()))
        }

        /// Whether the gradient is reduced on the devices ([`GpuCompute::attach`]).
        pub fn reduces_on_device(&self) -> bool {
            self.reduce.is_some()
        }

        /// The number of GPUs the driver sees (an error when there is no driver).
        pub fn device_count() -> Result<usize> {
            shoal_kernels::cuda::device_count().map_err(|e| gpu_error(0, e.into()))
        }

        /// Forward and backward of the `accum` micro-batches in `tokens`/`targets`
        /// (each `rows` × `t`, one after another) with `params`, each backward scaled
        /// by `scale`; the accumulated gradients (summed over the ranks when
        /// [`GpuCompute::reduces_on_device`]) are written over `grads`.
        /// `check` vets each micro-batch's loss (the trainer's non-finite check).
        #[allow(clippy::too_many_arguments)]
        pub fn forward_backward(
            &mut self,
            params: &[f32],
            grads: &mut [f32],
            tokens: &[u32],
            targets: &[u32],
            accum: usize,
            scale: f32,
            mut check: impl FnMut(f32) -> Result<f32>,
        ) -> Result<GpuBackward> {
            self.bind()?;
            let ordinal = self.ordinal;
            let err = |e: GpuModelError| gpu_error(ordinal, e);
            let dev = &mut self.model;
            dev.set_params(&self.gpu, params).map_err(err)?;
            dev.zero_grads(&self.gpu).map_err(err)?;
            let per_micro = self.rows * self.t;
            let mut loss_sum = 0.0f64;
            for micro in 0..accum {
                let span = micro * per_micro..(micro + 1) * per_micro;
                let (x, y) = (&tokens[span.clone()], &targets[span]);
                let loss = dev.forward(&self.gpu, x, y).map_err(err)?;
                loss_sum += f64::from(check(loss)?);
                dev.backward(&self.gpu, scale).map_err(err)?;
            }
            if let Some(comm) = self.reduce.as_mut() {
                comm.all_reduce(dev.grads_mut(), ReduceOp::Sum)
                    .map_err(|e| collective_error(ordinal, e))?;
            }
            dev.grads_into(&self.gpu, grads).map_err(err)?;
            Ok(GpuBackward { loss_sum })
        }
    }

    /// The products a validated `gpu_matmul` names.
    pub(crate) fn products_of(matmul: &str) -> Products {
        match matmul {
            "tf32" => Products::Tf32,
            "bf16" => Products::Bf16,
            _ => Products::Fp32,
        }
    }

    fn collective_error(ordinal: usize, source: DeviceCollectiveError) -> TrainError {
        TrainError::DeviceCollective {
            device: format!("cuda:{ordinal}"),
            source,
        }
    }

    fn gpu_error(ordinal: usize, source: GpuModelError) -> TrainError {
        TrainError::Gpu {
            device: format!("cuda:{ordinal}"),
            source,
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod without_cuda {
    use shoal_models::GptConfig;

    use super::{GpuBackward, Result};
    use crate::config::built_without_cuda;

    /// No GPU in a build without the `cuda` feature: this type has no values.
    pub enum GpuCompute {}

    impl GpuCompute {
        /// The error saying how to build with CUDA.
        pub fn open(
            ordinal: usize,
            _how: Option<&crate::node::GpuRanks>,
            _config: &GptConfig,
            _params: &[f32],
            _rows: usize,
            _t: usize,
        ) -> Result<Self> {
            Err(built_without_cuda(&format!("cuda:{ordinal}")))
        }

        /// The error saying how to build with CUDA.
        pub fn device_count() -> Result<usize> {
            Err(built_without_cuda("cuda"))
        }

        /// Never called: there is no value to call it on.
        pub fn attach(
            &mut self,
            _host: shoal_collectives::Communicator,
            _backend: shoal_collectives::DeviceBackend,
            _timeout: std::time::Duration,
        ) -> Result<()> {
            match *self {}
        }

        /// Never called: there is no value to call it on.
        pub fn reduces_on_device(&self) -> bool {
            match *self {}
        }

        /// Never called: there is no value to call it on.
        pub fn set_recompute(&mut self, _plan: &shoal_models::RecomputePlan) -> Result<()> {
            match *self {}
        }

        /// Never called: there is no value to call it on.
        #[allow(clippy::too_many_arguments)]
        pub fn forward_backward(
            &mut self,
            _params: &[f32],
            _grads: &mut [f32],
            _tokens: &[u32],
            _targets: &[u32],
            _accum: usize,
            _scale: f32,
            _check: impl FnMut(f32) -> Result<f32>,
        ) -> Result<GpuBackward> {
            match *self {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ordinal_of;

    #[test]
    fn ranks_go_round_the_gpus_from_the_first() {
        assert_eq!(
            (0..5).map(|i| ordinal_of(0, i, 2)).collect::<Vec<_>>(),
            [0, 1, 0, 1, 0]
        );
        assert_eq!(
            (0..4).map(|i| ordinal_of(2, i, 4)).collect::<Vec<_>>(),
            [2, 3, 0, 1]
        );
        assert_eq!(ordinal_of(0, 3, 0), 0);
    }
}
