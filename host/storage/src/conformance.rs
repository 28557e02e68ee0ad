//! The storage conformance suite: one set of checks every [`LogStore`] must pass.
//!
//! Owns the executable definition of the `LogStore` contract. Each check runs on
//! a fresh store, and most reopen it midway (a no-op for memory, a real close and
//! open for RocksDB) and check again, so persistence is tested by the same code
//! that tests behaviour. Must never depend on one implementation's internals.
//!
//! ```
//! use waft_storage::{MemLogStore, conformance};
//! conformance::run_all(&mut conformance::MemHarness);
//! ```

use bytes::Bytes;

use crate::error::Error;
use crate::mem::MemLogStore;
use crate::types::{EntryKind, HardState, LogEntry, LogState, LogStore, WriteSet};

/// How the suite gets stores to test.
pub trait Harness {
    type Store: LogStore;
    /// A new, empty store.
    fn fresh(&mut self) -> Self::Store;
    /// Closes `store` and opens it again from what it made durable.
    fn reopen(&mut self, store: Self::Store) -> Self::Store;
}

/// The in-memory store: "reopening" keeps the same value.
pub struct MemHarness;

impl Harness for MemHarness {
    type Store = MemLogStore;

    fn fresh(&mut self) -> MemLogStore {
        MemLogStore::new()
    }

    fn reopen(&mut self, store: MemLogStore) -> MemLogStore {
        store
    }
}

/// One named check of the suite.
type Check<H> = (&'static str, fn(&mut H));

/// Runs every check, naming each on stderr so a failure says which one.
pub fn run_all<H: Harness>(harness: &mut H) {
    let checks: [Check<H>; 14] = [
        ("empty_store", empty_store::<H>),
        ("append_and_read", append_and_read::<H>),
        ("append_must_be_contiguous", append_must_be_contiguous::<H>),
        ("refused_set_writes_nothing", refused_set_writes_nothing::<H>),
        ("truncate_suffix", truncate_suffix::<H>),
        ("purge_prefix", purge_prefix::<H>),
        ("purge_past_last_then_append", purge_past_last_then_append::<H>),
        ("byte_limited_reads", byte_limited_reads::<H>),
        ("read_range_errors", read_range_errors::<H>),
        ("multi_group_isolation", multi_group_isolation::<H>),
        ("hard_state", hard_state::<H>),
        ("hard_state_never_goes_back", hard_state_never_goes_back::<H>),
        ("config_index", config_index::<H>),
        ("drop_group", drop_group::<H>),
    ];
    for (name, check) in checks {
        eprintln!("conformance: {name}");
        check(harness);
    }
}

/// Deterministic payload for (index, term): sizes vary, some are empty.
pub fn payload(index: u64, term: u64) -> Bytes {
    let len = ((index * 31 + term * 7) % 97) as usize;
    Bytes::from((0..len).map(|i| (index as usize + i * 13 + term as usize) as u8).collect::<Vec<u8>>())
}

pub fn entry(index: u64, term: u64) -> LogEntry {
    LogEntry::new(index, term, EntryKind::Normal, payload(index, term))
}

pub fn config(index: u64, term: u64) -> LogEntry {
    LogEntry::new(index, term, EntryKind::Config, payload(index, term))
}

/// Entries `lo..=hi`, all of `term`.
pub fn run(lo: u64, hi: u64, term: u64) -> Vec<LogEntry> {
    (lo..=hi).map(|i| entry(i, term)).collect()
}

fn append<S: LogStore>(store: &mut S, group: u64, entries: Vec<LogEntry>) {
    let mut set = WriteSet::new();
    set.append(group, entries);
    store.write(set).expect("append");
}

fn all<S: LogStore>(store: &S, group: u64) -> Vec<LogEntry> {
    let state = store.log_state(group);
    store.entries(group, state.first_index(), state.last_index + 1, u64::MAX).expect("read all")
}

fn assert_log<S: LogStore>(store: &S, group: u64, want: &[LogEntry], purged: (u64, u64)) {
    let last = want.last().map(|e| e.index).unwrap_or(purged.0);
    assert_eq!(
        store.log_state(group),
        LogState { purged_index: purged.0, purged_term: purged.1, last_index: last },
        "log state of group {group}"
    );
    assert_eq!(all(store, group), want, "entries of group {group}");
    for e in want {
        assert_eq!(store.term(group, e.index).expect("term"), e.term, "term at {}", e.index);
    }
    assert_eq!(store.term(group, purged.0).expect("term at purge point"), purged.1);
}

fn empty_store<H: Harness>(h: &mut H) {
    let mut store = h.fresh();
    store.write(WriteSet::new()).expect("empty set");
    assert!(store.groups().is_empty());
    assert_eq!(store.log_state(1), LogState::default());
    assert_eq!(store.first_index(1), 1);
    assert_eq!(store.last_index(1), 0);
    assert_eq!(store.term(1, 0).expect("term 0"), 0);
    assert!(store.entries(1, 1, 1, 10).expect("empty range").is_empty());
    assert!(matches!(store.entries(1, 1, 2, 10), Err(Error::Unavailable { .. })));
    assert!(matches!(store.term(1, 1), Err(Error::Unavailable { .. })));
    assert_eq!(store.hard_state(1), HardState::default());
    assert!(store.config_entries(1).expect("configs").is_empty());
    let store = h.reopen(store);
    assert!(store.groups().is_empty());
}

fn append_and_read<H: Harness>(h: &mut H) {
    let mut store = h.fresh();
    let mut want = run(1, 5, 1);
    append(&mut store, 1, want.clone());
    let more: Vec<LogEntry> = (6..=40).map(|i| entry(i, 2 + i / 10)).collect();
    append(&mut store, 1, more.clone());
    want.extend(more);
    assert_log(&store, 1, &want, (0, 0));
    let store = h.reopen(store);
    assert_log(&store, 1, &want, (0, 0));
    // Partial ranges come back in order and exactly.
    assert_eq!(store.entries(1, 7, 12, u64::MAX).expect("range"), want[6..11].to_vec());
    assert_eq!(store.groups(), vec![1]);
}

fn append_must_be_contiguous<H: Harness>(h: &mut H) {
    let mut store = h.fresh();
    let mut set = WriteSet::new();
    set.append(1, run(2, 3, 1));
    assert!(matches!(store.write(set), Err(Error::InvalidWrite { group: 1, .. })), "gap at start");
    append(&mut store, 1, run(1, 3, 1));
    let mut set = WriteSet::new();
    set.append(1, vec![entry(4, 1), entry(6, 1)]);
    assert!(matches!(store.write(set), Err(Error::InvalidWrite { .. })), "gap inside");
    let mut set = WriteSet::new();
    set.append(1, run(3, 4, 2));
    assert!(matches!(store.write(set), Err(Error::InvalidWrite { .. })), "overlap without truncate");
    assert_log(&store, 1, &run(1, 3, 1), (0, 0));
}

fn refused_set_writes_nothing<H: Harness>(h: &mut H) {
    let mut store = h.fresh();
    append(&mut store, 1, run(1, 3, 1));
    let mut set = WriteSet::new();
    set.append(1, run(4, 6, 1));
    set.set_hard_state(2, HardState { term: 1, vote: None, commit: 0 });
    set.append(3, run(5, 5, 1)); // invalid: group 3 is empty
    assert!(store.write(set).is_err());
    let store = h.reopen(store);
    assert_log(&store, 1, &run(1, 3, 1), (0, 0));
    assert_eq!(store.groups(), vec![1]);
    assert_eq!(store.hard_state(2), HardState::default());
}

fn truncate_suffix<H: Harness>(h: &mut H) {
    let mut store = h.fresh();
    append(&mut store, 1, run(1, 10, 1));
    let mut set = WriteSet::new();
    set.truncate(1, 6);
    store.write(set).expect("truncate");
    assert_log(&store, 1, &run(1, 5, 1), (0, 0));
    assert!(matches!(store.term(1, 6), Err(Error::Unavailable { .. })));
    // Conflict resolution in one round: truncate then append the new suffix.
    let mut set = WriteSet::new();
    set.truncate(1, 4).append(1, run(4, 8, 3));
    store.write(set).expect("truncate+append");
    let mut want = run(1, 3, 1);
    want.extend(run(4, 8, 3));
    assert_log(&store, 1, &want, (0, 0));
    // Beyond the end: nothing to do.
    let mut set = WriteSet::new();
    set.truncate(1, 9).truncate(1, 100);
    store.write(set).expect("no-op truncate");
    let mut store = h.reopen(store);
    assert_log(&store, 1, &want, (0, 0));
    // From the first index: the log empties but keeps its place.
    let mut set = WriteSet::new();
    set.truncate(1, 1);
    store.write(set).expect("truncate all");
    assert_log(&store, 1, &[], (0, 0));
    append(&mut store, 1, run(1, 2, 4));
    let store = h.reopen(store);
    assert_log(&store, 1, &run(1, 2, 4), (0, 0));
}

fn purge_prefix<H: Harness>(h: &mut H) {
    let mut store = h.fresh();
    append(&mut store, 1, run(1, 10, 2));
    let mut set = WriteSet::new();
    set.purge(1, 4, 2);
    store.write(set).expect("purge");
    assert_log(&store, 1, &run(5, 10, 2), (4, 2));
    assert!(matches!(store.term(1, 3), Err(Error::Compacted { first_index: 5, .. })));
    assert!(matches!(store.entries(1, 4, 6, 100), Err(Error::Compacted { .. })));
    // Stale purges are no-ops.
    let mut set = WriteSet::new();
    set.purge(1, 4, 2).purge(1, 2, 1);
    store.write(set).expect("stale purge");
    let mut store = h.reopen(store);
    assert_log(&store, 1, &run(5, 10, 2), (4, 2));
    // Truncating into the purged prefix is refused.
    let mut set = WriteSet::new();
    set.truncate(1, 4);
    assert!(matches!(store.write(set), Err(Error::InvalidWrite { .. })));
    // Purge exactly to the last entry: empty log, appends continue after it.
    let mut set = WriteSet::new();
    set.purge(1, 10, 2);
    store.write(set).expect("purge all");
    assert_log(&store, 1, &[], (10, 2));
    append(&mut store, 1, run(11, 12, 3));
    let store = h.reopen(store);
    assert_log(&store, 1, &run(11, 12, 3), (10, 2));
}

fn purge_past_last_then_append<H: Harness>(h: &mut H) {
    // Installing a snapshot ahead of the local log, then appending after it,
    // all in one round.
    let mut store = h.fresh();
    append(&mut store, 1, run(1, 5, 1));
    let mut set = WriteSet::new();
    set.purge(1, 20, 4).append(1, run(21, 23, 4));
    store.write(set).expect("install+append");
    assert_log(&store, 1, &run(21, 23, 4), (20, 4));
    let mut set = WriteSet::new();
    set.append(1, run(6, 6, 4));
    assert!(matches!(store.write(set), Err(Error::InvalidWrite { .. })));
    // A fresh group can start ahead too.
    let mut set = WriteSet::new();
    set.purge(2, 100, 9);
    store.write(set).expect("install on new group");
    let store = h.reopen(store);
    assert_log(&store, 1, &run(21, 23, 4), (20, 4));
    assert_log(&store, 2, &[], (100, 9));
    assert_eq!(store.groups(), vec![1, 2]);
}

fn byte_limited_reads<H: Harness>(h: &mut H) {
    let mut store = h.fresh();
    let sized: Vec<LogEntry> = (1..=10).map(|i| LogEntry::new(i, 1, EntryKind::Normal, vec![i as u8; 100])).collect();
    append(&mut store, 1, sized.clone());
    let store = h.reopen(store);
    let n = |lo, hi, max| store.entries(1, lo, hi, max).expect("read").len();
    assert_eq!(n(1, 11, 0), 1, "always at least one entry");
    assert_eq!(n(1, 11, 99), 1);
    assert_eq!(n(1, 11, 100), 1);
    assert_eq!(n(1, 11, 199), 1);
    assert_eq!(n(1, 11, 200), 2);
    assert_eq!(n(1, 11, 250), 2);
    assert_eq!(n(1, 11, 1000), 10);
    assert_eq!(n(1, 11, u64::MAX), 10);
    assert_eq!(n(5, 8, 1000), 3, "hi bounds before bytes do");
    assert_eq!(store.entries(1, 3, 11, 300).expect("read"), sized[2..5].to_vec());
    // An entry larger than the limit still comes back alone.
    let mut store = store;
    append(&mut store, 1, vec![LogEntry::new(11, 1, EntryKind::Normal, vec![7u8; 5000])]);
    assert_eq!(store.entries(1, 11, 12, 10).expect("big").len(), 1);
    assert_eq!(store.entries(1, 10, 12, 150).expect("big").len(), 1);
}

fn read_range_errors<H: Harness>(h: &mut H) {
    let mut store = h.fresh();
    append(&mut store, 1, run(1, 5, 1));
    assert!(store.entries(1, 6, 6, 10).expect("empty at end").is_empty());
    assert!(matches!(store.entries(1, 4, 7, 10), Err(Error::Unavailable { .. })));
    assert!(matches!(store.entries(1, 4, 3, 10), Err(Error::BadRange { .. })));
    assert!(matches!(store.entries(1, 0, 3, 10), Err(Error::Compacted { .. })));
    assert!(matches!(store.term(1, 6), Err(Error::Unavailable { .. })));
    assert!(matches!(store.term(1, u64::MAX), Err(Error::Unavailable { .. })));
}

fn multi_group_isolation<H: Harness>(h: &mut H) {
    let mut store = h.fresh();
    let groups = [0u64, 1, 2, 255, 256, u64::MAX];
    // One round, every group, interleaved.
    let mut set = WriteSet::new();
    for (k, g) in groups.iter().enumerate() {
        set.append(*g, run(1, 3 + k as u64, k as u64 + 1));
        set.set_hard_state(*g, HardState { term: k as u64 + 1, vote: Some(*g), commit: 1 });
    }
    store.write(set).expect("multi-group round");
    let mut set = WriteSet::new();
    set.truncate(1, 2).purge(255, 3, 4).append(2, run(6, 7, 3));
    store.write(set).expect("mixed round");
    let store = h.reopen(store);
    assert_eq!(store.groups(), groups.to_vec());
    for (k, g) in groups.iter().enumerate() {
        let term = k as u64 + 1;
        let (want, purged) = match *g {
            1 => (run(1, 1, term), (0, 0)),
            2 => {
                let mut w = run(1, 5, term);
                w.extend(run(6, 7, 3));
                (w, (0, 0))
            }
            255 => (run(4, 3 + k as u64, term), (3, 4)),
            _ => (run(1, 3 + k as u64, term), (0, 0)),
        };
        assert_log(&store, *g, &want, purged);
        assert_eq!(store.hard_state(*g), HardState { term, vote: Some(*g), commit: 1 });
    }
}

fn hard_state<H: Harness>(h: &mut H) {
    let mut store = h.fresh();
    let hs = HardState { term: 3, vote: Some(2), commit: 0 };
    let mut set = WriteSet::new();
    set.set_hard_state(5, hs);
    store.write(set).expect("hard state");
    assert_eq!(store.hard_state(5), hs);
    assert_eq!(store.groups(), vec![5], "a hard state alone makes a group");
    assert_eq!(store.log_state(5), LogState::default());
    let mut store = h.reopen(store);
    assert_eq!(store.hard_state(5), hs);
    // Later updates in the same round win.
    let mut set = WriteSet::new();
    set.set_hard_state(5, HardState { term: 3, vote: Some(2), commit: 4 });
    set.set_hard_state(5, HardState { term: 4, vote: None, commit: 4 });
    set.set_hard_state(5, HardState { term: 4, vote: Some(9), commit: 6 });
    store.write(set).expect("hard states");
    let store = h.reopen(store);
    assert_eq!(store.hard_state(5), HardState { term: 4, vote: Some(9), commit: 6 });
    assert_eq!(store.hard_state(6), HardState::default());
}

fn hard_state_never_goes_back<H: Harness>(h: &mut H) {
    let mut store = h.fresh();
    let base = HardState { term: 5, vote: Some(1), commit: 10 };
    let mut set = WriteSet::new();
    set.set_hard_state(1, base);
    store.write(set).expect("base");
    for bad in [
        HardState { term: 4, vote: Some(1), commit: 10 },
        HardState { term: 5, vote: Some(1), commit: 9 },
        HardState { term: 5, vote: Some(2), commit: 10 },
        HardState { term: 5, vote: None, commit: 10 },
    ] {
        let mut set = WriteSet::new();
        set.set_hard_state(1, bad);
        assert!(matches!(store.write(set), Err(Error::InvalidWrite { .. })), "{bad:?} accepted");
    }
    let store = h.reopen(store);
    assert_eq!(store.hard_state(1), base);
}

fn config_index<H: Harness>(h: &mut H) {
    let mut store = h.fresh();
    let mut log = run(1, 12, 1);
    for i in [2usize, 5, 9] {
        log[i - 1] = config(i as u64, 1);
    }
    append(&mut store, 1, log.clone());
    append(&mut store, 2, vec![config(1, 1)]);
    let configs =
        |s: &H::Store| -> Vec<u64> { s.config_entries(1).expect("configs").iter().map(|e| e.index).collect() };
    assert_eq!(configs(&store), vec![2, 5, 9]);
    assert_eq!(store.config_entries(1).expect("configs")[1], log[4], "the full entry comes back");
    let mut store = h.reopen(store);
    assert_eq!(configs(&store), vec![2, 5, 9]);
    // Truncation drops the config entries it removes.
    let mut set = WriteSet::new();
    set.truncate(1, 5).append(1, vec![entry(5, 2), config(6, 2)]);
    store.write(set).expect("truncate");
    assert_eq!(configs(&store), vec![2, 6]);
    // So does a purge: the snapshot carries the configuration it covers.
    let mut set = WriteSet::new();
    set.purge(1, 3, 1);
    store.write(set).expect("purge");
    assert_eq!(configs(&store), vec![6]);
    let store = h.reopen(store);
    assert_eq!(configs(&store), vec![6]);
    assert_eq!(store.config_entries(1).expect("configs")[0].kind, EntryKind::Config);
    assert_eq!(store.config_entries(2).expect("configs").len(), 1, "other groups untouched");
}

fn drop_group<H: Harness>(h: &mut H) {
    let mut store = h.fresh();
    let mut set = WriteSet::new();
    set.append(1, vec![config(1, 1), entry(2, 1)]).append(2, run(1, 2, 1));
    set.set_hard_state(1, HardState { term: 1, vote: None, commit: 2 });
    store.write(set).expect("setup");
    let mut set = WriteSet::new();
    set.drop_group(1).drop_group(77);
    store.write(set).expect("drop");
    let mut store = h.reopen(store);
    assert_eq!(store.groups(), vec![2]);
    assert_eq!(store.log_state(1), LogState::default());
    assert_eq!(store.hard_state(1), HardState::default());
    assert!(store.config_entries(1).expect("configs").is_empty());
    // The id can be used again from scratch; drop and recreate in one round too.
    let mut set = WriteSet::new();
    set.append(1, run(1, 1, 5)).drop_group(2).append(2, run(1, 1, 6));
    store.write(set).expect("recreate");
    let store = h.reopen(store);
    assert_log(&store, 1, &run(1, 1, 5), (0, 0));
    assert_log(&store, 2, &run(1, 1, 6), (0, 0));
}
