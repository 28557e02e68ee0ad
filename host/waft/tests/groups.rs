//! Groups created at run time on a live cluster of real daemons: three nodes
//! start with the counter as group 1; `waft admin create-group` adds group 2
//! running the atomic example (padded to a few MiB) while group 1 takes
//! writes. Group 2 then takes writes and linearizable reads through every
//! node; a repeat of the create is OK; a create with another module, garbage,
//! a core module or a component of another world is refused and changes
//! nothing. Then a node is SIGKILLed and restarted without naming group 2
//! on its command line: it serves group 2 again, with its data. Finally the
//! created group takes a deploy, and a node that created it stops cleanly.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, Spec, get, groups_of, metric, module, run_waft, set, text};
use waft_daemon::client::{self, ClientError};
use waft_proto::client::{Consistency, ErrorCode};

const COUNTER: u64 = 1;
const ATOMIC: u64 = 2;
/// A group no create may leave behind.
const NEVER: u64 = 3;
/// The created group's module is the atomic example padded to this size,
/// far above one message: the CLI uploads it to the node it asks, and the
/// other voters pull it from there.
const PADDED_MODULE_BYTES: usize = 20 * 1024 * 1024;
/// Bound on waiting for a restarted node to serve its groups again.
const RESTART_DEADLINE: Duration = Duration::from_secs(30);

fn refusal(e: ClientError) -> waft_proto::client::Error {
    match e {
        ClientError::Refused(r) => r,
        ClientError::GaveUp { last, .. } => refusal(*last),
        other => panic!("expected a refusal from the server, got {other}"),
    }
}

fn leb128(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// `component` with a custom section appended that brings it to `total`
/// bytes: the same state machine, a different (larger) module.
fn padded(component: &[u8], total: usize) -> Vec<u8> {
    let name = b"waft-test-padding";
    let payload_len = total - component.len() - name.len() - 8;
    let mut section = Vec::new();
    leb128(name.len(), &mut section);
    section.extend_from_slice(name);
    section.resize(section.len() + payload_len, 0);
    let mut out = component.to_vec();
    out.push(0); // custom section id
    leb128(section.len(), &mut out);
    out.extend_from_slice(&section);
    out
}

/// A component exporting only `wasi:cli/run`: valid, but not a state machine.
fn component_of_another_world() -> Vec<u8> {
    wat::parse_str(
        r#"(component
             (core module $m (func (export "f")))
             (core instance $i (instantiate $m))
             (func $f (canon lift (core func $i "f")))
             (instance $x (export "run" (func $f)))
             (export "wasi:cli/run@0.2.0" (instance $x)))"#,
    )
    .unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Increments the counter (group 1) until stopped, counting acknowledged writes.
struct CounterLoad {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CounterLoad {
    fn start(cluster: &Cluster) -> CounterLoad {
        let (stop, acked) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let client = cluster.client_of_all(0);
        let (s, a) = (stop.clone(), acked.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                match client.propose(COUNTER, Bytes::from_static(br#"{"incr":1}"#)).await {
                    Ok(_) => {
                        a.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
        CounterLoad { stop, acked, task }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        self.acked.load(Ordering::Relaxed)
    }
}

/// Every node serves groups 1 and 2 only, group 2 with `module_hash`.
async fn assert_unchanged(c: &Cluster, module_hash: &str) {
    for i in 0..3 {
        assert_eq!(groups_of(c, i).await, vec![COUNTER, ATOMIC], "node {}", i + 1);
        let g = c.status(i, ATOMIC).await.unwrap();
        assert_eq!(hex(&g.module_hash), module_hash, "node {} runs another module", i + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_created_at_run_time_serves_and_survives_a_restart() {
    let mut c = Cluster::start("groups", 3, Spec::one(COUNTER, "waft_counter"));
    c.wait_for_leader(COUNTER).await;
    assert_eq!(groups_of(&c, 0).await, vec![COUNTER]);
    let load = CounterLoad::start(&c);

    // Create group 2 with the real CLI while group 1 takes writes.
    let atomic = std::fs::read(module("waft_atomic")).unwrap();
    let big = padded(&atomic, PADDED_MODULE_BYTES);
    assert!(big.len() <= PADDED_MODULE_BYTES && big.len() + 8 >= PADDED_MODULE_BYTES, "{}", big.len());
    let big_path = c.root.join("atomic-padded.wasm");
    std::fs::write(&big_path, &big).unwrap();
    let big_path = big_path.to_string_lossy().into_owned();
    // Node 3 pulled the first 7 MiB of it once, before a restart: its pull
    // resumes there, and the whole still has to hash right.
    let pulled = 7 << 20;
    let hash = waft_storage::ModuleHash::of(&big);
    std::fs::write(c.data_dir(2).join("modules").join(format!("{hash}.part")), &big[..pulled]).unwrap();
    let acked_before = load.acked();
    let started = Instant::now();
    let (ok, out, err) = run_waft(&[
        "admin",
        "create-group",
        "--addr",
        &c.addrs[0],
        "--group",
        "2",
        "--peers",
        "1,2,3",
        "--module",
        &big_path,
    ])
    .await;
    let took = started.elapsed();
    assert!(ok, "create-group failed: {err}");
    let acked_during = load.acked() - acked_before;
    eprintln!(
        "create-group of a {PADDED_MODULE_BYTES}-byte module took {took:?}; group 1 acknowledged {acked_during} writes meanwhile\n{out}"
    );
    let module_hash = out.lines().next().and_then(|l| l.split("module ").nth(1)).unwrap().trim().to_string();
    for node in 1..=3 {
        assert!(out.contains(&format!("node {node}: created")), "{out}");
    }
    assert!(acked_during > 0, "group 1 took no writes while group 2 was created");
    let log = std::fs::read_to_string(c.log_path(2)).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("resuming a module pull where it stopped") && l.contains(&format!("offset={pulled}"))),
        "node 3 did not resume its pull at {pulled}"
    );
    assert!(!c.data_dir(2).join("modules").join(format!("{hash}.part")).exists(), "the partial module is left");
    for i in 0..3 {
        assert!(c.data_dir(i).join("modules").join(format!("{hash}.wasm")).is_file(), "node {} stored it", i + 1);
    }

    // Group 2 elects a leader and takes writes and linearizable reads
    // through every node.
    c.wait_for_leader(ATOMIC).await;
    assert_unchanged(&c, &module_hash).await;
    for i in 0..3 {
        let answer = c.client(i).propose(ATOMIC, set(&format!("k{i}"), 10 * i as u64 + 1)).await.unwrap();
        assert_eq!(text(&answer), r#"{"success":true}"#);
    }
    for i in 0..3 {
        for k in 0..3 {
            let answer = c.client(i).query(ATOMIC, get(&format!("k{k}")), Consistency::Linearizable).await.unwrap();
            assert_eq!(text(&answer), (10 * k + 1).to_string(), "key k{k} read at node {}", i + 1);
        }
    }
    // `waft status` lists it, with its module.
    let (ok, json, err) = run_waft(&["status", "--addr", &c.addrs[2], "--json"]).await;
    assert!(ok, "waft status failed: {err}");
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    let listed: Vec<(u64, String)> = status["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["group"].as_u64().unwrap(), g["module_hash"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(listed.len(), 2, "{json}");
    assert_eq!(listed[1], (ATOMIC, module_hash.clone()), "{json}");
    // Metrics name the new group on every node.
    for i in 0..3 {
        let page = c.scrape(i).await;
        assert!(metric(&page, "waft_group_applied_index", ATOMIC, "").is_some_and(|v| v > 0), "node {}", i + 1);
    }

    // The same create again (at another node) is OK and changes nothing.
    let (ok, out, err) = run_waft(&[
        "admin",
        "--addr",
        &c.addrs[1],
        "--group",
        "2",
        "create-group",
        "--voters",
        "3,2,1",
        "--module",
        &big_path,
    ])
    .await;
    assert!(ok, "a repeated create must be OK: {err}");
    for node in 1..=3 {
        assert!(out.contains(&format!("node {node}: already there")), "{out}");
    }

    // Another module for group 2: refused, by the CLI and the client alike.
    let atomic_path = module("waft_atomic").to_string_lossy().into_owned();
    let (ok, _, err) = run_waft(&[
        "admin",
        "create-group",
        "--addr",
        &c.addrs[2],
        "--group",
        "2",
        "--peers",
        "1,2,3",
        "--module",
        &atomic_path,
    ])
    .await;
    assert!(!ok && err.contains("GROUP_EXISTS"), "{err}");
    let admin = c.client(2);
    let e = refusal(admin.create_group(ATOMIC, vec![1, 2, 3], vec![], atomic.clone().into()).await.unwrap_err());
    assert_eq!(e.code(), ErrorCode::GroupExists, "{e}");
    assert!(e.message.contains("node 1") && e.message.contains("nothing changed"), "{e}");
    // Other voters for it: refused too.
    let e = refusal(admin.create_group(ATOMIC, vec![1, 2], vec![], big.clone().into()).await.unwrap_err());
    assert_eq!(e.code(), ErrorCode::GroupExists, "{e}");
    // Garbage, a core module and a component of another world: BAD_MODULE,
    // before anything is asked of the voters.
    let core_module = wat::parse_str("(module (func (export \"on-apply\")))").unwrap();
    for (group, bytes, says) in [
        (ATOMIC, b"#!/bin/sh\necho not wasm\n".to_vec(), "not a WebAssembly binary"),
        (NEVER, b"\0asm garbage after a wasm header".to_vec(), "refused"),
        (NEVER, core_module, "core WebAssembly module"),
        (NEVER, component_of_another_world(), "does not implement"),
    ] {
        let e = refusal(admin.create_group(group, vec![1, 2, 3], vec![], bytes.into()).await.unwrap_err());
        assert_eq!(e.code(), ErrorCode::BadModule, "{e}");
        assert!(e.message.contains(says) && e.message.contains("nothing created"), "{e}");
    }
    // Group 0 and a node nobody knows: refused.
    let e = refusal(admin.create_group(0, vec![1, 2, 3], vec![], atomic.clone().into()).await.unwrap_err());
    assert_eq!(e.code(), ErrorCode::InvalidRequest, "{e}");
    let e = refusal(admin.create_group(NEVER, vec![1, 2, 9], vec![], atomic.clone().into()).await.unwrap_err());
    assert!(e.code() == ErrorCode::InvalidRequest && e.message.contains("node 9"), "{e}");
    assert_unchanged(&c, &module_hash).await;

    // A write commits; its group's leader dies by SIGKILL and restarts with
    // the same command line, which names group 1 only.
    let written = c.client_of_all(0).propose(ATOMIC, set("before-kill", 77)).await.unwrap();
    let victim = c.wait_for_leader(ATOMIC).await;
    c.wait_applied(victim, ATOMIC, written.index).await;
    c.kill(victim);
    c.start_node(victim);
    let deadline = Instant::now() + RESTART_DEADLINE;
    loop {
        c.check_alive();
        if let Ok(s) = client::status(&c.addrs[victim], None).await
            && s.groups.iter().any(|g| g.group == ATOMIC)
        {
            break;
        }
        assert!(Instant::now() < deadline, "node {} does not serve group 2 after its restart", victim + 1);
        tokio::time::sleep(common::POLL_PAUSE).await;
    }
    let g = c.wait_applied(victim, ATOMIC, written.index).await;
    assert_eq!(hex(&g.module_hash), module_hash);
    let answer = c.client(victim).query(ATOMIC, get("before-kill"), Consistency::Stale).await.unwrap();
    assert_eq!(text(&answer), "77", "the write committed before the kill is on node {}", victim + 1);
    // It serves the group fully again: writes and linearizable reads through it.
    c.wait_for_leader(ATOMIC).await;
    c.client(victim).propose(ATOMIC, set("after-restart", 78)).await.unwrap();
    let answer = c.client(victim).query(ATOMIC, get("after-restart"), Consistency::Linearizable).await.unwrap();
    assert_eq!(text(&answer), "78");
    assert_unchanged(&c, &module_hash).await;

    // Group 1 lost nothing meanwhile.
    let acked = load.stop().await;
    let leader = c.wait_for_leader(COUNTER).await;
    let value =
        c.client(leader).query(COUNTER, Bytes::from_static(b"\"get\""), Consistency::Linearizable).await.unwrap();
    let value: u64 = text(&value).parse().unwrap();
    eprintln!("group 1: {acked} increments acknowledged, counter at {value}; node {} restarted", victim + 1);
    assert!(value >= acked, "the counter ({value}) lost acknowledged increments ({acked})");

    // A created group takes deploys like any other; its founding module is
    // unchanged, so the original create still reads as a repeat.
    let deployed = c.client_of_all(0).deploy(ATOMIC, atomic.clone().into()).await.unwrap();
    assert_ne!(hex(&deployed.module_hash), module_hash);
    let answer = c.client(victim).query(ATOMIC, get("before-kill"), Consistency::Linearizable).await.unwrap();
    assert_eq!(text(&answer), "77", "the deployed module reads the state the founding one left");
    let again = c.client(victim).create_group(ATOMIC, vec![1, 2, 3], vec![], big.clone().into()).await.unwrap();
    assert!(again.nodes.iter().all(|n| n.outcome() == waft_proto::admin::CreateOutcome::AlreadyThere), "{again:?}");

    // A node that created group 2 at run time stops cleanly on SIGTERM: its
    // driver is joined like the others, and its storage closes.
    let creator = (victim + 1) % 3;
    assert!(c.terminate(creator, Duration::from_secs(20)), "node {} did not stop cleanly", creator + 1);
}

/// A created group can grow: a node named as a member (not a voter) opens an
/// empty replica, which `add-peer` then makes a voter that catches up; a
/// repeat of the create naming it changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_of_a_created_group_is_added_later() {
    const GROWN: u64 = 4;
    let mut c = Cluster::start("groups-members", 3, Spec::one(COUNTER, "waft_counter"));
    c.wait_for_leader(COUNTER).await;
    let atomic_path = module("waft_atomic").to_string_lossy().into_owned();
    let (ok, out, err) = run_waft(&[
        "admin",
        "--addr",
        &c.addrs[0],
        "--group",
        "4",
        "create-group",
        "--peers",
        "1,2",
        "--members",
        "3",
        "--module",
        &atomic_path,
    ])
    .await;
    assert!(ok, "create with a member: {err}");
    for node in 1..=3 {
        assert!(out.contains(&format!("node {node}: created")), "{out}");
    }
    let leader = c.wait_for_leader_among(GROWN, &[0, 1]).await;
    let voters = c.status(2, GROWN).await.expect("node 3 serves the group").configuration.unwrap_or_default().voters;
    assert!(voters.is_empty(), "node 3 starts empty, waiting to be added: voters {voters:?}");
    let writer = c.client_of_all(0);
    for n in 0..50 {
        writer.propose(GROWN, set(&format!("k{n}"), n)).await.unwrap();
    }

    // The operator adds it; it catches up and serves what was written.
    let (ok, out, err) = run_waft(&["admin", "--addr", &c.addrs[leader], "--group", "4", "add-peer", "3"]).await;
    assert!(ok && out.starts_with("voters 1,2,3"), "add-peer: {out} {err}");
    let commit = c.status(leader, GROWN).await.unwrap().commit_index;
    c.wait_applied(2, GROWN, commit).await;
    for n in [0u64, 49] {
        let answer = c.client(2).query(GROWN, get(&format!("k{n}")), Consistency::Stale).await.unwrap();
        assert_eq!(text(&answer), n.to_string());
    }

    // The same create again, naming the member, is a repeat everywhere.
    let (ok, out, err) = run_waft(&[
        "admin",
        "--addr",
        &c.addrs[2],
        "--group",
        "4",
        "create-group",
        "--peers",
        "2,1",
        "--members",
        "3",
        "--module",
        &atomic_path,
    ])
    .await;
    assert!(ok, "repeat: {err}");
    for node in 1..=3 {
        assert!(out.contains(&format!("node {node}: already there")), "{out}");
    }
}
