//! `RawNode`: the whole Raft protocol of one node as a deterministic state
//! machine. Inputs are ticks, messages, proposals, reads, admin commands and
//! completion notices; the output is a `Ready` batch. It must never do I/O,
//! read a clock, spawn threads, use OS randomness or depend on hash order.
//!
//! Split as etcd's raft is: elections and roles in `node/election.rs`,
//! configuration changes in `node/confchange.rs`, the rest (inputs,
//! replication, commit, reads, snapshots, output) here.

use crate::config::{Config, PRIORITY_DISABLED, PRIORITY_NEVER, Priority};
use crate::log::RaftLog;
use crate::progress::{Progress, ProgressState};
use crate::quorum::{self, VoteResult};
use crate::read_only::{ReadOnly, ReadRequest};
use crate::types::*;
use bytes::Bytes;
use std::collections::BTreeMap;

mod confchange;
mod election;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// ReadIndex confirmed by a heartbeat round to a quorum.
    Safe,
    /// Served from the leader lease when valid, otherwise as `Safe`.
    Lease,
}

/// Volatile state worth reporting when it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub role: Role,
    pub leader: NodeId,
    pub term: u64,
}

/// A read that may be served once the local applied index reaches `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub id: u64,
    pub index: u64,
}

/// The runtime must fetch the snapshot described by `meta` from node `from`,
/// load it, then call `on_snapshot_installed(meta)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInstall {
    pub meta: SnapshotMeta,
    pub from: NodeId,
}

/// Things that happened that a runtime may want to report to operators/clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    BecameLeader {
        term: u64,
    },
    SteppedDown {
        term: u64,
    },
    TransferAborted {
        target: NodeId,
    },
    /// A configuration change was abandoned (new voters failed to catch up, or leadership lost).
    ConfChangeFailed {
        reason: &'static str,
    },
    /// A configuration entry could not be decoded and was ignored.
    BadConfigEntry {
        index: u64,
    },
    /// `peer` had acknowledged entries up to `acknowledged` but now says it
    /// holds only up to `holds`: its disk lost them (wiped, restored from an
    /// old copy), or the refusal is a very late one. The leader replicates
    /// to it again from `holds`. A node that lost acknowledged entries may
    /// have counted toward commits it can no longer vouch for: an operator
    /// should find out why.
    FollowerLostEntries {
        peer: NodeId,
        acknowledged: u64,
        holds: u64,
    },
}

/// One batch of work for the runtime. The ordering rules, in one place:
///
/// 1. `snapshot_install`: finish persisting earlier Readies, fetch and load it
///    (entries at or below its index may then be dropped from storage), then call
///    `on_snapshot_installed` (or `on_snapshot_install_failed`). A newer install
///    supersedes an older one still in progress.
/// 2. Persist `hard_state` (if any) and `entries` durably. Writing `entries[0]`
///    at index i discards every stored entry at index >= i first (a truncated
///    conflicting suffix). Readies must be persisted in the order they were produced.
/// 3. Only after step 2 completed, send `messages_after_persist` (vote requests
///    and grants, append and heartbeat acknowledgements) and report
///    `on_hard_state_persisted(hard_state)` and `on_persisted(last entry index, its term)`.
/// 4. `messages` may be sent at once, even before step 2 (a leader's appends to
///    followers need not wait for its own disk; pre-votes change no state).
/// 5. Apply `committed_entries` in order (they are already durable locally).
///    Serve each `read_states` entry once the applied index reaches its index.
/// 6. `snapshot_request`: after applying `committed_entries`, snapshot the state
///    machine at exactly `meta.index`, store `meta` with it, then call
///    `on_snapshot_saved(meta)`; the core then compacts its log.
///
/// The runtime may call `ready()` again before earlier batches completed;
/// completions arrive later through the `on_*` notices.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ready {
    pub soft_state: Option<SoftState>,
    pub hard_state: Option<HardState>,
    pub entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub messages_after_persist: Vec<Message>,
    pub committed_entries: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    pub snapshot_request: Option<SnapshotMeta>,
    pub snapshot_install: Option<SnapshotInstall>,
    pub events: Vec<Event>,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        *self == Ready::default()
    }
}

/// What a restarted node reads back from its storage.
#[derive(Clone, Debug, Default)]
pub struct RestartState {
    pub hard_state: HardState,
    /// The latest durable snapshot (index 0 with the bootstrap configuration for a new node).
    pub snapshot: SnapshotMeta,
    /// Durable entries after the snapshot, consecutive.
    pub entries: Vec<Entry>,
    /// Index the state machine reflects after loading the snapshot (usually `snapshot.index`).
    pub applied: u64,
}

/// A configuration change whose new voters are still catching up.
#[derive(Clone, Debug)]
struct PendingChange {
    target: Configuration,
    catching: Vec<NodeId>,
    elapsed_ticks: u64,
}

#[derive(Clone, Debug)]
struct Transfer {
    target: NodeId,
    elapsed_ticks: u64,
    timeout_now_sent: bool,
}

/// Configurations recorded in the log since the snapshot. Config takes effect
/// when appended (Raft dissertation §4.1), so a truncation can revert it.
#[derive(Clone, Debug, Default)]
struct ConfHistory {
    base: Configuration,
    entries: Vec<(u64, Configuration)>,
}

impl ConfHistory {
    fn current(&self) -> (u64, &Configuration) {
        self.entries.last().map_or((0, &self.base), |(i, c)| (*i, c))
    }
    fn at(&self, index: u64) -> Configuration {
        self.entries.iter().rev().find(|(i, _)| *i <= index).map_or(&self.base, |(_, c)| c).clone()
    }
}

pub struct RawNode {
    /// The knobs this node was started with (`Config::validate`d).
    cfg: Config,
    /// This node (`cfg.id`).
    id: NodeId,
    /// The current term, durable before anything depends on it (`HardState`).
    term: u64,
    /// Whom this node voted for in `term` (`NONE`: nobody), durable like `term`.
    vote: NodeId,
    role: Role,
    /// The leader of `term` as this node knows it (`NONE`: unknown).
    leader: NodeId,
    /// The entries after the snapshot: stable, unstable and their commit,
    /// apply and persist marks.
    log: RaftLog,
    /// Configurations in the log after the snapshot, by index, so one can be
    /// looked up at any index (at the commit index, say) and a truncation
    /// can revert to the one before.
    history: ConfHistory,
    /// Effective configuration (latest log config, or a forced reset).
    conf: Configuration,
    /// Index of the entry carrying `conf` (0: snapshot or bootstrap).
    conf_index: u64,
    /// Set by `reset_peers`: (configuration, last log index at reset). Wins over
    /// log configurations up to that index.
    forced: Option<(Configuration, u64)>,
    /// The latest snapshot saved or installed (its index, term and configuration).
    snapshot: SnapshotMeta,
    /// Deterministic random state (seeded from `cfg.seed`) for randomized
    /// election timeouts: the same seed, the same elections.
    prng: u64,
    /// Ticks since this node's own logical clock started.
    now: u64,
    /// Ticks since the election timer was last reset (by a leader's message,
    /// a granted vote or a campaign).
    election_elapsed: u64,
    /// This term's election timeout: `election_ticks` plus a random part in
    /// `[0, election_ticks)`, drawn again at every reset.
    randomized_election_ticks: u64,
    /// Leader: ticks since the last heartbeat round went out.
    heartbeat_elapsed: u64,
    /// Ticks since we last heard from a leader of our term (or since start).
    /// While below election_ticks we refuse votes: the leader may hold a lease.
    ticks_since_leader: u64,
    /// Ticks this process has counted in a row without hearing from a
    /// leader (or leading): unlike `ticks_since_leader`, starts at 0, so a
    /// node that just started has not yet seen a leader gone.
    leaderless_ticks: u64,
    /// The caller's monotonic clock, in ms, as last set (`set_clock`); never
    /// goes back. Only the lease reads it.
    clock_ms: u64,
    /// Priority election (SOFAJRaft): the lowest priority that may stand
    /// now. Starts at the highest priority among the voters and decays
    /// after elections time out without a leader.
    target_priority: Priority,
    /// Election timeouts counted toward the next decay of `target_priority`.
    election_timeout_count: u64,
    /// Candidate: the votes (or pre-votes) received this campaign, by voter.
    votes: BTreeMap<NodeId, bool>,
    // --- leader state ---
    /// Leader: each other member's replication progress (match and next
    /// index, probe/replicate/snapshot state, in-flight window, read rounds).
    progress: BTreeMap<NodeId, Progress>,
    /// Leader: reads waiting for a heartbeat round (or their own term's first
    /// commit), and the rounds sent recently with their tick and clock reading.
    reads: ReadOnly,
    /// Leader: a configuration change waiting for its new voters to catch up
    /// before its entry is appended.
    pending_change: Option<PendingChange>,
    /// Leader: a leadership transfer in progress.
    transfer: Option<Transfer>,
    /// A TimeoutNow was sent this term: another node may win without waiting
    /// out its lease, so lease reads are unsafe for the rest of the term.
    lease_disabled: bool,
    /// Leader: the commit index moved and the followers should hear it even
    /// with no entry to send (an empty append carries it).
    commit_to_broadcast: bool,
    // --- follower state ---
    /// The group is quiet: no heartbeats (leader), no election timer
    /// (follower), no lease, until an input wakes it.
    quiesced: bool,
    /// Leader: ticks in a row the group had nothing to do.
    idle_ticks: u64,
    /// Follower: the snapshot this node asked the runtime to install and
    /// waits for (`on_snapshot_installed` / `on_snapshot_install_failed`).
    installing: Option<SnapshotMeta>,
    /// Set by the host when this replica's state machine is known to differ
    /// from the group's: it never stands for election, and as leader it
    /// hands leadership on (or steps down) at once.
    fenced: bool,
    /// A fenced node takes a snapshot at or below its commit index to
    /// rebuild its state from (`on_state_rebuilt`).
    rebuild: bool,
    /// Follower: reads to forward to the leader for a read index, as
    /// (read id, asked as a lease read); sent with the next Ready. Bounded
    /// by `cfg.pending_reads_max`.
    forward_reads: Vec<(u64, bool)>,
    // --- output ---
    /// Messages that may leave before this Ready's writes are durable.
    msgs: Vec<Message>,
    /// Messages that promise durability (votes, append acknowledgements):
    /// sent only after this Ready's writes are durable.
    msgs_after_persist: Vec<Message>,
    /// Reads released at an index, for the runtime to serve once applied.
    read_states: Vec<ReadState>,
    /// Notices for the runtime (role changes, failed changes, lost entries).
    events: Vec<Event>,
    /// A snapshot the runtime should fetch from the leader and install.
    snapshot_install: Option<SnapshotInstall>,
    /// A snapshot the core asked the runtime to save is not saved yet.
    snapshot_in_progress: bool,
    /// The caller asked for a snapshot now (`request_snapshot`), whatever the
    /// margin; cleared when the request goes out.
    snapshot_asked: bool,
    /// Non-zero: the snapshots the margin asks for come only at multiples
    /// of this index, and no apply batch crosses one (`set_snapshot_points`).
    snapshot_every: u64,
    /// The hard state last handed out in a Ready (a change makes the next
    /// Ready carry one).
    prev_hard: HardState,
    /// The soft state (role, leader, term) last handed out in a Ready.
    prev_soft: SoftState,
    /// The highest term the runtime reported durable (`on_hard_state_persisted`,
    /// or read back at restart).
    persisted_term: u64,
}

/// Why a node could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartError {
    InvalidConfig(&'static str),
    /// Stored state is inconsistent (gap in entries, commit beyond log, ...).
    CorruptState(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::InvalidConfig(why) => write!(f, "invalid raft config: {why}"),
            StartError::CorruptState(why) => write!(f, "stored raft state is inconsistent: {why}"),
        }
    }
}
impl std::error::Error for StartError {}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl RawNode {
    /// A brand-new node. `bootstrap` is the initial configuration for the
    /// founding members; a node that will be added later passes an empty one.
    pub fn new(cfg: Config, bootstrap: Configuration) -> Result<RawNode, StartError> {
        let snapshot = SnapshotMeta { index: 0, term: 0, config: bootstrap };
        let mut node = RawNode::restart(cfg, RestartState { snapshot, ..Default::default() })?;
        // A brand-new node never acknowledged any leader: no lease to protect.
        node.ticks_since_leader = node.cfg.election_ticks;
        Ok(node)
    }

    /// Rebuilds a node from what its storage holds.
    pub fn restart(cfg: Config, st: RestartState) -> Result<RawNode, StartError> {
        cfg.validate().map_err(StartError::InvalidConfig)?;
        let snap = st.snapshot;
        for (i, e) in st.entries.iter().enumerate() {
            if e.index != snap.index + 1 + i as u64 {
                return Err(StartError::CorruptState(format!(
                    "entry {} where {} expected",
                    e.index,
                    snap.index + 1 + i as u64
                )));
            }
        }
        let last = snap.index + st.entries.len() as u64;
        if st.hard_state.commit > last {
            return Err(StartError::CorruptState(format!("commit {} beyond last index {last}", st.hard_state.commit)));
        }
        let log = RaftLog::new(snap.index, snap.term, st.entries, st.hard_state.commit, st.applied);
        let mut prng = cfg.seed ^ cfg.id.wrapping_mul(0x2545_F491_4F6C_DD1D);
        splitmix64(&mut prng);
        let prev_hard = st.hard_state;
        let mut node = RawNode {
            id: cfg.id,
            term: st.hard_state.term,
            vote: st.hard_state.vote,
            role: Role::Follower,
            leader: NONE,
            log,
            history: ConfHistory { base: snap.config.clone(), entries: Vec::new() },
            conf: Configuration::default(),
            conf_index: 0,
            forced: None,
            snapshot: snap,
            prng,
            now: 0,
            election_elapsed: 0,
            randomized_election_ticks: cfg.election_ticks,
            heartbeat_elapsed: 0,
            ticks_since_leader: 0,
            leaderless_ticks: 0,
            clock_ms: 0,
            target_priority: PRIORITY_DISABLED,
            quiesced: false,
            idle_ticks: 0,
            election_timeout_count: 0,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            reads: ReadOnly::default(),
            pending_change: None,
            transfer: None,
            lease_disabled: false,
            commit_to_broadcast: false,
            installing: None,
            fenced: false,
            rebuild: false,
            forward_reads: Vec::new(),
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            read_states: Vec::new(),
            events: Vec::new(),
            snapshot_install: None,
            snapshot_in_progress: false,
            snapshot_asked: false,
            snapshot_every: 0,
            prev_hard,
            prev_soft: SoftState { role: Role::Follower, leader: NONE, term: prev_hard.term },
            persisted_term: prev_hard.term,
            cfg,
        };
        node.rescan_conf_from(node.log.first_index());
        node.reset_randomized_timeout();
        Ok(node)
    }

    // ------------------------------------------------------------ accessors

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn term(&self) -> u64 {
        self.term
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn leader(&self) -> Option<NodeId> {
        (self.leader != NONE).then_some(self.leader)
    }
    pub fn committed(&self) -> u64 {
        self.log.committed
    }
    pub fn applied(&self) -> u64 {
        self.log.applied
    }
    pub fn last_index(&self) -> u64 {
        self.log.last_index()
    }
    pub fn persisted(&self) -> u64 {
        self.log.persisted
    }
    pub fn first_index(&self) -> u64 {
        self.log.first_index()
    }
    pub fn configuration(&self) -> &Configuration {
        &self.conf
    }
    /// Whether this node has gone a whole election timeout, counted since it
    /// started, without leading or hearing from a leader: what an unsafe
    /// `reset_peers` must wait for, so it is never taken by a node that
    /// hears its leader (a node cut off from a healthy majority still passes:
    /// the operator's `--unsafe` covers that).
    pub fn leader_lost(&self) -> bool {
        self.role != Role::Leader && self.leaderless_ticks >= self.cfg.election_ticks
    }

    /// Whether a configuration change is under way: one catching up its new
    /// voters, appended but not committed, joint, or forced by `reset_peers`
    /// and not yet replaced by a committed one. While none is, the
    /// configuration in force is committed.
    pub fn conf_change_pending(&self) -> bool {
        self.pending_change.is_some()
            || self.conf_index > self.log.committed
            || self.conf.is_joint()
            || self.forced.is_some()
    }
    /// Term of the entry at `index` while it is in the log (or is the snapshot index).
    pub fn term_at(&self, index: u64) -> Option<u64> {
        self.log.term(index)
    }
    pub fn log_entries(&self) -> &[Entry] {
        self.log.entries()
    }
    pub fn snapshot_meta(&self) -> &SnapshotMeta {
        &self.snapshot
    }
    pub fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.committed }
    }
    pub fn is_transferring(&self) -> bool {
        self.transfer.is_some()
    }
    pub fn progress_of(&self, id: NodeId) -> Option<(u64, u64, ProgressState)> {
        self.progress.get(&id).map(|p| (p.match_index, p.next_index, p.state))
    }
    /// Whether a lease read would be served without a heartbeat round right now.
    pub fn lease_valid(&self) -> bool {
        self.role == Role::Leader && self.lease_is_valid()
    }

    /// Whether the group is quiesced here: no ticks needed until an input
    /// (a proposal, a read, a message, `wake`) arrives.
    pub fn is_quiesced(&self) -> bool {
        self.quiesced
    }

    /// Ends quiescence: a follower's election timer starts over, a leader
    /// heartbeats again (its lease needs a fresh round first). For the
    /// runtime when a follower's leader may be gone (its node unreachable);
    /// every other input wakes the group by itself.
    pub fn wake(&mut self) {
        if !self.quiesced {
            return;
        }
        self.quiesced = false;
        self.idle_ticks = 0;
        self.election_elapsed = 0;
        if self.role == Role::Leader {
            // Acks from before the quiet prove nothing about now, nor do
            // late acks of rounds sent before it: the leader's tick count
            // stood still meanwhile, so their send ticks look recent.
            for p in self.progress.values_mut() {
                p.acked_round = 0;
                p.acked_tick = 0;
                p.acked_ms = 0;
                p.recent_active = true;
            }
            self.reads.forget_rounds();
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// Leader: whether the group has nothing to do (the condition for
    /// quiescing): its own term committed, every member holding the whole
    /// log, no read, transfer, change or snapshot under way.
    fn idle(&self) -> bool {
        let last = self.log.last_index();
        self.role == Role::Leader
            && !self.fenced
            && self.transfer.is_none()
            && self.pending_change.is_none()
            && self.forced.is_none()
            && !self.conf.is_joint()
            && self.reads.is_empty()
            && self.forward_reads.is_empty()
            && self.committed_own_term()
            && self.log.committed == last
            && self.log.persisted >= last
            && self
                .progress
                .iter()
                .all(|(id, p)| *id == self.id || (p.match_index == last && matches!(p.state, ProgressState::Replicate)))
    }

    // ------------------------------------------------------------ inputs

    /// Tells the core the caller's monotonic clock (ms since any fixed
    /// point), read just before the inputs that follow (ticks, messages,
    /// reads). The core never reads a clock: a caller whose ticks can stall
    /// sets it before every batch of inputs, and the lease (`lease_ms`) is
    /// measured on it. A reading below the last one is ignored.
    pub fn set_clock(&mut self, now_ms: u64) {
        self.clock_ms = self.clock_ms.max(now_ms);
    }

    /// Advances the logical clock by one tick. A quiesced group's clock
    /// stands still.
    pub fn tick(&mut self) {
        if self.quiesced {
            return;
        }
        self.now += 1;
        self.ticks_since_leader = self.ticks_since_leader.saturating_add(1);
        self.leaderless_ticks = if self.role == Role::Leader { 0 } else { self.leaderless_ticks.saturating_add(1) };
        self.election_elapsed += 1;
        if self.role == Role::Leader {
            self.tick_leader();
        } else if self.election_elapsed >= self.randomized_election_ticks {
            self.election_elapsed = 0;
            self.reset_randomized_timeout();
            if self.role == Role::Follower {
                self.leader = NONE; // lost contact: stop pointing clients at it
            }
            if self.promotable() && self.allow_launch_election() {
                self.campaign(self.cfg.pre_vote, false);
            }
        }
    }

    fn tick_leader(&mut self) {
        if self.fenced && self.transfer.is_none() {
            // The transfer `set_fenced` started ended without a new leader,
            // or none could start: leading on would spread this state.
            self.become_follower(self.term, NONE);
            return;
        }
        self.heartbeat_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                let me = self.id;
                let active = quorum::is_quorum(&self.conf, |id| {
                    id == me || self.progress.get(&id).is_some_and(|p| p.recent_active)
                });
                if !active {
                    self.become_follower(self.term, NONE);
                    return;
                }
                for p in self.progress.values_mut() {
                    p.recent_active = false;
                }
            }
        }
        if let Some(t) = &mut self.transfer {
            t.elapsed_ticks += 1;
            if t.elapsed_ticks >= self.cfg.election_ticks {
                let target = t.target;
                self.transfer = None;
                self.events.push(Event::TransferAborted { target });
            }
        }
        if let Some(pc) = &mut self.pending_change {
            pc.elapsed_ticks += 1;
            if pc.elapsed_ticks >= self.cfg.catchup_timeout_ticks {
                self.abandon_pending_change("new voters did not catch up before the catch-up timeout");
            }
        }
        let retry = self.cfg.snapshot_retry_ticks;
        for p in self.progress.values_mut() {
            if let ProgressState::Snapshot { .. } = p.state {
                p.snapshot_ticks += 1;
                if p.snapshot_ticks >= retry {
                    p.become_probe();
                }
            }
        }
        if self.cfg.quiesce_after_ticks > 0 {
            self.idle_ticks = if self.idle() { self.idle_ticks + 1 } else { 0 };
            if self.idle_ticks >= self.cfg.quiesce_after_ticks {
                self.quiesce();
                return;
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// Leader: tells every member the group goes quiet, and goes quiet.
    fn quiesce(&mut self) {
        self.quiesced = true;
        self.idle_ticks = 0;
        let commit = self.log.committed;
        let round = self.reads.start_round(self.now, self.clock_ms);
        let ids: Vec<NodeId> = self.progress.keys().copied().filter(|&id| id != self.id).collect();
        for id in ids {
            self.send(id, MessageBody::Heartbeat { commit, round, quiesce: true }, false);
        }
    }

    /// Proposes a command. Returns the (index, term) it will be committed at, if ever.
    pub fn propose(&mut self, data: Bytes) -> Result<(u64, u64), RaftError> {
        self.wake();
        self.check_can_append()?;
        let bytes = data.len() as u64;
        if bytes > self.cfg.proposal_bytes_max {
            return Err(RaftError::ProposalTooLarge { bytes, max: self.cfg.proposal_bytes_max });
        }
        Ok(self.append_entry(EntryKind::Normal, data))
    }

    fn check_can_append(&self) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader { leader_hint: self.leader() });
        }
        if self.transfer.is_some() {
            return Err(RaftError::TransferInProgress);
        }
        if self.log.last_index() - self.log.committed >= self.cfg.uncommitted_entries_max {
            return Err(RaftError::Busy);
        }
        Ok(())
    }

    /// Starts an election now (pre-vote first when enabled), as if the election
    /// timeout fired. For operators and tests; ignored by leaders and non-voters.
    pub fn campaign_now(&mut self) {
        self.wake();
        if self.role != Role::Leader && self.promotable() {
            self.election_elapsed = 0;
            self.campaign(self.cfg.pre_vote, false);
        }
    }

    /// Requests a linearizable read; its `ReadState` with the same `id` appears in
    /// a later Ready (on this node, also for follower reads). Lost on leader change.
    pub fn read_index(&mut self, id: u64, mode: ReadMode) -> Result<(), RaftError> {
        self.wake();
        let lease = mode == ReadMode::Lease;
        match self.role {
            Role::Leader => self.leader_read(ReadRequest { id, from: self.id, lease }),
            Role::Follower if self.leader != NONE => {
                if self.forward_reads.len() >= self.cfg.pending_reads_max {
                    return Err(RaftError::Busy);
                }
                self.forward_reads.push((id, lease));
                Ok(())
            }
            _ => Err(RaftError::NotLeader { leader_hint: self.leader() }),
        }
    }

    /// Feeds a message from the network. Invalid or stale messages are dropped.
    pub fn step(&mut self, m: Message) {
        if m.to != self.id || m.from == self.id || m.from == NONE {
            return;
        }
        if matches!(m.body, MessageBody::StateDigest { .. }) {
            return; // the host's, not the protocol's: no term to learn from it
        }
        // Any message wakes a quiet group but the quiet heartbeat and its
        // answer: a member that missed the heartbeat, a candidate, a new
        // leader's append all wake it.
        if self.quiesced
            && !matches!(m.body, MessageBody::Heartbeat { quiesce: true, .. } | MessageBody::HeartbeatResponse { .. })
        {
            self.wake();
        }
        if m.term > self.term {
            let is_vote = matches!(m.body, MessageBody::Vote { .. } | MessageBody::PreVote { .. });
            let transfer = matches!(m.body, MessageBody::Vote { transfer: true, .. });
            if is_vote && !transfer && self.in_lease() {
                return; // a leader may hold a lease: refuse to disturb it
            }
            match m.body {
                MessageBody::PreVote { .. } => {}
                MessageBody::PreVoteResponse { reject: false } => {}
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. } | MessageBody::InstallSnapshot { .. } => {
                    self.become_follower(m.term, m.from)
                }
                MessageBody::Vote { .. } => {
                    // Adopt the term but keep the election timer: only a granted vote
                    // resets it (Raft §5.2). Otherwise a candidate with a stale log,
                    // campaigning again and again, keeps every up-to-date node from
                    // ever timing out (livelock the simulator found without pre-vote).
                    let (elapsed, timeout) = (self.election_elapsed, self.randomized_election_ticks);
                    self.become_follower(m.term, NONE);
                    self.election_elapsed = elapsed;
                    self.randomized_election_ticks = timeout;
                }
                _ => self.become_follower(m.term, NONE),
            }
        } else if m.term < self.term {
            match m.body {
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. } | MessageBody::InstallSnapshot { .. } => {
                    // Tell the stale leader about our term so it steps down.
                    self.send(
                        m.from,
                        MessageBody::AppendResponse { reject: true, index: 0, hint_index: 0, hint_term: 0 },
                        false,
                    );
                }
                MessageBody::PreVote { .. } => self.send(m.from, MessageBody::PreVoteResponse { reject: true }, false),
                // Answer a stale candidate too, so it learns our term: a node
                // that alone can win (the others' logs are behind) but sits
                // at a lower term otherwise campaigns forever unanswered
                // (sim seed 104457, after membership churn).
                MessageBody::Vote { .. } => self.send(m.from, MessageBody::VoteResponse { reject: true }, false),
                _ => {}
            }
            return;
        }
        match m.body {
            MessageBody::PreVote { last_index, last_term } => self.handle_vote_request(&m, last_index, last_term, true),
            MessageBody::Vote { last_index, last_term, .. } => {
                self.handle_vote_request(&m, last_index, last_term, false)
            }
            _ => match self.role {
                Role::Leader => self.step_leader(m),
                Role::PreCandidate | Role::Candidate => self.step_candidate(m),
                Role::Follower => self.step_follower(m),
            },
        }
    }

    // ------------------------------------------------------------ completion notices

    /// The runtime made entries up to (index, term) and the matching hard state durable.
    pub fn on_persisted(&mut self, index: u64, term: u64) {
        if self.log.on_persisted(index, term) && self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    /// The runtime made the `hard_state` of a Ready durable (call it for every Ready
    /// that carried one, in order, once the write completed).
    pub fn on_hard_state_persisted(&mut self, hs: HardState) {
        self.persisted_term = self.persisted_term.max(hs.term);
        if self.role == Role::Candidate
            && hs.term == self.term
            && hs.vote == self.id
            && !self.votes.contains_key(&self.id)
        {
            self.tally(self.id, true);
        }
    }

    /// The runtime saved the snapshot a Ready asked for.
    pub fn on_snapshot_saved(&mut self, meta: SnapshotMeta) {
        self.snapshot_in_progress = false;
        if meta.index <= self.log.snap_index
            || meta.index > self.log.applied
            || !self.log.match_term(meta.index, meta.term)
        {
            return; // stale (an installed snapshot overtook it)
        }
        self.log.compact(meta.index, meta.term);
        self.history.base = self.history.at(meta.index);
        self.history.entries.retain(|(i, _)| *i > meta.index);
        self.snapshot = meta;
    }

    /// The runtime could not save the requested snapshot; a later Ready asks again.
    pub fn on_snapshot_save_failed(&mut self) {
        self.snapshot_in_progress = false;
    }

    /// The runtime loaded the snapshot a Ready handed out in `snapshot_install`.
    /// An older install the runtime finished after a newer one was handed out is
    /// still honoured (the state machine now reflects it); the newer stays pending.
    pub fn on_snapshot_installed(&mut self, meta: SnapshotMeta) {
        if self.installing.as_ref().is_some_and(|i| i.index <= meta.index) {
            self.installing = None;
        }
        if meta.index > self.log.committed {
            self.log.restore(meta.index, meta.term);
            self.history = ConfHistory { base: meta.config.clone(), entries: Vec::new() };
            self.rescan_conf_from(meta.index + 1);
            self.snapshot = meta;
        }
        if self.leader != NONE {
            let index = self.log.last_index().min(self.log.committed.max(self.snapshot.index));
            self.send(
                self.leader,
                MessageBody::AppendResponse { reject: false, index, hint_index: 0, hint_term: 0 },
                true,
            );
        }
    }

    /// Whether a fenced node can rebuild its state from `meta`, a snapshot
    /// at or below its commit index: the log it keeps must continue it.
    pub fn can_rebuild_from(&self, meta: &SnapshotMeta) -> bool {
        self.rebuild
            && meta.index <= self.log.applied
            && meta.index >= self.log.snap_index
            && self.log.match_term(meta.index, meta.term)
    }

    /// The runtime rebuilt this fenced node's state machine from `meta`, a
    /// snapshot at or below what it had applied (`Ready::snapshot_install`
    /// hands one out to a fenced node): the entries after it are applied
    /// again, from the log it kept. Refused (false, nothing changed)
    /// unless `can_rebuild_from(meta)`: the caller checks that before it
    /// loads the snapshot.
    pub fn on_state_rebuilt(&mut self, meta: SnapshotMeta) -> bool {
        if !self.can_rebuild_from(&meta) {
            return false;
        }
        // Any install at or below the commit index is a rebuild, and this
        // one is done.
        let committed = self.log.committed;
        if self.installing.as_ref().is_some_and(|i| i.index <= committed) {
            self.installing = None;
        }
        if self.snapshot_install.as_ref().is_some_and(|i| i.meta.index <= committed) {
            self.snapshot_install = None;
        }
        if meta.index > self.log.snap_index {
            self.log.compact(meta.index, meta.term);
            self.history.base = self.history.at(meta.index);
            self.history.entries.retain(|(i, _)| *i > meta.index);
            self.snapshot = meta.clone();
        }
        self.log.applied = meta.index;
        if self.leader != NONE {
            self.ack_committed(self.leader);
        }
        true
    }

    /// Offers this leader's latest snapshot to `to` (a follower whose state
    /// machine differs from the group's, to rebuild it), whatever its log
    /// holds. False when this node does not lead or `to` is no peer.
    pub fn send_snapshot(&mut self, to: NodeId) -> bool {
        self.wake();
        if self.role != Role::Leader || to == self.id {
            return false;
        }
        let meta = self.snapshot.clone();
        let Some(p) = self.progress.get_mut(&to) else { return false };
        p.become_snapshot(meta.index);
        self.send(to, MessageBody::InstallSnapshot { meta }, false);
        true
    }

    /// The runtime could not fetch or load the snapshot; the leader will resend it.
    pub fn on_snapshot_install_failed(&mut self) {
        self.installing = None;
    }

    /// Entries applied past the latest snapshot before the next is asked
    /// for (`Config::snapshot_margin_entries`), from now on: a caller whose
    /// snapshots cost more as its state grows spaces them out with it.
    pub fn set_snapshot_margin_entries(&mut self, entries: u64) {
        self.cfg.snapshot_margin_entries = entries.max(1);
    }

    /// Fences this node (its host found its state machine differs from the
    /// group's) or lifts the fence. A fenced node never stands for
    /// election; a fenced leader transfers leadership to the most
    /// up-to-date voter, and steps down on the next tick if no transfer is
    /// running. Its log, votes and acknowledgements are unaffected: the log
    /// is not what differs. With `rebuild`, it takes a snapshot its leader
    /// offers even at or below its commit index, to rebuild its state from.
    pub fn set_fenced(&mut self, fenced: bool, rebuild: bool) {
        self.wake();
        self.fenced = fenced;
        self.rebuild = fenced && rebuild;
        if fenced && self.role == Role::Leader && self.transfer.is_none() {
            // Refused (no other voter, a change in flight): the next tick
            // steps down instead.
            let _ = self.transfer_leader(None);
        }
    }

    /// Whether the host fenced this node (`set_fenced`).
    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// Transfers leadership to `target`, or to the most up-to-date voter when None.
    pub fn transfer_leader(&mut self, target: Option<NodeId>) -> Result<(), RaftError> {
        self.wake();
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader { leader_hint: self.leader() });
        }
        if self.transfer.is_some() {
            return Err(RaftError::TransferInProgress);
        }
        let target =
            match target {
                Some(t) => t,
                None => {
                    let me = self.id;
                    let best =
                        self.conf.voters.iter().filter(|&&v| v != me).max_by_key(|&&v| {
                            (self.progress.get(&v).map_or(0, |p| p.match_index), std::cmp::Reverse(v))
                        });
                    *best.ok_or(RaftError::InvalidConfChange("no other voter to transfer to"))?
                }
            };
        if target == self.id {
            return Ok(());
        }
        if !self.conf.voters.contains(&target) {
            return Err(RaftError::InvalidConfChange("transfer target is not a voter"));
        }
        self.transfer = Some(Transfer { target, elapsed_ticks: 0, timeout_now_sent: false });
        self.maybe_send_timeout_now();
        Ok(())
    }

    /// UNSAFE, for disaster recovery only: replaces this node's configuration
    /// with `voters` without consensus (SOFAJRaft's resetPeers). If nodes disagree
    /// about the configuration, two leaders may be elected in one term and
    /// committed entries may be lost. Use only when a quorum is gone for good and
    /// the operator resets every surviving node to the same set.
    pub fn reset_peers(&mut self, voters: Vec<NodeId>) -> Result<(), RaftError> {
        self.wake();
        let c = Configuration::new(voters).with_addresses(self.conf.addresses.iter().cloned());
        if c.voters.is_empty() || c.voters.contains(&NONE) {
            return Err(RaftError::InvalidConfChange("reset needs at least one valid voter"));
        }
        self.forced = Some((c, self.log.last_index()));
        self.refresh_conf();
        self.become_follower(self.term, NONE);
        // Allow an immediate election: the old configuration's leases are void anyway.
        self.ticks_since_leader = self.cfg.election_ticks;
        Ok(())
    }

    // ------------------------------------------------------------ output

    pub fn has_ready(&self) -> bool {
        !self.msgs.is_empty()
            || !self.msgs_after_persist.is_empty()
            || self.log.unstable_from <= self.log.last_index()
            || self.hard_state() != self.prev_hard
            || self.log.committed.min(self.log.persisted) > self.log.applied
            || !self.read_states.is_empty()
            || !self.events.is_empty()
            || self.snapshot_install.is_some()
            || !self.forward_reads.is_empty()
            // A round waiting behind one in flight starts when that one is
            // confirmed: until then `ready` has nothing to do for it.
            || (self.reads.needs_round() && !self.reads.round_in_flight())
            || self.commit_to_broadcast
            || self.soft_state() != self.prev_soft
            || (self.snapshot_asked && self.snapshot_allowed() && self.log.applied > self.log.snap_index)
    }

    /// Snapshots the margin asks for come only at multiples of `every`
    /// (0: at whatever index was applied), and no batch of committed
    /// entries crosses one, so the applied index lands on each: the host
    /// saves its state there anyway (a state digest) and the snapshot
    /// reuses that save. A snapshot asked for (`request_snapshot`) comes
    /// at once, wherever.
    pub fn set_snapshot_points(&mut self, every: u64) {
        self.snapshot_every = every;
    }

    /// Asks for a snapshot at the applied index as soon as none is being
    /// saved or installed, even before `snapshot_margin_entries` is reached
    /// (an operator's "snapshot now", or a time-based interval). If nothing
    /// was applied since the last snapshot, the request waits for the next
    /// applied entry.
    pub fn request_snapshot(&mut self) {
        self.snapshot_asked = true;
    }

    fn snapshot_allowed(&self) -> bool {
        // A fenced node's state is not the group's: no snapshot of it.
        !self.snapshot_in_progress && self.installing.is_none() && !self.fenced
    }

    /// Takes the accumulated batch of work. See [`Ready`] for the ordering rules.
    pub fn ready(&mut self) -> Ready {
        if self.role == Role::Leader {
            // Reads batch: all reads queued since the last round share the next one,
            // and at most one read round is outstanding at a time.
            if self.reads.needs_round() && !self.reads.round_in_flight() {
                self.broadcast_heartbeat();
            }
            self.broadcast_append();
        }
        if !self.forward_reads.is_empty() && self.leader != NONE && self.role == Role::Follower {
            for lease in [false, true] {
                let ids: Vec<u64> = self.forward_reads.iter().filter(|r| r.1 == lease).map(|r| r.0).collect();
                if !ids.is_empty() {
                    self.send(self.leader, MessageBody::ReadIndex { ids }, false);
                }
            }
        }
        self.forward_reads.clear();
        let mut rd = Ready::default();
        let soft = self.soft_state();
        if soft != self.prev_soft {
            rd.soft_state = Some(soft);
            self.prev_soft = soft;
        }
        let hard = self.hard_state();
        if hard != self.prev_hard {
            rd.hard_state = Some(hard);
            self.prev_hard = hard;
        }
        rd.entries = self.log.take_unstable();
        rd.messages = std::mem::take(&mut self.msgs);
        rd.messages_after_persist = std::mem::take(&mut self.msgs_after_persist);
        let mut take = self.cfg.apply_entries_max;
        if let Some(points) = self.log.applied.checked_div(self.snapshot_every) {
            // Stop at the next snapshot point, so a batch ends there.
            let next = points.saturating_add(1).saturating_mul(self.snapshot_every);
            take = take.min(usize::try_from(next - self.log.applied).unwrap_or(usize::MAX));
        }
        rd.committed_entries = self.log.take_committed(take);
        rd.read_states = std::mem::take(&mut self.read_states);
        rd.snapshot_install = self.snapshot_install.take();
        let margin = self.log.applied - self.log.snap_index;
        let at_point = self.snapshot_every == 0 || self.log.applied.is_multiple_of(self.snapshot_every);
        if self.snapshot_allowed()
            && ((margin >= self.cfg.snapshot_margin_entries && at_point) || (self.snapshot_asked && margin > 0))
        {
            self.snapshot_asked = false;
            let index = self.log.applied;
            let term = self.log.term(index).expect("applied entry is in the log");
            rd.snapshot_request = Some(SnapshotMeta { index, term, config: self.history.at(index) });
            self.snapshot_in_progress = true;
        }
        rd.events = std::mem::take(&mut self.events);
        rd
    }

    fn soft_state(&self) -> SoftState {
        SoftState { role: self.role, leader: self.leader, term: self.term }
    }

    // ------------------------------------------------------------ follower

    fn step_follower(&mut self, m: Message) {
        match m.body {
            MessageBody::Append { prev_index, prev_term, entries, commit } => {
                self.leader_contact(m.from);
                self.handle_append(m.from, prev_index, prev_term, &entries, commit);
            }
            MessageBody::Heartbeat { commit, round, quiesce } => {
                self.leader_contact(m.from);
                if self.installing.is_none() {
                    self.log.commit_to(commit.min(self.log.last_index()));
                }
                // Quiet only holding everything the leader committed: a
                // follower behind keeps its timer, and its next campaign
                // (which wakes the leader) brings it what it lacks.
                if quiesce
                    && !self.fenced
                    && self.installing.is_none()
                    && self.log.last_index() == commit
                    && self.log.committed == commit
                {
                    self.quiesced = true;
                } else if !quiesce {
                    self.quiesced = false;
                }
                // It promises nothing about the log, only that we follow
                // this leader in this term: it waits for the disk only
                // while that term is not durable yet. Waiting for the log
                // writes in flight would add a disk sync to every read
                // round under write load.
                let term_durable = self.persisted_term == self.term;
                self.send(m.from, MessageBody::HeartbeatResponse { round }, !term_durable);
            }
            MessageBody::InstallSnapshot { meta } => {
                self.leader_contact(m.from);
                self.handle_snapshot(m.from, meta);
            }
            MessageBody::TimeoutNow if self.promotable() => {
                self.campaign(false, true);
            }
            MessageBody::ReadIndexResponse { ids, index } => {
                self.read_states.extend(ids.into_iter().map(|id| ReadState { id, index }));
            }
            _ => {}
        }
    }

    fn handle_append(&mut self, from: NodeId, prev_index: u64, prev_term: u64, entries: &[Entry], commit: u64) {
        if self.installing.as_ref().is_some_and(|i| i.index > self.log.committed) {
            // The snapshot supersedes this append; the leader resends after
            // it. (A fenced node's rebuild keeps its log: appends go on.)
            return;
        }
        if prev_index < self.log.committed {
            self.ack_committed(from);
            return;
        }
        match self.log.maybe_append(prev_index, prev_term, entries) {
            Some(last_new) => {
                if let Some(first) = entries.first() {
                    self.rescan_conf_from(first.index);
                }
                self.log.commit_to(commit.min(last_new));
                self.send(
                    from,
                    MessageBody::AppendResponse { reject: false, index: last_new, hint_index: 0, hint_term: 0 },
                    true,
                );
            }
            None => {
                let (hint_index, hint_term) =
                    self.log.find_conflict_by_term(prev_index.min(self.log.last_index()), prev_term);
                self.send(
                    from,
                    MessageBody::AppendResponse { reject: true, index: prev_index, hint_index, hint_term },
                    true,
                );
            }
        }
    }

    /// Tell the leader everything up to our commit index is here: what it
    /// sent (an append or a snapshot) is already covered by committed state.
    fn ack_committed(&mut self, from: NodeId) {
        let index = self.log.committed;
        self.send(from, MessageBody::AppendResponse { reject: false, index, hint_index: 0, hint_term: 0 }, true);
    }

    fn handle_snapshot(&mut self, from: NodeId, meta: SnapshotMeta) {
        if meta.index <= self.log.committed {
            // A rebuild takes one offer at a time: a newer one would cut
            // short the pull of this one, which serves as well.
            if !self.can_rebuild_from(&meta) || self.installing.is_some() {
                self.ack_committed(from);
                return;
            }
            self.installing = Some(meta.clone());
            self.snapshot_install = Some(SnapshotInstall { meta, from });
            return;
        }
        if self.installing.as_ref().is_some_and(|i| i.index >= meta.index) {
            return; // already installing this or a newer one
        }
        self.installing = Some(meta.clone());
        self.snapshot_install = Some(SnapshotInstall { meta, from });
    }

    // ------------------------------------------------------------ leader

    fn step_leader(&mut self, m: Message) {
        let from = m.from;
        if !self.progress.contains_key(&from) {
            if let MessageBody::ReadIndex { .. } = m.body {
            } else {
                return;
            }
        }
        match m.body {
            MessageBody::AppendResponse { reject, index, hint_index, hint_term } => {
                self.handle_append_response(from, reject, index, hint_index, hint_term)
            }
            MessageBody::HeartbeatResponse { round } => {
                let sent = self.reads.round_sent(round);
                let last = self.log.last_index();
                let Some(p) = self.progress.get_mut(&from) else {
                    return;
                };
                p.recent_active = true;
                p.probe_sent = false;
                if round > p.acked_round {
                    p.acked_round = round;
                }
                if let Some((t, ms)) = sent {
                    p.acked_tick = p.acked_tick.max(t);
                    p.acked_ms = p.acked_ms.max(ms);
                }
                // Appends (or their acks) may have been lost: free a window slot so a
                // stalled pipeline probes again (etcd does the same).
                if p.state == ProgressState::Replicate && p.inflights.full() {
                    p.inflights.free_first();
                }
                if p.match_index < last {
                    self.send_append(from, true);
                }
                self.confirm_reads();
            }
            MessageBody::ReadIndex { ids } => {
                // The message carries no mode: the leader confirms every
                // follower's read with a quorum, a lease read's included.
                for id in ids {
                    let _ = self.leader_read(ReadRequest { id, from, lease: false });
                }
            }
            _ => {}
        }
    }

    fn handle_append_response(&mut self, from: NodeId, reject: bool, index: u64, hint_index: u64, hint_term: u64) {
        if index > self.log.last_index() {
            return; // cannot acknowledge what we never sent: a corrupt or foreign message
        }
        let Some(p) = self.progress.get_mut(&from) else {
            return;
        };
        p.recent_active = true;
        if reject {
            let hint = if hint_term > 0 { self.log.find_conflict_by_term(hint_index, hint_term).0 } else { hint_index };
            // Only a refusal of the latest probe counts: an older one (late,
            // duplicated) says nothing about what the follower holds now.
            if index <= p.match_index
                && hint < p.match_index
                && p.state == ProgressState::Probe
                && p.next_index == index + 1
            {
                // Refused at or below what it acknowledged, holding less: it
                // lost entries. Probing from its old match would be refused
                // again at once, forever (a message storm): start over from
                // what it holds.
                let acknowledged = p.match_index;
                p.restart_from(hint);
                self.events.push(Event::FollowerLostEntries { peer: from, acknowledged, holds: hint });
                self.send_append(from, false);
                return;
            }
            if p.maybe_decr_to(index, hint) {
                if p.state == ProgressState::Replicate {
                    p.become_probe();
                }
                self.send_append(from, false);
            }
            return;
        }
        if let ProgressState::Snapshot { pending } = p.state
            && index >= pending
            && index <= p.match_index
        {
            // A snapshot offered to rebuild a follower that held its
            // entries already (`send_snapshot`): replication goes on.
            p.become_probe();
            p.become_replicate();
            self.send_append(from, false);
            return;
        }
        if !p.maybe_update(index) {
            return;
        }
        match p.state {
            ProgressState::Probe => p.become_replicate(),
            ProgressState::Snapshot { pending } if p.match_index >= pending => {
                p.become_probe();
                p.become_replicate();
            }
            ProgressState::Replicate => p.inflights.free_le(index),
            ProgressState::Snapshot { .. } => {}
        }
        self.maybe_commit();
        if self.role != Role::Leader {
            return;
        }
        while self.send_append(from, false) {}
        self.maybe_send_timeout_now();
        self.check_catchup();
    }

    fn acked_index(&self, id: NodeId) -> u64 {
        if id == self.id { self.log.persisted } else { self.progress.get(&id).map_or(0, |p| p.match_index) }
    }

    fn maybe_commit(&mut self) {
        let idx = quorum::joint_committed(&self.conf, |id| self.acked_index(id));
        // Only an entry of our own term commits by counting replicas (Raft §5.4.2).
        if idx <= self.log.committed || self.log.term(idx) != Some(self.term) {
            return;
        }
        let first_own_commit = self.log.term(self.log.committed) != Some(self.term);
        self.log.commit_to(idx);
        self.commit_to_broadcast = true;
        if first_own_commit {
            for req in std::mem::take(&mut self.reads.waiting_commit) {
                let _ = self.leader_read(req);
            }
        }
        if self.conf_index <= self.log.committed {
            if self.conf.is_joint() {
                // The joint configuration committed: leave it automatically.
                let mut next = self.conf.clone();
                next.voters_outgoing.clear();
                next.normalize();
                self.append_entry(EntryKind::Config, next.encode());
            } else if !self.conf.is_voter(self.id) {
                // We were removed and the removal committed: hand over by stepping down.
                self.become_follower(self.term, NONE);
            }
        }
    }

    fn committed_own_term(&self) -> bool {
        self.log.term(self.log.committed) == Some(self.term)
    }

    fn append_entry(&mut self, kind: EntryKind, data: Bytes) -> (u64, u64) {
        let e = Entry { index: self.log.last_index() + 1, term: self.term, kind, data };
        let at = (e.index, e.term);
        self.log.append(std::slice::from_ref(&e));
        if kind == EntryKind::Config {
            self.rescan_conf_from(e.index);
        }
        // A single-voter group commits once its own write is durable (on_persisted).
        at
    }

    /// Sends appends to every follower with something to send (batched per Ready).
    fn broadcast_append(&mut self) {
        let ids: Vec<NodeId> = self.progress.keys().copied().filter(|&id| id != self.id).collect();
        let carry_commit = std::mem::take(&mut self.commit_to_broadcast);
        for id in ids {
            let mut sent = false;
            while self.send_append(id, false) {
                sent = true;
            }
            if !sent && carry_commit {
                self.send_append(id, true);
            }
        }
    }

    /// Sends one append (or the snapshot) to `to` if its window allows.
    /// `allow_empty`: send even without entries (to carry the commit index).
    fn send_append(&mut self, to: NodeId, allow_empty: bool) -> bool {
        let last = self.log.last_index();
        let Some(p) = self.progress.get_mut(&to) else {
            return false;
        };
        if p.is_paused() {
            return false;
        }
        let prev_index = p.next_index - 1;
        let Some(prev_term) = self.log.term(prev_index) else {
            // The follower needs entries we compacted: send the snapshot instead.
            let meta = self.snapshot.clone();
            p.become_snapshot(meta.index);
            self.send(to, MessageBody::InstallSnapshot { meta }, false);
            return true;
        };
        let entries = if p.next_index <= last {
            let hi = last.min(p.next_index + self.cfg.append_entries_max as u64 - 1);
            self.log.slice(p.next_index, hi, self.cfg.append_bytes_max)
        } else {
            Vec::new()
        };
        if entries.is_empty() && !allow_empty && p.state == ProgressState::Replicate {
            return false;
        }
        if entries.is_empty()
            && !allow_empty
            && p.state == ProgressState::Probe
            && p.match_index + 1 == p.next_index
            && p.next_index > last
        {
            return false; // probe already matched and nothing new
        }
        let bytes = entries.iter().map(Entry::size_bytes).sum();
        let n = entries.len();
        let last_sent = entries.last().map_or(prev_index, |e| e.index);
        p.sent_append(n, last_sent, bytes);
        let more = n > 0 && p.state == ProgressState::Replicate;
        let commit = self.log.committed;
        self.send(to, MessageBody::Append { prev_index, prev_term, entries, commit }, false);
        more
    }

    fn broadcast_heartbeat(&mut self) {
        let round = self.reads.start_round(self.now, self.clock_ms);
        let ids: Vec<NodeId> = self.progress.keys().copied().filter(|&id| id != self.id).collect();
        for id in ids {
            let p = &self.progress[&id];
            // Never tell a follower to commit beyond what it is known to hold.
            let commit = self.log.committed.min(p.match_index);
            self.send(id, MessageBody::Heartbeat { commit, round, quiesce: false }, false);
        }
        self.confirm_reads(); // a single-voter group confirms at once
    }

    fn lease_is_valid(&self) -> bool {
        // Without check-quorum, voters do not honour a leader's lease.
        if !self.cfg.check_quorum
            || self.quiesced
            || self.lease_disabled
            || self.transfer.is_some()
            || !self.committed_own_term()
        {
            return false;
        }
        let me = self.id;
        let (now, lease) = (self.now, self.cfg.lease_ticks);
        let (clock, lease_ms) = (self.clock_ms, self.cfg.lease_ms);
        // Both clocks: ticks (which a stall stops) and, when configured, the
        // caller's monotonic clock (which runs on through a stall).
        quorum::is_quorum(&self.conf, |id| {
            id == me
                || self.progress.get(&id).is_some_and(|p| {
                    p.acked_round > 0
                        && p.acked_tick + lease > now
                        && (lease_ms == 0 || p.acked_ms.saturating_add(lease_ms) > clock)
                })
        })
    }

    fn leader_read(&mut self, req: ReadRequest) -> Result<(), RaftError> {
        if self.reads.len() >= self.cfg.pending_reads_max {
            return Err(RaftError::Busy);
        }
        if !self.committed_own_term() {
            // The commit index of a new leader may be stale until it commits its no-op.
            self.reads.waiting_commit.push_back(req);
            return Ok(());
        }
        let index = self.log.committed;
        if req.lease && self.lease_is_valid() {
            self.serve_read(req, index);
            return Ok(());
        }
        self.reads.add_pending(req, index);
        if self.conf.voters == [self.id] && !self.conf.is_joint() {
            let round = self.reads.start_round(self.now, self.clock_ms);
            for (r, i) in self.reads.confirm(round) {
                self.serve_read(r, i);
            }
        }
        Ok(())
    }

    fn confirm_reads(&mut self) {
        let me = self.id;
        let last_round = self.reads.last_round;
        let confirmed = quorum::joint_committed(&self.conf, |id| {
            if id == me { last_round } else { self.progress.get(&id).map_or(0, |p| p.acked_round) }
        });
        for (req, index) in self.reads.confirm(confirmed) {
            self.serve_read(req, index);
        }
    }

    fn serve_read(&mut self, req: ReadRequest, index: u64) {
        if req.from == self.id {
            self.read_states.push(ReadState { id: req.id, index });
        } else {
            self.send(req.from, MessageBody::ReadIndexResponse { ids: vec![req.id], index }, false);
        }
    }

    fn maybe_send_timeout_now(&mut self) {
        let Some(t) = &self.transfer else { return };
        if t.timeout_now_sent {
            return;
        }
        let target = t.target;
        if self.progress.get(&target).is_some_and(|p| p.match_index == self.log.last_index()) {
            // From now on another node may win without waiting out our lease.
            self.lease_disabled = true;
            if let Some(t) = &mut self.transfer {
                t.timeout_now_sent = true;
            }
            self.send(target, MessageBody::TimeoutNow, false);
        } else {
            self.send_append(target, false);
        }
    }

    // ------------------------------------------------------------ sending

    fn send(&mut self, to: NodeId, body: MessageBody, after_persist: bool) {
        self.send_with_term(to, self.term, body, after_persist)
    }

    fn send_with_term(&mut self, to: NodeId, term: u64, body: MessageBody, after_persist: bool) {
        let m = Message { from: self.id, to, term, body };
        if after_persist { self.msgs_after_persist.push(m) } else { self.msgs.push(m) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, kind: EntryKind::Normal, data: Bytes::new() }
    }

    #[test]
    fn restart_rejects_inconsistent_storage() {
        let snapshot = SnapshotMeta { index: 5, term: 2, config: Configuration::new([1, 2, 3]) };
        let gap = RestartState { snapshot: snapshot.clone(), entries: vec![entry(7, 2)], ..Default::default() };
        assert!(matches!(RawNode::restart(Config::new(1, 0), gap), Err(StartError::CorruptState(_))));
        let commit_beyond = RestartState {
            snapshot: snapshot.clone(),
            entries: vec![entry(6, 2)],
            hard_state: HardState { term: 2, vote: 1, commit: 9 },
            applied: 5,
        };
        assert!(matches!(RawNode::restart(Config::new(1, 0), commit_beyond), Err(StartError::CorruptState(_))));
        let mut bad = Config::new(1, 0);
        bad.lease_ticks = bad.election_ticks;
        assert!(matches!(RawNode::new(bad, Configuration::new([1])), Err(StartError::InvalidConfig(_))));
    }

    #[test]
    fn restart_resumes_from_storage_and_replays_committed_entries() {
        let config = Configuration::new([1, 2, 3]);
        let st = RestartState {
            hard_state: HardState { term: 3, vote: 2, commit: 7 },
            snapshot: SnapshotMeta { index: 5, term: 2, config: config.clone() },
            entries: vec![entry(6, 3), entry(7, 3), entry(8, 3)],
            applied: 5,
        };
        let mut n = RawNode::restart(Config::new(1, 0), st).unwrap();
        assert_eq!((n.term(), n.committed(), n.last_index(), n.first_index()), (3, 7, 8, 6));
        assert_eq!(n.configuration(), &config);
        let rd = n.ready();
        assert_eq!(rd.hard_state, None, "nothing new to persist");
        assert!(rd.entries.is_empty());
        let applied: Vec<u64> = rd.committed_entries.iter().map(|e| e.index).collect();
        assert_eq!(applied, vec![6, 7], "committed entries after the snapshot are replayed");
    }

    /// A fenced follower takes one rebuild offer at or below its commit
    /// index, keeps acknowledging appends while it pulls, and once rebuilt
    /// has the entries after the snapshot handed out again, exactly once.
    #[test]
    fn a_fenced_follower_rebuilds_from_a_snapshot_below_its_commit() {
        let config = Configuration::new([1, 2, 3]);
        let st = RestartState {
            hard_state: HardState { term: 2, vote: 1, commit: 8 },
            snapshot: SnapshotMeta { index: 3, term: 1, config: config.clone() },
            entries: (4..=8).map(|i| entry(i, 2)).collect(),
            applied: 3,
        };
        let mut n = RawNode::restart(Config::new(2, 0), st).unwrap();
        let rd = n.ready();
        assert_eq!(rd.committed_entries.len(), 5);
        assert_eq!(n.applied(), 8);
        let offer = |n: &mut RawNode, index| {
            n.step(Message {
                from: 1,
                to: 2,
                term: 2,
                body: MessageBody::InstallSnapshot { meta: SnapshotMeta { index, term: 2, config: config.clone() } },
            });
            n.ready()
        };
        // Not fenced: an offer below the commit index is only acknowledged.
        let rd = offer(&mut n, 6);
        assert!(rd.snapshot_install.is_none());
        n.set_fenced(true, true);
        assert!(!n.can_rebuild_from(&SnapshotMeta { index: 2, term: 1, config: config.clone() }), "before the log");
        let rd = offer(&mut n, 6);
        assert_eq!(rd.snapshot_install.as_ref().map(|i| i.meta.index), Some(6));
        // One at a time: a newer offer while pulling is only acknowledged.
        assert!(offer(&mut n, 7).snapshot_install.is_none());
        // Appends go on while it pulls: the log is not what differs.
        n.step(Message {
            from: 1,
            to: 2,
            term: 2,
            body: MessageBody::Append { prev_index: 8, prev_term: 2, entries: vec![entry(9, 2)], commit: 9 },
        });
        let rd = n.ready();
        assert_eq!(rd.entries.len(), 1, "the append was taken");
        n.on_persisted(9, 2);
        let rd = n.ready();
        assert_eq!(rd.committed_entries.iter().map(|e| e.index).collect::<Vec<_>>(), vec![9]);
        assert!(n.on_state_rebuilt(SnapshotMeta { index: 6, term: 2, config: config.clone() }));
        assert_eq!((n.applied(), n.first_index()), (6, 7));
        let rd = n.ready();
        assert_eq!(
            rd.committed_entries.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![7, 8, 9],
            "the entries after the snapshot apply again"
        );
        assert!(rd.snapshot_install.is_none());
        // Not fenced any more: no second rebuild.
        n.set_fenced(false, false);
        assert!(!n.on_state_rebuilt(SnapshotMeta { index: 7, term: 2, config: config.clone() }));
        assert_eq!(n.applied(), 9);
    }

    #[test]
    fn messages_that_need_durability_wait_for_it() {
        let mut n = RawNode::new(Config::new(1, 0), Configuration::new([1, 2, 3])).unwrap();
        n.campaign_now();
        let rd = n.ready();
        assert!(
            rd.messages.iter().all(|m| matches!(m.body, MessageBody::PreVote { .. })),
            "pre-votes change nothing durable"
        );
        for to in [2, 3] {
            n.step(Message { from: to, to: 1, term: 1, body: MessageBody::PreVoteResponse { reject: false } });
        }
        let rd = n.ready();
        assert_eq!(rd.hard_state, Some(HardState { term: 1, vote: 1, commit: 0 }));
        assert!(rd.messages.is_empty());
        assert_eq!(rd.messages_after_persist.len(), 2, "vote requests only after term and vote are durable");
        // Grants arriving before our own vote is durable do not make us leader...
        n.step(Message { from: 2, to: 1, term: 1, body: MessageBody::VoteResponse { reject: false } });
        assert_eq!(n.role(), Role::Candidate);
        // ... our durable self-vote completes the quorum.
        n.on_hard_state_persisted(HardState { term: 1, vote: 1, commit: 0 });
        assert_eq!(n.role(), Role::Leader);
        // A follower's grant is likewise held until its vote is durable.
        let mut f = RawNode::new(Config::new(2, 0), Configuration::new([1, 2, 3])).unwrap();
        f.step(Message {
            from: 1,
            to: 2,
            term: 1,
            body: MessageBody::Vote { last_index: 0, last_term: 0, transfer: false },
        });
        let rd = f.ready();
        assert_eq!(rd.hard_state, Some(HardState { term: 1, vote: 1, commit: 0 }));
        assert!(rd.messages.is_empty());
        assert_eq!(rd.messages_after_persist[0].body, MessageBody::VoteResponse { reject: false });
    }
}
