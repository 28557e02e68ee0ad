//! The group driver: one tokio task per Raft group, owning that group's
//! `waft_node::Replica`.
//!
//! Owns the group's clock (a monotonic tokio interval), its inbox (peer
//! messages and client requests, bounded), and the clients waiting on it
//! (proposals by log index, reads by read id, both bounded). After every
//! event it runs `Replica::process`, hands outgoing messages to the
//! transport, and answers whoever the output settles. Must never block on the
//! network or on a client: sends are `try_send`, answers go through oneshots
//! whose receivers may be gone.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use waft_node::{Output, Replica};
use waft_proto::client::{self, Consistency};
use waft_raft::{Message, NodeId, ReadMode, Role};
use waft_runtime::ApplyError;
use waft_storage::{RocksLogStore, SnapshotStore};

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
/// `process` calls after one event, each draining up to the node crate's
/// `READY_ROUNDS_MAX`; the rest waits for the next tick.
pub const PROCESS_CALLS_MAX: usize = 8;
/// What a BUSY answer suggests waiting, in ms.
pub const BUSY_RETRY_AFTER_MS: u64 = 50;

/// A client's answer: the result bytes and the index they reflect, or why not.
pub type Reply = Result<(Bytes, u64), client::Error>;

/// What the group's inbox carries.
pub enum Input {
    Peer(Message),
    Propose { command: Bytes, reply: oneshot::Sender<Reply> },
    Query { request: Bytes, consistency: Consistency, reply: oneshot::Sender<Reply> },
}

/// How the rest of the daemon reaches one group: its inbox, its published
/// status, and its limits (checked before a request costs an inbox slot).
#[derive(Clone)]
pub struct GroupHandle {
    pub inbox: mpsc::Sender<Input>,
    pub status: watch::Receiver<client::GroupStatus>,
    pub proposal_bytes_max: u64,
}

pub struct Driver {
    replica: Replica,
    store: Arc<Mutex<RocksLogStore>>,
    snapshots: Arc<SnapshotStore>,
    transport: Transport,
    /// Every member's address (this node included), for NOT_LEADER hints.
    addresses: BTreeMap<NodeId, String>,
    tick: Duration,
    proposal_bytes_max: u64,
    /// Proposals by log index: the (term, answer) of the entry proposed there.
    /// Invariant: len() <= PROPOSALS_PENDING_MAX.
    proposals: BTreeMap<u64, (u64, oneshot::Sender<Reply>)>,
    /// Reads whose read index has not come back yet, by read id.
    reads: HashMap<u64, PendingRead>,
    /// Reads whose read index is known, waiting for `applied >= index`.
    reads_ready: Vec<(u64, PendingRead)>,
    next_read_id: u64,
    status: watch::Sender<client::GroupStatus>,
}

struct PendingRead {
    request: Bytes,
    reply: oneshot::Sender<Reply>,
}

impl Driver {
    pub fn new(
        replica: Replica,
        store: Arc<Mutex<RocksLogStore>>,
        snapshots: Arc<SnapshotStore>,
        transport: Transport,
        addresses: BTreeMap<NodeId, String>,
        tick: Duration,
        proposal_bytes_max: u64,
    ) -> Driver {
        let (status, _) = watch::channel(client::GroupStatus::default());
        Driver {
            replica,
            store,
            snapshots,
            transport,
            addresses,
            tick,
            proposal_bytes_max,
            proposals: BTreeMap::new(),
            reads: HashMap::new(),
            reads_ready: Vec::new(),
            next_read_id: 1,
            status,
        }
    }

    fn group(&self) -> u64 {
        self.replica.group()
    }

    fn leader_hint(&self) -> (u64, String) {
        let leader = self.replica.raft().leader().unwrap_or(waft_raft::NONE);
        (leader, self.addresses.get(&leader).cloned().unwrap_or_default())
    }

    fn refusal(&self, e: &waft_node::Error) -> client::Error {
        match e {
            waft_node::Error::Raft { source, .. } => {
                client::Error::from_raft(source, &self.leader_hint().1, BUSY_RETRY_AFTER_MS)
            }
            waft_node::Error::EmptyCommand { .. } => client::Error::invalid_request(e.to_string()),
            _ => client::Error::internal(e.to_string()),
        }
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Peer(m) => self.replica.step(m),
            Input::Propose { command, reply } => self.propose(command, reply),
            Input::Query { request, consistency, reply } => self.query(request, consistency, reply),
        }
    }

    fn propose(&mut self, command: Bytes, reply: oneshot::Sender<Reply>) {
        if self.replica.raft().role() != Role::Leader {
            let (id, addr) = self.leader_hint();
            let _ = reply.send(Err(client::Error::not_leader(id, addr)));
            return;
        }
        if self.proposals.len() >= PROPOSALS_PENDING_MAX {
            let _ = reply.send(Err(client::Error::busy(BUSY_RETRY_AFTER_MS, "too many proposals wait to apply")));
            return;
        }
        match self.replica.propose(command) {
            Ok((index, term)) => {
                // A leader never proposes twice at one index in one term; an
                // older waiter there lost its entry to a new leader.
                if let Some((_, old)) = self.proposals.insert(index, (term, reply)) {
                    let _ = old.send(Err(lost(index)));
                }
            }
            Err(e) => {
                let _ = reply.send(Err(self.refusal(&e)));
            }
        }
    }

    fn query(&mut self, request: Bytes, consistency: Consistency, reply: oneshot::Sender<Reply>) {
        let mode = match consistency {
            Consistency::Stale => {
                let applied = self.replica.applied_index();
                let answer = self.replica.query(&request).map(|b| (b, applied)).map_err(|e| query_error(&e));
                let _ = reply.send(answer);
                return;
            }
            Consistency::Lease => ReadMode::Lease,
            // On a follower the core forwards the read index request to the
            // leader (a follower read); on the leader it confirms with a quorum.
            Consistency::Linearizable | Consistency::Follower => ReadMode::Safe,
        };
        if self.reads.len() + self.reads_ready.len() >= READS_PENDING_MAX {
            let _ = reply.send(Err(client::Error::busy(BUSY_RETRY_AFTER_MS, "too many reads wait on this group")));
            return;
        }
        let id = self.next_read_id;
        self.next_read_id += 1;
        match self.replica.read_index(id, mode) {
            Ok(()) => {
                self.reads.insert(id, PendingRead { request, reply });
            }
            Err(e) => {
                let _ = reply.send(Err(self.refusal(&e)));
            }
        }
    }

    /// Runs the replica until it has nothing ready (bounded), then answers.
    fn process(&mut self) -> Result<(), waft_node::Error> {
        for _ in 0..PROCESS_CALLS_MAX {
            if !self.replica.has_ready() {
                break;
            }
            let mut outbox = Vec::new();
            let out = {
                let mut store = self.store.lock().map_err(|_| waft_node::Error::Stopped {
                    group: self.group(),
                    reason: "the storage lock is poisoned (another group panicked mid-write)".into(),
                })?;
                // The process call syncs to disk: tell tokio this worker blocks.
                tokio::task::block_in_place(|| {
                    self.replica.process(&mut *store, &self.snapshots, &mut |m| outbox.push(m))
                })?
            };
            self.transport.send(self.group(), outbox);
            self.settle(out);
        }
        self.serve_ready_reads();
        Ok(())
    }

    fn settle(&mut self, out: Output) {
        let group = self.group();
        if let Some(soft) = out.soft_state {
            tracing::info!(group, node = self.replica.raft().id(), term = soft.term, role = ?soft.role, leader = soft.leader, "role");
            if soft.role != Role::Leader {
                // Reads waiting on our leadership will never be confirmed.
                let (id, addr) = self.leader_hint();
                for (_, read) in self.reads.drain() {
                    let _ = read.reply.send(Err(client::Error::not_leader(id, addr.clone())));
                }
            }
        }
        for a in out.applied {
            let Some((term, reply)) = self.proposals.remove(&a.index) else { continue };
            let answer = if term != a.term {
                Err(lost(a.index))
            } else {
                match a.result {
                    Ok(bytes) => Ok((bytes, a.index)),
                    Err(ApplyError::Rejected(why)) => Err(client::Error::rejected(why)),
                    Err(ApplyError::Fault(fault)) => Err(client::Error::guest_fault(fault.to_string())),
                }
            };
            let _ = reply.send(answer);
        }
        for rs in out.read_states {
            if let Some(read) = self.reads.remove(&rs.id) {
                self.reads_ready.push((rs.index, read));
            }
        }
        if let Some(install) = out.snapshot_install {
            // Chunk pulls are not implemented yet: give the install back so the
            // core keeps going and the leader offers it again later.
            tracing::warn!(group, from = install.from, index = install.meta.index, "snapshot install not supported yet; abandoned");
            self.replica.abandon_install();
        }
        if let Some(e) = out.snapshot_failed {
            tracing::warn!(group, error = %e, "snapshot not saved");
        }
    }

    fn serve_ready_reads(&mut self) {
        let applied = self.replica.applied_index();
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
            let _ = read.reply.send(answer);
        }
    }

    /// Forgets waiters whose client gave up (timed out or disconnected), so
    /// entries that never apply do not hold slots forever.
    fn prune(&mut self) {
        self.proposals.retain(|_, (_, reply)| !reply.is_closed());
        self.reads.retain(|_, read| !read.reply.is_closed());
        self.reads_ready.retain(|(_, read)| !read.reply.is_closed());
    }

    fn publish_status(&self) {
        let raft = self.replica.raft();
        let (leader_id, leader_address) = self.leader_hint();
        let role: client::Role = raft.role().into();
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
        };
        self.status.send_if_modified(|old| {
            let changed = *old != status;
            *old = status;
            changed
        });
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<Input>) {
        let mut ticker = tokio::time::interval(self.tick);
        // After a stall, tick once rather than in a burst: a burst of ticks
        // would expire election timers the network had no chance to reset.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    self.replica.tick();
                    ticks += 1;
                    // Pruning walks every waiter; once per 100 ticks is plenty.
                    if ticks % 100 == 0 {
                        self.prune();
                    }
                }
                input = inbox.recv() => {
                    let Some(input) = input else { break };
                    self.on_input(input);
                    for _ in 1..INBOX_DRAIN_MAX {
                        match inbox.try_recv() {
                            Ok(input) => self.on_input(input),
                            Err(_) => break,
                        }
                    }
                }
            }
            if let Err(e) = self.process() {
                // The replica stopped (disk failure, poisoned guest): it must be
                // reopened from storage, which needs a restart of the daemon.
                tracing::error!(group = self.group(), node = self.replica.raft().id(), error = %e, "group stopped");
                self.fail_all(&e);
                break;
            }
            self.publish_status();
        }
        // Drain what arrived so clients hear why rather than time out.
        inbox.close();
        while let Some(input) = inbox.recv().await {
            match input {
                Input::Propose { reply, .. } | Input::Query { reply, .. } => {
                    let _ = reply.send(Err(client::Error::internal("the group stopped on this node")));
                }
                Input::Peer(_) => {}
            }
        }
    }

    fn fail_all(&mut self, e: &waft_node::Error) {
        let err = || client::Error::internal(e.to_string());
        for (_, (_, reply)) in std::mem::take(&mut self.proposals) {
            let _ = reply.send(Err(err()));
        }
        for (_, read) in self.reads.drain() {
            let _ = read.reply.send(Err(err()));
        }
        for (_, read) in self.reads_ready.drain(..) {
            let _ = read.reply.send(Err(err()));
        }
    }
}

/// The entry a client proposed was overwritten by a new leader's log: the
/// command did not apply, and the client may find the new leader and retry.
fn lost(index: u64) -> client::Error {
    let mut e = client::Error::not_leader(waft_raft::NONE, "");
    e.message = format!("leadership changed and the entry at index {index} was replaced; the command did not apply, retry it");
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

/// Starts the driver's task and returns the handle the services use.
pub fn spawn(driver: Driver) -> GroupHandle {
    let (inbox, rx) = mpsc::channel(INBOX_CAPACITY);
    driver.publish_status();
    let handle = GroupHandle {
        inbox,
        status: driver.status.subscribe(),
        proposal_bytes_max: driver.proposal_bytes_max,
    };
    let span = tracing::info_span!("group", group = driver.group(), node = driver.replica.raft().id());
    tokio::spawn(tracing::Instrument::instrument(driver.run(rx), span));
    handle
}
