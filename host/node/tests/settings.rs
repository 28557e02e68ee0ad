//! Group settings travel through the log, in-process: the first leader's
//! founding entry binds every replica (whatever each was started with), a
//! settings entry changes them at one index everywhere, snapshots carry
//! them, and a late joiner replays under the group's module, not its own.

mod common;

use bytes::Bytes;
use common::{Cluster, guest_bytes};
use waft_node::{GroupSettings, Outcome};
use waft_session::{Body, SessionConfig, SessionError};
use waft_storage::ModuleHash;

fn sessions(open_max: u64) -> SessionConfig {
    SessionConfig { sessions_open_max: open_max, ..SessionConfig::default() }
}

/// Proposes `settings` made over the settings the leader applied.
fn set(c: &mut Cluster, settings: &GroupSettings) -> u64 {
    let base = c.replica(c.leader().expect("a leader")).settings_index();
    set_over(c, settings, base)
}

fn set_over(c: &mut Cluster, settings: &GroupSettings, base: u64) -> u64 {
    let (index, _) = c.propose_body(Body::Settings { settings: Bytes::from(settings.encode_change(base)) });
    c.settle();
    c.tick(3);
    index
}

fn register(c: &mut Cluster) -> u64 {
    let (index, _) = c.propose_body(Body::Register { nonce: None });
    c.settle();
    c.tick(3);
    index
}

#[test]
fn the_first_leaders_settings_bind_every_replica_and_changes_apply_at_one_index() {
    let mut c = Cluster::with_sessions("settings-bind", 3, 10_000, "waft_counter", sessions(100));
    // Node 3 starts with other session limits, as a node with other flags would.
    c.reopen_as(3, "waft_counter", sessions(1));
    c.elect(1);
    let bound = c.replica(1).settings_index();
    assert!(bound > 0, "the founding entry applied");
    for id in 1..=3 {
        let r = c.replica(id);
        assert_eq!((r.settings().sessions.sessions_open_max, r.settings_index()), (100, bound), "node {id}");
    }
    // Node 3's own limit (1) would refuse the second registration; the group's (100) does not.
    let a = register(&mut c);
    let b = register(&mut c);
    for id in 1..=3 {
        assert!(matches!(c.outcome_at(id, a), Some(Outcome::Registered { .. })), "node {id}");
        assert!(matches!(c.outcome_at(id, b), Some(Outcome::Registered { .. })), "node {id}");
    }

    // A change the open sessions would break is refused everywhere, changing nothing.
    let mut too_few = c.replica(1).settings().clone();
    too_few.sessions.sessions_open_max = 1;
    let refused = set(&mut c, &too_few);
    // A change that fits applies at its index everywhere.
    let mut tighter = c.replica(1).settings().clone();
    tighter.sessions.sessions_open_max = 2;
    tighter.fuel_per_entry = 5_000_000;
    let changed = set(&mut c, &tighter);
    // A change made over the settings `changed` replaced is refused, not
    // applied whole (it would undo `changed`).
    let mut stale = tighter.clone();
    stale.fuel_per_entry = 7_000_000;
    let lost_race = set_over(&mut c, &stale, bound);
    let third = register(&mut c);
    for id in 1..=3 {
        assert!(matches!(c.outcome_at(id, refused), Some(Outcome::SettingsRefused(_))), "node {id}");
        assert!(matches!(c.outcome_at(id, lost_race), Some(Outcome::SettingsConflict(_))), "node {id}");
        assert_eq!(
            c.outcome_at(id, changed),
            Some(&Outcome::SettingsChanged { settings: tighter.clone(), index: changed }),
            "node {id}"
        );
        assert_eq!(
            c.outcome_at(id, third),
            Some(&Outcome::Refused(SessionError::TableFull { sessions_open_max: 2 })),
            "node {id}"
        );
        let r = c.replica(id);
        assert_eq!((r.settings(), r.settings_index()), (&tighter, changed), "node {id}");
    }

    // A restart (from its own snapshot and log) and a fresh replica that
    // installs a snapshot both come back with the group's settings, not
    // their own founding values.
    // A snapshot is taken at the next applied entry.
    c.replica(2).request_snapshot();
    c.propose(r#"{"incr":1}"#);
    c.settle();
    let saved = c.snapshots_saved;
    c.close(2);
    c.open(2);
    c.settle();
    let r = c.replica(2);
    assert_eq!((r.settings(), r.settings_index()), (&tighter, changed));
    assert!(saved > 0);
}

#[test]
fn a_bad_settings_entry_is_refused_identically() {
    let mut c = Cluster::new("settings-bad", 3, 10_000);
    c.elect(1);
    let before = c.replica(1).settings().clone();
    let (garbage, _) = c.propose_body(Body::Settings { settings: Bytes::from_static(b"WAFTSET1 but not really") });
    let mut out_of_bounds = before.clone();
    out_of_bounds.memory_bytes_max = 1;
    let base = c.replica(1).settings_index();
    let (bounds, _) = c.propose_body(Body::Settings { settings: Bytes::from(out_of_bounds.encode_change(base)) });
    c.settle();
    c.tick(3);
    for id in 1..=3 {
        for at in [garbage, bounds] {
            assert!(matches!(c.outcome_at(id, at), Some(Outcome::SettingsRefused(_))), "node {id} entry {at}");
        }
        assert_eq!(c.replica(id).settings(), &before, "node {id}");
    }
}

/// Nodes 1 and 2 found the group with the counter; node 3, started with
/// the doubling counter and its own session limits, joins after four
/// increments (`compact`: after the leader compacted them away, so it
/// installs a snapshot instead of replaying).
fn join_late(name: &str, compact: bool) -> Cluster {
    let mut c = Cluster::with_joiners(name, 3, 10_000, "waft_counter", SessionConfig::default(), &[3]);
    c.reopen_as(3, "waft_counter_doubling", sessions(5));
    c.elect(1);
    for _ in 0..4 {
        c.propose(r#"{"incr":1}"#);
    }
    c.settle();
    if compact {
        c.replica(1).request_snapshot();
        c.tick(2);
        assert!(c.replica(1).raft().first_index() > 4, "the leader compacted its log");
    }
    c.replica(1).add_peer(3).unwrap();
    c.settle();
    c.tick(5);
    let counter = ModuleHash::of(&guest_bytes("waft_counter"));
    let applied = c.applied_index(1);
    let group_settings = c.replica(1).settings().clone();
    for id in 1..=3 {
        assert_eq!(c.applied_index(id), applied, "node {id}");
        assert_eq!(c.replica(id).module_hash(), counter, "node {id} runs the group's module");
        assert_eq!(c.replica(id).module_index(), 0, "node {id}: the founding module, on every replica");
        assert_eq!(c.replica(id).settings(), &group_settings, "node {id} runs the group's settings");
        assert_eq!(c.query(id), "4", "node {id}");
    }
    assert_eq!(c.state_bytes(3), c.state_bytes(1));
    c
}

#[test]
fn a_late_joiner_replays_under_the_groups_module_not_its_own() {
    let c = join_late("settings-joiner", false);
    assert_eq!(c.installs, 0, "node 3 replayed the log from its start");
}

#[test]
fn a_late_joiner_installs_the_groups_module_and_settings_from_a_snapshot() {
    let c = join_late("settings-joiner-install", true);
    assert_eq!(c.installs, 1, "node 3 installed the leader's snapshot");
}

/// A leader takes no client entry until the group's founding entry applied
/// on it: entries before it would run under each replica's own module and
/// settings.
#[test]
fn a_leader_takes_no_client_entry_before_the_founding_entry_binds_it() {
    let mut c = Cluster::new("settings-unbound", 1, 10_000);
    // A single voter leads once its own vote is durable: one Ready, written
    // and finished by hand, before the Ready that would propose the founding
    // entry runs.
    c.replica(1).campaign_now();
    {
        let up = c.nodes[0].up.as_mut().expect("node 1 is up");
        let mut send = |_m: waft_raft::Message| panic!("a single voter sends nothing");
        let mut pending = up.replica.begin_ready(&mut send).unwrap().expect("the vote to persist");
        waft_storage::LogStore::write(&mut up.store, pending.take_write()).unwrap();
        let mut out = waft_node::Output::default();
        up.replica.finish_ready(pending, &mut up.store, &up.snaps, &mut send, &mut out).unwrap();
    }
    assert_eq!(c.replica(1).raft().role(), waft_raft::Role::Leader);
    assert_eq!(c.replica(1).settings_index(), 0, "not bound yet");
    let body = Body::Plain { payload: Bytes::from_static(br#"{"incr":1}"#) };
    let early = c.replica(1).propose(&waft_session::Envelope::new(0, body.clone()));
    assert!(matches!(early, Err(waft_node::Error::NotBound { .. })), "{early:?}");
    c.settle();
    assert!(c.replica(1).settings_index() > 0, "the founding entry applied");
    c.replica(1).propose(&waft_session::Envelope::new(0, body)).expect("taken once bound");
    c.settle();
    assert_eq!(c.query(1), "1");
}
