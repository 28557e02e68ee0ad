//! Three real `waft serve` processes on loopback, running the counter
//! component: elect a leader, write through the leader and through a
//! follower, read back linearizably from every node.
//!
//! Lives in the `waft` crate so cargo builds the binary and names it
//! (`CARGO_BIN_EXE_waft`). Every child is owned by a guard that kills and
//! reaps it on drop, so a failing assertion leaves no daemon behind.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use waft_daemon::client;
use waft_proto::client::{Consistency, Role};

const GROUP: u64 = 1;
/// Bound on waiting for an elected leader everyone agrees on.
const LEADER_DEADLINE: Duration = Duration::from_secs(30);
const POLL_PAUSE: Duration = Duration::from_millis(50);

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

fn counter_module() -> PathBuf {
    let dir = match std::env::var_os("WAFT_GUEST_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => target_dir().join("wasm32-wasip2/release"),
    };
    let path = dir.join("waft_counter.wasm");
    assert!(path.exists(), "{} is missing; build the guests first with `cargo xtask guests`", path.display());
    path
}

/// A port nothing listens on right now (the OS picks; we release it at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Kills and reaps every child on drop, even when the test panics.
struct Cluster {
    children: Vec<Child>,
    addrs: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Cluster {
    fn start(name: &str, nodes: u64) -> Cluster {
        let root = target_dir().join("waft-daemon-tests").join(name);
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let module = counter_module();
        let addrs: Vec<String> = (0..nodes).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let mut cluster = Cluster { children: Vec::new(), addrs: addrs.clone() };
        for id in 1..=nodes {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_waft"));
            cmd.arg("serve")
                .args(["--id", &id.to_string()])
                .args(["--listen", &addrs[(id - 1) as usize]])
                .arg("--data-dir")
                .arg(root.join(format!("node-{id}")))
                .args(["--group", &GROUP.to_string()])
                .arg("--module")
                .arg(&module);
            for peer in (1..=nodes).filter(|p| *p != id) {
                cmd.args(["--peer", &format!("{peer}={}", addrs[(peer - 1) as usize])]);
            }
            let log = std::fs::File::create(root.join(format!("node-{id}.log"))).unwrap();
            cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
            cluster.children.push(cmd.spawn().expect("cannot start `waft serve`"));
        }
        cluster
    }

    /// Polls every node's Status until all agree on one leader; returns its index.
    async fn wait_for_leader(&mut self) -> usize {
        let deadline = Instant::now() + LEADER_DEADLINE;
        loop {
            for (i, child) in self.children.iter_mut().enumerate() {
                if let Ok(Some(exit)) = child.try_wait() {
                    panic!("node {} exited early: {exit}", i + 1);
                }
            }
            let mut leaders = Vec::new();
            let mut leader_index = None;
            for (i, addr) in self.addrs.iter().enumerate() {
                if let Ok(status) = client::status(addr, Some(GROUP)).await
                    && let Some(g) = status.groups.first()
                {
                    leaders.push(g.leader_id);
                    if g.role() == Role::Leader {
                        leader_index = Some(i);
                    }
                }
            }
            if let Some(i) = leader_index
                && leaders.len() == self.addrs.len()
                && leaders.iter().all(|l| *l == (i + 1) as u64)
            {
                return i;
            }
            assert!(Instant::now() < deadline, "no agreed leader within {LEADER_DEADLINE:?}; saw {leaders:?}");
            tokio::time::sleep(POLL_PAUSE).await;
        }
    }
}

fn text(answer: &client::Answer) -> String {
    String::from_utf8_lossy(&answer.result).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_replicate_and_read_linearizably() {
    let mut cluster = Cluster::start("three-daemons", 3);
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let (leader_addr, follower_addr) = (cluster.addrs[leader].clone(), cluster.addrs[follower].clone());

    let answer = client::propose(&leader_addr, GROUP, Bytes::from_static(br#"{"incr":5}"#)).await.unwrap();
    assert_eq!(text(&answer), "5");
    // Through a follower: the client follows its NOT_LEADER hint to the leader.
    let answer = client::propose(&follower_addr, GROUP, Bytes::from_static(br#"{"incr":2}"#)).await.unwrap();
    assert_eq!(text(&answer), "7");

    // The CLI does the same, as a user would type it.
    let out = Command::new(env!("CARGO_BIN_EXE_waft"))
        .args(["propose", "--addr", &follower_addr, "--group", "1", r#"{"incr":3}"#])
        .output()
        .unwrap();
    assert!(out.status.success(), "waft propose failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10");

    // Linearizable reads see every acknowledged write, on every node (a
    // follower asks the leader for the read index and waits to apply it).
    for addr in &cluster.addrs {
        let answer = client::query(addr, GROUP, Bytes::from_static(br#""get""#), Consistency::Linearizable)
            .await
            .unwrap();
        assert_eq!(text(&answer), "10", "linearizable read at {addr}");
    }
    // A stale read answers from local state without any check.
    let answer = client::query(&leader_addr, GROUP, Bytes::from_static(br#""get""#), Consistency::Stale).await.unwrap();
    assert_eq!(text(&answer), "10");

    // Bad input gets a clear error and the cluster keeps serving.
    let err = client::propose(&leader_addr, 99, Bytes::from_static(b"{}")).await.unwrap_err();
    assert!(err.to_string().contains("no group 99"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_waft"))
        .args(["status", "--addr", &leader_addr, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "waft status failed: {}", String::from_utf8_lossy(&out.stderr));
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(json.contains(r#""role":"leader""#), "{json}");
    drop(cluster);
}
