//! Deploying a new module version to a live group of real daemons, under
//! write load: every replica switches at the deploy entry's index, a node
//! restored from a snapshot taken after the deploy runs the new module, and
//! a bad module (garbage, a core module, a component of another world) is
//! refused before it reaches the log and changes nothing.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, Spec, module, text};
use waft_daemon::client::{Client, ClientError};
use waft_proto::admin::AdminOp;
use waft_proto::client::{Consistency, ErrorCode, GroupStatus};
use waft_storage::ModuleHash;

const GROUP: u64 = 1;
const WRITERS: usize = 4;
const INCR: &[u8] = br#"{"incr":1}"#;
const GET: &[u8] = br#""get""#;

/// Counter writers, each adding 1 in its own session, remembering every
/// acknowledged write's log index and the value it returned.
struct Writers {
    stop: Arc<AtomicBool>,
    /// (index, value, duplicate) of every acknowledged write. A duplicate
    /// (the client's retry of a write that had applied, say after an
    /// election on a loaded machine) carries the first application's value
    /// but the retry's index.
    acked: Arc<Mutex<Vec<(u64, i64, bool)>>>,
    /// When each write was acknowledged, in order.
    times: Arc<Mutex<Vec<Instant>>>,
    tasks: Vec<tokio::task::JoinHandle<u64>>,
}

impl Writers {
    fn start(c: &Cluster, nodes: &[usize]) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let times = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..WRITERS)
            .map(|w| {
                let addrs = (0..nodes.len()).map(|k| c.addrs[nodes[(w + k) % nodes.len()]].clone()).collect();
                let client = Client::with_nodes(addrs);
                let (stop, acked, times) = (stop.clone(), acked.clone(), times.clone());
                tokio::spawn(async move {
                    let mut failed = 0;
                    while !stop.load(Ordering::Relaxed) {
                        match client.propose(GROUP, Bytes::from_static(INCR)).await {
                            Ok(a) => {
                                let value = text(&a).parse::<i64>().unwrap();
                                acked.lock().unwrap().push((a.index, value, a.duplicate));
                                times.lock().unwrap().push(Instant::now());
                            }
                            Err(_) => failed += 1,
                        }
                    }
                    failed
                })
            })
            .collect();
        Writers { stop, acked, times, tasks }
    }

    /// The longest pause between two acknowledgements within `from..to`.
    fn longest_pause(&self, from: Instant, to: Instant) -> Duration {
        let times = self.times.lock().unwrap();
        let inside: Vec<Instant> = times.iter().copied().filter(|t| *t >= from && *t <= to).collect();
        inside.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn wait_for(&self, c: &mut Cluster, more: usize) {
        let target = self.count() + more;
        let deadline = std::time::Instant::now() + common::LOAD_DEADLINE;
        while self.count() < target {
            c.check_alive();
            assert!(std::time::Instant::now() < deadline, "writes stalled at {}", self.count());
            tokio::time::sleep(common::POLL_PAUSE).await;
        }
    }

    async fn stop(self) -> (Vec<(u64, i64, bool)>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failed = 0;
        for t in self.tasks {
            failed += t.await.unwrap();
        }
        let mut acked = Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap();
        acked.sort_unstable();
        (acked, failed)
    }
}

fn hash_of(name: &str) -> Vec<u8> {
    ModuleHash::of(&std::fs::read(module(name)).unwrap()).0.to_vec()
}

fn waft(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_waft")).args(args).output().unwrap()
}

async fn status(c: &Cluster, i: usize) -> GroupStatus {
    c.status(i, GROUP).await.expect("status")
}

async fn value(client: &Client) -> i64 {
    text(&client.query(GROUP, Bytes::from_static(GET), Consistency::Stale).await.unwrap()).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_module_version_takes_over_at_one_index_on_every_replica() {
    let mut c = Cluster::start("deploy", 3, Spec::one(GROUP, "waft_counter"));
    let leader = c.wait_for_leader(GROUP).await;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (restored_by_install, restored_by_restart) = (others[0], others[1]);
    let admin = Client::with_nodes(c.addrs.clone());
    let (old, new) = (hash_of("waft_counter"), hash_of("waft_counter_doubling"));

    // Bad modules are refused before anything enters the log.
    let before = status(&c, leader).await;
    let core_module = wat::parse_str("(module (func (export \"on-apply\")))").unwrap();
    let other_world = wat::parse_str(
        r#"(component
             (core module $m (func (export "f")))
             (core instance $i (instantiate $m))
             (func $f (canon lift (core func $i "f")))
             (instance $x (export "run" (func $f)))
             (export "wasi:cli/run@0.2.0" (instance $x)))"#,
    )
    .unwrap();
    for (what, bytes, says) in [
        ("garbage", b"#!/bin/sh\necho hello\n".to_vec(), "not a WebAssembly binary"),
        ("a core module", core_module, "core WebAssembly module"),
        ("another world", other_world, "does not implement"),
    ] {
        match admin.deploy(GROUP, bytes.into()).await {
            Err(ClientError::Refused(e)) => {
                assert_eq!(e.code(), ErrorCode::BadModule, "{what}: {e}");
                assert!(e.message.contains(says), "{what}: {}", e.message);
            }
            other => panic!("{what} should be refused: {other:?}"),
        }
    }
    let path = module("waft_atomic").with_extension("txt");
    std::fs::write(&path, b"not wasm").unwrap();
    let out = waft(&["deploy", "--addr", &c.addrs[0], "--group", "1", path.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not a WebAssembly binary"));
    let after = status(&c, leader).await;
    assert_eq!((after.module_hash.to_vec(), after.module_index), (old.clone(), 0), "nothing changed");
    assert_eq!(after.commit_index, before.commit_index, "no entry was proposed");

    // Writes run throughout; one follower is down during the deploy.
    let writers = Writers::start(&c, &[leader, restored_by_restart]);
    writers.wait_for(&mut c, 200).await;
    c.kill(restored_by_install);
    writers.wait_for(&mut c, 100).await;

    // The operator's deploy, through the CLI at a follower (it finds the leader).
    let doubling = module("waft_counter_doubling");
    let deploy_began = Instant::now();
    let out = waft(&["deploy", "--addr", &c.addrs[restored_by_restart], "--group", "1", doubling.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "deploy failed: {}", String::from_utf8_lossy(&out.stderr));
    let hex: String = new.iter().map(|b| format!("{b:02x}")).collect();
    assert!(stdout.starts_with(&format!("group 1 runs module {hex} since index ")), "{stdout}");
    let at: u64 = stdout.trim().rsplit(' ').next().unwrap().parse().unwrap();
    writers.wait_for(&mut c, 200).await;
    let deploy_pause = writers.longest_pause(deploy_began, Instant::now());

    // Snapshot past the deploy on both nodes that are up: whichever leads
    // after the restart has compacted (node `restored_by_install` will need
    // the snapshot; on a loaded machine leadership may move meanwhile), and
    // `restored_by_restart` restarts from its own.
    let up = [leader, restored_by_restart];
    for i in up {
        let snap = Client::new(c.addrs[i].clone()).admin(GROUP, AdminOp::Snapshot, vec![], vec![]).await.unwrap();
        assert!(snap.snapshot_index > at, "node {}: snapshot {} past the deploy at {at}", i + 1, snap.snapshot_index);
    }
    let leader = c.wait_for_leader_among(GROUP, &up).await;
    c.kill(restored_by_restart);
    c.start_node(restored_by_restart);
    c.start_node(restored_by_install);
    writers.wait_for(&mut c, 200).await;
    let (acked, failed) = writers.stop().await;
    println!(
        "{} writes acknowledged, {failed} failed, deploy at index {at}, longest pause between writes around it {deploy_pause:?}",
        acked.len()
    );

    // The replies: +1 per write before the deploy's index, +2 after it. The
    // counter only grows, so its values order the writes as they applied;
    // a duplicate reply sits where its first application did. Every write
    // must have been acknowledged for the steps to add up.
    assert_eq!(failed, 0, "a write with an unknown outcome would break the count");
    let mut acked = acked;
    acked.sort_unstable_by_key(|&(_, value, _)| value);
    let (mut expected, mut switched, mut last_index) = (0, false, 0);
    for &(index, got, duplicate) in &acked {
        let step = if duplicate {
            got - expected
        } else {
            assert_ne!(index, at);
            assert!(index > last_index, "values and indexes of first applications agree in order");
            last_index = index;
            if index < at { 1 } else { 2 }
        };
        assert!(step == 2 || (step == 1 && !switched), "a step of {step} at value {got} (deploy at {at})");
        switched |= step == 2;
        expected += step;
        assert_eq!(got, expected, "the write at index {index} (deploy at {at}, duplicate: {duplicate})");
    }
    assert!(acked.iter().filter(|(i, _, _)| *i > at).count() >= 200, "writes after the deploy");

    // Every replica, including the one that installed a snapshot and the one
    // restarted from its own, runs the new module since the same index and
    // holds the same value.
    let last = status(&c, leader).await.commit_index;
    for i in 0..3 {
        let s = c.wait_applied(i, GROUP, last).await;
        assert_eq!((s.module_hash.to_vec(), s.module_index), (new.clone(), at), "node {}", i + 1);
        assert_eq!(value(&c.client(i)).await, expected, "node {}", i + 1);
    }
    let installed = std::fs::read_to_string(c.log_path(restored_by_install)).unwrap();
    assert!(
        installed.contains("module switched by a snapshot"),
        "node {} installed a snapshot",
        restored_by_install + 1
    );

    // New writes apply the new logic on whichever node leads.
    let client = c.client_of_all(restored_by_install);
    let r = client.propose(GROUP, Bytes::from_static(INCR)).await.unwrap();
    assert_eq!(text(&r), (expected + 2).to_string());

    // `waft status` shows the module and the index it took effect at.
    let out = waft(&["status", "--addr", &c.addrs[restored_by_install], "--group", "1", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["groups"][0]["module_hash"], serde_json::Value::String(hex));
    assert_eq!(json["groups"][0]["module_index"], serde_json::json!(at));
}

/// Size of the module the large deploy sends: the counter with this many
/// bytes of a custom section (wasm ignores it; it only has to travel).
const LARGE_MODULE_BYTES: usize = 40 << 20;

/// `bytes` (a component) with a custom section of `extra` bytes appended.
fn padded(mut bytes: Vec<u8>, extra: usize) -> Vec<u8> {
    let name = b"waft-test-padding";
    let mut len = name.len() + 1 + extra;
    bytes.push(0); // a custom section
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        bytes.push(if len == 0 { byte } else { byte | 0x80 });
        if len == 0 {
            break;
        }
    }
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    // Bytes that do not compress, so nothing on the way can make them small.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    bytes.extend((0..extra).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    bytes
}

/// A module far larger than one log entry (and than one client message)
/// deploys through the CLI under writes: uploaded to the leader in chunks,
/// pulled and compiled by each follower before the entry naming it by hash
/// is proposed, so every replica switches at one index without a fetch or a
/// compile there. Prints the longest pause between acknowledged writes
/// around the deploy next to the 99th percentile of the pauses before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_far_larger_than_an_entry_deploys_beside_the_log_under_writes() {
    let mut c = Cluster::start("deploy-large", 3, Spec::one(GROUP, "waft_counter"));
    let leader = c.wait_for_leader(GROUP).await;
    let follower = (leader + 1) % 3;
    let big = padded(std::fs::read(module("waft_counter")).unwrap(), LARGE_MODULE_BYTES);
    let new = ModuleHash::of(&big).0.to_vec();
    let path = c.root.join("large.wasm");
    std::fs::write(&path, &big).unwrap();

    let writers = Writers::start(&c, &[0, 1, 2]);
    writers.wait_for(&mut c, 300).await;
    let before_end = Instant::now();
    let usual = {
        let times = writers.times.lock().unwrap();
        let mut gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        gaps.sort_unstable();
        gaps[gaps.len() * 99 / 100]
    };

    // Through the CLI at a follower: it finds the leader.
    let out = waft(&["deploy", "--addr", &c.addrs[follower], "--group", "1", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "deploy failed: {}", String::from_utf8_lossy(&out.stderr));
    let at: u64 = stdout.trim().rsplit(' ').next().unwrap().parse().unwrap();
    writers.wait_for(&mut c, 300).await;
    let pause = writers.longest_pause(before_end, Instant::now());
    let (acked, failed) = writers.stop().await;
    println!(
        "a {} MiB module deployed at index {at} under writes: longest pause between acknowledged writes {pause:?}, \
         p99 of the pauses before it {usual:?} ({} writes, {failed} failed)",
        big.len() >> 20,
        acked.len()
    );

    // Every write added one, before and after the switch (the logic is the
    // counter's): the values count the first applications.
    let firsts = acked.iter().filter(|(_, _, duplicate)| !duplicate).count() as i64;
    let top = acked.iter().map(|(_, v, _)| *v).max().unwrap();
    assert!(top >= firsts, "values {top} below the {firsts} writes acknowledged");
    let last = status(&c, leader).await.commit_index;
    let mut values = Vec::new();
    for i in 0..3 {
        let s = c.wait_applied(i, GROUP, last).await;
        assert_eq!((s.module_hash.to_vec(), s.module_index), (new.clone(), at), "node {}", i + 1);
        assert!(s.module_transfer.is_none(), "node {}: a transfer still shows", i + 1);
        values.push(value(&c.client(i)).await);
    }
    assert!(values.iter().all(|v| *v == values[0] && *v >= top), "values {values:?}, highest acknowledged {top}");
    // The followers had it before the entry: pulled and compiled ahead of
    // it, not at it.
    for i in (0..3).filter(|i| *i != leader) {
        let log = std::fs::read_to_string(c.log_path(i)).unwrap();
        assert!(log.contains("module prepared for its deploy"), "node {} prepared the module", i + 1);
        assert!(!log.contains("cannot load module"), "node {} could not switch", i + 1);
    }
}

/// A module that cannot read the state the running one holds (the counter
/// over the atomic example's key-value state) is refused at the leader,
/// before it reaches the log: BAD_MODULE with the guest's reason, and the
/// group goes on as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_cannot_read_the_running_state_is_refused_before_the_log() {
    let mut c = Cluster::start("deploy-state-check", 3, Spec::one(GROUP, "waft_atomic"));
    let leader = c.wait_for_leader(GROUP).await;
    let client = c.client_of_all(leader);
    for k in 0..5 {
        client.propose(GROUP, common::set(&format!("k{k}"), k)).await.unwrap();
    }
    let before = status(&c, leader).await;
    let counter = module("waft_counter");
    let out = waft(&["deploy", "--addr", &c.addrs[leader], "--group", "1", counter.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the counter was deployed over key-value state");
    assert!(stderr.contains("BAD_MODULE") && stderr.contains("cannot load the running state"), "{stderr}");
    assert!(stderr.contains("not a counter's state"), "the guest's own reason: {stderr}");
    let after = status(&c, leader).await;
    assert_eq!(after.module_hash, before.module_hash, "the running module stays");
    assert_eq!((after.commit_index, after.applied_index), (before.commit_index, before.applied_index), "no entry");
    let answer = client.query(GROUP, common::get("k3"), Consistency::Linearizable).await.unwrap();
    assert_eq!(text(&answer), "3", "the key-value state reads as before");
}
