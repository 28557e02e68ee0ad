//! Starts real tonic servers on 127.0.0.1:0 with trivial services and calls
//! them through the generated clients, with the crate's message limits. Every
//! server is shut down and joined before the test returns.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::oneshot;
use tonic::codegen::tokio_stream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status, Streaming};
use waft_proto::client::{self, ErrorCode, propose_response, query_response};
use waft_proto::peer::{self, PeerMessage};
use waft_raft::{Message, MessageBody};

const GROUP: u64 = 7;

/// Serves group 7 only: Propose echoes the command reversed, Query echoes.
struct EchoClient;

#[tonic::async_trait]
impl client::client_server::Client for EchoClient {
    async fn propose(
        &self,
        request: Request<client::ProposeRequest>,
    ) -> Result<Response<client::ProposeResponse>, Status> {
        let req = request.into_inner();
        let outcome = if req.group != GROUP {
            propose_response::Outcome::Error(waft_proto::client::Error::unknown_group(req.group))
        } else if req.command.len() > 1024 {
            propose_response::Outcome::Error(waft_proto::client::Error::too_large(req.command.len() as u64, 1024))
        } else {
            let mut r = req.command.to_vec();
            r.reverse();
            propose_response::Outcome::Result(Bytes::from(r))
        };
        Ok(Response::new(client::ProposeResponse { outcome: Some(outcome), index: 1, duplicate: false }))
    }

    /// Every session opens at index 2; keep-alive and close always succeed.
    async fn open_session(
        &self,
        _request: Request<client::OpenSessionRequest>,
    ) -> Result<Response<client::SessionResponse>, Status> {
        Ok(Response::new(client::SessionResponse { error: None, session_id: 2, index: 2 }))
    }

    async fn keep_alive(
        &self,
        _request: Request<client::KeepAliveRequest>,
    ) -> Result<Response<client::SessionResponse>, Status> {
        Ok(Response::new(client::SessionResponse { error: None, session_id: 0, index: 3 }))
    }

    async fn close_session(
        &self,
        _request: Request<client::CloseSessionRequest>,
    ) -> Result<Response<client::SessionResponse>, Status> {
        Ok(Response::new(client::SessionResponse { error: None, session_id: 0, index: 4 }))
    }

    async fn query(&self, request: Request<client::QueryRequest>) -> Result<Response<client::QueryResponse>, Status> {
        let req = request.into_inner();
        let Ok(consistency) = client::Consistency::try_from(req.consistency) else {
            return Ok(Response::new(client::QueryResponse {
                outcome: Some(query_response::Outcome::Error(waft_proto::client::Error::invalid_request(
                    "unknown consistency level",
                ))),
                ..Default::default()
            }));
        };
        Ok(Response::new(client::QueryResponse {
            outcome: Some(query_response::Outcome::Result(req.request)),
            applied_index: 1,
            consistency: consistency as i32,
        }))
    }

    type PipelineStream = tokio_stream::Empty<Result<client::ReplyBatch, Status>>;

    async fn pipeline(
        &self,
        _request: Request<Streaming<client::CallBatch>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        Err(Status::unimplemented("the echo service has no pipeline"))
    }

    async fn status(
        &self,
        request: Request<client::StatusRequest>,
    ) -> Result<Response<client::StatusResponse>, Status> {
        let req = request.into_inner();
        let group = client::GroupStatus {
            group: GROUP,
            role: client::Role::from(waft_raft::Role::Leader) as i32,
            term: 3,
            leader_id: 1,
            leader_address: "127.0.0.1:1".into(),
            commit_index: 5,
            applied_index: 5,
            configuration: Some((&waft_raft::Configuration::new([1, 2, 3])).into()),
            module_hash: Bytes::from(vec![0u8; 32]),
            snapshot_index: 4,
            snapshot_install: None,
            sessions_open: 0,
            session_reply_bytes: 0,
            module_index: 0,
            settings: None,
            settings_index: 0,
            ..Default::default()
        };
        let mut resp = client::StatusResponse { node_id: 1, ..Default::default() };
        match req.group {
            None | Some(GROUP) => resp.groups.push(group),
            Some(other) => resp.error = Some(waft_proto::client::Error::unknown_group(other)),
        }
        Ok(Response::new(resp))
    }
}

/// Collects every converted message it receives; serves one fixed chunk.
#[derive(Clone, Default)]
struct CollectPeer {
    received: Arc<Mutex<Vec<(u64, Message)>>>,
}

#[tonic::async_trait]
impl peer::peer_server::Peer for CollectPeer {
    async fn raft(&self, request: Request<Streaming<peer::PeerBatch>>) -> Result<Response<peer::RaftDone>, Status> {
        let mut stream = request.into_inner();
        let mut done = peer::RaftDone::default();
        while let Some(batch) = stream.message().await? {
            for m in batch.messages {
                match m.into_raft() {
                    Ok(m) => {
                        self.received.lock().map_err(|_| Status::internal("poisoned"))?.push(m);
                        done.delivered += 1;
                    }
                    Err(_) => done.dropped += 1,
                }
            }
        }
        Ok(Response::new(done))
    }

    async fn prepare_module(
        &self,
        _request: Request<peer::PrepareModuleRequest>,
    ) -> Result<Response<peer::PrepareModuleResponse>, Status> {
        Err(Status::unimplemented("this test peer keeps no modules"))
    }

    async fn pull_module_chunk(
        &self,
        _request: Request<peer::ModuleChunkRequest>,
    ) -> Result<Response<peer::ModuleChunk>, Status> {
        Err(Status::unimplemented("this test peer keeps no modules"))
    }

    async fn pull_snapshot_chunk(
        &self,
        request: Request<peer::SnapshotChunkRequest>,
    ) -> Result<Response<peer::SnapshotChunk>, Status> {
        let req = request.into_inner();
        let file: &[u8] = b"0123456789";
        if req.file != "data" {
            return Err(Status::not_found(format!("no file {:?}", req.file)));
        }
        let start = usize::try_from(req.offset)
            .ok()
            .filter(|&o| o <= file.len())
            .ok_or_else(|| Status::invalid_argument("offset past the end"))?;
        let len = (req.max_len as usize).min(waft_proto::SNAPSHOT_CHUNK_BYTES_MAX);
        let end = start.saturating_add(len).min(file.len());
        Ok(Response::new(peer::SnapshotChunk {
            data: Bytes::copy_from_slice(&file[start..end]),
            file_size: file.len() as u64,
            eof: end == file.len(),
        }))
    }
}

struct Running {
    addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

async fn start(peer: CollectPeer) -> Running {
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().expect("literal address")).expect("bind loopback");
    let addr = incoming.local_addr().expect("bound address");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        Server::builder()
            .add_service(waft_proto::client_server(EchoClient))
            .add_service(waft_proto::peer_server(peer))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    Running { addr, stop, task }
}

impl Running {
    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("valid uri")
            .connect()
            .await
            .expect("connect to loopback server")
    }

    async fn shutdown(self) {
        let _ = self.stop.send(());
        self.task.await.expect("server task").expect("server ends cleanly");
    }
}

#[tokio::test]
async fn client_service_over_loopback() {
    let server = start(Default::default()).await;
    let mut c = waft_proto::client_client(server.channel().await);

    let resp = c
        .propose(client::ProposeRequest { group: GROUP, command: Bytes::from_static(b"abc"), ..Default::default() })
        .await
        .expect("propose")
        .into_inner();
    assert_eq!(resp.outcome, Some(propose_response::Outcome::Result(Bytes::from_static(b"cba"))));

    let resp = c
        .propose(client::ProposeRequest { group: 99, command: Bytes::from_static(b"abc"), ..Default::default() })
        .await
        .expect("propose")
        .into_inner();
    let Some(propose_response::Outcome::Error(err)) = resp.outcome else {
        panic!("expected an error, got {resp:?}");
    };
    assert_eq!(err.code(), ErrorCode::UnknownGroup);
    assert!(err.to_string().contains("group 99"), "{err}");

    // Oversized for the service but inside the frame limit: a structured error.
    let resp = c
        .propose(client::ProposeRequest { group: GROUP, command: Bytes::from(vec![0u8; 4096]), ..Default::default() })
        .await
        .expect("propose")
        .into_inner();
    let Some(propose_response::Outcome::Error(err)) = resp.outcome else {
        panic!("expected an error, got {resp:?}");
    };
    assert_eq!((err.code(), err.size_bytes, err.max_bytes), (ErrorCode::TooLarge, 4096, 1024));

    // Over the server's frame limit: tonic refuses before the service sees it.
    // (A raw client, since `client_client` would refuse to encode it at all.)
    let mut raw = client::client_client::ClientClient::new(server.channel().await);
    let status = raw
        .propose(client::ProposeRequest {
            group: GROUP,
            command: Bytes::from(vec![0u8; waft_proto::CLIENT_MESSAGE_BYTES_MAX + 1]),
            ..Default::default()
        })
        .await
        .expect_err("over the message limit");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    drop(raw);

    let resp = c
        .query(client::QueryRequest {
            group: GROUP,
            request: Bytes::from_static(b"get"),
            consistency: client::Consistency::Lease as i32,
        })
        .await
        .expect("query")
        .into_inner();
    assert_eq!(resp.outcome, Some(query_response::Outcome::Result(Bytes::from_static(b"get"))));
    assert_eq!(resp.consistency(), client::Consistency::Lease);

    let all = c.status(client::StatusRequest { group: None }).await.expect("status").into_inner();
    assert_eq!(all.groups.len(), 1);
    assert_eq!(all.groups[0].role(), client::Role::Leader);
    assert_eq!(all.groups[0].configuration.as_ref().map(|c| c.voters.clone()), Some(vec![1, 2, 3]));
    let unknown = c.status(client::StatusRequest { group: Some(5) }).await.expect("status").into_inner();
    assert_eq!(unknown.error.map(|e| e.code()), Some(ErrorCode::UnknownGroup));

    drop(c);
    server.shutdown().await;
}

#[tokio::test]
async fn peer_stream_and_chunk_pull_over_loopback() {
    let collected = CollectPeer::default();
    let server = start(collected.clone()).await;
    let mut p = waft_proto::peer_client(server.channel().await);

    let sent = vec![
        (
            GROUP,
            Message { from: 1, to: 2, term: 3, body: MessageBody::Heartbeat { commit: 4, round: 5, quiesce: false } },
        ),
        (GROUP + 1, Message { from: 1, to: 2, term: 3, body: MessageBody::TimeoutNow }),
    ];
    let batches = vec![
        peer::PeerBatch { messages: sent.iter().cloned().map(PeerMessage::from).collect() },
        // A malformed message is dropped and counted, not fatal to the stream.
        peer::PeerBatch { messages: vec![PeerMessage::default()] },
    ];
    let done = p.raft(tokio_stream::iter(batches)).await.expect("raft stream").into_inner();
    assert_eq!((done.delivered, done.dropped), (2, 1));
    assert_eq!(*collected.received.lock().expect("not poisoned"), sent);

    let chunk = p
        .pull_snapshot_chunk(peer::SnapshotChunkRequest {
            group: GROUP,
            snapshot_index: 10,
            snapshot_term: 2,
            file: "data".into(),
            offset: 6,
            max_len: 100,
        })
        .await
        .expect("chunk")
        .into_inner();
    assert_eq!((chunk.data.as_ref(), chunk.file_size, chunk.eof), (&b"6789"[..], 10, true));
    let missing = p
        .pull_snapshot_chunk(peer::SnapshotChunkRequest { file: "nope".into(), ..Default::default() })
        .await
        .expect_err("no such file");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    drop(p);
    server.shutdown().await;
}
