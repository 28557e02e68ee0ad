//! waft-client: the Rust client of a waft cluster; the `waft` CLI is built on it.
//!
//! Owns the retry policy a client needs: follow a NOT_LEADER hint to the
//! leader's address, wait out BUSY and "no leader yet", all within a bounded
//! number of attempts. Must never retry a TIMEOUT on its own (the command may
//! have applied) nor loop without a bound.

use std::time::Duration;

use bytes::Bytes;
use waft_proto::admin::{AdminOp, AdminRequest, AdminResult, admin_response};
use waft_proto::client::{
    self, Consistency, ErrorCode, ProposeRequest, QueryRequest, StatusRequest, StatusResponse, propose_response,
    query_response,
};

/// Attempts of one request, counting redirects and waits for a leader.
pub const ATTEMPTS_MAX: usize = 20;
/// Pause before retrying when no leader is known yet (an election runs).
pub const NO_LEADER_PAUSE: Duration = Duration::from_millis(100);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {addr}: {source}; is `waft serve` running there?")]
    Connect { addr: String, source: tonic::transport::Error },
    #[error("{addr}: {status}")]
    Rpc { addr: String, status: tonic::Status },
    /// The server refused the request; `.0.code()` says why.
    #[error("{0}")]
    Refused(client::Error),
    #[error("{addr} sent a response without an outcome; client and server versions may differ")]
    NoOutcome { addr: String },
    #[error("gave up after {attempts} attempts; last error: {last}")]
    GaveUp { attempts: usize, last: Box<ClientError> },
}

/// A successful answer and the log index it reflects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub result: Bytes,
    pub index: u64,
}

async fn connect(addr: &str) -> Result<tonic::transport::Channel, ClientError> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|source| ClientError::Connect { addr: addr.to_string(), source })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    endpoint.connect().await.map_err(|source| ClientError::Connect { addr: addr.to_string(), source })
}

/// What to do after a refused attempt.
enum Next {
    Retry { addr: Option<String>, pause: Duration },
    Stop,
}

fn next_step(e: &client::Error) -> Next {
    match e.code() {
        ErrorCode::NotLeader if !e.leader_address.is_empty() => {
            Next::Retry { addr: Some(e.leader_address.clone()), pause: Duration::ZERO }
        }
        ErrorCode::NotLeader => Next::Retry { addr: None, pause: NO_LEADER_PAUSE },
        ErrorCode::Busy => Next::Retry { addr: None, pause: Duration::from_millis(e.retry_after_ms.max(1)) },
        _ => Next::Stop,
    }
}

/// Whether a failed call certainly never reached the server: the connection
/// could not be made (a cached channel dials again lazily, and reports a
/// refused dial as an UNAVAILABLE status). Only then is retrying elsewhere
/// safe for a command that may not be idempotent.
fn never_sent(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } => true,
        ClientError::Rpc { status, .. } => {
            let mut source = std::error::Error::source(status);
            while let Some(err) = source {
                if format!("{err:?}").starts_with("ConnectError") {
                    return true;
                }
                source = err.source();
            }
            status.code() == tonic::Code::Unavailable && status.message() == "tcp connect error"
        }
        _ => false,
    }
}

/// Addresses a client keeps a connection to at most; beyond it the oldest
/// are dropped (a cluster's members, plus room for a few moves).
pub const CONNECTIONS_MAX: usize = 16;

/// A client of one cluster. Keeps one HTTP/2 connection per node it talked to
/// (requests multiplex over it) and remembers each group's leader, so after
/// the first redirect requests go straight there. Cheap to clone; clones share
/// connections and leader hints.
#[derive(Clone)]
pub struct Client {
    inner: std::sync::Arc<Shared>,
}

struct Shared {
    /// Where to start when nothing better is known: the first node, then the
    /// next one each time a node cannot be reached. Invariant: not empty.
    seeds: Vec<String>,
    next_seed: std::sync::atomic::AtomicUsize,
    /// Open connections by address. Invariant: len() <= CONNECTIONS_MAX.
    connections: std::sync::Mutex<Vec<(String, tonic::transport::Channel)>>,
    /// The leader's address last heard of, by group.
    leaders: std::sync::Mutex<std::collections::BTreeMap<u64, String>>,
}

impl Client {
    /// A client that starts at `addr` (any node of the cluster). Connects lazily.
    pub fn new(addr: impl Into<String>) -> Client {
        Client::with_nodes(vec![addr.into()])
    }

    /// A client that knows several nodes of the cluster: when the one it uses
    /// cannot be reached, it goes on with the next. Queries are asked at the
    /// first (reads are served where they are asked). Panics if `addrs` is
    /// empty.
    pub fn with_nodes(addrs: Vec<String>) -> Client {
        assert!(!addrs.is_empty(), "a client needs at least one node address");
        Client {
            inner: std::sync::Arc::new(Shared {
                seeds: addrs,
                next_seed: std::sync::atomic::AtomicUsize::new(0),
                connections: std::sync::Mutex::new(Vec::new()),
                leaders: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            }),
        }
    }

    async fn connection(&self, addr: &str) -> Result<tonic::transport::Channel, ClientError> {
        if let Ok(conns) = self.inner.connections.lock()
            && let Some((_, c)) = conns.iter().find(|(a, _)| a == addr)
        {
            return Ok(c.clone());
        }
        let c = connect(addr).await?;
        if let Ok(mut conns) = self.inner.connections.lock() {
            if conns.len() >= CONNECTIONS_MAX {
                conns.remove(0);
            }
            conns.push((addr.to_string(), c.clone()));
        }
        Ok(c)
    }

    /// Forgets a connection that failed, so the next attempt dials again.
    fn forget(&self, addr: &str) {
        if let Ok(mut conns) = self.inner.connections.lock() {
            conns.retain(|(a, _)| a != addr);
        }
    }

    /// The seed node in use now.
    fn seed(&self) -> String {
        let seeds = &self.inner.seeds;
        seeds[self.inner.next_seed.load(std::sync::atomic::Ordering::Relaxed) % seeds.len()].clone()
    }

    /// Moves on to the next seed node (after `failed` could not be reached).
    fn rotate_seed(&self, failed: &str) -> String {
        let seeds = &self.inner.seeds;
        let at = self.inner.next_seed.load(std::sync::atomic::Ordering::Relaxed) % seeds.len();
        if seeds[at] == failed {
            self.inner.next_seed.store((at + 1) % seeds.len(), std::sync::atomic::Ordering::Relaxed);
        }
        self.seed()
    }

    fn start_for(&self, group: u64) -> String {
        self.inner.leaders.lock().ok().and_then(|l| l.get(&group).cloned()).unwrap_or_else(|| self.seed())
    }

    fn forget_leader(&self, group: u64) {
        if let Ok(mut leaders) = self.inner.leaders.lock() {
            leaders.remove(&group);
        }
    }

    fn remember_leader(&self, group: u64, addr: &str) {
        if let Ok(mut leaders) = self.inner.leaders.lock() {
            leaders.insert(group, addr.to_string());
        }
    }

    /// Runs `call` for `group`, following hints, at most `ATTEMPTS_MAX` times.
    /// `to_leader`: start at (and remember) the group's leader rather than the
    /// seed node.
    async fn with_retries<T, F, Fut>(&self, group: u64, to_leader: bool, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(tonic::transport::Channel, String) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut target = if to_leader { self.start_for(group) } else { self.inner.seeds[0].clone() };
        let mut last = None;
        for _ in 0..ATTEMPTS_MAX {
            let outcome = match self.connection(&target).await {
                Ok(c) => call(c, target.clone()).await,
                Err(e) => Err(e),
            };
            let e = match outcome {
                Ok(answer) => {
                    if to_leader {
                        self.remember_leader(group, &target);
                    }
                    return Ok(answer);
                }
                Err(e) => e,
            };
            let next = match &e {
                ClientError::Refused(refusal) => next_step(refusal),
                // The node may have just died: go on with the next known node
                // (a proposal's outcome there was unknown, but a connection
                // that failed before the call carried nothing).
                ClientError::Connect { .. } | ClientError::Rpc { .. }
                    if never_sent(&e) && (self.inner.seeds.len() > 1 || target != self.inner.seeds[0]) =>
                {
                    self.forget(&target);
                    self.forget_leader(group);
                    Next::Retry { addr: Some(self.rotate_seed(&target)), pause: NO_LEADER_PAUSE }
                }
                ClientError::Rpc { .. } => {
                    self.forget(&target);
                    self.forget_leader(group);
                    Next::Stop
                }
                _ => Next::Stop,
            };
            match next {
                Next::Stop => return Err(e),
                Next::Retry { addr: new, pause } => {
                    match new {
                        Some(new) => target = new,
                        // This node knows no leader (an election runs, or it
                        // was removed from the group and will never hear of
                        // one): ask the next node for a leader instead.
                        None if to_leader && matches!(&e, ClientError::Refused(r) if r.code() == ErrorCode::NotLeader) => {
                            self.forget_leader(group);
                            target = self.rotate_seed(&target);
                        }
                        None => {}
                    }
                    tokio::time::sleep(pause).await;
                }
            }
            last = Some(e);
        }
        Err(ClientError::GaveUp {
            attempts: ATTEMPTS_MAX,
            last: Box::new(last.unwrap_or(ClientError::NoOutcome { addr: target })),
        })
    }

    /// Proposes `command` to `group`, following the leader.
    pub async fn propose(&self, group: u64, command: Bytes) -> Result<Answer, ClientError> {
        self.with_retries(group, true, |channel, at| {
            let mut c = waft_proto::client_client(channel);
            let req = ProposeRequest { group, command: command.clone(), ..Default::default() };
            async move {
                let resp = c.propose(req).await.map_err(|status| ClientError::Rpc { addr: at.clone(), status })?;
                let resp = resp.into_inner();
                match resp.outcome {
                    Some(propose_response::Outcome::Result(result)) => Ok(Answer { result, index: resp.index }),
                    Some(propose_response::Outcome::Error(e)) => Err(ClientError::Refused(e)),
                    None => Err(ClientError::NoOutcome { addr: at }),
                }
            }
        })
        .await
    }

    /// Queries `group` with `consistency` at the node this client starts at.
    /// Reads are served where they are asked (a follower forwards the read
    /// index itself), so only "no leader yet" and BUSY are retried here.
    pub async fn query(&self, group: u64, request: Bytes, consistency: Consistency) -> Result<Answer, ClientError> {
        self.with_retries(group, false, |channel, at| {
            let mut c = waft_proto::client_client(channel);
            let req = QueryRequest { group, request: request.clone(), consistency: consistency as i32 };
            async move {
                let resp = c.query(req).await.map_err(|status| ClientError::Rpc { addr: at.clone(), status })?;
                let resp = resp.into_inner();
                match resp.outcome {
                    Some(query_response::Outcome::Result(result)) => Ok(Answer { result, index: resp.applied_index }),
                    Some(query_response::Outcome::Error(e)) => Err(ClientError::Refused(e)),
                    None => Err(ClientError::NoOutcome { addr: at }),
                }
            }
        })
        .await
    }

    /// What the seed node knows of `group` (or of all its groups). One attempt.
    pub async fn status(&self, group: Option<u64>) -> Result<StatusResponse, ClientError> {
        let addr = self.inner.seeds[0].clone();
        let mut c = waft_proto::client_client(self.connection(&addr).await?);
        let resp = match c.status(StatusRequest { group }).await {
            Ok(resp) => resp.into_inner(),
            Err(status) => {
                self.forget(&addr);
                return Err(ClientError::Rpc { addr, status });
            }
        };
        match resp.error {
            Some(e) => Err(ClientError::Refused(e)),
            None => Ok(resp),
        }
    }
}

impl Client {
    /// Runs an admin operation on `group` (see waft.admin.v1) and returns
    /// the outcome once it took effect. Membership changes and transfers go
    /// to the leader; a snapshot or an (unsafe) reset of the voters acts on
    /// the first node this client knows.
    pub async fn admin(
        &self,
        group: u64,
        op: AdminOp,
        ids: Vec<u64>,
        learners: Vec<u64>,
    ) -> Result<AdminResult, ClientError> {
        let to_leader = !matches!(op, AdminOp::Snapshot | AdminOp::ResetPeers);
        self.with_retries(group, to_leader, |channel, at| {
            let mut c = waft_proto::admin_client(channel);
            let req = AdminRequest { group, op: op as i32, ids: ids.clone(), learners: learners.clone() };
            async move {
                let resp = c.change(req).await.map_err(|status| ClientError::Rpc { addr: at.clone(), status })?;
                match resp.into_inner().outcome {
                    Some(admin_response::Outcome::Result(result)) => Ok(result),
                    Some(admin_response::Outcome::Error(e)) => Err(ClientError::Refused(e)),
                    None => Err(ClientError::NoOutcome { addr: at }),
                }
            }
        })
        .await
    }
}

/// Proposes `command` to `group`, starting at `addr` and following the leader.
pub async fn propose(addr: &str, group: u64, command: Bytes) -> Result<Answer, ClientError> {
    Client::new(addr).propose(group, command).await
}

/// Queries `group` at `addr` with `consistency` (see [`Client::query`]).
pub async fn query(addr: &str, group: u64, request: Bytes, consistency: Consistency) -> Result<Answer, ClientError> {
    Client::new(addr).query(group, request, consistency).await
}

/// What the node at `addr` knows of `group` (or of all its groups). One attempt.
pub async fn status(addr: &str, group: Option<u64>) -> Result<StatusResponse, ClientError> {
    Client::new(addr).status(group).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_followed_and_final_errors_stop() {
        match next_step(&client::Error::not_leader(2, "127.0.0.1:7002")) {
            Next::Retry { addr: Some(a), pause } => assert_eq!((a.as_str(), pause), ("127.0.0.1:7002", Duration::ZERO)),
            _ => panic!("a NOT_LEADER with an address must redirect"),
        }
        assert!(matches!(next_step(&client::Error::not_leader(0, "")), Next::Retry { addr: None, .. }));
        match next_step(&client::Error::busy(30, "full")) {
            Next::Retry { addr: None, pause } => assert_eq!(pause, Duration::from_millis(30)),
            _ => panic!("BUSY must wait and retry in place"),
        }
        for e in [client::Error::timeout(10), client::Error::rejected("no"), client::Error::too_large(9, 4)] {
            assert!(matches!(next_step(&e), Next::Stop), "{e}");
        }
    }
}
