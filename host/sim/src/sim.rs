//! The randomized simulator: one seed decides the cluster size, the network
//! faults (loss, duplication, reordering, delay, partitions), crashes and
//! restarts, clock drift and skew, membership churn, leader transfers and the
//! client workload (exactly-once sessions with retries, in `clients`). Safety
//! is checked after every step (by `cluster`), liveness after faults stop,
//! and linearizability of the client history at the end.
//! Must never read the wall clock or OS randomness.

mod clients;

use crate::cluster::{Cluster, Crash, NodeSettings, Note};
use crate::lin::{self, HistOp};
use crate::rng::{Rng, fnv};
use clients::{Client, ReqId, Request, Serving};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use waft_raft::*;
use waft_session::SessionConfig;

/// Simulated time units per nominal tick.
pub const TICK_UNITS: u64 = 100;
/// The lease on the simulated monotonic clock (one unit reads as one ms):
/// `lease_ticks` (4) of nominal ticks less 20% for drift.
pub const LEASE_MS: u64 = 4 * TICK_UNITS * 80 / 100;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// Node pool size (1..=7); ids 1..=nodes.
    pub nodes: u64,
    /// Founding voters: ids 1..=voters.
    pub voters: u64,
    /// Ticks of faults and churn before the network heals.
    pub fault_ticks: u64,
    /// Ticks after healing within which a new write must commit.
    pub settle_ticks: u64,
    pub faults: bool,
    pub churn: bool,
    pub clients: u64,
    pub keys: u8,
    /// The replicated session table's limits (small, so the sweep reaches them).
    pub sessions: SessionConfig,
    /// Off: the machine applies every committed copy of a command, as a host
    /// without sessions would (the checker must then catch double applies).
    pub dedup: bool,
    /// Off: the leader lease is counted in ticks alone (`lease_ms` 0), as
    /// before it was bounded by the monotonic clock; a paused leader then
    /// answers lease reads from a spent lease (the checker must catch it).
    pub lease_clock: bool,
    pub trace: bool,
    /// The group's digest interval (small, so runs pass many digest points).
    pub digest_interval: u64,
    /// One node runs an extra command no other node runs, once, at a random
    /// time while faults go on: its state differs (in a register no client
    /// reads) until a verdict fences it and it is rebuilt.
    pub diverge: bool,
}

impl SimConfig {
    /// Everything about a run derives from its seed, so the seed alone replays it.
    pub fn from_seed(seed: u64) -> SimConfig {
        let mut r = Rng::new(seed ^ 0xC0FF_EE00);
        let nodes = r.range(1, 7);
        let voters =
            if nodes == 1 { 1 } else { r.range(1.min(nodes), nodes).max(if r.chance(800) { 3.min(nodes) } else { 1 }) };
        let fault_ticks = r.range(150, 400);
        let clients = r.range(1, 4);
        let keys = r.range(1, 3) as u8;
        let window_commands_max = r.range(1, 6);
        SimConfig {
            seed,
            nodes,
            voters,
            fault_ticks,
            // Generous: with priorities far apart, SOFAJRaft's target decay alone can
            // take ~300 ticks when the top-priority node holds a stale log.
            settle_ticks: 1000,
            faults: true,
            churn: true,
            clients,
            keys,
            sessions: SessionConfig {
                // Sometimes fewer than the clients: a registration waits for room.
                sessions_open_max: r.range(clients.saturating_sub(1).max(1), clients + 2),
                window_commands_max,
                // Mostly longer than any run; sometimes short enough that idle
                // clients (and clients cut off by faults) lose their session.
                session_idle_timeout_ms: if r.chance(300) { r.range(20, 80) * TICK_UNITS } else { 3_600_000 },
                // Replies are 8 bytes; sometimes only one fits per session.
                reply_bytes_per_session_max: if r.chance(200) { 8 } else { 8 * window_commands_max },
                reply_bytes_total_max: 8 * window_commands_max * (clients + 2),
            },
            dedup: true,
            lease_clock: true,
            trace: false,
            // Drawn last, so the draws above stay what they were.
            digest_interval: r.range(16, 64),
            diverge: r.chance(400),
        }
    }

    pub fn replay_command(&self) -> String {
        format!(
            "cargo run --release -p waft-sim --bin sim -- --seed {}{}{} --trace",
            self.seed,
            if self.dedup { "" } else { " --no-dedup" },
            if self.lease_clock { "" } else { " --no-lease-clock" }
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub steps: u64,
    pub messages: u64,
    pub max_term: u64,
    pub leaders: u64,
    pub writes_ok: u64,
    pub writes_unknown: u64,
    /// Session registrations that committed.
    pub registrations: u64,
    /// Requests sent again with the same sequence number (after a timeout,
    /// a not-leader or busy answer, or an entry lost to a new leader).
    pub resends: u64,
    /// Accepted replies that a saved reply answered (the command had applied before).
    pub replies_saved: u64,
    /// Committed copies the session table kept from applying again (all nodes).
    pub copies_deduplicated: u64,
    /// Sessions a client found expired or unknown.
    pub sessions_expired: u64,
    pub registrations_refused: u64,
    pub reads_ok: u64,
    pub crashes: u64,
    /// Crashes that were power losses (every unsynced write lost), not just
    /// the process.
    pub power_losses: u64,
    pub partitions: u64,
    /// Stalls: a node stopped (no tick, no message, no disk news) for
    /// several election timeouts while messages and requests queue for it.
    pub pauses: u64,
    pub conf_changes: u64,
    pub transfers: u64,
    pub snapshots_installed: u64,
    pub max_commit: u64,
    /// Divergences injected, verdicts that found a node different, and
    /// rebuilds of a node's state (counted on nodes up at the end).
    pub divergences: u64,
    pub mismatches: u64,
    pub rebuilds: u64,
    /// Verdicts confirmed: the highest verified index summed over nodes
    /// up at the end, in digest intervals.
    pub verified_points: u64,
    /// Times a leader quiesced its group, and quiet followers the liveness
    /// model woke (their leader's node gone).
    pub quiescences: u64,
    pub liveness_wakes: u64,
}

impl Stats {
    /// Adds another run's counts (maxima stay maxima).
    pub fn add(&mut self, o: &Stats) {
        self.steps += o.steps;
        self.messages += o.messages;
        self.max_term = self.max_term.max(o.max_term);
        self.leaders += o.leaders;
        self.writes_ok += o.writes_ok;
        self.writes_unknown += o.writes_unknown;
        self.registrations += o.registrations;
        self.resends += o.resends;
        self.replies_saved += o.replies_saved;
        self.copies_deduplicated += o.copies_deduplicated;
        self.sessions_expired += o.sessions_expired;
        self.registrations_refused += o.registrations_refused;
        self.reads_ok += o.reads_ok;
        self.crashes += o.crashes;
        self.power_losses += o.power_losses;
        self.partitions += o.partitions;
        self.pauses += o.pauses;
        self.quiescences += o.quiescences;
        self.liveness_wakes += o.liveness_wakes;
        self.conf_changes += o.conf_changes;
        self.transfers += o.transfers;
        self.snapshots_installed += o.snapshots_installed;
        self.max_commit = self.max_commit.max(o.max_commit);
        self.divergences += o.divergences;
        self.mismatches += o.mismatches;
        self.rebuilds += o.rebuilds;
        self.verified_points += o.verified_points;
    }
}

#[derive(Debug)]
pub struct Outcome {
    pub trace_hash: u64,
    pub stats: Stats,
    pub trace: Vec<String>,
}

#[derive(Clone, Debug)]
enum Ev {
    Tick(NodeId),
    Deliver(Message),
    Sync(NodeId, u64),
    Install(NodeId, u64),
    Restart(NodeId),
    /// Crash `id` if still in incarnation `inc` (targeted: right after a vote).
    Crash(NodeId, u64),
    /// Client `ci` may start an operation.
    Client(u64),
    /// A client request arrives at a node.
    ClientRequest {
        ci: u64,
        node: NodeId,
        req: Request,
    },
    /// A node's answer arrives at a client.
    ClientReply {
        ci: u64,
        req: ReqId,
        attempt: u64,
        answer: clients::Answer,
    },
    /// Send `req` again if attempt `attempt` is still the latest; `timed_out`
    /// when no answer came (the outcome is unknown).
    Resend {
        ci: u64,
        req: ReqId,
        attempt: u64,
        timed_out: bool,
    },
    ReadTimeout(u64, u64),
    /// A read request reaches `node` (delayed only by a stall of the node).
    ReadArrive {
        ci: u64,
        node: NodeId,
        id: u64,
        mode: ReadMode,
    },
    Chaos,
    Heal,
    /// A node's state comes to differ (`SimConfig::diverge`).
    Diverge,
}

struct Scheduled {
    at: u64,
    seq: u64,
    // Boxed: heap sifts move only (time, seq, pointer).
    ev: Box<Ev>,
}
impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq)) // min-heap
    }
}

/// Network fault knobs, changed by chaos events.
#[derive(Clone, Debug, Default)]
struct Net {
    drop_pm: u64,
    dup_pm: u64,
    delay_max: u64,
    blocked: BTreeSet<(NodeId, NodeId)>,
}

pub struct Sim {
    pub cfg: SimConfig,
    pub cluster: Cluster,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    net: Net,
    tick_period: BTreeMap<NodeId, u64>,
    /// Nodes stopped until the given time: events for them wait till then.
    paused_until: BTreeMap<NodeId, u64>,
    /// Per-node disk latency bound (some disks are slow, widening crash windows).
    disk_delay_max: BTreeMap<NodeId, u64>,
    syncs_scheduled: BTreeMap<NodeId, usize>,
    install_scheduled: BTreeMap<NodeId, bool>,
    clients: Vec<Client>,
    /// Proposals a node accepted for a client, by (node, index): the node
    /// answers once it applies that index (with a "lost" answer when another
    /// term's entry took the index). A crash drops its node's.
    serving: BTreeMap<(NodeId, u64), Serving>,
    /// Per-node wall-clock skew in ms: a leader stamps client entries with
    /// now + skew (one simulated time unit reads as one millisecond).
    clock_skew_ms: BTreeMap<NodeId, i64>,
    history: Vec<HistOp>,
    /// Writes whose outcome the client never learned (a session-less timeout,
    /// an expired session, a discarded reply, the run's end): (op id, call),
    /// settled at the end.
    unknown: Vec<(u64, HistOp)>,
    /// op id -> (time, output) of its first application on any node.
    first_applied: BTreeMap<u64, (u64, u64)>,
    next_op_id: u64,
    healed_at: Option<u64>,
    progressed_after_heal: bool,
    last_commit: BTreeMap<NodeId, (u64, u64)>,
    pub stats: Stats,
}

/// Ticks a run continues after the first post-heal write committed.
const SETTLE_AFTER_PROGRESS_TICKS: u64 = 50;
/// Safety valve: events processed per run.
const STEPS_MAX: u64 = 5_000_000;

pub fn node_config(id: NodeId, seed: u64, rng: &mut Rng, priorities: &BTreeMap<NodeId, Priority>) -> Config {
    let mut c = Config::new(id, seed.wrapping_mul(31).wrapping_add(id));
    c.election_ticks = 10;
    c.heartbeat_ticks = rng.range(1, 3);
    c.lease_ticks = 4;
    c.append_entries_max = rng.range(1, 16) as usize;
    c.append_bytes_max = rng.range(64, 4096);
    c.inflight_msgs_max = rng.range(1, 8) as usize;
    c.inflight_bytes_max = rng.range(256, 1 << 16);
    c.snapshot_margin_entries = rng.range(5, 60);
    c.catchup_margin_entries = rng.range(2, 20);
    c.catchup_timeout_ticks = rng.range(20, 80);
    c.snapshot_retry_ticks = 30;
    c.uncommitted_entries_max = 500;
    c.priorities = priorities.clone();
    // A third of the seeds quiesce idle groups (drawn from the seed, not the
    // stream, so the other draws stay as they were).
    c.quiesce_after_ticks = if seed.is_multiple_of(3) { 4 + seed % 13 } else { 0 };
    c
}

/// Group-wide protocol switches drawn once per run (nodes must agree on them).
fn protocol_switches(rng: &mut Rng) -> (bool, bool) {
    let check_quorum = rng.chance(750);
    let pre_vote = rng.chance(800);
    (check_quorum, pre_vote)
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Sim {
        let mut rng = Rng::new(cfg.seed);
        let ids: Vec<NodeId> = (1..=cfg.nodes).collect();
        let voters: Vec<NodeId> = (1..=cfg.voters).collect();
        let mut priorities = BTreeMap::new();
        if rng.chance(300) {
            for &id in &ids {
                // Priority 0 ("never stands") is left to scenario tests: with random
                // membership it can leave only never-standing nodes up to date, which
                // stalls the group by design.
                priorities.insert(id, *rng.pick(&[-1, 1, 5, 10, 40, 100]).expect("non-empty"));
            }
        }
        let (check_quorum, pre_vote) = protocol_switches(&mut rng);
        let mut cfg_rng = rng.fork();
        let seed = cfg.seed;
        let mut configs = BTreeMap::new();
        for &id in &ids {
            let mut c = node_config(id, seed, &mut cfg_rng, &priorities);
            c.check_quorum = check_quorum;
            c.pre_vote = pre_vote;
            c.lease_ms = if cfg.lease_clock { LEASE_MS } else { 0 };
            configs.insert(id, c);
        }
        let mut cluster = Cluster::new(&ids, &voters, cfg.dedup, |id| NodeSettings {
            raft: configs[&id].clone(),
            sessions: cfg.sessions.clone(),
            digest_interval: cfg.digest_interval,
        });
        if cfg.trace {
            cluster.trace = Some(Vec::new());
        }
        let mut tick_period = BTreeMap::new();
        for &id in &ids {
            // Clock drift: some nodes tick up to ~18% faster than nominal.
            let p = if cfg.faults && rng.chance(400) { rng.range(85, 100) } else { TICK_UNITS };
            tick_period.insert(id, p);
        }
        let mut disk_delay_max = BTreeMap::new();
        for &id in &ids {
            disk_delay_max.insert(id, if rng.chance(300) { rng.range(50, 400) } else { 40 });
        }
        let mut clock_skew_ms = BTreeMap::new();
        for &id in &ids {
            // Some leaders' clocks run behind or ahead of others'.
            let skew = if cfg.faults && rng.chance(300) { rng.range(0, 6_000) as i64 - 3_000 } else { 0 };
            clock_skew_ms.insert(id, skew);
        }
        let clients = (0..cfg.clients).map(|_| Client::new(&mut rng, cfg.sessions.window_commands_max)).collect();
        let mut sim = Sim {
            cfg,
            cluster,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            net: Net { delay_max: 20, ..Default::default() },
            tick_period,
            paused_until: BTreeMap::new(),
            disk_delay_max,
            syncs_scheduled: BTreeMap::new(),
            install_scheduled: BTreeMap::new(),
            clients,
            serving: BTreeMap::new(),
            clock_skew_ms,
            history: Vec::new(),
            unknown: Vec::new(),
            first_applied: BTreeMap::new(),
            next_op_id: 1,
            healed_at: None,
            progressed_after_heal: false,
            last_commit: BTreeMap::new(),
            stats: Stats::default(),
        };
        for id in ids {
            let offset = sim.rng.range(0, TICK_UNITS);
            sim.schedule(offset, Ev::Tick(id));
        }
        for c in 0..sim.cfg.clients {
            let d = sim.rng.range(0, 5 * TICK_UNITS);
            sim.schedule(d, Ev::Client(c));
        }
        if sim.cfg.faults || sim.cfg.churn {
            let d = sim.rng.range(TICK_UNITS, 20 * TICK_UNITS);
            sim.schedule(d, Ev::Chaos);
        }
        sim.schedule(sim.cfg.fault_ticks * TICK_UNITS, Ev::Heal);
        if sim.cfg.diverge {
            let d = sim.rng.range(20, sim.cfg.fault_ticks / 2) * TICK_UNITS;
            sim.schedule(d, Ev::Diverge);
        }
        sim
    }

    fn schedule(&mut self, delay: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled { at: self.now + delay, seq: self.seq, ev: Box::new(ev) });
    }

    fn trace(&mut self, f: impl FnOnce() -> String) {
        if let Some(t) = &mut self.cluster.trace {
            t.push(format!("@{} {}", self.now, f()));
        }
    }

    /// Runs to the end; panics (with the replay command) on any violation.
    pub fn run(&mut self) -> Outcome {
        let mut end = (self.cfg.fault_ticks + self.cfg.settle_ticks) * TICK_UNITS;
        while let Some(s) = self.queue.pop() {
            if self.progressed_after_heal {
                // Progress shown: run a little longer for late replies, then stop.
                end = end.min(self.now + SETTLE_AFTER_PROGRESS_TICKS * TICK_UNITS);
            }
            if s.at > end {
                break;
            }
            self.now = s.at;
            self.cluster.now = s.at;
            self.stats.steps += 1;
            assert!(self.stats.steps < STEPS_MAX, "event budget exhausted");
            self.handle(*s.ev);
            let touched = self.route();
            self.after_step(&touched);
        }
        if !self.progressed_after_heal {
            panic!("no progress: no write committed within {} ticks after faults stopped", self.cfg.settle_ticks);
        }
        // Whatever is still waiting has an unknown outcome.
        for ci in 0..self.clients.len() {
            self.abandon_writes(ci);
        }
        // Writes whose client gave up are "possibly applied". The simulator sees every
        // node, so it settles most of them: a write some node applied took effect no
        // later than that first apply (Raft applies only committed entries, which
        // every later read must see) and produced the output the state machines
        // computed; a write no node ever applied was observed by nobody, so the
        // history is completed by removing it (a pending call may be dropped).
        // Both keep the search small; the checker itself still handles unknowns.
        for (op_id, mut h) in std::mem::take(&mut self.unknown) {
            if let Some(&(t, out)) = self.first_applied.get(&op_id) {
                h.response = Some(t.max(h.invoke));
                h.output = out;
                self.history.push(h);
            }
        }
        if let Err(e) = lin::check(&self.history) {
            panic!("linearizability violated: {e}");
        }
        let mut h = self.cluster.trace_hash;
        for (id, n) in &self.cluster.nodes {
            let r = n.raft().map_or((0, 0), |r| (r.term(), r.committed()));
            h = fnv(h, &[*id as u8]);
            h = fnv(h, &r.0.to_le_bytes());
            h = fnv(h, &r.1.to_le_bytes());
        }
        self.stats.max_commit = self.cluster.check.committed.keys().next_back().copied().unwrap_or(0);
        for n in self.cluster.nodes.values() {
            if let Some(r) = &n.replica {
                let d = r.digest_status();
                self.stats.mismatches += d.mismatches;
                self.stats.rebuilds += d.rebuilds;
                self.stats.verified_points += d.verified / self.cfg.digest_interval.max(1);
            }
        }
        Outcome { trace_hash: h, stats: self.stats.clone(), trace: self.cluster.trace.take().unwrap_or_default() }
    }

    fn faults_active(&self) -> bool {
        self.healed_at.is_none()
    }

    /// The node an event happens at, if it is one a stopped process would
    /// not see until it runs again.
    fn stalled_target(ev: &Ev) -> Option<NodeId> {
        match ev {
            Ev::Tick(id) | Ev::Sync(id, _) | Ev::Install(id, _) => Some(*id),
            Ev::Deliver(m) => Some(m.to),
            Ev::ClientRequest { node, .. } | Ev::ReadArrive { node, .. } => Some(*node),
            _ => None,
        }
    }

    /// When node `id` runs again, if it is stopped now.
    fn paused(&self, id: NodeId) -> Option<u64> {
        self.paused_until.get(&id).copied().filter(|&until| until > self.now)
    }

    fn handle(&mut self, ev: Ev) {
        if let Some(until) = Self::stalled_target(&ev).and_then(|id| self.paused(id)) {
            let wait = until - self.now;
            match ev {
                // Missed ticks are dropped (the daemon's ticker does the same):
                // one tick when the node runs again.
                Ev::Tick(_) => self.schedule(wait, ev),
                // Queued messages, requests and disk news arrive together, in
                // an order the seed picks.
                _ => {
                    let jitter = self.rng.range(0, 3);
                    self.schedule(wait + jitter, ev);
                }
            }
            return;
        }
        match ev {
            Ev::Tick(id) => {
                // The daemon's liveness model: a quiet follower whose
                // leader's node is down, stopped or cut off is woken (the
                // daemon does it when the peer connection to that node dies).
                if self.cluster.is_up(id) && self.cluster.raft(id).is_quiesced() {
                    let leader = self.cluster.raft(id).leader();
                    let lost = leader.is_none_or(|l| {
                        l != id
                            && (!self.cluster.is_up(l)
                                || self.paused(l).is_some()
                                || self.net.blocked.contains(&(l, id))
                                || self.net.blocked.contains(&(id, l)))
                    });
                    if lost {
                        self.trace(|| format!("liveness: wake {id}"));
                        self.stats.liveness_wakes += 1;
                        self.cluster.wake(id);
                    }
                }
                let quiet_before = self.cluster.is_up(id) && self.cluster.raft(id).is_quiesced();
                self.cluster.tick(id);
                if !quiet_before
                    && self.cluster.is_up(id)
                    && self.cluster.raft(id).is_quiesced()
                    && self.cluster.raft(id).role() == waft_raft::Role::Leader
                {
                    self.stats.quiescences += 1;
                }
                let p = self.tick_period[&id];
                self.schedule(p, Ev::Tick(id));
            }
            Ev::Deliver(m) => self.cluster.step(m),
            Ev::Sync(id, inc) => {
                if self.cluster.nodes[&id].incarnation == inc && self.cluster.is_up(id) {
                    let s = self.syncs_scheduled.entry(id).or_insert(0);
                    *s = s.saturating_sub(1);
                    self.cluster.sync_one(id);
                }
            }
            Ev::Install(id, inc) => {
                if self.cluster.nodes[&id].incarnation == inc && self.cluster.is_up(id) {
                    self.install_scheduled.insert(id, false);
                    self.stats.snapshots_installed += 1;
                    self.cluster.complete_install(id);
                }
            }
            Ev::Diverge => {
                let up: Vec<NodeId> = self.cluster.nodes.keys().copied().filter(|&i| self.cluster.is_up(i)).collect();
                if let Some(&id) = self.rng.pick(&up) {
                    self.trace(|| format!("chaos: node {id} diverges"));
                    self.cluster.diverge(id);
                    self.stats.divergences += 1;
                }
            }
            Ev::Restart(id) => {
                if !self.cluster.is_up(id) {
                    self.cluster.restart(id);
                    self.syncs_scheduled.insert(id, 0);
                    self.install_scheduled.insert(id, false);
                    self.last_commit.remove(&id);
                }
            }
            Ev::Crash(id, inc) => {
                let down = self.cluster.nodes.keys().filter(|&&i| !self.cluster.is_up(i)).count() as u64;
                let n = self.cluster.nodes.len() as u64;
                if self.faults_active()
                    && self.cluster.nodes[&id].incarnation == inc
                    && self.cluster.is_up(id)
                    && down < n.div_ceil(2)
                {
                    self.trace(|| format!("chaos: crash {id} before its vote is durable"));
                    self.crash(id);
                    self.stats.crashes += 1;
                    self.syncs_scheduled.insert(id, 0);
                    let d = self.rng.range(10, 3 * TICK_UNITS);
                    self.schedule(d, Ev::Restart(id));
                }
            }
            Ev::Client(ci) => self.client_step(ci as usize),
            Ev::ClientRequest { ci, node, req } => self.serve(ci, node, req),
            Ev::ClientReply { ci, req, attempt, answer } => self.on_reply(ci as usize, req, attempt, answer),
            Ev::Resend { ci, req, attempt, timed_out } => self.resend(ci as usize, req, attempt, timed_out),
            Ev::ReadTimeout(ci, id) => self.read_timeout(ci as usize, id),
            Ev::ReadArrive { ci, node, id, mode } => self.read_arrive(ci as usize, node, id, mode),
            Ev::Chaos => {
                if self.faults_active() {
                    self.chaos();
                    let d = self.rng.range(TICK_UNITS / 2, 15 * TICK_UNITS);
                    self.schedule(d, Ev::Chaos);
                }
            }
            Ev::Heal => self.heal(),
        }
    }

    fn heal(&mut self) {
        self.trace(|| "heal: faults stop".into());
        self.healed_at = Some(self.now);
        self.net = Net { delay_max: 20, ..Default::default() };
        let down: Vec<NodeId> = self.cluster.nodes.keys().copied().filter(|&id| !self.cluster.is_up(id)).collect();
        for id in down {
            self.schedule(1, Ev::Restart(id));
        }
    }

    /// Moves the cluster's outbox onto the simulated network; schedules disk and install work.
    fn route(&mut self) -> Vec<NodeId> {
        let out = std::mem::take(&mut self.cluster.outbox);
        for m in out {
            self.stats.messages += 1;
            if self.net.blocked.contains(&(m.from, m.to)) || self.rng.chance(self.net.drop_pm) {
                continue;
            }
            let copies = if self.rng.chance(self.net.dup_pm) { 2 } else { 1 };
            for _ in 0..copies {
                let d = if self.rng.chance(20) {
                    self.rng.range(1, self.net.delay_max * 10 + 1)
                } else {
                    self.rng.range(1, self.net.delay_max + 1)
                };
                self.schedule(d, Ev::Deliver(m.clone()));
            }
        }
        let mut ids = std::mem::take(&mut self.cluster.touched);
        ids.sort_unstable();
        ids.dedup();
        for &id in &ids {
            if !self.cluster.is_up(id) {
                continue;
            }
            let pending = self.cluster.pending_writes(id);
            let scheduled = *self.syncs_scheduled.get(&id).unwrap_or(&0);
            let inc = self.cluster.nodes[&id].incarnation;
            // Targeted fault: now and then crash a node between changing its term or
            // vote and that change reaching its disk.
            if pending > scheduled
                && self.cfg.faults
                && self.faults_active()
                && self.cluster.newest_write_has_hard_state(id)
                && self.rng.chance(40)
            {
                let d = self.rng.range(1, 5);
                self.schedule(d, Ev::Crash(id, inc));
            }
            for _ in scheduled..pending {
                let d = self.rng.range(2, self.disk_delay_max[&id]);
                self.schedule(d, Ev::Sync(id, inc));
            }
            self.syncs_scheduled.insert(id, pending.max(scheduled));
            if self.cluster.nodes[&id].install.is_some() && !self.install_scheduled.get(&id).copied().unwrap_or(false) {
                self.install_scheduled.insert(id, true);
                let d = self.rng.range(20, 5 * TICK_UNITS);
                self.schedule(d, Ev::Install(id, inc));
            }
        }
        ids
    }

    /// Per-step checks that need the driver's view, then client notifications.
    fn after_step(&mut self, touched: &[NodeId]) {
        for &id in touched {
            let n = &self.cluster.nodes[&id];
            let Some(r) = n.raft() else { continue };
            let t = r.term();
            self.stats.max_term = self.stats.max_term.max(t);
            let (c, a) = (r.committed(), n.sm_applied);
            if let Some(&(pc, pa)) = self.last_commit.get(&id) {
                assert!(c >= pc, "node {id}: commit went backwards {pc} -> {c}");
                assert!(a >= pa, "node {id}: applied went backwards {pa} -> {a}");
            }
            self.last_commit.insert(id, (c, a));
        }
        self.stats.leaders = self.cluster.check.leaders.len() as u64;
        let notes = std::mem::take(&mut self.cluster.notes);
        for n in notes {
            self.on_note(n);
        }
        self.cluster.events.clear();
        self.cluster.read_states.clear();
    }

    fn chaos(&mut self) {
        let ids: Vec<NodeId> = self.cluster.nodes.keys().copied().collect();
        let n = ids.len() as u64;
        let roll = self.rng.range(0, 99);
        let leader = self.cluster.leader();
        if self.cfg.faults && roll < 25 {
            let up: Vec<NodeId> = ids.iter().copied().filter(|&i| self.cluster.is_up(i)).collect();
            if (n - up.len() as u64) < n.div_ceil(2) {
                // Prefer a node with unsynced writes: that is where durability bugs hide.
                let dirty: Vec<NodeId> = up.iter().copied().filter(|&i| self.cluster.pending_writes(i) > 0).collect();
                let pool = if !dirty.is_empty() && self.rng.chance(600) { dirty } else { up.clone() };
                if let Some(&victim) = self.rng.pick(&pool) {
                    self.trace(|| format!("chaos: crash {victim}"));
                    self.crash(victim);
                    self.stats.crashes += 1;
                    self.syncs_scheduled.insert(victim, 0);
                    let d = if self.rng.chance(500) {
                        self.rng.range(10, 2 * TICK_UNITS)
                    } else {
                        self.rng.range(2 * TICK_UNITS, 40 * TICK_UNITS)
                    };
                    self.schedule(d, Ev::Restart(victim));
                }
            }
        } else if self.cfg.faults && roll < 37 {
            self.stats.partitions += 1;
            // Half the time cut off the leader itself: clients keep talking to it,
            // which is where stale reads (lease, ReadIndex) would surface.
            let side: Vec<NodeId> = match leader {
                Some(l) if self.rng.chance(500) => vec![l],
                _ => ids.iter().copied().filter(|_| self.rng.chance(400)).collect(),
            };
            let one_way = self.rng.chance(300);
            for &a in &side {
                for &b in &ids {
                    if !side.contains(&b) {
                        self.net.blocked.insert((a, b));
                        if !one_way {
                            self.net.blocked.insert((b, a));
                        }
                    }
                }
            }
            self.trace(|| format!("chaos: partition {side:?} one_way={one_way}"));
        } else if self.cfg.faults && roll < 41 {
            // A stall: the leader half the time (its lease is what a stall
            // must not stretch), for 1.2 to 4 election timeouts.
            let up: Vec<NodeId> =
                ids.iter().copied().filter(|&i| self.cluster.is_up(i) && self.paused(i).is_none()).collect();
            let victim = match leader {
                Some(l) if self.paused(l).is_none() && self.rng.chance(500) => Some(l),
                _ => self.rng.pick(&up).copied(),
            };
            if let Some(v) = victim {
                let d = self.rng.range(12, 40) * TICK_UNITS;
                self.paused_until.insert(v, self.now + d);
                self.stats.pauses += 1;
                self.trace(|| format!("chaos: pause {v} for {d}"));
            }
        } else if self.cfg.faults && roll < 47 {
            self.net.blocked.clear();
            self.trace(|| "chaos: heal partitions".into());
        } else if self.cfg.faults && roll < 55 {
            self.net.drop_pm = *self.rng.pick(&[0, 0, 20, 100, 250]).expect("non-empty");
            self.net.dup_pm = *self.rng.pick(&[0, 0, 20, 100]).expect("non-empty");
            self.net.delay_max = *self.rng.pick(&[5, 20, 60, 150]).expect("non-empty");
            let (d, u, m) = (self.net.drop_pm, self.net.dup_pm, self.net.delay_max);
            self.trace(|| format!("chaos: drop {d}‰ dup {u}‰ delay<={m}"));
        } else if self.cfg.churn && roll < 85 {
            // A stopped leader takes no admin call until it runs again.
            let Some(l) = leader.filter(|&l| self.paused(l).is_none()) else { return };
            let conf = self.cluster.raft(l).configuration().clone();
            let mut kind = self.rng.range(0, 5);
            if (kind == 3 || kind == 4) && conf.learners.is_empty() && self.rng.chance(850) {
                kind = 2; // no learner to promote or remove: make one
            }
            // Mostly pick a node the command makes sense for; sometimes any node,
            // so refusals are exercised too.
            let fitting: Vec<NodeId> = ids
                .iter()
                .copied()
                .filter(|&i| match kind {
                    0 | 2 => !conf.is_voter(i) && (kind == 0 || !conf.is_learner(i)),
                    1 => conf.voters.contains(&i),
                    3 | 4 => conf.is_learner(i),
                    _ => true,
                })
                .collect();
            let pool = if !fitting.is_empty() && self.rng.chance(850) { fitting } else { ids.clone() };
            let pick = *self.rng.pick(&pool).expect("non-empty");
            let r = match kind {
                0 => self.cluster.admin(l, |r| r.add_peer(pick)),
                1 if conf.voters.len() > 1 => self.cluster.admin(l, |r| r.remove_peer(pick)),
                2 => self.cluster.admin(l, |r| r.add_learner(pick)),
                3 => self.cluster.admin(l, |r| r.promote_learner(pick)),
                4 => self.cluster.admin(l, |r| r.remove_learner(pick)),
                _ => {
                    let voters: Vec<NodeId> = ids.iter().copied().filter(|_| self.rng.chance(600)).collect();
                    let learners: Vec<NodeId> = ids
                        .iter()
                        .copied()
                        .filter(|i| !voters.contains(i) && !conf.voters.contains(i) && self.rng.chance(300))
                        .collect();
                    if voters.is_empty() {
                        Err(RaftError::Busy)
                    } else {
                        self.cluster.admin(l, |r| r.change_peers(voters, learners))
                    }
                }
            };
            if r.is_ok() {
                self.stats.conf_changes += 1;
            }
            self.trace(|| format!("chaos: conf change kind {kind} node {pick} on {l}: {r:?}"));
            self.cluster.process(l);
        } else if self.cfg.churn {
            let Some(l) = leader.filter(|&l| self.paused(l).is_none()) else { return };
            let voters: Vec<NodeId> =
                self.cluster.raft(l).configuration().voters.iter().copied().filter(|&v| v != l).collect();
            let target = if self.rng.chance(400) || voters.is_empty() {
                None
            } else if self.rng.chance(900) {
                Some(*self.rng.pick(&voters).expect("non-empty"))
            } else {
                Some(*self.rng.pick(&ids).expect("non-empty"))
            };
            let r = self.cluster.admin(l, |r| r.transfer_leader(target));
            if r.is_ok() {
                self.stats.transfers += 1;
            }
            self.trace(|| format!("chaos: transfer from {l} to {target:?}: {r:?}"));
            self.cluster.process(l);
        }
    }
}

/// Runs one seed, catching a violation as Err(message + replay command).
pub fn run_seed(cfg: SimConfig) -> Result<Outcome, String> {
    let replay = cfg.replay_command();
    let seed = cfg.seed;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Sim::new(cfg).run()));
    r.map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("seed {seed} failed: {msg}\nreplay: {replay}")
    })
}
