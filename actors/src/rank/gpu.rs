//! A data-parallel rank's forward and backward on a GPU (`device = "cuda"` with
//! several ranks), at every ZeRO stage.
//!
//! The GPU is the rank's gradient engine: each step uploads the whole-layout
//! parameters (held by the rank at stages 0 to 2, all-gathered part by part at
//! stage 3), runs every micro-batch's forward and backward on
//! [`shoal_models::gpu::GpuGpt`], and copies the accumulated gradients back to the
//! host (the rank's gradient buffer at stages 0 and 1, a buffer for the step at 2
//! and 3). From there the step is the CPU rank's: the
//! [`GradientReducer`](crate::reducer::GradientReducer) reduces the buckets over the
//! ring (in-process, or QUIC between hosts), the shard applies AdamW on the host, and
//! elasticity, checkpoints and the data accounting are unchanged: ZeRO-Offload's
//! split.
//!
//! With device collectives (`gpu_collectives = "nccl"` or `"ipc"`) the rank's ring
//! is a [`RankComm::Device`]: before the gradient leaves the GPU, the reducer
//! all-reduces it there (NCCL, or the CUDA IPC ring), in turn with its host
//! collectives, and the rank hands the reduced buckets straight to its shard.
//!
//! Without the `cuda` feature [`GpuCompute`] is an empty type and a `cuda` device is
//! refused when the configuration is checked.

use ractor::ActorRef;

use super::RankArgs;
use crate::error::{Result, TrainError};
#[cfg(feature = "cuda")]
use crate::reducer::RankComm;
use crate::reducer::ReducerMsg;

#[cfg(feature = "cuda")]
pub use on_gpu::GpuCompute;
#[cfg(feature = "cuda")]
pub(crate) use on_gpu::{products_of, with_device_collectives};
#[cfg(not(feature = "cuda"))]
pub use without_cuda::GpuCompute;
#[cfg(not(feature = "cuda"))]
pub(crate) use without_cuda::with_device_collectives;

/// The GPU ordinal of the `local`-th rank of this process when the run's device is
/// `cuda:first` and the host has `count` GPUs: ranks go round the GPUs from `first`,
/// so more ranks than GPUs share them.
pub(crate) fn ordinal_of(first: usize, local: usize, count: usize) -> usize {
    (first + local) % count.max(1)
}

/// What a GPU rank's step reports.
pub struct GpuBackward {
    /// The sum over micro-batches of each one's mean loss on this rank's rows.
    pub loss_sum: f64,
    /// Whether the gradient was summed over the ring on the devices already.
    pub reduced: bool,
}

/// The error of device collectives on ranks that cannot use them.
fn refuse(backend: shoal_collectives::DeviceBackend, why: &str) -> TrainError {
    TrainError::InvalidConfig {
        field: "gpu_collectives",
        reason: format!("is `{backend}`, {why}; use `host`"),
    }
}

#[cfg(feature = "cuda")]
mod on_gpu {
    use std::sync::Arc;

    use ractor::concurrency::oneshot;
    use shoal_collectives::{
        DeviceBackend, DeviceCollectiveError, DeviceCommunicator, DeviceConfig,
    };
    use shoal_kernels::cuda::{CudaError, Gpu, Products};
    use shoal_models::gpu::{GpuAttention, GpuGpt, GpuModelError};
    use shoal_models::{GptConfig, Precision, RecomputePlan};

    use super::*;
    use crate::node::GpuRanks;

    /// One rank's GPU and its model there (parameters, gradients, activations for
    /// `rows` × `t`).
    pub struct GpuCompute {
        ordinal: usize,
        gpu: Arc<Gpu>,
        model: GpuGpt,
        rows: usize,
        t: usize,
        /// Whether the rank's ring reduces the gradient on the devices.
        on_device: bool,
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
            if how.is_some_and(|g| g.gemm_attention) {
                model.set_attention(&gpu, GpuAttention::Gemm).map_err(err)?;
            }
            Ok(Self {
                ordinal,
                gpu: Arc::new(gpu),
                model,
                rows,
                t,
                on_device: false,
            })
        }

        /// The number of GPUs the driver sees (an error when there is no driver).
        pub fn device_count() -> Result<usize> {
            shoal_kernels::cuda::device_count().map_err(|e| gpu_error(0, e.into()))
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
            bind(&self.gpu, self.ordinal)
        }

        /// Forward and backward of the `accum` micro-batches in `tokens`/`targets`
        /// (each `rows` × `t`, one after another) with `params`, each backward scaled
        /// by `scale`; the accumulated gradients are written over `grads`, summed
        /// over the ring first when the rank's ring reduces on the devices (through
        /// `reducer`, which owns it). `check` vets each micro-batch's loss.
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
            reducer: &ActorRef<ReducerMsg>,
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
            if self.on_device {
                // The reducer owns the device communicator: lend it the buffer.
                self.gpu.synchronize().map_err(|e| err(e.into()))?;
                let buf = dev.take_grads().map_err(err)?;
                let (tx, rx) = oneshot();
                let msg = ReducerMsg::DeviceAllReduce {
                    buf,
                    reply: tx.into(),
                };
                let gone = || TrainError::Actor {
                    actor: "GradientReducer",
                    reason: "stopped during a device all-reduce".into(),
                };
                reducer.cast(msg).map_err(|_| gone())?;
                let reduced = rx.blocking_recv().map_err(|_| gone())?;
                let buf = reduced.map_err(|e| collective_error(ordinal, e))?;
                bind(&self.gpu, ordinal)?;
                dev.put_grads(buf).map_err(err)?;
            }
            dev.grads_into(&self.gpu, grads).map_err(err)?;
            Ok(GpuBackward {
                loss_sum,
                reduced: self.on_device,
            })
        }
    }

    /// Gives every rank of `ranks` (this process's ranks of one ring, each on a
    /// GPU) a device communicator over its ring with `backend`, formed from the
    /// ring's host communicator (which it keeps for the host ops). Forming is
    /// collective, so it runs one thread per rank; every process of the ring forms
    /// its ranks' at the same time.
    pub(crate) fn with_device_collectives(
        ranks: Vec<RankArgs>,
        backend: DeviceBackend,
    ) -> Result<Vec<RankArgs>> {
        if ranks.iter().any(|r| r.gpu.is_none()) {
            return Err(refuse(
                backend,
                "which needs every rank computing on a GPU (rows of every batch)",
            ));
        }
        let config = DeviceConfig {
            backend,
            timeout: crate::trainer::TRAIN_COMM_TIMEOUT,
            ..DeviceConfig::default()
        };
        std::thread::scope(|s| {
            let forming: Vec<_> = ranks
                .into_iter()
                .map(|mut args| {
                    let config = config.clone();
                    s.spawn(move || -> Result<RankArgs> {
                        let gpu = args.gpu.as_mut().ok_or_else(|| {
                            refuse(backend, "which needs every rank computing on a GPU")
                        })?;
                        let RankComm::Host(host) = args.comm else {
                            return Err(refuse(backend, "but the ring is formed already"));
                        };
                        let dc = DeviceCommunicator::new(host, gpu.gpu.clone(), config)
                            .map_err(|e| collective_error(gpu.ordinal, e))?;
                        gpu.on_device = true;
                        args.comm = RankComm::Device(Box::new(dc));
                        Ok(args)
                    })
                })
                .collect();
            forming
                .into_iter()
                .map(|j| {
                    j.join().map_err(|_| TrainError::Actor {
                        actor: "Node",
                        reason: "a rank's device communicator panicked while forming".into(),
                    })?
                })
                .collect()
        })
    }

    /// Makes `gpu`'s context the current one on this thread.
    fn bind(gpu: &Gpu, ordinal: usize) -> Result<()> {
        gpu.stream()
            .context()
            .bind_to_thread()
            .map_err(|e| gpu_error(ordinal, CudaError::from(e).into()))
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
    use shoal_collectives::DeviceBackend;
    use shoal_models::{GptConfig, RecomputePlan};

    use super::*;
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
        pub fn set_recompute(&mut self, _plan: &RecomputePlan) -> Result<()> {
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
            _reducer: &ActorRef<ReducerMsg>,
        ) -> Result<GpuBackward> {
            match *self {}
        }
    }

    /// The error saying how to build with CUDA (device collectives need it).
    pub(crate) fn with_device_collectives(
        _ranks: Vec<RankArgs>,
        backend: DeviceBackend,
    ) -> Result<Vec<RankArgs>> {
        Err(refuse(
            backend,
            "which needs a shoal built with `--features cuda`",
        ))
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
