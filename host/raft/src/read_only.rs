//! The leader's queue of linearizable reads: reads waiting for the leader's
//! first own-term commit, reads waiting for a heartbeat round to be confirmed by
//! a quorum, and the send tick of recent rounds (for the lease). Bounded; never
//! decides leadership itself.

use crate::types::NodeId;
use std::collections::VecDeque;

/// Rounds remembered for lease accounting; acks of older rounds are ignored (safe).
pub const ROUNDS_REMEMBERED_MAX: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    pub id: u64,
    /// The node that asked: the leader itself or a follower (follower read).
    pub from: NodeId,
    pub lease: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ReadOnly {
    /// Reads that arrived before the leader committed an entry of its term.
    pub waiting_commit: VecDeque<ReadRequest>,
    /// (request, read index, round that must be confirmed), rounds non-decreasing.
    pending: VecDeque<(ReadRequest, u64, u64)>,
    /// (round, leader tick and clock reading when sent), rounds increasing.
    rounds: VecDeque<(u64, u64, u64)>,
    /// Last round sent. Rounds restart at 0 each term.
    pub last_round: u64,
}

impl ReadOnly {
    pub fn len(&self) -> usize {
        self.waiting_commit.len() + self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a read at `index`, confirmed by the next round to be sent.
    pub fn add_pending(&mut self, req: ReadRequest, index: u64) {
        self.pending.push_back((req, index, self.last_round + 1));
    }

    /// True when some read waits for a round not yet sent.
    pub fn needs_round(&self) -> bool {
        self.pending.back().is_some_and(|(_, _, r)| *r > self.last_round)
    }

    /// True while a round carrying reads is sent but not yet confirmed; reads
    /// arriving meanwhile wait for the next round instead of starting their own.
    pub fn round_in_flight(&self) -> bool {
        self.pending.front().is_some_and(|(_, _, r)| *r <= self.last_round)
    }

    /// Starts a new round at `tick` and clock reading `clock_ms`; returns its number.
    pub fn start_round(&mut self, tick: u64, clock_ms: u64) -> u64 {
        self.last_round += 1;
        if self.rounds.len() == ROUNDS_REMEMBERED_MAX {
            self.rounds.pop_front();
        }
        self.rounds.push_back((self.last_round, tick, clock_ms));
        self.last_round
    }

    /// The tick and clock reading round `round` was sent at, while remembered.
    pub fn round_sent(&self, round: u64) -> Option<(u64, u64)> {
        let first = self.rounds.front()?.0;
        let (r, t, ms) = *self.rounds.get(round.checked_sub(first)? as usize)?;
        debug_assert_eq!(r, round);
        Some((t, ms))
    }

    /// Releases every read whose round a quorum has acknowledged.
    pub fn confirm(&mut self, quorum_round: u64) -> Vec<(ReadRequest, u64)> {
        let mut out = Vec::new();
        while let Some(&(req, index, round)) = self.pending.front() {
            if round > quorum_round {
                break;
            }
            self.pending.pop_front();
            out.push((req, index));
        }
        out
    }

    /// Forgets when recent rounds were sent: acks of them count for
    /// nothing (a leader waking from quiescence).
    pub fn forget_rounds(&mut self) {
        self.rounds.clear();
    }

    pub fn reset(&mut self) {
        *self = ReadOnly::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: u64) -> ReadRequest {
        ReadRequest { id, from: 1, lease: false }
    }

    #[test]
    fn one_round_confirms_many_reads() {
        let mut q = ReadOnly::default();
        q.add_pending(req(1), 5);
        q.add_pending(req(2), 6);
        assert!(q.needs_round());
        assert_eq!(q.start_round(100, 7), 1);
        assert!(!q.needs_round());
        q.add_pending(req(3), 7);
        assert!(q.confirm(0).is_empty());
        assert_eq!(q.confirm(1), vec![(req(1), 5), (req(2), 6)]);
        assert_eq!(q.start_round(101, 8), 2);
        assert_eq!(q.confirm(2), vec![(req(3), 7)]);
        assert!(q.is_empty());
        assert_eq!(q.round_sent(1), Some((100, 7)));
        assert_eq!(q.round_sent(9), None);
    }

    #[test]
    fn round_memory_is_bounded() {
        let mut q = ReadOnly::default();
        for t in 0..(ROUNDS_REMEMBERED_MAX as u64 + 10) {
            q.start_round(t, t * 10);
        }
        assert_eq!(q.round_sent(1), None);
        assert_eq!(q.round_sent(q.last_round).map(|(t, _)| t), Some(ROUNDS_REMEMBERED_MAX as u64 + 9));
    }
}
