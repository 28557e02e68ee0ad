//! The node's key-value stores: every group's kv state machine state in
//! one RocksDB instance of its own (not the log's), each group's keys under
//! its id (8 bytes, big-endian).
//!
//! Owns the RocksDB handle of the `kv` directory. For now a *working*
//! store: what it holds is rebuilt from the group's latest snapshot and its
//! log whenever a node starts, so it is wiped at open and written without a
//! write-ahead log (a crash loses nothing the snapshot and the log do not
//! hold). Must never mix two groups' keys, and never report a RocksDB error
//! as anything but an error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{BlockBasedOptions, Cache, DB, DBCompressionType, Options, ReadOptions, WriteBatch, WriteOptions};

use crate::error::{Error, Result};

/// Block cache of the kv store, shared by every group.
pub const KV_BLOCK_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Memtable size of the kv store.
pub const KV_WRITE_BUFFER_BYTES: usize = 64 * 1024 * 1024;

/// Every group's key-value store on this node.
#[derive(Clone)]
pub struct RocksKv {
    db: Arc<DB>,
    path: PathBuf,
}

impl RocksKv {
    /// Opens the store at `path`, empty: whatever an earlier run left is
    /// removed first (see the module docs).
    pub fn open(path: impl AsRef<Path>) -> Result<RocksKv> {
        let path = path.as_ref().to_path_buf();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(DBCompressionType::None);
        opts.set_write_buffer_size(KV_WRITE_BUFFER_BYTES);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&Cache::new_lru_cache(KV_BLOCK_CACHE_BYTES));
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        if path.exists() {
            DB::destroy(&opts, &path).map_err(|source| Error::Open { path: path.clone(), source })?;
        }
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

/// One group's keys in a [`RocksKv`].
pub struct RocksKvGroup {
    kv: RocksKv,
    group: u64,
}

impl RocksKvGroup {
    fn err(&self, during: &'static str) -> impl FnOnce(rocksdb::Error) -> Error + '_ {
        move |source| Error::Rocks { path: self.kv.path.clone(), during, source }
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(8 + key.len());
        k.extend_from_slice(&self.group.to_be_bytes());
        k.extend_from_slice(key);
        k
    }

    /// The first key past every key of this group (none for the last id).
    fn end(&self) -> Option<Vec<u8>> {
        self.group.checked_add(1).map(|g| g.to_be_bytes().to_vec())
    }

    fn unsynced() -> WriteOptions {
        let mut w = WriteOptions::default();
        w.disable_wal(true);
        w
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.kv.db.get(self.key(key)).map_err(self.err("reading a key"))
    }

    /// Visits the pairs with `start <= key < end` in key order until
    /// `visit` returns false.
    pub fn scan(&self, start: &[u8], end: Option<&[u8]>, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let mut read = ReadOptions::default();
        read.set_iterate_lower_bound(self.key(start));
        match end {
            Some(end) => read.set_iterate_upper_bound(self.key(end)),
            None => {
                if let Some(end) = self.end() {
                    read.set_iterate_upper_bound(end);
                }
            }
        }
        let mut iter = self.kv.db.raw_iterator_opt(read);
        iter.seek(self.key(start));
        while let Some((key, value)) = iter.item() {
            let Some(key) = key.get(8..) else { break };
            if !visit(key, value) {
                break;
            }
            iter.next();
        }
        iter.status().map_err(self.err("scanning keys"))
    }

    /// Applies puts (`Some`) and deletes (`None`) together.
    pub fn write<'a>(&self, writes: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (key, value) in writes {
            match value {
                Some(value) => batch.put(self.key(key), value),
                None => batch.delete(self.key(key)),
            }
        }
        self.kv.db.write_opt(batch, &Self::unsynced()).map_err(self.err("writing keys"))
    }

    /// Removes every key of the group.
    pub fn clear(&self) -> Result<()> {
        let mut batch = WriteBatch::default();
        match self.end() {
            Some(end) => batch.delete_range(self.key(&[]), end),
            // The last id's keys have no finite bound above: one by one.
            None => self.scan(&[], None, &mut |key, _| {
                batch.delete(self.key(key));
                true
            })?,
        }
        self.kv.db.write_opt(batch, &Self::unsynced()).map_err(self.err("clearing a group's keys"))
    }
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

    #[test]
    fn groups_keep_their_keys_apart_and_reopening_starts_empty() {
        let dir = std::env::temp_dir().join(format!("waft-kv-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let kv = RocksKv::open(&dir).unwrap();
        let (a, b, last) = (kv.group(1), kv.group(2), kv.group(u64::MAX));
        a.write([(&b"x"[..], Some(&b"1"[..])), (&b"y"[..], Some(&b"2"[..]))]).unwrap();
        b.write([(&b"x"[..], Some(&b"3"[..]))]).unwrap();
        last.write([(&b"\xff"[..], Some(&b"4"[..]))]).unwrap();
        assert_eq!(a.get(b"x").unwrap(), Some(b"1".to_vec()));
        assert_eq!(pairs(&a, b"", None), [(b"x".to_vec(), b"1".to_vec()), (b"y".to_vec(), b"2".to_vec())]);
        assert_eq!(pairs(&a, b"y", None).len(), 1);
        assert_eq!(pairs(&a, b"", Some(b"y")).len(), 1);
        assert_eq!(pairs(&b, b"", None), [(b"x".to_vec(), b"3".to_vec())]);
        assert_eq!(pairs(&last, b"", None), [(b"\xff".to_vec(), b"4".to_vec())]);
        a.write([(&b"x"[..], None)]).unwrap();
        assert_eq!(a.get(b"x").unwrap(), None);
        a.clear().unwrap();
        assert!(pairs(&a, b"", None).is_empty());
        assert_eq!(b.get(b"x").unwrap(), Some(b"3".to_vec()), "clearing one group leaves the others");
        last.clear().unwrap();
        assert!(pairs(&last, b"", None).is_empty());
        drop((a, b, last));
        drop(kv);
        let kv = RocksKv::open(&dir).unwrap();
        assert_eq!(kv.group(2).get(b"x").unwrap(), None, "a store starts empty at open");
        drop(kv);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
