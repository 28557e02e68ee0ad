//! kv state machines in a group, in-process: every replica ends with the
//! same store whether it applied the entries, restarted from its snapshot
//! and log, or installed a leader's snapshot; a failed entry's writes are
//! nowhere; a deploy cannot move a state between memory and the store.

mod common;

use bytes::Bytes;
use common::{Cluster, guest_bytes};
use waft_node::Outcome;
use waft_session::Body;

fn put_many(c: &mut Cluster, prefix: &str, n: u32) -> u64 {
    c.propose(&format!(r#"{{"put_many":{{"prefix":"{prefix}","n":{n}}}}}"#)).0
}

fn settle(c: &mut Cluster) {
    c.settle();
    // Heartbeats carry the final commit index to the followers.
    c.tick(3);
}

fn count(c: &mut Cluster, id: u64, prefix: &str) -> String {
    let q = format!(r#"{{"count":{{"prefix":"{prefix}"}}}}"#);
    String::from_utf8(c.replica(id).query(q.as_bytes()).unwrap().to_vec()).unwrap()
}

/// Every replica in `ids` applied what the leader did and holds the same
/// store, pair for pair.
fn assert_identical(c: &mut Cluster, ids: &[u64]) {
    let leader = c.leader().expect("a leader");
    let (applied, state) = (c.applied_index(leader), c.state_bytes(leader));
    assert!(state.len() > 16, "the store holds pairs");
    for &id in ids {
        assert_eq!(c.applied_index(id), applied, "node {id} applied index");
        assert!(c.state_bytes(id) == state, "node {id}'s store differs from the leader's");
    }
}

#[test]
fn an_entry_that_traps_after_puts_leaves_nothing_on_any_replica() {
    let mut c = Cluster::with_guest("kv-trap", 3, 10_000, "waft_kv_probe");
    c.elect(1);
    let ok = put_many(&mut c, "ok", 3);
    let trap = c.propose(r#"{"put_many_then_panic":{"prefix":"trap","n":50}}"#).0;
    let err = c.propose(r#"{"put_many_then_err":{"prefix":"err","n":50}}"#).0;
    settle(&mut c);
    for id in 1..=3 {
        assert_eq!(c.result_at(id, ok), "3", "node {id}");
        assert!(c.result_at(id, trap).starts_with("ERR: guest fault"), "node {id}: {}", c.result_at(id, trap));
        assert!(c.result_at(id, err).contains("refused after puts"), "node {id}: {}", c.result_at(id, err));
        assert_eq!(count(&mut c, id, "trap"), "0", "node {id}");
        assert_eq!(count(&mut c, id, "err"), "0", "node {id}");
    }
    assert_identical(&mut c, &[1, 2, 3]);
}

#[test]
fn a_restarted_replica_and_a_lagging_one_end_with_the_same_store() {
    // Snapshots every 20 entries, so node 3 comes back to a compacted log
    // and installs the leader's snapshot of the store.
    let mut c = Cluster::with_guest("kv-install", 3, 20, "waft_kv_probe");
    c.elect(1);
    for i in 0..10 {
        put_many(&mut c, &format!("a{i}-"), 20);
    }
    settle(&mut c);
    c.close(3);
    for i in 0..60 {
        put_many(&mut c, &format!("b{i}-"), 10);
        c.propose(&format!(r#"{{"delete":{{"key":"a{}-3"}}}}"#, i % 10));
    }
    settle(&mut c);
    let installs = c.installs;
    c.open(3);
    c.tick(10);
    settle(&mut c);
    assert!(c.installs > installs, "node 3 caught up through a snapshot");
    // The store came as its own files (a checkpoint), nothing streamed.
    let installed = c.nodes[2].up.as_ref().unwrap().snaps.open_latest(common::GROUP).unwrap().unwrap();
    let files = &installed.meta().files;
    assert!(files.iter().any(|f| f.name.starts_with("kv-") && f.size > 0), "{files:?}");
    assert!(files.iter().any(|f| f.name == waft_node::STATE_FILE && f.size == 0), "{files:?}");
    drop(installed);
    assert_identical(&mut c, &[1, 2, 3]);
    assert_eq!(count(&mut c, 3, "b"), "600");
    assert_eq!(count(&mut c, 3, "a"), "190");
    // A restart loads the latest snapshot and replays the log after it.
    c.close(2);
    c.open(2);
    put_many(&mut c, "c", 5);
    settle(&mut c);
    assert_identical(&mut c, &[1, 2, 3]);
    assert_eq!(count(&mut c, 2, "c"), "5");
}

#[test]
fn a_deploy_between_memory_and_kv_state_is_refused_on_every_replica() {
    let mut c = Cluster::with_guest("kv-deploy", 3, 10_000, "waft_atomic");
    c.elect(1);
    c.propose(r#"{"set":{"key":"a","value":1}}"#);
    let (index, _) = c.propose_body(Body::Deploy { module: Bytes::from(guest_bytes("waft_atomic_kv")) });
    settle(&mut c);
    for id in 1..=3 {
        match c.outcome_at(id, index) {
            Some(Outcome::DeployRefused(why)) => {
                assert!(why.contains("key-value store"), "node {id}: {why}")
            }
            other => panic!("node {id}: the deploy should be refused, got {other:?}"),
        }
    }
    // A kv module replacing another keeps the store.
    let mut c = Cluster::with_guest("kv-deploy-kv", 3, 10_000, "waft_kv_probe");
    c.elect(1);
    put_many(&mut c, "k", 7);
    let (index, _) = c.propose_body(Body::Deploy { module: Bytes::from(guest_bytes("waft_atomic_kv")) });
    settle(&mut c);
    // The atomic reads the probe's "k1" = "1" (one byte, not 8): its own error.
    let at = c.propose(r#"{"get":{"key":"k1"}}"#).0;
    settle(&mut c);
    for id in 1..=3 {
        assert!(matches!(c.outcome_at(id, index), Some(Outcome::Deployed { .. })), "node {id}");
        assert!(c.result_at(id, at).starts_with("ERR"), "node {id}: {}", c.result_at(id, at));
    }
}

#[test]
fn a_restart_resumes_from_the_store_with_its_sessions_and_replays_nothing() {
    let mut c = Cluster::with_guest("kv-resume", 3, 10_000, "waft_kv_probe");
    c.elect(1);
    let (session_id, _) = c.propose_body(Body::Register { nonce: None });
    let command = |seq: u64| Body::Command {
        session_id,
        seq,
        lowest_unacked_seq: 1,
        payload: Bytes::from(format!(r#"{{"put_many":{{"prefix":"s{seq}-","n":2}}}}"#)),
    };
    let (first, _) = c.propose_body(command(1));
    for i in 0..30 {
        put_many(&mut c, &format!("a{i}-"), 5);
    }
    settle(&mut c);
    let before = c.applied_index(2);
    assert!(before > 30, "applied {before}");
    c.close(2);
    c.open(2);
    // The only snapshot is the group's first (index 0): a replica that
    // loaded it would be at 0 now, with the log to replay.
    assert_eq!(c.applied_index(2), before, "node 2 resumed where its store was");
    assert_eq!(count(&mut c, 2, "a"), "150");
    // Its session table came back too: a retry of an applied command gets
    // the saved reply on every replica, node 2 included.
    let (retry, _) = c.propose_body(command(1));
    put_many(&mut c, "b", 3);
    settle(&mut c);
    for id in 1..=3 {
        assert_eq!(c.result_at(id, first), "2", "node {id}");
        assert_eq!(c.result_at(id, retry), "SAVED: 2", "node {id}");
    }
    assert_eq!(count(&mut c, 2, "s1-"), "2", "applied once");
    assert_identical(&mut c, &[1, 2, 3]);
}

/// A snapshot handed out to be written beside the apply path holds the
/// store as it was at its index, however many entries applied while it
/// waited: increments (which a replay would count twice) show it.
#[test]
fn a_snapshot_written_beside_the_apply_path_holds_the_store_at_its_index() {
    let mut c = Cluster::with_guest("kv-background", 3, 20, "waft_atomic_kv");
    for id in 1..=3 {
        c.replica(id).set_background_snapshots(true);
    }
    c.elect(1);
    let incr = r#"{"incr":{"key":"a","delta":1}}"#;
    let mut at = Vec::new();
    for _ in 0..30 {
        at.push(c.propose(incr).0);
    }
    settle(&mut c);
    assert_eq!(c.jobs.len(), 3, "every replica handed out a snapshot to write");
    let index = c.jobs[0].1.index();
    // The group goes on while the snapshots wait.
    for _ in 0..30 {
        at.push(c.propose(incr).0);
    }
    settle(&mut c);
    assert_eq!(c.result_at(1, *at.last().unwrap()), r#"{"value":60}"#);
    let saved = c.snapshots_saved;
    c.finish_jobs();
    assert_eq!(c.snapshots_saved, saved + 3);
    // The value at the snapshot's index: the last increment at or before it.
    let expected = at.iter().filter(|&&i| i <= index).count() as i64;
    let up = c.nodes[0].up.as_ref().unwrap();
    let reader = up.snaps.open_latest(common::GROUP).unwrap().unwrap();
    assert_eq!(reader.meta().index, index);
    // The store came as its own files (a checkpoint): opened elsewhere,
    // they hold the store as it was at the snapshot's index.
    let files: Vec<(String, std::path::PathBuf)> = reader
        .meta()
        .files
        .iter()
        .filter_map(|f| Some((f.name.strip_prefix("kv-")?.to_string(), reader.file_path(&f.name).unwrap())))
        .collect();
    assert!(files.iter().any(|(name, _)| name.ends_with(".sst") || name.ends_with(".log")), "{files:?}");
    let elsewhere = waft_storage::RocksKv::open(common::scratch("kv-background-elsewhere")).unwrap();
    let store = elsewhere.group(common::GROUP).unwrap();
    store.restore(&files).unwrap();
    let value = i64::from_le_bytes(store.get(b"a").unwrap().expect("the snapshot holds key a").try_into().unwrap());
    assert_eq!(value, expected, "the snapshot at {index} holds the counter as it was there");
    // The log behind it was compacted, and the group goes on.
    assert!(c.replica(1).raft().snapshot_meta().index >= index);
    for _ in 0..5 {
        c.propose(incr);
    }
    settle(&mut c);
    assert_identical(&mut c, &[1, 2, 3]);
}

/// A kv group's snapshot writes its whole store, so snapshots come only
/// once the log since the last one is half the store's bytes: 100 entries
/// past a margin of 20 take several snapshots of a small store and none of
/// one of 10,000 pairs.
#[test]
fn a_kv_groups_snapshots_space_out_as_its_store_grows() {
    for (pairs, snapshots_expected) in [(10u32, true), (10_000, false)] {
        let mut c = Cluster::with_guest(&format!("kv-spacing-{pairs}"), 3, 20, "waft_kv_probe");
        c.elect(1);
        let at = put_many(&mut c, "big", pairs);
        settle(&mut c);
        assert_eq!(c.result_at(1, at), pairs.to_string());
        let saved = c.snapshots_saved;
        for i in 0..100 {
            c.propose(&format!(r#"{{"put":{{"key":"k{i}","value":"v"}}}}"#));
        }
        settle(&mut c);
        let index = c.replica(1).raft().snapshot_meta().index;
        let now = c.snapshots_saved;
        assert_eq!(
            now > saved,
            snapshots_expected,
            "a store of {pairs} pairs: snapshots {saved}, then {now} (at {index})"
        );
    }
}

/// Seeded: a one-node kv group applies random appends (which a replay of
/// an entry already in the store would show), deletes and entries that
/// fail after writing, and is closed at random points, often with entries
/// proposed but not yet applied, then reopened. After every reopen its
/// store holds exactly what the entries it applied (each once, in log
/// order, the failed ones not at all) made of it, at its applied index.
#[test]
fn the_store_is_the_applied_entries_across_restarts() {
    use std::collections::BTreeMap;
    for seed in 1..=6u64 {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut c = Cluster::with_guest(&format!("kv-property-{seed}"), 1, 10_000, "waft_kv_probe");
        c.elect(1);
        // (index, term) of every proposal, with its command.
        let mut proposed: BTreeMap<(u64, u64), String> = BTreeMap::new();
        for step in 0..120 {
            let key = format!("k{}", next(12));
            let command = match next(8) {
                0 => format!(r#"{{"delete":{{"key":"{key}"}}}}"#),
                1 => format!(r#"{{"put_many_then_err":{{"prefix":"{key}","n":2}}}}"#),
                2 => format!(r#"{{"put_many_then_panic":{{"prefix":"{key}","n":2}}}}"#),
                _ => format!(r#"{{"append":{{"key":"{key}","value":"{step},"}}}}"#),
            };
            let at = c.propose(&command);
            proposed.insert(at, command);
            match next(10) {
                0 => {
                    // Closed with what was proposed since the last settle
                    // in flight, or applied but not yet all committed.
                    c.close(1);
                    c.open(1);
                    c.elect(1);
                }
                1..=4 => settle(&mut c),
                _ => {}
            }
        }
        settle(&mut c);
        c.close(1);
        c.open(1);
        c.elect(1);
        settle(&mut c);
        // The model: the commands of the entries this node applied, in log
        // order, the successful ones only.
        let mut model: BTreeMap<String, String> = BTreeMap::new();
        let applied: Vec<(u64, u64, bool)> = c.nodes[0]
            .applied
            .values()
            .map(|a| (a.index, a.term, matches!(&a.outcome, waft_node::Outcome::Guest(Ok(_)))))
            .collect();
        for (index, term, ok) in applied {
            let Some(command) = proposed.get(&(index, term)) else { continue };
            if !ok {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(command).unwrap();
            if let Some(a) = v.get("append") {
                let key = a["key"].as_str().unwrap().to_string();
                model.entry(key).or_default().push_str(a["value"].as_str().unwrap());
            } else if let Some(d) = v.get("delete") {
                model.remove(d["key"].as_str().unwrap());
            }
        }
        let answer = c.replica(1).query(br#"{"scan":{"start":"","end":null,"limit":1000}}"#).unwrap();
        let store: Vec<(String, String)> = serde_json::from_slice(&answer).unwrap();
        let store: BTreeMap<String, String> = store.into_iter().collect();
        assert_eq!(store, model, "seed {seed}: the store is not the applied entries");
    }
}

/// A snapshot handed out to be written beside the apply path, whose
/// replica then installs a newer one from its leader before the job ends,
/// is dropped: it never becomes the replica's snapshot.
#[test]
fn a_background_snapshot_overtaken_by_an_install_is_dropped() {
    let mut c = Cluster::with_guest("kv-stale-job", 3, 20, "waft_atomic_kv");
    c.replica(3).set_background_snapshots(true);
    c.elect(1);
    let incr = r#"{"incr":{"key":"a","delta":1}}"#;
    for _ in 0..30 {
        c.propose(incr);
    }
    settle(&mut c);
    assert_eq!(c.jobs.len(), 1, "node 3 handed out its snapshot");
    let job_index = c.jobs[0].1.index();
    // Node 3 is cut off while the others go on and compact past it.
    c.isolated.insert(3);
    for _ in 0..60 {
        c.propose(incr);
    }
    settle(&mut c);
    c.isolated.clear();
    c.tick(10);
    settle(&mut c);
    let installed = c.replica(3).raft().snapshot_meta().index;
    assert!(c.installs >= 1 && installed > job_index, "node 3 installed a newer snapshot ({installed})");
    let saved = c.snapshots_saved;
    c.finish_jobs();
    assert_eq!(c.snapshots_saved, saved, "the overtaken snapshot was not saved");
    let latest = c.nodes[2].up.as_ref().unwrap().snaps.latest(common::GROUP).unwrap();
    assert_eq!(latest.index, installed, "the installed snapshot is still node 3's latest");
    for _ in 0..5 {
        c.propose(incr);
    }
    settle(&mut c);
    assert_identical(&mut c, &[1, 2, 3]);
}
