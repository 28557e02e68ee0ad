//! Conversions between the peer wire messages and waft-raft's `Message`.
//!
//! Owns the one-to-one mapping of every `MessageBody` variant and the checks a
//! message from the network must pass before it reaches the core. Must never
//! panic on what a peer sent: every missing or invalid field is a
//! [`ConvertError`], and the daemon drops that message (Raft tolerates loss).

use std::collections::BTreeSet;

use waft_raft as raft;

use crate::peer::{self, peer_message::Body};

/// Group id 0 is reserved for "unset" (proto3's default) and always refused.
pub const GROUP_NONE: u64 = 0;
/// A SHA-256 module hash is this long.
pub const MODULE_HASH_BYTES: usize = 32;
/// Most files one snapshot manifest may list (matches waft-storage's limit).
pub const SNAPSHOT_FILES_MAX: usize = 1024;
/// Longest snapshot file name, in bytes (matches waft-storage's limit).
pub const SNAPSHOT_FILE_NAME_BYTES_MAX: usize = 255;

/// Why a wire message cannot become a waft-raft message. Each says what was
/// wrong; none is recoverable by retrying the same bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("peer message names group 0, which is reserved for \"unset\"; the sender has a bug")]
    ZeroGroup,
    #[error("peer message has `{field}` = 0, which is reserved for \"no node\"; the sender has a bug")]
    ZeroNode { field: &'static str },
    #[error("peer message has no body: the sender speaks a newer protocol or sent a broken message")]
    MissingBody,
    #[error("entry {index} has unknown kind {kind}: the sender speaks a newer protocol")]
    UnknownEntryKind { index: u64, kind: i32 },
    #[error(
        "append after index {prev_index}: entry {position} has index {index}, expected {expected} \
         (entries must be consecutive)"
    )]
    EntryIndexGap { prev_index: u64, position: usize, index: u64, expected: u64 },
    #[error("append after index {prev_index} overflows the u64 index space")]
    EntryIndexOverflow { prev_index: u64 },
    #[error("entry {index} has term {term}, below the term {previous_term} before it")]
    EntryTermDecreases { index: u64, term: u64, previous_term: u64 },
    #[error("entry {index} has term {term}, above the sender's term {message_term}")]
    EntryTermAboveMessage { index: u64, term: u64, message_term: u64 },
    #[error("install-snapshot message has no snapshot meta")]
    MissingSnapshotMeta,
    #[error("snapshot {index}/{term}: {source}")]
    SnapshotConfiguration { index: u64, term: u64, source: raft::DecodeError },
    #[error("snapshot manifest module hash has {len} bytes, expected {MODULE_HASH_BYTES}")]
    ModuleHashLength { len: usize },
    #[error("snapshot manifest lists {count} files, more than the {SNAPSHOT_FILES_MAX} allowed")]
    TooManyFiles { count: usize },
    #[error(
        "snapshot manifest file name {name:?} is not a plain file name \
         (empty, too long, a path, or `.`/`..`)"
    )]
    BadFileName { name: String },
    #[error("snapshot manifest lists file {name:?} twice")]
    DuplicateFile { name: String },
    #[error("state digest of entry {index} has {len} bytes, expected 32")]
    DigestLength { index: u64, len: usize },
}

impl peer::PeerMessage {
    /// Wraps a core message for the wire. An `InstallSnapshot` leaves without a
    /// manifest: the daemon attaches one with [`Self::set_snapshot_manifest`].
    pub fn from_raft(group: u64, msg: raft::Message) -> Self {
        debug_assert_ne!(group, GROUP_NONE, "group 0 is reserved");
        peer::PeerMessage { group, from: msg.from, to: msg.to, term: msg.term, body: Some(body_from_raft(msg.body)) }
    }

    /// Checks and unwraps a message from the network into its group id and the
    /// core message. The snapshot manifest (if any) is not part of the core
    /// message: read it first with [`Self::snapshot_manifest`].
    pub fn into_raft(self) -> Result<(u64, raft::Message), ConvertError> {
        if self.group == GROUP_NONE {
            return Err(ConvertError::ZeroGroup);
        }
        if self.from == raft::NONE {
            return Err(ConvertError::ZeroNode { field: "from" });
        }
        if self.to == raft::NONE {
            return Err(ConvertError::ZeroNode { field: "to" });
        }
        let body = self.body.ok_or(ConvertError::MissingBody)?;
        let body = body_into_raft(body, self.term)?;
        Ok((self.group, raft::Message { from: self.from, to: self.to, term: self.term, body }))
    }

    /// The manifest of an `InstallSnapshot`, checked; `None` for any other
    /// message or when the sender attached none.
    pub fn snapshot_manifest(&self) -> Option<Result<&peer::SnapshotManifest, ConvertError>> {
        match &self.body {
            Some(Body::InstallSnapshot(install)) => install.manifest.as_ref().map(|m| m.validate().map(|()| m)),
            _ => None,
        }
    }

    /// Attaches the files to pull to an `InstallSnapshot`; returns false (and
    /// changes nothing) for any other message.
    pub fn set_snapshot_manifest(&mut self, manifest: peer::SnapshotManifest) -> bool {
        match &mut self.body {
            Some(Body::InstallSnapshot(install)) => {
                install.manifest = Some(manifest);
                true
            }
            _ => false,
        }
    }
}

impl From<(u64, raft::Message)> for peer::PeerMessage {
    fn from((group, msg): (u64, raft::Message)) -> Self {
        peer::PeerMessage::from_raft(group, msg)
    }
}

impl TryFrom<peer::PeerMessage> for (u64, raft::Message) {
    type Error = ConvertError;

    fn try_from(msg: peer::PeerMessage) -> Result<Self, ConvertError> {
        msg.into_raft()
    }
}

impl peer::SnapshotManifest {
    /// Checks what a follower relies on before pulling: a whole module hash and
    /// a bounded list of distinct plain file names (never a path that could
    /// escape the snapshot directory).
    pub fn validate(&self) -> Result<(), ConvertError> {
        if self.module_hash.len() != MODULE_HASH_BYTES {
            return Err(ConvertError::ModuleHashLength { len: self.module_hash.len() });
        }
        if self.files.len() > SNAPSHOT_FILES_MAX {
            return Err(ConvertError::TooManyFiles { count: self.files.len() });
        }
        let mut seen = BTreeSet::new();
        for file in &self.files {
            if !is_plain_file_name(&file.name) {
                return Err(ConvertError::BadFileName { name: file.name.clone() });
            }
            if !seen.insert(file.name.as_str()) {
                return Err(ConvertError::DuplicateFile { name: file.name.clone() });
            }
        }
        Ok(())
    }
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= SNAPSHOT_FILE_NAME_BYTES_MAX
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
}

fn body_from_raft(body: raft::MessageBody) -> Body {
    use raft::MessageBody as M;
    match body {
        M::PreVote { last_index, last_term } => Body::PreVote(peer::PreVote { last_index, last_term }),
        M::PreVoteResponse { reject } => Body::PreVoteResponse(peer::VoteResponse { reject }),
        M::Vote { last_index, last_term, transfer } => Body::Vote(peer::Vote { last_index, last_term, transfer }),
        M::VoteResponse { reject } => Body::VoteResponse(peer::VoteResponse { reject }),
        M::Append { prev_index, prev_term, entries, commit } => Body::Append(peer::Append {
            prev_index,
            prev_term,
            entries: entries.into_iter().map(entry_from_raft).collect(),
            commit,
        }),
        M::AppendResponse { reject, index, hint_index, hint_term } => {
            Body::AppendResponse(peer::AppendResponse { reject, index, hint_index, hint_term })
        }
        M::Heartbeat { commit, round, quiesce } => Body::Heartbeat(peer::Heartbeat { commit, round, quiesce }),
        M::HeartbeatResponse { round } => Body::HeartbeatResponse(peer::HeartbeatResponse { round }),
        M::InstallSnapshot { meta } => Body::InstallSnapshot(peer::InstallSnapshot {
            meta: Some(peer::SnapshotMeta { index: meta.index, term: meta.term, configuration: meta.config.encode() }),
            manifest: None,
        }),
        M::TimeoutNow => Body::TimeoutNow(peer::TimeoutNow {}),
        M::ReadIndex { ids } => Body::ReadIndex(peer::ReadIndex { ids }),
        M::ReadIndexResponse { ids, index } => Body::ReadIndexResponse(peer::ReadIndexResponse { ids, index }),
        M::StateDigest { index, digest } => {
            Body::StateDigest(peer::StateDigest { index, digest: bytes::Bytes::copy_from_slice(&digest) })
        }
    }
}

fn body_into_raft(body: Body, message_term: u64) -> Result<raft::MessageBody, ConvertError> {
    use raft::MessageBody as M;
    Ok(match body {
        Body::PreVote(v) => M::PreVote { last_index: v.last_index, last_term: v.last_term },
        Body::PreVoteResponse(v) => M::PreVoteResponse { reject: v.reject },
        Body::Vote(v) => M::Vote { last_index: v.last_index, last_term: v.last_term, transfer: v.transfer },
        Body::VoteResponse(v) => M::VoteResponse { reject: v.reject },
        Body::Append(a) => M::Append {
            entries: entries_into_raft(a.prev_index, a.prev_term, message_term, a.entries)?,
            prev_index: a.prev_index,
            prev_term: a.prev_term,
            commit: a.commit,
        },
        Body::AppendResponse(r) => {
            M::AppendResponse { reject: r.reject, index: r.index, hint_index: r.hint_index, hint_term: r.hint_term }
        }
        Body::Heartbeat(h) => M::Heartbeat { commit: h.commit, round: h.round, quiesce: h.quiesce },
        Body::HeartbeatResponse(h) => M::HeartbeatResponse { round: h.round },
        Body::InstallSnapshot(install) => {
            let meta = install.meta.ok_or(ConvertError::MissingSnapshotMeta)?;
            let config = raft::Configuration::decode(&meta.configuration)
                .map_err(|source| ConvertError::SnapshotConfiguration { index: meta.index, term: meta.term, source })?;
            M::InstallSnapshot { meta: raft::SnapshotMeta { index: meta.index, term: meta.term, config } }
        }
        Body::TimeoutNow(peer::TimeoutNow {}) => M::TimeoutNow,
        Body::ReadIndex(r) => M::ReadIndex { ids: r.ids },
        Body::ReadIndexResponse(r) => M::ReadIndexResponse { ids: r.ids, index: r.index },
        Body::StateDigest(d) => M::StateDigest {
            index: d.index,
            digest: d.digest[..]
                .try_into()
                .map_err(|_| ConvertError::DigestLength { index: d.index, len: d.digest.len() })?,
        },
    })
}

fn entry_from_raft(e: raft::Entry) -> peer::Entry {
    let kind = match e.kind {
        raft::EntryKind::Normal => peer::EntryKind::Normal,
        raft::EntryKind::Config => peer::EntryKind::Config,
    };
    peer::Entry { index: e.index, term: e.term, kind: kind as i32, data: e.data }
}

/// Converts an append's entries, checking the log invariants the core assumes
/// of a leader's append: consecutive indexes after `prev_index`, terms never
/// below the one before and never above the sender's term. A configuration
/// entry's payload is deliberately NOT decoded here: it is log content the
/// leader already replicated, and the core treats an undecodable one the same
/// way on every replica; refusing it on the wire would stall the follower.
fn entries_into_raft(
    prev_index: u64,
    prev_term: u64,
    message_term: u64,
    entries: Vec<peer::Entry>,
) -> Result<Vec<raft::Entry>, ConvertError> {
    let mut previous_term = prev_term;
    let mut out = Vec::with_capacity(entries.len());
    for (position, e) in entries.into_iter().enumerate() {
        let expected = prev_index
            .checked_add(1)
            .and_then(|first| first.checked_add(position as u64))
            .ok_or(ConvertError::EntryIndexOverflow { prev_index })?;
        if e.index != expected {
            return Err(ConvertError::EntryIndexGap { prev_index, position, index: e.index, expected });
        }
        if e.term < previous_term {
            return Err(ConvertError::EntryTermDecreases { index: e.index, term: e.term, previous_term });
        }
        if e.term > message_term {
            return Err(ConvertError::EntryTermAboveMessage { index: e.index, term: e.term, message_term });
        }
        let kind = match peer::EntryKind::try_from(e.kind) {
            Ok(peer::EntryKind::Normal) => raft::EntryKind::Normal,
            Ok(peer::EntryKind::Config) => raft::EntryKind::Config,
            Err(_) => {
                return Err(ConvertError::UnknownEntryKind { index: e.index, kind: e.kind });
            }
        };
        previous_term = e.term;
        out.push(raft::Entry { index: e.index, term: e.term, kind, data: e.data });
    }
    Ok(out)
}
