//! A cluster of `waft_node::Replica`s, the very code a node runs, each over
//! a simulated disk: a log store whose crash loses exactly what was not
//! synced (`SimDisk`), a snapshot store in a directory of its own, and the
//! simulator's native registers as the state machine under the replica's
//! session table. Every Ready goes through the replica's pipeline as the
//! daemon drives it: messages that need not wait leave at once, the write
//! waits for a simulated sync (`sync_one`), the committed entries apply
//! meanwhile, and the Ready finishes once its write is durable. Safety is
//! checked on every Ready before it applies. It owns no network and no
//! clock: the driver (the random simulator) routes `outbox`, schedules the
//! syncs and installs, and sets `now`. Must never use randomness of its own,
//! so runs stay reproducible.

use crate::model::{Command, Kv, Outcome};
pub use crate::raft_cluster::{Checker, Note};
use crate::raft_cluster::{describe_node, leader_of, trace_message};
use crate::rng::{FNV_START, fnv};
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::OnceLock;
use waft_node::{GuestModule, Output, PendingReady, Replica, ReplicaConfig, WriteToken};
use waft_raft::*;
use waft_session::{Body, Envelope, SessionConfig};
use waft_storage::{LogStore, MemLogStore, Op, SnapshotId, SnapshotStore, WriteSet};

/// The one group every simulated node serves.
pub const GROUP: u64 = 1;
/// The module file that names the simulator's registers.
const REGISTERS_MODULE: &[u8] = b"waft-bench-native:registers";

/// The engine every simulated replica shares, made once per process (it
/// runs no wasm: the registers are native).
fn founding_module() -> GuestModule {
    static MODULE: OnceLock<GuestModule> = OnceLock::new();
    MODULE
        .get_or_init(|| {
            let engine = waft_runtime::Engine::new().expect("a wasm engine").with_native_machines();
            GuestModule::load(&engine, Bytes::from_static(REGISTERS_MODULE)).expect("the registers load")
        })
        .clone()
}

/// A node's disk: what its process sees (`cache`, every write that
/// returned) and what survives a power loss (`durable`, every write up to
/// the last sync). A write that must be durable syncs everything before it,
/// as RocksDB's sequential log does; a write of lazy hard states alone does
/// not.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    cache: MemLogStore,
    durable: MemLogStore,
    /// Writes in `cache` and not yet in `durable`, oldest first.
    unsynced: Vec<WriteSet>,
}

impl SimDisk {
    /// A power loss: every write since the last sync is gone.
    pub fn lose_unsynced(&mut self) {
        self.cache = self.durable.clone();
        self.unsynced.clear();
    }

    /// The term of the synced entry at `index`, if the disk holds one there.
    pub fn durable_term(&self, index: u64) -> Option<u64> {
        self.durable.term(GROUP, index).ok()
    }

    /// The hard state a power loss would leave.
    pub fn durable_hard_state(&self) -> waft_storage::HardState {
        self.durable.hard_state(GROUP)
    }
}

impl LogStore for SimDisk {
    fn write(&mut self, set: WriteSet) -> waft_storage::Result<()> {
        let sync = set.must_sync();
        self.cache.write(set.clone())?;
        self.unsynced.push(set);
        if sync {
            for s in self.unsynced.drain(..) {
                self.durable.write(s).expect("a write the cache took is valid on the durable state");
            }
        }
        Ok(())
    }

    fn log_state(&self, group: u64) -> waft_storage::LogState {
        self.cache.log_state(group)
    }

    fn term(&self, group: u64, index: u64) -> waft_storage::Result<u64> {
        self.cache.term(group, index)
    }

    fn entries(
        &self,
        group: u64,
        lo: u64,
        hi: u64,
        max_bytes: u64,
    ) -> waft_storage::Result<Vec<waft_storage::LogEntry>> {
        self.cache.entries(group, lo, hi, max_bytes)
    }

    fn hard_state(&self, group: u64) -> waft_storage::HardState {
        self.cache.hard_state(group)
    }

    fn config_entries(&self, group: u64) -> waft_storage::Result<Vec<waft_storage::LogEntry>> {
        self.cache.config_entries(group)
    }

    fn groups(&self) -> Vec<u64> {
        self.cache.groups()
    }
}

/// How a node goes down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crash {
    /// The process dies (SIGKILL): writes it handed to the disk survive in
    /// the page cache; writes still queued in the process are gone.
    Process,
    /// The machine loses power: everything not synced is gone too.
    Power,
}

pub struct SimNode {
    pub id: NodeId,
    pub cfg: ReplicaConfig,
    pub replica: Option<Replica>,
    pub disk: SimDisk,
    pub snaps: SnapshotStore,
    /// Ready writes handed to the disk queue and not yet written, oldest
    /// first, with the token the replica knows each by.
    writes: VecDeque<(WriteToken, WriteSet)>,
    /// The snapshot the core asked for, to be pulled from its sender.
    pub install: Option<SnapshotInstall>,
    /// The last entry the state machine applied (as the checker saw it).
    pub sm_applied: u64,
    /// Reads confirmed by Raft, waiting for the local apply index: (id, index).
    pub reads: Vec<(u64, u64)>,
    /// Every committed copy of a session command applies (negative control).
    no_dedup: bool,
    pub incarnation: u64,
}

impl SimNode {
    pub fn raft(&self) -> Option<&RawNode> {
        self.replica.as_ref().map(|r| r.raft())
    }
}

pub struct Cluster {
    /// The simulated monotonic clock (the driver sets it before each event);
    /// every node reads it before a tick, a message or a read.
    pub now: u64,
    pub nodes: BTreeMap<NodeId, SimNode>,
    pub check: Checker,
    /// index -> (term, files with their sizes and checksums) of the first
    /// snapshot saved or installed at that index: every later one must equal it.
    snapshots: BTreeMap<u64, (u64, Vec<waft_storage::SnapshotFile>)>,
    /// Set once a node was made to diverge: snapshots at one index may
    /// then differ (a diverged node's, or one installed from it, until the
    /// verdict and rebuild), so they are no longer compared.
    snapshots_may_differ: bool,
    /// Client entries by index, as the checker saw them committed: the
    /// operation id of the register command each carries.
    ops: BTreeMap<u64, u64>,
    pub outbox: Vec<Message>,
    pub notes: Vec<Note>,
    pub events: Vec<(NodeId, Event)>,
    /// Nodes whose state may have changed since the driver last looked (drivers clear it).
    pub touched: Vec<NodeId>,
    /// Every read state handed out, in order (drivers may clear it).
    pub read_states: Vec<(NodeId, ReadState)>,
    /// Stable trace hash over everything nodes emitted.
    pub trace_hash: u64,
    pub trace: Option<Vec<String>>,
    /// The directory holding every node's snapshots; removed on drop.
    root: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Where a run keeps its snapshot files: `WAFT_SIM_DIR`, else memory-backed
/// /dev/shm where there is one, else the temporary directory.
fn run_dir() -> PathBuf {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let base = match std::env::var_os("WAFT_SIM_DIR") {
        Some(d) => PathBuf::from(d),
        None if std::path::Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
        None => std::env::temp_dir(),
    };
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    base.join(format!("waft-sim-{}-{n}", std::process::id()))
}

/// What the simulator's node settings are made of.
pub struct NodeSettings {
    pub raft: Config,
    pub sessions: SessionConfig,
    pub digest_interval: u64,
}

/// The register a diverging node writes (`Cluster::diverge`): no client
/// uses it, so what clients see stays the group's while the states differ.
pub const HIDDEN_REGISTER: u8 = 255;

impl Cluster {
    /// Nodes `ids`, the first `voters` of which form the bootstrap configuration.
    pub fn new(
        ids: &[NodeId],
        voters: &[NodeId],
        dedup: bool,
        mut settings: impl FnMut(NodeId) -> NodeSettings,
    ) -> Cluster {
        let root = run_dir();
        let mut nodes = BTreeMap::new();
        for &id in ids {
            let s = settings(id);
            let mut cfg = ReplicaConfig::new(s.raft);
            cfg.sessions = s.sessions;
            cfg.digest_interval = s.digest_interval;
            let snaps = SnapshotStore::open(root.join(format!("node-{id}"))).expect("a snapshot directory");
            let mut disk = SimDisk::default();
            let boot: &[NodeId] = if voters.contains(&id) { voters } else { &[] };
            let mut replica =
                Replica::open(GROUP, cfg.clone(), &mut disk, &snaps, &founding_module(), boot).expect("a new replica");
            if !dedup {
                replica.inject_no_dedup();
            }
            let node = SimNode {
                id,
                cfg,
                replica: Some(replica),
                disk,
                snaps,
                writes: VecDeque::new(),
                install: None,
                sm_applied: 0,
                reads: Vec::new(),
                no_dedup: !dedup,
                incarnation: 0,
            };
            nodes.insert(id, node);
        }
        Cluster {
            now: 0,
            nodes,
            check: Checker::default(),
            snapshots: BTreeMap::new(),
            snapshots_may_differ: false,
            ops: BTreeMap::new(),
            outbox: Vec::new(),
            notes: Vec::new(),
            events: Vec::new(),
            read_states: Vec::new(),
            touched: Vec::new(),
            trace_hash: FNV_START,
            trace: None,
            root,
        }
    }

    pub fn raft(&self, id: NodeId) -> &RawNode {
        self.replica(id).raft()
    }

    pub fn replica(&self, id: NodeId) -> &Replica {
        self.nodes[&id].replica.as_ref().expect("node is up")
    }

    fn replica_mut(&mut self, id: NodeId) -> &mut Replica {
        self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut()).expect("node is up")
    }

    /// Node `id` also runs a command no other node runs (it writes the
    /// hidden register) at its next client entry: its state differs.
    pub fn diverge(&mut self, id: NodeId) {
        self.snapshots_may_differ = true;
        let Some(replica) = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut()) else { return };
        let command = crate::model::Command { op_id: 0, key: HIDDEN_REGISTER, op: crate::model::Op::Incr };
        let at = replica.applied_index() + 1;
        replica.inject_extra_command(at, command.encode());
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.replica.is_some())
    }

    pub fn leader(&self) -> Option<NodeId> {
        leader_of(self.nodes.values().filter_map(|n| n.raft()))
    }

    /// One line per node: role, term, indexes and configuration (for failure reports).
    pub fn describe(&self) -> Vec<String> {
        self.nodes.values().map(|n| describe_node(n.id, n.raft(), n.sm_applied)).collect()
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            t.push(line());
        }
    }

    fn read_clock(&mut self, id: NodeId) {
        let now = self.now;
        if let Some(r) = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut()) {
            r.set_clock(now);
        }
    }

    /// The runtime saw the node of `id`'s leader go: wakes a quiet group.
    pub fn wake(&mut self, id: NodeId) {
        if self.is_up(id) {
            self.replica_mut(id).wake();
            self.process(id);
        }
    }

    pub fn tick(&mut self, id: NodeId) {
        if self.is_up(id) {
            self.read_clock(id);
            self.replica_mut(id).tick();
            self.process(id);
        }
    }

    pub fn step(&mut self, m: Message) {
        let to = m.to;
        if !self.is_up(to) {
            return;
        }
        trace_message(&mut self.trace_hash, &mut self.trace, &m);
        self.read_clock(to);
        self.replica_mut(to).step(m);
        self.process(to);
    }

    /// A client's proposal at `id`, as the daemon makes it.
    pub fn propose(&mut self, id: NodeId, envelope: &Envelope) -> Result<(u64, u64), RaftError> {
        self.read_clock(id);
        let r = self.replica_mut(id).propose(envelope).map_err(core_error);
        self.process(id);
        r
    }

    /// A client's read at `id`: its read index is asked for now.
    pub fn read_index(&mut self, id: NodeId, read_id: u64, mode: ReadMode) -> Result<(), RaftError> {
        self.read_clock(id);
        let r = self.replica_mut(id).read_index(read_id, mode).map_err(core_error);
        self.process(id);
        r
    }

    /// An operator's call on `id` (membership, transfer), as the daemon makes it.
    pub fn admin(
        &mut self,
        id: NodeId,
        call: impl FnOnce(&mut Replica) -> waft_node::Result<()>,
    ) -> Result<(), RaftError> {
        self.read_clock(id);
        let r = call(self.replica_mut(id)).map_err(core_error);
        self.process(id);
        r
    }

    /// Runs node `id`'s Readies through its pipeline (bounded), as the
    /// daemon's driver does: each one's write joins the disk queue, its
    /// committed entries apply at once.
    pub fn process(&mut self, id: NodeId) {
        if self.touched.last() != Some(&id) {
            self.touched.push(id);
        }
        for _ in 0..READY_ROUNDS_MAX {
            let mut sent = Vec::new();
            let Some(node) = self.nodes.get_mut(&id) else { return };
            let Some(replica) = node.replica.as_mut() else { return };
            let begun = replica.begin_ready(&mut |m| sent.push(m));
            // A digest report may leave even when no Ready begins.
            self.outbox.extend(sent);
            let Some(mut pending) = begun.unwrap_or_else(|e| panic!("node {id}: {e}")) else { break };
            self.observe(id, &pending);
            let write = pending.take_write();
            let node = self.nodes.get_mut(&id).expect("node");
            let replica = node.replica.as_mut().expect("up");
            let mut out = Output::default();
            replica
                .apply_ready(&mut pending, &node.snaps, &mut out)
                .unwrap_or_else(|e| panic!("node {id}: apply: {e}"));
            let token = replica.enqueue_ready(pending);
            if !write.is_empty() {
                if self.trace.is_some() {
                    let line = format!("node {id}: write {token:?} queued: {}", brief_write(&write));
                    self.log(|| line);
                }
                let node = self.nodes.get_mut(&id).expect("node");
                node.writes.push_back((token, write));
            }
            self.settle(id, out);
            self.finish_durable(id);
        }
        self.serve_reads(id);
    }

    /// Safety checks on a Ready before it applies.
    fn observe(&mut self, id: NodeId, pending: &PendingReady) {
        let rd = pending.ready();
        if let Some(hs) = &rd.hard_state {
            self.check.saw_commit(id, hs);
        }
        if let Some(ss) = rd.soft_state {
            self.trace_hash = fnv(self.trace_hash, &[id as u8, ss.role as u8, ss.term as u8]);
            self.log(|| format!("node {id}: {:?} term {} leader {}", ss.role, ss.term, ss.leader));
            if ss.role == Role::Leader {
                self.on_new_leader(id, ss.term);
            }
        }
        for e in &rd.events {
            self.log(|| format!("node {id}: {e:?}"));
            self.events.push((id, e.clone()));
        }
        if let Some(first) = rd.entries.first() {
            let prev_term = self.raft(id).term_at(first.index - 1).unwrap_or(u64::MAX);
            self.check.saw_entries(id, prev_term, &rd.entries);
        }
        // State-machine safety: every node applies the same entry at an index, in order.
        for e in &rd.committed_entries {
            let node = self.nodes.get_mut(&id).expect("node");
            assert_eq!(e.index, node.sm_applied + 1, "node {id} applies out of order");
            // A replica applies only what its own disk holds synced.
            assert_eq!(
                node.disk.durable_term(e.index),
                Some(e.term),
                "node {id} applies entry {}/{} before its disk holds it synced",
                e.index,
                e.term
            );
            node.sm_applied = e.index;
            self.check.saw_applied(id, e);
            if let Some(op_id) = op_of(&e.data) {
                self.ops.insert(e.index, op_id);
            }
        }
        for rs in &rd.read_states {
            self.read_states.push((id, *rs));
            self.nodes.get_mut(&id).expect("node").reads.push((rs.id, rs.index));
        }
    }

    fn on_new_leader(&mut self, id: NodeId, term: u64) {
        let raft = self.nodes[&id].replica.as_ref().expect("node is up").raft();
        self.check.saw_leader(raft, term);
    }

    /// What a Ready produced: answers for clients, snapshots to check, an
    /// install to schedule.
    fn settle(&mut self, id: NodeId, out: Output) {
        for a in out.applied {
            let outcome = self.outcome(a.index, a.outcome);
            if outcome != Outcome::NotClient {
                self.notes.push(Note::Applied { node: id, index: a.index, term: a.term, outcome });
            }
        }
        if let Some(e) = out.snapshot_failed {
            panic!("node {id}: snapshot not saved: {e}");
        }
        if let Some(meta) = out.snapshot_saved {
            self.check_snapshot(id, SnapshotId { index: meta.index, term: meta.term });
        }
        if let Some(inst) = out.snapshot_install {
            self.nodes.get_mut(&id).expect("node").install = Some(inst);
        }
        if let Some(finished) = out.install_finished {
            match finished {
                Ok(sid) if self.nodes[&id].snaps.open_snapshot(GROUP, sid).is_err() => {
                    // Not loaded: the log already held what it covers (a
                    // rebuild offer a node no longer takes, or a new leader
                    // that still had the entries).
                    let committed = self.nodes[&id].raft().map_or(0, |r| r.committed());
                    assert!(sid.index <= committed, "node {id}: install of {sid:?} reported done, but not stored");
                    self.log(|| format!("node {id}: snapshot {} not needed", sid.index));
                }
                Ok(sid) => {
                    let node = self.nodes.get_mut(&id).expect("node");
                    // At the snapshot: past what it had applied (an install),
                    // or back from it (a fenced node's rebuild replays the
                    // log after it); a stale install changes nothing.
                    node.sm_applied = node.replica.as_ref().map_or(sid.index, |r| r.applied_index());
                    self.check_snapshot(id, sid);
                    self.log(|| format!("node {id}: installed snapshot {}", sid.index));
                }
                Err(why) => self.log(|| format!("node {id}: install failed: {why}")),
            }
        }
    }

    /// What the client of the entry at `index` learns, in the model's terms.
    fn outcome(&self, index: u64, outcome: waft_node::Outcome) -> Outcome {
        let output = |op_id, bytes: &Bytes, fresh| match <[u8; 8]>::try_from(&bytes[..]) {
            Ok(b) => Outcome::Output { op_id, output: u64::from_le_bytes(b), fresh },
            Err(_) => panic!("entry {index}: a register reply of {} bytes", bytes.len()),
        };
        match outcome {
            waft_node::Outcome::Guest(Ok(bytes)) | waft_node::Outcome::Saved(Ok(bytes))
                if !self.ops.contains_key(&index) =>
            {
                panic!("entry {index}: a guest reply {bytes:?} for an entry that is no register command")
            }
            waft_node::Outcome::Guest(Ok(bytes)) => output(self.ops[&index], &bytes, true),
            waft_node::Outcome::Saved(Ok(bytes)) => output(self.ops[&index], &bytes, false),
            waft_node::Outcome::Registered { session_id } => Outcome::Registered { session_id },
            waft_node::Outcome::Done => Outcome::Done,
            waft_node::Outcome::Refused(e) => Outcome::Refused(e),
            waft_node::Outcome::SettingsChanged { .. } => Outcome::NotClient,
            // A fenced node's answer reaches no client: it times out and retries.
            waft_node::Outcome::Fenced(_) => Outcome::NotClient,
            other => panic!("entry {index}: an outcome the simulator never causes: {other:?}"),
        }
    }

    /// Every snapshot at one index holds the same bytes on every node:
    /// registers, session table, module and settings.
    fn check_snapshot(&mut self, id: NodeId, sid: SnapshotId) {
        let node = &self.nodes[&id];
        let reader =
            node.snaps.open_snapshot(GROUP, sid).unwrap_or_else(|e| panic!("node {id}: snapshot {sid:?}: {e}"));
        let files = reader.meta().files.clone();
        match self.snapshots.get(&sid.index) {
            _ if self.snapshots_may_differ => {}
            Some((t, other)) => assert!(
                *t == sid.term && *other == files,
                "state-machine safety: snapshots at {} differ: node {id} has {files:?}, another {other:?}",
                sid.index
            ),
            None => {
                self.snapshots.insert(sid.index, (sid.term, files));
            }
        }
        let prev = self.check.max_snapshot.insert(id, sid.index).unwrap_or(0);
        assert!(prev <= sid.index, "node {id} snapshot went backwards");
    }

    /// Finishes node `id`'s Readies whose writes are durable.
    fn finish_durable(&mut self, id: NodeId) {
        let mut sent = Vec::new();
        let mut out = Output::default();
        let Some(node) = self.nodes.get_mut(&id) else { return };
        let Some(replica) = node.replica.as_mut() else { return };
        replica
            .finish_durable(&mut node.disk, &node.snaps, &mut |m| sent.push(m), &mut out)
            .unwrap_or_else(|e| panic!("node {id}: finish: {e}"));
        self.outbox.extend(sent);
        self.settle(id, out);
    }

    fn serve_reads(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else { return };
        let Some(replica) = node.replica.as_mut() else { return };
        let applied = replica.applied_index();
        if !node.reads.iter().any(|r| r.1 <= applied) {
            return;
        }
        let answer = match replica.query(&[]) {
            Ok(answer) => answer,
            // Fenced after it took the reads: they wait for the rebuild (or
            // their clients time out and go elsewhere).
            Err(waft_node::Error::Fenced { .. }) => return,
            Err(e) => panic!("node {id}: query: {e}"),
        };
        let values = waft_runtime::native::Registers::decode(&answer).unwrap_or_else(|e| panic!("node {id}: {e}"));
        let kv = Kv { values };
        let mut i = 0;
        while i < node.reads.len() {
            if node.reads[i].1 <= applied {
                let (rid, _) = node.reads.remove(i);
                self.notes.push(Note::ReadDone { node: id, id: rid, value_of: kv.clone() });
            } else {
                i += 1;
            }
        }
    }

    /// The disk writes the oldest queued write of `id`; the replica hears it
    /// is durable (a write of lazy hard states alone reaches only the page
    /// cache, as on a real disk).
    pub fn sync_one(&mut self, id: NodeId) -> bool {
        self.read_clock(id);
        let Some(node) = self.nodes.get_mut(&id) else { return false };
        let Some((token, write)) = node.writes.pop_front() else { return false };
        let shown = brief_write(&write);
        let before = node.disk.log_state(GROUP);
        node.disk
            .write(write)
            .unwrap_or_else(|e| panic!("node {id}: the disk refused write {token:?} ({shown}) on log {before:?}: {e}"));
        let hs = node.disk.durable_hard_state();
        let m = self.check.max_durable_commit.entry(id).or_insert(0);
        assert!(hs.commit >= *m, "node {id}: durable commit went backwards {} < {}", hs.commit, *m);
        *m = hs.commit;
        node.replica.as_mut().expect("up").write_durable(token);
        self.finish_durable(id);
        self.process(id);
        true
    }

    /// Whether the newest queued write of `id` changes its term or vote.
    pub fn newest_write_has_hard_state(&self, id: NodeId) -> bool {
        let n = &self.nodes[&id];
        let durable = n.disk.durable_hard_state();
        n.writes.back().is_some_and(|(_, w)| {
            w.ops()
                .iter()
                .any(|(_, op)| matches!(op, Op::SetHardState(hs) if hs.term != durable.term || hs.vote != durable.vote))
        })
    }

    pub fn pending_writes(&self, id: NodeId) -> usize {
        self.nodes[&id].writes.len()
    }

    /// Pulls the snapshot the core asked for from the node that offered it
    /// (all its files, chunk by chunk) and hands the result to the replica,
    /// which installs it once its writes in flight are durable.
    pub fn complete_install(&mut self, id: NodeId) {
        self.read_clock(id);
        let Some(inst) = self.nodes.get_mut(&id).and_then(|n| n.install.take()) else { return };
        let sid = SnapshotId { index: inst.meta.index, term: inst.meta.term };
        // The sender's files, read as its snapshot service would.
        let files = self
            .nodes
            .get(&inst.from)
            .filter(|n| n.replica.is_some())
            .ok_or("the sender is down".to_string())
            .and_then(|sender| {
                let reader =
                    sender.snaps.open_snapshot(GROUP, sid).map_err(|e| format!("the sender's snapshot: {e}"))?;
                let mut chunks = Vec::new();
                for f in &reader.meta().files {
                    let mut offset = 0;
                    while offset < f.size {
                        let chunk = reader
                            .read_chunk(&f.name, offset, waft_storage::SNAPSHOT_CHUNK_BYTES_MAX)
                            .map_err(|e| e.to_string())?;
                        offset += chunk.len() as u64;
                        chunks.push((f.name.clone(), offset - chunk.len() as u64, chunk));
                    }
                }
                Ok((reader.meta().clone(), chunks))
            });
        let node = self.nodes.get_mut(&id).expect("node");
        let replica = node.replica.as_mut().expect("up");
        let pulled = files.and_then(|(stored, chunks)| {
            let mut install = replica.begin_install(&node.snaps, stored).map_err(|e| e.to_string())?;
            for (name, offset, data) in chunks {
                install.write_chunk(&name, offset, &data).map_err(|e| e.to_string())?;
            }
            Ok(install)
        });
        let mut out = Output::default();
        replica
            .install_pulled(pulled, &mut node.disk, &node.snaps, &mut out)
            .unwrap_or_else(|e| panic!("node {id}: install: {e}"));
        self.settle(id, out);
        self.process(id);
    }

    /// The node goes down: its memory and queued writes are gone, and with
    /// `Crash::Power` every write since its last sync too.
    pub fn crash(&mut self, id: NodeId, how: Crash) {
        let node = self.nodes.get_mut(&id).expect("node");
        node.replica = None;
        node.writes.clear();
        node.install = None;
        node.reads.clear();
        if how == Crash::Power {
            node.disk.lose_unsynced();
        }
        node.incarnation += 1;
        self.log(|| format!("node {id}: crash ({how:?})"));
    }

    /// The node starts again from its disk and snapshot directory.
    pub fn restart(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node");
        assert!(node.replica.is_none());
        let mut replica = Replica::open(GROUP, node.cfg.clone(), &mut node.disk, &node.snaps, &founding_module(), &[])
            .unwrap_or_else(|e| panic!("node {id}: restart: {e}"));
        if node.no_dedup {
            replica.inject_no_dedup();
        }
        node.sm_applied = replica.applied_index();
        node.replica = Some(replica);
        node.incarnation += 1;
        self.log(|| format!("node {id}: restart"));
        self.process(id);
    }
}

/// The core's refusal inside a replica's error; anything else the client
/// hears as busy (the group not bound yet, say).
fn core_error(e: waft_node::Error) -> RaftError {
    match e {
        waft_node::Error::Raft { source, .. } => source,
        _ => RaftError::Busy,
    }
}

/// The operation id of the register command an entry carries, if it does.
fn op_of(data: &Bytes) -> Option<u64> {
    match Envelope::decode(data).ok()?.body {
        Body::Command { payload, .. } | Body::Plain { payload } => Command::decode(&payload).map(|c| c.op_id),
        _ => None,
    }
}

/// A one-line rendering of a log write for traces.
fn brief_write(w: &WriteSet) -> String {
    let ops: Vec<String> = w
        .ops()
        .iter()
        .map(|(_, op)| match op {
            Op::Append(es) => format!("append {}..={}", es[0].index, es[es.len() - 1].index),
            Op::Truncate { from } => format!("truncate {from}.."),
            Op::Purge { upto, term } => format!("purge ..={upto}/{term}"),
            Op::SetHardState(hs) => format!("hard state t{} v{:?} c{}", hs.term, hs.vote, hs.commit),
            Op::DropGroup => "drop".into(),
        })
        .collect();
    ops.join(", ")
}

/// Ready batches drained per `process` call; far above what a step produces.
const READY_ROUNDS_MAX: usize = 64;
