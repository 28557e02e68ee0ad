//! The RocksDB log store: every group's log, config index and hard state in one
//! RocksDB instance, so one WAL sync makes a whole group-commit round durable.
//!
//! Owns the RocksDB handle and an in-memory cache of each group's log bounds and
//! hard state (rebuilt from disk at open). Must never acknowledge a write before
//! RocksDB's synced write returns, and must never serve a value that fails its
//! checksum. Layout and checksums live in `codec`; the rules live in `plan`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rocksdb::{DB, DBCompressionType, DBRecoveryMode, Options, ReadOptions, WriteBatch, WriteOptions};

use crate::codec::{self, TAG_CONFIG, TAG_ENTRY, TAG_GROUP, TAG_HARD_STATE, group_end, group_key, index_key};
use crate::error::{Error, Result};
use crate::mem::check_range;
use crate::plan::{self, Effect, GroupMeta};
use crate::types::{EntryKind, HardState, LogEntry, LogState, LogStore, Op, WRITE_SET_BYTES_MAX, WriteSet};

/// Tunables for [`RocksLogStore`]. The defaults are what the benchmark
/// (`benches/log_append.rs`) was measured with.
#[derive(Clone, Debug)]
pub struct RocksOptions {
    /// Memtable size. Large enough that steady appends flush rarely; flushes run
    /// in the background and never sit on the synced write path.
    pub write_buffer_bytes: usize,
    /// WAL bytes after which RocksDB flushes memtables so old WAL files can go.
    pub max_total_wal_bytes: u64,
}

impl Default for RocksOptions {
    fn default() -> RocksOptions {
        RocksOptions { write_buffer_bytes: 64 * 1024 * 1024, max_total_wal_bytes: 512 * 1024 * 1024 }
    }
}

pub struct RocksLogStore {
    db: DB,
    path: PathBuf,
    /// Cache of what is on disk. Invariant: equals what a fresh open would load.
    groups: BTreeMap<u64, GroupMeta>,
    /// Set when a write failed: RocksDB may or may not have persisted it.
    poisoned: bool,
}

impl RocksLogStore {
    pub fn open(path: impl AsRef<Path>) -> Result<RocksLogStore> {
        RocksLogStore::open_with(path, &RocksOptions::default())
    }

    pub fn open_with(path: impl AsRef<Path>, options: &RocksOptions) -> Result<RocksLogStore> {
        let path = path.as_ref().to_path_buf();
        refuse_headless_dir(&path)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_paranoid_checks(true);
        // Payloads are mostly already-compact commands; compression would cost
        // CPU on the write path for little space (and no codec is compiled in).
        opts.set_compression_type(DBCompressionType::None);
        opts.set_write_buffer_size(options.write_buffer_bytes);
        opts.set_max_total_wal_size(options.max_total_wal_bytes);
        // A SIGKILL can leave a torn record at the WAL's tail; point-in-time
        // recovery drops exactly that record, which was never acknowledged.
        opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
        opts.set_keep_log_file_num(4);
        opts.set_max_log_file_size(16 * 1024 * 1024);
        let db = DB::open(&opts, &path).map_err(|source| Error::Open { path: path.clone(), source })?;
        let mut store = RocksLogStore { db, path, groups: BTreeMap::new(), poisoned: false };
        store.load()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn rocks(&self, during: &'static str) -> impl FnOnce(rocksdb::Error) -> Error + '_ {
        move |source| Error::Rocks { path: self.path.clone(), during, source }
    }

    /// Rebuilds the group cache from disk: the group records, each group's hard
    /// state, and its last entry (found with one reverse seek, not a scan).
    fn load(&mut self) -> Result<()> {
        let mut groups = BTreeMap::new();
        let mut read = ReadOptions::default();
        read.set_iterate_lower_bound(vec![TAG_GROUP]);
        read.set_iterate_upper_bound(vec![TAG_GROUP + 1]);
        let mut iter = self.db.raw_iterator_opt(read);
        iter.seek_to_first();
        while let Some((key, value)) = iter.item() {
            let Some((TAG_GROUP, group)) = codec::parse_group_key(key) else {
                return Err(Error::CorruptRecord {
                    group: 0,
                    what: "group",
                    reason: format!("malformed key {key:02x?}"),
                });
            };
            let (purged_index, purged_term) = codec::decode_group_meta(key, value)
                .map_err(|reason| Error::CorruptRecord { group, what: "group", reason })?;
            groups.insert(group, LogState { purged_index, purged_term, last_index: purged_index });
            iter.next();
        }
        iter.status().map_err(self.rocks("loading group records"))?;
        drop(iter);

        for (group, log) in groups {
            let hard = self.load_hard_state(group)?;
            let mut log = log;
            if let Some(last) = self.last_entry_index(group)?
                && last > log.purged_index
            {
                log.last_index = last;
                // The two ends must decode: a torn tail or a hole at the
                // start is found now, not when the core first reads there.
                self.read_entry(group, last)?;
                self.read_entry(group, log.first_index())?;
            }
            self.groups.insert(group, GroupMeta { log, hard });
        }
        Ok(())
    }

    fn load_hard_state(&self, group: u64) -> Result<HardState> {
        let key = group_key(TAG_HARD_STATE, group);
        match self.db.get_pinned(key).map_err(self.rocks("reading hard state"))? {
            None => Ok(HardState::default()),
            Some(value) => codec::decode_hard_state(&key, &value).map_err(|reason| Error::CorruptRecord {
                group,
                what: "hard state",
                reason,
            }),
        }
    }

    fn last_entry_index(&self, group: u64) -> Result<Option<u64>> {
        let mut read = ReadOptions::default();
        read.set_iterate_lower_bound(index_key(TAG_ENTRY, group, 0).to_vec());
        read.set_iterate_upper_bound(group_end(TAG_ENTRY, group));
        let mut iter = self.db.raw_iterator_opt(read);
        iter.seek_to_last();
        let found = match iter.key().and_then(codec::parse_index_key) {
            Some((TAG_ENTRY, g, index)) if g == group => Some(index),
            _ => None,
        };
        iter.status().map_err(self.rocks("finding the last entry"))?;
        Ok(found)
    }

    fn read_entry(&self, group: u64, index: u64) -> Result<LogEntry> {
        let key = index_key(TAG_ENTRY, group, index);
        match self.db.get_pinned(key).map_err(self.rocks("reading an entry"))? {
            None => Err(Error::CorruptEntry { group, index, reason: "missing from the log".to_string() }),
            Some(value) => {
                codec::decode_entry(&key, index, &value).map_err(|reason| Error::CorruptEntry { group, index, reason })
            }
        }
    }

    /// Adds the RocksDB operations mirroring one accepted op to `batch`.
    fn stage(batch: &mut WriteBatch, scratch: &mut Vec<u8>, group: u64, op: &Op, effect: Effect) {
        match effect {
            Effect::Nothing => {}
            Effect::Appended => {
                let Op::Append(entries) = op else { unreachable!("Appended comes from Append") };
                for entry in entries {
                    let key = index_key(TAG_ENTRY, group, entry.index);
                    codec::encode_entry_into(scratch, &key, entry);
                    batch.put(key, &scratch[..]);
                    if entry.kind == EntryKind::Config {
                        let key = index_key(TAG_CONFIG, group, entry.index);
                        codec::encode_entry_into(scratch, &key, entry);
                        batch.put(key, &scratch[..]);
                    }
                }
            }
            Effect::Truncated { from, old_last } => {
                batch.delete_range(index_key(TAG_ENTRY, group, from), index_key(TAG_ENTRY, group, old_last + 1));
                batch.delete_range(index_key(TAG_CONFIG, group, from).to_vec(), group_end(TAG_CONFIG, group));
            }
            Effect::Purged { old_first, remove_last, upto, term } => {
                if remove_last >= old_first {
                    batch.delete_range(
                        index_key(TAG_ENTRY, group, old_first),
                        index_key(TAG_ENTRY, group, remove_last + 1),
                    );
                }
                batch.delete_range(index_key(TAG_CONFIG, group, 0), index_key(TAG_CONFIG, group, upto + 1));
                let key = group_key(TAG_GROUP, group);
                batch.put(key, codec::encode_group_meta(&key, upto, term));
            }
            Effect::HardState(hs) => {
                let key = group_key(TAG_HARD_STATE, group);
                batch.put(key, codec::encode_hard_state(&key, &hs));
            }
            Effect::Dropped => {
                for tag in [TAG_ENTRY, TAG_CONFIG] {
                    batch.delete_range(index_key(tag, group, 0).to_vec(), group_end(tag, group));
                }
                batch.delete(group_key(TAG_HARD_STATE, group));
                batch.delete(group_key(TAG_GROUP, group));
            }
        }
    }
}

/// RocksDB with `create_if_missing` would silently start an empty database in a
/// directory that lost its CURRENT file but still holds data; refuse instead.
/// "Holds data" means WAL (`*.log`) or table (`*.sst`) files: RocksDB creates
/// those only after CURRENT, so a crash while creating a new database (which can
/// leave LOCK, LOG or a MANIFEST without CURRENT) is not mistaken for damage.
fn refuse_headless_dir(path: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("listing", path)(e)),
    };
    if path.join("CURRENT").exists() {
        return Ok(());
    }
    for entry in entries {
        let name = entry.map_err(Error::io("listing", path))?.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".sst") || name.ends_with(".log") {
            return Err(Error::OpenLayout {
                path: path.to_path_buf(),
                reason: format!("it holds data ({name}) but no CURRENT file"),
            });
        }
    }
    Ok(())
}

impl LogStore for RocksLogStore {
    fn write(&mut self, set: WriteSet) -> Result<()> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        if set.data_bytes() > WRITE_SET_BYTES_MAX {
            return Err(Error::WriteSetTooLarge { bytes: set.data_bytes(), limit: WRITE_SET_BYTES_MAX });
        }
        let mut staged: BTreeMap<u64, Option<GroupMeta>> = BTreeMap::new();
        let mut batch = WriteBatch::default();
        let mut scratch = Vec::new();
        for (group, op) in set.ops() {
            let group = *group;
            let meta = staged.entry(group).or_insert_with(|| self.groups.get(&group).copied());
            let existed = meta.is_some();
            let effect = plan::apply(group, meta, op)?;
            if !existed && meta.is_some() {
                // A group exists on disk from its first write on, so `groups()`
                // and the open-time load see it even before it has entries.
                let key = group_key(TAG_GROUP, group);
                batch.put(key, codec::encode_group_meta(&key, 0, 0));
            }
            Self::stage(&mut batch, &mut scratch, group, op, effect);
        }
        if !batch.is_empty() {
            let mut sync = WriteOptions::default();
            sync.set_sync(set.must_sync());
            if let Err(source) = self.db.write_opt(batch, &sync) {
                self.poisoned = true;
                return Err(Error::Rocks { path: self.path.clone(), during: "a synced write", source });
            }
        }
        for (group, meta) in staged {
            match meta {
                Some(meta) => self.groups.insert(group, meta),
                None => self.groups.remove(&group),
            };
        }
        Ok(())
    }

    fn log_state(&self, group: u64) -> LogState {
        self.groups.get(&group).map(|g| g.log).unwrap_or_default()
    }

    fn term(&self, group: u64, index: u64) -> Result<u64> {
        let state = self.log_state(group);
        if index == state.purged_index {
            return Ok(state.purged_term);
        }
        check_range(group, &state, index, index.saturating_add(1))?;
        Ok(self.read_entry(group, index)?.term)
    }

    fn entries(&self, group: u64, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<LogEntry>> {
        let state = self.log_state(group);
        check_range(group, &state, lo, hi)?;
        let mut out = Vec::new();
        if lo == hi {
            return Ok(out);
        }
        let mut read = ReadOptions::default();
        read.set_iterate_upper_bound(index_key(TAG_ENTRY, group, hi).to_vec());
        let mut iter = self.db.raw_iterator_opt(read);
        iter.seek(index_key(TAG_ENTRY, group, lo));
        let mut bytes = 0u64;
        let mut expected = lo;
        while expected < hi {
            let Some((key, value)) = iter.item() else {
                iter.status().map_err(self.rocks("reading entries"))?;
                return Err(Error::CorruptEntry { group, index: expected, reason: "missing from the log".to_string() });
            };
            if codec::parse_index_key(key) != Some((TAG_ENTRY, group, expected)) {
                return Err(Error::CorruptEntry { group, index: expected, reason: "missing from the log".to_string() });
            }
            let entry = codec::decode_entry(key, expected, value).map_err(|reason| Error::CorruptEntry {
                group,
                index: expected,
                reason,
            })?;
            bytes += entry.data.len() as u64;
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry);
            expected += 1;
            iter.next();
        }
        Ok(out)
    }

    fn hard_state(&self, group: u64) -> HardState {
        self.groups.get(&group).map(|g| g.hard).unwrap_or_default()
    }

    fn config_entries(&self, group: u64) -> Result<Vec<LogEntry>> {
        let mut read = ReadOptions::default();
        read.set_iterate_lower_bound(index_key(TAG_CONFIG, group, 0).to_vec());
        read.set_iterate_upper_bound(group_end(TAG_CONFIG, group));
        let mut iter = self.db.raw_iterator_opt(read);
        iter.seek_to_first();
        let mut out = Vec::new();
        while let Some((key, value)) = iter.item() {
            let Some((TAG_CONFIG, g, index)) = codec::parse_index_key(key) else {
                return Err(Error::CorruptRecord {
                    group,
                    what: "config index",
                    reason: format!("malformed key {key:02x?}"),
                });
            };
            debug_assert_eq!(g, group);
            let entry = codec::decode_entry(key, index, value).map_err(|reason| Error::CorruptEntry {
                group,
                index,
                reason,
            })?;
            out.push(entry);
            iter.next();
        }
        iter.status().map_err(self.rocks("reading the config index"))?;
        Ok(out)
    }

    fn groups(&self) -> Vec<u64> {
        self.groups.keys().copied().collect()
    }
}
