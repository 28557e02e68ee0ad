//! Static knobs of one node, all measured in ticks, entries, messages or bytes.
//! Owns validation of those knobs; must never hold runtime state.

use crate::types::NodeId;
use std::collections::BTreeMap;

/// SOFAJRaft election priority: `None`/-1 disables priority for the node, 0 means
/// "never stands for election", higher values stand first.
pub type Priority = i32;
pub const PRIORITY_DISABLED: Priority = -1;
pub const PRIORITY_NEVER: Priority = 0;

#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// Seeds the node's own PRNG (election timeout jitter). Distinct per node.
    pub seed: u64,
    /// Election timeout T in ticks; each round waits a random time in [T, 2T).
    pub election_ticks: u64,
    pub heartbeat_ticks: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// Limits of one append message.
    pub append_entries_max: usize,
    pub append_bytes_max: u64,
    /// Pipelining window per follower.
    pub inflight_msgs_max: usize,
    pub inflight_bytes_max: u64,
    /// Ask for a snapshot once this many applied entries follow the last one.
    pub snapshot_margin_entries: u64,
    /// A new voter is caught up when within this many entries of the leader.
    pub catchup_margin_entries: u64,
    /// Give up a configuration change whose new voters did not catch up in time.
    pub catchup_timeout_ticks: u64,
    /// Leader lease for lease-based reads. Must be shorter than `election_ticks`
    /// divided by the worst clock drift between nodes.
    pub lease_ticks: u64,
    /// The lease on the caller's monotonic clock (`RawNode::set_clock`), in
    /// ms, counted from when the confirming heartbeat round was sent: a
    /// lease read needs both this and `lease_ticks` to hold, so a process
    /// that stalls (its ticks stop while real time runs on) never extends a
    /// lease. Set it to `lease_ticks` ticks of real time less a drift margin
    /// wherever ticks can stall, i.e. in every real process. 0: counted in
    /// ticks alone, only for callers whose ticks never stall (simulations
    /// whose time is the tick).
    pub lease_ms: u64,
    /// Per-peer priorities; a missing peer is `PRIORITY_DISABLED`.
    pub priorities: BTreeMap<NodeId, Priority>,
    pub proposal_bytes_max: u64,
    /// The leader refuses proposals (Busy) beyond this many uncommitted entries.
    pub uncommitted_entries_max: u64,
    /// Committed entries handed out per Ready.
    pub apply_entries_max: usize,
    /// Reads waiting on the leader (confirmation or own-term commit).
    pub pending_reads_max: usize,
    /// Resend a snapshot to a follower that did not confirm it within this many ticks.
    pub snapshot_retry_ticks: u64,
    /// A leader whose group had nothing to do for this many ticks in a row
    /// (every member holds the whole log, nothing waits) quiesces it: one
    /// last heartbeat tells the followers, then no heartbeats and no
    /// election timers run until something happens (`RawNode::wake`). 0:
    /// never. A runtime that quiesces must wake a group's followers when
    /// they lose their leader's node.
    pub quiesce_after_ticks: u64,
}

impl Config {
    /// Sensible defaults for node `id` (10 ticks election, 1 tick heartbeat).
    pub fn new(id: NodeId, seed: u64) -> Config {
        Config {
            id,
            seed,
            election_ticks: 10,
            heartbeat_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            append_entries_max: 256,
            append_bytes_max: 1 << 20,
            inflight_msgs_max: 64,
            inflight_bytes_max: 8 << 20,
            snapshot_margin_entries: 10_000,
            catchup_margin_entries: 100,
            catchup_timeout_ticks: 100,
            lease_ticks: 5,
            lease_ms: 0,
            priorities: BTreeMap::new(),
            proposal_bytes_max: 1 << 20,
            uncommitted_entries_max: 50_000,
            apply_entries_max: 4096,
            pending_reads_max: 10_000,
            snapshot_retry_ticks: 50,
            quiesce_after_ticks: 0,
        }
    }

    pub fn priority_of(&self, id: NodeId) -> Priority {
        self.priorities.get(&id).copied().unwrap_or(PRIORITY_DISABLED)
    }

    pub fn validate(&self) -> Result<(), &'static str> {
        if self.id == crate::types::NONE {
            return Err("node id 0 is reserved");
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            return Err("election_ticks must exceed heartbeat_ticks, which must be > 0");
        }
        if self.lease_ticks >= self.election_ticks {
            return Err("lease_ticks must be shorter than election_ticks");
        }
        if self.append_entries_max == 0 || self.inflight_msgs_max == 0 || self.apply_entries_max == 0 {
            return Err("message, window and apply bounds must be > 0");
        }
        if self.snapshot_margin_entries == 0 || self.uncommitted_entries_max == 0 {
            return Err("snapshot margin and uncommitted bound must be > 0");
        }
        Ok(())
    }
}
