//! Roles and elections: becoming follower, candidate and leader, pre-vote
//! and vote handling, priority election (SOFAJRaft's target priority that
//! decays), and the lease a follower protects by refusing votes.

use super::*;

impl RawNode {
    // ------------------------------------------------------------ roles

    pub(super) fn reset_randomized_timeout(&mut self) {
        let t = self.cfg.election_ticks;
        self.randomized_election_ticks = t + splitmix64(&mut self.prng) % t;
    }

    pub(super) fn reset_role_state(&mut self, term: u64) {
        if self.term != term {
            self.term = term;
            self.vote = NONE;
        }
        self.leader = NONE;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.quiesced = false;
        self.idle_ticks = 0;
        self.reset_randomized_timeout();
        self.votes.clear();
        self.progress.clear();
        self.reads.reset();
        self.lease_disabled = false;
        self.commit_to_broadcast = false;
        if let Some(t) = self.transfer.take() {
            self.events.push(Event::TransferAborted { target: t.target });
        }
        if self.pending_change.is_some() {
            self.abandon_pending_change("leadership lost during catch-up");
        }
    }

    pub(super) fn become_follower(&mut self, term: u64, leader: NodeId) {
        let was_leader = self.role == Role::Leader;
        self.reset_role_state(term);
        self.role = Role::Follower;
        if was_leader {
            self.events.push(Event::SteppedDown { term: self.term });
        }
        if leader != NONE {
            self.leader_contact(leader);
        }
    }

    pub(super) fn leader_contact(&mut self, leader: NodeId) {
        self.leader = leader;
        self.election_elapsed = 0;
        self.ticks_since_leader = 0;
        self.leaderless_ticks = 0;
        self.election_timeout_count = 0;
        self.target_priority = self.max_priority();
    }

    /// Starts a pre-vote (`pre`) or a real election (`transfer`: after TimeoutNow).
    pub(super) fn campaign(&mut self, pre: bool, transfer: bool) {
        if pre {
            self.reset_role_state(self.term);
            self.role = Role::PreCandidate;
        } else {
            self.reset_role_state(self.term + 1);
            self.role = Role::Candidate;
            self.vote = self.id;
        }
        if pre {
            // A pre-vote changes no durable state: our own vote counts at once.
            self.votes.insert(self.id, true);
            if quorum::joint_vote(&self.conf, |id| self.votes.get(&id).copied()) == VoteResult::Won {
                return self.on_election_won();
            }
        }
        // A real vote for ourselves counts only once term and vote are durable
        // (`on_hard_state_persisted`); otherwise a crash could let us lead the same
        // term twice with different entries (found by the simulator, single voter).
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        let me = self.id;
        let voters: Vec<NodeId> =
            self.conf.members().into_iter().filter(|&v| v != me && self.conf.is_voter(v)).collect();
        for v in voters {
            if pre {
                self.send_with_term(v, self.term + 1, MessageBody::PreVote { last_index, last_term }, false);
            } else {
                // The vote for ourselves must be durable before anyone can count on it.
                self.send(v, MessageBody::Vote { last_index, last_term, transfer }, true);
            }
        }
    }

    pub(super) fn on_election_won(&mut self) {
        if self.role == Role::PreCandidate {
            self.campaign(false, false);
        } else {
            self.become_leader();
        }
    }

    pub(super) fn become_leader(&mut self) {
        assert_eq!(self.role, Role::Candidate);
        assert_eq!(self.vote, self.id);
        self.reset_role_state(self.term);
        self.role = Role::Leader;
        self.leader = self.id;
        self.ticks_since_leader = 0;
        self.leaderless_ticks = 0;
        self.sync_progress();
        for p in self.progress.values_mut() {
            p.recent_active = true;
        }
        self.events.push(Event::BecameLeader { term: self.term });
        // A no-op of our term lets us commit (and learn) everything before it.
        self.append_entry(EntryKind::Normal, Bytes::new());
        if let Some((c, _)) = self.forced.clone() {
            self.append_entry(EntryKind::Config, c.encode());
        }
    }

    /// SOFAJRaft's allowLaunchElection: a node below the target priority waits
    /// one election timeout; after a second the target decays and it may stand.
    pub(super) fn allow_launch_election(&mut self) -> bool {
        let me = self.cfg.priority_of(self.id);
        if me == PRIORITY_NEVER {
            return false;
        }
        if me <= PRIORITY_DISABLED {
            return true;
        }
        if me < self.target_priority {
            self.election_timeout_count += 1;
            if self.election_timeout_count > 1 {
                self.decay_target_priority();
                self.election_timeout_count = 0;
            }
            if self.election_timeout_count == 1 {
                return false;
            }
        }
        me >= self.target_priority
    }

    pub(super) fn decay_target_priority(&mut self) {
        let gap = 10.max(self.target_priority / 5);
        self.target_priority = 1.max(self.target_priority - gap);
    }

    pub(super) fn max_priority(&self) -> Priority {
        self.conf
            .voters
            .iter()
            .chain(&self.conf.voters_outgoing)
            .map(|&v| self.cfg.priority_of(v))
            .max()
            .unwrap_or(PRIORITY_DISABLED)
    }

    /// Whether this node may stand for election. A node removed by a configuration
    /// entry that is not committed yet still stands (Raft dissertation §4.2.2): it
    /// may hold the only up-to-date log needed to commit its own removal.
    pub(super) fn promotable(&self) -> bool {
        if self.installing.is_some() || self.fenced {
            return false;
        }
        self.conf.is_voter(self.id)
            || (self.conf_index > self.log.committed && self.history.at(self.log.committed).is_voter(self.id))
    }

    pub(super) fn in_lease(&self) -> bool {
        self.cfg.check_quorum && (self.role == Role::Leader || self.ticks_since_leader < self.cfg.election_ticks)
    }

    // ------------------------------------------------------------ votes

    pub(super) fn handle_vote_request(&mut self, m: &Message, last_index: u64, last_term: u64, pre: bool) {
        let can_vote = self.vote == m.from || (self.vote == NONE && self.leader == NONE) || (pre && m.term > self.term);
        let grant = can_vote && self.log.is_up_to_date(last_index, last_term);
        if pre {
            let term = if grant { m.term } else { self.term };
            self.send_with_term(m.from, term, MessageBody::PreVoteResponse { reject: !grant }, false);
        } else {
            if grant {
                self.election_elapsed = 0;
                self.vote = m.from;
            }
            self.send(m.from, MessageBody::VoteResponse { reject: !grant }, true);
        }
    }

    pub(super) fn step_candidate(&mut self, m: Message) {
        match m.body {
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. } | MessageBody::InstallSnapshot { .. } => {
                self.become_follower(m.term, m.from);
                self.step_follower(m);
            }
            MessageBody::PreVoteResponse { reject } if self.role == Role::PreCandidate => self.tally(m.from, !reject),
            MessageBody::VoteResponse { reject } if self.role == Role::Candidate => self.tally(m.from, !reject),
            _ => {}
        }
    }

    pub(super) fn tally(&mut self, from: NodeId, granted: bool) {
        self.votes.entry(from).or_insert(granted);
        match quorum::joint_vote(&self.conf, |id| self.votes.get(&id).copied()) {
            VoteResult::Won => self.on_election_won(),
            VoteResult::Lost => self.become_follower(self.term, NONE),
            VoteResult::Pending => {}
        }
    }
}
