//! A cluster grows and shrinks at run time without restarting anyone: a
//! fourth daemon started knowing only one node's address (`--join`) is added
//! to a live group under write load with its address (`add-peer
//! --address`), catches up and serves linearizable reads; the group records
//! its address, so every member learns it. Then it is removed, and every
//! other node forgets its address. No acknowledged write is lost.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, Load, Spec, assert_all_present, get, text};
use waft_daemon::client::{self, Client};
use waft_proto::client::Consistency;

const GROUP: u64 = 1;
/// How long the cluster may take to learn or forget an address.
const SETTLE: Duration = Duration::from_secs(30);

async fn known_nodes(cluster: &Cluster, i: usize) -> Option<Vec<(u64, String)>> {
    let credentials = cluster.credentials("admin", None);
    let answer = client::nodes(&cluster.addrs[i], None, &credentials).await.ok()?;
    Some(answer.nodes.into_iter().map(|n| (n.node_id, n.address)).collect())
}

/// Waits until node `i`'s known nodes satisfy `ok`; returns them.
async fn wait_known(
    cluster: &mut Cluster,
    i: usize,
    what: &str,
    ok: impl Fn(&[(u64, String)]) -> bool,
) -> Vec<(u64, String)> {
    let deadline = Instant::now() + SETTLE;
    loop {
        cluster.check_alive();
        let known = known_nodes(cluster, i).await;
        if let Some(k) = &known
            && ok(k)
        {
            return k.clone();
        }
        assert!(Instant::now() < deadline, "node {}: {what}; it knows {known:?}", i + 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn waft(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_waft")).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "waft {args:?} failed: {}{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_by_address_under_load_and_is_forgotten_when_removed() {
    let mut c = Cluster::prepare("join", 4, Spec::one(GROUP, "waft_atomic"));
    let t0 = Instant::now();
    c.set_joining(3, 0);
    for i in 0..3 {
        c.start_node(i);
    }
    let first = c.wait_for_leader_among(GROUP, &[0, 1, 2]).await;
    let load = Load::start(&c, GROUP, &[0, 1, 2]);
    load.wait_acked(&mut c, 100).await;
    let pids: Vec<Option<u32>> = (0..3).map(|i| c.pid(i)).collect();

    // Node 4 starts knowing only node 1; once it serves, it knows what
    // node 1 knows. No one knows node 4 yet.
    c.start_node(3);
    eprintln!("{:?} node 4 started", t0.elapsed());
    let learned = wait_known(&mut c, 3, "learns the cluster through its join node", |k| k.len() == 4).await;
    assert_eq!(learned.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert_eq!(learned[0].1, c.addrs[0]);
    eprintln!("{:?} node 4 joined", t0.elapsed());
    for i in 0..3 {
        let k = known_nodes(&c, i).await.unwrap();
        assert!(!k.iter().any(|(id, _)| *id == 4), "node {} knows node 4 before it was added: {k:?}", i + 1);
    }

    // Added through the CLI, at a follower (the client follows the leader
    // hint): the leader opens an empty replica on node 4, which catches up
    // from the leader.
    let follower = (first + 1) % 3;
    let out = waft(&["admin", "--addr", &c.addrs[follower], "--group", "1", "add-peer", "4", "--address", &c.addrs[3]]);
    assert!(out.starts_with("voters 1,2,3,4  learners -"), "{out}");
    assert!(out.contains(&format!("4={}", c.addrs[3])), "the configuration records node 4's address: {out}");
    eprintln!("{:?} added", t0.elapsed());
    let n = load.acked_count();
    load.wait_acked(&mut c, n + 100).await;

    // Every member learned node 4's address from the group's configuration.
    for i in 0..3 {
        let want = c.addrs[3].clone();
        wait_known(&mut c, i, "learns node 4's address", |k| k.iter().any(|(id, a)| *id == 4 && *a == want)).await;
    }
    // Node 4 serves linearizable reads of what was acknowledged: the
    // newest acknowledged write is there (a read index from the leader).
    let node4 = Client::with_nodes(vec![c.addrs[3].clone()]);
    let (key, _) = load.acked.lock().unwrap().last().cloned().unwrap();
    let value = key.rsplit('-').next().unwrap().to_string();
    let deadline = Instant::now() + SETTLE;
    let answer = loop {
        match node4.query(GROUP, get(&key), Consistency::Linearizable).await {
            Ok(answer) => break answer,
            Err(e) => {
                assert!(Instant::now() < deadline, "node 4 does not serve a linearizable read: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(text(&answer), value);
    eprintln!("{:?} read at node 4", t0.elapsed());
    let status = c.status(3, GROUP).await.unwrap();
    assert_eq!(status.configuration.unwrap().voters, vec![1, 2, 3, 4]);
    // Node 4 can lead: it is a full voter now.
    // Its first campaign may miss voters whose streams from it are not up
    // yet (refused until they learned its address): a rejected transfer
    // is retried, as balance-leaders does.
    let transfer = ["admin", "--addr", &c.addrs[0], "--group", "1", "transfer-leader", "4"];
    let mut out = String::new();
    for attempt in 1..=3 {
        let done = Command::new(env!("CARGO_BIN_EXE_waft")).args(transfer).output().unwrap();
        out = String::from_utf8_lossy(&done.stdout).to_string();
        if done.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&done.stderr).to_string();
        eprintln!("transfer-leader 4, attempt {attempt}: {}", err.lines().next().unwrap_or_default());
        assert!(attempt < 3 && err.contains("REJECTED"), "transfer-leader 4 failed: {err}{out}");
    }
    assert!(out.contains("leader 4"), "{out}");
    eprintln!("{:?} transferred", t0.elapsed());
    let n = load.acked_count();
    load.wait_acked(&mut c, n + 100).await;

    // Removed again (it hands leadership over first): every other node
    // forgets its address; nothing was restarted.
    let out = waft(&["admin", "--addr", &c.addrs[0], "--group", "1", "remove-peer", "4"]);
    assert!(out.starts_with("voters 1,2,3  learners -"), "{out}");
    assert!(!out.contains("4="), "a removed member's address leaves the configuration: {out}");
    eprintln!("{:?} removed", t0.elapsed());
    for i in 0..3 {
        wait_known(&mut c, i, "forgets node 4", |k| !k.iter().any(|(id, _)| *id == 4)).await;
    }
    let n = load.acked_count();
    load.wait_acked(&mut c, n + 100).await;
    let (acked, _) = load.stop().await;
    assert_eq!((0..3).map(|i| c.pid(i)).collect::<Vec<_>>(), pids, "no daemon was restarted");
    let leader = c.wait_for_leader_among(GROUP, &[0, 1, 2]).await;
    let commit = c.status(leader, GROUP).await.unwrap().commit_index;
    for i in 0..3 {
        c.wait_applied(i, GROUP, commit).await;
        assert_all_present(&c, i, GROUP, &acked).await;
    }
}
