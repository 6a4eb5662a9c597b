//! [`DeviceCommunicator`]: what users call; it dispatches to the NCCL or IPC backend
//! and bounds every wait on the device by a deadline.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, CudaViewMut};
use shoal_kernels::cuda::Gpu;

use super::DeviceBackend;
use super::error::DeviceCollectiveError;
use super::ipc::IpcRing;
use super::nccl::NcclComm;
use crate::{Communicator, ReduceOp, shard_range};

/// How many GPUs the driver sees (0 when a driver is installed but no GPU is
/// visible); an error without a driver.
pub fn device_count() -> Result<usize, DeviceCollectiveError> {
    Ok(shoal_kernels::cuda::device_count()?)
}

/// Settings of a [`DeviceCommunicator`]; every rank of a ring must use the same.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Which implementation moves the buffers.
    pub backend: DeviceBackend,
    /// Deadline of every operation's device work, from the operation's start (the
    /// host communicator's own deadline bounds its bootstrap and signals).
    pub timeout: Duration,
    /// IPC ring: bytes of each of the two staging slots per rank (a transfer moves
    /// at most this much; longer shards go in pieces).
    pub staging_bytes: usize,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            backend: DeviceBackend::Nccl,
            timeout: Duration::from_secs(60),
            staging_bytes: 64 << 20,
        }
    }
}

/// A device buffer of `f32` a collective can work on in place: a `CudaSlice` or a
/// mutable view of one.
pub trait DeviceBuffer {
    /// The whole buffer as a mutable view.
    fn view_mut(&mut self) -> CudaViewMut<'_, f32>;
}

impl DeviceBuffer for CudaSlice<f32> {
    fn view_mut(&mut self) -> CudaViewMut<'_, f32> {
        self.as_view_mut()
    }
}

impl DeviceBuffer for CudaViewMut<'_, f32> {
    fn view_mut(&mut self) -> CudaViewMut<'_, f32> {
        self.slice_mut(..)
    }
}

/// The backend's state.
enum Backend {
    Nccl(NcclComm),
    Ipc(IpcRing),
}

/// One rank's handle on collectives over device buffers, for one generation of a
/// ring. Every operation works in place on a buffer on this rank's GPU, runs on
/// the GPU's one stream, and returns once its result is in the buffer (the device
/// work is waited for, up to [`DeviceConfig::timeout`]). After an operation that
/// failed part-way the communicator is poisoned: form a new one, as for the host ring.
///
/// Ranks that share a GPU in one process share its legacy default stream (each
/// `Gpu` uses it), so their work serializes on the device: correct, but slower.
pub struct DeviceCommunicator {
    backend: Backend,
    host: Communicator,
    gpu: Arc<Gpu>,
    config: DeviceConfig,
    /// Recorded after each operation's work, polled until done or the deadline.
    done: CudaEvent,
    poisoned: bool,
}

impl DeviceCommunicator {
    /// Forms the device communicator of `host`'s rank on `gpu`. Collective: every
    /// rank of `host`'s ring must call it with the same config.
    ///
    /// NCCL: rank 0 creates the unique id and broadcasts it over `host`; every rank
    /// then joins on its GPU. NCCL refuses two ranks on one GPU (use `ipc`).
    /// IPC: every rank allocates its staging buffer, the ranks all-gather their IPC
    /// handles over `host`, and each opens the next rank's buffer (directly for a
    /// rank of the same process).
    pub fn new(
        mut host: Communicator,
        gpu: Arc<Gpu>,
        config: DeviceConfig,
    ) -> Result<Self, DeviceCollectiveError> {
        let ctx = gpu.stream().context().clone();
        ctx.bind_to_thread()
            .map_err(DeviceCollectiveError::driver("cuCtxSetCurrent"))?;
        let backend = match config.backend {
            DeviceBackend::Nccl => Backend::Nccl(NcclComm::new(&mut host, &gpu)?),
            DeviceBackend::Ipc => {
                Backend::Ipc(IpcRing::new(&mut host, &gpu, config.staging_bytes / 4)?)
            }
        };
        let done = ctx
            .new_event(None)
            .map_err(DeviceCollectiveError::driver("cuEventCreate"))?;
        Ok(Self {
            backend,
            host,
            gpu,
            config,
            done,
            poisoned: false,
        })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.host.rank()
    }

    /// A handle that aborts the host communicator from another thread (the device
    /// work of an operation in flight ends at its deadline).
    pub fn abort_handle(&self) -> crate::AbortHandle {
        self.host.abort_handle()
    }

    /// Number of ranks.
    pub fn world(&self) -> usize {
        self.host.world()
    }

    /// The backend in use.
    pub fn backend(&self) -> DeviceBackend {
        self.config.backend
    }

    /// This rank's GPU.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The host communicator of the same ring (for host-side collectives between
    /// device ones; it must be used by every rank in the same order).
    pub fn host(&mut self) -> &mut Communicator {
        &mut self.host
    }

    /// The shard of a `len`-element buffer this rank owns after a reduce-scatter
    /// (and provides to an all-gather), as on the host.
    pub fn shard(&self, len: usize) -> Range<usize> {
        shard_range(len, self.world(), self.rank())
    }

    /// Reduces `buf` over all ranks in place (`Sum`, `Mean`; `Max` on NCCL only).
    pub fn all_reduce(
        &mut self,
        buf: &mut impl DeviceBuffer,
        op: ReduceOp,
    ) -> Result<(), DeviceCollectiveError> {
        let mut view = buf.view_mut();
        self.run("all_reduce", |b, host, gpu, deadline| match b {
            Backend::Nccl(n) => n.all_reduce(gpu, &mut view, op),
            Backend::Ipc(r) => r.all_reduce(host, gpu, &mut view, op, deadline),
        })
    }

    /// Reduces `buf` over all ranks so that this rank's shard ([`Self::shard`])
    /// holds the result, which is returned as a range; the rest of `buf` is left
    /// with partial results (as by the host [`Communicator::reduce_scatter`]).
    pub fn reduce_scatter(
        &mut self,
        buf: &mut impl DeviceBuffer,
        op: ReduceOp,
    ) -> Result<Range<usize>, DeviceCollectiveError> {
        let mut view = buf.view_mut();
        let shard = self.shard(view.len());
        self.run("reduce_scatter", |b, host, gpu, deadline| match b {
            Backend::Nccl(n) => n.reduce_scatter(gpu, &mut view, op),
            Backend::Ipc(r) => r.reduce_scatter(host, gpu, &mut view, op, deadline),
        })?;
        Ok(shard)
    }

    /// Fills every shard of `buf` with its owner's values; this rank's shard is
    /// its input.
    pub fn all_gather(&mut self, buf: &mut impl DeviceBuffer) -> Result<(), DeviceCollectiveError> {
        let mut view = buf.view_mut();
        self.run("all_gather", |b, host, gpu, deadline| match b {
            Backend::Nccl(n) => n.all_gather(gpu, &mut view),
            Backend::Ipc(r) => r.all_gather(host, gpu, &mut view, deadline),
        })
    }

    /// Copies `root`'s `buf` to every rank.
    pub fn broadcast(
        &mut self,
        buf: &mut impl DeviceBuffer,
        root: usize,
    ) -> Result<(), DeviceCollectiveError> {
        if root >= self.world() {
            return Err(DeviceCollectiveError::InvalidArgument(format!(
                "root {root} is not a rank of a world of {}",
                self.world()
            )));
        }
        let mut view = buf.view_mut();
        self.run("broadcast", |b, host, gpu, deadline| match b {
            Backend::Nccl(n) => n.broadcast(gpu, &mut view, root),
            Backend::Ipc(r) => r.broadcast(host, gpu, &mut view, root, deadline),
        })
    }

    /// Runs one operation: refuses on a poisoned communicator, enqueues the work,
    /// waits for it up to the deadline, and poisons the communicator when it failed
    /// part-way (not when its arguments were refused).
    fn run(
        &mut self,
        op: &'static str,
        f: impl FnOnce(
            &mut Backend,
            &mut Communicator,
            &Gpu,
            Instant,
        ) -> Result<(), DeviceCollectiveError>,
    ) -> Result<(), DeviceCollectiveError> {
        if self.poisoned {
            return Err(DeviceCollectiveError::Poisoned);
        }
        let deadline = Instant::now() + self.config.timeout;
        let result = self
            .gpu
            .stream()
            .context()
            .bind_to_thread()
            .map_err(DeviceCollectiveError::driver("cuCtxSetCurrent"))
            .and_then(|()| f(&mut self.backend, &mut self.host, &self.gpu, deadline))
            .and_then(|()| {
                let backend = &self.backend;
                wait_until(
                    self.gpu.stream(),
                    &self.done,
                    op,
                    deadline,
                    || match backend {
                        Backend::Nccl(n) => n.async_error(),
                        Backend::Ipc(_) => Ok(()),
                    },
                )
            });
        // Arguments every rank rejects alike, before any work, leave the ring in step.
        if let Err(e) = &result
            && !matches!(
                e,
                DeviceCollectiveError::InvalidArgument(_)
                    | DeviceCollectiveError::Unsupported { .. }
            )
        {
            self.poisoned = true;
        }
        result
    }
}

/// Waits until the work queued on `stream` so far is done, polling `event` (and
/// `check`, e.g. NCCL's asynchronous error) until `deadline`.
pub(super) fn wait_until(
    stream: &CudaStream,
    event: &CudaEvent,
    op: &'static str,
    deadline: Instant,
    mut check: impl FnMut() -> Result<(), DeviceCollectiveError>,
) -> Result<(), DeviceCollectiveError> {
    let start = Instant::now();
    event
        .record(stream)
        .map_err(DeviceCollectiveError::driver("cuEventRecord"))?;
    let mut polls = 0u32;
    loop {
        if event
            .try_is_complete()
            .map_err(DeviceCollectiveError::driver("cuEventQuery"))?
        {
            return Ok(());
        }
        check()?;
        if Instant::now() >= deadline {
            return Err(DeviceCollectiveError::Timeout {
                op,
                after: start.elapsed(),
            });
        }
        // Spin briefly (collectives of small buffers finish in microseconds), then
        // back off so a long wait does not burn a core.
        polls += 1;
        if polls < 2000 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}
