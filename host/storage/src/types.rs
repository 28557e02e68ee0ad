//! The record types and the `LogStore` contract shared by every log store.
//!
//! Owns the vocabulary between the daemon and storage. It must never depend on the
//! Raft core's types: the daemon converts, so either side can change alone.

use bytes::Bytes;

use crate::error::Result;

/// What an entry carries. Only `Config` is special to storage: configuration
/// entries are also indexed in their own key range so a restarting node finds
/// its membership without scanning the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    Normal,
    Config,
}

/// One Raft log entry as storage keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub index: u64,
    pub term: u64,
    pub kind: EntryKind,
    /// Opaque to storage.
    pub data: Bytes,
}

impl LogEntry {
    pub fn new(index: u64, term: u64, kind: EntryKind, data: impl Into<Bytes>) -> LogEntry {
        LogEntry { index, term, kind, data: data.into() }
    }
}

/// The Raft hard state of one group.
///
/// Invariants enforced on every write: `term` never decreases; `commit` never
/// decreases; within one term a cast vote never changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub vote: Option<u64>,
    pub commit: u64,
}

/// Where one group's log starts and ends.
///
/// Invariant: `purged_index <= last_index`. Entries `purged_index + 1 ..= last_index`
/// are present; `purged_index`/`purged_term` describe the last entry removed by a
/// purge (the last one a snapshot covers), or 0/0 for a log never purged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogState {
    pub purged_index: u64,
    pub purged_term: u64,
    pub last_index: u64,
}

impl LogState {
    /// First index present in the log; `last_index + 1` when the log is empty.
    pub fn first_index(&self) -> u64 {
        self.purged_index + 1
    }

    pub fn is_empty(&self) -> bool {
        self.last_index == self.purged_index
    }
}

/// Bound on the payload bytes one [`WriteSet`] may carry. A group-commit round
/// larger than this is a caller bug (rounds should be bounded by the driver's
/// in-flight window, far below this), and is refused before anything is written.
pub const WRITE_SET_BYTES_MAX: usize = 256 * 1024 * 1024;

/// One operation on one group's log. Operations in a [`WriteSet`] apply in the
/// order they were added, all or nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Append entries. They must be consecutive and start at `last_index + 1`;
    /// overwriting a conflicting suffix takes an explicit `Truncate` first.
    Append(Vec<LogEntry>),
    /// Remove entries `from..`. `from` must be above the purged prefix; `from`
    /// beyond the last index is a no-op.
    Truncate {
        from: u64,
    },
    /// Remove entries `..=upto` because a snapshot covers them; `term` is the
    /// term of entry `upto`. Purging past the last index empties the log and moves
    /// its start (snapshot install). Purging at or below the current purge point
    /// is a no-op. Config index entries `..=upto` go too: the snapshot's meta
    /// carries the configuration as of `upto`.
    Purge {
        upto: u64,
        term: u64,
    },
    SetHardState(HardState),
    /// Forget the group entirely (log, config index, hard state).
    DropGroup,
}

/// Everything one group-commit round persists, across any number of groups,
/// written as one atomic batch with one sync (none when only lazy hard
/// states are in it: see [`WriteSet::set_hard_state_lazily`]).
#[derive(Clone, Debug, Default)]
pub struct WriteSet {
    ops: Vec<(u64, Op)>,
    data_bytes: usize,
    /// Some op must be durable when the write returns.
    must_sync: bool,
}

impl WriteSet {
    pub fn new() -> WriteSet {
        WriteSet::default()
    }

    pub fn append(&mut self, group: u64, entries: Vec<LogEntry>) -> &mut WriteSet {
        if entries.is_empty() {
            return self;
        }
        self.data_bytes += entries.iter().map(|e| e.data.len()).sum::<usize>();
        self.ops.push((group, Op::Append(entries)));
        self.must_sync = true;
        self
    }

    pub fn truncate(&mut self, group: u64, from: u64) -> &mut WriteSet {
        self.ops.push((group, Op::Truncate { from }));
        self.must_sync = true;
        self
    }

    pub fn purge(&mut self, group: u64, upto: u64, term: u64) -> &mut WriteSet {
        self.ops.push((group, Op::Purge { upto, term }));
        self.must_sync = true;
        self
    }

    pub fn set_hard_state(&mut self, group: u64, hard_state: HardState) -> &mut WriteSet {
        self.ops.push((group, Op::SetHardState(hard_state)));
        self.must_sync = true;
        self
    }

    /// Sets the hard state without asking for a sync of its own: for a
    /// change of the commit index alone, which a restart may lose (the
    /// index is learned again from the leader) as long as it never goes
    /// back past an earlier durable one. RocksDB's log is sequential, so
    /// the next synced write makes it durable too.
    pub fn set_hard_state_lazily(&mut self, group: u64, hard_state: HardState) -> &mut WriteSet {
        self.ops.push((group, Op::SetHardState(hard_state)));
        self
    }

    pub fn drop_group(&mut self, group: u64) -> &mut WriteSet {
        self.ops.push((group, Op::DropGroup));
        self.must_sync = true;
        self
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Whether the write must be durable when it returns (false only when it
    /// holds nothing but lazy hard states).
    pub fn must_sync(&self) -> bool {
        self.must_sync
    }

    /// Moves every op of `other` to the end of this set, keeping their order.
    pub fn extend(&mut self, other: WriteSet) {
        self.ops.extend(other.ops);
        self.data_bytes += other.data_bytes;
        self.must_sync |= other.must_sync;
    }

    /// Payload bytes of all appended entries.
    pub fn data_bytes(&self) -> usize {
        self.data_bytes
    }

    pub fn ops(&self) -> &[(u64, Op)] {
        &self.ops
    }

    pub fn into_ops(self) -> Vec<(u64, Op)> {
        self.ops
    }
}

/// The storage-side contract the daemon drives: a durable Raft log, hard state
/// and configuration index for many groups.
///
/// Reads answer from what previous `write` calls made durable. A group never
/// written reads as an empty log at index 0 with a default hard state.
pub trait LogStore: Send {
    /// Apply `set` atomically and return only once it is on stable storage.
    /// A set that breaks an invariant (gap, purge conflict, hard state going
    /// backwards) is refused whole, before anything is written. After an I/O
    /// failure the store refuses further writes (`Error::Poisoned`): what reached
    /// the disk is unknown, so the caller must restart and recover.
    fn write(&mut self, set: WriteSet) -> Result<()>;

    /// Where the group's log starts and ends.
    fn log_state(&self, group: u64) -> LogState;

    fn first_index(&self, group: u64) -> u64 {
        self.log_state(group).first_index()
    }

    fn last_index(&self, group: u64) -> u64 {
        self.log_state(group).last_index
    }

    /// Term of the entry at `index`; the purge point answers with its recorded
    /// term, index 0 of a never-purged log with 0.
    fn term(&self, group: u64, index: u64) -> Result<u64>;

    /// Entries `lo..hi` in order, stopping before the entry that would take the
    /// payload total over `max_bytes`, but always at least one entry when
    /// `lo < hi`. `lo` below the first index is `Error::Compacted`; `hi` beyond
    /// `last_index + 1` is `Error::Unavailable`.
    fn entries(&self, group: u64, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<LogEntry>>;

    fn hard_state(&self, group: u64) -> HardState;

    /// The configuration entries still in the log, ascending by index, found
    /// through their own index rather than a log scan.
    fn config_entries(&self, group: u64) -> Result<Vec<LogEntry>>;

    /// Every group with any state, ascending.
    fn groups(&self) -> Vec<u64>;
}
