//! One node's `Pipeline` stream: proposes and queries from every task of a
//! client multiplexed over one long-lived gRPC stream, many to a message.
//!
//! Owns the stream's task, the ids of the calls awaiting replies, and the
//! batching: whatever callers queued while the last batch was being written
//! goes out as the next one. Must answer every call it took exactly once,
//! and say which calls surely never left (retrying those elsewhere is safe)
//! and which may have reached the node (their outcome is unknown).

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use waft_proto::AuthChannel as Channel;
use waft_proto::client::{Call, CallBatch, call, call_reply};

use crate::ClientError;

/// Calls queued for one pipeline before callers wait for room.
pub const PIPELINE_QUEUE_MAX: usize = 4096;
/// Calls one batch holds at most (the server refuses more than
/// `waft_daemon::service::PIPELINE_BATCH_CALLS_MAX`, 1,024).
pub const PIPELINE_BATCH_CALLS_MAX: usize = 256;
/// Request bytes one batch holds at most; a call larger than this goes alone.
pub const PIPELINE_BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Calls of one pipeline awaiting replies at most; queued calls wait beyond
/// it. Not above the server's in-flight bound (4,096), so the server always
/// reads what this side sends.
pub const PIPELINE_IN_FLIGHT_MAX: usize = 4096;
/// Batches written to the stream but not yet taken by HTTP/2.
const PIPELINE_SEND_QUEUE_MAX: usize = 4;

type Reply = Result<call_reply::Response, ClientError>;

struct PipeCall {
    request: call::Request,
    reply: oneshot::Sender<Reply>,
}

/// The handle callers share; the stream's task ends when the last handle is
/// dropped and every sent call has its reply, or when the stream breaks.
#[derive(Clone)]
pub(crate) struct Pipe {
    calls: mpsc::Sender<PipeCall>,
}

impl Pipe {
    /// Starts the task for a pipeline to `addr` over `channel`. The stream
    /// opens with the first call.
    pub(crate) fn start(channel: Channel, addr: String) -> Pipe {
        let (calls, rx) = mpsc::channel(PIPELINE_QUEUE_MAX);
        tokio::spawn(run(channel, addr, rx));
        Pipe { calls }
    }

    /// Whether the task ended (the stream broke): a new pipe is needed.
    pub(crate) fn is_closed(&self) -> bool {
        self.calls.is_closed()
    }

    /// Sends `request` and waits for its reply.
    pub(crate) async fn call(&self, addr: &str, request: call::Request) -> Reply {
        let (reply, rx) = oneshot::channel();
        if self.calls.send(PipeCall { request, reply }).await.is_err() {
            return Err(not_sent(addr, "its pipeline had closed"));
        }
        // The task answers every call it took; a dropped sender would be a bug.
        rx.await.unwrap_or_else(|_| Err(ClientError::NoOutcome { addr: addr.to_string() }))
    }
}

fn not_sent(addr: &str, why: &str) -> ClientError {
    ClientError::NotSent { addr: addr.to_string(), why: why.to_string() }
}

fn request_bytes(request: &call::Request) -> usize {
    match request {
        call::Request::Propose(p) => p.command.len(),
        call::Request::Query(q) => q.request.len(),
    }
}

async fn run(channel: Channel, addr: String, mut calls: mpsc::Receiver<PipeCall>) {
    let Some(first) = calls.recv().await else { return };
    let (batches, batch_rx) = mpsc::channel::<CallBatch>(PIPELINE_SEND_QUEUE_MAX);
    let mut pending: HashMap<u64, oneshot::Sender<Reply>> = HashMap::new();
    let mut next_id = 0u64;
    let mut batch = Vec::new();
    take(first, &mut batch, &mut pending, &mut next_id);
    // Queued before the stream opens, so the first calls leave with its headers.
    let _ = batches.try_send(CallBatch { calls: std::mem::take(&mut batch) });
    let mut client = waft_proto::client_client(channel);
    let mut replies = match client.pipeline(ReceiverStream::new(batch_rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            // A refused dial carries its cause; `never_sent` recognises it.
            for (_, reply) in pending.drain() {
                let _ = reply.send(Err(ClientError::Rpc { addr: addr.clone(), status: status.clone() }));
            }
            refuse_queued(&addr, &mut calls, "its pipeline could not be opened");
            return;
        }
    };
    let mut batches = Some(batches);
    let ended = loop {
        let room = batches.as_ref().is_some_and(|b| b.capacity() > 0) && pending.len() < PIPELINE_IN_FLIGHT_MAX;
        tokio::select! {
            biased;
            message = replies.message() => match message {
                Ok(Some(batch)) => {
                    for reply in batch.replies {
                        if let Some(waiting) = pending.remove(&reply.id) {
                            let _ = waiting.send(reply.response.ok_or_else(|| ClientError::NoOutcome { addr: addr.clone() }));
                        }
                    }
                    if batches.is_none() && pending.is_empty() {
                        return;
                    }
                }
                Ok(None) => break tonic::Status::unavailable("the node ended the pipeline before every reply"),
                Err(status) => break status,
            },
            call = calls.recv(), if room => {
                let Some(call) = call else {
                    // Every handle is gone: close our side, wait for the replies.
                    batches = None;
                    if pending.is_empty() {
                        return;
                    }
                    continue;
                };
                let mut bytes = request_bytes(&call.request);
                take(call, &mut batch, &mut pending, &mut next_id);
                while batch.len() < PIPELINE_BATCH_CALLS_MAX && bytes < PIPELINE_BATCH_BYTES_MAX && pending.len() < PIPELINE_IN_FLIGHT_MAX {
                    let Ok(call) = calls.try_recv() else { break };
                    bytes += request_bytes(&call.request);
                    take(call, &mut batch, &mut pending, &mut next_id);
                }
                let sent = CallBatch { calls: std::mem::take(&mut batch) };
                // Room was checked, and only this task sends: full cannot
                // happen; closed means the stream is going down.
                if let Some(b) = &batches && let Err(e) = b.try_send(sent) {
                    for call in e.into_inner().calls {
                        if let Some(reply) = pending.remove(&call.id) {
                            let _ = reply.send(Err(not_sent(&addr, "its pipeline closed before the call was written")));
                        }
                    }
                }
            }
        }
    };
    // The stream broke: what was sent may or may not have been done.
    for (_, reply) in pending.drain() {
        let _ = reply.send(Err(ClientError::Rpc { addr: addr.clone(), status: ended.clone() }));
    }
    refuse_queued(&addr, &mut calls, "its pipeline broke before the call was written");
}

/// Numbers `call` and adds it to `batch`, remembering where its reply goes.
fn take(call: PipeCall, batch: &mut Vec<Call>, pending: &mut HashMap<u64, oneshot::Sender<Reply>>, next_id: &mut u64) {
    let id = *next_id;
    *next_id += 1;
    pending.insert(id, call.reply);
    batch.push(Call { id, request: Some(call.request) });
}

/// Answers the calls still queued (never written) and takes no more.
fn refuse_queued(addr: &str, calls: &mut mpsc::Receiver<PipeCall>, why: &str) {
    calls.close();
    while let Ok(call) = calls.try_recv() {
        let _ = call.reply.send(Err(not_sent(addr, why)));
    }
}
