//! The peer transport: Raft messages between daemons over waft-proto's
//! `Raft(stream PeerBatch)`.
//!
//! Owns, per remote peer, one outbound stream with a bounded queue in front of
//! it and a reconnect loop with back-off; and the server side, which converts
//! what arrives (`into_raft`) and routes it to the group's inbox. Must never
//! wait on a slow peer or a full inbox: Raft tolerates loss and retransmits,
//! so anything that does not fit is dropped and counted. Every stream says
//! which node and data directory incarnation sends it (`identity`); the
//! server refuses a stream from an incarnation it does not expect, and any
//! message in a stream that claims another sender.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use waft_proto::peer::{self, PeerBatch, PeerMessage, RaftDone};
use waft_raft::NodeId;
use waft_storage::SnapshotStore;

use crate::Groups;
use crate::identity::{INCARNATION_HEADER, NODE_HEADER, PeerBook, Refusal};
use crate::inbox::Input;
use crate::security::{Auth, Dialer};

/// Messages queued for one peer before its stream takes them. Full means the
/// peer is slow or unreachable: new messages are dropped.
pub const PEER_QUEUE_MESSAGES_MAX: usize = 4096;
/// Messages in one `PeerBatch` at most (besides `PEER_BATCH_BYTES_TARGET`).
pub const PEER_BATCH_MESSAGES_MAX: usize = 512;
/// Batches handed to the HTTP/2 stream and not yet written. Small: HTTP/2 flow
/// control is the real back-pressure, this only decouples the two tasks.
pub const PEER_STREAM_BATCHES_MAX: usize = 4;
/// First and largest pause between reconnect attempts to a peer.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(20);
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long one connection attempt to a peer may take (the snapshot puller's too).
pub use crate::install::CONNECT_TIMEOUT;
/// HTTP/2 pings on every peer connection, busy or idle: one per node pair
/// for all its groups. A peer that answers none within the timeout (a
/// stopped process, a silent partition) counts as lost, which wakes the
/// quiet groups it leads here (`Transport::on_lost`). Generous: a false
/// loss under load costs a reconnect and the messages queued meanwhile.
pub const PEER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
pub const PEER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// A stream that lasted this long counts as the peer having been up: its
/// end is a loss (`Transport::on_lost`), and reconnecting starts over at
/// `RECONNECT_BACKOFF_MIN`.
const STREAM_UP_AFTER: Duration = Duration::from_secs(1);

/// How a peer says it does not know the sender yet (an UNAVAILABLE refusal).
const NOT_KNOWN_YET: &str = "is not known here yet";

/// What the node does when a peer's connection is lost.
type OnLost = Arc<std::sync::OnceLock<Box<dyn Fn(NodeId) + Send + Sync>>>;

/// Nodes whose address one node keeps at most (seeds and every group's
/// members together); a group configuration naming more is cut to this.
pub const ADDRESSES_MAX: usize = 4096;

/// The outbound side: who this node knows, where they listen, and a queue
/// per peer. Cloned into every group's driver.
///
/// Addresses come from seeds (`--peer`, what `--join` answered, this node's
/// own) and from each group's configuration (the members' addresses the
/// log carries, plus those of a change still catching up). A group's
/// address beats a seed's, and of two groups the one that said it last
/// wins. A node no seed and no group names any more is forgotten: its
/// queue closes and its stream ends.
#[derive(Clone)]
pub struct Transport {
    node: NodeId,
    incarnation: u64,
    /// How this node dials its peers (TLS or plaintext); snapshot pulls and
    /// forwarded creates dial with it too.
    dialer: Dialer,
    runtime: tokio::runtime::Handle,
    book: Arc<std::sync::RwLock<Book>>,
    lost: OnLost,
}

#[derive(Default)]
struct Book {
    seeds: BTreeMap<NodeId, String>,
    /// Per group: when it last said (a counter), and its members' addresses.
    groups: BTreeMap<u64, (u64, BTreeMap<NodeId, String>)>,
    said: u64,
    /// Every node known now (this one included) and its address; a queue
    /// for each other one. Invariant: what `merged()` gives.
    known: BTreeMap<NodeId, Link>,
}

struct Link {
    addr: String,
    /// `None` for this node.
    queue: Option<mpsc::Sender<PeerMessage>>,
}

impl Book {
    fn merged(&self) -> BTreeMap<NodeId, String> {
        let mut all = self.seeds.clone();
        let mut by_age: Vec<&(u64, BTreeMap<NodeId, String>)> = self.groups.values().collect();
        by_age.sort_by_key(|(said, _)| *said);
        for (_, addrs) in by_age {
            for (id, addr) in addrs {
                if all.len() >= ADDRESSES_MAX && !all.contains_key(id) {
                    break;
                }
                all.insert(*id, addr.clone());
            }
        }
        all
    }
}

impl Transport {
    /// Starts one sender task per seed peer; each stream says it comes from
    /// `node`'s data directory `incarnation`. `seeds` includes this node's
    /// own address. Call within the tokio runtime.
    pub fn start(node: NodeId, incarnation: u64, seeds: &BTreeMap<NodeId, String>, dialer: Dialer) -> Transport {
        let t = Transport {
            node,
            incarnation,
            dialer,
            runtime: tokio::runtime::Handle::current(),
            book: Arc::new(std::sync::RwLock::new(Book { seeds: seeds.clone(), ..Book::default() })),
            lost: Arc::new(std::sync::OnceLock::new()),
        };
        t.update(|_| {});
        t
    }

    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// Sets what happens when a peer's connection is lost (once; later
    /// calls are ignored): the node wakes the quiet groups that peer leads.
    pub fn on_lost(&self, f: impl Fn(NodeId) + Send + Sync + 'static) {
        let _ = self.lost.set(Box::new(f));
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Book> {
        // Updated whole under the write lock; a panic there leaves the old links.
        self.book.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the book and reconciles the links with it.
    fn update(&self, change: impl FnOnce(&mut Book)) {
        let mut book = self.book.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut book);
        let want = book.merged();
        book.known.retain(|id, link| {
            let keep = want.get(id) == Some(&link.addr);
            if !keep && *id != self.node {
                tracing::info!(node = self.node, peer = id, addr = %link.addr, "forgot a peer's address");
            }
            keep
        });
        for (id, addr) in want {
            if book.known.contains_key(&id) {
                continue;
            }
            let queue = (id != self.node).then(|| {
                let (tx, rx) = mpsc::channel(PEER_QUEUE_MESSAGES_MAX);
                let span = tracing::info_span!("peer", node = self.node, peer = id, addr = %addr);
                let me = Sender { node: self.node, incarnation: self.incarnation };
                let to = Peer { id, addr: addr.clone(), dialer: self.dialer.clone(), lost: self.lost.clone() };
                self.runtime.spawn(tracing::Instrument::instrument(sender(me, to, rx), span));
                tracing::debug!(node = self.node, peer = id, addr = %addr, "knows a peer's address");
                tx
            });
            book.known.insert(id, Link { addr, queue });
        }
    }

    /// Adds seed addresses (what a join address answered).
    pub fn add_seeds(&self, seeds: impl IntoIterator<Item = (NodeId, String)>) {
        self.update(|book| {
            for (id, addr) in seeds {
                book.seeds.entry(id).or_insert(addr);
            }
        });
    }

    /// What `group` says its members' addresses are now (replacing what it
    /// said before); a no-op when unchanged.
    pub fn set_group(&self, group: u64, addresses: &[(NodeId, String)]) {
        let same = self.read().groups.get(&group).is_some_and(|(_, had)| {
            had.len() == addresses.len() && addresses.iter().all(|(id, a)| had.get(id) == Some(a))
        });
        if same {
            return;
        }
        self.update(|book| {
            book.said += 1;
            let said = book.said;
            book.groups.insert(group, (said, addresses.iter().cloned().collect()));
        });
    }

    /// The address `id` is reached at now.
    pub fn address_of(&self, id: NodeId) -> Option<String> {
        self.read().known.get(&id).map(|l| l.addr.clone())
    }

    /// Whether this node knows `id` (and so takes its streams).
    pub fn knows(&self, id: NodeId) -> bool {
        self.read().known.contains_key(&id)
    }

    /// Every node known now (this one included), by id.
    pub fn addresses(&self) -> BTreeMap<NodeId, String> {
        self.read().known.iter().map(|(id, l)| (*id, l.addr.clone())).collect()
    }

    /// Queues `messages` of `group` for their peers; drops what does not fit.
    pub fn send(&self, group: u64, messages: Vec<PeerMessage>) {
        let book = self.read();
        for m in messages {
            let to = m.to;
            let Some(queue) = book.known.get(&to).and_then(|l| l.queue.as_ref()) else {
                tracing::debug!(group, node = self.node, to, "message for an unknown peer dropped");
                continue;
            };
            if queue.try_send(m).is_err() {
                tracing::trace!(group, node = self.node, to, "peer queue full or closed; message dropped");
            }
        }
    }
}

/// Addresses one request may name at most.
pub const REQUEST_ADDRESSES_MAX: usize = 256;

/// Checks an address a request names for a node: `host:port`, not empty,
/// at most `ADDRESS_BYTES_MAX` bytes, no whitespace.
pub fn check_address(addr: &str) -> Result<(), String> {
    if addr.is_empty() || addr.len() > waft_raft::ADDRESS_BYTES_MAX {
        return Err(format!("an address has 1 to {} bytes", waft_raft::ADDRESS_BYTES_MAX));
    }
    if addr.chars().any(char::is_whitespace) {
        return Err(format!("address {addr:?} contains whitespace"));
    }
    match addr.rsplit_once(':') {
        Some(("0.0.0.0" | "[::]" | "::", _)) => Err(format!(
            "address {addr:?} is unspecified: no one can dial it; give the address others reach the node at"
        )),
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
        _ => Err(format!("address {addr:?} is not host:port")),
    }
}

/// The addresses a request names, checked: ids 1 or more, each once.
pub fn addresses_of(list: &[waft_proto::client::NodeAddress]) -> Result<Vec<(NodeId, String)>, String> {
    if list.len() > REQUEST_ADDRESSES_MAX {
        return Err(format!("{} addresses; a request names {REQUEST_ADDRESSES_MAX} at most", list.len()));
    }
    let mut out: Vec<(NodeId, String)> = Vec::with_capacity(list.len());
    for a in list {
        if a.node_id == waft_raft::NONE {
            return Err("node id 0 is reserved; node ids are 1 or more".into());
        }
        check_address(&a.address).map_err(|e| format!("node {}: {e}", a.node_id))?;
        if out.iter().any(|(id, _)| *id == a.node_id) {
            return Err(format!("node {} has two addresses in one request", a.node_id));
        }
        out.push((a.node_id, a.address.clone()));
    }
    Ok(out)
}

/// The wire form of `(id, address)` pairs.
pub fn addresses_to_proto<'a>(
    list: impl IntoIterator<Item = (&'a NodeId, &'a String)>,
) -> Vec<waft_proto::client::NodeAddress> {
    list.into_iter().map(|(id, a)| (*id, a.clone()).into()).collect()
}

/// Whom a sender streams to.
struct Peer {
    id: NodeId,
    addr: String,
    dialer: Dialer,
    lost: OnLost,
}

impl Peer {
    fn lost(&self) {
        if let Some(f) = self.lost.get() {
            f(self.id);
        }
    }
}

/// Who sends a stream: this node and its data directory's incarnation.
#[derive(Clone, Copy)]
struct Sender {
    node: NodeId,
    incarnation: u64,
}

/// Owns one peer's outbound stream: connects, streams batches, and on any
/// failure waits and reconnects. Ends only when every `Transport` is gone.
async fn sender(me: Sender, to: Peer, mut queue: mpsc::Receiver<PeerMessage>) {
    let mut backoff = RECONNECT_BACKOFF_MIN;
    // The peer's last refusal, logged once until it changes.
    let mut refused: Option<String> = None;
    // Whether the peer counts as reachable: a loss is reported once, when
    // a connection ends or the first one fails.
    let mut up = true;
    loop {
        match connect(&to).await {
            Ok(client) => {
                tracing::debug!("connected");
                let began = std::time::Instant::now();
                match stream(me, client, &mut queue).await {
                    Ended::Closed => return,
                    // Alive, but it does not know this node yet (it has not
                    // seen the configuration that adds it, or shares no
                    // group with it): no loss, and back off as for a loss.
                    Ended::Unknown => up = false,
                    Ended::Refused(why) => {
                        up = false;
                        if refused.as_deref() != Some(why.as_str()) {
                            tracing::error!(refusal = %why, "the peer refuses this node's messages");
                            refused = Some(why);
                        }
                        // Refused for good until an operator acts: retry slowly.
                        backoff = RECONNECT_BACKOFF_MAX;
                    }
                    Ended::Failed => {
                        refused = None;
                        // A stream that ran a while had the peer up until
                        // now: report the loss and reconnect at once. One
                        // that ended at once is retried with back-off.
                        if began.elapsed() >= STREAM_UP_AFTER {
                            up = true;
                            backoff = RECONNECT_BACKOFF_MIN;
                        }
                        tracing::debug!("stream ended; reconnecting");
                    }
                }
            }
            Err(e) => tracing::trace!(error = %e, "connect failed"),
        }
        if std::mem::replace(&mut up, false) {
            to.lost();
        }
        // Whatever queued while disconnected is stale; Raft sends fresh state.
        while queue.try_recv().is_ok() {}
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
        if queue.is_closed() && queue.is_empty() {
            return;
        }
    }
}

async fn connect(
    to: &Peer,
) -> Result<peer::peer_client::PeerClient<tonic::transport::Channel>, tonic::transport::Error> {
    let channel = to
        .dialer
        .endpoint(to.id, &to.addr)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(PEER_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(PEER_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect()
        .await?;
    Ok(waft_proto::peer_client(channel))
}

/// How a stream ended.
enum Ended {
    /// Every `Transport` is gone: stop.
    Closed,
    /// The peer refuses this node's identity (see `identity`): why.
    Refused(String),
    /// The peer does not know this node (yet).
    Unknown,
    /// Anything else: reconnect.
    Failed,
}

fn ended(done: Result<tonic::Response<RaftDone>, tonic::Status>) -> Ended {
    match done {
        Ok(r) => {
            tracing::debug!(delivered = r.get_ref().delivered, dropped = r.get_ref().dropped, "stream closed by peer");
            Ended::Failed
        }
        Err(status) if status.code() == tonic::Code::FailedPrecondition => Ended::Refused(status.message().to_string()),
        Err(status) if status.code() == tonic::Code::Unavailable && status.message().contains(NOT_KNOWN_YET) => {
            Ended::Unknown
        }
        Err(status) => {
            tracing::debug!(%status, "stream failed");
            Ended::Failed
        }
    }
}

/// Streams batches until the call fails or the queue's senders are all gone.
async fn stream(
    me: Sender,
    mut client: peer::peer_client::PeerClient<tonic::transport::Channel>,
    queue: &mut mpsc::Receiver<PeerMessage>,
) -> Ended {
    let (batches, rx) = mpsc::channel::<PeerBatch>(PEER_STREAM_BATCHES_MAX);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let headers = request.metadata_mut();
    headers.insert(NODE_HEADER, me.node.into());
    headers.insert(INCARNATION_HEADER, me.incarnation.into());
    let call = client.raft(request);
    tokio::pin!(call);
    loop {
        tokio::select! {
            done = &mut call => return ended(done),
            first = queue.recv() => {
                let Some(first) = first else { return Ended::Closed };
                let mut batch = PeerBatch { messages: vec![first] };
                let mut bytes = 0usize;
                while batch.messages.len() < PEER_BATCH_MESSAGES_MAX && bytes < waft_proto::PEER_BATCH_BYTES_TARGET {
                    match queue.try_recv() {
                        Ok(m) => {
                            bytes += prost::Message::encoded_len(&m);
                            batch.messages.push(m);
                        }
                        Err(_) => break,
                    }
                }
                // Waiting here is waiting on HTTP/2 flow control; the peer queue
                // in front absorbs (and then drops) what arrives meanwhile.
                tokio::select! {
                    sent = batches.send(batch) => if sent.is_err() { return Ended::Failed },
                    done = &mut call => return ended(done),
                }
            }
        }
    }
}

/// The server side of the peer service.
pub struct PeerService {
    groups: Arc<Groups>,
    /// Module stores, engine and addresses, for modules beside the log.
    host: Arc<crate::groups::Host>,
    snapshots: Arc<SnapshotStore>,
    /// The incarnation this node expects behind each peer.
    book: Arc<PeerBook>,
    /// The nodes this node knows (seeds and its groups' members): streams
    /// from any other id are refused for now, so the book records only them.
    transport: Transport,
    /// With TLS: the node a stream claims to come from must be the one its
    /// certificate names.
    auth: Arc<Auth>,
    /// The last refused incarnation logged per peer, so a refused peer's
    /// reconnects do not flood the log.
    refusals_logged: std::sync::Mutex<BTreeMap<NodeId, u64>>,
    /// Becomes true when the node shuts down: every inbound stream then ends,
    /// so peers reconnect to whatever serves this address next instead of
    /// streaming into a node that no longer reads.
    stop: tokio::sync::watch::Receiver<bool>,
}

impl PeerService {
    pub fn new(
        groups: Arc<Groups>,
        host: Arc<crate::groups::Host>,
        snapshots: Arc<SnapshotStore>,
        book: Arc<PeerBook>,
        transport: Transport,
        auth: Arc<Auth>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> PeerService {
        PeerService { groups, host, snapshots, book, transport, auth, refusals_logged: Default::default(), stop }
    }

    /// The sender a stream names, admitted by the book; the refusal the
    /// sender hears otherwise.
    fn admit<T>(&self, request: &tonic::Request<T>) -> Result<NodeId, tonic::Status> {
        let header = |name: &str| -> Result<u64, tonic::Status> {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| tonic::Status::failed_precondition(format!("a peer stream must carry `{name}`")))
        };
        let (node, incarnation) = (header(NODE_HEADER)?, header(INCARNATION_HEADER)?);
        if let Err(why) = self.auth.check_peer(request, Some(node)) {
            tracing::warn!(claims = node, refusal = %why, "refusing a peer stream");
            return Err(tonic::Status::failed_precondition(why));
        }
        if !self.transport.knows(node) {
            // Not a refusal for good: a node just added to a group is known
            // once this node has the configuration entry that adds it.
            return Err(tonic::Status::unavailable(format!(
                "node {node} {NOT_KNOWN_YET}: neither a --peer nor a member of a group this node serves"
            )));
        }
        // Meeting a peer for the first time syncs the book to disk.
        match tokio::task::block_in_place(|| self.book.admit(node, incarnation)) {
            Ok(()) => Ok(node),
            Err(refusal) => {
                if let Refusal::Replaced { got, .. } = refusal {
                    let mut logged = self.refusals_logged.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if logged.insert(node, got) != Some(got) {
                        tracing::error!(peer = node, %refusal, "refusing a peer");
                    }
                } else {
                    tracing::error!(peer = node, %refusal, "refusing a peer");
                }
                Err(tonic::Status::failed_precondition(refusal.to_string()))
            }
        }
    }
}

/// Checks and unwraps one wire message: its group, the core message, and for
/// an `InstallSnapshot` the storage meta its manifest describes.
fn unwrap_wire(wire: PeerMessage) -> Result<(u64, Input), String> {
    let manifest = match wire.snapshot_manifest() {
        Some(Ok(m)) => Some(m.clone()),
        Some(Err(e)) => return Err(e.to_string()),
        None => None,
    };
    let (group, message) = wire.into_raft().map_err(|e| e.to_string())?;
    let snapshot = match (&message.body, manifest) {
        (waft_raft::MessageBody::InstallSnapshot { meta }, Some(manifest)) => {
            Some(crate::install::stored_meta(meta.index, meta.term, meta.config.encode(), &manifest)?)
        }
        _ => None,
    };
    Ok((group, Input::Peer { message, snapshot }))
}

#[tonic::async_trait]
impl peer::peer_server::Peer for PeerService {
    async fn raft(
        &self,
        request: tonic::Request<tonic::Streaming<PeerBatch>>,
    ) -> Result<tonic::Response<RaftDone>, tonic::Status> {
        let from = self.admit(&request)?;
        let mut stream = request.into_inner();
        let mut stop = self.stop.clone();
        let (mut delivered, mut dropped) = (0u64, 0u64);
        loop {
            let batch = tokio::select! {
                _ = stop.wait_for(|stopping| *stopping) => {
                    return Err(tonic::Status::unavailable("this node is shutting down"));
                }
                batch = stream.message() => batch?,
            };
            let Some(batch) = batch else { break };
            for wire in batch.messages {
                if wire.from != from {
                    tracing::debug!(stream = from, claims = wire.from, "message claiming another sender dropped");
                    dropped += 1;
                    continue;
                }
                let (group, input) = match unwrap_wire(wire) {
                    Ok(converted) => converted,
                    Err(e) => {
                        tracing::debug!(error = %e, "malformed peer message dropped");
                        dropped += 1;
                        continue;
                    }
                };
                // A group this node does not serve (yet: a create may reach
                // the voters in any order) drops the message; Raft resends.
                let taken = self.groups.get(group).is_some_and(|g| g.inbox.try_send(input).is_ok());
                if taken {
                    delivered += 1;
                } else {
                    dropped += 1;
                }
            }
        }
        Ok(tonic::Response::new(RaftDone { delivered, dropped }))
    }

    async fn pull_snapshot_chunk(
        &self,
        request: tonic::Request<peer::SnapshotChunkRequest>,
    ) -> Result<tonic::Response<peer::SnapshotChunk>, tonic::Status> {
        if let Err(why) = self.auth.check_peer(&request, None) {
            return Err(tonic::Status::permission_denied(why));
        }
        let req = request.into_inner();
        if !self.groups.contains(req.group) {
            return Err(tonic::Status::not_found(format!("this node serves no group {}", req.group)));
        }
        crate::install::serve_chunk(self.snapshots.clone(), req).await.map(tonic::Response::new)
    }

    async fn prepare_module(
        &self,
        request: tonic::Request<peer::PrepareModuleRequest>,
    ) -> Result<tonic::Response<peer::PrepareModuleResponse>, tonic::Status> {
        let from = request.get_ref().from;
        if let Err(why) = self.auth.check_peer(&request, Some(from)) {
            return Err(tonic::Status::permission_denied(why));
        }
        if !self.transport.knows(from) {
            return Err(tonic::Status::permission_denied(format!("node {from} is not known to this node")));
        }
        crate::modules::prepare(&self.host, request.into_inner()).await?;
        Ok(tonic::Response::new(peer::PrepareModuleResponse {}))
    }

    async fn pull_module_chunk(
        &self,
        request: tonic::Request<peer::ModuleChunkRequest>,
    ) -> Result<tonic::Response<peer::ModuleChunk>, tonic::Status> {
        if let Err(why) = self.auth.check_peer(&request, None) {
            return Err(tonic::Status::permission_denied(why));
        }
        crate::modules::serve_chunk(self.host.modules().clone(), request.into_inner()).await.map(tonic::Response::new)
    }
}
