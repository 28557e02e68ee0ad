//! Deploys through the log, in-process: three replicas switch modules at the
//! deploy entry's index, and restarts and snapshot installs bring back the
//! module the state was made by.

mod common;

use bytes::Bytes;
use common::{Cluster, guest_bytes};
use waft_node::Outcome;
use waft_session::Body;
use waft_storage::ModuleHash;

const INCR: &str = r#"{"incr":1}"#;

fn incr(c: &mut Cluster, n: usize) -> Vec<u64> {
    let at: Vec<u64> = (0..n).map(|_| c.propose(INCR).0).collect();
    c.settle();
    // Heartbeats carry the final commit index to the followers.
    c.tick(3);
    at
}

fn deploy(c: &mut Cluster, guest: &str) -> u64 {
    let (index, _) = c.propose_body(Body::Deploy { module: Bytes::from(guest_bytes(guest)) });
    c.settle();
    c.tick(3);
    index
}

fn assert_runs(c: &mut Cluster, ids: &[u64], guest: &str, since: u64, value: &str) {
    let hash = ModuleHash::of(&guest_bytes(guest));
    let applied = c.applied_index(c.leader().unwrap());
    for &id in ids {
        let r = c.replica(id);
        assert_eq!(r.module_hash(), hash, "node {id} runs {guest}");
        assert_eq!(r.module_index(), since, "node {id}: {guest} took effect at {since}");
        assert_eq!(c.applied_index(id), applied, "node {id} applied index");
        assert_eq!(c.query(id), value, "node {id} value");
    }
}

#[test]
fn every_replica_switches_at_the_deploy_index() {
    let mut c = Cluster::new("deploy-switch", 3, 10_000);
    c.elect(1);
    let before = incr(&mut c, 3);
    let d = deploy(&mut c, "waft_counter_doubling");
    let after = incr(&mut c, 2);
    let hash = ModuleHash::of(&guest_bytes("waft_counter_doubling"));
    for id in 1..=3 {
        assert_eq!(c.outcome_at(id, d), Some(&Outcome::Deployed { hash, index: d }), "node {id}");
        // The counter's +1 up to the deploy, the new version's +2 after it.
        let results: Vec<String> = before.iter().chain(&after).map(|&i| c.result_at(id, i)).collect();
        assert_eq!(results, ["1", "2", "3", "5", "7"], "node {id}");
    }
    assert_runs(&mut c, &[1, 2, 3], "waft_counter_doubling", d, "7");

    // Deploying the running module again changes nothing.
    let again = deploy(&mut c, "waft_counter_doubling");
    assert_eq!(c.outcome_at(2, again), Some(&Outcome::Deployed { hash, index: d }));
    assert_runs(&mut c, &[1, 2, 3], "waft_counter_doubling", d, "7");

    // A new leader keeps the new logic.
    c.transfer(2);
    incr(&mut c, 1);
    assert_runs(&mut c, &[1, 2, 3], "waft_counter_doubling", d, "9");
}

#[test]
fn a_module_that_cannot_read_the_state_is_refused_on_every_replica() {
    let mut c = Cluster::new("deploy-refused", 3, 10_000);
    c.elect(1);
    incr(&mut c, 2);
    // The atomic example loads, but reads the counter's state as garbage.
    let bad = deploy(&mut c, "waft_atomic");
    for id in 1..=3 {
        match c.outcome_at(id, bad) {
            Some(Outcome::DeployRefused(why)) => assert!(why.contains("could not load"), "node {id}: {why}"),
            other => panic!("node {id}: the deploy should be refused, got {other:?}"),
        }
    }
    incr(&mut c, 1);
    assert_runs(&mut c, &[1, 2, 3], "waft_counter", 0, "3");
}

#[test]
fn a_replica_restarted_from_a_snapshot_after_a_deploy_runs_the_new_module() {
    let mut c = Cluster::new("deploy-restart", 3, 10_000);
    c.elect(1);
    incr(&mut c, 2);
    let d = deploy(&mut c, "waft_counter_doubling");
    incr(&mut c, 1);
    // Node 2 snapshots (and compacts) past the deploy entry, then restarts:
    // the cluster's founding module is the old counter, the snapshot's is not.
    c.replica(2).request_snapshot();
    c.tick(2);
    assert!(c.replica(2).raft().first_index() > d, "node 2 compacted past the deploy");
    c.close(2);
    c.open(2);
    c.tick(3);
    assert_runs(&mut c, &[1, 2, 3], "waft_counter_doubling", d, "4");
    incr(&mut c, 1);
    assert_runs(&mut c, &[1, 2, 3], "waft_counter_doubling", d, "6");
}

#[test]
fn a_replica_installing_a_snapshot_made_after_a_deploy_switches_module() {
    let mut c = Cluster::new("deploy-install", 3, 20);
    c.elect(1);
    incr(&mut c, 5);
    c.close(3);
    let d = deploy(&mut c, "waft_counter_doubling");
    incr(&mut c, 60);
    assert!(c.replica(1).raft().first_index() > d, "the leader compacted past the deploy");
    c.open(3);
    c.tick(5);
    assert_eq!(c.installs, 1, "node 3 installed a snapshot");
    assert_runs(&mut c, &[1, 2, 3], "waft_counter_doubling", d, "125");
    // Its own snapshot now carries the new module across a restart.
    c.close(3);
    c.open(3);
    c.tick(3);
    incr(&mut c, 1);
    assert_runs(&mut c, &[1, 2, 3], "waft_counter_doubling", d, "127");
}

/// Node `id`'s newest snapshot's module file.
fn module_path(c: &mut Cluster, id: u64) -> std::path::PathBuf {
    let up = c.nodes.iter().find(|n| n.id == id).and_then(|n| n.up.as_ref()).expect("node is up");
    let reader = up.snaps.open_latest(common::GROUP).unwrap().expect("a snapshot");
    reader.file_path(waft_node::MODULE_FILE).unwrap()
}

/// The inode of node `id`'s newest snapshot's module file, and its bytes.
fn module_file(c: &mut Cluster, id: u64) -> (u64, Vec<u8>) {
    use std::os::unix::fs::MetadataExt;
    let path = module_path(c, id);
    (std::fs::metadata(&path).unwrap().ino(), std::fs::read(&path).unwrap())
}

/// A snapshot does not write the module again while it stands: its file is
/// the newest snapshot's, linked, and outlives that snapshot's deletion; a
/// deploy makes the next snapshot write the new one. A restart from a
/// snapshot whose module file is linked runs that module.
#[test]
fn snapshots_share_the_module_file_until_a_deploy() {
    let mut c = Cluster::new("deploy-linked-module", 3, 10_000);
    c.elect(1);
    let snapshot = |c: &mut Cluster| {
        incr(c, 1);
        c.replica(2).request_snapshot();
        c.tick(2);
        module_file(c, 2)
    };
    let (first, bytes) = snapshot(&mut c);
    assert_eq!(&bytes[16..], &guest_bytes("waft_counter")[..]);
    let (second, again) = snapshot(&mut c);
    assert_eq!((second, &again), (first, &bytes), "the second snapshot links the first's module file");

    let d = deploy(&mut c, "waft_counter_doubling");
    let (third, new) = snapshot(&mut c);
    assert_ne!(third, first, "a new module is written anew");
    assert_eq!(&new[8..16], &d.to_be_bytes(), "with the index it took effect at");
    assert_eq!(&new[16..], &guest_bytes("waft_counter_doubling")[..]);
    let (fourth, _) = snapshot(&mut c);
    assert_eq!(fourth, third);

    // A module file damaged on disk is not linked on: the next snapshot
    // writes the module afresh.
    let path = module_path(&mut c, 2);
    let mut damaged = std::fs::read(&path).unwrap();
    damaged[1000] ^= 1;
    std::fs::write(&path, &damaged).unwrap();
    let (fifth, bytes) = snapshot(&mut c);
    assert_ne!(fifth, third, "the damaged file was linked");
    assert_eq!(&bytes[16..], &guest_bytes("waft_counter_doubling")[..]);

    c.close(2);
    c.open(2);
    c.tick(3);
    assert_runs(&mut c, &[1, 2, 3], "waft_counter_doubling", d, "8");
}
