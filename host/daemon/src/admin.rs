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

use tokio::sync::oneshot;
use waft_proto::admin::{AdminOp, AdminRequest, AdminResponse, AdminResult, admin_response};
use waft_proto::client;
use waft_raft::NodeId;

use crate::driver::{BUSY_RETRY_AFTER_MS, GroupHandle, Input};

/// How long an admin request waits for its change to take effect. Longer
/// than a client request: a new voter may have a snapshot to catch up on.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

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
}

impl AdminService {
    pub fn new(groups: Arc<BTreeMap<u64, GroupHandle>>) -> AdminService {
        AdminService { groups }
    }

    async fn change(&self, req: AdminRequest) -> AdminReply {
        if req.group == waft_proto::GROUP_NONE {
            return Err(client::Error::invalid_request("group 0 is reserved; name the group to change"));
        }
        let group = self.groups.get(&req.group).ok_or_else(|| client::Error::unknown_group(req.group))?;
        let op = Op::from_request(&req)?;
        let (reply, rx) = oneshot::channel();
        match group.inbox.try_send(Input::Admin { op, reply }) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                return Err(client::Error::busy(BUSY_RETRY_AFTER_MS, "the group's inbox is full"));
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                return Err(client::Error::internal("the group stopped on this node; see its log"));
            }
        }
        match tokio::time::timeout(ADMIN_TIMEOUT, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(client::Error::internal("the group dropped the request (it stopped); see its log")),
            Err(_) => Err(client::Error::timeout(ADMIN_TIMEOUT.as_millis() as u64)),
        }
    }
}

#[tonic::async_trait]
impl waft_proto::admin::admin_server::Admin for AdminService {
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
