//! Membership and leadership changes on a live cluster of real daemons,
//! under a steady write load: grow a 3-node group to 5 with change-peers
//! (joint consensus), shrink it back, add a learner and promote it, remove
//! the leader itself, transfer leadership to a named peer and to "any". No
//! acknowledged write may be lost.

mod common;

use std::process::Command;

use common::{Cluster, Load, Spec, assert_all_present};
use waft_daemon::client::{Client, ClientError};
use waft_proto::admin::{AdminOp, AdminResult};
use waft_proto::client::ErrorCode;

const GROUP: u64 = 1;

fn voters(r: &AdminResult) -> Vec<u64> {
    r.configuration.clone().unwrap_or_default().voters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_under_load_lose_nothing() {
    // Five daemons know each other; the group starts on 1, 2, 3 and nodes 4
    // and 5 wait, empty, to be added.
    let spec = Spec::one(GROUP, "waft_atomic").arg("--initial-voters", "1,2,3");
    let mut c = Cluster::start("membership", 5, spec);
    let leader = c.wait_for_leader_among(GROUP, &[0, 1, 2]).await;
    let admin = Client::with_nodes(c.addrs[..3].to_vec());
    let load = Load::start(&c, GROUP, &[0, 1, 2]);
    load.wait_acked(&mut c, 100).await;

    // Grow to five through the CLI, as an operator would: two voters change,
    // so the group goes through a joint configuration.
    let out = Command::new(env!("CARGO_BIN_EXE_waft"))
        .args(["admin", "--addr", &c.addrs[leader], "--group", "1", "change-peers", "--voters", "1,2,3,4,5"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "change-peers failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("voters 1,2,3,4,5  learners -"), "{stdout}");
    let n = load.acked_count();
    load.wait_acked(&mut c, n + 100).await;

    // Shrink back.
    let r = admin.admin(GROUP, AdminOp::ChangePeers, vec![1, 2, 3], vec![]).await.unwrap();
    assert_eq!(voters(&r), vec![1, 2, 3]);
    assert!(r.configuration.as_ref().unwrap().voters_outgoing.is_empty(), "answered after leaving the joint phase");

    // A learner replicates without voting, then becomes a voter.
    let r = admin.admin(GROUP, AdminOp::AddLearners, vec![4], vec![]).await.unwrap();
    assert_eq!((voters(&r), r.configuration.clone().unwrap().learners), (vec![1, 2, 3], vec![4]));
    let r = admin.admin(GROUP, AdminOp::PromoteLearner, vec![4], vec![]).await.unwrap();
    assert_eq!(voters(&r), vec![1, 2, 3, 4]);
    assert!(r.configuration.unwrap().learners.is_empty());
    // Every membership call is safe to retry: one whose change holds already
    // answers success with the configuration (a retry after a lost answer).
    for (op, ids) in
        [(AdminOp::PromoteLearner, vec![4]), (AdminOp::AddPeer, vec![4]), (AdminOp::ChangePeers, vec![4, 3, 2, 1])]
    {
        let again = admin.admin(GROUP, op, ids, vec![]).await.unwrap_or_else(|e| panic!("{op:?} again: {e}"));
        assert_eq!((voters(&again), again.configuration.unwrap().learners), (vec![1, 2, 3, 4], vec![]), "{op:?}");
    }
    let n = load.acked_count();
    load.wait_acked(&mut c, n + 100).await;

    // Remove the leader itself: it steps down once the change commits and
    // the others elect a new one.
    let old = c.wait_for_leader_among(GROUP, &[0, 1, 2, 3]).await;
    let r = admin.admin(GROUP, AdminOp::RemovePeer, vec![old as u64 + 1], vec![]).await.unwrap();
    assert!(!voters(&r).contains(&(old as u64 + 1)), "{:?}", voters(&r));
    let again = admin.admin(GROUP, AdminOp::RemovePeer, vec![old as u64 + 1], vec![]).await.unwrap();
    assert_eq!(voters(&again), voters(&r), "removing it again changes nothing and succeeds");
    let remaining: Vec<usize> = [0, 1, 2, 3].into_iter().filter(|i| *i != old).collect();
    let new_leader = c.wait_for_leader_among(GROUP, &remaining).await;
    assert_ne!(new_leader, old);
    let n = load.acked_count();
    load.wait_acked(&mut c, n + 100).await;

    // Transfer leadership to a named voter, then to whichever is most up to date.
    let target = remaining.iter().copied().find(|i| *i != new_leader).unwrap() as u64 + 1;
    let r = admin.admin(GROUP, AdminOp::TransferLeader, vec![target], vec![]).await.unwrap();
    assert_eq!(r.leader_id, target);
    let r = admin.admin(GROUP, AdminOp::TransferLeader, vec![target], vec![]).await.unwrap();
    assert_eq!(r.leader_id, target, "a transfer to the leader it made succeeds again");
    let r = admin.admin(GROUP, AdminOp::TransferLeader, vec![], vec![]).await.unwrap();
    assert!(r.leader_id != target && remaining.contains(&(r.leader_id as usize - 1)), "leader now {}", r.leader_id);
    // A change that cannot be made is refused with a clear error.
    match admin.admin(GROUP, AdminOp::TransferLeader, vec![9], vec![]).await {
        Err(ClientError::Refused(e)) => assert_eq!(e.code(), ErrorCode::InvalidRequest, "{e}"),
        other => panic!("transfer to a non-member: {other:?}"),
    }
    let n = load.acked_count();
    load.wait_acked(&mut c, n + 100).await;
    let (acked, failed) = load.stop().await;
    eprintln!("{} writes acknowledged across the changes, {failed} failed or unknown", acked.len());

    let final_leader = c.wait_for_leader_among(GROUP, &remaining).await;
    let commit = c.status(final_leader, GROUP).await.unwrap().commit_index;
    for &i in &remaining {
        c.wait_applied(i, GROUP, commit).await;
        assert_all_present(&c, i, GROUP, &acked).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_peers_needs_the_unsafe_flag_and_a_lost_leader() {
    let mut c = Cluster::start("reset-peers", 3, Spec::one(GROUP, "waft_counter"));
    let leader = c.wait_for_leader(GROUP).await;
    let follower = (leader + 1) % 3;
    let client = Client::with_nodes(c.addrs.clone());
    let before = client.propose(GROUP, bytes::Bytes::from_static(br#"{"incr":1}"#)).await.unwrap();
    // The write committed on two of three nodes, not necessarily on the one
    // that survives below: wait until it holds and applied it too.
    c.wait_applied(follower, GROUP, before.index).await;

    // Without the flag, the server refuses it whatever the node's state.
    let node = Client::new(c.addrs[follower].clone());
    match node.admin(GROUP, AdminOp::ResetPeers, vec![follower as u64 + 1], vec![]).await {
        Err(ClientError::Refused(e)) => {
            assert_eq!(e.code(), ErrorCode::InvalidRequest, "{e}");
            assert!(e.message.contains("allow_data_loss"), "{e}");
        }
        other => panic!("a reset without the flag: {other:?}"),
    }
    // With it, a follower that hears from its leader refuses too: the group
    // has a quorum, and a reset would let the follower elect itself alone.
    match node.reset_peers_unsafe(GROUP, vec![follower as u64 + 1]).await {
        Err(ClientError::Refused(e)) => assert!(e.message.contains("heard from a leader"), "{e}"),
        other => panic!("a reset on a healthy follower: {other:?}"),
    }
    let g = c.status(follower, GROUP).await.unwrap();
    assert_eq!(g.configuration.unwrap().voters, vec![1, 2, 3], "nothing changed");
    assert_eq!(g.leader_id, leader as u64 + 1);

    // Once the other two are gone for good, the survivor takes the reset
    // (after an election timeout without a leader) and serves alone.
    for i in (0..3).filter(|&i| i != follower) {
        c.kill(i);
    }
    let survivor = follower as u64 + 1;
    let addr = c.addrs[follower].clone();
    let deadline = std::time::Instant::now() + common::LEADER_DEADLINE;
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_waft"))
            .args([
                "admin",
                "--addr",
                &addr,
                "--group",
                "1",
                "reset-peers",
                "--voters",
                &survivor.to_string(),
                "--unsafe",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("UNSAFE") && stderr.contains("acknowledged writes"),
            "the CLI says what may be lost: {stderr}"
        );
        if out.status.success() {
            break;
        }
        assert!(stderr.contains("heard from a leader"), "{stderr}");
        assert!(std::time::Instant::now() < deadline, "the survivor never took the reset: {stderr}");
        tokio::time::sleep(common::POLL_PAUSE).await;
    }
    c.wait_for_leader_among(GROUP, &[follower]).await;
    let after = node.propose(GROUP, bytes::Bytes::from_static(br#"{"incr":1}"#)).await.unwrap();
    assert!(after.index > before.index);
    assert_eq!(common::text(&after), "2");
}
