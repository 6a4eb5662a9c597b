//! The NCCL backend: one NCCL communicator per rank, bootstrapped over the host ring.
//!
//! NCCL is loaded at run time (`libnccl.so`); its presence is checked before any
//! call, since cudarc panics on a missing library. NCCL's collectives need equal
//! shards; buffers whose length the world does not divide run as a group of
//! per-shard reduces (reduce-scatter) or broadcasts (all-gather), which keeps the
//! host ring's uneven shards ([`crate::shard_range`]).

use std::ffi::{CStr, c_int, c_void};

use cudarc::driver::{CudaViewMut, DevicePtrMut};
use cudarc::nccl::sys;
use shoal_kernels::cuda::Gpu;

use super::error::DeviceCollectiveError;
use crate::{Communicator, ReduceOp, shard_range};

/// Bytes of an NCCL unique id.
const ID_BYTES: usize = 128;

/// Whether `libnccl.so` can be loaded.
fn nccl_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { sys::is_culib_present() }
}

/// The NCCL version loaded (e.g. 22703 for 2.27.3), or why NCCL cannot be used.
pub fn nccl_version() -> Result<i32, DeviceCollectiveError> {
    if !nccl_present() {
        return Err(DeviceCollectiveError::NcclMissing);
    }
    let mut version: c_int = 0;
    // SAFETY: the library is present; the pointer is valid for the call.
    check("ncclGetVersion", unsafe {
        sys::ncclGetVersion(&mut version)
    })?;
    Ok(version)
}

/// An NCCL result as an error, with NCCL's own description.
fn check(call: &'static str, result: sys::ncclResult_t) -> Result<(), DeviceCollectiveError> {
    match result {
        sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress => Ok(()),
        code => {
            // SAFETY: NCCL returns a static NUL-terminated string (or null).
            let text = unsafe { sys::ncclGetErrorString(code) };
            let message = if text.is_null() {
                String::new()
            } else {
                // SAFETY: non-null, NUL-terminated, static.
                unsafe { CStr::from_ptr(text) }
                    .to_string_lossy()
                    .into_owned()
            };
            Err(DeviceCollectiveError::Nccl {
                call,
                code: format!("{code:?}"),
                message,
            })
        }
    }
}

fn nccl_op(op: ReduceOp) -> sys::ncclRedOp_t {
    match op {
        ReduceOp::Sum => sys::ncclRedOp_t::ncclSum,
        ReduceOp::Mean => sys::ncclRedOp_t::ncclAvg,
        ReduceOp::Max => sys::ncclRedOp_t::ncclMax,
    }
}

const F32: sys::ncclDataType_t = sys::ncclDataType_t::ncclFloat32;

/// One rank's NCCL communicator.
pub(super) struct NcclComm {
    comm: sys::ncclComm_t,
    rank: usize,
    world: usize,
}

impl NcclComm {
    /// Joins the NCCL communicator of `host`'s ring on `gpu` (collective). Every
    /// rank first says whether it could load NCCL, so all fail together instead of
    /// some waiting for the others until the deadline.
    pub(super) fn new(host: &mut Communicator, gpu: &Gpu) -> Result<Self, DeviceCollectiveError> {
        let (rank, world) = (host.rank(), host.world());
        let present = nccl_present();
        let mut votes = vec![0u8; world];
        votes[rank] = u8::from(present);
        host.all_gather_bytes(&mut votes)?;
        if !present {
            return Err(DeviceCollectiveError::NcclMissing);
        }
        if let Some(missing) = votes.iter().position(|&v| v == 0) {
            return Err(DeviceCollectiveError::InvalidArgument(format!(
                "rank {missing} cannot load libnccl.so"
            )));
        }
        // Byte 0: whether rank 0 got an id; then the id.
        let mut msg = [0u8; 1 + ID_BYTES];
        let mut id_error = None;
        if rank == 0 {
            let mut id = sys::ncclUniqueId {
                internal: [0; ID_BYTES],
            };
            // SAFETY: the library is present; the pointer is valid for the call.
            match check("ncclGetUniqueId", unsafe { sys::ncclGetUniqueId(&mut id) }) {
                Ok(()) => {
                    msg[0] = 1;
                    for (m, c) in msg[1..].iter_mut().zip(id.internal) {
                        *m = c as u8;
                    }
                }
                Err(e) => id_error = Some(e),
            }
        }
        host.broadcast_bytes(&mut msg, 0)?;
        if let Some(e) = id_error {
            return Err(e);
        }
        if msg[0] != 1 {
            return Err(DeviceCollectiveError::InvalidArgument(
                "rank 0 could not create an NCCL unique id".into(),
            ));
        }
        let mut id = sys::ncclUniqueId {
            internal: [0; ID_BYTES],
        };
        for (c, m) in id.internal.iter_mut().zip(&msg[1..]) {
            *c = *m as _;
        }
        let (nranks, me) = (to_int(world)?, to_int(rank)?);
        // NCCL takes the device from the calling thread's current context.
        gpu.stream()
            .context()
            .bind_to_thread()
            .map_err(DeviceCollectiveError::driver("cuCtxSetCurrent"))?;
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: the library is present; `comm` is written on success. Blocks
        // until every rank has joined: they all passed the broadcast above.
        check("ncclCommInitRank", unsafe {
            sys::ncclCommInitRank(&mut comm, nranks, id, me)
        })?;
        Ok(Self { comm, rank, world })
    }

    /// An error NCCL hit asynchronously (a peer failed, a network error).
    pub(super) fn async_error(&self) -> Result<(), DeviceCollectiveError> {
        let mut state = sys::ncclResult_t::ncclSuccess;
        // SAFETY: `comm` is live; the pointer is valid for the call.
        check("ncclCommGetAsyncError", unsafe {
            sys::ncclCommGetAsyncError(self.comm, &mut state)
        })?;
        check("ncclCommGetAsyncError (state)", state)
    }

    pub(super) fn all_reduce(
        &self,
        gpu: &Gpu,
        buf: &mut CudaViewMut<'_, f32>,
        op: ReduceOp,
    ) -> Result<(), DeviceCollectiveError> {
        let n = buf.len();
        if n == 0 {
            return Ok(());
        }
        let stream = gpu.stream();
        let (p, _write) = buf.device_ptr_mut(stream);
        // SAFETY: `p` holds n floats on this rank's GPU; in place is allowed.
        check("ncclAllReduce", unsafe {
            sys::ncclAllReduce(
                p as *const c_void,
                p as *mut c_void,
                n,
                F32,
                nccl_op(op),
                self.comm,
                stream.cu_stream() as sys::cudaStream_t,
            )
        })
    }

    pub(super) fn reduce_scatter(
        &self,
        gpu: &Gpu,
        buf: &mut CudaViewMut<'_, f32>,
        op: ReduceOp,
    ) -> Result<(), DeviceCollectiveError> {
        let n = buf.len();
        if n == 0 {
            return Ok(());
        }
        let stream = gpu.stream();
        let cu_stream = stream.cu_stream() as sys::cudaStream_t;
        let (p, _write) = buf.device_ptr_mut(stream);
        if n % self.world == 0 {
            let count = n / self.world;
            let mine = p + (self.rank * count * 4) as u64;
            // SAFETY: `p` holds n = world * count floats; receiving into this rank's
            // own part of the send buffer is NCCL's in-place reduce-scatter.
            return check("ncclReduceScatter", unsafe {
                sys::ncclReduceScatter(
                    p as *const c_void,
                    mine as *mut c_void,
                    count,
                    F32,
                    nccl_op(op),
                    self.comm,
                    cu_stream,
                )
            });
        }
        self.grouped("ncclReduce", n, |root, at, len| {
            // SAFETY: `at` holds `len` floats of the buffer; in place is allowed.
            unsafe {
                sys::ncclReduce(
                    (p + at) as *const c_void,
                    (p + at) as *mut c_void,
                    len,
                    F32,
                    nccl_op(op),
                    root,
                    self.comm,
                    cu_stream,
                )
            }
        })
    }

    pub(super) fn all_gather(
        &self,
        gpu: &Gpu,
        buf: &mut CudaViewMut<'_, f32>,
    ) -> Result<(), DeviceCollectiveError> {
        let n = buf.len();
        if n == 0 {
            return Ok(());
        }
        let stream = gpu.stream();
        let cu_stream = stream.cu_stream() as sys::cudaStream_t;
        let (p, _write) = buf.device_ptr_mut(stream);
        if n % self.world == 0 {
            let count = n / self.world;
            let mine = p + (self.rank * count * 4) as u64;
            // SAFETY: sending from this rank's own part of the receive buffer is
            // NCCL's in-place all-gather; `p` holds world * count floats.
            return check("ncclAllGather", unsafe {
                sys::ncclAllGather(
                    mine as *const c_void,
                    p as *mut c_void,
                    count,
                    F32,
                    self.comm,
                    cu_stream,
                )
            });
        }
        self.grouped("ncclBroadcast", n, |root, at, len| {
            // SAFETY: `at` holds `len` floats of the buffer; in place is allowed.
            unsafe {
                sys::ncclBroadcast(
                    (p + at) as *const c_void,
                    (p + at) as *mut c_void,
                    len,
                    F32,
                    root,
                    self.comm,
                    cu_stream,
                )
            }
        })
    }

    pub(super) fn broadcast(
        &self,
        gpu: &Gpu,
        buf: &mut CudaViewMut<'_, f32>,
        root: usize,
    ) -> Result<(), DeviceCollectiveError> {
        let n = buf.len();
        if n == 0 {
            return Ok(());
        }
        let stream = gpu.stream();
        let (p, _write) = buf.device_ptr_mut(stream);
        // SAFETY: `p` holds n floats; in place is allowed.
        check("ncclBroadcast", unsafe {
            sys::ncclBroadcast(
                p as *const c_void,
                p as *mut c_void,
                n,
                F32,
                to_int(root)?,
                self.comm,
                stream.cu_stream() as sys::cudaStream_t,
            )
        })
    }

    /// One NCCL group of `call(root, byte offset, len)` per non-empty shard of an
    /// `n`-element buffer, rooted at the shard's owner.
    fn grouped(
        &self,
        name: &'static str,
        n: usize,
        call: impl Fn(c_int, u64, usize) -> sys::ncclResult_t,
    ) -> Result<(), DeviceCollectiveError> {
        // SAFETY: the library is present (a communicator exists).
        check("ncclGroupStart", unsafe { sys::ncclGroupStart() })?;
        let mut result = Ok(());
        for root in 0..self.world {
            let shard = shard_range(n, self.world, root);
            if shard.is_empty() {
                continue;
            }
            result = to_int(root)
                .and_then(|r| check(name, call(r, (shard.start * 4) as u64, shard.len())));
            if result.is_err() {
                break;
            }
        }
        // Always close the group, even after a failed call.
        // SAFETY: matches the group start above.
        let end = check("ncclGroupEnd", unsafe { sys::ncclGroupEnd() });
        result.and(end)
    }
}

// SAFETY: an NCCL communicator may be used from any thread, one at a time; the
// `&mut` access of the owning `DeviceCommunicator` serializes its use.
unsafe impl Send for NcclComm {}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // Abort rather than finalize: it never blocks, also after a failed or
        // timed-out operation whose kernels still wait for a lost peer.
        // SAFETY: `comm` is live and dropped once.
        let _ = unsafe { sys::ncclCommAbort(self.comm) };
    }
}

fn to_int(x: usize) -> Result<c_int, DeviceCollectiveError> {
    c_int::try_from(x)
        .map_err(|_| DeviceCollectiveError::InvalidArgument(format!("{x} does not fit in an int")))
}
