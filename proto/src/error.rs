//! The client service's structured [`Error`]: constructors for each code, a
//! readable `Display`, and the mapping from the core's `RaftError`.
//!
//! Owns what a client is told when its request fails. Must never put a code
//! and its details out of step (a NOT_LEADER without the leader's id when it is
//! known, a BUSY without a retry hint).

use std::fmt;

use waft_raft as raft;
use waft_session::SessionError;

use crate::client::{Error, ErrorCode};

/// The retry hint a BUSY error carries when the caller has no better estimate.
pub const RETRY_AFTER_MS_DEFAULT: u64 = 100;

impl Error {
    fn with(code: ErrorCode, message: impl Into<String>) -> Self {
        Error { code: code as i32, message: message.into(), ..Default::default() }
    }

    /// This node does not lead the group. `leader_id` 0 and an empty address
    /// mean no leader is known (an election is running): retry after a pause.
    pub fn not_leader(leader_id: u64, leader_address: impl Into<String>) -> Self {
        let leader_address = leader_address.into();
        let message = if leader_id == raft::NONE {
            "this node is not the leader and knows of none; retry shortly".to_owned()
        } else if leader_address.is_empty() {
            format!("this node is not the leader; node {leader_id} is, address unknown")
        } else {
            format!("this node is not the leader; retry at node {leader_id} ({leader_address})")
        };
        Error { leader_id, leader_address, ..Error::with(ErrorCode::NotLeader, message) }
    }

    /// This node's state differs from its group's (it is fenced until
    /// rebuilt): like not-leader, the client goes to `leader_id` (0: none
    /// known; retry shortly). Answers reads only: a read is safe to send
    /// again anywhere.
    pub fn fenced(why: impl Into<String>, leader_id: u64, leader_address: impl Into<String>) -> Self {
        Error { leader_id, leader_address: leader_address.into(), ..Error::with(ErrorCode::NotLeader, why) }
    }

    /// The command committed, but the node that answers cannot vouch for
    /// its result (its state differs from its group's): like a timeout,
    /// the outcome is unknown to the client. Inside a session, retrying
    /// the same sequence number gets the group's result; a plain command
    /// is not retried (it would apply twice).
    pub fn outcome_unknown(why: impl Into<String>) -> Self {
        Error::with(ErrorCode::Timeout, why)
    }

    pub fn unknown_group(group: u64) -> Self {
        Error::with(
            ErrorCode::UnknownGroup,
            format!("this node serves no group {group}; check the group id or ask another node"),
        )
    }

    pub fn busy(retry_after_ms: u64, why: impl fmt::Display) -> Self {
        Error { retry_after_ms, ..Error::with(ErrorCode::Busy, format!("{why}; retry after {retry_after_ms} ms")) }
    }

    pub fn too_large(size_bytes: u64, max_bytes: u64) -> Self {
        Error {
            size_bytes,
            max_bytes,
            ..Error::with(
                ErrorCode::TooLarge,
                format!("{size_bytes} bytes exceed the {max_bytes}-byte limit; send less per request"),
            )
        }
    }

    /// The state machine returned an error for this command.
    pub fn rejected(why: impl Into<String>) -> Self {
        Error::with(ErrorCode::Rejected, why)
    }

    /// The state machine trapped or hit a limit; the group keeps serving.
    pub fn guest_fault(why: impl Into<String>) -> Self {
        Error::with(ErrorCode::GuestFault, why)
    }

    pub fn timeout(waited_ms: u64) -> Self {
        Error::with(
            ErrorCode::Timeout,
            format!(
                "no answer after {waited_ms} ms; the command may still apply: retry it with the same session and \
                 sequence number (it applies at most once), or without a session only if it is idempotent"
            ),
        )
    }

    pub fn internal(why: impl Into<String>) -> Self {
        Error::with(ErrorCode::Internal, why)
    }

    /// A module was refused (by a deploy or a create); nothing changed.
    pub fn bad_module(why: impl Into<String>) -> Self {
        Error::with(ErrorCode::BadModule, why)
    }

    /// A create named a group that exists with another module or voters.
    pub fn group_exists(why: impl Into<String>) -> Self {
        Error::with(ErrorCode::GroupExists, why)
    }

    /// The caller lacks what the call needs (`why` names it); nothing was done.
    pub fn permission_denied(why: impl Into<String>) -> Self {
        Error::with(ErrorCode::PermissionDenied, why)
    }

    pub fn invalid_request(why: impl Into<String>) -> Self {
        Error::with(ErrorCode::InvalidRequest, why)
    }

    /// Maps a refusal from the core. Only NOT_LEADER and BUSY arise from a
    /// proposal or a read; the leader's address is the daemon's to add.
    pub fn from_raft(err: &raft::RaftError, leader_address: &str, retry_after_ms: u64) -> Self {
        use raft::RaftError as R;
        match err {
            R::NotLeader { leader_hint } => Error::not_leader(leader_hint.unwrap_or(raft::NONE), leader_address),
            R::ProposalTooLarge { bytes, max } => Error::too_large(*bytes, *max),
            R::InvalidConfChange(_) => Error::invalid_request(err.to_string()),
            R::TransferInProgress | R::ConfChangeInProgress | R::Busy | R::NotReady => Error::busy(retry_after_ms, err),
        }
    }

    /// The session table refused the request; the message is the table's,
    /// which says what to do. A full table is BUSY-like: it carries a retry hint.
    pub fn from_session(err: &SessionError, retry_after_ms: u64) -> Self {
        use SessionError as S;
        match err {
            S::UnknownOrExpired { .. } => Error::with(ErrorCode::SessionExpired, err.to_string()),
            S::TableFull { .. } => Error { retry_after_ms, ..Error::with(ErrorCode::SessionLimit, err.to_string()) },
            S::WindowFull { .. } => Error::with(ErrorCode::SessionWindowFull, err.to_string()),
            S::Stale { .. } => Error::with(ErrorCode::SessionStale, err.to_string()),
            S::ReplyDiscarded { .. } => Error::with(ErrorCode::ResultDiscarded, err.to_string()),
        }
    }
}

impl fmt::Display for Error {
    /// `code()` is prost's getter: an unknown code reads as `Unspecified`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code().as_str_name(), self.message)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_refusals_map_to_codes_with_their_details() {
        let e = Error::from_raft(&raft::RaftError::NotLeader { leader_hint: Some(3) }, "10.0.0.3:7000", 50);
        assert_eq!((e.code(), e.leader_id, e.leader_address.as_str()), (ErrorCode::NotLeader, 3, "10.0.0.3:7000"));
        assert!(e.to_string().contains("10.0.0.3:7000"), "{e}");

        let e = Error::from_raft(&raft::RaftError::NotLeader { leader_hint: None }, "", 50);
        assert_eq!((e.code(), e.leader_id), (ErrorCode::NotLeader, raft::NONE));

        for busy in [
            raft::RaftError::Busy,
            raft::RaftError::NotReady,
            raft::RaftError::TransferInProgress,
            raft::RaftError::ConfChangeInProgress,
        ] {
            let e = Error::from_raft(&busy, "", 250);
            assert_eq!((e.code(), e.retry_after_ms), (ErrorCode::Busy, 250), "{busy:?}");
        }

        let e = Error::from_raft(&raft::RaftError::ProposalTooLarge { bytes: 9, max: 4 }, "", 0);
        assert_eq!((e.code(), e.size_bytes, e.max_bytes), (ErrorCode::TooLarge, 9, 4));
    }

    #[test]
    fn session_refusals_map_to_their_codes() {
        let cases = [
            (SessionError::UnknownOrExpired { session_id: 4 }, ErrorCode::SessionExpired),
            (SessionError::TableFull { sessions_open_max: 9 }, ErrorCode::SessionLimit),
            (
                SessionError::WindowFull { session_id: 4, seq: 9, lowest_unacked_seq: 1, window_commands_max: 8 },
                ErrorCode::SessionWindowFull,
            ),
            (SessionError::Stale { session_id: 4, seq: 1, lowest_unacked_seq: 3 }, ErrorCode::SessionStale),
            (SessionError::ReplyDiscarded { session_id: 4, seq: 2 }, ErrorCode::ResultDiscarded),
        ];
        for (refusal, code) in &cases {
            let e = Error::from_session(refusal, 70);
            assert_eq!(e.code(), *code, "{refusal}");
            assert_eq!(e.message, refusal.to_string());
            assert_eq!(e.retry_after_ms, if *code == ErrorCode::SessionLimit { 70 } else { 0 });
        }
        assert!(Error::from_session(&cases[0].0, 0).to_string().contains("open a new session"));
    }

    #[test]
    fn unknown_codes_read_as_unspecified() {
        let e = Error { code: 999, message: "from a newer server".into(), ..Default::default() };
        assert_eq!(e.code(), ErrorCode::Unspecified);
        assert_eq!(e.to_string(), "ERROR_CODE_UNSPECIFIED: from a newer server");
    }
}
