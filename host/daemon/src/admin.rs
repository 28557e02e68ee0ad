//! The admin service: membership changes, leader transfer, snapshot now and
//! the unsafe reset of a group's voters, each answered once it took effect.
//!
//! Owns the checks an admin request passes before it reaches the group's
//! driver and the (longer) wait for the outcome; the driver owns starting the
//! change and recognising when it is done ([`crate::driver`]). Must never
//! block on a full inbox: that is BUSY.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};
use waft_proto::admin::{
    AdminOp, AdminRequest, AdminResponse, AdminResult, DeployRequest, DeployResponse, DeployResult, admin_response,
    deploy_response,
};
use waft_proto::client;
use waft_raft::NodeId;

use crate::driver::{BUSY_RETRY_AFTER_MS, GroupHandle, Input};

/// How long an admin request waits for its change to take effect. Longer
/// than a client request: a new voter may have a snapshot to catch up on.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Deploys validated (compiled) at once on this node; more get BUSY. A
/// compile takes a core for a few hundred milliseconds.
pub const DEPLOY_VALIDATIONS_MAX: usize = 1;

/// One admin operation, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    AddPeer(NodeId),
    RemovePeer(NodeId),
    ChangePeers { voters: Vec<NodeId>, learners: Vec<NodeId> },
    AddLearners(Vec<NodeId>),
    RemoveLearners(Vec<NodeId>),
    PromoteLearner(NodeId),
    /// `None`: the most up-to-date voter.
    TransferLeader(Option<NodeId>),
    Snapshot,
    ResetPeers(Vec<NodeId>),
}

/// What an admin request gets back.
pub type AdminReply = Result<AdminResult, client::Error>;

impl Op {
    /// The operation a request asks for, or why it is malformed.
    pub fn from_request(req: &AdminRequest) -> Result<Op, client::Error> {
        let bad = |why: &str| client::Error::invalid_request(why.to_string());
        let ids = &req.ids;
        if ids.contains(&waft_raft::NONE) || req.learners.contains(&waft_raft::NONE) {
            return Err(bad("node id 0 is reserved; node ids are 1 or more"));
        }
        let one = || match ids.as_slice() {
            [id] => Ok(*id),
            _ => Err(bad("this operation takes exactly one node id")),
        };
        let some = || if ids.is_empty() { Err(bad("name at least one node id")) } else { Ok(ids.clone()) };
        let op = AdminOp::try_from(req.op).map_err(|_| bad("unknown admin operation"))?;
        Ok(match op {
            AdminOp::Unspecified => return Err(bad("no admin operation given")),
            AdminOp::AddPeer => Op::AddPeer(one()?),
            AdminOp::RemovePeer => Op::RemovePeer(one()?),
            AdminOp::ChangePeers => Op::ChangePeers { voters: some()?, learners: req.learners.clone() },
            AdminOp::AddLearners => Op::AddLearners(some()?),
            AdminOp::RemoveLearners => Op::RemoveLearners(some()?),
            AdminOp::PromoteLearner => Op::PromoteLearner(one()?),
            AdminOp::TransferLeader => match ids.as_slice() {
                [] => Op::TransferLeader(None),
                [id] => Op::TransferLeader(Some(*id)),
                _ => return Err(bad("transfer-leader takes one target, or none for the most up-to-date voter")),
            },
            AdminOp::Snapshot => Op::Snapshot,
            AdminOp::ResetPeers => Op::ResetPeers(some()?),
        })
    }

    /// Whether only the leader may start it (the rest act on this node).
    pub fn needs_leader(&self) -> bool {
        !matches!(self, Op::Snapshot | Op::ResetPeers(_))
    }
}

pub struct AdminService {
    groups: Arc<BTreeMap<u64, GroupHandle>>,
    engine: waft_runtime::Engine,
    /// Deployed modules by hash (`data_dir/modules`).
    modules: Arc<waft_storage::ModuleStore>,
    validations: Arc<Semaphore>,
}

impl AdminService {
    pub fn new(
        groups: Arc<BTreeMap<u64, GroupHandle>>,
        engine: waft_runtime::Engine,
        modules: Arc<waft_storage::ModuleStore>,
    ) -> AdminService {
        AdminService { groups, engine, modules, validations: Arc::new(Semaphore::new(DEPLOY_VALIDATIONS_MAX)) }
    }

    /// Validates the module here (the leader), stores it by hash and has the
    /// group's driver propose it; answers once the entry applied here.
    async fn deploy(&self, req: DeployRequest) -> Result<DeployResult, client::Error> {
        if req.group == waft_proto::GROUP_NONE {
            return Err(client::Error::invalid_request("group 0 is reserved; name the group to deploy to"));
        }
        let group = self.groups.get(&req.group).ok_or_else(|| client::Error::unknown_group(req.group))?;
        if req.module.is_empty() {
            return Err(client::Error::invalid_request("empty module; send the component's bytes"));
        }
        let size = req.module.len() as u64;
        // The entry carries the module and a small envelope header.
        if size > group.command_bytes_max {
            return Err(client::Error::too_large(size, group.command_bytes_max));
        }
        {
            // Only the leader proposes; spare a compile on the others.
            let status = group.status.borrow();
            if status.role() != client::Role::Leader {
                return Err(client::Error::not_leader(status.leader_id, status.leader_address.clone()));
            }
        }
        let Ok(_permit) = self.validations.clone().try_acquire_owned() else {
            return Err(client::Error::busy(BUSY_RETRY_AFTER_MS * 10, "another deploy is being validated on this node"));
        };
        let (engine, modules, bytes) = (self.engine.clone(), self.modules.clone(), req.module);
        let group_id = req.group;
        let module = tokio::task::spawn_blocking(move || {
            let module = waft_node::GuestModule::load(&engine, bytes)
                .map_err(|e| client::Error::bad_module(format!("module refused, nothing changed: {e}")))?;
            modules.put(module.bytes()).map_err(|e| client::Error::internal(format!("cannot store the module: {e}")))?;
            tracing::info!(group = group_id, module = %module.hash().to_hex(), bytes = module.bytes().len(), "deploy validated and stored");
            Ok::<_, client::Error>(module)
        })
        .await
        .map_err(|e| client::Error::internal(format!("the module validation task failed: {e}")))??;
        let (reply, rx) = oneshot::channel();
        send(group, Input::Deploy { module, reply })?;
        let committed = match tokio::time::timeout(ADMIN_TIMEOUT, rx).await {
            Ok(Ok(reply)) => reply?,
            Ok(Err(_)) => return Err(client::Error::internal("the group dropped the request (it stopped); see its log")),
            Err(_) => return Err(client::Error::timeout(ADMIN_TIMEOUT.as_millis() as u64)),
        };
        Ok(DeployResult { module_hash: committed.result, index: committed.index })
    }

    async fn change(&self, req: AdminRequest) -> AdminReply {
        if req.group == waft_proto::GROUP_NONE {
            return Err(client::Error::invalid_request("group 0 is reserved; name the group to change"));
        }
        let group = self.groups.get(&req.group).ok_or_else(|| client::Error::unknown_group(req.group))?;
        let op = Op::from_request(&req)?;
        let (reply, rx) = oneshot::channel();
        send(group, Input::Admin { op, reply })?;
        match tokio::time::timeout(ADMIN_TIMEOUT, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(client::Error::internal("the group dropped the request (it stopped); see its log")),
            Err(_) => Err(client::Error::timeout(ADMIN_TIMEOUT.as_millis() as u64)),
        }
    }
}

/// Queues `input` for the group's driver; never waits on a full inbox.
fn send(group: &GroupHandle, input: Input) -> Result<(), client::Error> {
    match group.inbox.try_send(input) {
        Ok(()) => Ok(()),
        Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
            Err(client::Error::busy(BUSY_RETRY_AFTER_MS, "the group's inbox is full"))
        }
        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
            Err(client::Error::internal("the group stopped on this node; see its log"))
        }
    }
}

#[tonic::async_trait]
impl waft_proto::admin::admin_server::Admin for AdminService {
    async fn deploy(
        &self,
        request: tonic::Request<DeployRequest>,
    ) -> Result<tonic::Response<DeployResponse>, tonic::Status> {
        let outcome = match self.deploy(request.into_inner()).await {
            Ok(result) => deploy_response::Outcome::Result(result),
            Err(e) => deploy_response::Outcome::Error(e),
        };
        Ok(tonic::Response::new(DeployResponse { outcome: Some(outcome) }))
    }

    async fn change(&self, request: tonic::Request<AdminRequest>) -> Result<tonic::Response<AdminResponse>, tonic::Status> {
        let outcome = match self.change(request.into_inner()).await {
            Ok(result) => admin_response::Outcome::Result(result),
            Err(e) => admin_response::Outcome::Error(e),
        };
        Ok(tonic::Response::new(AdminResponse { outcome: Some(outcome) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(op: AdminOp, ids: &[u64]) -> AdminRequest {
        AdminRequest { group: 1, op: op as i32, ids: ids.to_vec(), learners: Vec::new() }
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
