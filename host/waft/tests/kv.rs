//! kv state machines on real `waft serve` processes (examples/atomic-kv,
//! its state in each node's RocksDB): a follower SIGKILLed under load
//! again and again resumes from its store, at its applied index, and the
//! group's digests find no replica ahead of or behind the others; a node
//! that joins after the log was compacted installs the store's snapshot
//! and ends identical. Every acknowledged write reads back everywhere.
//!
//! Every wait is a poll with a deadline.

mod common;

use std::time::Instant;

use common::{CATCH_UP_DEADLINE, Cluster, Load, POLL_PAUSE, Spec, assert_all_present};

const GROUP: u64 = 1;
/// Entries between digests: every few hundred writes are compared.
const INTERVAL: u64 = 64;
/// Log entries past the latest snapshot before the next one: the log is
/// compacted several times while the test runs.
const SNAPSHOT_MARGIN: u64 = 300;
/// Writes acknowledged between kills and restarts.
const WRITES_PER_STEP: usize = 250;
/// Times the follower is killed and restarted. Each restart resumes from
/// the store: no snapshot load, no replay of what it had applied (its log
/// says so).
const KILLS: usize = 3;

fn spec() -> Spec {
    Spec::one(GROUP, "waft_atomic_kv")
        .arg("--digest-interval", INTERVAL)
        .arg("--snapshot-margin-entries", SNAPSHOT_MARGIN)
}

/// Waits until every node applied the leader's commit index and holds the
/// same digest at the same index, past `after`; returns that index. No
/// node may ever have found its digest differ.
async fn wait_identical(c: &mut Cluster, leader: usize, after: u64) -> u64 {
    let deadline = Instant::now() + CATCH_UP_DEADLINE;
    loop {
        c.check_alive();
        let mut all = Vec::new();
        for i in 0..3 {
            all.extend(c.status(i, GROUP).await);
        }
        for g in &all {
            assert_eq!(g.digest_mismatches, 0, "a replica's state differed from the group's: {g:?}");
        }
        let l = &all[leader.min(all.len() - 1)];
        if all.len() == 3
            && l.digest_index > after
            && all.iter().all(|g| g.applied_index == l.applied_index && g.digest_index == l.digest_index)
            && all.iter().all(|g| g.digest == l.digest && !g.digest.is_empty())
        {
            return l.digest_index;
        }
        assert!(Instant::now() < deadline, "replicas did not end identical: {all:?}");
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

fn log_lines(c: &Cluster, i: usize, needle: &str) -> usize {
    std::fs::read_to_string(c.log_path(i)).unwrap_or_default().lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_under_load_resumes_from_its_store_and_never_differs() {
    let mut c = Cluster::start("kv-sigkill", 3, spec());
    let leader = c.wait_for_leader(GROUP).await;
    let follower = (leader + 1) % 3;
    let load = Load::start(&c, GROUP, &[0, 1, 2]);
    for kill in 1..=KILLS {
        let n = load.acked_count();
        load.wait_acked(&mut c, n + WRITES_PER_STEP).await;
        c.kill(follower);
        let n = load.acked_count();
        load.wait_acked(&mut c, n + WRITES_PER_STEP).await;
        c.start_node(follower);
        // Up again, and caught up with what the group did meanwhile.
        let commit = c.status(leader, GROUP).await.expect("leader status").commit_index;
        c.wait_applied(follower, GROUP, commit).await;
        assert_eq!(log_lines(&c, follower, "resumed from the key-value store"), kill, "restart {kill} resumed");
    }
    let n = load.acked_count();
    load.wait_acked(&mut c, n + WRITES_PER_STEP).await;
    let (acked, failed) = load.stop().await;
    eprintln!("{} writes acknowledged, {failed} failed or unknown", acked.len());
    let commit = c.status(leader, GROUP).await.expect("leader status").commit_index;
    // Past the last restart, with one more digest point for it to reach.
    wait_identical(&mut c, leader, commit.saturating_sub(INTERVAL)).await;
    for i in 0..3 {
        assert_all_present(&c, i, GROUP, &acked).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_node_installs_the_stores_snapshot_and_ends_identical() {
    let mut c = Cluster::prepare("kv-install", 3, spec());
    c.start_node(0);
    c.start_node(1);
    let leader = c.wait_for_leader_among(GROUP, &[0, 1]).await;
    let load = Load::start(&c, GROUP, &[0, 1]);
    // Several snapshots: node 3's log would have to start past index 1.
    load.wait_acked(&mut c, 3 * SNAPSHOT_MARGIN as usize).await;
    c.start_node(2);
    let n = load.acked_count();
    load.wait_acked(&mut c, n + WRITES_PER_STEP).await;
    let (acked, _) = load.stop().await;
    let commit = c.status(leader, GROUP).await.expect("leader status").commit_index;
    wait_identical(&mut c, leader, commit.saturating_sub(INTERVAL)).await;
    let node3 = c.status(2, GROUP).await.expect("node 3 status");
    assert!(node3.snapshot_index > 0, "node 3 installed a snapshot: {node3:?}");
    assert_all_present(&c, 2, GROUP, &acked).await;
}
