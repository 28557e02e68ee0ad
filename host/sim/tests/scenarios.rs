//! Scenario tests: the pitfalls other Raft implementations shipped, each as a
//! scripted run over a hand-driven cluster (no clock, no sleeps).

use waft_raft::*;
use waft_sim::testkit::Manual;

fn three() -> Manual {
    let mut t = Manual::new(3, &[1, 2, 3], |_| {});
    t.elect(1);
    t
}

#[test]
fn election_trace_prevote_then_vote_then_noop() {
    let mut t = Manual::new(3, &[1, 2, 3], |_| {});
    t.elect(1);
    assert_eq!(
        t.take_trace(),
        vec![
            "1->2 PreVote last=0/0",
            "1->3 PreVote last=0/0",
            "2->1 PreVoteResp",
            "3->1 PreVoteResp",
            "1->2 Vote last=0/0",
            "1->3 Vote last=0/0",
            "2->1 VoteResp",
            "3->1 VoteResp",
            "1->2 App prev=0/0 n=1 commit=0",
            "1->3 App prev=0/0 n=1 commit=0",
            "2->1 AppResp 1",
            "3->1 AppResp 1",
            // Node 3's probe answer is still in flight when the commit is broadcast;
            // it learns commit=1 from the next heartbeat.
            "1->2 App prev=1/1 n=0 commit=1",
            "2->1 AppResp 1",
        ]
    );
    assert_eq!(t.raft(1).term(), 1);
    assert_eq!(t.raft(2).committed(), 1);
}

#[test]
fn commit_and_replicate() {
    let mut t = three();
    let (i, _) = t.propose(1, b"x").unwrap();
    t.deliver();
    for id in 1..=3 {
        assert_eq!(t.raft(id).committed(), i);
        assert_eq!(t.c.nodes[&id].sm_applied, i);
    }
    assert_eq!(t.propose(2, b"y"), Err(RaftError::NotLeader { leader_hint: Some(1) }));
}

// ---------------------------------------------------------------- must show

/// A new leader's commit index may be stale until it commits an entry of its own
/// term: a ReadIndex arriving before that must wait, not answer with the old index.
#[test]
fn read_index_waits_for_own_term_commit() {
    let mut t = three();
    t.propose(1, b"a").unwrap();
    t.deliver();
    // Node 2 wins term 2 but its no-op cannot reach anyone yet.
    t.isolate(1);
    t.expire_lease(&[2, 3]);
    t.heal();
    t.raft_mut(2).campaign_now();
    t.process(2);
    t.deliver_votes_only();
    assert_eq!(t.raft(2).role(), Role::Leader);
    assert!(t.raft(2).committed() < t.raft(2).last_index(), "no-op not committed yet");
    t.read(2, 77, ReadMode::Safe).unwrap();
    t.read(2, 78, ReadMode::Lease).unwrap();
    t.tick(2, 3);
    t.process(2);
    assert!(t.read_states(2).is_empty(), "read answered before own-term commit");
    t.drop_all();
    t.deliver();
    t.tick_all(2);
    let noop = t.raft(2).committed();
    let rs = t.read_states(2);
    assert_eq!(rs.len(), 2, "{rs:?}");
    assert!(rs.iter().all(|&(_, idx)| idx >= noop.min(3) && idx >= 3), "read index below the no-op: {rs:?}");
}

/// Pre-vote: a node cut off for a long time does not raise its term, so it does
/// not depose the leader when it comes back; without pre-vote it would.
#[test]
fn rejoining_node_does_not_depose_leader() {
    for pre_vote in [true, false] {
        let mut t = Manual::new(3, &[1, 2, 3], |c| c.pre_vote = pre_vote);
        t.elect(1);
        t.isolate(3);
        t.tick_all(100);
        let term3 = t.raft(3).term();
        if pre_vote {
            assert_eq!(term3, 1, "isolated node kept campaigning without raising its term");
        } else {
            assert!(term3 > 1);
        }
        t.heal();
        t.tick_all(30);
        let leader_term = t.raft(1).term();
        if pre_vote {
            assert_eq!((t.raft(1).role(), leader_term), (Role::Leader, 1), "leader kept its term");
        } else {
            assert!(leader_term > 1, "without pre-vote the returning node deposes the leader");
        }
    }
}

/// A vote grant that was not durable when the voter crashed is never sent, so
/// the voter may vote again in that term without creating two leaders.
#[test]
fn unsynced_vote_lost_in_crash_gives_no_second_leader() {
    // Without leases a restarted node votes at once, which is the risky case.
    let mut t = Manual::new(3, &[1, 2, 3], |c| {
        c.pre_vote = false;
        c.check_quorum = false;
    });
    t.c.nodes.get_mut(&2).unwrap().auto_sync = false;
    // Node 1 campaigns in term 1; only node 2 hears it.
    t.blocked.insert((1, 3));
    t.raft_mut(1).campaign_now();
    t.process(1);
    t.deliver();
    assert_eq!(t.raft(2).hard_state().vote, 1, "node 2 voted in memory");
    assert_eq!(t.raft(1).role(), Role::Candidate, "grant held back until node 2's disk write");
    // Node 2 crashes before the vote reached its disk: the grant is lost with it.
    t.c.crash(2);
    t.c.restart(2);
    t.c.nodes.get_mut(&2).unwrap().auto_sync = true;
    assert_eq!(t.raft(2).term(), 0);
    // Node 3 campaigns in the same term 1 and wins with node 2's (second) vote.
    t.blocked.insert((3, 1));
    t.raft_mut(3).campaign_now();
    t.process(3);
    t.deliver();
    assert_eq!((t.raft(3).role(), t.raft(3).term()), (Role::Leader, 1));
    assert_eq!(t.raft(1).role(), Role::Candidate, "node 1 never got a quorum in term 1");
    assert_eq!(t.c.check.leaders.len(), 1);
}

/// A single-step change racing a leader change: the new leader must not start
/// another change before its own no-op commits (it may not yet know of an
/// uncommitted change of the old leader).
#[test]
fn single_step_change_racing_leader_change() {
    let mut t = Manual::new(5, &[1, 2, 3], |_| {});
    t.elect(1);
    // Leader 1 starts adding 4; the entry reaches only node 4, then 1 is cut off.
    t.blocked.extend([(1, 2), (1, 3)]);
    t.raft_mut(1).add_peer(4).unwrap();
    t.process(1);
    t.deliver();
    t.tick_all(1);
    assert_eq!(t.raft(1).configuration().voters, vec![1, 2, 3, 4], "config in force once appended");
    t.isolate(1);
    t.expire_lease(&[2, 3, 4]);
    t.elect(2);
    // Before its no-op commits the new leader refuses changes; after, it accepts one.
    t.blocked.extend([(2, 3), (2, 4), (2, 5)]);
    t.raft_mut(2).campaign_now(); // no-op: already leader
    assert_eq!(t.raft(2).role(), Role::Leader);
    t.heal();
    t.isolate(1);
    t.deliver();
    t.tick_all(2);
    t.raft_mut(2).add_peer(5).unwrap();
    t.process(2);
    t.tick_all(5);
    assert_eq!(t.raft(2).configuration().voters, vec![1, 2, 3, 5]);
    t.heal();
    t.tick_all(30);
    // Node 1 learns the new configuration; its conflicting change is gone. (Node 4
    // is no member, so nobody replicates to it any more.)
    let leader = t.c.leader().unwrap();
    for id in [1, 2, 3, 5] {
        assert_eq!(t.raft(id).configuration().voters, vec![1, 2, 3, 5], "node {id}");
        assert_eq!(t.raft(id).committed(), t.raft(leader).committed());
    }
}

#[test]
fn new_leader_refuses_conf_change_before_own_commit() {
    let mut t = three();
    t.isolate(1);
    t.expire_lease(&[2, 3]);
    t.heal();
    t.raft_mut(2).campaign_now();
    t.process(2);
    t.deliver_votes_only();
    assert_eq!(t.raft(2).role(), Role::Leader);
    assert_eq!(t.raft_mut(2).add_peer(4), Err(RaftError::NotReady));
    t.drop_all();
    t.tick_all(3);
    assert_eq!(t.raft_mut(2).add_learner(4), Ok(()));
}

/// A leader that hands over with TimeoutNow stops serving lease reads: the
/// target wins without waiting out the lease, so the old lease proves nothing.
#[test]
fn lease_read_across_leader_transfer() {
    let mut t = three();
    t.propose(1, b"a").unwrap();
    t.tick_all(2);
    assert!(t.raft(1).lease_valid());
    t.read(1, 1, ReadMode::Lease).unwrap();
    assert_eq!(t.read_states(1).len(), 1, "served from the lease without a round");
    t.raft_mut(1).transfer_leader(Some(2)).unwrap();
    t.process(1);
    assert!(!t.raft(1).lease_valid(), "TimeoutNow sent: lease void");
    // Node 1 is cut off from everyone before it learns of the new leader.
    let timeout_now: Vec<_> = t.c.outbox.iter().filter(|m| m.body == MessageBody::TimeoutNow).cloned().collect();
    assert_eq!(timeout_now.len(), 1);
    t.isolate(1);
    t.blocked.remove(&(1, 2));
    t.deliver();
    t.blocked.insert((1, 2));
    assert_eq!(t.raft(2).role(), Role::Leader, "target won at once");
    t.propose(2, b"b").unwrap();
    t.deliver();
    // A lease read on the old leader is not answered from its (void) lease.
    t.read(1, 2, ReadMode::Lease).unwrap();
    t.tick(1, 3);
    t.process(1);
    assert_eq!(t.read_states(1).len(), 1, "no stale read from the old leader");
    t.heal();
    t.tick_all(3);
    assert_eq!(t.raft(1).role(), Role::Follower);
}

/// A follower far behind gets a snapshot; appends keep arriving meanwhile (some
/// before the install completes, some stale after it); it ends up consistent.
#[test]
fn snapshot_install_racing_appends() {
    let mut t = Manual::new(3, &[1, 2, 3], |c| c.snapshot_margin_entries = 5);
    t.elect(1);
    t.isolate(3);
    for _ in 0..20 {
        t.propose(1, b"w").unwrap();
        t.deliver();
    }
    assert!(t.raft(1).first_index() > 10, "leader compacted");
    // Node 3's runtime will be slow to install the snapshot.
    t.c.nodes.get_mut(&3).unwrap().hold_install = true;
    let commit3 = t.raft(3).committed();
    t.heal();
    t.tick_all(2);
    assert!(t.c.nodes[&3].install.is_some(), "snapshot sent to the lagging follower");
    // Appends race the install: they are ignored while it is pending.
    for _ in 0..3 {
        t.propose(1, b"r").unwrap();
        t.tick_all(1);
    }
    let snap_index = t.c.nodes[&3].install.as_ref().unwrap().meta.index;
    assert!(
        t.raft(3).committed() <= commit3.max(1) && t.raft(3).committed() < snap_index,
        "appends ignored while the install is pending"
    );
    assert!(t.trace.iter().any(|l| l.starts_with("1->3 App")), "appends did race the install");
    t.c.nodes.get_mut(&3).unwrap().hold_install = false;
    t.c.complete_install(3);
    t.deliver();
    t.tick_all(3);
    assert_eq!(t.raft(3).committed(), t.raft(1).committed());
    assert_eq!(t.c.nodes[&3].sm, t.c.nodes[&1].sm);
    assert_eq!(t.log_ids(3).last(), t.log_ids(1).last());
}

/// A node removed while partitioned keeps its old configuration and campaigns;
/// it must not disturb the cluster when the partition heals.
#[test]
fn removed_node_does_not_disrupt() {
    let mut t = three();
    t.isolate(3);
    t.raft_mut(1).remove_peer(3).unwrap();
    t.process(1);
    t.tick_all(3);
    assert_eq!(t.raft(1).configuration().voters, vec![1, 2]);
    t.tick_all(60);
    t.heal();
    t.tick_all(60);
    assert_eq!((t.raft(1).role(), t.raft(1).term()), (Role::Leader, 1), "leader undisturbed");
    t.propose(1, b"after").unwrap();
    t.tick_all(2);
    assert_eq!(t.raft(2).committed(), t.raft(1).committed());
}

/// Transfer to a lagging peer: TimeoutNow only once it caught up; proposals are
/// refused meanwhile; after an election timeout the leader gives up and serves again.
#[test]
fn transfer_to_lagging_peer_waits_then_times_out() {
    let mut t = three();
    t.isolate(3);
    t.propose(1, b"a").unwrap();
    t.tick_all(1);
    t.raft_mut(1).transfer_leader(Some(3)).unwrap();
    t.process(1);
    assert_eq!(t.propose(1, b"b"), Err(RaftError::TransferInProgress));
    t.tick_all(10);
    assert!(!t.trace.iter().any(|l| l.contains("TimeoutNow")), "no TimeoutNow to a lagging peer");
    assert!(t.c.events.iter().any(|(n, e)| *n == 1 && *e == Event::TransferAborted { target: 3 }));
    assert_eq!(t.raft(1).role(), Role::Leader);
    assert!(t.propose(1, b"c").is_ok(), "serving again after the transfer gave up");
    // With the link back, the same transfer completes once node 3 caught up.
    t.heal();
    t.raft_mut(1).transfer_leader(Some(3)).unwrap();
    t.process(1);
    t.tick_all(3);
    assert!(t.trace.iter().any(|l| l == "1->3 TimeoutNow"));
    assert_eq!(t.raft(3).role(), Role::Leader);
    assert_eq!(t.raft(1).role(), Role::Follower);
}

/// The same story as a trace: the returning node's pre-votes are ignored by
/// nodes that heard from the leader within an election timeout, and the
/// leader's next heartbeat brings it back, in term 1.
#[test]
fn prevote_checkquorum_trace() {
    let mut t = three();
    t.isolate(3);
    t.tick(3, 25); // times out on its own; its pre-votes go nowhere
    t.drop_all();
    t.tick_all(1);
    t.heal();
    t.take_trace();
    t.raft_mut(3).campaign_now();
    t.process(3);
    t.deliver();
    t.c.tick(1);
    t.deliver();
    assert_eq!(
        t.take_trace(),
        vec![
            "3->1 PreVote last=1/1",
            "3->2 PreVote last=1/1",
            "1->2 Heartbeat commit=1 round=2",
            "1->3 Heartbeat commit=1 round=2",
            "2->1 HeartbeatResp round=2",
            "3->1 HeartbeatResp round=2",
        ]
    );
    assert_eq!((t.raft(3).role(), t.raft(3).leader(), t.raft(3).term()), (Role::Follower, Some(1), 1));
}

/// A leader whose process stalls (its ticks stop while real time runs on)
/// must not come back believing its lease holds: measured on the caller's
/// monotonic clock (`lease_ms`), the lease ran out during the stall, so a
/// lease read waits for a heartbeat round instead of answering at once.
/// Counted in ticks alone (`lease_ms` 0), the same read is answered from
/// the stale lease: the bug this guards against.
#[test]
fn a_stall_never_extends_a_lease() {
    for lease_ms in [0, 40] {
        let mut t = Manual::new(3, &[1, 2, 3], |c| c.lease_ms = lease_ms);
        for id in 1..=3 {
            t.raft_mut(id).set_clock(1_000);
        }
        t.elect(1);
        t.propose(1, b"a").unwrap();
        t.tick_all(2);
        assert!(t.raft(1).lease_valid(), "lease_ms {lease_ms}: a fresh lease holds");
        // Node 1 stalls for a second: no tick, no message handled; when it
        // runs again, its clock reads a second later.
        t.raft_mut(1).set_clock(2_000);
        t.read(1, 9, ReadMode::Lease).unwrap();
        let served_at_once = t.read_states(1).iter().any(|&(id, _)| id == 9);
        if lease_ms == 0 {
            assert!(served_at_once, "ticks alone: the stale lease answers (why lease_ms exists)");
        } else {
            assert!(!served_at_once, "the stall used up the lease: no answer without a heartbeat round");
            // A heartbeat round at the new clock reading confirms it.
            t.tick_all(2);
            assert!(t.read_states(1).iter().any(|&(id, _)| id == 9), "confirmed by a round");
        }
    }
}

// ---------------------------------------------------------------- quiescence

fn quiet_three() -> Manual {
    let mut t = Manual::new(3, &[1, 2, 3], |c| c.quiesce_after_ticks = 3);
    t.elect(1);
    t.propose(1, b"a").unwrap();
    t.deliver();
    t.tick_all(6);
    for id in 1..=3 {
        assert!(t.raft(id).is_quiesced(), "node {id} is not quiet: {:?}", t.c.describe());
    }
    t
}

/// An idle group goes quiet: one heartbeat says so, then ticks send nothing
/// and start no election. A quiet leader holds no lease.
#[test]
fn an_idle_group_goes_quiet_and_stays_quiet() {
    let mut t = quiet_three();
    assert!(!t.raft(1).lease_valid(), "a quiet leader's lease is void");
    let term = t.raft(1).term();
    let _ = t.take_trace();
    t.tick_all(100);
    assert!(t.take_trace().is_empty(), "a quiet group sends nothing");
    assert_eq!((t.raft(1).role(), t.raft(1).term()), (Role::Leader, term));
    // A write wakes it and commits at once; it goes quiet again later.
    let (i, _) = t.propose(1, b"b").unwrap();
    t.deliver();
    for id in 1..=3 {
        assert_eq!(t.raft(id).committed(), i, "node {id}");
    }
    assert!(!t.raft(1).is_quiesced());
    t.tick_all(6);
    assert!((1..=3).all(|id| t.raft(id).is_quiesced()));
    // A follower read wakes the follower and its leader.
    t.read(2, 9, ReadMode::Safe).unwrap();
    t.deliver();
    t.process(2);
    assert_eq!(t.read_states(2), vec![(9, i)]);
}

/// A follower that missed the quiet heartbeat campaigns after its timeout;
/// its campaign wakes the others, and the leader keeps the group.
#[test]
fn a_missed_quiet_heartbeat_wakes_the_group_again() {
    let mut t = Manual::new(3, &[1, 2, 3], |c| c.quiesce_after_ticks = 3);
    t.elect(1);
    t.tick_all(2);
    // The quiet heartbeat to node 3 is lost.
    t.blocked.insert((1, 3));
    t.tick_all(4);
    t.heal();
    assert!(t.raft(1).is_quiesced() && t.raft(2).is_quiesced());
    assert!(!t.raft(3).is_quiesced());
    t.tick_all(40);
    assert_eq!(t.raft(1).role(), Role::Leader, "the group keeps its leader: {:?}", t.c.describe());
    assert!((1..=3).all(|id| t.raft(id).is_quiesced()), "quiet again once all heard: {:?}", t.c.describe());
}

/// Quiescence never lets a stale leader serve a lease read: a quiet leader
/// cut off while its followers (woken by their runtime, which saw its node
/// go) elect another and commit, answers no lease read from its old quiet.
#[test]
fn a_quiet_leader_cut_off_serves_no_stale_lease_read() {
    let mut t = quiet_three();
    t.isolate(1);
    for id in [2, 3] {
        t.raft_mut(id).wake();
        t.process(id);
    }
    t.tick_all(40);
    let new = [2, 3].into_iter().find(|id| t.raft(*id).role() == Role::Leader).expect("a new leader");
    let (i, _) = t.propose(new, b"b").unwrap();
    t.deliver();
    assert_eq!(t.raft(new).committed(), i);
    // Node 1 still believes it leads, quiet. A lease read there must not be
    // answered: not from the quiet, not from the acks before it.
    assert_eq!(t.raft(1).role(), Role::Leader);
    t.read(1, 7, ReadMode::Lease).unwrap();
    t.tick(1, 3);
    t.process(1);
    assert!(t.read_states(1).is_empty(), "a stale leader answered a lease read");
    t.heal();
    t.tick_all(5);
    assert_eq!(t.raft(1).role(), Role::Follower);
    assert_eq!(t.raft(1).committed(), i);
}

/// Acks of rounds sent before the quiet, arriving after the leader woke,
/// lend it no lease: its tick count stood still while it was quiet, so
/// their send ticks would look recent (lease counted in ticks alone here).
#[test]
fn late_acks_from_before_the_quiet_lend_no_lease() {
    let mut t = Manual::new(3, &[1, 2, 3], |c| c.quiesce_after_ticks = 30);
    t.elect(1);
    t.propose(1, b"a").unwrap();
    t.deliver();
    // Busy for a while first: the leader's tick count is well past a lease.
    for _ in 0..10 {
        t.propose(1, b"b").unwrap();
        t.tick_all(2);
    }
    for _ in 0..60 {
        t.c.tick(1);
        if t.raft(1).is_quiesced() {
            break;
        }
        t.deliver();
    }
    assert!(t.raft(1).is_quiesced());
    // The quiet heartbeats reach the followers; their acks are held back.
    for m in std::mem::take(&mut t.c.outbox) {
        t.c.step(m);
    }
    let late = std::mem::take(&mut t.c.outbox);
    assert!(late.iter().any(|m| matches!(m.body, MessageBody::HeartbeatResponse { .. })), "{late:?}");
    t.raft_mut(1).wake();
    t.process(1);
    t.drop_all();
    for m in late {
        t.c.step(m);
    }
    assert!(!t.raft(1).lease_valid(), "acks from before the quiet made a lease");
    t.read(1, 5, ReadMode::Lease).unwrap();
    assert!(t.read_states(1).is_empty(), "a lease read was answered from acks before the quiet");
}
