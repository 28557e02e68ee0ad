//! Conversions between the Raft core's types and the storage crate's records.
//!
//! Owns the only place where `waft_raft` and `waft_storage` vocabularies meet,
//! so either crate can change alone. Must never panic on bytes read back from
//! disk: a configuration that does not decode is an error for the caller.

use waft_raft as raft;
use waft_storage as storage;

pub fn kind_to_storage(kind: raft::EntryKind) -> storage::EntryKind {
    match kind {
        raft::EntryKind::Normal => storage::EntryKind::Normal,
        raft::EntryKind::Config => storage::EntryKind::Config,
    }
}

pub fn kind_from_storage(kind: storage::EntryKind) -> raft::EntryKind {
    match kind {
        storage::EntryKind::Normal => raft::EntryKind::Normal,
        storage::EntryKind::Config => raft::EntryKind::Config,
    }
}

pub fn entry_to_storage(e: &raft::Entry) -> storage::LogEntry {
    storage::LogEntry { index: e.index, term: e.term, kind: kind_to_storage(e.kind), data: e.data.clone() }
}

pub fn entry_from_storage(e: storage::LogEntry) -> raft::Entry {
    raft::Entry { index: e.index, term: e.term, kind: kind_from_storage(e.kind), data: e.data }
}

/// The core writes "no vote" as `NONE` (0); storage as `None`.
pub fn hard_state_to_storage(hs: raft::HardState) -> storage::HardState {
    storage::HardState { term: hs.term, vote: (hs.vote != raft::NONE).then_some(hs.vote), commit: hs.commit }
}

pub fn hard_state_from_storage(hs: storage::HardState) -> raft::HardState {
    raft::HardState { term: hs.term, vote: hs.vote.unwrap_or(raft::NONE), commit: hs.commit }
}

/// The core's view of a stored snapshot. The configuration bytes came from
/// disk or from a leader, so decoding may fail.
pub fn snapshot_meta_from_storage(meta: &storage::SnapshotMeta) -> Result<raft::SnapshotMeta, raft::DecodeError> {
    Ok(raft::SnapshotMeta { index: meta.index, term: meta.term, config: raft::Configuration::decode(&meta.config)? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn entries_and_hard_states_round_trip() {
        for kind in [raft::EntryKind::Normal, raft::EntryKind::Config] {
            let e = raft::Entry { index: 9, term: 3, kind, data: Bytes::from_static(b"x") };
            assert_eq!(entry_from_storage(entry_to_storage(&e)), e);
        }
        for vote in [raft::NONE, 2] {
            let hs = raft::HardState { term: 4, vote, commit: 7 };
            assert_eq!(hard_state_from_storage(hard_state_to_storage(hs)), hs);
        }
        assert_eq!(hard_state_to_storage(raft::HardState { term: 1, vote: raft::NONE, commit: 0 }).vote, None);
    }

    #[test]
    fn snapshot_meta_with_bad_configuration_is_an_error() {
        let mut meta = storage::SnapshotMeta {
            index: 5,
            term: 2,
            config: raft::Configuration::new([1, 2, 3]).encode(),
            module_hash: storage::ModuleHash::default(),
            files: Vec::new(),
        };
        let got = snapshot_meta_from_storage(&meta).unwrap();
        assert_eq!((got.index, got.term, got.config.voters.clone()), (5, 2, vec![1, 2, 3]));
        meta.config = Bytes::from_static(b"\x01\x02");
        assert!(snapshot_meta_from_storage(&meta).is_err());
    }
}
