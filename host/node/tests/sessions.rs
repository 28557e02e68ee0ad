//! Exactly-once client sessions in the replica: three replicas of the counter
//! in one thread, real RocksDB and wasm. A retried command applies once on
//! every replica and its copies get the saved result; refusals come out as
//! outcomes; a replica restored from a snapshot (its own, or one installed
//! from the leader) deduplicates exactly as the others do, even as leader.

mod common;

use bytes::Bytes;
use common::Cluster;
use waft_node::Outcome;
use waft_session::{Body, Envelope, SessionConfig, SessionError};

const NONCE: u128 = 0x005e_ed0f_5e55_1075;

fn register(c: &mut Cluster) -> u64 {
    let (index, _) = c.propose_body(Body::Register { nonce: Some(NONCE) });
    c.settle();
    let leader = c.leader().unwrap();
    match c.outcome_at(leader, index) {
        Some(Outcome::Registered { session_id }) => *session_id,
        other => panic!("registration at {index}: {other:?}"),
    }
}

fn command(session_id: u64, seq: u64, lowest_unacked_seq: u64, text: &str) -> Body {
    Body::Command { session_id, seq, lowest_unacked_seq, payload: Bytes::copy_from_slice(text.as_bytes()) }
}

/// Every up replica has equal session tables (the snapshot sections are bytes).
fn assert_tables_equal(c: &mut Cluster, ids: &[u64]) {
    let reference = c.replica(ids[0]).sessions().encode_snapshot().unwrap();
    for &id in ids {
        assert_eq!(c.replica(id).sessions().encode_snapshot().unwrap(), reference, "node {id} session table");
    }
}

/// Proposes session-less increments until every node has snapshotted past `index`.
fn fill_until_compacted(c: &mut Cluster, ids: &[u64], index: u64) -> u64 {
    let mut n = 0;
    while ids.iter().any(|&id| c.replica(id).raft().first_index() <= index) {
        c.propose(r#"{"incr":1}"#);
        n += 1;
        if n % 10 == 0 {
            c.settle();
            c.tick(1);
        }
        assert!(n < 1_000, "no snapshot past index {index}");
    }
    c.settle();
    c.tick(3);
    n
}

#[test]
fn a_retried_command_applies_once_and_every_copy_gets_the_saved_result() {
    let mut c = Cluster::new("session-dedup", 3, 10_000);
    c.elect(1);
    let s = register(&mut c);
    // A retried registration (same nonce) gets the same session back.
    assert_eq!(register(&mut c), s);

    let (first, _) = c.propose_body(command(s, 1, 1, r#"{"incr":5}"#));
    c.settle();
    // The client never saw the reply and sends seq 1 again: answered, not applied.
    let (retry, _) = c.propose_body(command(s, 1, 1, r#"{"incr":5}"#));
    // Two copies of seq 2 in one batch: the second gets the first's result.
    let (two, _) = c.propose_body(command(s, 2, 1, r#"{"incr":1}"#));
    let (two_again, _) = c.propose_body(command(s, 2, 1, r#"{"incr":1}"#));
    // A command the guest refuses: its retry meets the same refusal.
    let (bad, _) = c.propose_body(command(s, 3, 1, r#"{"decrement":1}"#));
    c.settle();
    let (bad_again, _) = c.propose_body(command(s, 3, 1, r#"{"decrement":1}"#));
    c.settle();
    c.tick(3);
    for id in 1..=3 {
        assert_eq!(c.result_at(id, first), "5", "node {id}");
        assert_eq!(c.result_at(id, retry), "SAVED: 5", "node {id}");
        assert_eq!(c.result_at(id, two), "6", "node {id}");
        assert_eq!(c.result_at(id, two_again), "SAVED: 6", "node {id}");
        let refused = c.result_at(id, bad);
        assert!(refused.starts_with("ERR: rejected"), "node {id}: {refused}");
        assert_eq!(c.result_at(id, bad_again), format!("SAVED: {refused}"), "node {id}");
        assert_eq!(c.query(id), "6", "node {id}: every command applied once");
    }
    assert_tables_equal(&mut c, &[1, 2, 3]);

    // Acknowledging (lowest unacked 4) drops the saved replies; a late copy
    // of an acknowledged command is refused, not applied.
    let (next, _) = c.propose_body(command(s, 4, 4, r#"{"incr":1}"#));
    let (late, _) = c.propose_body(command(s, 1, 1, r#"{"incr":5}"#));
    c.settle();
    assert_eq!(c.result_at(1, next), "7");
    assert!(
        matches!(c.outcome_at(1, late), Some(Outcome::Refused(SessionError::Stale { seq: 1, .. }))),
        "{:?}",
        c.outcome_at(1, late)
    );
    assert_eq!(c.query(1), "7");
}

#[test]
fn session_refusals_are_outcomes_and_bad_requests_never_reach_the_log() {
    let limits = SessionConfig {
        sessions_open_max: 2,
        window_commands_max: 4,
        session_idle_timeout_ms: 1_000,
        ..SessionConfig::default()
    };
    let mut c = Cluster::with_sessions("session-refusals", 3, 10_000, "waft_counter", limits);
    c.elect(1);
    c.now_ms = 10_000;
    let (a, _) = c.propose_body(Body::Register { nonce: None });
    let (_b, _) = c.propose_body(Body::Register { nonce: None });
    let (full, _) = c.propose_body(Body::Register { nonce: None });
    let (unknown, _) = c.propose_body(command(999, 1, 1, r#"{"incr":1}"#));
    let (beyond, _) = c.propose_body(command(a, 5, 1, r#"{"incr":1}"#));
    c.settle();
    for id in 1..=3 {
        assert_eq!(c.outcome_at(id, full), Some(&Outcome::Refused(SessionError::TableFull { sessions_open_max: 2 })));
        assert_eq!(
            c.outcome_at(id, unknown),
            Some(&Outcome::Refused(SessionError::UnknownOrExpired { session_id: 999 }))
        );
        assert!(matches!(c.outcome_at(id, beyond), Some(Outcome::Refused(SessionError::WindowFull { seq: 5, .. }))));
    }

    // Idle past the timeout by the leader's clock: the next entry expires both.
    c.now_ms += 1_001;
    let (expired, _) = c.propose_body(command(a, 1, 1, r#"{"incr":1}"#));
    let (again, _) = c.propose_body(Body::Register { nonce: None });
    c.settle();
    c.tick(3);
    for id in 1..=3 {
        assert_eq!(
            c.outcome_at(id, expired),
            Some(&Outcome::Refused(SessionError::UnknownOrExpired { session_id: a }))
        );
        assert_eq!(c.outcome_at(id, again), Some(&Outcome::Registered { session_id: again }));
        assert_eq!(c.replica(id).sessions().sessions_open(), 1);
        assert_eq!(c.query(id), "0", "no refused command reached the guest");
    }
    assert_tables_equal(&mut c, &[1, 2, 3]);

    // Requests that break the envelope's rules are refused at the leader.
    let leader = c.leader().unwrap();
    for bad in [command(again, 0, 0, "x"), command(0, 1, 1, "x"), command(again, 2, 3, "x"), command(again, 1, 1, "")] {
        let envelope = Envelope::new(c.now_ms, bad.clone());
        let err = c.replica(leader).propose(&envelope).unwrap_err();
        assert!(!err.is_fatal(), "{bad:?}: {err}");
    }
}

#[test]
fn a_follower_restarted_from_its_own_snapshot_deduplicates_as_leader() {
    let mut c = Cluster::new("session-restart", 3, 20);
    c.elect(1);
    let s = register(&mut c);
    let (first, _) = c.propose_body(command(s, 1, 1, r#"{"incr":100}"#));
    c.settle();
    // The session stays open (seq 1 unacknowledged) while every node
    // snapshots past the command and compacts it out of its log.
    let filled = fill_until_compacted(&mut c, &[1, 2, 3], first);
    let value = (100 + filled).to_string();
    c.close(3);
    c.open(3);
    assert!(c.replica(3).raft().first_index() > first, "node 3 restarted from a snapshot past the command");
    assert!(c.replica(3).sessions().is_open(s), "its snapshot holds the open session");
    c.tick(3);
    // Node 3 leads now and answers the retry from the table it restored.
    c.transfer(3);
    let (retry, _) = c.propose_body(command(s, 1, 1, r#"{"incr":100}"#));
    c.settle();
    c.tick(3);
    for id in 1..=3 {
        assert_eq!(c.result_at(id, retry), "SAVED: 100", "node {id}");
        assert_eq!(c.query(id), value, "node {id}: the retry did not apply again");
    }
    assert_tables_equal(&mut c, &[1, 2, 3]);
}

#[test]
fn a_follower_that_installed_a_snapshot_deduplicates_as_leader() {
    let mut c = Cluster::new("session-install", 3, 20);
    c.elect(1);
    let s = register(&mut c);
    c.close(3);
    let (first, _) = c.propose_body(command(s, 1, 1, r#"{"incr":100}"#));
    c.settle();
    let filled = fill_until_compacted(&mut c, &[1, 2], first);
    c.open(3);
    c.tick(5);
    assert_eq!(c.installs, 1, "node 3 caught up by installing the leader's snapshot");
    assert!(c.replica(3).sessions().is_open(s));
    c.transfer(3);
    let (retry, _) = c.propose_body(command(s, 1, 1, r#"{"incr":100}"#));
    c.settle();
    c.tick(3);
    for id in 1..=3 {
        assert_eq!(c.result_at(id, retry), "SAVED: 100", "node {id}");
        assert_eq!(c.query(id), (100 + filled).to_string(), "node {id}");
    }
    assert_tables_equal(&mut c, &[1, 2, 3]);
}
