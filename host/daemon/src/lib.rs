//! waft-daemon: what `waft serve` runs, and the client the `waft` CLI uses.
//!
//! Owns the asynchronous shell around `waft_node::Replica`: one tokio task per
//! group ([`driver`]) feeding its replica from a monotonic clock, the network
//! and clients; the gRPC peer transport ([`peer`]); the client service
//! ([`service`]); the client library is `waft-client` ([`client`]). Must never hold Raft
//! protocol logic (that is `waft-raft`) nor the ordering of a `Ready` (that is
//! `waft-node`): the daemon only moves bytes, time and answers.
//!
//! ```text
//!            client gRPC ──► service ──┐                   ┌──► peer senders ──► other daemons
//!                                      ├─► group inbox ──► driver (Replica::process)
//!   other daemons ──► peer service ────┘   (bounded)       └──► waiting clients (by index / read id)
//! ```
//!
//! Every queue has a named bound; a full inbox answers BUSY, a full peer queue
//! drops the message (Raft retransmits).
//!
//! What the inbox carries ([`inbox`]: `Input`, the group handle and
//! registry, admin operations, every reply type, the BUSY mapping) is a leaf
//! module every other one depends on; no two modules import each other. The
//! imports go: `inbox`, `commit`, `install` ← `peer` ← `driver` ← `groups`
//! ← `admin`; `inbox` ← `service` ← `metrics`.
//!
//! Exactly-once sessions: a client opens a session (`OpenSession`, which goes
//! through the log), numbers its commands and retries a command with the
//! same number wherever it likes; the replica's session table applies each
//! number once and answers copies with the saved result. The daemon's part
//! is small: the service turns requests into envelope bodies, the leader's
//! driver stamps them with its clock, and refusals become error codes
//! (`SESSION_EXPIRED`, `SESSION_LIMIT`, ...). Limits: [`ServeConfig::sessions`].
//!
//! A follower behind the leader's compacted log installs a snapshot: the
//! leader attaches the snapshot's manifest to `InstallSnapshot`, the follower
//! pulls the files in chunks over `PullSnapshotChunk` ([`install`]).
//!
//! Log writes of every group on the node go through one commit thread that
//! merges whatever is waiting into one synced RocksDB write ([`commit`]).
//!
//! Deploys ([`admin`]): the admin service validates and compiles a module
//! off the async threads, stores it by hash (`data_dir/modules`) and hands
//! it to the group's driver, which proposes it as a `Body::Deploy` entry;
//! every replica switches modules when that entry applies (`waft-node`).
//!
//! Groups: the services find a group in the node's registry ([`Groups`]),
//! which grows at run time. `--group` names groups at start;
//! `CreateGroup` (`waft admin create-group`, [`admin`]) creates one on its
//! voters' daemons while the node runs, stores its module and a catalogue
//! entry under the data directory, and every start opens the catalogue's
//! groups too ([`groups`]). Every group's driver, static or created, is
//! joined when the node stops.

pub use waft_client as client;
/// The client library lives in its own crate (no RocksDB or wasmtime in its
/// build); re-exported here for the daemon's users.
pub use waft_node::DIGEST_INTERVAL_DEFAULT;
pub mod admin;
pub mod commit;
pub mod config;
pub mod driver;
pub mod groups;
pub mod identity;
pub mod inbox;
pub mod install;
pub mod metrics;
pub mod modules;
pub mod peer;
pub mod security;
pub mod service;

/// Entry points for the fuzz targets (`host/fuzz`): the parsers of what
/// this crate reads from its data directory. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// The created-groups catalogue; what parses writes back the same.
    pub fn catalogue(text: &str) {
        if let Ok(entries) = crate::groups::Catalogue::parse(text) {
            let again = crate::groups::Catalogue::encode(&entries);
            assert_eq!(crate::groups::Catalogue::parse(&again), Ok(entries));
        }
    }

    /// The data directory's identity and the peer book.
    pub fn identity_files(text: &str) {
        let _ = crate::identity::parse_identity(text);
        let _ = crate::identity::parse_book(text);
    }
}

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use waft_raft::NodeId;
use waft_storage::{ModuleStore, RocksLogStore, SnapshotStore};

pub use inbox::{GroupHandle, Groups};

/// Ticks of the Raft clock per election timeout unless told otherwise. At
/// the default 10 ms tick this is 300 ms: generous for loaded test machines.
pub const ELECTION_TICKS_DEFAULT: u64 = 30;
/// Length of one Raft tick unless told otherwise.
pub const TICK_MS_DEFAULT: u64 = 10;

/// Everything `waft serve` needs to start.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub node_id: NodeId,
    /// Serves both the peer and the client service.
    pub listen: SocketAddr,
    /// The cluster's CA and this node's certificate and key; `None` only
    /// when `plaintext` was chosen.
    pub tls: Option<security::TlsPaths>,
    /// Plaintext, chosen explicitly (local development, the demo).
    pub plaintext: bool,
    /// The users file (roles per group); `None`: every caller may do
    /// everything.
    pub users: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// The other members: node id → address of their `waft serve`. This node
    /// is not in it.
    pub peers: BTreeMap<NodeId, String>,
    /// A node to join through (`--join`): its id when TLS needs it, and its
    /// address. Asked at start for the nodes it knows.
    pub join: Option<(Option<NodeId>, String)>,
    /// The address others dial this node at, when not `listen` (a wildcard
    /// listen, NAT, a container): recorded in configurations, told to the
    /// join node.
    pub advertise: Option<String>,
    /// The groups named at start and the module file each runs (groups
    /// created at run time come from the data directory's catalogue).
    pub groups: Vec<GroupSpec>,
    /// The voters a brand-new group starts with (`None`: this node and every
    /// peer). A node not among them starts empty and waits to be added with
    /// `waft admin add-peer` / `change-peers` / `add-learners`.
    pub initial_voters: Option<Vec<NodeId>>,
    /// Serve Prometheus metrics (`GET /metrics`) here; `None`: not at all.
    pub metrics_listen: Option<SocketAddr>,
    pub tick_ms: u64,
    pub election_ticks: u64,
    /// Ask for a snapshot once this many applied entries follow the last one.
    pub snapshot_margin_entries: u64,
    /// Most bytes per second this node pulls when installing a snapshot from
    /// its leader (0: as fast as the network and disk go).
    pub snapshot_pull_bytes_per_sec: u64,
    /// Also snapshot every this many seconds when anything was applied since
    /// the last snapshot (0: only by margin), as SOFAJRaft's
    /// snapshotIntervalSecs.
    pub snapshot_interval_secs: u64,
    /// Limits of every group's exactly-once session table. Must be equal on
    /// every node (a snapshot carries them; a node with others refuses it).
    pub sessions: waft_session::SessionConfig,
    /// Founding digest interval of the groups this node founds (the group's
    /// replicated setting wins once bound).
    pub digest_interval: u64,
    /// Leave a replica whose state differs from its group's fenced for an
    /// operator instead of rebuilding it from a healthy replica's snapshot.
    pub manual_rebuild: bool,
    /// Save in-memory guests' checkpoints (digest points, snapshots) on a
    /// second instance on this node's save threads, while the groups'
    /// applies go on, instead of on the apply instance in place (where
    /// every replica pauses at the same index). For a node with a core to
    /// spare: where the CPU is short the saves fall behind, checkpoints are
    /// skipped, and a wait at the replay log's bound can cost an election.
    pub background_saves: bool,
    /// Tests only: every group of this node skips the guest's command at
    /// the first client entry at or after this index, so its state differs.
    pub test_diverge_at: Option<u64>,
    /// Tests only: every group of this node fails to compile this module
    /// the first time an entry switches to it.
    pub test_compile_fault: Option<waft_storage::ModuleHash>,
}

#[derive(Clone, Debug)]
pub struct GroupSpec {
    pub group: u64,
    pub module: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot read module {path}: {source}; build it or fix the path")]
    ReadModule { path: PathBuf, source: std::io::Error },
    #[error("module {path} refused: {source}")]
    LoadModule { path: PathBuf, source: waft_runtime::LoadError },
    #[error("cannot start the wasm engine: {0}")]
    Engine(#[from] waft_runtime::EngineError),
    #[error("storage under {dir}: {source}")]
    Storage { dir: PathBuf, source: waft_storage::Error },
    #[error("{0}")]
    Replica(#[from] waft_node::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("gRPC server failed: {0}")]
    Server(#[from] tonic::transport::Error),
}

impl ServeConfig {
    fn raft_config(&self, group: u64) -> Result<waft_raft::Config, ServeError> {
        let mut raft = waft_raft::Config::new(self.node_id, self.node_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ group);
        raft.election_ticks = self.election_ticks;
        // A heartbeat several times per election timeout, and a lease well
        // inside it (the core requires lease < election timeout).
        raft.heartbeat_ticks = (self.election_ticks / 6).max(1);
        raft.lease_ticks = self.election_ticks / 2;
        // The same lease on the monotonic clock, less a drift margin: ticks
        // stop while the process stalls, real time does not.
        // At least 1 ms: 0 would mean ticks alone.
        raft.lease_ms = ((raft.lease_ticks * self.tick_ms) * (100 - LEASE_DRIFT_MARGIN_PERCENT) / 100).max(1);
        raft.snapshot_margin_entries = self.snapshot_margin_entries.max(1);
        raft.quiesce_after_ticks = self.election_ticks * QUIESCE_AFTER_ELECTION_TIMEOUTS;
        raft.validate().map_err(|e| ServeError::Config(format!("--election-ticks {}: {e}", self.election_ticks)))?;
        Ok(raft)
    }
}

/// Says at start what an operator should know about who can reach this
/// node: plaintext off loopback, tokens in clear, no roles.
fn warn_about_exposure(cfg: &ServeConfig, users: Option<&security::Users>) {
    let node = cfg.node_id;
    if cfg.tls.is_none() && !cfg.listen.ip().is_loopback() {
        tracing::warn!(
            node,
            listen = %cfg.listen,
            "serving WITHOUT TLS on a non-loopback address: traffic is readable and peers are not \
             authenticated; give --tls-ca, --tls-cert and --tls-key for anything but local development"
        );
    }
    match users {
        None if cfg.tls.is_some() => tracing::warn!(
            node,
            "no users file (--users): every holder of a certificate from the cluster's CA may do everything"
        ),
        None => tracing::warn!(node, "no users file (--users): every caller may do everything"),
        Some(users) if cfg.tls.is_none() => tracing::warn!(
            node,
            users = users.len(),
            "users and tokens without TLS: tokens travel in clear and peers are not authenticated"
        ),
        Some(users) => tracing::info!(node, users = users.len(), "roles from the users file"),
    }
}

/// A group with nothing to do for this many election timeouts goes quiet:
/// no heartbeats, no ticks, no lease, until a request, a message or the
/// loss of its leader's node wakes it.
pub const QUIESCE_AFTER_ELECTION_TIMEOUTS: u64 = 2;

/// How long a daemon started with `--join` tries to reach its join node.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks the join node which nodes it knows and adds them to this node's
/// seeds; the number of nodes learned. Retried until `JOIN_TIMEOUT`.
async fn join(
    transport: &peer::Transport,
    me: NodeId,
    my_address: &str,
    join_id: Option<NodeId>,
    join_addr: &str,
) -> Result<usize, ServeError> {
    let refused = |why: String| ServeError::Config(format!("--join {join_addr}: {why}"));
    if transport.dialer().tls() && join_id.is_none() {
        return Err(refused("with TLS, name the join node's id too: --join ID=HOST:PORT".into()));
    }
    let endpoint = transport
        .dialer()
        .endpoint(join_id.unwrap_or(waft_raft::NONE), join_addr)
        .map_err(|e| refused(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    let mut backoff = peer::RECONNECT_BACKOFF_MIN;
    let answer = loop {
        let attempt = async {
            let channel = endpoint
                .clone()
                .connect_timeout(install::CONNECT_TIMEOUT)
                .connect()
                .await
                .map_err(|e| (false, format!("cannot connect: {e}")))?;
            let req = waft_proto::admin::NodesRequest { joining_node: me, joining_address: my_address.to_string() };
            waft_proto::admin_client(channel).nodes(req).await.map(tonic::Response::into_inner).map_err(|s| {
                // A refusal is final; anything else may pass.
                let final_ = matches!(s.code(), tonic::Code::InvalidArgument | tonic::Code::PermissionDenied);
                (final_, format!("{}: {}", s.code(), s.message()))
            })
        };
        match attempt.await {
            Ok(answer) => break answer,
            Err((true, why)) => return Err(refused(why)),
            Err((false, why)) if tokio::time::Instant::now() + backoff > deadline => {
                return Err(refused(format!("not reached within {JOIN_TIMEOUT:?}: {why}")));
            }
            Err((false, why)) => {
                tracing::info!(join = %join_addr, error = %why, "the join node is not reachable yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(peer::RECONNECT_BACKOFF_MAX);
            }
        }
    };
    let mut seeds = Vec::new();
    for n in answer.nodes {
        if n.node_id == me {
            if n.address != my_address {
                tracing::warn!(
                    node = me,
                    known = %n.address,
                    "the join node knows this node's id at another address; its groups record the address                      given to add-peer"
                );
            }
            continue;
        }
        if n.node_id == waft_raft::NONE || peer::check_address(&n.address).is_err() {
            tracing::warn!(node = n.node_id, address = %n.address, "the join node named an unusable address; skipped");
            continue;
        }
        seeds.push((n.node_id, n.address));
    }
    let learned = seeds.len();
    transport.add_seeds(seeds);
    Ok(learned)
}

/// How much of the lease (`lease_ticks` ticks of real time) the monotonic
/// clock bound gives up for clock drift between nodes and tick jitter.
pub const LEASE_DRIFT_MARGIN_PERCENT: u64 = 20;

/// How long a clean shutdown waits for open client and peer connections to
/// finish before it closes them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Runs the daemon until `shutdown` completes, then stops cleanly: stops
/// accepting connections, tells every group's driver to stop (waiting
/// clients hear where else to go), waits for them, and closes RocksDB. A
/// crash instead is safe too: every acknowledged write was synced.
pub async fn serve(
    cfg: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    if cfg.node_id == waft_raft::NONE {
        return Err(ServeError::Config("--id 0 is reserved; use 1 or more".into()));
    }
    if cfg.peers.contains_key(&cfg.node_id) {
        return Err(ServeError::Config(format!("--peer lists this node's own id {}", cfg.node_id)));
    }
    cfg.sessions.validate().map_err(|e| ServeError::Config(e.to_string()))?;
    waft_node::GroupSettings { digest_interval: cfg.digest_interval, ..Default::default() }
        .validate()
        .map_err(|e| ServeError::Config(format!("--digest-interval: {e}")))?;
    // Who may connect, before anything is opened.
    let node_tls = match &cfg.tls {
        Some(paths) => Some(security::NodeTls::load(paths, cfg.node_id).map_err(ServeError::Config)?),
        None if cfg.plaintext => None,
        None => return Err(ServeError::Config("no TLS configured and plaintext not chosen".into())),
    };
    let users = match &cfg.users {
        Some(path) => Some(security::Users::load(path).map_err(ServeError::Config)?),
        None => None,
    };
    warn_about_exposure(&cfg, users.as_ref());
    let storage_err = |dir: PathBuf| move |source| ServeError::Storage { dir, source };
    let log_dir = cfg.data_dir.join("log");
    let snap_dir = cfg.data_dir.join("snapshots");
    let module_dir = cfg.data_dir.join("modules");
    let kv_dir = cfg.data_dir.join("kv");
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| ServeError::Config(format!("cannot create {}: {e}", cfg.data_dir.display())))?;
    let identity =
        identity::Identity::open(&cfg.data_dir, cfg.node_id, log_dir.exists()).map_err(ServeError::Config)?;
    let book = Arc::new(identity::PeerBook::open(&cfg.data_dir).map_err(ServeError::Config)?);
    let incarnation = format!("{:016x}", identity.incarnation);
    if identity.fresh && !cfg.peers.is_empty() {
        tracing::warn!(
            node = cfg.node_id,
            incarnation,
            "a new data directory. If this node served before and lost its data, its peers refuse its messages \
             (it votes nowhere and counts toward no quorum) until an operator runs \
             `waft admin replace-node --node {}`",
            cfg.node_id
        );
    } else {
        tracing::info!(node = cfg.node_id, incarnation, "data directory");
    }
    // One RocksDB for every group of this node; the lock is per `process`
    // call, which is where group commit across groups will go.
    let store = Arc::new(Mutex::new(RocksLogStore::open(&log_dir).map_err(storage_err(log_dir.clone()))?));
    let snapshots = Arc::new(SnapshotStore::open(&snap_dir).map_err(storage_err(snap_dir.clone()))?);
    let modules = Arc::new(ModuleStore::open(&module_dir).map_err(storage_err(module_dir.clone()))?);
    // kv state machines' stores: rebuilt from snapshots and logs at open.
    let kv = waft_node::KvStores::rocks(waft_storage::RocksKv::open(&kv_dir).map_err(storage_err(kv_dir.clone()))?);
    let engine = waft_runtime::Engine::new()?;
    let (committer, commit_thread) = commit::Committer::start(store.clone())
        .map_err(|e| ServeError::Config(format!("cannot start the log commit thread: {e}")))?;

    let mut addresses = cfg.peers.clone();
    addresses.insert(cfg.node_id, cfg.listen.to_string());
    // The founding voters of the groups named by --group.
    let voters: Vec<NodeId> = match &cfg.initial_voters {
        Some(v) => {
            if let Some(unknown) = v.iter().find(|id| !addresses.contains_key(id)) {
                return Err(ServeError::Config(format!("initial voter {unknown} is neither this node nor a --peer")));
            }
            v.clone()
        }
        None => addresses.keys().copied().collect(),
    };
    let auth = Arc::new(security::Auth { tls: node_tls.is_some(), users, stats: Default::default() });
    // This node's own address goes into the book (and from there into
    // configurations) only when others can dial it: --advertise, else a
    // --listen that is not a wildcard.
    let own = cfg.advertise.clone().or_else(|| (!cfg.listen.ip().is_unspecified()).then(|| cfg.listen.to_string()));
    let mut seeds = addresses.clone();
    match &own {
        Some(own) => seeds.insert(cfg.node_id, own.clone()),
        None => seeds.remove(&cfg.node_id),
    };
    let transport =
        peer::Transport::start(cfg.node_id, identity.incarnation, &seeds, security::Dialer::new(node_tls.clone()));

    if let Some((join_id, join_addr)) = &cfg.join {
        let Some(own) = &own else {
            return Err(ServeError::Config(format!(
                "--join needs an address the cluster can dial this node at, and --listen {} is a wildcard; \
                 give it with --advertise HOST:PORT",
                cfg.listen
            )));
        };
        let known = join(&transport, cfg.node_id, own, *join_id, join_addr).await?;
        tracing::info!(node = cfg.node_id, join = %join_addr, nodes = known, "joined: knows the nodes the join node knows");
    }

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let host = Arc::new(groups::Host::new(
        cfg.clone(),
        store.clone(),
        committer.clone(),
        snapshots.clone(),
        modules,
        kv,
        engine,
        transport.clone(),
        stopped.clone(),
    )?);
    // Drivers that started before a failure here stop with the runtime.
    // Opening loads each group's latest snapshot into its guest, which can
    // take long: off the async worker.
    tokio::task::block_in_place(|| host.open_at_start(&voters))?;
    let groups = host.groups().clone();
    // A lost peer wakes the quiet groups it leads here (their followers
    // would otherwise never notice it gone).
    let registry = groups.clone();
    transport.on_lost(move |node| {
        for (_, g) in registry.all() {
            let led_there = {
                let status = g.status.borrow();
                status.leader_id == node && status.role() != waft_proto::client::Role::Leader
            };
            if led_there {
                let _ = g.inbox.try_send(inbox::Input::PeerLost(node));
            }
        }
    });
    if groups.is_empty() {
        tracing::info!(node = cfg.node_id, "serving no group yet; create one with `waft admin create-group`");
    }

    let pipelines = Arc::new(service::PipelineStats::default());
    if let Some(addr) = cfg.metrics_listen {
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Listen { addr, source })?;
        tracing::info!(node = cfg.node_id, metrics = %metrics::describe(addr), "serving metrics");
        tokio::spawn(metrics::serve(
            listener,
            cfg.node_id,
            groups.clone(),
            committer.stats_handle(),
            pipelines.clone(),
            auth.clone(),
            stopped.clone(),
        ));
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Listen { addr: cfg.listen, source })?;
    tracing::info!(node = cfg.node_id, listen = %cfg.listen, groups = groups.len(), peers = cfg.peers.len(), "serving");
    // Replies and Raft messages are small writes: without TCP_NODELAY a reply
    // can wait ~40 ms for the peer's delayed ACK (Nagle). tonic's builder
    // option does not reach a listener we pass in, so set it here.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let (shutdown_begun, begun) = tokio::sync::oneshot::channel::<()>();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &node_tls {
        builder = builder.tls_config(tls.server_config())?;
    }
    let server = tokio::spawn(
        builder
            .add_service(waft_proto::peer_server(peer::PeerService::new(
                groups.clone(),
                host.clone(),
                snapshots.clone(),
                book.clone(),
                transport,
                auth.clone(),
                stopped.clone(),
            )))
            .add_service(waft_proto::admin_server(admin::AdminService::new(host.clone(), book.clone(), auth.clone())))
            .add_service(waft_proto::client_server(service::ClientService::new(
                cfg.node_id,
                groups,
                stopped.clone(),
                pipelines,
                auth,
            )))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = begun.await;
            }),
    );
    tokio::pin!(server);
    tokio::select! {
        () = shutdown => {}
        ended = &mut server => {
            // The server stopped on its own: an error to report.
            let _ = stop.send(true);
            return match ended {
                Ok(result) => result.map_err(ServeError::from),
                Err(e) => Err(ServeError::Config(format!("the gRPC server task failed: {e}"))),
            };
        }
    }
    tracing::info!(node = cfg.node_id, "shutting down");
    let _ = shutdown_begun.send(());
    // Drivers first: waiting clients hear where to go while connections are
    // still open; then give the connections a bounded grace period.
    let _ = stop.send(true);
    // No group opens from here on; created ones are joined like the rest.
    for task in host.close() {
        let _ = task.await;
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await.is_err() {
        tracing::info!(node = cfg.node_id, "connections still open after the grace period; closing them");
        server.abort();
    }
    // The drivers are gone; with the last handle the commit thread ends and
    // RocksDB closes.
    drop(committer);
    drop(store);
    let _ = tokio::task::spawn_blocking(move || commit_thread.join()).await;
    tracing::info!(node = cfg.node_id, "stopped");
    Ok(())
}
