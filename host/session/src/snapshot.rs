//! The session table's section of a snapshot: a host-owned byte stream saved
//! beside the guest's, so a replica restored from a snapshot deduplicates
//! exactly as the replicas that applied the log.
//!
//! Owns the section's layout, checksum and bounds. Must never panic or
//! allocate without bound on bytes read from disk or a peer, and must encode
//! equal tables to equal bytes (replicas' snapshots at one index are
//! byte-identical, which the simulator checks).
//!
//! Layout (little endian), version 1:
//!
//! ```text
//! magic "WSES" | version u8 = 1
//! config: sessions_open_max u64 | window_commands_max u64 | session_idle_timeout_ms u64
//!         | reply_bytes_per_session_max u64 | reply_bytes_total_max u64
//! now_ms u64 | last_index u64 | sessions u32
//! per session, ids ascending:
//!   id u64 | last_active_ms u64 | has_nonce u8 [nonce u128] | lowest_unacked_seq u64 | saved u32
//!   per saved reply, seqs ascending: seq u64 | tag u8 (1 reply, 2 discarded) [len u32 | bytes]
//! crc32 u32 of every byte before it
//! ```

use crate::table::{Saved, Session, SessionConfig, SessionTable};
use crate::wire::{Reader, Truncated, put_u32, put_u64, put_u128};
use bytes::Bytes;
use std::collections::BTreeMap;

const MAGIC: &[u8; 4] = b"WSES";
/// Version tag of the snapshot section; bump on any layout change.
pub const SNAPSHOT_VERSION: u8 = 1;
const TAG_REPLY: u8 = 1;
const TAG_DISCARDED: u8 = 2;
const HEADER_BYTES: u64 = 4 + 1 + 5 * 8 + 8 + 8 + 4;
const SESSION_FIXED_BYTES_MAX: u64 = 8 + 8 + 1 + 16 + 8 + 4;
const SAVED_FIXED_BYTES_MAX: u64 = 8 + 1 + 4;
const CRC_BYTES: u64 = 4;

/// Why a session snapshot section could not be written or read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0} command replies are not recorded yet; a snapshot is taken between batches, after record_reply")]
    RepliesPending(u64),
    #[error("session snapshot of {bytes} bytes exceeds the {max}-byte bound of this group's session limits")]
    TooLarge { bytes: u64, max: u64 },
    #[error("session snapshot ended early")]
    Truncated,
    #[error("not a session snapshot (bad magic bytes)")]
    BadMagic,
    #[error(
        "session snapshot version {0} is unknown to this build (it reads version {SNAPSHOT_VERSION}); upgrade this replica"
    )]
    UnknownVersion(u8),
    #[error(
        "session snapshot checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the bytes are damaged; fetch the snapshot again"
    )]
    Checksum { stored: u32, computed: u32 },
    #[error(
        "the snapshot's session limits {snapshot:?} differ from this replica's {local:?}; every replica of a group must run the same limits"
    )]
    ConfigMismatch { snapshot: Box<SessionConfig>, local: Box<SessionConfig> },
    #[error("session snapshot is inconsistent: {0}")]
    Invalid(&'static str),
}

impl From<Truncated> for SnapshotError {
    fn from(_: Truncated) -> Self {
        SnapshotError::Truncated
    }
}

/// The most bytes a section written under `cfg` can take.
pub fn snapshot_bytes_max(cfg: &SessionConfig) -> u64 {
    let per_session =
        SESSION_FIXED_BYTES_MAX.saturating_add(cfg.window_commands_max.saturating_mul(SAVED_FIXED_BYTES_MAX));
    HEADER_BYTES
        .saturating_add(cfg.sessions_open_max.saturating_mul(per_session))
        .saturating_add(cfg.reply_bytes_total_max)
        .saturating_add(CRC_BYTES)
}

impl SessionTable {
    /// Encodes the table for a snapshot. Take it between apply batches: a
    /// command accepted but without a recorded reply cannot be saved.
    pub fn encode_snapshot(&self) -> Result<Bytes, SnapshotError> {
        if self.replies_pending() > 0 {
            return Err(SnapshotError::RepliesPending(self.replies_pending()));
        }
        let mut out = Vec::with_capacity(
            (HEADER_BYTES + self.reply_bytes()) as usize + self.sessions.len() * SESSION_FIXED_BYTES_MAX as usize,
        );
        out.extend_from_slice(MAGIC);
        out.push(SNAPSHOT_VERSION);
        let c = &self.cfg;
        for v in [
            c.sessions_open_max,
            c.window_commands_max,
            c.session_idle_timeout_ms,
            c.reply_bytes_per_session_max,
            c.reply_bytes_total_max,
        ] {
            put_u64(&mut out, v);
        }
        put_u64(&mut out, self.now_ms);
        put_u64(&mut out, self.last_index);
        put_u32(&mut out, self.sessions.len() as u32);
        for (&id, s) in &self.sessions {
            put_u64(&mut out, id);
            put_session_fields(&mut out, s);
            put_u32(&mut out, s.applied.len() as u32);
            for (&seq, saved) in &s.applied {
                put_u64(&mut out, seq);
                match saved {
                    Saved::Reply(r) => {
                        out.push(TAG_REPLY);
                        put_u32(&mut out, r.len() as u32);
                        out.extend_from_slice(r);
                    }
                    Saved::Discarded => out.push(TAG_DISCARDED),
                    Saved::Pending { .. } => unreachable!("checked: no pending replies"),
                }
            }
        }
        let crc = crc32fast::hash(&out);
        put_u32(&mut out, crc);
        debug_assert!(out.len() as u64 <= snapshot_bytes_max(&self.cfg));
        Ok(Bytes::from(out))
    }

    /// Restores a table from a snapshot section written by a replica with
    /// the same limits (`cfg`). Checks the checksum, every bound and every
    /// invariant, so a table that decodes is one the log could have produced.
    pub fn decode_snapshot(cfg: SessionConfig, bytes: &[u8]) -> Result<SessionTable, SnapshotError> {
        cfg.validate().map_err(|_| SnapshotError::Invalid("the local session limits are invalid"))?;
        let max = snapshot_bytes_max(&cfg);
        if bytes.len() as u64 > max {
            return Err(SnapshotError::TooLarge { bytes: bytes.len() as u64, max });
        }
        if bytes.len() < (HEADER_BYTES + CRC_BYTES) as usize {
            return Err(SnapshotError::Truncated);
        }
        let (body, crc) = bytes.split_at(bytes.len() - CRC_BYTES as usize);
        if &body[..4] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        if body[4] != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnknownVersion(body[4]));
        }
        let stored = u32::from_le_bytes(crc.try_into().map_err(|_| SnapshotError::Truncated)?);
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(SnapshotError::Checksum { stored, computed });
        }
        let mut r = Reader::new(body);
        r.take(5)?;
        let snapshot_cfg = SessionConfig {
            sessions_open_max: r.u64()?,
            window_commands_max: r.u64()?,
            session_idle_timeout_ms: r.u64()?,
            reply_bytes_per_session_max: r.u64()?,
            reply_bytes_total_max: r.u64()?,
        };
        if snapshot_cfg != cfg {
            return Err(SnapshotError::ConfigMismatch { snapshot: Box::new(snapshot_cfg), local: Box::new(cfg) });
        }
        let now_ms = r.u64()?;
        let last_index = r.u64()?;
        let count = r.u32()? as u64;
        if count > cfg.sessions_open_max {
            return Err(SnapshotError::Invalid("more sessions than sessions_open_max"));
        }
        let mut t = SessionTable::new(cfg).map_err(|_| SnapshotError::Invalid("bad limits"))?;
        t.now_ms = now_ms;
        t.last_index = last_index;
        let mut prev_id = 0;
        for _ in 0..count {
            let (id, s) = decode_session(&mut r, &t.cfg)?;
            if id <= prev_id {
                return Err(SnapshotError::Invalid("session ids not ascending"));
            }
            prev_id = id;
            if let Some(n) = s.nonce
                && t.nonces.insert(n, id).is_some()
            {
                return Err(SnapshotError::Invalid("two sessions share a nonce"));
            }
            t.by_activity.insert((s.last_active_ms, id));
            t.sessions.insert(id, s);
        }
        if r.remaining() > 0 {
            return Err(SnapshotError::Invalid("bytes after the last session"));
        }
        t.rebuild_ledger();
        t.check_invariants().map_err(SnapshotError::Invalid)?;
        Ok(t)
    }
}

/// A session's own fields (not its saved replies), laid out as both the
/// snapshot section and the store's records (`records`) keep them:
/// last_active_ms u64 | has_nonce u8 [nonce u128] | lowest_unacked_seq u64.
pub(crate) fn put_session_fields(out: &mut Vec<u8>, s: &Session) {
    put_u64(out, s.last_active_ms);
    match s.nonce {
        None => out.push(0),
        Some(n) => {
            out.push(1);
            put_u128(out, n);
        }
    }
    put_u64(out, s.lowest_unacked_seq);
}

/// Reads what `put_session_fields` wrote: (last_active_ms, nonce,
/// lowest_unacked_seq).
pub(crate) fn read_session_fields(r: &mut Reader) -> Result<(u64, Option<u128>, u64), SnapshotError> {
    let last_active_ms = r.u64()?;
    let nonce = match r.u8()? {
        0 => None,
        1 => Some(r.u128()?),
        _ => return Err(SnapshotError::Invalid("nonce flag other than 0 or 1")),
    };
    Ok((last_active_ms, nonce, r.u64()?))
}

fn decode_session(r: &mut Reader, cfg: &SessionConfig) -> Result<(u64, Session), SnapshotError> {
    let id = r.u64()?;
    let (last_active_ms, nonce, lowest_unacked_seq) = read_session_fields(r)?;
    let saved_count = r.u32()? as u64;
    if saved_count > cfg.window_commands_max {
        return Err(SnapshotError::Invalid("more saved replies than the window holds"));
    }
    let mut applied = BTreeMap::new();
    let mut reply_bytes = 0u64;
    let mut prev_seq = None;
    for _ in 0..saved_count {
        let seq = r.u64()?;
        if prev_seq.is_some_and(|p| seq <= p) {
            return Err(SnapshotError::Invalid("saved replies not ascending"));
        }
        prev_seq = Some(seq);
        let saved = match r.u8()? {
            TAG_REPLY => {
                let len = r.u32()? as u64;
                reply_bytes = reply_bytes.saturating_add(len);
                if reply_bytes > cfg.reply_bytes_per_session_max {
                    return Err(SnapshotError::Invalid("a session's replies exceed their bound"));
                }
                Saved::Reply(Bytes::copy_from_slice(r.take(len as usize)?))
            }
            TAG_DISCARDED => Saved::Discarded,
            _ => return Err(SnapshotError::Invalid("unknown saved-reply tag")),
        };
        applied.insert(seq, saved);
    }
    let s = Session { last_active_ms, nonce, lowest_unacked_seq, applied };
    Ok((id, s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Body, Envelope, Verdict};

    fn cfg() -> SessionConfig {
        SessionConfig {
            sessions_open_max: 4,
            window_commands_max: 4,
            session_idle_timeout_ms: 1_000,
            reply_bytes_per_session_max: 64,
            reply_bytes_total_max: 128,
        }
    }

    /// A table with sessions, a nonce, saved and discarded replies.
    fn sample() -> SessionTable {
        let mut t = SessionTable::new(cfg()).unwrap();
        t.apply(1, Envelope::new(10, Body::Register { nonce: Some(99) }));
        t.apply(2, Envelope::new(20, Body::Register { nonce: None }));
        for (index, sid, seq, reply) in [(3, 1, 1, 5), (4, 1, 2, 80), (5, 2, 3, 0)] {
            let body = Body::Command { session_id: sid, seq, lowest_unacked_seq: 1, payload: Bytes::new() };
            let Verdict::Apply { ticket: Some(ticket), .. } = t.apply(index, Envelope::new(30, body)) else {
                panic!("fresh");
            };
            t.record_reply(ticket, Bytes::from(vec![7u8; reply]));
        }
        t.check_invariants().unwrap();
        t
    }

    #[test]
    fn a_table_round_trips_to_equal_bytes() {
        let t = sample();
        let b = t.encode_snapshot().unwrap();
        let back = SessionTable::decode_snapshot(cfg(), &b).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.encode_snapshot().unwrap(), b);
        assert!(b.len() as u64 <= snapshot_bytes_max(&cfg()));
        let empty = SessionTable::new(cfg()).unwrap();
        let e = empty.encode_snapshot().unwrap();
        assert_eq!(SessionTable::decode_snapshot(cfg(), &e).unwrap(), empty);
    }

    #[test]
    fn every_flipped_or_missing_byte_is_an_error() {
        let b = sample().encode_snapshot().unwrap();
        for i in 0..b.len() {
            for bit in [0x01u8, 0x80] {
                let mut v = b.to_vec();
                v[i] ^= bit;
                assert!(SessionTable::decode_snapshot(cfg(), &v).is_err(), "flip at {i}");
            }
        }
        for cut in 0..b.len() {
            assert!(SessionTable::decode_snapshot(cfg(), &b[..cut]).is_err());
        }
        assert!(matches!(SessionTable::decode_snapshot(cfg(), b"XXXX\x01"), Err(SnapshotError::Truncated)));
    }

    /// Rewrites the checksum, so a test reaches the structural checks.
    fn reseal(mut v: Vec<u8>) -> Vec<u8> {
        let n = v.len() - 4;
        let crc = crc32fast::hash(&v[..n]);
        v[n..].copy_from_slice(&crc.to_le_bytes());
        v
    }

    #[test]
    fn damaged_structure_with_a_valid_checksum_is_refused() {
        let b = sample().encode_snapshot().unwrap().to_vec();
        let decode = |v: Vec<u8>| SessionTable::decode_snapshot(cfg(), &reseal(v));
        // now_ms (offset 45) far ahead: every session would have expired.
        let mut v = b.clone();
        v[45..53].copy_from_slice(&1_000_000u64.to_le_bytes());
        assert_eq!(decode(v), Err(SnapshotError::Invalid("an expired session is still open")));
        // last_index (offset 53) below the session ids.
        let mut v = b.clone();
        v[53..61].copy_from_slice(&1u64.to_le_bytes());
        assert_eq!(decode(v), Err(SnapshotError::Invalid("session id is not an applied index")));
        // Session count (offset 61) above the limit.
        let mut v = b.clone();
        v[61..65].copy_from_slice(&5u32.to_le_bytes());
        assert!(matches!(decode(v), Err(SnapshotError::Invalid(_))));
        let mut v = b.clone();
        v[4] = 9;
        assert_eq!(decode(v), Err(SnapshotError::UnknownVersion(9)));
    }

    #[test]
    fn other_limits_are_refused_with_both_named() {
        let b = sample().encode_snapshot().unwrap();
        let other = SessionConfig { sessions_open_max: 5, ..cfg() };
        let err = SessionTable::decode_snapshot(other, &b).unwrap_err();
        assert!(matches!(err, SnapshotError::ConfigMismatch { .. }));
        assert!(err.to_string().contains("same limits"), "{err}");
    }

    #[test]
    fn input_beyond_the_limits_bound_is_refused_before_parsing() {
        let max = snapshot_bytes_max(&cfg());
        let v = vec![0u8; max as usize + 1];
        assert_eq!(SessionTable::decode_snapshot(cfg(), &v), Err(SnapshotError::TooLarge { bytes: max + 1, max }));
    }
}
