//! The log-entry envelope of client traffic. Every normal entry the host
//! proposes for a client is one [`Envelope`]: a session-less command, a
//! session's registration, keep-alive or close, or a numbered session command.
//! Each carries the proposing leader's timestamp, the only clock sessions know.
//!
//! Owns the byte layout and its validation. Must never panic on bytes from a
//! log, a snapshot or a network, and never look inside the guest's payload.
//! The leader's empty no-op entry is not an envelope: the host skips it before
//! decoding.
//!
//! Layout (little endian), version 1:
//!
//! ```text
//! version u8 = 1 | kind u8 | timestamp_ms u64 | fields of the kind
//!   1 Plain       payload (the rest)
//!   2 Register    has_nonce u8 (0 or 1) | nonce u128 when has_nonce = 1
//!   3 Command     session_id u64 | seq u64 | lowest_unacked_seq u64 | payload (the rest)
//!   4 KeepAlive   session_id u64 | lowest_unacked_seq u64
//!   5 Unregister  session_id u64
//!   6 Deploy      module (the rest): a state machine component every replica switches to
//!   7 Settings    settings (the rest): the group's replicated settings (waft-node's `GroupSettings`)
//!   8 Found       module_hash [u8; 32] | settings_len u32 | settings | module (the rest, empty when
//!                 the component does not fit one entry): the group's founding module and settings
//!   9 Verdict     index u64 | digest [u8; 32]: the state digest a majority of replicas reported for
//!                 entry `index`; a replica whose own differs is fenced
//!  10 DeployHash  module_hash [u8; 32] | size u64: a deploy of a component named by its sha256, whose
//!                 bytes travel beside the log (fetched from the leader before the entry is proposed)
//! ```

use crate::wire::{Reader, put_u64, put_u128};
use bytes::Bytes;

/// Version tag of the envelope layout; bump on any change.
pub const ENVELOPE_VERSION: u8 = 1;
/// The largest guest payload an envelope carries. The node's proposal limit
/// (`waft_raft::Config::proposal_bytes_max`) is normally far lower; this bound
/// only keeps the codec itself from trusting a length it has not checked.
pub const PAYLOAD_BYTES_MAX: usize = 64 << 20;
/// The largest settings record a `Found` entry carries (they are a few
/// dozen bytes; this only bounds what the decoder trusts).
pub const SETTINGS_BYTES_MAX: usize = 64 * 1024;
/// The most bytes an envelope adds around its payload (a Command's header).
/// A node that limits proposals to N bytes accepts payloads of N minus this.
pub const ENVELOPE_OVERHEAD_BYTES_MAX: usize = 2 + 8 + 3 * 8;

const KIND_PLAIN: u8 = 1;
const KIND_REGISTER: u8 = 2;
const KIND_COMMAND: u8 = 3;
const KIND_KEEP_ALIVE: u8 = 4;
const KIND_UNREGISTER: u8 = 5;
const KIND_DEPLOY: u8 = 6;
const KIND_SETTINGS: u8 = 7;
const KIND_FOUND: u8 = 8;
const KIND_VERDICT: u8 = 9;
const KIND_DEPLOY_HASH: u8 = 10;

/// One client entry as it travels in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The proposing leader's wall clock, in milliseconds since the Unix
    /// epoch. Every replica reads the same value, so expiry computed from it
    /// is identical everywhere; the session table never reads a clock.
    pub timestamp_ms: u64,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// A command outside any session. It applies every time it commits, so a
    /// client that retries it may apply it twice: fit only for idempotent commands.
    Plain { payload: Bytes },
    /// Opens a session; its id is the log index this entry commits at. A client
    /// that may retry its registration picks a random `nonce`: a retry whose
    /// nonce names an open session gets that session back instead of a new one.
    Register { nonce: Option<u128> },
    /// Command number `seq` of a session. `lowest_unacked_seq` is the client's
    /// lowest sequence number still without a reply (Raft dissertation §6.3):
    /// every reply below it has been received, so the table drops them.
    /// Invariant: `1 <= lowest_unacked_seq <= seq`.
    Command { session_id: u64, seq: u64, lowest_unacked_seq: u64, payload: Bytes },
    /// Keeps an idle session from expiring and acknowledges replies, like a
    /// command without a payload. Invariant: `lowest_unacked_seq >= 1`.
    KeepAlive { session_id: u64, lowest_unacked_seq: u64 },
    /// Closes a session and frees its saved replies.
    Unregister { session_id: u64 },
    /// An operator's deploy: every replica switches the group's state machine
    /// to this component at this entry's index (the old module saves its
    /// state, the new one loads it). Not a session entry: the host applies it
    /// itself and the session table never sees it.
    Deploy { module: Bytes },
    /// An operator's change of the group's settings (`waft admin
    /// set-group`): every replica adopts them at this entry's index. The
    /// bytes are waft-node's `GroupSettings` encoding; the session crate
    /// carries them unread. Not a session entry.
    Settings { settings: Bytes },
    /// The group's founding module and settings, proposed by the first
    /// leader of a group whose replicas have not yet agreed on them. The
    /// first one that commits binds every replica (a replica that joined
    /// later with its own module switches to this one); later ones change
    /// nothing. Not a session entry.
    ///
    /// `module` is the component's bytes, or empty when it is too large for
    /// one entry: then a replica that does not already run `module_hash`
    /// cannot follow, and stops.
    Found { module_hash: [u8; 32], module: Bytes, settings: Bytes },
    /// The group's verdict on its state after entry `index`: the digest a
    /// majority of its voters reported there, proposed by the leader. A
    /// replica whose own digest of that entry differs is fenced; its
    /// state is rebuilt from a healthy replica's. Not a session entry.
    Verdict { index: u64, digest: [u8; 32] },
    /// An operator's deploy of a component named by its sha256 (and its
    /// size), like `Deploy` but with the bytes beside the log: the leader
    /// has every replica fetch and compile them before it proposes this, so
    /// applying it is a switch. A replica that lacks them when it applies
    /// the entry cannot switch, and is fenced and rebuilt. Not a session
    /// entry.
    DeployHash { module_hash: [u8; 32], size: u64 },
}

/// Why bytes are not a valid envelope (or why one cannot be encoded).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("empty entry: the leader's no-op is not a client envelope")]
    Empty,
    #[error(
        "envelope version {0} is unknown to this build (it reads version {ENVELOPE_VERSION}); upgrade every replica before clients use the newer format"
    )]
    UnknownVersion(u8),
    #[error("envelope kind {0} is unknown")]
    UnknownKind(u8),
    #[error("envelope ended early")]
    Truncated,
    #[error("{0} bytes follow the end of the envelope")]
    TrailingBytes(usize),
    #[error("payload of {bytes} bytes exceeds the envelope's {max}-byte bound")]
    PayloadTooLarge { bytes: usize, max: usize },
    #[error("invalid envelope field: {0}")]
    Invalid(&'static str),
}

impl From<crate::wire::Truncated> for EnvelopeError {
    fn from(_: crate::wire::Truncated) -> Self {
        EnvelopeError::Truncated
    }
}

impl Body {
    /// Checks the invariants a decoded or to-be-encoded body must hold.
    fn validate(&self) -> Result<(), EnvelopeError> {
        let payload = match self {
            Body::Plain { payload } => payload,
            Body::Register { .. } => return Ok(()),
            Body::Command { session_id, seq, lowest_unacked_seq, payload } => {
                check_session_id(*session_id)?;
                if *lowest_unacked_seq == 0 || *seq == 0 {
                    return Err(EnvelopeError::Invalid("sequence numbers start at 1"));
                }
                if lowest_unacked_seq > seq {
                    return Err(EnvelopeError::Invalid("lowest_unacked_seq above the command's own seq"));
                }
                payload
            }
            Body::KeepAlive { session_id, lowest_unacked_seq } => {
                check_session_id(*session_id)?;
                if *lowest_unacked_seq == 0 {
                    return Err(EnvelopeError::Invalid("sequence numbers start at 1"));
                }
                return Ok(());
            }
            Body::Unregister { session_id } => return check_session_id(*session_id),
            Body::Verdict { .. } | Body::DeployHash { .. } => return Ok(()),
            Body::Deploy { module } | Body::Settings { settings: module } => module,
            Body::Found { module, settings, .. } => {
                if settings.len() > SETTINGS_BYTES_MAX {
                    return Err(EnvelopeError::PayloadTooLarge { bytes: settings.len(), max: SETTINGS_BYTES_MAX });
                }
                module
            }
        };
        if payload.len() > PAYLOAD_BYTES_MAX {
            return Err(EnvelopeError::PayloadTooLarge { bytes: payload.len(), max: PAYLOAD_BYTES_MAX });
        }
        Ok(())
    }
}

fn check_session_id(id: u64) -> Result<(), EnvelopeError> {
    if id == 0 {
        // Session ids are log indexes, which start at 1.
        return Err(EnvelopeError::Invalid("session id 0"));
    }
    Ok(())
}

impl Envelope {
    pub fn new(timestamp_ms: u64, body: Body) -> Envelope {
        Envelope { timestamp_ms, body }
    }

    /// The bytes to propose. Refuses a body that breaks its invariants, so a
    /// bad client request fails at the leader, not in every replica's apply.
    pub fn encode(&self) -> Result<Bytes, EnvelopeError> {
        self.body.validate()?;
        let payload_len = match &self.body {
            Body::Plain { payload } | Body::Command { payload, .. } | Body::Deploy { module: payload } => payload.len(),
            Body::Settings { settings } => settings.len(),
            Body::Found { module, settings, .. } => 32 + 4 + settings.len() + module.len(),
            _ => 0,
        };
        let mut out = Vec::with_capacity(ENVELOPE_OVERHEAD_BYTES_MAX + payload_len);
        out.push(ENVELOPE_VERSION);
        let kind = match &self.body {
            Body::Plain { .. } => KIND_PLAIN,
            Body::Register { .. } => KIND_REGISTER,
            Body::Command { .. } => KIND_COMMAND,
            Body::KeepAlive { .. } => KIND_KEEP_ALIVE,
            Body::Unregister { .. } => KIND_UNREGISTER,
            Body::Deploy { .. } => KIND_DEPLOY,
            Body::Settings { .. } => KIND_SETTINGS,
            Body::Found { .. } => KIND_FOUND,
            Body::Verdict { .. } => KIND_VERDICT,
            Body::DeployHash { .. } => KIND_DEPLOY_HASH,
        };
        out.push(kind);
        put_u64(&mut out, self.timestamp_ms);
        match &self.body {
            Body::Plain { payload } => out.extend_from_slice(payload),
            Body::Register { nonce: None } => out.push(0),
            Body::Register { nonce: Some(n) } => {
                out.push(1);
                put_u128(&mut out, *n);
            }
            Body::Command { session_id, seq, lowest_unacked_seq, payload } => {
                put_u64(&mut out, *session_id);
                put_u64(&mut out, *seq);
                put_u64(&mut out, *lowest_unacked_seq);
                out.extend_from_slice(payload);
            }
            Body::KeepAlive { session_id, lowest_unacked_seq } => {
                put_u64(&mut out, *session_id);
                put_u64(&mut out, *lowest_unacked_seq);
            }
            Body::Unregister { session_id } => put_u64(&mut out, *session_id),
            Body::Deploy { module } => out.extend_from_slice(module),
            Body::Settings { settings } => out.extend_from_slice(settings),
            Body::Found { module_hash, module, settings } => {
                out.extend_from_slice(module_hash);
                // Bounded by SETTINGS_BYTES_MAX (validate), so it fits a u32.
                out.extend_from_slice(&(settings.len() as u32).to_le_bytes());
                out.extend_from_slice(settings);
                out.extend_from_slice(module);
            }
            Body::Verdict { index, digest } => {
                put_u64(&mut out, *index);
                out.extend_from_slice(digest);
            }
            Body::DeployHash { module_hash, size } => {
                out.extend_from_slice(module_hash);
                put_u64(&mut out, *size);
            }
        }
        Ok(Bytes::from(out))
    }

    /// Whether an entry's data is a deploy, a settings change or a founding
    /// entry, read from its header alone (no decoding, no check of the
    /// rest): for a caller that must know ahead of applying it that the
    /// entry may compile a module or rebuild the state machine's instance.
    pub fn is_deploy(data: &[u8]) -> bool {
        matches!(data, [ENVELOPE_VERSION, KIND_DEPLOY | KIND_SETTINGS | KIND_FOUND | KIND_DEPLOY_HASH, ..])
    }

    /// Whether an entry's data is a verdict, read from its header alone:
    /// applying one may rebuild the state machine (a fenced replica's).
    pub fn is_verdict(data: &[u8]) -> bool {
        matches!(data, [ENVELOPE_VERSION, KIND_VERDICT, ..])
    }

    /// Decodes an entry's data. The payload shares `data`'s buffer (no copy).
    pub fn decode(data: &Bytes) -> Result<Envelope, EnvelopeError> {
        let mut r = Reader::new(data);
        let version = r.u8().map_err(|_| EnvelopeError::Empty)?;
        if version != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnknownVersion(version));
        }
        let kind = r.u8()?;
        let timestamp_ms = r.u64()?;
        let rest = |r: &Reader| data.slice(r.pos()..);
        let body = match kind {
            KIND_PLAIN => Body::Plain { payload: rest(&r) },
            KIND_REGISTER => {
                let nonce = match r.u8()? {
                    0 => None,
                    1 => Some(r.u128()?),
                    _ => return Err(EnvelopeError::Invalid("nonce flag other than 0 or 1")),
                };
                Body::Register { nonce }
            }
            KIND_COMMAND => {
                Body::Command { session_id: r.u64()?, seq: r.u64()?, lowest_unacked_seq: r.u64()?, payload: rest(&r) }
            }
            KIND_KEEP_ALIVE => Body::KeepAlive { session_id: r.u64()?, lowest_unacked_seq: r.u64()? },
            KIND_UNREGISTER => Body::Unregister { session_id: r.u64()? },
            KIND_DEPLOY => Body::Deploy { module: rest(&r) },
            KIND_SETTINGS => Body::Settings { settings: rest(&r) },
            KIND_FOUND => {
                let mut module_hash = [0u8; 32];
                module_hash.copy_from_slice(r.take(32)?);
                let len = r.u32()? as usize;
                if len > SETTINGS_BYTES_MAX {
                    return Err(EnvelopeError::PayloadTooLarge { bytes: len, max: SETTINGS_BYTES_MAX });
                }
                let start = r.pos();
                r.take(len)?;
                Body::Found { module_hash, settings: data.slice(start..start + len), module: rest(&r) }
            }
            KIND_VERDICT => {
                let index = r.u64()?;
                let mut digest = [0u8; 32];
                digest.copy_from_slice(r.take(32)?);
                Body::Verdict { index, digest }
            }
            KIND_DEPLOY_HASH => {
                let mut module_hash = [0u8; 32];
                module_hash.copy_from_slice(r.take(32)?);
                Body::DeployHash { module_hash, size: r.u64()? }
            }
            k => return Err(EnvelopeError::UnknownKind(k)),
        };
        let has_payload = matches!(
            body,
            Body::Plain { .. }
                | Body::Command { .. }
                | Body::Deploy { .. }
                | Body::Settings { .. }
                | Body::Found { .. }
        );
        if !has_payload && r.remaining() > 0 {
            return Err(EnvelopeError::TrailingBytes(r.remaining()));
        }
        body.validate()?;
        Ok(Envelope { timestamp_ms, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_kinds() -> Vec<Envelope> {
        let p = Bytes::from_static(b"incr");
        [
            Body::Plain { payload: p.clone() },
            Body::Plain { payload: Bytes::new() },
            Body::Register { nonce: None },
            Body::Register { nonce: Some(u128::MAX - 7) },
            Body::Command { session_id: 9, seq: 4, lowest_unacked_seq: 2, payload: p },
            Body::KeepAlive { session_id: 9, lowest_unacked_seq: 5 },
            Body::Unregister { session_id: 9 },
            Body::Deploy { module: Bytes::from_static(b"\0asm") },
            Body::Settings { settings: Bytes::from_static(b"WAFTSET1") },
            Body::Found {
                module_hash: [7; 32],
                module: Bytes::from_static(b"\0asm"),
                settings: Bytes::from_static(b"WAFTSET1"),
            },
            Body::Found { module_hash: [0; 32], module: Bytes::new(), settings: Bytes::new() },
            Body::Verdict { index: 4096, digest: [9; 32] },
            Body::DeployHash { module_hash: [5; 32], size: 40 << 20 },
        ]
        .into_iter()
        .map(|b| Envelope::new(1_700_000_000_123, b))
        .collect()
    }

    #[test]
    fn is_deploy_says_what_decode_says() {
        for e in all_kinds() {
            let Ok(b) = e.encode() else { continue };
            let switches = matches!(
                e.body,
                Body::Deploy { .. } | Body::Settings { .. } | Body::Found { .. } | Body::DeployHash { .. }
            );
            assert_eq!(Envelope::is_deploy(&b), switches, "{e:?}");
        }
        assert!(!Envelope::is_deploy(&[]));
        assert!(!Envelope::is_deploy(&[ENVELOPE_VERSION]));
        assert!(!Envelope::is_deploy(&[ENVELOPE_VERSION + 1, KIND_DEPLOY]));
    }

    #[test]
    fn every_kind_round_trips_and_every_truncation_fails() {
        for e in all_kinds() {
            let b = e.encode().unwrap();
            // (A founding entry's hash and settings, and a verdict's digest,
            // are content, not overhead.)
            if !matches!(e.body, Body::Found { .. } | Body::Verdict { .. } | Body::DeployHash { .. }) {
                assert!(b.len() <= ENVELOPE_OVERHEAD_BYTES_MAX + 4, "{e:?}");
            }
            assert_eq!(Envelope::decode(&b), Ok(e.clone()));
            let payload_len = match &e.body {
                Body::Plain { payload } | Body::Command { payload, .. } | Body::Deploy { module: payload } => {
                    payload.len()
                }
                Body::Settings { settings } => settings.len(),
                Body::Found { module, .. } => module.len(),
                _ => 0,
            };
            // Any cut into the header fails; a cut into a payload only shortens it.
            for cut in 0..b.len() - payload_len {
                assert!(Envelope::decode(&b.slice(..cut)).is_err(), "{e:?} cut {cut}");
            }
        }
    }

    #[test]
    fn bad_bytes_are_errors() {
        assert_eq!(Envelope::decode(&Bytes::new()), Err(EnvelopeError::Empty));
        let good = all_kinds()[2].encode().unwrap();
        let mut v = good.to_vec();
        v[0] = 2;
        assert_eq!(Envelope::decode(&Bytes::from(v)), Err(EnvelopeError::UnknownVersion(2)));
        let mut v = good.to_vec();
        v[1] = 99;
        assert_eq!(Envelope::decode(&Bytes::from(v)), Err(EnvelopeError::UnknownKind(99)));
        let mut v = good.to_vec();
        v.push(0);
        assert_eq!(Envelope::decode(&Bytes::from(v)), Err(EnvelopeError::TrailingBytes(1)));
        let mut v = good.to_vec();
        v[10] = 2; // nonce flag
        assert!(matches!(Envelope::decode(&Bytes::from(v)), Err(EnvelopeError::Invalid(_))));
    }

    #[test]
    fn invariants_hold_on_both_sides() {
        let cmd = |session_id, seq, lowest_unacked_seq| {
            Envelope::new(0, Body::Command { session_id, seq, lowest_unacked_seq, payload: Bytes::new() })
        };
        for bad in [cmd(0, 1, 1), cmd(1, 0, 0), cmd(1, 3, 4), cmd(1, 3, 0)] {
            assert!(matches!(bad.encode(), Err(EnvelopeError::Invalid(_))), "{bad:?}");
        }
        // The decoder holds the same line against bytes written by someone else.
        let mut v = cmd(1, 3, 3).encode().unwrap().to_vec();
        v[26..34].copy_from_slice(&4u64.to_le_bytes());
        assert!(matches!(Envelope::decode(&Bytes::from(v)), Err(EnvelopeError::Invalid(_))));
        let big = Envelope::new(0, Body::Plain { payload: Bytes::from(vec![0u8; PAYLOAD_BYTES_MAX + 1]) });
        assert!(matches!(big.encode(), Err(EnvelopeError::PayloadTooLarge { .. })));
    }

    #[test]
    fn payload_shares_the_entry_buffer() {
        let e = &all_kinds()[4];
        let b = e.encode().unwrap();
        let Body::Command { payload, .. } = Envelope::decode(&b).unwrap().body else {
            panic!("a command");
        };
        assert_eq!(payload.as_ptr(), b[b.len() - 4..].as_ptr());
    }
}
