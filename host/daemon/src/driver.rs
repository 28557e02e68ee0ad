//! The group driver: one tokio task per Raft group, owning that group's
//! `waft_node::Replica`.
//!
//! Owns the group's clock (a monotonic tokio interval), its inbox (peer
//! messages and client requests, bounded), and the clients waiting on it
//! (proposals by log index, reads by read id, both bounded). After every
//! event it runs `Replica::process`, hands outgoing messages to the
//! transport, and answers whoever the output settles. As leader it stamps
//! every client request's envelope with its wall clock (never running
//! backwards): the only clock the replicated session table knows. Must never
//! block on the network or on a client: sends are `try_send`, answers go
//! through oneshots whose receivers may be gone, or onto a pipeline's
//! answer channel without waiting (`inbox::Answer`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use waft_node::{Outcome, Output, PendingReady, Replica, WriteToken};
use waft_proto::client::{self, Consistency};
use waft_proto::peer::PeerMessage;
use waft_raft::{Message, NodeId, ReadMode, Role};
use waft_runtime::ApplyError;
use waft_session::{Body, Envelope};
use waft_storage::{RocksLogStore, SnapshotId, SnapshotStore};

use crate::commit::{Committer, SharedStore};
use crate::inbox::{
    AdminReply, Answer, BUSY_RETRY_AFTER_MS, Call, CallAnswer, Committed, GroupHandle, GroupMetrics, Input, Op,
    ProposeReply, Reply, SESSION_LIMIT_RETRY_AFTER_MS, settings_to_proto,
};
use crate::install::{self, Progress};
use crate::peer::Transport;

/// Peer messages and client requests queued for one group. A full inbox makes
/// clients see BUSY and peers' messages drop, which bounds memory per group.
pub const INBOX_CAPACITY: usize = 4096;
/// Inputs taken from the inbox before the next `process`, so that a burst of
/// proposals shares one synced write without starving the clock.
pub const INBOX_DRAIN_MAX: usize = 256;
/// Proposals waiting for their entry to apply. Beyond it, proposals get BUSY.
pub const PROPOSALS_PENDING_MAX: usize = 10_000;
/// Reads waiting for a read index or for it to be applied.
pub const READS_PENDING_MAX: usize = 10_000;
/// Readies handled after one event; the rest waits for the next event or
/// tick, so the inbox and the clock are never starved.
pub const PROCESS_READIES_MAX: usize = 64;
/// Reads whose queries one round runs in place on the driver's worker; a
/// round with more runs them all off it (`block_in_place`). Fuel bounds
/// each query; a few cost less than the hand-off.
pub const QUERIES_IN_PLACE_MAX: usize = 64;
/// Request bytes of the reads one round runs in place, in all.
pub const QUERIES_IN_PLACE_BYTES_MAX: usize = 64 * 1024;
/// Waits for the oldest write still on its way to disk (never, with none).
async fn oldest_write(
    writes: &mut std::collections::VecDeque<(WriteToken, crate::commit::Durable)>,
) -> Result<(), String> {
    match writes.front_mut() {
        Some((_, rx)) => crate::commit::durable(rx).await,
        None => std::future::pending().await,
    }
}

pub struct Driver {
    replica: Replica,
    /// The origin of the monotonic clock the replica's lease is measured on.
    epoch: std::time::Instant,
    store: Arc<Mutex<RocksLogStore>>,
    /// Makes this group's log writes durable, merged with other groups'.
    committer: Committer,
    snapshots: Arc<SnapshotStore>,
    /// Peers' queues and addresses (for NOT_LEADER hints and snapshot pulls).
    transport: Transport,
    /// What this group last told the transport its members' addresses are.
    published: Vec<(NodeId, String)>,
    /// Addresses the create of an empty replica came with: the group's
    /// until its configuration arrives (by snapshot or log).
    hints: Vec<(NodeId, String)>,
    tick: Duration,
    command_bytes_max: u64,
    /// Proposals by log index: the (term, answer) of the entry proposed there.
    /// Invariant: len() <= PROPOSALS_PENDING_MAX.
    proposals: BTreeMap<u64, (u64, Answer<ProposeReply>)>,
    /// Reads whose read index has not come back yet, by read id.
    reads: HashMap<u64, PendingRead>,
    /// Reads whose read index is known, waiting for `applied >= index`
    /// (stale reads: index 0, served at the end of the round).
    reads_ready: Vec<(u64, PendingRead)>,
    /// The writes handed to the commit thread and not yet known durable,
    /// oldest first, by the token the replica's pipeline knows them by.
    /// Invariant: len() <= waft_node::WRITES_IN_FLIGHT_MAX.
    writes: std::collections::VecDeque<(WriteToken, crate::commit::Durable)>,
    next_read_id: u64,
    status: watch::Sender<client::GroupStatus>,
    /// The latest snapshot offer from a leader: who sent it and what to pull.
    offer: Option<(NodeId, waft_storage::SnapshotMeta)>,
    /// The snapshot being pulled right now. Invariant: at most one per group.
    transfer: Option<Arc<Progress>>,
    /// A module this node pulls ahead of a deploy, for status.
    module_transfer: Option<Arc<crate::modules::ModuleProgress>>,
    /// Pull rate limit in bytes per second (0: none).
    snapshot_bytes_per_sec: u64,
    /// Ask for a snapshot every this many ticks (0: never; the margin rules).
    snapshot_interval_ticks: u64,
    /// The last entry covered by this node's latest snapshot.
    snapshot_index: u64,
    /// A snapshot was asked for when the group last went quiet.
    quiet_snapshot_asked: bool,
    /// The timestamp this node last stamped into an envelope: the leader's
    /// clock as the session table sees it. Invariant: never decreases.
    last_stamp_ms: u64,
    /// Lets a pull task report back; weak, so the inbox still closes when
    /// every service handle is gone.
    inbox: Option<mpsc::WeakSender<Input>>,
    /// The admin change under way, if any. Invariant: at most one per group.
    admin: Option<PendingAdmin>,
    metrics: Arc<GroupMetrics>,
}

/// An admin change that started and waits to take effect.
struct PendingAdmin {
    waiting: AdminWait,
    reply: oneshot::Sender<AdminReply>,
}

enum AdminWait {
    /// A configuration proposed after log index `after`: done when a
    /// committed configuration past it is no longer joint.
    Config {
        after: u64,
    },
    /// Done when `target` (or, for `None`, any other node) leads.
    Transfer(Option<NodeId>),
    Snapshot,
}

struct PendingRead {
    request: Bytes,
    reply: Answer<Reply>,
}

impl Driver {
    // Each argument is a separate part the host wires in, named at the one call site.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        replica: Replica,
        store: Arc<Mutex<RocksLogStore>>,
        committer: Committer,
        snapshots: Arc<SnapshotStore>,
        transport: Transport,
        hints: Vec<(NodeId, String)>,
        tick: Duration,
        command_bytes_max: u64,
        snapshot_bytes_per_sec: u64,
        snapshot_interval_secs: u64,
    ) -> Driver {
        let snapshot_interval_ticks = (snapshot_interval_secs * 1000).div_ceil(tick.as_millis().max(1) as u64);
        let (status, _) = watch::channel(client::GroupStatus::default());
        let snapshot_index = snapshots.latest(replica.group()).map_or(0, |id| id.index);
        Driver {
            replica,
            epoch: std::time::Instant::now(),
            store,
            committer,
            snapshots,
            transport,
            published: Vec::new(),
            hints,
            tick,
            command_bytes_max,
            proposals: BTreeMap::new(),
            reads: HashMap::new(),
            reads_ready: Vec::new(),
            writes: std::collections::VecDeque::new(),
            next_read_id: 1,
            status,
            offer: None,
            transfer: None,
            module_transfer: None,
            snapshot_bytes_per_sec,
            snapshot_interval_ticks,
            snapshot_index,
            quiet_snapshot_asked: false,
            last_stamp_ms: 0,
            inbox: None,
            admin: None,
            metrics: Arc::new(GroupMetrics::default()),
        }
    }

    fn group(&self) -> u64 {
        self.replica.group()
    }

    fn leader_hint(&self) -> (u64, String) {
        let leader = self.replica.raft().leader().unwrap_or(waft_raft::NONE);
        (leader, self.transport.address_of(leader).unwrap_or_default())
    }

    /// A fenced replica's refusal: the client goes to the leader (not this
    /// node, which hands leadership on once fenced).
    fn fenced_error(&self, why: String) -> client::Error {
        let (leader, address) = self.leader_hint();
        if leader == self.replica.raft().id() {
            return client::Error::fenced(why, waft_raft::NONE, "");
        }
        client::Error::fenced(why, leader, address)
    }

    fn refusal(&self, e: &waft_node::Error) -> client::Error {
        match e {
            waft_node::Error::Raft { source, .. } => {
                client::Error::from_raft(source, &self.leader_hint().1, BUSY_RETRY_AFTER_MS)
            }
            waft_node::Error::EmptyCommand { .. } | waft_node::Error::Envelope { .. } => {
                client::Error::invalid_request(e.to_string())
            }
            waft_node::Error::NotBound { .. } => client::Error::busy(BUSY_RETRY_AFTER_MS, e.to_string()),
            waft_node::Error::Fenced { .. } => self.fenced_error(e.to_string()),
            _ => client::Error::internal(e.to_string()),
        }
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Peer { message, snapshot } => {
                if let Some(stored) = snapshot {
                    self.offer = Some((message.from, stored));
                }
                self.replica.step(message);
            }
            Input::InstallPulled(pulled) => {
                let mut out = Output::default();
                let mut store = SharedStore(self.store.clone());
                // Loading a snapshot may take long: off the async worker.
                let done = tokio::task::block_in_place(|| {
                    self.replica.install_pulled(pulled, &mut store, &self.snapshots, &mut out)
                });
                match done {
                    Ok(()) => self.settle(out),
                    Err(e) => tracing::error!(error = %e, "snapshot install stopped the replica"),
                }
            }
            Input::SnapshotWritten(done) => {
                let mut out = Output::default();
                // Commits the snapshot and syncs the store: off the async worker.
                match tokio::task::block_in_place(|| self.replica.snapshot_written(done, &mut out)) {
                    Ok(()) => self.settle(out),
                    Err(e) => tracing::error!(error = %e, "finishing a snapshot stopped the replica"),
                }
            }
            Input::Admin { op, addresses, reply } => self.start_admin(op, addresses, reply),
            Input::PeerLost(node) => {
                let raft = self.replica.raft();
                if raft.is_quiesced() && raft.leader() == Some(node) {
                    tracing::info!(leader = node, "the leader's node is unreachable: waking the quiet group");
                    self.replica.wake();
                }
            }
            Input::Propose { body, reply } => self.propose(body, Answer::Once(reply)),
            Input::Calls { calls, answers } => {
                for (token, call) in calls {
                    let to = answers.clone();
                    match call {
                        Call::Propose(body) => self.propose(body, Answer::Pipe { token, to }),
                        Call::Query { request, consistency } => {
                            self.query(request, consistency, Answer::Pipe { token, to })
                        }
                    }
                }
            }
            Input::Deploy { module, reply } => {
                // The members fetched and compiled the module already
                // (`modules::prepare_members`). A module that fits an entry
                // still travels in it, so that a replica that missed the
                // preparation (down then, or added later and replaying the
                // log) can follow; a larger one is named by hash.
                let size = module.bytes().len() as u64;
                let body = if size <= self.command_bytes_max {
                    Body::Deploy { module: module.bytes().clone() }
                } else {
                    Body::DeployHash { module_hash: module.hash().0, size }
                };
                if self.replica.raft().role() == Role::Leader {
                    // Applying the entry then switches without compiling again.
                    self.replica.prepare_module(module);
                }
                self.propose(body, Answer::Once(reply));
            }
            Input::SetGroup { changes, reply } => self.set_group(changes, reply),
            Input::DeployCheck { reply } => {
                if self.replica.raft().role() != Role::Leader {
                    let (id, addr) = self.leader_hint();
                    let _ = reply.send(Err(client::Error::not_leader(id, addr)));
                    return;
                }
                // A save of the whole state, beside the applies; it may wait
                // for a save in flight first: off the async worker.
                let saved = tokio::task::block_in_place(|| self.replica.state_saved());
                let limits = self.replica.guest_limits();
                let failed = |e: &dyn std::fmt::Display| {
                    client::Error::internal(format!("the running state could not be saved: {e}"))
                };
                let state = match saved {
                    Ok(state) => state,
                    Err(e) => {
                        let _ = reply.send(Err(failed(&e)));
                        return;
                    }
                };
                tokio::spawn(async move {
                    let answer = match tokio::task::spawn_blocking(move || state.wait()).await {
                        Ok(Ok(bytes)) => Ok((bytes.to_vec(), limits)),
                        Ok(Err(e)) => Err(failed(&e)),
                        Err(e) => Err(failed(&e)),
                    };
                    let _ = reply.send(answer);
                });
            }
            Input::Query { request, consistency, reply } => self.query(request, consistency, Answer::Once(reply)),
            Input::Prepared(module) => {
                tracing::info!(group = self.group(), module = %module.hash().to_hex(), "module prepared for its deploy");
                self.replica.prepare_module(module);
                self.module_transfer = None;
            }
            Input::ModuleTransfer(progress) => self.module_transfer = progress,
        }
    }

    fn set_group(&mut self, changes: Vec<(String, u64)>, reply: oneshot::Sender<ProposeReply>) {
        if self.replica.raft().role() != Role::Leader {
            let (id, addr) = self.leader_hint();
            let _ = reply.send(Err(client::Error::not_leader(id, addr)));
            return;
        }
        let mut settings = self.replica.settings().clone();
        for (name, value) in &changes {
            if let Err(e) = settings.set(name, *value) {
                let _ = reply.send(Err(client::Error::invalid_request(e.to_string())));
                return;
            }
        }
        if let Err(e) = settings.validate() {
            let _ = reply.send(Err(client::Error::invalid_request(format!("settings refused, nothing changed: {e}"))));
            return;
        }
        let base = self.replica.settings_index();
        self.propose(Body::Settings { settings: Bytes::from(settings.encode_change(base)) }, Answer::Once(reply));
    }

    fn propose(&mut self, body: Body, reply: Answer<ProposeReply>) {
        if self.replica.raft().role() != Role::Leader {
            let (id, addr) = self.leader_hint();
            reply.send(Err(client::Error::not_leader(id, addr)));
            return;
        }
        if self.proposals.len() >= PROPOSALS_PENDING_MAX {
            GroupMetrics::count(&self.metrics.busy_rejections);
            reply.send(Err(client::Error::busy(BUSY_RETRY_AFTER_MS, "too many proposals wait to apply")));
            return;
        }
        let envelope = Envelope::new(self.stamp_ms(), body);
        match self.replica.propose(&envelope) {
            Ok((index, term)) => {
                GroupMetrics::count(&self.metrics.proposals);
                // A leader never proposes twice at one index in one term: a
                // newer leader cut the older waiter's entry from this node's
                // log. Another node may still hold it, and a later leader
                // commit it (Raft's figure 8), so its outcome is unknown.
                if let Some((_, old)) = self.proposals.insert(index, (term, reply)) {
                    old.send(Err(displaced(index)));
                }
            }
            Err(e) => {
                reply.send(Err(self.refusal(&e)));
            }
        }
    }

    /// The leader's clock for a new envelope, in ms since the Unix epoch:
    /// the wall clock, held back from running backwards (a clock step, or a
    /// new leader whose clock lags the time the log already reached). Every
    /// replica expires sessions by these stamps alone.
    fn stamp_ms(&mut self) -> u64 {
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_stamp_ms = wall_ms.max(self.last_stamp_ms).max(self.replica.sessions().now_ms());
        self.last_stamp_ms
    }

    fn query(&mut self, request: Bytes, consistency: Consistency, reply: Answer<Reply>) {
        GroupMetrics::count(&self.metrics.reads);
        if self.reads.len() + self.reads_ready.len() >= READS_PENDING_MAX {
            GroupMetrics::count(&self.metrics.busy_rejections);
            reply.send(Err(client::Error::busy(BUSY_RETRY_AFTER_MS, "too many reads wait on this group")));
            return;
        }
        let mode = match consistency {
            Consistency::Stale => {
                // Served with the reads that are ready after this round, so
                // that a crowd of them runs the guest in one hand-off (see
                // `serve_ready_reads`).
                self.reads_ready.push((0, PendingRead { request, reply }));
                return;
            }
            Consistency::Lease => ReadMode::Lease,
            // On a follower the core forwards the read index request to the
            // leader (a follower read); on the leader it confirms with a quorum.
            Consistency::Linearizable | Consistency::Follower => ReadMode::Safe,
        };
        let id = self.next_read_id;
        self.next_read_id += 1;
        match self.replica.read_index(id, mode) {
            Ok(()) => {
                self.reads.insert(id, PendingRead { request, reply });
            }
            Err(e) => {
                reply.send(Err(self.refusal(&e)));
            }
        }
    }

    /// Runs the replica until it has nothing ready (bounded), then answers.
    /// The replica's pipeline orders everything; this hands each Ready's
    /// write to the commit thread and runs long work off the async worker.
    async fn process(&mut self) -> Result<(), waft_node::Error> {
        if let Some(reason) = self.replica.stopped() {
            return Err(waft_node::Error::Stopped { group: self.group(), reason: reason.to_string() });
        }
        for _ in 0..PROCESS_READIES_MAX {
            let mut outbox = Vec::new();
            // Messages that need not wait for the disk leave now, so followers
            // write their copy while the leader writes its own. None while
            // the pipeline is full or a pulled snapshot waits for it.
            let begun = self.replica.begin_ready(&mut |m| outbox.push(m))?;
            // A digest report may leave even when no Ready begins.
            self.send(outbox);
            let Some(mut pending) = begun else { break };
            let write = pending.take_write();
            // The write syncs on the commit thread while the entries
            // committed earlier (durable already) apply and answer: they
            // need not wait for this sync.
            let durable = if write.is_empty() {
                None
            } else {
                match self.committer.submit(write).await {
                    Ok(durable) => Some(durable),
                    Err(e) => return Err(self.replica.write_failed(e)),
                }
            };
            let mut out = Output::default();
            // A Ready that may run long (a big batch, a snapshot save, a
            // deploy: see `may_block`) must tell tokio this worker is busy.
            // The rest, a few entries through the guest included, runs in
            // place: handing the worker's core to another thread costs a
            // thread wake-up and two context switches, more than its work.
            let started = std::time::Instant::now();
            let mut apply = |pending: &mut PendingReady| self.replica.apply_ready(pending, &self.snapshots, &mut out);
            if pending.may_block() {
                tokio::task::block_in_place(|| apply(&mut pending))?;
            } else {
                apply(&mut pending)?;
            }
            if !out.applied.is_empty() {
                let m = &self.metrics;
                m.apply_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                m.apply_batches.fetch_add(1, Ordering::Relaxed);
                m.applied_entries.fetch_add(out.applied.len() as u64, Ordering::Relaxed);
            }
            self.settle(out);
            let token = self.replica.enqueue_ready(pending);
            if let Some(durable) = durable {
                self.writes.push_back((token, durable));
            }
            self.finish_durable()?;
        }
        self.serve_ready_reads();
        Ok(())
    }

    /// Tells the replica which writes the commit thread made durable, and
    /// lets it finish the Readies whose turn came: the core hears of them,
    /// and the messages that promise durability leave.
    fn finish_durable(&mut self) -> Result<(), waft_node::Error> {
        // A finished write can commit, and a first commit of the term
        // releases queued lease reads: the clock must read now, after any
        // stall while the write was on its way.
        self.read_clock();
        while let Some((token, rx)) = self.writes.front_mut() {
            match rx.try_recv() {
                Ok(Ok(())) => self.replica.write_durable(*token),
                Ok(Err(e)) => return Err(self.replica.write_failed(e)),
                Err(oneshot::error::TryRecvError::Empty) => break,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(self.replica.write_failed("the commit thread stopped before the write was durable"));
                }
            }
            self.writes.pop_front();
        }
        let mut outbox = Vec::new();
        let mut out = Output::default();
        let mut store = SharedStore(self.store.clone());
        // Applied already, so no guest runs; but a snapshot that waited for
        // the pipeline to drain may install here (which takes long), or a
        // snapshot's log purge be written (a synced write).
        let may_block = self.replica.finish_may_block();
        let mut finish = || self.replica.finish_durable(&mut store, &self.snapshots, &mut |m| outbox.push(m), &mut out);
        if may_block {
            tokio::task::block_in_place(finish)?
        } else {
            finish()?
        }
        self.send(outbox);
        self.settle(out);
        Ok(())
    }

    fn send(&self, messages: Vec<Message>) {
        if !messages.is_empty() {
            let wire = messages.into_iter().map(|m| self.wire(m)).collect();
            self.transport.send(self.group(), wire);
        }
    }

    fn settle(&mut self, out: Output) {
        let group = self.group();
        if let Some(saved) = &out.snapshot_saved {
            self.snapshot_index = saved.index;
        }
        self.settle_admin(&out);
        for e in &out.events {
            if let waft_raft::Event::FollowerLostEntries { peer, acknowledged, holds } = e {
                tracing::warn!(
                    group,
                    peer,
                    acknowledged,
                    holds,
                    "a follower holds fewer entries than it acknowledged (a wiped or restored data directory?); \
                     replicating to it again from what it holds"
                );
            }
        }
        if let Some(soft) = out.soft_state {
            tracing::info!(group, node = self.replica.raft().id(), term = soft.term, role = ?soft.role, leader = soft.leader, "role");
            if soft.role != Role::Leader {
                // Reads waiting on our leadership will never be confirmed.
                let (id, addr) = self.leader_hint();
                for (_, read) in self.reads.drain() {
                    read.reply.send(Err(client::Error::not_leader(id, addr.clone())));
                }
            }
        }
        for a in out.applied {
            let Some((term, reply)) = self.proposals.remove(&a.index) else { continue };
            let answer = match a.outcome {
                _ if term != a.term => Err(lost(a.index)),
                Outcome::Fenced(why) => Err(client::Error::outcome_unknown(why)),
                outcome => answer(a.index, outcome),
            };
            reply.send(answer);
        }
        for rs in out.read_states {
            if let Some(read) = self.reads.remove(&rs.id) {
                self.reads_ready.push((rs.index, read));
            }
        }
        if let Some(install) = out.snapshot_install {
            self.start_install(install);
        }
        if let Some(e) = out.snapshot_failed {
            tracing::warn!(group, error = %e, "snapshot not saved");
        }
        if let Some(finished) = out.install_finished {
            self.install_finished(finished);
        }
        if let Some(job) = out.snapshot_job {
            self.write_snapshot(job);
        }
    }

    /// Writes a kv state machine's snapshot on a blocking thread while the
    /// group goes on; its end comes back through the inbox.
    fn write_snapshot(&mut self, job: waft_node::SnapshotJob) {
        let group = self.group();
        let Some(inbox) = self.inbox.as_ref().and_then(|w| w.upgrade()) else { return };
        tracing::debug!(group, index = job.index(), "writing a snapshot beside the apply path");
        let identity = job.identity();
        tokio::spawn(async move {
            let done = match tokio::task::spawn_blocking(move || job.run()).await {
                Ok(done) => done,
                // The core asks for the next snapshot only once it hears
                // how this one ended, failure included.
                Err(e) => {
                    tracing::error!(group, error = %e, "a snapshot job failed to finish");
                    waft_node::SnapshotDone::failed(identity, format!("the snapshot job failed: {e}"))
                }
            };
            // Waits for room rather than drop the outcome: the replica must
            // hear of every snapshot it handed out.
            let _ = inbox.send(Input::SnapshotWritten(done)).await;
        });
    }

    fn admin_result(&self) -> waft_proto::admin::AdminResult {
        let raft = self.replica.raft();
        waft_proto::admin::AdminResult {
            configuration: Some(raft.configuration().into()),
            leader_id: raft.leader().unwrap_or(waft_raft::NONE),
            snapshot_index: self.snapshot_index,
        }
    }

    /// Starts an operator's change; its answer waits in `self.admin` until
    /// the change took effect (`settle_admin`), or goes out now if it failed
    /// to start.
    fn start_admin(&mut self, op: Op, addresses: Vec<(NodeId, String)>, reply: oneshot::Sender<AdminReply>) {
        use Op;
        if self.admin.is_some() {
            let e = client::Error::busy(BUSY_RETRY_AFTER_MS, "another admin change is in progress on this group");
            let _ = reply.send(Err(e));
            return;
        }
        if op.needs_leader() && self.replica.raft().role() != Role::Leader {
            let (id, addr) = self.leader_hint();
            let _ = reply.send(Err(client::Error::not_leader(id, addr)));
            return;
        }
        let after = self.replica.raft().last_index();
        let config = self.replica.raft().configuration().clone();
        // The target with every member's address this node knows: given by
        // the request, recorded, or known to the transport (a --peer).
        let target = op.target(&config).map(|t| {
            let known: Vec<(NodeId, String)> =
                t.members().into_iter().filter_map(|id| Some((id, self.transport.address_of(id)?))).collect();
            t.with_addresses(addresses.iter().cloned().chain(config.addresses.iter().cloned()).chain(known))
        });
        let same_members = |t: &waft_raft::Configuration| {
            (&t.voters, &t.voters_outgoing, &t.learners) == (&config.voters, &config.voters_outgoing, &config.learners)
        };
        // Done already when the members are the target's and every address
        // the request gave is the one recorded (a retry after a lost answer).
        let given_recorded = addresses.iter().all(|(id, a)| config.address_of(*id) == Some(a.as_str()));
        if target.as_ref().is_some_and(|t| same_members(t) && given_recorded) {
            // The change took effect already (a retry of a call whose answer
            // was lost, say): success, once the configuration is committed.
            let answer = if self.replica.raft().conf_change_pending() {
                Err(client::Error::busy(
                    BUSY_RETRY_AFTER_MS,
                    "the configuration is changing; ask again once it settled",
                ))
            } else {
                Ok(self.admin_result())
            };
            let _ = reply.send(answer);
            return;
        }
        let started = match (&op, target) {
            (Op::AddLearners(ids), _) if ids.iter().any(|id| config.is_voter(*id)) => {
                // The core's refusal: a voter cannot become a learner this way.
                self.replica.add_learner(ids.iter().copied().find(|id| config.is_voter(*id)).unwrap_or_default())
            }
            (Op::PromoteLearner(id), _) if !config.is_learner(*id) => self.replica.promote_learner(*id),
            (
                Op::AddPeer(_)
                | Op::RemovePeer(_)
                | Op::ChangePeers { .. }
                | Op::AddLearners(_)
                | Op::RemoveLearners(_)
                | Op::PromoteLearner(_),
                Some(t),
            ) => self.replica.change_members(t.voters, t.learners, t.addresses),
            (Op::AddPeer(_) | Op::RemovePeer(_) | Op::ChangePeers { .. }, None)
            | (Op::AddLearners(_) | Op::RemoveLearners(_) | Op::PromoteLearner(_), None) => {
                let _ = reply.send(Err(client::Error::internal("a membership change without a target")));
                return;
            }
            (Op::TransferLeader(target), _) => {
                if *target == Some(self.replica.raft().id()) {
                    let _ = reply.send(Ok(self.admin_result()));
                    return;
                }
                self.replica.transfer_leader(*target)
            }
            (Op::Snapshot, _) if self.replica.applied_index() <= self.snapshot_index => {
                // Nothing applied since the last snapshot: it is current.
                let _ = reply.send(Ok(self.admin_result()));
                return;
            }
            (Op::Snapshot, _) => {
                self.replica.request_snapshot();
                Ok(())
            }
            (Op::ResetPeers(_), _) if !self.replica.raft().leader_lost() => {
                let why = format!(
                    "node {} leads or heard from a leader within the last election timeout: the group has a \
                     quorum, and a reset would split it; change the membership instead",
                    self.replica.raft().id()
                );
                let _ = reply.send(Err(client::Error::rejected(why)));
                return;
            }
            (Op::ResetPeers(voters), _) => self.replica.reset_peers(voters.clone()),
        };
        if let Err(e) = started {
            let _ = reply.send(Err(self.refusal(&e)));
            return;
        }
        tracing::info!(group = self.group(), node = self.replica.raft().id(), ?op, "admin change started");
        let waiting = match op {
            Op::TransferLeader(target) => AdminWait::Transfer(target),
            Op::Snapshot => AdminWait::Snapshot,
            Op::ResetPeers(_) => {
                let _ = reply.send(Ok(self.admin_result()));
                return;
            }
            _ => AdminWait::Config { after },
        };
        self.admin = Some(PendingAdmin { waiting, reply });
    }

    /// Answers the pending admin change if `out` shows it took effect (or
    /// failed).
    fn settle_admin(&mut self, out: &Output) {
        let Some(pending) = &self.admin else { return };
        let me = self.replica.raft().id();
        let outcome: Option<AdminReply> = match pending.waiting {
            AdminWait::Config { after } => {
                let done = out.configs_committed.iter().any(|(i, c)| *i > after && c.voters_outgoing.is_empty());
                let failed = out.events.iter().find_map(|e| match e {
                    waft_raft::Event::ConfChangeFailed { reason } => Some(*reason),
                    _ => None,
                });
                if done {
                    Some(Ok(self.admin_result()))
                } else if let Some(reason) = failed {
                    Some(Err(client::Error::rejected(format!("the membership change was abandoned: {reason}"))))
                } else if out.soft_state.is_some_and(|s| s.role != Role::Leader) {
                    let (id, addr) = self.leader_hint();
                    let mut e = client::Error::not_leader(id, addr);
                    e.message = "leadership changed before the change committed; it may or may not take effect: check `waft admin peers`".into();
                    Some(Err(e))
                } else {
                    None
                }
            }
            AdminWait::Transfer(target) => {
                // Stepping down for the target's election also ends the
                // transfer in the core; only an abort while still leading is
                // a failure. Otherwise wait until a new leader is known.
                let aborted = out.events.iter().any(|e| matches!(e, waft_raft::Event::TransferAborted { .. }))
                    && self.replica.raft().role() == Role::Leader;
                match out.soft_state {
                    Some(s) if s.leader != waft_raft::NONE && s.leader != me => {
                        if target.is_none_or(|t| t == s.leader) {
                            Some(Ok(self.admin_result()))
                        } else {
                            Some(Err(client::Error::rejected(format!(
                                "node {} won the election instead of the transfer's target",
                                s.leader
                            ))))
                        }
                    }
                    // This node stepped down for the target's campaign and
                    // then won the next election itself: the target did
                    // not win, and nothing else will answer the wait.
                    Some(s) if s.leader == me && s.role == Role::Leader => Some(Err(client::Error::rejected(
                        "the transfer's target did not win its election; this node leads again",
                    ))),
                    _ if aborted => Some(Err(client::Error::rejected(
                        "the leader transfer was abandoned (the target did not catch up or win within an election timeout)",
                    ))),
                    _ => None,
                }
            }
            AdminWait::Snapshot => match (&out.snapshot_saved, &out.snapshot_failed) {
                (Some(_), _) => Some(Ok(self.admin_result())),
                (None, Some(e)) => Some(Err(client::Error::internal(format!("the snapshot failed: {e}")))),
                _ => None,
            },
        };
        if let Some(outcome) = outcome
            && let Some(pending) = self.admin.take()
        {
            let _ = pending.reply.send(outcome);
        }
    }

    /// The wire form of an outgoing message; an `InstallSnapshot` gets the
    /// manifest of the snapshot it names, so the follower knows what to pull.
    fn wire(&self, m: Message) -> PeerMessage {
        let snapshot = match &m.body {
            waft_raft::MessageBody::InstallSnapshot { meta } => Some(SnapshotId { index: meta.index, term: meta.term }),
            _ => None,
        };
        let mut wire = PeerMessage::from_raft(self.group(), m);
        if let Some(id) = snapshot
            && let Some(manifest) = install::manifest(&self.snapshots, self.group(), id)
        {
            wire.set_snapshot_manifest(manifest);
        }
        wire
    }

    /// The core asked for the snapshot `install` names: pull it from the
    /// leader that offered it, in a task of its own.
    fn start_install(&mut self, install: waft_raft::SnapshotInstall) {
        let group = self.group();
        let (index, term) = (install.meta.index, install.meta.term);
        if self.transfer.as_ref().is_some_and(|p| (p.index, p.term) == (index, term)) {
            return;
        }
        if self.transfer.is_some() {
            // A newer snapshot superseded the one in flight; that pull's
            // install will be refused when it ends, and this one offered again.
            tracing::info!(group, index, term, "snapshot offer while another pull runs; waiting for it to end");
            return;
        }
        let offered = match &self.offer {
            Some((from, stored)) if *from == install.from && (stored.index, stored.term) == (index, term) => {
                stored.clone()
            }
            _ => {
                tracing::warn!(
                    group,
                    from = install.from,
                    index,
                    "snapshot offer came without a manifest; waiting for the next"
                );
                self.replica.abandon_install();
                return;
            }
        };
        let Some(addr) = self.transport.address_of(install.from) else {
            tracing::warn!(group, from = install.from, "no address for the snapshot's sender");
            self.replica.abandon_install();
            return;
        };
        let leader = match self.transport.dialer().endpoint(install.from, &addr) {
            Ok(leader) => leader,
            Err(e) => {
                tracing::warn!(group, from = install.from, addr, error = %e, "the sender's address is not usable");
                self.replica.abandon_install();
                return;
            }
        };
        let pending = match self.replica.begin_install(&self.snapshots, offered) {
            Ok(pending) => pending,
            Err(e) => {
                tracing::warn!(group, index, term, error = %e, "cannot start snapshot install");
                if !e.is_fatal() {
                    self.replica.abandon_install();
                }
                return;
            }
        };
        let Some(inbox) = self.inbox.as_ref().and_then(|w| w.upgrade()) else { return };
        let progress = Arc::new(Progress {
            index,
            term,
            bytes_total: pending.files().iter().map(|f| f.size).sum(),
            bytes_done: AtomicU64::new(0),
        });
        self.transfer = Some(progress.clone());
        tracing::info!(group, from = install.from, index, term, bytes = progress.bytes_total, "pulling snapshot");
        let rate = self.snapshot_bytes_per_sec;
        tokio::spawn(async move {
            let pulled = install::pull(leader, group, pending, rate, progress).await;
            // Waits for room rather than drop the outcome: the driver must
            // hear of every pull it started.
            let _ = inbox.send(Input::InstallPulled(pulled)).await;
        });
    }

    /// A pull's install ended (in the replica's pipeline, once the writes
    /// before it were durable): log it, and start a newer pull the core
    /// asked for meanwhile.
    fn install_finished(&mut self, finished: Result<SnapshotId, String>) {
        let group = self.group();
        let Some(progress) = self.transfer.take() else { return };
        match finished {
            Ok(id) => {
                self.snapshot_index = self.snapshot_index.max(id.index);
                tracing::info!(
                    group,
                    index = id.index,
                    term = id.term,
                    bytes = progress.bytes_total,
                    "snapshot installed"
                );
            }
            Err(why) => {
                tracing::warn!(group, index = progress.index, term = progress.term, %why, "snapshot install failed; the leader will offer it again")
            }
        }
        if let Some(next) = self.replica.pending_install().cloned() {
            self.start_install(next);
        }
    }

    /// Answers the reads whose index is applied: in place when they are
    /// few and small, otherwise off the async worker in one hand-off.
    fn serve_ready_reads(&mut self) {
        let applied = self.replica.applied_index();
        let (mut count, mut bytes) = (0usize, 0usize);
        for (index, read) in &self.reads_ready {
            if *index <= applied {
                count += 1;
                bytes += read.request.len();
            }
        }
        if count == 0 {
            return;
        }
        if count <= QUERIES_IN_PLACE_MAX && bytes <= QUERIES_IN_PLACE_BYTES_MAX {
            self.answer_reads(applied);
        } else {
            tokio::task::block_in_place(|| self.answer_reads(applied));
        }
    }

    /// Runs the query of every read whose index is at most `applied`.
    fn answer_reads(&mut self, applied: u64) {
        let waiting = std::mem::take(&mut self.reads_ready);
        for (index, read) in waiting {
            if index > applied {
                self.reads_ready.push((index, read));
                continue;
            }
            if read.reply.is_closed() {
                continue;
            }
            let answer = self.replica.query(&read.request).map(|b| (b, applied)).map_err(|e| query_error(&e));
            read.reply.send(answer);
        }
    }

    /// Forgets waiters whose client gave up (timed out or disconnected), so
    /// entries that never apply do not hold slots forever.
    fn prune(&mut self) {
        if self.admin.as_ref().is_some_and(|a| a.reply.is_closed()) {
            // Its caller gave up waiting; let the next change start.
            self.admin = None;
        }
        self.proposals.retain(|_, (_, reply)| !reply.is_closed());
        self.reads.retain(|_, read| !read.reply.is_closed());
        self.reads_ready.retain(|(_, read)| !read.reply.is_closed());
    }

    /// Tells the transport this group's members' addresses when they
    /// changed: a catching-up change's, the configuration's and, until the
    /// group has a configuration, what its create came with (the first
    /// named for an id wins).
    fn publish_addresses(&mut self) {
        let raft = self.replica.raft();
        let conf = raft.configuration();
        let pending = raft.pending_target();
        if !self.hints.is_empty() && !conf.voters.is_empty() {
            self.hints = Vec::new();
        }
        if pending.is_none() && self.hints.is_empty() && conf.addresses == self.published {
            return;
        }
        let mut all: Vec<(NodeId, String)> = pending.map(|p| p.addresses.clone()).unwrap_or_default();
        all.extend(conf.addresses.iter().cloned());
        all.extend(self.hints.iter().cloned());
        all.sort_by_key(|(id, _)| *id);
        all.dedup_by_key(|(id, _)| *id);
        if all != self.published {
            self.transport.set_group(self.group(), &all);
            self.published = all;
        }
    }

    fn publish_status(&self) {
        let raft = self.replica.raft();
        let (leader_id, leader_address) = self.leader_hint();
        let role: client::Role = raft.role().into();
        let digests = self.replica.digest_status();
        let status = client::GroupStatus {
            group: self.group(),
            role: role as i32,
            term: raft.term(),
            leader_id,
            leader_address,
            commit_index: raft.committed(),
            applied_index: self.replica.applied_index(),
            configuration: Some(raft.configuration().into()),
            module_hash: Bytes::copy_from_slice(&self.replica.module_hash().0),
            module_index: self.replica.module_index(),
            settings: Some(settings_to_proto(self.replica.settings())),
            settings_index: self.replica.settings_index(),
            digest_verified_index: digests.verified,
            digest_index: digests.latest.map_or(0, |(i, _)| i),
            digest: digests.latest.map_or_else(Bytes::new, |(_, d)| Bytes::copy_from_slice(&d)),
            fence: digests.fence.as_ref().map(|f| client::Fence {
                index: f.index,
                ours: Bytes::copy_from_slice(&f.ours),
                group: Bytes::copy_from_slice(&f.group),
                reason: f.why.clone(),
            }),
            digest_mismatches: digests.mismatches,
            state_rebuilds: digests.rebuilds,
            snapshot_index: self.snapshot_index,
            sessions_open: self.replica.sessions().sessions_open(),
            session_reply_bytes: self.replica.sessions().reply_bytes(),
            snapshot_install: self.transfer.as_ref().map(|p| client::SnapshotTransfer {
                index: p.index,
                term: p.term,
                bytes_done: p.bytes_done.load(Ordering::Relaxed),
                bytes_total: p.bytes_total,
            }),
            module_transfer: self.module_transfer.as_ref().map(|p| client::ModuleTransfer {
                module_hash: Bytes::copy_from_slice(&p.hash.0),
                bytes_done: p.bytes_done.load(Ordering::Relaxed),
                bytes_total: p.bytes_total,
            }),
            quiesced: raft.is_quiesced(),
        };
        if let Ok(mut lag) = self.metrics.lag.lock() {
            lag.clear();
            if raft.role() == Role::Leader {
                let c = raft.configuration();
                for &peer in c.voters.iter().chain(&c.voters_outgoing).chain(&c.learners) {
                    if peer != raft.id()
                        && let Some((matched, _, _)) = raft.progress_of(peer)
                    {
                        lag.insert(peer, raft.last_index().saturating_sub(matched));
                    }
                }
            }
        }
        self.status.send_if_modified(|old| {
            let changed = *old != status;
            *old = status;
            changed
        });
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<Input>, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(self.tick);
        // After a stall, tick once rather than in a burst: a burst of ticks
        // would expire election timers the network had no chance to reset.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        // Every line logged while handling an event names the term it was
        // handled in (the task's span names the group and node). One span
        // per term, made when the term changes: entering it costs nothing.
        let mut term_span = (u64::MAX, tracing::Span::none());
        loop {
            let term = self.replica.raft().term();
            if term_span.0 != term {
                term_span = (term, tracing::info_span!("raft", term));
            }
            let span = term_span.1.clone();
            let step = self.step(&mut inbox, &mut stop, &mut ticker, &mut ticks);
            if tracing::Instrument::instrument(step, span).await.is_break() {
                break;
            }
        }
        // Drain what arrived so clients hear why rather than time out.
        inbox.close();
        while let Some(input) = inbox.recv().await {
            match input {
                Input::Propose { reply, .. } | Input::Deploy { reply, .. } | Input::SetGroup { reply, .. } => {
                    let _ = reply.send(Err(self.shutting_down()));
                }
                Input::Query { reply, .. } => {
                    let _ = reply.send(Err(self.shutting_down()));
                }
                Input::Calls { calls, answers } => {
                    for (token, call) in calls {
                        let answer = match call {
                            Call::Propose(_) => CallAnswer::Propose(Err(self.shutting_down())),
                            Call::Query { .. } => CallAnswer::Query(Err(self.shutting_down())),
                        };
                        answers.send(token, answer);
                    }
                }
                Input::Admin { reply, .. } => {
                    let _ = reply.send(Err(self.shutting_down()));
                }
                Input::DeployCheck { reply } => {
                    let _ = reply.send(Err(self.shutting_down()));
                }
                Input::Peer { .. }
                | Input::InstallPulled(_)
                | Input::SnapshotWritten(_)
                | Input::Prepared(_)
                | Input::ModuleTransfer(_)
                | Input::PeerLost(_) => {}
            }
        }
    }

    /// Waits for the next event (stop, tick or inbox), handles it, and runs
    /// the replica. Breaks when the driver must end.
    async fn step(
        &mut self,
        inbox: &mut mpsc::Receiver<Input>,
        stop: &mut watch::Receiver<bool>,
        ticker: &mut tokio::time::Interval,
        ticks: &mut u64,
    ) -> std::ops::ControlFlow<()> {
        use std::ops::ControlFlow::{Break, Continue};
        {
            tokio::select! {
                _ = stop.changed() => {
                    tracing::info!("stopping");
                    let e = self.shutting_down();
                    self.fail_all(&e);
                    return Break(());
                }
                // A quiet group needs no ticks until an input wakes it.
                _ = ticker.tick(), if !self.replica.raft().is_quiesced() => {
                    self.read_clock();
                    self.replica.tick();
                    *ticks += 1;
                    // Pruning walks every waiter; once per 100 ticks is plenty.
                    if ticks.is_multiple_of(100) {
                        self.prune();
                    }
                    if self.snapshot_interval_ticks > 0 && ticks.is_multiple_of(self.snapshot_interval_ticks) {
                        self.replica.request_snapshot();
                    }
                }
                written = oldest_write(&mut self.writes), if !self.writes.is_empty() => {
                    let finished = match written {
                        // The receiver gave its outcome: the write is durable.
                        Ok(()) => {
                            if let Some((token, _)) = self.writes.pop_front() {
                                self.replica.write_durable(token);
                            }
                            self.finish_durable()
                        }
                        Err(e) => Err(self.replica.write_failed(e)),
                    };
                    if let Err(e) = finished {
                        tracing::error!(error = %e, "group stopped");
                        self.fail_all(&client::Error::internal(e.to_string()));
                        return Break(());
                    }
                }
                input = inbox.recv() => {
                    let Some(input) = input else { return Break(()) };
                    // Before any message or read: a lease read is checked
                    // against the clock as it reads now, after any stall.
                    self.read_clock();
                    self.on_input(input);
                    for _ in 1..INBOX_DRAIN_MAX {
                        match inbox.try_recv() {
                            Ok(input) => {
                                self.read_clock();
                                self.on_input(input);
                            }
                            Err(_) => break,
                        }
                    }
                }
            }
        }
        // A quiet group runs no ticks, so its interval snapshot would wait
        // for the next activity: it snapshots what it applied since the
        // last one as it goes quiet instead.
        if !self.replica.raft().is_quiesced() {
            self.quiet_snapshot_asked = false;
        } else if !self.quiet_snapshot_asked
            && self.snapshot_interval_ticks > 0
            && self.replica.applied_index() > self.snapshot_index
        {
            self.quiet_snapshot_asked = true;
            self.replica.request_snapshot();
        }
        if let Err(e) = self.process().await {
            // The replica stopped (disk failure, poisoned guest): it must be
            // reopened from storage, which needs a restart of the daemon.
            tracing::error!(error = %e, "group stopped");
            self.fail_all(&client::Error::internal(e.to_string()));
            return Break(());
        }
        self.publish_addresses();
        self.publish_status();
        Continue(())
    }

    /// Tells the replica the monotonic clock (ms since this driver started).
    fn read_clock(&mut self) {
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.replica.set_clock(now_ms);
    }

    /// What a client waiting on a group that stops hears: the leader to go
    /// to, when another node leads.
    fn shutting_down(&self) -> client::Error {
        let (id, addr) = self.leader_hint();
        let mut e = if id == self.replica.raft().id() {
            client::Error::not_leader(waft_raft::NONE, "")
        } else {
            client::Error::not_leader(id, addr)
        };
        e.message = "this node stopped serving the group (shutting down, or the group failed; see its log); retry at another node".into();
        e
    }

    fn fail_all(&mut self, e: &client::Error) {
        let err = || e.clone();
        if let Some(a) = self.admin.take() {
            let _ = a.reply.send(Err(err()));
        }
        // These entries are in the log and may still commit on the other
        // nodes: their outcome is unknown, which a NOT_LEADER would deny
        // (clients re-send a plain command after NOT_LEADER).
        let mut unknown = client::Error::timeout(0);
        unknown.message = format!(
            "{}; the command was already in the log and may still apply: retry it only in a session",
            e.message
        );
        for (_, (_, reply)) in std::mem::take(&mut self.proposals) {
            reply.send(Err(unknown.clone()));
        }
        for (_, read) in self.reads.drain() {
            read.reply.send(Err(err()));
        }
        for (_, read) in self.reads_ready.drain(..) {
            read.reply.send(Err(err()));
        }
    }
}

/// What the client whose entry applied at `index` is told.
fn answer(index: u64, outcome: Outcome) -> ProposeReply {
    let committed = |result, duplicate, session_id| Committed { result, index, duplicate, session_id };
    let (result, duplicate) = match outcome {
        Outcome::Guest(result) => (result, false),
        Outcome::Saved(result) => (result, true),
        Outcome::Registered { session_id } => return Ok(committed(Bytes::new(), false, session_id)),
        Outcome::Done => return Ok(committed(Bytes::new(), false, 0)),
        Outcome::Refused(e) => return Err(client::Error::from_session(&e, SESSION_LIMIT_RETRY_AFTER_MS)),
        Outcome::Unreadable(why) => return Err(client::Error::internal(why)),
        Outcome::Deployed { hash, index: since } => {
            return Ok(Committed {
                result: Bytes::copy_from_slice(&hash.0),
                index: since,
                duplicate: false,
                session_id: 0,
            });
        }
        Outcome::DeployRefused(why) => return Err(client::Error::bad_module(why)),
        Outcome::SettingsChanged { settings, index: since } => {
            return Ok(Committed {
                result: Bytes::from(settings.encode()),
                index: since,
                duplicate: false,
                session_id: 0,
            });
        }
        Outcome::SettingsRefused(why) => {
            return Err(client::Error::invalid_request(format!("settings refused at apply, nothing changed: {why}")));
        }
        Outcome::SettingsConflict(why) => {
            return Err(client::Error::busy(BUSY_RETRY_AFTER_MS, format!("settings not changed: {why}")));
        }
        Outcome::Fenced(why) => return Err(client::Error::outcome_unknown(why)),
    };
    // A saved refusal or fault reads as the first one did: a retry learns
    // the same outcome, not that it was a retry.
    match result {
        Ok(bytes) => Ok(committed(bytes, duplicate, 0)),
        Err(ApplyError::Rejected(why)) => Err(client::Error::rejected(why)),
        Err(ApplyError::Fault(fault)) => Err(client::Error::guest_fault(fault.to_string())),
    }
}

/// A proposal's entry was cut from this node's log, and this node proposed
/// something else at its index: another node may still hold the entry and
/// commit it, so the command may yet apply.
fn displaced(index: u64) -> client::Error {
    client::Error::outcome_unknown(format!(
        "leadership changed and this node's entry at index {index} was replaced, but another node may still \
         hold it and commit it: the command may or may not apply (inside a session, retry it under the same \
         sequence number)"
    ))
}

/// The entry applied at a proposal's index has another term than the
/// proposal's entry: that entry can never commit. The command did not
/// apply, and the client may find the new leader and retry.
fn lost(index: u64) -> client::Error {
    let mut e = client::Error::not_leader(waft_raft::NONE, "");
    e.message =
        format!("leadership changed and the entry at index {index} was replaced; the command did not apply, retry it");
    e
}

fn query_error(e: &waft_node::Error) -> client::Error {
    match e {
        waft_node::Error::Runtime { source: waft_runtime::RuntimeError::Guest(why), .. } => {
            client::Error::rejected(why.clone())
        }
        waft_node::Error::Runtime { .. } => client::Error::guest_fault(e.to_string()),
        _ => client::Error::internal(e.to_string()),
    }
}

/// Starts the driver's task and returns the handle the services use and the
/// task's join handle. The task ends when `stop` changes (or its sender is
/// dropped), or when the replica stops.
pub fn spawn(mut driver: Driver, stop: watch::Receiver<bool>) -> (GroupHandle, tokio::task::JoinHandle<()>) {
    let (inbox, rx) = mpsc::channel(INBOX_CAPACITY);
    driver.inbox = Some(inbox.downgrade());
    driver.publish_status();
    let handle = GroupHandle {
        inbox,
        status: driver.status.subscribe(),
        command_bytes_max: driver.command_bytes_max,
        metrics: driver.metrics.clone(),
    };
    let span = tracing::info_span!("group", group = driver.group(), node = driver.replica.raft().id());
    let task = tokio::spawn(tracing::Instrument::instrument(driver.run(rx, stop), span));
    (handle, task)
}
