//! Two groups on one node share one RocksDB: their Readies are persisted in
//! one merged write (one sync), the way the daemon group-commits.

mod common;

use waft_node::{Output, Replica, ReplicaConfig, merge_write};
use waft_storage::{RocksLogStore, SnapshotStore, WriteSet};

const GROUPS: [u64; 2] = [11, 12];

fn open_all(store: &mut RocksLogStore, snaps: &SnapshotStore) -> Vec<Replica> {
    let module = common::guest("waft_counter");
    GROUPS
        .iter()
        .map(|&g| {
            let cfg = ReplicaConfig::new(waft_raft::Config::new(1, g));
            Replica::open(g, cfg, store, snaps, &module, &[1]).unwrap()
        })
        .collect()
}

/// One round: every group's Ready, one merged write, then every finish.
fn round(replicas: &mut [Replica], store: &mut RocksLogStore, snaps: &SnapshotStore) -> Vec<Output> {
    let mut no_peers = |_m: waft_raft::Message| panic!("single-voter groups send nothing");
    let mut pendings = Vec::new();
    let mut merged = WriteSet::new();
    for r in replicas.iter_mut() {
        let mut p = r.begin_ready(&mut no_peers).unwrap();
        if let Some(p) = p.as_mut() {
            merge_write(&mut merged, p.take_write());
        }
        pendings.push(p);
    }
    if !merged.is_empty() {
        waft_storage::LogStore::write(store, merged).unwrap();
    }
    let mut outs = Vec::new();
    for (r, p) in replicas.iter_mut().zip(pendings) {
        let mut out = Output::default();
        if let Some(p) = p {
            r.finish_ready(p, store, snaps, &mut no_peers, &mut out).unwrap();
        }
        outs.push(out);
    }
    outs
}

fn settle(replicas: &mut [Replica], store: &mut RocksLogStore, snaps: &SnapshotStore) -> Vec<String> {
    let mut last = vec![String::new(); replicas.len()];
    for _ in 0..100 {
        if !replicas.iter().any(|r| r.has_ready()) {
            return last;
        }
        for (i, out) in round(replicas, store, snaps).into_iter().enumerate() {
            // The group's founding entry has no guest result.
            for a in out.applied.iter().filter(|a| !matches!(a.outcome, waft_node::Outcome::SettingsChanged { .. })) {
                last[i] = String::from_utf8(a.result().unwrap().clone().unwrap().to_vec()).unwrap();
            }
        }
    }
    panic!("did not settle");
}

#[test]
fn two_groups_share_one_synced_write_per_round() {
    let dir = common::scratch("group-commit");
    let mut store = RocksLogStore::open(dir.join("log")).unwrap();
    let snaps = SnapshotStore::open(dir.join("snapshots")).unwrap();
    let mut replicas = open_all(&mut store, &snaps);
    for r in replicas.iter_mut() {
        r.campaign_now();
    }
    settle(&mut replicas, &mut store, &snaps);
    for (i, r) in replicas.iter_mut().enumerate() {
        for _ in 0..=i {
            let payload = bytes::Bytes::from_static(br#"{"incr":10}"#);
            r.propose(&waft_session::Envelope::new(0, waft_session::Body::Plain { payload })).unwrap();
        }
    }
    assert_eq!(settle(&mut replicas, &mut store, &snaps), ["10", "20"]);
    drop(replicas);
    drop(store);
    // Both groups come back from the one store.
    let mut store = RocksLogStore::open(dir.join("log")).unwrap();
    let snaps = SnapshotStore::open(dir.join("snapshots")).unwrap();
    let mut replicas = open_all(&mut store, &snaps);
    for r in replicas.iter_mut() {
        r.campaign_now();
    }
    settle(&mut replicas, &mut store, &snaps);
    let values: Vec<String> =
        replicas.iter_mut().map(|r| String::from_utf8(r.query(b"\"get\"").unwrap().to_vec()).unwrap()).collect();
    assert_eq!(values, ["10", "20"]);
}
