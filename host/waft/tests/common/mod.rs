//! A cluster of real `waft serve` processes on loopback, for the tests of
//! this crate.
//!
//! Owns the children: each is killed (SIGKILL) and reaped when the cluster
//! drops, even when a test panics, so no test leaves a daemon behind. Nodes
//! can be killed and restarted with the same data directory and flags. Waits
//! are polls of `Status` with a deadline, never bare sleeps.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use waft_daemon::client::{self, Client};
use waft_proto::client::{Consistency, GroupStatus, Role};

/// Bound on waiting for an elected leader everyone agrees on.
pub const LEADER_DEADLINE: Duration = Duration::from_secs(30);
/// Bound on waiting for a node to catch up.
pub const CATCH_UP_DEADLINE: Duration = Duration::from_secs(60);
pub const POLL_PAUSE: Duration = Duration::from_millis(50);
/// Bound on one `waft admin ... snapshot`.
pub const ADMIN_DEADLINE: Duration = Duration::from_secs(120);
/// Concurrent writers of a `Load`.
pub const LOAD_WRITERS: usize = 8;
/// Bound on waiting for a load to reach a number of acknowledged writes.
pub const LOAD_DEADLINE: Duration = Duration::from_secs(60);

/// The atomic module's `set` command.
pub fn set(key: &str, value: u64) -> Bytes {
    Bytes::from(format!(r#"{{"set":{{"key":"{key}","value":{value}}}}}"#))
}

/// The atomic module's `get` query.
pub fn get(key: &str) -> Bytes {
    Bytes::from(format!(r#"{{"get":{{"key":"{key}"}}}}"#))
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

/// A guest component built by `cargo xtask guests`, e.g. "waft_counter".
pub fn module(name: &str) -> PathBuf {
    let dir = match std::env::var_os("WAFT_GUEST_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => target_dir().join("wasm32-wasip2/release"),
    };
    let path = dir.join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing; build the guests first with `cargo xtask guests`", path.display());
    path
}

/// `n` distinct ports nothing listens on right now, for daemons to bind.
/// They come from outside the OS's ephemeral range: a port the OS picked
/// (`bind :0`) and released can be taken at once as the source port of any
/// outgoing connection (another test's client, say), and the daemon's bind
/// then fails. Each test process starts at its own offset, and each port is
/// checked by binding it while the others are picked.
fn free_ports(n: usize) -> Vec<u16> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    const ATTEMPTS_MAX: usize = 10_000;
    let (lo, hi) = listen_range();
    let span = u64::from(hi - lo);
    let start =
        u64::from(std::process::id()) * 7919 + NEXT.fetch_add(4 * n as u64, std::sync::atomic::Ordering::Relaxed);
    let mut held = Vec::with_capacity(n);
    for k in start..start + ATTEMPTS_MAX as u64 {
        if held.len() == n {
            break;
        }
        let port = lo + (k % span) as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    assert_eq!(held.len(), n, "no {n} free ports in {lo}..{hi} after {ATTEMPTS_MAX} attempts");
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// Ports daemons listen on in tests: below the OS's ephemeral range (read
/// from /proc), or above it when it starts too low.
fn listen_range() -> (u16, u16) {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok().and_then(|t| {
        let mut it = t.split_whitespace().map(|v| v.parse::<u16>().ok());
        Some((it.next()??, it.next()??))
    });
    match ephemeral {
        Some((lo, _)) if lo > 12_000 => (10_000, lo),
        Some((_, hi)) if hi < 63_000 => (hi + 1, 65_535),
        _ => (10_000, 32_767),
    }
}

/// The groups every node serves, and flags added to every node's command line.
pub struct Spec {
    pub groups: Vec<(u64, PathBuf)>,
    pub args: Vec<String>,
}

impl Spec {
    pub fn one(group: u64, module_name: &str) -> Spec {
        Spec { groups: vec![(group, module(module_name))], args: Vec::new() }
    }

    pub fn arg(mut self, flag: &str, value: impl ToString) -> Spec {
        self.args.push(flag.to_string());
        self.args.push(value.to_string());
        self
    }
}

pub struct Cluster {
    pub root: PathBuf,
    pub addrs: Vec<String>,
    /// Each node's Prometheus endpoint (`--metrics-listen`).
    pub metrics_addrs: Vec<String>,
    spec: Spec,
    /// Flags only for one node (by index), e.g. a throttle.
    extra: Vec<Vec<String>>,
    /// Nodes started with only `--join` (the node they join through): no
    /// `--peer`, no `--group`, and no other node names them as a peer.
    joining: Vec<Option<usize>>,
    children: Vec<Option<Child>>,
    /// With TLS: the directory `waft certs init` wrote (every node serves
    /// with its certificate there and the cluster's helpers sign in as
    /// `admin`); without, every node runs `--plaintext`.
    pub certs: Option<PathBuf>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A passing test leaves nothing behind: every node's RocksDB
        // preallocates its write-ahead log, so a full run would otherwise
        // keep gigabytes. A failing one keeps its nodes' data and logs.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

impl Cluster {
    /// Starts `nodes` daemons, each a member of every group in `spec`.
    pub fn start(name: &str, nodes: usize, spec: Spec) -> Cluster {
        let mut cluster = Cluster::prepare(name, nodes, spec);
        for i in 0..nodes {
            cluster.start_node(i);
        }
        cluster
    }

    /// Like `start`, but starts no node: set per-node flags, then
    /// `start_node` each in the order the test needs.
    pub fn prepare(name: &str, nodes: usize, spec: Spec) -> Cluster {
        let root = target_dir().join("waft-daemon-tests").join(name);
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let ports = free_ports(2 * nodes);
        let addrs: Vec<String> = ports[..nodes].iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let metrics_addrs: Vec<String> = ports[nodes..].iter().map(|p| format!("127.0.0.1:{p}")).collect();
        Cluster {
            root,
            addrs,
            metrics_addrs,
            spec,
            extra: vec![Vec::new(); nodes],
            joining: vec![None; nodes],
            children: (0..nodes).map(|_| None).collect(),
            certs: None,
        }
    }

    /// Like `prepare`, with TLS: writes a development CA and certificates
    /// (`waft certs init`, nodes 1..=nodes) under the cluster's directory,
    /// and each node serves with its own.
    pub fn prepare_tls(name: &str, nodes: usize, spec: Spec) -> Cluster {
        let mut cluster = Cluster::prepare(name, nodes, spec);
        let certs = cluster.root.join("certs");
        let ids: Vec<String> = (1..=nodes).map(|n| n.to_string()).collect();
        let out = Command::new(env!("CARGO_BIN_EXE_waft"))
            .args(["certs", "init"])
            .arg(&certs)
            .args(["--nodes", &ids.join(",")])
            .output()
            .expect("cannot run `waft certs init`");
        assert!(out.status.success(), "waft certs init: {}", String::from_utf8_lossy(&out.stderr));
        cluster.certs = Some(certs);
        cluster
    }

    /// The credentials of `user` (a name `waft certs init` wrote: `admin`,
    /// `client`), with `token` if given; plaintext without TLS.
    pub fn credentials(&self, user: &str, token: Option<&str>) -> client::Credentials {
        let tls = self.certs.as_ref().map(|dir| {
            let read = |f: String| std::fs::read(dir.join(&f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            client::ClientTls::from_pem(
                &read("ca.pem".into()),
                &read(format!("{user}.pem")),
                &read(format!("{user}.key")),
                None,
            )
        });
        client::Credentials::new(tls, token).expect("valid credentials")
    }

    /// The `waft` CLI's flags to sign in as `user` (nothing without TLS).
    pub fn cli_credentials(&self, user: &str) -> Vec<String> {
        match &self.certs {
            None => Vec::new(),
            Some(dir) => vec![
                "--tls-ca".into(),
                dir.join("ca.pem").display().to_string(),
                "--tls-cert".into(),
                dir.join(format!("{user}.pem")).display().to_string(),
                "--tls-key".into(),
                dir.join(format!("{user}.key")).display().to_string(),
            ],
        }
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.root.join(format!("node-{}", i + 1))
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.root.join(format!("node-{}.log", i + 1))
    }

    /// Makes node `i` a daemon that knows only node `via`'s address
    /// (`--join`); set before any node starts.
    pub fn set_joining(&mut self, i: usize, via: usize) {
        self.joining[i] = Some(via);
    }

    /// Flags for node `i` only, used from its next start on.
    pub fn set_extra_args(&mut self, i: usize, args: &[&str]) {
        self.extra[i] = args.iter().map(|a| a.to_string()).collect();
    }

    fn command(&self, i: usize) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_waft"));
        cmd.arg("serve").args(["--id", &(i + 1).to_string()]).args(["--listen", &self.addrs[i]]);
        cmd.args(["--metrics-listen", &self.metrics_addrs[i]]);
        cmd.arg("--data-dir").arg(self.data_dir(i));
        if let Some(via) = self.joining[i] {
            cmd.args(["--join", &self.addrs[via]]);
        } else {
            for (group, module) in &self.spec.groups {
                cmd.arg("--group").arg(format!("{group}={}", module.display()));
            }
            for (p, addr) in self.addrs.iter().enumerate().filter(|(p, _)| *p != i && self.joining[*p].is_none()) {
                cmd.args(["--peer", &format!("{}={addr}", p + 1)]);
            }
        }
        match &self.certs {
            Some(dir) => {
                cmd.arg("--tls-ca").arg(dir.join("ca.pem"));
                cmd.arg("--tls-cert").arg(dir.join(format!("node-{}.pem", i + 1)));
                cmd.arg("--tls-key").arg(dir.join(format!("node-{}.key", i + 1)));
            }
            None => {
                cmd.arg("--plaintext");
            }
        }
        cmd.args(&self.spec.args).args(&self.extra[i]);
        cmd
    }

    /// Starts (or restarts, on its data directory) node `i`.
    pub fn start_node(&mut self, i: usize) {
        assert!(self.children[i].is_none(), "node {} is running", i + 1);
        let mut cmd = self.command(i);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(i)).unwrap();
        cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        self.children[i] = Some(cmd.spawn().expect("cannot start `waft serve`"));
    }

    /// SIGKILLs node `i` and reaps it: no chance to flush or say goodbye.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM to node `i` and waits (bounded) for it to exit; returns
    /// whether it exited successfully.
    pub fn terminate(&mut self, i: usize, deadline: Duration) -> bool {
        let Some(mut child) = self.children[i].take() else { return false };
        let pid = child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().map(|s| s.success()).unwrap_or(false);
        assert!(sent, "cannot send SIGTERM to node {}", i + 1);
        let until = Instant::now() + deadline;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < until => std::thread::sleep(POLL_PAUSE),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }

    /// The process id of node `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children[i].as_ref().map(Child::id)
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.children[i].is_some()
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.addrs.len()).filter(|i| self.is_running(*i)).collect()
    }

    /// A client of node `i` (with TLS: signed in as `admin`).
    pub fn client(&self, i: usize) -> Client {
        Client::with_credentials(vec![self.addrs[i].clone()], self.credentials("admin", None))
    }

    /// A client that knows every node, starting at node `i`.
    pub fn client_of_all(&self, i: usize) -> Client {
        let n = self.addrs.len();
        Client::with_credentials(
            (0..n).map(|k| self.addrs[(i + k) % n].clone()).collect(),
            self.credentials("admin", None),
        )
    }

    /// Panics if a node the cluster believes running has exited.
    pub fn check_alive(&mut self) {
        for (i, child) in self.children.iter_mut().enumerate() {
            if let Some(c) = child
                && let Ok(Some(exit)) = c.try_wait()
            {
                let log = std::fs::read_to_string(self.root.join(format!("node-{}.log", i + 1))).unwrap_or_default();
                let tail: String =
                    log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
                panic!("node {} exited early: {exit}\n--- its log, last lines ---\n{tail}", i + 1);
            }
        }
    }

    /// Node `i`'s view of `group`, if it answers.
    pub async fn status(&self, i: usize, group: u64) -> Option<GroupStatus> {
        self.client(i).status(Some(group)).await.ok().and_then(|s| s.groups.into_iter().next())
    }

    /// Waits until every running node agrees on one leader of `group`;
    /// returns its index.
    pub async fn wait_for_leader(&mut self, group: u64) -> usize {
        let running = self.running();
        self.wait_for_leader_among(group, &running).await
    }

    /// Waits until the nodes `among` (indexes; all running) agree on one
    /// leader of `group`, one of them; returns its index.
    pub async fn wait_for_leader_among(&mut self, group: u64, among: &[usize]) -> usize {
        let deadline = Instant::now() + LEADER_DEADLINE;
        loop {
            self.check_alive();
            let running: Vec<usize> = among.to_vec();
            let mut leaders = Vec::new();
            let mut leader_index = None;
            for &i in &running {
                if let Some(g) = self.status(i, group).await {
                    leaders.push(g.leader_id);
                    if g.role() == Role::Leader {
                        leader_index = Some(i);
                    }
                }
            }
            if let Some(i) = leader_index
                && leaders.len() == running.len()
                && leaders.iter().all(|l| *l == (i + 1) as u64)
            {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader of group {group} within {LEADER_DEADLINE:?}; saw {leaders:?}"
            );
            tokio::time::sleep(POLL_PAUSE).await;
        }
    }

    /// Waits until node `i` has applied at least `index` of `group`.
    pub async fn wait_applied(&mut self, i: usize, group: u64, index: u64) -> GroupStatus {
        let deadline = Instant::now() + CATCH_UP_DEADLINE;
        loop {
            self.check_alive();
            if let Some(g) = self.status(i, group).await
                && g.applied_index >= index
            {
                return g;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not apply index {index} within {CATCH_UP_DEADLINE:?}",
                i + 1
            );
            tokio::time::sleep(POLL_PAUSE).await;
        }
    }
}

impl Cluster {
    /// Node `i`'s Prometheus page (`GET /metrics`).
    pub async fn scrape(&self, i: usize) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(&self.metrics_addrs[i]).await.expect("metrics endpoint");
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: waft\r\n\r\n").await.unwrap();
        let mut page = String::new();
        conn.read_to_string(&mut page).await.unwrap();
        assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
        page
    }
}

/// The value of metric `name` for `group` in a scraped page (labels after
/// `group` are matched by `extra`, e.g. `role="leader"`).
pub fn metric(page: &str, name: &str, group: u64, extra: &str) -> Option<u64> {
    page.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix('{')?;
        let (labels, value) = rest.split_once("} ")?;
        (labels.contains(&format!("group=\"{group}\"")) && labels.contains(extra)).then(|| value.trim().parse().ok())?
    })
}

/// A result's bytes as text.
pub fn text(answer: &client::Answer) -> String {
    String::from_utf8_lossy(&answer.result).into_owned()
}

/// Whether `path` holds a directory whose name starts with `prefix`, anywhere
/// below it (used to find a snapshot install's temporary directory).
pub fn has_dir_named(path: &Path, prefix: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(path) else { return false };
    entries.flatten().any(|e| {
        let p = e.path();
        p.is_dir() && (e.file_name().to_string_lossy().starts_with(prefix) || has_dir_named(&p, prefix))
    })
}

/// Writers that set distinct keys until stopped, remembering which writes
/// were acknowledged and when the last one was.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub acked: Arc<Mutex<Vec<(String, Instant)>>>,
    failed: Arc<Mutex<u64>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `LOAD_WRITERS` writers on `group` of the atomic module, each
    /// knowing the nodes `seeds` (by index) and starting at a different one.
    pub fn start(cluster: &Cluster, group: u64, seeds: &[usize]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(0));
        let mut tasks = Vec::new();
        for w in 0..LOAD_WRITERS {
            // Writers start at different nodes, so some start at one that
            // fails; each knows them all, as a production client would, and
            // writes in a session, so a write it retries applies once.
            let addrs = (0..seeds.len()).map(|k| cluster.addrs[seeds[(w + k) % seeds.len()]].clone()).collect();
            let client = Client::with_nodes(addrs);
            let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w}-{n}");
                    match client.propose(group, set(&key, n)).await {
                        Ok(answer) => {
                            assert_eq!(text(&answer), r#"{"success":true}"#);
                            acked.lock().unwrap().push((key, Instant::now()));
                        }
                        // Outcome unknown (it may still apply): only
                        // acknowledged writes are checked. Try the next key.
                        Err(_) => {
                            *failed.lock().unwrap() += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    n += 1;
                }
            }));
        }
        Load { stop, acked, failed, tasks }
    }

    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `n` writes in all were acknowledged.
    pub async fn wait_acked(&self, cluster: &mut Cluster, n: usize) {
        let deadline = Instant::now() + LOAD_DEADLINE;
        while self.acked_count() < n {
            cluster.check_alive();
            assert!(Instant::now() < deadline, "only {} of {n} writes acknowledged", self.acked_count());
            tokio::time::sleep(POLL_PAUSE).await;
        }
    }

    pub async fn stop(self) -> (Vec<(String, Instant)>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failed = *self.failed.lock().unwrap();
        (Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap(), failed)
    }
}

/// Reads every key on node `i` (after it applied everything): each
/// acknowledged write must be there with its value.
pub async fn assert_all_present(cluster: &Cluster, i: usize, group: u64, acked: &[(String, Instant)]) {
    let client = cluster.client(i);
    let keys: Vec<String> = acked.iter().map(|(k, _)| k.clone()).collect();
    let mut tasks = Vec::new();
    for chunk in keys.chunks(keys.len().div_ceil(8).max(1)) {
        let (client, chunk) = (client.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for key in chunk {
                let value = key.rsplit('-').next().unwrap().to_string();
                let answer = client.query(group, get(&key), Consistency::Stale).await.unwrap();
                assert_eq!(text(&answer), value, "acknowledged write {key} is missing or wrong");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Every file named `name` anywhere below `path`.
pub fn files_named(path: &Path, name: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(path) else { return Vec::new() };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            found.extend(files_named(&p, name));
        } else if e.file_name() == name {
            found.push(p);
        }
    }
    found
}

/// Resident memory of process `pid`, in KiB (Linux: /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the `waft` binary with `args` (off the async threads) and returns
/// whether it succeeded, its stdout and its stderr.
pub async fn run_waft(args: &[&str]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || Command::new(env!("CARGO_BIN_EXE_waft")).args(&args).output())
        .await
        .unwrap()
        .expect("cannot run the waft binary");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// The groups node `i` serves, by its status.
pub async fn groups_of(cluster: &Cluster, i: usize) -> Vec<u64> {
    match client::status(&cluster.addrs[i], None).await {
        Ok(s) => s.groups.iter().map(|g| g.group).collect(),
        Err(e) => panic!("node {} did not answer its status: {e}", i + 1),
    }
}

/// `waft admin --addr NODE --group G snapshot`: the index it reports, or why
/// it failed.
pub async fn admin_snapshot(cluster: &Cluster, i: usize, group: u64) -> Result<u64, String> {
    let addr = cluster.addrs[i].clone();
    let group = group.to_string();
    let args = ["admin", "--addr", &addr, "--group", &group, "snapshot"];
    match tokio::time::timeout(ADMIN_DEADLINE, run_waft(&args)).await {
        Err(_) => Err(format!("no answer within {ADMIN_DEADLINE:?}")),
        Ok((false, out, err)) => Err(format!("{}{}", out.trim(), err.trim())),
        Ok((true, out, err)) => out
            .lines()
            .find_map(|l| l.strip_prefix("snapshot at index ")?.trim().parse().ok())
            .ok_or_else(|| format!("no snapshot index in its output: {out}{err}")),
    }
}

/// The `state` file of node `i`'s newest snapshot of `group`, and that
/// snapshot's index (`snapshots/group-G/snap-INDEX-TERM/state`).
pub fn newest_snapshot_state(cluster: &Cluster, i: usize, group: u64) -> Option<(u64, PathBuf)> {
    let group_dir = format!("group-{group:020}");
    files_named(&cluster.data_dir(i), "state")
        .into_iter()
        .filter_map(|path| {
            let snap = path.parent()?;
            if snap.parent()?.file_name()?.to_str()? != group_dir {
                return None;
            }
            let (index, term) = snap.file_name()?.to_str()?.strip_prefix("snap-")?.split_once('-')?;
            term.parse::<u64>().ok()?;
            Some((index.parse::<u64>().ok()?, path))
        })
        .max_by_key(|(index, _)| *index)
}
