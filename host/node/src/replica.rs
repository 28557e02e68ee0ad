//! `Replica`: one Raft group's replica on one node. Drives the core's `Ready`
//! batches through the log store, the snapshot store and the wasm state machine,
//! in the order `waft_raft::Ready` documents.
//!
//! Owns the core (`RawNode`), the state machine instance, the session table
//! (the host's share of the replicated state) and the bookkeeping of a
//! snapshot install in progress. Must never do networking, read a clock or
//! block on anything but the disk and the guest: the caller owns time (ticks),
//! the transport (the `send` callback and snapshot chunks) and client answers.
//! Must never apply an entry before it is durable, nor report entries persisted
//! before `LogStore::write` returned.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use crate::kv::KvStores;
use bytes::Bytes;
use waft_raft::{
    Configuration, EntryKind, Event, Message, NodeId, RawNode, ReadMode, ReadState, Ready, RestartState, Role,
    SnapshotInstall, SoftState,
};
use waft_runtime::machine::{Offload, Spawn};
use waft_runtime::{ApplyResult, KvError, KvHandle, Limits, RuntimeError, StateMachine};
use waft_session::{Body, Envelope, EnvelopeError, SessionConfig, SessionTable, Ticket, Verdict};
use waft_storage::{
    LogStore, ModuleHash, SNAPSHOT_CHUNK_BYTES_MAX, SnapshotFile, SnapshotId, SnapshotReader, SnapshotStore,
    SnapshotWriter, WriteSet,
};

use crate::convert;
use crate::error::{Error, Result, runtime_is_fatal};
use crate::module::{self as module_file, GuestModule, MODULE_FILE};
use crate::outcome::{Outcome, decode_reply, encode_reply};
use crate::settings::{GroupSettings, SETTINGS_FILE, SETTINGS_FILE_BYTES};

mod digest;
mod durable;
mod pipeline;
pub use digest::{DIGEST_REPORT_EVERY_TICKS, DIGESTS_KEPT_MAX, Digest, DigestStatus, Fence};
pub use pipeline::{WRITES_IN_FLIGHT_MAX, WriteToken};

/// The guest's file of a snapshot: its `on-snapshot-save` stream.
pub const STATE_FILE: &str = "state";
/// Prefix of a kv state machine's store files in a snapshot (a RocksDB
/// checkpoint's files, each under its own name after it).
const KV_FILE_PREFIX: &str = "kv-";
/// The host's file of a snapshot: the session table
/// (`SessionTable::encode_snapshot`), so a replica restored from the snapshot
/// deduplicates exactly as the replicas that applied the log.
pub const SESSIONS_FILE: &str = "sessions";

/// Normal entries handed to the state machine in one `apply` call. The runtime
/// splits further by fuel; this bounds the memory one call's results take.
pub const APPLY_BATCH_ENTRIES_MAX: usize = 1024;

/// Committed entries a Ready may carry and still count as quick
/// (`PendingReady::may_block`). A guest applies such a batch in tens of
/// microseconds (fuel bounds a single entry), less than moving it off an
/// async worker costs.
pub const APPLY_IN_PLACE_ENTRIES_MAX: usize = 64;
/// Bytes of committed entries (their log data) a Ready may carry and still
/// count as quick.
pub const APPLY_IN_PLACE_BYTES_MAX: usize = 64 * 1024;

/// What an entry is taken to weigh, in bytes, before any applied.
const ENTRY_BYTES_GUESS: u64 = 256;

/// `Ready` batches one `process` call drains at most. Together with the core's
/// `apply_entries_max` and message limits this bounds one `Output`; the caller
/// calls `process` again while `has_ready()` holds.
pub const READY_ROUNDS_MAX: usize = 64;

/// A module's bytes by its hash, if the node holds them (see
/// `Replica::set_module_source`).
pub type ModuleSource = std::sync::Arc<dyn Fn(&ModuleHash) -> Option<Bytes> + Send + Sync>;

/// Static settings of one replica.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// The core's knobs; `raft.id` is this node.
    pub raft: waft_raft::Config,
    /// Bounds of the wasm instance. The fields that are group settings
    /// (`GroupSettings`: fuel, memory, result and snapshot caps) are only
    /// this replica's founding values: the group's `Found` entry, a
    /// `Settings` entry or a snapshot puts the group's over them. The rest
    /// (batching, checkpoints, wall-clock backstops) stays local.
    pub limits: Limits,
    /// Normal entries per state-machine `apply` call.
    pub apply_batch_entries_max: usize,
    /// Founding limits of the session table, like `limits`' group fields:
    /// the group's replicated settings win once bound.
    pub sessions: SessionConfig,
    /// Founding digest interval, like `limits`' group fields.
    pub digest_interval: u64,
    /// Leave a replica whose state differs from the group's fenced for an
    /// operator rather than rebuild it from a healthy replica's snapshot.
    pub manual_rebuild: bool,
    /// Where the group's key-value store lives (for a kv state machine):
    /// in memory unless the node gives RocksDB.
    pub kv: KvStores,
    /// Addresses of founding voters, recorded in the founding configuration
    /// of a new group (the core carries them; the runtime reads them).
    pub bootstrap_addresses: Vec<(NodeId, String)>,
}

impl ReplicaConfig {
    pub fn new(raft: waft_raft::Config) -> ReplicaConfig {
        ReplicaConfig {
            raft,
            limits: Limits::default(),
            apply_batch_entries_max: APPLY_BATCH_ENTRIES_MAX,
            sessions: SessionConfig::default(),
            digest_interval: crate::settings::DIGEST_INTERVAL_DEFAULT,
            manual_rebuild: false,
            kv: KvStores::default(),
            bootstrap_addresses: Vec::new(),
        }
    }
}

/// The outcome of one committed client entry. The waiting client proposed at
/// (`index`, `term`); a different term at its index means its entry was lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub index: u64,
    pub term: u64,
    pub outcome: Outcome,
}

impl Applied {
    /// The guest's result (fresh or saved), for entries that carried a command.
    pub fn result(&self) -> Option<&ApplyResult> {
        self.outcome.result()
    }
}

/// What one `process` call produced for the caller (besides sent messages).
#[derive(Debug, Default)]
pub struct Output {
    /// The latest role/leader/term change, if any.
    pub soft_state: Option<SoftState>,
    /// Client entries applied, in log order, with what their client is told.
    pub applied: Vec<Applied>,
    /// Configurations committed (index and configuration), in log order.
    pub configs_committed: Vec<(u64, Configuration)>,
    /// Reads that may be served once `applied_index() >= index`.
    pub read_states: Vec<ReadState>,
    /// The core wants a snapshot from `from`: fetch its storage meta and chunks,
    /// then `begin_install` / `Install::write_chunk` / `finish_install`.
    pub snapshot_install: Option<SnapshotInstall>,
    /// A local snapshot was saved and the log compacted up to its index.
    pub snapshot_saved: Option<waft_raft::SnapshotMeta>,
    /// A requested snapshot could not be saved (guest refused, disk full); the
    /// replica goes on and the core asks again later. Not an `Err` of
    /// `process`, so the batch's applied results still reach their clients.
    pub snapshot_failed: Option<Error>,
    /// A pulled snapshot's install ended (`Replica::install_pulled`): the
    /// snapshot installed, or why not (the core will ask again).
    pub install_finished: Option<std::result::Result<SnapshotId, String>>,
    pub events: Vec<Event>,
    /// A kv state machine's snapshot to write beside the apply path (with
    /// `set_background_snapshots`): run it off the group's path
    /// (`SnapshotJob::run`), then hand the result to `snapshot_written`.
    pub snapshot_job: Option<SnapshotJob>,
}

/// A snapshot being received from the leader. Files are written through the
/// snapshot store's writer, which checks every chunk's offset and, at commit,
/// every file's size and checksum against the leader's meta.
pub struct Install {
    writer: SnapshotWriter,
    stored: waft_storage::SnapshotMeta,
    meta: waft_raft::SnapshotMeta,
}

impl Install {
    /// The files to pull, with the sizes and checksums they must end with.
    pub fn files(&self) -> &[SnapshotFile] {
        &self.stored.files
    }

    pub fn id(&self) -> SnapshotId {
        self.stored.id()
    }

    /// Where the next chunk of `name` starts (resume here after a failure).
    pub fn next_offset(&self, name: &str) -> u64 {
        self.writer.next_offset(name)
    }

    /// Whether every file has all its bytes.
    pub fn is_complete(&self) -> bool {
        self.stored.files.iter().all(|f| self.writer.next_offset(&f.name) == f.size)
    }

    pub fn write_chunk(&mut self, name: &str, offset: u64, data: &[u8]) -> waft_storage::Result<()> {
        self.writer.write_chunk(name, offset, data)
    }
}

pub struct Replica {
    group: u64,
    node: RawNode,
    sm: StateMachine,
    /// The group's key-value store, which `sm` (and every machine after it)
    /// keeps its state in when it runs a kv state machine.
    kv: KvHandle,
    /// What the store's records say (see `durable`).
    recorded: durable::Recorded,
    /// The host's half of the replicated state: client sessions. Every
    /// client entry passes through it, in log order, before the guest sees it.
    /// Invariant: no reply is pending between `apply` calls.
    sessions: SessionTable,
    /// The module `sm` runs, and the entry it took effect at (0: the group
    /// was founded with it). Changes only by a deploy entry or a snapshot.
    module: GuestModule,
    module_index: u64,
    /// A module validated and compiled ahead of its deploy entry (by the
    /// leader that proposed it), so applying the entry need not compile.
    prepared: Option<GuestModule>,
    /// The group's replicated settings, and the entry they took effect at
    /// (0: this replica's founding values, not yet bound by the group's
    /// `Found` entry). Change only by a `Found` or `Settings` entry or a
    /// snapshot.
    settings: GroupSettings,
    settings_index: u64,
    /// The term this replica, leading, last proposed the group's `Found`
    /// entry in (0: never), so it proposes it once per term while unbound.
    found_term: u64,
    /// The node's own runtime limits; the group's settings go over them.
    local_limits: Limits,
    /// Tests only: a module this replica fails to compile, as if its
    /// compiler differed (`inject_compile_fault`).
    compile_fault: Option<ModuleHash>,
    /// Where a deploy by hash finds a module that was not prepared: the
    /// node's module store (`set_module_source`).
    module_source: Option<ModuleSource>,
    /// Tests only: session commands skip the session table
    /// (`inject_no_dedup`).
    no_dedup: bool,
    /// Tags the guest's log lines.
    label: String,
    apply_batch_entries_max: usize,
    /// The install the core asked for last; a newer one supersedes it.
    installing: Option<SnapshotInstall>,
    /// Whether the guest was last told this replica leads.
    leading: bool,
    /// Last index of the log in storage, counting writes handed out by
    /// `begin_ready` (they are durable before anything reads this again).
    stored_last_index: u64,
    /// Term and vote of the hard state last handed to storage: a hard state
    /// that changes neither (only the commit index) needs no sync of its own.
    stored_term_vote: (u64, Option<u64>),
    /// Set once the replica must stop; every later call fails with it.
    stopped: Option<String>,
    /// Where the state machine sends guest work that may run long (see
    /// `set_offload`); kept here so a module switched by a deploy or a
    /// snapshot gets it too.
    offload: Option<Offload>,
    /// Where the state machine runs its checkpoint saves (see `set_spawn`);
    /// kept for the same reason.
    spawn: Option<Spawn>,
    /// Readies taken and handed back (`enqueue_ready`), oldest first, until
    /// they finish: in order, each once its write is durable. Invariant:
    /// len() <= WRITES_IN_FLIGHT_MAX.
    pipeline: std::collections::VecDeque<PendingReady>,
    /// The token the next Ready's write gets.
    next_token: u64,
    /// A pulled snapshot waiting for the Readies in the pipeline: installing
    /// it rewrites the group's log, which must not race an earlier append.
    /// While it waits no new Ready begins.
    install_waiting: Option<std::result::Result<Install, String>>,
    /// The log prefix a saved snapshot covers, (index, term), to purge in
    /// order with the log writes (see `snapshot_and_compact`).
    purge_pending: Option<(u64, u64)>,
    /// State digests, verdicts, fencing (see `digest`).
    digests: digest::Digests,
    /// Hand a kv state machine's snapshot to the caller to write beside the
    /// apply path (`Output::snapshot_job`) rather than write it in place.
    background_snapshots: bool,
    /// Counts replacements of the state (snapshot loads) and fences: a
    /// snapshot captured under an older count is stale.
    state_epoch: u64,
    /// The configured snapshot margin; a kv group's grows with its store
    /// (see `durable::KV_SNAPSHOT_STORE_BYTES_PER_LOG_BYTE`).
    snapshot_margin_entries: u64,
    /// Bytes of a recently applied client command, on average (a moving
    /// average over apply batches): what a kv group's snapshot margin is
    /// sized by.
    entry_bytes_recent: u64,
    /// Tests only: at the first client entry at or after this index, skip
    /// the guest's command, or run this extra command after it
    /// (`inject_divergence`, `inject_extra_command`).
    diverge_at: Option<(u64, Option<Bytes>)>,
}

/// A Ready taken by `begin_ready`, waiting for its write to become durable.
pub struct PendingReady {
    rd: Ready,
    write: WriteSet,
    /// Names this Ready's write when the caller reports it durable.
    token: WriteToken,
    /// Its write is durable (or it had none): it may finish once every
    /// Ready taken before it has.
    durable: bool,
    /// See `may_block`; decided when the Ready is taken.
    may_block: bool,
    /// `apply_ready` ran: what remains waits for the write.
    applied: bool,
}

/// Moves every operation of `src` to the end of `dst`, keeping their order, so
/// several groups' Readies become one atomic write with one sync.
pub fn merge_write(dst: &mut WriteSet, src: WriteSet) {
    dst.extend(src);
}

impl PendingReady {
    /// The entries and hard state to persist (empty if none), in one atomic
    /// write. Take it once; `finish_ready` may run only after it is durable.
    pub fn take_write(&mut self) -> WriteSet {
        std::mem::take(&mut self.write)
    }

    /// What names this Ready's write in `Replica::write_durable`.
    pub fn token(&self) -> WriteToken {
        self.token
    }

    /// The core's Ready as taken (before `apply_ready` moves its committed
    /// entries, read states and events out): for observers such as the
    /// simulator's safety checks.
    pub fn ready(&self) -> &Ready {
        &self.rd
    }

    /// Whether `apply_ready` (or `finish_ready`, for a Ready not applied
    /// before) may run long enough that a caller on an async runtime should
    /// move it off its worker (`block_in_place`): it saves a snapshot, runs a role change's hooks, applies more than
    /// `APPLY_IN_PLACE_ENTRIES_MAX` entries or `APPLY_IN_PLACE_BYTES_MAX`
    /// bytes, a deploy (which may compile a module), a configuration or a
    /// digest point (a save and hash of the whole state), or
    /// its entries move the state machine's in-memory checkpoint (a save of
    /// the whole state). Every guest call is safe on any thread (the
    /// runtime's WASI never waits, nor touches tokio), so the rest (a Ready
    /// that persists, sends, reports reads, applies a few entries) finishes
    /// in place: a hand-off costs a thread wake-up and two context switches,
    /// more than such a Ready's own work. Decided when the Ready is taken,
    /// from the state machine as it is then (exact when each Ready is
    /// applied before the next is taken). What it cannot foresee (an entry
    /// that burns its fuel, one that faults and makes the runtime restore
    /// its instance, a query instance to rebuild) the state machine moves
    /// off the worker itself, through the offload hook (`set_offload`), once
    /// its in-place fuel slice is spent. False once the Ready is applied:
    /// what is left never runs long.
    pub fn may_block(&self) -> bool {
        !self.applied && self.may_block
    }
}

impl Replica {
    /// Opens the replica of `group` on this node: a brand-new group when
    /// storage holds nothing for it (founded with `bootstrap` voters; empty for
    /// a node that will be added later), otherwise a restart from the latest
    /// snapshot plus the log after it.
    ///
    /// `founding` is the module a brand-new group starts with. A restarting
    /// replica runs the module its latest snapshot carries (deploys change it
    /// through the log), whatever `founding` is.
    pub fn open(
        group: u64,
        cfg: ReplicaConfig,
        store: &mut dyn LogStore,
        snapshots: &SnapshotStore,
        founding: &GuestModule,
        bootstrap: &[NodeId],
    ) -> Result<Replica> {
        let id = cfg.raft.id;
        let label = format!("group {group} node {id}");
        let settings = GroupSettings {
            digest_interval: cfg.digest_interval,
            ..GroupSettings::founding(&cfg.limits, &cfg.sessions)
        };
        settings.validate().map_err(|e| Error::Settings { group, reason: format!("founding settings: {e}") })?;
        let mut sm = StateMachine::for_group(founding.module(), settings.limits(&cfg.limits), group, &label)
            .map_err(|e| stopped(group, format!("cannot instantiate the state machine: {e}")))?;
        let kv = (cfg.kv.0)(group).map_err(|e| stopped(group, e.to_string()))?;
        sm.attach_kv(kv.clone());
        sm.defer_kv_commits();
        let sessions =
            SessionTable::new(cfg.sessions.clone()).map_err(|source| Error::SessionConfig { group, source })?;
        let mut replica = Replica {
            group,
            // A placeholder until storage has been read (loading a snapshot
            // needs the rest of the replica); replaced below.
            node: RawNode::new(cfg.raft.clone(), Configuration::default())
                .map_err(|source| Error::Start { group, source })?,
            sm,
            kv,
            recorded: Default::default(),
            sessions,
            module: founding.clone(),
            module_index: 0,
            prepared: None,
            settings,
            settings_index: 0,
            found_term: 0,
            local_limits: cfg.limits.clone(),
            compile_fault: None,
            module_source: None,
            no_dedup: false,
            label,
            apply_batch_entries_max: cfg.apply_batch_entries_max.max(1),
            installing: None,
            leading: false,
            stored_last_index: store.last_index(group),
            stored_term_vote: {
                let hs = store.hard_state(group);
                (hs.term, hs.vote)
            },
            stopped: None,
            offload: None,
            spawn: None,
            pipeline: std::collections::VecDeque::new(),
            next_token: 1,
            install_waiting: None,
            purge_pending: None,
            digests: digest::Digests::new(cfg.manual_rebuild),
            background_snapshots: false,
            state_epoch: 0,
            snapshot_margin_entries: cfg.raft.snapshot_margin_entries,
            entry_bytes_recent: ENTRY_BYTES_GUESS,
            diverge_at: None,
        };
        let is_new = snapshots.latest(group).is_none()
            && store.log_state(group) == Default::default()
            && store.hard_state(group) == Default::default();
        let bootstrap = Configuration::new(bootstrap.iter().copied()).with_addresses(cfg.bootstrap_addresses.clone());
        let restart = if is_new {
            // Whatever a group of this id left in the store is no part of this one.
            let cleared = match replica.kv.lock() {
                Ok(mut store) => store.clear(),
                Err(_) => Err(KvError("the store's lock is poisoned".into())),
            };
            cleared.map_err(|e| stopped(group, e.to_string()))?;
            // Snapshot 0 records the founding configuration durably, so a
            // restart never depends on the caller passing the same peers again.
            let base = waft_raft::SnapshotMeta { index: 0, term: 0, config: bootstrap.clone() };
            replica.save_local_snapshot(snapshots, &base)?;
            replica.record_all(0)?;
            tracing::info!(group, node = id, voters = ?bootstrap.voters, "new group");
            RestartState { snapshot: base, ..Default::default() }
        } else {
            let restart = replica.restart_state(store, snapshots, bootstrap)?;
            if replica.module.hash() != founding.hash() {
                tracing::info!(
                    group,
                    node = id,
                    module = %replica.module.hash().to_hex(),
                    since = replica.module_index,
                    "running the module deployed through the log, not the one named at start"
                );
            }
            restart
        };
        replica.node =
            if is_new { RawNode::new(cfg.raft, restart.snapshot.config) } else { RawNode::restart(cfg.raft, restart) }
                .map_err(|source| Error::Start { group, source })?;
        if replica.sm.uses_kv() {
            replica.space_kv_snapshots()?;
        }
        replica.align_snapshots();
        Ok(replica)
    }

    /// Loads the latest snapshot into the state machine and reads what the log
    /// holds after it.
    fn restart_state(
        &mut self,
        store: &mut dyn LogStore,
        snapshots: &SnapshotStore,
        bootstrap: Configuration,
    ) -> Result<RestartState> {
        let group = self.group;
        let mut applied = None;
        let snapshot = match snapshots.open_latest(group).map_err(|e| self.stop(e))? {
            Some(reader) => {
                // A kv state machine's store may hold a later state: resume there.
                let meta = match self.try_resume(&reader, store.log_state(group).last_index)? {
                    Some(resumed) => {
                        applied = Some(resumed.applied);
                        resumed.meta
                    }
                    None => self.load_snapshot(&reader)?,
                };
                // A crash may have come between a snapshot's commit and the
                // log purge that follows it: finish that purge now.
                self.align_log(store, &meta)?;
                meta
            }
            None => waft_raft::SnapshotMeta { index: 0, term: 0, config: bootstrap },
        };
        let applied = applied.unwrap_or(snapshot.index);
        let log = store.log_state(group);
        let entries = if log.last_index > snapshot.index {
            store
                .entries(group, snapshot.index + 1, log.last_index + 1, u64::MAX)
                .map_err(|e| self.stop(e))?
                .into_iter()
                .map(convert::entry_from_storage)
                .collect()
        } else {
            Vec::new()
        };
        let mut hard_state = convert::hard_state_from_storage(store.hard_state(group));
        // The commit index is written after an installed snapshot's purge; a
        // crash in between leaves it below the snapshot, which is committed
        // (as is whatever was applied).
        hard_state.commit = hard_state.commit.max(applied);
        if applied > snapshot.index + entries.len() as u64 {
            return Err(self.stop(format!(
                "the key-value store holds the state at entry {applied}, past the log's last entry {}",
                snapshot.index + entries.len() as u64
            )));
        }
        tracing::info!(
            group,
            snapshot = snapshot.index,
            entries = log.last_index.saturating_sub(snapshot.index),
            term = hard_state.term,
            applied,
            "restart from storage"
        );
        Ok(RestartState { hard_state, applied, snapshot, entries })
    }

    // ------------------------------------------------------------ accessors

    pub fn group(&self) -> u64 {
        self.group
    }

    /// The core, for reading its state (role, leader, term, indexes, progress).
    pub fn raft(&self) -> &RawNode {
        &self.node
    }

    /// Highest index whose entry the state machine reflects.
    pub fn applied_index(&self) -> u64 {
        self.node.applied()
    }

    /// The hash of the module the state machine runs.
    pub fn module_hash(&self) -> ModuleHash {
        self.module.hash()
    }

    /// The group's replicated settings as this replica applied them.
    pub fn settings(&self) -> &GroupSettings {
        &self.settings
    }

    /// The entry the settings took effect at (0: not yet bound by the
    /// group's `Found` entry: this replica's own founding values).
    pub fn settings_index(&self) -> u64 {
        self.settings_index
    }

    /// The log index the running module took effect at (0: the group was
    /// founded with it).
    pub fn module_index(&self) -> u64 {
        self.module_index
    }

    /// Where a deploy by hash (`Body::DeployHash`) finds a module that was
    /// not prepared ahead of its entry: a module store's bytes by hash.
    pub fn set_module_source(&mut self, source: ModuleSource) {
        self.module_source = Some(source);
    }

    /// Hands in a module validated and compiled ahead of the deploy entry
    /// that names it (by its hash), so applying that entry does not compile
    /// it again. Only the latest is kept.
    pub fn prepare_module(&mut self, module: GuestModule) {
        self.prepared = Some(module);
    }

    /// The install the core asked for and that has not finished yet.
    pub fn pending_install(&self) -> Option<&SnapshotInstall> {
        self.installing.as_ref()
    }

    /// Whether `process` has work to do.
    pub fn has_ready(&self) -> bool {
        self.node.has_ready() || self.digest_report_waiting()
    }

    /// Why the replica stopped, if it did.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    /// Tells the replica that the write of a batch taken by `begin_ready`
    /// failed: it stops for good (it cannot know what reached the disk) and
    /// returns the error saying why. Reopen it from storage to go on.
    pub fn write_failed(&mut self, why: impl std::fmt::Display) -> Error {
        self.stop(format!("writing to the log failed: {why}"))
    }

    // ------------------------------------------------------------ inputs

    /// The caller's monotonic clock in ms (see `waft_raft::RawNode::set_clock`):
    /// set it before every batch of ticks, messages and reads, and before
    /// `finish_ready` (a durable write can commit and release queued lease
    /// reads), so a stall of the process never extends the leader lease.
    pub fn set_clock(&mut self, now_ms: u64) {
        self.node.set_clock(now_ms);
    }

    pub fn tick(&mut self) {
        self.node.tick();
        self.tick_digests();
    }

    pub fn step(&mut self, m: Message) {
        if let waft_raft::MessageBody::StateDigest { index, digest } = m.body {
            if m.to == self.node.id() {
                self.step_digest(m.from, index, digest);
            }
            return;
        }
        self.node.step(m);
    }

    /// Proposes a client request in its envelope; answer the client when
    /// `Output::applied` carries this (index, term). The caller stamps the
    /// envelope with the leader's clock (this crate has none); every replica
    /// expires sessions by those stamps. A command's payload must not be
    /// empty (the empty entry is the leader's no-op), and the encoded envelope
    /// must fit the core's proposal limit: payloads up to that limit minus
    /// `waft_session::ENVELOPE_OVERHEAD_BYTES_MAX` always do.
    pub fn propose(&mut self, envelope: &Envelope) -> Result<(u64, u64)> {
        self.check_running()?;
        let group = self.group;
        if self.settings_index == 0 && self.node.role() == Role::Leader && !matches!(envelope.body, Body::Found { .. })
        {
            // Until the group's founding entry applied here, an entry would
            // run under this replica's own module and settings: wait for it.
            return Err(Error::NotBound { group });
        }
        if let Body::Plain { payload } | Body::Command { payload, .. } | Body::Deploy { module: payload } =
            &envelope.body
            && payload.is_empty()
        {
            return Err(Error::EmptyCommand { group });
        }
        let data = envelope.encode().map_err(|source| Error::Envelope { group, source })?;
        self.node.propose(data).map_err(|e| self.raft_err(e))
    }

    /// Requests a linearizable read; its `ReadState` with `id` comes out of a
    /// later `process`.
    pub fn read_index(&mut self, id: u64, mode: ReadMode) -> Result<()> {
        self.check_running()?;
        self.check_not_fenced()?;
        self.node.read_index(id, mode).map_err(|e| self.raft_err(e))
    }

    /// Hands a kv state machine's snapshots to the caller to write beside
    /// the apply path (`Output::snapshot_job`) instead of writing them in
    /// place, which stops the group for the length of the write.
    pub fn set_background_snapshots(&mut self, on: bool) {
        self.background_snapshots = on;
    }

    /// Where the state machine runs guest work past a small in-place fuel
    /// slice: a caller on an async worker passes `block_in_place`, so no
    /// guest call runs long on the worker whatever `may_block` foresaw.
    pub fn set_offload(&mut self, offload: Option<Offload>) {
        self.sm.set_offload(offload.clone());
        self.offload = offload;
    }

    /// Where the state machine saves an in-memory state at its checkpoints
    /// (digest points, snapshots): a caller passes a pool of blocking
    /// threads, so the group's applies go on while the state is saved.
    /// Without it a save runs in place.
    pub fn set_spawn(&mut self, spawn: Option<Spawn>) {
        self.sm.set_spawn(spawn.clone());
        self.spawn = spawn;
    }

    /// Gives a new state machine this replica's hooks.
    pub(super) fn give_hooks(&self, sm: &mut StateMachine) {
        sm.set_offload(self.offload.clone());
        sm.set_spawn(self.spawn.clone());
    }

    /// Answers a read-only query from the local state (the caller decides
    /// whether the applied index is recent enough).
    pub fn query(&mut self, request: &[u8]) -> Result<Bytes> {
        self.check_running()?;
        self.check_not_fenced()?;
        self.sm.query(request).map_err(|e| self.runtime_err(e))
    }

    /// The session table, as applied so far (between `process` calls no reply
    /// is pending, so `encode_snapshot` works on it).
    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    /// Tests only: makes this replica fail to compile module `hash` the
    /// next time an entry switches to it, as a replica whose compiler
    /// differs would.
    #[doc(hidden)]
    pub fn inject_compile_fault(&mut self, hash: ModuleHash) {
        self.compile_fault = Some(hash);
    }

    /// Tests only: makes this replica apply every committed copy of a
    /// session command, as a host without sessions would (the simulator's
    /// negative control: its checker must then catch a double apply).
    #[doc(hidden)]
    pub fn inject_no_dedup(&mut self) {
        self.no_dedup = true;
    }

    /// The runtime limits the guest runs under: the node's, with the group's
    /// settings over them (what a throwaway instance checking a deploy needs).
    pub fn guest_limits(&self) -> Limits {
        self.settings.limits(&self.local_limits)
    }

    /// The state machine's snapshot bytes, for checking replicas agree.
    pub fn state_bytes(&mut self) -> Result<Vec<u8>> {
        self.check_running()?;
        match self.sm.save_snapshot(Vec::new()) {
            Ok((bytes, _)) => Ok(bytes),
            Err(e) => Err(self.runtime_err(e)),
        }
    }

    /// The state machine's state as saved bytes, for a deploy's check. An
    /// in-memory state's save runs beside the applies
    /// (`StateMachine::checkpoint_begin`): wait for it off the group's
    /// path. A kv state machine's pairs are streamed here.
    pub fn state_saved(&mut self) -> Result<waft_runtime::machine::SavedState> {
        if self.sm.uses_kv() {
            let bytes = self.state_bytes()?;
            return Ok(waft_runtime::machine::SavedState::ready(Ok(bytes.into())));
        }
        self.check_running()?;
        match self.sm.checkpoint_begin() {
            Ok(state) => Ok(state),
            Err(e) => Err(self.runtime_err(e)),
        }
    }

    /// Asks for a snapshot at the applied index soon, before the margin is
    /// reached (see `RawNode::request_snapshot`).
    pub fn request_snapshot(&mut self) {
        self.node.request_snapshot();
    }

    pub fn campaign_now(&mut self) {
        self.node.campaign_now();
    }

    /// Ends the group's quiescence here (its leader's node may be gone):
    /// see `RawNode::wake`.
    pub fn wake(&mut self) {
        self.node.wake();
    }

    pub fn add_peer(&mut self, id: NodeId) -> Result<()> {
        self.node.add_peer(id).map_err(|e| self.raft_err(e))
    }

    pub fn remove_peer(&mut self, id: NodeId) -> Result<()> {
        self.node.remove_peer(id).map_err(|e| self.raft_err(e))
    }

    pub fn add_learner(&mut self, id: NodeId) -> Result<()> {
        self.node.add_learner(id).map_err(|e| self.raft_err(e))
    }

    pub fn change_peers(&mut self, voters: Vec<NodeId>, learners: Vec<NodeId>) -> Result<()> {
        self.node.change_peers(voters, learners).map_err(|e| self.raft_err(e))
    }

    /// `change_peers` recording members' addresses in the configuration.
    pub fn change_members(
        &mut self,
        voters: Vec<NodeId>,
        learners: Vec<NodeId>,
        addresses: Vec<(NodeId, String)>,
    ) -> Result<()> {
        self.node.change_members(voters, learners, addresses).map_err(|e| self.raft_err(e))
    }

    pub fn remove_learner(&mut self, id: NodeId) -> Result<()> {
        self.node.remove_learner(id).map_err(|e| self.raft_err(e))
    }

    pub fn promote_learner(&mut self, id: NodeId) -> Result<()> {
        self.node.promote_learner(id).map_err(|e| self.raft_err(e))
    }

    /// UNSAFE recovery of a group that lost its majority: see
    /// `RawNode::reset_peers`.
    pub fn reset_peers(&mut self, voters: Vec<NodeId>) -> Result<()> {
        self.node.reset_peers(voters).map_err(|e| self.raft_err(e))
    }

    pub fn transfer_leader(&mut self, target: Option<NodeId>) -> Result<()> {
        self.node.transfer_leader(target).map_err(|e| self.raft_err(e))
    }

    // ------------------------------------------------------------ ready

    /// Drains up to `READY_ROUNDS_MAX` Ready batches: messages go to `send`
    /// as soon as they may, entries and hard state are made durable in one
    /// write per batch, committed entries are applied, and requested snapshots
    /// are saved. Returns `Err` only when the replica stopped.
    ///
    /// This is `begin_ready`, `store.write`, `finish_ready` in a loop; a daemon
    /// that group-commits several groups in one write calls those itself.
    pub fn process(
        &mut self,
        store: &mut dyn LogStore,
        snapshots: &SnapshotStore,
        send: &mut dyn FnMut(Message),
    ) -> Result<Output> {
        let _span = tracing::debug_span!("replica", group = self.group, node = self.node.id(), term = self.node.term())
            .entered();
        let mut out = Output::default();
        for _ in 0..READY_ROUNDS_MAX {
            let Some(mut pending) = self.begin_ready(send)? else {
                break;
            };
            let set = pending.take_write();
            if !set.is_empty() {
                // Whatever failed here, the core already handed these entries
                // out: the replica cannot go on without knowing what reached the disk.
                store.write(set).map_err(|e| self.stop(e))?;
            }
            self.finish_ready(pending, store, snapshots, send, &mut out)?;
        }
        Ok(out)
    }

    /// Takes the next Ready, if any: sends the messages that need not wait for
    /// the disk (rule 4) and returns the rest with the write that must become
    /// durable before `finish_ready`. The caller may merge that write with
    /// other groups' into one `LogStore::write`; if the write fails, the
    /// replica must be dropped and reopened from storage. Writes must become
    /// durable in the order their Readies were taken, and `finish_ready` run
    /// for each in that order; later Readies may begin (and `apply_ready`
    /// run) while earlier writes are still on their way, as long as nothing
    /// else writes the group's log meanwhile (an install waits for them).
    pub fn begin_ready(&mut self, send: &mut dyn FnMut(Message)) -> Result<Option<PendingReady>> {
        self.check_running()?;
        self.send_digest_report(send);
        if !self.node.has_ready() || !self.pipeline_has_room() {
            return Ok(None);
        }
        let mut rd = self.node.ready();
        std::mem::take(&mut rd.messages).into_iter().for_each(&mut *send);
        if let Some(install) = &rd.snapshot_install {
            self.installing = Some(install.clone());
        }
        let group = self.group;
        let mut write = WriteSet::new();
        if let Some(first) = rd.entries.first() {
            // A leader overwrote our conflicting suffix: storage wants the
            // truncation spelled out before the append.
            if first.index <= self.stored_last_index {
                write.truncate(group, first.index);
            }
            write.append(group, rd.entries.iter().map(convert::entry_to_storage).collect());
        }
        if let Some(last) = rd.entries.last() {
            self.stored_last_index = last.index;
        }
        if let Some((upto, term)) = self.purge_pending.take() {
            // After every write handed out before it, so no append below
            // `upto` is still to come.
            write.purge(group, upto, term);
        }
        if let Some(hs) = rd.hard_state {
            let hs = convert::hard_state_to_storage(hs);
            // A new commit index alone need not cost a disk sync: a restart
            // that lost it learns it again (and never below a snapshot). A
            // term or vote must be durable before anything promises it.
            if (hs.term, hs.vote) == self.stored_term_vote {
                write.set_hard_state_lazily(group, hs);
            } else {
                self.stored_term_vote = (hs.term, hs.vote);
                write.set_hard_state(group, hs);
            }
        }
        let may_block = self.ready_may_block(&rd);
        let token = self.next_write_token();
        let durable = write.is_empty();
        Ok(Some(PendingReady { rd, write, token, durable, may_block, applied: false }))
    }

    /// `PendingReady::may_block` for `rd`.
    fn ready_may_block(&self, rd: &Ready) -> bool {
        if rd.snapshot_request.is_some() || rd.soft_state.is_some() {
            return true;
        }
        let entries = &rd.committed_entries;
        if entries.len() > APPLY_IN_PLACE_ENTRIES_MAX {
            return true;
        }
        let bytes: usize = entries.iter().map(|e| e.data.len()).sum();
        bytes > APPLY_IN_PLACE_BYTES_MAX
            || entries.iter().any(|e| e.kind == EntryKind::Config || Envelope::is_deploy(&e.data))
            // A digest point saves and hashes the whole state.
            || entries.iter().any(|e| self.settings.is_digest_point(e.index))
            // A command is never longer than its entry's data.
            || self.sm.may_checkpoint_after(entries.len(), bytes)
    }

    /// Runs the part of a Ready that does not wait for its own write: the
    /// role-change hooks, applying the committed entries (durable locally
    /// already: rule 5), the read states and events, and a requested snapshot
    /// (rule 6). A caller may run it before, or while, the Ready's write is
    /// made durable, so entries committed earlier answer their clients
    /// without waiting one more disk sync; `finish_ready` runs it if the
    /// caller did not. Results, reads and notices go into `out`.
    pub fn apply_ready(
        &mut self,
        pending: &mut PendingReady,
        snapshots: &SnapshotStore,
        out: &mut Output,
    ) -> Result<()> {
        self.check_running()?;
        if std::mem::replace(&mut pending.applied, true) {
            return Ok(());
        }
        let rd = &mut pending.rd;
        if let Some(soft) = rd.soft_state.take() {
            out.soft_state = Some(soft);
            self.leader_hooks(soft)?;
        }
        let committed = std::mem::take(&mut rd.committed_entries);
        self.apply(&committed, out)?;
        self.propose_found();
        self.propose_verdict();
        self.unfence_sole_voter();
        out.read_states.append(&mut rd.read_states);
        out.events.append(&mut rd.events);
        // The state machine is now exactly at the requested index.
        if let Some(meta) = rd.snapshot_request.take() {
            debug_assert_eq!(self.node.applied(), meta.index, "snapshot requested off the applied index");
            self.snapshot_and_compact(snapshots, meta, out)?;
        }
        Ok(())
    }

    /// Finishes a Ready whose write is durable already (or had none): the
    /// synchronous special case of `enqueue_ready`, `write_durable` and
    /// `finish_durable`. Every Ready taken before it that is durable finishes
    /// too, in order; if one is not, this one waits for it.
    pub fn finish_ready(
        &mut self,
        pending: PendingReady,
        store: &mut dyn LogStore,
        snapshots: &SnapshotStore,
        send: &mut dyn FnMut(Message),
        out: &mut Output,
    ) -> Result<()> {
        debug_assert!(pending.write.is_empty(), "finish_ready before the write was taken");
        let token = self.enqueue_ready(pending);
        self.write_durable(token);
        self.finish_durable(store, snapshots, send, out)
    }

    /// Finishes one Ready whose write is durable: tells the core (rule 3),
    /// sends the messages that promise durability (votes, append
    /// acknowledgements), and runs `apply_ready` if the caller did not.
    fn finish_one(
        &mut self,
        mut pending: PendingReady,
        snapshots: &SnapshotStore,
        send: &mut dyn FnMut(Message),
        out: &mut Output,
    ) -> Result<()> {
        self.check_running()?;
        // Before the notices, as the core ordered it when it handed the Ready out.
        self.apply_ready(&mut pending, snapshots, out)?;
        let rd = pending.rd;
        if let Some(hs) = rd.hard_state {
            self.node.on_hard_state_persisted(hs);
        }
        if let Some(last) = rd.entries.last() {
            self.node.on_persisted(last.index, last.term);
        }
        rd.messages_after_persist.into_iter().for_each(&mut *send);
        if let Some(install) = rd.snapshot_install {
            out.snapshot_install = Some(install);
        }
        Ok(())
    }

    /// Applies committed entries in order: client entries through the session
    /// table and then, in batches, the guest; the leader's empty no-ops
    /// skipped; configurations through their hook.
    fn apply(&mut self, entries: &[waft_raft::Entry], out: &mut Output) -> Result<()> {
        self.align_snapshots();
        self.finish_digests(0);
        let first = out.applied.len();
        let mut batch = Batch::default();
        for e in entries {
            self.apply_entry(e, &mut batch, out)?;
            if self.settings.is_digest_point(e.index) {
                // The state exactly at this entry: everything before it applied.
                self.apply_batch(&mut batch, out)?;
                self.take_digest(e.index)?;
            }
        }
        self.apply_batch(&mut batch, out)?;
        if let Some(last) = entries.last() {
            self.commit_kv(last.index)?;
        }
        if let Some(fence) = &self.digests.status.fence {
            // This replica's results come from a state that differs from the
            // group's: no client hears them (a retry reaches a healthy leader).
            let why = format!(
                "this replica's state differs from the group's (found at entry {}); retry on another node",
                fence.index
            );
            for a in &mut out.applied[first..] {
                a.outcome = Outcome::Fenced(why.clone());
            }
        }
        Ok(())
    }

    /// Applies one committed entry, or files it in `batch` for the guest.
    fn apply_entry(&mut self, e: &waft_raft::Entry, batch: &mut Batch, out: &mut Output) -> Result<()> {
        {
            match e.kind {
                EntryKind::Normal if e.data.is_empty() => {}
                EntryKind::Normal => {
                    let decoded = Envelope::decode(&e.data);
                    if let Ok(Envelope { body: Body::Verdict { index, digest }, .. }) = decoded {
                        // Judges the state at `index`, long applied: nothing
                        // in the batch is part of it.
                        let outcome = self.apply_verdict(e.index, index, digest);
                        out.applied.push(Applied { index: e.index, term: e.term, outcome });
                        return Ok(());
                    }
                    if let Ok(Envelope {
                        body:
                            body @ (Body::Deploy { .. }
                            | Body::Settings { .. }
                            | Body::Found { .. }
                            | Body::DeployHash { .. }),
                        ..
                    }) = decoded
                    {
                        // The module or settings switch between the entries before and after.
                        self.apply_batch(batch, out)?;
                        let outcome = match body {
                            Body::Deploy { module } => self.deploy(e.index, ModuleHash::of(&module), Some(module))?,
                            Body::DeployHash { module_hash, .. } => {
                                self.deploy(e.index, ModuleHash(module_hash), None)?
                            }
                            Body::Settings { settings } => self.set_settings(e.index, &settings)?,
                            Body::Found { module_hash, module, settings } => {
                                self.found(e.index, ModuleHash(module_hash), module, &settings)?
                            }
                            _ => unreachable!("matched above"),
                        };
                        out.applied.push(Applied { index: e.index, term: e.term, outcome });
                        return Ok(());
                    }
                    self.admit(e, decoded, batch);
                    if batch.slots.len() >= self.apply_batch_entries_max {
                        self.apply_batch(batch, out)?;
                    }
                }
                EntryKind::Config => {
                    self.apply_batch(batch, out)?;
                    // The core reports an undecodable entry as an event and ignores it.
                    if let Ok(conf) = Configuration::decode(&e.data) {
                        let mut voters = conf.voters.clone();
                        voters.extend(&conf.voters_outgoing);
                        voters.sort_unstable();
                        voters.dedup();
                        if let Err(err) = self.sm.on_configuration_committed(&voters, &conf.learners) {
                            if runtime_is_fatal(&err) {
                                return Err(self.stop(err));
                            }
                            // The hook's fault is contained (state restored) and
                            // happens identically on every replica: a fuel or
                            // memory limit hit is decided on a fresh instance, as
                            // for an entry.
                            tracing::warn!(group = self.group, index = e.index, %err, "configuration hook failed");
                        }
                        out.configs_committed.push((e.index, conf));
                    }
                }
            }
        }
        Ok(())
    }

    /// Passes one client entry through the session table and files it in
    /// the batch: for the guest, or with its answer already known.
    fn admit(&mut self, e: &waft_raft::Entry, decoded: Result<Envelope, EnvelopeError>, batch: &mut Batch) {
        let (index, term) = (e.index, e.term);
        let answer = |outcome| Slot::Answer { index, term, outcome };
        let envelope = match decoded {
            Ok(envelope) => envelope,
            Err(err) => {
                // Every replica of this build reads the same bytes the same way.
                let why = format!("entry {index} is not a client envelope this build reads: {err}");
                batch.slots.push(answer(Outcome::Unreadable(why)));
                return;
            }
        };
        let verdict = match envelope.body {
            Body::Command { payload, .. } if self.no_dedup => Verdict::Apply { payload, ticket: None },
            _ => self.sessions.apply(index, envelope),
        };
        let slot = match verdict {
            Verdict::Apply { payload, ticket }
                if self.diverge_at.as_ref().is_some_and(|(at, extra)| index >= *at && extra.is_some()) =>
            {
                // Tests only (`inject_extra_command`): this replica also runs
                // a command no other replica runs; its result goes nowhere.
                let extra = self.diverge_at.take().and_then(|(_, extra)| extra).unwrap_or_default();
                tracing::warn!(
                    group = self.group,
                    index,
                    "test hook: this replica runs an extra command and now differs"
                );
                batch.entries.push(waft_runtime::Entry::new(index, term, payload));
                let slot = Slot::Guest { index, term, at: batch.entries.len() - 1, ticket };
                batch.entries.push(waft_runtime::Entry::new(index, term, extra));
                slot
            }
            Verdict::Apply { ticket, .. } if self.diverge_at.as_ref().is_some_and(|(at, _)| index >= *at) => {
                // Tests only (`inject_divergence`): this replica skips the
                // command, as a host bug would, and tells its client the
                // same as the others would not.
                self.diverge_at = None;
                tracing::warn!(group = self.group, index, "test hook: this replica skips a command and now differs");
                if let Some(ticket) = ticket {
                    self.sessions.record_reply(ticket, encode_reply(&Ok(Bytes::new())));
                }
                answer(Outcome::Guest(Ok(Bytes::new())))
            }
            Verdict::Apply { payload, ticket } => {
                batch.entries.push(waft_runtime::Entry::new(index, term, payload));
                Slot::Guest { index, term, at: batch.entries.len() - 1, ticket }
            }
            Verdict::Duplicate { reply } => answer(match decode_reply(&reply) {
                Ok(result) => Outcome::Saved(result),
                Err(why) => Outcome::Unreadable(format!("entry {index}: {why}")),
            }),
            Verdict::DuplicateInFlight { original_index } => Slot::Copy { index, term, original_index },
            Verdict::Registered { session_id } => answer(Outcome::Registered { session_id }),
            Verdict::Done => answer(Outcome::Done),
            Verdict::Refused(err) => answer(Outcome::Refused(err)),
        };
        batch.slots.push(slot);
    }

    /// Runs the batch's commands in the guest, hands every reply to the
    /// session table (errors and faults too, so a retry meets the same
    /// outcome), and reports every entry of the batch in log order.
    fn apply_batch(&mut self, batch: &mut Batch, out: &mut Output) -> Result<()> {
        if batch.slots.is_empty() {
            return Ok(());
        }
        if !batch.entries.is_empty() {
            // Client commands are what a group's log is made of (a deploy's
            // module, rare and large, would skew the average).
            let bytes: usize = batch.entries.iter().map(|e| e.command.len()).sum();
            let mean = (bytes / batch.entries.len()) as u64;
            self.entry_bytes_recent = (self.entry_bytes_recent * 7 + mean) / 8;
        }
        let mut results = if batch.entries.is_empty() {
            Vec::new()
        } else {
            // An outer error from `apply` means the state machine cannot
            // continue (per-entry faults come back as results).
            match self.sm.apply(&batch.entries) {
                Ok(results) => results,
                Err(e) => return Err(self.stop(e)),
            }
        };
        if results.len() != batch.entries.len() {
            return Err(self.stop(format!(
                "the runtime returned {} results for {} entries",
                results.len(),
                batch.entries.len()
            )));
        }
        batch.entries.clear();
        // Results of this batch by index, for copies that point at them.
        let mut fresh: BTreeMap<u64, ApplyResult> = BTreeMap::new();
        let mut applied = Vec::with_capacity(batch.slots.len());
        for slot in batch.slots.drain(..) {
            let (index, term, outcome) = match slot {
                Slot::Guest { index, term, at, ticket } => {
                    let result = std::mem::replace(&mut results[at], Ok(Bytes::new()));
                    if let Some(ticket) = ticket {
                        debug_assert_eq!(ticket.index(), index);
                        self.sessions.record_reply(ticket, encode_reply(&result));
                        fresh.insert(index, result.clone());
                    }
                    (index, term, Outcome::Guest(result))
                }
                Slot::Copy { index, term, original_index } => {
                    let outcome = match fresh.get(&original_index) {
                        Some(result) => Outcome::Saved(result.clone()),
                        // The table points only into the batch it is applying.
                        None => {
                            return Err(self.stop(format!(
                                "entry {index} copies entry {original_index}, which is not in its apply batch"
                            )));
                        }
                    };
                    (index, term, outcome)
                }
                Slot::Answer { index, term, outcome } => (index, term, outcome),
            };
            applied.push(Applied { index, term, outcome });
        }
        debug_assert_eq!(self.sessions.replies_pending(), 0, "every ticket of the batch came back");
        let last = applied.last().map(|a: &Applied| a.index);
        out.applied.extend(applied);
        if let Some(last) = last {
            self.commit_kv_if_large(last)?;
        }
        Ok(())
    }

    /// Applies a deploy entry: the running module saves its state, the new
    /// one loads it, and from the next entry on the new one runs. A module
    /// that cannot read the old state is refused the same way on every
    /// replica and changes nothing. One this replica cannot compile stops
    /// it: the leader compiled the module before proposing it, so the
    /// failure is this replica's, and running the old module on would make
    /// it differ from the others.
    ///
    /// `bytes` are the module's when the entry carries them; a deploy by
    /// hash (`Body::DeployHash`) finds them prepared (fetched and compiled
    /// before the leader proposed it) or in the node's module store.
    fn deploy(&mut self, index: u64, hash: ModuleHash, bytes: Option<Bytes>) -> Result<Outcome> {
        let group = self.group;
        if hash == self.module.hash() {
            tracing::info!(group, index, module = %hash.to_hex(), "deploy of the running module: nothing changes");
            return Ok(Outcome::Deployed { hash, index: self.module_index });
        }
        if self.prepared.as_ref().is_none_or(|p| p.hash() != hash) {
            let bytes = bytes.or_else(|| self.module_source.as_ref().and_then(|source| source(&hash)));
            let loaded = if self.compile_fault == Some(hash) {
                self.compile_fault = None;
                Err("a compile fault injected for a test".to_string())
            } else {
                match bytes {
                    Some(bytes) if ModuleHash::of(&bytes) == hash => {
                        GuestModule::load(self.module.engine(), bytes).map_err(|e| e.to_string())
                    }
                    Some(_) => Err("the copy this node holds does not match the hash".to_string()),
                    None => Err("this node does not hold it (it did not fetch it before the deploy was \
                                 proposed: it was down, behind or unreachable)"
                        .to_string()),
                }
            };
            match loaded {
                Ok(module) => self.prepared = Some(module),
                Err(e) => {
                    // The leader compiled it before proposing it, so the
                    // others switch here, and this replica would run the old
                    // module on: it fences itself instead, and is rebuilt
                    // from a healthy replica's snapshot (which carries the
                    // module) like any replica whose state differs. A sole
                    // voter has nothing to be rebuilt from: it stops.
                    let why = format!(
                        "cannot load module {} at entry {index}, which the group switches to there: {e}",
                        hash.to_hex()
                    );
                    if self.sole_voter() || self.settings.digest_interval == 0 {
                        // Nothing to rebuild it from, or no verdict would
                        // ever have it rebuilt (digests are off).
                        return Err(self.stop(format!("{why}; this replica stops rather than run the old module on")));
                    }
                    self.fence_self(index, &why);
                    return Ok(Outcome::Fenced(why));
                }
            }
        }
        // Prepared above, or ahead of the entry (`prepare_module`).
        let module = self.prepared.as_ref().map(|p| (p.hash(), p.bytes().clone()));
        match self.reconfigure(index, module, None)? {
            Ok(()) => Ok(Outcome::Deployed { hash, index }),
            Err(why) => {
                tracing::warn!(group, index, module = %hash.to_hex(), %why, "deploy refused");
                Ok(Outcome::DeployRefused(why))
            }
        }
    }

    /// Applies a settings entry: the group's settings become these from the
    /// next entry on. Settings out of bounds, or that the state as it stands
    /// would break (fewer sessions than are open, less memory than the
    /// state needs), are refused the same way on every replica and change
    /// nothing.
    fn set_settings(&mut self, index: u64, bytes: &[u8]) -> Result<Outcome> {
        let group = self.group;
        let refused = |why: String| {
            tracing::warn!(group, index, %why, "settings change refused");
            Ok(Outcome::SettingsRefused(why))
        };
        let (base, settings) = match GroupSettings::decode_change(bytes) {
            Ok(change) => change,
            Err(e) => return refused(e.to_string()),
        };
        if base != self.settings_index {
            // Made over settings that another change replaced meanwhile:
            // applying it whole would silently undo that change.
            let why = format!(
                "made over the settings of entry {base}, but those of entry {} are in force now (another change \
                 came first); ask again",
                self.settings_index
            );
            tracing::warn!(group, index, %why, "settings change refused");
            return Ok(Outcome::SettingsConflict(why));
        }
        match self.reconfigure(index, None, Some(settings))? {
            Ok(()) => {
                tracing::info!(group, index, settings = %self.settings, "group settings changed");
                Ok(Outcome::SettingsChanged { settings: self.settings.clone(), index })
            }
            Err(why) => refused(why),
        }
    }

    /// Applies the group's founding entry: a replica not yet bound takes its
    /// module and settings (a replica that joined with another module
    /// switches); one already bound ignores it. The leader that proposed it
    /// ran that module under those settings, so a replica that cannot
    /// follow has a local problem: it stops rather than run on differently.
    fn found(&mut self, index: u64, hash: ModuleHash, module: Bytes, settings: &[u8]) -> Result<Outcome> {
        let group = self.group;
        if self.settings_index > 0 {
            return Ok(Outcome::SettingsChanged { settings: self.settings.clone(), index: self.settings_index });
        }
        let settings = match GroupSettings::decode(settings) {
            Ok(s) => s,
            Err(e) => return Err(self.stop(format!("the group's founding entry {index} has bad settings: {e}"))),
        };
        let module = if hash == self.module.hash() {
            None
        } else if !module.is_empty() && ModuleHash::of(&module) == hash {
            Some((hash, module))
        } else {
            // Too large for one entry, and this replica runs another module:
            // it cannot run the group's, and must not run its own.
            return Err(self.stop(format!(
                "the group was founded at entry {index} with module {}, which that entry does not carry (it is \
                 larger than one entry), and this node runs {}: start it with the group's module",
                hash.to_hex(),
                self.module.hash().to_hex()
            )));
        };
        if let Err(why) = self.reconfigure(index, module, Some(settings))? {
            return Err(
                self.stop(format!("cannot take the group's founding module and settings at entry {index}: {why}"))
            );
        }
        // The founding module, on every replica: a replica that switched to
        // it here records it as such, like those that started with it, so
        // their snapshots agree.
        self.module_index = 0;
        tracing::info!(group, index, module = %hash.to_hex(), settings = %self.settings, "group founded: module and settings bound");
        Ok(Outcome::SettingsChanged { settings: self.settings.clone(), index })
    }

    /// Switches the module (when `module` is another one) and the settings
    /// (when given) at entry `index`, all or nothing: the running instance
    /// saves its state and a new one, under the new module and limits, loads
    /// it. `Ok(Err(why))`: refused, nothing changed.
    ///
    /// `module` is the new module's hash and bytes; the caller checked that
    /// they match (a module may be tens of MiB: hashing it again here would
    /// hold the group up).
    fn reconfigure(
        &mut self,
        index: u64,
        module: Option<(ModuleHash, Bytes)>,
        settings: Option<GroupSettings>,
    ) -> Result<std::result::Result<(), String>> {
        let new_module = match module {
            Some((hash, bytes)) if hash != self.module.hash() => {
                match self.prepared.take() {
                    Some(prepared) if prepared.hash() == hash => Some(prepared),
                    _ => {
                        let loaded = if self.compile_fault == Some(hash) {
                            self.compile_fault = None;
                            Err("a compile fault injected for a test".to_string())
                        } else {
                            GuestModule::load(self.module.engine(), bytes).map_err(|e| e.to_string())
                        };
                        match loaded {
                            Ok(m) => Some(m),
                            // The leader compiled it before proposing it, so
                            // the others switch here: running the old module
                            // on would make this replica differ. Stop instead.
                            Err(e) => {
                                return Err(self.stop(format!(
                                    "cannot compile module {} at entry {index}, which the group switches to there: \
                                     {e}; this replica stops rather than run the old module on",
                                    hash.to_hex()
                                )));
                            }
                        }
                    }
                }
            }
            _ => None,
        };
        let new_settings = settings.clone().unwrap_or_else(|| self.settings.clone());
        if let Err(e) = new_settings.validate() {
            return Ok(Err(e.to_string()));
        }
        // The table first, on a copy: refusing there changes nothing.
        let sessions = if new_settings.sessions != *self.sessions.config() {
            let mut table = self.sessions.clone();
            if let Err(e) = table.set_config(new_settings.sessions.clone()) {
                return Ok(Err(format!("the session table as it stands: {e}")));
            }
            Some(table)
        } else {
            None
        };
        if new_module.is_some() || new_settings.guest_differs(&self.settings) {
            let module = new_module.as_ref().unwrap_or(&self.module);
            let hash = module.hash().to_hex();
            let limits = new_settings.limits(&self.local_limits);
            if module.module().uses_kv() != self.sm.uses_kv() {
                // The same on every replica: the modules' imports say it.
                return Ok(Err(format!(
                    "module {hash} keeps its state {} and the running one {}: a deploy cannot move a state \
                     between a guest's memory and the group's key-value store",
                    if module.module().uses_kv() { "in the key-value store" } else { "in memory" },
                    if self.sm.uses_kv() { "in the key-value store" } else { "in memory" },
                )));
            }
            let mut sm = match StateMachine::for_group(module.module(), limits, self.group, &self.label) {
                Ok(sm) => sm,
                Err(e) => return Ok(Err(format!("module {hash} cannot start: {e}"))),
            };
            self.adopt(&mut sm);
            let state = if sm.uses_kv() {
                // The store stays where it is; the new module takes it over.
                None
            } else {
                match self.sm.save_snapshot(Vec::new()) {
                    Ok((state, _)) => Some(state),
                    Err(e) if runtime_is_fatal(&e) || hit_backstop(&e) => return Err(self.stop(e)),
                    Err(e) => return Ok(Err(format!("the running module could not save its state: {e}"))),
                }
            };
            match state.map(|state| {
                let bytes = state.len() as u64;
                sm.load_snapshot_of(std::io::Cursor::new(state), bytes)
            }) {
                None | Some(Ok(())) => {}
                // How far a call got before the wall clock stopped it depends
                // on this machine: no replica may refuse (or accept) on it.
                Some(Err(e)) if hit_backstop(&e) => return Err(self.stop(e)),
                Some(Err(e)) => return Ok(Err(format!("module {hash} could not load the running state: {e}"))),
            }
            // What the running machine applied before this entry reaches
            // the store before the next one takes it over.
            self.commit_kv(index.saturating_sub(1))?;
            self.give_hooks(&mut sm);
            self.sm = sm;
            if self.leading {
                // The new instance has not heard that this replica leads.
                match self.sm.on_leader_start(self.node.term()) {
                    Err(e) if runtime_is_fatal(&e) => return Err(self.stop(e)),
                    Err(e) => tracing::warn!(group = self.group, error = %e, "leader hook failed"),
                    Ok(()) => {}
                }
            }
        }
        if let Some(module) = new_module {
            tracing::info!(group = self.group, index, term = self.node.term(), module = %module.hash().to_hex(), "state machine module switched");
            self.module = module;
            self.module_index = index;
        }
        if let Some(table) = sessions {
            self.sessions = table;
        }
        if settings.is_some() {
            self.settings = new_settings;
            self.settings_index = index;
        }
        Ok(Ok(()))
    }

    /// While the group's replicas are not yet bound to one module and one set
    /// of settings, a leader proposes its own (once per term): the first such
    /// entry to commit binds every replica, a late joiner included.
    fn propose_found(&mut self) {
        let term = self.node.term();
        if !self.leading || self.settings_index > 0 || self.found_term == term {
            return;
        }
        let (module_hash, settings) = (self.module.hash().0, Bytes::from(self.settings.encode()));
        let found = |module: Bytes| Body::Found { module_hash, module, settings: settings.clone() };
        // Not a session entry: its timestamp reaches no session table. A
        // module too large for one entry goes by its hash alone.
        let with_bytes = self.propose(&Envelope::new(0, found(self.module.bytes().clone())));
        let proposed = match with_bytes {
            Err(Error::Raft { source: waft_raft::RaftError::ProposalTooLarge { .. }, .. }) => {
                self.propose(&Envelope::new(0, found(Bytes::new())))
            }
            other => other,
        };
        match proposed {
            Ok((index, _)) => {
                self.found_term = term;
                tracing::info!(group = self.group, index, term, module = %self.module.hash().to_hex(), "proposed the group's founding module and settings");
            }
            Err(e) => {
                tracing::warn!(group = self.group, term, error = %e, "cannot propose the group's founding entry yet")
            }
        }
    }

    /// Tells the guest when this replica starts or stops leading (SOFAJRaft's
    /// onLeaderStart/onLeaderStop). Local news, not replicated: a failing hook
    /// is logged, not fatal, unless the state machine itself is gone.
    fn leader_hooks(&mut self, soft: SoftState) -> Result<()> {
        let leading = soft.role == Role::Leader;
        if leading == self.leading {
            return Ok(());
        }
        self.leading = leading;
        self.digests_on_role();
        let called = if leading { self.sm.on_leader_start(soft.term) } else { self.sm.on_leader_stop() };
        match called {
            Ok(()) => Ok(()),
            Err(e) if runtime_is_fatal(&e) => Err(self.stop(e)),
            Err(e) => {
                tracing::warn!(group = self.group, leading, error = %e, "leader hook failed");
                Ok(())
            }
        }
    }

    // ------------------------------------------------------------ snapshots

    /// An in-memory state is saved whole at every digest point; its
    /// snapshots come there too and reuse that save (`checkpoint_begin`),
    /// rather than save it again elsewhere, when digests come at least as
    /// often as the snapshot margin (so a snapshot waits at most one more
    /// interval). A kv state's snapshots cost little anywhere.
    fn align_snapshots(&mut self) {
        let interval = self.settings.digest_interval;
        let aligned = !self.sm.uses_kv() && interval > 0 && interval <= self.snapshot_margin_entries;
        self.node.set_snapshot_points(if aligned { interval } else { 0 });
    }

    fn snapshot_and_compact(
        &mut self,
        snapshots: &SnapshotStore,
        meta: waft_raft::SnapshotMeta,
        out: &mut Output,
    ) -> Result<()> {
        if self.digests.status.fence.is_some() {
            // Its state differs from the group's: a snapshot of it must not
            // replace a good one, nor reach another replica.
            tracing::debug!(group = self.group, index = meta.index, "fenced: no snapshot");
            self.node.on_snapshot_save_failed();
            return Ok(());
        }
        let job = match self.begin_snapshot(snapshots, &meta) {
            Ok(job) => job,
            Err(e) => {
                if e.is_fatal() {
                    return Err(e);
                }
                tracing::warn!(group = self.group, index = meta.index, error = %e, "snapshot not saved");
                self.node.on_snapshot_save_failed();
                out.snapshot_failed = Some(e);
                return Ok(());
            }
        };
        if self.background_snapshots {
            // The state (a kv state machine's store, or an in-memory
            // state's save) is written beside the apply path;
            // `snapshot_written` takes it from there.
            out.snapshot_job = Some(job);
            return Ok(());
        }
        let done = job.run();
        self.snapshot_written(done, out)
    }

    /// A snapshot `begin_snapshot` started was written (or not): compacts
    /// the log behind it. For a kv state machine's snapshot written beside
    /// the apply path (`Output::snapshot_job`), the caller hands it back
    /// here once `SnapshotJob::run` returned.
    pub fn snapshot_written(&mut self, done: SnapshotDone, out: &mut Output) -> Result<()> {
        let group = self.group;
        let SnapshotDone { meta, result, bytes, took_ms, epoch } = done;
        let writer = match result {
            Ok(writer) => writer,
            Err(reason) => {
                tracing::warn!(group, index = meta.index, error = %reason, "snapshot not saved");
                self.node.on_snapshot_save_failed();
                out.snapshot_failed = Some(Error::SnapshotNotSaved { group, reason });
                return Ok(());
            }
        };
        // While it was written, the state it captured may have been
        // replaced (an install, a rebuild) or judged to differ from the
        // group's (a fence): then it must not become this node's snapshot.
        if epoch != self.state_epoch
            || self.digests.status.fence.is_some()
            || meta.index <= self.node.snapshot_meta().index
            || meta.index > self.node.applied()
        {
            tracing::info!(group, index = meta.index, "a snapshot written beside the apply path is stale: dropped");
            drop(writer);
            self.node.on_snapshot_save_failed();
            return Ok(());
        }
        if let Err(source) = writer.commit() {
            tracing::warn!(group, index = meta.index, error = %source, "snapshot not saved");
            self.node.on_snapshot_save_failed();
            out.snapshot_failed = Some(Error::Storage { group, source });
            return Ok(());
        }
        if took_ms > 0 {
            tracing::info!(group, index = meta.index, bytes, ms = took_ms, "snapshot written beside the apply path");
        }
        // The log keeps what a store's unsynced commits cover until here.
        self.sync_kv()?;
        // The log's prefix goes in order with the writes still on their way
        // (an append below the snapshot index that is not written yet would
        // meet a log already purged past it): with the next Ready's write,
        // or at once when no write is in flight (`finish_durable`).
        self.purge_pending = Some((meta.index, meta.term));
        tracing::debug!(group, index = meta.index, "snapshot saved; the log is compacted with the next write");
        self.node.on_snapshot_saved(meta.clone());
        out.snapshot_saved = Some(meta);
        // A replica waiting to be rebuilt may take this one.
        self.offer_rebuilds();
        Ok(())
    }

    /// Writes a snapshot at `meta` at once (the group's first, or a test's).
    fn save_local_snapshot(&mut self, snapshots: &SnapshotStore, meta: &waft_raft::SnapshotMeta) -> Result<()> {
        let group = self.group;
        let done = self.begin_snapshot(snapshots, meta)?.run();
        let writer = done.result.map_err(|reason| Error::SnapshotNotSaved { group, reason })?;
        writer.commit().map(drop).map_err(|source| Error::Storage { group, source })
    }

    /// Starts a snapshot at `meta`: the module, the session table and the
    /// settings as they are now, and the state: an in-memory state's save
    /// is started here (the runtime's save job) and a kv
    /// state machine's store is captured as it is now; the job writes
    /// either, and may run on another thread while applies go on.
    fn begin_snapshot(&mut self, snapshots: &SnapshotStore, meta: &waft_raft::SnapshotMeta) -> Result<SnapshotJob> {
        let group = self.group;
        let storage_err = |source| Error::Storage { group, source };
        let mut writer = snapshots
            .begin_save(group, meta.index, meta.term, meta.config.encode(), self.module.hash())
            .map_err(storage_err)?;
        // The module: the job links the newest snapshot's file when it is
        // this very file (the same module, in force since the same index)
        // and still checks out, and writes it otherwise; off this thread,
        // as a module of tens of MiB is that many MiB to read or write.
        let module = SnapshotModule {
            bytes: self.module.bytes().clone(),
            index: self.module_index,
            link: self.module_to_link(snapshots),
        };
        // Taken between apply batches, so no reply is pending.
        let sessions =
            self.sessions.encode_snapshot().map_err(|source| Error::Sessions { group, index: meta.index, source })?;
        for chunk in sessions.chunks(SNAPSHOT_CHUNK_BYTES_MAX) {
            writer.append(SESSIONS_FILE, chunk).map_err(storage_err)?;
        }
        writer.append(SETTINGS_FILE, &self.settings.encode_file(self.settings_index)).map_err(storage_err)?;
        // Created up front, so a guest whose state is empty still has its file.
        writer.append(STATE_FILE, &[]).map_err(storage_err)?;
        let kv = match self.sm.kv_snapshot() {
            Ok(kv) => kv,
            Err(e) => return Err(self.runtime_err(e)),
        };
        let state = match kv {
            Some(_) => None,
            // The save of the digest point this snapshot sits on
            // (`set_snapshot_points`), or one started now; either may still
            // be running on another thread.
            None => match self.sm.checkpoint_begin() {
                Ok(state) => Some(state),
                Err(e) => return Err(self.runtime_err(e)),
            },
        };
        Ok(SnapshotJob { meta: meta.clone(), writer, module, kv, state, epoch: self.state_epoch })
    }

    /// The newest snapshot, held open, when its meta says it holds the
    /// module file this snapshot would write (same module, same size); the
    /// job checks the file itself before it links it.
    fn module_to_link(&self, snapshots: &SnapshotStore) -> Option<waft_storage::SnapshotReader> {
        let latest = snapshots.latest(self.group)?;
        // Held until the job links, so that the snapshot is not deleted meanwhile.
        let reader = snapshots.open_for_transfer(self.group, latest).ok()?;
        let file = reader.meta().files.iter().find(|f| f.name == MODULE_FILE)?;
        let size = (module_file::file_header(0).len() + self.module.bytes().len()) as u64;
        (reader.meta().module_hash == self.module.hash() && file.size == size).then_some(reader)
    }

    /// Verifies the snapshot's module and configuration and loads its state
    /// into the state machine.
    fn load_snapshot(&mut self, reader: &SnapshotReader) -> Result<waft_raft::SnapshotMeta> {
        let group = self.group;
        let stored = reader.meta();
        let meta = convert::snapshot_meta_from_storage(stored)
            .map_err(|e| Error::Install { group, reason: format!("snapshot {}/{}: {e}", stored.index, stored.term) })?;
        // The settings, the table and the module first: reading them changes
        // nothing, so a bad one leaves the state as it was.
        let (settings_index, settings) = self.read_settings(reader, meta.index)?;
        let sessions = self.read_sessions(reader, meta.index, &settings)?;
        let (module_index, mut switch_to) = self.snapshot_module(reader)?;
        if switch_to.is_none() && settings.guest_differs(&self.settings) {
            // Same module, other limits: a new instance all the same.
            switch_to = Some(self.module.clone());
        }
        let path = reader.file_path(STATE_FILE).map_err(|source| Error::Storage { group, source })?;
        let file = std::fs::File::open(&path)
            .map_err(|e| Error::Install { group, reason: format!("cannot open {}: {e}", path.display()) })?;
        // Sized so the load gets its fuel for every byte (0 if unknown:
        // the base budget).
        let state_bytes = file.metadata().map_or(0, |m| m.len());
        let state = std::io::BufReader::new(file);
        // A kv state machine's store may come as its own files instead.
        let mut kv_files = Vec::new();
        for f in &stored.files {
            if let Some(name) = f.name.strip_prefix(KV_FILE_PREFIX) {
                let path = reader.file_path(&f.name).map_err(|source| Error::Storage { group, source })?;
                kv_files.push((name.to_string(), path));
            }
        }
        let load = |sm: &mut StateMachine, state| {
            if kv_files.is_empty() { sm.load_snapshot_of(state, state_bytes) } else { sm.restore_kv(&kv_files) }
        };
        match switch_to {
            None => load(&mut self.sm, state).map_err(|e| self.runtime_err(e))?,
            Some(module) => {
                let hash = module.hash().to_hex();
                let refuse = |what: &str, e: RuntimeError| Error::Install {
                    group,
                    reason: format!("snapshot {}: its module {hash} {what}: {e}", meta.index),
                };
                let limits = settings.limits(&self.local_limits);
                let mut sm = StateMachine::for_group(module.module(), limits, self.group, &self.label)
                    .map_err(|e| refuse("cannot start", e))?;
                self.adopt(&mut sm);
                match load(&mut sm, state) {
                    Ok(()) => {}
                    // A store left half loaded: nothing to go on with.
                    Err(e) if runtime_is_fatal(&e) => return Err(self.stop(e)),
                    Err(e) => return Err(refuse("cannot load the snapshot's state", e)),
                }
                tracing::info!(group, index = meta.index, module = %hash, since = module_index, "module switched by a snapshot (or its limits)");
                self.give_hooks(&mut sm);
                self.sm = sm;
                self.module = module;
            }
        }
        self.module_index = module_index;
        self.sessions = sessions;
        self.settings = settings;
        self.settings_index = settings_index;
        self.state_epoch += 1;
        self.record_all(meta.index)?;
        Ok(meta)
    }

    /// The module a snapshot was made by: the index it took effect at, and
    /// the module itself when it is not the one running (loaded and checked).
    fn snapshot_module(&self, reader: &SnapshotReader) -> Result<(u64, Option<GuestModule>)> {
        let group = self.group;
        let stored = reader.meta();
        let running = stored.module_hash == self.module.hash();
        if !stored.files.iter().any(|f| f.name == MODULE_FILE) {
            // Only a snapshot of the running module may come without it.
            if running {
                return Ok((self.module_index, None));
            }
            return Err(Error::ModuleMismatch {
                group,
                index: stored.index,
                snapshot_module: stored.module_hash.to_hex(),
                running_module: self.module.hash().to_hex(),
            });
        }
        let path = reader.file_path(MODULE_FILE).map_err(|source| Error::Storage { group, source })?;
        let bad = |reason: String| Error::Install { group, reason: format!("snapshot {}: {reason}", stored.index) };
        let file = module_file::read_file(&path, &stored.module_hash, !running).map_err(bad)?;
        let Some(bytes) = file.bytes else {
            return Ok((file.index, None));
        };
        let module = match self.prepared.as_ref() {
            Some(prepared) if prepared.hash() == stored.module_hash => prepared.clone(),
            _ => GuestModule::load(self.module.engine(), bytes)
                .map_err(|e| bad(format!("its module {}: {e}", stored.module_hash.to_hex())))?,
        };
        Ok((file.index, Some(module)))
    }

    /// Reads and checks the group settings of the snapshot at `index`.
    fn read_settings(&self, reader: &SnapshotReader, index: u64) -> Result<(u64, GroupSettings)> {
        let group = self.group;
        if !reader.meta().files.iter().any(|f| f.name == SETTINGS_FILE) {
            return Err(Error::Install {
                group,
                reason: format!(
                    "snapshot {index} has no `{SETTINGS_FILE}` file: an older waft wrote it, when group settings \
                     were per-node flags; this waft cannot read it. Start the node from an empty data directory \
                     (it catches up from its peers)"
                ),
            });
        }
        let path = reader.file_path(SETTINGS_FILE).map_err(|source| Error::Storage { group, source })?;
        let io_err =
            |e: std::io::Error| Error::Install { group, reason: format!("cannot read {}: {e}", path.display()) };
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .map_err(io_err)?
            .take(SETTINGS_FILE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        let (settings_index, settings) = GroupSettings::decode_file(&bytes)
            .map_err(|e| Error::Install { group, reason: format!("snapshot {index}: {e}") })?;
        if settings_index > index {
            return Err(Error::Install {
                group,
                reason: format!("snapshot {index} holds settings of entry {settings_index}, past the snapshot"),
            });
        }
        Ok((settings_index, settings))
    }

    /// Reads and checks the session table of the snapshot at `index`, made
    /// under `settings`.
    fn read_sessions(&self, reader: &SnapshotReader, index: u64, settings: &GroupSettings) -> Result<SessionTable> {
        let group = self.group;
        let cfg = settings.sessions.clone();
        let bytes_max = waft_session::snapshot_bytes_max(&cfg);
        let path = reader.file_path(SESSIONS_FILE).map_err(|source| Error::Storage { group, source })?;
        let io_err =
            |e: std::io::Error| Error::Install { group, reason: format!("cannot read {}: {e}", path.display()) };
        let file = std::fs::File::open(&path).map_err(io_err)?;
        // One byte past the bound is enough for the decoder to refuse it.
        let mut bytes = Vec::new();
        file.take(bytes_max.saturating_add(1)).read_to_end(&mut bytes).map_err(io_err)?;
        let table =
            SessionTable::decode_snapshot(cfg, &bytes).map_err(|source| Error::Sessions { group, index, source })?;
        if table.last_index() > index {
            return Err(Error::Install {
                group,
                reason: format!(
                    "snapshot {index} holds a session table applied up to entry {}, past the snapshot",
                    table.last_index()
                ),
            });
        }
        Ok(table)
    }

    /// Makes the log agree with a snapshot now in force: entries after it stay
    /// only if the log holds the snapshot's last entry with the same term
    /// (as the core does), and everything up to it goes.
    fn align_log(&mut self, store: &mut dyn LogStore, meta: &waft_raft::SnapshotMeta) -> Result<()> {
        let group = self.group;
        let log = store.log_state(group);
        if log.purged_index >= meta.index {
            return Ok(());
        }
        let mut set = WriteSet::new();
        let suffix_matches = store.term(group, meta.index).ok() == Some(meta.term);
        if log.last_index > meta.index && !suffix_matches {
            set.truncate(group, meta.index + 1);
        }
        set.purge(group, meta.index, meta.term);
        store.write(set).map_err(|e| self.stop(e))?;
        self.stored_last_index = store.last_index(group);
        Ok(())
    }

    /// Starts receiving the snapshot the core asked for (`Output::snapshot_install`),
    /// given the storage meta the leader sent for it.
    pub fn begin_install(&mut self, snapshots: &SnapshotStore, stored: waft_storage::SnapshotMeta) -> Result<Install> {
        self.check_running()?;
        let group = self.group;
        let refuse = |reason: String| Error::Install { group, reason };
        let Some(pending) = &self.installing else {
            return Err(refuse("no snapshot install is pending".to_string()));
        };
        let meta = convert::snapshot_meta_from_storage(&stored)
            .map_err(|e| refuse(format!("the leader's snapshot meta: {e}")))?;
        if meta != pending.meta {
            return Err(refuse(format!(
                "the leader sent snapshot {}/{}, the core asked for {}/{}",
                meta.index, meta.term, pending.meta.index, pending.meta.term
            )));
        }
        // The snapshot carries its module; `finish_install` loads it.
        let writer =
            snapshots.begin_install(group, stored.clone()).map_err(|source| Error::Storage { group, source })?;
        Ok(Install { writer, stored, meta })
    }

    /// Gives up the pending install (transfer failed); the leader resends later.
    pub fn abandon_install(&mut self) {
        self.installing = None;
        self.node.on_snapshot_install_failed();
    }

    /// Commits a fully received snapshot (checksums verified), loads it into
    /// the state machine, aligns the log and tells the core. On a non-fatal
    /// error the install is abandoned and the leader will send it again.
    pub fn finish_install(
        &mut self,
        store: &mut dyn LogStore,
        snapshots: &SnapshotStore,
        install: Install,
    ) -> Result<()> {
        self.check_running()?;
        let group = self.group;
        if self.installing.as_ref().map(|i| &i.meta) != Some(&install.meta) {
            // A newer install superseded this one; it stays pending.
            return Err(Error::Install {
                group,
                reason: format!(
                    "snapshot {}/{} is no longer the one the core waits for",
                    install.meta.index, install.meta.term
                ),
            });
        }
        let meta = install.meta;
        if meta.index <= self.node.committed() && self.rebuilds_from(meta.index) && self.node.can_rebuild_from(&meta) {
            return self.rebuild_from(store, snapshots, install.writer, meta);
        }
        if meta.index <= self.node.committed() {
            // The log got us past the snapshot meanwhile (a new leader that
            // still had the entries), or a rebuild offer this replica no
            // longer takes: loading it would roll the state back, or apply
            // the entries after it twice. The core only acknowledges a
            // snapshot at or below its commit.
            self.installing = None;
            self.node.on_snapshot_installed(meta);
            return Ok(());
        }
        self.commit_and_load(store, snapshots, install.writer, &meta)?;
        tracing::info!(group, index = meta.index, term = meta.term, "snapshot installed");
        self.node.on_snapshot_installed(meta.clone());
        if self.digests.status.fence.is_some() && !self.digests.manual {
            // A fenced replica far enough behind takes the ordinary path.
            self.rebuilt(meta.index);
        }
        Ok(())
    }

    /// Commits a fully received snapshot, loads it into the state machine
    /// and aligns the log with it (a suffix that continues it stays). On a
    /// non-fatal error the install is abandoned and offered again later.
    fn commit_and_load(
        &mut self,
        store: &mut dyn LogStore,
        snapshots: &SnapshotStore,
        writer: SnapshotWriter,
        meta: &waft_raft::SnapshotMeta,
    ) -> Result<()> {
        let group = self.group;
        let loaded = writer
            .commit()
            .and_then(|stored| snapshots.open_snapshot(group, stored.id()))
            .map_err(|source| Error::Storage { group, source })
            .and_then(|reader| self.load_snapshot(&reader));
        if let Err(e) = loaded {
            if !e.is_fatal() {
                self.abandon_install();
            }
            return Err(e);
        }
        self.align_log(store, meta)?;
        self.installing = None;
        Ok(())
    }

    /// A fenced replica loads a healthy replica's snapshot at or below
    /// what it applied, and applies the log it kept after it again.
    fn rebuild_from(
        &mut self,
        store: &mut dyn LogStore,
        snapshots: &SnapshotStore,
        writer: SnapshotWriter,
        meta: waft_raft::SnapshotMeta,
    ) -> Result<()> {
        // The log after the snapshot stays: it is the group's.
        self.commit_and_load(store, snapshots, writer, &meta)?;
        if !self.node.on_state_rebuilt(meta.clone()) {
            // Checked before the load: the state went back to the snapshot,
            // and the core would not apply the entries after it again.
            return Err(self.stop(format!("the core refused a rebuild from snapshot {} it had accepted", meta.index)));
        }
        self.rebuilt(meta.index);
        Ok(())
    }

    // ------------------------------------------------------------ errors

    fn check_running(&self) -> Result<()> {
        match &self.stopped {
            Some(reason) => Err(stopped(self.group, reason.clone())),
            None => Ok(()),
        }
    }

    /// Stops the replica for good and returns the error saying why.
    fn stop(&mut self, why: impl std::fmt::Display) -> Error {
        let reason = why.to_string();
        tracing::error!(group = self.group, %reason, "replica stopped");
        self.stopped = Some(reason.clone());
        stopped(self.group, reason)
    }

    fn runtime_err(&mut self, e: RuntimeError) -> Error {
        if runtime_is_fatal(&e) { self.stop(e) } else { Error::Runtime { group: self.group, source: e } }
    }

    fn raft_err(&self, source: waft_raft::RaftError) -> Error {
        Error::Raft { group: self.group, source }
    }
}

/// Whether a call was stopped by the wall-clock backstop: an outcome that
/// depends on this machine's speed, never one to decide an entry by.
fn hit_backstop(e: &RuntimeError) -> bool {
    matches!(e, RuntimeError::Backstop(_))
        || matches!(e, RuntimeError::Fault(f) if f.kind == waft_runtime::FaultKind::Backstop)
}

fn stopped(group: u64, reason: String) -> Error {
    Error::Stopped { group, reason }
}

/// Client entries on their way through one apply batch.
#[derive(Default)]
struct Batch {
    /// The commands the guest runs, in log order.
    entries: Vec<waft_runtime::Entry>,
    /// Every client entry of the batch, in log order.
    /// Invariant: `len() <= apply_batch_entries_max`.
    slots: Vec<Slot>,
}

/// One client entry of a batch.
enum Slot {
    /// The guest runs `entries[at]`; a session command's reply goes back to
    /// the table with `ticket`.
    Guest { index: u64, term: u64, at: usize, ticket: Option<Ticket> },
    /// A copy of the session command at `original_index`, earlier in this
    /// batch: it gets that entry's result.
    Copy { index: u64, term: u64, original_index: u64 },
    /// The session table answered already; the guest never sees it.
    Answer { index: u64, term: u64, outcome: Outcome },
}

/// The guest's snapshot stream, written into `STATE_FILE` of a snapshot
/// writer. Owns the writer because the runtime wants a `'static` sink.
struct StateSink {
    writer: SnapshotWriter,
}

/// A snapshot being written (see `Replica::begin_snapshot`): what is left
/// is a kv state machine's store, if anything; `Replica::snapshot_written`
/// commits it, or drops it if the state it captured went stale meanwhile.
pub struct SnapshotJob {
    meta: waft_raft::SnapshotMeta,
    writer: waft_storage::SnapshotWriter,
    module: SnapshotModule,
    kv: Option<waft_runtime::KvSnapshot>,
    /// An in-memory state's bytes, saved or on their way.
    state: Option<waft_runtime::machine::SavedState>,
    /// The replica's `state_epoch` when the state was captured.
    epoch: u64,
}

impl std::fmt::Debug for SnapshotJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotJob").field("index", &self.meta.index).finish_non_exhaustive()
    }
}

/// The module file a snapshot job writes, or links from the newest
/// snapshot (`link`) when that one's file is this one, byte for byte.
struct SnapshotModule {
    bytes: Bytes,
    /// The index the module took effect at (the file's header).
    index: u64,
    link: Option<waft_storage::SnapshotReader>,
}

impl SnapshotModule {
    fn write(self, writer: &mut waft_storage::SnapshotWriter) -> waft_storage::Result<()> {
        let header = module_file::file_header(self.index);
        if let Some(reader) = &self.link
            && let Some(file) = reader.meta().files.iter().find(|f| f.name == MODULE_FILE)
            && let Ok(path) = reader.file_path(MODULE_FILE)
            // Its bytes as they are on disk now: damage there is not
            // carried into this snapshot (it is written afresh instead).
            && std::fs::read(&path).is_ok_and(|on_disk| {
                on_disk.len() as u64 == file.size
                    && crc32fast::hash(&on_disk) == file.crc32
                    && on_disk.get(..header.len()) == Some(&header[..])
                    && on_disk.get(header.len()..) == Some(&self.bytes[..])
            })
            && writer.link(MODULE_FILE, &path, file.size, file.crc32).is_ok()
        {
            return Ok(());
        }
        std::iter::once(&header[..])
            .chain(self.bytes.chunks(SNAPSHOT_CHUNK_BYTES_MAX))
            .try_for_each(|chunk| writer.append(MODULE_FILE, chunk))
    }
}

/// How a `SnapshotJob` ended, for `Replica::snapshot_written`.
pub struct SnapshotDone {
    meta: waft_raft::SnapshotMeta,
    /// The written snapshot, not committed yet, or why it could not be.
    result: std::result::Result<waft_storage::SnapshotWriter, String>,
    /// Bytes of state written by the job, and how long it took (0 for a
    /// snapshot finished in place).
    bytes: u64,
    took_ms: u64,
    epoch: u64,
}

impl SnapshotJob {
    /// The index the snapshot is at.
    pub fn index(&self) -> u64 {
        self.meta.index
    }

    /// Writes what is left. May take long (a store of gigabytes): off any
    /// async worker, and off the group's apply path, which goes on
    /// meanwhile.
    pub fn run(self) -> SnapshotDone {
        let started = std::time::Instant::now();
        let SnapshotJob { meta, mut writer, module, kv, state, epoch } = self;
        if let Err(e) = module.write(&mut writer) {
            return SnapshotDone { meta, result: Err(e.to_string()), bytes: 0, took_ms: 0, epoch };
        }
        let mut bytes = 0;
        let result = match (&kv, &state) {
            (None, Some(state)) => state.wait().map_err(|e| e.to_string()).and_then(|state| {
                let mut writer = writer;
                for chunk in state.chunks(SNAPSHOT_CHUNK_BYTES_MAX) {
                    writer.append(STATE_FILE, chunk).map_err(|e| e.to_string())?;
                }
                bytes = state.len() as u64;
                Ok(writer)
            }),
            (kv, _) => match kv {
                Some(kv) => match kv.files() {
                    // The store's own files (a checkpoint), moved in whole.
                    Some(files) => files.and_then(|files| {
                        let mut writer = writer;
                        for f in files {
                            let name = format!("{KV_FILE_PREFIX}{}", f.name);
                            writer.adopt(&name, &f.path, f.size, f.crc32).map_err(|e| e.to_string())?;
                            bytes += f.size;
                        }
                        Ok(writer)
                    }),
                    None => kv.write_to(StateSink { writer }).map(|(sink, written)| {
                        bytes = written;
                        sink.writer
                    }),
                },
                None => Ok(writer),
            },
        };
        let took_ms = if kv.is_some() || state.is_some() { started.elapsed().as_millis().max(1) as u64 } else { 0 };
        SnapshotDone { meta, result, bytes, took_ms, epoch }
    }

    /// What `SnapshotDone::failed` needs, taken before the job moves to
    /// its thread.
    pub fn identity(&self) -> (waft_raft::SnapshotMeta, u64) {
        (self.meta.clone(), self.epoch)
    }
}

impl SnapshotDone {
    /// A job's end when it could not run to its end (its thread failed).
    pub fn failed((meta, epoch): (waft_raft::SnapshotMeta, u64), why: String) -> SnapshotDone {
        SnapshotDone { meta, result: Err(why), bytes: 0, took_ms: 0, epoch }
    }
}

impl Write for StateSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(SNAPSHOT_CHUNK_BYTES_MAX);
        self.writer.append(STATE_FILE, &buf[..n]).map_err(std::io::Error::other)?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
