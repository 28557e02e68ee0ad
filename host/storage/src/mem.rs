//! An in-memory `LogStore` for unit tests and the deterministic simulator.
//!
//! Owns nothing durable and must never do I/O or depend on time or randomness,
//! so a simulated run replays exactly. It obeys the same rules as the RocksDB
//! store (both go through `plan`) and passes the same conformance suite.

use std::collections::{BTreeMap, VecDeque};

use crate::error::{Error, Result};
use crate::plan::{self, Effect, GroupMeta};
use crate::types::{EntryKind, HardState, LogEntry, LogState, LogStore, Op, WRITE_SET_BYTES_MAX, WriteSet};

#[derive(Clone, Debug, Default)]
struct MemGroup {
    meta: GroupMeta,
    /// Invariant: `entries[i].index == meta.log.first_index() + i`, and the last
    /// one is `meta.log.last_index`.
    entries: VecDeque<LogEntry>,
}

#[derive(Clone, Debug, Default)]
pub struct MemLogStore {
    groups: BTreeMap<u64, MemGroup>,
}

impl MemLogStore {
    pub fn new() -> MemLogStore {
        MemLogStore::default()
    }

    fn apply_effect(group: &mut MemGroup, op: Op, effect: Effect) {
        match (op, effect) {
            (Op::Append(entries), Effect::Appended) => group.entries.extend(entries),
            (_, Effect::Truncated { from, .. }) => {
                let keep = (from - group.meta.log.first_index()) as usize;
                group.entries.truncate(keep);
            }
            (_, Effect::Purged { old_first, remove_last, .. }) => {
                let remove = (remove_last + 1).saturating_sub(old_first) as usize;
                group.entries.drain(..remove.min(group.entries.len()));
            }
            _ => {}
        }
    }
}

impl LogStore for MemLogStore {
    fn write(&mut self, set: WriteSet) -> Result<()> {
        if set.data_bytes() > WRITE_SET_BYTES_MAX {
            return Err(Error::WriteSetTooLarge { bytes: set.data_bytes(), limit: WRITE_SET_BYTES_MAX });
        }
        // Pass 1: validate the whole set on staged metadata, so a refused set
        // changes nothing.
        let mut staged: BTreeMap<u64, Option<GroupMeta>> = BTreeMap::new();
        for (group, op) in set.ops() {
            let meta = staged.entry(*group).or_insert_with(|| self.groups.get(group).map(|g| g.meta));
            plan::apply(*group, meta, op)?;
        }
        // Pass 2: the same steps again, now on the real data; they cannot fail.
        for (group, op) in set.into_ops() {
            let mut meta = self.groups.get(&group).map(|g| g.meta);
            let effect = plan::apply(group, &mut meta, &op)?;
            match meta {
                None => {
                    self.groups.remove(&group);
                }
                Some(meta) => {
                    let entry = self.groups.entry(group).or_default();
                    // Effects are computed against the state before the op.
                    Self::apply_effect(entry, op, effect);
                    entry.meta = meta;
                    debug_assert_eq!(entry.entries.len() as u64, meta.log.last_index - meta.log.purged_index);
                }
            }
        }
        Ok(())
    }

    fn log_state(&self, group: u64) -> LogState {
        self.groups.get(&group).map(|g| g.meta.log).unwrap_or_default()
    }

    fn term(&self, group: u64, index: u64) -> Result<u64> {
        let state = self.log_state(group);
        if index == state.purged_index {
            return Ok(state.purged_term);
        }
        check_range(group, &state, index, index.saturating_add(1))?;
        let g = &self.groups[&group];
        Ok(g.entries[(index - state.first_index()) as usize].term)
    }

    fn entries(&self, group: u64, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<LogEntry>> {
        let state = self.log_state(group);
        check_range(group, &state, lo, hi)?;
        let Some(g) = self.groups.get(&group) else {
            return Ok(Vec::new());
        };
        let start = (lo - state.first_index()) as usize;
        let end = (hi - state.first_index()) as usize;
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for entry in g.entries.range(start..end) {
            bytes += entry.data.len() as u64;
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn hard_state(&self, group: u64) -> HardState {
        self.groups.get(&group).map(|g| g.meta.hard).unwrap_or_default()
    }

    fn config_entries(&self, group: u64) -> Result<Vec<LogEntry>> {
        // A scan is fine here: memory is not the store that has to be fast.
        Ok(self
            .groups
            .get(&group)
            .map(|g| g.entries.iter().filter(|e| e.kind == EntryKind::Config).cloned().collect())
            .unwrap_or_default())
    }

    fn groups(&self) -> Vec<u64> {
        self.groups.keys().copied().collect()
    }
}

/// Checks that `lo..hi` is a readable range of the log described by `state`.
pub(crate) fn check_range(group: u64, state: &LogState, lo: u64, hi: u64) -> Result<()> {
    if lo < state.first_index() {
        return Err(Error::Compacted { group, index: lo, first_index: state.first_index() });
    }
    if hi > state.last_index + 1 {
        return Err(Error::Unavailable { group, index: hi - 1, last_index: state.last_index });
    }
    if lo > hi {
        return Err(Error::BadRange { group, lo, hi });
    }
    Ok(())
}
