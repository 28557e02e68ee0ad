//! The peer transport: Raft messages between daemons over waft-proto's
//! `Raft(stream PeerBatch)`.
//!
//! Owns, per remote peer, one outbound stream with a bounded queue in front of
//! it and a reconnect loop with back-off; and the server side, which converts
//! what arrives (`into_raft`) and routes it to the group's inbox. Must never
//! wait on a slow peer or a full inbox: Raft tolerates loss and retransmits,
//! so anything that does not fit is dropped and counted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use waft_proto::peer::{self, PeerBatch, PeerMessage, RaftDone};
use waft_raft::NodeId;
use waft_storage::SnapshotStore;

use crate::Groups;
use crate::inbox::Input;

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

/// The outbound side: a queue per peer. Cloned into every group's driver.
#[derive(Clone)]
pub struct Transport {
    node: NodeId,
    queues: Arc<BTreeMap<NodeId, mpsc::Sender<PeerMessage>>>,
}

impl Transport {
    /// Starts one sender task per peer.
    pub fn start(node: NodeId, peers: &BTreeMap<NodeId, String>) -> Transport {
        let mut queues = BTreeMap::new();
        for (&id, addr) in peers {
            let (tx, rx) = mpsc::channel(PEER_QUEUE_MESSAGES_MAX);
            queues.insert(id, tx);
            let span = tracing::info_span!("peer", node, peer = id, addr = %addr);
            tokio::spawn(tracing::Instrument::instrument(sender(addr.clone(), rx), span));
        }
        Transport { node, queues: Arc::new(queues) }
    }

    /// Queues `messages` of `group` for their peers; drops what does not fit.
    pub fn send(&self, group: u64, messages: Vec<PeerMessage>) {
        for m in messages {
            let to = m.to;
            let Some(queue) = self.queues.get(&to) else {
                tracing::debug!(group, node = self.node, to, "message for an unknown peer dropped");
                continue;
            };
            if queue.try_send(m).is_err() {
                tracing::trace!(group, node = self.node, to, "peer queue full or closed; message dropped");
            }
        }
    }
}

/// Owns one peer's outbound stream: connects, streams batches, and on any
/// failure waits and reconnects. Ends only when every `Transport` is gone.
async fn sender(addr: String, mut queue: mpsc::Receiver<PeerMessage>) {
    let mut backoff = RECONNECT_BACKOFF_MIN;
    loop {
        match connect(&addr).await {
            Ok(client) => {
                backoff = RECONNECT_BACKOFF_MIN;
                tracing::debug!("connected");
                if stream(client, &mut queue).await.is_break() {
                    return;
                }
                tracing::debug!("stream ended; reconnecting");
            }
            Err(e) => tracing::trace!(error = %e, "connect failed"),
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
    addr: &str,
) -> Result<peer::peer_client::PeerClient<tonic::transport::Channel>, tonic::transport::Error> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(waft_proto::peer_client(channel))
}

/// Streams batches until the call fails (`Continue`: reconnect) or the
/// queue's senders are all gone (`Break`).
async fn stream(
    mut client: peer::peer_client::PeerClient<tonic::transport::Channel>,
    queue: &mut mpsc::Receiver<PeerMessage>,
) -> std::ops::ControlFlow<()> {
    use std::ops::ControlFlow::{Break, Continue};
    let (batches, rx) = mpsc::channel::<PeerBatch>(PEER_STREAM_BATCHES_MAX);
    let call = client.raft(tokio_stream::wrappers::ReceiverStream::new(rx));
    tokio::pin!(call);
    loop {
        tokio::select! {
            done = &mut call => {
                match done {
                    Ok(r) => tracing::debug!(delivered = r.get_ref().delivered, dropped = r.get_ref().dropped, "stream closed by peer"),
                    Err(status) => tracing::debug!(%status, "stream failed"),
                }
                return Continue(());
            }
            first = queue.recv() => {
                let Some(first) = first else { return Break(()) };
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
                    sent = batches.send(batch) => if sent.is_err() { return Continue(()) },
                    done = &mut call => {
                        if let Err(status) = done { tracing::debug!(%status, "stream failed"); }
                        return Continue(());
                    }
                }
            }
        }
    }
}

/// The server side of the peer service.
pub struct PeerService {
    groups: Arc<Groups>,
    snapshots: Arc<SnapshotStore>,
    /// Becomes true when the node shuts down: every inbound stream then ends,
    /// so peers reconnect to whatever serves this address next instead of
    /// streaming into a node that no longer reads.
    stop: tokio::sync::watch::Receiver<bool>,
}

impl PeerService {
    pub fn new(
        groups: Arc<Groups>,
        snapshots: Arc<SnapshotStore>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> PeerService {
        PeerService { groups, snapshots, stop }
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
        let req = request.into_inner();
        if !self.groups.contains(req.group) {
            return Err(tonic::Status::not_found(format!("this node serves no group {}", req.group)));
        }
        crate::install::serve_chunk(self.snapshots.clone(), req).await.map(tonic::Response::new)
    }
}
