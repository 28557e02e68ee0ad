//! waft-client: the Rust client of a waft cluster; the `waft` CLI is built on it.
//!
//! Owns the retry policy a client needs: follow a NOT_LEADER hint to the
//! leader's address, wait out BUSY and "no leader yet" with bounded back-off,
//! and move on to another node when one cannot be reached, all within a
//! bounded number of attempts. Commands go inside exactly-once sessions by
//! default: a session command is retried with the same sequence number after
//! a timeout, a NOT_LEADER answer or a lost connection, and the group applies
//! it at most once, answering every copy with the first result. Must never
//! retry a session-less command whose outcome is unknown (it could apply
//! twice), nor loop or wait without a bound.
//!
//! ```no_run
//! # async fn example() -> Result<(), waft_client::ClientError> {
//! use bytes::Bytes;
//! let client = waft_client::Client::with_nodes(vec!["127.0.0.1:7001".into(), "127.0.0.1:7002".into()]);
//! // In this client's session for group 1 (opened on first use): exactly once.
//! let answer = client.propose(1, Bytes::from_static(br#"{"incr":5}"#)).await?;
//! // A session of its own, numbered by the caller's order of calls.
//! let session = client.open_session(1).await?;
//! session.propose(Bytes::from_static(br#"{"incr":1}"#)).await?;
//! session.close().await?;
//! # Ok(()) }
//! ```

pub mod balance;
mod credentials;
mod pipe;

pub use credentials::{ClientTls, Credentials, CredentialsError, PEM_FILE_BYTES_MAX, TlsFiles, endpoint, read_pem};
pub use pipe::{PIPELINE_BATCH_BYTES_MAX, PIPELINE_BATCH_CALLS_MAX, PIPELINE_IN_FLIGHT_MAX, PIPELINE_QUEUE_MAX};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use pipe::Pipe;
use sha2::Digest;
use waft_proto::AuthChannel as Channel;
use waft_proto::admin::{
    AdminOp, AdminRequest, AdminResult, CreateGroupRequest, CreateGroupResponse, DeployRequest, DeployResult,
    ModuleUpload, SetGroupRequest, SetGroupResult, SettingChange, admin_response, deploy_response, set_group_response,
};
use waft_proto::client::{
    self, CloseSessionRequest, Consistency, ErrorCode, KeepAliveRequest, OpenSessionRequest, ProposeRequest,
    QueryRequest, SessionResponse, StatusRequest, StatusResponse, call, call_reply, propose_response, query_response,
};

/// Attempts of one request, counting redirects and waits for a leader.
pub const ATTEMPTS_MAX: usize = 20;
/// Pause before retrying when no leader is known yet (an election runs).
pub const NO_LEADER_PAUSE: Duration = Duration::from_millis(100);
/// Back-off between retries that wait (not redirects): it starts here and
/// doubles with every wait of one request, up to `BACKOFF_MAX`; a server's
/// own hint (BUSY's retry_after_ms) wins when longer, up to `PAUSE_MAX`.
pub const BACKOFF_MIN: Duration = Duration::from_millis(25);
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
pub const PAUSE_MAX: Duration = Duration::from_secs(5);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one attempt may wait for its answer: a little longer than the
/// server's own request timeout, so the server's TIMEOUT normally arrives first.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(12);
/// How long one deploy attempt may take: the leader compiles the module,
/// and every member pulls and compiles it, before the entry is proposed.
pub const DEPLOY_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(600);
/// Modules up to this size travel inside the Deploy request; larger ones
/// are uploaded (`UploadModule`) in `UPLOAD_CHUNK_BYTES` chunks first and
/// deployed by hash.
pub const DEPLOY_INLINE_BYTES_MAX: usize = 4 * 1024 * 1024;
pub const UPLOAD_CHUNK_BYTES: usize = 1024 * 1024;
/// Commands one session may have outstanding unless told otherwise: the
/// servers' default window (`waft serve --session-window-commands-max`).
pub const SESSION_WINDOW_DEFAULT: u64 = 128;
/// Groups whose default session a client keeps at most; beyond it the
/// lowest group's is forgotten (it expires on the servers).
pub const DEFAULT_SESSIONS_MAX: usize = 1024;
/// How long a group's creation may take: the daemon asked compiles the
/// module, then every voter does, and each writes and syncs its files.
pub const CREATE_GROUP_TIMEOUT: Duration = Duration::from_secs(150);
/// How long the creation of a group whose module is uploaded may take: the
/// voters pull it, then compile it.
pub const CREATE_GROUP_UPLOADED_TIMEOUT: Duration = DEPLOY_ATTEMPT_TIMEOUT;
/// Bytes of a registration nonce.
const NONCE_BYTES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {addr}: {source}; is `waft serve` running there?")]
    Connect { addr: String, source: tonic::transport::Error },
    #[error("{addr}: {status}")]
    Rpc { addr: String, status: tonic::Status },
    /// The request surely never left this client: retrying it is safe.
    #[error("{addr}: not sent: {why}")]
    NotSent { addr: String, why: String },
    #[error("{addr} did not answer within {waited_ms} ms")]
    AttemptTimeout { addr: String, waited_ms: u64 },
    /// The server refused the request; `.0.code()` says why.
    #[error("{0}")]
    Refused(client::Error),
    #[error("{addr} sent a response without an outcome; client and server versions may differ")]
    NoOutcome { addr: String },
    #[error("cannot draw a random session nonce: {0}")]
    Random(String),
    #[error("gave up after {attempts} attempts; last error: {last}")]
    GaveUp { attempts: usize, last: Box<ClientError> },
}

impl ClientError {
    /// The server's refusal behind this error, if it is one (also the last
    /// one before giving up).
    pub fn refusal(&self) -> Option<&client::Error> {
        match self {
            ClientError::Refused(e) => Some(e),
            ClientError::GaveUp { last, .. } => last.refusal(),
            _ => None,
        }
    }

    /// The refusal's code, if the server refused.
    pub fn code(&self) -> Option<ErrorCode> {
        self.refusal().map(|e| e.code())
    }
}

/// A successful answer and the log index it reflects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub result: Bytes,
    pub index: u64,
    /// The command had applied before (an earlier copy of it committed): this
    /// is its first result, and it did not apply again.
    pub duplicate: bool,
}

async fn connect(addr: &str, credentials: &Credentials) -> Result<Channel, ClientError> {
    let endpoint = credentials
        .endpoint(addr)
        .map_err(|source| ClientError::Connect { addr: addr.to_string(), source })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let channel = endpoint.connect().await.map_err(|source| ClientError::Connect { addr: addr.to_string(), source })?;
    Ok(credentials.authorize(channel))
}

/// Whether a failed call certainly never reached the server: the connection
/// could not be made (a cached channel dials again lazily, and reports a
/// refused dial as an UNAVAILABLE status). Only then is retrying elsewhere
/// safe for a command that may not be idempotent.
fn never_sent(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } | ClientError::NotSent { .. } => true,
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

/// Which retries a request allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// Only after answers that prove the request did nothing (NOT_LEADER,
    /// BUSY, a node that could not be reached): session-less commands and reads.
    IfUnsent,
    /// Also when the outcome is unknown (a timeout, a lost connection) and
    /// while a session's window is full: requests the group applies at most
    /// once (session commands, registrations with a nonce, keep-alives, closes).
    AtMostOnce,
}

/// Where a request starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// At the group's leader as last heard of (else the seed node); the node
    /// that answers is remembered as the leader. For what only a leader does.
    Leader,
    /// At the leader as last heard of, else the seed node, which serves it
    /// too (a follower forwards a read index itself); nothing is remembered.
    LeaderIfKnown,
    /// At the first node this client knows.
    Seed,
}

/// What to do after a refused attempt.
#[derive(Debug)]
enum Next {
    Retry { addr: Option<String>, pause: Duration },
    Stop,
}

fn next_step(e: &client::Error, retry: Retry) -> Next {
    let at_most_once = retry == Retry::AtMostOnce;
    match e.code() {
        ErrorCode::NotLeader if !e.leader_address.is_empty() => {
            Next::Retry { addr: Some(e.leader_address.clone()), pause: Duration::ZERO }
        }
        ErrorCode::NotLeader => Next::Retry { addr: None, pause: NO_LEADER_PAUSE },
        ErrorCode::Busy => Next::Retry { addr: None, pause: Duration::from_millis(e.retry_after_ms.max(1)) },
        // The same number again: it applies at most once.
        ErrorCode::Timeout | ErrorCode::SessionWindowFull if at_most_once => {
            Next::Retry { addr: None, pause: NO_LEADER_PAUSE }
        }
        _ => Next::Stop,
    }
}

/// The pause before the next attempt: the hint, or the back-off when
/// longer, never more than `PAUSE_MAX`.
fn pause_for(hint: Duration, backoff: Duration) -> Duration {
    hint.max(backoff).min(PAUSE_MAX)
}

/// Addresses a client keeps a connection to at most; beyond it the oldest
/// are dropped (a cluster's members, plus room for a few moves).
pub const CONNECTIONS_MAX: usize = 16;

/// A client of one cluster. Keeps one HTTP/2 connection per node it talked to
/// (requests multiplex over it), remembers each group's leader, so after the
/// first redirect requests go straight there, and keeps one exactly-once
/// session per group for [`Client::propose`]. Cheap to clone; clones share
/// connections, leader hints and sessions.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Shared>,
}

struct Shared {
    /// TLS and the bearer token every connection uses.
    credentials: Credentials,
    /// Where to start when nothing better is known: the first node, then the
    /// next one each time a node cannot be reached. Invariant: not empty.
    seeds: Vec<String>,
    next_seed: AtomicUsize,
    /// Open connections by address. Invariant: len() <= CONNECTIONS_MAX.
    connections: std::sync::Mutex<Vec<(String, Conn)>>,
    /// The leader's address last heard of, by group.
    leaders: std::sync::Mutex<BTreeMap<u64, String>>,
    /// The session `propose` uses, by group, each behind a lock held while
    /// it opens (so concurrent first calls open one session, not several).
    /// Invariant: len() <= DEFAULT_SESSIONS_MAX.
    sessions: std::sync::Mutex<BTreeMap<u64, SessionSlot>>,
}

/// One group's default session, opened on first use (under its lock).
type SessionSlot = Arc<tokio::sync::Mutex<Option<Arc<SessionState>>>>;

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
        Client::with_credentials(addrs, Credentials::default())
    }

    /// A client that knows several nodes (see [`Client::with_nodes`]) and
    /// dials them with `credentials` (TLS, a bearer token).
    pub fn with_credentials(addrs: Vec<String>, credentials: Credentials) -> Client {
        assert!(!addrs.is_empty(), "a client needs at least one node address");
        Client {
            inner: Arc::new(Shared {
                credentials,
                seeds: addrs,
                next_seed: AtomicUsize::new(0),
                connections: std::sync::Mutex::new(Vec::new()),
                leaders: std::sync::Mutex::new(BTreeMap::new()),
                sessions: std::sync::Mutex::new(BTreeMap::new()),
            }),
        }
    }

    async fn connection(&self, addr: &str) -> Result<Conn, ClientError> {
        if let Ok(mut conns) = self.inner.connections.lock()
            && let Some((_, c)) = conns.iter_mut().find(|(a, _)| a == addr)
        {
            // A broken pipeline is opened again on the same connection.
            if c.pipe.is_closed() {
                c.pipe = Pipe::start(c.channel.clone(), addr.to_string());
            }
            return Ok(c.clone());
        }
        let channel = connect(addr, &self.inner.credentials).await?;
        let c = Conn { pipe: Pipe::start(channel.clone(), addr.to_string()), channel };
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
        seeds[self.inner.next_seed.load(Ordering::Relaxed) % seeds.len()].clone()
    }

    /// Moves on to the next seed node (after `failed` could not be reached).
    fn rotate_seed(&self, failed: &str) -> String {
        let seeds = &self.inner.seeds;
        let at = self.inner.next_seed.load(Ordering::Relaxed) % seeds.len();
        if seeds[at] == failed {
            self.inner.next_seed.store((at + 1) % seeds.len(), Ordering::Relaxed);
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

    /// Runs `call` for `group`, following hints, at most `ATTEMPTS_MAX` times,
    /// each bounded by `ATTEMPT_TIMEOUT`, starting where `route` says.
    async fn with_retries<T, F, Fut>(&self, group: u64, route: Route, retry: Retry, call: F) -> Result<T, ClientError>
    where
        F: FnMut(Conn, String) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        self.with_retries_within(group, route, retry, ATTEMPT_TIMEOUT, call).await
    }

    /// `with_retries`, each attempt bounded by `attempt_timeout`.
    async fn with_retries_within<T, F, Fut>(
        &self,
        group: u64,
        route: Route,
        retry: Retry,
        attempt_timeout: Duration,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Conn, String) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let to_leader = route != Route::Seed;
        let mut target = if to_leader { self.start_for(group) } else { self.inner.seeds[0].clone() };
        let mut last = None;
        let mut backoff = BACKOFF_MIN;
        for _ in 0..ATTEMPTS_MAX {
            let outcome = match self.connection(&target).await {
                Ok(c) => match tokio::time::timeout(attempt_timeout, call(c, target.clone())).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(ClientError::AttemptTimeout {
                        addr: target.clone(),
                        waited_ms: attempt_timeout.as_millis() as u64,
                    }),
                },
                Err(e) => Err(e),
            };
            let e = match outcome {
                Ok(answer) => {
                    if route == Route::Leader {
                        self.remember_leader(group, &target);
                    }
                    return Ok(answer);
                }
                Err(e) => e,
            };
            let elsewhere = self.inner.seeds.len() > 1 || target != self.inner.seeds[0];
            let next = match &e {
                ClientError::Refused(refusal) => next_step(refusal, retry),
                // The node may have just died: go on with the next known node
                // (a connection that failed before the call carried nothing).
                ClientError::Connect { .. } | ClientError::Rpc { .. } | ClientError::NotSent { .. }
                    if never_sent(&e) && elsewhere =>
                {
                    self.forget(&target);
                    self.forget_leader(group);
                    Next::Retry { addr: Some(self.rotate_seed(&target)), pause: NO_LEADER_PAUSE }
                }
                // The call may or may not have reached the group.
                ClientError::Rpc { .. } | ClientError::AttemptTimeout { .. } => {
                    self.forget(&target);
                    self.forget_leader(group);
                    match retry {
                        Retry::AtMostOnce => {
                            Next::Retry { addr: Some(self.rotate_seed(&target)), pause: NO_LEADER_PAUSE }
                        }
                        Retry::IfUnsent => Next::Stop,
                    }
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
                        None if to_leader
                            && matches!(&e, ClientError::Refused(r) if r.code() == ErrorCode::NotLeader) =>
                        {
                            self.forget_leader(group);
                            target = self.rotate_seed(&target);
                        }
                        None => {}
                    }
                    // A redirect goes at once; a wait backs off.
                    if !pause.is_zero() {
                        tokio::time::sleep(pause_for(pause, backoff)).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
            last = Some(e);
        }
        Err(ClientError::GaveUp {
            attempts: ATTEMPTS_MAX,
            last: Box::new(last.unwrap_or(ClientError::NoOutcome { addr: target })),
        })
    }

    /// Proposes `command` to `group` inside this client's session for the
    /// group (opened on first use), following the leader. After a timeout, a
    /// NOT_LEADER answer or a lost connection it retries with the same
    /// sequence number, so the command applies at most once; `Ok` means it
    /// applied exactly once. If the session expired (idle longer than the
    /// group's timeout) and this command never reached the group before, a new
    /// session is opened and the command sent in it; otherwise the caller gets
    /// SESSION_EXPIRED (the command may or may not have applied) and the next
    /// call opens a new session.
    pub async fn propose(&self, group: u64, command: Bytes) -> Result<Answer, ClientError> {
        let mut reopened = false;
        loop {
            let session = self.default_session(group).await?;
            let (result, sent) = session.propose_counted(command.clone()).await;
            match result {
                Err(e) if e.code() == Some(ErrorCode::SessionExpired) => {
                    session.state.mark_expired();
                    // The one copy sent was refused: the command did not apply.
                    if sent == 1 && !reopened {
                        reopened = true;
                        continue;
                    }
                    return Err(e);
                }
                result => return result,
            }
        }
    }

    /// Proposes `command` in a session of its own: opens it, sends the
    /// command as number 1 (retried like [`Client::propose`]), closes it.
    /// For one-shot callers such as the CLI, which would otherwise leave a
    /// session open until it expires. Costs three log entries.
    pub async fn propose_once(&self, group: u64, command: Bytes) -> Result<Answer, ClientError> {
        let session = self.open_session(group).await?;
        let answer = session.propose(command).await;
        // The session expires anyway if the close is lost.
        let _ = session.close().await;
        answer
    }

    /// Proposes `command` outside any session. It applies every time it
    /// commits, so it is retried only when the group surely did not get it
    /// (NOT_LEADER, BUSY, a node that could not be reached); after a timeout
    /// or a lost connection the caller gets the error and the outcome is
    /// unknown. Fit for idempotent commands.
    pub async fn propose_plain(&self, group: u64, command: Bytes) -> Result<Answer, ClientError> {
        self.with_retries(group, Route::Leader, Retry::IfUnsent, |conn, at| {
            let req = ProposeRequest { group, command: command.clone(), ..Default::default() };
            async move { propose_call(&conn, at, req).await }
        })
        .await
    }

    /// Opens an exactly-once session on `group`. The registration carries a
    /// random nonce, so retrying it after a timeout or a lost connection
    /// opens one session, not two. A full table is refused with SESSION_LIMIT.
    pub async fn open_session(&self, group: u64) -> Result<Session, ClientError> {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|e| ClientError::Random(e.to_string()))?;
        let nonce = Bytes::copy_from_slice(&nonce);
        let answer = self
            .with_retries(group, Route::Leader, Retry::AtMostOnce, |conn, at| {
                let mut c = waft_proto::client_client(conn.channel);
                let req = OpenSessionRequest { group, nonce: nonce.clone() };
                async move { session_call(at.clone(), c.open_session(req).await).await }
            })
            .await?;
        if answer.session_id == 0 {
            return Err(ClientError::NoOutcome { addr: self.start_for(group) });
        }
        Ok(Session { client: self.clone(), state: Arc::new(SessionState::new(group, answer.session_id)) })
    }

    /// The session `propose` uses for `group`, opened if there is none or
    /// the last one expired.
    async fn default_session(&self, group: u64) -> Result<Session, ClientError> {
        let slot = {
            let mut sessions = self.inner.sessions.lock().unwrap_or_else(|e| e.into_inner());
            if !sessions.contains_key(&group) && sessions.len() >= DEFAULT_SESSIONS_MAX {
                sessions.pop_first();
            }
            sessions.entry(group).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if let Some(state) = slot.as_ref()
            && !state.is_expired()
        {
            return Ok(Session { client: self.clone(), state: state.clone() });
        }
        let session = self.open_session(group).await?;
        *slot = Some(session.state.clone());
        Ok(session)
    }

    /// Closes the sessions `propose` opened (best effort: a session whose
    /// close is lost expires on its own). Returns the first error.
    pub async fn close_sessions(&self) -> Result<(), ClientError> {
        let slots: Vec<_> = {
            let mut sessions = self.inner.sessions.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *sessions).into_values().collect()
        };
        let mut first_err = None;
        for slot in slots {
            if let Some(state) = slot.lock().await.take() {
                let session = Session { client: self.clone(), state };
                if let Err(e) = session.close().await {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Queries `group` with `consistency`. Reads are served where they are
    /// asked (a follower asks the leader for a read index itself), so only
    /// "no leader yet" and BUSY are retried here. A linearizable or lease read
    /// goes to the group's leader when this client knows it (from a write, a
    /// redirect or a status answer): the leader confirms its read index
    /// without the follower's extra hops and serves it as soon as it has
    /// applied that far. Otherwise, and at the follower and stale levels, it
    /// goes to the first node this client knows. Queries are not part of any
    /// session: they change nothing.
    pub async fn query(&self, group: u64, request: Bytes, consistency: Consistency) -> Result<Answer, ClientError> {
        let route = match consistency {
            Consistency::Linearizable | Consistency::Lease => Route::LeaderIfKnown,
            Consistency::Follower | Consistency::Stale => Route::Seed,
        };
        self.with_retries(group, route, Retry::IfUnsent, |conn, at| {
            let req = QueryRequest { group, request: request.clone(), consistency: consistency as i32 };
            async move {
                let resp = match conn.pipe.call(&at, call::Request::Query(req)).await? {
                    call_reply::Response::Query(resp) => resp,
                    other => return Err(unexpected_reply(at, other)),
                };
                match resp.outcome {
                    Some(query_response::Outcome::Result(result)) => {
                        Ok(Answer { result, index: resp.applied_index, duplicate: false })
                    }
                    Some(query_response::Outcome::Error(e)) => Err(ClientError::Refused(e)),
                    None => Err(ClientError::NoOutcome { addr: at }),
                }
            }
        })
        .await
    }

    /// What the seed node knows of `group` (or of all its groups). One
    /// attempt. The leaders it names are remembered for later requests.
    pub async fn status(&self, group: Option<u64>) -> Result<StatusResponse, ClientError> {
        let addr = self.inner.seeds[0].clone();
        let mut c = waft_proto::client_client(self.connection(&addr).await?.channel);
        let resp = match c.status(StatusRequest { group }).await {
            Ok(resp) => resp.into_inner(),
            Err(status) => {
                self.forget(&addr);
                return Err(ClientError::Rpc { addr, status });
            }
        };
        for g in &resp.groups {
            if !g.leader_address.is_empty() {
                self.remember_leader(g.group, &g.leader_address);
            }
        }
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
    /// the first node this client knows. Retried only when the node surely
    /// did not get it (an operation is not numbered like a session command).
    pub async fn admin(
        &self,
        group: u64,
        op: AdminOp,
        ids: Vec<u64>,
        learners: Vec<u64>,
    ) -> Result<AdminResult, ClientError> {
        self.admin_call(group, op, ids, learners, Vec::new(), false).await
    }

    /// `admin` naming the addresses of nodes the change adds (or of
    /// members that moved): the group records them in its configuration,
    /// and a node that does not serve the group yet gets an empty replica
    /// of it first.
    pub async fn admin_with_addresses(
        &self,
        group: u64,
        op: AdminOp,
        ids: Vec<u64>,
        learners: Vec<u64>,
        addresses: Vec<(u64, String)>,
    ) -> Result<AdminResult, ClientError> {
        self.admin_call(group, op, ids, learners, addresses, false).await
    }

    /// UNSAFE: forces `voters` as `group`'s voters on the first node this
    /// client knows, without a quorum (waft.admin.v1 ADMIN_OP_RESET_PEERS
    /// with `allow_data_loss`). Entries a lost majority committed that the
    /// survivors never received are lost, acknowledged writes among them.
    /// For a group whose quorum is gone for good; the node refuses while it
    /// has heard from a leader within an election timeout.
    pub async fn reset_peers_unsafe(&self, group: u64, voters: Vec<u64>) -> Result<AdminResult, ClientError> {
        self.admin_call(group, AdminOp::ResetPeers, voters, Vec::new(), Vec::new(), true).await
    }

    async fn admin_call(
        &self,
        group: u64,
        op: AdminOp,
        ids: Vec<u64>,
        learners: Vec<u64>,
        addresses: Vec<(u64, String)>,
        allow_data_loss: bool,
    ) -> Result<AdminResult, ClientError> {
        let addresses: Vec<waft_proto::client::NodeAddress> = addresses.into_iter().map(Into::into).collect();
        let route = if matches!(op, AdminOp::Snapshot | AdminOp::ResetPeers) { Route::Seed } else { Route::Leader };
        // A membership change whose target holds already answers success, and
        // a transfer to the leader it made too: safe to retry when the outcome
        // is unknown. A reset is not.
        let retry = if op == AdminOp::ResetPeers { Retry::IfUnsent } else { Retry::AtMostOnce };
        self.with_retries(group, route, retry, |conn, at| {
            let mut c = waft_proto::admin_client(conn.channel);
            let req = AdminRequest {
                group,
                op: op as i32,
                ids: ids.clone(),
                learners: learners.clone(),
                allow_data_loss,
                addresses: addresses.clone(),
            };
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

impl Client {
    /// Creates `group` running `module` (a .wasm component's bytes) on
    /// `voters`: the first node this client knows checks the module and
    /// creates the group on every voter's daemon. `Ok` means every voter
    /// serves it (`nodes` says which were created now and which had it
    /// already: a repeat of the same create is OK). A refusal names each
    /// node's outcome: GROUP_EXISTS when the group runs somewhere with
    /// another module or voters, BAD_MODULE for a module that is not a
    /// state machine for this host, INVALID_REQUEST for an unknown node.
    /// A module over `DEPLOY_INLINE_BYTES_MAX` is uploaded to that node
    /// first and created by hash. One attempt (bounded by
    /// `CREATE_GROUP_TIMEOUT`, or `CREATE_GROUP_UPLOADED_TIMEOUT` after an
    /// upload); the create is idempotent, so sending it again is always safe.
    pub async fn create_group(
        &self,
        group: u64,
        voters: Vec<u64>,
        members: Vec<u64>,
        module: Bytes,
    ) -> Result<CreateGroupResponse, ClientError> {
        self.create_group_with_addresses(group, voters, members, module, Vec::new()).await
    }

    /// `create_group` naming addresses of voters or members the node asked
    /// may not know; the founding configuration records them.
    pub async fn create_group_with_addresses(
        &self,
        group: u64,
        voters: Vec<u64>,
        members: Vec<u64>,
        module: Bytes,
        addresses: Vec<(u64, String)>,
    ) -> Result<CreateGroupResponse, ClientError> {
        let addr = self.inner.seeds[0].clone();
        let mut c = waft_proto::admin_client(self.connection(&addr).await?.channel);
        let addresses = addresses.into_iter().map(Into::into).collect();
        let mut req = CreateGroupRequest { group, voters, members, addresses, ..Default::default() };
        let timeout = if module.len() <= DEPLOY_INLINE_BYTES_MAX {
            req.module = module;
            CREATE_GROUP_TIMEOUT
        } else {
            // Too large for one message: into the node's module store
            // first, then created by hash (the voters pull it from there).
            let timeout = CREATE_GROUP_UPLOADED_TIMEOUT;
            req.module_hash = match tokio::time::timeout(timeout, upload(&mut c, &addr, group, true, &module)).await {
                Ok(Ok(hash)) => hash,
                Ok(Err(e)) => {
                    if matches!(e, ClientError::Rpc { .. }) {
                        self.forget(&addr);
                    }
                    return Err(e);
                }
                Err(_) => return Err(ClientError::AttemptTimeout { addr, waited_ms: timeout.as_millis() as u64 }),
            };
            CREATE_GROUP_UPLOADED_TIMEOUT
        };
        let resp = match tokio::time::timeout(timeout, c.create_group(req)).await {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(status)) => {
                self.forget(&addr);
                return Err(ClientError::Rpc { addr, status });
            }
            Err(_) => {
                return Err(ClientError::AttemptTimeout { addr, waited_ms: timeout.as_millis() as u64 });
            }
        };
        match resp.error {
            Some(e) => Err(ClientError::Refused(e)),
            None => Ok(resp),
        }
    }

    /// Replaces `group`'s state machine with `module` through the group's log
    /// (see waft.admin.v1 Deploy) and returns the module in force and the
    /// index it took effect at. Goes to the leader. Deploying the module that
    /// runs already changes nothing, so a deploy whose outcome is unknown
    /// (timeout, lost connection) is retried like a session command.
    pub async fn deploy(&self, group: u64, module: Bytes) -> Result<DeployResult, ClientError> {
        self.with_retries_within(group, Route::Leader, Retry::AtMostOnce, DEPLOY_ATTEMPT_TIMEOUT, |conn, at| {
            let mut c = waft_proto::admin_client(conn.channel);
            let module = module.clone();
            async move {
                let req = if module.len() <= DEPLOY_INLINE_BYTES_MAX {
                    DeployRequest { group, module, module_hash: Bytes::new() }
                } else {
                    // Too large for one message: into the node's module
                    // store first, in chunks, then deployed by hash.
                    let hash = upload(&mut c, &at, group, false, &module).await?;
                    DeployRequest { group, module: Bytes::new(), module_hash: hash }
                };
                let resp = c.deploy(req).await.map_err(|status| ClientError::Rpc { addr: at.clone(), status })?;
                match resp.into_inner().outcome {
                    Some(deploy_response::Outcome::Result(result)) => Ok(result),
                    Some(deploy_response::Outcome::Error(e)) => Err(ClientError::Refused(e)),
                    None => Err(ClientError::NoOutcome { addr: at }),
                }
            }
        })
        .await
    }

    /// Changes `group`'s settings by name (see waft.admin.v1 SetGroup) and
    /// returns the settings in force and the index they took effect at.
    /// Goes to the leader. Setting values that hold already changes nothing,
    /// so a change whose outcome is unknown is retried.
    pub async fn set_group(&self, group: u64, changes: Vec<(String, u64)>) -> Result<SetGroupResult, ClientError> {
        let changes: Vec<SettingChange> =
            changes.into_iter().map(|(name, value)| SettingChange { name, value }).collect();
        self.with_retries(group, Route::Leader, Retry::AtMostOnce, |conn, at| {
            let mut c = waft_proto::admin_client(conn.channel);
            let req = SetGroupRequest { group, changes: changes.clone() };
            async move {
                let resp = c.set_group(req).await.map_err(|status| ClientError::Rpc { addr: at.clone(), status })?;
                match resp.into_inner().outcome {
                    Some(set_group_response::Outcome::Result(result)) => Ok(result),
                    Some(set_group_response::Outcome::Error(e)) => Err(ClientError::Refused(e)),
                    None => Err(ClientError::NoOutcome { addr: at }),
                }
            }
        })
        .await
    }
}

/// Puts `module` into the module store of the node `c` talks to (at
/// `addr`), in `UPLOAD_CHUNK_BYTES` chunks, for a deploy to `group` or a
/// create of it (`for_create`); returns its hash.
async fn upload(
    c: &mut waft_proto::admin::admin_client::AdminClient<Channel>,
    addr: &str,
    group: u64,
    for_create: bool,
    module: &Bytes,
) -> Result<Bytes, ClientError> {
    let hash = Bytes::copy_from_slice(&sha2::Sha256::digest(module));
    let chunks: Vec<ModuleUpload> = module
        .chunks(UPLOAD_CHUNK_BYTES)
        .enumerate()
        .map(|(i, chunk)| ModuleUpload {
            group: if i == 0 { group } else { 0 },
            module_hash: if i == 0 { hash.clone() } else { Bytes::new() },
            size: if i == 0 { module.len() as u64 } else { 0 },
            data: module.slice_ref(chunk),
            for_create: i == 0 && for_create,
        })
        .collect();
    let uploaded = c
        .upload_module(tokio_stream::iter(chunks))
        .await
        .map_err(|status| ClientError::Rpc { addr: addr.to_string(), status })?
        .into_inner();
    match uploaded.error {
        Some(e) => Err(ClientError::Refused(e)),
        None => Ok(hash),
    }
}

/// One connection to a node: unary calls go over `channel`, proposes and
/// queries over its pipeline.
#[derive(Clone)]
struct Conn {
    channel: Channel,
    pipe: Pipe,
}

async fn propose_call(conn: &Conn, at: String, req: ProposeRequest) -> Result<Answer, ClientError> {
    let resp = match conn.pipe.call(&at, call::Request::Propose(req)).await? {
        call_reply::Response::Propose(resp) => resp,
        other => return Err(unexpected_reply(at, other)),
    };
    match resp.outcome {
        Some(propose_response::Outcome::Result(result)) => {
            Ok(Answer { result, index: resp.index, duplicate: resp.duplicate })
        }
        Some(propose_response::Outcome::Error(e)) => Err(ClientError::Refused(e)),
        None => Err(ClientError::NoOutcome { addr: at }),
    }
}

/// A pipeline reply of the wrong kind: the server's refusal, if it is one.
fn unexpected_reply(at: String, reply: call_reply::Response) -> ClientError {
    match reply {
        call_reply::Response::Error(e) => ClientError::Refused(e),
        _ => ClientError::NoOutcome { addr: at },
    }
}

async fn session_call(
    at: String,
    resp: Result<tonic::Response<SessionResponse>, tonic::Status>,
) -> Result<SessionResponse, ClientError> {
    let resp = resp.map_err(|status| ClientError::Rpc { addr: at, status })?.into_inner();
    match resp.error {
        Some(e) => Err(ClientError::Refused(e)),
        None => Ok(resp),
    }
}

/// An exactly-once session on one group. Commands are numbered in the order
/// `propose` is called; concurrent calls are fine (each waits, if it must,
/// until its number fits the session's window). Cheap to clone; clones share
/// the numbering.
#[derive(Clone)]
pub struct Session {
    client: Client,
    state: Arc<SessionState>,
}

/// A session's numbering, shared by its clones.
struct SessionState {
    group: u64,
    id: u64,
    /// Commands outstanding at most, by number span (the server's window).
    window: u64,
    numbers: std::sync::Mutex<Numbers>,
    /// Woken whenever a command leaves `outstanding`.
    moved: tokio::sync::Notify,
}

struct Numbers {
    /// The number the next command gets. Invariant: >= 1.
    next_seq: u64,
    /// Numbers handed out whose caller has not settled yet (answered, or
    /// given up on). Invariant: every element < next_seq, and
    /// next_seq - min < window.
    outstanding: BTreeSet<u64>,
    /// The group said the session is unknown or expired.
    expired: bool,
}

impl SessionState {
    fn new(group: u64, id: u64) -> SessionState {
        SessionState {
            group,
            id,
            window: SESSION_WINDOW_DEFAULT,
            numbers: std::sync::Mutex::new(Numbers { next_seq: 1, outstanding: BTreeSet::new(), expired: false }),
            moved: tokio::sync::Notify::new(),
        }
    }

    fn numbers(&self) -> std::sync::MutexGuard<'_, Numbers> {
        // Only this module's short critical sections hold it; none can
        // leave the numbers half-changed.
        self.numbers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lowest number without a reply yet: every reply below it arrived
    /// (or was given up on), so the group may drop them.
    fn lowest_unacked(&self) -> u64 {
        let n = self.numbers();
        n.outstanding.first().copied().unwrap_or(n.next_seq)
    }

    /// The next number, once it fits the window.
    async fn take_number(&self) -> u64 {
        loop {
            // Registered before the check, so a settle in between still wakes us.
            let moved = self.moved.notified();
            {
                let mut n = self.numbers();
                let lowest = n.outstanding.first().copied().unwrap_or(n.next_seq);
                if n.next_seq < lowest.saturating_add(self.window) {
                    let seq = n.next_seq;
                    n.next_seq += 1;
                    n.outstanding.insert(seq);
                    return seq;
                }
            }
            moved.await;
        }
    }

    /// The caller is done with `seq`: answered, or given up on (a late copy
    /// of it is then refused as stale rather than applied).
    fn settle(&self, seq: u64) {
        self.numbers().outstanding.remove(&seq);
        self.moved.notify_waiters();
    }

    fn mark_expired(&self) {
        self.numbers().expired = true;
    }

    fn is_expired(&self) -> bool {
        self.numbers().expired
    }
}

impl Session {
    /// The session's id: the log index its registration committed at.
    pub fn id(&self) -> u64 {
        self.state.id
    }

    pub fn group(&self) -> u64 {
        self.state.group
    }

    /// The number the next `propose` will use. A caller that sends a copy of
    /// its own (over raw gRPC, say) can use it to know which number to send.
    pub fn next_sequence(&self) -> u64 {
        self.state.numbers().next_seq
    }

    /// Proposes `command` as the session's next numbered command, following
    /// the leader; retries with the same number after a timeout, a NOT_LEADER
    /// answer, a lost connection or a full window, with bounded back-off.
    /// `Ok` means the command applied exactly once (`duplicate` when an
    /// earlier copy did). An error other than a refusal of the command itself
    /// (REJECTED, GUEST_FAULT, ...) leaves the outcome unknown: the number is
    /// given up, and a late copy of it is refused rather than applied.
    pub async fn propose(&self, command: Bytes) -> Result<Answer, ClientError> {
        let (result, _) = self.propose_counted(command).await;
        if result.as_ref().err().and_then(ClientError::code) == Some(ErrorCode::SessionExpired) {
            self.state.mark_expired();
        }
        result
    }

    /// `propose`, and how many attempts reached a server.
    async fn propose_counted(&self, command: Bytes) -> (Result<Answer, ClientError>, usize) {
        let seq = self.state.take_number().await;
        // Settles the number however this future ends, dropped mid-call
        // included: a number left outstanding would pin the window for good.
        struct SettleOnDrop<'a>(&'a SessionState, u64);
        impl Drop for SettleOnDrop<'_> {
            fn drop(&mut self) {
                self.0.settle(self.1);
            }
        }
        let _settle = SettleOnDrop(&self.state, seq);
        let sent = AtomicUsize::new(0);
        let (group, session_id) = (self.state.group, self.state.id);
        let state = &self.state;
        let result = self
            .client
            .with_retries(group, Route::Leader, Retry::AtMostOnce, |conn, at| {
                sent.fetch_add(1, Ordering::Relaxed);
                let req = ProposeRequest {
                    group,
                    command: command.clone(),
                    session_id,
                    sequence: seq,
                    lowest_unacked_sequence: state.lowest_unacked(),
                };
                async move { propose_call(&conn, at, req).await }
            })
            .await;
        (result, sent.load(Ordering::Relaxed))
    }

    /// Keeps the session from expiring while idle, and acknowledges replies.
    pub async fn keep_alive(&self) -> Result<(), ClientError> {
        let (group, session_id) = (self.state.group, self.state.id);
        let state = &self.state;
        let result = self
            .client
            .with_retries(group, Route::Leader, Retry::AtMostOnce, |conn, at| {
                let mut c = waft_proto::client_client(conn.channel);
                let req = KeepAliveRequest { group, session_id, lowest_unacked_sequence: state.lowest_unacked() };
                async move { session_call(at, c.keep_alive(req).await).await }
            })
            .await;
        if result.as_ref().err().and_then(ClientError::code) == Some(ErrorCode::SessionExpired) {
            self.state.mark_expired();
        }
        result.map(|_| ())
    }

    /// Closes the session: the group forgets it and its saved results. A
    /// session already gone (closed by a retried close, or expired) counts
    /// as closed.
    pub async fn close(&self) -> Result<(), ClientError> {
        let (group, session_id) = (self.state.group, self.state.id);
        self.state.mark_expired();
        let result = self
            .client
            .with_retries(group, Route::Leader, Retry::AtMostOnce, |conn, at| {
                let mut c = waft_proto::client_client(conn.channel);
                let req = CloseSessionRequest { group, session_id };
                async move { session_call(at, c.close_session(req).await).await }
            })
            .await;
        match result {
            Err(e) if e.code() == Some(ErrorCode::SessionExpired) => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

/// Proposes `command` to `group`, starting at `addr` and following the
/// leader, in a session of its own (see [`Client::propose_once`]).
pub async fn propose(addr: &str, group: u64, command: Bytes) -> Result<Answer, ClientError> {
    Client::new(addr).propose_once(group, command).await
}

/// Queries `group` at `addr` with `consistency` (see [`Client::query`]).
pub async fn query(addr: &str, group: u64, request: Bytes, consistency: Consistency) -> Result<Answer, ClientError> {
    Client::new(addr).query(group, request, consistency).await
}

/// Tells the node at `addr` that node `node` lost its data directory: it
/// forgets the one it met behind `node` and takes the next (see waft.admin.v1
/// ReplaceNode). Returns the incarnation forgotten (hex, empty if none). One
/// attempt; sending it again is harmless.
pub async fn replace_node(addr: &str, node: u64, credentials: &Credentials) -> Result<String, ClientError> {
    let channel = connect(addr, credentials).await?;
    let mut c = waft_proto::admin_client(channel);
    let req = waft_proto::admin::ReplaceNodeRequest { node };
    match tokio::time::timeout(CREATE_GROUP_TIMEOUT, c.replace_node(req)).await {
        Ok(Ok(resp)) => Ok(resp.into_inner().forgotten_incarnation),
        Ok(Err(status)) => Err(ClientError::Rpc { addr: addr.to_string(), status }),
        Err(_) => Err(ClientError::AttemptTimeout {
            addr: addr.to_string(),
            waited_ms: CREATE_GROUP_TIMEOUT.as_millis() as u64,
        }),
    }
}

/// The nodes the daemon at `addr` knows and their addresses; `joining`
/// names the asker when it is a daemon joining through `addr`. One attempt.
pub async fn nodes(
    addr: &str,
    joining: Option<(u64, String)>,
    credentials: &Credentials,
) -> Result<waft_proto::admin::NodesResponse, ClientError> {
    let channel = connect(addr, credentials).await?;
    let mut c = waft_proto::admin_client(channel);
    let (joining_node, joining_address) = joining.unwrap_or_default();
    let req = waft_proto::admin::NodesRequest { joining_node, joining_address };
    match tokio::time::timeout(CREATE_GROUP_TIMEOUT, c.nodes(req)).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(ClientError::Rpc { addr: addr.to_string(), status }),
        Err(_) => Err(ClientError::AttemptTimeout {
            addr: addr.to_string(),
            waited_ms: CREATE_GROUP_TIMEOUT.as_millis() as u64,
        }),
    }
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
        for retry in [Retry::IfUnsent, Retry::AtMostOnce] {
            match next_step(&client::Error::not_leader(2, "127.0.0.1:7002"), retry) {
                Next::Retry { addr: Some(a), pause } => {
                    assert_eq!((a.as_str(), pause), ("127.0.0.1:7002", Duration::ZERO))
                }
                other => panic!("a NOT_LEADER with an address must redirect: {other:?}"),
            }
            assert!(matches!(next_step(&client::Error::not_leader(0, ""), retry), Next::Retry { addr: None, .. }));
            match next_step(&client::Error::busy(30, "full"), retry) {
                Next::Retry { addr: None, pause } => assert_eq!(pause, Duration::from_millis(30)),
                other => panic!("BUSY must wait and retry in place: {other:?}"),
            }
            for e in [client::Error::rejected("no"), client::Error::too_large(9, 4)] {
                assert!(matches!(next_step(&e, retry), Next::Stop), "{e}");
            }
        }
    }

    #[test]
    fn only_at_most_once_requests_retry_when_the_outcome_is_unknown() {
        let window = client::Error::from_session(
            &waft_session::SessionError::WindowFull {
                session_id: 1,
                seq: 9,
                lowest_unacked_seq: 1,
                window_commands_max: 8,
            },
            0,
        );
        for e in [client::Error::timeout(10), window] {
            assert!(matches!(next_step(&e, Retry::IfUnsent), Next::Stop), "{e}");
            assert!(matches!(next_step(&e, Retry::AtMostOnce), Next::Retry { addr: None, .. }), "{e}");
        }
        // Expiry and limits reach the caller: they need a decision, not a wait.
        for e in [
            client::Error::from_session(&waft_session::SessionError::UnknownOrExpired { session_id: 3 }, 0),
            client::Error::from_session(&waft_session::SessionError::TableFull { sessions_open_max: 2 }, 1000),
        ] {
            assert!(matches!(next_step(&e, Retry::AtMostOnce), Next::Stop), "{e}");
        }
    }

    #[test]
    fn back_off_grows_to_its_bound_and_never_beyond_the_pause_limit() {
        let mut backoff = BACKOFF_MIN;
        let mut waits = Vec::new();
        for _ in 0..10 {
            waits.push(pause_for(NO_LEADER_PAUSE, backoff));
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        assert_eq!(waits[0], NO_LEADER_PAUSE);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*waits.last().unwrap(), BACKOFF_MAX);
        assert_eq!(pause_for(Duration::from_secs(60), BACKOFF_MIN), PAUSE_MAX);
    }

    #[tokio::test]
    async fn a_session_numbers_commands_and_keeps_them_inside_its_window() {
        let s = Arc::new(SessionState { window: 3, ..SessionState::new(1, 5) });
        let (a, b, c) = (s.take_number().await, s.take_number().await, s.take_number().await);
        assert_eq!((a, b, c, s.lowest_unacked()), (1, 2, 3, 1));
        // 4 would be 3 past the lowest outstanding (1): it waits for 1 to settle,
        // even though 2 and 3 settle first.
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.take_number().await }
        });
        s.settle(2);
        s.settle(3);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        s.settle(1);
        assert_eq!(waiter.await.unwrap(), 4);
        assert_eq!(s.lowest_unacked(), 4);
    }
}
