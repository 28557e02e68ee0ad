//! The Python client example (examples/python-client: grpcio, stubs
//! generated from proto/) against real `waft serve` processes running the
//! counter: SOFAJRaft's counter scenario in an exactly-once session, first
//! sent to a follower (so it must follow the leader hint), then with the
//! leader killed under it (so it must retry calls whose outcome is unknown,
//! and the session must keep every increment to exactly once).
//!
//! `cargo xtask python-client` (run by `cargo xtask test`) makes the
//! environment it runs in. Every wait is a poll with a deadline or a child
//! process's exit.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

use common::{CATCH_UP_DEADLINE, Cluster, POLL_PAUSE, Spec, target_dir, text};
use waft_proto::client::Consistency;

const GROUP: u64 = 1;
/// Increments of the run the leader dies under: enough that it is still
/// running when the kill comes.
const INCREMENTS_UNDER_FAULT: u64 = 1000;
/// Increments applied before the leader is killed.
const KILL_AFTER_INCREMENTS: u64 = 50;

fn python_client_dir() -> PathBuf {
    target_dir().join("python-client")
}

/// The Python client's scenario, as a command ready to spawn.
fn counter_script(endpoints: &[&str], count: u64) -> Command {
    let dir = python_client_dir();
    let python = dir.join("venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing; make the Python client's environment with `cargo xtask python-client`",
        python.display()
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/python-client/counter.py");
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .args(["--endpoints", &endpoints.join(","), "--group", &GROUP.to_string(), "--count", &count.to_string()])
        .env("PYTHONPATH", dir.join("gen"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The scenario's summary line, or a panic with what it printed.
fn summary(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the Python client failed ({}):\n{stdout}\n{stderr}", out.status);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not a summary line ({e}): {stdout}"))
}

async fn wait_child(mut child: Child) -> Output {
    tokio::task::spawn_blocking(move || {
        let status = child.wait().expect("wait for the Python client");
        let mut out = Output { status, stdout: Vec::new(), stderr: Vec::new() };
        use std::io::Read;
        child.stdout.take().map(|mut s| s.read_to_end(&mut out.stdout));
        child.stderr.take().map(|mut s| s.read_to_end(&mut out.stderr));
        out
    })
    .await
    .expect("the wait ran")
}

/// The counter's value as node `i` reads it linearizably.
async fn value(c: &Cluster, i: usize) -> u64 {
    let answer = c.client_of_all(i).query(GROUP, "\"get\"".into(), Consistency::Linearizable).await;
    text(&answer.expect("a linearizable read")).parse().expect("the counter answers a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_runs_the_counter_scenario_exactly_once_through_a_leader_failure() {
    let mut c = Cluster::start("python-client", 3, Spec::one(GROUP, "waft_counter"));
    let leader = c.wait_for_leader(GROUP).await;
    let follower = (leader + 1) % 3;
    let addrs: Vec<&str> = c.addrs.iter().map(String::as_str).collect();

    // Sent to a follower first: the session opens and the increments land
    // through the leader the NOT_LEADER answers name.
    let count = 10;
    let first = summary(&wait_child(counter_script(&[addrs[follower]], count).spawn().unwrap()).await);
    let sum = count * (count + 1) / 2;
    assert_eq!(first["start"], 0, "{first}");
    assert_eq!(first["value"], sum, "{first}");
    assert_eq!(value(&c, leader).await, sum);

    // The leader dies under the second run. Every call the kill cuts off
    // has an unknown outcome; the client sends it again under its sequence
    // number, so each increment applies exactly once: the script checks
    // every result against the running sum, and the value read after it
    // must be the sum.
    let mut child = counter_script(&addrs, INCREMENTS_UNDER_FAULT).spawn().unwrap();
    let kill_at = sum + KILL_AFTER_INCREMENTS * (KILL_AFTER_INCREMENTS + 1) / 2;
    let deadline = Instant::now() + CATCH_UP_DEADLINE;
    loop {
        c.check_alive();
        let seen = c
            .client(leader)
            .query(GROUP, "\"get\"".into(), Consistency::Stale)
            .await
            .ok()
            .and_then(|a| text(&a).parse::<u64>().ok());
        if seen.is_some_and(|v| v >= kill_at) {
            break;
        }
        assert!(Instant::now() < deadline, "the Python client made no progress: the counter reads {seen:?}");
        tokio::time::sleep(POLL_PAUSE).await;
    }
    assert!(
        child.try_wait().expect("poll the Python client").is_none(),
        "the Python client finished before the leader was killed: raise INCREMENTS_UNDER_FAULT"
    );
    c.kill(leader);
    let second = summary(&wait_child(child).await);
    let total = sum + INCREMENTS_UNDER_FAULT * (INCREMENTS_UNDER_FAULT + 1) / 2;
    assert_eq!(second["start"], sum, "{second}");
    assert_eq!(second["value"], total, "{second}");
    let survivor = (leader + 1) % 3;
    c.wait_for_leader_among(GROUP, &[(leader + 1) % 3, (leader + 2) % 3]).await;
    assert_eq!(value(&c, survivor).await, total, "an increment was lost or applied twice");
}
