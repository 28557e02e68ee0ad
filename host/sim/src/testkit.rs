//! A hand-driven cluster for scenario tests and the bench: messages move only
//! when the test says `deliver`, links are cut by name, and every delivered
//! message is recorded as a one-line trace. Never random.

use crate::raft_cluster::{Cluster, brief};
use bytes::Bytes;
use std::collections::BTreeSet;
use waft_raft::*;

pub struct Manual {
    pub c: Cluster,
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    pub trace: Vec<String>,
}

/// Deliveries per `deliver` call; a protocol that ping-pongs longer is a bug.
const DELIVERIES_MAX: usize = 100_000;

pub fn test_config(id: NodeId) -> Config {
    let mut c = Config::new(id, 7);
    c.election_ticks = 10;
    c.heartbeat_ticks = 1;
    c.lease_ticks = 4;
    c
}

impl Manual {
    /// Nodes 1..=n; `voters` bootstrap the group; `tweak` adjusts each node's config.
    pub fn new(n: u64, voters: &[NodeId], tweak: impl Fn(&mut Config)) -> Manual {
        let ids: Vec<NodeId> = (1..=n).collect();
        let c = Cluster::new(&ids, voters, |id| {
            let mut c = test_config(id);
            tweak(&mut c);
            c
        });
        Manual { c, blocked: BTreeSet::new(), trace: Vec::new() }
    }

    pub fn raft(&self, id: NodeId) -> &RawNode {
        self.c.raft(id)
    }

    pub fn raft_mut(&mut self, id: NodeId) -> &mut RawNode {
        self.c.raft_mut(id)
    }

    /// Runs the Ready loop of `id` after a direct call on its RawNode.
    pub fn process(&mut self, id: NodeId) {
        self.c.process(id);
    }

    /// Delivers messages until none are left; returns how many were delivered.
    pub fn deliver(&mut self) -> usize {
        let mut n = 0;
        loop {
            let out = std::mem::take(&mut self.c.outbox);
            if out.is_empty() {
                return n;
            }
            for m in out {
                if self.blocked.contains(&(m.from, m.to)) || !self.c.is_up(m.to) {
                    continue;
                }
                self.trace.push(format!("{}->{} {}", m.from, m.to, brief(&m.body)));
                self.c.step(m);
                n += 1;
                assert!(n < DELIVERIES_MAX, "message storm");
            }
        }
    }

    /// Delivers only vote traffic (pre-votes, votes and their answers) until none
    /// is left, dropping everything else that was queued.
    pub fn deliver_votes_only(&mut self) {
        for _ in 0..DELIVERIES_MAX {
            let out = std::mem::take(&mut self.c.outbox);
            let votes: Vec<Message> = out
                .into_iter()
                .filter(|m| {
                    matches!(
                        m.body,
                        MessageBody::PreVote { .. }
                            | MessageBody::PreVoteResponse { .. }
                            | MessageBody::Vote { .. }
                            | MessageBody::VoteResponse { .. }
                    )
                })
                .collect();
            if votes.is_empty() {
                return;
            }
            for m in votes {
                if !self.blocked.contains(&(m.from, m.to)) {
                    self.trace.push(format!("{}->{} {}", m.from, m.to, brief(&m.body)));
                    self.c.step(m);
                }
            }
        }
    }

    /// Drops every queued message without delivering it.
    pub fn drop_all(&mut self) {
        self.c.outbox.clear();
    }

    pub fn take_trace(&mut self) -> Vec<String> {
        std::mem::take(&mut self.trace)
    }

    /// Ticks every live node once per round, delivering after each round.
    pub fn tick_all(&mut self, rounds: u64) {
        for _ in 0..rounds {
            let ids: Vec<NodeId> = self.c.nodes.keys().copied().collect();
            for id in ids {
                self.c.tick(id);
            }
            self.deliver();
        }
    }

    pub fn tick(&mut self, id: NodeId, times: u64) {
        for _ in 0..times {
            self.c.tick(id);
        }
    }

    /// Lets the leader lease lapse on `ids` (ticks them an election timeout with
    /// nothing delivered) and drops whatever they sent meanwhile.
    pub fn expire_lease(&mut self, ids: &[NodeId]) {
        for &id in ids {
            let t = self.c.nodes[&id].cfg.election_ticks;
            self.tick(id, t);
        }
        self.drop_all();
    }

    /// Makes `id` campaign now and delivers until settled; asserts it leads.
    pub fn elect(&mut self, id: NodeId) {
        self.raft_mut(id).campaign_now();
        self.process(id);
        self.deliver();
        assert_eq!(self.raft(id).role(), Role::Leader, "node {id} failed to win: {:?}", self.c.describe());
    }

    pub fn isolate(&mut self, id: NodeId) {
        let ids: Vec<NodeId> = self.c.nodes.keys().copied().collect();
        for other in ids {
            if other != id {
                self.blocked.insert((id, other));
                self.blocked.insert((other, id));
            }
        }
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    pub fn propose(&mut self, id: NodeId, data: &'static [u8]) -> Result<(u64, u64), RaftError> {
        let r = self.raft_mut(id).propose(Bytes::from_static(data));
        self.process(id);
        r
    }

    pub fn read(&mut self, id: NodeId, rid: u64, mode: ReadMode) -> Result<(), RaftError> {
        let r = self.raft_mut(id).read_index(rid, mode);
        self.process(id);
        r
    }

    /// Read states handed out so far on `id`: (read id, index).
    pub fn read_states(&self, id: NodeId) -> Vec<(u64, u64)> {
        self.c.read_states.iter().filter(|(n, _)| *n == id).map(|(_, r)| (r.id, r.index)).collect()
    }

    pub fn events(&self, id: NodeId) -> Vec<Event> {
        self.c.events.iter().filter(|(n, _)| *n == id).map(|(_, e)| e.clone()).collect()
    }

    /// (term, index) pairs of `id`'s in-memory log after its snapshot.
    pub fn log_ids(&self, id: NodeId) -> Vec<(u64, u64)> {
        self.raft(id).log_entries().iter().map(|e| (e.term, e.index)).collect()
    }
}
