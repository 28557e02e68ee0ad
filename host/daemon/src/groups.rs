//! The node's groups: the registry every service looks a group up in
//! ([`Groups`]), the opening of a group's replica and driver ([`Host`]) at
//! start or at run time (`waft admin create-group`), and the catalogue that
//! brings groups created at run time back after a restart ([`Catalogue`]).
//!
//! Owns which groups this node serves and the founding module and voters of
//! each. Must never make a request wait on a create: services read the
//! registry under a read lock held for one map lookup, and a create opens its
//! replica before it takes the write lock for one insert. Every group shares
//! the node's RocksDB, commit thread, peer connections and stop signal.
//!
//! A created group is durable before it is announced: its module goes into
//! the node's [`ModuleStore`] (by hash), its replica opens, then the
//! catalogue (`data_dir/groups/catalogue`, written atomically) names it, and
//! only then does its driver start. A crash before the catalogue write
//! leaves storage a retry of the same create reopens; after it, the restart
//! opens the group from the catalogue without any `--group` flag. The
//! catalogue's module, like a `--group` file, only founds the group: deploys
//! replace it through the log, and a restarting replica runs the module its
//! snapshot or log says (waft-node).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use waft_proto::admin::CreateOutcome;
use waft_proto::client;
use waft_raft::NodeId;
use waft_storage::{ModuleHash, ModuleStore, RocksLogStore, SnapshotStore};

use crate::commit::Committer;
use crate::driver;
use crate::inbox::Groups;
use crate::peer::Transport;
use crate::{ServeConfig, ServeError};

/// Groups one node serves at most (from `--group` and created at run time).
pub const GROUPS_MAX: usize = 1024;
/// Largest module a create may carry. It travels in one admin message, so it
/// must fit the admin service's message limit with room for the rest.
pub const CREATE_MODULE_BYTES_MAX: usize = 8 * 1024 * 1024;
const _: () = assert!(CREATE_MODULE_BYTES_MAX + 64 * 1024 <= waft_proto::CLIENT_MESSAGE_BYTES_MAX);
/// Compiled modules a node keeps for the next create of the same module.
pub const COMPILED_MODULES_MAX: usize = 8;
/// Founding voters a create may name at most.
pub const CREATE_VOTERS_MAX: usize = 64;
/// The catalogue file is refused beyond this (a line per group, under 200 bytes).
pub const CATALOGUE_BYTES_MAX: u64 = 1024 * 1024;
/// Where the catalogue lives under the data directory, and its file name.
pub const CATALOGUE_DIR: &str = "groups";
pub const CATALOGUE_FILE: &str = "catalogue";

/// What a group was founded with: its first module and voters. Two creates
/// of one group agree when these are equal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Founding {
    pub module_hash: ModuleHash,
    /// Sorted, without duplicates.
    pub voters: Vec<NodeId>,
}

impl Founding {
    pub fn new(module_hash: ModuleHash, voters: &[NodeId]) -> Founding {
        let mut voters = voters.to_vec();
        voters.sort_unstable();
        voters.dedup();
        Founding { module_hash, voters }
    }
}

impl std::fmt::Display for Founding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "module {} and voters {}", self.module_hash, list(&self.voters))
    }
}

fn list(ids: &[NodeId]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// The durable list of groups created at run time on this node.
///
/// One line per group, `group 2 voters 1,2,3 module <sha-256 hex>`; lines
/// starting with `#` are comments. Rewritten whole, atomically, on each change.
#[derive(Debug)]
pub struct Catalogue {
    dir: PathBuf,
    /// Invariant: what the file on disk says.
    entries: BTreeMap<u64, Founding>,
}

impl Catalogue {
    /// Opens (creating the directory if needed) the catalogue under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Catalogue, String> {
        let dir = data_dir.join(CATALOGUE_DIR);
        waft_storage::fsutil::create_dir_durable(&dir).map_err(|e| e.to_string())?;
        // Remains of a write a crash interrupted; the file itself is whole.
        waft_storage::fsutil::remove_tmp_entries(&dir).map_err(|e| e.to_string())?;
        let path = dir.join(CATALOGUE_FILE);
        let entries = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            Ok(m) if m.len() > CATALOGUE_BYTES_MAX => {
                return Err(format!("{} has {} bytes, more than {CATALOGUE_BYTES_MAX}", path.display(), m.len()));
            }
            Ok(_) => {
                let text =
                    std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                Catalogue::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?
            }
        };
        Ok(Catalogue { dir, entries })
    }

    pub fn entries(&self) -> &BTreeMap<u64, Founding> {
        &self.entries
    }

    /// Adds `group` durably (the file is replaced atomically, then synced).
    pub fn add(&mut self, group: u64, founding: Founding) -> Result<(), String> {
        let mut entries = self.entries.clone();
        entries.insert(group, founding);
        let text = Catalogue::encode(&entries);
        waft_storage::fsutil::write_atomic(&self.dir, CATALOGUE_FILE, text.as_bytes()).map_err(|e| e.to_string())?;
        self.entries = entries;
        Ok(())
    }

    pub(crate) fn encode(entries: &BTreeMap<u64, Founding>) -> String {
        let mut text = String::from(
            "# Groups created at run time on this node (waft admin create-group): their\n\
             # founding module (in ../modules) and voters. Written by waft; do not edit.\n",
        );
        for (group, f) in entries {
            text.push_str(&format!("group {group} voters {} module {}\n", list(&f.voters), f.module_hash));
        }
        text
    }

    pub(crate) fn parse(text: &str) -> Result<BTreeMap<u64, Founding>, String> {
        let mut entries = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
            let words: Vec<&str> = line.split_whitespace().collect();
            let ["group", group, "voters", voters, "module", hash] = words.as_slice() else {
                return Err(bad("expected `group ID voters ID,ID,... module HASH`"));
            };
            let group: u64 = group.parse().map_err(|_| bad("not a group id"))?;
            let voters = voters
                .split(',')
                .map(|v| v.parse::<u64>().map_err(|_| bad("not a node id")))
                .collect::<Result<Vec<_>, _>>()?;
            let hash: ModuleHash = hash.parse().map_err(|e: String| bad(&e))?;
            if group == waft_proto::GROUP_NONE || voters.contains(&waft_raft::NONE) {
                return Err(bad("id 0 is reserved"));
            }
            if entries.insert(group, Founding::new(hash, &voters)).is_some() {
                return Err(bad("group listed twice"));
            }
        }
        Ok(entries)
    }
}

/// What opening a group needs from the node; released at shutdown so the
/// commit thread and RocksDB can close.
struct Shared {
    store: Arc<Mutex<RocksLogStore>>,
    committer: Committer,
}

struct HostState {
    /// Every group this node serves and what it was founded with.
    /// Invariant: the same keys as the registry.
    founding: BTreeMap<u64, Founding>,
    catalogue: Catalogue,
    /// Every driver started, static or created, to join at shutdown.
    drivers: Vec<tokio::task::JoinHandle<()>>,
    /// `None` once the node began to shut down: no group opens after that.
    shared: Option<Shared>,
}

/// A replica opened and what its driver needs besides.
struct Opened {
    replica: waft_node::Replica,
    command_bytes_max: u64,
    store: Arc<Mutex<RocksLogStore>>,
    committer: Committer,
}

/// Opens groups on this node, at start and at run time. One per daemon.
pub struct Host {
    cfg: ServeConfig,
    snapshots: Arc<SnapshotStore>,
    /// Modules by hash (`data_dir/modules`): created groups' founding
    /// modules and deployed ones.
    modules: Arc<ModuleStore>,
    /// Where kv state machines keep their state.
    kv: waft_node::KvStores,
    engine: waft_runtime::Engine,
    /// Peers' queues and every known node's address, this node's included.
    transport: Transport,
    stop: watch::Receiver<bool>,
    groups: Arc<Groups>,
    /// Held while a group opens: creates run one at a time.
    state: Mutex<HostState>,
    /// Module pulls and compiles ahead of deploys (`modules::prepare`), at
    /// most `PREPARES_AT_ONCE_MAX` at once.
    prepares: tokio::sync::Semaphore,
    /// The modules compiled last (newest first, at most
    /// `COMPILED_MODULES_MAX`): creating a thousand groups of one module
    /// compiles it once.
    compiled: Mutex<std::collections::VecDeque<waft_node::GuestModule>>,
}

impl Host {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: ServeConfig,
        store: Arc<Mutex<RocksLogStore>>,
        committer: Committer,
        snapshots: Arc<SnapshotStore>,
        modules: Arc<ModuleStore>,
        kv: waft_node::KvStores,
        engine: waft_runtime::Engine,
        transport: Transport,
        stop: watch::Receiver<bool>,
    ) -> Result<Host, ServeError> {
        let catalogue =
            Catalogue::open(&cfg.data_dir).map_err(|e| ServeError::Config(format!("group catalogue: {e}")))?;
        Ok(Host {
            cfg,
            snapshots,
            modules,
            kv,
            engine,
            transport,
            stop,
            groups: Arc::new(Groups::default()),
            state: Mutex::new(HostState {
                founding: BTreeMap::new(),
                catalogue,
                drivers: Vec::new(),
                shared: Some(Shared { store, committer }),
            }),
            prepares: tokio::sync::Semaphore::new(crate::modules::PREPARES_AT_ONCE_MAX),
            compiled: Mutex::new(std::collections::VecDeque::new()),
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.cfg.node_id
    }

    /// `bytes` compiled (blocking: run it off the async threads), or the
    /// same module compiled before. `verified`: the hash the caller just
    /// checked the bytes against (else they are hashed here).
    pub fn load_module(
        &self,
        bytes: Bytes,
        verified: Option<ModuleHash>,
    ) -> Result<waft_node::GuestModule, waft_runtime::LoadError> {
        let hash = verified.unwrap_or_else(|| ModuleHash::of(&bytes));
        let lock = || self.compiled.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(module) = lock().iter().find(|m| m.hash() == hash).cloned() {
            return Ok(module);
        }
        let module = waft_node::GuestModule::load_verified(&self.engine, bytes, hash)?;
        let mut compiled = lock();
        compiled.push_front(module.clone());
        compiled.truncate(COMPILED_MODULES_MAX);
        Ok(module)
    }

    pub fn groups(&self) -> &Arc<Groups> {
        &self.groups
    }

    pub fn engine(&self) -> &waft_runtime::Engine {
        &self.engine
    }

    pub fn modules(&self) -> &Arc<ModuleStore> {
        &self.modules
    }

    /// Permits for module pulls and compiles ahead of deploys.
    pub fn prepares(&self) -> &tokio::sync::Semaphore {
        &self.prepares
    }

    /// The most bytes a second this node pulls of a snapshot or a module
    /// (0: unlimited).
    pub fn pull_bytes_per_sec(&self) -> u64 {
        self.cfg.snapshot_pull_bytes_per_sec
    }

    /// A module hash whose compile fails on this node (tests only).
    pub fn test_compile_fault(&self) -> Option<ModuleHash> {
        self.cfg.test_compile_fault
    }

    /// How this node dials the others.
    pub fn dialer(&self) -> &crate::security::Dialer {
        self.transport.dialer()
    }

    /// Every node known now (this one included) and its address.
    pub fn addresses(&self) -> BTreeMap<NodeId, String> {
        self.transport.addresses()
    }

    /// The address `id` is reached at now.
    pub fn address_of(&self, id: NodeId) -> Option<String> {
        self.transport.address_of(id)
    }

    /// What `group` was founded with, if this node serves it.
    pub fn founding_of(&self, group: u64) -> Option<Founding> {
        self.state().founding.get(&group).cloned()
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HostState> {
        // A panic while opening a group leaves at worst a group that did not
        // open; the maps are updated only once it did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the groups named at start (`--group`, with the founding
    /// `voters`), then the catalogue's groups not among them. A group in
    /// both opens once, as `--group` says.
    pub fn open_at_start(&self, voters: &[NodeId]) -> Result<(), ServeError> {
        // Groups that run one module share its compile (`load_module`): a
        // node with a thousand groups of one state machine compiles it once.
        for spec in &self.cfg.groups {
            if spec.group == waft_proto::GROUP_NONE {
                return Err(ServeError::Config("--group 0 is reserved; use 1 or more".into()));
            }
            let bytes = std::fs::read(&spec.module)
                .map_err(|source| ServeError::ReadModule { path: spec.module.clone(), source })?;
            // The founding module of a new group; a restarting replica runs
            // the module its snapshot carries (deploys change it in the log).
            let module = self
                .load_module(bytes.into(), None)
                .map_err(|source| ServeError::LoadModule { path: spec.module.clone(), source })?;
            let founding = Founding::new(module.hash(), voters);
            // A member added at run time pulls the founding module from here.
            if !self.modules.contains(&module.hash()) {
                self.modules
                    .put_verified(module.bytes(), &module.hash())
                    .map_err(|source| ServeError::Storage { dir: self.modules.path_of(&module.hash()), source })?;
            }
            let mut state = self.state();
            let driver = self.open(&mut state, spec.group, &module, founding)?;
            state.drivers.push(driver);
        }
        let catalogued: Vec<(u64, Founding)> =
            self.state().catalogue.entries().iter().map(|(g, f)| (*g, f.clone())).collect();
        for (group, founding) in catalogued {
            if self.groups.contains(group) {
                tracing::info!(group, "group is both catalogued and named by --group; opening it as --group says");
                continue;
            }
            let known = self
                .compiled
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .find(|m| m.hash() == founding.module_hash)
                .cloned();
            let module = match known {
                Some(module) => module,
                None => {
                    let path = self.modules.path_of(&founding.module_hash);
                    let bytes = self
                        .modules
                        .get(&founding.module_hash)
                        .map_err(|source| ServeError::Storage { dir: path.clone(), source })?;
                    self.load_module(bytes.into(), Some(founding.module_hash))
                        .map_err(|source| ServeError::LoadModule { path, source })?
                }
            };
            let mut state = self.state();
            let driver = self.open(&mut state, group, &module, founding)?;
            state.drivers.push(driver);
        }
        Ok(())
    }

    /// Opens `group`'s replica and starts its driver; the caller records
    /// the driver. `founding.voters` bootstrap a brand-new group when this
    /// node is among them (otherwise it starts empty, waiting to be added).
    fn open(
        &self,
        state: &mut HostState,
        group: u64,
        module: &waft_node::GuestModule,
        founding: Founding,
    ) -> Result<tokio::task::JoinHandle<()>, ServeError> {
        let replica = self.open_replica(state, group, module, &founding, &[])?;
        Ok(self.start(state, replica, founding, Vec::new()))
    }

    fn open_replica(
        &self,
        state: &HostState,
        group: u64,
        module: &waft_node::GuestModule,
        founding: &Founding,
        hints: &[(NodeId, String)],
    ) -> Result<Opened, ServeError> {
        let Some(shared) = &state.shared else {
            return Err(ServeError::Config("the node is shutting down".into()));
        };
        let raft = self.cfg.raft_config(group)?;
        // A command travels in an envelope, which must fit the core's limit.
        let command_bytes_max =
            raft.proposal_bytes_max.saturating_sub(waft_session::ENVELOPE_OVERHEAD_BYTES_MAX as u64);
        let bootstrap: &[NodeId] = if founding.voters.contains(&self.cfg.node_id) { &founding.voters } else { &[] };
        // The founding configuration records the voters' addresses: the
        // create's, else what this node knows.
        let bootstrap_addresses: Vec<(NodeId, String)> = bootstrap
            .iter()
            .filter_map(|&id| {
                let given = hints.iter().find(|(h, _)| *h == id).map(|(_, a)| a.clone());
                Some((id, given.or_else(|| self.transport.address_of(id))?))
            })
            .collect();
        let replica = {
            let mut store = shared.store.lock().map_err(|_| ServeError::Config("storage lock poisoned".into()))?;
            waft_node::Replica::open(
                group,
                waft_node::ReplicaConfig {
                    sessions: self.cfg.sessions.clone(),
                    digest_interval: self.cfg.digest_interval,
                    manual_rebuild: self.cfg.manual_rebuild,
                    kv: self.kv.clone(),
                    bootstrap_addresses,
                    ..waft_node::ReplicaConfig::new(raft)
                },
                &mut *store,
                &self.snapshots,
                module,
                bootstrap,
            )?
        };
        let mut replica = replica;
        replica.set_offload(Some(guest_offload()));
        if self.cfg.background_saves {
            replica.set_spawn(Some(guest_spawn()));
        }
        replica.set_background_snapshots(true);
        // A deploy by hash that this replica did not prepare finds the
        // module here (it was stored, but its compile was not handed in).
        let modules = self.modules.clone();
        replica.set_module_source(Arc::new(move |hash| modules.get(hash).ok().map(Bytes::from)));
        if let Some(at) = self.cfg.test_diverge_at {
            replica.inject_divergence(at);
        }
        if let Some(hash) = self.cfg.test_compile_fault {
            replica.inject_compile_fault(hash);
        }
        Ok(Opened { replica, command_bytes_max, store: shared.store.clone(), committer: shared.committer.clone() })
    }

    /// Starts the driver of an open replica and makes the group visible.
    fn start(
        &self,
        state: &mut HostState,
        opened: Opened,
        founding: Founding,
        hints: Vec<(NodeId, String)>,
    ) -> tokio::task::JoinHandle<()> {
        let group = opened.replica.group();
        let (handle, task) = driver::spawn(
            driver::Driver::new(
                opened.replica,
                opened.store,
                opened.committer,
                self.snapshots.clone(),
                self.transport.clone(),
                hints,
                Duration::from_millis(self.cfg.tick_ms.max(1)),
                opened.command_bytes_max,
                self.cfg.snapshot_pull_bytes_per_sec,
                self.cfg.snapshot_interval_secs,
            ),
            self.stop.clone(),
        );
        state.founding.insert(group, founding);
        self.groups.insert(group, handle);
        task
    }

    /// Creates `group` on this node (blocking: it writes files and opens a
    /// replica; run it off the async threads) running `module`, the founding
    /// module `founding` names; `None` only checks whether this node could
    /// create the group. A node among `members` but not the voters opens an
    /// empty replica that waits to be added. `hints`: members' addresses
    /// the create came with, the group's until its configuration says.
    pub fn create_local(
        &self,
        group: u64,
        founding: Founding,
        members: &[NodeId],
        module: Option<&waft_node::GuestModule>,
        hints: Vec<(NodeId, String)>,
    ) -> Result<CreateOutcome, client::Error> {
        let node = self.cfg.node_id;
        let mut state = self.state();
        if state.shared.is_none() {
            return Err(client::Error::internal(format!(
                "node {node} is shutting down; retry the create once it is back"
            )));
        }
        if let Some(have) = state.founding.get(&group) {
            if *have == founding {
                return Ok(CreateOutcome::AlreadyThere);
            }
            return Err(client::Error::group_exists(format!(
                "node {node} serves group {group} already, with {have}; this create asked for {founding}; \
                 pick another group id, or create it as it was"
            )));
        }
        if !founding.voters.contains(&node) && !members.contains(&node) {
            return Err(client::Error::invalid_request(format!(
                "node {node} is neither among the voters {} nor the members {}; a create goes to those only",
                list(&founding.voters),
                list(members)
            )));
        }
        if state.founding.len() >= GROUPS_MAX {
            return Err(client::Error::invalid_request(format!(
                "node {node} serves {GROUPS_MAX} groups, as many as one node may"
            )));
        }
        let Some(module) = module else {
            return Ok(CreateOutcome::Checked);
        };
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            client::Error::internal(format!("node {node} could not {what} for group {group}: {e}"))
        };
        debug_assert_eq!(module.hash(), founding.module_hash);
        // A module pulled for this create is in the store already (read
        // back and checked here: a damaged copy is replaced).
        if self.modules.get(&module.hash()).is_err() {
            self.modules.put_verified(module.bytes(), &module.hash()).map_err(|e| failed("store the module", &e))?;
        }
        let replica =
            self.open_replica(&state, group, module, &founding, &hints).map_err(|e| failed("open the replica", &e))?;
        // Durable before it serves: a group that answered a client must come
        // back after a restart.
        state.catalogue.add(group, founding.clone()).map_err(|e| failed("write the group catalogue", &e))?;
        let driver = self.start(&mut state, replica, founding, hints);
        state.drivers.push(driver);
        tracing::info!(node, group, "group created");
        Ok(CreateOutcome::Created)
    }

    /// Stops opening groups and hands over every driver to join. Releases
    /// the node's storage handles, so the commit thread can end once the
    /// drivers have.
    pub fn close(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut state = self.state();
        state.shared = None;
        std::mem::take(&mut state.drivers)
    }
}

/// Where a group's state machine runs guest work that outgrows its in-place
/// fuel slice: off the async worker, with `block_in_place`, so one group's
/// heavy guest never holds a worker that other groups' drivers need. Off a
/// multi-thread runtime's worker it runs where it is.
fn guest_offload() -> waft_runtime::machine::Offload {
    std::sync::Arc::new(|work: &mut dyn FnMut()| match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    })
}

/// Threads that run the process's checkpoint saves (`guest_spawn`).
pub const SAVE_THREADS: usize = 2;

type SaveJob = Box<dyn FnOnce() + Send>;

/// Where a group's state machine saves an in-memory state at its
/// checkpoints: `SAVE_THREADS` threads shared by every group, taking jobs
/// in the order they came (a group's saves follow
/// one another, so none waits on one queued behind it). If they cannot be
/// started, a thread of its own per job.
fn guest_spawn() -> waft_runtime::machine::Spawn {
    static POOL: std::sync::OnceLock<Option<std::sync::mpsc::Sender<SaveJob>>> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(start_save_threads).clone();
    std::sync::Arc::new(move |job: SaveJob| {
        let job = match &pool {
            Some(jobs) => match jobs.send(job) {
                Ok(()) => return,
                Err(std::sync::mpsc::SendError(job)) => job,
            },
            None => job,
        };
        if let Err(e) = std::thread::Builder::new().name("waft-save".into()).spawn(job) {
            // The job is gone with the failed spawn; its save reports
            // that it ended without a result.
            tracing::error!(error = %e, "cannot start a thread for a checkpoint save");
        }
    })
}

fn start_save_threads() -> Option<std::sync::mpsc::Sender<SaveJob>> {
    let (jobs, queue) = std::sync::mpsc::channel::<SaveJob>();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
    for i in 0..SAVE_THREADS {
        let queue = queue.clone();
        let started = std::thread::Builder::new().name(format!("waft-save-{i}")).spawn(move || {
            loop {
                // Held only while taking a job, not while running it.
                let next = match queue.lock() {
                    Ok(queue) => queue.recv(),
                    Err(_) => return,
                };
                match next {
                    // A job that panics reports its save as ended without
                    // a result; the thread goes on.
                    Ok(job) => drop(std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))),
                    Err(_) => return,
                }
            }
        });
        if let Err(e) = started {
            tracing::warn!(error = %e, "cannot start the checkpoint save threads; each save gets a thread of its own");
            return None;
        }
    }
    Some(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(b: u8) -> ModuleHash {
        ModuleHash([b; 32])
    }

    #[test]
    fn the_catalogue_reads_back_what_it_wrote() {
        let dir = std::env::temp_dir().join(format!("waft-catalogue-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut c = Catalogue::open(&dir).unwrap();
        assert!(c.entries().is_empty());
        c.add(2, Founding::new(hash(1), &[3, 1, 2, 2])).unwrap();
        c.add(7, Founding::new(hash(2), &[4])).unwrap();
        let again = Catalogue::open(&dir).unwrap();
        assert_eq!(again.entries(), c.entries());
        assert_eq!(again.entries()[&2].voters, vec![1, 2, 3]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_catalogue_is_refused_with_its_line() {
        let good = format!("group 2 voters 1,2 module {}\n", hash(1));
        assert_eq!(Catalogue::parse(&format!("# note\n\n{good}")).unwrap().len(), 1);
        for bad in [
            format!("{good}{good}"),
            "group 2 voters 1,x module 00\n".to_string(),
            format!("group 0 voters 1 module {}\n", hash(1)),
            format!("group 2 voters 0 module {}\n", hash(1)),
            "group 2 voters 1 module 0102\n".to_string(),
            "group 2\n".to_string(),
        ] {
            let e = Catalogue::parse(&bad).unwrap_err();
            assert!(e.starts_with("line "), "{bad:?}: {e}");
        }
    }

    #[test]
    fn foundings_compare_as_sets_of_voters() {
        assert_eq!(Founding::new(hash(1), &[3, 1, 2]), Founding::new(hash(1), &[1, 2, 3, 3]));
        assert_ne!(Founding::new(hash(1), &[1, 2]), Founding::new(hash(1), &[1, 2, 3]));
        assert_ne!(Founding::new(hash(1), &[1]), Founding::new(hash(2), &[1]));
    }
}
