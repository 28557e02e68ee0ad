//! A raft-only harness for the hand-written protocol scenarios (`testkit`):
//! waft-raft nodes with a model runtime each (the randomized simulator drives
//! the real replicas instead: see `cluster`). Durable storage
//! that keeps only what was synced, a model state machine under the session
//! table (`model::Machine`), a snapshot store, and the safety checks run on
//! every Ready. It owns no network and no clock:
//! drivers (the random simulator, scenario tests) route `outbox` and call tick.
//! Must never use randomness of its own, so drivers stay reproducible.

use crate::model::{Kv, Machine, MachineConfig, MachineSnapshot, Outcome};
use crate::rng::{FNV_START, fnv};
use std::collections::{BTreeMap, VecDeque};
use waft_raft::*;

/// What a node keeps across a crash.
#[derive(Clone, Debug)]
pub struct Durable {
    pub hard_state: HardState,
    pub snapshot: SnapshotMeta,
    pub snapshot_state: MachineSnapshot,
    /// Entries after the snapshot, consecutive.
    pub entries: Vec<Entry>,
}

/// A Ready's persistence work that has not reached the disk yet.
#[derive(Clone, Debug)]
struct PendingWrite {
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
    after: Vec<Message>,
}

pub struct SimNode {
    pub id: NodeId,
    pub cfg: Config,
    pub raft: Option<RawNode>,
    pub durable: Durable,
    writes: VecDeque<PendingWrite>,
    pub install: Option<SnapshotInstall>,
    pub sm: Machine,
    pub sm_applied: u64,
    /// Reads confirmed by Raft, waiting for the local apply index: (id, index).
    pub reads: Vec<(u64, u64)>,
    /// Persist every Ready at once (scenario tests); otherwise the driver calls `sync_one`.
    pub auto_sync: bool,
    /// With `auto_sync`: leave snapshot installs pending until `complete_install`.
    pub hold_install: bool,
    pub incarnation: u64,
}

/// A client-visible outcome the driver consumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// `node` applied the client entry at (`index`, `term`) with `outcome`.
    Applied { node: NodeId, index: u64, term: u64, outcome: Outcome },
    /// A read with `id` completed on `node` with the register value.
    ReadDone { node: NodeId, id: u64, value_of: Kv },
}

/// Safety invariants checked incrementally; any violation is a panic with context.
#[derive(Default)]
pub struct Checker {
    pub leaders: BTreeMap<u64, NodeId>,
    /// (index, term) -> (fingerprint of the entry, term of the previous entry).
    pub entries_seen: BTreeMap<(u64, u64), (u64, u64)>,
    /// index -> (term, fingerprint) of every applied entry.
    pub committed: BTreeMap<u64, (u64, u64)>,
    pub max_durable_commit: BTreeMap<NodeId, u64>,
    /// index -> a term by which the entry was surely committed (the lowest term
    /// of any node when it learned a commit index covering it).
    pub commit_term: BTreeMap<u64, u64>,
    /// Last commit index each node reported (to record `commit_term` incrementally).
    pub commit_seen: BTreeMap<NodeId, u64>,
    pub max_snapshot: BTreeMap<NodeId, u64>,
}

impl Checker {
    /// Records the commit index `id` reached in `hs`: every entry up to it
    /// was committed by `hs.term` at the latest.
    pub fn saw_commit(&mut self, id: NodeId, hs: &HardState) {
        let seen = self.commit_seen.entry(id).or_insert(0);
        for i in (*seen + 1)..=hs.commit {
            let t = self.commit_term.entry(i).or_insert(hs.term);
            *t = (*t).min(hs.term);
        }
        *seen = (*seen).max(hs.commit);
    }

    /// Log matching: a given (index, term) always carries the same entry
    /// after the same term. `prev_term` is the term before `entries[0]` on
    /// `id` (`u64::MAX`: unknown).
    pub fn saw_entries(&mut self, id: NodeId, mut prev_term: u64, entries: &[Entry]) {
        for e in entries {
            let v = (fingerprint(e), prev_term);
            prev_term = e.term;
            let k = (e.index, e.term);
            match self.entries_seen.get(&k) {
                Some(&(fp, pt)) => {
                    assert_eq!(fp, v.0, "log matching: node {id} entry {k:?} differs from another node's");
                    if pt != u64::MAX && v.1 != u64::MAX {
                        assert_eq!(pt, v.1, "log matching: node {id} entry {k:?} follows a different term");
                    }
                }
                None => {
                    self.entries_seen.insert(k, v);
                }
            }
        }
    }

    /// Election safety and leader completeness for `raft`, which just became
    /// leader of `term`: no other leader of that term, and it holds every
    /// entry committed in an earlier term. (A stale leader of a lower term,
    /// elected by a delayed vote, need not hold entries a newer term
    /// committed.)
    pub fn saw_leader(&mut self, raft: &RawNode, term: u64) {
        let id = raft.id();
        if let Some(&other) = self.leaders.get(&term) {
            assert_eq!(other, id, "two leaders in term {term}: {other} and {id}");
        }
        self.leaders.insert(term, id);
        let snap = raft.snapshot_meta().index;
        for (&index, &(t, _)) in self.committed.range(snap + 1..) {
            if self.commit_term.get(&index).is_none_or(|&ct| ct >= term) {
                continue;
            }
            assert_eq!(
                raft.term_at(index),
                Some(t),
                "leader completeness: leader {id} of term {term} lacks committed entry {index}"
            );
        }
    }

    /// State-machine safety: every node applies the same entry at an index.
    pub fn saw_applied(&mut self, id: NodeId, e: &Entry) {
        let fp = fingerprint(e);
        match self.committed.get(&e.index) {
            Some(&(t, f)) => assert!(
                t == e.term && f == fp,
                "state-machine safety: node {id} applied a different entry at {}",
                e.index
            ),
            None => {
                self.committed.insert(e.index, (e.term, fp));
            }
        }
    }
}

/// Folds a delivered message into a run's trace hash, and its line into
/// the trace when one is kept.
pub fn trace_message(hash: &mut u64, trace: &mut Option<Vec<String>>, m: &Message) {
    *hash = fnv(*hash, &[m.from as u8, m.to as u8, m.term as u8, msg_kind(&m.body)]);
    if let Some(t) = trace {
        t.push(format!("{} -> {} t{} {}", m.from, m.to, m.term, brief(&m.body)));
    }
}

/// The leader of the highest term among `nodes` (the live ones).
pub fn leader_of<'a>(nodes: impl Iterator<Item = &'a RawNode>) -> Option<NodeId> {
    nodes.filter(|r| r.role() == Role::Leader).max_by_key(|r| r.term()).map(|r| r.id())
}

/// One node's line in a failure report: down, or its role, term, indexes
/// (`applied`: as its state machine applied) and configuration.
pub fn describe_node(id: NodeId, raft: Option<&RawNode>, applied: u64) -> String {
    match raft {
        None => format!("node {id}: down"),
        Some(r) => format!(
            "node {id}: {:?} term {} leader {:?} last {} commit {} applied {applied} snap {} conf {:?} transferring {}",
            r.role(),
            r.term(),
            r.leader(),
            r.last_index(),
            r.committed(),
            r.snapshot_meta().index,
            r.configuration(),
            r.is_transferring()
        ),
    }
}

pub fn fingerprint(e: &Entry) -> u64 {
    fnv(fnv(FNV_START, &[e.kind as u8]), &e.data)
}

pub struct Cluster {
    /// The simulated monotonic clock (the driver sets it before each event);
    /// every node reads it before a tick, a message or a read.
    pub now: u64,
    pub nodes: BTreeMap<NodeId, SimNode>,
    pub check: Checker,
    /// Snapshot store shared by all nodes: index -> (term, state). By state-machine
    /// safety every node's snapshot at an index is identical, session section
    /// bytes included (checked on insert).
    pub snapshots: BTreeMap<u64, (u64, MachineSnapshot)>,
    /// The replicated machine's settings; equal on every node.
    pub machine_cfg: MachineConfig,
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
}

impl Cluster {
    /// Nodes `ids`, the first `voters` of which form the bootstrap configuration.
    pub fn new(ids: &[NodeId], voters: &[NodeId], mk_cfg: impl Fn(NodeId) -> Config) -> Cluster {
        let machine_cfg = MachineConfig::default();
        let mut nodes = BTreeMap::new();
        for &id in ids {
            let cfg = mk_cfg(id);
            let boot = if voters.contains(&id) {
                Configuration::new(voters.iter().copied())
            } else {
                Configuration::default()
            };
            let sm = Machine::new(&machine_cfg);
            let durable = Durable {
                hard_state: HardState::default(),
                snapshot: SnapshotMeta { index: 0, term: 0, config: boot.clone() },
                snapshot_state: sm.snapshot(),
                entries: Vec::new(),
            };
            let raft = RawNode::new(cfg.clone(), boot).expect("valid sim config");
            nodes.insert(
                id,
                SimNode {
                    id,
                    cfg,
                    raft: Some(raft),
                    durable,
                    writes: VecDeque::new(),
                    install: None,
                    sm,
                    sm_applied: 0,
                    reads: Vec::new(),
                    auto_sync: true,
                    hold_install: false,
                    incarnation: 0,
                },
            );
        }
        Cluster {
            now: 0,
            nodes,
            check: Checker::default(),
            snapshots: BTreeMap::new(),
            machine_cfg,
            outbox: Vec::new(),
            notes: Vec::new(),
            events: Vec::new(),
            read_states: Vec::new(),
            touched: Vec::new(),
            trace_hash: FNV_START,
            trace: None,
        }
    }

    /// Sets the replicated machine's settings on every node; only before
    /// anything was applied, as a group's limits are fixed at its creation.
    pub fn set_machine_config(&mut self, cfg: MachineConfig) {
        for n in self.nodes.values_mut() {
            assert_eq!(n.sm_applied, 0, "machine settings change only before the first apply");
            n.sm = Machine::new(&cfg);
            n.durable.snapshot_state = n.sm.snapshot();
        }
        self.machine_cfg = cfg;
    }

    pub fn raft(&self, id: NodeId) -> &RawNode {
        self.nodes[&id].raft.as_ref().expect("node is up")
    }

    pub fn raft_mut(&mut self, id: NodeId) -> &mut RawNode {
        self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut()).expect("node is up")
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.raft.is_some())
    }

    pub fn leader(&self) -> Option<NodeId> {
        leader_of(self.nodes.values().filter_map(|n| n.raft.as_ref()))
    }

    /// One line per node: role, term, indexes and configuration (for failure reports).
    pub fn describe(&self) -> Vec<String> {
        self.nodes.values().map(|n| describe_node(n.id, n.raft.as_ref(), n.sm_applied)).collect()
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            t.push(line());
        }
    }

    pub fn tick(&mut self, id: NodeId) {
        let now = self.now;
        if let Some(r) = self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut()) {
            r.set_clock(now);
            r.tick();
            self.process(id);
        }
    }

    pub fn step(&mut self, m: Message) {
        let to = m.to;
        if !self.is_up(to) {
            return;
        }
        trace_message(&mut self.trace_hash, &mut self.trace, &m);
        let now = self.now;
        self.raft_mut(to).set_clock(now);
        self.raft_mut(to).step(m);
        self.process(to);
    }

    /// Drains and executes every Ready of node `id` (bounded).
    pub fn process(&mut self, id: NodeId) {
        if self.touched.last() != Some(&id) {
            self.touched.push(id);
        }
        for _ in 0..READY_ROUNDS_MAX {
            let has = self.nodes[&id].raft.as_ref().is_some_and(|r| r.has_ready());
            if !has {
                break;
            }
            let rd = self.raft_mut(id).ready();
            self.handle_ready(id, rd);
        }
        self.serve_reads(id);
    }

    fn handle_ready(&mut self, id: NodeId, rd: Ready) {
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
        for e in rd.events {
            self.log(|| format!("node {id}: {e:?}"));
            self.events.push((id, e));
        }
        if let Some(first) = rd.entries.first() {
            let prev_term = self.raft(id).term_at(first.index - 1).unwrap_or(u64::MAX);
            self.check.saw_entries(id, prev_term, &rd.entries);
        }
        if let Some(inst) = rd.snapshot_install {
            self.nodes.get_mut(&id).expect("node").install = Some(inst);
        }
        self.outbox.extend(rd.messages);
        // Apply before syncing: a sync re-enters `process`, whose later Readies
        // must find this one's committed entries applied.
        self.apply(id, rd.committed_entries);
        for rs in rd.read_states {
            self.read_states.push((id, rs));
            self.nodes.get_mut(&id).expect("node").reads.push((rs.id, rs.index));
        }
        if let Some(meta) = rd.snapshot_request {
            self.save_snapshot(id, meta);
        }
        let w = PendingWrite { hard_state: rd.hard_state, entries: rd.entries, after: rd.messages_after_persist };
        let node = self.nodes.get_mut(&id).expect("node");
        node.writes.push_back(w);
        if node.auto_sync {
            self.sync_all(id);
        }
        let n = &self.nodes[&id];
        if n.auto_sync && !n.hold_install && n.install.is_some() {
            self.complete_install(id);
        }
    }

    fn on_new_leader(&mut self, id: NodeId, term: u64) {
        let raft = self.nodes[&id].raft.as_ref().expect("node is up");
        self.check.saw_leader(raft, term);
    }

    fn apply(&mut self, id: NodeId, entries: Vec<Entry>) {
        for e in &entries {
            let node = self.nodes.get_mut(&id).expect("node");
            assert_eq!(
                e.index,
                node.sm_applied + 1,
                "node {id} applies out of order (core applied {}, commit {}, persisted {})",
                node.raft.as_ref().map_or(0, |r| r.applied()),
                node.raft.as_ref().map_or(0, |r| r.committed()),
                node.raft.as_ref().map_or(0, |r| r.persisted())
            );
            node.sm_applied = e.index;
            self.check.saw_applied(id, e);
        }
        let node = self.nodes.get_mut(&id).expect("node");
        for (index, term, outcome) in node.sm.apply_batch(&entries) {
            if outcome != Outcome::NotClient {
                self.notes.push(Note::Applied { node: id, index, term, outcome });
            }
        }
    }

    fn serve_reads(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let applied = node.sm_applied;
        let mut i = 0;
        while i < node.reads.len() {
            if node.reads[i].1 <= applied {
                let (rid, _) = node.reads.remove(i);
                self.notes.push(Note::ReadDone { node: id, id: rid, value_of: node.sm.kv.clone() });
            } else {
                i += 1;
            }
        }
    }

    fn save_snapshot(&mut self, id: NodeId, meta: SnapshotMeta) {
        let node = self.nodes.get_mut(&id).expect("node");
        assert_eq!(node.sm_applied, meta.index, "snapshot requested at an index the state machine is not at");
        let state = node.sm.snapshot();
        match self.snapshots.get(&meta.index) {
            Some((t, other)) => assert!(
                *t == meta.term && *other == state,
                "state-machine safety: snapshots at {} differ (registers or session table)",
                meta.index
            ),
            None => {
                self.snapshots.insert(meta.index, (meta.term, state.clone()));
            }
        }
        // Snapshots are written straight to durable storage (their own files).
        node.durable.snapshot = meta.clone();
        node.durable.snapshot_state = state;
        node.durable.entries.retain(|e| e.index > meta.index);
        let prev = self.check.max_snapshot.insert(id, meta.index).unwrap_or(0);
        assert!(prev <= meta.index, "node {id} snapshot went backwards");
        node.raft.as_mut().expect("up").on_snapshot_saved(meta);
    }

    /// Completes the oldest pending write of `id` (its data reaches the disk).
    pub fn sync_one(&mut self, id: NodeId) -> bool {
        let now = self.now;
        if let Some(r) = self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut()) {
            r.set_clock(now);
        }
        let node = self.nodes.get_mut(&id).expect("node");
        let Some(w) = node.writes.pop_front() else {
            return false;
        };
        if let Some(hs) = w.hard_state {
            // Commit never goes backwards on disk, across restarts included.
            let m = self.check.max_durable_commit.entry(id).or_insert(0);
            assert!(hs.commit >= *m, "node {id}: durable commit went backwards {} < {}", hs.commit, *m);
            node.durable.hard_state = hs;
            *m = (*m).max(hs.commit);
        }
        let last = w.entries.last().map(|e| (e.index, e.term));
        if let Some(first) = w.entries.first() {
            let d = &mut node.durable;
            let keep = first.index.saturating_sub(d.snapshot.index + 1) as usize;
            d.entries.truncate(keep);
            for e in w.entries {
                if e.index > d.snapshot.index {
                    assert_eq!(e.index, d.snapshot.index + 1 + d.entries.len() as u64, "node {id}: durable log gap");
                    d.entries.push(e);
                }
            }
        }
        self.outbox.extend(w.after);
        if let Some(hs) = w.hard_state {
            node.raft.as_mut().expect("up").on_hard_state_persisted(hs);
        }
        if let Some((i, t)) = last {
            node.raft.as_mut().expect("up").on_persisted(i, t);
        }
        if w.hard_state.is_some() || last.is_some() {
            self.process(id);
        }
        true
    }

    pub fn sync_all(&mut self, id: NodeId) {
        for _ in 0..WRITES_PER_SYNC_MAX {
            if !self.sync_one(id) {
                break;
            }
        }
    }

    /// Whether the newest unsynced write of `id` changes its term or vote.
    pub fn newest_write_has_hard_state(&self, id: NodeId) -> bool {
        self.nodes[&id].writes.back().is_some_and(|w| {
            w.hard_state.is_some_and(|hs| {
                let d = &self.nodes[&id].durable.hard_state;
                hs.term != d.term || hs.vote != d.vote
            })
        })
    }

    pub fn pending_writes(&self, id: NodeId) -> usize {
        self.nodes[&id].writes.len()
    }

    /// The runtime fetched and loaded the snapshot the core asked for.
    pub fn complete_install(&mut self, id: NodeId) {
        let now = self.now;
        if let Some(r) = self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut()) {
            r.set_clock(now);
        }
        self.sync_all(id);
        let node = self.nodes.get_mut(&id).expect("node");
        let Some(inst) = node.install.take() else {
            return;
        };
        let meta = inst.meta;
        let Some((t, state)) = self.snapshots.get(&meta.index).cloned() else {
            node.raft.as_mut().expect("up").on_snapshot_install_failed();
            return;
        };
        assert_eq!(t, meta.term, "snapshot store term mismatch at {}", meta.index);
        if meta.index <= node.sm_applied {
            node.raft.as_mut().expect("up").on_snapshot_install_failed();
            return;
        }
        node.sm = Machine::restore(&self.machine_cfg, &state);
        node.sm_applied = meta.index;
        let d = &mut node.durable;
        let matching = d.entries.iter().any(|e| e.index == meta.index && e.term == meta.term);
        if matching {
            d.entries.retain(|e| e.index > meta.index);
        } else {
            d.entries.clear();
        }
        d.snapshot = meta.clone();
        d.snapshot_state = state;
        d.hard_state.commit = d.hard_state.commit.max(meta.index);
        let prev = self.check.max_snapshot.insert(id, meta.index).unwrap_or(0);
        assert!(prev <= meta.index, "node {id} snapshot went backwards");
        node.raft.as_mut().expect("up").on_snapshot_installed(meta.clone());
        self.log(|| format!("node {id}: installed snapshot {}", meta.index));
        self.process(id);
    }

    /// Loses everything not synced: pending writes, queued messages, memory.
    pub fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node");
        node.raft = None;
        node.writes.clear();
        node.install = None;
        node.reads.clear();
        node.incarnation += 1;
        self.log(|| format!("node {id}: crash"));
    }

    pub fn restart(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node");
        assert!(node.raft.is_none());
        let d = node.durable.clone();
        node.sm = Machine::restore(&self.machine_cfg, &d.snapshot_state);
        node.sm_applied = d.snapshot.index;
        let st = RestartState {
            hard_state: d.hard_state,
            snapshot: d.snapshot,
            entries: d.entries,
            applied: node.sm_applied,
        };
        node.raft = Some(RawNode::restart(node.cfg.clone(), st).expect("restart from durable state"));
        node.incarnation += 1;
        self.log(|| format!("node {id}: restart"));
        self.process(id);
    }
}

/// Ready batches drained per `process` call; far above what a step produces.
const READY_ROUNDS_MAX: usize = 64;
/// Writes completed by one `sync_all`.
const WRITES_PER_SYNC_MAX: usize = 1 << 16;

pub fn msg_kind(b: &MessageBody) -> u8 {
    match b {
        MessageBody::PreVote { .. } => 1,
        MessageBody::PreVoteResponse { .. } => 2,
        MessageBody::Vote { .. } => 3,
        MessageBody::VoteResponse { .. } => 4,
        MessageBody::Append { .. } => 5,
        MessageBody::AppendResponse { .. } => 6,
        MessageBody::Heartbeat { .. } => 7,
        MessageBody::HeartbeatResponse { .. } => 8,
        MessageBody::InstallSnapshot { .. } => 9,
        MessageBody::TimeoutNow => 10,
        MessageBody::ReadIndex { .. } => 11,
        MessageBody::ReadIndexResponse { .. } => 12,
        MessageBody::StateDigest { .. } => 13,
    }
}

/// A one-line rendering of a message body for traces.
pub fn brief(b: &MessageBody) -> String {
    match b {
        MessageBody::PreVote { last_index, last_term } => format!("PreVote last={last_index}/{last_term}"),
        MessageBody::PreVoteResponse { reject } => {
            format!("PreVoteResp{}", if *reject { " reject" } else { "" })
        }
        MessageBody::Vote { last_index, last_term, transfer } => {
            format!("Vote last={last_index}/{last_term}{}", if *transfer { " transfer" } else { "" })
        }
        MessageBody::VoteResponse { reject } => {
            format!("VoteResp{}", if *reject { " reject" } else { "" })
        }
        MessageBody::Append { prev_index, prev_term, entries, commit } => {
            format!("App prev={prev_index}/{prev_term} n={} commit={commit}", entries.len())
        }
        MessageBody::AppendResponse { reject, index, hint_index, hint_term } => {
            if *reject {
                format!("AppResp reject {index} hint={hint_index}/{hint_term}")
            } else {
                format!("AppResp {index}")
            }
        }
        MessageBody::Heartbeat { commit, round, quiesce } => {
            format!("Heartbeat commit={commit} round={round}{}", if *quiesce { " quiesce" } else { "" })
        }
        MessageBody::HeartbeatResponse { round } => format!("HeartbeatResp round={round}"),
        MessageBody::InstallSnapshot { meta } => format!("Snapshot {}/{}", meta.index, meta.term),
        MessageBody::TimeoutNow => "TimeoutNow".into(),
        MessageBody::ReadIndex { ids } => format!("ReadIndex {ids:?}"),
        MessageBody::ReadIndexResponse { ids, index } => {
            format!("ReadIndexResp {ids:?} at {index}")
        }
        MessageBody::StateDigest { index, digest } => {
            format!("StateDigest {index} {:02x}{:02x}{:02x}{:02x}", digest[0], digest[1], digest[2], digest[3])
        }
    }
}
