//! The client service: `Propose`, the session calls (`OpenSession`,
//! `KeepAlive`, `CloseSession`), `Query` and `Status` over gRPC.
//!
//! Owns the checks a request passes before it costs a slot in a group's inbox
//! (group id, size, consistency level, session fields) and the wait for the
//! driver's answer, bounded by a timeout. Must never block on a full inbox:
//! that is BUSY. Sessions themselves live in the replicated table (waft-node);
//! this layer only turns requests into envelope bodies.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use waft_proto::client::{
    self, Call, CallBatch, CallReply, CloseSessionRequest, Consistency, KeepAliveRequest, OpenSessionRequest,
    ProposeRequest, ProposeResponse, QueryRequest, QueryResponse, ReplyBatch, SessionResponse, StatusRequest,
    StatusResponse, call, call_reply, propose_response, query_response,
};
use waft_session::Body;

use crate::Groups;
use crate::inbox::{self, CallAnswer, Committed, GroupHandle, Input, ProposeReply, Reply, try_send};
use crate::security::{Auth, Caller, Role};

/// Bytes of a session registration's nonce (a `u128`).
pub const NONCE_BYTES: usize = 16;

/// How long a client request waits for its group's answer. A proposal that
/// times out may still apply (TIMEOUT says so).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Calls of one `Pipeline` stream running at once. At the bound the stream is
/// not read until some finish, so HTTP/2 flow control holds the client back.
pub const PIPELINE_CALLS_IN_FLIGHT_MAX: usize = 4096;
/// Calls one `CallBatch` may hold; a larger batch ends the stream with
/// INVALID_ARGUMENT (waft-client sends at most `waft_client::PIPELINE_BATCH_CALLS_MAX`).
pub const PIPELINE_BATCH_CALLS_MAX: usize = 1024;
/// Replies one `ReplyBatch` holds at most.
pub const PIPELINE_REPLY_BATCH_MAX: usize = 1024;
/// A `ReplyBatch` closes once its replies reach this many bytes, so that a
/// batch of results of the default size (1 MiB each at most) never exceeds
/// the client message limit, which would break the stream and leave every
/// call on it unknown.
pub const PIPELINE_REPLY_BATCH_BYTES_TARGET: usize = 4 * 1024 * 1024;
const _: () = assert!(PIPELINE_REPLY_BATCH_BYTES_TARGET + 2 * 1024 * 1024 <= waft_proto::CLIENT_MESSAGE_BYTES_MAX);
/// Answers queued from the groups for one pipeline: twice the calls it may
/// have in flight, so that answers arriving after their call timed out
/// cannot crowd out the rest. A driver drops an answer that finds it full
/// (its call is then answered TIMEOUT).
pub const PIPELINE_ANSWER_QUEUE_MAX: usize = 2 * PIPELINE_CALLS_IN_FLIGHT_MAX;
/// Call deadlines one pipeline keeps: those of calls answered stay until
/// every older call is answered too. At the bound the stream is not read.
pub const PIPELINE_DEADLINES_MAX: usize = 16 * PIPELINE_CALLS_IN_FLIGHT_MAX;
/// Reply batches queued for one stream's sender. When full, the stream's task
/// waits (a client that does not read its replies stops its own calls).
pub const PIPELINE_REPLY_QUEUE_MAX: usize = 64;

/// What the node's pipelines did, for metrics.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Pipelines open now.
    pub open: AtomicU64,
    /// Call batches received: `calls / batches` is how many calls shared a message.
    pub batches: AtomicU64,
    /// Calls received.
    pub calls: AtomicU64,
}

#[derive(Clone)]
pub struct ClientService {
    node: u64,
    groups: Arc<Groups>,
    /// Set when the daemon shuts down: pipelines stop taking calls.
    stop: watch::Receiver<bool>,
    pipelines: Arc<PipelineStats>,
    /// Proposals and sessions need the write role on their group, queries
    /// and status the read role.
    auth: Arc<Auth>,
    /// How long a pipeline call waits for its group's answer
    /// (`REQUEST_TIMEOUT`; shorter in tests).
    pipeline_timeout: Duration,
}

impl ClientService {
    pub fn new(
        node: u64,
        groups: Arc<Groups>,
        stop: watch::Receiver<bool>,
        pipelines: Arc<PipelineStats>,
        auth: Arc<Auth>,
    ) -> ClientService {
        ClientService { node, groups, stop, pipelines, auth, pipeline_timeout: REQUEST_TIMEOUT }
    }

    fn group(&self, group: u64) -> Result<Arc<GroupHandle>, client::Error> {
        if group == waft_proto::GROUP_NONE {
            return Err(client::Error::invalid_request("group 0 is reserved; name the group to use"));
        }
        self.groups.get(group).ok_or_else(|| client::Error::unknown_group(group))
    }

    /// Puts `input` in the group's inbox and waits for its answer.
    async fn ask<T>(
        group: &GroupHandle,
        input: Input,
        rx: oneshot::Receiver<Result<T, client::Error>>,
    ) -> Result<T, client::Error> {
        try_send(group, input)?;
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(client::Error::internal("the group dropped the request (it stopped); see its log")),
            Err(_) => Err(client::Error::timeout(REQUEST_TIMEOUT.as_millis() as u64)),
        }
    }

    async fn propose_inner(&self, req: ProposeRequest, caller: &Caller) -> ProposeReply {
        let (group, body) = self.propose_checked(req, caller)?;
        self.submit(&group, body).await
    }

    /// A proposal's group and envelope body, or why it cannot be proposed.
    fn propose_checked(&self, req: ProposeRequest, caller: &Caller) -> Result<(Arc<GroupHandle>, Body), client::Error> {
        self.auth.check(caller, Some(req.group), Role::Write)?;
        let group = self.group(req.group)?;
        let size = req.command.len() as u64;
        if size > group.command_bytes_max {
            return Err(client::Error::too_large(size, group.command_bytes_max));
        }
        if size == 0 {
            return Err(client::Error::invalid_request("the command is empty; send at least one byte"));
        }
        let body = if req.session_id == 0 {
            if req.sequence != 0 || req.lowest_unacked_sequence != 0 {
                return Err(client::Error::invalid_request(
                    "sequence numbers without a session; open one with OpenSession, or leave them 0",
                ));
            }
            Body::Plain { payload: req.command }
        } else {
            // The envelope checks the numbers (from 1, lowest <= sequence)
            // before anything reaches the log.
            Body::Command {
                session_id: req.session_id,
                seq: req.sequence,
                lowest_unacked_seq: req.lowest_unacked_sequence,
                payload: req.command,
            }
        };
        Ok((group, body))
    }

    /// Hands a request for the log to the group and waits for its answer.
    async fn submit(&self, group: &GroupHandle, body: Body) -> ProposeReply {
        let (reply, rx) = oneshot::channel();
        Self::ask(group, Input::Propose { body, reply }, rx).await
    }

    async fn open_session_inner(&self, req: OpenSessionRequest, caller: &Caller) -> ProposeReply {
        self.auth.check(caller, Some(req.group), Role::Write)?;
        let group = self.group(req.group)?;
        let nonce = match req.nonce.len() {
            0 => None,
            NONCE_BYTES => {
                let mut b = [0u8; NONCE_BYTES];
                b.copy_from_slice(&req.nonce);
                Some(u128::from_le_bytes(b))
            }
            n => {
                return Err(client::Error::invalid_request(format!(
                    "a session nonce has {NONCE_BYTES} bytes (or none), not {n}"
                )));
            }
        };
        self.submit(&group, Body::Register { nonce }).await
    }

    async fn keep_alive_inner(&self, req: KeepAliveRequest, caller: &Caller) -> ProposeReply {
        self.auth.check(caller, Some(req.group), Role::Write)?;
        let group = self.group(req.group)?;
        let body = Body::KeepAlive { session_id: req.session_id, lowest_unacked_seq: req.lowest_unacked_sequence };
        self.submit(&group, body).await
    }

    async fn close_session_inner(&self, req: CloseSessionRequest, caller: &Caller) -> ProposeReply {
        self.auth.check(caller, Some(req.group), Role::Write)?;
        let group = self.group(req.group)?;
        self.submit(&group, Body::Unregister { session_id: req.session_id }).await
    }

    async fn query_inner(&self, req: QueryRequest, caller: &Caller) -> Reply {
        let (group, request, consistency) = self.query_checked(req, caller)?;
        let (reply, rx) = oneshot::channel();
        Self::ask(&group, Input::Query { request, consistency, reply }, rx).await
    }

    /// A query's group, request and consistency, or why it cannot run.
    fn query_checked(
        &self,
        req: QueryRequest,
        caller: &Caller,
    ) -> Result<(Arc<GroupHandle>, bytes::Bytes, Consistency), client::Error> {
        self.auth.check(caller, Some(req.group), Role::Read)?;
        let group = self.group(req.group)?;
        let size = req.request.len() as u64;
        if size > group.command_bytes_max {
            return Err(client::Error::too_large(size, group.command_bytes_max));
        }
        let consistency = Consistency::try_from(req.consistency)
            .map_err(|_| client::Error::invalid_request(format!("unknown consistency level {}", req.consistency)))?;
        Ok((group, req.request, consistency))
    }
}

impl ClientService {
    async fn propose_response(&self, req: ProposeRequest, caller: &Caller) -> ProposeResponse {
        propose_response_of(self.propose_inner(req, caller).await)
    }

    async fn query_response(&self, req: QueryRequest, caller: &Caller) -> QueryResponse {
        let consistency = req.consistency;
        query_response_of(self.query_inner(req, caller).await, consistency)
    }

    /// One call of a pipeline, checked as its unary twin is: the group and
    /// what to hand its driver, or the call's reply already.
    fn check_call(&self, call: Call, caller: &Caller) -> Result<(Arc<GroupHandle>, Pending, inbox::Call), CallReply> {
        let id = call.id;
        match call.request {
            Some(call::Request::Propose(req)) => match self.propose_checked(req, caller) {
                Ok((group, body)) => Ok((group, Pending { id, query: None }, inbox::Call::Propose(body))),
                Err(e) => Err(Pending { id, query: None }.reply(CallAnswer::Propose(Err(e)))),
            },
            Some(call::Request::Query(req)) => {
                let asked = req.consistency;
                match self.query_checked(req, caller) {
                    Ok((group, request, consistency)) => {
                        Ok((group, Pending { id, query: Some(asked) }, inbox::Call::Query { request, consistency }))
                    }
                    Err(e) => Err(Pending { id, query: Some(asked) }.reply(CallAnswer::Query(Err(e)))),
                }
            }
            None => Err(CallReply {
                id,
                response: Some(call_reply::Response::Error(client::Error::invalid_request(
                    "a call carries neither a propose nor a query; client and server versions may differ",
                ))),
            }),
        }
    }

    /// Serves one pipeline until the client closes its side and every call
    /// has its reply, the client stops reading, or the daemon stops. Every
    /// call is `caller`'s (identified once, when the stream opened).
    ///
    /// The calls of one batch cross into each group's driver as one input
    /// (`Input::Calls`), and every answer comes back on one channel, each
    /// under the token the call was given here; a call not answered within
    /// `REQUEST_TIMEOUT` is answered TIMEOUT, as its unary twin would be.
    async fn serve_pipeline(
        self,
        mut inbound: impl futures_util::Stream<Item = Result<CallBatch, tonic::Status>> + Unpin,
        out: mpsc::Sender<Result<ReplyBatch, tonic::Status>>,
        caller: Caller,
    ) {
        let stats = self.pipelines.clone();
        stats.open.fetch_add(1, Ordering::Relaxed);
        // Counts the stream closed however this task ends.
        struct Open(Arc<PipelineStats>);
        impl Drop for Open {
            fn drop(&mut self) {
                self.0.open.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let _open = Open(stats);
        let (answers, mut answered) = inbox::CallAnswers::channel(PIPELINE_ANSWER_QUEUE_MAX);
        // Calls handed to a group, by token. Invariant: len() <=
        // PIPELINE_CALLS_IN_FLIGHT_MAX (more is not read).
        let mut waiting: HashMap<u64, Pending> = HashMap::new();
        // Each call's deadline, in the order the calls came (so in deadline
        // order); answered ones leave from the front.
        let mut deadlines: VecDeque<(tokio::time::Instant, u64)> = VecDeque::new();
        let mut next_token = 0u64;
        let mut ready: Vec<CallReply> = Vec::new();
        let mut batch_answers = Vec::with_capacity(PIPELINE_REPLY_BATCH_MAX);
        let mut by_group: BTreeMap<usize, GroupCalls> = BTreeMap::new();
        let mut reading = true;
        let mut stop = self.stop.clone();
        loop {
            if !send_ready(&out, &mut ready).await {
                return; // The client went away.
            }
            while deadlines.front().is_some_and(|(_, token)| !waiting.contains_key(token)) {
                deadlines.pop_front();
            }
            if !reading && waiting.is_empty() {
                return;
            }
            let next_deadline = deadlines.front().map(|(at, _)| *at);
            tokio::select! {
                // Answers first: they free room for more calls.
                biased;
                _ = answered.recv_many(&mut batch_answers, PIPELINE_REPLY_BATCH_MAX) => {
                    for (token, answer) in batch_answers.drain(..) {
                        if let Some(pending) = waiting.remove(&token) {
                            ready.push(pending.reply(answer));
                        }
                    }
                }
                () = tokio::time::sleep_until(next_deadline.unwrap_or_else(tokio::time::Instant::now)),
                    if next_deadline.is_some() => {
                    let now = tokio::time::Instant::now();
                    while let Some(&(at, token)) = deadlines.front() && at <= now {
                        deadlines.pop_front();
                        if let Some(pending) = waiting.remove(&token) {
                            ready.push(pending.timed_out(self.pipeline_timeout));
                        }
                        // The group may forget it (and every call before it).
                        answers.expire_below(token + 1);
                    }
                }
                () = async { drop(stop.wait_for(|stopping| *stopping).await) }, if reading => {
                    // Take no more calls; those running hear from their
                    // groups (which stop too), then the stream ends.
                    reading = false;
                }
                batch = inbound.next(),
                    if reading && waiting.len() < PIPELINE_CALLS_IN_FLIGHT_MAX && deadlines.len() < PIPELINE_DEADLINES_MAX => {
                    match batch {
                        Some(Ok(batch)) => {
                            if batch.calls.len() > PIPELINE_BATCH_CALLS_MAX {
                                let _ = out.send(Err(tonic::Status::invalid_argument(format!(
                                    "a call batch holds at most {PIPELINE_BATCH_CALLS_MAX} calls, not {}",
                                    batch.calls.len()
                                )))).await;
                                return;
                            }
                            self.pipelines.batches.fetch_add(1, Ordering::Relaxed);
                            self.pipelines.calls.fetch_add(batch.calls.len() as u64, Ordering::Relaxed);
                            let deadline = tokio::time::Instant::now() + self.pipeline_timeout;
                            for call in batch.calls {
                                match self.check_call(call, &caller) {
                                    Ok((group, pending, call)) => {
                                        let token = next_token;
                                        next_token += 1;
                                        waiting.insert(token, pending);
                                        deadlines.push_back((deadline, token));
                                        // The handle's address names its group.
                                        let key = Arc::as_ptr(&group) as usize;
                                        by_group.entry(key).or_insert_with(|| (group, Vec::new())).1.push((token, call));
                                    }
                                    Err(reply) => ready.push(reply),
                                }
                            }
                            // One inbox slot per group the batch names.
                            for (_, (group, calls)) in std::mem::take(&mut by_group) {
                                let tokens: Vec<u64> = calls.iter().map(|(token, _)| *token).collect();
                                if let Err(e) = try_send(&group, Input::Calls { calls, answers: answers.clone() }) {
                                    for token in tokens {
                                        if let Some(pending) = waiting.remove(&token) {
                                            ready.push(pending.refused(e.clone()));
                                        }
                                    }
                                }
                            }
                        }
                        None => reading = false,
                        // The stream broke: nobody is left to answer.
                        Some(Err(_)) => return,
                    }
                }
            }
        }
    }
}

/// A group's calls from one pipeline batch, each with its token.
type GroupCalls = (Arc<GroupHandle>, Vec<(u64, inbox::Call)>);

/// A pipeline call handed to a group: the client's id for it, and for a
/// query the consistency it asked (the reply echoes it).
struct Pending {
    id: u64,
    query: Option<i32>,
}

impl Pending {
    fn reply(self, answer: CallAnswer) -> CallReply {
        let response = match (answer, self.query) {
            (CallAnswer::Propose(reply), _) => call_reply::Response::Propose(propose_response_of(reply)),
            (CallAnswer::Query(reply), Some(consistency)) => {
                call_reply::Response::Query(query_response_of(reply, consistency))
            }
            (CallAnswer::Query(reply), None) => call_reply::Response::Query(query_response_of(reply, 0)),
        };
        CallReply { id: self.id, response: Some(response) }
    }

    /// Refused before its group saw it (`e`: BUSY, or the group stopped).
    fn refused(self, e: client::Error) -> CallReply {
        match self.query {
            None => self.reply(CallAnswer::Propose(Err(e))),
            Some(_) => self.reply(CallAnswer::Query(Err(e))),
        }
    }

    fn timed_out(self, waited: Duration) -> CallReply {
        self.refused(client::Error::timeout(waited.as_millis() as u64))
    }
}

/// Sends `ready` to the client in reply batches, each closed at
/// `PIPELINE_REPLY_BATCH_MAX` replies or `PIPELINE_REPLY_BATCH_BYTES_TARGET`
/// bytes; false when the client went away.
async fn send_ready(out: &mpsc::Sender<Result<ReplyBatch, tonic::Status>>, ready: &mut Vec<CallReply>) -> bool {
    let mut replies = ready.drain(..).peekable();
    while replies.peek().is_some() {
        let mut batch = Vec::new();
        let mut bytes = 0;
        // A batch closes at a byte target too, so that large results do
        // not add up past the client message limit.
        while batch.len() < PIPELINE_REPLY_BATCH_MAX && bytes < PIPELINE_REPLY_BATCH_BYTES_TARGET {
            let Some(reply) = replies.next() else { break };
            bytes += prost::Message::encoded_len(&reply);
            batch.push(reply);
        }
        if out.send(Ok(ReplyBatch { replies: batch })).await.is_err() {
            return false;
        }
    }
    true
}

fn propose_response_of(reply: ProposeReply) -> ProposeResponse {
    match reply {
        Ok(Committed { result, index, duplicate, .. }) => {
            ProposeResponse { outcome: Some(propose_response::Outcome::Result(result)), index, duplicate }
        }
        Err(e) => ProposeResponse { outcome: Some(propose_response::Outcome::Error(e)), index: 0, duplicate: false },
    }
}

fn query_response_of(reply: Reply, consistency: i32) -> QueryResponse {
    match reply {
        Ok((result, applied_index)) => {
            QueryResponse { outcome: Some(query_response::Outcome::Result(result)), applied_index, consistency }
        }
        Err(e) => QueryResponse { outcome: Some(query_response::Outcome::Error(e)), applied_index: 0, consistency },
    }
}

#[tonic::async_trait]
impl client::client_server::Client for ClientService {
    async fn propose(
        &self,
        request: tonic::Request<ProposeRequest>,
    ) -> Result<tonic::Response<ProposeResponse>, tonic::Status> {
        let caller = self.auth.identify(&request);
        Ok(tonic::Response::new(self.propose_response(request.into_inner(), &caller).await))
    }

    type PipelineStream = tokio_stream::wrappers::ReceiverStream<Result<ReplyBatch, tonic::Status>>;

    async fn pipeline(
        &self,
        request: tonic::Request<tonic::Streaming<CallBatch>>,
    ) -> Result<tonic::Response<Self::PipelineStream>, tonic::Status> {
        if *self.stop.borrow() {
            return Err(tonic::Status::unavailable("this node is shutting down; retry at another node"));
        }
        let caller = self.auth.identify(&request);
        let (out, replies) = mpsc::channel(PIPELINE_REPLY_QUEUE_MAX);
        tokio::spawn(self.clone().serve_pipeline(request.into_inner(), out, caller));
        Ok(tonic::Response::new(tokio_stream::wrappers::ReceiverStream::new(replies)))
    }

    async fn open_session(
        &self,
        request: tonic::Request<OpenSessionRequest>,
    ) -> Result<tonic::Response<SessionResponse>, tonic::Status> {
        let caller = self.auth.identify(&request);
        Ok(tonic::Response::new(session_response(self.open_session_inner(request.into_inner(), &caller).await)))
    }

    async fn keep_alive(
        &self,
        request: tonic::Request<KeepAliveRequest>,
    ) -> Result<tonic::Response<SessionResponse>, tonic::Status> {
        let caller = self.auth.identify(&request);
        Ok(tonic::Response::new(session_response(self.keep_alive_inner(request.into_inner(), &caller).await)))
    }

    async fn close_session(
        &self,
        request: tonic::Request<CloseSessionRequest>,
    ) -> Result<tonic::Response<SessionResponse>, tonic::Status> {
        let caller = self.auth.identify(&request);
        Ok(tonic::Response::new(session_response(self.close_session_inner(request.into_inner(), &caller).await)))
    }

    async fn query(
        &self,
        request: tonic::Request<QueryRequest>,
    ) -> Result<tonic::Response<QueryResponse>, tonic::Status> {
        let caller = self.auth.identify(&request);
        Ok(tonic::Response::new(self.query_response(request.into_inner(), &caller).await))
    }

    async fn status(
        &self,
        request: tonic::Request<StatusRequest>,
    ) -> Result<tonic::Response<StatusResponse>, tonic::Status> {
        let caller = self.auth.identify(&request);
        let req = request.into_inner();
        let mut response = StatusResponse { node_id: self.node, ..Default::default() };
        match req.group {
            Some(group) => match self.auth.check(&caller, Some(group), Role::Read).and_then(|()| self.group(group)) {
                Ok(handle) => response.groups.push(handle.status.borrow().clone()),
                Err(e) => response.error = Some(e),
            },
            // Only the groups the caller may read.
            None => {
                response.groups = self
                    .groups
                    .all()
                    .iter()
                    .filter(|(g, _)| self.auth.may_read(&caller, *g))
                    .map(|(_, h)| h.status.borrow().clone())
                    .collect()
            }
        }
        Ok(tonic::Response::new(response))
    }
}

fn session_response(reply: ProposeReply) -> SessionResponse {
    match reply {
        Ok(Committed { session_id, index, .. }) => SessionResponse { error: None, session_id, index },
        Err(e) => SessionResponse { error: Some(e), session_id: 0, index: 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use waft_proto::client::call_reply::Response;

    /// A node serving group 1, whose driver is the test: its inbox (of
    /// `capacity`) is handed back to read, or to leave unread.
    fn service(capacity: usize) -> (ClientService, mpsc::Receiver<Input>, watch::Sender<bool>) {
        let groups = Arc::new(Groups::default());
        let (inbox, rx) = mpsc::channel(capacity);
        let (_, status) = watch::channel(client::GroupStatus::default());
        groups.insert(1, GroupHandle { inbox, status, command_bytes_max: 1024, metrics: Arc::new(Default::default()) });
        let (stop_tx, stop) = watch::channel(false);
        let service =
            ClientService::new(1, groups, stop, Arc::new(PipelineStats::default()), Arc::new(Auth::default()));
        (service, rx, stop_tx)
    }

    fn propose(id: u64, group: u64, command: &'static [u8]) -> Call {
        let req = ProposeRequest { group, command: bytes::Bytes::from_static(command), ..Default::default() };
        Call { id, request: Some(call::Request::Propose(req)) }
    }

    fn query(id: u64) -> Call {
        let req =
            QueryRequest { group: 1, request: bytes::Bytes::from_static(b"q"), consistency: Consistency::Lease as i32 };
        Call { id, request: Some(call::Request::Query(req)) }
    }

    type Replies = mpsc::Receiver<Result<ReplyBatch, tonic::Status>>;

    /// Runs a pipeline over `batches`, its client side kept open until the
    /// sender returned is dropped; returns the stream of reply batches too.
    fn run(
        service: ClientService,
        batches: Vec<CallBatch>,
    ) -> (Replies, mpsc::Sender<Result<CallBatch, tonic::Status>>) {
        let (calls, inbound) = mpsc::channel(16);
        for b in batches {
            calls.try_send(Ok(b)).unwrap();
        }
        let (out, replies) = mpsc::channel(PIPELINE_REPLY_QUEUE_MAX);
        let caller: Caller = Ok(crate::security::Principal::Anonymous);
        tokio::spawn(service.serve_pipeline(tokio_stream::wrappers::ReceiverStream::new(inbound), out, caller));
        (replies, calls)
    }

    async fn next_replies(replies: &mut Replies, n: usize) -> Vec<CallReply> {
        let mut got = Vec::new();
        while got.len() < n {
            got.extend(replies.recv().await.expect("the stream ended").expect("a reply batch").replies);
        }
        got.sort_by_key(|r| r.id);
        got
    }

    fn code(reply: &CallReply) -> client::ErrorCode {
        match &reply.response {
            Some(Response::Propose(p)) => match &p.outcome {
                Some(propose_response::Outcome::Error(e)) => e.code(),
                other => panic!("call {}: {other:?}", reply.id),
            },
            Some(Response::Query(q)) => match &q.outcome {
                Some(query_response::Outcome::Error(e)) => e.code(),
                other => panic!("call {}: {other:?}", reply.id),
            },
            other => panic!("call {}: {other:?}", reply.id),
        }
    }

    /// The calls of one batch for one group reach its driver as one input,
    /// in order; each answer finds its call; bad calls are answered at once.
    #[tokio::test]
    async fn a_batch_reaches_its_group_as_one_input_and_each_answer_its_call() {
        let (service, mut inbox, _stop) = service(4);
        let batch =
            CallBatch { calls: vec![propose(10, 1, b"a"), query(11), propose(12, 9, b"c"), propose(13, 1, b"")] };
        let (mut replies, _calls) = run(service, vec![batch]);
        // Unknown group and empty command: answered without the driver.
        let early = next_replies(&mut replies, 2).await;
        assert_eq!((early[0].id, code(&early[0])), (12, client::ErrorCode::UnknownGroup));
        assert_eq!((early[1].id, code(&early[1])), (13, client::ErrorCode::InvalidRequest));
        let Some(Input::Calls { calls, answers }) = inbox.recv().await else { panic!("not one Calls input") };
        assert_eq!(calls.len(), 2);
        assert!(calls.iter().all(|(token, _)| !answers.is_closed(*token)), "waited for");
        assert!(matches!(&calls[0].1, inbox::Call::Propose(Body::Plain { payload }) if payload == &b"a"[..]));
        assert!(matches!(&calls[1].1, inbox::Call::Query { consistency: Consistency::Lease, .. }));
        assert!(inbox.try_recv().is_err(), "one input for the batch");
        // Answered out of order, and one answer twice: each call gets its own, once.
        let committed =
            Committed { result: bytes::Bytes::from_static(b"ok"), index: 7, duplicate: false, session_id: 0 };
        answers.send(calls[1].0, CallAnswer::Query(Ok((bytes::Bytes::from_static(b"v"), 7))));
        answers.send(calls[0].0, CallAnswer::Propose(Ok(committed)));
        answers.send(calls[0].0, CallAnswer::Propose(Err(client::Error::internal("again"))));
        let got = next_replies(&mut replies, 2).await;
        match &got[0].response {
            Some(Response::Propose(p)) => {
                assert_eq!((got[0].id, p.index), (10, 7));
                assert_eq!(p.outcome, Some(propose_response::Outcome::Result(bytes::Bytes::from_static(b"ok"))));
            }
            other => panic!("{other:?}"),
        }
        match &got[1].response {
            Some(Response::Query(q)) => {
                assert_eq!((got[1].id, q.applied_index, q.consistency), (11, 7, Consistency::Lease as i32));
            }
            other => panic!("{other:?}"),
        }
    }

    /// A call its group never answers is answered TIMEOUT after the
    /// pipeline's timeout (the outcome unknown), and a late answer is dropped.
    #[tokio::test]
    async fn a_call_its_group_never_answers_times_out() {
        let (mut service, mut inbox, _stop) = service(4);
        let timeout = Duration::from_millis(300);
        service.pipeline_timeout = timeout;
        let started = tokio::time::Instant::now();
        let (mut replies, client) = run(service, vec![CallBatch { calls: vec![propose(1, 1, b"a"), query(2)] }]);
        let Some(Input::Calls { calls, answers }) = inbox.recv().await else { panic!("no Calls input") };
        let got = next_replies(&mut replies, 2).await;
        assert!(started.elapsed() >= timeout, "answered after {:?}", started.elapsed());
        assert_eq!(code(&got[0]), client::ErrorCode::Timeout);
        assert_eq!(code(&got[1]), client::ErrorCode::Timeout);
        // Too late: nothing more reaches the client.
        // The group may forget both calls (its waiters are pruned).
        assert!(calls.iter().all(|(token, _)| answers.is_closed(*token)));
        answers.send(calls[0].0, CallAnswer::Propose(Err(client::Error::internal("late"))));
        // The pipeline ends once the client closes its side and nothing
        // waits: the late answer must not come first.
        drop(client);
        assert!(replies.recv().await.is_none(), "a late answer was sent");
    }

    /// A full inbox refuses the batch's calls for that group with BUSY.
    #[tokio::test]
    async fn a_full_inbox_answers_busy() {
        let (service, _inbox, _stop) = service(1);
        let batches = vec![
            CallBatch { calls: vec![propose(1, 1, b"a")] },
            CallBatch { calls: vec![propose(2, 1, b"b"), query(3)] },
        ];
        let (mut replies, _calls) = run(service, batches);
        let got = next_replies(&mut replies, 2).await;
        assert_eq!((got[0].id, code(&got[0])), (2, client::ErrorCode::Busy));
        assert_eq!((got[1].id, code(&got[1])), (3, client::ErrorCode::Busy));
    }
}
