//! Hard states set lazily (a new commit index alone): the write needs no sync
//! of its own, is still applied and read back, and a set holding anything
//! else is synced.

mod common;

use waft_storage::{EntryKind, HardState, LogEntry, LogStore, RocksLogStore, WriteSet};

const GROUP: u64 = 3;

fn entries(from: u64, to: u64) -> Vec<LogEntry> {
    (from..=to).map(|i| LogEntry::new(i, 1, EntryKind::Normal, vec![i as u8; 8])).collect()
}

#[test]
fn only_lazy_hard_states_skip_the_sync() {
    let hs = HardState { term: 1, vote: Some(2), commit: 3 };
    let mut lazy = WriteSet::new();
    lazy.set_hard_state_lazily(GROUP, hs);
    assert!(!lazy.must_sync(), "a lazy hard state alone needs no sync");
    let mut synced = WriteSet::new();
    synced.set_hard_state(GROUP, hs);
    assert!(synced.must_sync());
    let mut append = WriteSet::new();
    append.append(GROUP, entries(1, 2));
    assert!(append.must_sync());
    lazy.extend(append);
    assert!(lazy.must_sync(), "a merged set syncs when any part must");
    for op in ["truncate", "purge", "drop"] {
        let mut set = WriteSet::new();
        match op {
            "truncate" => set.truncate(GROUP, 1),
            "purge" => set.purge(GROUP, 1, 1),
            _ => set.drop_group(GROUP),
        };
        assert!(set.must_sync(), "{op} must sync");
    }
}

#[test]
fn a_lazy_hard_state_is_written_and_read_back() {
    let dir = common::Scratch::new("lazy");
    let path = dir.join("log");
    {
        let mut store = RocksLogStore::open(&path).unwrap();
        let mut set = WriteSet::new();
        set.append(GROUP, entries(1, 5)).set_hard_state(GROUP, HardState { term: 1, vote: Some(1), commit: 2 });
        store.write(set).unwrap();
        let mut set = WriteSet::new();
        set.set_hard_state_lazily(GROUP, HardState { term: 1, vote: Some(1), commit: 5 });
        store.write(set).unwrap();
        assert_eq!(store.hard_state(GROUP).commit, 5, "served at once");
        // The next synced write carries it to disk with its own.
        let mut set = WriteSet::new();
        set.append(GROUP, entries(6, 6));
        store.write(set).unwrap();
    }
    let store = RocksLogStore::open(&path).unwrap();
    assert_eq!(store.hard_state(GROUP), HardState { term: 1, vote: Some(1), commit: 5 });
    assert_eq!(store.last_index(GROUP), 6);
}
