//! Failures of real daemons under load: the leader SIGKILLed while clients
//! write, and the whole cluster killed and restarted. Nothing acknowledged
//! may be lost, and the group must serve again within a few election
//! timeouts.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Cluster, Load, Spec, assert_all_present, newest_snapshot_state, set, text};

const GROUP: u64 = 1;
/// The daemons' election timeout: 30 ticks of 10 ms (the defaults).
const ELECTION_TIMEOUT: Duration = Duration::from_millis(300);
/// "Within a few election timeouts": pre-vote, a randomized timeout of up to
/// two, a vote round, and the clients' own retry pause, with room for a
/// loaded 2-core machine.
const FAILOVER_MAX: Duration = Duration::from_millis(300 * 10);
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_the_leader_under_load_loses_no_acknowledged_write() {
    let spec = Spec::one(GROUP, "waft_atomic").arg("--snapshot-margin-entries", 500);
    let mut c = Cluster::start("sigkill-leader", 3, spec);
    let leader = c.wait_for_leader(GROUP).await;
    let load = Load::start(&c, GROUP, &[0, 1, 2]);
    load.wait_acked(&mut c, 300).await;

    c.kill(leader);
    let killed_at = Instant::now();
    let before = load.acked_count();
    let new_leader = c.wait_for_leader(GROUP).await;
    assert_ne!(new_leader, leader);
    load.wait_acked(&mut c, before + 1).await;
    let first_after = load
        .acked
        .lock()
        .unwrap()
        .iter()
        .map(|(_, at)| *at)
        .filter(|at| *at > killed_at)
        .min()
        .expect("a write acknowledged after the kill");
    let failover = first_after - killed_at;
    eprintln!("leader killed; first write acknowledged by the new leader after {failover:?}");
    assert!(
        failover < FAILOVER_MAX,
        "writes resumed after {failover:?}, more than {FAILOVER_MAX:?} ({} election timeouts)",
        FAILOVER_MAX.as_millis() / ELECTION_TIMEOUT.as_millis()
    );
    load.wait_acked(&mut c, before + 300).await;

    // The killed node restarts from its data directory while the load runs.
    c.start_node(leader);
    load.wait_acked(&mut c, before + 600).await;
    let (acked, failed) = load.stop().await;
    eprintln!("{} writes acknowledged, {failed} failed or unknown", acked.len());
    let distinct: BTreeSet<&str> = acked.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(distinct.len(), acked.len());

    let commit = c.status(new_leader, GROUP).await.expect("leader status").commit_index;
    for i in 0..3 {
        c.wait_applied(i, GROUP, commit).await;
        assert_all_present(&c, i, GROUP, &acked).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_restarts_from_disk() {
    let spec = Spec::one(GROUP, "waft_atomic").arg("--snapshot-margin-entries", 100);
    let mut c = Cluster::start("whole-restart", 3, spec);
    let leader = c.wait_for_leader(GROUP).await;
    let load = Load::start(&c, GROUP, &[0, 1, 2]);
    load.wait_acked(&mut c, 250).await;
    let (acked, _) = load.stop().await;

    let commit = c.status(leader, GROUP).await.expect("leader status").commit_index;
    let mut before = Vec::new();
    for i in 0..3 {
        before.push(c.wait_applied(i, GROUP, commit).await);
    }
    for i in 0..3 {
        c.kill(i);
    }
    // The snapshot each node left on disk (entries may have applied, and a
    // snapshot been taken, after `before` was read: the load's sessions
    // close through the log).
    let on_disk: Vec<Option<u64>> =
        (0..3).map(|i| newest_snapshot_state(&c, i, GROUP).map(|(index, _)| index)).collect();
    for i in 0..3 {
        c.start_node(i);
    }
    // Before any election: what each node read back from its own disk.
    for (i, old) in before.iter().enumerate() {
        let deadline = Instant::now() + common::LEADER_DEADLINE;
        let now = loop {
            c.check_alive();
            if let Some(g) = c.status(i, GROUP).await {
                break g;
            }
            assert!(Instant::now() < deadline, "node {} does not answer after restart", i + 1);
            tokio::time::sleep(common::POLL_PAUSE).await;
        };
        assert!(now.term >= old.term, "node {}: term {} came back below {}", i + 1, now.term, old.term);
        assert!(now.snapshot_index > 0, "node {}: a snapshot after {} entries", i + 1, old.applied_index);
        // At least the one it left on disk (replaying the log past the
        // snapshot margin at start takes a newer one at once).
        let left = on_disk[i].expect("a snapshot on disk");
        assert!(now.snapshot_index >= left, "node {}: snapshot {} came back below {left}", i + 1, now.snapshot_index);
    }
    let leader = c.wait_for_leader(GROUP).await;
    for (i, old) in before.iter().enumerate() {
        let now = c.wait_applied(i, GROUP, old.applied_index).await;
        assert!(now.term > old.term, "a new election after the restart");
        assert_all_present(&c, i, GROUP, &acked).await;
    }
    // And it takes writes again.
    let answer = c.client(leader).propose(GROUP, set("after-restart", 1)).await.unwrap();
    assert_eq!(text(&answer), r#"{"success":true}"#);
}

/// Two groups, one running the counter and one the atomic module, on the
/// same three daemons: killing a daemon affects both, and both recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_on_three_daemons_both_survive_a_kill() {
    const COUNTER: u64 = 7;
    const ATOMIC: u64 = 8;
    let spec = Spec {
        groups: vec![(COUNTER, common::module("waft_counter")), (ATOMIC, common::module("waft_atomic"))],
        args: Vec::new(),
    };
    let mut c = Cluster::start("two-groups", 3, spec);
    c.wait_for_leader(COUNTER).await;
    c.wait_for_leader(ATOMIC).await;
    let client = c.client_of_all(0);
    let incr = || bytes::Bytes::from_static(br#"{"incr":1}"#);
    for i in 0..20u64 {
        client.propose(COUNTER, incr()).await.unwrap();
        client.propose(ATOMIC, set(&format!("k{i}"), i)).await.unwrap();
    }
    // Kill the counter's leader: the atomic group loses a member (perhaps its
    // leader) at the same moment.
    let victim = c.wait_for_leader(COUNTER).await;
    c.kill(victim);
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    c.wait_for_leader_among(COUNTER, &survivors).await;
    c.wait_for_leader_among(ATOMIC, &survivors).await;
    for i in 20..40u64 {
        client.propose(COUNTER, incr()).await.unwrap();
        client.propose(ATOMIC, set(&format!("k{i}"), i)).await.unwrap();
    }
    c.start_node(victim);
    for group in [COUNTER, ATOMIC] {
        let leader = c.wait_for_leader(group).await;
        let commit = c.status(leader, group).await.unwrap().commit_index;
        c.wait_applied(victim, group, commit).await;
    }
    let at_victim = c.client(victim);
    let stale = waft_proto::client::Consistency::Stale;
    let answer = at_victim.query(COUNTER, bytes::Bytes::from_static(br#""get""#), stale).await.unwrap();
    assert_eq!(text(&answer), "40", "the counter caught up on the restarted node");
    for i in [0u64, 19, 20, 39] {
        let answer = at_victim.query(ATOMIC, common::get(&format!("k{i}")), stale).await.unwrap();
        assert_eq!(text(&answer), i.to_string(), "atomic key k{i} on the restarted node");
    }
}
