//! What one applied client entry means for the client waiting on it, and the
//! byte form in which the session table keeps a command's result for its
//! retries.
//!
//! Owns the saved-reply layout. Must never panic on saved bytes (they come
//! back from snapshots on disk and from peers), and must encode equal results
//! to equal bytes on every replica (they are part of the replicated table).
//!
//! Saved-reply layout, version-free (the session snapshot section is versioned):
//!
//! ```text
//! tag u8 | fields of the tag
//!   0 Ok        the guest's result bytes (the rest)
//!   1 Rejected  the guest's error message, UTF-8 (the rest)
//!   2 Fault     kind u8 (1 trap, 2 out of fuel, 3 memory limit, 4 exit, 5 protocol) | message, UTF-8 (the rest)
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use waft_runtime::{ApplyError, ApplyResult, FaultKind, GuestFault};
use waft_session::SessionError;

/// The outcome of one committed client entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest ran the command: its result, or its refusal or fault.
    Guest(ApplyResult),
    /// A retried session command that applied before: the result its first
    /// application gave, kept by the session table. The guest did not run again.
    Saved(ApplyResult),
    /// A session opened; its id is the index of its registration (or of the
    /// first registration with the same nonce).
    Registered { session_id: u64 },
    /// A keep-alive or a close took effect.
    Done,
    /// The session table refused the entry; the guest never saw it.
    Refused(SessionError),
    /// A deploy took effect: the group runs module `hash` since entry
    /// `index` (an earlier index when that module was running already).
    Deployed { hash: waft_storage::ModuleHash, index: u64 },
    /// A deploy was refused at apply, identically on every replica (the
    /// module does not load, or cannot read the running module's state);
    /// the running module stays.
    DeployRefused(String),
    /// The group's settings are `settings` since entry `index` (a settings
    /// change, or the group's founding entry; for a founding entry that
    /// came too late, the settings already bound and their index).
    SettingsChanged { settings: crate::GroupSettings, index: u64 },
    /// A settings change was refused at apply, identically on every replica
    /// (out of bounds, or the state as it stands would break them); the
    /// settings stay.
    SettingsRefused(String),
    /// A settings change made over settings another change replaced first:
    /// refused on every replica, nothing changed; asking again (over the
    /// settings now in force) is safe.
    SettingsConflict(String),
    /// This replica applied the entry, but its state differs from the
    /// group's (it is fenced): its result is not the group's. The client
    /// retries on another node (a session command's retry gets the
    /// group's saved result there).
    Fenced(String),
    /// The entry cannot be read by this build (an envelope of a newer
    /// version, or a saved reply that does not decode). Identical on every
    /// replica that runs the same build; the message says what to do.
    Unreadable(String),
}

impl Outcome {
    /// The guest's result, fresh or saved.
    pub fn result(&self) -> Option<&ApplyResult> {
        match self {
            Outcome::Guest(r) | Outcome::Saved(r) => Some(r),
            _ => None,
        }
    }
}

const TAG_OK: u8 = 0;
const TAG_REJECTED: u8 = 1;
const TAG_FAULT: u8 = 2;

/// The bytes the session table keeps for `result`.
pub fn encode_reply(result: &ApplyResult) -> Bytes {
    let (tag, kind, body): (u8, Option<u8>, &[u8]) = match result {
        Ok(bytes) => (TAG_OK, None, bytes),
        Err(ApplyError::Rejected(why)) => (TAG_REJECTED, None, why.as_bytes()),
        Err(ApplyError::Fault(f)) => (TAG_FAULT, Some(fault_kind_code(f.kind)), f.message.as_bytes()),
    };
    let mut out = BytesMut::with_capacity(2 + body.len());
    out.put_u8(tag);
    if let Some(k) = kind {
        out.put_u8(k);
    }
    out.put_slice(body);
    out.freeze()
}

/// The result a saved reply stands for.
pub fn decode_reply(saved: &Bytes) -> Result<ApplyResult, String> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match saved.first() {
        Some(&TAG_OK) => Ok(Ok(saved.slice(1..))),
        Some(&TAG_REJECTED) => Ok(Err(ApplyError::Rejected(text(&saved[1..])))),
        Some(&TAG_FAULT) => {
            let code = *saved.get(1).ok_or("a saved fault without its kind")?;
            let kind =
                fault_kind_from_code(code).ok_or_else(|| format!("unknown fault kind {code} in a saved reply"))?;
            Ok(Err(ApplyError::Fault(GuestFault { kind, message: text(&saved[2..]) })))
        }
        Some(tag) => Err(format!("unknown tag {tag} in a saved reply")),
        None => Err("an empty saved reply".to_string()),
    }
}

fn fault_kind_code(kind: FaultKind) -> u8 {
    match kind {
        FaultKind::Trap => 1,
        FaultKind::OutOfFuel => 2,
        FaultKind::MemoryLimit => 3,
        FaultKind::Exit => 4,
        FaultKind::Protocol => 5,
        FaultKind::ResultTooLarge => 6,
        // Never an entry's outcome (the group stops instead); coded so a
        // reply could still be kept if it ever were.
        FaultKind::Backstop => 7,
    }
}

fn fault_kind_from_code(code: u8) -> Option<FaultKind> {
    Some(match code {
        1 => FaultKind::Trap,
        2 => FaultKind::OutOfFuel,
        3 => FaultKind::MemoryLimit,
        4 => FaultKind::Exit,
        5 => FaultKind::Protocol,
        6 => FaultKind::ResultTooLarge,
        7 => FaultKind::Backstop,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_result_round_trips() {
        let results: Vec<ApplyResult> = vec![
            Ok(Bytes::from_static(b"42")),
            Ok(Bytes::new()),
            Err(ApplyError::Rejected("overflow".into())),
            Err(ApplyError::Rejected(String::new())),
            Err(ApplyError::Fault(GuestFault { kind: FaultKind::Trap, message: "unreachable".into() })),
            Err(ApplyError::Fault(GuestFault { kind: FaultKind::OutOfFuel, message: String::new() })),
            Err(ApplyError::Fault(GuestFault { kind: FaultKind::MemoryLimit, message: "m".into() })),
            Err(ApplyError::Fault(GuestFault { kind: FaultKind::Exit, message: "e".into() })),
            Err(ApplyError::Fault(GuestFault { kind: FaultKind::Protocol, message: "p".into() })),
            Err(ApplyError::Fault(GuestFault { kind: FaultKind::ResultTooLarge, message: "r".into() })),
        ];
        for r in results {
            assert_eq!(decode_reply(&encode_reply(&r)), Ok(r));
        }
    }

    #[test]
    fn bad_saved_bytes_are_errors() {
        for bad in [&b""[..], b"\x07abc", b"\x02", b"\x02\x09oops"] {
            assert!(decode_reply(&Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
        }
        // Bytes that are not UTF-8 in a message still decode (lossily), not panic.
        assert!(decode_reply(&Bytes::from_static(b"\x01\xff\xfe")).is_ok());
    }
}
