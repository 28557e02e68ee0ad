//! The atomic state machine with its counters in the group's key-value store.
//!
//! The same commands, queries and replies as `waft-atomic` (so one load
//! generator drives either), but the state is the host's store rather than
//! the instance's memory: a map from key to a 64-bit counter, each stored
//! under its key's UTF-8 bytes as 8 bytes of little-endian `i64`. A missing
//! key reads as 0; a stored value of any other length is an error result.
//! Commands (JSON form): `{"get":{"key":"a"}}`, `{"set":{"key":"a","value":1}}`,
//! `{"cas":{"key":"a","expect":1,"new":2}}`, `{"incr":{"key":"a","delta":3}}`.
//! Query: `{"get":{"key":"a"}}`.

use serde::{Deserialize, Serialize};
use waft_guest::Position;
use waft_guest::kv::{self, KvStateMachine};

/// Longest key accepted, in bytes: the store's key limit, which is also
/// `waft-atomic`'s (4096).
pub const KEY_BYTES_MAX: usize = kv::KEY_BYTES_MAX;

/// The state machine; its state is the store.
pub struct AtomicKv;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Get { key: String },
    Set { key: String, value: i64 },
    Cas { key: String, expect: i64, new: i64 },
    Incr { key: String, delta: i64 },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Query {
    Get { key: String },
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The counter's value (get, incr).
    Value(i64),
    /// Whether the write happened (set, cas).
    Success(bool),
}

/// The counter under `key`: 0 when missing.
fn read(key: &str) -> Result<i64, String> {
    match kv::get(key.as_bytes()) {
        None => Ok(0),
        Some(bytes) => match <[u8; 8]>::try_from(bytes.as_slice()) {
            Ok(bytes) => Ok(i64::from_le_bytes(bytes)),
            Err(_) => Err(format!("the value stored under {key:?} is {} bytes, not an 8-byte counter", bytes.len())),
        },
    }
}

fn write(key: &str, value: i64) -> Result<(), String> {
    kv::put(key.as_bytes(), &value.to_le_bytes())
}

impl KvStateMachine for AtomicKv {
    type Command = Command;
    type Response = Reply;
    type Query = Query;
    type Answer = i64;

    fn apply(command: Command, _at: Position) -> Result<Reply, String> {
        let key = match &command {
            Command::Get { key } | Command::Set { key, .. } | Command::Cas { key, .. } | Command::Incr { key, .. } => {
                key
            }
        };
        if key.len() > KEY_BYTES_MAX {
            return Err(format!("key of {} bytes exceeds the {KEY_BYTES_MAX}-byte limit", key.len()));
        }
        Ok(match command {
            Command::Get { key } => Reply::Value(read(&key)?),
            Command::Set { key, value } => {
                write(&key, value)?;
                Reply::Success(true)
            }
            Command::Cas { key, expect, new } => {
                let ok = read(&key)? == expect;
                if ok {
                    write(&key, new)?;
                }
                Reply::Success(ok)
            }
            Command::Incr { key, delta } => {
                let value = read(&key)?.checked_add(delta).ok_or("counter overflow")?;
                write(&key, value)?;
                Reply::Value(value)
            }
        })
    }

    fn query(Query::Get { key }: Query) -> Result<i64, String> {
        // No key this long can be stored (apply refuses it), and `waft-atomic`
        // answers 0 for it: do the same without asking the host.
        if key.len() > KEY_BYTES_MAX {
            return Ok(0);
        }
        read(&key)
    }
}

waft_guest::export_kv!(AtomicKv);
