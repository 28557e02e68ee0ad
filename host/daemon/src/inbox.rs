//! What a group's inbox carries, and how the rest of the daemon reaches a
//! group: the `Input` a driver takes, the handle and directory of groups,
//! the admin operations and every reply type, the counters a driver bumps,
//! and the one mapping of a full inbox to BUSY.
//!
//! A leaf: it imports no other module of this crate, so the services, the
//! peer transport, the admin service and the driver all depend on it and
//! not on each other. Must never hold logic beyond checking a request's
//! shape (`Op::from_request`, `Op::target`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use waft_proto::admin::{AdminOp, AdminRequest, AdminResult};
use waft_proto::client::{self, Consistency};
use waft_raft::{Configuration, Message, NodeId};
use waft_session::Body;

/// What a BUSY answer suggests waiting, in ms.
pub const BUSY_RETRY_AFTER_MS: u64 = 50;
/// What a full session table suggests waiting, in ms: sessions leave only by
/// a close or by idle expiry, so the table does not drain in a heartbeat.
pub const SESSION_LIMIT_RETRY_AFTER_MS: u64 = 1_000;

/// A read's answer: the result bytes and the applied index they reflect, or why not.
pub type Reply = Result<(Bytes, u64), client::Error>;

/// A committed client request's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The state machine's result (empty for a session's open, keep-alive or
    /// close; for a deploy, the hash of the module in force).
    pub result: Bytes,
    /// The log index this copy of the request applied at (for a deploy: the
    /// index the module in force took effect at).
    pub index: u64,
    /// The command had applied before: `result` is the one it gave then.
    pub duplicate: bool,
    /// For a session's registration: the session's id (0 otherwise).
    pub session_id: u64,
}

/// A proposal's answer, or why there is none.
pub type ProposeReply = Result<Committed, client::Error>;

/// One call of a pipeline's batch, for a group's driver.
pub enum Call {
    Propose(Body),
    Query { request: Bytes, consistency: Consistency },
}

/// A pipeline call's answer, back to its pipeline.
#[derive(Debug)]
pub enum CallAnswer {
    Propose(ProposeReply),
    Query(Reply),
}

/// Where a pipeline's calls are answered: its one channel, each answer
/// under the call's token. The driver never waits on it: an answer that
/// finds it full is dropped, and its call is answered TIMEOUT (outcome
/// unknown) by the pipeline at its deadline.
#[derive(Clone)]
pub struct CallAnswers {
    to: mpsc::Sender<(u64, CallAnswer)>,
    /// Calls whose token is below this were answered TIMEOUT by the
    /// pipeline: nobody reads their answers any more. (Tokens and
    /// deadlines rise together, so the calls time out in token order.)
    expired_below: Arc<AtomicU64>,
}

impl CallAnswers {
    /// A pipeline's answer channel of `capacity`, and its receiving end.
    pub fn channel(capacity: usize) -> (CallAnswers, mpsc::Receiver<(u64, CallAnswer)>) {
        let (to, rx) = mpsc::channel(capacity);
        (CallAnswers { to, expired_below: Arc::default() }, rx)
    }

    /// The pipeline answered every call below `token` already.
    pub fn expire_below(&self, token: u64) {
        self.expired_below.fetch_max(token, Ordering::Relaxed);
    }

    /// Hands over call `token`'s answer, or drops it when the channel is full.
    pub fn send(&self, token: u64, answer: CallAnswer) {
        let _ = self.to.try_send((token, answer));
    }

    /// Nobody waits for call `token`'s answer: the stream ended, or the
    /// call timed out.
    pub fn is_closed(&self, token: u64) -> bool {
        self.to.is_closed() || token < self.expired_below.load(Ordering::Relaxed)
    }
}

/// Where one request's answer goes: its own oneshot (a unary call, an
/// operator's change) or its pipeline's channel, under its token.
pub enum Answer<T> {
    Once(oneshot::Sender<T>),
    Pipe { token: u64, to: CallAnswers },
}

impl<T: Into<CallAnswer>> Answer<T> {
    pub fn send(self, answer: T) {
        match self {
            Answer::Once(reply) => {
                let _ = reply.send(answer);
            }
            Answer::Pipe { token, to } => to.send(token, answer.into()),
        }
    }

    /// Nobody waits for the answer any more (for a pipeline call: the
    /// stream ended, or the call timed out).
    pub fn is_closed(&self) -> bool {
        match self {
            Answer::Once(reply) => reply.is_closed(),
            Answer::Pipe { token, to } => to.is_closed(*token),
        }
    }
}

impl From<ProposeReply> for CallAnswer {
    fn from(reply: ProposeReply) -> CallAnswer {
        CallAnswer::Propose(reply)
    }
}

impl From<Reply> for CallAnswer {
    fn from(reply: Reply) -> CallAnswer {
        CallAnswer::Query(reply)
    }
}

/// What the group's inbox carries.
pub enum Input {
    /// A Raft message; an `InstallSnapshot` carries the leader's manifest as
    /// the storage meta to install from (`None` when it sent none).
    Peer {
        message: Message,
        snapshot: Option<waft_storage::SnapshotMeta>,
    },
    /// A snapshot pull ended: the install, complete, or why it failed.
    InstallPulled(Result<waft_node::Install, String>),
    /// A kv state machine's snapshot, written beside the apply path, ended.
    SnapshotWritten(waft_node::SnapshotDone),
    /// An operator's change (membership, transfer, snapshot).
    Admin {
        op: Op,
        /// Addresses the request gave for members (new or moved ones).
        addresses: Vec<(NodeId, String)>,
        reply: oneshot::Sender<AdminReply>,
    },
    /// A client request for the log: a command (in a session or not), or a
    /// session's registration, keep-alive or close. The leader stamps it.
    Propose {
        body: Body,
        reply: oneshot::Sender<ProposeReply>,
    },
    Query {
        request: Bytes,
        consistency: Consistency,
        reply: oneshot::Sender<Reply>,
    },
    /// A pipeline's calls for this group from one batch, in order, each with
    /// its token; answered through `answers`. One inbox slot for them all.
    Calls {
        calls: Vec<(u64, Call)>,
        answers: CallAnswers,
    },
    /// An operator's deploy of a module the admin service validated and
    /// compiled: proposed like a command; its answer's `result` is the hash
    /// of the module in force and its `index` where that module took effect.
    Deploy {
        module: waft_node::GuestModule,
        reply: oneshot::Sender<ProposeReply>,
    },
    /// An operator's change of the group's settings, by name: the leader
    /// puts them over the settings it applied and proposes the whole set;
    /// the answer's `result` is the settings in force (`GroupSettings`
    /// encoding) and its `index` where they took effect.
    SetGroup {
        changes: Vec<(String, u64)>,
        reply: oneshot::Sender<ProposeReply>,
    },
    /// The leader's running state (its `on-snapshot-save` bytes) and the
    /// guest limits, for checking a module about to be deployed loads it.
    DeployCheck {
        reply: oneshot::Sender<Result<(Vec<u8>, waft_runtime::Limits), client::Error>>,
    },
    /// A module fetched and compiled ahead of the deploy entry that will
    /// name it (the leader asked, `modules::prepare`): applying that entry
    /// then switches without compiling.
    Prepared(waft_node::GuestModule),
    /// A module pull ahead of a deploy began (its progress, for status) or
    /// ended (`None`).
    ModuleTransfer(Option<Arc<crate::modules::ModuleProgress>>),
    /// The connection to this node was lost: a quiet group it leads wakes.
    PeerLost(NodeId),
}

/// Each setting of a status or set-group answer by its name, as
/// `waft_node::GroupSettings::named` spells it (the one list of names).
pub fn settings_named(s: &client::GroupSettings) -> [(&'static str, u64); 12] {
    let settings = waft_node::GroupSettings {
        sessions: waft_session::SessionConfig {
            sessions_open_max: s.sessions_open_max,
            window_commands_max: s.session_window_commands_max,
            session_idle_timeout_ms: s.session_idle_timeout_ms,
            reply_bytes_per_session_max: s.session_reply_bytes_max,
            reply_bytes_total_max: s.session_reply_bytes_total_max,
        },
        fuel_per_entry: s.fuel_per_entry,
        fuel_per_query: s.fuel_per_query,
        fuel_per_snapshot: s.fuel_per_snapshot,
        memory_bytes_max: s.memory_bytes_max,
        result_bytes_max: s.result_bytes_max,
        snapshot_bytes_max: s.snapshot_bytes_max,
        digest_interval: s.digest_interval,
    };
    settings.named()
}

/// The settings as the client protocol shows them.
pub fn settings_to_proto(s: &waft_node::GroupSettings) -> client::GroupSettings {
    client::GroupSettings {
        sessions_open_max: s.sessions.sessions_open_max,
        session_window_commands_max: s.sessions.window_commands_max,
        session_idle_timeout_ms: s.sessions.session_idle_timeout_ms,
        session_reply_bytes_max: s.sessions.reply_bytes_per_session_max,
        session_reply_bytes_total_max: s.sessions.reply_bytes_total_max,
        fuel_per_entry: s.fuel_per_entry,
        fuel_per_query: s.fuel_per_query,
        fuel_per_snapshot: s.fuel_per_snapshot,
        memory_bytes_max: s.memory_bytes_max,
        result_bytes_max: s.result_bytes_max,
        snapshot_bytes_max: s.snapshot_bytes_max,
        digest_interval: s.digest_interval,
    }
}

/// How the rest of the daemon reaches one group: its inbox, its published
/// status, and its limits (checked before a request costs an inbox slot).
#[derive(Clone)]
pub struct GroupHandle {
    pub inbox: mpsc::Sender<Input>,
    pub status: watch::Receiver<client::GroupStatus>,
    /// The largest command (or query) a client may send: the core's proposal
    /// limit less the envelope around a command.
    pub command_bytes_max: u64,
    pub metrics: Arc<GroupMetrics>,
}

/// Queues `input` for the group's driver without waiting: a full inbox is
/// BUSY (counted in the group's metrics), a closed one means the group
/// stopped on this node.
pub fn try_send(group: &GroupHandle, input: Input) -> Result<(), client::Error> {
    match group.inbox.try_send(input) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(_)) => {
            GroupMetrics::count(&group.metrics.busy_rejections);
            Err(client::Error::busy(BUSY_RETRY_AFTER_MS, "the group's inbox is full"))
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            Err(client::Error::internal("the group stopped on this node; see its log"))
        }
    }
}

/// Counters of one group, bumped by its driver.
#[derive(Debug, Default)]
pub struct GroupMetrics {
    pub proposals: AtomicU64,
    pub reads: AtomicU64,
    /// Requests answered BUSY (a full inbox or too many waiting).
    pub busy_rejections: AtomicU64,
    pub applied_entries: AtomicU64,
    /// Time spent applying committed entries (and saving snapshots), and
    /// the number of batches it was spent on.
    pub apply_nanos: AtomicU64,
    pub apply_batches: AtomicU64,
    /// On the leader: entries each peer lacks (last index − its match index).
    pub lag: Mutex<BTreeMap<u64, u64>>,
}

impl GroupMetrics {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The groups this node serves, by id. Cheap to read from any task.
#[derive(Default)]
pub struct Groups {
    map: RwLock<BTreeMap<u64, Arc<GroupHandle>>>,
}

impl Groups {
    /// The group's handle, if this node serves it: one read lock and one map
    /// lookup, the cost every client request and peer message pays.
    pub fn get(&self, group: u64) -> Option<Arc<GroupHandle>> {
        // Nothing panics while holding the write lock half-way through an
        // insert, so a poisoned map is still whole.
        self.map.read().unwrap_or_else(|e| e.into_inner()).get(&group).cloned()
    }

    pub fn contains(&self, group: u64) -> bool {
        self.map.read().unwrap_or_else(|e| e.into_inner()).contains_key(&group)
    }

    /// Every group, in id order (for status and metrics).
    pub fn all(&self) -> Vec<(u64, Arc<GroupHandle>)> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(g, h)| (*g, h.clone())).collect()
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn insert(&self, group: u64, handle: GroupHandle) {
        let old = self.map.write().unwrap_or_else(|e| e.into_inner()).insert(group, Arc::new(handle));
        debug_assert!(old.is_none(), "group {group} opened twice");
    }
}

/// One admin operation, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    AddPeer(NodeId),
    RemovePeer(NodeId),
    ChangePeers {
        voters: Vec<NodeId>,
        learners: Vec<NodeId>,
    },
    AddLearners(Vec<NodeId>),
    RemoveLearners(Vec<NodeId>),
    PromoteLearner(NodeId),
    /// `None`: the most up-to-date voter.
    TransferLeader(Option<NodeId>),
    Snapshot,
    ResetPeers(Vec<NodeId>),
}

/// What an admin request gets back.
pub type AdminReply = Result<AdminResult, client::Error>;

impl Op {
    /// The operation a request asks for, or why it is malformed.
    pub fn from_request(req: &AdminRequest) -> Result<Op, client::Error> {
        let bad = |why: &str| client::Error::invalid_request(why.to_string());
        let ids = &req.ids;
        if ids.contains(&waft_raft::NONE) || req.learners.contains(&waft_raft::NONE) {
            return Err(bad("node id 0 is reserved; node ids are 1 or more"));
        }
        let one = || match ids.as_slice() {
            [id] => Ok(*id),
            _ => Err(bad("this operation takes exactly one node id")),
        };
        let some = || if ids.is_empty() { Err(bad("name at least one node id")) } else { Ok(ids.clone()) };
        let op = AdminOp::try_from(req.op).map_err(|_| bad("unknown admin operation"))?;
        Ok(match op {
            AdminOp::Unspecified => return Err(bad("no admin operation given")),
            AdminOp::AddPeer => Op::AddPeer(one()?),
            AdminOp::RemovePeer => Op::RemovePeer(one()?),
            AdminOp::ChangePeers => Op::ChangePeers { voters: some()?, learners: req.learners.clone() },
            AdminOp::AddLearners => Op::AddLearners(some()?),
            AdminOp::RemoveLearners => Op::RemoveLearners(some()?),
            AdminOp::PromoteLearner => Op::PromoteLearner(one()?),
            AdminOp::TransferLeader => match ids.as_slice() {
                [] => Op::TransferLeader(None),
                [id] => Op::TransferLeader(Some(*id)),
                _ => return Err(bad("transfer-leader takes one target, or none for the most up-to-date voter")),
            },
            AdminOp::Snapshot => Op::Snapshot,
            AdminOp::ResetPeers if !req.allow_data_loss => {
                return Err(bad("reset-peers forces the voters without a quorum and can lose acknowledged writes; \
                     send it with allow_data_loss (waft admin reset-peers --unsafe), and only once a quorum \
                     is gone for good"));
            }
            AdminOp::ResetPeers => Op::ResetPeers(some()?),
        })
    }

    /// The configuration a membership operation asks for, given the one in
    /// force (`None` for the others). A request whose target holds already
    /// has taken effect: answering it with success makes every membership
    /// call safe to retry.
    pub fn target(&self, current: &Configuration) -> Option<Configuration> {
        let mut t = Configuration { voters_outgoing: Vec::new(), ..current.clone() };
        match self {
            Op::AddPeer(id) | Op::PromoteLearner(id) => {
                t.learners.retain(|l| l != id);
                t.voters.push(*id);
            }
            Op::RemovePeer(id) => {
                t.voters.retain(|v| v != id);
                t.learners.retain(|l| l != id);
            }
            Op::ChangePeers { voters, learners } => {
                t.voters = voters.clone();
                t.learners = learners.clone();
            }
            // Refused below (a voter cannot be added as a learner).
            Op::AddLearners(ids) if ids.iter().any(|id| current.is_voter(*id)) => return None,
            Op::AddLearners(ids) => t.learners.extend(ids),
            Op::RemoveLearners(ids) => t.learners.retain(|l| !ids.contains(l)),
            Op::TransferLeader(_) | Op::Snapshot | Op::ResetPeers(_) => return None,
        }
        t.normalize();
        Some(t)
    }

    /// Whether it may add members (and so name their addresses).
    pub fn adds_members(&self) -> bool {
        matches!(self, Op::AddPeer(_) | Op::ChangePeers { .. } | Op::AddLearners(_) | Op::PromoteLearner(_))
    }

    /// Whether only the leader may start it (the rest act on this node).
    pub fn needs_leader(&self) -> bool {
        !matches!(self, Op::Snapshot | Op::ResetPeers(_))
    }
}
