//! The session table as separate records, for a store that keeps it beside
//! a kv state machine's pairs and commits what changed with every batch
//! (so a restart resumes from the store rather than replaying the log).
//!
//! Owns the record layout and the change tracking. Must write, for every
//! change, exactly the records that differ, so that the records in a store
//! that took every change since [`SessionTable::all_records`] decode to the
//! table; and must never panic or allocate without bound on records read
//! back from disk.
//!
//! Records (little endian):
//!
//! ```text
//! "t"                      now_ms u64 | last_index u64
//! "s" id (u64 big endian)  last_active_ms u64 | has_nonce u8 [nonce u128] | lowest_unacked_seq u64
//! "r" id seq (u64 big endian each)
//!                          tag u8 (1 reply, 2 discarded) [reply bytes, to the end]
//! ```

use std::collections::BTreeSet;

use bytes::Bytes;

use crate::snapshot::{SnapshotError, put_session_fields, read_session_fields};
use crate::table::{Saved, Session, SessionConfig, SessionTable};
use crate::wire::{Reader, put_u64};

const KEY_TABLE: u8 = b't';
const KEY_SESSION: u8 = b's';
const KEY_REPLY: u8 = b'r';
const TAG_REPLY: u8 = 1;
const TAG_DISCARDED: u8 = 2;

/// A record to write (`Some`) or delete (`None`).
pub type Record = (Vec<u8>, Option<Vec<u8>>);

/// A record as stored: its key and value.
pub type StoredRecord = (Vec<u8>, Vec<u8>);

/// What changed since the last [`SessionTable::take_changes`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Dirty {
    sessions: BTreeSet<u64>,
    slots: BTreeSet<(u64, u64)>,
}

impl Dirty {
    pub(crate) fn mark_slot(&mut self, id: u64, seq: u64) {
        self.slots.insert((id, seq));
    }
}

impl SessionTable {
    /// Starts recording which sessions and saved replies change, for
    /// [`SessionTable::take_changes`]. What changed before is not recorded:
    /// write [`SessionTable::all_records`] first.
    pub fn track_changes(&mut self) {
        self.dirty = Some(Box::default());
    }

    pub(crate) fn mark_session(&mut self, id: u64) {
        if let Some(d) = &mut self.dirty {
            d.sessions.insert(id);
        }
    }

    pub(crate) fn mark_slot(&mut self, id: u64, seq: u64) {
        if let Some(d) = &mut self.dirty {
            d.slots.insert((id, seq));
        }
    }

    /// The records that changed since tracking started or the last call,
    /// in key order: the table's own always, then each session and saved
    /// reply written or deleted. Take them between batches (no reply
    /// pending). Empty when not tracking.
    pub fn take_changes(&mut self) -> Result<Vec<Record>, SnapshotError> {
        if self.replies_pending() > 0 {
            return Err(SnapshotError::RepliesPending(self.replies_pending()));
        }
        let Some(dirty) = self.dirty.as_mut().map(|d| std::mem::take(&mut **d)) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(1 + dirty.sessions.len() + dirty.slots.len());
        out.push((vec![KEY_TABLE], Some(self.table_record())));
        for id in dirty.sessions {
            out.push((session_key(id), self.sessions.get(&id).map(session_record)));
        }
        for (id, seq) in dirty.slots {
            let saved = self.sessions.get(&id).and_then(|s| s.applied.get(&seq));
            out.push((reply_key(id, seq), saved.map(reply_record)));
        }
        Ok(out)
    }

    /// Every record of the table, in key order.
    pub fn all_records(&self) -> Result<Vec<StoredRecord>, SnapshotError> {
        if self.replies_pending() > 0 {
            return Err(SnapshotError::RepliesPending(self.replies_pending()));
        }
        let mut out = vec![(vec![KEY_TABLE], self.table_record())];
        for (&id, s) in &self.sessions {
            out.push((session_key(id), session_record(s)));
        }
        for (&id, s) in &self.sessions {
            for (&seq, saved) in &s.applied {
                out.push((reply_key(id, seq), reply_record(saved)));
            }
        }
        Ok(out)
    }

    /// The table the records describe, under the group's limits `cfg`.
    /// Every bound and invariant is checked, as for a snapshot.
    pub fn from_records(
        cfg: SessionConfig,
        records: impl IntoIterator<Item = StoredRecord>,
    ) -> Result<SessionTable, SnapshotError> {
        let mut t = SessionTable::new(cfg).map_err(|_| SnapshotError::Invalid("bad limits"))?;
        let mut seen_table = false;
        let mut replies = Vec::new();
        for (key, value) in records {
            let mut r = Reader::new(&value);
            match key.split_first() {
                Some((&KEY_TABLE, [])) => {
                    t.now_ms = r.u64()?;
                    t.last_index = r.u64()?;
                    seen_table = true;
                }
                Some((&KEY_SESSION, id)) => {
                    let id = u64::from_be_bytes(id.try_into().map_err(|_| SnapshotError::Invalid("session key"))?);
                    if t.sessions.len() as u64 >= t.cfg.sessions_open_max {
                        return Err(SnapshotError::Invalid("more sessions than sessions_open_max"));
                    }
                    let (last_active_ms, nonce, lowest_unacked_seq) = read_session_fields(&mut r)?;
                    let s = Session { last_active_ms, nonce, lowest_unacked_seq, applied: Default::default() };
                    if let Some(n) = nonce
                        && t.nonces.insert(n, id).is_some()
                    {
                        return Err(SnapshotError::Invalid("two sessions share a nonce"));
                    }
                    t.by_activity.insert((last_active_ms, id));
                    t.sessions.insert(id, s);
                }
                Some((&KEY_REPLY, ids)) if ids.len() == 16 => {
                    let id = u64::from_be_bytes(ids[..8].try_into().map_err(|_| SnapshotError::Invalid("reply key"))?);
                    let seq = u64::from_be_bytes(ids[8..].try_into().map_err(|_| SnapshotError::Invalid("reply key"))?);
                    let saved = match r.u8()? {
                        TAG_REPLY => Saved::Reply(Bytes::copy_from_slice(r.take(r.remaining())?)),
                        TAG_DISCARDED => Saved::Discarded,
                        _ => return Err(SnapshotError::Invalid("bad saved-reply tag")),
                    };
                    replies.push((id, seq, saved));
                    continue;
                }
                _ => return Err(SnapshotError::Invalid("unknown session record")),
            }
            if r.remaining() > 0 {
                return Err(SnapshotError::Invalid("bytes after a session record"));
            }
        }
        if !seen_table {
            return Err(SnapshotError::Invalid("no table record"));
        }
        for (id, seq, saved) in replies {
            let Some(s) = t.sessions.get_mut(&id) else {
                return Err(SnapshotError::Invalid("a saved reply of a session that is not open"));
            };
            s.applied.insert(seq, saved);
        }
        t.rebuild_ledger();
        t.check_invariants().map_err(SnapshotError::Invalid)?;
        Ok(t)
    }

    fn table_record(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        put_u64(&mut out, self.now_ms);
        put_u64(&mut out, self.last_index);
        out
    }
}

fn session_key(id: u64) -> Vec<u8> {
    let mut k = vec![KEY_SESSION];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn reply_key(id: u64, seq: u64) -> Vec<u8> {
    let mut k = vec![KEY_REPLY];
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn session_record(s: &Session) -> Vec<u8> {
    let mut out = Vec::with_capacity(33);
    put_session_fields(&mut out, s);
    out
}

fn reply_record(saved: &Saved) -> Vec<u8> {
    match saved {
        Saved::Reply(r) => {
            let mut out = Vec::with_capacity(1 + r.len());
            out.push(TAG_REPLY);
            out.extend_from_slice(r);
            out
        }
        Saved::Discarded => vec![TAG_DISCARDED],
        // Taken between batches only (checked by the callers).
        Saved::Pending { .. } => vec![],
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::envelope::{Body, Envelope};
    use crate::table::Verdict;

    fn cfg() -> SessionConfig {
        SessionConfig { window_commands_max: 4, session_idle_timeout_ms: 1_000, ..SessionConfig::default() }
    }

    /// A store of records that takes changes as a kv store would.
    fn apply(store: &mut BTreeMap<Vec<u8>, Vec<u8>>, changes: Vec<Record>) {
        for (k, v) in changes {
            match v {
                Some(v) => store.insert(k, v),
                None => store.remove(&k),
            };
        }
    }

    /// Seeded: registrations, commands in and out of order, acknowledgements,
    /// unregisters and expiry, replies of every size; after every batch the
    /// records a store holds decode to the table itself.
    #[test]
    fn the_records_a_store_keeps_decode_to_the_table_after_every_batch() {
        for seed in 0..20u64 {
            let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = move |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let mut t = SessionTable::new(cfg()).unwrap();
            let mut store = BTreeMap::new();
            t.track_changes();
            apply(&mut store, t.all_records().unwrap().into_iter().map(|(k, v)| (k, Some(v))).collect());
            let (mut index, mut now) = (0u64, 0u64);
            let mut open: Vec<(u64, u64)> = Vec::new();
            for _batch in 0..60 {
                let mut tickets = Vec::new();
                for _ in 0..1 + next(5) {
                    index += 1;
                    now += next(300);
                    let body = match next(10) {
                        0 | 1 => Body::Register { nonce: if next(2) == 0 { None } else { Some(next(1000) as u128) } },
                        2 if !open.is_empty() => {
                            let (sid, _) = open.remove(next(open.len() as u64) as usize);
                            Body::Unregister { session_id: sid }
                        }
                        _ if !open.is_empty() => {
                            let at = next(open.len() as u64) as usize;
                            let (sid, seq) = open[at];
                            let seq = seq + next(3);
                            open[at].1 = seq.max(open[at].1);
                            Body::Command {
                                session_id: sid,
                                seq,
                                lowest_unacked_seq: seq.saturating_sub(next(3)).max(1),
                                payload: Bytes::new(),
                            }
                        }
                        _ => Body::Register { nonce: None },
                    };
                    match t.apply(index, Envelope::new(now, body)) {
                        Verdict::Registered { session_id } => open.push((session_id, 1)),
                        Verdict::Apply { ticket: Some(ticket), .. } => tickets.push(ticket),
                        _ => {}
                    }
                }
                for ticket in tickets {
                    let reply = vec![b'x'; next(40) as usize];
                    t.record_reply(ticket, Bytes::from(reply));
                }
                apply(&mut store, t.take_changes().unwrap());
                let back =
                    SessionTable::from_records(cfg(), store.clone()).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                let mut expected = t.clone();
                expected.dirty = None;
                assert_eq!(back, expected, "seed {seed}");
                let all: BTreeMap<_, _> = t.all_records().unwrap().into_iter().collect();
                assert_eq!(store, all, "seed {seed}: the store holds exactly the table's records");
            }
        }
    }

    #[test]
    fn damaged_records_are_refused_not_trusted() {
        let mut t = SessionTable::new(cfg()).unwrap();
        t.apply(1, Envelope::new(5, Body::Register { nonce: None }));
        let good: Vec<_> = t.all_records().unwrap();
        assert!(SessionTable::from_records(cfg(), good.clone()).is_ok());
        let without_table: Vec<_> = good.iter().filter(|(k, _)| k[0] != b't').cloned().collect();
        assert!(SessionTable::from_records(cfg(), without_table).is_err());
        let mut short = good.clone();
        short[1].1.truncate(3);
        assert!(SessionTable::from_records(cfg(), short).is_err());
        let mut orphan = good.clone();
        orphan.push((reply_key(99, 1), vec![TAG_DISCARDED]));
        assert!(SessionTable::from_records(cfg(), orphan).is_err());
        let mut unknown = good;
        unknown.push((b"zz".to_vec(), vec![]));
        assert!(SessionTable::from_records(cfg(), unknown).is_err());
    }
}
