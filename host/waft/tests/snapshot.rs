//! Snapshot install between real daemons: a node that was down while the
//! leader compacted its log catches up by pulling the leader's snapshot in
//! chunks over gRPC; killed in the middle of that transfer and restarted, it
//! still ends with the same state as the others.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, Spec, text};
use waft_daemon::client::Client;
use waft_proto::client::Consistency;

const GROUP: u64 = 1;
/// Keys written while the node is down; with long keys this makes a state
/// of tens of KiB, several chunks at the throttled rate below.
const KEYS: usize = 1200;
const WRITERS: usize = 16;
/// The restarted node's pull rate the first time: slow enough that the
/// transfer takes seconds, so the test can kill it midway.
const SLOW_PULL_BYTES_PER_SEC: u64 = 8 * 1024;
const TRANSFER_DEADLINE: Duration = Duration::from_secs(60);

fn key(i: usize) -> String {
    format!("account-{i:06}-with-a-long-name-to-grow-the-state")
}

/// Sets `key(i) = i` for every i in `range`, `WRITERS` at a time.
async fn write_keys(client: &Client, range: std::ops::Range<usize>) {
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let client = client.clone();
        let range = range.clone();
        tasks.push(tokio::spawn(async move {
            for i in range.skip(w).step_by(WRITERS) {
                let cmd = format!(r#"{{"set":{{"key":"{}","value":{i}}}}}"#, key(i));
                let answer = client.propose(GROUP, Bytes::from(cmd)).await.unwrap_or_else(|e| panic!("set {i}: {e}"));
                assert_eq!(text(&answer), r#"{"success":true}"#);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_a_compacted_log_installs_a_snapshot_even_when_killed_midway() {
    let spec = Spec::one(GROUP, "waft_atomic").arg("--snapshot-margin-entries", 100);
    let mut c = Cluster::start("snapshot-install", 3, spec);
    let leader = c.wait_for_leader(GROUP).await;
    let behind = (leader + 1) % 3;
    c.kill(behind);

    let client = c.client(leader);
    write_keys(&client, 0..KEYS).await;
    let at_leader = c.status(leader, GROUP).await.expect("leader status");
    assert!(at_leader.snapshot_index > 0, "the leader snapshotted (margin 100) and compacted its log");
    assert!(at_leader.snapshot_index > c.status(behind, GROUP).await.map_or(0, |g| g.applied_index));

    // Restart it throttled: it must take a snapshot, and the pull is slow.
    c.set_extra_args(behind, &["--snapshot-pull-bytes-per-sec", &SLOW_PULL_BYTES_PER_SEC.to_string()]);
    c.start_node(behind);
    let deadline = Instant::now() + TRANSFER_DEADLINE;
    let transfer = loop {
        c.check_alive();
        if let Some(g) = c.status(behind, GROUP).await
            && let Some(t) = g.snapshot_install
            && t.bytes_done > 0
        {
            break t;
        }
        assert!(Instant::now() < deadline, "node {} never started pulling a snapshot", behind + 1);
        tokio::time::sleep(common::POLL_PAUSE).await;
    };
    assert!(
        transfer.bytes_done < transfer.bytes_total,
        "the transfer is caught midway ({} of {} bytes)",
        transfer.bytes_done,
        transfer.bytes_total
    );
    assert!(transfer.bytes_total > 4 * 4096, "a state of several chunks ({} bytes)", transfer.bytes_total);
    c.kill(behind);
    eprintln!("killed node {} after {} of {} snapshot bytes", behind + 1, transfer.bytes_done, transfer.bytes_total);

    // Meanwhile the group goes on; then the node comes back at full speed.
    write_keys(&client, KEYS..KEYS + 50).await;
    c.set_extra_args(behind, &[]);
    c.start_node(behind);
    let commit = c.status(leader, GROUP).await.expect("leader status").commit_index;
    let caught_up = c.wait_applied(behind, GROUP, commit).await;
    assert!(caught_up.snapshot_index >= transfer.index, "it installed a snapshot at least as new as the first offer");
    assert!(caught_up.snapshot_install.is_none(), "no transfer left running");

    // Same state: every key, read locally on the node that was behind.
    let reader = c.client(behind);
    for i in (0..KEYS + 50).step_by(7).chain([KEYS + 49]) {
        let q = format!(r#"{{"get":{{"key":"{}"}}}}"#, key(i));
        let answer = reader.query(GROUP, Bytes::from(q), Consistency::Stale).await.unwrap();
        assert_eq!(text(&answer), i.to_string(), "key {i} on node {}", behind + 1);
    }
    let log = std::fs::read_to_string(c.log_path(behind)).unwrap();
    assert!(log.contains("snapshot installed"), "the node's log says it installed the snapshot");
}
