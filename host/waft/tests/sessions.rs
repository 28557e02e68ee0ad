//! Exactly-once client sessions between real daemons. A command committed
//! just before its leader is SIGKILLed, whose reply the client never read, is
//! retried by the client library through the new leader and applies once
//! (the counter proves it); the same when a follower restarted from a
//! snapshot taken while the session was open. Session limits and expiry
//! reach clients as clear errors, and a client that opens sessions without
//! end cannot make the group's memory grow.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, Spec, files_named, rss_kib, text};
use waft_daemon::client::Session;
use waft_proto::client::{Consistency, ErrorCode, ProposeRequest};

const GROUP: u64 = 1;
const WAIT: Duration = Duration::from_secs(30);

fn incr(n: i64) -> Bytes {
    Bytes::from(format!(r#"{{"incr":{n}}}"#))
}

/// The counter's value on node `i`, from its own applied state (`None`
/// while the node does not answer, e.g. just restarted).
async fn try_value(c: &Cluster, i: usize) -> Option<String> {
    let answer = c.client(i).query(GROUP, Bytes::from_static(br#""get""#), Consistency::Stale).await.ok()?;
    Some(text(&answer))
}

async fn value(c: &Cluster, i: usize) -> String {
    try_value(c, i).await.unwrap_or_else(|| panic!("node {} does not answer", i + 1))
}

/// Waits until node `i`'s counter reads `want`.
async fn wait_value(c: &mut Cluster, i: usize, want: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        c.check_alive();
        let now = try_value(c, i).await;
        if now.as_deref() == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "node {} never reached {want} (at {now:?})", i + 1);
        tokio::time::sleep(common::POLL_PAUSE).await;
    }
}

/// Sends `session`'s next command over raw gRPC to node `at` and abandons
/// the call once every node in `witnesses` has applied it (its counter reads
/// `applied_value`): the command is committed on a majority, and whatever
/// reply the leader sent is never read. Returns the leader's commit index
/// after it, which covers the command's entry.
async fn send_and_lose_the_reply(
    c: &mut Cluster,
    at: usize,
    session: &Session,
    delta: i64,
    witnesses: &[usize],
    applied_value: &str,
) -> u64 {
    let seq = session.next_sequence();
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", c.addrs[at])).unwrap().connect().await.unwrap();
    let mut raw = waft_proto::client_client(channel);
    let req = ProposeRequest {
        group: GROUP,
        command: incr(delta),
        session_id: session.id(),
        sequence: seq,
        lowest_unacked_sequence: seq,
    };
    let call = tokio::spawn(async move { raw.propose(req).await });
    for &i in witnesses {
        wait_value(c, i, applied_value).await;
    }
    let commit = c.status(at, GROUP).await.expect("leader status").commit_index;
    call.abort();
    commit
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_lost_with_its_leader_is_retried_through_the_new_one_and_applies_once() {
    let mut c = Cluster::start("session-lost-reply", 3, Spec::one(GROUP, "waft_counter"));
    let leader = c.wait_for_leader(GROUP).await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    // The client knows every node and starts at the leader, which it remembers.
    let client = c.client_of_all(leader);
    let session = client.open_session(GROUP).await.unwrap();
    assert_eq!(text(&session.propose(incr(1)).await.unwrap()), "1");

    // Command 2 (+10) commits on every node; the client never reads its reply.
    send_and_lose_the_reply(&mut c, leader, &session, 10, &followers, "11").await;
    c.kill(leader);
    let killed_at = Instant::now();

    // The library sends command 2 again: its remembered leader is gone, so it
    // moves on, follows the NOT_LEADER hints to the new leader, and gets the
    // saved result instead of a second application.
    let answer = session.propose(incr(10)).await.unwrap();
    let retried_in = killed_at.elapsed();
    assert_eq!(text(&answer), "11", "the first application's result");
    assert!(answer.duplicate, "answered from the saved result");
    let new_leader = c.wait_for_leader(GROUP).await;
    assert_ne!(new_leader, leader);
    eprintln!("leader node {} killed; the retry was answered by the new leader after {retried_in:?}", leader + 1);
    // The next command moves the counter by its own delta only: +10 applied once.
    assert_eq!(text(&session.propose(incr(1)).await.unwrap()), "12");
    for &i in &followers {
        wait_value(&mut c, i, "12").await;
    }
    // The killed node comes back, replays its log, and agrees.
    c.start_node(leader);
    wait_value(&mut c, leader, "12").await;
    session.close().await.unwrap();
    let status = c.status(new_leader, GROUP).await.unwrap();
    assert_eq!(status.sessions_open, 0, "the closed session is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_restarted_from_a_snapshot_with_the_session_open_deduplicates_the_retry() {
    let spec = Spec::one(GROUP, "waft_counter").arg("--snapshot-margin-entries", 20);
    let mut c = Cluster::start("session-snapshot", 3, spec);
    let leader = c.wait_for_leader(GROUP).await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let restarted = followers[0];
    let client = c.client_of_all(leader);
    let session = client.open_session(GROUP).await.unwrap();
    assert_eq!(text(&session.propose(incr(1)).await.unwrap()), "1");
    let at = send_and_lose_the_reply(&mut c, leader, &session, 100, &followers, "101").await;

    // Other writes (another client's session) make every node snapshot, and
    // compact its log, past the command while its session stays open with
    // the command's result saved.
    let filler = c.client(leader);
    let mut expect = 101;
    loop {
        for _ in 0..25 {
            filler.propose(GROUP, incr(1)).await.unwrap();
            expect += 1;
        }
        let mut snapshotted = true;
        for i in 0..3 {
            snapshotted &= c.status(i, GROUP).await.is_some_and(|g| g.snapshot_index >= at);
        }
        if snapshotted {
            break;
        }
        assert!(expect < 1_000, "no snapshot past index {at}");
    }
    let expect = expect.to_string();
    filler.close_sessions().await.unwrap();

    // The follower restarts from its data: its snapshot (with the session
    // table) and the log after it, which no longer holds the command.
    c.kill(restarted);
    c.start_node(restarted);
    let commit = c.status(leader, GROUP).await.unwrap().commit_index;
    let status = c.wait_applied(restarted, GROUP, commit).await;
    assert_eq!(value(&c, restarted).await, expect);
    assert!(status.snapshot_index >= at, "restarted from a snapshot covering the command");
    assert_eq!(status.sessions_open, 1, "the snapshot holds the open session");

    // Its leader dies; the restarted follower and the other one carry on,
    // and the restarted one is made the leader that answers the retry (by a
    // transfer when the other won the election), so the retry is settled
    // from the session table it restored from its snapshot.
    c.kill(leader);
    let mut new_leader = c.wait_for_leader(GROUP).await;
    if new_leader != restarted {
        let admin = c.client(new_leader);
        let r =
            admin.admin(GROUP, waft_proto::admin::AdminOp::TransferLeader, vec![restarted as u64 + 1], vec![]).await;
        assert_eq!(r.unwrap().leader_id, restarted as u64 + 1);
        new_leader = c.wait_for_leader(GROUP).await;
    }
    assert_eq!(new_leader, restarted, "the node restored from the snapshot leads");
    let answer = session.propose(incr(100)).await.unwrap();
    assert_eq!((text(&answer).as_str(), answer.duplicate), ("101", true));
    eprintln!(
        "node {} restarted from snapshot {} (command at <= {at}) and, leading, answered the retry from its table",
        restarted + 1,
        status.snapshot_index,
    );
    // Both survivors applied the retried entry and skipped it alike: the
    // one restored from a snapshot deduplicated exactly as the other.
    let commit = c.status(new_leader, GROUP).await.unwrap().commit_index;
    for &i in &followers {
        c.wait_applied(i, GROUP, commit).await;
        assert_eq!(value(&c, i).await, expect, "node {}: +100 applied once", i + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_limits_and_expiry_reach_clients_as_clear_errors() {
    let spec = Spec::one(GROUP, "waft_counter").arg("--sessions-open-max", 3).arg("--session-idle-timeout-ms", 1500);
    let mut c = Cluster::start("session-limits", 3, spec);
    let leader = c.wait_for_leader(GROUP).await;
    let client = c.client_of_all(leader);
    let a = client.open_session(GROUP).await.unwrap();
    let b = client.open_session(GROUP).await.unwrap();
    let _c3 = client.open_session(GROUP).await.unwrap();

    // The table is full: a clear refusal, and nobody's session is evicted.
    let e = client.open_session(GROUP).await.err().expect("a fourth session is refused");
    let refusal = e.refusal().expect("a refusal from the group");
    assert_eq!(refusal.code(), ErrorCode::SessionLimit, "{e}");
    assert!(refusal.message.contains("session table is full") && refusal.message.contains("retry later"), "{e}");
    assert!(refusal.retry_after_ms > 0, "{e}");
    let waft = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_waft")).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let addr = c.addrs[leader].clone();
    let (ok, _, err) = waft(&["propose", "--addr", &addr, "--group", "1", r#"{"incr":1}"#]);
    assert!(!ok && err.contains("SESSION_LIMIT") && err.contains("session table is full"), "the CLI says why: {err}");
    let (ok, out, err) = waft(&["propose", "--addr", &addr, "--group", "1", "--no-session", r#"{"incr":1}"#]);
    assert!(ok, "a session-less command needs no session: {err}");
    assert_eq!(out, "1");
    let commit = c.status(leader, GROUP).await.unwrap().commit_index;
    for i in 0..3 {
        c.wait_applied(i, GROUP, commit).await;
        assert_eq!(c.status(i, GROUP).await.unwrap().sessions_open, 3, "node {}", i + 1);
    }
    let (ok, json, err) = waft(&["status", "--addr", &addr, "--json"]);
    assert!(ok && json.contains(r#""sessions_open":3"#), "waft status shows the open sessions: {json} {err}");

    // Closing one makes room; the CLI's session comes and goes.
    b.close().await.unwrap();
    let (ok, out, err) = waft(&["propose", "--addr", &addr, "--group", "1", r#"{"incr":1}"#]);
    assert!(ok, "waft propose: {err}");
    assert_eq!(out, "2");
    assert_eq!(c.status(leader, GROUP).await.unwrap().sessions_open, 2, "waft propose closed its session");

    // A default session (Client::propose) and a session kept alive.
    let auto = c.client_of_all(leader);
    assert_eq!(text(&auto.propose(GROUP, incr(1)).await.unwrap()), "3");
    let kept = client.open_session(GROUP).await.err().expect("full again: a, c3 and auto's");
    assert_eq!(kept.code(), Some(ErrorCode::SessionLimit));

    // Idle past the timeout (by the leader's stamps): `a` expires. Its
    // client is told to open a new session; `auto` reopens by itself, since
    // its refused command was the only copy sent.
    let idle_until = Instant::now() + Duration::from_millis(1_800);
    while Instant::now() < idle_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = a.propose(incr(1)).await.expect_err("an expired session is refused");
    let refusal = e.refusal().expect("a refusal from the group");
    assert_eq!(refusal.code(), ErrorCode::SessionExpired, "{e}");
    assert!(refusal.message.contains("open a new session"), "{e}");
    assert_eq!(text(&auto.propose(GROUP, incr(1)).await.unwrap()), "4", "reopened and applied once");
    let a2 = client.open_session(GROUP).await.unwrap();
    assert_eq!(text(&a2.propose(incr(1)).await.unwrap()), "5");

    // Keep-alives hold a session open across several timeouts.
    let until = Instant::now() + Duration::from_millis(3_500);
    while Instant::now() < until {
        a2.keep_alive().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(text(&a2.propose(incr(1)).await.unwrap()), "6");
    c.check_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_sessions_without_end_keeps_the_table_and_memory_bounded() {
    const OPEN_MAX: u64 = 64;
    const OPENERS: usize = 8;
    const RUN: Duration = Duration::from_secs(12);
    let spec = Spec::one(GROUP, "waft_counter")
        .arg("--sessions-open-max", OPEN_MAX)
        .arg("--session-idle-timeout-ms", 1000)
        .arg("--snapshot-margin-entries", 500);
    let mut c = Cluster::start("session-flood", 3, spec);
    let leader = c.wait_for_leader(GROUP).await;
    let pid = c.pid(leader).unwrap();

    // Openers that never close what they open, each with a fresh nonce.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..OPENERS {
        let client = c.client_of_all(leader + w);
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut opened, mut refused) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client.open_session(GROUP).await {
                    Ok(s) => {
                        opened += 1;
                        // Some of them also leave a saved result behind.
                        if opened % 4 == 0 {
                            s.propose(Bytes::from_static(br#"{"incr":1}"#)).await.unwrap();
                        }
                    }
                    Err(e) if e.code() == Some(ErrorCode::SessionLimit) => {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("opener {w}: {e}"),
                }
            }
            (opened, refused)
        }));
    }
    let started = Instant::now();
    let mut rss_start = None;
    let mut rss_max = 0;
    let mut open_max_seen = 0;
    while started.elapsed() < RUN {
        c.check_alive();
        for i in 0..3 {
            if let Some(g) = c.status(i, GROUP).await {
                assert!(g.sessions_open <= OPEN_MAX, "node {}: {} sessions open", i + 1, g.sessions_open);
                open_max_seen = open_max_seen.max(g.sessions_open);
            }
        }
        let rss = rss_kib(pid).unwrap_or(0);
        // Memory after the first seconds (caches warm), against the peak after.
        if started.elapsed() > Duration::from_secs(3) {
            rss_start.get_or_insert(rss);
            rss_max = rss_max.max(rss);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut opened, mut refused) = (0, 0);
    for t in tasks {
        let (o, r) = t.await.unwrap();
        opened += o;
        refused += r;
    }
    let rss_start = rss_start.unwrap_or(0);
    let status = c.status(leader, GROUP).await.unwrap();
    let section_bytes: Vec<u64> = files_named(&c.data_dir(leader), "sessions")
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok().map(|m| m.len()))
        .collect();
    eprintln!(
        "{opened} sessions opened and {refused} refused in {RUN:?}; at most {open_max_seen} open at once \
         (limit {OPEN_MAX}); leader RSS {rss_start} KiB after 3 s, peak {rss_max} KiB; log applied to {}, \
         snapshot at {}; session sections on disk: {section_bytes:?} bytes",
        status.applied_index, status.snapshot_index
    );
    assert!(opened > OPEN_MAX, "expiry made room for new sessions ({opened} opened)");
    assert!(refused > 0, "the limit was reached");
    assert!(status.snapshot_index > 0, "snapshots were taken while sessions churned");
    // A full table's section: 64 sessions of at most 45 bytes, a saved
    // result each, a header.
    assert!(section_bytes.iter().all(|&n| n < 16 * 1024), "{section_bytes:?}");
    assert!(
        rss_max < rss_start + 64 * 1024,
        "leader memory grew from {rss_start} KiB to {rss_max} KiB while sessions churned"
    );
}
