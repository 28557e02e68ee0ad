//! `waft demo`: waft's main job on embedded defaults. Starts a local
//! three-node cluster on loopback (three `waft serve` daemons in this
//! process, each with its own data directory and port, talking real gRPC),
//! serving the counter (group 1) and the atomic module (group 2); runs
//! SOFAJRaft's counter and atomic scenarios through the client library,
//! stops a leader and brings it back, prints what happened, and stops the
//! cluster cleanly.
//!
//! Owns only the script. Every check is a real answer from the cluster; a
//! wrong one ends the demo with an error (after the cluster is stopped).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use waft_daemon::client::{Client, ClientError};
use waft_daemon::{GroupSpec, ServeConfig};
use waft_proto::client::{Consistency, Role};

const NODES: usize = 3;
const COUNTER: u64 = 1;
const ATOMIC: u64 = 2;
/// Bound on waiting for a leader or for a node to catch up.
const WAIT_MAX: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

struct Node {
    cfg: ServeConfig,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), waft_daemon::ServeError>>>,
}

impl Node {
    fn start(&mut self) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        self.task = Some(tokio::spawn(waft_daemon::serve(self.cfg.clone(), shutdown)));
        self.stop = Some(stop);
    }

    async fn stop(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.context("node task")?.with_context(|| format!("node {}", self.cfg.node_id))?;
        }
        Ok(())
    }
}

struct Cluster {
    dir: PathBuf,
    nodes: Vec<Node>,
    addrs: Vec<String>,
}

impl Cluster {
    fn start(modules: &Path) -> Result<Cluster> {
        let module = |name: &str| -> Result<PathBuf> {
            let path = modules.join(name);
            if !path.is_file() {
                bail!("{} is missing; build the guests with `cargo xtask guests`", path.display());
            }
            Ok(path)
        };
        let groups = vec![
            GroupSpec { group: COUNTER, module: module("waft_counter.wasm")? },
            GroupSpec { group: ATOMIC, module: module("waft_atomic.wasm")? },
        ];
        let dir = std::env::temp_dir().join(format!("waft-demo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // The OS picks free ports while all are held (so none twice), then
        // they are released for the nodes to bind.
        let held = (0..NODES).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<Result<Vec<_>, _>>()?;
        let listen = held.iter().map(TcpListener::local_addr).collect::<Result<Vec<_>, _>>()?;
        drop(held);
        let addrs: Vec<String> = listen.iter().map(SocketAddr::to_string).collect();
        let mut nodes = Vec::new();
        for (i, addr) in listen.iter().enumerate() {
            let id = i as u64 + 1;
            let peers =
                addrs.iter().enumerate().filter(|(p, _)| *p != i).map(|(p, a)| (p as u64 + 1, a.clone())).collect();
            let cfg = ServeConfig {
                node_id: id,
                listen: *addr,
                // The demo runs on loopback only, in plaintext by choice.
                tls: None,
                plaintext: true,
                users: None,
                data_dir: dir.join(format!("node-{id}")),
                peers,
                groups: groups.clone(),
                initial_voters: None,
                join: None,
                advertise: None,
                metrics_listen: None,
                tick_ms: waft_daemon::TICK_MS_DEFAULT,
                election_ticks: waft_daemon::ELECTION_TICKS_DEFAULT,
                snapshot_margin_entries: waft_daemon::config::SNAPSHOT_MARGIN_ENTRIES_DEFAULT,
                snapshot_pull_bytes_per_sec: 0,
                snapshot_interval_secs: waft_daemon::config::SNAPSHOT_INTERVAL_SECS_DEFAULT,
                sessions: Default::default(),
                digest_interval: waft_daemon::DIGEST_INTERVAL_DEFAULT,
                manual_rebuild: false,
                background_saves: false,
                test_diverge_at: None,
                test_compile_fault: None,
            };
            let mut node = Node { cfg, stop: None, task: None };
            node.start();
            println!("node {id} serving on {addr} (data in {})", node.cfg.data_dir.display());
            nodes.push(node);
        }
        Ok(Cluster { dir, nodes, addrs })
    }

    /// Waits until one node leads `group` and every running node knows it.
    async fn leader(&self, group: u64) -> Result<usize> {
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            let mut leader = None;
            let mut agree = true;
            for i in (0..self.nodes.len()).filter(|i| self.nodes[*i].task.is_some()) {
                match Client::new(self.addrs[i].clone()).status(Some(group)).await {
                    Ok(s) => match s.groups.first() {
                        Some(g) if g.role() == Role::Leader => leader = Some(i),
                        Some(g) if g.leader_id != 0 && self.nodes[g.leader_id as usize - 1].task.is_some() => {}
                        _ => agree = false,
                    },
                    Err(_) => agree = false,
                }
            }
            if let (Some(i), true) = (leader, agree) {
                return Ok(i);
            }
            if Instant::now() > deadline {
                bail!("no leader of group {group} within {WAIT_MAX:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn wait_applied(&self, i: usize, group: u64, index: u64) -> Result<()> {
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            if let Ok(s) = Client::new(self.addrs[i].clone()).status(Some(group)).await
                && s.groups.first().is_some_and(|g| g.applied_index >= index)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("node {} did not catch up to index {index} within {WAIT_MAX:?}", i + 1);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn stop(mut self) -> Result<()> {
        let mut first_err = None;
        for node in &mut self.nodes {
            node.stop.take().map(|s| s.send(()));
        }
        for node in &mut self.nodes {
            if let Err(e) = node.stop().await {
                first_err.get_or_insert(e);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        first_err.map_or(Ok(()), Err)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Proposes through `client` and prints the exchange; returns the reply text.
async fn propose(client: &Client, via: usize, group: u64, cmd: &str) -> Result<String> {
    let answer = client.propose(group, Bytes::from(cmd.to_string())).await;
    match answer {
        Ok(a) => {
            println!("  propose via node {via}  {cmd:<42} -> {:<18} (log index {})", text(&a.result), a.index);
            Ok(text(&a.result))
        }
        Err(ClientError::Refused(e)) => {
            println!("  propose via node {via}  {cmd:<42} -> refused: {e}");
            Ok(format!("refused: {:?}", e.code()))
        }
        Err(e) => Err(e).with_context(|| format!("propose {cmd}")),
    }
}

async fn read(c: &Cluster, i: usize, group: u64, q: &str, consistency: Consistency) -> Result<String> {
    let answer = Client::new(c.addrs[i].clone())
        .query(group, Bytes::from(q.to_string()), consistency)
        .await
        .with_context(|| format!("query {q} at node {}", i + 1))?;
    let level = format!("{consistency:?}").to_lowercase();
    println!("  {level:<12} read at node {}  {q:<30} -> {}", i + 1, text(&answer.result));
    Ok(text(&answer.result))
}

fn expect(what: &str, got: &str, want: &str) -> Result<()> {
    if got != want {
        bail!("{what}: expected {want}, got {got}");
    }
    Ok(())
}

async fn scenarios(c: &mut Cluster) -> Result<()> {
    let leader = c.leader(COUNTER).await?;
    println!("group {COUNTER} (counter) elected node {} as leader", leader + 1);
    let follower = (leader + 1) % NODES;
    let via_leader = Client::new(c.addrs[leader].clone());
    let via_follower = Client::new(c.addrs[follower].clone());

    println!("== counter (SOFAJRaft CounterStateMachine), group {COUNTER} ==");
    expect("incr", &propose(&via_leader, leader + 1, COUNTER, r#"{"incr":1}"#).await?, "1")?;
    println!("  (a follower answers NOT_LEADER with the leader's address; the client follows it)");
    expect("incr", &propose(&via_follower, follower + 1, COUNTER, r#"{"incr":2}"#).await?, "3")?;
    expect("incr", &propose(&via_leader, leader + 1, COUNTER, r#"{"incr":3}"#).await?, "6")?;
    println!("  a malformed command is rejected alone; the group goes on:");
    let refused = propose(&via_leader, leader + 1, COUNTER, r#"{"decrement":1}"#).await?;
    expect("malformed", &refused, "refused: Rejected")?;
    expect("incr", &propose(&via_leader, leader + 1, COUNTER, r#"{"incr":10}"#).await?, "16")?;
    expect("incr", &propose(&via_leader, leader + 1, COUNTER, r#"{"incr":-4}"#).await?, "12")?;
    for i in 0..NODES {
        expect("read", &read(c, i, COUNTER, r#""get""#, Consistency::Linearizable).await?, "12")?;
    }
    expect("read", &read(c, leader, COUNTER, r#""get""#, Consistency::Lease).await?, "12")?;

    let atomic_leader = c.leader(ATOMIC).await?;
    let client = Client::with_nodes(c.addrs.clone());
    let via = 1;
    println!("== atomic (SOFAJRaft AtomicStateMachine), group {ATOMIC}, leader node {} ==", atomic_leader + 1);
    expect("set", &propose(&client, via, ATOMIC, r#"{"set":{"key":"a","value":1}}"#).await?, r#"{"success":true}"#)?;
    expect("get", &propose(&client, via, ATOMIC, r#"{"get":{"key":"a"}}"#).await?, r#"{"value":1}"#)?;
    let cas_ok = propose(&client, via, ATOMIC, r#"{"cas":{"key":"a","expect":1,"new":2}}"#).await?;
    expect("cas that matches", &cas_ok, r#"{"success":true}"#)?;
    let cas_fail = propose(&client, via, ATOMIC, r#"{"cas":{"key":"a","expect":1,"new":3}}"#).await?;
    expect("cas that does not match", &cas_fail, r#"{"success":false}"#)?;
    expect("incr", &propose(&client, via, ATOMIC, r#"{"incr":{"key":"a","delta":10}}"#).await?, r#"{"value":12}"#)?;
    expect("incr", &propose(&client, via, ATOMIC, r#"{"incr":{"key":"b","delta":-5}}"#).await?, r#"{"value":-5}"#)?;
    let other = (atomic_leader + 2) % NODES;
    expect("read a", &read(c, other, ATOMIC, r#"{"get":{"key":"a"}}"#, Consistency::Linearizable).await?, "12")?;
    expect("read b", &read(c, other, ATOMIC, r#"{"get":{"key":"b"}}"#, Consistency::Follower).await?, "-5")?;

    println!("== failover: stop the counter's leader (node {}) ==", leader + 1);
    c.nodes[leader].stop().await?;
    let new_leader = c.leader(COUNTER).await?;
    println!("  group {COUNTER} elected node {}", new_leader + 1);
    let survivors = Client::with_nodes(vec![c.addrs[follower].clone(), c.addrs[(follower + 1) % NODES].clone()]);
    let answer = survivors.propose(COUNTER, Bytes::from_static(br#"{"incr":100}"#)).await?;
    println!("  propose {:<49} -> {} (log index {})", r#"{"incr":100}"#, text(&answer.result), answer.index);
    expect("incr after failover", &text(&answer.result), "112")?;
    println!("  restart node {} from its data directory", leader + 1);
    c.nodes[leader].start();
    c.wait_applied(leader, COUNTER, answer.index).await?;
    expect("caught up", &read(c, leader, COUNTER, r#""get""#, Consistency::Stale).await?, "112")?;

    println!("== status ==");
    for addr in &c.addrs {
        let status = Client::new(addr.clone()).status(None).await?;
        crate::print_status(&status, false);
    }
    Ok(())
}

/// Runs the demo with the modules in `modules` (waft_counter.wasm and
/// waft_atomic.wasm).
pub async fn run(modules: &Path) -> Result<()> {
    let mut cluster = Cluster::start(modules)?;
    let outcome = scenarios(&mut cluster).await;
    println!("stopping the cluster");
    let stopped = cluster.stop().await;
    outcome?;
    stopped?;
    println!("demo finished: every answer was as expected, and the cluster stopped cleanly");
    Ok(())
}
