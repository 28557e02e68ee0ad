//! Bench-only native state machines: the logic of an example guest, built
//! into the host, with the guest's exact command, reply and snapshot formats.
//!
//! Owns one question: what does the wasm sandbox cost inside the whole write
//! path? Running the same logic with and without the sandbox, under the same
//! client, answers it. Must never be what an operator runs by accident: a
//! native machine has no fuel, no memory limit and no fault containment, and
//! its code ships with the host rather than through the log. So a module file
//! names one only as [`NATIVE_MAGIC`] followed by its name, and
//! [`crate::Module::load`] accepts that only when waft-runtime is built with
//! its `bench-native` cargo feature (`cargo build --release -p waft
//! --features bench-native`); without it the file is refused with a message
//! saying so.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};

use serde::{Deserialize, Serialize};

/// How a module file names a native machine: these bytes, then the name
/// (e.g. `waft-bench-native:atomic`), optionally followed by a newline.
pub const NATIVE_MAGIC: &[u8] = b"waft-bench-native:";

/// The native machines there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NativeKind {
    /// examples/atomic's logic.
    Atomic,
    /// The simulator's registers (see [`Registers`]).
    Registers,
}

impl NativeKind {
    /// The kind a module file names, if it names one. `Err` carries the
    /// unknown name.
    pub fn parse(bytes: &[u8]) -> Option<Result<NativeKind, String>> {
        let name = bytes.strip_prefix(NATIVE_MAGIC)?;
        let name = name.strip_suffix(b"\n").unwrap_or(name);
        Some(match name {
            b"atomic" => Ok(NativeKind::Atomic),
            b"registers" => Ok(NativeKind::Registers),
            other => Err(String::from_utf8_lossy(other).into_owned()),
        })
    }

    pub fn instantiate(self) -> Native {
        match self {
            NativeKind::Atomic => Native::Atomic(Atomic::default()),
            NativeKind::Registers => Native::Registers(Registers::default()),
        }
    }
}

/// A running native machine.
pub enum Native {
    Atomic(Atomic),
    Registers(Registers),
}

impl Native {
    pub fn apply(&mut self, command: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            Native::Atomic(a) => a.apply(command),
            Native::Registers(r) => r.apply(command),
        }
    }

    pub fn query(&self, request: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            Native::Atomic(a) => a.query(request),
            Native::Registers(r) => r.query(request),
        }
    }

    /// Streams the state into `out`; returns the bytes written.
    pub fn save(&self, out: &mut dyn Write) -> Result<u64, String> {
        let mut counted = Counted { out, bytes: 0 };
        match self {
            Native::Atomic(a) => a.save(&mut counted),
            Native::Registers(r) => r.save(&mut counted),
        }
        .map_err(|e| format!("snapshot save failed: {e}"))?;
        counted.flush().map_err(|e| format!("snapshot save failed: {e}"))?;
        Ok(counted.bytes)
    }

    /// Replaces the state with one read from `input`; on an error the state
    /// is unchanged.
    pub fn load(&mut self, input: &mut dyn Read) -> Result<(), String> {
        match self {
            Native::Atomic(a) => {
                let fresh = Atomic::load(input).map_err(|e| format!("snapshot load failed: {e}"))?;
                *a = fresh;
            }
            Native::Registers(r) => {
                *r = Registers::load(input)?;
            }
        }
        Ok(())
    }
}

struct Counted<'a> {
    out: &'a mut dyn Write,
    bytes: u64,
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

// --- the codec: guest-sdk/src/codec.rs's two forms ----------------------------

const BINARY_TAG: u8 = 0x00;

#[derive(Clone, Copy)]
enum Format {
    Binary,
    Json,
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<(T, Format), String> {
    match bytes.first() {
        None => Err("empty message: expected JSON text or 0x00 followed by postcard".into()),
        Some(&BINARY_TAG) => postcard::from_bytes(&bytes[1..])
            .map(|v| (v, Format::Binary))
            .map_err(|e| format!("malformed binary message: {e}")),
        Some(_) => {
            serde_json::from_slice(bytes).map(|v| (v, Format::Json)).map_err(|e| format!("malformed JSON message: {e}"))
        }
    }
}

fn encode<T: Serialize>(value: &T, format: Format) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(32);
    match format {
        Format::Binary => {
            out.push(BINARY_TAG);
            let body = postcard::to_allocvec(value).map_err(|e| format!("cannot encode reply: {e}"))?;
            out.extend_from_slice(&body);
        }
        Format::Json => serde_json::to_writer(&mut out, value).map_err(|e| format!("cannot encode reply: {e}"))?,
    }
    Ok(out)
}

// --- examples/atomic, line for line -------------------------------------------

/// Longest key accepted, in bytes (examples/atomic's `KEY_BYTES_MAX`).
pub const KEY_BYTES_MAX: usize = 4096;

/// examples/atomic's state: a map from key to a 64-bit counter.
#[derive(Default)]
pub struct Atomic {
    counters: BTreeMap<String, i64>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Command {
    Get { key: String },
    Set { key: String, value: i64 },
    Cas { key: String, expect: i64, new: i64 },
    Incr { key: String, delta: i64 },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Query {
    Get { key: String },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Value(i64),
    Success(bool),
}

impl Atomic {
    fn get(&self, key: &str) -> i64 {
        self.counters.get(key).copied().unwrap_or(0)
    }

    fn apply(&mut self, command: &[u8]) -> Result<Vec<u8>, String> {
        let (command, format) = decode::<Command>(command)?;
        let reply = self.apply_command(command)?;
        encode(&reply, format)
    }

    fn apply_command(&mut self, command: Command) -> Result<Reply, String> {
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

    fn query(&self, request: &[u8]) -> Result<Vec<u8>, String> {
        let (Query::Get { key }, format) = decode::<Query>(request)?;
        encode(&self.get(&key), format)
    }

    fn save(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(out);
        for (key, value) in &self.counters {
            writeln!(out, "{value} {}", escape(key))?;
        }
        out.flush()
    }

    fn load(input: &mut dyn Read) -> std::io::Result<Atomic> {
        let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let mut fresh = Atomic::default();
        for line in BufReader::new(input).lines() {
            let line = line?;
            let (value, key) = line.split_once(' ').ok_or_else(|| bad("snapshot line without a space"))?;
            let value = value.parse().map_err(|_| bad("snapshot value is not an integer"))?;
            fresh.counters.insert(unescape(key).ok_or_else(|| bad("bad escape in snapshot key"))?, value);
        }
        Ok(fresh)
    }
}

// --- the simulator's registers ----------------------------------------------

/// The simulator's state machine: 256 registers of u64, each 0 until
/// written. A command is 18 bytes: op u8 (1 put, 2 increment, 3 get) | key
/// u8 | operation id u64 LE (names the client's operation; ignored) | value
/// u64 LE (for a put). Its reply is the register's value after the command,
/// u64 LE. A query with an empty request answers every register that is not
/// 0, as key u8 | value u64 LE pairs in key order; the snapshot is the same.
#[derive(Default)]
pub struct Registers {
    values: BTreeMap<u8, u64>,
}

/// Bytes of a registers command.
pub const REGISTERS_COMMAND_BYTES: usize = 18;

impl Registers {
    fn apply(&mut self, command: &[u8]) -> Result<Vec<u8>, String> {
        let c: &[u8; REGISTERS_COMMAND_BYTES] = command
            .try_into()
            .map_err(|_| format!("a command is {REGISTERS_COMMAND_BYTES} bytes, not {}", command.len()))?;
        let mut value = [0u8; 8];
        value.copy_from_slice(&c[10..18]);
        let register = self.values.entry(c[1]).or_insert(0);
        match c[0] {
            1 => *register = u64::from_le_bytes(value),
            2 => *register = register.checked_add(1).ok_or("register overflow")?,
            3 => {}
            op => return Err(format!("unknown registers op {op}")),
        }
        Ok(register.to_le_bytes().to_vec())
    }

    fn query(&self, request: &[u8]) -> Result<Vec<u8>, String> {
        if !request.is_empty() {
            return Err("a registers query is empty (it answers every register)".into());
        }
        let mut out = Vec::with_capacity(self.values.len() * 9);
        for (&k, &v) in self.values.iter().filter(|(_, v)| **v != 0) {
            out.push(k);
            out.extend_from_slice(&v.to_le_bytes());
        }
        Ok(out)
    }

    fn save(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let bytes = self.query(&[]).map_err(std::io::Error::other)?;
        out.write_all(&bytes)
    }

    fn load(input: &mut dyn Read) -> Result<Registers, String> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes).map_err(|e| format!("snapshot load failed: {e}"))?;
        Registers::decode(&bytes).map(|values| Registers { values })
    }

    /// Every register a query answer (or a snapshot) names.
    pub fn decode(bytes: &[u8]) -> Result<BTreeMap<u8, u64>, String> {
        if !bytes.len().is_multiple_of(9) {
            return Err(format!("registers of {} bytes: not whole key/value pairs", bytes.len()));
        }
        let mut values = BTreeMap::new();
        for pair in bytes.chunks_exact(9) {
            let mut v = [0u8; 8];
            v.copy_from_slice(&pair[1..]);
            if values.insert(pair[0], u64::from_le_bytes(v)).is_some() {
                return Err(format!("register {} named twice", pair[0]));
            }
        }
        Ok(values)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_files_name_native_machines_only_with_the_magic() {
        assert_eq!(NativeKind::parse(b"waft-bench-native:atomic"), Some(Ok(NativeKind::Atomic)));
        assert_eq!(NativeKind::parse(b"waft-bench-native:atomic\n"), Some(Ok(NativeKind::Atomic)));
        assert_eq!(NativeKind::parse(b"waft-bench-native:counter"), Some(Err("counter".into())));
        assert_eq!(NativeKind::parse(b"\0asm\x0d\0\x01\0"), None);
    }

    #[test]
    fn registers_apply_answer_and_restore() {
        let command = |op: u8, key: u8, value: u64| {
            let mut c = vec![op, key];
            c.extend_from_slice(&7u64.to_le_bytes());
            c.extend_from_slice(&value.to_le_bytes());
            c
        };
        let mut sm = NativeKind::Registers.instantiate();
        assert_eq!(sm.apply(&command(1, 3, 40)).unwrap(), 40u64.to_le_bytes());
        assert_eq!(sm.apply(&command(2, 3, 0)).unwrap(), 41u64.to_le_bytes());
        assert_eq!(sm.apply(&command(3, 9, 0)).unwrap(), 0u64.to_le_bytes());
        assert!(sm.apply(&command(4, 3, 0)).unwrap_err().contains("unknown"));
        assert!(sm.apply(b"short").unwrap_err().contains("18 bytes"));
        let all = sm.query(&[]).unwrap();
        assert_eq!(Registers::decode(&all).unwrap(), BTreeMap::from([(3, 41)]));
        let mut saved = Vec::new();
        sm.save(&mut saved).unwrap();
        let mut restored = NativeKind::Registers.instantiate();
        restored.load(&mut &saved[..]).unwrap();
        assert_eq!(restored.query(&[]).unwrap(), all);
        assert!(restored.load(&mut &saved[..5]).is_err(), "a torn snapshot is refused");
        assert_eq!(restored.query(&[]).unwrap(), all, "and leaves the state as it was");
    }

    #[test]
    fn a_failed_load_keeps_the_state() {
        let mut sm = NativeKind::Atomic.instantiate();
        sm.apply(br#"{"set":{"key":"a","value":1}}"#).unwrap();
        let err = sm.load(&mut &b"1 a\nnot-a-number b\n"[..]).unwrap_err();
        assert!(err.contains("not an integer"), "{err}");
        assert_eq!(sm.query(br#"{"get":{"key":"a"}}"#).unwrap(), b"1");
    }
}
