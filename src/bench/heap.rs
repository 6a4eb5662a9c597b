//! Heap measurement for the benchmarks: the `shoal` binary's global allocator is the
//! system allocator plus counters that [`measure`] switches on around a closure. While
//! off (every command but the memory benchmarks) each allocation pays one relaxed
//! atomic load.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};

/// The system allocator, counting while [`ON`].
struct Counting;

static ON: AtomicBool = AtomicBool::new(false);
/// Bytes allocated minus bytes freed since counting started (frees of older blocks
/// count too, so this can go below zero).
static NET: AtomicIsize = AtomicIsize::new(0);
/// The most `NET` has been since counting started.
static PEAK: AtomicIsize = AtomicIsize::new(0);

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn grew(bytes: usize) {
    let now = NET.fetch_add(bytes as isize, Relaxed) + bytes as isize;
    PEAK.fetch_max(now, Relaxed);
}

fn shrank(bytes: usize) {
    NET.fetch_sub(bytes as isize, Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && ON.load(Relaxed) {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() && ON.load(Relaxed) {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        if ON.load(Relaxed) {
            shrank(layout.size());
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() && ON.load(Relaxed) {
            grew(new_size);
            shrank(layout.size());
        }
        p
    }
}

/// What [`measure`] saw.
#[derive(Clone, Copy, Debug)]
pub struct Heap {
    /// The most the heap grew above its size at the start.
    pub peak: usize,
}

/// Runs `f` with the counters on (one measurement at a time: the counters are global,
/// and every thread's allocations count).
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Heap) {
    NET.store(0, Relaxed);
    PEAK.store(0, Relaxed);
    ON.store(true, Relaxed);
    let r = f();
    ON.store(false, Relaxed);
    let heap = Heap {
        peak: PEAK.load(Relaxed).max(0) as usize,
    };
    (r, heap)
}
