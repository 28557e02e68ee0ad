//! A test-only kv state machine: it does on command what the host's rules
//! for the key-value store are about, so they can be checked against a real
//! component. Its state is the store; keys and values are UTF-8 strings
//! (stored as their bytes; anything read back that is not UTF-8 is shown
//! with U+FFFD in its place).
//!
//! Commands (JSON form) and their replies:
//! - `{"put":{"key":"a","value":"x"}}` → `null`; `{"delete":{"key":"a"}}` →
//!   `null`; `{"get":{"key":"a"}}` → `"x"` or `null`. Basic reads and
//!   writes; a failed put or delete is the entry's error result.
//! - `{"append":{"key":"a","value":"y"}}` → `null`: appends to the value
//!   (an empty one if missing). Applied twice it shows: what a replay of an
//!   entry already in the store would do.
//! - `{"put_many":{"prefix":"p","n":3}}` → `3`: puts `p0`, `p1`, `p2`, each
//!   with its number as value (`"0"`, `"1"`, `"2"`).
//! - `{"put_many_then_err":{"prefix":"p","n":3}}`: the same puts, then the
//!   error result `refused after puts`. None of the puts may survive.
//! - `{"put_many_then_panic":{"prefix":"p","n":3}}`: the same puts, then a
//!   panic (a trap). None of the puts may survive.
//!
//!   In all three, a put that fails ends the entry with its error result.
//! - `{"scan":{"start":"a","end":"b","limit":10}}` (`end` may be `null` or
//!   left out) → `[["a","x"],["a1","y"]]`: one host scan, as the entry sees
//!   the store (its own earlier writes included).
//! - `"memory_counter"` → `1`: adds 1 to a static and replies its new value.
//!   Every entry of a kv state machine runs on a fresh instance, so the
//!   reply is always 1.
//! - `{"put_big":{"key":"b","bytes":2000000}}` → `{"ok":null}` or
//!   `{"err":"<the host's error text>"}`: puts a value of `bytes` zero
//!   bytes and replies the put's own result, so a test can read the host's
//!   limit error. The entry itself succeeds either way (and a failed put
//!   changes nothing).
//!
//! Queries (JSON form) and their answers:
//! - `{"get":{"key":"a"}}` and `{"scan":{"start":"a","end":null,"limit":10}}`:
//!   as the commands, against the store as the last applied entry left it.
//! - `{"count":{"prefix":"p"}}` → `3`: walks every key with that prefix
//!   through `kv::prefix` (which pages through scans), so it counts past
//!   the host's 4,096-pair scan bound.
//! - `{"try_put":{"key":"a","value":"x"}}` → `{"err":"<the host's error>"}`:
//!   a query's store is read-only, so the put must fail; `{"ok":null}` if it
//!   unexpectedly succeeded.
//! - `"memory_counter"` → `1`: as the command; queries run on fresh
//!   instances too.
//!
//! Every key goes to the host as given: one longer than 4 KiB makes a put
//! or delete fail (the entry's error result) and a get or scan trap, which
//! is the host's rule to check.
//!
//! Replies are meant to be read as JSON: [`Reply`] is untagged, so its
//! binary (postcard) form cannot be decoded back into it.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use waft_guest::Position;
use waft_guest::kv::{self, KvStateMachine};

/// The state machine; its state is the store.
pub struct KvProbe;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Put { key: String, value: String },
    Append { key: String, value: String },
    Delete { key: String },
    Get { key: String },
    PutMany { prefix: String, n: u32 },
    PutManyThenErr { prefix: String, n: u32 },
    PutManyThenPanic { prefix: String, n: u32 },
    Scan { start: String, end: Option<String>, limit: u32 },
    MemoryCounter,
    PutBig { key: String, bytes: u32 },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Query {
    Get { key: String },
    Scan { start: String, end: Option<String>, limit: u32 },
    Count { prefix: String },
    TryPut { key: String, value: String },
    MemoryCounter,
}

/// A reply to a command or a query. Untagged: each variant is its plain
/// JSON value.
#[derive(Serialize, Debug, PartialEq)]
#[serde(untagged)]
pub enum Reply {
    /// `null`: put, delete.
    Done,
    /// A string or `null`: get.
    Value(Option<String>),
    /// A number: put_many, count, memory_counter.
    Count(u64),
    /// `[[key, value], ...]`: scan.
    Pairs(Vec<(String, String)>),
    /// `{"ok":null}` or `{"err":"..."}`: put_big, try_put.
    Outcome(Outcome),
}

/// What a host call returned, as a value rather than as the entry's result.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok(()),
    Err(String),
}

impl From<Result<(), String>> for Outcome {
    fn from(result: Result<(), String>) -> Self {
        match result {
            Ok(()) => Outcome::Ok(()),
            Err(e) => Outcome::Err(e),
        }
    }
}

/// Memory that a kv state machine must never see survive a call.
static CALLS: AtomicU64 = AtomicU64::new(0);

fn memory_counter() -> Reply {
    Reply::Count(CALLS.fetch_add(1, Ordering::Relaxed) + 1)
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn get(key: &str) -> Reply {
    Reply::Value(kv::get(key.as_bytes()).map(text))
}

fn scan(start: &str, end: Option<&str>, limit: u32) -> Reply {
    let pairs = kv::scan(start.as_bytes(), end.map(str::as_bytes), limit);
    Reply::Pairs(pairs.into_iter().map(|(k, v)| (text(k), text(v))).collect())
}

/// Put `{prefix}{i}` = `{i}` for i in 0..n.
fn put_many(prefix: &str, n: u32) -> Result<(), String> {
    for i in 0..n {
        kv::put(format!("{prefix}{i}").as_bytes(), i.to_string().as_bytes())?;
    }
    Ok(())
}

impl KvStateMachine for KvProbe {
    type Command = Command;
    type Response = Reply;
    type Query = Query;
    type Answer = Reply;

    fn apply(command: Command, _at: Position) -> Result<Reply, String> {
        Ok(match command {
            Command::Put { key, value } => {
                kv::put(key.as_bytes(), value.as_bytes())?;
                Reply::Done
            }
            Command::Delete { key } => {
                kv::delete(key.as_bytes())?;
                Reply::Done
            }
            Command::Append { key, value } => {
                let mut stored = kv::get(key.as_bytes()).unwrap_or_default();
                stored.extend_from_slice(value.as_bytes());
                kv::put(key.as_bytes(), &stored)?;
                Reply::Done
            }
            Command::Get { key } => get(&key),
            Command::PutMany { prefix, n } => {
                put_many(&prefix, n)?;
                Reply::Count(n.into())
            }
            Command::PutManyThenErr { prefix, n } => {
                put_many(&prefix, n)?;
                return Err("refused after puts".into());
            }
            Command::PutManyThenPanic { prefix, n } => {
                put_many(&prefix, n)?;
                panic!("kv-probe: panic requested after {n} puts");
            }
            Command::Scan { start, end, limit } => scan(&start, end.as_deref(), limit),
            Command::MemoryCounter => memory_counter(),
            Command::PutBig { key, bytes } => {
                let value = vec![0u8; bytes as usize];
                Reply::Outcome(kv::put(key.as_bytes(), &value).into())
            }
        })
    }

    fn query(query: Query) -> Result<Reply, String> {
        Ok(match query {
            Query::Get { key } => get(&key),
            Query::Scan { start, end, limit } => scan(&start, end.as_deref(), limit),
            Query::Count { prefix } => Reply::Count(kv::prefix(prefix.as_bytes()).count() as u64),
            Query::TryPut { key, value } => Reply::Outcome(kv::put(key.as_bytes(), value.as_bytes()).into()),
            Query::MemoryCounter => memory_counter(),
        })
    }
}

waft_guest::export_kv!(KvProbe);
