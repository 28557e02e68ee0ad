//! waft-storage: the durable storage a waft daemon runs on.
//!
//! Owns three things, each behind its own type:
//! - the Raft log and hard state of every group ([`LogStore`], implemented by
//!   [`RocksLogStore`] on one shared RocksDB instance and by [`MemLogStore`] for
//!   tests and the simulator),
//! - snapshots, one directory per group ([`SnapshotStore`]),
//! - deployed WebAssembly modules, kept by content hash ([`ModuleStore`]).
//!
//! It must never interpret what it stores: entries, configurations and snapshot
//! files are opaque bytes to this crate. It depends on nothing from the Raft core;
//! the daemon translates the core's "ready" output into a [`WriteSet`].
//!
//! Durability contract: [`LogStore::write`] returns only after the whole set is on
//! stable storage (one sync per call), so a caller may report entries as persisted
//! as soon as it returns. Everything read back from disk is checksummed; damage is
//! reported as an [`Error`] naming the group and index or the file, never a panic.
//!
//! Proof lives next to the code: `conformance` (one suite, both stores),
//! `tests/crash.rs` (a real `crash-writer` child SIGKILLed at seeded random
//! moments; `WAFT_CRASH_KILLS=5000` for more, `WAFT_CRASH_SEED` to replay),
//! `tests/corruption.rs`, and `benches/log_append.rs` (synced appends next to a
//! raw write+fdatasync loop: `cargo bench -p waft-storage --bench log_append`).
//!
//! ```
//! use waft_storage::{EntryKind, HardState, LogEntry, LogStore, MemLogStore, WriteSet};
//!
//! let mut store = MemLogStore::new();
//! let mut set = WriteSet::new();
//! set.append(7, vec![
//!     LogEntry::new(1, 1, EntryKind::Normal, &b"a"[..]),
//!     LogEntry::new(2, 1, EntryKind::Config, &b"peers"[..]),
//! ]);
//! set.set_hard_state(7, HardState { term: 1, vote: Some(1), commit: 1 });
//! store.write(set).unwrap(); // durable once this returns
//! assert_eq!(store.last_index(7), 2);
//! assert_eq!(store.term(7, 2).unwrap(), 1);
//! assert_eq!(store.config_entries(7).unwrap().len(), 1);
//! ```

mod codec;
pub mod conformance;
mod error;
pub mod fsutil;
mod kv;
mod mem;
mod module;
mod plan;
mod rocks;
mod snapshot;
#[doc(hidden)]
pub mod testkit;

/// Entry points for the fuzz targets (`host/fuzz`): the decoders of what
/// this crate reads back from disk. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// Decodes `value` as a log entry, a hard state and a group record
    /// under `key`; whatever decodes must encode back to `value`.
    pub fn log_records(key: &[u8], value: &[u8]) {
        let index = crate::codec::parse_index_key(key).map_or(7, |(_, _, index)| index);
        if let Ok(entry) = crate::codec::decode_entry(key, index, value) {
            let mut again = Vec::new();
            crate::codec::encode_entry_into(&mut again, key, &entry);
            assert_eq!(again, value, "an entry that decodes encodes back to its bytes");
        }
        if let Ok(hs) = crate::codec::decode_hard_state(key, value) {
            assert_eq!(crate::codec::encode_hard_state(key, &hs), value);
        }
        if let Ok((index, term)) = crate::codec::decode_group_meta(key, value) {
            assert_eq!(crate::codec::encode_group_meta(key, index, term), value);
        }
        let _ = crate::codec::parse_index_key(key);
        let _ = crate::codec::parse_group_key(key);
    }

    /// Valid records, as `log_records`' target takes them: a byte saying
    /// the key's length (even: 17, an entry's; odd: 9, a group's), the key,
    /// the value.
    pub fn log_record_seeds() -> Vec<Vec<u8>> {
        use crate::codec::*;
        let mut out = Vec::new();
        let entry = crate::LogEntry {
            index: 7,
            term: 3,
            kind: crate::EntryKind::Normal,
            data: bytes::Bytes::from_static(b"\x01\x01payload"),
        };
        let key = index_key(TAG_ENTRY, 1, 7);
        let mut value = Vec::new();
        encode_entry_into(&mut value, &key, &entry);
        out.push([&[0u8][..], &key, &value].concat());
        let config = crate::LogEntry { kind: crate::EntryKind::Config, ..entry };
        let key = index_key(TAG_CONFIG, 2, 7);
        encode_entry_into(&mut value, &key, &config);
        out.push([&[0u8][..], &key, &value].concat());
        let key = group_key(TAG_HARD_STATE, 1);
        let hs = crate::HardState { term: 5, vote: Some(2), commit: 9 };
        out.push([&[1u8][..], &key, &encode_hard_state(&key, &hs)].concat());
        let key = group_key(TAG_GROUP, 1);
        out.push([&[1u8][..], &key, &encode_group_meta(&key, 100, 4)].concat());
        out
    }
}
mod types;

pub use error::{Error, Result};
pub use kv::{
    CheckpointFile, KV_BLOCK_CACHE_BYTES, KV_WRITE_BUFFER_BYTES, KV_WRITE_BUFFERS_TOTAL_BYTES, RocksCheckpoint,
    RocksKv, RocksKvGroup,
};
pub use mem::MemLogStore;
pub use module::{MODULE_BYTES_MAX, ModuleHash, ModuleStore};
pub use rocks::{RocksLogStore, RocksOptions};
pub use snapshot::{
    SNAPSHOT_CHUNK_BYTES_MAX, SNAPSHOT_FILES_MAX, SnapshotFile, SnapshotId, SnapshotMeta, SnapshotReader,
    SnapshotStore, SnapshotWriter,
};
pub use types::{EntryKind, HardState, LogEntry, LogState, LogStore, Op, WRITE_SET_BYTES_MAX, WriteSet};
