//! The counter state machine: SOFAJRaft's CounterStateMachine as a waft guest.
//!
//! Commands: `{"incr": delta}` adds `delta` and returns the new value;
//! `"get"` returns the value through the log. Query: `"get"`.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use waft_guest::{Position, StateMachine};

#[derive(Default)]
pub struct Counter {
    value: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// increment-and-get(delta)
    Incr(i64),
    /// get, ordered with the writes
    Get,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Query {
    Get,
}

impl StateMachine for Counter {
    type Command = Command;
    type Response = i64;
    type Query = Query;
    type Answer = i64;

    fn apply(&mut self, command: Command, _at: Position) -> Result<i64, String> {
        if let Command::Incr(delta) = command {
            self.value = self.value.checked_add(delta).ok_or("counter overflow")?;
        }
        Ok(self.value)
    }

    fn query(&self, Query::Get: Query) -> Result<i64, String> {
        Ok(self.value)
    }

    fn save(&self, mut out: impl Write) -> std::io::Result<()> {
        out.write_all(&self.value.to_le_bytes())
    }

    fn load(&mut self, mut input: impl Read) -> std::io::Result<()> {
        let mut bytes = [0u8; 8];
        input.read_exact(&mut bytes)?;
        // A counter's state is its value and nothing else: more bytes are
        // another machine's state, which this one must refuse to load.
        let mut rest = [0u8; 1];
        if input.read(&mut rest)? != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a counter's state: bytes follow the 8-byte value",
            ));
        }
        self.value = i64::from_le_bytes(bytes);
        Ok(())
    }
}

waft_guest::export!(Counter);
