//! waft-proto: the gRPC wire protocol between waft daemons (the `Peer`
//! service) and between clients and daemons (the `Client` service), generated
//! at build time from `proto/waft/*.proto` by prost and tonic. protox parses the
//! `.proto` files in pure Rust, so building needs no system `protoc`.
//!
//! Owns the wire shapes, their size limits, and the conversions to and from
//! waft-raft's messages. Must never do I/O of its own, hold daemon policy
//! (timeouts, retries, routing), or panic on bytes from the network: every
//! conversion of received data returns a [`ConvertError`].
//!
//! # Services
//!
//! * [`peer`] (`waft.peer.v1.Peer`), daemon to daemon:
//!   * `Raft(stream PeerBatch) returns (RaftDone)`: every Raft message of every
//!     group, as a [`peer::PeerMessage`] (group, from, to, term and a `oneof`
//!     body that mirrors `waft_raft::MessageBody` variant for variant:
//!     pre-vote, vote, append with batched entries and conflict hints in the
//!     response, heartbeat, install-snapshot meta with the file manifest,
//!     timeout-now, read-index).
//!   * `PullSnapshotChunk(SnapshotChunkRequest) returns (SnapshotChunk)`: a
//!     follower pulls a snapshot file by (group, snapshot index/term, file,
//!     offset, max_len).
//! * [`client`] (`waft.client.v1.Client`): `Propose` (a command, inside an
//!   exactly-once session when it names one), `OpenSession`, `KeepAlive`,
//!   `CloseSession`, `Query` with a [`client::Consistency`], `Status`.
//!   Failures a client can act on come back in-band as a structured
//!   [`client::Error`] (see [`error`]).
//!
//! # Why the peer transport is one client-streaming RPC
//!
//! waft-raft's messages are one-way: a response is just another message,
//! addressed back, with nothing to pair it to. So a daemon opens one `Raft`
//! stream to each peer it talks to and writes [`peer::PeerBatch`]es on it, each
//! holding the messages of any number of groups; the peer does the same the
//! other way. This is TiKV's `BatchRaft` shape, and it beats a unary
//! `Send(batch)` on every point the driver cares about:
//!
//! * One long-lived HTTP/2 stream per direction carries all groups: no per-call
//!   headers, no per-call task on the server, and a batch is one gRPC frame.
//! * A stream delivers in order, so pipelined appends (several in flight inside
//!   the core's window) arrive in the order sent; concurrent unary calls could
//!   overtake each other and turn into rejections and probes.
//! * HTTP/2 flow control on the stream is the back-pressure: a receiver that
//!   stops reading stalls the sender's writes, which the sender sees as a full
//!   bounded queue and drops (Raft retries by itself).
//! * A bidirectional stream was not needed: there is no reply to carry, and a
//!   stream per direction keeps "who dialed whom" irrelevant to delivery.
//!
//! Snapshot chunks are a separate unary RPC so bulk bytes never queue ahead of
//! heartbeats on the Raft stream (HTTP/2 still shares the connection; the
//! puller bounds its chunk size and pace).
//!
//! # Converting
//!
//! ```
//! use waft_proto::peer::PeerMessage;
//! use waft_raft::{Message, MessageBody};
//!
//! let msg = Message { from: 1, to: 2, term: 5, body: MessageBody::TimeoutNow };
//! let wire = PeerMessage::from_raft(7, msg.clone());
//! assert_eq!(wire.into_raft(), Ok((7, msg)));
//! ```
//!
//! The group id is not part of `waft_raft::Message` (the daemon adds it), so
//! the `From`/`TryFrom` pair works on `(group, Message)` tuples.

pub mod convert;
pub mod error;

pub use convert::{ConvertError, GROUP_NONE, MODULE_HASH_BYTES, SNAPSHOT_FILE_NAME_BYTES_MAX, SNAPSHOT_FILES_MAX};

/// `waft.peer.v1`: the daemon-to-daemon service and its messages.
pub mod peer {
    #![allow(clippy::all)]
    tonic::include_proto!("waft.peer.v1");
}

/// `waft.client.v1`: the client service and its messages.
pub mod client {
    #![allow(clippy::all)]
    tonic::include_proto!("waft.client.v1");
}

/// The operator's service: membership, leadership and snapshots of a group.
pub mod admin {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/admin/waft.admin.v1.rs"));
}

/// An admin server with the client service's message limits applied.
pub fn admin_server<T: admin::admin_server::Admin>(service: T) -> admin::admin_server::AdminServer<T> {
    admin::admin_server::AdminServer::new(service)
        .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
}

/// An admin client over `channel` (a plain [`tonic::transport::Channel`] or
/// an [`AuthChannel`]).
pub fn admin_client<T: GrpcChannel>(channel: T) -> admin::admin_client::AdminClient<T> {
    admin::admin_client::AdminClient::new(channel)
        .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
}

/// What the generated clients can run over: a channel, or a channel with an
/// interceptor in front of it.
pub trait GrpcChannel:
    tonic::client::GrpcService<
        tonic::body::Body,
        Error: Into<tonic::codegen::StdError>,
        ResponseBody: tonic::codegen::Body<Data = bytes::Bytes, Error: Into<tonic::codegen::StdError> + Send>
                          + Send
                          + 'static,
    >
{
}

impl<T> GrpcChannel for T where
    T: tonic::client::GrpcService<
            tonic::body::Body,
            Error: Into<tonic::codegen::StdError>,
            ResponseBody: tonic::codegen::Body<Data = bytes::Bytes, Error: Into<tonic::codegen::StdError> + Send>
                              + Send
                              + 'static,
        >
{
}

/// The metadata key a bearer token travels in (`authorization: Bearer TOKEN`).
pub const AUTHORIZATION_HEADER: &str = "authorization";

/// Puts a bearer token on every call of a channel, or nothing when there is
/// none. Its `Debug` never shows the token.
#[derive(Clone, Default)]
pub struct BearerToken(Option<tonic::metadata::AsciiMetadataValue>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "BearerToken(<redacted>)" } else { "BearerToken(none)" })
    }
}

impl BearerToken {
    /// `token` as `authorization: Bearer TOKEN`; an error when it is not
    /// printable ASCII (a header cannot carry it).
    pub fn new(token: Option<&str>) -> Result<BearerToken, String> {
        match token {
            None => Ok(BearerToken(None)),
            Some(t) if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) => {
                Err("a token is printable ASCII without spaces, and not empty".into())
            }
            Some(t) => format!("Bearer {t}")
                .parse()
                .map(|v| BearerToken(Some(v)))
                .map_err(|e| format!("the token cannot travel in a header: {e}")),
        }
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(AUTHORIZATION_HEADER, value.clone());
        }
        Ok(request)
    }
}

/// A channel whose calls carry this party's bearer token, if it has one.
pub type AuthChannel = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>;

/// Largest gRPC message (one decoded frame) on the peer service. A batch may
/// hold appends for many groups; each append is bounded by the core's
/// `append_bytes_max` (1 MiB by default) and one entry by `proposal_bytes_max`,
/// so this leaves room for a full batch plus one oversized entry.
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// A sender closes a [`peer::PeerBatch`] once its encoded length reaches this,
/// so one busy group cannot delay the others' messages for long.
pub const PEER_BATCH_BYTES_TARGET: usize = 4 * 1024 * 1024;
/// Largest data a [`peer::SnapshotChunk`] carries (waft-storage's
/// `SNAPSHOT_CHUNK_BYTES_MAX`); a server caps `max_len` at this.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest gRPC message on the client service. Deliberately well above the
/// core's proposal limit (1 MiB by default), so that an oversized command
/// reaches the daemon and gets a structured TOO_LARGE error rather than a bare
/// transport error; above this, tonic refuses with OUT_OF_RANGE (the request
/// was never handled).
pub const CLIENT_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A peer server with the peer service's message limits applied.
pub fn peer_server<T: peer::peer_server::Peer>(service: T) -> peer::peer_server::PeerServer<T> {
    peer::peer_server::PeerServer::new(service)
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
}

/// A peer client over `channel` with the peer service's message limits applied.
pub fn peer_client(channel: tonic::transport::Channel) -> peer::peer_client::PeerClient<tonic::transport::Channel> {
    peer::peer_client::PeerClient::new(channel)
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
}

/// A client-service server with the client service's message limits applied.
pub fn client_server<T: client::client_server::Client>(service: T) -> client::client_server::ClientServer<T> {
    client::client_server::ClientServer::new(service)
        .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
}

/// A client-service client over `channel` (a plain
/// [`tonic::transport::Channel`] or an [`AuthChannel`]) with the message
/// limits applied.
pub fn client_client<T: GrpcChannel>(channel: T) -> client::client_client::ClientClient<T> {
    client::client_client::ClientClient::new(channel)
        .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
}

impl From<waft_raft::Role> for client::Role {
    fn from(role: waft_raft::Role) -> Self {
        match role {
            waft_raft::Role::Follower => client::Role::Follower,
            waft_raft::Role::PreCandidate => client::Role::PreCandidate,
            waft_raft::Role::Candidate => client::Role::Candidate,
            waft_raft::Role::Leader => client::Role::Leader,
        }
    }
}

impl From<(u64, String)> for client::NodeAddress {
    fn from((node_id, address): (u64, String)) -> Self {
        client::NodeAddress { node_id, address }
    }
}

impl From<&waft_raft::Configuration> for client::Configuration {
    fn from(c: &waft_raft::Configuration) -> Self {
        client::Configuration {
            voters: c.voters.clone(),
            voters_outgoing: c.voters_outgoing.clone(),
            learners: c.learners.clone(),
            addresses: c.addresses.iter().cloned().map(Into::into).collect(),
        }
    }
}
