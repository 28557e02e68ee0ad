//! A node whose data directory is lost comes back knowing no term and no
//! vote. On real `waft serve` processes: a follower is killed, its data
//! directory wiped, and it is started again. Its peers refuse its messages
//! (it votes nowhere and counts toward no quorum) while the group serves on
//! with the other two; it says so in its log. `waft admin replace-node` is
//! refused while the node is a voter; once an operator removed it, replaced
//! it and added it back as a learner, it catches up and is promoted.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, POLL_PAUSE, Spec, metric, run_waft};
use waft_proto::admin::AdminOp;

const GROUP: u64 = 1;
/// Writes acknowledged while the wiped node is refused.
const WRITES_WHILE_REFUSED: u64 = 20;
const LOG_DEADLINE: Duration = Duration::from_secs(30);

/// Waits until the log at `path` has a line containing `needle`.
async fn wait_for_line(path: &Path, needle: &str) {
    let deadline = Instant::now() + LOG_DEADLINE;
    loop {
        if std::fs::read_to_string(path).unwrap_or_default().contains(needle) {
            return;
        }
        assert!(Instant::now() < deadline, "{} never said {needle:?} within {LOG_DEADLINE:?}", path.display());
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

/// Runs `waft` until it succeeds or a node refuses for a reason that stays
/// (a node may not have applied the removal yet: it still sees a voter).
async fn retry_waft(args: &[&str]) -> (bool, String, String) {
    let deadline = Instant::now() + LOG_DEADLINE;
    loop {
        let (ok, out, err) = run_waft(args).await;
        if ok || Instant::now() >= deadline {
            return (ok, out, err);
        }
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

/// Node `i`'s status of the group, once it serves it.
async fn serving(c: &Cluster, i: usize) -> waft_proto::client::GroupStatus {
    let deadline = Instant::now() + LOG_DEADLINE;
    loop {
        if let Some(s) = c.status(i, GROUP).await {
            return s;
        }
        assert!(Instant::now() < deadline, "node {} does not serve group {GROUP}", i + 1);
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

/// Waits until one of the logs at `paths` has a line containing `needle`.
async fn wait_for_any_line(paths: &[std::path::PathBuf], needle: &str) {
    let deadline = Instant::now() + LOG_DEADLINE;
    loop {
        if paths.iter().any(|p| std::fs::read_to_string(p).unwrap_or_default().contains(needle)) {
            return;
        }
        assert!(Instant::now() < deadline, "no log of {paths:?} said {needle:?} within {LOG_DEADLINE:?}");
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

/// The leader's count of entries `peer` lacks, as its metrics say.
async fn lag(c: &Cluster, leader: usize, peer: usize) -> Option<u64> {
    let page = c.scrape(leader).await;
    metric(&page, "waft_group_replication_lag_entries", GROUP, &format!("peer=\"{}\"", peer + 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_takes_no_part_until_replaced_then_catches_up() {
    let mut c = Cluster::start("identity-wipe", 3, Spec::one(GROUP, "waft_counter"));
    let leader = c.wait_for_leader(GROUP).await;
    let client = c.client_of_all(leader);
    let incr = Bytes::from_static(br#"{"incr":1}"#);
    for _ in 0..5 {
        client.propose(GROUP, incr.clone()).await.expect("a write before the wipe");
    }
    let wiped = (leader + 1) % 3;
    // Both other nodes have met its data directory (a node refuses only a
    // directory other than the one it met; one it never met it takes).
    for i in (0..3).filter(|&i| i != wiped) {
        wait_for_line(&c.log_path(i), &format!("met a peer's data directory peer={}", wiped + 1)).await;
    }
    c.kill(wiped);
    std::fs::remove_dir_all(c.data_dir(wiped)).expect("wipe the follower's data directory");
    c.start_node(wiped);

    // Its peers refuse it, and it hears why. (Which peer it talks to first
    // depends on whether it hears the leader before it campaigns.)
    wait_for_line(&c.log_path(wiped), "the peer refuses this node's messages").await;
    wait_for_line(&c.log_path(wiped), "waft admin replace-node --node").await;
    let others: Vec<usize> = (0..3).filter(|&i| i != wiped).collect();
    wait_for_any_line(&others.iter().map(|&i| c.log_path(i)).collect::<Vec<_>>(), "refusing a peer").await;
    // A slow machine may have moved the leadership meanwhile.
    let leader = c.wait_for_leader_among(GROUP, &others).await;

    // The group serves on with the other two; none of the wiped node's
    // acknowledgements count, so the leader sees it fall behind.
    let mut last = 0;
    for _ in 0..WRITES_WHILE_REFUSED {
        let w = client.propose(GROUP, incr.clone()).await.expect("a write while the wiped node is refused");
        last = w.index;
    }
    let behind = lag(&c, leader, wiped).await.expect("the leader reports the wiped node's lag");
    assert!(
        behind >= WRITES_WHILE_REFUSED,
        "the leader counts the wiped node {behind} entries behind; its acknowledgements must not count"
    );
    let status = serving(&c, wiped).await;
    assert!(status.applied_index < last, "the refused node applied {} of {last}", status.applied_index);

    // The operator replaces it. Not while it is a voter: its empty log could
    // elect a leader that lacks committed entries.
    let others: Vec<String> = others.iter().map(|&i| c.addrs[i].clone()).collect();
    let id = (wiped + 1).to_string();
    let replace = ["admin", "replace-node", "--node", &id, "--nodes", &others.join(",")];
    let (ok, out, _) = run_waft(&replace).await;
    assert!(!ok && out.contains("still a voter"), "replace-node took a voter:\n{out}");
    // Removed from the voters, replaced, added back as a learner ...
    let admin = c.client_of_all(leader);
    admin.admin(GROUP, AdminOp::RemovePeer, vec![wiped as u64 + 1], vec![]).await.expect("remove the wiped node");
    let (ok, out, err) = retry_waft(&replace).await;
    assert!(ok, "replace-node failed:\n{out}\n{err}");
    assert!(out.contains("forgot node"), "{out}");
    assert!(err.contains("learner"), "the CLI says what comes next: {err}");
    admin.admin(GROUP, AdminOp::AddLearners, vec![wiped as u64 + 1], vec![]).await.expect("add it back as a learner");

    // ... it catches up, and is promoted back to a voter.
    let caught_up = c.wait_applied(wiped, GROUP, last).await;
    assert!(caught_up.applied_index >= last);
    let promoted = admin
        .admin(GROUP, AdminOp::PromoteLearner, vec![wiped as u64 + 1], vec![])
        .await
        .expect("promote it once it caught up");
    let voters = promoted.configuration.expect("a configuration").voters;
    assert!(voters.contains(&(wiped as u64 + 1)), "a voter again: {voters:?}");
    let after = client.propose(GROUP, incr.clone()).await.expect("a write after the replacement");
    c.wait_applied(wiped, GROUP, after.index).await;
    c.check_alive();
}
