//! The guest's global allocator: a cache of small blocks in front of the
//! system allocator.
//!
//! Owns every heap allocation the guest makes, the host's `cabi_realloc`
//! calls included. Most are small and short-lived (one command, one key, one
//! reply), and wasi-libc's dlmalloc, reached through three layers of shims,
//! spends hundreds of instructions on each malloc and free pair. Here a
//! block of at most [`SMALL_BYTES_MAX`] bytes (alignment at most 8) is
//! rounded up to a multiple of 16 and, once freed, kept on a free list for
//! its size class: the next allocation of that class pops it. Anything else
//! goes straight to the system allocator.
//!
//! Must never hand out a block twice or return one to the system allocator
//! with a layout other than the one it was allocated with: every block of a
//! class comes from the system allocator as exactly (class size, 8).
//! Deterministic like everything else in a guest: which block an allocation
//! gets depends only on the calls made before it. A class keeps at most
//! [`CACHED_BYTES_PER_CLASS_MAX`] bytes of free blocks, so the cache holds at
//! most 4 MiB that other sizes cannot use.
//!
//! Single-threaded by construction: it is only built for wasm without the
//! `atomics` feature, where there are no threads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// Largest block served from the cache.
const SMALL_BYTES_MAX: usize = 256;
/// Size classes are multiples of this.
const GRAIN: usize = 16;
/// Largest alignment served from the cache: what the system allocator gives
/// a plain `malloc` on wasm32, so a class's blocks cost it nothing extra.
const ALIGN_MAX: usize = 8;
const CLASSES: usize = SMALL_BYTES_MAX / GRAIN;
/// Free bytes one class may keep; past it, freed blocks go back to the
/// system allocator.
const CACHED_BYTES_PER_CLASS_MAX: usize = 256 * 1024;

#[derive(Clone, Copy)]
struct Class {
    /// First free block; each free block's first word points at the next.
    head: *mut u8,
    /// Blocks on the list.
    cached: usize,
}

/// The allocator. The SDK installs it with `#[global_allocator]` when its
/// `allocator` feature is on.
pub(crate) struct SmallBlockCache {
    classes: UnsafeCell<[Class; CLASSES]>,
}

// SAFETY: only compiled where there are no threads (see the module docs).
unsafe impl Sync for SmallBlockCache {}

impl SmallBlockCache {
    pub(crate) const fn new() -> Self {
        Self { classes: UnsafeCell::new([Class { head: ptr::null_mut(), cached: 0 }; CLASSES]) }
    }
}

/// The class serving `size` bytes at `align`, if any.
fn class_of(size: usize, align: usize) -> Option<usize> {
    (size != 0 && size <= SMALL_BYTES_MAX && align <= ALIGN_MAX).then(|| (size - 1) / GRAIN)
}

/// What the system allocator is asked for when a class needs a new block.
fn class_layout(class: usize) -> Layout {
    // SAFETY: non-zero, and ALIGN_MAX is a power of two.
    unsafe { Layout::from_size_align_unchecked((class + 1) * GRAIN, ALIGN_MAX) }
}

// SAFETY: blocks come from the system allocator with `class_layout`, are
// handed out once (popped before use) and go back to it with the same layout.
unsafe impl GlobalAlloc for SmallBlockCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout.size(), layout.align()) else {
            // SAFETY: the caller's contract, passed on.
            return unsafe { System.alloc(layout) };
        };
        // SAFETY: single-threaded, and no reference into `classes` outlives this call.
        let slot = unsafe { &mut (*self.classes.get())[class] };
        if slot.head.is_null() {
            // SAFETY: a valid non-zero layout.
            return unsafe { System.alloc(class_layout(class)) };
        }
        let block = slot.head;
        // SAFETY: a free block's first word holds the next free block.
        slot.head = unsafe { block.cast::<*mut u8>().read() };
        slot.cached -= 1;
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout.size(), layout.align()) else {
            // SAFETY: the caller's contract, passed on.
            return unsafe { System.dealloc(block, layout) };
        };
        // SAFETY: single-threaded, and no reference into `classes` outlives this call.
        let slot = unsafe { &mut (*self.classes.get())[class] };
        if (slot.cached + 1) * (class + 1) * GRAIN > CACHED_BYTES_PER_CLASS_MAX {
            // SAFETY: the block came from the system allocator with this layout.
            return unsafe { System.dealloc(block, class_layout(class)) };
        }
        // SAFETY: the block is at least GRAIN bytes, pointer-aligned, and no longer in use.
        unsafe { block.cast::<*mut u8>().write(slot.head) };
        slot.head = block;
        slot.cached += 1;
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if class_of(layout.size(), layout.align()).is_none() {
            // SAFETY: the caller's contract, passed on.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // SAFETY: as `alloc`; the block is at least `layout.size()` bytes.
        unsafe {
            let block = self.alloc(layout);
            if !block.is_null() {
                block.write_bytes(0, layout.size());
            }
            block
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = class_of(layout.size(), layout.align());
        let new = class_of(new_size, layout.align());
        match (old, new) {
            // SAFETY: the caller's contract, passed on.
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            // The block is already that class's size.
            (Some(a), Some(b)) if a == b => block,
            _ => {
                // SAFETY: the caller's contract: `new_size` with this
                // alignment is a valid layout, and `block` is live.
                unsafe {
                    let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                    let moved = self.alloc(new_layout);
                    if !moved.is_null() {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                    moved
                }
            }
        }
    }
}

/// The canonical ABI's allocation entry point, which the host calls for
/// every list it passes in (one per entry's command). Defined here, when
/// this allocator is the global one, so that it reaches it in one call:
/// std's (weak) definition goes through `alloc::alloc` and two shims. Same
/// contract as std's: a zero-sized request gets a dangling, aligned pointer;
/// a failed allocation traps.
#[cfg(all(feature = "allocator", target_family = "wasm", not(target_feature = "atomics")))]
#[unsafe(no_mangle)]
unsafe extern "C" fn cabi_realloc(old: *mut u8, old_len: usize, align: usize, new_len: usize) -> *mut u8 {
    // SAFETY: the canonical ABI passes a power-of-two `align`, and `old`
    // was allocated with (`old_len`, `align`) when `old_len` is non-zero.
    let block = unsafe {
        if old_len == 0 {
            if new_len == 0 {
                return align as *mut u8;
            }
            crate::ALLOCATOR.alloc(Layout::from_size_align_unchecked(new_len, align))
        } else {
            crate::ALLOCATOR.realloc(old, Layout::from_size_align_unchecked(old_len, align), new_len)
        }
    };
    if block.is_null() {
        core::arch::wasm32::unreachable();
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_small_sizes_and_alignments_only() {
        assert_eq!(class_of(1, 1), Some(0));
        assert_eq!(class_of(16, 8), Some(0));
        assert_eq!(class_of(17, 8), Some(1));
        assert_eq!(class_of(SMALL_BYTES_MAX, 1), Some(CLASSES - 1));
        assert_eq!(class_of(SMALL_BYTES_MAX + 1, 1), None);
        assert_eq!(class_of(0, 1), None);
        assert_eq!(class_of(8, 16), None);
    }

    #[test]
    fn freed_blocks_are_reused_and_data_survives_moves() {
        let cache = SmallBlockCache::new();
        let layout = Layout::from_size_align(24, 8).unwrap();
        unsafe {
            let a = cache.alloc(layout);
            let b = cache.alloc(layout);
            assert_ne!(a, b);
            cache.dealloc(a, layout);
            assert_eq!(cache.alloc(layout), a, "the freed block is handed out next");

            // Grow within the class, then out of it, then past the cache.
            a.write_bytes(7, 24);
            let same = cache.realloc(a, layout, 30);
            assert_eq!(same, a);
            let bigger = cache.realloc(same, Layout::from_size_align(30, 8).unwrap(), 100);
            let huge = cache.realloc(bigger, Layout::from_size_align(100, 8).unwrap(), 10_000);
            assert!(std::slice::from_raw_parts(huge, 24).iter().all(|&x| x == 7));
            cache.dealloc(huge, Layout::from_size_align(10_000, 8).unwrap());
            cache.dealloc(b, layout);
        }
    }

    #[test]
    fn a_class_caches_a_bounded_number_of_blocks() {
        let cache = SmallBlockCache::new();
        let layout = Layout::from_size_align(GRAIN, 1).unwrap();
        let n = CACHED_BYTES_PER_CLASS_MAX / GRAIN + 10;
        unsafe {
            let blocks: Vec<*mut u8> = (0..n).map(|_| cache.alloc(layout)).collect();
            for &block in &blocks {
                cache.dealloc(block, layout);
            }
            assert_eq!((*cache.classes.get())[0].cached, CACHED_BYTES_PER_CLASS_MAX / GRAIN);
            let zeroed = cache.alloc_zeroed(layout);
            assert!(std::slice::from_raw_parts(zeroed, GRAIN).iter().all(|&x| x == 0));
            cache.dealloc(zeroed, layout);
        }
    }
}
