//! The model state machine the simulator replicates: per-key registers with
//! put / increment / get, and the command codec. Decoding never panics.

use bytes::Bytes;
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Put(u64),
    Incr,
    Get,
}

/// A client command as it travels in a log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    pub op_id: u64,
    pub key: u8,
    pub op: Op,
}

impl Command {
    pub fn encode(&self) -> Bytes {
        let mut v = Vec::with_capacity(18);
        let (tag, val) = match self.op {
            Op::Put(x) => (1u8, x),
            Op::Incr => (2, 0),
            Op::Get => (3, 0),
        };
        v.push(tag);
        v.push(self.key);
        v.extend_from_slice(&self.op_id.to_le_bytes());
        v.extend_from_slice(&val.to_le_bytes());
        Bytes::from(v)
    }

    pub fn decode(b: &[u8]) -> Option<Command> {
        if b.len() != 18 {
            return None;
        }
        let op_id = u64::from_le_bytes(b[2..10].try_into().ok()?);
        let val = u64::from_le_bytes(b[10..18].try_into().ok()?);
        let op = match b[0] {
            1 => Op::Put(val),
            2 => Op::Incr,
            3 => Op::Get,
            _ => return None,
        };
        Some(Command {
            op_id,
            key: b[1],
            op,
        })
    }
}

/// The replicated state: key -> value (absent = 0).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kv {
    pub values: BTreeMap<u8, u64>,
}

impl Kv {
    /// Applies a command, returning its output (the value after the op).
    pub fn apply(&mut self, c: &Command) -> u64 {
        let v = self.values.entry(c.key).or_insert(0);
        match c.op {
            Op::Put(x) => *v = x,
            Op::Incr => *v += 1,
            Op::Get => {}
        }
        *v
    }
    pub fn get(&self, key: u8) -> u64 {
        self.values.get(&key).copied().unwrap_or(0)
    }
}
