//! The hostile guest (`tests/guests/hostile`) on three real `waft serve`
//! processes: it draws randomness, hashes with a randomly seeded std hasher,
//! mutates its instance from queries and the leader hook, holds memory in a
//! way a restored replica lays out differently, spams the log and stdout,
//! spins, pads its snapshots and returns huge results. Whatever it does,
//! every replica must end with byte-identical state (checked by snapshotting
//! every node and comparing the guest's `state` files), a burning entry must
//! be refused quickly without costing another group its leader, and the host
//! must bound snapshots, results and its own memory.
//!
//! Every wait is a poll with a deadline; elapsed times are printed (run with
//! `--nocapture` to see them).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    CATCH_UP_DEADLINE, Cluster, POLL_PAUSE, Spec, admin_snapshot, files_named, module, newest_snapshot_state, rss_kib,
    run_waft, text,
};
use waft_daemon::client::{Answer, Client, ClientError};
use waft_proto::client::{Consistency, ErrorCode};

const HOSTILE: u64 = 1;
const COUNTER: u64 = 2;
const NODES: usize = 3;
/// Bound on one hostile proposal: it must be refused well within this.
const HOSTILE_DEADLINE: Duration = Duration::from_secs(60);
/// The most any daemon may hold while a padded snapshot is attempted.
const RSS_KIB_MAX: u64 = 1024 * 1024;

fn bytes(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}

fn hostile_spec() -> Spec {
    Spec::one(HOSTILE, "waft_hostile")
}

/// A one-line account of a proposal's outcome, for the report.
fn describe(outcome: &Result<Answer, ClientError>) -> String {
    match outcome {
        Ok(a) => {
            let t = text(a);
            let shown = if t.len() > 80 { format!("{}... ({} bytes)", &t[..80], t.len()) } else { t };
            format!("ok at index {}: {shown}", a.index)
        }
        Err(e) => match e.refusal() {
            Some(r) => format!("refused {:?}: {}", r.code(), r.message),
            None => format!("error: {e}"),
        },
    }
}

/// The GUEST_FAULT refusal's message; panics on anything else.
fn guest_fault(what: &str, outcome: &Result<Answer, ClientError>) -> String {
    match outcome {
        Err(e) if e.code() == Some(ErrorCode::GuestFault) => e.refusal().unwrap().message.clone(),
        other => panic!("{what}: expected a GUEST_FAULT refusal, got {}", describe(other)),
    }
}

/// `{"big_result":n}` in the SDK's binary form: 0x00, then postcard (the
/// variant's index in the guest's `Command` enum, 9, then `n` as a varint).
/// The reply comes back in the same form, a plain copy of the bytes. In JSON
/// form serde_json would escape-check the reply byte by byte inside the
/// guest, which spends the entry's whole fuel at about 2 MB, long before the
/// host sees the result.
fn big_result_binary(mut n: u64) -> Bytes {
    let mut command = vec![0x00, 9];
    loop {
        let low = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            command.push(low);
            return Bytes::from(command);
        }
        command.push(low | 0x80);
    }
}

async fn propose_ok(client: &Client, group: u64, command: &str) -> Answer {
    match client.propose(group, bytes(command)).await {
        Ok(a) => a,
        Err(e) => panic!("{command} to group {group} failed: {e}"),
    }
}

// ---------------------------------------------------------------------------
// The guest's snapshot format (see tests/guests/hostile/src/lib.rs).

#[derive(Debug, Default, PartialEq, Eq)]
struct Saved {
    value: i64,
    draws: Vec<String>,
    hashes: Vec<u64>,
    seen_query_count: u64,
    leader_starts: u64,
    /// Sizes in bytes.
    reservations: Vec<u64>,
    snapshot_pad_mib: u64,
    drawn: Vec<(u64, u64)>,
    /// Bytes of the real state (what follows is filler).
    state_bytes: usize,
}

fn decode(file: &[u8]) -> Saved {
    let mut at = 0usize;
    let u64_at = |at: &mut usize| -> u64 {
        let b: [u8; 8] = file[*at..*at + 8].try_into().expect("truncated hostile state");
        *at += 8;
        u64::from_le_bytes(b)
    };
    assert_eq!(&file[..8], b"HOSTILE1", "not a hostile guest's state");
    at += 8;
    let mut s = Saved { value: u64_at(&mut at) as i64, ..Saved::default() };
    for _ in 0..u64_at(&mut at) {
        let len = u64_at(&mut at) as usize;
        s.draws.push(String::from_utf8(file[at..at + len].to_vec()).expect("draw is UTF-8"));
        at += len;
    }
    for _ in 0..u64_at(&mut at) {
        s.hashes.push(u64_at(&mut at));
    }
    s.seen_query_count = u64_at(&mut at);
    s.leader_starts = u64_at(&mut at);
    for _ in 0..u64_at(&mut at) {
        s.reservations.push(u64_at(&mut at));
    }
    s.snapshot_pad_mib = u64_at(&mut at);
    for _ in 0..u64_at(&mut at) {
        let k = u64_at(&mut at);
        s.drawn.push((k, u64_at(&mut at)));
    }
    s.state_bytes = at;
    s
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

// ---------------------------------------------------------------------------
// Replica comparison.

/// Waits until every node has committed and applied the same index of
/// `group`; returns it.
async fn wait_all_applied_equal(cluster: &mut Cluster, group: u64) -> u64 {
    let deadline = Instant::now() + CATCH_UP_DEADLINE;
    loop {
        cluster.check_alive();
        let mut seen = Vec::new();
        for i in 0..NODES {
            seen.push(cluster.status(i, group).await.map(|g| (g.commit_index, g.applied_index)));
        }
        if let Some(Some((commit, applied))) = seen.first().copied()
            && commit == applied
            && seen.iter().all(|s| *s == Some((commit, applied)))
        {
            return applied;
        }
        assert!(
            Instant::now() < deadline,
            "group {group}: nodes did not reach one applied index within {CATCH_UP_DEADLINE:?}; (commit, applied) = {seen:?}"
        );
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

/// Stops nothing (the caller has stopped writing): waits until every node
/// applied the same index, snapshots each node at it (`waft admin snapshot`)
/// and asserts the guest's `state` files are byte-identical. Returns the
/// decoded state.
async fn assert_replicas_identical(cluster: &mut Cluster, group: u64) -> Saved {
    let started = Instant::now();
    for attempt in 1..=3 {
        let applied = wait_all_applied_equal(cluster, group).await;
        let mut indexes = Vec::new();
        for i in 0..NODES {
            let status = cluster.status(i, group).await.unwrap_or_else(|| panic!("node {} has no status", i + 1));
            if status.snapshot_index == status.applied_index {
                // Already snapshotted here; asking again would wait for the
                // next entry.
                indexes.push(status.snapshot_index);
                continue;
            }
            match admin_snapshot(cluster, i, group).await {
                Ok(index) => indexes.push(index),
                Err(e) => {
                    // A snapshot may have been taken meanwhile by the node
                    // itself, making ours wait for an entry that never comes.
                    let now = cluster.status(i, group).await.map(|g| g.snapshot_index).unwrap_or(0);
                    assert!(now >= applied, "node {} could not snapshot group {group} at {applied}: {e}", i + 1);
                    indexes.push(now);
                }
            }
        }
        if indexes.iter().any(|x| *x != indexes[0]) {
            eprintln!("attempt {attempt}: snapshots at different indexes {indexes:?}; again");
            continue;
        }
        let mut files = Vec::new();
        for (i, index) in indexes.iter().enumerate() {
            let (found, path) = newest_snapshot_state(cluster, i, group)
                .unwrap_or_else(|| panic!("node {} has no snapshot state file of group {group}", i + 1));
            assert_eq!(found, *index, "node {}: newest snapshot is not the one just taken ({})", i + 1, path.display());
            files.push(std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display())));
        }
        let decoded: Vec<Saved> = files.iter().map(|f| decode(f)).collect();
        let same = files.iter().all(|f| *f == files[0]);
        if !same {
            let first_diff =
                |a: &[u8], b: &[u8]| a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
            let mut report = String::new();
            for (i, (f, d)) in files.iter().zip(&decoded).enumerate() {
                report.push_str(&format!(
                    "\n node {}: {} bytes, first difference with node 1 at {}: {d:?}",
                    i + 1,
                    f.len(),
                    first_diff(&files[0], f)
                ));
            }
            panic!("group {group}: the replicas' states at index {} differ:{report}", indexes[0]);
        }
        // For the report: what each node's query instance says, next to the
        // digest of the replicated state (informational).
        let mut digests = Vec::new();
        for i in 0..NODES {
            let answer = cluster.client(i).query(group, bytes(r#""state_digest""#), Consistency::Stale).await;
            digests.push(answer.map(|a| text(&a)).unwrap_or_else(|e| format!("error: {e}")));
        }
        let state = decoded.into_iter().next().unwrap();
        eprintln!(
            "group {group}: 3 replicas identical at index {} ({} bytes; state digest {}, query instances say {digests:?}) in {:?}",
            indexes[0],
            files[0].len(),
            fnv1a(&files[0][..state.state_bytes]),
            started.elapsed()
        );
        return state;
    }
    panic!("group {group}: could not snapshot every node at one index in 3 attempts");
}

// ---------------------------------------------------------------------------
// 1.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_draws_do_not_depend_on_batching_or_restarts() {
    let mut cluster = Cluster::start("hostile-draws", NODES, hostile_spec());
    cluster.wait_for_leader(HOSTILE).await;
    cluster.kill(2);
    cluster.wait_for_leader_among(HOSTILE, &[0, 1]).await;

    // Ten draws at once through node 1: the leader batches them as they come.
    let started = Instant::now();
    let client = cluster.client_of_all(0);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move { client.propose_plain(HOSTILE, bytes(r#"{"draw":16}"#)).await }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        let a = t.await.unwrap().unwrap_or_else(|e| panic!("draw failed: {e}"));
        answers.push((a.index, text(&a)));
    }
    answers.sort();
    eprintln!("10 concurrent draws in {:?}: {answers:?}", started.elapsed());

    // Node 3 catches up from the log, in batches of its own.
    let started = Instant::now();
    cluster.start_node(2);
    let last = answers.iter().map(|(i, _)| *i).max().unwrap();
    cluster.wait_applied(2, HOSTILE, last).await;
    eprintln!("node 3 caught up to {last} in {:?}", started.elapsed());

    let state = assert_replicas_identical(&mut cluster, HOSTILE).await;
    assert_eq!(state.draws.len(), 10);
    for (index, reply) in &answers {
        let hex = reply.trim_matches('"');
        assert!(state.draws.iter().any(|d| d == hex), "the reply of entry {index} ({hex}) is not in the state");
        assert!(state.drawn.iter().any(|(k, _)| k == index), "entry {index} is not in the drawn map");
    }
}

// 2.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_does_not_move_what_entries_draw() {
    let mut cluster = Cluster::start("hostile-query-hash", NODES, hostile_spec());
    cluster.wait_for_leader(HOSTILE).await;

    // Each query builds a randomly seeded std HashMap, on node 2 only.
    let started = Instant::now();
    let node2 = cluster.client(1);
    for _ in 0..20 {
        let a = node2.query(HOSTILE, bytes(r#""build_hashmap""#), Consistency::Stale).await.expect("build_hashmap");
        assert_eq!(text(&a), "100");
    }
    eprintln!("20 build_hashmap queries on node 2 in {:?}", started.elapsed());

    let a = propose_ok(&cluster.client_of_all(0), HOSTILE, r#"{"store_hash":42}"#).await;
    eprintln!("store_hash 42 -> {}", describe(&Ok(a.clone())));
    let state = assert_replicas_identical(&mut cluster, HOSTILE).await;
    assert_eq!(state.hashes.len(), 1);
    assert_eq!(text(&a), state.hashes[0].to_string(), "the reply is the replicated hash");
}

// 3.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_and_leader_hooks_do_not_change_state() {
    let mut cluster = Cluster::start("hostile-query-hooks", NODES, hostile_spec());
    let leader = cluster.wait_for_leader(HOSTILE).await;

    for (i, times) in [(0usize, 1usize), (1, 2), (2, 4)] {
        let client = cluster.client(i);
        let mut answers = Vec::new();
        for _ in 0..times {
            let a = client.query(HOSTILE, bytes(r#""count""#), Consistency::Stale).await.expect("count");
            answers.push(text(&a));
        }
        eprintln!("node {}: count queries answered {answers:?}", i + 1);
    }

    // One leadership change: a leader hook on the new leader.
    let started = Instant::now();
    let target = (leader + 1) % NODES;
    let addr = cluster.addrs[0].clone();
    let target_id = (target + 1).to_string();
    let (ok, out, err) = run_waft(&["admin", "--addr", &addr, "--group", "1", "transfer-leader", &target_id]).await;
    assert!(ok, "transfer-leader failed: {out}{err}");
    let new_leader = cluster.wait_for_leader(HOSTILE).await;
    assert_ne!(new_leader, leader, "leadership did not move");
    eprintln!("leadership moved from node {} to node {} in {:?}", leader + 1, new_leader + 1, started.elapsed());

    let a = propose_ok(&cluster.client_of_all(0), HOSTILE, r#""record_query_count""#).await;
    eprintln!("record_query_count -> {}", describe(&Ok(a.clone())));
    assert_eq!(text(&a), "0", "the replicated instance must never have seen a query");
    let state = assert_replicas_identical(&mut cluster, HOSTILE).await;
    assert_eq!(state.seen_query_count, 0, "queries reached the replicated state");
    assert_eq!(state.leader_starts, 0, "a leader hook reached the replicated state");
}

// 4.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_outcome_is_the_same_everywhere() {
    let mut cluster = Cluster::start("hostile-memory", NODES, hostile_spec());
    cluster.wait_for_leader(HOSTILE).await;
    let client = cluster.client_of_all(0);

    // 200 MiB grown, then a 100 MiB hole: the replicas that ran these keep
    // the hole; one restored from a snapshot holds only 100 MiB.
    assert_eq!(text(&propose_ok(&client, HOSTILE, r#"{"reserve":100}"#).await), "100");
    assert_eq!(text(&propose_ok(&client, HOSTILE, r#"{"reserve":100}"#).await), "200");
    let freed = propose_ok(&client, HOSTILE, r#"{"free":0}"#).await;
    assert_eq!(text(&freed), "100");

    cluster.wait_applied(2, HOSTILE, freed.index).await;
    let started = Instant::now();
    let index = admin_snapshot(&cluster, 2, HOSTILE).await.unwrap_or_else(|e| panic!("node 3 could not snapshot: {e}"));
    eprintln!("node 3 snapshotted at {index} in {:?}", started.elapsed());
    assert!(index >= freed.index);
    cluster.kill(2);
    let started = Instant::now();
    cluster.start_node(2);
    cluster.wait_applied(2, HOSTILE, freed.index).await;
    cluster.wait_for_leader(HOSTILE).await;
    eprintln!("node 3 restarted from its snapshot in {:?}", started.elapsed());

    let started = Instant::now();
    let outcome = tokio::time::timeout(HOSTILE_DEADLINE, client.propose(HOSTILE, bytes(r#"{"reserve":140}"#)))
        .await
        .unwrap_or_else(|_| panic!("reserve 140 got no answer within {HOSTILE_DEADLINE:?}"));
    eprintln!("reserve 140 -> {} in {:?}", describe(&outcome), started.elapsed());
    match &outcome {
        Ok(_) => {}
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::GuestFault), "reserve 140: {}", describe(&outcome)),
    }
    for i in 0..NODES {
        eprintln!("node {} RSS {:?} KiB", i + 1, cluster.pid(i).and_then(rss_kib));
    }
    let state = assert_replicas_identical(&mut cluster, HOSTILE).await;
    eprintln!("replicated reservations (bytes): {:?}", state.reservations);
    let expected = if outcome.is_ok() { 3 } else { 2 };
    assert_eq!(state.reservations.len(), expected, "the state does not match the outcome the client saw");
}

// 5.

/// The one burn that may also succeed: its lines are long but few, so a host
/// that copies only a bounded head of each line does bounded work for it.
const LOG_16_MIB: &str = "log_spam 100 calls x 16 MiB";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burning_guest_costs_other_groups_no_leader() {
    let spec =
        Spec { groups: vec![(HOSTILE, module("waft_hostile")), (COUNTER, module("waft_counter"))], args: Vec::new() };
    let mut cluster = Cluster::start("hostile-burn", NODES, spec);
    cluster.wait_for_leader(HOSTILE).await;
    let counter_leader = cluster.wait_for_leader(COUNTER).await;
    let counter_term = cluster.status(counter_leader, COUNTER).await.expect("status").term;
    eprintln!("group {COUNTER}: leader node {} in term {counter_term}", counter_leader + 1);

    // Background load on the counter group.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let writer = {
        let client = cluster.client_of_all(counter_leader);
        let (stop, acked, slowest, failures) = (stop.clone(), acked.clone(), slowest.clone(), failures.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                match client.propose(COUNTER, bytes(r#"{"incr":1}"#)).await {
                    Ok(_) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        let took = sent.elapsed();
                        let mut s = slowest.lock().unwrap();
                        *s = (*s).max(took);
                    }
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                }
            }
        })
    };

    let hostile = cluster.client_of_all(0);
    let burns = [
        ("log_spam 2M calls x 1 byte", r#"{"log_spam":{"calls":2000000,"bytes":1}}"#.to_string()),
        // Building a 100 MiB string alone spends more than an entry's fuel
        // (copies inside the guest are metered per instruction), so this one
        // is refused before it logs anything ...
        ("log_spam 100 calls x 100 MiB", format!(r#"{{"log_spam":{{"calls":100,"bytes":{}}}}}"#, 100u64 << 20)),
        // ... and this one is cheap to build and hands the host 1.6 GiB of
        // lines: the host must bound its work (copy only a bounded head of
        // each line, or charge for every byte). Either outcome is fine
        // (see LOG_16_MIB), as long as it comes quickly.
        (LOG_16_MIB, format!(r#"{{"log_spam":{{"calls":100,"bytes":{}}}}}"#, 16u64 << 20)),
        ("print_spam 2M calls x 1 byte", r#"{"print_spam":{"calls":2000000,"bytes":1}}"#.to_string()),
        ("spin", r#""spin""#.to_string()),
    ];
    let mut outcomes = Vec::new();
    for (what, command) in &burns {
        let started = Instant::now();
        let outcome = tokio::time::timeout(HOSTILE_DEADLINE, hostile.propose(HOSTILE, bytes(command))).await;
        let took = started.elapsed();
        match &outcome {
            Ok(o) => eprintln!("{what}: {} after {took:?}", describe(o)),
            Err(_) => eprintln!("{what}: NO ANSWER within {HOSTILE_DEADLINE:?}"),
        }
        outcomes.push((what, outcome, took));
        cluster.check_alive();
    }

    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let acked = acked.load(Ordering::Relaxed);
    let failures = failures.lock().unwrap().clone();
    eprintln!(
        "group {COUNTER}: {acked} writes acknowledged, {} failed, slowest {:?}",
        failures.len(),
        *slowest.lock().unwrap()
    );

    for (what, outcome, took) in &outcomes {
        let outcome = outcome.as_ref().unwrap_or_else(|_| panic!("{what}: no answer within {HOSTILE_DEADLINE:?}"));
        if **what == LOG_16_MIB && outcome.is_ok() {
            continue;
        }
        let message = guest_fault(what, outcome);
        assert!(message.to_lowercase().contains("fuel"), "{what}: refused after {took:?}, but not for fuel: {message}");
    }

    // No leadership change in the counter group, on any node.
    for i in 0..NODES {
        let g = cluster.status(i, COUNTER).await.unwrap_or_else(|| panic!("node {} has no status", i + 1));
        assert_eq!(g.term, counter_term, "node {}: group {COUNTER}'s term moved", i + 1);
        assert_eq!(g.leader_id, (counter_leader + 1) as u64, "node {}: group {COUNTER}'s leader changed", i + 1);
    }
    assert!(failures.is_empty(), "group {COUNTER}: writes failed: {failures:?}");
    assert!(acked > 0, "group {COUNTER}: no write was acknowledged");
    let value = cluster
        .client(counter_leader)
        .query(COUNTER, bytes(r#""get""#), Consistency::Linearizable)
        .await
        .expect("counter get");
    assert_eq!(text(&value), acked.to_string(), "group {COUNTER}: every acknowledged write applied once");

    let state = assert_replicas_identical(&mut cluster, HOSTILE).await;
    assert_eq!(state, Saved { state_bytes: state.state_bytes, ..Saved::default() }, "a refused entry left changes");
}

// 6.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_snapshot_is_refused_and_nothing_balloons() {
    let mut cluster = Cluster::start("hostile-huge-snapshot", NODES, hostile_spec());
    cluster.wait_for_leader(HOSTILE).await;
    let client = cluster.client_of_all(0);
    assert_eq!(text(&propose_ok(&client, HOSTILE, r#"{"pad_snapshot":300}"#).await), "300");
    let applied = wait_all_applied_equal(&mut cluster, HOSTILE).await;

    // Sample every daemon's RSS while the snapshots are attempted.
    let pids: Vec<u32> = (0..NODES).map(|i| cluster.pid(i).expect("running")).collect();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut max = vec![0u64; pids.len()];
            while sampling.load(Ordering::Relaxed) {
                for (m, pid) in max.iter_mut().zip(&pids) {
                    *m = (*m).max(rss_kib(*pid).unwrap_or(0));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            max
        })
    };
    let mut results = Vec::new();
    for i in 0..NODES {
        let before = cluster.status(i, HOSTILE).await.expect("status").snapshot_index;
        let started = Instant::now();
        let result = admin_snapshot(&cluster, i, HOSTILE).await;
        let after = cluster.status(i, HOSTILE).await.expect("status").snapshot_index;
        eprintln!(
            "node {}: snapshot of a 300 MiB-padded state at {applied}: {result:?} after {:?}; snapshot index {before} -> {after}",
            i + 1,
            started.elapsed()
        );
        results.push((result, before, after));
    }
    sampling.store(false, Ordering::Relaxed);
    let max_rss = sampler.await.unwrap();
    eprintln!("peak RSS (KiB) while snapshotting: {max_rss:?}");
    let biggest =
        files_named(&cluster.root, "state").iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).max();
    eprintln!("largest snapshot state file left on disk: {biggest:?} bytes");
    cluster.check_alive();

    for (i, (result, before, after)) in results.iter().enumerate() {
        assert!(
            result.is_err() || after == before,
            "node {}: a snapshot of more than 256 MiB was taken ({result:?}, index {before} -> {after})",
            i + 1
        );
    }
    for (i, kib) in max_rss.iter().enumerate() {
        assert!(*kib < RSS_KIB_MAX, "node {} held {kib} KiB", i + 1);
    }

    // Still serving; then a normal snapshot again.
    assert_eq!(text(&propose_ok(&client, HOSTILE, r#"{"incr":1}"#).await), "1");
    assert_eq!(text(&propose_ok(&client, HOSTILE, r#"{"pad_snapshot":0}"#).await), "0");
    let state = assert_replicas_identical(&mut cluster, HOSTILE).await;
    assert_eq!((state.value, state.snapshot_pad_mib), (1, 0));
}

// 8.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_result_is_refused_with_a_clear_error() {
    let mut cluster = Cluster::start("hostile-big-result", NODES, hostile_spec());
    cluster.wait_for_leader(HOSTILE).await;
    let client = cluster.client_of_all(0);

    let started = Instant::now();
    let outcome = tokio::time::timeout(HOSTILE_DEADLINE, client.propose(HOSTILE, big_result_binary(20_000_000)))
        .await
        .unwrap_or_else(|_| panic!("big_result got no answer within {HOSTILE_DEADLINE:?}"));
    eprintln!("big_result 20 MB -> {} in {:?}", describe(&outcome), started.elapsed());
    let message = guest_fault("big_result 20 MB", &outcome);
    assert!(message.to_lowercase().contains("result"), "the refusal does not name the result limit: {message}");

    assert_eq!(text(&propose_ok(&client, HOSTILE, r#"{"incr":1}"#).await), "1");
    let state = assert_replicas_identical(&mut cluster, HOSTILE).await;
    assert_eq!(state.value, 1);
}
