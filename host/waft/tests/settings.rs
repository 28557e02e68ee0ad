//! Group settings on real `waft serve` processes: a node's own flags only
//! found a group, the group's settings (its first leader's, then whatever
//! `waft admin set-group` changes through the log) win on every replica and
//! `waft status` shows them; a node that joins later runs the group's
//! module, not the one named on its command line.
//!
//! Every wait is a poll with a deadline.

mod common;

use std::time::Instant;

use bytes::Bytes;
use common::{
    CATCH_UP_DEADLINE, Cluster, POLL_PAUSE, Spec, admin_snapshot, module, newest_snapshot_state, run_waft, text,
};
use waft_proto::client::{Consistency, ErrorCode, GroupSettings, GroupStatus};

/// Times the three snapshots are taken again to meet at one index.
const SNAPSHOT_ROUNDS_MAX: usize = 20;
const GROUP: u64 = 1;
const MIB: u64 = 1 << 20;

fn bytes(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}

/// Waits until node `i` reports `group`'s settings bound (index > 0) at
/// `index` or later; returns its status.
async fn wait_settings(c: &mut Cluster, i: usize, index: u64) -> GroupStatus {
    let deadline = Instant::now() + CATCH_UP_DEADLINE;
    loop {
        c.check_alive();
        if let Some(g) = c.status(i, GROUP).await
            && g.settings_index >= index.max(1)
        {
            return g;
        }
        assert!(Instant::now() < deadline, "node {} did not bind settings of index {index}", i + 1);
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

fn settings(g: &GroupStatus) -> GroupSettings {
    g.settings.expect("status carries the settings")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_settings_win_over_node_flags_and_change_through_the_log() {
    let mut c = Cluster::prepare("settings-win", 3, Spec::one(GROUP, "waft_hostile"));
    // Node 3 would refuse a third session and burn less fuel, by its flags.
    c.set_extra_args(2, &["--sessions-open-max", "2"]);
    c.start_node(0);
    c.start_node(1);
    let leader = c.wait_for_leader_among(GROUP, &[0, 1]).await;
    let founded = wait_settings(&mut c, leader, 1).await;
    assert_eq!(settings(&founded).sessions_open_max, 10_000, "the leader founded with its defaults");
    c.start_node(2);
    let joined = wait_settings(&mut c, 2, founded.settings_index).await;
    assert_eq!(settings(&joined), settings(&founded), "node 3 runs the group's settings, not its flags");
    assert_eq!(joined.settings_index, founded.settings_index);

    // Three sessions open, as the group allows (node 3's flag said 2).
    let client = c.client_of_all(2);
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(client.open_session(GROUP).await.expect("a session opens"));
    }

    // A reservation of 40 MiB fits the default 256 MiB.
    let ok = client.propose(GROUP, bytes(r#"{"reserve":40}"#)).await.expect("reserve under the default limit");
    assert_eq!(text(&ok), "40");

    // The operator lowers the memory limit through node 3 (a follower).
    // The state holds 40 MiB, more than 8 MiB (16 MiB as the runtime
    // decides limit hits): refused at apply, identically, nothing changed.
    let addr = c.addrs[2].clone();
    let (good, out, err) =
        run_waft(&["admin", "set-group", "--addr", &addr, "--group", "1", "--set", "memory_bytes_max=8388608"]).await;
    assert!(!good, "a limit the state breaks is refused: {out}");
    assert!(err.contains("refused"), "{err}");
    // Free it, then the same change goes through.
    client.propose(GROUP, bytes(r#"{"free":0}"#)).await.expect("free");
    let (good, out, err) = run_waft(&[
        "admin",
        "set-group",
        "--addr",
        &addr,
        "--group",
        "1",
        "--set",
        "memory_bytes_max=8388608",
        "--set",
        "sessions_open_max=5",
    ])
    .await;
    assert!(good, "set-group failed: {err}");
    assert!(out.contains("memory_bytes_max = 8388608") && out.contains("sessions_open_max = 5"), "{out}");

    // Now 40 MiB is refused as a memory fault, by the group's limit, and a
    // fourth session is refused by the group's table limit.
    let refused = client.propose(GROUP, bytes(r#"{"reserve":40}"#)).await;
    match &refused {
        Err(e) if e.code() == Some(ErrorCode::GuestFault) => {
            assert!(e.to_string().contains("memory"), "{e}");
        }
        other => panic!("expected a memory fault, got {other:?}"),
    }
    // (The client holds a session of its own for its proposals.)
    let refusal = loop {
        match client.open_session(GROUP).await {
            Ok(s) if sessions.len() < 10 => sessions.push(s),
            Ok(_) => panic!("ten sessions opened past sessions_open_max = 5"),
            Err(e) => break e,
        }
    };
    assert_eq!(refusal.code(), Some(ErrorCode::SessionLimit), "{refusal}");

    // Every replica shows the same settings since the same index, a
    // restarted one included, and holds the same state.
    let leader = c.wait_for_leader(GROUP).await;
    let last = c.status(leader, GROUP).await.unwrap().commit_index;
    let changed = c.wait_applied(leader, GROUP, last).await;
    assert_eq!(settings(&changed).memory_bytes_max, 8 * MIB);
    assert_eq!(changed.sessions_open, 5, "the table filled up to the group's limit");
    c.kill(1);
    c.start_node(1);
    // (Compared as the guest's snapshot files: a query on the leader reads
    // an instance its leader hook touched, which this guest's digest shows.)
    for i in 0..3 {
        let g = c.wait_applied(i, GROUP, last).await;
        assert_eq!((settings(&g), g.settings_index), (settings(&changed), changed.settings_index), "node {}", i + 1);
    }
    // Snapshots are compared at one index. An entry may still commit between
    // two nodes' snapshots (a new leader's no-op after the restart, a
    // session's keep-alive), so take all three again until their indexes
    // agree.
    let mut states = Vec::new();
    for _ in 0..SNAPSHOT_ROUNDS_MAX {
        states.clear();
        for i in 0..3 {
            let at = admin_snapshot(&c, i, GROUP).await.expect("snapshot");
            let (index, path) = newest_snapshot_state(&c, i, GROUP).expect("a snapshot");
            assert_eq!(index, at);
            states.push((index, std::fs::read(path).unwrap()));
        }
        if states.iter().all(|s| s.0 == states[0].0) {
            break;
        }
    }
    let indexes: Vec<u64> = states.iter().map(|s| s.0).collect();
    assert!(indexes.iter().all(|&i| i == indexes[0]), "no three snapshots at one index: {indexes:?}");
    assert!(states.iter().all(|s| *s == states[0]), "the replicas' snapshots at index {} differ", indexes[0]);

    // `waft status --json` shows them.
    let (good, out, err) = run_waft(&["status", "--addr", &addr, "--group", "1", "--json"]).await;
    assert!(good, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["groups"][0]["settings"]["memory_bytes_max"], serde_json::json!(8 * MIB));
    assert_eq!(json["groups"][0]["settings_index"], serde_json::json!(changed.settings_index));

    // A name that is no setting, and a value out of bounds, are refused
    // before anything reaches the log.
    let (good, _, err) = run_waft(&["admin", "set-group", "--addr", &addr, "--group", "1", "--set", "fuel=5"]).await;
    assert!(!good && err.contains("fuel_per_entry"), "{err}");
    let (good, _, err) =
        run_waft(&["admin", "set-group", "--addr", &addr, "--group", "1", "--set", "fuel_per_entry=1"]).await;
    assert!(!good && err.contains("fuel_per_entry = 1 is outside"), "{err}");
    drop(sessions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_runs_the_groups_module_not_the_one_it_was_started_with() {
    let spec = Spec { groups: Vec::new(), args: vec!["--initial-voters".into(), "1,2".into()] };
    let mut c = Cluster::prepare("settings-joiner", 3, spec);
    let counter = module("waft_counter");
    let doubling = module("waft_counter_doubling");
    for i in 0..2 {
        c.set_extra_args(i, &["--group", &format!("{GROUP}={}", counter.display())]);
    }
    c.set_extra_args(2, &["--group", &format!("{GROUP}={}", doubling.display())]);
    for i in 0..3 {
        c.start_node(i);
    }
    let leader = c.wait_for_leader_among(GROUP, &[0, 1]).await;
    let client = c.client_of_all(leader);
    for _ in 0..5 {
        client.propose(GROUP, bytes(r#"{"incr":1}"#)).await.expect("incr");
    }
    let addr = c.addrs[leader].clone();
    let (good, _, err) = run_waft(&["admin", "add-peer", "3", "--addr", &addr, "--group", "1"]).await;
    assert!(good, "add-peer failed: {err}");
    let after = client.propose(GROUP, bytes(r#"{"incr":1}"#)).await.expect("incr");
    assert_eq!(text(&after), "6");
    let g = c.wait_applied(2, GROUP, after.index).await;
    let founder = c.status(leader, GROUP).await.unwrap();
    assert_eq!(g.module_hash, founder.module_hash, "node 3 runs the group's module");
    let value = c.client(2).query(GROUP, bytes(r#""get""#), Consistency::Stale).await.unwrap();
    assert_eq!(text(&value), "6", "node 3 replayed every increment under the counter, not the doubling one");
    let log = std::fs::read_to_string(c.log_path(2)).unwrap();
    assert!(log.contains("group founded: module and settings bound"), "node 3's log says it switched");
}
