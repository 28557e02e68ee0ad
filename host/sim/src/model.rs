//! The model state machine the simulator replicates: per-key registers with
//! put / increment-and-get / get, the command codec, and the host layer
//! above them that a real node runs too: client envelopes and the
//! exactly-once session table (`waft-session`), saved in every snapshot.
//! Decoding never panics.

use bytes::Bytes;
use std::collections::BTreeMap;
use waft_raft::{Entry, EntryKind};
use waft_session::{Body, Envelope, SessionConfig, SessionError, SessionTable, Verdict};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Put(u64),
    Incr,
    Get,
}

/// A client command as it travels in an envelope's payload.
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
        Some(Command { op_id, key: b[1], op })
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

/// How the replicated machine treats session commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineConfig {
    pub sessions: SessionConfig,
    /// Off: every committed copy of a session command applies, as if the
    /// host kept no sessions (the negative control of the simulator).
    pub dedup: bool,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig { sessions: SessionConfig::default(), dedup: true }
    }
}

/// What one applied entry means for the client waiting on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The leader's no-op, a configuration, or bytes that are no envelope.
    NotClient,
    Registered {
        session_id: u64,
    },
    /// A command's output; `fresh` when this entry applied it (not a saved reply).
    Output {
        op_id: u64,
        output: u64,
        fresh: bool,
    },
    /// A keep-alive or close took effect.
    Done,
    Refused(SessionError),
}

/// The machine every node replicates: the registers (the "guest") under the
/// host's session table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    pub kv: Kv,
    pub sessions: SessionTable,
    dedup: bool,
}

/// A snapshot: the guest's state and the host's session section, as bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineSnapshot {
    pub kv: Kv,
    pub sessions: Bytes,
}

impl Machine {
    pub fn new(cfg: &MachineConfig) -> Machine {
        Machine {
            kv: Kv::default(),
            sessions: SessionTable::new(cfg.sessions.clone()).expect("valid session limits"),
            dedup: cfg.dedup,
        }
    }

    /// Applies committed entries as a node's apply loop does: every client
    /// envelope through the session table first, then the "guest", whose
    /// replies are recorded at the end of the batch (so a second copy in the
    /// same batch meets the first one in flight). Returns (index, term,
    /// outcome) for every normal entry.
    pub fn apply_batch(&mut self, entries: &[Entry]) -> Vec<(u64, u64, Outcome)> {
        let mut out = Vec::with_capacity(entries.len());
        let mut tickets = Vec::new();
        // index -> (op id, output) of commands applied in this batch.
        let mut fresh: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for e in entries {
            if e.kind != EntryKind::Normal || e.data.is_empty() {
                continue;
            }
            let Ok(env) = Envelope::decode(&e.data) else {
                out.push((e.index, e.term, Outcome::NotClient));
                continue;
            };
            let verdict = match env.body {
                Body::Command { payload, .. } if !self.dedup => Verdict::Apply { payload, ticket: None },
                _ => self.sessions.apply(e.index, env),
            };
            let outcome = match verdict {
                Verdict::Apply { payload, ticket } => match Command::decode(&payload) {
                    Some(c) => {
                        let output = self.kv.apply(&c);
                        fresh.insert(e.index, (c.op_id, output));
                        if let Some(t) = ticket {
                            tickets.push((t, Bytes::copy_from_slice(&output.to_le_bytes())));
                        }
                        Outcome::Output { op_id: c.op_id, output, fresh: true }
                    }
                    None => {
                        if let Some(t) = ticket {
                            tickets.push((t, Bytes::new()));
                        }
                        Outcome::NotClient
                    }
                },
                Verdict::Duplicate { reply } => {
                    let Some(c) = command_of(&e.data) else {
                        panic!("entry {}: a saved reply for a non-command", e.index)
                    };
                    let output = u64::from_le_bytes(reply[..].try_into().expect("the model's replies are 8 bytes"));
                    Outcome::Output { op_id: c.op_id, output, fresh: false }
                }
                Verdict::DuplicateInFlight { original_index } => {
                    let (op_id, output) = fresh[&original_index];
                    Outcome::Output { op_id, output, fresh: false }
                }
                Verdict::Registered { session_id } => Outcome::Registered { session_id },
                Verdict::Done => Outcome::Done,
                Verdict::Refused(err) => Outcome::Refused(err),
            };
            out.push((e.index, e.term, outcome));
        }
        for (t, reply) in tickets {
            self.sessions.record_reply(t, reply);
        }
        debug_assert_eq!(self.sessions.check_invariants(), Ok(()));
        out
    }

    /// Taken between batches (the session table refuses otherwise).
    pub fn snapshot(&self) -> MachineSnapshot {
        MachineSnapshot {
            kv: self.kv.clone(),
            sessions: self.sessions.encode_snapshot().expect("snapshots are taken between apply batches"),
        }
    }

    /// Restores from a snapshot as an installing node does.
    pub fn restore(cfg: &MachineConfig, snap: &MachineSnapshot) -> Machine {
        let sessions = SessionTable::decode_snapshot(cfg.sessions.clone(), &snap.sessions)
            .unwrap_or_else(|e| panic!("session snapshot section refused: {e}"));
        Machine { kv: snap.kv.clone(), sessions, dedup: cfg.dedup }
    }
}

/// The command inside a session command's envelope.
fn command_of(data: &Bytes) -> Option<Command> {
    match Envelope::decode(data).ok()?.body {
        Body::Command { payload, .. } | Body::Plain { payload } => Command::decode(&payload),
        _ => None,
    }
}
