//! The simulated clients and the nodes' client service. A session client
//! registers through the log, numbers its writes, and sends a write again
//! with the same sequence number after a timeout, a not-leader or busy answer
//! or an entry lost to a new leader, through whichever node it guesses leads,
//! with bounded back-off. A session-less client sends plain envelopes and
//! gives up on a timeout. Requests and answers cross the simulated network,
//! which drops, duplicates and delays them; a crash drops a node's pending
//! answers (the connection is gone).
//!
//! Each write is one operation for the checker however often it is sent: it
//! is invoked at its first send and returns with the one answer its client
//! accepts. Must never read the wall clock or OS randomness.

use super::*;
use crate::model::{Command, Op, Outcome};
use waft_session::{Body, Envelope, SessionError};

/// The first resend waits about half a tick; each further one doubles, up to this.
const RESEND_BACKOFF_MAX_TICKS: u64 = 8;
/// Per-attempt timeouts are drawn per client from this range of ticks.
const TIMEOUT_TICKS_MIN: u64 = 8;
const TIMEOUT_TICKS_MAX: u64 = 30;
/// Operations a client keeps in flight at most (also bounded by the window).
const PIPELINE_MAX: u64 = 3;

/// What a client sends a node.
#[derive(Clone, Debug)]
pub(crate) enum Request {
    Register { nonce: u128, attempt: u64 },
    Write { op_id: u64, attempt: u64, body: Body },
}

/// Which of a client's requests an answer or a timer belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReqId {
    Register { nonce: u128 },
    Write { op_id: u64 },
}

/// A node's answer to one request.
#[derive(Clone, Debug)]
pub(crate) enum Answer {
    /// The entry applied with this outcome.
    Applied(Outcome),
    /// Not proposed: this node does not lead.
    NotLeader(Option<NodeId>),
    /// Not proposed: the leader is busy, transferring, or not ready.
    Busy,
    /// Proposed, but another term's entry took the index: this copy never applies.
    Lost,
}

/// A proposal waiting for its index to apply at one node.
#[derive(Clone, Debug)]
pub(crate) struct Serving {
    ci: u64,
    term: u64,
    req: ReqId,
    attempt: u64,
}

/// One write, however many times it is sent.
#[derive(Clone, Debug)]
struct Write {
    /// Session and sequence number (0, 0 for a session-less write).
    session_id: u64,
    seq: u64,
    cmd: Command,
    /// Invoked at the first send.
    h: HistOp,
    /// Sends so far; answers and timers of older attempts are stale.
    attempt: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SessionState {
    Closed,
    Registering { nonce: u128, attempt: u64 },
    Open { id: u64 },
}

#[derive(Clone, Debug)]
pub(crate) struct Client {
    /// False: a session-less client, which must not retry a write it timed out on.
    uses_sessions: bool,
    session: SessionState,
    next_seq: u64,
    /// Writes in flight by op id.
    writes: BTreeMap<u64, Write>,
    read: Option<(NodeId, u64, HistOp)>,
    leader_guess: NodeId,
    /// Operations in flight at most. Invariant: <= the session window.
    pipeline: u64,
    window: u64,
    timeout: u64,
}

impl Client {
    pub(crate) fn new(rng: &mut Rng, window: u64) -> Client {
        let uses_sessions = rng.chance(900);
        Client {
            uses_sessions,
            session: SessionState::Closed,
            next_seq: 1,
            writes: BTreeMap::new(),
            read: None,
            leader_guess: 1,
            // A few clients pipeline (their commands may commit out of order);
            // most wait for each answer, which keeps the sweep's cost down.
            pipeline: if uses_sessions && window > 1 && rng.chance(300) {
                rng.range(2, PIPELINE_MAX.min(window))
            } else {
                1
            },
            window,
            timeout: rng.range(TIMEOUT_TICKS_MIN, TIMEOUT_TICKS_MAX) * TICK_UNITS,
        }
    }

    /// The lowest sequence number still without an accepted answer.
    fn lowest_unacked(&self) -> u64 {
        self.writes.values().map(|w| w.seq).min().unwrap_or(self.next_seq)
    }

    fn in_flight(&self) -> u64 {
        self.writes.len() as u64 + self.read.is_some() as u64
    }

    /// Whether a new operation may start: below the pipeline, and a new
    /// sequence number stays inside the session's window.
    fn can_start(&self) -> bool {
        self.in_flight() < self.pipeline && (!self.uses_sessions || self.next_seq < self.lowest_unacked() + self.window)
    }
}

impl Sim {
    fn up_nodes(&self) -> Vec<NodeId> {
        self.cluster.nodes.keys().copied().filter(|&id| self.cluster.is_up(id)).collect()
    }

    /// The node a client sends to: mostly its guess, else any live node.
    fn pick_node(&mut self, ci: usize) -> Option<NodeId> {
        let up = self.up_nodes();
        let guess = self.clients[ci].leader_guess;
        if self.cluster.is_up(guess) && self.rng.chance(700) {
            return Some(guess);
        }
        self.rng.pick(&up).copied()
    }

    fn guess_randomly(&mut self, ci: usize) {
        let up = self.up_nodes();
        self.clients[ci].leader_guess = *self.rng.pick(&up).unwrap_or(&1);
    }

    fn think_time(&mut self) -> u64 {
        // Now and then a client idles long enough for a short session timeout.
        if self.rng.chance(30) { self.rng.range(20, 120) * TICK_UNITS } else { self.rng.range(1, 3 * TICK_UNITS) }
    }

    fn backoff(&mut self, attempt: u64) -> u64 {
        let d = ((TICK_UNITS / 2) << attempt.min(4)).min(RESEND_BACKOFF_MAX_TICKS * TICK_UNITS);
        d / 2 + self.rng.range(0, d / 2)
    }

    /// Puts a client message on the network: it may be lost, late, and (if
    /// `may_double`) delivered twice. A session-less request is never doubled:
    /// one call on one connection reaches the server once, and a second copy
    /// of it would apply twice, which is the failure sessions exist to prevent.
    fn send_client_msg(&mut self, ev: Ev, may_double: bool) {
        if self.rng.chance(self.net.drop_pm) {
            return;
        }
        let copies = if may_double && self.rng.chance(self.net.dup_pm) { 2 } else { 1 };
        for _ in 0..copies {
            let d = if self.rng.chance(20) {
                self.rng.range(1, self.net.delay_max * 10 + 1)
            } else {
                self.rng.range(1, self.net.delay_max + 1)
            };
            self.schedule(d, ev.clone());
        }
    }

    /// Crashes a node; its clients' connections, and the answers owed on them, are gone.
    pub(super) fn crash(&mut self, id: NodeId) {
        // A crash ends a stall too: the process is gone.
        self.paused_until.remove(&id);
        // Half the crashes are power losses: what was not synced is gone.
        let how = if self.rng.chance(500) { Crash::Power } else { Crash::Process };
        self.stats.power_losses += (how == Crash::Power) as u64;
        self.cluster.crash(id, how);
        self.serving.retain(|&(node, _), _| node != id);
    }

    // ------------------------------------------------------------ client side

    pub(super) fn client_step(&mut self, ci: usize) {
        let c = &self.clients[ci];
        if c.uses_sessions {
            match c.session {
                SessionState::Closed => return self.start_registration(ci),
                SessionState::Registering { .. } => return,
                SessionState::Open { .. } => {}
            }
        }
        if !c.can_start() {
            return;
        }
        let Some(node) = self.pick_node(ci) else {
            let d = self.rng.range(TICK_UNITS / 2, 2 * TICK_UNITS);
            self.schedule(d, Ev::Client(ci as u64));
            return;
        };
        self.start_op(ci, node);
        if self.clients[ci].can_start() {
            let d = self.rng.range(1, TICK_UNITS);
            self.schedule(d, Ev::Client(ci as u64));
        }
    }

    fn start_registration(&mut self, ci: usize) {
        let nonce = (self.rng.next_u64() as u128) << 64 | self.rng.next_u64() as u128;
        self.clients[ci].session = SessionState::Registering { nonce, attempt: 0 };
        self.send_registration(ci);
    }

    fn send_registration(&mut self, ci: usize) {
        let SessionState::Registering { nonce, attempt } = &mut self.clients[ci].session else {
            return;
        };
        *attempt += 1;
        let (nonce, attempt) = (*nonce, *attempt);
        if let Some(node) = self.pick_node(ci) {
            self.trace(|| format!("client {ci}: register (attempt {attempt}) at node {node}"));
            let req = Request::Register { nonce, attempt };
            self.send_client_msg(Ev::ClientRequest { ci: ci as u64, node, req }, true);
        }
        let timeout = self.clients[ci].timeout;
        self.schedule(timeout, Ev::Resend { ci: ci as u64, req: ReqId::Register { nonce }, attempt, timed_out: true });
    }

    fn start_op(&mut self, ci: usize, node: NodeId) {
        let key = self.rng.range(0, self.cfg.keys as u64 - 1) as u8;
        let roll = self.rng.range(0, 99);
        let op_id = self.next_op_id;
        self.next_op_id += 1;
        let op = if roll < 25 {
            Op::Put(op_id)
        } else if roll < 55 {
            Op::Incr
        } else {
            Op::Get
        };
        let h = HistOp { key, op, invoke: self.now, response: None, output: 0 };
        if op == Op::Get {
            return self.start_read(ci, node, op_id, h);
        }
        let c = &mut self.clients[ci];
        let (session_id, seq) = match c.session {
            SessionState::Open { id } if c.uses_sessions => {
                c.next_seq += 1;
                (id, c.next_seq - 1)
            }
            _ => (0, 0),
        };
        let cmd = Command { op_id, key, op };
        c.writes.insert(op_id, Write { session_id, seq, cmd, h, attempt: 0 });
        self.send_write(ci, op_id, node);
    }

    fn start_read(&mut self, ci: usize, node: NodeId, id: u64, h: HistOp) {
        let mode = if self.rng.chance(500) { ReadMode::Lease } else { ReadMode::Safe };
        if let Some(until) = self.paused(node) {
            // The node is stopped: the request waits in its socket.
            self.trace(|| format!("client {ci}: read key {} queued at stopped node {node}", h.key));
            self.clients[ci].read = Some((node, id, h));
            let timeout = self.clients[ci].timeout;
            self.schedule(timeout, Ev::ReadTimeout(ci as u64, id));
            let jitter = self.rng.range(0, 3);
            self.schedule(until - self.now + jitter, Ev::ReadArrive { ci: ci as u64, node, id, mode });
            return;
        }
        let r = self.cluster.read_index(node, id, mode);
        self.trace(|| format!("client {ci}: read key {} at node {node}: {r:?}", h.key));
        match r {
            Ok(()) => {
                self.clients[ci].read = Some((node, id, h));
                let timeout = self.clients[ci].timeout;
                self.schedule(timeout, Ev::ReadTimeout(ci as u64, id));
            }
            Err(e) => self.read_refused(ci, e),
        }
    }

    /// A node refused a read: follow its leader hint (or guess) and try
    /// again a little later.
    fn read_refused(&mut self, ci: usize, e: RaftError) {
        match e {
            RaftError::NotLeader { leader_hint: Some(l) } => self.clients[ci].leader_guess = l,
            RaftError::NotLeader { leader_hint: None } => self.guess_randomly(ci),
            _ => {}
        }
        let d = self.rng.range(TICK_UNITS / 2, 2 * TICK_UNITS);
        self.schedule(d, Ev::Client(ci as u64));
    }

    /// Sends (or sends again) a write, with the client's current acknowledgement.
    fn send_write(&mut self, ci: usize, op_id: u64, node: NodeId) {
        let c = &mut self.clients[ci];
        let lowest_unacked_seq = c.lowest_unacked();
        let uses_sessions = c.uses_sessions;
        let w = c.writes.get_mut(&op_id).expect("a write in flight");
        w.attempt += 1;
        let payload = w.cmd.encode();
        let body = if uses_sessions {
            Body::Command { session_id: w.session_id, seq: w.seq, lowest_unacked_seq, payload }
        } else {
            Body::Plain { payload }
        };
        let (attempt, seq, cmd) = (w.attempt, w.seq, w.cmd);
        let timeout = c.timeout;
        self.trace(|| {
            format!("client {ci}: {:?} key {} seq {seq} (attempt {attempt}) at node {node}", cmd.op, cmd.key)
        });
        let req = Request::Write { op_id, attempt, body };
        self.send_client_msg(Ev::ClientRequest { ci: ci as u64, node, req }, uses_sessions);
        self.schedule(timeout, Ev::Resend { ci: ci as u64, req: ReqId::Write { op_id }, attempt, timed_out: true });
    }

    /// A timer or a refusal asks for another send of `req`.
    pub(super) fn resend(&mut self, ci: usize, req: ReqId, attempt: u64, timed_out: bool) {
        match req {
            ReqId::Register { nonce } => {
                if self.clients[ci].session != (SessionState::Registering { nonce, attempt }) {
                    return;
                }
                if timed_out {
                    self.guess_randomly(ci);
                }
                self.stats.resends += 1;
                self.send_registration(ci);
            }
            ReqId::Write { op_id } => {
                let c = &self.clients[ci];
                if c.writes.get(&op_id).is_none_or(|w| w.attempt != attempt) {
                    return;
                }
                if timed_out && !c.uses_sessions {
                    // Without a session a second send could apply twice: the
                    // outcome stays unknown.
                    self.abandon_write(ci, op_id);
                    self.schedule(1, Ev::Client(ci as u64));
                    return;
                }
                if timed_out {
                    self.guess_randomly(ci);
                }
                let Some(node) = self.pick_node(ci) else {
                    let d = self.backoff(attempt);
                    self.schedule(d, Ev::Resend { ci: ci as u64, req, attempt, timed_out: false });
                    return;
                };
                self.stats.resends += 1;
                self.send_write(ci, op_id, node);
            }
        }
    }

    pub(super) fn on_reply(&mut self, ci: usize, req: ReqId, attempt: u64, answer: Answer) {
        self.trace(|| format!("client {ci}: answer to {req:?} attempt {attempt}: {answer:?}"));
        let current = match req {
            ReqId::Register { nonce } => match self.clients[ci].session {
                SessionState::Registering { nonce: n, attempt } if n == nonce => attempt,
                _ => return,
            },
            ReqId::Write { op_id } => match self.clients[ci].writes.get(&op_id) {
                Some(w) => w.attempt,
                None => return, // answered already, or abandoned
            },
        };
        let retry_later = match answer {
            Answer::Applied(outcome) => return self.on_applied(ci, req, outcome),
            Answer::NotLeader(hint) => {
                match hint {
                    Some(l) => self.clients[ci].leader_guess = l,
                    None => self.guess_randomly(ci),
                }
                true
            }
            Answer::Busy | Answer::Lost => true,
        };
        // Only the latest attempt's refusal triggers a resend; older ones are stale.
        if retry_later && attempt == current {
            let d = self.backoff(attempt);
            let ev = Ev::Resend { ci: ci as u64, req, attempt, timed_out: false };
            self.schedule(d, ev);
        }
    }

    fn on_applied(&mut self, ci: usize, req: ReqId, outcome: Outcome) {
        match (req, outcome) {
            (ReqId::Register { .. }, Outcome::Registered { session_id }) => {
                self.stats.registrations += 1;
                self.clients[ci].session = SessionState::Open { id: session_id };
                self.clients[ci].next_seq = 1;
                self.schedule(1, Ev::Client(ci as u64));
            }
            (ReqId::Register { nonce }, Outcome::Refused(SessionError::TableFull { .. })) => {
                self.stats.registrations_refused += 1;
                let SessionState::Registering { attempt, .. } = self.clients[ci].session else {
                    return;
                };
                let d = self.backoff(attempt) + 5 * TICK_UNITS;
                let ev = Ev::Resend { ci: ci as u64, req: ReqId::Register { nonce }, attempt, timed_out: false };
                self.schedule(d, ev);
            }
            (ReqId::Write { op_id }, Outcome::Output { op_id: applied, output, fresh }) => {
                assert_eq!(applied, op_id, "client {ci}: the answer is for another write");
                let w = self.clients[ci].writes.remove(&op_id).expect("in flight");
                let mut h = w.h;
                h.response = Some(self.now);
                h.output = output;
                self.history.push(h);
                self.stats.writes_ok += 1;
                self.stats.replies_saved += !fresh as u64;
                if self.healed_at.is_some_and(|t| h.invoke >= t) {
                    self.progressed_after_heal = true;
                }
                let d = self.think_time();
                self.schedule(d, Ev::Client(ci as u64));
            }
            (ReqId::Write { .. }, Outcome::Refused(SessionError::UnknownOrExpired { session_id })) => {
                if self.clients[ci].session == (SessionState::Open { id: session_id }) {
                    // Every write of the session may or may not have applied.
                    self.stats.sessions_expired += 1;
                    self.abandon_writes(ci);
                    self.clients[ci].session = SessionState::Closed;
                    self.schedule(1, Ev::Client(ci as u64));
                }
            }
            (ReqId::Write { op_id }, Outcome::Refused(SessionError::ReplyDiscarded { .. })) => {
                // Applied exactly once; only its output is lost.
                self.abandon_write(ci, op_id);
                let d = self.think_time();
                self.schedule(d, Ev::Client(ci as u64));
            }
            (req, outcome) => {
                panic!("client {ci}: {req:?} answered with {outcome:?}, which a correct client never meets")
            }
        }
    }

    /// The write's outcome is unknown: the checker may place it anywhere after
    /// its invocation, or nowhere.
    fn abandon_write(&mut self, ci: usize, op_id: u64) {
        if let Some(w) = self.clients[ci].writes.remove(&op_id) {
            self.unknown.push((op_id, w.h));
            self.stats.writes_unknown += 1;
        }
    }

    pub(super) fn abandon_writes(&mut self, ci: usize) {
        let ids: Vec<u64> = self.clients[ci].writes.keys().copied().collect();
        for op_id in ids {
            self.abandon_write(ci, op_id);
        }
    }

    /// A read queued at a stopped node reaches it once it runs again (if
    /// its client still waits and the node is still up).
    pub(super) fn read_arrive(&mut self, ci: usize, node: NodeId, id: u64, mode: ReadMode) {
        if !self.clients[ci].read.is_some_and(|(n, rid, _)| n == node && rid == id) || !self.cluster.is_up(node) {
            return;
        }
        let r = self.cluster.read_index(node, id, mode);
        self.trace(|| format!("client {ci}: queued read {id} reached node {node}: {r:?}"));
        if let Err(e) = r {
            self.clients[ci].read = None;
            self.read_refused(ci, e);
        }
    }

    pub(super) fn read_timeout(&mut self, ci: usize, id: u64) {
        if self.clients[ci].read.is_some_and(|(_, rid, _)| rid == id) {
            // A read that never answered changed nothing: it leaves no trace.
            self.clients[ci].read = None;
            self.guess_randomly(ci);
            self.schedule(1, Ev::Client(ci as u64));
        }
    }

    // ------------------------------------------------------------ node side

    /// A request reaches `node`: it stamps its clock on the envelope and proposes.
    pub(super) fn serve(&mut self, ci: u64, node: NodeId, req: Request) {
        if !self.cluster.is_up(node) {
            return;
        }
        let (body, id, attempt) = match req {
            Request::Register { nonce, attempt } => {
                (Body::Register { nonce: Some(nonce) }, ReqId::Register { nonce }, attempt)
            }
            Request::Write { op_id, attempt, body } => (body, ReqId::Write { op_id }, attempt),
        };
        let clock_ms = (self.now as i64 + self.clock_skew_ms[&node]).max(0) as u64;
        let r = self.cluster.propose(node, &Envelope::new(clock_ms, body));
        let answer = match r {
            Ok((index, term)) => {
                let s = Serving { ci, term, req: id, attempt };
                // A node proposing again at an index it served before had its log
                // cut back; the older proposal's fate is unknown here (it may yet
                // commit through another leader), so its client just hears nothing.
                self.serving.insert((node, index), s);
                return;
            }
            Err(RaftError::NotLeader { leader_hint }) => Answer::NotLeader(leader_hint),
            Err(_) => Answer::Busy,
        };
        self.answer(Serving { ci, term: 0, req: id, attempt }, answer);
    }

    fn answer(&mut self, s: Serving, answer: Answer) {
        let ev = Ev::ClientReply { ci: s.ci, req: s.req, attempt: s.attempt, answer };
        self.send_client_msg(ev, true);
    }

    /// What nodes applied: answers owed to clients, and completed reads.
    pub(super) fn on_note(&mut self, n: Note) {
        match n {
            Note::Applied { node, index, term, outcome } => {
                match outcome {
                    Outcome::Output { op_id, output, fresh: true } => {
                        self.first_applied.entry(op_id).or_insert((self.now, output));
                    }
                    Outcome::Output { fresh: false, .. }
                    | Outcome::Refused(SessionError::Stale { .. })
                    | Outcome::Refused(SessionError::ReplyDiscarded { .. }) => {
                        self.stats.copies_deduplicated += 1;
                    }
                    _ => {}
                }
                if let Some(s) = self.serving.remove(&(node, index)) {
                    let answer = if s.term == term { Answer::Applied(outcome) } else { Answer::Lost };
                    self.answer(s, answer);
                }
            }
            Note::ReadDone { node, id, value_of } => {
                for ci in 0..self.clients.len() {
                    let Some((rn, rid, mut h)) = self.clients[ci].read else {
                        continue;
                    };
                    if (rn, rid) != (node, id) {
                        continue;
                    }
                    h.response = Some(self.now);
                    h.output = value_of.get(h.key);
                    self.history.push(h);
                    self.stats.reads_ok += 1;
                    self.clients[ci].read = None;
                    let d = self.think_time();
                    self.schedule(d, Ev::Client(ci as u64));
                }
            }
        }
    }
}
