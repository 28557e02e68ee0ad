//! The counter of examples/counter, written against `wit/waft-fsm.wit`
//! with wit-bindgen alone: no SDK. It takes the same JSON commands
//! (`{"incr": N}`, `"get"`), answers with the same JSON number and saves
//! the same 8 bytes, so either can be deployed over the other. (The SDK's
//! counter also speaks the SDK's binary form; this one answers it with an
//! error.)

wit_bindgen::generate!({ path: "../../wit", world: "state-machine" });

use std::cell::Cell;

use exports::waft::fsm::machine::{Entry, Guest, SnapshotReader, SnapshotWriter};
use serde_json::Value;

thread_local! {
    /// The whole state. An instance runs one call at a time.
    static VALUE: Cell<i64> = const { Cell::new(0) };
}

struct Counter;

/// Applies one command; an `Err` rejects it and must leave the state as it was.
fn apply(command: &[u8]) -> Result<Vec<u8>, String> {
    let value = VALUE.get();
    let next = match serde_json::from_slice::<Value>(command) {
        Ok(Value::String(s)) if s == "get" => value,
        Ok(Value::Object(m)) if m.len() == 1 && m.contains_key("incr") => {
            let delta = m["incr"].as_i64().ok_or("incr takes a whole number")?;
            value.checked_add(delta).ok_or("counter overflow")?
        }
        Ok(other) => return Err(format!("unknown command {other}: expected {{\"incr\": N}} or \"get\"")),
        Err(e) => return Err(format!("malformed JSON message: {e}")),
    };
    VALUE.set(next);
    Ok(next.to_string().into_bytes())
}

impl Guest for Counter {
    fn on_apply(entries: Vec<Entry>) -> Vec<Result<Vec<u8>, String>> {
        entries.iter().map(|e| apply(&e.command)).collect()
    }

    fn query(request: Vec<u8>) -> Result<Vec<u8>, String> {
        match serde_json::from_slice::<Value>(&request) {
            Ok(Value::String(s)) if s == "get" => Ok(VALUE.get().to_string().into_bytes()),
            _ => Err("unknown query: expected \"get\"".into()),
        }
    }

    fn on_snapshot_save(writer: &SnapshotWriter) -> Result<(), String> {
        writer.write(&VALUE.get().to_le_bytes())
    }

    fn on_snapshot_load(reader: &SnapshotReader) -> Result<(), String> {
        let mut state = Vec::new();
        loop {
            let chunk = reader.read(64 * 1024)?;
            if chunk.is_empty() {
                break;
            }
            state.extend_from_slice(&chunk);
            if state.len() > 8 {
                break;
            }
        }
        // A counter's state is its value and nothing else: refuse another
        // machine's state rather than misread it.
        let bytes: [u8; 8] = state.try_into().map_err(|_| "not a counter's state: expected exactly 8 bytes")?;
        VALUE.set(i64::from_le_bytes(bytes));
        Ok(())
    }

    fn on_leader_start(_term: u64) {}

    fn on_leader_stop() {}

    fn on_configuration_committed(_voters: Vec<u64>, _learners: Vec<u64>) {}
}

export!(Counter);
