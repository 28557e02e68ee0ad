//! Three real `waft serve` processes on loopback serving two groups (the
//! counter, and the test-only probe guest that traps on request): writes
//! through the leader and a follower apply exactly once, every read
//! consistency returns what it promises, and bad input gets a clear error
//! while the cluster keeps serving.
//!
//! Lives in the `waft` crate so cargo builds the binary and names it
//! (`CARGO_BIN_EXE_waft`); `common::Cluster` kills every child on drop.

mod common;

use std::io::{Read, Write};
use std::process::Command;

use bytes::Bytes;
use common::{Cluster, Spec, module, text};
use waft_daemon::client::{self, ClientError};
use waft_proto::client::{Consistency, ErrorCode, ProposeRequest, QueryRequest, propose_response, query_response};

const COUNTER: u64 = 1;
const PROBE: u64 = 2;

fn refusal(e: ClientError) -> waft_proto::client::Error {
    match e {
        ClientError::Refused(r) => r,
        ClientError::GaveUp { last, .. } => refusal(*last),
        other => panic!("expected a refusal from the server, got {other}"),
    }
}

fn get() -> Bytes {
    Bytes::from_static(br#""get""#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_replicate_read_and_refuse_bad_input() {
    let spec =
        Spec { groups: vec![(COUNTER, module("waft_counter")), (PROBE, module("waft_probe"))], args: Vec::new() };
    let mut cluster = Cluster::start("three-daemons", 3, spec);
    let leader = cluster.wait_for_leader(COUNTER).await;
    let follower = (leader + 1) % 3;
    let (leader_addr, follower_addr) = (cluster.addrs[leader].clone(), cluster.addrs[follower].clone());

    // Exactly once: each increment moves the counter by its own delta.
    let answer = client::propose(&leader_addr, COUNTER, Bytes::from_static(br#"{"incr":5}"#)).await.unwrap();
    assert_eq!(text(&answer), "5");
    // Through a follower: the client follows its NOT_LEADER hint to the leader.
    let answer = client::propose(&follower_addr, COUNTER, Bytes::from_static(br#"{"incr":2}"#)).await.unwrap();
    assert_eq!(text(&answer), "7");
    // The CLI does the same, as a user would type it; hex input too.
    let waft = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_waft")).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, err) = waft(&["propose", "--addr", &follower_addr, "--group", "1", r#"{"incr":3}"#]);
    assert!(ok, "waft propose failed: {err}");
    assert_eq!(out, "10");
    let hex: String = br#"{"incr":1}"#.iter().map(|b| format!("{b:02x}")).collect();
    let (ok, out, err) = waft(&["propose", "--addr", &leader_addr, "--group", "1", "--hex", &hex, "--output", "hex"]);
    assert!(ok, "waft propose --hex failed: {err}");
    assert_eq!(out, "3131", "11 as hex bytes");

    // Linearizable and follower reads see every acknowledged write on every
    // node (a follower asks the leader for a read index and waits to apply
    // it); a lease read on the leader too, without a quorum round.
    for addr in &cluster.addrs {
        for consistency in [Consistency::Linearizable, Consistency::Follower] {
            let answer = client::query(addr, COUNTER, get(), consistency).await.unwrap();
            assert_eq!(text(&answer), "11", "{consistency:?} read at {addr}");
            assert!(answer.index >= 4, "the answer reflects the index it was read at");
        }
    }
    let answer = client::query(&leader_addr, COUNTER, get(), Consistency::Lease).await.unwrap();
    assert_eq!(text(&answer), "11");
    // A stale read answers from local state without any check: on the leader
    // that includes every acknowledged write; on a follower some prefix.
    let answer = client::query(&leader_addr, COUNTER, get(), Consistency::Stale).await.unwrap();
    assert_eq!(text(&answer), "11");
    let answer = client::query(&follower_addr, COUNTER, get(), Consistency::Stale).await.unwrap();
    assert!(["0", "5", "7", "10", "11"].contains(&text(&answer).as_str()), "a prefix: {}", text(&answer));

    // Bad input gets a clear error ...
    let e = refusal(client::propose(&leader_addr, 99, Bytes::from_static(b"{}")).await.unwrap_err());
    assert_eq!(e.code(), ErrorCode::UnknownGroup, "{e}");
    assert!(e.to_string().contains("no group 99"), "{e}");
    let big = Bytes::from(vec![b'x'; 2 * 1024 * 1024]);
    let e = refusal(client::propose(&leader_addr, COUNTER, big).await.unwrap_err());
    assert_eq!(e.code(), ErrorCode::TooLarge, "{e}");
    let e = refusal(client::propose(&leader_addr, COUNTER, Bytes::new()).await.unwrap_err());
    assert_eq!(e.code(), ErrorCode::InvalidRequest, "{e}");
    let e = refusal(client::propose(&leader_addr, COUNTER, Bytes::from_static(b"{\"incr\":")).await.unwrap_err());
    assert_eq!(e.code(), ErrorCode::Rejected, "malformed JSON is the guest's to refuse: {e}");
    let e = refusal(
        client::query(&leader_addr, COUNTER, Bytes::from_static(b"nonsense"), Consistency::Linearizable)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), ErrorCode::Rejected, "{e}");
    // Requests no client library would send, straight over gRPC.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{leader_addr}")).unwrap().connect().await.unwrap();
    let mut raw = waft_proto::client_client(channel);
    let resp = raw
        .propose(ProposeRequest { group: 0, command: Bytes::from_static(b"1"), ..Default::default() })
        .await
        .unwrap();
    match resp.into_inner().outcome {
        Some(propose_response::Outcome::Error(e)) => assert_eq!(e.code(), ErrorCode::InvalidRequest, "{e}"),
        other => panic!("group 0 accepted: {other:?}"),
    }
    let resp = raw.query(QueryRequest { group: COUNTER, request: get(), consistency: 42 }).await.unwrap();
    match resp.into_inner().outcome {
        Some(query_response::Outcome::Error(e)) => {
            assert_eq!(e.code(), ErrorCode::InvalidRequest, "{e}");
            assert!(e.to_string().contains("consistency"), "{e}");
        }
        other => panic!("consistency 42 accepted: {other:?}"),
    }
    // Bytes that are not HTTP/2 at all: the connection is dropped, nothing else.
    let mut junk = std::net::TcpStream::connect(&leader_addr).unwrap();
    junk.write_all(b"GET / HTTP/1.0\r\n\r\n\x00\xff\x00\xff garbage").unwrap();
    let mut sink = Vec::new();
    let _ = junk.read_to_end(&mut sink);

    // ... and a guest that traps on one command loses only that command.
    let probe_leader = cluster.wait_for_leader(PROBE).await;
    let probe_addr = cluster.addrs[probe_leader].clone();
    let answer = client::propose(&probe_addr, PROBE, Bytes::from_static(br#"{"incr":5}"#)).await.unwrap();
    assert_eq!(text(&answer), "5");
    let e = refusal(
        client::propose(&probe_addr, PROBE, Bytes::from_static(br#"{"incr_then_trap":100}"#)).await.unwrap_err(),
    );
    assert_eq!(e.code(), ErrorCode::GuestFault, "{e}");
    let answer = client::propose(&probe_addr, PROBE, Bytes::from_static(br#"{"incr":1}"#)).await.unwrap();
    assert_eq!(text(&answer), "6", "the trapped entry's addition did not survive");
    for addr in &cluster.addrs {
        let answer =
            client::query(addr, PROBE, Bytes::from_static(br#""value""#), Consistency::Linearizable).await.unwrap();
        assert_eq!(text(&answer), r#"{"value":6}"#, "every replica skipped the same entry ({addr})");
    }
    // A query that panics (its message written to stderr through WASI) is a
    // fault of that query alone, whatever the consistency.
    for consistency in [Consistency::Stale, Consistency::Linearizable] {
        let e = refusal(
            client::query(&probe_addr, PROBE, Bytes::from_static(br#""panic""#), consistency).await.unwrap_err(),
        );
        assert_eq!(e.code(), ErrorCode::GuestFault, "{consistency:?}: {e}");
    }
    let answer =
        client::query(&probe_addr, PROBE, Bytes::from_static(br#""value""#), Consistency::Linearizable).await.unwrap();
    assert_eq!(text(&answer), r#"{"value":6}"#, "the group serves on after a panicking query");

    // The cluster still serves, and reports itself.
    let answer = client::propose(&follower_addr, COUNTER, Bytes::from_static(br#"{"incr":1}"#)).await.unwrap();
    assert_eq!(text(&answer), "12");
    let (ok, json, err) = waft(&["status", "--addr", &leader_addr, "--json"]);
    assert!(ok, "waft status failed: {err}");
    assert!(json.contains(r#""role":"leader""#), "{json}");
    cluster.check_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_node_cleanly_and_it_restarts_from_its_data() {
    // Snapshots by time only (the margin is out of reach), once a second.
    let spec = Spec::one(COUNTER, "waft_counter")
        .arg("--snapshot-margin-entries", 1_000_000)
        .arg("--snapshot-interval-secs", 1);
    let mut cluster = Cluster::start("sigterm", 3, spec);
    let leader = cluster.wait_for_leader(COUNTER).await;
    let client = cluster.client(leader);
    for _ in 0..10 {
        client.propose(COUNTER, Bytes::from_static(br#"{"incr":1}"#)).await.unwrap();
    }
    let deadline = std::time::Instant::now() + common::CATCH_UP_DEADLINE;
    while cluster.status(leader, COUNTER).await.is_none_or(|g| g.snapshot_index < 11) {
        assert!(std::time::Instant::now() < deadline, "no time-based snapshot");
        tokio::time::sleep(common::POLL_PAUSE).await;
    }
    // Stop the leader itself: it must exit 0, and the others elect a new one.
    assert!(cluster.terminate(leader, std::time::Duration::from_secs(20)), "node exits 0 on SIGTERM");
    let log = std::fs::read_to_string(cluster.log_path(leader)).unwrap();
    assert!(log.contains("stopped"), "the node logs its clean stop");
    let new_leader = cluster.wait_for_leader(COUNTER).await;
    assert_ne!(new_leader, leader);
    let answer = cluster.client(new_leader).propose(COUNTER, Bytes::from_static(br#"{"incr":1}"#)).await.unwrap();
    assert_eq!(text(&answer), "11");
    cluster.start_node(leader);
    let commit = cluster.status(new_leader, COUNTER).await.unwrap().commit_index;
    cluster.wait_applied(leader, COUNTER, commit).await;
    let answer = client::query(&cluster.addrs[leader], COUNTER, get(), Consistency::Stale).await.unwrap();
    assert_eq!(text(&answer), "11", "restarted from its data directory and caught up");
}

/// The Prometheus endpoint, scraped while the cluster works: the applied
/// index and proposal counters grow with writes, and a leader transfer moves
/// the role gauges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_writes_and_a_transfer() {
    let mut cluster = Cluster::start("metrics", 3, Spec::one(COUNTER, "waft_counter"));
    let leader = cluster.wait_for_leader(COUNTER).await;
    let before = cluster.scrape(leader).await;
    let applied_before = common::metric(&before, "waft_group_applied_index", COUNTER, "").unwrap();
    assert_eq!(common::metric(&before, "waft_group_is_leader", COUNTER, ""), Some(1));
    let client = cluster.client(leader);
    for _ in 0..20 {
        client.propose(COUNTER, Bytes::from_static(br#"{"incr":1}"#)).await.unwrap();
    }
    let after = cluster.scrape(leader).await;
    let applied_after = common::metric(&after, "waft_group_applied_index", COUNTER, "").unwrap();
    assert!(applied_after >= applied_before + 20, "applied index {applied_before} -> {applied_after}");
    assert!(common::metric(&after, "waft_group_proposals_total", COUNTER, "").unwrap() >= 20);
    assert!(common::metric(&after, "waft_group_applied_entries_total", COUNTER, "").unwrap() >= 20);
    assert!(common::metric(&after, "waft_group_apply_nanoseconds_total", COUNTER, "").unwrap() > 0);
    assert!(after.contains("waft_node_log_syncs_total{"), "{after}");
    // The client wrote in one session, whose last result is kept for a retry.
    assert_eq!(common::metric(&after, "waft_group_sessions_open", COUNTER, ""), Some(1));
    assert!(common::metric(&after, "waft_group_session_reply_bytes", COUNTER, "").unwrap() > 0);
    assert!(after.contains("waft_group_replication_lag_entries{"), "the leader reports its peers' lag");

    let target = (leader + 1) % 3;
    let admin = cluster.client(leader);
    let r = admin
        .admin(COUNTER, waft_proto::admin::AdminOp::TransferLeader, vec![target as u64 + 1], vec![])
        .await
        .unwrap();
    assert_eq!(r.leader_id, target as u64 + 1);
    cluster.wait_for_leader(COUNTER).await;
    let old = cluster.scrape(leader).await;
    assert_eq!(common::metric(&old, "waft_group_is_leader", COUNTER, ""), Some(0));
    assert_eq!(common::metric(&old, "waft_group_role", COUNTER, "role=\"follower\""), Some(1));
    let new = cluster.scrape(target).await;
    assert_eq!(common::metric(&new, "waft_group_is_leader", COUNTER, ""), Some(1));
    assert_eq!(common::metric(&new, "waft_group_role", COUNTER, "role=\"leader\""), Some(1));
    cluster.check_alive();
}
