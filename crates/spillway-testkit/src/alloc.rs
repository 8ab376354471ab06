//! A counting global allocator, for the tests and measurements that count allocations or the
//! bytes a structure holds: the system allocator, with every call passed on unchanged, keeping
//! three counts a binary can read at any time.
//!
//! A test or bench binary installs it with
//! `#[global_allocator] static ALLOCATOR: Counting = Counting;` and reads
//! [`allocations`] (the whole process), [`thread_allocations`] (only the calling thread, so
//! other threads' work does not disturb a count) or [`live_bytes`] (allocated and not yet
//! freed). A reallocation counts as one allocation.
//!
//! This is the one `unsafe` block of the workspace's tests: `GlobalAlloc` is an unsafe trait.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The system allocator, counting; see the module docs.
pub struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD: Cell<u64> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    LIVE.fetch_add(bytes, Ordering::Relaxed);
    // A thread being torn down has no counter left; its allocations still count process-wide.
    let _ = THREAD.try_with(|n| n.set(n.get() + 1));
}

/// Allocations (and reallocations) made by the whole process so far.
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Allocations (and reallocations) made by the calling thread so far.
pub fn thread_allocations() -> u64 {
    THREAD.with(Cell::get)
}

/// Bytes allocated and not yet freed, process-wide.
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

// SAFETY: every call is passed to the system allocator with the caller's layout, pointer and
// size unchanged, so `System` upholds the contract; the counts only observe sizes, in atomics
// and a const-initialised thread-local `Cell` (no allocation, no destructor; this relies on
// the target's native thread-locals, as on Linux, where a first access does not allocate).
// Only calls that succeed are counted, so a refused one leaves the live bytes true.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count(layout.size());
        }
        ptr
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        // A refused realloc leaves the old block live and allocates nothing.
        if !moved.is_null() {
            count(new_size);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        moved
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}
