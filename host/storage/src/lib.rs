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
