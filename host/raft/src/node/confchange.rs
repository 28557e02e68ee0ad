//! Configuration changes: the membership admin calls (single-server steps
//! and joint consensus through `change_peers`), the catch-up stage of new
//! voters, and how the configuration in force follows the log (the latest
//! configuration entry, committed or not) and the progress map with it.

use super::*;

impl RawNode {
    // ------------------------------------------------------------ admin

    /// Adds `id` as a voter (after a catch-up stage).
    pub fn add_peer(&mut self, id: NodeId) -> Result<(), RaftError> {
        let mut t = self.conf.clone();
        t.learners.retain(|&l| l != id);
        t.voters.push(id);
        self.change_peers(t.voters, t.learners)
    }

    pub fn remove_peer(&mut self, id: NodeId) -> Result<(), RaftError> {
        let mut t = self.conf.clone();
        t.voters.retain(|&v| v != id);
        t.learners.retain(|&l| l != id);
        self.change_peers(t.voters, t.learners)
    }

    pub fn add_learner(&mut self, id: NodeId) -> Result<(), RaftError> {
        if self.conf.is_voter(id) {
            return Err(RaftError::InvalidConfChange("node is a voter; remove it first"));
        }
        let mut t = self.conf.clone();
        t.learners.push(id);
        self.change_peers(t.voters, t.learners)
    }

    pub fn remove_learner(&mut self, id: NodeId) -> Result<(), RaftError> {
        if !self.conf.is_learner(id) {
            return Err(RaftError::InvalidConfChange("node is not a learner"));
        }
        self.remove_peer(id)
    }

    pub fn promote_learner(&mut self, id: NodeId) -> Result<(), RaftError> {
        if !self.conf.is_learner(id) {
            return Err(RaftError::InvalidConfChange("node is not a learner"));
        }
        self.add_peer(id)
    }

    /// Moves to the configuration with exactly these voters and learners. One voter
    /// changing is a single step; more use joint consensus. New voters first catch
    /// up (within `catchup_margin_entries`) or the change fails after `catchup_timeout_ticks`.
    pub fn change_peers(&mut self, voters: Vec<NodeId>, learners: Vec<NodeId>) -> Result<(), RaftError> {
        self.change_members(voters, learners, Vec::new())
    }

    /// `change_peers` that also records `addresses` (over the ones the
    /// configuration has) in the configuration entries it appends. An
    /// address change alone is a change too (a member that moved).
    pub fn change_members(
        &mut self,
        voters: Vec<NodeId>,
        learners: Vec<NodeId>,
        addresses: Vec<(NodeId, String)>,
    ) -> Result<(), RaftError> {
        self.wake();
        self.check_can_append()?;
        if self.pending_change.is_some()
            || self.conf_index > self.log.committed
            || self.conf.is_joint()
            || self.forced.is_some()
        {
            return Err(RaftError::ConfChangeInProgress);
        }
        if !self.committed_own_term() {
            // A new leader may hold an uncommitted change of a previous leader that
            // it does not know about yet; changing again before its own no-op commits
            // is the single-server-change bug (Ongaro, raft-dev 2015).
            return Err(RaftError::NotReady);
        }
        if addresses.iter().any(|(_, a)| a.is_empty() || a.len() > crate::types::ADDRESS_BYTES_MAX) {
            return Err(RaftError::InvalidConfChange("an address is empty or longer than ADDRESS_BYTES_MAX"));
        }
        let target = Configuration { voters, voters_outgoing: Vec::new(), learners, addresses: Vec::new() }
            .with_addresses(addresses.into_iter().chain(self.conf.addresses.iter().cloned()));
        if target.voters.is_empty() {
            return Err(RaftError::InvalidConfChange("a configuration needs at least one voter"));
        }
        if target.voters.contains(&NONE) || target.learners.contains(&NONE) {
            return Err(RaftError::InvalidConfChange("node id 0 is reserved"));
        }
        if target.learners.iter().any(|l| self.conf.voters.contains(l)) {
            return Err(RaftError::InvalidConfChange(
                "demoting a voter to learner: remove it first, then add it as a learner",
            ));
        }
        if target == self.conf {
            return Err(RaftError::InvalidConfChange("the configuration is unchanged"));
        }
        let catching: Vec<NodeId> = target.voters.iter().copied().filter(|v| !self.conf.voters.contains(v)).collect();
        let last = self.log.last_index();
        for &c in &catching {
            self.progress
                .entry(c)
                .or_insert_with(|| Progress::new(last + 1, self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max));
        }
        self.pending_change = Some(PendingChange { target, catching, elapsed_ticks: 0 });
        self.check_catchup();
        Ok(())
    }

    pub(super) fn check_catchup(&mut self) {
        let Some(pc) = &self.pending_change else {
            return;
        };
        let last = self.log.last_index();
        let margin = self.cfg.catchup_margin_entries;
        let caught = pc.catching.iter().all(|id| self.progress.get(id).is_some_and(|p| p.match_index + margin >= last));
        if !caught {
            return;
        }
        let target = pc.target.clone();
        self.pending_change = None;
        let changed: usize = target.voters.iter().filter(|v| !self.conf.voters.contains(v)).count()
            + self.conf.voters.iter().filter(|v| !target.voters.contains(v)).count();
        let entry = if changed > 1 {
            Configuration {
                voters: target.voters,
                voters_outgoing: self.conf.voters.clone(),
                learners: target.learners,
                addresses: Vec::new(),
            }
            .with_addresses(target.addresses.into_iter().chain(self.conf.addresses.iter().cloned()))
        } else {
            target
        };
        if let Some(t) = &self.transfer
            && !entry.voters.contains(&t.target)
        {
            let target = t.target;
            self.transfer = None;
            self.events.push(Event::TransferAborted { target });
        }
        self.append_entry(EntryKind::Config, entry.encode());
    }

    /// Leader: the configuration a change waits to propose while its new
    /// voters catch up (the runtime must reach them already).
    pub fn pending_target(&self) -> Option<&Configuration> {
        self.pending_change.as_ref().map(|pc| &pc.target)
    }

    pub(super) fn abandon_pending_change(&mut self, reason: &'static str) {
        self.pending_change = None;
        self.events.push(Event::ConfChangeFailed { reason });
        if self.role == Role::Leader {
            self.sync_progress();
        }
    }

    // ------------------------------------------------------------ configuration

    /// Recomputes the configuration history from log index `from` on (after an
    /// append or truncation there).
    pub(super) fn rescan_conf_from(&mut self, from: u64) {
        self.history.entries.retain(|(i, _)| *i < from);
        let start = from.max(self.log.first_index());
        let mut bad = Vec::new();
        for i in start..=self.log.last_index() {
            let Some(e) = self.log.entry(i) else { break };
            if e.kind == EntryKind::Config {
                match Configuration::decode(&e.data) {
                    Ok(c) => self.history.entries.push((i, c)),
                    Err(_) => bad.push(i),
                }
            }
        }
        for index in bad {
            self.events.push(Event::BadConfigEntry { index });
        }
        self.refresh_conf();
    }

    pub(super) fn refresh_conf(&mut self) {
        let (index, c) = self.history.current();
        let (index, c) = match &self.forced {
            Some((fc, at)) if index <= *at => (index, fc.clone()),
            _ => (index, c.clone()),
        };
        if self.forced.as_ref().is_some_and(|(_, at)| index > *at) {
            self.forced = None;
        }
        let changed = c != self.conf;
        self.conf = c;
        self.conf_index = index;
        if changed {
            self.target_priority = self.max_priority();
            if self.role == Role::Leader {
                self.sync_progress();
            }
        }
    }

    /// Leader: one progress per member, catching-up peer and ourselves.
    pub(super) fn sync_progress(&mut self) {
        let mut want = self.conf.members();
        want.push(self.id);
        if let Some(pc) = &self.pending_change {
            want.extend(pc.catching.iter().copied());
        }
        self.progress.retain(|id, _| want.contains(id));
        let last = self.log.last_index();
        for id in want {
            self.progress
                .entry(id)
                .or_insert_with(|| Progress::new(last + 1, self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max));
        }
        if let Some(p) = self.progress.get_mut(&self.id) {
            p.match_index = self.log.persisted;
            p.next_index = last + 1;
        }
    }
}
