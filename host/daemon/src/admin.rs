//! The admin service: membership changes, leader transfer, snapshot now and
//! the unsafe reset of a group's voters, each answered once it took effect;
//! and the creation of a group at run time.
//!
//! Owns the checks an admin request passes before it reaches the group's
//! driver and the (longer) wait for the outcome; the driver owns starting the
//! change and recognising when it is done ([`crate::driver`]). Must never
//! block on a full inbox: that is BUSY.
//!
//! `CreateGroup` runs in two rounds from the daemon asked: it checks the
//! request and loads the module (nothing is created if either fails), asks
//! every voter whether it could create the group (a refusal anywhere, or a
//! voter out of reach, stops it there, having created nothing), then tells
//! every voter to create it ([`crate::groups::Host::create_local`] on each)
//! and answers with each node's outcome. Voters start in any order: peer
//! messages for a group a node does not serve yet are dropped and resent.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{Semaphore, oneshot};
use waft_proto::admin::{
    AdminRequest, AdminResponse, CreateGroupRequest, CreateGroupResponse, CreateOutcome, DeployRequest, DeployResponse,
    DeployResult, ModuleUpload, NodeCreateOutcome, NodesRequest, NodesResponse, ReplaceNodeRequest,
    ReplaceNodeResponse, SetGroupRequest, SetGroupResponse, SetGroupResult, UploadModuleResponse, admin_response,
    deploy_response, set_group_response,
};
use waft_proto::client;
use waft_raft::NodeId;
use waft_storage::ModuleHash;

use crate::groups::{CREATE_MODULE_BYTES_MAX, CREATE_VOTERS_MAX, Founding, Host};
use crate::inbox::{
    AdminReply, BUSY_RETRY_AFTER_MS, Committed, GroupHandle, Input, Op, ProposeReply, settings_to_proto, try_send,
};
use crate::security::{Auth, Role};

/// How long an admin request waits for its change to take effect. Longer
/// than a client request: a new voter may have a snapshot to catch up on.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node waits for another voter's daemon to check or create a
/// group (it compiles the module first).
pub const CREATE_FORWARD_TIMEOUT: Duration = Duration::from_secs(60);
/// What a BUSY answer to a create suggests waiting, in ms.
pub const CREATE_BUSY_RETRY_AFTER_MS: u64 = 1_000;
/// How long connecting to another voter's daemon may take.
pub const CREATE_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Settings one `SetGroup` request may change (there are eleven).
pub const SET_GROUP_CHANGES_MAX: usize = 32;
/// Deploys validated (compiled) at once on this node; more get BUSY. A
/// compile takes a core for a few hundred milliseconds.
pub const DEPLOY_VALIDATIONS_MAX: usize = 1;

/// Creates this node works on at once (its own and forwarded ones); more
/// are answered BUSY. Each holds a module of up to `CREATE_MODULE_BYTES_MAX`,
/// or `modules::MODULE_BYTES_MAX` by hash.
pub const CREATES_IN_FLIGHT_MAX: usize = 8;
/// A create forwards a module larger than this to the other voters by
/// hash (they pull it from the forwarding node), not in the message.
pub const CREATE_FORWARD_INLINE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// No node: a forwarded create's `module_from` when it carries the bytes.
const NONE_NODE: NodeId = waft_raft::NONE;
/// Module uploads this node takes at once; more get BUSY. Each holds up to
/// `modules::MODULE_BYTES_MAX` in memory until it is checked and stored.
pub const UPLOADS_IN_FLIGHT_MAX: usize = 2;

pub struct AdminService {
    host: Arc<Host>,
    /// Every call here needs the admin role on its group.
    auth: Arc<Auth>,
    /// The incarnation this node expects behind each peer (`ReplaceNode`).
    book: Arc<crate::identity::PeerBook>,
    /// Permits for creates. Taken without waiting, so two daemons that
    /// forward creates to each other can never wait on one another.
    creates: Arc<Semaphore>,
    validations: Arc<Semaphore>,
    uploads: Arc<Semaphore>,
}

impl AdminService {
    pub fn new(host: Arc<Host>, book: Arc<crate::identity::PeerBook>, auth: Arc<Auth>) -> AdminService {
        AdminService {
            host,
            auth,
            book,
            creates: Arc::new(Semaphore::new(CREATES_IN_FLIGHT_MAX)),
            validations: Arc::new(Semaphore::new(DEPLOY_VALIDATIONS_MAX)),
            uploads: Arc::new(Semaphore::new(UPLOADS_IN_FLIGHT_MAX)),
        }
    }

    /// Validates the module here (the leader), stores it by hash and has the
    /// group's driver propose it; answers once the entry applied here.
    async fn deploy(&self, req: DeployRequest) -> Result<DeployResult, client::Error> {
        if req.group == waft_proto::GROUP_NONE {
            return Err(client::Error::invalid_request("group 0 is reserved; name the group to deploy to"));
        }
        let group = self.host.groups().get(req.group).ok_or_else(|| client::Error::unknown_group(req.group))?;
        let by_hash = match (req.module.is_empty(), crate::modules::hash_of(&req.module_hash)) {
            (true, None) if req.module_hash.is_empty() => {
                return Err(client::Error::invalid_request(
                    "no module: send the component's bytes, or the hash of one uploaded to this node",
                ));
            }
            (true, None) => return Err(client::Error::invalid_request("a module hash is 32 bytes")),
            (true, Some(hash)) => Some(hash),
            (false, _) => None,
        };
        if req.module.len() > CREATE_MODULE_BYTES_MAX {
            return Err(client::Error::too_large(req.module.len() as u64, CREATE_MODULE_BYTES_MAX as u64));
        }
        {
            // Only the leader proposes; spare a compile on the others.
            let status = group.status.borrow();
            if status.role() != client::Role::Leader {
                return Err(client::Error::not_leader(status.leader_id, status.leader_address.clone()));
            }
        }
        let Ok(_permit) = self.validations.clone().try_acquire_owned() else {
            return Err(client::Error::busy(
                BUSY_RETRY_AFTER_MS * 10,
                "another deploy is being validated on this node",
            ));
        };
        let (engine, modules, bytes) = (self.host.engine().clone(), self.host.modules().clone(), req.module);
        let group_id = req.group;
        let held = modules.clone();
        let module = tokio::task::spawn_blocking(move || {
            let loaded = match by_hash {
                None => waft_node::GuestModule::load(&engine, bytes),
                // The store's read checks the hash.
                Some(hash) => {
                    let bytes = held.get(&hash).map_err(|e| {
                        client::Error::invalid_request(format!(
                            "this node cannot read module {hash}: {e}; upload it to this node first (UploadModule)"
                        ))
                    })?;
                    waft_node::GuestModule::load_verified(&engine, Bytes::from(bytes), hash)
                }
            };
            loaded.map_err(|e| client::Error::bad_module(format!("module refused, nothing changed: {e}")))
        })
        .await
        .map_err(|e| client::Error::internal(format!("the module validation task failed: {e}")))??;
        // The new module must load the state the running one holds now: a
        // throwaway instance, under the group's limits, is fed the leader's
        // state (`on-snapshot-load`). Entries applied meanwhile are checked
        // again at the deploy's index, on every replica.
        let (reply, rx) = oneshot::channel();
        try_send(&group, Input::DeployCheck { reply })?;
        let (state, limits) = match tokio::time::timeout(ADMIN_TIMEOUT, rx).await {
            Ok(Ok(answer)) => answer?,
            Ok(Err(_)) => return Err(client::Error::internal("the group stopped; see its log")),
            Err(_) => return Err(client::Error::timeout(ADMIN_TIMEOUT.as_millis() as u64)),
        };
        let module = tokio::task::spawn_blocking(move || {
            let hash = module.hash().to_hex();
            let label = format!("group {group_id} deploy check");
            let mut sm = waft_runtime::StateMachine::for_group(module.module(), limits, group_id, &label)
                .map_err(|e| client::Error::bad_module(format!("module {hash} cannot start, nothing changed: {e}")))?;
            let bytes = state.len() as u64;
            sm.load_snapshot_of(std::io::Cursor::new(state), bytes).map_err(|e| {
                client::Error::bad_module(format!("module {hash} cannot load the running state, nothing changed: {e}"))
            })?;
            // Uploaded modules are stored already (and were just read back).
            if by_hash.is_none() {
                modules
                    .put(module.bytes())
                    .map_err(|e| client::Error::internal(format!("cannot store the module: {e}")))?;
            }
            tracing::info!(group = group_id, module = %hash, bytes = module.bytes().len(), "deploy validated against the running state and stored");
            Ok::<_, client::Error>(module)
        })
        .await
        .map_err(|e| client::Error::internal(format!("the module check task failed: {e}")))??;
        // Other deploys on this node may validate while this one prepares.
        drop(_permit);
        self.prepare_members(req.group, &group, &module).await?;
        let (reply, rx) = oneshot::channel();
        try_send(&group, Input::Deploy { module, reply })?;
        let committed = committed(rx).await?;
        Ok(DeployResult { module_hash: committed.result, index: committed.index })
    }

    /// Has every other member of the group fetch and compile `module` before
    /// the deploy is proposed, so that none compiles at the entry. Refuses
    /// (nothing changed, BUSY: ask again) unless a majority of the voters,
    /// this node included, has it ready: a member that lacks it when the
    /// entry applies is fenced and rebuilt, and a majority of those would
    /// leave the group without a healthy quorum.
    async fn prepare_members(
        &self,
        group_id: u64,
        group: &GroupHandle,
        module: &waft_node::GuestModule,
    ) -> Result<(), client::Error> {
        let (config, digests) = {
            let status = group.status.borrow();
            (
                status.configuration.clone().unwrap_or_default(),
                status.settings.as_ref().map_or(0, |s| s.digest_interval),
            )
        };
        // A module larger than an entry is named by hash: a member that
        // lacks it at the entry is fenced and rebuilt, which needs digests.
        // Without them every member must have it ready.
        let every_member = module.bytes().len() as u64 > group.command_bytes_max && digests == 0;
        let me = self.host.node_id();
        let mut members: Vec<u64> =
            config.voters.iter().chain(&config.voters_outgoing).chain(&config.learners).copied().collect();
        members.sort_unstable();
        members.dedup();
        members.retain(|&m| m != me);
        if members.is_empty() {
            return Ok(());
        }
        let (hash, size) = (module.hash(), module.bytes().len() as u64);
        let started = std::time::Instant::now();
        let answers = crate::modules::prepare_members(&self.host, group_id, hash, size, &members).await;
        let ready: Vec<u64> = answers.iter().filter(|(_, a)| a.is_ok()).map(|(m, _)| *m).chain([me]).collect();
        let failed: Vec<String> =
            answers.iter().filter_map(|(m, a)| a.as_ref().err().map(|e| format!("node {m}: {e}"))).collect();
        tracing::info!(
            group = group_id,
            module = %hash,
            ms = started.elapsed().as_millis() as u64,
            ready = ?ready,
            failed = ?failed,
            "members prepared the module ahead of its deploy"
        );
        let majority = |voters: &[u64]| {
            voters.is_empty() || voters.iter().filter(|v| ready.contains(*v)).count() * 2 > voters.len()
        };
        let enough = if every_member {
            failed.is_empty()
        } else {
            majority(&config.voters) && majority(&config.voters_outgoing)
        };
        if !enough {
            // A member whose compiler refused the module (INVALID_ARGUMENT)
            // will refuse it again: asking again cannot help. (One such
            // member among enough that are ready does not stop the deploy:
            // it is fenced at the entry and rebuilt, like any replica that
            // cannot follow.)
            let refused = answers.iter().any(|(_, a)| a.as_ref().is_err_and(|e| e.starts_with("InvalidArgument")));
            if refused {
                return Err(client::Error::bad_module(format!(
                    "too few members can load module {hash}, nothing changed: {}",
                    failed.join("; ")
                )));
            }
            return Err(client::Error::busy(
                BUSY_RETRY_AFTER_MS * 10,
                format!(
                    "only nodes {ready:?} could fetch and compile module {hash}, not {}; nothing changed ({})",
                    if every_member { "every member (digests are off)" } else { "a majority of the voters" },
                    failed.join("; ")
                ),
            ));
        }
        Ok(())
    }

    /// Takes a module's bytes in chunks into this node's module store (see
    /// waft.admin.v1 UploadModule).
    async fn upload_module(
        &self,
        first: ModuleUpload,
        mut rest: tonic::Streaming<ModuleUpload>,
    ) -> Result<ModuleHash, client::Error> {
        let Some(hash) = crate::modules::hash_of(&first.module_hash) else {
            return Err(client::Error::invalid_request("the first message names the module's sha256 (32 bytes)"));
        };
        if first.size > crate::modules::MODULE_BYTES_MAX {
            return Err(client::Error::too_large(first.size, crate::modules::MODULE_BYTES_MAX));
        }
        let size = first.size;
        let mut bytes = BytesMut::with_capacity(size as usize);
        // Hashed as it comes, a message at a time: one hash of tens of MiB
        // at the end would hold an async worker for a hundred ms or more.
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        let mut next = Some(first);
        loop {
            let Some(message) = next.take() else {
                match rest.message().await {
                    Ok(Some(m)) => {
                        next = Some(m);
                        continue;
                    }
                    Ok(None) => break,
                    Err(status) => {
                        return Err(client::Error::invalid_request(format!("the upload broke off: {status}")));
                    }
                }
            };
            if message.data.len() > crate::modules::UPLOAD_MESSAGE_BYTES_MAX {
                return Err(client::Error::too_large(
                    message.data.len() as u64,
                    crate::modules::UPLOAD_MESSAGE_BYTES_MAX as u64,
                ));
            }
            if (bytes.len() + message.data.len()) as u64 > size {
                return Err(client::Error::invalid_request(format!(
                    "the upload carries more bytes than the {size} it announced; nothing stored"
                )));
            }
            sha2::Digest::update(&mut hasher, &message.data);
            bytes.extend_from_slice(&message.data);
        }
        let bytes = bytes.freeze();
        let got = ModuleHash(sha2::Digest::finalize(hasher).into());
        if bytes.len() as u64 != size || got != hash {
            return Err(client::Error::invalid_request(format!(
                "the {} bytes uploaded do not hash to {hash}; nothing stored",
                bytes.len()
            )));
        }
        let modules = self.host.modules().clone();
        tokio::task::spawn_blocking(move || modules.put_verified(&bytes, &hash))
            .await
            .map_err(|e| client::Error::internal(format!("the module writer failed: {e}")))?
            .map_err(|e| client::Error::internal(format!("cannot store module {hash}: {e}")))?;
        tracing::info!(module = %hash, "module uploaded");
        Ok(hash)
    }

    /// Has the group's leader put `req`'s changes over the settings it
    /// applied and propose them; answers once the entry applied here.
    async fn set_group(&self, req: SetGroupRequest) -> Result<SetGroupResult, client::Error> {
        if req.group == waft_proto::GROUP_NONE {
            return Err(client::Error::invalid_request("group 0 is reserved; name the group to change"));
        }
        let group = self.host.groups().get(req.group).ok_or_else(|| client::Error::unknown_group(req.group))?;
        if req.changes.is_empty() {
            return Err(client::Error::invalid_request(
                "no settings to change; name at least one, e.g. fuel_per_entry",
            ));
        }
        if req.changes.len() > SET_GROUP_CHANGES_MAX {
            return Err(client::Error::invalid_request(format!(
                "{} changes in one request; at most {SET_GROUP_CHANGES_MAX}",
                req.changes.len()
            )));
        }
        let changes = req.changes.into_iter().map(|c| (c.name, c.value)).collect();
        let (reply, rx) = oneshot::channel();
        try_send(&group, Input::SetGroup { changes, reply })?;
        let committed = committed(rx).await?;
        let settings = waft_node::GroupSettings::decode(&committed.result)
            .map_err(|e| client::Error::internal(format!("the applied settings do not decode: {e}")))?;
        Ok(SetGroupResult { settings: Some(settings_to_proto(&settings)), index: committed.index })
    }

    async fn change(&self, req: AdminRequest, authorization: Option<Authorization>) -> AdminReply {
        if req.group == waft_proto::GROUP_NONE {
            return Err(client::Error::invalid_request("group 0 is reserved; name the group to change"));
        }
        let group = self.host.groups().get(req.group).ok_or_else(|| client::Error::unknown_group(req.group))?;
        let op = Op::from_request(&req)?;
        let addresses = crate::peer::addresses_of(&req.addresses).map_err(client::Error::invalid_request)?;
        if !addresses.is_empty() {
            if !op.adds_members() {
                return Err(client::Error::invalid_request(
                    "addresses go with add-peer, add-learners, promote-learner and change-peers",
                ));
            }
            let (leader, config) = {
                let status = group.status.borrow();
                (status.role() == client::Role::Leader, status.configuration.clone().unwrap_or_default())
            };
            // Only the leader changes the membership (the driver answers
            // NOT_LEADER otherwise): spare the others the create.
            if leader {
                // Only nodes the change adds get a replica first.
                let current = waft_raft::Configuration {
                    voters: config.voters.clone(),
                    voters_outgoing: config.voters_outgoing.clone(),
                    learners: config.learners.clone(),
                    addresses: Vec::new(),
                };
                let adds = op.target(&current).map(|t| t.members()).unwrap_or_default();
                let joining: Vec<(NodeId, String)> =
                    addresses.iter().filter(|(id, _)| adds.contains(id) && !current.contains(*id)).cloned().collect();
                self.open_on_joining(req.group, &config, &addresses, &joining, authorization.as_ref()).await?;
            }
        }
        let (reply, rx) = oneshot::channel();
        try_send(&group, Input::Admin { op, addresses, reply })?;
        match tokio::time::timeout(ADMIN_TIMEOUT, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(client::Error::internal("the group dropped the request (it stopped); see its log")),
            Err(_) => Err(client::Error::timeout(ADMIN_TIMEOUT.as_millis() as u64)),
        }
    }
}

impl AdminService {
    /// Opens an empty replica of `group` on each `joining` node that does not
    /// serve it yet: a create forwarded to it, with the group's founding
    /// module (which it pulls from here by hash) and voters, and every
    /// address of the group this node knows, so it can answer the leader
    /// before its configuration arrives.
    async fn open_on_joining(
        &self,
        group: u64,
        config: &client::Configuration,
        given: &[(NodeId, String)],
        joining: &[(NodeId, String)],
        authorization: Option<&Authorization>,
    ) -> Result<(), client::Error> {
        if joining.is_empty() {
            return Ok(());
        }
        let node = self.host.node_id();
        let founding = self.host.founding_of(group).ok_or_else(|| client::Error::unknown_group(group))?;
        let hash = founding.module_hash;
        let modules = self.host.modules().clone();
        let size = match tokio::task::spawn_blocking(move || std::fs::metadata(modules.path_of(&hash))).await {
            Ok(Ok(meta)) => meta.len(),
            _ => {
                return Err(client::Error::internal(format!(
                    "node {node} does not hold group {group}'s founding module {hash}, which a new member needs"
                )));
            }
        };
        let mut known: std::collections::BTreeMap<NodeId, String> = self
            .host
            .addresses()
            .into_iter()
            .filter(|(id, _)| {
                *id == node
                    || [&config.voters, &config.voters_outgoing, &config.learners].iter().any(|l| l.contains(id))
            })
            .collect();
        known.extend(given.iter().cloned());
        let addresses = crate::peer::addresses_to_proto(&known);
        let mut tasks = tokio::task::JoinSet::new();
        for (id, addr) in joining {
            let req = CreateGroupRequest {
                group,
                voters: founding.voters.clone(),
                local_only: true,
                members: vec![*id],
                module_hash: Bytes::copy_from_slice(&hash.0),
                module_size: size,
                module_from: node,
                addresses: addresses.clone(),
                ..Default::default()
            };
            let mut request = tonic::Request::new(req);
            if let Some(value) = authorization {
                request.metadata_mut().insert(waft_proto::AUTHORIZATION_HEADER, value.clone());
            }
            let endpoint = self.host.dialer().endpoint(*id, addr);
            let (id, addr) = (*id, addr.clone());
            tasks.spawn(forward(id, addr, endpoint, request, crate::modules::PREPARE_TIMEOUT));
        }
        let mut failures = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(o) if o.error.is_none() => {
                    tracing::info!(
                        group,
                        node = o.node_id,
                        outcome = describe(o.outcome()),
                        "replica for a new member"
                    );
                }
                Ok(o) => {
                    failures.push(format!("node {}: {}", o.node_id, o.error.map(|e| e.message).unwrap_or_default()))
                }
                Err(e) => failures.push(format!("the forwarding task failed: {e}")),
            }
        }
        if failures.is_empty() {
            return Ok(());
        }
        Err(client::Error::rejected(format!(
            "group {group} could not open on every new member, so the membership is unchanged: {}",
            failures.join("; ")
        )))
    }
}

/// A create request, checked: the group, its founding voters (sorted, no
/// duplicates) and where its module is.
#[derive(Debug)]
struct Create {
    group: u64,
    voters: Vec<NodeId>,
    /// Nodes besides the voters that open an empty replica (sorted, none a voter).
    members: Vec<NodeId>,
    module: Source,
    /// Addresses the request names (checked).
    addresses: Vec<(NodeId, String)>,
}

/// Where a create's module is.
#[derive(Debug)]
enum Source {
    /// Its bytes came with the request.
    Bytes(bytes::Bytes),
    /// Named by hash: held by node `from`, `size` bytes (a create forwarded
    /// by hash), or, with `from` 0, in this node's store (a client's create
    /// of a module it uploaded here).
    Hash { hash: ModuleHash, size: u64, from: NodeId },
}

impl Create {
    /// Every node the create goes to: the voters, then the members.
    fn targets(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(&self.members).copied()
    }

    fn given_address(&self, id: NodeId) -> Option<String> {
        self.addresses.iter().find(|(a, _)| *a == id).map(|(_, addr)| addr.clone())
    }
}

impl Create {
    /// The request's fields, or why they cannot found a group. `known`:
    /// whether this daemon knows a node's address.
    fn check(req: &CreateGroupRequest, known: impl Fn(NodeId) -> bool) -> Result<Create, client::Error> {
        let bad = |why: String| Err(client::Error::invalid_request(why));
        if req.group == waft_proto::GROUP_NONE {
            return bad("group 0 is reserved; create group 1 or more".into());
        }
        let mut voters = req.voters.clone();
        voters.sort_unstable();
        voters.dedup();
        if voters.is_empty() {
            return bad("name the group's voters (node ids), e.g. --peers 1,2,3".into());
        }
        if voters.len() > CREATE_VOTERS_MAX {
            return bad(format!("{} voters; a group starts with {CREATE_VOTERS_MAX} at most", voters.len()));
        }
        if voters.contains(&waft_raft::NONE) {
            return bad("node id 0 is reserved; node ids are 1 or more".into());
        }
        let mut members: Vec<NodeId> = req.members.iter().copied().filter(|id| !voters.contains(id)).collect();
        members.sort_unstable();
        members.dedup();
        if members.len() > CREATE_VOTERS_MAX {
            return bad(format!("{} members; name {CREATE_VOTERS_MAX} at most in one create", members.len()));
        }
        if members.contains(&waft_raft::NONE) {
            return bad("node id 0 is reserved; node ids are 1 or more".into());
        }
        let addresses = crate::peer::addresses_of(&req.addresses).map_err(client::Error::invalid_request)?;
        // A forwarded create acts on this node only: it reaches no one.
        let reachable = |id: NodeId| req.local_only || known(id) || addresses.iter().any(|(a, _)| *a == id);
        if let Some(unknown) = voters.iter().chain(&members).find(|id| !reachable(**id)) {
            return bad(format!(
                "node {unknown} is not known to this node (neither a --peer nor a member of one of its groups), \
                 so its daemon cannot be reached; give its address (`--address {unknown}=HOST:PORT`)"
            ));
        }
        let module = match (req.module.is_empty(), req.module_hash.is_empty()) {
            (true, true) => {
                return bad("the module is empty; send the .wasm file's bytes, or the hash of one uploaded here".into());
            }
            (false, false) => return bad("send the module's bytes or its hash, not both".into()),
            (false, true) if req.module.len() > CREATE_MODULE_BYTES_MAX => {
                return Err(client::Error::too_large(req.module.len() as u64, CREATE_MODULE_BYTES_MAX as u64));
            }
            (false, true) => Source::Bytes(req.module.clone()),
            (true, false) => {
                let Some(hash) = crate::modules::hash_of(&req.module_hash) else {
                    return bad("a module hash is 32 bytes".into());
                };
                if req.module_size > crate::modules::MODULE_BYTES_MAX {
                    return Err(client::Error::too_large(req.module_size, crate::modules::MODULE_BYTES_MAX));
                }
                Source::Hash { hash, size: req.module_size, from: req.module_from }
            }
        };
        Ok(Create { group: req.group, voters, members, module, addresses })
    }
}

impl AdminService {
    /// `authorization`: the caller's token, passed on to the voters asked.
    async fn create_group(&self, req: CreateGroupRequest, authorization: Option<Authorization>) -> CreateGroupResponse {
        let node = self.host.node_id();
        let mut response = CreateGroupResponse::default();
        let create = match Create::check(&req, |id| self.host.transport().knows(id)) {
            Ok(create) => create,
            Err(e) => {
                response.error = Some(e);
                return response;
            }
        };
        let Ok(_permit) = self.creates.clone().try_acquire_owned() else {
            response.error = Some(client::Error::busy(
                CREATE_BUSY_RETRY_AFTER_MS,
                format!("node {node} works on {CREATES_IN_FLIGHT_MAX} creates already"),
            ));
            return response;
        };
        if req.local_only && req.check_only {
            // Only the registry: the daemon that forwarded this compiled the
            // module already, and the create round compiles it here. The
            // hash, megabytes of hashing, stays off the async threads.
            let hash = match &create.module {
                Source::Hash { hash, .. } => *hash,
                Source::Bytes(bytes) => {
                    let bytes = bytes.clone();
                    match tokio::task::spawn_blocking(move || ModuleHash::of(&bytes)).await {
                        Ok(hash) => hash,
                        Err(e) => {
                            response.error = Some(client::Error::internal(format!("hashing the module failed: {e}")));
                            return response;
                        }
                    }
                }
            };
            response.module_hash = bytes::Bytes::copy_from_slice(&hash.0);
            let outcome = self
                .create_here(
                    create.group,
                    Founding::new(hash, &create.voters),
                    None,
                    create.members.clone(),
                    Vec::new(),
                )
                .await;
            response.error = outcome.error.clone();
            response.nodes.push(outcome);
            return response;
        }
        let bytes = match self.module_of(&create, req.local_only).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(outcome)) => {
                response.module_hash = req.module_hash.clone();
                response.error = outcome.error.clone();
                response.nodes.push(outcome);
                return response;
            }
            Err(e) => {
                response.error = Some(e);
                return response;
            }
        };
        // Compiled (and hashed) once here, off the async threads, before
        // anything is asked of the voters: a bad module creates nothing.
        let host = self.host.clone();
        // Bytes named by hash were checked against it as they were read.
        let verified = match &create.module {
            Source::Hash { hash, .. } => Some(*hash),
            Source::Bytes(_) => None,
        };
        let load = move || host.load_module(bytes, verified);
        let module = match tokio::task::spawn_blocking(load).await {
            Ok(Ok(module)) => module,
            Ok(Err(e)) => {
                response.error =
                    Some(client::Error::bad_module(format!("node {node}: module refused, nothing created: {e}")));
                return response;
            }
            Err(e) => {
                response.error = Some(client::Error::internal(format!("loading the module failed: {e}")));
                return response;
            }
        };
        let hash = module.hash();
        response.module_hash = bytes::Bytes::copy_from_slice(&hash.0);
        let founding = Founding::new(hash, &create.voters);
        if req.local_only {
            let outcome = self
                .create_here(create.group, founding, Some(module), create.members.clone(), create.addresses.clone())
                .await;
            response.error = outcome.error.clone();
            response.nodes.push(outcome);
            return response;
        }
        tracing::info!(node, group = create.group, voters = ?create.voters, members = ?create.members, module = %hash, "creating group");
        let by_hash = module.bytes().len() > CREATE_FORWARD_INLINE_BYTES_MAX;
        let checks = self.on_every_voter(&create, &founding, &module, false, by_hash, authorization.as_ref()).await;
        if checks.iter().any(|o| o.error.is_some()) {
            response.error = Some(summary(create.group, &checks, "was not created (nothing changed)"));
            response.nodes = checks;
            return response;
        }
        if by_hash && matches!(create.module, Source::Bytes(_)) {
            // The voters pull it from here.
            let (modules, bytes) = (self.host.modules().clone(), module.bytes().clone());
            let stored = tokio::task::spawn_blocking(move || modules.put_verified(&bytes, &hash)).await;
            if let Some(e) = match stored {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            } {
                response.error = Some(client::Error::internal(format!(
                    "node {node} cannot store module {hash} for the voters to pull, nothing created: {e}"
                )));
                return response;
            }
        }
        let outcomes = self.on_every_voter(&create, &founding, &module, true, by_hash, authorization.as_ref()).await;
        if outcomes.iter().any(|o| o.error.is_some()) {
            response.error = Some(summary(
                create.group,
                &outcomes,
                "was created on some voters only; fix what failed and send the same create again (it is idempotent)",
            ));
        }
        response.nodes = outcomes;
        response
    }

    /// Creates the group on every voter at once running `module` (loaded
    /// here already) or, unless `create_it`, checks that each could;
    /// outcomes in voter order. `by_hash`: the others get the module's hash,
    /// not its bytes, and pull it from here if they lack it.
    async fn on_every_voter(
        &self,
        create: &Create,
        founding: &Founding,
        module: &waft_node::GuestModule,
        create_it: bool,
        by_hash: bool,
        authorization: Option<&Authorization>,
    ) -> Vec<NodeCreateOutcome> {
        let node = self.host.node_id();
        let check_only = !create_it;
        let (bytes, hash, size, from) = if by_hash {
            (Bytes::new(), Bytes::copy_from_slice(&module.hash().0), module.bytes().len() as u64, node)
        } else {
            (module.bytes().clone(), Bytes::new(), 0, 0)
        };
        // A voter that pulls and compiles a large module takes longer.
        let timeout = if by_hash && create_it { crate::modules::PREPARE_TIMEOUT } else { CREATE_FORWARD_TIMEOUT };
        let mut tasks = tokio::task::JoinSet::new();
        // Every address of the group this node knows goes along: the
        // founding configuration records the voters', and an empty replica
        // reaches its group through them until its configuration arrives.
        let mut known: Vec<(NodeId, String)> = create
            .targets()
            .chain([node])
            .filter_map(|id| Some((id, create.given_address(id).or_else(|| self.host.address_of(id))?)))
            .collect();
        known.sort_by_key(|(id, _)| *id);
        known.dedup_by_key(|(id, _)| *id);
        let addresses: Vec<client::NodeAddress> = known.iter().cloned().map(Into::into).collect();
        for (at, voter) in create.targets().enumerate() {
            if voter == node {
                continue;
            }
            let addr = create.given_address(voter).or_else(|| self.host.address_of(voter)).unwrap_or_default();
            let req = CreateGroupRequest {
                group: create.group,
                voters: create.voters.clone(),
                module: bytes.clone(),
                local_only: true,
                check_only,
                members: create.members.clone(),
                module_hash: hash.clone(),
                module_size: size,
                module_from: from,
                addresses: addresses.clone(),
            };
            let mut request = tonic::Request::new(req);
            if let Some(value) = authorization {
                request.metadata_mut().insert(waft_proto::AUTHORIZATION_HEADER, value.clone());
            }
            let endpoint = self.host.dialer().endpoint(voter, &addr);
            tasks.spawn(async move { (at, forward(voter, addr, endpoint, request, timeout).await) });
        }
        let mut outcomes: Vec<Option<NodeCreateOutcome>> = vec![None; create.targets().count()];
        if let Some(at) = create.targets().position(|v| v == node) {
            let module = create_it.then(|| module.clone());
            outcomes[at] =
                Some(self.create_here(create.group, founding.clone(), module, create.members.clone(), known).await);
        }
        while let Some(joined) = tasks.join_next().await {
            if let Ok((at, outcome)) = joined {
                outcomes[at] = Some(outcome);
            }
        }
        create
            .targets()
            .zip(outcomes)
            .map(|(voter, o)| {
                o.unwrap_or_else(|| {
                    failed(voter, client::Error::internal("the forwarding task failed; see this node's log"))
                })
            })
            .collect()
    }

    /// The bytes of a create's module: the request's, or, named by hash,
    /// this node's stored copy, pulled first from the node that forwarded
    /// the create when missing. A forwarded create (`local_only`) is checked
    /// against this node's groups before any pull: `Ok(Err(outcome))` when
    /// that settles it (already there, or refused).
    async fn module_of(
        &self,
        create: &Create,
        local_only: bool,
    ) -> Result<Result<Bytes, NodeCreateOutcome>, client::Error> {
        let (hash, size, from) = match &create.module {
            Source::Bytes(bytes) => return Ok(Ok(bytes.clone())),
            Source::Hash { hash, size, from } => (*hash, *size, *from),
        };
        if local_only {
            let founding = Founding::new(hash, &create.voters);
            let outcome = self.create_here(create.group, founding, None, create.members.clone(), Vec::new()).await;
            if outcome.outcome() != CreateOutcome::Checked {
                return Ok(Err(outcome));
            }
        }
        if from == NONE_NODE {
            let modules = self.host.modules().clone();
            return match tokio::task::spawn_blocking(move || modules.get(&hash)).await {
                Ok(Ok(bytes)) => Ok(Ok(Bytes::from(bytes))),
                Ok(Err(e)) => Err(client::Error::invalid_request(format!(
                    "this node cannot read module {hash}: {e}; upload it to this node first (UploadModule with for_create)"
                ))),
                Err(e) => Err(client::Error::internal(format!("the module reader failed: {e}"))),
            };
        }
        // One pull or compile at a time on a node, with deploys' prepares.
        let _permit =
            self.host.prepares().acquire().await.map_err(|_| client::Error::internal("the node is shutting down"))?;
        crate::modules::fetch(&self.host, hash, size, from, create.given_address(from), None).await.map(Ok).map_err(
            |status| {
                client::Error::internal(format!("cannot get module {hash} from node {from}: {}", status.message()))
            },
        )
    }

    /// Creates the group on this node running `module` or, without one,
    /// checks that it could; off the async threads.
    async fn create_here(
        &self,
        group: u64,
        founding: Founding,
        module: Option<waft_node::GuestModule>,
        members: Vec<NodeId>,
        hints: Vec<(NodeId, String)>,
    ) -> NodeCreateOutcome {
        let node = self.host.node_id();
        let host = self.host.clone();
        let create = move || host.create_local(group, founding, &members, module.as_ref(), hints);
        match tokio::task::spawn_blocking(create).await {
            Ok(Ok(outcome)) => NodeCreateOutcome { node_id: node, outcome: outcome as i32, error: None },
            Ok(Err(e)) => failed(node, e),
            Err(e) => failed(node, client::Error::internal(format!("creating the group failed: {e}"))),
        }
    }
}

/// Waits (at most `ADMIN_TIMEOUT`) for the answer to an entry the driver
/// proposed for an admin request.
async fn committed(rx: oneshot::Receiver<ProposeReply>) -> Result<Committed, client::Error> {
    match tokio::time::timeout(ADMIN_TIMEOUT, rx).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => Err(client::Error::internal("the group dropped the request (it stopped); see its log")),
        Err(_) => Err(client::Error::timeout(ADMIN_TIMEOUT.as_millis() as u64)),
    }
}

fn failed(node_id: NodeId, e: client::Error) -> NodeCreateOutcome {
    NodeCreateOutcome { node_id, outcome: CreateOutcome::Failed as i32, error: Some(e) }
}

/// A caller's `authorization` header, as it came.
type Authorization = tonic::metadata::AsciiMetadataValue;

/// Asks the daemon of `voter` at `addr` (`endpoint`) to check or create the
/// group locally.
async fn forward(
    voter: NodeId,
    addr: String,
    endpoint: Result<tonic::transport::Endpoint, tonic::transport::Error>,
    req: tonic::Request<CreateGroupRequest>,
    timeout: Duration,
) -> NodeCreateOutcome {
    let unreachable = |why: String| {
        failed(voter, client::Error::internal(format!("cannot reach node {voter} at {addr}: {why}; is it running?")))
    };
    let call = async {
        let channel = endpoint
            .map_err(|e| e.to_string())?
            .connect_timeout(CREATE_CONNECT_TIMEOUT)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let response = waft_proto::admin_client(channel).create_group(req).await.map_err(|s| s.to_string())?;
        Ok::<_, String>(response.into_inner())
    };
    let response = match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => response,
        Ok(Err(why)) => return unreachable(why),
        Err(_) => return unreachable(format!("no answer within {timeout:?}")),
    };
    match response.nodes.into_iter().find(|o| o.node_id == voter) {
        Some(outcome) => outcome,
        // Refused before it reached the node's groups (the request, or the
        // module), or the address is another node's.
        None => failed(
            voter,
            response.error.unwrap_or_else(|| {
                client::Error::internal(format!(
                    "{addr} answered without an outcome for node {voter}; is it node {voter}?"
                ))
            }),
        ),
    }
}

/// The error a create that failed somewhere answers with: GROUP_EXISTS if
/// that is why, else the first failure's code; the message names every
/// node's outcome.
fn summary(group: u64, outcomes: &[NodeCreateOutcome], what: &str) -> client::Error {
    let errors: Vec<&client::Error> = outcomes.iter().filter_map(|o| o.error.as_ref()).collect();
    let code = if errors.iter().any(|e| e.code() == client::ErrorCode::GroupExists) {
        client::ErrorCode::GroupExists
    } else {
        errors.first().map_or(client::ErrorCode::Internal, |e| e.code())
    };
    let each: Vec<String> = outcomes
        .iter()
        .map(|o| match &o.error {
            Some(e) => format!("node {}: {e}", o.node_id),
            None => format!("node {}: {}", o.node_id, describe(o.outcome())),
        })
        .collect();
    client::Error {
        code: code as i32,
        message: format!("group {group} {what}: {}", each.join("; ")),
        ..Default::default()
    }
}

/// An outcome in words, as the CLI prints it.
pub fn describe(outcome: CreateOutcome) -> &'static str {
    match outcome {
        CreateOutcome::Created => "created",
        CreateOutcome::AlreadyThere => "already there (same module and voters)",
        CreateOutcome::Checked => "could create it",
        CreateOutcome::Failed => "failed",
        CreateOutcome::Unspecified => "unknown",
    }
}

#[tonic::async_trait]
impl waft_proto::admin::admin_server::Admin for AdminService {
    async fn create_group(
        &self,
        request: tonic::Request<CreateGroupRequest>,
    ) -> Result<tonic::Response<CreateGroupResponse>, tonic::Status> {
        let caller = self.auth.identify(&request);
        if let Err(e) = self.auth.check(&caller, Some(request.get_ref().group), Role::Admin) {
            return Ok(tonic::Response::new(CreateGroupResponse { error: Some(e), ..Default::default() }));
        }
        let authorization = request.metadata().get(waft_proto::AUTHORIZATION_HEADER).cloned();
        Ok(tonic::Response::new(self.create_group(request.into_inner(), authorization).await))
    }

    async fn deploy(
        &self,
        request: tonic::Request<DeployRequest>,
    ) -> Result<tonic::Response<DeployResponse>, tonic::Status> {
        let caller = self.auth.identify(&request);
        let checked = self.auth.check(&caller, Some(request.get_ref().group), Role::Admin);
        let result = match checked {
            Ok(()) => self.deploy(request.into_inner()).await,
            Err(e) => Err(e),
        };
        let outcome = match result {
            Ok(result) => deploy_response::Outcome::Result(result),
            Err(e) => deploy_response::Outcome::Error(e),
        };
        Ok(tonic::Response::new(DeployResponse { outcome: Some(outcome) }))
    }

    async fn upload_module(
        &self,
        request: tonic::Request<tonic::Streaming<ModuleUpload>>,
    ) -> Result<tonic::Response<UploadModuleResponse>, tonic::Status> {
        let caller = self.auth.identify(&request);
        let mut stream = request.into_inner();
        let refused = |e: client::Error| {
            Ok(tonic::Response::new(UploadModuleResponse { error: Some(e), module_hash: Bytes::new() }))
        };
        let first = match stream.message().await {
            Ok(Some(first)) => first,
            Ok(None) => return refused(client::Error::invalid_request("an empty upload")),
            Err(status) => return Err(status),
        };
        if let Err(e) = self.auth.check(&caller, Some(first.group), Role::Admin) {
            return refused(e);
        }
        if first.group == waft_proto::GROUP_NONE {
            return refused(client::Error::invalid_request("group 0 is reserved; name the group the module is for"));
        }
        if !first.for_create {
            let Some(group) = self.host.groups().get(first.group) else {
                return refused(client::Error::unknown_group(first.group));
            };
            // A module is deployed at the leader: one uploaded elsewhere
            // would only have to travel again.
            let status = group.status.borrow();
            if status.role() != client::Role::Leader {
                return refused(client::Error::not_leader(status.leader_id, status.leader_address.clone()));
            }
        }
        let Ok(_permit) = self.uploads.clone().try_acquire_owned() else {
            return refused(client::Error::busy(BUSY_RETRY_AFTER_MS * 10, "another upload is under way on this node"));
        };
        match self.upload_module(first, stream).await {
            Ok(hash) => Ok(tonic::Response::new(UploadModuleResponse {
                error: None,
                module_hash: Bytes::copy_from_slice(&hash.0),
            })),
            Err(e) => refused(e),
        }
    }

    async fn set_group(
        &self,
        request: tonic::Request<SetGroupRequest>,
    ) -> Result<tonic::Response<SetGroupResponse>, tonic::Status> {
        let caller = self.auth.identify(&request);
        let checked = self.auth.check(&caller, Some(request.get_ref().group), Role::Admin);
        let result = match checked {
            Ok(()) => self.set_group(request.into_inner()).await,
            Err(e) => Err(e),
        };
        let outcome = match result {
            Ok(result) => set_group_response::Outcome::Result(result),
            Err(e) => set_group_response::Outcome::Error(e),
        };
        Ok(tonic::Response::new(SetGroupResponse { outcome: Some(outcome) }))
    }

    async fn replace_node(
        &self,
        request: tonic::Request<ReplaceNodeRequest>,
    ) -> Result<tonic::Response<ReplaceNodeResponse>, tonic::Status> {
        let caller = self.auth.identify(&request);
        if let Err(e) = self.auth.check(&caller, None, Role::Admin) {
            return Err(tonic::Status::permission_denied(e.to_string()));
        }
        let node = request.into_inner().node;
        if node == waft_raft::NONE {
            return Err(tonic::Status::invalid_argument("node 0 is reserved; name the node whose data was lost"));
        }
        // A node that lost its data must not vote until it holds again what
        // its old self acknowledged: as a voter, its empty log would grant
        // any candidate, one that lacks committed entries too. So it comes
        // back as a learner, through the log.
        for (group, handle) in self.host.groups().all() {
            let config = handle.status.borrow().configuration.clone().unwrap_or_default();
            if config.voters.contains(&node) || config.voters_outgoing.contains(&node) {
                return Err(tonic::Status::failed_precondition(format!(
                    "node {node} is still a voter of group {group} as this node knows it: with its data lost, its \
                     empty log could elect a leader that lacks committed entries. Remove it first (`waft admin \
                     --group {group} remove-peer {node}`), replace it, then add it back as a learner and promote \
                     it once it caught up (`add-learners {node}`, `promote-learner {node}`)"
                )));
            }
        }
        let book = self.book.clone();
        // A durable write of a small file: off the async worker.
        let forgotten = tokio::task::spawn_blocking(move || book.forget(node))
            .await
            .map_err(|e| tonic::Status::internal(format!("the peer book task failed: {e}")))?
            .map_err(tonic::Status::internal)?;
        tracing::warn!(
            peer = node,
            forgotten = forgotten.map(|i| format!("{i:016x}")),
            "an operator replaced a peer's data directory: the next one it speaks from is taken"
        );
        let forgotten_incarnation = forgotten.map(|i| format!("{i:016x}")).unwrap_or_default();
        Ok(tonic::Response::new(ReplaceNodeResponse { forgotten_incarnation }))
    }

    async fn change(
        &self,
        request: tonic::Request<AdminRequest>,
    ) -> Result<tonic::Response<AdminResponse>, tonic::Status> {
        let caller = self.auth.identify(&request);
        let checked = self.auth.check(&caller, Some(request.get_ref().group), Role::Admin);
        let authorization = request.metadata().get(waft_proto::AUTHORIZATION_HEADER).cloned();
        let result = match checked {
            Ok(()) => self.change(request.into_inner(), authorization).await,
            Err(e) => Err(e),
        };
        let outcome = match result {
            Ok(result) => admin_response::Outcome::Result(result),
            Err(e) => admin_response::Outcome::Error(e),
        };
        Ok(tonic::Response::new(AdminResponse { outcome: Some(outcome) }))
    }

    async fn nodes(
        &self,
        request: tonic::Request<NodesRequest>,
    ) -> Result<tonic::Response<NodesResponse>, tonic::Status> {
        let joining = request.get_ref().joining_node;
        if joining != waft_raft::NONE {
            // A daemon asks as itself: with TLS, its certificate names it.
            if let Err(why) = self.auth.check_peer(&request, Some(joining)) {
                return Err(tonic::Status::permission_denied(why));
            }
        } else {
            let caller = self.auth.identify(&request);
            if let Err(e) = self.auth.check(&caller, None, Role::Admin) {
                return Err(tonic::Status::permission_denied(e.to_string()));
            }
        }
        let req = request.into_inner();
        let node_id = self.host.node_id();
        let nodes = self.host.addresses();
        if joining != waft_raft::NONE {
            if joining == node_id {
                return Err(tonic::Status::invalid_argument(format!(
                    "node {joining} is this node's id: a joining daemon needs an id of its own"
                )));
            }
            crate::peer::check_address(&req.joining_address).map_err(tonic::Status::invalid_argument)?;
            match nodes.get(&joining) {
                Some(known) if *known != req.joining_address => tracing::warn!(
                    node = joining,
                    known = %known,
                    joining = %req.joining_address,
                    "a daemon joins as a node known at another address; if it moved, record its new address \
                     (add-peer --address)"
                ),
                _ => tracing::info!(node = joining, address = %req.joining_address, "a daemon joins"),
            }
        }
        Ok(tonic::Response::new(NodesResponse { node_id, nodes: crate::peer::addresses_to_proto(&nodes) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use waft_proto::admin::AdminOp;
    use waft_raft::Configuration;

    fn req(op: AdminOp, ids: &[u64]) -> AdminRequest {
        AdminRequest { group: 1, op: op as i32, ids: ids.to_vec(), ..Default::default() }
    }

    #[test]
    fn a_membership_change_that_holds_already_is_recognised() {
        let current = Configuration {
            voters: vec![1, 2, 3],
            voters_outgoing: Vec::new(),
            learners: vec![4],
            ..Default::default()
        };
        let holds = |op: Op| op.target(&current).as_ref() == Some(&current);
        assert!(holds(Op::AddPeer(2)));
        assert!(holds(Op::RemovePeer(5)));
        assert!(holds(Op::ChangePeers { voters: vec![3, 2, 1, 2], learners: vec![4] }));
        assert!(holds(Op::AddLearners(vec![4])));
        assert!(holds(Op::RemoveLearners(vec![6])));
        assert!(holds(Op::PromoteLearner(3)));
        for changes in [
            Op::AddPeer(4),
            Op::RemovePeer(3),
            Op::RemovePeer(4),
            Op::ChangePeers { voters: vec![1, 2], learners: vec![4] },
            Op::AddLearners(vec![5]),
            Op::RemoveLearners(vec![4]),
            Op::PromoteLearner(4),
        ] {
            assert!(!holds(changes.clone()), "{changes:?}");
        }
        // Not membership, or refused further on (a voter as a learner).
        for none in [Op::TransferLeader(Some(2)), Op::Snapshot, Op::ResetPeers(vec![1]), Op::AddLearners(vec![2])] {
            assert_eq!(none.target(&current), None, "{none:?}");
        }
    }

    #[test]
    fn creates_are_checked_before_anything_is_asked_of_a_voter() {
        let known = |id: NodeId| (1..=3).contains(&id);
        let req = |group: u64, voters: &[u64], module: &'static [u8]| CreateGroupRequest {
            group,
            voters: voters.to_vec(),
            module: bytes::Bytes::from_static(module),
            ..Default::default()
        };
        let ok = Create::check(&req(2, &[3, 1, 2, 1], b"\0asm"), known).unwrap();
        assert_eq!((ok.group, ok.voters), (2, vec![1, 2, 3]));
        let with_members = CreateGroupRequest { members: vec![3, 2, 3], ..req(2, &[1, 2], b"\0asm") };
        assert_eq!(Create::check(&with_members, known).unwrap().members, vec![3], "voters are not members too");
        let unknown_member = CreateGroupRequest { members: vec![4], ..req(2, &[1, 2], b"\0asm") };
        assert!(Create::check(&unknown_member, known).unwrap_err().message.contains("node 4"));
        // A node this one does not know can be named with its address; a
        // forwarded create acts here only and reaches no one.
        let addr = |id: u64, a: &str| client::NodeAddress { node_id: id, address: a.into() };
        let addressed = CreateGroupRequest { addresses: vec![addr(4, "10.0.0.4:7001")], ..unknown_member.clone() };
        assert_eq!(Create::check(&addressed, known).unwrap().given_address(4).as_deref(), Some("10.0.0.4:7001"));
        let forwarded = CreateGroupRequest { local_only: true, ..unknown_member.clone() };
        assert!(Create::check(&forwarded, known).is_ok());
        for (addresses, says) in [
            (vec![addr(4, "10.0.0.4:7001"), addr(4, "10.0.0.5:7001")], "two addresses"),
            (vec![addr(4, "no-port")], "host:port"),
            (vec![addr(4, "0.0.0.0:7001")], "unspecified"),
            (vec![addr(4, "")], "bytes"),
            (vec![addr(0, "a:1")], "node id 0"),
        ] {
            let r = CreateGroupRequest { addresses, ..unknown_member.clone() };
            let e = Create::check(&r, known).unwrap_err();
            assert!(e.message.contains(says), "{e}");
        }
        for (r, says) in [
            (req(0, &[1], b"\0asm"), "group 0"),
            (req(2, &[], b"\0asm"), "voters"),
            (req(2, &[0, 1], b"\0asm"), "node id 0"),
            (req(2, &[1, 4], b"\0asm"), "node 4"),
            (req(2, &[1], b""), "empty"),
        ] {
            let e = Create::check(&r, known).unwrap_err();
            assert_eq!(e.code(), client::ErrorCode::InvalidRequest, "{e}");
            assert!(e.message.contains(says), "{e}");
        }
        let mut big = req(2, &[1], b"");
        big.module = vec![0u8; CREATE_MODULE_BYTES_MAX + 1].into();
        assert_eq!(Create::check(&big, known).unwrap_err().code(), client::ErrorCode::TooLarge);
        // Named by hash instead (a module uploaded to the node, or one a
        // forwarding node holds): 32 bytes, not with the bytes too.
        let by_hash = CreateGroupRequest {
            module_hash: bytes::Bytes::from(vec![7u8; 32]),
            module_size: 9 << 20,
            module_from: 2,
            ..req(2, &[1, 2], b"")
        };
        match Create::check(&by_hash, known).unwrap().module {
            Source::Hash { hash, size, from } => assert_eq!((hash, size, from), (ModuleHash([7; 32]), 9 << 20, 2)),
            other => panic!("{other:?}"),
        }
        for (r, says) in [
            (CreateGroupRequest { module: bytes::Bytes::from_static(b"\0asm"), ..by_hash.clone() }, "not both"),
            (CreateGroupRequest { module_hash: bytes::Bytes::from(vec![7u8; 31]), ..by_hash.clone() }, "32 bytes"),
            (CreateGroupRequest { module_size: crate::modules::MODULE_BYTES_MAX + 1, ..by_hash.clone() }, "bytes"),
        ] {
            let e = Create::check(&r, known).unwrap_err();
            assert!(e.message.contains(says), "{e}");
        }
    }

    #[test]
    fn a_failed_create_names_every_node_and_prefers_group_exists() {
        let ok = NodeCreateOutcome { node_id: 1, outcome: CreateOutcome::Checked as i32, error: None };
        let down = failed(2, client::Error::internal("cannot reach node 2"));
        let exists = failed(3, client::Error::group_exists("node 3 serves group 5 already"));
        let e = summary(5, &[ok, down, exists], "was not created (nothing changed)");
        assert_eq!(e.code(), client::ErrorCode::GroupExists);
        for part in [
            "group 5 was not created",
            "node 1: could create it",
            "node 2: ERROR_CODE_INTERNAL",
            "node 3: ERROR_CODE_GROUP_EXISTS",
        ] {
            assert!(e.message.contains(part), "{part}: {e}");
        }
    }

    #[test]
    fn requests_are_checked_before_they_reach_a_group() {
        assert_eq!(Op::from_request(&req(AdminOp::AddPeer, &[4])).unwrap(), Op::AddPeer(4));
        assert_eq!(Op::from_request(&req(AdminOp::TransferLeader, &[])).unwrap(), Op::TransferLeader(None));
        for (op, ids) in [
            (AdminOp::AddPeer, &[][..]),
            (AdminOp::AddPeer, &[4, 5][..]),
            (AdminOp::RemovePeer, &[0][..]),
            (AdminOp::ChangePeers, &[][..]),
            (AdminOp::TransferLeader, &[1, 2][..]),
            (AdminOp::Unspecified, &[1][..]),
        ] {
            let e = Op::from_request(&req(op, ids)).unwrap_err();
            assert_eq!(e.code(), client::ErrorCode::InvalidRequest, "{op:?} {ids:?}");
        }
        let mut unknown = req(AdminOp::AddPeer, &[4]);
        unknown.op = 99;
        assert!(Op::from_request(&unknown).is_err());
    }
}
