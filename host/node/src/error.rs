//! The one error type of this crate.
//!
//! Owns the split every caller needs: [`Error::is_fatal`] says whether the
//! replica must stop (and be reopened from storage) or only this call failed.
//! Must never hide which group failed or why.

use waft_raft::{RaftError, StartError};
use waft_runtime::RuntimeError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The replica stopped: a write whose outcome is unknown, a poisoned
    /// state machine, or inconsistent storage. Every later call returns this
    /// again; drop the replica and reopen it from storage.
    #[error("group {group}: the replica stopped: {reason}; restart it from its data directory")]
    Stopped { group: u64, reason: String },

    /// Storage failed in a way that left this replica consistent (for example a
    /// snapshot that could not be written); the call may be retried.
    #[error("group {group}: storage: {source}")]
    Storage {
        group: u64,
        #[source]
        source: waft_storage::Error,
    },

    /// The guest refused or faulted in a query or snapshot call; its state was
    /// restored and the replica goes on.
    #[error("group {group}: state machine: {source}")]
    Runtime {
        group: u64,
        #[source]
        source: RuntimeError,
    },

    /// The core refused the request (not the leader, busy, ...); see its text.
    #[error("group {group}: {source}")]
    Raft { group: u64, source: RaftError },

    #[error("group {group}: cannot start the raft node: {source}")]
    Start { group: u64, source: StartError },

    /// A snapshot names a different state-machine module than this replica
    /// runs and does not carry it (made by a build from before snapshots
    /// carried their module).
    #[error(
        "group {group}: snapshot {index} was made by module {snapshot_module}, \
         which it does not carry, but this replica runs {running_module}"
    )]
    ModuleMismatch { group: u64, index: u64, snapshot_module: String, running_module: String },

    /// A snapshot could not be written (the group goes on; the core asks
    /// again later).
    #[error("group {group}: a snapshot was not saved: {reason}")]
    SnapshotNotSaved { group: u64, reason: String },

    /// A snapshot install that does not match what the core asked for.
    #[error("group {group}: snapshot install refused: {reason}")]
    Install { group: u64, reason: String },

    /// The group's founding entry has not applied on this replica yet, so
    /// it takes no client entry (retry shortly: its leader proposes it on
    /// taking office).
    #[error("group {group}: the group's founding module and settings are not bound yet on this node; retry shortly")]
    NotBound { group: u64 },

    /// The group settings this replica was given are out of bounds.
    #[error("group {group}: {reason}")]
    Settings { group: u64, reason: String },

    /// This replica's state differs from the group's (a verdict at entry
    /// `index` found it so): it serves no read until it is rebuilt.
    #[error(
        "group {group}: this replica's state differs from the group's (found at entry {index}); it is fenced \
         until rebuilt from a healthy replica: read from another node"
    )]
    Fenced { group: u64, index: u64 },

    /// Empty commands are reserved for the leader's no-op entry.
    #[error("group {group}: empty commands are not allowed; send at least one byte")]
    EmptyCommand { group: u64 },

    /// A client request that breaks the envelope's rules (a sequence number
    /// 0, a session id 0, ...): refused before it reaches the log.
    #[error("group {group}: invalid request: {source}")]
    Envelope {
        group: u64,
        #[source]
        source: waft_session::EnvelopeError,
    },

    /// The session limits make no sense; fix them (equal on every replica).
    #[error("group {group}: {source}")]
    SessionConfig {
        group: u64,
        #[source]
        source: waft_session::ConfigError,
    },

    /// A snapshot's session table could not be written or read.
    #[error("group {group}: snapshot {index}: session table: {source}")]
    Sessions {
        group: u64,
        index: u64,
        #[source]
        source: waft_session::SnapshotError,
    },
}

impl Error {
    /// Whether the replica must stop. Anything else failed only this call.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Error::Stopped { .. } | Error::Start { .. } | Error::SessionConfig { .. } | Error::Settings { .. }
        )
    }
}

/// Whether a runtime error leaves the state machine unusable.
pub(crate) fn runtime_is_fatal(e: &RuntimeError) -> bool {
    matches!(
        e,
        RuntimeError::Poisoned
            | RuntimeError::Recovery(_)
            | RuntimeError::Instantiate(_)
            | RuntimeError::Backstop(_)
            | RuntimeError::Store(_)
    )
}
