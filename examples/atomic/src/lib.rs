//! The atomic state machine: SOFAJRaft's AtomicStateMachine as a waft guest.
//!
//! A map from key to a 64-bit counter; a missing key reads as 0.
//! Commands (JSON form): `{"get":{"key":"a"}}`, `{"set":{"key":"a","value":1}}`,
//! `{"cas":{"key":"a","expect":1,"new":2}}`, `{"incr":{"key":"a","delta":3}}`.
//! Query: `{"get":{"key":"a"}}`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};

use serde::{Deserialize, Serialize};
use waft_guest::{Position, StateMachine};

/// Longest key accepted, in bytes: keeps one entry's memory bounded.
pub const KEY_BYTES_MAX: usize = 4096;

#[derive(Default)]
pub struct Atomic {
    // BTreeMap: snapshots and any listing come out in one order everywhere.
    counters: BTreeMap<String, i64>,
}

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

impl Atomic {
    fn get(&self, key: &str) -> i64 {
        self.counters.get(key).copied().unwrap_or(0)
    }
}

impl StateMachine for Atomic {
    type Command = Command;
    type Response = Reply;
    type Query = Query;
    type Answer = i64;

    fn apply(&mut self, command: Command, _at: Position) -> Result<Reply, String> {
        let key = match &command {
            Command::Get { key } | Command::Set { key, .. } | Command::Cas { key, .. } | Command::Incr { key, .. } => {
                key
            }
        };
        if key.len() > KEY_BYTES_MAX {
            return Err(format!("key of {} bytes exceeds the {KEY_BYTES_MAX}-byte limit", key.len()));
        }
        Ok(match command {
            Command::Get { key } => Reply::Value(self.get(&key)),
            Command::Set { key, value } => {
                self.counters.insert(key, value);
                Reply::Success(true)
            }
            Command::Cas { key, expect, new } => {
                let ok = self.get(&key) == expect;
                if ok {
                    self.counters.insert(key, new);
                }
                Reply::Success(ok)
            }
            Command::Incr { key, delta } => {
                let value = self.get(&key).checked_add(delta).ok_or("counter overflow")?;
                self.counters.insert(key, value);
                Reply::Value(value)
            }
        })
    }

    fn query(&self, Query::Get { key }: Query) -> Result<i64, String> {
        Ok(self.get(&key))
    }

    /// One line per key: the value, a space, the key. Streams; no copy of the
    /// whole state.
    fn save(&self, mut out: impl Write) -> std::io::Result<()> {
        for (key, value) in &self.counters {
            writeln!(out, "{value} {}", escape(key))?;
        }
        Ok(())
    }

    fn load(&mut self, input: impl Read) -> std::io::Result<()> {
        let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        for line in BufReader::new(input).lines() {
            let line = line?;
            let (value, key) = line.split_once(' ').ok_or_else(|| bad("snapshot line without a space"))?;
            let value = value.parse().map_err(|_| bad("snapshot value is not an integer"))?;
            self.counters.insert(unescape(key).ok_or_else(|| bad("bad escape in snapshot key"))?, value);
        }
        Ok(())
    }
}

/// Keys may hold any character; newlines and backslashes are escaped so one
/// line stays one entry.
fn escape(key: &str) -> String {
    key.replace('\\', "\\\\").replace('\n', "\\n")
}

fn unescape(key: &str) -> Option<String> {
    let mut out = String::with_capacity(key.len());
    let mut chars = key.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next()? {
                '\\' => out.push('\\'),
                'n' => out.push('\n'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

waft_guest::export!(Atomic);
