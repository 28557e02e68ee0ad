//! The one error type of this crate.
//!
//! Owns the wording users see when storage fails. Every variant about data read
//! back from disk names where it was (group and index, or the file's path) and
//! says what to do, because the reader is an operator looking at a node that
//! will not start.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot open the RocksDB log store at {path}: {source}; \
         the directory may be damaged: restore it from a replica or remove it to rejoin as a new node"
    )]
    Open { path: PathBuf, source: rocksdb::Error },

    #[error(
        "refusing to open {path} as a RocksDB log store: {reason}; \
         the directory may be damaged: restore it from a replica or remove it to rejoin as a new node"
    )]
    OpenLayout { path: PathBuf, reason: String },

    #[error("RocksDB failed during {during} in {path}: {source}")]
    Rocks { path: PathBuf, during: &'static str, source: rocksdb::Error },

    #[error("I/O error while {during} {path}: {source}")]
    Io { path: PathBuf, during: &'static str, source: std::io::Error },

    #[error(
        "the log store refuses writes after an earlier write failed: \
         what reached the disk is unknown; restart the node to recover"
    )]
    Poisoned,

    #[error("corrupt log entry of group {group} at index {index}: {reason}")]
    CorruptEntry { group: u64, index: u64, reason: String },

    #[error("corrupt {what} record of group {group}: {reason}")]
    CorruptRecord { group: u64, what: &'static str, reason: String },

    #[error("group {group}: index {index} is compacted (first index is {first_index})")]
    Compacted { group: u64, index: u64, first_index: u64 },

    #[error("group {group}: index {index} is not in the log (last index is {last_index})")]
    Unavailable { group: u64, index: u64, last_index: u64 },

    #[error("group {group}: refused write: {reason}")]
    InvalidWrite { group: u64, reason: String },

    #[error("group {group}: read range {lo}..{hi} is reversed")]
    BadRange { group: u64, lo: u64, hi: u64 },

    #[error("refused write set of {bytes} payload bytes (limit {limit})")]
    WriteSetTooLarge { bytes: usize, limit: usize },

    #[error("snapshot {path} has no meta file: it is incomplete and will not be loaded")]
    SnapshotMetaMissing { path: PathBuf },

    #[error("snapshot meta {path} is corrupt: {reason}; the snapshot will not be loaded")]
    SnapshotMetaCorrupt { path: PathBuf, reason: String },

    #[error("snapshot file {path} is missing; the snapshot will not be loaded")]
    SnapshotFileMissing { path: PathBuf },

    #[error(
        "snapshot file {path} has {actual} bytes but its meta records {expected} \
         (truncated or overwritten); the snapshot will not be loaded"
    )]
    SnapshotFileSize { path: PathBuf, expected: u64, actual: u64 },

    #[error(
        "snapshot file {path} fails its checksum (crc32 {actual:08x}, meta records {expected:08x}); \
         the snapshot will not be loaded"
    )]
    SnapshotChecksum { path: PathBuf, expected: u32, actual: u32 },

    #[error("group {group}: no snapshot {index}/{term} in the store")]
    SnapshotNotFound { group: u64, index: u64, term: u64 },

    #[error("snapshot write refused: {reason}")]
    SnapshotWrite { reason: String },

    #[error("module {path} does not match its content hash (got {actual}); it will not be loaded")]
    ModuleHashMismatch { path: PathBuf, actual: String },

    #[error("module {hash} is not in the module store")]
    ModuleNotFound { hash: String },

    #[error("module of {bytes} bytes exceeds the limit of {limit} bytes")]
    ModuleTooLarge { bytes: u64, limit: u64 },
}

impl Error {
    pub(crate) fn io(during: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, during, source }
    }
}
