//! Shared by the crash-writer child process and the crash test that kills it:
//! the deterministic payloads, the one-line text form of a write, and a model of
//! what the store must hold.
//!
//! Owns the protocol between the two processes. Not part of the storage API
//! (hidden from docs); must never be used by the daemon.

use std::collections::{BTreeMap, VecDeque};

use crate::types::{EntryKind, HardState, LogEntry, LogState, LogStore, WriteSet};

/// Every `CONFIG_EVERY`th index carries a config entry, so the config index is
/// exercised by the crash test too.
const CONFIG_EVERY: u64 = 17;
/// Largest payload the crash writer appends.
const PAYLOAD_BYTES_MAX: u64 = 700;

fn mix(mut x: u64) -> u64 {
    // splitmix64 finalizer: cheap, deterministic, well spread.
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A small seeded generator (splitmix64); no OS randomness, so a seed replays.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `0..n` (n > 0; the bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn seed_for(seed: u64, stream: u64) -> u64 {
        mix(seed ^ mix(stream))
    }
}

/// The payload of entry (group, index, term): its bytes prove which entry it is.
pub fn payload(group: u64, index: u64, term: u64) -> Vec<u8> {
    let h = mix(group ^ mix(index ^ mix(term)));
    let len = (h % PAYLOAD_BYTES_MAX) as usize;
    let mut rng = Rng::new(h);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn kind_of(index: u64) -> EntryKind {
    if index.is_multiple_of(CONFIG_EVERY) { EntryKind::Config } else { EntryKind::Normal }
}

pub fn entry(group: u64, index: u64, term: u64) -> LogEntry {
    LogEntry::new(index, term, kind_of(index), payload(group, index, term))
}

/// One operation of a write, small enough to print on one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineOp {
    Append { group: u64, lo: u64, hi: u64, term: u64 },
    Truncate { group: u64, from: u64 },
    Purge { group: u64, upto: u64, term: u64 },
    Hard { group: u64, term: u64, vote: Option<u64>, commit: u64 },
}

pub fn encode_ops(ops: &[LineOp]) -> String {
    let parts: Vec<String> = ops
        .iter()
        .map(|op| match op {
            LineOp::Append { group, lo, hi, term } => format!("a:{group}:{lo}:{hi}:{term}"),
            LineOp::Truncate { group, from } => format!("t:{group}:{from}"),
            LineOp::Purge { group, upto, term } => format!("p:{group}:{upto}:{term}"),
            LineOp::Hard { group, term, vote, commit } => {
                format!("h:{group}:{term}:{}:{commit}", vote.map(|v| v.to_string()).unwrap_or("-".into()))
            }
        })
        .collect();
    parts.join(" ")
}

pub fn parse_ops(line: &str) -> Result<Vec<LineOp>, String> {
    let num = |s: &str| s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
    line.split_whitespace()
        .map(|part| {
            let f: Vec<&str> = part.split(':').collect();
            match f.as_slice() {
                ["a", g, lo, hi, t] => Ok(LineOp::Append { group: num(g)?, lo: num(lo)?, hi: num(hi)?, term: num(t)? }),
                ["t", g, from] => Ok(LineOp::Truncate { group: num(g)?, from: num(from)? }),
                ["p", g, upto, t] => Ok(LineOp::Purge { group: num(g)?, upto: num(upto)?, term: num(t)? }),
                ["h", g, t, v, c] => Ok(LineOp::Hard {
                    group: num(g)?,
                    term: num(t)?,
                    vote: if *v == "-" { None } else { Some(num(v)?) },
                    commit: num(c)?,
                }),
                _ => Err(format!("bad op {part:?}")),
            }
        })
        .collect()
}

pub fn to_write_set(ops: &[LineOp]) -> WriteSet {
    let mut set = WriteSet::new();
    for op in ops {
        match *op {
            LineOp::Append { group, lo, hi, term } => {
                set.append(group, (lo..=hi).map(|i| entry(group, i, term)).collect());
            }
            LineOp::Truncate { group, from } => {
                set.truncate(group, from);
            }
            LineOp::Purge { group, upto, term } => {
                set.purge(group, upto, term);
            }
            LineOp::Hard { group, term, vote, commit } => {
                set.set_hard_state(group, HardState { term, vote, commit });
            }
        }
    }
    set
}

/// The next write the crash writer makes, chosen from the store's current state.
/// Follows Raft's shape: truncation only above the commit index (with a new
/// term), purges only of committed entries or past the end (snapshot install).
pub fn next_ops<S: LogStore>(store: &S, rng: &mut Rng, groups: &[u64], log_len_max: u64) -> Vec<LineOp> {
    let mut ops = Vec::new();
    let always = groups[rng.below(groups.len() as u64) as usize];
    for &group in groups {
        if group != always && rng.below(3) == 0 {
            continue;
        }
        let state = store.log_state(group);
        let mut hs = store.hard_state(group);
        let mut last = state.last_index;
        if hs.term == 0 || rng.below(40) == 0 {
            hs.term += 1;
            hs.vote = Some(rng.below(5));
        }
        let floor = state.purged_index.max(hs.commit);
        let roll = rng.below(100);
        if roll < 6 && last > floor {
            let from = floor + 1 + rng.below(last - floor);
            hs.term += 1;
            hs.vote = None;
            ops.push(LineOp::Truncate { group, from });
            last = from - 1;
        } else if roll < 8 {
            // A snapshot install ahead of the log: everything goes.
            let upto = last + 1 + rng.below(10);
            ops.push(LineOp::Purge { group, upto, term: hs.term });
            last = upto;
            hs.commit = hs.commit.max(upto);
        } else if (roll < 12 || last - state.purged_index > log_len_max) && hs.commit > state.purged_index {
            let upto = state.purged_index + 1 + rng.below(hs.commit - state.purged_index);
            let Ok(term) = store.term(group, upto) else {
                continue;
            };
            ops.push(LineOp::Purge { group, upto, term });
        }
        let count = 1 + rng.below(32);
        ops.push(LineOp::Append { group, lo: last + 1, hi: last + count, term: hs.term });
        last += count;
        hs.commit = hs.commit.max(last.saturating_sub(rng.below(8)));
        ops.push(LineOp::Hard { group, term: hs.term, vote: hs.vote, commit: hs.commit });
    }
    ops
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ModelGroup {
    purged_index: u64,
    purged_term: u64,
    /// Term of each entry from `purged_index + 1` on.
    terms: VecDeque<u64>,
    hard: HardState,
}

/// What the store must hold after a sequence of acknowledged writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    groups: BTreeMap<u64, ModelGroup>,
}

impl Model {
    pub fn apply(&mut self, ops: &[LineOp]) {
        for op in ops {
            match *op {
                LineOp::Append { group, lo, hi, term } => {
                    let g = self.groups.entry(group).or_default();
                    assert_eq!(lo, g.purged_index + g.terms.len() as u64 + 1, "model append gap");
                    g.terms.extend((lo..=hi).map(|_| term));
                }
                LineOp::Truncate { group, from } => {
                    let g = self.groups.entry(group).or_default();
                    g.terms.truncate((from - g.purged_index - 1) as usize);
                }
                LineOp::Purge { group, upto, term } => {
                    let g = self.groups.entry(group).or_default();
                    if upto > g.purged_index {
                        let drop = ((upto - g.purged_index) as usize).min(g.terms.len());
                        g.terms.drain(..drop);
                        g.purged_index = upto;
                        g.purged_term = term;
                    }
                }
                LineOp::Hard { group, term, vote, commit } => {
                    self.groups.entry(group).or_default().hard = HardState { term, vote, commit };
                }
            }
        }
    }

    pub fn hard_state(&self, group: u64) -> HardState {
        self.groups.get(&group).map(|g| g.hard).unwrap_or_default()
    }

    /// Compares the store with the model exactly: bounds, every entry's term,
    /// kind and payload, the config index and hard state.
    pub fn check<S: LogStore>(&self, store: &S) -> Result<(), String> {
        let groups: Vec<u64> = self.groups.keys().copied().collect();
        if store.groups() != groups {
            return Err(format!("groups {:?}, model {:?}", store.groups(), groups));
        }
        for (&group, g) in &self.groups {
            let want = LogState {
                purged_index: g.purged_index,
                purged_term: g.purged_term,
                last_index: g.purged_index + g.terms.len() as u64,
            };
            let state = store.log_state(group);
            if state != want {
                return Err(format!("group {group}: log state {state:?}, model {want:?}"));
            }
            if store.hard_state(group) != g.hard {
                return Err(format!("group {group}: hard state {:?}, model {:?}", store.hard_state(group), g.hard));
            }
            let entries = store
                .entries(group, want.first_index(), want.last_index + 1, u64::MAX)
                .map_err(|e| format!("group {group}: reading the log: {e}"))?;
            if entries.len() != g.terms.len() {
                return Err(format!("group {group}: read {} entries, model has {}", entries.len(), g.terms.len()));
            }
            let mut configs = Vec::new();
            for (k, e) in entries.iter().enumerate() {
                let index = want.first_index() + k as u64;
                if *e != entry(group, index, g.terms[k]) {
                    return Err(format!(
                        "group {group}: entry {index} differs (term {}, model term {})",
                        e.term, g.terms[k]
                    ));
                }
                if e.kind == EntryKind::Config {
                    configs.push(index);
                }
            }
            let indexed: Vec<u64> = store
                .config_entries(group)
                .map_err(|e| format!("group {group}: config index: {e}"))?
                .iter()
                .map(|e| e.index)
                .collect();
            if indexed != configs {
                return Err(format!("group {group}: config index {indexed:?}, log has {configs:?}"));
            }
        }
        Ok(())
    }
}
