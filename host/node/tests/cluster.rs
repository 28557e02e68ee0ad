//! Three replicas of the counter group in one thread: real RocksDB, real wasm,
//! a deterministic message pump.

mod common;

use common::Cluster;

const INCR: &str = r#"{"incr":1}"#;

/// Proposes `n` increments on the leader, settling every `batch` proposals.
fn increments(c: &mut Cluster, n: usize) -> Vec<(u64, u64)> {
    let mut at = Vec::with_capacity(n);
    for i in 0..n {
        at.push(c.propose(INCR));
        if i % 20 == 19 {
            c.settle();
        }
    }
    c.settle();
    // Heartbeats carry the final commit index to the followers.
    c.tick(3);
    at
}

fn assert_converged(c: &mut Cluster, ids: &[u64], value: &str) {
    let leader_applied = c.applied_index(c.leader().unwrap());
    let reference = c.state_bytes(ids[0]);
    for &id in ids {
        assert_eq!(c.applied_index(id), leader_applied, "node {id} applied index");
        assert_eq!(c.query(id), value, "node {id} value");
        assert_eq!(c.state_bytes(id), reference, "node {id} snapshot bytes");
    }
}

#[test]
fn three_replicas_apply_200_increments() {
    let mut c = Cluster::new("apply-200", 3, 10_000);
    c.elect(1);
    let at = increments(&mut c, 200);
    for id in 1..=3 {
        for (i, (index, _)) in at.iter().enumerate() {
            assert_eq!(c.result_at(id, *index), (i + 1).to_string(), "node {id} index {index}");
        }
    }
    assert_converged(&mut c, &[1, 2, 3], "200");
}

#[test]
fn follower_restarts_from_storage_and_catches_up() {
    let mut c = Cluster::new("restart", 3, 10_000);
    c.elect(1);
    increments(&mut c, 50);
    let before = c.replica(3).raft().hard_state();
    c.close(3);
    increments(&mut c, 100);
    assert_eq!(c.query(1), "150");
    c.open(3);
    // The reopened replica holds what it persisted before the close.
    assert_eq!(c.replica(3).raft().hard_state(), before);
    assert!(c.replica(3).raft().last_index() >= 50);
    c.tick(5);
    assert_converged(&mut c, &[1, 2, 3], "150");
    // And it keeps up with new writes.
    increments(&mut c, 10);
    assert_converged(&mut c, &[1, 2, 3], "160");
}

#[test]
fn follower_down_during_compaction_installs_a_snapshot_in_chunks() {
    let mut c = Cluster::new("install", 3, 50);
    c.elect(1);
    c.close(3);
    increments(&mut c, 200);
    assert!(c.snapshots_saved >= 2, "leader and follower snapshot at margin 50");
    let first = c.replica(1).raft().first_index();
    assert!(first > 100, "the leader compacted its log (first index {first})");
    c.open(3);
    c.tick(5);
    assert_eq!(c.installs, 1, "node 3 installed one snapshot");
    assert!(c.chunks >= 3, "8 bytes of state in 3-byte chunks: {} chunks", c.chunks);
    assert_converged(&mut c, &[1, 2, 3], "200");
    // The installed snapshot is node 3's own now: it restarts from it.
    c.close(3);
    c.open(3);
    c.tick(3);
    increments(&mut c, 10);
    assert_converged(&mut c, &[1, 2, 3], "210");
}

#[test]
fn a_rejected_entry_fails_on_every_replica_and_the_group_goes_on() {
    let mut c = Cluster::new("fault", 3, 10_000);
    c.elect(1);
    increments(&mut c, 5);
    let overflow = c.propose(r#"{"incr":9223372036854775807}"#);
    let malformed = c.propose("{not json");
    c.settle();
    increments(&mut c, 5);
    for id in 1..=3 {
        for (index, _) in [overflow, malformed] {
            let r = c.result_at(id, index);
            assert!(r.starts_with("ERR"), "node {id} index {index}: {r}");
        }
        // Entries after the rejected ones applied as if those never had.
        assert_eq!(c.result_at(id, malformed.0 + 1), "6");
    }
    assert_converged(&mut c, &[1, 2, 3], "10");
}

#[test]
fn a_snapshot_transfer_killed_midway_completes_after_restart() {
    let mut c = Cluster::new("install-killed", 3, 50);
    c.elect(1);
    c.close(3);
    increments(&mut c, 120);
    c.interrupt_install_after_chunks = Some(1);
    c.open(3);
    c.tick(2);
    assert_eq!((c.interrupted_installs, c.installs), (1, 0), "the first transfer stopped after one chunk");
    // Kill the receiver mid-transfer and bring it back from its data dir.
    c.close(3);
    c.open(3);
    // The leader resends the snapshot once its retry interval passes.
    c.tick(80);
    assert_eq!(c.installs, 1);
    assert_converged(&mut c, &[1, 2, 3], "120");
}

#[test]
fn linearizable_reads_on_leader_and_follower() {
    let mut c = Cluster::new("reads", 3, 10_000);
    c.elect(1);
    increments(&mut c, 30);
    for (node, id) in [(1, 100), (2, 200)] {
        c.replica(node).read_index(id, waft_raft::ReadMode::Safe).unwrap();
        c.settle();
        let read = c.reads.iter().find(|(n, r)| *n == node && r.id == id).map(|(_, r)| *r);
        let read = read.unwrap_or_else(|| panic!("node {node} got no read state for {id}"));
        assert!(c.applied_index(node) >= read.index, "node {node} applied up to the read index");
        assert_eq!(c.query(node), "30");
    }
}

#[test]
fn the_group_survives_losing_its_leader_and_the_old_leader_rejoins() {
    let mut c = Cluster::new("leader-loss", 3, 10_000);
    c.elect(1);
    increments(&mut c, 20);
    c.close(1);
    c.tick(60);
    let leader = c.leader().expect("a new leader among 2 and 3");
    assert_ne!(leader, 1);
    increments(&mut c, 20);
    c.open(1);
    c.tick(5);
    assert_eq!(c.leader(), Some(leader));
    assert_converged(&mut c, &[1, 2, 3], "40");
}

#[test]
fn a_trapping_entry_fails_on_every_replica_and_leaves_no_trace() {
    // The probe guest panics or spins on command: real wasm faults, contained
    // by the runtime to the one entry, identically on every replica.
    let mut c = Cluster::with_guest("trap", 3, 10_000, "waft_probe");
    c.elect(1);
    let first = c.propose(r#"{"incr":5}"#);
    let trap = c.propose(r#"{"incr_then_trap":100}"#);
    let spin = c.propose(r#""spin""#);
    let after = c.propose(r#"{"incr":1}"#);
    c.settle();
    c.tick(3);
    for id in 1..=3 {
        assert_eq!(c.result_at(id, first.0), "5", "node {id}");
        for (index, _) in [trap, spin] {
            let r = c.result_at(id, index);
            assert!(r.starts_with("ERR: guest fault"), "node {id} index {index}: {r}");
        }
        assert_eq!(c.result_at(id, after.0), "6", "node {id}: the trapped increment left no trace");
    }
    let reference = c.state_bytes(1);
    for id in 2..=3 {
        assert_eq!(c.state_bytes(id), reference, "node {id} snapshot bytes");
    }
}

/// A follower whose data directory is wiped after it acknowledged entries
/// (and after the leader compacted them) used to make the leader probe it
/// at its old match again and again, each refusal answered at once: a
/// message storm without a tick. The leader now notices it lost entries,
/// says so, and brings it back with a snapshot.
#[test]
fn a_follower_that_lost_its_log_is_caught_up_without_a_message_storm() {
    let mut c = Cluster::new("lost-log", 3, 10_000);
    c.elect(1);
    for _ in 0..5 {
        c.propose(r#"{"incr":1}"#);
    }
    c.settle();
    c.replica(1).request_snapshot();
    c.tick(2);
    assert!(c.replica(1).raft().first_index() > 5, "the leader compacted its log");
    c.reopen_as(3, "waft_counter", waft_session::SessionConfig::default());
    // The leader finds out at its next append to node 3.
    c.propose(r#"{"incr":1}"#);
    c.settle(); // panics after SETTLE_ROUNDS_MAX rounds of a storm
    c.tick(3);
    assert_eq!(c.installs, 1, "node 3 installed the leader's snapshot");
    assert_eq!(c.applied_index(3), c.applied_index(1));
    assert_eq!(c.query(3), "6");
}
