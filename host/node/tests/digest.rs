//! Replicas check each other, in-process: a replica whose state comes to
//! differ (a test hook makes it skip one command) is found at the next
//! digest point, fenced, and rebuilt from a healthy replica's snapshot,
//! while the group goes on; a leader that is the odd one out hands
//! leadership on.

mod common;

use bytes::Bytes;
use common::{Cluster, guest_bytes};
use waft_node::{Error, Outcome};
use waft_raft::{ReadMode, Role};
use waft_session::Body;
use waft_storage::ModuleHash;

const INCR: &str = r#"{"incr":1}"#;
const INTERVAL: u64 = 16;

fn incr(c: &mut Cluster, n: usize) {
    for _ in 0..n {
        c.propose(INCR);
    }
    c.settle();
    c.tick(3);
}

/// Ticks until `done` holds (reports are re-sent every few ticks), at most `max` ticks.
fn tick_until(c: &mut Cluster, max: usize, mut done: impl FnMut(&mut Cluster) -> bool) -> bool {
    for _ in 0..max {
        if done(c) {
            return true;
        }
        c.tick(1);
    }
    done(c)
}

fn assert_identical(c: &mut Cluster, ids: &[u64]) {
    let leader = c.leader().expect("a leader");
    // A verdict proposed on the last tick reaches the followers' commit
    // index with the next heartbeat.
    let caught_up = tick_until(c, 10, |c| {
        let applied = c.applied_index(leader);
        ids.iter().all(|&id| c.applied_index(id) == applied)
    });
    if !caught_up {
        for &id in ids {
            let r = c.replica(id);
            eprintln!(
                "node {id}: role {:?} term {} commit {} applied {} last {} digests {:?} pending install {:?}",
                r.raft().role(),
                r.raft().term(),
                r.raft().committed(),
                r.applied_index(),
                r.raft().last_index(),
                r.digest_status(),
                r.pending_install().map(|i| i.meta.index)
            );
        }
        for &id in ids {
            let p = c.replica(leader).raft().progress_of(id);
            eprintln!("leader's progress of {id}: {p:?}");
        }
    }
    assert!(caught_up, "replicas {ids:?} did not catch up with leader {leader}");
    let (state, value, applied) = (c.state_bytes(leader), c.query(leader), c.applied_index(leader));
    for &id in ids {
        assert_eq!(c.applied_index(id), applied, "node {id} applied index");
        assert_eq!(c.state_bytes(id), state, "node {id} state");
        assert_eq!(c.query(id), value, "node {id} value");
    }
}

#[test]
fn a_follower_whose_state_differs_is_fenced_then_rebuilt_and_ends_identical() {
    let mut c = Cluster::with_digests("digest-rebuild", 3, 10_000, INTERVAL);
    c.elect(1);
    incr(&mut c, 3);
    let at = c.applied_index(3) + 1;
    c.replica(3).inject_divergence(at);
    incr(&mut c, 2 * INTERVAL as usize);
    let rebuilt = tick_until(&mut c, 100, |c| c.replica(3).digest_status().rebuilds == 1);
    let s = c.replica(3).digest_status().clone();
    assert!(rebuilt, "node 3 was not rebuilt: {s:?}");
    // A fenced replica goes on applying: the next digest point's verdict
    // may find it different again before its rebuild lands.
    assert!((1..=2).contains(&s.mismatches), "a verdict found node 3 different: {s:?}");
    assert!(s.fence.is_none(), "the fence lifted: {s:?}");
    assert!(c.installs >= 1, "node 3 took the leader's snapshot");
    for id in [1, 2] {
        let s = c.replica(id).digest_status();
        assert_eq!((s.mismatches, s.rebuilds), (0, 0), "node {id}: {s:?}");
        assert!(s.verified >= INTERVAL, "node {id} was confirmed: {s:?}");
    }
    assert_identical(&mut c, &[1, 2, 3]);
    // The next verdict confirms the rebuilt replica like the others.
    let before = c.replica(3).digest_status().verified;
    incr(&mut c, INTERVAL as usize);
    assert!(tick_until(&mut c, 60, |c| c.replica(3).digest_status().verified > before));
    assert_identical(&mut c, &[1, 2, 3]);
}

#[test]
fn with_manual_rebuild_a_fenced_replica_serves_no_read_and_never_leads() {
    let mut c = Cluster::with_digests("digest-manual", 3, 10_000, INTERVAL);
    c.manual_rebuild.insert(3);
    c.close(3);
    c.open(3);
    c.elect(1);
    incr(&mut c, 3);
    let at = c.applied_index(3) + 1;
    c.replica(3).inject_divergence(at);
    incr(&mut c, 2 * INTERVAL as usize);
    assert!(tick_until(&mut c, 100, |c| c.replica(3).fenced().is_some()), "node 3 was not fenced");
    let fence = c.replica(3).fenced().cloned().unwrap();
    assert_eq!(fence.index % INTERVAL, 0, "fenced at a digest point: {fence:?}");
    assert_ne!(fence.ours, fence.group);
    assert!(matches!(c.replica(3).query(b"\"get\""), Err(Error::Fenced { .. })));
    assert!(matches!(c.replica(3).read_index(7, ReadMode::Safe), Err(Error::Fenced { .. })));
    // It never stands for election, even when asked to.
    c.replica(3).campaign_now();
    c.settle();
    assert_eq!(c.leader(), Some(1));
    // The group goes on without it, and it stays fenced for an operator.
    let applied = c.applied_index(1);
    incr(&mut c, INTERVAL as usize);
    c.tick(30);
    assert!(c.applied_index(1) > applied);
    assert!(c.replica(3).fenced().is_some());
    assert_eq!(c.replica(3).digest_status().rebuilds, 0);
    assert_eq!(c.installs, 0);
    assert_identical(&mut c, &[1, 2]);
}

#[test]
fn a_leader_whose_state_differs_hands_leadership_on_and_is_rebuilt() {
    let mut c = Cluster::with_digests("digest-leader", 3, 10_000, INTERVAL);
    c.elect(1);
    incr(&mut c, 3);
    let at = c.applied_index(1) + 1;
    c.replica(1).inject_divergence(at);
    // Proposals go to whoever leads; the old leader stops leading once fenced.
    for _ in 0..2 * INTERVAL {
        if c.leader().is_none() {
            c.tick(5);
        }
        c.propose(INCR);
        c.settle();
    }
    let rebuilt = tick_until(&mut c, 200, |c| c.replica(1).digest_status().rebuilds == 1);
    let s = c.replica(1).digest_status().clone();
    assert!(rebuilt, "node 1 was not rebuilt: {s:?}");
    assert!(s.mismatches >= 1, "{s:?}");
    let leader = c.leader().expect("a leader");
    assert_ne!(leader, 1, "the replica that differed no longer leads");
    assert_eq!(c.replica(leader).raft().role(), Role::Leader);
    incr(&mut c, 1);
    assert_identical(&mut c, &[1, 2, 3]);
}

/// A replica that cannot compile the module the group switches to (as if
/// its compiler differed) fences itself at the deploy's index instead of
/// running the old module on; the next verdict has the leader rebuild it
/// from a snapshot that carries the new module.
#[test]
fn a_replica_that_cannot_compile_the_deployed_module_fences_itself_and_is_rebuilt() {
    let mut c = Cluster::with_digests("digest-compile-fault", 3, 10_000, INTERVAL);
    c.elect(1);
    incr(&mut c, 2);
    let doubling = guest_bytes("waft_counter_doubling");
    c.replica(3).inject_compile_fault(ModuleHash::of(&doubling));
    let (d, _) = c.propose_body(Body::Deploy { module: Bytes::from(doubling.clone()) });
    c.settle();
    c.tick(3);
    let fence = c.replica(3).fenced().cloned().expect("node 3 fenced itself");
    assert_eq!(fence.index, d);
    assert!(fence.why.contains("cannot load module"), "{}", fence.why);
    assert!(matches!(c.outcome_at(3, d), Some(Outcome::Fenced(_))), "{:?}", c.outcome_at(3, d));
    assert!(c.stopped.is_empty(), "nothing stopped: {:?}", c.stopped);
    incr(&mut c, 2 * INTERVAL as usize);
    assert!(tick_until(&mut c, 100, |c| c.replica(3).digest_status().rebuilds == 1), "node 3 was not rebuilt");
    for id in [1, 2, 3] {
        assert_eq!(c.replica(id).module_hash(), ModuleHash::of(&doubling), "node {id} runs the deployed module");
        assert_eq!(c.replica(id).module_index(), d, "node {id}");
    }
    assert_identical(&mut c, &[1, 2, 3]);
}

/// A deploy by hash (`Body::DeployHash`): the module's bytes are not in the
/// log. Replicas that hold it (here in their module source, as a node's
/// module store) switch at the entry; one that does not hold it cannot
/// switch, fences itself there, and is rebuilt from a snapshot that carries
/// the module.
#[test]
fn a_deploy_by_hash_switches_replicas_that_hold_the_module_and_fences_one_that_does_not() {
    let mut c = Cluster::with_digests("digest-deploy-hash", 3, 10_000, INTERVAL);
    c.elect(1);
    incr(&mut c, 2);
    let doubling = Bytes::from(guest_bytes("waft_counter_doubling"));
    let hash = ModuleHash::of(&doubling);
    for id in [1, 2] {
        let held = doubling.clone();
        c.replica(id).set_module_source(std::sync::Arc::new(move |h| (*h == hash).then(|| held.clone())));
    }
    let (d, _) = c.propose_body(Body::DeployHash { module_hash: hash.0, size: doubling.len() as u64 });
    c.settle();
    c.tick(3);
    for id in [1, 2] {
        assert_eq!(c.outcome_at(id, d), Some(&Outcome::Deployed { hash, index: d }), "node {id}");
    }
    let fence = c.replica(3).fenced().cloned().expect("node 3 fenced itself");
    assert_eq!(fence.index, d);
    assert!(fence.why.contains("does not hold it"), "{}", fence.why);
    assert!(c.stopped.is_empty(), "nothing stopped: {:?}", c.stopped);
    incr(&mut c, 2 * INTERVAL as usize);
    assert!(tick_until(&mut c, 100, |c| c.replica(3).digest_status().rebuilds == 1), "node 3 was not rebuilt");
    for id in [1, 2, 3] {
        assert_eq!(c.replica(id).module_hash(), hash, "node {id} runs the deployed module");
        assert_eq!(c.replica(id).module_index(), d, "node {id}");
    }
    assert_identical(&mut c, &[1, 2, 3]);
}
