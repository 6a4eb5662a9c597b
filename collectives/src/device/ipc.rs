//! The IPC backend: a ring over device memory, following [`super::schedule`].
//!
//! Each rank allocates a staging buffer of two slots (`cuMemAlloc`, since
//! stream-ordered pool memory cannot be exported), exports it with
//! `cuIpcGetMemHandle`, and the ranks all-gather (process token, context, address,
//! slot size, handle) once over the host communicator. Each rank then opens the
//! next rank's buffer: with `cuIpcOpenMemHandle` for a rank of another process,
//! and by its address for a rank of this process (a process cannot open its own
//! handles; with unified addressing a peer copy between contexts works directly).
//!
//! A transfer copies this rank's outgoing range into the next rank's slot on this
//! rank's stream, waits for the copy, enters a host barrier (first version: one
//! barrier per transfer; a flag in device memory would save the round trip), then
//! combines its own slot into the buffer (`add_inplace`, or a copy). The slot
//! alternates with a counter that runs on across operations, so the copy into a
//! slot always comes after a barrier that followed the previous combine from it.

use std::ffi::c_uint;
use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaViewMut, DevicePtr, result, sys};
use shoal_kernels::cuda::{Gpu, add_inplace, scale_inplace};

use super::comm::wait_until;
use super::error::DeviceCollectiveError;
use super::schedule::{self, Combine, Transfer};
use crate::{Communicator, ReduceOp};

/// Bytes of one rank's record in the handshake.
const RECORD_BYTES: usize = 40 + 64;

/// A random token for this process: equal tokens mean the same address space.
fn process_token() -> u64 {
    static TOKEN: OnceLock<u64> = OnceLock::new();
    *TOKEN.get_or_init(|| {
        // std's hasher keys are random per process.
        std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            std::process::id(),
        )
    })
}

/// What a rank tells the others about its staging buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Record {
    token: u64,
    ordinal: u64,
    ctx: u64,
    ptr: u64,
    capacity: u64,
    handle: [u8; 64],
}

impl Record {
    fn encode(&self) -> [u8; RECORD_BYTES] {
        let mut out = [0u8; RECORD_BYTES];
        let words = [self.token, self.ordinal, self.ctx, self.ptr, self.capacity];
        for (i, w) in words.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        out[40..].copy_from_slice(&self.handle);
        out
    }

    fn decode(b: &[u8]) -> Self {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        let mut handle = [0u8; 64];
        handle.copy_from_slice(&b[40..RECORD_BYTES]);
        Record {
            token: word(0),
            ordinal: word(1),
            ctx: word(2),
            ptr: word(3),
            capacity: word(4),
            handle,
        }
    }
}

/// Where this rank writes: the next rank's staging buffer.
enum Next {
    /// A ring of one: nobody.
    Nobody,
    /// A rank of this process: its address, valid in its context.
    SameProcess { ptr: u64, ctx: u64 },
    /// A rank of another process: its buffer mapped into this context.
    Mapped { ptr: sys::CUdeviceptr },
}

/// One rank's side of the IPC ring.
pub(super) struct IpcRing {
    rank: usize,
    world: usize,
    /// Elements per slot.
    capacity: usize,
    /// Two slots of `capacity` elements, allocated with `cuMemAlloc`.
    staging: Option<CudaSlice<f32>>,
    ctx: Arc<CudaContext>,
    next: Next,
    /// Transfers done so far (the slot is `transfers % 2`).
    transfers: u64,
    /// Recorded after each transfer's copy.
    copied: CudaEvent,
}

impl IpcRing {
    /// Allocates, exports and exchanges the staging buffers (collective).
    pub(super) fn new(
        host: &mut Communicator,
        gpu: &Gpu,
        capacity: usize,
    ) -> Result<Self, DeviceCollectiveError> {
        let (rank, world) = (host.rank(), host.world());
        if capacity == 0 {
            return Err(DeviceCollectiveError::InvalidArgument(
                "the IPC staging slots must hold at least one f32".into(),
            ));
        }
        let stream = gpu.stream();
        let ctx = stream.context().clone();
        ctx.bind_to_thread()
            .map_err(DeviceCollectiveError::driver("cuCtxSetCurrent"))?;
        let copied = ctx
            .new_event(None)
            .map_err(DeviceCollectiveError::driver("cuEventCreate"))?;
        // SAFETY: the context is current; the size is nonzero.
        let ptr = unsafe { result::malloc_sync(2 * capacity * 4) }
            .map_err(DeviceCollectiveError::driver("cuMemAlloc"))?;
        // SAFETY: `ptr` is a fresh allocation of 2 * capacity floats in this
        // context; the slice is leaked and freed with cuMemFree in `drop`.
        let staging = unsafe { stream.upgrade_device_ptr::<f32>(ptr, 2 * capacity) };
        let mut ring = IpcRing {
            rank,
            world,
            capacity,
            staging: Some(staging),
            ctx,
            next: Next::Nobody,
            transfers: 0,
            copied,
        };
        let mut handle = sys::CUipcMemHandle { reserved: [0; 64] };
        if world > 1 {
            // SAFETY: `ptr` is the base of a cuMemAlloc allocation; `handle` is valid.
            unsafe { sys::cuIpcGetMemHandle(&mut handle, ptr) }
                .result()
                .map_err(DeviceCollectiveError::driver("cuIpcGetMemHandle"))?;
        }
        let mine = Record {
            token: process_token(),
            ordinal: ring.ctx.ordinal() as u64,
            ctx: ring.ctx.cu_ctx() as u64,
            ptr,
            capacity: capacity as u64,
            handle: handle.reserved.map(|c| c as u8),
        };
        let mut all = vec![0u8; world * RECORD_BYTES];
        all[rank * RECORD_BYTES..(rank + 1) * RECORD_BYTES].copy_from_slice(&mine.encode());
        host.all_gather_bytes(&mut all)?;
        let records: Vec<Record> = all.chunks_exact(RECORD_BYTES).map(Record::decode).collect();
        if let Some(r) = records.iter().position(|r| r.capacity != capacity as u64) {
            return Err(DeviceCollectiveError::InvalidArgument(format!(
                "rank {r} has staging slots of {} floats, rank {rank} of {capacity}: use the \
                 same staging_bytes on every rank",
                records[r].capacity
            )));
        }
        if world > 1 {
            let peer = records[(rank + 1) % world];
            ring.next = if peer.token == mine.token {
                Next::SameProcess {
                    ptr: peer.ptr,
                    ctx: peer.ctx,
                }
            } else {
                let handle = sys::CUipcMemHandle {
                    reserved: peer.handle.map(|b| b as _),
                };
                let mut mapped: sys::CUdeviceptr = 0;
                let flags = sys::CUipcMem_flags::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS as c_uint;
                // SAFETY: the handle came from the peer's cuIpcGetMemHandle; the
                // context is current; `mapped` is written on success.
                unsafe { sys::cuIpcOpenMemHandle_v2(&mut mapped, handle, flags) }
                    .result()
                    .map_err(DeviceCollectiveError::driver("cuIpcOpenMemHandle"))?;
                Next::Mapped { ptr: mapped }
            };
        }
        // No rank may copy into a buffer before its owner has it mapped... and
        // allocated: the all-gather above already ordered that. This barrier makes
        // every rank's open complete before the first operation.
        host.barrier()?;
        Ok(ring)
    }

    pub(super) fn all_reduce(
        &mut self,
        host: &mut Communicator,
        gpu: &Gpu,
        buf: &mut CudaViewMut<'_, f32>,
        op: ReduceOp,
        deadline: Instant,
    ) -> Result<(), DeviceCollectiveError> {
        self.reduce_scatter(host, gpu, buf, op, deadline)?;
        self.all_gather(host, gpu, buf, deadline)
    }

    pub(super) fn reduce_scatter(
        &mut self,
        host: &mut Communicator,
        gpu: &Gpu,
        buf: &mut CudaViewMut<'_, f32>,
        op: ReduceOp,
        deadline: Instant,
    ) -> Result<(), DeviceCollectiveError> {
        if op == ReduceOp::Max {
            return Err(DeviceCollectiveError::Unsupported {
                backend: "ipc",
                what: "ReduceOp::Max (no device max kernel yet); use nccl".into(),
            });
        }
        let n = buf.len();
        let plan = schedule::reduce_scatter(n, self.world, self.rank, self.capacity);
        self.run(host, gpu, buf, &plan, "reduce_scatter", deadline)?;
        let shard = crate::shard_range(n, self.world, self.rank);
        if op == ReduceOp::Mean && self.world > 1 && !shard.is_empty() {
            scale_inplace(gpu, &mut buf.slice_mut(shard), 1.0 / self.world as f32)?;
        }
        Ok(())
    }

    pub(super) fn all_gather(
        &mut self,
        host: &mut Communicator,
        gpu: &Gpu,
        buf: &mut CudaViewMut<'_, f32>,
        deadline: Instant,
    ) -> Result<(), DeviceCollectiveError> {
        let plan = schedule::all_gather(buf.len(), self.world, self.rank, self.capacity);
        self.run(host, gpu, buf, &plan, "all_gather", deadline)
    }

    pub(super) fn broadcast(
        &mut self,
        host: &mut Communicator,
        gpu: &Gpu,
        buf: &mut CudaViewMut<'_, f32>,
        root: usize,
        deadline: Instant,
    ) -> Result<(), DeviceCollectiveError> {
        let plan = schedule::broadcast(buf.len(), self.world, self.rank, root, self.capacity);
        self.run(host, gpu, buf, &plan, "broadcast", deadline)
    }

    /// Executes `plan`: per transfer, copy out, wait, barrier, combine.
    fn run(
        &mut self,
        host: &mut Communicator,
        gpu: &Gpu,
        buf: &mut CudaViewMut<'_, f32>,
        plan: &[Transfer],
        op: &'static str,
        deadline: Instant,
    ) -> Result<(), DeviceCollectiveError> {
        let stream = gpu.stream();
        let base = {
            let (p, _read) = buf.device_ptr(stream);
            p
        };
        for t in plan {
            let slot = (self.transfers % 2) as usize;
            self.transfers += 1;
            if let Some(send) = t.send.as_ref().filter(|s| !s.is_empty()) {
                self.copy_out(gpu, base + (send.start * 4) as u64, slot, send.len())?;
            }
            // The copy (and the combines before it on this stream) are done before
            // the next rank may read its slot or this rank's slot is written again.
            wait_until(stream, &self.copied, op, deadline, || Ok(()))?;
            host.barrier()?;
            if let Some(recv) = t.recv.as_ref().filter(|r| !r.is_empty()) {
                self.combine(gpu, buf, slot, recv.clone(), t.combine)?;
            }
        }
        Ok(())
    }

    /// Queues the copy of `len` floats at `src` into slot `slot` of the next rank.
    fn copy_out(
        &self,
        gpu: &Gpu,
        src: u64,
        slot: usize,
        len: usize,
    ) -> Result<(), DeviceCollectiveError> {
        let offset = (slot * self.capacity * 4) as u64;
        let bytes = len * 4;
        let stream = gpu.stream().cu_stream();
        match self.next {
            Next::Nobody => Ok(()),
            // SAFETY: the peer's slot holds `capacity` >= len floats (checked in the
            // handshake; the schedule's pieces fit); `src` holds len floats.
            Next::Mapped { ptr } => {
                unsafe { result::memcpy_dtod_async(ptr + offset, src, bytes, stream) }
                    .map_err(DeviceCollectiveError::driver("cuMemcpyDtoDAsync"))
            }
            Next::SameProcess { ptr, ctx } => {
                let dst_ctx = ctx as sys::CUcontext;
                // SAFETY: as above; both contexts are live in this process (the peer
                // keeps its staging buffer until its communicator is dropped).
                unsafe {
                    result::memcpy_peer_async(
                        dst_ctx,
                        ptr + offset,
                        self.ctx.cu_ctx(),
                        src,
                        bytes,
                        stream,
                    )
                }
                .map_err(DeviceCollectiveError::driver("cuMemcpyPeerAsync"))
            }
        }
    }

    /// Combines slot `slot` of this rank's staging buffer into `range` of `buf`.
    fn combine(
        &self,
        gpu: &Gpu,
        buf: &mut CudaViewMut<'_, f32>,
        slot: usize,
        range: Range<usize>,
        how: Combine,
    ) -> Result<(), DeviceCollectiveError> {
        let Some(staging) = self.staging.as_ref() else {
            return Err(DeviceCollectiveError::Poisoned);
        };
        let start = slot * self.capacity;
        let received = staging.slice(start..start + range.len());
        let mut dst = buf.slice_mut(range);
        match how {
            Combine::Add => add_inplace(gpu, &mut dst, &received)?,
            Combine::Copy => gpu
                .stream()
                .memcpy_dtod(&received, &mut dst)
                .map_err(DeviceCollectiveError::driver("cuMemcpyDtoDAsync"))?,
        }
        Ok(())
    }
}

impl Drop for IpcRing {
    fn drop(&mut self) {
        // Errors cannot be reported from here; the worst case is a leaked mapping.
        let _ = self.ctx.bind_to_thread();
        if let Next::Mapped { ptr } = self.next {
            // SAFETY: `ptr` came from cuIpcOpenMemHandle and is closed once.
            let _ = unsafe { sys::cuIpcCloseMemHandle(ptr) };
        }
        if let Some(staging) = self.staging.take() {
            let _ = staging.stream().synchronize();
            let ptr = staging.leak();
            // SAFETY: `ptr` came from cuMemAlloc in `new` and is freed once, after
            // the stream's work on it finished.
            let _ = unsafe { result::free_sync(ptr) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = Record {
            token: 0x0123_4567_89ab_cdef,
            ordinal: 3,
            ctx: 0xdead_beef,
            ptr: 0x7f00_0000_1000,
            capacity: 1 << 24,
            handle: std::array::from_fn(|i| i as u8 * 3),
        };
        assert_eq!(Record::decode(&r.encode()), r);
    }
}
