//! The node's key-value stores: each group's kv state machine state in a
//! RocksDB instance of its own (not the log's), under `group-<id>/gen-<n>`
//! of the `kv` directory. Every group's instance shares one block cache and
//! one budget for memtables. Inside an instance sit two ranges: the guest's
//! pairs (`d` and the guest's key) and the node's own records for the group
//! (`h` and the record's key: the applied index, the session table; opaque
//! here).
//!
//! A commit writes pairs and records in one batch, through RocksDB's
//! write-ahead log but without a sync: a crash may lose the latest commits,
//! never part of one, and the group's log (synced before its entries apply)
//! replays what was lost. `sync` makes every commit so far durable, for
//! when the log is about to be compacted.
//!
//! A snapshot of a group is a RocksDB checkpoint: hard links to the
//! instance's table files and a copy of its write-ahead log since the last
//! flush, so it costs what was written since, not what is stored. A follower
//! restores one as a new generation of the group's directory, opened next
//! to the old and swapped in only once it opened. Must never mix two
//! groups' keys, never write into a file a snapshot links, and never report
//! a RocksDB error as anything but an error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{
    BlockBasedOptions, Cache, DB, DBCompressionType, DBRecoveryMode, FlushOptions, Options, ReadOptions, WriteBatch,
    WriteBufferManager, WriteOptions,
};

use crate::error::{Error, Result};
use crate::fsutil;

/// Block cache of the kv stores, shared by every group.
pub const KV_BLOCK_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Memtable size of one group's store.
pub const KV_WRITE_BUFFER_BYTES: usize = 64 * 1024 * 1024;
/// Memtables of every group's store together: past it, the largest is
/// flushed early.
pub const KV_WRITE_BUFFERS_TOTAL_BYTES: usize = 256 * 1024 * 1024;
/// A checkpoint copies the write-ahead log rather than flush the memtable
/// first (a flush would wait for the memtable to be written out; the copy
/// is at most what was written since the last flush).
const CHECKPOINT_WITHOUT_FLUSH: u64 = u64::MAX;
/// Files one group's instance keeps open (table files past it are opened
/// as read), so many groups do not run a node out of descriptors.
const KV_OPEN_FILES_MAX: i32 = 256;
/// Buffer for streaming a file through its checksum.
const CRC_BUFFER_BYTES: usize = 256 * 1024;

const PAIRS: u8 = b'd';
const RECORDS: u8 = b'h';
const CHECKPOINTS_DIR: &str = "checkpoints";
const GEN_PREFIX: &str = "gen-";
const GEN_TMP_SUFFIX: &str = ".tmp";

/// Every group's key-value store on this node.
#[derive(Clone)]
pub struct RocksKv {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    cache: Cache,
    buffers: WriteBufferManager,
    /// Open groups: one instance each, whoever asks.
    groups: Mutex<HashMap<u64, Arc<Slot>>>,
    next_checkpoint: AtomicU64,
}

/// One group's instance, replaced whole by `restore`.
struct Slot {
    group: u64,
    dir: PathBuf,
    db: RwLock<Arc<GroupDb>>,
    /// Checksums of table files already read, by name and size (a table
    /// file never changes; a generation's names are its own).
    crcs: Mutex<HashMap<(u64, String), (u64, u32)>>,
}

struct GroupDb {
    db: Option<DB>,
    path: PathBuf,
    generation: u64,
    /// Replaced by a restore: its directory goes once the last user drops it.
    retired: AtomicBool,
}

impl GroupDb {
    fn db(&self) -> &DB {
        // Taken only by `drop`.
        self.db.as_ref().unwrap_or_else(|| unreachable!("a group's instance is used after it closed"))
    }
}

impl Drop for GroupDb {
    fn drop(&mut self) {
        drop(self.db.take());
        if self.retired.load(Ordering::Acquire)
            && let Err(e) = std::fs::remove_dir_all(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "a replaced kv store's directory stays");
        }
    }
}

impl RocksKv {
    pub fn open(path: impl AsRef<Path>) -> Result<RocksKv> {
        let root = path.as_ref().to_path_buf();
        fsutil::create_dir_durable(&root)?;
        // Checkpoints not yet moved into a snapshot when the node stopped.
        let checkpoints = root.join(CHECKPOINTS_DIR);
        if checkpoints.exists() {
            std::fs::remove_dir_all(&checkpoints).map_err(Error::io("removing leftover checkpoints", &checkpoints))?;
        }
        std::fs::create_dir_all(&checkpoints).map_err(Error::io("creating", &checkpoints))?;
        remove_shared_layout(&root)?;
        let cache = Cache::new_lru_cache(KV_BLOCK_CACHE_BYTES);
        let buffers = WriteBufferManager::new_write_buffer_manager(KV_WRITE_BUFFERS_TOTAL_BYTES, false);
        Ok(RocksKv {
            inner: Arc::new(Inner {
                root,
                cache,
                buffers,
                groups: Mutex::new(HashMap::new()),
                next_checkpoint: AtomicU64::new(0),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.root
    }

    /// Group `group`'s store, opened (or created) on first use.
    pub fn group(&self, group: u64) -> Result<RocksKvGroup> {
        let mut groups = self.inner.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = groups.get(&group) {
            return Ok(RocksKvGroup { kv: self.clone(), slot: slot.clone() });
        }
        let dir = self.group_dir(group);
        fsutil::create_dir_durable(&dir)?;
        let mut generations = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(Error::io("listing", &dir))? {
            let entry = entry.map_err(Error::io("listing", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            match name.strip_prefix(GEN_PREFIX).and_then(|g| g.parse::<u64>().ok()) {
                Some(g) => generations.push(g),
                // A restore that did not finish, or anything else: not ours to keep.
                None => remove_entry(&entry.path())?,
            }
        }
        generations.sort_unstable();
        // The newest generation is the store; older ones go only once it
        // opened (one that does not open is an error to look at, not
        // something to delete).
        let db = match generations.last() {
            Some(&newest) => self.open_db(&dir.join(gen_name(newest)), newest, false)?,
            None => self.open_db(&dir.join(gen_name(0)), 0, true)?,
        };
        for &g in generations.iter().filter(|&&g| g < db.generation) {
            remove_entry(&dir.join(gen_name(g)))?;
        }
        let slot = Arc::new(Slot { group, dir, db: RwLock::new(Arc::new(db)), crcs: Mutex::new(HashMap::new()) });
        groups.insert(group, slot.clone());
        Ok(RocksKvGroup { kv: self.clone(), slot })
    }

    fn group_dir(&self, group: u64) -> PathBuf {
        self.inner.root.join(format!("group-{group:020}"))
    }

    /// Whether group `group` has a store on disk (without opening one).
    pub fn exists(&self, group: u64) -> bool {
        self.group_dir(group).is_dir()
    }

    fn open_db(&self, path: &Path, generation: u64, create: bool) -> Result<GroupDb> {
        let mut opts = Options::default();
        opts.create_if_missing(create);
        opts.set_max_open_files(KV_OPEN_FILES_MAX);
        opts.set_paranoid_checks(true);
        // A torn record at the write-ahead log's tail was never acknowledged.
        opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
        opts.set_compression_type(DBCompressionType::None);
        opts.set_write_buffer_size(KV_WRITE_BUFFER_BYTES);
        opts.set_write_buffer_manager(&self.inner.buffers);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&self.inner.cache);
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        let db = DB::open(&opts, path).map_err(|source| Error::Rocks {
            path: path.to_path_buf(),
            during: "opening a key-value store",
            source,
        })?;
        Ok(GroupDb { db: Some(db), path: path.to_path_buf(), generation, retired: AtomicBool::new(false) })
    }
}

/// Removes the files of the layout before this one, where every group's
/// pairs shared one RocksDB instance at the root: nothing reads them now
/// (each group's state comes back from its snapshot and log, as for a
/// store that was lost).
fn remove_shared_layout(root: &Path) -> Result<()> {
    if !root.join("CURRENT").is_file() {
        return Ok(());
    }
    let mut removed = 0;
    for entry in std::fs::read_dir(root).map_err(Error::io("listing", root))? {
        let entry = entry.map_err(Error::io("listing", root))?;
        let path = entry.path();
        if path.is_file() {
            std::fs::remove_file(&path).map_err(Error::io("removing the shared layout's", &path))?;
            removed += 1;
        }
    }
    tracing::info!(path = %root.display(), files = removed, "removed the key-value stores' shared instance of an older layout");
    fsutil::sync_dir(root)
}

/// Removes a file or a directory tree.
fn remove_entry(path: &Path) -> Result<()> {
    let removed = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    removed.map_err(Error::io("removing leftover", path))
}

fn gen_name(generation: u64) -> String {
    format!("{GEN_PREFIX}{generation:020}")
}

/// One group's pairs and records in a [`RocksKv`].
pub struct RocksKvGroup {
    kv: RocksKv,
    slot: Arc<Slot>,
}

impl RocksKvGroup {
    fn current(&self) -> Arc<GroupDb> {
        self.slot.db.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn err(&self, db: &GroupDb, during: &'static str) -> impl FnOnce(rocksdb::Error) -> Error {
        let path = db.path.clone();
        move |source| Error::Rocks { path, during, source }
    }

    fn key(range: u8, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(1 + key.len());
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
        let db = self.current();
        let mut read = ReadOptions::default();
        read.set_iterate_lower_bound(lower.clone());
        read.set_iterate_upper_bound(upper);
        let mut iter = db.db().raw_iterator_opt(read);
        iter.seek(lower);
        while let Some((key, value)) = iter.item() {
            let Some(key) = key.get(1..) else { break };
            if !visit(key, value) {
                break;
            }
            iter.next();
        }
        iter.status().map_err(self.err(&db, during))
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let db = self.current();
        db.db().get(Self::key(PAIRS, key)).map_err(self.err(&db, "reading a key"))
    }

    /// Visits the pairs with `start <= key < end` in key order until
    /// `visit` returns false.
    pub fn scan(&self, start: &[u8], end: Option<&[u8]>, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let upper = match end {
            Some(end) => Self::key(PAIRS, end),
            None => vec![PAIRS + 1],
        };
        self.visit(Self::key(PAIRS, start), upper, visit, "scanning keys")
    }

    pub fn record(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let db = self.current();
        db.db().get(Self::key(RECORDS, key)).map_err(self.err(&db, "reading a record"))
    }

    /// Visits the records whose key starts with `prefix`, in key order.
    pub fn records(&self, prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let lower = Self::key(RECORDS, prefix);
        let upper = prefix_end(&lower).unwrap_or_else(|| vec![RECORDS + 1]);
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
        let items = pairs.into_iter().map(|i| (PAIRS, i)).chain(records.into_iter().map(|i| (RECORDS, i)));
        for (range, (key, value)) in items {
            match value {
                Some(value) => batch.put(Self::key(range, key), value),
                None => batch.delete(Self::key(range, key)),
            }
        }
        let db = self.current();
        db.db().write_opt(batch, &WriteOptions::default()).map_err(self.err(&db, "committing keys"))
    }

    /// Removes every pair and record of the group.
    pub fn clear(&self) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.delete_range(vec![PAIRS], vec![RECORDS + 1]);
        let db = self.current();
        db.db().write_opt(batch, &WriteOptions::default()).map_err(self.err(&db, "clearing a group's keys"))
    }

    /// Makes every commit so far durable.
    pub fn sync(&self) -> Result<()> {
        let db = self.current();
        db.db().flush_wal(true).map_err(self.err(&db, "syncing the write-ahead log"))
    }

    /// The group's store as it is now, as files (a RocksDB checkpoint) to
    /// read from any thread while commits go on. Costs hard links and a
    /// copy of the write-ahead log since the last flush.
    pub fn checkpoint(&self) -> Result<RocksCheckpoint> {
        let db = self.current();
        let n = self.kv.inner.next_checkpoint.fetch_add(1, Ordering::Relaxed);
        let dir = self.kv.inner.root.join(CHECKPOINTS_DIR).join(format!("group-{:020}-{n}", self.slot.group));
        let checkpoint = Checkpoint::new(db.db()).map_err(self.err(&db, "starting a checkpoint"))?;
        let made = checkpoint.create_checkpoint_with_log_size(&dir, CHECKPOINT_WITHOUT_FLUSH);
        let checkpoint = RocksCheckpoint { dir, slot: self.slot.clone(), generation: db.generation };
        made.map_err(self.err(&db, "writing a checkpoint"))?;
        // The next checkpoint copies the log written since this flush, not
        // since the memtable last filled: a small store that snapshots often
        // would otherwise copy up to a memtable's worth of log every time.
        let mut flush = FlushOptions::default();
        flush.set_wait(false);
        db.db().flush_opt(&flush).map_err(self.err(&db, "starting a flush"))?;
        Ok(checkpoint)
    }

    /// Replaces the group's store with the checkpoint whose files are
    /// `files` (name in the checkpoint, path now): built as the next
    /// generation beside the current one, opened, then swapped in; the old
    /// one goes once nothing reads it. On an error the store is as it was.
    /// The files themselves are left as they are (table files are linked,
    /// the rest copied: RocksDB writes into neither).
    pub fn restore(&self, files: &[(String, PathBuf)]) -> Result<()> {
        let current = self.current();
        let generation = current.generation + 1;
        let tmp = self.slot.dir.join(format!("{}{GEN_TMP_SUFFIX}", gen_name(generation)));
        let target = self.slot.dir.join(gen_name(generation));
        let built = (|| {
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).map_err(Error::io("removing leftover", &tmp))?;
            }
            std::fs::create_dir_all(&tmp).map_err(Error::io("creating", &tmp))?;
            for (name, from) in files {
                if name.is_empty() || name.contains(['/', '\\', '\0']) || name == "." || name == ".." {
                    return Err(Error::SnapshotWrite { reason: format!("invalid checkpoint file name {name:?}") });
                }
                let to = tmp.join(name);
                let linked = name.ends_with(".sst") && std::fs::hard_link(from, &to).is_ok();
                if !linked {
                    std::fs::copy(from, &to).map_err(Error::io("copying a checkpoint file", &to))?;
                    std::fs::File::open(&to).and_then(|f| f.sync_all()).map_err(Error::io("fsyncing", &to))?;
                }
            }
            fsutil::sync_dir(&tmp)?;
            std::fs::rename(&tmp, &target).map_err(Error::io("renaming into place", &target))?;
            fsutil::sync_dir(&self.slot.dir)?;
            // No table file is made up: a checkpoint without its CURRENT
            // file does not open.
            self.kv.open_db(&target, generation, false)
        })();
        let db = match built {
            Ok(db) => db,
            Err(e) => {
                // Out of the generations' names first, so a crash while it
                // is removed never leaves a half of it to open.
                if target.exists() && std::fs::rename(&target, &tmp).is_ok() {
                    let _ = fsutil::sync_dir(&self.slot.dir);
                }
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let old = std::mem::replace(&mut *self.slot.db.write().unwrap_or_else(|p| p.into_inner()), Arc::new(db));
        old.retired.store(true, Ordering::Release);
        self.slot.crcs.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(())
    }
}

/// A group's store at one moment, as files (see
/// [`RocksKvGroup::checkpoint`]). Its directory goes with it.
pub struct RocksCheckpoint {
    dir: PathBuf,
    slot: Arc<Slot>,
    generation: u64,
}

/// One file of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointFile {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub crc32: u32,
}

impl RocksCheckpoint {
    /// Its files, with their sizes and checksums. A table file's checksum is
    /// read once per file for the life of the node: later checkpoints cost
    /// only what was written since.
    pub fn files(&self) -> Result<Vec<CheckpointFile>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(Error::io("listing", &self.dir))? {
            let entry = entry.map_err(Error::io("listing", &self.dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let size = entry.metadata().map_err(Error::io("inspecting", &path))?.len();
            let key = (self.generation, name.clone());
            let known = if name.ends_with(".sst") {
                self.slot.crcs.lock().unwrap_or_else(|p| p.into_inner()).get(&key).copied()
            } else {
                None
            };
            let crc32 = match known {
                Some((known_size, crc)) if known_size == size => crc,
                _ => {
                    let crc = crc_of(&path)?;
                    if name.ends_with(".sst") {
                        self.slot.crcs.lock().unwrap_or_else(|p| p.into_inner()).insert(key, (size, crc));
                    }
                    crc
                }
            };
            out.push(CheckpointFile { name, path, size, crc32 });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        // What the store no longer has, no later checkpoint will ask for.
        let names: std::collections::HashSet<&str> = out.iter().map(|f| f.name.as_str()).collect();
        self.slot
            .crcs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(g, n), _| *g == self.generation && names.contains(n.as_str()));
        Ok(out)
    }
}

impl Drop for RocksCheckpoint {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn crc_of(path: &Path) -> Result<u32> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(Error::io("opening", path))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; CRC_BUFFER_BYTES];
    loop {
        let n = file.read(&mut buf).map_err(Error::io("reading", path))?;
        if n == 0 {
            return Ok(hasher.finalize());
        }
        hasher.update(&buf[..n]);
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

    fn put(g: &RocksKvGroup, key: &[u8], value: &[u8]) {
        let none: [(&[u8], Option<&[u8]>); 0] = [];
        g.commit([(key, Some(value))], none).unwrap();
    }

    #[test]
    fn groups_keep_pairs_and_records_apart_and_they_last_across_opens() {
        let dir = std::env::temp_dir().join(format!("waft-kv-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let kv = RocksKv::open(&dir).unwrap();
        let (a, b, last) = (kv.group(1).unwrap(), kv.group(2).unwrap(), kv.group(u64::MAX).unwrap());
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
        assert_eq!(records(&last, b"\xff"), [b"\xff".to_vec()]);
        a.commit([(&b"x"[..], None)], none).unwrap();
        assert_eq!(a.get(b"x").unwrap(), None);
        a.sync().unwrap();
        drop((a, b, last));
        drop(kv);
        let kv = RocksKv::open(&dir).unwrap();
        let (a, b) = (kv.group(1).unwrap(), kv.group(2).unwrap());
        assert_eq!(pairs(&a, b"", None), [(b"y".to_vec(), b"2".to_vec())], "commits last across opens");
        assert_eq!(a.record(b"applied").unwrap(), Some(b"7".to_vec()));
        a.clear().unwrap();
        assert!(pairs(&a, b"", None).is_empty());
        assert_eq!(a.record(b"applied").unwrap(), None, "clearing removes the records too");
        assert_eq!(b.get(b"x").unwrap(), Some(b"3".to_vec()), "clearing one group leaves the others");
        drop((a, b));
        drop(kv);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_shared_instance_of_the_older_layout_is_removed_on_open() {
        let dir = std::env::temp_dir().join(format!("waft-kv-layout-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            let old = DB::open(&opts, &dir).unwrap();
            old.put(b"\0\0\0\0\0\0\0\x01dk", b"v").unwrap();
        }
        assert!(dir.join("CURRENT").exists());
        let kv = RocksKv::open(&dir).unwrap();
        assert!(!dir.join("CURRENT").exists(), "the old instance's files are gone");
        let g = kv.group(1).unwrap();
        assert_eq!(g.get(b"k").unwrap(), None);
        put(&g, b"k", b"new");
        drop(g);
        drop(kv);
        let kv = RocksKv::open(&dir).unwrap();
        assert_eq!(kv.group(1).unwrap().get(b"k").unwrap(), Some(b"new".to_vec()), "the new layout stays");
        drop(kv);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_checkpoint_keeps_its_moment_and_restores_elsewhere_as_a_new_generation() {
        let dir = std::env::temp_dir().join(format!("waft-kv-checkpoint-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (leader, follower) = (RocksKv::open(dir.join("a")).unwrap(), RocksKv::open(dir.join("b")).unwrap());
        let a = leader.group(7).unwrap();
        for i in 0..2_000u32 {
            put(&a, &i.to_be_bytes(), &[i as u8; 100]);
        }
        // Some in table files, some only in the write-ahead log.
        a.current().db().flush().unwrap();
        put(&a, b"late", b"1");
        a.commit([], [(&b"applied"[..], Some(&b"9"[..]))]).unwrap();
        let checkpoint = a.checkpoint().unwrap();
        put(&a, b"after", b"2");
        let files = checkpoint.files().unwrap();
        assert!(files.iter().any(|f| f.name.ends_with(".sst")), "{files:?}");
        for f in &files {
            let bytes = std::fs::read(&f.path).unwrap();
            assert_eq!((bytes.len() as u64, crc32fast::hash(&bytes)), (f.size, f.crc32), "{}", f.name);
        }
        assert_eq!(checkpoint.files().unwrap(), files, "a known table file's checksum is remembered, not reread");

        let b = follower.group(7).unwrap();
        put(&b, b"stale", b"x");
        let reader = b.current();
        let named: Vec<(String, PathBuf)> = files.iter().map(|f| (f.name.clone(), f.path.clone())).collect();
        b.restore(&named).unwrap();
        assert_eq!(b.get(b"stale").unwrap(), None, "a restore replaces the store");
        assert_eq!(b.get(b"late").unwrap(), Some(b"1".to_vec()), "what only the log held came too");
        assert_eq!(b.get(b"after").unwrap(), None, "nothing after the checkpoint");
        assert_eq!(b.record(b"applied").unwrap(), Some(b"9".to_vec()));
        assert_eq!(pairs(&b, b"", None).len(), 2_001);
        let old = reader.path.clone();
        assert!(old.exists(), "the old generation stays while something reads it");
        drop(reader);
        assert!(!old.exists(), "then goes");
        let tables: Vec<(String, PathBuf)> = named.iter().filter(|(name, _)| name.ends_with(".sst")).cloned().collect();
        assert!(b.restore(&tables).is_err(), "a checkpoint without its CURRENT file is not a store");
        let names: Vec<String> =
            std::fs::read_dir(&b.slot.dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert_eq!(names, [gen_name(1)], "a failed restore leaves no generation behind");
        assert_eq!(pairs(&b, b"", None).len(), 2_001, "and the store as it was");
        drop(checkpoint);
        for f in &files {
            assert!(!f.path.exists(), "a dropped checkpoint leaves nothing");
        }
        // The new generation is the one a restart opens.
        put(&b, b"more", b"3");
        b.sync().unwrap();
        drop(b);
        drop(follower);
        let follower = RocksKv::open(dir.join("b")).unwrap();
        let b = follower.group(7).unwrap();
        assert_eq!(b.current().generation, 1);
        assert_eq!(pairs(&b, b"", None).len(), 2_002);
        // Bad input loses nothing.
        assert!(b.restore(&[("../x".into(), dir.join("nothing"))]).is_err());
        assert!(b.restore(&[("CURRENT".into(), dir.join("nothing"))]).is_err());
        assert_eq!(pairs(&b, b"", None).len(), 2_002, "a failed restore leaves the store as it was");
        drop((a, b));
        drop((leader, follower));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
