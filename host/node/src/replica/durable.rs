//! A kv state machine's group resumes from its store.
//!
//! The store (see `waft_runtime::kv`) holds the guest's pairs, and beside
//! them this replica's own records of the same point in the log: the
//! applied index, the module and the settings in force, and the session
//! table (as separate records, so a batch writes only what it changed).
//! After every `apply` the batch's writes and the changed records are
//! committed together, so whatever a crash leaves is the state at one
//! applied index. A restart whose store is at or past the latest snapshot
//! resumes there: no snapshot load, no replay of what was applied. One
//! whose store is behind the snapshot (a crash lost its latest commits
//! while the log was compacted) or empty (a load that broke off) loads the
//! snapshot as an in-memory state does. The store is synced before the log
//! is compacted, so the log always holds what the store may have lost.
//!
//! Owns the records' keys and layouts. Must never resume from records that
//! do not all describe one index, and never trust a record it cannot
//! decode: it falls back to the snapshot instead.

use bytes::Bytes;
use waft_runtime::{KvWrites, StateMachine};
use waft_session::SessionTable;
use waft_storage::{ModuleHash, SnapshotReader};

use super::Replica;
use crate::convert;
use crate::error::{Error, Result};
use crate::module::GuestModule;
use crate::settings::GroupSettings;

/// The index of the last entry the store's state includes (u64 LE).
const RECORD_APPLIED: &[u8] = b"applied";
/// The module in force: its hash, the index it took effect at (u64 LE) and
/// its bytes.
const RECORD_MODULE: &[u8] = b"module";
/// The settings in force, as `GroupSettings::encode_file` writes them.
const RECORD_SETTINGS: &[u8] = b"settings";
/// Prefix of the session table's records (`waft_session::Record`).
const RECORD_SESSIONS: &[u8] = b"sessions/";

/// A kv group's snapshot is a checkpoint of its store: hard links to its
/// table files, a copy of its write-ahead log since the last flush (up to
/// a memtable, copied in the apply path) and a read of the table files
/// written since the last checkpoint; and a follower that installs one
/// copies the whole store. So the entries between snapshots grow with the
/// store: at least enough that the log written since the last snapshot
/// (estimated from recent entries' sizes) is this fraction of the store's
/// bytes. The log holds that much in exchange.
pub const KV_SNAPSHOT_STORE_BYTES_PER_LOG_BYTE: u64 = 2;

/// ... but no further than this many bytes of log (by the same estimate):
/// the core holds the entries since the last snapshot in memory, so a
/// store of gigabytes must not grow it without bound. Past it, snapshots
/// of a large store follow each other (one at a time, beside the apply
/// path).
pub const KV_SNAPSHOT_LOG_BYTES_MAX: u64 = 128 * 1024 * 1024;

/// What an entry in the core's log costs in memory beyond its command:
/// the entry, its envelope, the allocations (an estimate, for the bound
/// above).
pub const ENTRY_MEMORY_OVERHEAD_BYTES: u64 = 128;

/// Bytes of applied writes held before they are committed within one
/// apply (see `commit_kv_if_large`).
pub const KV_PENDING_BYTES_MAX: usize = 64 * 1024 * 1024;

/// What the store's records say the module and settings are, so a commit
/// rewrites them only when they change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Recorded {
    module: Option<(ModuleHash, u64)>,
    settings_index: Option<u64>,
}

/// A state the store holds, read back at a restart.
pub(super) struct Resumed {
    pub(super) applied: u64,
    pub(super) meta: waft_raft::SnapshotMeta,
}

fn sessions_key(key: &[u8]) -> Vec<u8> {
    let mut k = RECORD_SESSIONS.to_vec();
    k.extend_from_slice(key);
    k
}

impl Replica {
    /// Gives a new state machine the group's store (a kv state machine's
    /// writes are then committed by `commit_kv`, with the records).
    pub(super) fn adopt(&self, sm: &mut StateMachine) {
        sm.attach_kv(self.kv.clone());
        sm.defer_kv_commits();
    }

    fn store_err(&mut self, what: &str, e: impl std::fmt::Display) -> Error {
        self.stop(format!("the key-value store: {what}: {e}"))
    }

    /// After applying up to `index`: commits the writes of what was applied
    /// with the records that changed. Nothing for an in-memory state.
    pub(super) fn commit_kv(&mut self, index: u64) -> Result<()> {
        if !self.sm.uses_kv() {
            return Ok(());
        }
        let mut records = KvWrites::default();
        records.insert(RECORD_APPLIED.to_vec(), self.applied_record(index));
        let changes = match self.sessions.take_changes() {
            Ok(changes) => changes,
            Err(e) => return Err(self.store_err("the session table's changes", e)),
        };
        for (key, value) in changes {
            records.insert(sessions_key(&key), value);
        }
        self.record_module_and_settings(&mut records);
        if let Err(e) = self.sm.commit_kv(records) {
            return Err(self.runtime_err(e));
        }
        self.space_kv_snapshots()
    }

    /// Sets the snapshot margin for the store's size (see
    /// `KV_SNAPSHOT_STORE_BYTES_PER_LOG_BYTE`, `KV_SNAPSHOT_LOG_BYTES_MAX`).
    pub(super) fn space_kv_snapshots(&mut self) -> Result<()> {
        let store_bytes = match self.sm.kv_size() {
            Ok(size) => size.map_or(0, |(_, bytes)| bytes),
            Err(e) => return Err(self.runtime_err(e)),
        };
        let per_entry = self.entry_bytes_recent + ENTRY_MEMORY_OVERHEAD_BYTES;
        let grown = (store_bytes / KV_SNAPSHOT_STORE_BYTES_PER_LOG_BYTE).min(KV_SNAPSHOT_LOG_BYTES_MAX) / per_entry;
        let margin = self.snapshot_margin_entries.max(grown);
        self.node.set_snapshot_margin_entries(margin);
        Ok(())
    }

    fn record_module_and_settings(&mut self, records: &mut KvWrites) {
        let module = Some((self.module.hash(), self.module_index));
        if self.recorded.module != module {
            let mut value = Vec::with_capacity(40 + self.module.bytes().len());
            value.extend_from_slice(&self.module.hash().0);
            value.extend_from_slice(&self.module_index.to_le_bytes());
            value.extend_from_slice(self.module.bytes());
            records.insert(RECORD_MODULE.to_vec(), Some(value));
            self.recorded.module = module;
        }
        if self.recorded.settings_index != Some(self.settings_index) {
            records.insert(RECORD_SETTINGS.to_vec(), Some(self.settings.encode_file(self.settings_index)));
            self.recorded.settings_index = Some(self.settings_index);
        }
    }

    /// After the store was replaced (cleared, or loaded from a snapshot at
    /// `index`): writes every record anew and tracks the session table's
    /// changes from here.
    pub(super) fn record_all(&mut self, index: u64) -> Result<()> {
        if !self.sm.uses_kv() {
            return Ok(());
        }
        let mut records = KvWrites::default();
        records.insert(RECORD_APPLIED.to_vec(), self.applied_record(index));
        let all = match self.sessions.all_records() {
            Ok(all) => all,
            Err(e) => return Err(self.store_err("the session table", e)),
        };
        for (key, value) in all {
            records.insert(sessions_key(&key), Some(value));
        }
        self.sessions.track_changes();
        self.recorded = Recorded::default();
        self.record_module_and_settings(&mut records);
        if let Err(e) = self.sm.commit_kv(records) {
            return Err(self.runtime_err(e));
        }
        // A store just replaced must not fall back to what it held before.
        self.sync_kv()?;
        self.space_kv_snapshots()
    }

    /// The applied-index record to write at `index`: none while the
    /// replica is fenced, so a restart never resumes from a store whose
    /// state differs from the group's (it loads the latest snapshot and
    /// replays the log instead, as an in-memory state does).
    fn applied_record(&self, index: u64) -> Option<Vec<u8>> {
        if self.digests.status.fence.is_some() { None } else { Some(index.to_le_bytes().to_vec()) }
    }

    /// Commits the writes of what was applied so far when they pass
    /// `KV_PENDING_BYTES_MAX`, at `index`, the last entry applied (its
    /// replies recorded): one `Replica::apply` of thousands of entries
    /// that each write megabytes must not hold them all in memory.
    pub(super) fn commit_kv_if_large(&mut self, index: u64) -> Result<()> {
        if self.sm.kv_pending_bytes() >= KV_PENDING_BYTES_MAX { self.commit_kv(index) } else { Ok(()) }
    }

    /// Makes the store's commits durable: before the log is compacted past
    /// what they cover.
    pub(super) fn sync_kv(&mut self) -> Result<()> {
        if !self.sm.uses_kv() {
            return Ok(());
        }
        let synced = match self.kv.lock() {
            Ok(mut store) => store.sync().map_err(|e| e.to_string()),
            Err(_) => Err("the store's lock is poisoned".to_string()),
        };
        synced.map_err(|e| self.store_err("sync", e))
    }

    /// At a restart: the state the store holds, if it is a kv state
    /// machine's at or past the latest snapshot (`reader`), with the
    /// module, settings and session table of that index in place. `None`
    /// (nothing changed) when the snapshot must be loaded instead.
    pub(super) fn try_resume(&mut self, reader: &SnapshotReader, log_last: u64) -> Result<Option<Resumed>> {
        let group = self.group;
        let snapshot = reader.meta().index;
        let read = match self.read_records() {
            Ok(Some(read)) => read,
            Ok(None) => return Ok(None),
            Err(why) => {
                tracing::warn!(group, error = %why, "the key-value store's records are unusable: loading the snapshot");
                return Ok(None);
            }
        };
        let (applied, hash, module_index, module_bytes, settings_index, settings, records) = read;
        if applied < snapshot {
            tracing::info!(group, applied, snapshot, "the key-value store is behind the latest snapshot: loading it");
            return Ok(None);
        }
        if applied > log_last.max(snapshot) {
            tracing::warn!(group, applied, log_last, "the key-value store is ahead of the log: loading the snapshot");
            return Ok(None);
        }
        let module = if hash == self.module.hash() {
            self.module.clone()
        } else {
            match GuestModule::load(self.module.engine(), module_bytes) {
                Ok(m) if m.hash() == hash && m.module().uses_kv() => m,
                Ok(_) => return Ok(None),
                Err(e) => {
                    tracing::warn!(group, error = %e, "the key-value store's module does not load: loading the snapshot");
                    return Ok(None);
                }
            }
        };
        if !module.module().uses_kv() {
            return Ok(None);
        }
        let mut sessions = match SessionTable::from_records(settings.sessions.clone(), records) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(group, error = %e, "the key-value store's session table is unusable: loading the snapshot");
                return Ok(None);
            }
        };
        sessions.track_changes();
        let meta = convert::snapshot_meta_from_storage(reader.meta())
            .map_err(|e| Error::Install { group, reason: format!("snapshot {snapshot}: {e}") })?;
        let limits = settings.limits(&self.local_limits);
        let mut sm = StateMachine::for_group(module.module(), limits, group, &self.label)
            .map_err(|e| Error::Stopped { group, reason: format!("cannot instantiate the state machine: {e}") })?;
        self.adopt(&mut sm);
        self.give_hooks(&mut sm);
        self.sm = sm;
        self.recorded = Recorded { module: Some((module.hash(), module_index)), settings_index: Some(settings_index) };
        self.module = module;
        self.module_index = module_index;
        self.settings = settings;
        self.settings_index = settings_index;
        self.sessions = sessions;
        tracing::info!(group, applied, snapshot, "resumed from the key-value store");
        Ok(Some(Resumed { applied, meta }))
    }

    /// The records, decoded: `None` when the store holds no applied index
    /// (a new group, or a load that broke off).
    #[allow(clippy::type_complexity)]
    fn read_records(
        &self,
    ) -> std::result::Result<Option<(u64, ModuleHash, u64, Bytes, u64, GroupSettings, Vec<(Vec<u8>, Vec<u8>)>)>, String>
    {
        let store = self.kv.lock().map_err(|_| "the store's lock is poisoned".to_string())?;
        let record = |key: &[u8]| store.record(key).map_err(|e| e.to_string());
        let Some(applied) = record(RECORD_APPLIED)? else {
            return Ok(None);
        };
        let applied = u64::from_le_bytes(applied.try_into().map_err(|_| "a damaged applied index")?);
        let module = record(RECORD_MODULE)?.ok_or("no module record")?;
        if module.len() < 40 {
            return Err("a damaged module record".into());
        }
        let hash = ModuleHash(module[..32].try_into().map_err(|_| "a damaged module record")?);
        let module_index = u64::from_le_bytes(module[32..40].try_into().map_err(|_| "a damaged module record")?);
        let module_bytes = Bytes::copy_from_slice(&module[40..]);
        if ModuleHash::of(&module_bytes) != hash {
            return Err("the module record's bytes do not match its hash".into());
        }
        let settings = record(RECORD_SETTINGS)?.ok_or("no settings record")?;
        let (settings_index, settings) = GroupSettings::decode_file(&settings).map_err(|e| e.to_string())?;
        let mut sessions = Vec::new();
        store
            .records(RECORD_SESSIONS, &mut |key, value| {
                sessions.push((key[RECORD_SESSIONS.len()..].to_vec(), value.to_vec()));
                true
            })
            .map_err(|e| e.to_string())?;
        if settings_index > applied || module_index > applied {
            return Err("records past the applied index".into());
        }
        Ok(Some((applied, hash, module_index, module_bytes, settings_index, settings, sessions)))
    }
}
