//! The node's key-value stores: every group's kv state machine state in
//! one RocksDB instance of its own (not the log's). Under each group's id
//! (8 bytes, big-endian) sit two ranges: the guest's pairs (`d` and the
//! guest's key) and the node's own records for the group (`h` and the
//! record's key: the applied index, the session table; opaque here).
//!
//! Owns the RocksDB handle of the `kv` directory. A commit writes pairs and
//! records in one batch, through RocksDB's write-ahead log but without a
//! sync: a crash may lose the latest commits, never part of one, and the
//! group's log (synced before its entries apply) replays what was lost.
//! `sync` makes every commit so far durable, for when the log is about to
//! be compacted. Must never mix two groups' keys, and never report a
//! RocksDB error as anything but an error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, DB, DBCompressionType, DBRecoveryMode, Options, ReadOptions, WriteBatch, WriteOptions,
};

use crate::error::{Error, Result};

/// Block cache of the kv store, shared by every group.
pub const KV_BLOCK_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Memtable size of the kv store.
pub const KV_WRITE_BUFFER_BYTES: usize = 64 * 1024 * 1024;

const PAIRS: u8 = b'd';
const RECORDS: u8 = b'h';

/// Every group's key-value store on this node.
#[derive(Clone)]
pub struct RocksKv {
    db: Arc<DB>,
    path: PathBuf,
}

impl RocksKv {
    pub fn open(path: impl AsRef<Path>) -> Result<RocksKv> {
        let path = path.as_ref().to_path_buf();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_paranoid_checks(true);
        // A torn record at the write-ahead log's tail was never acknowledged.
        opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
        opts.set_compression_type(DBCompressionType::None);
        opts.set_write_buffer_size(KV_WRITE_BUFFER_BYTES);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&Cache::new_lru_cache(KV_BLOCK_CACHE_BYTES));
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        let db = DB::open(&opts, &path).map_err(|source| Error::Open { path: path.clone(), source })?;
        Ok(RocksKv { db: Arc::new(db), path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Group `group`'s store.
    pub fn group(&self, group: u64) -> RocksKvGroup {
        RocksKvGroup { kv: self.clone(), group }
    }
}

/// One group's pairs and records in a [`RocksKv`].
pub struct RocksKvGroup {
    kv: RocksKv,
    group: u64,
}

impl RocksKvGroup {
    fn err(&self, during: &'static str) -> impl FnOnce(rocksdb::Error) -> Error + '_ {
        move |source| Error::Rocks { path: self.kv.path.clone(), during, source }
    }

    fn key(&self, range: u8, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(9 + key.len());
        k.extend_from_slice(&self.group.to_be_bytes());
        k.push(range);
        k.extend_from_slice(key);
        k
    }

    fn visit(
        &self,
        lower: Vec<u8>,
        upper: Vec<u8>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
        during: &'static str,
    ) -> Result<()> {
        self.visit_in(None, lower, upper, visit, during)
    }

    fn visit_in(
        &self,
        snapshot: Option<&rocksdb::SnapshotWithThreadMode<'_, DB>>,
        lower: Vec<u8>,
        upper: Vec<u8>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
        during: &'static str,
    ) -> Result<()> {
        let mut read = ReadOptions::default();
        if let Some(snapshot) = snapshot {
            read.set_snapshot(snapshot);
        }
        read.set_iterate_lower_bound(lower.clone());
        read.set_iterate_upper_bound(upper);
        let mut iter = self.kv.db.raw_iterator_opt(read);
        iter.seek(lower);
        while let Some((key, value)) = iter.item() {
            let Some(key) = key.get(9..) else { break };
            if !visit(key, value) {
                break;
            }
            iter.next();
        }
        iter.status().map_err(self.err(during))
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.kv.db.get(self.key(PAIRS, key)).map_err(self.err("reading a key"))
    }

    /// Visits the pairs with `start <= key < end` in key order until
    /// `visit` returns false.
    pub fn scan(&self, start: &[u8], end: Option<&[u8]>, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let upper = match end {
            Some(end) => self.key(PAIRS, end),
            None => self.key(PAIRS + 1, &[]),
        };
        self.visit(self.key(PAIRS, start), upper, visit, "scanning keys")
    }

    pub fn record(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.kv.db.get(self.key(RECORDS, key)).map_err(self.err("reading a record"))
    }

    /// Visits the records whose key starts with `prefix`, in key order.
    pub fn records(&self, prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let lower = self.key(RECORDS, prefix);
        let upper = match prefix_end(&lower) {
            Some(upper) => upper,
            None => self.key(RECORDS + 1, &[]),
        };
        self.visit(lower, upper, visit, "reading records")
    }

    /// Writes pairs and records, puts (`Some`) and deletes (`None`), in one
    /// batch.
    pub fn commit<'a>(
        &self,
        pairs: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
        records: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (range, items) in [(PAIRS, pairs.into_iter().collect::<Vec<_>>()), (RECORDS, records.into_iter().collect())]
        {
            for (key, value) in items {
                match value {
                    Some(value) => batch.put(self.key(range, key), value),
                    None => batch.delete(self.key(range, key)),
                }
            }
        }
        self.kv.db.write_opt(batch, &WriteOptions::default()).map_err(self.err("committing keys"))
    }

    /// Removes every pair and record of the group.
    pub fn clear(&self) -> Result<()> {
        let mut batch = WriteBatch::default();
        let start = self.group.to_be_bytes().to_vec();
        match self.group.checked_add(1) {
            Some(end) => batch.delete_range(start, end.to_be_bytes().to_vec()),
            // The last id's keys have no finite bound above: one by one.
            None => {
                for range in [PAIRS, RECORDS] {
                    self.visit(
                        self.key(range, &[]),
                        self.key(range + 1, &[]),
                        &mut |key, _| {
                            batch.delete(self.key(range, key));
                            true
                        },
                        "clearing a group",
                    )?;
                }
            }
        }
        self.kv.db.write_opt(batch, &WriteOptions::default()).map_err(self.err("clearing a group's keys"))
    }

    /// The group's pairs as they are now, readable from any thread while
    /// commits go on (a RocksDB snapshot: the files it needs stay until it
    /// is dropped).
    pub fn view(&self) -> RocksKvView {
        let snapshot = self.kv.db.snapshot();
        // SAFETY: the snapshot borrows the DB that `_db` below keeps alive
        // (the same `Arc`), and fields drop in order: the snapshot first.
        let snapshot = unsafe {
            std::mem::transmute::<rocksdb::SnapshotWithThreadMode<'_, DB>, rocksdb::SnapshotWithThreadMode<'static, DB>>(
                snapshot,
            )
        };
        RocksKvView {
            snapshot,
            group: RocksKvGroup { kv: self.kv.clone(), group: self.group },
            _db: self.kv.db.clone(),
        }
    }

    /// Makes every commit so far durable.
    pub fn sync(&self) -> Result<()> {
        self.kv.db.flush_wal(true).map_err(self.err("syncing the write-ahead log"))
    }
}

/// One group's pairs at one moment (see [`RocksKvGroup::view`]).
pub struct RocksKvView {
    snapshot: rocksdb::SnapshotWithThreadMode<'static, DB>,
    group: RocksKvGroup,
    _db: Arc<DB>,
}

impl RocksKvView {
    /// Visits the pairs with `start <= key < end` as they were when the
    /// view was taken, in key order, until `visit` returns false.
    pub fn scan(&self, start: &[u8], end: Option<&[u8]>, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let g = &self.group;
        let upper = match end {
            Some(end) => g.key(PAIRS, end),
            None => g.key(PAIRS + 1, &[]),
        };
        g.visit_in(Some(&self.snapshot), g.key(PAIRS, start), upper, visit, "reading a snapshot of the keys")
    }
}

/// The first key past every key that starts with `prefix` (none if it is
/// all 0xff bytes).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|&b| b != 0xff)?;
    let mut end = prefix[..=last].to_vec();
    end[last] += 1;
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(g: &RocksKvGroup, start: &[u8], end: Option<&[u8]>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        g.scan(start, end, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
        out
    }

    fn records(g: &RocksKvGroup, prefix: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        g.records(prefix, &mut |k, _| {
            out.push(k.to_vec());
            true
        })
        .unwrap();
        out
    }

    #[test]
    fn groups_keep_pairs_and_records_apart_and_they_last_across_opens() {
        let dir = std::env::temp_dir().join(format!("waft-kv-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let kv = RocksKv::open(&dir).unwrap();
        let (a, b, last) = (kv.group(1), kv.group(2), kv.group(u64::MAX));
        let none: [(&[u8], Option<&[u8]>); 0] = [];
        a.commit([(&b"x"[..], Some(&b"1"[..])), (&b"y"[..], Some(&b"2"[..]))], [(&b"applied"[..], Some(&b"7"[..]))])
            .unwrap();
        b.commit([(&b"x"[..], Some(&b"3"[..]))], [(&b"s\x01"[..], Some(&b""[..])), (&b"s\x02"[..], Some(&b""[..]))])
            .unwrap();
        last.commit([(&b"\xff"[..], Some(&b"4"[..]))], [(&b"\xff"[..], Some(&b"5"[..]))]).unwrap();
        assert_eq!(a.get(b"x").unwrap(), Some(b"1".to_vec()));
        assert_eq!(a.get(b"applied").unwrap(), None, "records are not pairs");
        assert_eq!(a.record(b"applied").unwrap(), Some(b"7".to_vec()));
        assert_eq!(pairs(&a, b"", None), [(b"x".to_vec(), b"1".to_vec()), (b"y".to_vec(), b"2".to_vec())]);
        assert_eq!(pairs(&a, b"y", None).len(), 1);
        assert_eq!(pairs(&a, b"", Some(b"y")).len(), 1);
        assert_eq!(pairs(&b, b"", None), [(b"x".to_vec(), b"3".to_vec())]);
        assert_eq!(records(&b, b"s"), [b"s\x01".to_vec(), b"s\x02".to_vec()]);
        assert!(records(&b, b"t").is_empty());
        assert_eq!(pairs(&last, b"", None), [(b"\xff".to_vec(), b"4".to_vec())]);
        let view = a.view();
        a.commit([(&b"x"[..], None)], none).unwrap();
        assert_eq!(a.get(b"x").unwrap(), None);
        let mut seen = Vec::new();
        std::thread::spawn(move || {
            view.scan(b"", None, &mut |k, _| {
                seen.push(k.to_vec());
                true
            })
            .unwrap();
            assert_eq!(seen, [b"x".to_vec(), b"y".to_vec()], "a view keeps the pairs as they were");
        })
        .join()
        .unwrap();
        a.sync().unwrap();
        drop((a, b, last));
        drop(kv);
        let kv = RocksKv::open(&dir).unwrap();
        let (a, b, last) = (kv.group(1), kv.group(2), kv.group(u64::MAX));
        assert_eq!(pairs(&a, b"", None), [(b"y".to_vec(), b"2".to_vec())], "commits last across opens");
        assert_eq!(a.record(b"applied").unwrap(), Some(b"7".to_vec()));
        a.clear().unwrap();
        assert!(pairs(&a, b"", None).is_empty());
        assert_eq!(a.record(b"applied").unwrap(), None, "clearing removes the records too");
        assert_eq!(b.get(b"x").unwrap(), Some(b"3".to_vec()), "clearing one group leaves the others");
        last.clear().unwrap();
        assert!(pairs(&last, b"", None).is_empty());
        assert_eq!(last.record(b"\xff").unwrap(), None);
        drop((a, b, last));
        drop(kv);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
