//! A deterministic in-process cluster for the replica tests: real RocksDB log
//! stores and snapshot stores in scratch directories under the target dir, the
//! real counter component, and one thread pumping messages and snapshot chunks
//! between replicas. No sleeps, no clock: time is `tick()`.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;

use bytes::Bytes;
use waft_node::{Applied, DIGEST_INTERVAL_DEFAULT, GuestModule, Outcome, Replica, ReplicaConfig};
use waft_raft::{Message, ReadState, Role, SnapshotInstall};
use waft_runtime::Engine;
use waft_session::{Body, Envelope, SessionConfig};
use waft_storage::{RocksLogStore, SnapshotId, SnapshotStore};

pub const GROUP: u64 = 7;
/// Bound on pump rounds in one `settle`; a cluster that does not go quiet
/// within it is a bug (a message storm).
const SETTLE_ROUNDS_MAX: usize = 10_000;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

fn guest_dir() -> PathBuf {
    match std::env::var_os("WAFT_GUEST_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => target_dir().join("wasm32-wasip2/release"),
    }
}

/// A fresh scratch directory under the target dir for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = target_dir().join("waft-node-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Loads a guest component built by `cargo xtask guests` (e.g. "waft_counter").
pub fn guest(name: &str) -> GuestModule {
    let engine = Engine::new().unwrap();
    GuestModule::load(&engine, guest_bytes(name)).unwrap()
}

/// The bytes of a guest component built by `cargo xtask guests`.
pub fn guest_bytes(name: &str) -> Vec<u8> {
    let path = guest_dir().join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("cannot read {}: {e}; build the guests first with `cargo xtask guests`", path.display())
    })
}

pub struct Node {
    pub id: u64,
    pub dir: PathBuf,
    pub up: Option<Up>,
    /// Every result this node applied, across restarts (a restarted node
    /// re-applies entries after its snapshot: later ones overwrite).
    pub applied: std::collections::BTreeMap<u64, Applied>,
}

pub struct Up {
    pub store: RocksLogStore,
    pub snaps: SnapshotStore,
    pub replica: Replica,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub queue: VecDeque<Message>,
    module: GuestModule,
    snapshot_margin_entries: u64,
    /// Bytes per pulled snapshot chunk (small, so even a tiny state moves in several).
    pub chunk_bytes: usize,
    pub installs: usize,
    pub chunks: usize,
    pub snapshots_saved: usize,
    /// Makes the next transfer stop after this many chunks, as if the receiver
    /// crashed: the partial install is left for the test to kill and restart.
    pub interrupt_install_after_chunks: Option<usize>,
    pub interrupted_installs: usize,
    /// Every read state a replica reported: (node, read).
    pub reads: Vec<(u64, ReadState)>,
    /// Session limits of every replica (equal on all, or snapshots are refused).
    pub sessions: SessionConfig,
    /// The leader's clock, stamped into every proposal (tests move it by hand).
    pub now_ms: u64,
    /// Nodes opened with their own founding module and session limits
    /// instead of the cluster's (see `reopen_as`).
    founding: BTreeMap<u64, (GuestModule, SessionConfig)>,
    /// Nodes that are not founding voters: they open an empty replica and
    /// wait to be added.
    joiners: BTreeSet<u64>,
    /// Nodes whose replica stopped for good, with the reason.
    pub stopped: BTreeMap<u64, String>,
    /// Founding digest interval of every replica.
    pub digest_interval: u64,
    /// Snapshots handed out to write beside the apply path (replicas with
    /// `set_background_snapshots`), waiting for `finish_jobs`: (node, job).
    pub jobs: Vec<(u64, waft_node::SnapshotJob)>,
    /// Nodes cut off: messages to and from them are dropped.
    pub isolated: BTreeSet<u64>,
    /// Nodes opened to leave a fenced replica for an operator.
    pub manual_rebuild: BTreeSet<u64>,
}

impl Cluster {
    /// A cluster running the counter.
    pub fn new(name: &str, voters: u64, snapshot_margin_entries: u64) -> Cluster {
        Cluster::with_guest(name, voters, snapshot_margin_entries, "waft_counter")
    }

    pub fn with_guest(name: &str, voters: u64, snapshot_margin_entries: u64, guest_name: &str) -> Cluster {
        Cluster::with_sessions(name, voters, snapshot_margin_entries, guest_name, SessionConfig::default())
    }

    /// A cluster whose replicas run with these session limits.
    pub fn with_sessions(
        name: &str,
        voters: u64,
        snapshot_margin_entries: u64,
        guest_name: &str,
        sessions: SessionConfig,
    ) -> Cluster {
        Cluster::with_joiners(name, voters, snapshot_margin_entries, guest_name, sessions, &[])
    }

    /// Nodes 1..=`nodes`, of which `joiners` are no founding voters: they
    /// open empty replicas and wait to be added.
    pub fn with_joiners(
        name: &str,
        voters: u64,
        snapshot_margin_entries: u64,
        guest_name: &str,
        sessions: SessionConfig,
        joiners: &[u64],
    ) -> Cluster {
        Cluster::build(name, voters, snapshot_margin_entries, guest_name, sessions, joiners, DIGEST_INTERVAL_DEFAULT)
    }

    /// A counter cluster whose replicas digest their state every
    /// `digest_interval` entries.
    pub fn with_digests(name: &str, voters: u64, snapshot_margin_entries: u64, digest_interval: u64) -> Cluster {
        Cluster::build(
            name,
            voters,
            snapshot_margin_entries,
            "waft_counter",
            SessionConfig::default(),
            &[],
            digest_interval,
        )
    }

    fn build(
        name: &str,
        voters: u64,
        snapshot_margin_entries: u64,
        guest_name: &str,
        sessions: SessionConfig,
        joiners: &[u64],
        digest_interval: u64,
    ) -> Cluster {
        let root = scratch(name);
        let module = guest(guest_name);
        let mut c = Cluster {
            nodes: (1..=voters)
                .map(|id| Node { id, dir: root.join(format!("node-{id}")), up: None, applied: Default::default() })
                .collect(),
            queue: VecDeque::new(),
            module,
            snapshot_margin_entries,
            chunk_bytes: 3,
            installs: 0,
            chunks: 0,
            snapshots_saved: 0,
            interrupt_install_after_chunks: None,
            interrupted_installs: 0,
            reads: Vec::new(),
            sessions,
            now_ms: 0,
            founding: BTreeMap::new(),
            joiners: joiners.iter().copied().collect(),
            stopped: BTreeMap::new(),
            digest_interval,
            manual_rebuild: BTreeSet::new(),
            jobs: Vec::new(),
            isolated: BTreeSet::new(),
        };
        for id in 1..=voters {
            c.open(id);
        }
        c
    }

    fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    pub fn replica(&mut self, id: u64) -> &mut Replica {
        &mut self.node(id).up.as_mut().expect("node is up").replica
    }

    pub fn open(&mut self, id: u64) {
        let voters: Vec<u64> = self.nodes.iter().map(|n| n.id).filter(|n| !self.joiners.contains(n)).collect();
        let bootstrap = if self.joiners.contains(&id) { Vec::new() } else { voters };
        let mut raft = waft_raft::Config::new(id, 0x5eed + id);
        raft.snapshot_margin_entries = self.snapshot_margin_entries;
        let (module, sessions) =
            self.founding.get(&id).cloned().unwrap_or_else(|| (self.module.clone(), self.sessions.clone()));
        let kv_dir = self.node(id).dir.join("kv");
        let cfg = ReplicaConfig {
            sessions,
            digest_interval: self.digest_interval,
            manual_rebuild: self.manual_rebuild.contains(&id),
            kv: waft_node::KvStores::rocks(waft_storage::RocksKv::open(kv_dir).unwrap()),
            ..ReplicaConfig::new(raft)
        };
        let node = self.node(id);
        let mut store = RocksLogStore::open(node.dir.join("log")).unwrap();
        let snaps = SnapshotStore::open(node.dir.join("snapshots")).unwrap();
        let replica = Replica::open(GROUP, cfg, &mut store, &snaps, &module, &bootstrap).unwrap();
        node.up = Some(Up { store, snaps, replica });
    }

    /// Wipes node `id` and opens it afresh with its own founding module and
    /// session limits (as a founding voter unless the cluster made it a
    /// joiner). Call before the group has a leader.
    pub fn reopen_as(&mut self, id: u64, guest_name: &str, sessions: SessionConfig) {
        self.close(id);
        let dir = self.node(id).dir.clone();
        let _ = std::fs::remove_dir_all(&dir);
        self.node(id).applied.clear();
        self.founding.insert(id, (guest(guest_name), sessions));
        self.open(id);
    }

    /// Drops the replica and closes its RocksDB, like a process exit.
    pub fn close(&mut self, id: u64) {
        self.node(id).up = None;
    }

    pub fn up_ids(&self) -> Vec<u64> {
        self.nodes.iter().filter(|n| n.up.is_some()).map(|n| n.id).collect()
    }

    pub fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter_map(|n| n.up.as_ref().map(|u| (n.id, &u.replica)))
            .find(|(_, r)| r.raft().role() == Role::Leader)
            .map(|(id, _)| id)
    }

    /// Runs every up replica's `process` once; returns whether anything happened.
    fn process_all(&mut self) -> bool {
        let mut busy = false;
        for id in self.up_ids() {
            let queue = &mut self.queue;
            let up = self.nodes[(id - 1) as usize].up.as_mut().unwrap();
            if !up.replica.has_ready() {
                continue;
            }
            busy = true;
            let out = match up.replica.process(&mut up.store, &up.snaps, &mut |m| queue.push_back(m)) {
                Ok(out) => out,
                // A replica that stops for good is taken down, as its daemon
                // would stop serving the group; the reason is kept.
                Err(e) if e.is_fatal() => {
                    self.stopped.insert(id, e.to_string());
                    self.nodes[(id - 1) as usize].up = None;
                    busy = true;
                    continue;
                }
                Err(e) => panic!("node {id}: {e}"),
            };
            if out.snapshot_saved.is_some() {
                self.snapshots_saved += 1;
            }
            self.reads.extend(out.read_states.iter().map(|r| (id, *r)));
            let node = &mut self.nodes[(id - 1) as usize];
            for a in out.applied {
                node.applied.insert(a.index, a);
            }
            if let Some(install) = out.snapshot_install {
                self.install(id, install);
            }
            if let Some(job) = out.snapshot_job {
                self.jobs.push((id, job));
            }
        }
        busy
    }

    /// Writes every snapshot waiting in `jobs` and hands each back to its
    /// replica, as the daemon's blocking thread and inbox do.
    pub fn finish_jobs(&mut self) {
        for (id, job) in std::mem::take(&mut self.jobs) {
            let done = job.run();
            let Some(up) = self.nodes[(id - 1) as usize].up.as_mut() else { continue };
            let mut out = waft_node::Output::default();
            up.replica.snapshot_written(done, &mut out).unwrap();
            if out.snapshot_saved.is_some() {
                self.snapshots_saved += 1;
            }
        }
    }

    /// Moves a snapshot from `install.from` to `id` in chunks, through the
    /// snapshot stores' reader and writer, as the daemon's transport will.
    fn install(&mut self, id: u64, install: SnapshotInstall) {
        let from = install.from;
        let Some(source) = self.nodes[(from - 1) as usize].up.as_ref() else {
            self.replica(id).abandon_install();
            return;
        };
        let snap_id = SnapshotId { index: install.meta.index, term: install.meta.term };
        let reader = source.snaps.open_snapshot(GROUP, snap_id).unwrap();
        let meta = reader.meta().clone();
        let chunk_bytes = self.chunk_bytes;
        let up = self.nodes[(id - 1) as usize].up.as_mut().unwrap();
        let mut writer = up.replica.begin_install(&up.snaps, meta.clone()).unwrap();
        let mut moved = 0;
        for file in &meta.files {
            loop {
                if self.interrupt_install_after_chunks == Some(moved) {
                    // Dropping the writer mid-transfer leaves its temporary
                    // directory behind, as a crash would; the replica still
                    // waits for this install.
                    self.interrupt_install_after_chunks = None;
                    self.interrupted_installs += 1;
                    std::mem::forget(writer);
                    return;
                }
                moved += 1;
                let offset = writer.next_offset(&file.name);
                // The module file is a whole component: tiny chunks are for the
                // small files, where they exercise resumption.
                let chunk_bytes = if file.name == waft_node::MODULE_FILE { 64 << 10 } else { chunk_bytes };
                let chunk = reader.read_chunk(&file.name, offset, chunk_bytes).unwrap();
                if chunk.is_empty() {
                    break;
                }
                writer.write_chunk(&file.name, offset, &chunk).unwrap();
                self.chunks += 1;
            }
        }
        assert!(writer.is_complete());
        up.replica.finish_install(&mut up.store, &up.snaps, writer).unwrap();
        self.installs += 1;
    }

    /// Delivers every queued message (to down nodes: dropped).
    fn deliver(&mut self) -> bool {
        let busy = !self.queue.is_empty();
        while let Some(m) = self.queue.pop_front() {
            if self.isolated.contains(&m.to) || self.isolated.contains(&m.from) {
                continue;
            }
            if let Some(up) = self.nodes[(m.to - 1) as usize].up.as_mut() {
                up.replica.step(m);
            }
        }
        busy
    }

    /// Pumps until no replica has work and no message is in flight.
    pub fn settle(&mut self) {
        for _ in 0..SETTLE_ROUNDS_MAX {
            let processed = self.process_all();
            let delivered = self.deliver();
            if !processed && !delivered {
                return;
            }
        }
        panic!("cluster did not settle within {SETTLE_ROUNDS_MAX} rounds");
    }

    pub fn tick(&mut self, ticks: usize) {
        for _ in 0..ticks {
            for id in self.up_ids() {
                self.replica(id).tick();
            }
            self.settle();
        }
    }

    pub fn elect(&mut self, id: u64) {
        self.replica(id).campaign_now();
        self.settle();
        assert_eq!(self.leader(), Some(id), "node {id} should lead");
        // Its no-op must commit before it serves reads and configuration changes.
        self.tick(2);
    }

    /// Hands leadership to `id` (TimeoutNow once it has caught up).
    pub fn transfer(&mut self, id: u64) {
        let leader = self.leader().expect("a leader");
        self.replica(leader).transfer_leader(Some(id)).unwrap();
        for _ in 0..50 {
            self.tick(1);
            if self.leader() == Some(id) {
                // Its no-op must commit before it serves.
                self.tick(2);
                return;
            }
        }
        panic!("leadership did not move to node {id}");
    }

    /// Proposes a session-less command on the leader.
    pub fn propose(&mut self, command: &str) -> (u64, u64) {
        self.propose_body(Body::Plain { payload: Bytes::copy_from_slice(command.as_bytes()) })
    }

    /// Proposes any client request on the leader, stamped with `now_ms`.
    pub fn propose_body(&mut self, body: Body) -> (u64, u64) {
        let leader = self.leader().expect("a leader");
        let envelope = Envelope::new(self.now_ms, body);
        self.replica(leader).propose(&envelope).unwrap()
    }

    pub fn query(&mut self, id: u64) -> String {
        let answer = self.replica(id).query(b"\"get\"").unwrap();
        String::from_utf8(answer.to_vec()).unwrap()
    }

    pub fn state_bytes(&mut self, id: u64) -> Vec<u8> {
        self.replica(id).state_bytes().unwrap()
    }

    pub fn applied_index(&mut self, id: u64) -> u64 {
        self.replica(id).applied_index()
    }

    /// The result node `id` applied at `index`, as text ("ERR: ..." for
    /// errors; a saved result reads "SAVED: " and the result).
    pub fn result_at(&self, id: u64, index: u64) -> String {
        let text = |r: &waft_runtime::ApplyResult| match r {
            Ok(b) => String::from_utf8_lossy(b).into_owned(),
            Err(e) => format!("ERR: {e}"),
        };
        match self.nodes[(id - 1) as usize].applied.get(&index).map(|a| &a.outcome) {
            Some(Outcome::Guest(r)) => text(r),
            Some(Outcome::Saved(r)) => format!("SAVED: {}", text(r)),
            Some(other) => format!("{other:?}"),
            None => "MISSING".to_string(),
        }
    }

    /// What node `id` applied at `index`.
    pub fn outcome_at(&self, id: u64, index: u64) -> Option<&Outcome> {
        self.nodes[(id - 1) as usize].applied.get(&index).map(|a: &Applied| &a.outcome)
    }
}
