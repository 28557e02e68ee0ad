//! The rules every log store enforces, in one place, so the RocksDB store and the
//! in-memory store cannot drift apart.
//!
//! Owns validation of one [`Op`] against one group's state and the state change it
//! causes. Must never do I/O: stores call `apply` on a staged copy of each group
//! first, and touch their data only when the whole set has passed.

use crate::error::{Error, Result};
use crate::types::{HardState, LogState, Op};

/// What storage tracks per group besides the entries themselves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct GroupMeta {
    pub log: LogState,
    pub hard: HardState,
}

/// What an accepted op changes, for the store to mirror in its own structures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    Nothing,
    /// Entries were appended (the op carries them).
    Appended,
    /// Entries `from..=old_last` go.
    Truncated {
        from: u64,
        old_last: u64,
    },
    /// Entries `old_first..=remove_last` go (none when `remove_last < old_first`)
    /// and the purge point moves to `upto`.
    Purged {
        old_first: u64,
        remove_last: u64,
        upto: u64,
        term: u64,
    },
    HardState(HardState),
    Dropped,
}

fn refuse(group: u64, reason: String) -> Error {
    Error::InvalidWrite { group, reason }
}

/// Validates `op` against `meta` (None: the group does not exist) and applies its
/// effect to `meta`. On error `meta` is unchanged.
pub(crate) fn apply(group: u64, meta: &mut Option<GroupMeta>, op: &Op) -> Result<Effect> {
    if let Op::DropGroup = op {
        return Ok(match meta.take() {
            Some(_) => Effect::Dropped,
            None => Effect::Nothing,
        });
    }
    let current = meta.unwrap_or_default();
    let (next, effect) = step(group, current, op)?;
    *meta = Some(next);
    Ok(effect)
}

fn step(group: u64, mut meta: GroupMeta, op: &Op) -> Result<(GroupMeta, Effect)> {
    let log = meta.log;
    let effect = match op {
        Op::Append(entries) => {
            let Some(first) = entries.first() else {
                return Ok((meta, Effect::Nothing));
            };
            if first.index != log.last_index + 1 {
                return Err(refuse(
                    group,
                    format!(
                        "append starts at index {} but the log ends at {} (truncate a conflicting suffix first)",
                        first.index, log.last_index
                    ),
                ));
            }
            for pair in entries.windows(2) {
                if pair[1].index != pair[0].index + 1 {
                    return Err(refuse(
                        group,
                        format!("appended entries jump from index {} to {}", pair[0].index, pair[1].index),
                    ));
                }
            }
            let last = entries[entries.len() - 1].index;
            if last == u64::MAX {
                return Err(refuse(group, "index u64::MAX is reserved".to_string()));
            }
            meta.log.last_index = last;
            Effect::Appended
        }
        Op::Truncate { from } => {
            let from = *from;
            if from <= log.purged_index {
                return Err(refuse(
                    group,
                    format!("truncate from {from} reaches into the purged prefix (first index {})", log.first_index()),
                ));
            }
            if from > log.last_index {
                Effect::Nothing
            } else {
                meta.log.last_index = from - 1;
                Effect::Truncated { from, old_last: log.last_index }
            }
        }
        Op::Purge { upto, term } => {
            let (upto, term) = (*upto, *term);
            if upto == u64::MAX {
                return Err(refuse(group, "index u64::MAX is reserved".to_string()));
            }
            if upto <= log.purged_index {
                Effect::Nothing
            } else {
                meta.log.purged_index = upto;
                meta.log.purged_term = term;
                meta.log.last_index = log.last_index.max(upto);
                Effect::Purged { old_first: log.first_index(), remove_last: upto.min(log.last_index), upto, term }
            }
        }
        Op::SetHardState(hs) => {
            check_hard_state(group, &meta.hard, hs)?;
            meta.hard = *hs;
            Effect::HardState(*hs)
        }
        Op::DropGroup => unreachable!("handled by apply"),
    };
    debug_assert!(meta.log.purged_index <= meta.log.last_index);
    Ok((meta, effect))
}

fn check_hard_state(group: u64, old: &HardState, new: &HardState) -> Result<()> {
    if new.term < old.term {
        return Err(refuse(group, format!("hard state term goes back from {} to {}", old.term, new.term)));
    }
    if new.commit < old.commit {
        return Err(refuse(group, format!("commit index goes back from {} to {}", old.commit, new.commit)));
    }
    if new.term == old.term && old.vote.is_some() && new.vote != old.vote {
        return Err(refuse(group, format!("vote in term {} changes from {:?} to {:?}", new.term, old.vote, new.vote)));
    }
    Ok(())
}
