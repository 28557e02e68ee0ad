//! The generic bodies behind [`crate::export!`].
//!
//! Owns the one instance of the author's state machine and the translation
//! between WIT calls and trait calls. Must never let a malformed command
//! panic: it becomes that entry's error result.

use std::alloc::Layout;
use std::cell::RefCell;
use std::io::{BufReader, BufWriter, Write};
use std::slice;

use crate::bindings::waft::fsm::types::{SnapshotReader as HostReader, SnapshotWriter as HostWriter};
use crate::codec;
use crate::snapshot::{CHUNK_BYTES_MAX, SnapshotReader, SnapshotWriter};
use crate::{Position, StateMachine};

thread_local! {
    // A component instance is single-threaded: this is the one state.
    static STATE: RefCell<Option<Box<dyn std::any::Any>>> = const { RefCell::new(None) };
}

/// Run `f` on the state, creating it with `Default` on first use.
pub fn with_state<T: StateMachine, R>(f: impl FnOnce(&mut T) -> R) -> R {
    STATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let any = slot.get_or_insert_with(|| Box::new(T::default()));
        match any.downcast_mut::<T>() {
            Some(state) => f(state),
            // Only one type is ever exported per component.
            None => unreachable!("waft_guest::export! used with two different types"),
        }
    })
}

/// Size and alignment of one `waft:fsm/types.entry` in memory: `index` and
/// `term` as u64, then the command's pointer and length.
const ENTRY_SIZE: usize = 24;
const ENTRY_ALIGN: usize = 8;

/// One `result<list<u8>, string>` in memory: a discriminant byte (0 = ok),
/// then the payload's pointer and length at offset 4.
#[repr(C)]
struct RawResult {
    tag: u8,
    ptr: *const u8,
    len: usize,
}

// The layouts above are wasm32's (4-byte pointers); elsewhere this module
// only has to compile.
#[cfg(target_arch = "wasm32")]
const _: () = assert!(size_of::<RawResult>() == 12 && align_of::<RawResult>() == 4 && size_of::<usize>() == 4);

/// `on-apply`'s buffers, kept from one call to the next so that a batch
/// allocates nothing per entry once they have grown to its size.
struct ApplyBuffers {
    /// Every reply (or error text) of the current call, back to back.
    replies: Vec<u8>,
    /// One per entry; `ptr` holds an offset into `replies` until the batch
    /// is done and `replies` can no longer move.
    results: Vec<RawResult>,
    /// The return area: the results' pointer and length.
    ret: [usize; 2],
}

/// Largest reply buffer kept between calls; a bigger one, grown by an
/// unusual batch, is released after that call.
const RETAINED_BYTES_MAX: usize = 1 << 20;

thread_local! {
    static APPLY: RefCell<ApplyBuffers> =
        const { RefCell::new(ApplyBuffers { replies: Vec::new(), results: Vec::new(), ret: [0; 2] }) };
}

/// The core export behind `on-apply`, written by hand rather than
/// generated: wit-bindgen's version copies the entries into a `Vec`, gives
/// every reply its own allocation (shrunk to fit, then freed again after the
/// host copied it), where this one encodes every reply into one reused
/// buffer and reads each command where the host put it.
///
/// # Safety
///
/// Only the canonical ABI may call this: `entries` points at `len` entry
/// records, each command allocated with `cabi_realloc` for this call and
/// owned by it.
pub unsafe fn on_apply<T: StateMachine>(entries: *mut u8, len: usize) -> *mut u8 {
    #[cfg(target_arch = "wasm32")]
    wit_bindgen::rt::run_ctors_once();
    APPLY.with(|cell| {
        let buffers = &mut *cell.borrow_mut();
        buffers.replies.clear();
        buffers.results.clear();
        buffers.results.reserve(len);
        with_state::<T, _>(|sm| {
            for i in 0..len {
                // SAFETY: the host wrote `len` records at `entries`.
                let (at, command, command_len) = unsafe {
                    let record = entries.add(i * ENTRY_SIZE);
                    let at = Position { index: record.cast::<u64>().read(), term: record.add(8).cast::<u64>().read() };
                    (at, record.add(16).cast::<*mut u8>().read(), record.add(20).cast::<usize>().read())
                };
                let start = buffers.replies.len();
                let ok = if command_len == 0 {
                    apply_into(sm, &[], at, &mut buffers.replies)
                } else {
                    // SAFETY: the host copied the command there, and the
                    // allocation is this call's to free.
                    unsafe {
                        let ok = apply_into(sm, slice::from_raw_parts(command, command_len), at, &mut buffers.replies);
                        free(command, Layout::from_size_align_unchecked(command_len, 1));
                        ok
                    }
                };
                let tag = if ok { 0 } else { 1 };
                buffers.results.push(RawResult { tag, ptr: start as *const u8, len: buffers.replies.len() - start });
            }
        });
        if len != 0 {
            // SAFETY: the record array is this call's, allocated with this layout.
            unsafe { free(entries, Layout::from_size_align_unchecked(len * ENTRY_SIZE, ENTRY_ALIGN)) };
        }
        let base = buffers.replies.as_ptr();
        for result in &mut buffers.results {
            // SAFETY: `ptr` holds an offset within `replies`.
            result.ptr = unsafe { base.add(result.ptr as usize) };
        }
        buffers.ret = [buffers.results.as_ptr() as usize, len];
        buffers.ret.as_mut_ptr().cast()
    })
}

/// `on-apply`'s post-return: the replies stay in their buffers for the next
/// call, unless a large batch grew them past what is worth keeping.
pub fn on_apply_post_return() {
    APPLY.with(|cell| {
        let buffers = &mut *cell.borrow_mut();
        if buffers.replies.capacity() > RETAINED_BYTES_MAX {
            buffers.replies = Vec::new();
        }
        if buffers.results.capacity() * size_of::<RawResult>() > RETAINED_BYTES_MAX {
            buffers.results = Vec::new();
        }
    })
}

/// Apply one command and append its reply (`true`) or error text (`false`)
/// to `out`.
fn apply_into<T: StateMachine>(sm: &mut T, command: &[u8], at: Position, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let result = codec::decode::<T::Command>(command).map_err(|e| e.0).and_then(|(command, format)| {
        let response = sm.apply(command, at)?;
        if let Err(e) = codec::encode_into(&response, format, out) {
            // The command applied, so an error result (which must leave the
            // state unchanged) would be a lie. A trap makes the host undo
            // the entry instead, on every replica alike.
            panic!("the command applied but its reply cannot be encoded: {}", e.0);
        }
        Ok(())
    });
    match result {
        Ok(()) => true,
        Err(message) => {
            out.truncate(start);
            out.extend_from_slice(message.as_bytes());
            false
        }
    }
}

/// Free what the canonical ABI allocated for this call: straight into the
/// allocator when it is the SDK's, else through `std::alloc`.
///
/// # Safety
///
/// As `std::alloc::dealloc`.
#[inline]
pub(crate) unsafe fn free(block: *mut u8, layout: Layout) {
    #[cfg(all(feature = "allocator", target_family = "wasm", not(target_feature = "atomics")))]
    // SAFETY: the caller's contract; ALLOCATOR is the global allocator.
    unsafe {
        std::alloc::GlobalAlloc::dealloc(&crate::ALLOCATOR, block, layout)
    }
    #[cfg(not(all(feature = "allocator", target_family = "wasm", not(target_feature = "atomics"))))]
    // SAFETY: the caller's contract.
    unsafe {
        std::alloc::dealloc(block, layout)
    }
}

/// `query`: decode, answer, encode in the request's form.
pub fn query<T: StateMachine>(request: Vec<u8>) -> Result<Vec<u8>, String> {
    let (q, format) = codec::decode::<T::Query>(&request).map_err(|e| e.0)?;
    let answer = with_state::<T, _>(|sm| sm.query(q))?;
    codec::encode(&answer, format).map_err(|e| e.0)
}

/// `on-snapshot-save`: stream the state through a chunking buffer.
pub fn save<T: StateMachine>(writer: &HostWriter) -> Result<(), String> {
    with_state::<T, _>(|sm| {
        let mut out = BufWriter::with_capacity(CHUNK_BYTES_MAX, SnapshotWriter::new(writer));
        sm.save(&mut out).map_err(|e| format!("snapshot save failed: {e}"))?;
        out.flush().map_err(|e| format!("snapshot save failed: {e}"))
    })
}

/// `on-snapshot-load`: replace the state with a fresh one loaded from the
/// stream, so a failed load leaves the previous state untouched.
pub fn load<T: StateMachine>(reader: &HostReader) -> Result<(), String> {
    let mut fresh = T::default();
    let input = BufReader::with_capacity(CHUNK_BYTES_MAX, SnapshotReader::new(reader));
    fresh.load(input).map_err(|e| format!("snapshot load failed: {e}"))?;
    with_state::<T, _>(|sm| *sm = fresh);
    Ok(())
}
