//! The group's key-value store, for state machines larger than memory.
//!
//! The host keeps an ordered map of byte strings to byte strings for every
//! group, on disk beside the log. A guest that calls anything in this module
//! imports `waft:fsm/kv` and becomes a *kv state machine*, which the host
//! runs by different rules than an in-memory one:
//! - the state is the store, and only the store. Every entry, query and
//!   configuration hook runs on a fresh instance: statics, thread-locals and
//!   the heap start empty at every call, and nothing kept in memory
//!   outlives it.
//! - an entry's writes take effect together, and only if its `apply`
//!   returns `Ok`: an `Err`, a panic, fuel exhaustion or a memory-limit hit
//!   discards all of them, on every replica alike. Within the entry, reads
//!   see its own writes.
//! - a query sees the store as the last applied entry left it, and cannot
//!   change it: [`put`] and [`delete`] return `Err` there. The
//!   configuration hook may write, like an entry; its writes are kept if it
//!   returns, discarded if it panics.
//! - the host snapshots the store itself and never calls the snapshot or
//!   leader hooks of a kv state machine.
//!
//! Implement [`KvStateMachine`] (the state lives in the store, so it has no
//! `self`) and export it with [`export_kv!`](crate::export_kv).
//!
//! Limits (see `wit/waft-fsm.wit`): keys up to 4 KiB, values up to 1 MiB;
//! an entry may write at most 16 MiB (keys and values together) and 65,536
//! keys; one [`scan`] returns at most 1 MiB and 4,096 pairs, whatever its
//! `limit` (use [`range`] or [`prefix`] to walk more). A write past a limit
//! returns `Err` and changes nothing. Every call costs fuel: 1,000, plus 1
//! per byte of key and value passed either way, plus 100 per pair scanned.

use std::io::{Read, Write};
use std::iter::FusedIterator;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::waft::fsm::kv as raw;
use crate::{Position, StateMachine};

/// Longest key the store holds, in bytes. A longer key makes [`put`] and
/// [`delete`] return `Err` and [`get`] find nothing; a bound of [`scan`]
/// may be one byte longer (a longest key with a 0 byte appended), and one
/// longer still traps.
pub const KEY_BYTES_MAX: usize = 4096;

/// The value stored under `key`, if any.
#[inline]
pub fn get(key: &[u8]) -> Option<Vec<u8>> {
    raw::get(key)
}

/// Store `value` under `key`, replacing what was there. `Err` in a query
/// (the store is read-only there) and past a limit, changing nothing.
#[inline]
pub fn put(key: &[u8], value: &[u8]) -> Result<(), String> {
    raw::put(key, value)
}

/// Remove `key` and its value; removing a missing key is no error. `Err` in
/// a query.
#[inline]
pub fn delete(key: &[u8]) -> Result<(), String> {
    raw::delete(key)
}

/// The pairs whose key is at least `start` and, given an `end`, below `end`,
/// in ascending key order: at most `limit` of them, and fewer when the
/// host's bounds cut the list (so a short list does not mean the end: only
/// an empty one does). [`range`] pages through any number of pairs.
#[inline]
pub fn scan(start: &[u8], end: Option<&[u8]>, limit: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
    raw::scan(start, end, limit)
}

/// How many pairs [`Range`] asks the host for at a time.
pub const RANGE_PAGE_PAIRS: u32 = 256;

/// The pairs whose key is at least `start` and, given an `end`, below `end`,
/// in ascending key order, fetched from the host a page
/// ([`RANGE_PAGE_PAIRS`]) at a time.
///
/// Each page is read when the previous one is used up, starting just after
/// the last key returned: a write made while walking shows up if its key
/// lies beyond the pages already read. Bounds longer than [`KEY_BYTES_MAX`]
/// are fine here (they are cut to an equivalent storable key).
pub fn range(start: &[u8], end: Option<&[u8]>) -> Range {
    Range::with_scan(start, end, scan)
}

/// The pairs whose key starts with `prefix`, in ascending key order (see
/// [`range`]). An empty prefix walks the whole store.
pub fn prefix(prefix: &[u8]) -> Range {
    Range::with_scan(prefix, prefix_end(prefix).as_deref(), scan)
}

/// The smallest key greater than every key that starts with `prefix`, or
/// `None` when there is none (an empty prefix, or one of 0xff bytes only).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    into_prefix_end(prefix.to_vec())
}

/// [`prefix_end`], reusing the prefix's buffer.
fn into_prefix_end(mut key: Vec<u8>) -> Option<Vec<u8>> {
    let last = key.iter().rposition(|&b| b != 0xff)?;
    key.truncate(last + 1);
    key[last] += 1;
    Some(key)
}

/// The smallest key of at most [`KEY_BYTES_MAX`] bytes (one the store can
/// hold, and the host accepts as a bound) that is at least `key`, or `None`
/// if there is none: `key` itself when it is short enough, else the
/// [`prefix_end`] of its first [`KEY_BYTES_MAX`] bytes (every key in
/// between extends them, and is too long to be stored). Over the keys the
/// store can hold, "at least `key`" and "at least `storable(key)`" select
/// the same ones, and so do "below `key`" and "below `storable(key)`"
/// (`None`: all of them).
fn storable(mut key: Vec<u8>) -> Option<Vec<u8>> {
    if key.len() <= KEY_BYTES_MAX {
        return Some(key);
    }
    key.truncate(KEY_BYTES_MAX);
    into_prefix_end(key)
}

/// The smallest key the store can hold that is greater than `key`: `key`
/// with a 0 byte appended, unless that is too long.
fn successor(key: &[u8]) -> Option<Vec<u8>> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    storable(next)
}

/// The scan a [`Range`] pages through: the host's, or a fake in tests.
type ScanFn = fn(&[u8], Option<&[u8]>, u32) -> Vec<(Vec<u8>, Vec<u8>)>;

/// An iterator over a key range of the store; see [`range`] and [`prefix`].
pub struct Range {
    /// Where the next page starts; `None` once the range is done.
    next_start: Option<Vec<u8>>,
    /// Exclusive; `None`: to the end of the store.
    end: Option<Vec<u8>>,
    page: std::vec::IntoIter<(Vec<u8>, Vec<u8>)>,
    scan: ScanFn,
}

impl Range {
    /// Bounds of any length; the host sees only storable ones.
    fn with_scan(start: &[u8], end: Option<&[u8]>, scan: ScanFn) -> Self {
        // An end with no storable key at or above it bounds nothing.
        let end = end.and_then(|end| storable(end.to_vec()));
        let next_start = storable(start.to_vec()).filter(|start| end.as_ref().is_none_or(|end| start < end));
        Range { next_start, end, page: Vec::new().into_iter(), scan }
    }
}

impl Iterator for Range {
    type Item = (Vec<u8>, Vec<u8>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(pair) = self.page.next() {
                return Some(pair);
            }
            let start = self.next_start.take()?;
            let page = (self.scan)(&start, self.end.as_deref(), RANGE_PAGE_PAIRS);
            // Only an empty page ends the range: the host may cut a page
            // short of the limit (by its byte bound).
            let (last, _) = page.last()?;
            self.next_start = successor(last).filter(|next| self.end.as_ref().is_none_or(|end| next < end));
            self.page = page.into_iter();
        }
    }
}

impl FusedIterator for Range {}

/// The value under `key`, decoded from `postcard` (as [`put_as`] wrote it).
/// `Err` if the bytes do not decode as a `T`.
pub fn get_as<T: DeserializeOwned>(key: &[u8]) -> Result<Option<T>, String> {
    match get(key) {
        None => Ok(None),
        Some(bytes) => postcard::from_bytes(&bytes).map(Some).map_err(|e| format!("malformed stored value: {e}")),
    }
}

/// Store `value` under `key`, encoded with `postcard`.
pub fn put_as<T: Serialize + ?Sized>(key: &[u8], value: &T) -> Result<(), String> {
    let bytes = postcard::to_allocvec(value).map_err(|e| format!("cannot encode the value: {e}"))?;
    put(key, &bytes)
}

/// A replicated state machine whose state is the group's key-value store.
///
/// There is no `self`: every call runs on a fresh instance, and the state is
/// what this module's functions read and write. Export the type with
/// [`export_kv!`](crate::export_kv). Commands, queries and their replies
/// travel as with [`StateMachine`] (JSON or binary; see the crate docs).
///
/// # Example: a counter per key
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use waft_guest::Position;
/// use waft_guest::kv::{self, KvStateMachine};
///
/// pub struct Counters;
///
/// #[derive(Serialize, Deserialize)]
/// #[serde(rename_all = "snake_case")]
/// pub enum Command {
///     Incr { key: String, delta: i64 },
/// }
///
/// #[derive(Serialize, Deserialize)]
/// #[serde(rename_all = "snake_case")]
/// pub enum Query {
///     Get { key: String },
/// }
///
/// impl KvStateMachine for Counters {
///     type Command = Command;
///     type Response = i64;
///     type Query = Query;
///     type Answer = i64;
///
///     fn apply(command: Command, _at: Position) -> Result<i64, String> {
///         let Command::Incr { key, delta } = command;
///         let value: i64 = kv::get_as(key.as_bytes())?.unwrap_or(0);
///         let value = value.checked_add(delta).ok_or("counter overflow")?;
///         // Kept only if apply returns Ok.
///         kv::put_as(key.as_bytes(), &value)?;
///         Ok(value)
///     }
///
///     fn query(Query::Get { key }: Query) -> Result<i64, String> {
///         Ok(kv::get_as(key.as_bytes())?.unwrap_or(0))
///     }
/// }
///
/// waft_guest::export_kv!(Counters);
/// # fn main() {}
/// ```
pub trait KvStateMachine: 'static {
    /// A command that changes the state, as proposed by a client.
    type Command: DeserializeOwned;
    /// What applying a command returns to the client that proposed it.
    type Response: Serialize;
    /// A read-only request.
    type Query: DeserializeOwned;
    /// What a query returns.
    type Answer: Serialize;

    /// Apply one committed command. Its writes to the store take effect only
    /// if this returns `Ok`; return `Err` (or panic) to reject the command
    /// and discard them all.
    fn apply(command: Self::Command, at: Position) -> Result<Self::Response, String>;

    /// Answer a query. The store is read-only here.
    fn query(query: Self::Query) -> Result<Self::Answer, String>;

    /// A membership change committed; `voters` and `learners` are node ids.
    /// May write to the store: the writes are kept if this returns,
    /// discarded if it panics.
    fn on_configuration_committed(voters: &[u64], learners: &[u64]) {
        let _ = (voters, learners);
    }
}

/// The [`StateMachine`] that [`export_kv!`](crate::export_kv) exports for a
/// [`KvStateMachine`]: holds nothing and forwards every call.
#[doc(hidden)]
pub struct KvAdapter<T>(PhantomData<fn() -> T>);

impl<T> Default for KvAdapter<T> {
    fn default() -> Self {
        KvAdapter(PhantomData)
    }
}

impl<T: KvStateMachine> StateMachine for KvAdapter<T> {
    type Command = T::Command;
    type Response = T::Response;
    type Query = T::Query;
    type Answer = T::Answer;

    #[inline]
    fn apply(&mut self, command: Self::Command, at: Position) -> Result<Self::Response, String> {
        T::apply(command, at)
    }

    #[inline]
    fn query(&self, query: Self::Query) -> Result<Self::Answer, String> {
        T::query(query)
    }

    /// Never called for a kv state machine (the host snapshots the store);
    /// the state in memory is empty, so it writes nothing.
    fn save(&self, _out: impl Write) -> std::io::Result<()> {
        Ok(())
    }

    /// Never called for a kv state machine; accepts only what `save` writes.
    fn load(&mut self, mut input: impl Read) -> std::io::Result<()> {
        let mut byte = [0u8; 1];
        match input.read(&mut byte)? {
            0 => Ok(()),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a kv state machine keeps its state in the store: expected an empty snapshot",
            )),
        }
    }

    fn on_configuration_committed(&mut self, voters: &[u64], learners: &[u64]) {
        T::on_configuration_committed(voters, learners);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::ops::Bound;

    use super::*;

    thread_local! {
        static STORE: RefCell<BTreeMap<Vec<u8>, Vec<u8>>> = const { RefCell::new(BTreeMap::new()) };
        static SCANS: RefCell<u32> = const { RefCell::new(0) };
    }

    /// The host's scan over `STORE`: cuts every page to 7 pairs (as the
    /// host's byte bound may), whatever the limit, and refuses (the host
    /// traps) a bound longer than a key may be.
    fn fake_scan(start: &[u8], end: Option<&[u8]>, limit: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        assert!(start.len() <= KEY_BYTES_MAX, "start of {} bytes", start.len());
        assert!(end.is_none_or(|end| end.len() <= KEY_BYTES_MAX), "end too long");
        SCANS.with(|n| *n.borrow_mut() += 1);
        let upper = end.map_or(Bound::Unbounded, |e| Bound::Excluded(e.to_vec()));
        STORE.with(|s| {
            s.borrow()
                .range((Bound::Included(start.to_vec()), upper))
                .take(limit.min(7) as usize)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    fn fill(keys: &[Vec<u8>]) {
        STORE.with(|s| {
            let mut s = s.borrow_mut();
            s.clear();
            for k in keys {
                assert!(k.len() <= KEY_BYTES_MAX);
                s.insert(k.clone(), k.clone());
            }
        });
        SCANS.with(|n| *n.borrow_mut() = 0);
    }

    fn scans() -> u32 {
        SCANS.with(|n| *n.borrow())
    }

    fn walk(start: &[u8], end: Option<&[u8]>) -> Vec<Vec<u8>> {
        Range::with_scan(start, end, fake_scan).map(|(k, _)| k).collect()
    }

    fn walk_prefix(prefix: &[u8]) -> Vec<Vec<u8>> {
        walk(prefix, prefix_end(prefix).as_deref())
    }

    fn bytes(keys: &[&[u8]]) -> Vec<Vec<u8>> {
        keys.iter().map(|k| k.to_vec()).collect()
    }

    /// `n` bytes of `fill`, then `tail`.
    fn long(fill: u8, n: usize, tail: &[u8]) -> Vec<u8> {
        let mut key = vec![fill; n];
        key.extend_from_slice(tail);
        key
    }

    #[test]
    fn range_pages_through_short_pages() {
        let all: Vec<Vec<u8>> = (0u16..100).map(|i| format!("k{i:03}").into_bytes()).collect();
        fill(&all);
        assert_eq!(walk(b"", None), all);
        // 15 pages of 7 (the last one short), then one empty page.
        assert_eq!(scans(), 16);
        assert_eq!(walk(b"k010", Some(b"k020")), all[10..20]);
        assert_eq!(walk(b"k010", Some(b"k010")), Vec::<Vec<u8>>::new());
        assert_eq!(walk(b"k020", Some(b"k010")), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn range_continues_after_keys_that_extend_others() {
        // "a", "a\0", "a\0\0": each the successor of the one before.
        let set = bytes(&[b"a", b"a\0", b"a\0\0", b"a\x01", b"b", b"b\xff", b"c", b"d"]);
        fill(&set);
        let mut range = Range::with_scan(b"", None, fake_scan);
        let got: Vec<Vec<u8>> = range.by_ref().map(|(k, _)| k).collect();
        assert_eq!(got, set);
        assert_eq!(range.next(), None, "fused");
    }

    #[test]
    fn range_continues_after_keys_of_the_longest_length() {
        // Pages end on keys of KEY_BYTES_MAX bytes, whose successor with a
        // 0 byte appended would be too long for the host.
        let mut set: Vec<Vec<u8>> = (0u8..30).map(|i| long(b'a', KEY_BYTES_MAX - 1, &[i])).collect();
        set.push(long(b'a', KEY_BYTES_MAX - 1, b"\xff"));
        set.push(long(b'a', KEY_BYTES_MAX, b""));
        set.push(long(b'b', 1, b""));
        set.push(long(0xff, KEY_BYTES_MAX, b""));
        set.sort();
        fill(&set);
        assert_eq!(walk(b"", None), set);
        // The last key has no successor: no scan after it.
        assert_eq!(scans(), set.len().div_ceil(7) as u32);
        assert_eq!(walk_prefix(&long(b'a', KEY_BYTES_MAX - 1, b"")).len(), 32);
        assert_eq!(walk_prefix(&long(b'a', KEY_BYTES_MAX, b"")), vec![long(b'a', KEY_BYTES_MAX, b"")]);
    }

    #[test]
    fn bounds_longer_than_a_key_select_the_same_keys() {
        let max_a = long(b'a', KEY_BYTES_MAX, b"");
        let after = long(b'a', KEY_BYTES_MAX - 1, b"b");
        let set = vec![b"a".to_vec(), max_a.clone(), after.clone(), b"b".to_vec()];
        fill(&set);
        let too_long = long(b'a', KEY_BYTES_MAX + 10, b"");
        // max_a is a prefix of too_long, so below it; `after` is above it.
        assert_eq!(walk(&too_long, None), vec![after.clone(), b"b".to_vec()]);
        assert_eq!(walk(b"", Some(&too_long)), vec![b"a".to_vec(), max_a.clone()]);
        assert_eq!(walk_prefix(&too_long), Vec::<Vec<u8>>::new());
        assert_eq!(walk(b"", Some(&long(0xff, KEY_BYTES_MAX + 1, b""))), set);
        assert_eq!(walk(&long(0xff, KEY_BYTES_MAX + 1, b""), None), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn prefix_end_is_the_next_prefix() {
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"a\x00\xff\xff"), Some(b"a\x01".to_vec()));
    }

    #[test]
    fn prefix_walks_exactly_its_keys() {
        let set = bytes(&[b"a", b"a\xff", b"a\xff\xff\x01", b"a\xff\xff\xff", b"b", b"b\x00", b"\xff", b"\xff\xff"]);
        fill(&set);
        assert_eq!(walk_prefix(b"a\xff\xff"), bytes(&[b"a\xff\xff\x01", b"a\xff\xff\xff"]));
        assert_eq!(walk_prefix(b"a").len(), 4);
        assert_eq!(walk_prefix(b"b"), bytes(&[b"b", b"b\x00"]));
        assert_eq!(walk_prefix(b"\xff"), bytes(&[b"\xff", b"\xff\xff"]));
        assert_eq!(walk_prefix(b"c"), Vec::<Vec<u8>>::new());
        assert_eq!(walk_prefix(b""), set);
    }

    #[test]
    fn adapter_load_accepts_only_an_empty_snapshot() {
        struct Nothing;
        impl KvStateMachine for Nothing {
            type Command = ();
            type Response = ();
            type Query = ();
            type Answer = ();
            fn apply((): (), _at: Position) -> Result<(), String> {
                Ok(())
            }
            fn query((): ()) -> Result<(), String> {
                Ok(())
            }
        }
        let mut adapter = KvAdapter::<Nothing>::default();
        let mut saved = Vec::new();
        assert!(adapter.save(&mut saved).is_ok());
        assert!(saved.is_empty());
        assert!(adapter.load(&saved[..]).is_ok());
        assert!(adapter.load(&b"x"[..]).is_err());
    }
}
