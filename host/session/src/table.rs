//! The replicated session table: which client sessions are open, which of
//! their commands have applied, and the replies a retry must get instead of a
//! second application.
//!
//! Owns the deduplication, window, expiry and limit rules. Every replica feeds
//! it the same envelopes in log order and so holds the same table; it must
//! therefore never read a clock, iterate a hash map or depend on anything but
//! the entries (and the [`SessionConfig`], which must be equal on every replica).

use crate::envelope::{Body, Envelope};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Limits of one group's session table. Must be equal on every replica of
/// the group (a snapshot carries them, and a replica with other limits refuses it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Open sessions at most. A registration beyond it is refused
    /// ([`SessionError::TableFull`]); no open session is ever evicted for it.
    pub sessions_open_max: u64,
    /// Commands a session may have outstanding: a command is accepted only
    /// if `seq < lowest_unacked_seq + window_commands_max`.
    pub window_commands_max: u64,
    /// A session with no entry for longer than this (by the leader
    /// timestamps in entries) expires.
    pub session_idle_timeout_ms: u64,
    /// Saved reply bytes per session and for the whole table. A reply that
    /// would cross either bound is not kept: its command still applies once,
    /// and a retry is told the reply was discarded.
    pub reply_bytes_per_session_max: u64,
    pub reply_bytes_total_max: u64,
}

/// Defaults sized for a group serving a few thousand clients.
pub const SESSIONS_OPEN_MAX_DEFAULT: u64 = 10_000;
pub const WINDOW_COMMANDS_MAX_DEFAULT: u64 = 128;
pub const SESSION_IDLE_TIMEOUT_MS_DEFAULT: u64 = 10 * 60 * 1000;
pub const REPLY_BYTES_PER_SESSION_MAX_DEFAULT: u64 = 1 << 20;
pub const REPLY_BYTES_TOTAL_MAX_DEFAULT: u64 = 64 << 20;

/// Absolute ceilings on the limits, so a snapshot's declared limits cannot
/// make a decoder allocate without bound.
pub const SESSIONS_OPEN_MAX_CEILING: u64 = 1 << 24;
pub const WINDOW_COMMANDS_MAX_CEILING: u64 = 1 << 16;
pub const REPLY_BYTES_TOTAL_MAX_CEILING: u64 = 1 << 34;

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            sessions_open_max: SESSIONS_OPEN_MAX_DEFAULT,
            window_commands_max: WINDOW_COMMANDS_MAX_DEFAULT,
            session_idle_timeout_ms: SESSION_IDLE_TIMEOUT_MS_DEFAULT,
            reply_bytes_per_session_max: REPLY_BYTES_PER_SESSION_MAX_DEFAULT,
            reply_bytes_total_max: REPLY_BYTES_TOTAL_MAX_DEFAULT,
        }
    }
}

impl SessionConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what| Err(ConfigError(what));
        if self.sessions_open_max == 0 || self.sessions_open_max > SESSIONS_OPEN_MAX_CEILING {
            return bad("sessions_open_max must be in 1..=2^24");
        }
        if self.window_commands_max == 0 || self.window_commands_max > WINDOW_COMMANDS_MAX_CEILING {
            return bad("window_commands_max must be in 1..=2^16");
        }
        if self.session_idle_timeout_ms == 0 {
            return bad("session_idle_timeout_ms must be > 0");
        }
        if self.reply_bytes_total_max > REPLY_BYTES_TOTAL_MAX_CEILING {
            return bad("reply_bytes_total_max must be at most 2^34 (16 GiB)");
        }
        if self.reply_bytes_per_session_max > self.reply_bytes_total_max {
            return bad("reply_bytes_per_session_max must not exceed reply_bytes_total_max");
        }
        Ok(())
    }
}

/// A session limit that makes no sense.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid session configuration: {0}")]
pub struct ConfigError(pub &'static str);

/// Why the table refused an entry. The refusal is itself replicated: every
/// replica refuses the same entry with the same error, and the guest never
/// sees the entry. Each message says what the client should do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error(
        "session {session_id} is unknown or expired (closed, or idle longer than the group's session timeout); \
         open a new session. Commands of the old session that got no reply may or may not have applied"
    )]
    UnknownOrExpired { session_id: u64 },
    #[error(
        "command {seq} of session {session_id} is below the session's window (the client acknowledged every \
         reply below {lowest_unacked_seq}); this late copy was not applied"
    )]
    Stale { session_id: u64, seq: u64, lowest_unacked_seq: u64 },
    #[error(
        "command {seq} of session {session_id} applied once, but its reply was not kept (saved replies are \
         bounded in bytes); read the state to learn its effect"
    )]
    ReplyDiscarded { session_id: u64, seq: u64 },
    #[error(
        "command {seq} of session {session_id} is beyond the session's window of {window_commands_max} \
         outstanding commands (lowest unacknowledged: {lowest_unacked_seq}); wait for earlier replies, then retry"
    )]
    WindowFull { session_id: u64, seq: u64, lowest_unacked_seq: u64, window_commands_max: u64 },
    #[error(
        "the group's session table is full ({sessions_open_max} open sessions); retry later, close unused \
         sessions, or raise sessions_open_max on every replica"
    )]
    TableFull { sessions_open_max: u64 },
}

/// What the host must do with one applied envelope.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Give `payload` to the guest. For a session command, `ticket` is set:
    /// pass it, with the guest's reply, to [`SessionTable::record_reply`].
    Apply { payload: Bytes, ticket: Option<Ticket> },
    /// A session is open: answer the client with `session_id`.
    Registered { session_id: u64 },
    /// The command applied before: answer with its saved reply, skip the guest.
    Duplicate { reply: Bytes },
    /// The command applied earlier in the current batch and its reply is not
    /// settled yet: answer with the reply the guest gives (or gave) the entry
    /// at `original_index`, and skip the guest for this one.
    DuplicateInFlight { original_index: u64 },
    /// A keep-alive or close took effect; answer with success.
    Done,
    /// Answer with this error; skip the guest.
    Refused(SessionError),
}

/// Proof that a command was accepted for application, to hand back with its reply.
#[must_use = "record the guest's reply with SessionTable::record_reply"]
#[derive(Debug, PartialEq, Eq)]
pub struct Ticket {
    session_id: u64,
    seq: u64,
    index: u64,
}

impl Ticket {
    pub fn session_id(&self) -> u64 {
        self.session_id
    }
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// The log index of the entry the guest applies.
    pub fn index(&self) -> u64 {
        self.index
    }
}

/// What a duplicate of an applied command gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Saved {
    /// Accepted at `index`; its reply is not settled yet (see [`Ledger`]).
    Pending {
        index: u64,
    },
    Reply(Bytes),
    /// Applied, but the reply crossed a byte bound and was dropped.
    Discarded,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Session {
    /// Table time of the session's last entry. Invariant: `<= now_ms`.
    pub(crate) last_active_ms: u64,
    pub(crate) nonce: Option<u128>,
    /// Invariant: `>= 1`, never decreases.
    pub(crate) lowest_unacked_seq: u64,
    /// Applied commands still inside the window. Invariant: every key is in
    /// `lowest_unacked_seq .. lowest_unacked_seq + window_commands_max`.
    pub(crate) applied: BTreeMap<u64, Saved>,
}

impl Session {
    pub(crate) fn new(now_ms: u64, nonce: Option<u128>) -> Session {
        Session { last_active_ms: now_ms, nonce, lowest_unacked_seq: 1, applied: BTreeMap::new() }
    }
}

/// A change to the saved-reply bytes, in log order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    /// A command was accepted; its reply is kept if it fits at this point.
    Accepted { session_id: u64, seq: u64 },
    /// A slot left the table (acknowledged, or its session closed or expired).
    Dropped { session_id: u64, seq: u64 },
}

/// The saved-reply byte accounting. Whether a reply fits under the bounds
/// depends on which other replies are saved at that point of the log, and a
/// host records replies only after the guest ran its batch, by which time
/// later entries of the batch may already have dropped slots. Replicas batch
/// differently, so deciding at record time would make them keep different
/// replies. The ledger therefore replays acceptances and drops in log order
/// and decides each reply at its acceptance, as if every reply were recorded
/// the moment its command applied: the same on every replica, whatever the batches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ledger {
    /// Events not settled yet, oldest first: from the oldest acceptance whose
    /// reply is missing. Empty whenever no reply is pending; bounded by one
    /// apply batch (an entry adds at most one acceptance and a window of drops).
    journal: VecDeque<Event>,
    /// Accepted commands whose reply is not recorded yet.
    pending: u64,
    /// Replies recorded while an earlier one is still missing.
    recorded: BTreeMap<(u64, u64), Bytes>,
    /// Saved reply sizes, per slot and per session, as of the settled point.
    /// Invariant (when settled): they match the `Saved::Reply` slots.
    sizes: BTreeMap<(u64, u64), u64>,
    per_session: BTreeMap<u64, u64>,
    total: u64,
}

/// The session table of one group. See the crate docs for the apply protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionTable {
    pub(crate) cfg: SessionConfig,
    /// The largest timestamp of any applied envelope: time never runs
    /// backwards, even when a new leader's clock lags the old one's.
    pub(crate) now_ms: u64,
    /// The index of the last envelope applied. Invariant: strictly increases.
    pub(crate) last_index: u64,
    /// Session id (its Register entry's index) -> session.
    pub(crate) sessions: BTreeMap<u64, Session>,
    /// (last_active_ms, id) of every session, oldest first, for expiry.
    pub(crate) by_activity: BTreeSet<(u64, u64)>,
    /// Nonce -> id of the open session registered with it.
    pub(crate) nonces: BTreeMap<u128, u64>,
    pub(crate) ledger: Ledger,
    /// What changed since the last `take_changes`, when tracking (see
    /// `records`).
    pub(crate) dirty: Option<Box<crate::records::Dirty>>,
}

impl SessionTable {
    pub fn new(cfg: SessionConfig) -> Result<SessionTable, ConfigError> {
        cfg.validate()?;
        Ok(SessionTable {
            cfg,
            now_ms: 0,
            last_index: 0,
            sessions: BTreeMap::new(),
            by_activity: BTreeSet::new(),
            nonces: BTreeMap::new(),
            ledger: Ledger::default(),
            dirty: None,
        })
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// Adopts new limits, as a replicated settings change does at its entry.
    /// Sessions idle past a lowered timeout expire at once (by table time,
    /// so on every replica alike). Refused, changing nothing, when `cfg` is
    /// invalid or the table as it stands would break it (more open sessions
    /// than the new maximum, saved replies over a lowered byte bound or
    /// outside a narrowed window). Call it between batches (no reply
    /// pending). Costs a copy of the table and a walk over it.
    pub fn set_config(&mut self, cfg: SessionConfig) -> Result<(), ConfigError> {
        cfg.validate()?;
        if cfg == self.cfg {
            return Ok(());
        }
        let mut next = self.clone();
        next.cfg = cfg;
        next.advance_clock(next.now_ms);
        next.check_invariants().map_err(ConfigError)?;
        *self = next;
        Ok(())
    }

    /// Table time: the largest leader timestamp applied so far.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The index of the last envelope applied (0 before any).
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    pub fn sessions_open(&self) -> u64 {
        self.sessions.len() as u64
    }

    pub fn is_open(&self, session_id: u64) -> bool {
        self.sessions.contains_key(&session_id)
    }

    /// Saved reply bytes (as of the last settled reply).
    pub fn reply_bytes(&self) -> u64 {
        self.ledger.total
    }

    /// Commands accepted whose replies are not recorded yet.
    pub fn replies_pending(&self) -> u64 {
        self.ledger.pending
    }

    /// Applies the session side of the envelope committed at `index`. Call it
    /// for every client envelope, in log order, before the guest sees the
    /// entry; act on the [`Verdict`]. Idle sessions expire first, by the
    /// envelope's timestamp.
    ///
    /// Panics if `index` does not exceed the last index applied: replaying
    /// an entry would apply it twice, which this table exists to prevent.
    pub fn apply(&mut self, index: u64, envelope: Envelope) -> Verdict {
        assert!(index > self.last_index, "session table: entry {index} applied after entry {}", self.last_index);
        self.last_index = index;
        self.advance_clock(envelope.timestamp_ms);
        let verdict = match envelope.body {
            Body::Plain { payload } => Verdict::Apply { payload, ticket: None },
            Body::Register { nonce } => self.register(index, nonce),
            Body::Command { session_id, seq, lowest_unacked_seq, payload } => {
                self.command(index, session_id, seq, lowest_unacked_seq, payload)
            }
            Body::KeepAlive { session_id, lowest_unacked_seq } => match self.touch(session_id) {
                Err(e) => Verdict::Refused(e),
                Ok(()) => {
                    self.acknowledge(session_id, lowest_unacked_seq);
                    Verdict::Done
                }
            },
            Body::Unregister { session_id } => match self.touch(session_id) {
                Err(e) => Verdict::Refused(e),
                Ok(()) => {
                    self.remove(session_id);
                    Verdict::Done
                }
            },
            // The host applies a deploy itself and never hands it here; a
            // table given one only takes its place in the log and its clock.
            Body::Deploy { .. }
            | Body::Settings { .. }
            | Body::Found { .. }
            | Body::Verdict { .. }
            | Body::DeployHash { .. } => Verdict::Done,
        };
        self.settle();
        verdict
    }

    /// Hands in the guest's reply to an accepted command (success or error,
    /// encoded by the host, so a retry sees the same outcome). Every ticket of
    /// a batch must come back before the next batch applies; any order works.
    /// Whether the reply is kept is decided at the command's place in the log.
    pub fn record_reply(&mut self, ticket: Ticket, reply: Bytes) {
        let key = (ticket.session_id, ticket.seq);
        let l = &mut self.ledger;
        assert!(l.pending > 0, "session {} command {}: a reply nobody waits for", key.0, key.1);
        let prev = l.recorded.insert(key, reply);
        assert!(prev.is_none(), "session {} command {}: reply recorded twice", key.0, key.1);
        l.pending -= 1;
        self.settle();
    }

    /// Replays the journal up to the first acceptance whose reply is missing.
    fn settle(&mut self) {
        let l = &mut self.ledger;
        while let Some(&event) = l.journal.front() {
            match event {
                Event::Dropped { session_id, seq } => {
                    if let Some(n) = l.sizes.remove(&(session_id, seq)) {
                        l.total -= n;
                        let s = l.per_session.get_mut(&session_id).expect("sized slots are counted");
                        *s -= n;
                        if *s == 0 {
                            l.per_session.remove(&session_id);
                        }
                    }
                }
                Event::Accepted { session_id, seq } => {
                    let Some(reply) = l.recorded.remove(&(session_id, seq)) else {
                        break;
                    };
                    let n = reply.len() as u64;
                    let session_bytes = l.per_session.get(&session_id).copied().unwrap_or(0);
                    let fits = session_bytes + n <= self.cfg.reply_bytes_per_session_max
                        && l.total + n <= self.cfg.reply_bytes_total_max;
                    let saved = if fits {
                        if n > 0 {
                            l.sizes.insert((session_id, seq), n);
                            *l.per_session.entry(session_id).or_insert(0) += n;
                            l.total += n;
                        }
                        Saved::Reply(reply)
                    } else {
                        Saved::Discarded
                    };
                    // The slot may be gone already; its drop follows in the journal.
                    if let Some(slot) = self.sessions.get_mut(&session_id).and_then(|s| s.applied.get_mut(&seq)) {
                        debug_assert!(matches!(slot, Saved::Pending { .. }));
                        *slot = saved;
                        if let Some(d) = &mut self.dirty {
                            d.mark_slot(session_id, seq);
                        }
                    }
                }
            }
            l.journal.pop_front();
        }
        debug_assert!(l.pending > 0 || (l.journal.is_empty() && l.recorded.is_empty()));
    }

    fn advance_clock(&mut self, timestamp_ms: u64) {
        self.now_ms = self.now_ms.max(timestamp_ms);
        // Bounded by the number of open sessions.
        while let Some(&(last_active_ms, id)) = self.by_activity.first() {
            if self.now_ms - last_active_ms <= self.cfg.session_idle_timeout_ms {
                break;
            }
            self.remove(id);
        }
    }

    fn register(&mut self, index: u64, nonce: Option<u128>) -> Verdict {
        if let Some(n) = nonce
            && let Some(&session_id) = self.nonces.get(&n)
        {
            self.touch(session_id).expect("a nonce names an open session");
            return Verdict::Registered { session_id };
        }
        if self.sessions_open() >= self.cfg.sessions_open_max {
            return Verdict::Refused(SessionError::TableFull { sessions_open_max: self.cfg.sessions_open_max });
        }
        let prev = self.sessions.insert(index, Session::new(self.now_ms, nonce));
        assert!(prev.is_none(), "session ids are unique log indexes");
        self.mark_session(index);
        self.by_activity.insert((self.now_ms, index));
        if let Some(n) = nonce {
            self.nonces.insert(n, index);
        }
        Verdict::Registered { session_id: index }
    }

    fn command(&mut self, index: u64, session_id: u64, seq: u64, lowest_unacked_seq: u64, payload: Bytes) -> Verdict {
        if let Err(e) = self.touch(session_id) {
            return Verdict::Refused(e);
        }
        self.acknowledge(session_id, lowest_unacked_seq);
        let window_commands_max = self.cfg.window_commands_max;
        let s = self.sessions.get_mut(&session_id).expect("touched above");
        if seq < s.lowest_unacked_seq {
            return Verdict::Refused(SessionError::Stale { session_id, seq, lowest_unacked_seq: s.lowest_unacked_seq });
        }
        match s.applied.get(&seq) {
            Some(Saved::Reply(reply)) => return Verdict::Duplicate { reply: reply.clone() },
            Some(&Saved::Pending { index }) => return Verdict::DuplicateInFlight { original_index: index },
            Some(Saved::Discarded) => return Verdict::Refused(SessionError::ReplyDiscarded { session_id, seq }),
            None => {}
        }
        if seq - s.lowest_unacked_seq >= window_commands_max {
            return Verdict::Refused(SessionError::WindowFull {
                session_id,
                seq,
                lowest_unacked_seq: s.lowest_unacked_seq,
                window_commands_max,
            });
        }
        s.applied.insert(seq, Saved::Pending { index });
        self.mark_slot(session_id, seq);
        self.ledger.journal.push_back(Event::Accepted { session_id, seq });
        self.ledger.pending += 1;
        Verdict::Apply { payload, ticket: Some(Ticket { session_id, seq, index }) }
    }

    /// Marks an open session active now.
    fn touch(&mut self, session_id: u64) -> Result<(), SessionError> {
        let Some(s) = self.sessions.get_mut(&session_id) else {
            return Err(SessionError::UnknownOrExpired { session_id });
        };
        let removed = self.by_activity.remove(&(s.last_active_ms, session_id));
        debug_assert!(removed, "by_activity tracks every session");
        s.last_active_ms = self.now_ms;
        self.by_activity.insert((self.now_ms, session_id));
        self.mark_session(session_id);
        Ok(())
    }

    /// The client holds every reply below `lowest_unacked_seq`: drop them.
    fn acknowledge(&mut self, session_id: u64, lowest_unacked_seq: u64) {
        let s = self.sessions.get_mut(&session_id).expect("open session");
        if lowest_unacked_seq <= s.lowest_unacked_seq {
            return;
        }
        s.lowest_unacked_seq = lowest_unacked_seq;
        let kept = s.applied.split_off(&lowest_unacked_seq);
        let dropped = std::mem::replace(&mut s.applied, kept);
        for &seq in dropped.keys() {
            self.ledger.journal.push_back(Event::Dropped { session_id, seq });
            self.mark_slot(session_id, seq);
        }
        self.mark_session(session_id);
    }

    fn remove(&mut self, session_id: u64) {
        let Some(s) = self.sessions.remove(&session_id) else {
            return;
        };
        self.by_activity.remove(&(s.last_active_ms, session_id));
        if let Some(n) = s.nonce {
            self.nonces.remove(&n);
        }
        for &seq in s.applied.keys() {
            self.ledger.journal.push_back(Event::Dropped { session_id, seq });
            self.mark_slot(session_id, seq);
        }
        self.mark_session(session_id);
    }

    /// Rebuilds the byte ledger from saved replies (after a snapshot decode).
    pub(crate) fn rebuild_ledger(&mut self) {
        let mut l = Ledger::default();
        for (&id, s) in &self.sessions {
            for (&seq, saved) in &s.applied {
                if let Saved::Reply(r) = saved
                    && !r.is_empty()
                {
                    let n = r.len() as u64;
                    l.sizes.insert((id, seq), n);
                    *l.per_session.entry(id).or_insert(0) += n;
                    l.total = l.total.saturating_add(n);
                }
            }
        }
        self.ledger = l;
    }

    /// Checks every structural invariant; for tests, simulators and snapshot
    /// decoding. Costs a walk over every session and saved reply.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        if self.by_activity.len() != self.sessions.len() {
            return Err("activity index out of step with the sessions");
        }
        if self.sessions_open() > self.cfg.sessions_open_max {
            return Err("more open sessions than sessions_open_max");
        }
        let mut nonces = 0;
        let mut pending = 0u64;
        for (&id, s) in &self.sessions {
            if id == 0 || id > self.last_index {
                return Err("session id is not an applied index");
            }
            if s.last_active_ms > self.now_ms {
                return Err("session active after table time");
            }
            if self.now_ms - s.last_active_ms > self.cfg.session_idle_timeout_ms {
                return Err("an expired session is still open");
            }
            if !self.by_activity.contains(&(s.last_active_ms, id)) {
                return Err("activity index out of step with the sessions");
            }
            if let Some(n) = s.nonce {
                nonces += 1;
                if self.nonces.get(&n) != Some(&id) {
                    return Err("nonce index out of step with the sessions");
                }
            }
            if s.lowest_unacked_seq == 0 {
                return Err("sequence numbers start at 1");
            }
            let window_end = s.lowest_unacked_seq.saturating_add(self.cfg.window_commands_max);
            if s.applied.keys().any(|&q| q < s.lowest_unacked_seq || q >= window_end) {
                return Err("a saved reply outside its session's window");
            }
            pending += s.applied.values().filter(|v| matches!(v, Saved::Pending { .. })).count() as u64;
        }
        if nonces != self.nonces.len() {
            return Err("nonce index out of step with the sessions");
        }
        let l = &self.ledger;
        if l.total > self.cfg.reply_bytes_total_max
            || l.per_session.values().any(|&n| n > self.cfg.reply_bytes_per_session_max)
        {
            return Err("saved reply bytes over their bound");
        }
        if l.pending > 0 {
            // Mid-batch: the ledger lags the slots until the missing replies arrive.
            return Ok(());
        }
        if pending > 0 || !l.journal.is_empty() || !l.recorded.is_empty() {
            return Err("replies pending with none expected");
        }
        let mut settled = self.clone();
        settled.rebuild_ledger();
        if settled.ledger != *l {
            return Err("saved reply bytes miscounted");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SessionConfig {
        SessionConfig {
            sessions_open_max: 3,
            window_commands_max: 4,
            session_idle_timeout_ms: 1_000,
            reply_bytes_per_session_max: 10,
            reply_bytes_total_max: 16,
        }
    }

    fn table() -> SessionTable {
        SessionTable::new(cfg()).unwrap()
    }

    fn env(ts: u64, body: Body) -> Envelope {
        Envelope::new(ts, body)
    }

    fn register(t: &mut SessionTable, index: u64, ts: u64, nonce: Option<u128>) -> Verdict {
        t.apply(index, env(ts, Body::Register { nonce }))
    }

    fn cmd(t: &mut SessionTable, index: u64, ts: u64, sid: u64, seq: u64, low: u64) -> Verdict {
        let payload = Bytes::from(format!("c{seq}"));
        t.apply(index, env(ts, Body::Command { session_id: sid, seq, lowest_unacked_seq: low, payload }))
    }

    /// Applies a fresh command and records `reply` for it.
    fn fresh(t: &mut SessionTable, index: u64, ts: u64, sid: u64, seq: u64, low: u64, reply: &str) {
        match cmd(t, index, ts, sid, seq, low) {
            Verdict::Apply { ticket: Some(ticket), .. } => t.record_reply(ticket, Bytes::from(reply.to_owned())),
            v => panic!("expected a fresh command, got {v:?}"),
        }
        t.check_invariants().unwrap();
    }

    fn dup(reply: &str) -> Verdict {
        Verdict::Duplicate { reply: Bytes::from(reply.to_owned()) }
    }

    #[test]
    fn set_config_refuses_what_the_table_breaks_and_expires_at_table_time() {
        let mut t = table();
        register(&mut t, 1, 0, None);
        register(&mut t, 2, 500, None);
        fresh(&mut t, 3, 900, 2, 1, 1, "12345678");
        let before = t.clone();
        // Fewer open sessions than are open, or fewer reply bytes than are
        // saved, is refused and changes nothing.
        assert!(t.set_config(SessionConfig { sessions_open_max: 1, ..cfg() }).is_err());
        assert!(t.set_config(SessionConfig { reply_bytes_per_session_max: 4, ..cfg() }).is_err());
        assert!(t.set_config(SessionConfig { window_commands_max: 0, ..cfg() }).is_err());
        assert_eq!(t, before);
        // Raising a bound is taken as is.
        t.set_config(SessionConfig { sessions_open_max: 5, ..cfg() }).unwrap();
        assert_eq!(register(&mut t, 4, 900, None), Verdict::Registered { session_id: 4 });
        // A shorter idle timeout expires, by table time (900), the session
        // last active at 0 and keeps those active at 500 and 900.
        t.set_config(SessionConfig { sessions_open_max: 5, session_idle_timeout_ms: 600, ..cfg() }).unwrap();
        assert!(!t.is_open(1));
        assert!(t.is_open(2) && t.is_open(4));
        t.check_invariants().unwrap();
    }

    #[test]
    fn session_ids_are_register_indexes_and_a_nonce_returns_its_session() {
        let mut t = table();
        assert_eq!(register(&mut t, 3, 0, Some(42)), Verdict::Registered { session_id: 3 });
        assert_eq!(register(&mut t, 4, 0, None), Verdict::Registered { session_id: 4 });
        // A retried registration (same nonce) gets the open session, not a new one.
        assert_eq!(register(&mut t, 7, 0, Some(42)), Verdict::Registered { session_id: 3 });
        assert_eq!(t.sessions_open(), 2);
        t.check_invariants().unwrap();
    }

    #[test]
    fn a_command_applies_once_and_its_retries_get_the_saved_reply() {
        let mut t = table();
        register(&mut t, 1, 0, None);
        fresh(&mut t, 2, 0, 1, 1, 1, "r1");
        assert_eq!(cmd(&mut t, 3, 0, 1, 1, 1), dup("r1"));
        assert_eq!(cmd(&mut t, 9, 5, 1, 1, 1), dup("r1"));
    }

    #[test]
    fn a_copy_in_the_same_batch_points_at_the_original() {
        let mut t = table();
        register(&mut t, 1, 0, None);
        let Verdict::Apply { ticket: Some(ticket), .. } = cmd(&mut t, 2, 0, 1, 1, 1) else {
            panic!("fresh");
        };
        assert_eq!(t.replies_pending(), 1);
        assert_eq!(cmd(&mut t, 3, 0, 1, 1, 1), Verdict::DuplicateInFlight { original_index: 2 });
        assert!(matches!(t.encode_snapshot(), Err(crate::SnapshotError::RepliesPending(1))));
        t.record_reply(ticket, Bytes::from_static(b"r1"));
        assert_eq!(cmd(&mut t, 4, 0, 1, 1, 1), dup("r1"));
        t.check_invariants().unwrap();
    }

    #[test]
    fn commands_apply_once_each_in_any_order_inside_the_window() {
        let mut t = table();
        register(&mut t, 1, 0, None);
        fresh(&mut t, 2, 0, 1, 3, 1, "r3");
        fresh(&mut t, 3, 0, 1, 1, 1, "r1");
        assert_eq!(cmd(&mut t, 4, 0, 1, 3, 1), dup("r3"));
        fresh(&mut t, 5, 0, 1, 2, 1, "r2");
        assert_eq!(cmd(&mut t, 6, 0, 1, 1, 1), dup("r1"));
    }

    #[test]
    fn acknowledged_replies_are_dropped_and_their_late_copies_refused() {
        let mut t = table();
        register(&mut t, 1, 0, None);
        fresh(&mut t, 2, 0, 1, 1, 1, "r1");
        fresh(&mut t, 3, 0, 1, 2, 1, "r2");
        assert_eq!(t.reply_bytes(), 4);
        // Seq 3 says the client holds every reply below 3.
        fresh(&mut t, 4, 0, 1, 3, 3, "r3");
        assert_eq!(t.reply_bytes(), 2);
        assert_eq!(
            cmd(&mut t, 5, 0, 1, 1, 1),
            Verdict::Refused(SessionError::Stale { session_id: 1, seq: 1, lowest_unacked_seq: 3 })
        );
        // A late keep-alive cannot move the window back.
        t.apply(6, env(0, Body::KeepAlive { session_id: 1, lowest_unacked_seq: 1 }));
        assert!(matches!(cmd(&mut t, 7, 0, 1, 2, 2), Verdict::Refused(SessionError::Stale { .. })));
        // A keep-alive acknowledges too.
        t.apply(8, env(0, Body::KeepAlive { session_id: 1, lowest_unacked_seq: 4 }));
        assert_eq!(t.reply_bytes(), 0);
        t.check_invariants().unwrap();
    }

    #[test]
    fn a_command_beyond_the_window_is_refused_until_the_window_moves() {
        let mut t = table();
        register(&mut t, 1, 0, None);
        let full = SessionError::WindowFull { session_id: 1, seq: 5, lowest_unacked_seq: 1, window_commands_max: 4 };
        assert_eq!(cmd(&mut t, 2, 0, 1, 5, 1), Verdict::Refused(full));
        fresh(&mut t, 3, 0, 1, 4, 1, "r4");
        fresh(&mut t, 4, 0, 1, 5, 2, "r5");
    }

    #[test]
    fn unknown_sessions_are_refused() {
        let mut t = table();
        let unknown = Verdict::Refused(SessionError::UnknownOrExpired { session_id: 9 });
        assert_eq!(cmd(&mut t, 1, 0, 9, 1, 1), unknown);
        assert_eq!(t.apply(2, env(0, Body::Unregister { session_id: 9 })), unknown);
        assert_eq!(t.apply(3, env(0, Body::KeepAlive { session_id: 9, lowest_unacked_seq: 1 })), unknown);
    }

    #[test]
    fn idle_sessions_expire_by_entry_timestamps_only() {
        let mut t = table();
        register(&mut t, 1, 1_000, Some(5));
        register(&mut t, 2, 1_000, None);
        // Session 1 keeps alive; session 2 stays idle.
        t.apply(3, env(1_900, Body::KeepAlive { session_id: 1, lowest_unacked_seq: 1 }));
        // Exactly the timeout: still open.
        t.apply(4, env(2_000, Body::Plain { payload: Bytes::new() }));
        assert!(t.is_open(2));
        // A new leader whose clock lags does not move time back ...
        t.apply(5, env(10, Body::Plain { payload: Bytes::new() }));
        assert_eq!(t.now_ms(), 2_000);
        // ... and one millisecond more expires the idle session, not the other.
        t.apply(6, env(2_001, Body::Plain { payload: Bytes::new() }));
        assert!(!t.is_open(2) && t.is_open(1));
        assert_eq!(cmd(&mut t, 7, 2_001, 2, 1, 1), Verdict::Refused(SessionError::UnknownOrExpired { session_id: 2 }));
        // Expiry frees the nonce: an old registration retried now opens a new session.
        t.apply(8, env(5_000, Body::Plain { payload: Bytes::new() }));
        assert_eq!(t.sessions_open(), 0);
        assert_eq!(register(&mut t, 9, 5_000, Some(5)), Verdict::Registered { session_id: 9 });
        t.check_invariants().unwrap();
    }

    #[test]
    fn a_full_table_refuses_registrations_and_evicts_no_one() {
        let mut t = table();
        for i in 1..=3 {
            register(&mut t, i, 0, None);
        }
        assert_eq!(register(&mut t, 4, 0, None), Verdict::Refused(SessionError::TableFull { sessions_open_max: 3 }));
        assert!((1..=3).all(|i| t.is_open(i)));
        assert_eq!(t.apply(5, env(0, Body::Unregister { session_id: 2 })), Verdict::Done);
        assert_eq!(register(&mut t, 6, 0, None), Verdict::Registered { session_id: 6 });
        // Expiry makes room too.
        assert_eq!(register(&mut t, 7, 2_000, None), Verdict::Registered { session_id: 7 });
        assert_eq!(t.sessions_open(), 1);
        t.check_invariants().unwrap();
    }

    #[test]
    fn replies_over_the_byte_bounds_are_discarded_not_reapplied() {
        let mut t = table();
        register(&mut t, 1, 0, None);
        register(&mut t, 2, 0, None);
        fresh(&mut t, 3, 0, 1, 1, 1, "aaaaaaaa"); // 8 of 10 bytes for session 1
        fresh(&mut t, 4, 0, 1, 2, 1, "bbb"); // would make 11: discarded
        assert_eq!(cmd(&mut t, 5, 0, 1, 1, 1), dup("aaaaaaaa"));
        assert_eq!(
            cmd(&mut t, 6, 0, 1, 2, 1),
            Verdict::Refused(SessionError::ReplyDiscarded { session_id: 1, seq: 2 })
        );
        fresh(&mut t, 7, 0, 2, 1, 1, "cccccccc"); // total would be 16: fits
        fresh(&mut t, 8, 0, 2, 2, 1, "d"); // total 17 > 16: discarded
        assert_eq!(t.reply_bytes(), 16);
        // Acknowledging frees the bytes for later replies.
        fresh(&mut t, 9, 0, 1, 3, 3, "eeeeeeee");
        assert_eq!(t.reply_bytes(), 16);
        assert_eq!(cmd(&mut t, 10, 0, 1, 3, 3), dup("eeeeeeee"));
    }

    #[test]
    fn a_reply_whose_session_left_in_the_same_batch_is_dropped() {
        let mut t = table();
        register(&mut t, 1, 0, None);
        let Verdict::Apply { ticket: Some(a), .. } = cmd(&mut t, 2, 0, 1, 1, 1) else { panic!("fresh") };
        let Verdict::Apply { ticket: Some(b), .. } = cmd(&mut t, 3, 0, 1, 2, 2) else { panic!("fresh") };
        // Seq 2 acknowledged seq 1 while its reply was pending; then the session closes.
        t.apply(4, env(0, Body::Unregister { session_id: 1 }));
        assert_eq!(t.replies_pending(), 2);
        t.check_invariants().unwrap();
        // Out of order is fine: nothing settles until the first reply is in.
        t.record_reply(b, Bytes::from_static(b"y"));
        assert_eq!(t.replies_pending(), 1);
        t.record_reply(a, Bytes::from_static(b"x"));
        assert_eq!((t.replies_pending(), t.reply_bytes()), (0, 0));
        t.check_invariants().unwrap();
    }

    /// Two replicas apply the same entries but batch them differently (one
    /// records each reply at once, the other at the end): the byte bounds must
    /// still keep and discard the same replies, or their snapshots differ.
    #[test]
    fn byte_bounds_decide_alike_whatever_the_batches() {
        let cfg = SessionConfig { reply_bytes_per_session_max: 8, ..cfg() };
        let entries = [(1, 1, 1), (2, 2, 1), (3, 3, 2), (4, 3, 2)]; // (index, seq, lowest unacked)
        let reply = |seq: u64| Bytes::from(vec![seq as u8; 8]);
        let mut each = SessionTable::new(cfg.clone()).unwrap();
        let mut end = SessionTable::new(cfg).unwrap();
        for t in [&mut each, &mut end] {
            t.apply(10, env(0, Body::Register { nonce: None }));
        }
        let mut held = Vec::new();
        for (i, seq, low) in entries {
            let v = cmd(&mut each, 10 + i, 0, 10, seq, low);
            if let Verdict::Apply { ticket: Some(t), .. } = v {
                each.record_reply(t, reply(seq));
            }
            if let Verdict::Apply { ticket: Some(t), .. } = cmd(&mut end, 10 + i, 0, 10, seq, low) {
                held.push((t, reply(seq)));
            }
        }
        for (t, r) in held {
            end.record_reply(t, r);
        }
        end.check_invariants().unwrap();
        assert_eq!(each.encode_snapshot().unwrap(), end.encode_snapshot().unwrap());
    }

    #[test]
    #[should_panic(expected = "applied after entry")]
    fn replaying_an_index_is_a_bug() {
        let mut t = table();
        register(&mut t, 5, 0, None);
        register(&mut t, 5, 0, None);
    }

    #[test]
    fn limits_are_validated() {
        assert!(SessionConfig::default().validate().is_ok());
        for bad in [
            SessionConfig { sessions_open_max: 0, ..cfg() },
            SessionConfig { window_commands_max: 0, ..cfg() },
            SessionConfig { session_idle_timeout_ms: 0, ..cfg() },
            SessionConfig { reply_bytes_per_session_max: 17, ..cfg() },
            SessionConfig { reply_bytes_total_max: u64::MAX, reply_bytes_per_session_max: 0, ..cfg() },
        ] {
            assert!(SessionTable::new(bad).is_err());
        }
    }
}
