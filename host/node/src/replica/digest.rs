//! Replicas check each other: state digests at deterministic log indexes,
//! a verdict through the log, fencing and rebuild.
//!
//! After applying every entry whose index is a multiple of the group's
//! `digest_interval`, each replica saves its guest state once (the
//! runtime's fault-recovery checkpoint moves there, so the save is not
//! extra work) and hashes it with the session table, the module hash, the
//! settings and the index. Where the runtime saves beside the applies (a
//! spawn hook: `--background-saves`), everything else is taken at the
//! point, the digest is made once the save is in (`finish_digests`: at the
//! next apply or tick), and a verdict that came first is judged then. Followers report their digest to the leader
//! (`MessageBody::StateDigest`, re-sent every [`DIGEST_REPORT_EVERY_TICKS`]
//! until judged). Once a majority of voters reported the same digest for
//! an index, the leader proposes a `Body::Verdict` naming it. Every replica
//! applying the verdict compares its own digest of that index:
//!
//! - equal: the state up to that index is confirmed;
//! - different: the replica is *fenced*. It refuses reads, never stands
//!   for election (a leader hands leadership on), takes no snapshot (none
//!   may spread its state), and answers no client from its results. The
//!   leader offers it a fresh snapshot; the fenced replica loads it and
//!   applies the log it kept after it again (`RawNode::on_state_rebuilt`),
//!   and the fence lifts. With `rebuild` off it stays fenced for an
//!   operator.
//!
//! The verdict is an entry, so every replica judges against the same
//! digest at the same point of the log, and a leader whose own state is
//! the odd one out fences itself like any other replica. No majority agrees
//! (three replicas, three digests): no verdict, each replica logs that it
//! was not confirmed and goes on.
//!
//! Owns the digest's bytes and the comparison. Must never let a report
//! (from the network) change anything but what the leader proposes, and
//! never fence on anything but a committed verdict.

use std::collections::{BTreeMap, VecDeque};

use sha2::{Digest as _, Sha256};
use waft_raft::progress::ProgressState;
use waft_raft::{Message, MessageBody, NodeId, Role};
use waft_session::{Body, Envelope};

use super::Replica;
use crate::error::{Error, Result, runtime_is_fatal};
use crate::outcome::Outcome;

/// A state digest: sha256 over the state and everything that shapes it.
pub type Digest = [u8; 32];

/// Own digests a replica keeps to judge verdicts against (a verdict comes
/// one round trip after its index; this covers a replica far behind).
pub const DIGESTS_KEPT_MAX: usize = 64;
/// Digests whose state is still being saved (on another thread) a replica
/// keeps before it waits for the oldest: one more than the saves the
/// runtime keeps in flight, so this never is what waits.
pub const DIGESTS_PENDING_MAX: usize = waft_runtime::machine::SAVES_IN_FLIGHT_MAX + 1;
/// Members whose reports the leader keeps.
pub const DIGEST_REPORTS_MAX: usize = 1024;
/// Reports the leader keeps of each member, newest first: members apply at
/// different paces, so agreement on one index is looked for among the
/// last few of each.
pub const DIGEST_REPORTS_PER_MEMBER_MAX: usize = 8;
/// A replica re-sends its latest digest this often (in ticks) while it is
/// not judged yet, or while it is fenced (so the leader offers the rebuild
/// again).
pub const DIGEST_REPORT_EVERY_TICKS: u64 = 10;

/// Why a replica is fenced: its digest of `index` differs from the
/// group's, or it could not follow the group at entry `index` (both
/// digests zero then).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub index: u64,
    pub ours: Digest,
    pub group: Digest,
    pub why: String,
}

/// What the digests say about this replica, for status and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DigestStatus {
    /// The latest own digest: (index, digest).
    pub latest: Option<(u64, Digest)>,
    /// The highest index a verdict confirmed this replica's state at.
    pub verified: u64,
    /// Set while the replica is fenced.
    pub fence: Option<Fence>,
    /// Verdicts that found this replica different, since it started.
    pub mismatches: u64,
    /// Times its state was rebuilt from a healthy replica's snapshot.
    pub rebuilds: u64,
}

/// A digest point whose state is still being saved: everything else the
/// digest covers, as it was there.
struct PendingDigest {
    index: u64,
    state: waft_runtime::machine::SavedState,
    module: waft_storage::ModuleHash,
    settings: Vec<u8>,
    sessions: bytes::Bytes,
}

impl std::fmt::Debug for PendingDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingDigest").field("index", &self.index).finish_non_exhaustive()
    }
}

/// The replica's digest bookkeeping (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Digests {
    /// Own digests by index, the newest `DIGESTS_KEPT_MAX`.
    own: BTreeMap<u64, Digest>,
    /// Own digests still waiting for their state's bytes, oldest first; at
    /// most `DIGESTS_PENDING_MAX`.
    pending: VecDeque<PendingDigest>,
    /// Leader only: each other member's latest reports (by index); the
    /// leader's own are in `own`.
    reports: BTreeMap<NodeId, BTreeMap<u64, Digest>>,
    /// The latest verdict applied: the index it judged, its digest, and
    /// the entry it was.
    verdict: Option<(u64, Digest, u64)>,
    /// Leader only: the highest index it proposed a verdict for, and in which term.
    proposed: (u64, u64),
    /// Leader only: members whose digest differs from a verdict, by that
    /// verdict's entry (a snapshot to rebuild them from must be past it:
    /// a fenced replica's own snapshots are all before it), and the
    /// snapshot index last offered to each.
    rebuild: BTreeMap<NodeId, (u64, Option<u64>)>,
    /// The own latest digest is to be sent to the leader.
    report_due: bool,
    /// Leader: a digest came in (own or reported) since the last tally.
    tally_due: bool,
    ticks: u64,
    /// Whether a fenced replica may be rebuilt without an operator.
    pub(super) manual: bool,
    pub(super) status: DigestStatus,
}

impl Digests {
    pub(super) fn new(manual: bool) -> Digests {
        Digests { manual, ..Default::default() }
    }
}

/// sha256 over everything a replica's state at `index` is made of.
pub fn compute(
    group: u64,
    index: u64,
    module: &waft_storage::ModuleHash,
    settings: &[u8],
    state: &[u8],
    sessions: &[u8],
) -> Digest {
    let mut h = Sha256::new();
    h.update(b"waft state digest v1\0");
    h.update(group.to_le_bytes());
    h.update(index.to_le_bytes());
    h.update(module.0);
    for part in [settings, state, sessions] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

pub(crate) fn hex(d: &Digest) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

impl Replica {
    /// What the digests say about this replica.
    pub fn digest_status(&self) -> &DigestStatus {
        &self.digests.status
    }

    /// Whether this replica is fenced (its state differs from the group's).
    pub fn fenced(&self) -> Option<&Fence> {
        self.digests.status.fence.as_ref()
    }

    /// Leave a fenced replica fenced for an operator (`manual`) instead of
    /// rebuilding it from a healthy replica's snapshot.
    pub fn set_manual_rebuild(&mut self, manual: bool) {
        self.digests.manual = manual;
    }

    /// Tests only: the guest's command at the first client entry at or
    /// after `index` is not run on this replica (its state then differs
    /// from the others', as a host bug or a bit flip would make it).
    #[doc(hidden)]
    pub fn inject_divergence(&mut self, index: u64) {
        self.diverge_at = Some((index, None));
    }

    /// Tests only: at the first client entry at or after `index`, this
    /// replica also runs `command` (its result goes nowhere), so its state
    /// differs from the others' in what that command changed.
    #[doc(hidden)]
    pub fn inject_extra_command(&mut self, index: u64, command: bytes::Bytes) {
        self.diverge_at = Some((index, Some(command)));
    }

    /// Refuses a read while fenced.
    pub(super) fn check_not_fenced(&self) -> Result<()> {
        match &self.digests.status.fence {
            Some(f) => Err(Error::Fenced { group: self.group, index: f.index }),
            None => Ok(()),
        }
    }

    /// At a digest point: checkpoints the state machine there, digests the
    /// state, and queues the report for the leader.
    pub(super) fn take_digest(&mut self, index: u64) -> Result<()> {
        // A kv state machine's store holds the state at `index` once this
        // batch is committed.
        self.commit_kv(index)?;
        let state = match self.sm.state_for_digest_begin() {
            Ok(state) => state,
            Err(e) if runtime_is_fatal(&e) => return Err(self.stop(e)),
            Err(e) => {
                tracing::warn!(group = self.group, index, error = %e, "no state digest: the state cannot be saved");
                return Ok(());
            }
        };
        // The rest is taken now; the state's bytes may come later.
        let sessions =
            self.sessions.encode_snapshot().map_err(|source| Error::Sessions { group: self.group, index, source })?;
        let pending =
            PendingDigest { index, state, module: self.module.hash(), settings: self.settings.encode(), sessions };
        self.digests.pending.push_back(pending);
        let wait_upto = match self.digests.pending.len() > DIGESTS_PENDING_MAX {
            true => self.digests.pending.front().map_or(0, |p| p.index),
            false => 0,
        };
        self.finish_digests(wait_upto);
        Ok(())
    }

    /// Digests the states saved since `take_digest` asked for them, in
    /// order; waits for those of indexes up to `wait_upto`.
    pub(super) fn finish_digests(&mut self, wait_upto: u64) {
        while let Some(p) = self.digests.pending.front() {
            let result = if p.index <= wait_upto { Some(p.state.wait()) } else { p.state.try_result() };
            let Some(result) = result else { return };
            let Some(p) = self.digests.pending.pop_front() else { return };
            match result {
                Ok(state) => {
                    let digest = compute(self.group, p.index, &p.module, &p.settings, &state, &p.sessions);
                    self.record_digest(p.index, digest);
                }
                Err(e) => {
                    // A state past its size limit is the same on every
                    // replica; a save that failed here only is a digest
                    // fewer: either way, nothing to compare.
                    tracing::warn!(group = self.group, index = p.index, error = %e, "no state digest: the state cannot be saved");
                }
            }
        }
    }

    fn record_digest(&mut self, index: u64, digest: Digest) {
        let d = &mut self.digests;
        d.own.insert(index, digest);
        while d.own.len() > DIGESTS_KEPT_MAX {
            d.own.pop_first();
        }
        d.status.latest = Some((index, digest));
        d.report_due = true;
        d.tally_due = true;
        tracing::debug!(group = self.group, index, digest = %hex(&digest), "state digest");
        if let Some((judged, group_digest, at)) = self.digests.verdict
            && judged == index
        {
            // The verdict came first (`apply_verdict`).
            self.judge(index, group_digest, at);
        }
    }

    /// Applies a verdict entry: fences this replica if its own digest of
    /// `index` differs from the group's.
    pub(super) fn apply_verdict(&mut self, at: u64, index: u64, digest: Digest) -> Outcome {
        self.finish_digests(0);
        if self.digests.verdict.is_some_and(|(i, _, _)| i >= index) {
            return Outcome::Done;
        }
        self.digests.verdict = Some((index, digest, at));
        if self.digests.pending.iter().any(|p| p.index == index) {
            // This replica's state at `index` is still being saved (its
            // saves run behind the others'): judged once it is
            // (`record_digest`), rather than the applies wait for it.
            tracing::debug!(group = self.group, index, at, "verdict on a digest still being taken; judged when it is");
        } else {
            self.judge(index, digest, at);
        }
        if self.node.role() == Role::Leader && self.digests.status.fence.is_none() {
            // Members that reported another digest of `index` are rebuilt.
            let differing: Vec<NodeId> = self
                .digests
                .reports
                .iter()
                .filter(|(_, r)| r.get(&index).is_some_and(|d| *d != digest))
                .map(|(&id, _)| id)
                .collect();
            for id in differing {
                self.digests.rebuild.entry(id).or_insert((at, None));
            }
            let reports = &self.digests.reports;
            self.digests.rebuild.retain(|id, _| reports.get(id).and_then(|r| r.get(&index)) != Some(&digest));
            self.offer_rebuilds();
        }
        Outcome::Done
    }

    /// Judges this replica's own digest of `index` against the group's
    /// (a verdict's).
    fn judge(&mut self, index: u64, digest: Digest, at: u64) {
        let group = self.group;
        match self.digests.own.get(&index).copied() {
            None => {
                // Restored from a snapshot past `index`, or a digest long
                // evicted or not taken: nothing of ours to judge.
                tracing::debug!(group, index, at, "verdict on a state this replica has no digest of");
            }
            Some(ours) if ours == digest => {
                let s = &mut self.digests.status;
                s.verified = s.verified.max(index);
            }
            Some(ours) if self.sole_voter() => {
                // No other replica to be rebuilt from, and fencing the only
                // voter would stop the group: said loudly, nothing more.
                // (Its state changed under it since the verdict's digest
                // was taken, e.g. by a restart that replayed the log.)
                self.digests.status.mismatches += 1;
                tracing::error!(group, index, ours = %hex(&ours), group_digest = %hex(&digest), "this sole voter's state differs from the digest the group recorded; nothing to rebuild it from");
            }
            Some(ours) => self.fence(index, ours, digest),
        }
    }

    /// Whether this replica is the group's only voter.
    pub(super) fn sole_voter(&self) -> bool {
        let conf = self.node.configuration();
        let me = self.node.id();
        conf.voters.iter().chain(&conf.voters_outgoing).all(|&v| v == me)
    }

    /// A fenced replica that membership changes left the group's only
    /// voter has nothing to be rebuilt from, and fenced it would stop the
    /// group for good: the fence lifts, loudly.
    pub(super) fn unfence_sole_voter(&mut self) {
        if self.digests.status.fence.is_none() || !self.sole_voter() {
            return;
        }
        let fence = self.digests.status.fence.take();
        self.node.set_fenced(false, false);
        tracing::error!(
            group = self.group,
            node = self.node.id(),
            fenced_at = fence.map(|f| f.index),
            "this fenced replica is now the group's only voter: nothing to rebuild it from, so it serves its own state"
        );
    }

    fn fence(&mut self, index: u64, ours: Digest, group_digest: Digest) {
        let group = self.group;
        tracing::error!(
            group,
            node = self.node.id(),
            index,
            ours = %hex(&ours),
            group_digest = %hex(&group_digest),
            manual = self.digests.manual,
            "this replica's state differs from the group's: fenced (no reads, no leadership, no snapshots)"
        );
        let s = &mut self.digests.status;
        s.mismatches += 1;
        if s.fence.is_none() {
            let why = format!("its state after entry {index} differs from the group's");
            s.fence = Some(Fence { index, ours, group: group_digest, why });
        }
        self.node.set_fenced(true, !self.digests.manual);
        self.digests.report_due = true;
        self.state_epoch += 1;
    }

    /// Fences this replica because it cannot follow the group at entry
    /// `index` (a module it cannot compile): its next digests differ from
    /// the group's, so the next verdict has the leader rebuild it.
    pub(super) fn fence_self(&mut self, index: u64, why: &str) {
        tracing::error!(group = self.group, node = self.node.id(), index, %why, "fenced: this replica cannot follow the group");
        let s = &mut self.digests.status;
        if s.fence.is_none() {
            s.fence = Some(Fence { index, ours: [0; 32], group: [0; 32], why: why.to_string() });
        }
        self.node.set_fenced(true, !self.digests.manual);
        self.state_epoch += 1;
    }

    /// A fenced replica's state was rebuilt from a healthy snapshot at
    /// `index`: the fence lifts, and its digests after it are taken anew.
    pub(super) fn rebuilt(&mut self, index: u64) {
        let d = &mut self.digests;
        // Digests of the state it had are worthless now; the log replayed
        // after the snapshot takes new ones.
        d.own.clear();
        d.status.latest = None;
        // Verdicts after the snapshot are judged again as the log replays.
        if d.verdict.is_some_and(|(i, _, _)| i > index) {
            d.verdict = None;
        }
        d.status.rebuilds += 1;
        let fence = d.status.fence.take();
        self.node.set_fenced(false, false);
        tracing::warn!(
            group = self.group,
            node = self.node.id(),
            snapshot = index,
            fenced_at = fence.map(|f| f.index),
            "state rebuilt from a healthy replica's snapshot: fence lifted; the log after it is applied again"
        );
    }

    /// Whether a fenced replica takes `snapshot` to rebuild from.
    pub(super) fn rebuilds_from(&self, snapshot: u64) -> bool {
        self.digests.status.fence.is_some() && !self.digests.manual && snapshot <= self.node.applied()
    }

    /// A digest report from `from` (its message is the host's, not the core's).
    pub(super) fn step_digest(&mut self, from: NodeId, index: u64, digest: Digest) {
        if self.node.role() != Role::Leader || !self.node.configuration().contains(from) {
            return;
        }
        let d = &mut self.digests;
        if d.reports.len() >= DIGEST_REPORTS_MAX && !d.reports.contains_key(&from) {
            return;
        }
        d.tally_due = true;
        let member = d.reports.entry(from).or_default();
        member.insert(index, digest);
        while member.len() > DIGEST_REPORTS_PER_MEMBER_MAX {
            member.pop_first();
        }
        match d.verdict {
            Some((i, v, at)) if i == index && v != digest => {
                // Still different: offer again (an offer it could not take,
                // being behind then, or one lost on the way).
                d.rebuild.insert(from, (at, None));
            }
            Some((i, v, _)) if i == index && v == digest => {
                d.rebuild.remove(&from);
            }
            _ => {}
        }
        self.offer_rebuilds();
        self.propose_verdict();
    }

    /// Leader: proposes a verdict for the newest index a majority of the
    /// voters reported the same digest of.
    pub(super) fn propose_verdict(&mut self) {
        // Called after every Ready: nothing to do unless a digest came in.
        if !self.digests.tally_due
            || self.node.role() != Role::Leader
            || self.settings_index == 0
            || self.digests.status.fence.is_some()
            || self.node.is_transferring()
        {
            return;
        }
        self.digests.tally_due = false;
        let term = self.node.term();
        let agreed = {
            let d = &self.digests;
            let judged = d.verdict.map_or(0, |(i, _, _)| i).max(if d.proposed.1 == term { d.proposed.0 } else { 0 });
            let conf = self.node.configuration();
            let me = self.node.id();
            let reported = |id: NodeId, index: u64| {
                if id == me { d.own.get(&index) } else { d.reports.get(&id).and_then(|r| r.get(&index)) }
            };
            let mut candidates: Vec<(u64, Digest)> = d
                .reports
                .values()
                .flat_map(|r| r.iter().map(|(&i, &d)| (i, d)))
                .chain(d.own.iter().map(|(&i, &d)| (i, d)))
                .filter(|(i, _)| *i > judged)
                .collect();
            candidates.sort_unstable_by(|a, b| b.cmp(a));
            candidates.dedup();
            candidates
                .into_iter()
                .find(|(index, digest)| waft_raft::quorum::is_quorum(conf, |id| reported(id, *index) == Some(digest)))
        };
        let Some((index, digest)) = agreed else { return };
        let verdict = Envelope::new(0, Body::Verdict { index, digest });
        match self.propose(&verdict) {
            Ok(_) => {
                self.digests.proposed = (index, term);
                tracing::debug!(group = self.group, index, digest = %hex(&digest), "proposed a state verdict");
            }
            Err(e) => {
                // Tried again after the next Ready.
                self.digests.tally_due = true;
                tracing::debug!(group = self.group, index, error = %e, "cannot propose a state verdict yet")
            }
        }
    }

    /// Leader: offers its latest snapshot to every member to rebuild, once
    /// per snapshot; asks for a snapshot first when the latest is older
    /// than the verdict that found the member different.
    pub(super) fn offer_rebuilds(&mut self) {
        if self.node.role() != Role::Leader || self.digests.status.fence.is_some() || self.digests.rebuild.is_empty() {
            return;
        }
        let snapshot = self.node.snapshot_meta().index;
        let mut want_snapshot = false;
        let targets: Vec<(NodeId, u64, Option<u64>)> =
            self.digests.rebuild.iter().map(|(&id, &(at, offered))| (id, at, offered)).collect();
        for (id, at, offered) in targets {
            // Not while a pull of an earlier offer may still run.
            let pulling = matches!(self.node.progress_of(id), Some((_, _, ProgressState::Snapshot { .. })));
            if snapshot < at {
                want_snapshot = true;
            } else if offered != Some(snapshot) && !pulling && self.node.send_snapshot(id) {
                tracing::warn!(
                    group = self.group,
                    node = id,
                    snapshot,
                    differs_at = at,
                    "offering a snapshot to rebuild a replica whose state differs"
                );
                self.digests.rebuild.insert(id, (at, Some(snapshot)));
            }
        }
        if want_snapshot {
            self.node.request_snapshot();
        }
    }

    /// Sends the latest own digest to the leader when due.
    pub(super) fn send_digest_report(&mut self, send: &mut dyn FnMut(Message)) {
        let Some((index, digest)) = self.digests.status.latest else { return };
        if !self.digests.report_due {
            return;
        }
        let Some(leader) = self.node.leader() else { return };
        self.digests.report_due = false;
        if leader == self.node.id() {
            return;
        }
        send(Message {
            from: self.node.id(),
            to: leader,
            term: self.node.term(),
            body: MessageBody::StateDigest { index, digest },
        });
    }

    /// Whether a digest report waits to go out.
    pub(super) fn digest_report_waiting(&self) -> bool {
        self.digests.report_due
            && self.digests.status.latest.is_some()
            && self.node.leader().is_some_and(|l| l != self.node.id())
    }

    /// Counts a tick: re-sends the latest digest now and then while it is
    /// not judged yet, or while fenced.
    pub(super) fn tick_digests(&mut self) {
        self.finish_digests(0);
        let d = &mut self.digests;
        d.ticks += 1;
        // A replica left fenced for an operator does not keep asking to be
        // rebuilt.
        let fenced = d.status.fence.is_some();
        if d.ticks.is_multiple_of(DIGEST_REPORT_EVERY_TICKS)
            && let Some((index, _)) = d.status.latest
            && !(fenced && d.manual)
            && (index > d.status.verified || fenced)
        {
            d.report_due = true;
        }
    }

    /// A role change: a new leader collects reports afresh.
    pub(super) fn digests_on_role(&mut self) {
        let d = &mut self.digests;
        d.reports.clear();
        d.rebuild.clear();
        d.report_due = true;
        d.tally_due = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_covers_every_part() {
        let m = waft_storage::ModuleHash([1; 32]);
        let base = compute(1, 64, &m, b"s", b"state", b"sessions");
        assert_eq!(base, compute(1, 64, &m, b"s", b"state", b"sessions"));
        for other in [
            compute(2, 64, &m, b"s", b"state", b"sessions"),
            compute(1, 128, &m, b"s", b"state", b"sessions"),
            compute(1, 64, &waft_storage::ModuleHash([2; 32]), b"s", b"state", b"sessions"),
            compute(1, 64, &m, b"t", b"state", b"sessions"),
            compute(1, 64, &m, b"s", b"statf", b"sessions"),
            compute(1, 64, &m, b"s", b"state", b"sessionz"),
            // Lengths are framed: moving a byte between parts changes it.
            compute(1, 64, &m, b"s", b"states", b"essions"),
        ] {
            assert_ne!(base, other);
        }
    }
}
