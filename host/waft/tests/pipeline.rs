//! The client service's `Pipeline` stream against three real `waft serve`
//! processes: many concurrent proposes and queries of one client share one
//! stream per node and each gets its own reply; more calls than a stream may
//! have in flight wait instead of failing; malformed calls and oversized
//! batches get clear errors; and a node shutting down with a stream open
//! still stops at once, its clients moving on to another node.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Cluster, Spec, get, set, text};
use waft_daemon::client::ClientError;
use waft_proto::client::{
    Call, CallBatch, Consistency, ErrorCode, ProposeRequest, QueryRequest, call, call_reply, propose_response,
    query_response,
};

const ATOMIC: u64 = 1;
/// Keys written and read back concurrently through one client.
const KEYS: u64 = 2_000;
/// Concurrent queries on one client: more than a pipeline has in flight.
const FLOOD: usize = waft_daemon::client::PIPELINE_IN_FLIGHT_MAX + 1_500;

fn key(k: u64) -> String {
    format!("k{k}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_calls_get_their_own_replies_and_bad_calls_clear_errors() {
    let mut cluster = Cluster::start("pipeline", 3, Spec::one(ATOMIC, "waft_atomic"));
    let leader = cluster.wait_for_leader(ATOMIC).await;
    let follower = (leader + 1) % 3;

    // Writes from 2,000 tasks of one client through a follower (every one
    // redirected once to the leader, then pipelined there): each applies once.
    let client = cluster.client(follower);
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..KEYS {
        let c = client.clone();
        tasks.spawn(async move { (k, c.propose_plain(ATOMIC, set(&key(k), 10 * k + 1)).await) });
    }
    let mut written = BTreeSet::new();
    while let Some(done) = tasks.join_next().await {
        let (k, answer) = done.unwrap();
        let answer = answer.unwrap_or_else(|e| panic!("set k{k}: {e}"));
        assert_eq!(text(&answer), r#"{"success":true}"#, "set k{k}");
        assert!(written.insert(answer.index), "two writes answered with one log index {}", answer.index);
    }
    assert_eq!(written.len() as u64, KEYS);
    // They shared messages: the leader received fewer batches than calls.
    let page = cluster.scrape(leader).await;
    let node_metric = |name: &str| {
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('{')?.split_once("} ")?.1.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} missing from the metrics page"))
    };
    let (calls, batches) =
        (node_metric("waft_node_pipeline_calls_total"), node_metric("waft_node_pipeline_batches_total"));
    assert!(calls >= KEYS, "{calls} calls counted for {KEYS} writes");
    assert!(batches * 2 <= calls, "{calls} calls came in {batches} batches: hardly batched");
    assert!(node_metric("waft_node_pipelines_open") >= 1);

    // Reads of every key at once, at the leader and at a follower: each
    // reply is its own key's value, so no reply went to another call.
    for at in [leader, follower] {
        let client = cluster.client(at);
        let mut tasks = tokio::task::JoinSet::new();
        for k in 0..KEYS {
            let c = client.clone();
            tasks.spawn(async move { (k, c.query(ATOMIC, get(&key(k)), Consistency::Linearizable).await) });
        }
        while let Some(done) = tasks.join_next().await {
            let (k, answer) = done.unwrap();
            let answer = answer.unwrap_or_else(|e| panic!("get k{k} at node {}: {e}", at + 1));
            assert_eq!(text(&answer), (10 * k + 1).to_string(), "get k{k} at node {}", at + 1);
        }
    }

    // More calls than one stream may have in flight: the rest wait their
    // turn in the client (or are retried after BUSY), none fails.
    let client = cluster.client(leader);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..FLOOD {
        let c = client.clone();
        let k = i as u64 % KEYS;
        tasks.spawn(async move { (k, c.query(ATOMIC, get(&key(k)), Consistency::Lease).await) });
    }
    let mut answered = 0;
    while let Some(done) = tasks.join_next().await {
        let (k, answer) = done.unwrap();
        let answer = answer.unwrap_or_else(|e| panic!("flooded get k{k}: {e}"));
        assert_eq!(text(&answer), (10 * k + 1).to_string());
        answered += 1;
    }
    assert_eq!(answered, FLOOD);

    // Calls no client library would send, straight over gRPC: each bad call
    // gets its own error, by id, and the good call beside them its answer.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.addrs[leader]))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = waft_proto::client_client(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = raw.pipeline(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let calls = vec![
        Call {
            id: 7,
            request: Some(call::Request::Query(QueryRequest { group: ATOMIC, request: get("k5"), consistency: 42 })),
        },
        Call { id: 8, request: None },
        Call {
            id: 9,
            request: Some(call::Request::Propose(ProposeRequest {
                group: 99,
                command: set("x", 1),
                ..Default::default()
            })),
        },
        Call {
            id: 10,
            request: Some(call::Request::Query(QueryRequest {
                group: ATOMIC,
                request: get("k5"),
                consistency: Consistency::Linearizable as i32,
            })),
        },
        Call { id: 11, request: Some(call::Request::Propose(ProposeRequest { group: ATOMIC, ..Default::default() })) },
    ];
    tx.send(CallBatch { calls }).await.unwrap();
    let mut seen = BTreeSet::new();
    while seen.len() < 5 {
        let batch = replies.message().await.unwrap().expect("the stream ended before every reply");
        for reply in batch.replies {
            assert!(seen.insert(reply.id), "a second reply to call {}", reply.id);
            let response = reply.response.expect("a reply without a response");
            let code = match (reply.id, response) {
                (7, call_reply::Response::Query(q)) => match q.outcome {
                    Some(query_response::Outcome::Error(e)) => e.code(),
                    other => panic!("consistency 42 answered {other:?}"),
                },
                (8, call_reply::Response::Error(e)) => e.code(),
                (9 | 11, call_reply::Response::Propose(p)) => match p.outcome {
                    Some(propose_response::Outcome::Error(e)) => e.code(),
                    other => panic!("call {} answered {other:?}", reply.id),
                },
                (10, call_reply::Response::Query(q)) => match q.outcome {
                    Some(query_response::Outcome::Result(r)) => {
                        assert_eq!(&r[..], b"51");
                        ErrorCode::Unspecified
                    }
                    other => panic!("the good query answered {other:?}"),
                },
                (id, other) => panic!("call {id} got {other:?}"),
            };
            let expected = match reply.id {
                7 | 8 | 11 => ErrorCode::InvalidRequest,
                9 => ErrorCode::UnknownGroup,
                _ => ErrorCode::Unspecified,
            };
            assert_eq!(code, expected, "call {}", reply.id);
        }
    }
    // A batch over the server's bound ends the stream with a clear status.
    let calls = (0..waft_daemon::service::PIPELINE_BATCH_CALLS_MAX as u64 + 1)
        .map(|id| Call {
            id: 100 + id,
            request: Some(call::Request::Query(QueryRequest { group: ATOMIC, request: get("k1"), consistency: 0 })),
        })
        .collect();
    tx.send(CallBatch { calls }).await.unwrap();
    let status = match replies.message().await {
        Ok(Some(_)) => panic!("an oversized batch was served"),
        Ok(None) => panic!("the stream ended without saying why"),
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert!(status.message().contains("at most"), "{status}");

    // A node with an open pipeline still stops at once on SIGTERM, and a
    // client that knows the others goes on there.
    let client = cluster.client_of_all(follower);
    let answer = client.query(ATOMIC, get("k3"), Consistency::Linearizable).await.unwrap();
    assert_eq!(text(&answer), "31");
    assert!(cluster.terminate(follower, Duration::from_secs(15)), "node {} did not stop cleanly", follower + 1);
    let answer = match client.query(ATOMIC, get("k4"), Consistency::Linearizable).await {
        Ok(answer) => answer,
        // The stream to the stopped node may break with the query on it:
        // a read is retried by hand, as its outcome does not matter.
        Err(ClientError::Rpc { .. }) => client.query(ATOMIC, get("k4"), Consistency::Linearizable).await.unwrap(),
        Err(e) => panic!("a read after the node stopped: {e}"),
    };
    assert_eq!(text(&answer), "41");
    cluster.check_alive();
}
