//! `PendingReady::may_block`: which Readies a caller on an async runtime
//! must move off its worker. A few entries through the guest finish in
//! place; big batches, deploys, snapshot saves, role changes and checkpoint
//! moves do not.

mod common;

use bytes::Bytes;
use waft_node::{APPLY_IN_PLACE_BYTES_MAX, APPLY_IN_PLACE_ENTRIES_MAX, Output, Replica, ReplicaConfig};
use waft_session::{Body, Envelope};
use waft_storage::{RocksLogStore, SnapshotStore};

const GROUP: u64 = 3;

struct Solo {
    store: RocksLogStore,
    snaps: SnapshotStore,
    replica: Replica,
}

/// One Ready: whether it may block, and what finishing it produced.
struct Round {
    may_block: bool,
    out: Output,
}

impl Solo {
    fn open(name: &str, cfg: ReplicaConfig) -> Solo {
        let dir = common::scratch(name);
        let mut store = RocksLogStore::open(dir.join("log")).unwrap();
        let snaps = SnapshotStore::open(dir.join("snapshots")).unwrap();
        let module = common::guest("waft_counter");
        let replica = Replica::open(GROUP, cfg, &mut store, &snaps, &module, &[1]).unwrap();
        Solo { store, snaps, replica }
    }

    fn leader(name: &str, cfg: ReplicaConfig) -> Solo {
        let mut solo = Solo::open(name, cfg);
        solo.replica.campaign_now();
        let rounds = solo.settle();
        assert!(rounds.iter().any(|r| r.out.soft_state.is_some() && r.may_block), "a role change may block");
        solo
    }

    fn round(&mut self) -> Option<Round> {
        let mut no_peers = |_m: waft_raft::Message| panic!("a single-voter group sends nothing");
        let mut pending = self.replica.begin_ready(&mut no_peers).unwrap()?;
        let write = pending.take_write();
        if !write.is_empty() {
            waft_storage::LogStore::write(&mut self.store, write).unwrap();
        }
        let may_block = pending.may_block();
        let mut out = Output::default();
        self.replica.finish_ready(pending, &mut self.store, &self.snaps, &mut no_peers, &mut out).unwrap();
        Some(Round { may_block, out })
    }

    fn settle(&mut self) -> Vec<Round> {
        let mut rounds = Vec::new();
        for _ in 0..100 {
            match self.round() {
                Some(round) => rounds.push(round),
                None => return rounds,
            }
        }
        panic!("the replica did not settle");
    }

    fn propose(&mut self, body: Body) {
        self.replica.propose(&Envelope::new(0, body)).unwrap();
    }

    fn incr(&mut self, n: usize) {
        for _ in 0..n {
            self.propose(Body::Plain { payload: Bytes::from_static(br#"{"incr":1}"#) });
        }
    }

    /// Settles and returns `may_block` of the one Ready that applied entries.
    fn applying_may_block(&mut self) -> bool {
        let rounds = self.settle();
        let applying: Vec<&Round> = rounds.iter().filter(|r| !r.out.applied.is_empty()).collect();
        assert_eq!(applying.len(), 1, "one Ready applies them all");
        // The Readies that only persisted never block.
        assert!(rounds.iter().filter(|r| r.out.applied.is_empty()).all(|r| !r.may_block));
        applying[0].may_block
    }
}

fn config() -> ReplicaConfig {
    ReplicaConfig::new(waft_raft::Config::new(1, GROUP))
}

#[test]
fn a_few_small_entries_finish_in_place() {
    let mut solo = Solo::leader("may-block-few", config());
    solo.incr(3);
    assert!(!solo.applying_may_block());
    solo.incr(APPLY_IN_PLACE_ENTRIES_MAX);
    assert!(!solo.applying_may_block(), "as many entries as the bound allows");
}

#[test]
fn a_batch_past_the_bounds_may_block() {
    let mut solo = Solo::leader("may-block-many", config());
    solo.incr(APPLY_IN_PLACE_ENTRIES_MAX + 1);
    assert!(solo.applying_may_block());
    let big = Bytes::from(vec![b' '; APPLY_IN_PLACE_BYTES_MAX]);
    solo.propose(Body::Plain { payload: big });
    assert!(solo.applying_may_block(), "one entry of more bytes than the bound");
}

#[test]
fn a_deploy_may_block_whatever_its_size() {
    let mut solo = Solo::leader("may-block-deploy", config());
    // Tiny, and not a module: applying it would try to compile it (and stop
    // this replica, as the leader's check that refuses such a deploy before
    // the log is skipped here). Only whether applying it may block is checked.
    solo.propose(Body::Deploy { module: Bytes::from_static(b"\0asm\x0d\0\x01\0") });
    let persisted = solo.round().expect("the Ready that persists the entry");
    assert!(persisted.out.applied.is_empty() && !persisted.may_block);
    let mut no_peers = |_m: waft_raft::Message| panic!("a single-voter group sends nothing");
    let applying = solo.replica.begin_ready(&mut no_peers).unwrap().expect("the Ready that applies the entry");
    assert!(applying.may_block());
}

#[test]
fn a_batch_that_moves_the_checkpoint_may_block() {
    let mut cfg = config();
    cfg.limits.replay_entries_max = 4;
    let mut solo = Solo::leader("may-block-checkpoint", cfg);
    solo.incr(4);
    assert!(!solo.applying_may_block());
    solo.incr(1);
    assert!(solo.applying_may_block(), "the fifth entry since the checkpoint moves it");
    solo.incr(1);
    assert!(!solo.applying_may_block(), "the checkpoint moved");
}

#[test]
fn a_snapshot_save_may_block() {
    let mut solo = Solo::leader("may-block-snapshot", config());
    solo.incr(2);
    solo.settle();
    solo.replica.request_snapshot();
    let rounds = solo.settle();
    assert!(rounds.iter().any(|r| r.out.snapshot_saved.is_some() && r.may_block));
}
