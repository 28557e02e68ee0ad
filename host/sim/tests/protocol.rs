//! One scripted test per protocol feature of issue 3, over a hand-driven cluster.

use bytes::Bytes;
use waft_raft::*;
use waft_sim::testkit::Manual;

fn three() -> Manual {
    let mut t = Manual::new(3, &[1, 2, 3], |_| {});
    t.elect(1);
    t
}

fn count(t: &Manual, prefix: &str) -> usize {
    t.trace.iter().filter(|l| l.starts_with(prefix)).count()
}

#[test]
fn priority_election_highest_stands_first_and_target_decays() {
    let mut t = Manual::new(3, &[1, 2, 3], |c| {
        c.priorities = [(1, 100), (2, 50), (3, 10)].into_iter().collect();
    });
    t.tick_all(60);
    assert_eq!(t.c.leader(), Some(1), "the highest priority stands first");
    // Without node 1, node 2 waits for the target priority to decay to 50 first.
    t.isolate(1);
    t.tick_all(200);
    let l = t.c.leader().unwrap();
    let new_leader = [2, 3].into_iter().find(|&id| t.raft(id).role() == Role::Leader);
    assert_eq!(new_leader, Some(2), "node 2 (50) before node 3 (10); leader view {l}");
}

#[test]
fn priority_zero_never_stands() {
    let mut t = Manual::new(3, &[1, 2, 3], |c| {
        c.priorities = [(1, 0), (2, 0), (3, -1)].into_iter().collect();
    });
    t.tick_all(100);
    assert_eq!(t.c.leader(), Some(3));
    assert!(t.c.check.leaders.values().all(|&l| l == 3));
    t.isolate(3);
    t.tick_all(100);
    assert!(![1, 2].iter().any(|&id| t.raft(id).role() != Role::Follower), "priority 0 never campaigns");
}

#[test]
fn check_quorum_leader_steps_down_when_cut_off() {
    let mut t = three();
    t.isolate(1);
    t.tick_all(25);
    assert_eq!(t.raft(1).role(), Role::Follower, "no quorum heard for an election timeout");
    assert!(t.events(1).contains(&Event::SteppedDown { term: 1 }));
}

#[test]
fn pipelined_appends_bounded_by_window_and_message_limits() {
    let mut t = Manual::new(3, &[1, 2, 3], |c| {
        c.inflight_msgs_max = 2;
        c.append_entries_max = 3;
    });
    t.elect(1);
    t.take_trace();
    t.blocked.insert((2, 1)); // node 2 receives but its acks are lost
    for _ in 0..10 {
        t.propose(1, b"p").unwrap();
        t.deliver();
    }
    let to2: Vec<&String> = t.trace.iter().filter(|l| l.starts_with("1->2 App") && !l.contains(" n=0 ")).collect();
    assert_eq!(to2.len(), 2, "at most inflight_msgs_max appends in flight: {to2:?}");
    assert!(t.trace.iter().filter(|l| l.contains(" App ")).all(|l| !l.contains(" n=4") && !l.contains(" n=5")));
    // Node 3 acks, so its window keeps sliding.
    assert!(count(&t, "1->3 App") >= 4);
    t.heal();
    t.tick_all(3);
    assert_eq!(t.raft(2).committed(), t.raft(1).committed());
}

#[test]
fn append_bytes_limit_splits_messages() {
    let mut t = Manual::new(3, &[1, 2, 3], |c| c.append_bytes_max = 200);
    t.elect(1);
    t.isolate(2);
    for _ in 0..8 {
        t.raft_mut(1).propose(Bytes::from(vec![0u8; 100])).unwrap();
    }
    t.process(1);
    t.deliver();
    t.take_trace();
    t.heal();
    t.tick_all(3);
    let apps: Vec<&String> = t.trace.iter().filter(|l| l.starts_with("1->2 App") && !l.contains(" n=0 ")).collect();
    assert!(apps.iter().all(|l| l.contains(" n=1 ")), "124-byte entries, 200-byte messages: one per message {apps:?}");
    assert_eq!(t.raft(2).committed(), t.raft(1).committed());
}

#[test]
fn fast_backtracking_skips_a_whole_conflicting_term() {
    let mut t = three();
    // Old leader 1 appends 40 entries nobody else sees.
    t.isolate(1);
    for _ in 0..40 {
        t.propose(1, b"lost").unwrap();
    }
    t.deliver();
    t.expire_lease(&[2, 3]);
    t.elect(2);
    for _ in 0..5 {
        t.propose(2, b"kept").unwrap();
    }
    t.deliver();
    t.take_trace();
    t.heal();
    t.tick_all(5);
    let rejects = count(&t, "1->2 AppResp reject");
    assert!(rejects <= 2, "conflict hint skips the term in one step, got {rejects} rejections");
    assert_eq!(t.log_ids(1), t.log_ids(2));
}

#[test]
fn commit_only_by_counting_current_term_entries() {
    let mut t = Manual::new(3, &[1, 2, 3], |c| c.append_entries_max = 1);
    t.elect(1);
    // Entry 2 (term 1) reaches only node 1.
    t.isolate(1);
    t.propose(1, b"old").unwrap();
    t.deliver();
    // Node 1 restarts and returns as a candidate of term 2 with the longer log and wins.
    t.c.crash(1);
    t.c.restart(1);
    t.heal();
    t.expire_lease(&[1, 2, 3]);
    t.raft_mut(1).campaign_now();
    t.process(1);
    t.deliver_votes_only();
    assert_eq!((t.raft(1).role(), t.raft(1).term()), (Role::Leader, 2));
    // Hold back every append carrying the term-2 no-op (index 3); let the rest flow.
    t.c.tick(1); // a heartbeat restarts the probes the vote-only delivery dropped
    for _ in 0..1000 {
        let out = std::mem::take(&mut t.c.outbox);
        if out.is_empty() {
            break;
        }
        for mut m in out {
            if let MessageBody::Append { entries, .. } = &mut m.body {
                entries.retain(|e| e.index < 3); // the no-op is "lost in the network"
            }
            t.c.step(m);
        }
    }
    assert!(t.raft(1).progress_of(2).unwrap().0 >= 2, "entry 2 on a majority");
    assert!(t.raft(1).committed() < 2, "a term-1 entry is not committed by counting replicas in term 2");
    t.drop_all();
    t.tick_all(5);
    assert_eq!(t.raft(1).committed(), 3, "committed with the term-2 no-op");
}

/// Every configuration entry in `node`'s log, decoded, in log order.
fn configs_in_log(node: &waft_raft::RawNode) -> Vec<Configuration> {
    node.log_entries()
        .iter()
        .filter(|e| e.kind == EntryKind::Config)
        .map(|e| Configuration::decode(&e.data).unwrap())
        .collect()
}

#[test]
fn joint_consensus_when_two_voters_change_and_auto_leave() {
    let mut t = Manual::new(5, &[1, 2, 3], |_| {});
    t.elect(1);
    t.raft_mut(1).change_peers(vec![1, 4, 5], vec![]).unwrap();
    t.process(1);
    t.tick_all(10);
    let confs = configs_in_log(t.raft(1));
    assert_eq!(confs.len(), 2, "enter joint, then leave joint");
    assert_eq!((confs[0].voters.clone(), confs[0].voters_outgoing.clone()), (vec![1, 4, 5], vec![1, 2, 3]));
    assert!(!confs[1].is_joint());
    for id in [1, 4, 5] {
        assert_eq!(t.raft(id).configuration().voters, vec![1, 4, 5]);
    }
}

#[test]
fn member_addresses_follow_the_configuration_through_the_log() {
    let a = |id: u64, port: u16| (id, format!("127.0.0.{id}:{port}"));
    let mut t = Manual::new(5, &[1, 2, 3], |_| {});
    t.elect(1);
    // Addresses alone: recorded for the founding voters.
    t.raft_mut(1).change_members(vec![1, 2, 3], vec![], vec![a(1, 7001), a(2, 7002), a(3, 7003)]).unwrap();
    t.process(1);
    t.tick_all(3);
    assert_eq!(t.raft(3).configuration().address_of(2), Some("127.0.0.2:7002"));
    // Two new voters with their addresses: joint consensus carries every
    // address it knows, and leaving the joint phase forgets the old voters'.
    t.raft_mut(1).change_members(vec![1, 4, 5], vec![], vec![a(4, 7004), a(5, 7005)]).unwrap();
    assert_eq!(
        t.raft(1).pending_target().map(|c| c.addresses.clone()),
        None,
        "caught up at once (nothing to catch up on yet): proposed"
    );
    t.process(1);
    t.tick_all(10);
    let confs = configs_in_log(t.raft(1));
    assert_eq!(confs.len(), 3, "addresses, enter joint, then leave joint");
    assert_eq!(
        confs[1].addresses,
        vec![a(1, 7001), a(2, 7002), a(3, 7003), a(4, 7004), a(5, 7005)],
        "joint keeps the outgoing voters' addresses"
    );
    assert_eq!(confs[2].addresses, vec![a(1, 7001), a(4, 7004), a(5, 7005)], "removed members' addresses are dropped");
    for id in [1, 4, 5] {
        assert_eq!(t.raft(id).configuration().address_of(4), Some("127.0.0.4:7004"), "node {id}");
    }
    // A member that moved: an address change alone is a change.
    t.raft_mut(1).change_members(vec![1, 4, 5], vec![], vec![a(5, 7105)]).unwrap();
    t.process(1);
    t.tick_all(5);
    for id in [1, 4, 5] {
        assert_eq!(t.raft(id).configuration().address_of(5), Some("127.0.0.5:7105"), "node {id}");
        assert_eq!(t.raft(id).configuration().address_of(4), Some("127.0.0.4:7004"), "node {id}");
    }
    assert_eq!(
        t.raft_mut(1).change_members(vec![1, 4, 5], vec![], vec![(4, String::new())]),
        Err(RaftError::InvalidConfChange("an address is empty or longer than ADDRESS_BYTES_MAX"))
    );
}

#[test]
fn single_voter_change_is_one_step_and_two_changes_never_overlap() {
    let mut t = Manual::new(4, &[1, 2, 3], |_| {});
    t.elect(1);
    t.isolate(2);
    t.isolate(3);
    // Catching up succeeds only with node 4 reachable; the change cannot commit without 2 or 3.
    t.blocked.remove(&(1, 4));
    t.blocked.remove(&(4, 1));
    t.raft_mut(1).add_peer(4).unwrap();
    t.process(1);
    t.tick_all(2);
    assert_eq!(t.raft(1).configuration().voters, vec![1, 2, 3, 4], "single step: no joint state");
    assert_eq!(t.raft_mut(1).remove_peer(2), Err(RaftError::ConfChangeInProgress));
    t.heal();
    t.tick_all(3);
    assert_eq!(t.raft_mut(1).remove_peer(2), Ok(()));
}

#[test]
fn new_voter_catches_up_first_or_the_change_times_out() {
    let mut t = Manual::new(4, &[1, 2, 3], |c| {
        c.catchup_margin_entries = 2;
        c.catchup_timeout_ticks = 20;
    });
    t.elect(1);
    for _ in 0..10 {
        t.propose(1, b"x").unwrap();
    }
    t.deliver();
    t.isolate(4);
    t.raft_mut(1).add_peer(4).unwrap();
    t.process(1);
    t.tick_all(5);
    assert_eq!(t.raft(1).configuration().voters, vec![1, 2, 3], "not proposed while node 4 lags");
    assert_eq!(t.raft_mut(1).add_peer(4), Err(RaftError::ConfChangeInProgress));
    t.tick_all(20);
    assert!(
        t.events(1)
            .contains(&Event::ConfChangeFailed { reason: "new voters did not catch up before the catch-up timeout" })
    );
    // Reachable, it catches up and the change goes through.
    t.heal();
    t.raft_mut(1).add_peer(4).unwrap();
    t.process(1);
    t.tick_all(5);
    assert_eq!(t.raft(1).configuration().voters, vec![1, 2, 3, 4]);
    assert_eq!(t.raft(4).committed(), t.raft(1).committed());
}

#[test]
fn learners_replicate_without_voting_and_can_be_promoted() {
    let mut t = Manual::new(4, &[1, 2, 3], |_| {});
    t.elect(1);
    t.raft_mut(1).add_learner(4).unwrap();
    t.process(1);
    t.tick_all(3);
    assert_eq!(t.raft(1).configuration().learners, vec![4]);
    t.propose(1, b"x").unwrap();
    t.tick_all(2);
    assert_eq!(t.raft(4).committed(), t.raft(1).committed());
    // A learner never campaigns.
    t.isolate(4);
    t.tick_all(50);
    assert_eq!(t.raft(4).role(), Role::Follower);
    t.heal();
    t.tick_all(3);
    t.raft_mut(1).promote_learner(4).unwrap();
    t.process(1);
    t.tick_all(3);
    assert_eq!(t.raft(1).configuration().voters, vec![1, 2, 3, 4]);
    t.raft_mut(1).remove_peer(4).unwrap();
    t.process(1);
    t.tick_all(3);
    t.raft_mut(1).add_learner(4).unwrap();
    t.process(1);
    t.tick_all(3);
    t.raft_mut(1).remove_learner(4).unwrap();
    t.process(1);
    t.tick_all(3);
    assert_eq!(t.raft(1).configuration(), &Configuration::new([1, 2, 3]));
}

#[test]
fn removed_leader_steps_down_once_the_change_commits() {
    let mut t = three();
    t.raft_mut(1).remove_peer(1).unwrap();
    t.process(1);
    t.deliver();
    t.tick_all(2);
    assert_eq!(t.raft(1).role(), Role::Follower);
    assert!(t.events(1).contains(&Event::SteppedDown { term: 1 }));
    t.tick_all(40);
    let l = t.c.leader().unwrap();
    assert!(l == 2 || l == 3);
    assert_eq!(t.raft(l).configuration().voters, vec![2, 3]);
}

#[test]
fn reset_peers_recovers_a_group_that_lost_its_quorum() {
    let mut t = Manual::new(3, &[1, 2, 3], |_| {});
    t.elect(1);
    t.propose(1, b"x").unwrap();
    t.tick_all(2);
    t.c.crash(2);
    t.c.crash(3);
    t.tick_all(30);
    assert_ne!(t.raft(1).role(), Role::Leader);
    // UNSAFE in general; here the operator knows 2 and 3 are gone for good.
    t.raft_mut(1).reset_peers(vec![1]).unwrap();
    t.process(1);
    t.tick_all(30);
    assert_eq!(t.raft(1).role(), Role::Leader);
    assert!(t.propose(1, b"y").is_ok());
    t.tick_all(1);
    assert_eq!(t.raft(1).committed(), t.raft(1).last_index());
    assert_eq!(t.raft(1).configuration(), &Configuration::new([1]));
}

#[test]
fn follower_read_gets_its_index_from_the_leader() {
    let mut t = three();
    t.propose(1, b"x").unwrap();
    t.tick_all(2);
    t.take_trace();
    t.read(3, 9, ReadMode::Safe).unwrap();
    t.tick_all(1);
    assert!(t.trace.iter().any(|l| l == "3->1 ReadIndex [9]"));
    let rs = t.read_states(3);
    assert_eq!(rs, vec![(9, t.raft(1).committed())]);
}

#[test]
fn many_safe_reads_share_one_heartbeat_round() {
    let mut t = three();
    t.tick_all(1);
    t.take_trace();
    // Reads queued between two Readies share one round ...
    for id in 0..50 {
        t.raft_mut(1).read_index(id, ReadMode::Safe).unwrap();
    }
    t.process(1);
    t.deliver();
    assert_eq!(t.read_states(1).len(), 50);
    assert_eq!(count(&t, "1->2 Heartbeat"), 1, "one round for all 50 reads: {:?}", t.trace);
    // ... and reads arriving while a round is out wait for the next one.
    t.take_trace();
    for id in 50..100 {
        t.read(1, id, ReadMode::Safe).unwrap();
    }
    t.deliver();
    assert_eq!(t.read_states(1).len(), 100);
    assert_eq!(count(&t, "1->2 Heartbeat"), 2, "{:?}", t.trace);
}

#[test]
fn lease_read_falls_back_to_a_round_when_the_lease_lapsed() {
    let mut t = three();
    t.tick_all(2);
    t.blocked.extend([(2, 1), (3, 1)]);
    t.tick_all(6);
    assert!(!t.raft(1).lease_valid());
    t.read(1, 5, ReadMode::Lease).unwrap();
    t.deliver();
    assert!(t.read_states(1).is_empty(), "no lease, no quorum: must wait");
    t.heal();
    t.tick_all(1);
    assert_eq!(t.read_states(1).len(), 1);
}

#[test]
fn snapshot_requested_past_margin_and_log_compacted() {
    let mut t = Manual::new(3, &[1, 2, 3], |c| c.snapshot_margin_entries = 10);
    t.elect(1);
    for _ in 0..35 {
        t.propose(1, b"s").unwrap();
        t.deliver();
    }
    for id in 1..=3 {
        let r = t.raft(id);
        assert!(r.snapshot_meta().index >= 30, "node {id} snapshotted");
        assert!(r.log_entries().len() <= 10, "node {id} keeps at most the margin in memory");
    }
}

#[test]
fn snapshots_at_points_come_only_there_and_batches_end_on_them() {
    let mut t = Manual::new(3, &[1, 2, 3], |c| c.snapshot_margin_entries = 10);
    for id in 1..=3 {
        t.raft_mut(id).set_snapshot_points(8);
    }
    t.elect(1);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        // Several entries commit together, so batches would cross points.
        for _ in 0..3 {
            t.propose(1, b"s").unwrap();
        }
        t.deliver();
        for id in 1..=3 {
            let index = t.raft(id).snapshot_meta().index;
            assert_eq!(index % 8, 0, "node {id}: a margin's snapshot at {index}, not at a point");
            seen.insert(index);
        }
    }
    assert!(seen.len() >= 5, "snapshots went on at the points: {seen:?}");
    for id in 1..=3 {
        assert!(t.raft(id).log_entries().len() <= 10 + 8, "node {id} keeps at most the margin and a point's gap");
    }
}

#[test]
fn snapshot_on_request_before_the_margin_and_only_when_something_applied() {
    let mut t = Manual::new(3, &[1, 2, 3], |c| c.snapshot_margin_entries = 1000);
    t.elect(1);
    for _ in 0..5 {
        t.propose(1, b"s").unwrap();
        t.deliver();
    }
    let applied = t.raft(1).applied();
    assert_eq!(t.raft(1).snapshot_meta().index, 0, "far below the margin");
    t.raft_mut(1).request_snapshot();
    t.process(1);
    assert_eq!(t.raft(1).snapshot_meta().index, applied, "snapshot at the applied index on request");
    // Asked again with nothing applied since: nothing to do until an entry applies.
    t.raft_mut(1).request_snapshot();
    assert!(!t.raft(1).has_ready(), "no snapshot of an unchanged state");
    t.propose(1, b"s").unwrap();
    t.deliver();
    assert!(t.raft(1).snapshot_meta().index > applied, "the standing request is served once an entry applies");
    assert_eq!(t.raft(2).snapshot_meta().index, 0, "only the node asked snapshots");
}

#[test]
fn undecodable_config_entry_is_reported_not_panicked() {
    let mut t = three();
    let bad = Entry { index: 3, term: 1, kind: EntryKind::Config, data: Bytes::from_static(b"\x01garbage") };
    let m = Message {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::Append { prev_index: 2, prev_term: 1, entries: vec![bad], commit: 0 },
    };
    t.propose(1, b"x").unwrap();
    t.deliver();
    t.c.step(m);
    assert!(t.events(2).contains(&Event::BadConfigEntry { index: 3 }));
    assert_eq!(t.raft(2).configuration().voters, vec![1, 2, 3]);
}
