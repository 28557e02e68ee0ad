//! The client service: `Propose`, the session calls (`OpenSession`,
//! `KeepAlive`, `CloseSession`), `Query` and `Status` over gRPC.
//!
//! Owns the checks a request passes before it costs a slot in a group's inbox
//! (group id, size, consistency level, session fields) and the wait for the
//! driver's answer, bounded by a timeout. Must never block on a full inbox:
//! that is BUSY. Sessions themselves live in the replicated table (waft-node);
//! this layer only turns requests into envelope bodies.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use waft_proto::client::{
    self, CloseSessionRequest, Consistency, KeepAliveRequest, OpenSessionRequest, ProposeRequest, ProposeResponse,
    QueryRequest, QueryResponse, SessionResponse, StatusRequest, StatusResponse, propose_response, query_response,
};
use waft_session::Body;

use crate::Groups;
use crate::driver::{BUSY_RETRY_AFTER_MS, Committed, GroupHandle, Input, ProposeReply, Reply};

/// Bytes of a session registration's nonce (a `u128`).
pub const NONCE_BYTES: usize = 16;

/// How long a client request waits for its group's answer. A proposal that
/// times out may still apply (TIMEOUT says so).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ClientService {
    node: u64,
    groups: Arc<Groups>,
}

impl ClientService {
    pub fn new(node: u64, groups: Arc<Groups>) -> ClientService {
        ClientService { node, groups }
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
        match group.inbox.try_send(input) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                crate::metrics::GroupMetrics::count(&group.metrics.busy_rejections);
                return Err(client::Error::busy(BUSY_RETRY_AFTER_MS, "the group's inbox is full"));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(client::Error::internal("the group stopped on this node; see its log"));
            }
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(client::Error::internal("the group dropped the request (it stopped); see its log")),
            Err(_) => Err(client::Error::timeout(REQUEST_TIMEOUT.as_millis() as u64)),
        }
    }

    async fn propose_inner(&self, req: ProposeRequest) -> ProposeReply {
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
        self.submit(&group, body).await
    }

    /// Hands a request for the log to the group and waits for its answer.
    async fn submit(&self, group: &GroupHandle, body: Body) -> ProposeReply {
        let (reply, rx) = oneshot::channel();
        Self::ask(group, Input::Propose { body, reply }, rx).await
    }

    async fn open_session_inner(&self, req: OpenSessionRequest) -> ProposeReply {
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

    async fn keep_alive_inner(&self, req: KeepAliveRequest) -> ProposeReply {
        let group = self.group(req.group)?;
        let body = Body::KeepAlive { session_id: req.session_id, lowest_unacked_seq: req.lowest_unacked_sequence };
        self.submit(&group, body).await
    }

    async fn close_session_inner(&self, req: CloseSessionRequest) -> ProposeReply {
        let group = self.group(req.group)?;
        self.submit(&group, Body::Unregister { session_id: req.session_id }).await
    }

    async fn query_inner(&self, req: QueryRequest) -> Reply {
        let group = self.group(req.group)?;
        let size = req.request.len() as u64;
        if size > group.command_bytes_max {
            return Err(client::Error::too_large(size, group.command_bytes_max));
        }
        let consistency = Consistency::try_from(req.consistency).map_err(|_| {
            client::Error::invalid_request(format!("unknown consistency level {}", req.consistency))
        })?;
        let (reply, rx) = oneshot::channel();
        Self::ask(&group, Input::Query { request: req.request, consistency, reply }, rx).await
    }
}

#[tonic::async_trait]
impl client::client_server::Client for ClientService {
    async fn propose(
        &self,
        request: tonic::Request<ProposeRequest>,
    ) -> Result<tonic::Response<ProposeResponse>, tonic::Status> {
        let response = match self.propose_inner(request.into_inner()).await {
            Ok(Committed { result, index, duplicate, .. }) => {
                ProposeResponse { outcome: Some(propose_response::Outcome::Result(result)), index, duplicate }
            }
            Err(e) => {
                ProposeResponse { outcome: Some(propose_response::Outcome::Error(e)), index: 0, duplicate: false }
            }
        };
        Ok(tonic::Response::new(response))
    }

    async fn open_session(
        &self,
        request: tonic::Request<OpenSessionRequest>,
    ) -> Result<tonic::Response<SessionResponse>, tonic::Status> {
        Ok(tonic::Response::new(session_response(self.open_session_inner(request.into_inner()).await)))
    }

    async fn keep_alive(
        &self,
        request: tonic::Request<KeepAliveRequest>,
    ) -> Result<tonic::Response<SessionResponse>, tonic::Status> {
        Ok(tonic::Response::new(session_response(self.keep_alive_inner(request.into_inner()).await)))
    }

    async fn close_session(
        &self,
        request: tonic::Request<CloseSessionRequest>,
    ) -> Result<tonic::Response<SessionResponse>, tonic::Status> {
        Ok(tonic::Response::new(session_response(self.close_session_inner(request.into_inner()).await)))
    }

    async fn query(&self, request: tonic::Request<QueryRequest>) -> Result<tonic::Response<QueryResponse>, tonic::Status> {
        let req = request.into_inner();
        let consistency = req.consistency;
        let response = match self.query_inner(req).await {
            Ok((result, applied_index)) => {
                QueryResponse { outcome: Some(query_response::Outcome::Result(result)), applied_index, consistency }
            }
            Err(e) => QueryResponse { outcome: Some(query_response::Outcome::Error(e)), applied_index: 0, consistency },
        };
        Ok(tonic::Response::new(response))
    }

    async fn status(&self, request: tonic::Request<StatusRequest>) -> Result<tonic::Response<StatusResponse>, tonic::Status> {
        let req = request.into_inner();
        let mut response = StatusResponse { node_id: self.node, ..Default::default() };
        match req.group {
            Some(group) => match self.group(group) {
                Ok(handle) => response.groups.push(handle.status.borrow().clone()),
                Err(e) => response.error = Some(e),
            },
            None => response.groups = self.groups.all().iter().map(|(_, h)| h.status.borrow().clone()).collect(),
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
