//! The in-memory log since the last snapshot (etcd's MemoryStorage + unstable
//! in one): entries, commit/applied/persisted marks, and which entries the
//! runtime has not been handed yet. Must never do I/O; its memory is bounded by
//! the snapshot margin plus the uncommitted-entries bound of the leader.

use crate::types::Entry;

#[derive(Clone, Debug)]
pub struct RaftLog {
    /// Last index and term covered by the latest snapshot (0, 0 initially).
    pub snap_index: u64,
    pub snap_term: u64,
    /// Invariant: entries[i].index == snap_index + 1 + i.
    entries: Vec<Entry>,
    /// Invariant: snap_index <= applied <= committed; committed never decreases.
    pub committed: u64,
    /// Highest index handed to the runtime for applying.
    pub applied: u64,
    /// Highest index the runtime reported durable. Invariant: persisted <= last_index.
    pub persisted: u64,
    /// First index not yet handed to the runtime for persisting.
    pub unstable_from: u64,
}

impl RaftLog {
    pub fn new(snap_index: u64, snap_term: u64, entries: Vec<Entry>, committed: u64, applied: u64) -> Self {
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.index, snap_index + 1 + i as u64, "restart entries must be consecutive after the snapshot");
        }
        let last = snap_index + entries.len() as u64;
        let committed = committed.clamp(snap_index, last);
        let applied = applied.clamp(snap_index, committed);
        RaftLog { snap_index, snap_term, entries, committed, applied, persisted: last, unstable_from: last + 1 }
    }

    pub fn last_index(&self) -> u64 {
        self.snap_index + self.entries.len() as u64
    }

    pub fn last_term(&self) -> u64 {
        self.entries.last().map_or(self.snap_term, |e| e.term)
    }

    pub fn first_index(&self) -> u64 {
        self.snap_index + 1
    }

    /// Term at `i`, if `i` is the snapshot index or inside the log.
    pub fn term(&self, i: u64) -> Option<u64> {
        if i == self.snap_index {
            return Some(self.snap_term);
        }
        if i < self.snap_index || i > self.last_index() {
            return None;
        }
        Some(self.entries[(i - self.snap_index - 1) as usize].term)
    }

    pub fn entry(&self, i: u64) -> Option<&Entry> {
        if i <= self.snap_index || i > self.last_index() {
            return None;
        }
        Some(&self.entries[(i - self.snap_index - 1) as usize])
    }

    pub fn match_term(&self, i: u64, t: u64) -> bool {
        self.term(i) == Some(t)
    }

    /// Raft's "at least as up to date" comparison for votes.
    pub fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        last_term > self.last_term() || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Leader-side append of fresh entries at the end.
    pub fn append(&mut self, entries: &[Entry]) {
        for e in entries {
            assert_eq!(e.index, self.last_index() + 1);
            self.entries.push(e.clone());
        }
    }

    /// Follower-side append after a matching (prev_index, prev_term). Returns the
    /// index of the last entry now known to match the leader, or None on mismatch.
    /// Only a conflicting suffix is truncated; entries already present are kept.
    pub fn maybe_append(&mut self, prev_index: u64, prev_term: u64, entries: &[Entry]) -> Option<u64> {
        if !self.match_term(prev_index, prev_term) {
            return None;
        }
        let last_new = prev_index + entries.len() as u64;
        for e in entries {
            if e.index <= self.snap_index {
                continue; // covered by our snapshot, hence committed and equal
            }
            match self.term(e.index) {
                Some(t) if t == e.term => continue,
                Some(_) => {
                    assert!(
                        e.index > self.committed,
                        "truncating committed entry {} (commit {})",
                        e.index,
                        self.committed
                    );
                    self.truncate_from(e.index);
                    self.entries.push(e.clone());
                }
                None => self.entries.push(e.clone()),
            }
        }
        Some(last_new)
    }

    fn truncate_from(&mut self, i: u64) {
        assert!(i > self.snap_index);
        self.entries.truncate((i - self.snap_index - 1) as usize);
        self.persisted = self.persisted.min(i - 1);
        self.unstable_from = self.unstable_from.min(i);
    }

    pub fn commit_to(&mut self, i: u64) -> bool {
        if i > self.committed {
            assert!(i <= self.last_index(), "commit {i} beyond last index {}", self.last_index());
            self.committed = i;
            return true;
        }
        false
    }

    /// Entries in [lo, hi] capped at `bytes_max` (at least one entry if any).
    pub fn slice(&self, lo: u64, hi: u64, bytes_max: u64) -> Vec<Entry> {
        assert!(lo > self.snap_index, "slice below the snapshot");
        let hi = hi.min(self.last_index());
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut i = lo;
        while i <= hi {
            let e = &self.entries[(i - self.snap_index - 1) as usize];
            bytes += e.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(e.clone());
            i += 1;
        }
        out
    }

    /// The follower's hint for a rejected append: the last index <= `index`
    /// whose term is <= `term` (etcd's findConflictByTerm).
    pub fn find_conflict_by_term(&self, index: u64, term: u64) -> (u64, u64) {
        let mut i = index.min(self.last_index());
        loop {
            match self.term(i) {
                Some(t) if t > term => i -= 1,
                Some(t) => return (i, t),
                None => return (i, 0), // below the snapshot: cannot tell
            }
        }
    }

    /// Entries not yet handed out for persistence; marks them handed out.
    pub fn take_unstable(&mut self) -> Vec<Entry> {
        let from = self.unstable_from.max(self.first_index());
        let out = if from <= self.last_index() { self.slice(from, self.last_index(), u64::MAX) } else { Vec::new() };
        self.unstable_from = self.last_index() + 1;
        out
    }

    /// Runtime reports entries up to (index, term) durable. Stale reports (the
    /// entry was truncated since) are ignored.
    pub fn on_persisted(&mut self, index: u64, term: u64) -> bool {
        if index > self.persisted && index < self.unstable_from && self.match_term(index, term) {
            self.persisted = index;
            return true;
        }
        false
    }

    /// Committed entries that may be applied now: durable locally and not handed out.
    pub fn take_committed(&mut self, entries_max: usize) -> Vec<Entry> {
        let hi = self.committed.min(self.persisted);
        if hi <= self.applied {
            return Vec::new();
        }
        let hi = hi.min(self.applied + entries_max as u64);
        let out = self.slice(self.applied + 1, hi, u64::MAX);
        self.applied = hi;
        out
    }

    /// Drops entries up to `index` after the runtime saved a snapshot there.
    pub fn compact(&mut self, index: u64, term: u64) {
        if index <= self.snap_index {
            return;
        }
        assert!(index <= self.applied, "compacting unapplied entries");
        assert_eq!(self.term(index), Some(term), "snapshot term mismatch");
        self.entries.drain(..(index - self.snap_index) as usize);
        self.snap_index = index;
        self.snap_term = term;
    }

    /// Resets to an installed snapshot beyond our commit index. Keeps a suffix that matches it.
    pub fn restore(&mut self, index: u64, term: u64) {
        assert!(index > self.committed, "installing a snapshot at or below commit");
        let matched = self.match_term(index, term);
        if matched {
            self.entries.drain(..(index - self.snap_index) as usize);
        } else {
            self.entries.clear();
        }
        self.snap_index = index;
        self.snap_term = term;
        self.committed = index;
        self.applied = index;
        if matched {
            // The kept suffix is as durable as it was.
            self.persisted = self.persisted.max(index).min(self.last_index());
            self.unstable_from = self.unstable_from.max(index + 1);
        } else {
            // A conflicting suffix is gone: what was persisted of it promises
            // nothing about the entries that will take its indexes.
            self.persisted = index;
            self.unstable_from = index + 1;
        }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryKind;
    use bytes::Bytes;

    fn e(index: u64, term: u64) -> Entry {
        Entry { index, term, kind: EntryKind::Normal, data: Bytes::new() }
    }

    #[test]
    fn append_truncates_only_conflicts() {
        let mut l = RaftLog::new(0, 0, vec![e(1, 1), e(2, 1), e(3, 2)], 1, 1);
        assert_eq!(l.maybe_append(1, 1, &[e(2, 1)]), Some(2));
        assert_eq!(l.last_index(), 3, "a stale shorter append never truncates");
        assert_eq!(l.maybe_append(2, 1, &[e(3, 3), e(4, 3)]), Some(4));
        assert_eq!(l.term(3), Some(3));
        assert_eq!(l.persisted, 2);
        assert_eq!(l.unstable_from, 3);
        assert_eq!(l.maybe_append(4, 2, &[]), None);
    }

    #[test]
    fn conflict_hint() {
        let l = RaftLog::new(0, 0, vec![e(1, 1), e(2, 1), e(3, 2), e(4, 2), e(5, 4)], 0, 0);
        assert_eq!(l.find_conflict_by_term(7, 3), (4, 2));
        assert_eq!(l.find_conflict_by_term(5, 1), (2, 1));
        assert_eq!(l.find_conflict_by_term(5, 0), (0, 0));
    }

    #[test]
    fn compact_and_restore() {
        let mut l = RaftLog::new(0, 0, vec![e(1, 1), e(2, 1), e(3, 2)], 3, 3);
        l.compact(2, 1);
        assert_eq!((l.first_index(), l.last_index(), l.term(2), l.term(1)), (3, 3, Some(1), None));
        let mut m = RaftLog::new(0, 0, vec![e(1, 1), e(2, 1), e(3, 2)], 1, 1);
        m.restore(2, 1);
        assert_eq!((m.first_index(), m.last_index()), (3, 3), "matching suffix kept");
        l.restore(10, 5);
        assert_eq!((l.last_index(), l.committed, l.applied, l.persisted), (10, 10, 10, 10));
    }

    /// A snapshot over a log whose suffix conflicts with it drops the
    /// suffix and what was persisted of it: entries that later take those
    /// indexes wait for their own write before they apply. (Keeping the old
    /// mark applied new entries before they were durable, and a snapshot
    /// then purged the log ahead of their append: seed 4889 of the
    /// simulator with --no-lease-clock.)
    #[test]
    fn restore_over_a_conflicting_suffix_forgets_its_persistence() {
        let mut l = RaftLog::new(0, 0, vec![e(1, 1), e(2, 4), e(3, 4), e(4, 4), e(5, 4)], 1, 1);
        assert_eq!(l.persisted, 5);
        l.restore(2, 6);
        assert_eq!((l.last_index(), l.persisted, l.unstable_from), (2, 2, 3));
        assert_eq!(l.maybe_append(2, 6, &[e(3, 6), e(4, 6)]), Some(4));
        l.commit_to(4);
        assert!(l.take_committed(10).is_empty(), "new entries apply only once durable");
        assert_eq!(l.take_unstable().len(), 2);
        assert!(l.on_persisted(4, 6));
        assert_eq!(l.take_committed(10).len(), 2);

        let mut kept = RaftLog::new(0, 0, vec![e(1, 1), e(2, 6), e(3, 6)], 1, 1);
        kept.restore(2, 6);
        assert_eq!((kept.last_index(), kept.persisted), (3, 3), "a matching suffix stays durable");
    }

    #[test]
    fn apply_waits_for_persistence() {
        let mut l = RaftLog::new(0, 0, vec![], 0, 0);
        l.maybe_append(0, 0, &[e(1, 1), e(2, 1)]);
        l.commit_to(2);
        assert!(l.take_committed(10).is_empty());
        assert_eq!(l.take_unstable().len(), 2);
        assert!(l.on_persisted(1, 1));
        assert_eq!(l.take_committed(10).len(), 1);
        assert!(!l.on_persisted(2, 7), "wrong term is stale");
    }
}
