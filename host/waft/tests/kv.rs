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
/// node may ever have found its digest differ. A node that installed a
/// snapshot digests only past it, so while every node has caught up but
/// some lack the leader's latest digest, this writes on (one command a
/// poll) until the group reaches a digest point all of them compute.
async fn wait_identical(c: &mut Cluster, leader: usize, after: u64) -> u64 {
    let client = c.client_of_all(leader);
    let deadline = Instant::now() + CATCH_UP_DEADLINE;
    let mut n = 0u64;
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
        let caught_up = all.len() == 3 && all.iter().all(|g| g.applied_index == l.applied_index);
        if caught_up
            && l.digest_index > after
            && all.iter().all(|g| g.digest_index == l.digest_index)
            && all.iter().all(|g| g.digest == l.digest && !g.digest.is_empty())
        {
            return l.digest_index;
        }
        assert!(Instant::now() < deadline, "replicas did not end identical: {all:?}");
        if caught_up {
            client.propose(GROUP, common::set(&format!("settle-{n}"), n)).await.unwrap();
            n += 1;
        } else {
            tokio::time::sleep(POLL_PAUSE).await;
        }
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

/// The store a measurement below fills, in MiB (1 MiB values).
const MEASURE_STORE_MIB: u64 = 1024;
/// Writers going on throughout the measurement.
const MEASURE_WRITERS: usize = 4;
/// How long the writers run before the snapshot, for the normal gaps.
const MEASURE_BASELINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The largest gap between consecutive acknowledgements in `from..to`,
/// and the 99th percentile gap.
fn gaps(acks: &[Instant], from: Instant, to: Instant) -> (std::time::Duration, std::time::Duration) {
    let inside: Vec<Instant> = acks.iter().copied().filter(|&t| t >= from && t <= to).collect();
    let mut gaps: Vec<std::time::Duration> = inside.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    let max = gaps.last().copied().unwrap_or_default();
    let p99 = gaps.get(gaps.len() * 99 / 100).copied().unwrap_or_default();
    (max, p99)
}

/// A measurement, not a check (run it by name with `--ignored`; BENCHMARKS.md
/// has its figures): two daemons hold a kv group of 1 GiB (the probe's
/// 1 MiB values); while writers go on, the leader snapshots the store
/// (beside its apply path), then a third daemon starts empty and installs
/// that snapshot. Prints the largest gap between acknowledged writes in
/// each phase next to the normal ones, and the install's rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for BENCHMARKS.md: run with --ignored --nocapture"]
async fn measure_writes_go_on_while_a_1_gib_store_snapshots_and_a_new_node_installs_it() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let mut c = Cluster::prepare("kv-measure", 3, Spec::one(GROUP, "waft_kv_probe"));
    c.start_node(0);
    c.start_node(1);
    let leader = c.wait_for_leader_among(GROUP, &[0, 1]).await;
    let client = c.client_of_all(leader);
    let filled = Instant::now();
    for i in 0..MEASURE_STORE_MIB {
        let fill = format!(r#"{{"put_big":{{"key":"fill{i:05}","bytes":1048576}}}}"#);
        client.propose(GROUP, fill.into()).await.unwrap();
    }
    eprintln!("filled {MEASURE_STORE_MIB} MiB in {:.1} s", filled.elapsed().as_secs_f64());
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..MEASURE_WRITERS {
        let (client, stop, acks) = (c.client_of_all(leader), stop.clone(), acks.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let put = format!(r#"{{"put":{{"key":"w{w}-{n}","value":"x"}}}}"#);
                if client.propose(GROUP, put.into()).await.is_ok() {
                    acks.lock().unwrap().push(Instant::now());
                }
                n += 1;
            }
        }));
    }
    let started = Instant::now();
    // The normal gaps: a measurement window, not a wait for an event.
    tokio::time::sleep(MEASURE_BASELINE).await;
    let snap_from = Instant::now();
    let index = common::admin_snapshot(&c, leader, GROUP).await.expect("the leader snapshots");
    let snap_to = Instant::now();
    let install_from = Instant::now();
    c.start_node(2);
    let commit = c.status(leader, GROUP).await.expect("leader status").commit_index;
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    let node3 = loop {
        c.check_alive();
        if let Some(g) = c.status(2, GROUP).await
            && g.applied_index >= commit
        {
            break g;
        }
        assert!(Instant::now() < deadline, "node 3 did not catch up within 10 minutes");
        tokio::time::sleep(POLL_PAUSE).await;
    };
    let install_to = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acks = acks.lock().unwrap().clone();
    let (normal_max, normal_p99) = gaps(&acks, started, snap_from);
    let (snap_max, _) = gaps(&acks, snap_from, snap_to);
    let (install_max, _) = gaps(&acks, install_from, install_to);
    let install_secs = (install_to - install_from).as_secs_f64();
    eprintln!(
        "store {MEASURE_STORE_MIB} MiB, {MEASURE_WRITERS} writers, {} writes acknowledged ({:.0}/s)\n\
         normal: largest gap between acknowledgements {:.1} ms, p99 gap {:.1} ms\n\
         snapshot at {index}: {:.2} s (`waft admin snapshot`), largest gap meanwhile {:.1} ms\n\
         install on a new node: caught up in {install_secs:.2} s ({:.0} MiB/s of store), snapshot {} \
         installed, largest gap meanwhile {:.1} ms",
        acks.len(),
        acks.len() as f64 / started.elapsed().as_secs_f64(),
        normal_max.as_secs_f64() * 1e3,
        normal_p99.as_secs_f64() * 1e3,
        (snap_to - snap_from).as_secs_f64(),
        snap_max.as_secs_f64() * 1e3,
        MEASURE_STORE_MIB as f64 / install_secs,
        node3.snapshot_index,
        install_max.as_secs_f64() * 1e3,
    );
    assert!(node3.snapshot_index >= index, "node 3 installed the snapshot: {node3:?}");
}
