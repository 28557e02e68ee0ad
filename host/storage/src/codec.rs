//! On-disk encoding of the RocksDB log store: keys and checksummed values.
//!
//! Owns the byte layout; must never touch RocksDB itself, so every decoder is a
//! pure function that turns damage into an error (no panics on disk bytes).
//!
//! Keys are `[tag][group: u64 BE][index: u64 BE]` (or `[tag][group]`), so within a
//! tag they sort by (group, index). Values end in a crc32 computed over the key
//! and the value body: a flipped bit, a torn value, or a value stored under the
//! wrong key all fail the check.

use bytes::Bytes;

use crate::types::{EntryKind, HardState, LogEntry};

pub(crate) const TAG_ENTRY: u8 = 0x10;
pub(crate) const TAG_CONFIG: u8 = 0x20;
pub(crate) const TAG_HARD_STATE: u8 = 0x30;
pub(crate) const TAG_GROUP: u8 = 0x40;

const VERSION: u8 = 1;
const CRC_LEN: usize = 4;
/// version + kind + term.
const ENTRY_HEADER_LEN: usize = 1 + 1 + 8;
const HARD_STATE_LEN: usize = 1 + 8 + 1 + 8 + 8;
const GROUP_META_LEN: usize = 1 + 8 + 8;

pub(crate) fn index_key(tag: u8, group: u64, index: u64) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = tag;
    key[1..9].copy_from_slice(&group.to_be_bytes());
    key[9..17].copy_from_slice(&index.to_be_bytes());
    key
}

pub(crate) fn group_key(tag: u8, group: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = tag;
    key[1..9].copy_from_slice(&group.to_be_bytes());
    key
}

/// An exclusive upper bound above every `index_key(tag, group, _)`, valid even
/// for `group == u64::MAX` (a longer key with the same prefix sorts after).
pub(crate) fn group_end(tag: u8, group: u64) -> Vec<u8> {
    let mut key = index_key(tag, group, u64::MAX).to_vec();
    key.push(0);
    key
}

/// Splits an index key into (tag, group, index).
pub(crate) fn parse_index_key(key: &[u8]) -> Option<(u8, u64, u64)> {
    if key.len() != 17 {
        return None;
    }
    let group = u64::from_be_bytes(key[1..9].try_into().ok()?);
    let index = u64::from_be_bytes(key[9..17].try_into().ok()?);
    Some((key[0], group, index))
}

pub(crate) fn parse_group_key(key: &[u8]) -> Option<(u8, u64)> {
    if key.len() != 9 {
        return None;
    }
    Some((key[0], u64::from_be_bytes(key[1..9].try_into().ok()?)))
}

fn crc(key: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(body);
    hasher.finalize()
}

fn seal(key: &[u8], mut body: Vec<u8>) -> Vec<u8> {
    let sum = crc(key, &body);
    body.extend_from_slice(&sum.to_be_bytes());
    body
}

/// Checks the trailing crc and returns the body.
fn unseal<'a>(key: &[u8], value: &'a [u8]) -> Result<&'a [u8], String> {
    if value.len() < CRC_LEN + 1 {
        return Err(format!("value of {} bytes is too short", value.len()));
    }
    let (body, sum) = value.split_at(value.len() - CRC_LEN);
    let stored = u32::from_be_bytes([sum[0], sum[1], sum[2], sum[3]]);
    let actual = crc(key, body);
    if stored != actual {
        return Err(format!("checksum mismatch (stored {stored:08x}, computed {actual:08x})"));
    }
    if body[0] != VERSION {
        return Err(format!("unknown record version {}", body[0]));
    }
    Ok(body)
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(buf)
}

#[cfg(test)]
pub(crate) fn encode_entry(key: &[u8], entry: &LogEntry) -> Vec<u8> {
    let mut out = Vec::new();
    encode_entry_into(&mut out, key, entry);
    out
}

/// Encodes into `out` (cleared first), so the write path reuses one buffer for
/// a whole batch instead of allocating per entry.
pub(crate) fn encode_entry_into(out: &mut Vec<u8>, key: &[u8], entry: &LogEntry) {
    out.clear();
    out.reserve(ENTRY_HEADER_LEN + entry.data.len() + CRC_LEN);
    out.push(VERSION);
    out.push(match entry.kind {
        EntryKind::Normal => 0,
        EntryKind::Config => 1,
    });
    out.extend_from_slice(&entry.term.to_be_bytes());
    out.extend_from_slice(&entry.data);
    let sum = crc(key, out);
    out.extend_from_slice(&sum.to_be_bytes());
}

pub(crate) fn decode_entry(key: &[u8], index: u64, value: &[u8]) -> Result<LogEntry, String> {
    let body = unseal(key, value)?;
    if body.len() < ENTRY_HEADER_LEN {
        return Err(format!("entry body of {} bytes is too short", body.len()));
    }
    let kind = match body[1] {
        0 => EntryKind::Normal,
        1 => EntryKind::Config,
        other => return Err(format!("unknown entry kind {other}")),
    };
    let term = be_u64(&body[2..10]);
    let data = Bytes::copy_from_slice(&body[ENTRY_HEADER_LEN..]);
    Ok(LogEntry { index, term, kind, data })
}

pub(crate) fn encode_hard_state(key: &[u8], hs: &HardState) -> Vec<u8> {
    let mut body = Vec::with_capacity(HARD_STATE_LEN + CRC_LEN);
    body.push(VERSION);
    body.extend_from_slice(&hs.term.to_be_bytes());
    body.push(u8::from(hs.vote.is_some()));
    body.extend_from_slice(&hs.vote.unwrap_or(0).to_be_bytes());
    body.extend_from_slice(&hs.commit.to_be_bytes());
    seal(key, body)
}

pub(crate) fn decode_hard_state(key: &[u8], value: &[u8]) -> Result<HardState, String> {
    let body = unseal(key, value)?;
    if body.len() != HARD_STATE_LEN {
        return Err(format!("hard state body has {} bytes, expected {HARD_STATE_LEN}", body.len()));
    }
    let term = be_u64(&body[1..9]);
    let vote = match (body[9], be_u64(&body[10..18])) {
        (0, 0) => None,
        // What encode never writes: a damaged record, not one to trust.
        (0, stray) => return Err(format!("no vote, yet a voted-for node {stray} recorded")),
        (1, node) => Some(node),
        (other, _) => return Err(format!("bad vote flag {other}")),
    };
    let commit = be_u64(&body[18..26]);
    Ok(HardState { term, vote, commit })
}

/// The per-group record: (purged_index, purged_term).
pub(crate) fn encode_group_meta(key: &[u8], purged_index: u64, purged_term: u64) -> Vec<u8> {
    let mut body = Vec::with_capacity(GROUP_META_LEN + CRC_LEN);
    body.push(VERSION);
    body.extend_from_slice(&purged_index.to_be_bytes());
    body.extend_from_slice(&purged_term.to_be_bytes());
    seal(key, body)
}

pub(crate) fn decode_group_meta(key: &[u8], value: &[u8]) -> Result<(u64, u64), String> {
    let body = unseal(key, value)?;
    if body.len() != GROUP_META_LEN {
        return Err(format!("group record has {} bytes, expected {GROUP_META_LEN}", body.len()));
    }
    Ok((be_u64(&body[1..9]), be_u64(&body[9..17])))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the log_records fuzz target: a hard state saying "no vote"
    /// with a voted-for node behind it decoded, and wrote back otherwise.
    #[test]
    fn a_hard_state_with_no_vote_and_a_voted_for_node_is_refused() {
        let key = group_key(TAG_HARD_STATE, 1);
        let mut body = vec![VERSION];
        body.extend_from_slice(&5u64.to_be_bytes());
        body.push(0);
        body.extend_from_slice(&3u64.to_be_bytes());
        body.extend_from_slice(&9u64.to_be_bytes());
        let e = decode_hard_state(&key, &seal(&key, body)).unwrap_err();
        assert!(e.contains("voted-for node 3"), "{e}");
        let hs = HardState { term: 5, vote: None, commit: 9 };
        assert_eq!(decode_hard_state(&key, &encode_hard_state(&key, &hs)), Ok(hs));
    }

    #[test]
    fn keys_sort_by_group_then_index() {
        let a = index_key(TAG_ENTRY, 1, u64::MAX);
        let b = index_key(TAG_ENTRY, 2, 0);
        let c = index_key(TAG_ENTRY, 2, 1);
        assert!(a < b && b < c);
        assert!(c.as_slice() < group_end(TAG_ENTRY, 2).as_slice());
        assert!(group_end(TAG_ENTRY, 2).as_slice() < index_key(TAG_ENTRY, 3, 0).as_slice());
        assert!(index_key(TAG_ENTRY, u64::MAX, u64::MAX).as_slice() < group_end(TAG_ENTRY, u64::MAX).as_slice());
    }

    #[test]
    fn entry_round_trip_and_damage() {
        let key = index_key(TAG_ENTRY, 3, 9);
        let entry = LogEntry::new(9, 4, EntryKind::Config, &b"hello"[..]);
        let value = encode_entry(&key, &entry);
        assert_eq!(decode_entry(&key, 9, &value), Ok(entry));
        for i in 0..value.len() {
            let mut bad = value.clone();
            bad[i] ^= 0x40;
            assert!(decode_entry(&key, 9, &bad).is_err(), "flip at byte {i} undetected");
        }
        for len in 0..value.len() {
            assert!(decode_entry(&key, 9, &value[..len]).is_err(), "torn at {len} undetected");
        }
        // The same value under another key is damage too.
        assert!(decode_entry(&index_key(TAG_ENTRY, 3, 10), 10, &value).is_err());
    }

    #[test]
    fn hard_state_round_trip() {
        let key = group_key(TAG_HARD_STATE, 1);
        for hs in [HardState::default(), HardState { term: 5, vote: Some(0), commit: 3 }] {
            assert_eq!(decode_hard_state(&key, &encode_hard_state(&key, &hs)), Ok(hs));
        }
        let key = group_key(TAG_GROUP, 1);
        assert_eq!(decode_group_meta(&key, &encode_group_meta(&key, 7, 2)), Ok((7, 2)));
    }
}
