//! The leader's view of one follower: match/next indexes, the replication
//! state (probe, replicate, snapshot) and the bounded window of append
//! messages in flight. Pure bookkeeping; never decides what to send.

use std::collections::VecDeque;

/// Appends sent but not yet acknowledged, bounded in messages and bytes.
#[derive(Clone, Debug)]
pub struct Inflights {
    /// (last index carried by the message, its bytes), oldest first.
    queue: VecDeque<(u64, u64)>,
    bytes: u64,
    msgs_max: usize,
    bytes_max: u64,
}

impl Inflights {
    pub fn new(msgs_max: usize, bytes_max: u64) -> Self {
        assert!(msgs_max > 0);
        Inflights { queue: VecDeque::with_capacity(msgs_max), bytes: 0, msgs_max, bytes_max }
    }

    pub fn full(&self) -> bool {
        self.queue.len() >= self.msgs_max || self.bytes >= self.bytes_max
    }

    pub fn add(&mut self, last_index: u64, bytes: u64) {
        assert!(!self.full(), "inflight window overflow");
        debug_assert!(self.queue.back().is_none_or(|(i, _)| *i < last_index));
        self.queue.push_back((last_index, bytes));
        self.bytes += bytes;
    }

    /// Frees every message whose entries are all acknowledged (last index <= `index`).
    pub fn free_le(&mut self, index: u64) {
        while let Some(&(i, b)) = self.queue.front() {
            if i > index {
                break;
            }
            self.queue.pop_front();
            self.bytes -= b;
        }
    }

    pub fn free_first(&mut self) {
        if let Some((_, b)) = self.queue.pop_front() {
            self.bytes -= b;
        }
    }

    pub fn reset(&mut self) {
        self.queue.clear();
        self.bytes = 0;
    }

    pub fn count(&self) -> usize {
        self.queue.len()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Unknown match: send one append at a time and wait for its answer.
    Probe,
    /// Known match: stream appends optimistically inside the inflight window.
    Replicate,
    /// Follower needs the snapshot at `pending` before appends make sense.
    Snapshot { pending: u64 },
}

#[derive(Clone, Debug)]
pub struct Progress {
    /// Invariant: match_index < next_index.
    pub match_index: u64,
    pub next_index: u64,
    pub state: ProgressState,
    /// In Probe: an append is outstanding, wait for its answer or a heartbeat response.
    pub probe_sent: bool,
    pub inflights: Inflights,
    /// Heard from this peer since the last check-quorum round.
    pub recent_active: bool,
    /// Highest heartbeat round this peer acknowledged in the current term.
    pub acked_round: u64,
    /// Leader tick at which the round `acked_round` was sent (lease accounting).
    pub acked_tick: u64,
    /// The leader's clock reading (`RawNode::set_clock`) when that round was sent.
    pub acked_ms: u64,
    /// Ticks spent in the Snapshot state, to retry a lost install.
    pub snapshot_ticks: u64,
}

impl Progress {
    pub fn new(next_index: u64, msgs_max: usize, bytes_max: u64) -> Self {
        Progress {
            match_index: 0,
            next_index: next_index.max(1),
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: Inflights::new(msgs_max, bytes_max),
            recent_active: false,
            acked_round: 0,
            acked_tick: 0,
            acked_ms: 0,
            snapshot_ticks: 0,
        }
    }

    pub fn become_probe(&mut self) {
        if let ProgressState::Snapshot { pending } = self.state {
            self.next_index = (self.match_index + 1).max(pending + 1);
        } else {
            self.next_index = self.match_index + 1;
        }
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflights.reset();
    }

    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflights.reset();
    }

    pub fn become_snapshot(&mut self, pending: u64) {
        self.state = ProgressState::Snapshot { pending };
        self.probe_sent = false;
        self.snapshot_ticks = 0;
        self.inflights.reset();
    }

    /// Records an acknowledgement up to `n`; returns whether match advanced.
    pub fn maybe_update(&mut self, n: u64) -> bool {
        let updated = self.match_index < n;
        if updated {
            self.match_index = n;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(n + 1);
        updated
    }

    /// Forgets what the peer acknowledged beyond `holds` (it lost those
    /// entries) and probes from there.
    pub fn restart_from(&mut self, holds: u64) {
        self.match_index = holds.min(self.match_index);
        self.become_probe();
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
    }

    /// Handles a rejection of the append with `prev_index == rejected`; `hint` is the
    /// highest index the follower may share with us. Returns false for stale rejections.
    pub fn maybe_decr_to(&mut self, rejected: u64, hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.match_index {
                return false;
            }
            self.next_index = self.match_index + 1;
            return true;
        }
        if self.next_index == 0 || self.next_index - 1 != rejected {
            return false;
        }
        self.next_index = rejected.min(hint + 1).max(self.match_index + 1);
        self.probe_sent = false;
        true
    }

    /// Whether the leader must hold further appends to this peer.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// Bookkeeping after sending an append carrying entries up to `last` (`bytes` large).
    pub fn sent_append(&mut self, entries: usize, last: u64, bytes: u64) {
        match self.state {
            ProgressState::Replicate => {
                if entries > 0 {
                    self.next_index = last + 1;
                    self.inflights.add(last, bytes);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot { .. } => unreachable!("no appends in snapshot state"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflights_bounded_in_msgs_and_bytes() {
        let mut w = Inflights::new(3, 100);
        w.add(1, 10);
        w.add(2, 10);
        assert!(!w.full());
        w.add(5, 10);
        assert!(w.full());
        w.free_le(2);
        assert_eq!(w.count(), 1);
        assert!(!w.full());
        w.add(6, 95);
        assert!(w.full(), "byte bound reached");
        w.free_le(6);
        assert_eq!(w.count(), 0);
    }

    #[test]
    fn probe_and_replicate() {
        let mut p = Progress::new(11, 4, 1 << 20);
        assert!(!p.is_paused());
        p.sent_append(1, 11, 30);
        assert!(p.is_paused(), "probe waits for an answer");
        // Rejection of prev 10 with follower hint 4: jump straight to 5.
        assert!(p.maybe_decr_to(10, 4));
        assert_eq!(p.next_index, 5);
        assert!(!p.maybe_decr_to(10, 4), "stale rejection ignored");
        assert!(p.maybe_update(7));
        p.become_replicate();
        assert_eq!(p.next_index, 8);
        for last in [9, 11, 13, 15] {
            p.sent_append(2, last, 10);
        }
        assert!(p.is_paused(), "window full");
        assert_eq!(p.next_index, 16);
        p.maybe_update(11);
        p.inflights.free_le(11);
        assert!(!p.is_paused());
        assert!(!p.maybe_decr_to(10, 0), "rejection below match is stale");
        assert!(p.maybe_decr_to(13, 0));
        assert_eq!(p.next_index, 12);
    }

    #[test]
    fn snapshot_state_resumes_after_pending() {
        let mut p = Progress::new(3, 4, 1 << 20);
        p.become_snapshot(50);
        assert!(p.is_paused());
        p.maybe_update(50);
        p.become_probe();
        assert_eq!(p.next_index, 51);
    }
}
