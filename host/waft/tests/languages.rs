//! One state machine in several languages, on one live group of three real
//! `waft serve` processes: SOFAJRaft's counter scenario runs against the
//! Rust counter (the SDK's), then each other counter is deployed over the
//! one running (its state carried through save and load) and the scenario
//! runs again: Python (waft's Python SDK, componentize-py; 18 MB, so it
//! travels beside the log), JavaScript (waft's JavaScript SDK,
//! componentize-js; 12 MB) and Rust straight from the WIT (wit-bindgen, no
//! SDK); then the SDK's Rust counter takes over again. Every answer is
//! checked, on every replica.
//!
//! `cargo xtask guests` builds the components. Every wait is a poll with a
//! deadline.

mod common;

use bytes::Bytes;
use common::{Cluster, Spec, module, text};
use waft_daemon::client::Client;
use waft_proto::client::Consistency;
use waft_storage::ModuleHash;

const GROUP: u64 = 1;

/// SOFAJRaft's counter scenario (CounterClient): increment-and-get by 1..=10
/// through the log, a get through the log, and a linearizable read, each
/// answer checked against `start`, the value before it. Returns the value
/// after it.
async fn scenario(client: &Client, start: i64, language: &str) -> i64 {
    let mut expected = start;
    for delta in 1..=10 {
        let answer = client.propose(GROUP, Bytes::from(format!(r#"{{"incr":{delta}}}"#))).await;
        let answer = answer.unwrap_or_else(|e| panic!("{language}: incr {delta}: {e}"));
        expected += delta;
        assert_eq!(text(&answer), expected.to_string(), "{language}: incr {delta}");
    }
    let got = client.propose(GROUP, Bytes::from_static(br#""get""#)).await.unwrap();
    assert_eq!(text(&got), expected.to_string(), "{language}: get through the log");
    let read = client.query(GROUP, Bytes::from_static(br#""get""#), Consistency::Linearizable).await.unwrap();
    assert_eq!(text(&read), expected.to_string(), "{language}: linearizable read");
    // A command the counter refuses changes nothing.
    let refused = client.propose(GROUP, Bytes::from_static(br#"{"decr":1}"#)).await;
    assert!(refused.is_err(), "{language}: an unknown command must be refused");
    expected
}

/// Deploys `name` through the CLI, then checks every replica runs it since
/// one index and reads `value`.
async fn deploy(c: &mut Cluster, name: &str, value: i64) {
    let path = module(name);
    let hash = ModuleHash::of(&std::fs::read(&path).unwrap()).0.to_vec();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_waft"))
        .args(["deploy", "--addr", &c.addrs[0], "--group", "1"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "deploy of {name}: {}", String::from_utf8_lossy(&out.stderr));
    let at: u64 = stdout.trim().rsplit(' ').next().unwrap().parse().unwrap();
    for i in 0..3 {
        let s = c.wait_applied(i, GROUP, at).await;
        assert_eq!((s.module_hash.to_vec(), s.module_index), (hash.clone(), at), "{name} on node {}", i + 1);
        let read = c.client(i).query(GROUP, Bytes::from_static(br#""get""#), Consistency::Stale).await.unwrap();
        assert_eq!(text(&read), value.to_string(), "{name} on node {} carried the state", i + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counter_scenario_runs_alike_in_every_language_deployed_over_one_another() {
    let mut c = Cluster::start("languages", 3, Spec::one(GROUP, "waft_counter"));
    c.wait_for_leader(GROUP).await;
    let client = c.client_of_all(0);
    let mut value = scenario(&client, 0, "Rust (SDK)").await;
    for (language, name) in [
        ("Python (SDK)", "waft_counter_py"),
        ("JavaScript (SDK)", "waft_counter_js"),
        ("Rust (WIT, no SDK)", "waft_counter_wit"),
        ("Rust (SDK)", "waft_counter"),
    ] {
        deploy(&mut c, name, value).await;
        value = scenario(&client, value, language).await;
    }
    assert_eq!(value, 5 * 55);
}
