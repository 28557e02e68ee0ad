//! The generic bodies behind [`crate::export!`].
//!
//! Owns the one instance of the author's state machine and the translation
//! between WIT calls and trait calls. Must never let a malformed command
//! panic: it becomes that entry's error result.

use std::cell::RefCell;
use std::io::{BufReader, BufWriter, Write};

use crate::bindings::waft::fsm::types::{Entry, SnapshotReader as HostReader, SnapshotWriter as HostWriter};
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

/// `on-apply`: one result per entry, in order.
pub fn on_apply<T: StateMachine>(entries: Vec<Entry>) -> Vec<Result<Vec<u8>, String>> {
    with_state::<T, _>(|sm| entries.into_iter().map(|entry| apply_one(sm, entry)).collect())
}

fn apply_one<T: StateMachine>(sm: &mut T, entry: Entry) -> Result<Vec<u8>, String> {
    let (command, format) = codec::decode::<T::Command>(&entry.command).map_err(|e| e.0)?;
    let at = Position { index: entry.index, term: entry.term };
    let response = sm.apply(command, at)?;
    codec::encode(&response, format).map_err(|e| e.0)
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
