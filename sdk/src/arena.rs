//! The plugin's global allocator: a bump arena in static memory first, the
//! system allocator after. A plugin instance lives for one call, so most
//! calls never free; serving them from the arena avoids `memory.grow`, whose
//! cost dominates a short call (page faults and `mprotect` in the host).

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Bytes served from static memory before falling back.
const ARENA_BYTES: usize = 512 * 1024;

#[repr(C, align(16))]
struct Arena(UnsafeCell<[u8; ARENA_BYTES]>);

// SAFETY: wasm32 guests are single-threaded; the offset is the only state.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_BYTES]));
static NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct BumpThenSystem;

fn base() -> usize {
    ARENA.0.get() as usize
}

fn in_arena(ptr: *mut u8) -> bool {
    let p = ptr as usize;
    p >= base() && p < base() + ARENA_BYTES
}

// SAFETY: arena blocks never overlap (the offset only moves past handed-out
// blocks, or back over the most recent one when it is freed); everything
// else is the system allocator's.
unsafe impl GlobalAlloc for BumpThenSystem {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let next = NEXT.load(Ordering::Relaxed);
        let start = (base() + next).next_multiple_of(layout.align());
        let end = start + layout.size();
        if end <= base() + ARENA_BYTES {
            NEXT.store(end - base(), Ordering::Relaxed);
            return start as *mut u8;
        }
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if in_arena(ptr) {
            // Only the most recent block can be given back.
            if ptr as usize + layout.size() == base() + NEXT.load(Ordering::Relaxed) {
                NEXT.store(ptr as usize - base(), Ordering::Relaxed);
            }
            return;
        }
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if in_arena(ptr) {
            let next = NEXT.load(Ordering::Relaxed);
            // The most recent block grows or shrinks in place when it fits.
            if ptr as usize + layout.size() == base() + next
                && ptr as usize + new_size <= base() + ARENA_BYTES
            {
                NEXT.store(ptr as usize + new_size - base(), Ordering::Relaxed);
                return ptr;
            }
            let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
            let new = unsafe { self.alloc(new_layout) };
            if !new.is_null() {
                unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            }
            return new;
        }
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}
