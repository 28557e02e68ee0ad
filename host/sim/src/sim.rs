//! The randomized simulator: one seed decides the cluster size, the network
//! faults (loss, duplication, reordering, delay, partitions), crashes and
//! restarts, clock drift, membership churn, leader transfers and the client
//! workload. Safety is checked after every step (by `cluster`), liveness after
//! faults stop, and linearizability of the client history at the end.
//! Must never read the wall clock or OS randomness.

use crate::cluster::{Cluster, Note};
use crate::lin::{self, HistOp};
use crate::model::{Command, Op};
use crate::rng::{Rng, fnv};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use waft_raft::*;

/// Simulated time units per nominal tick.
pub const TICK_UNITS: u64 = 100;

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
    pub trace: bool,
}

impl SimConfig {
    /// Everything about a run derives from its seed, so the seed alone replays it.
    pub fn from_seed(seed: u64) -> SimConfig {
        let mut r = Rng::new(seed ^ 0xC0FF_EE00);
        let nodes = r.range(1, 7);
        let voters = if nodes == 1 {
            1
        } else {
            r.range(1.min(nodes), nodes)
                .max(if r.chance(800) { 3.min(nodes) } else { 1 })
        };
        SimConfig {
            seed,
            nodes,
            voters,
            fault_ticks: r.range(150, 400),
            // Generous: with priorities far apart, SOFAJRaft's target decay alone can
            // take ~300 ticks when the top-priority node holds a stale log.
            settle_ticks: 1000,
            faults: true,
            churn: true,
            clients: r.range(1, 4),
            keys: r.range(1, 3) as u8,
            trace: false,
        }
    }

    pub fn replay_command(&self) -> String {
        format!(
            "cargo run --release -p waft-sim --bin sim -- --seed {} --trace",
            self.seed
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
    pub reads_ok: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub conf_changes: u64,
    pub transfers: u64,
    pub snapshots_installed: u64,
    pub max_commit: u64,
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
    Client(u64),
    ClientTimeout(u64, u64),
    Chaos,
    Heal,
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

#[derive(Clone, Debug)]
enum Waiting {
    Write {
        node: NodeId,
        index: u64,
        op_id: u64,
    },
    Read {
        node: NodeId,
        id: u64,
    },
}

#[derive(Clone, Debug)]
struct Client {
    seq: u64,
    waiting: Option<(Waiting, HistOp)>,
    leader_guess: NodeId,
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
    /// Per-node disk latency bound (some disks are slow, widening crash windows).
    disk_delay_max: BTreeMap<NodeId, u64>,
    syncs_scheduled: BTreeMap<NodeId, usize>,
    install_scheduled: BTreeMap<NodeId, bool>,
    clients: Vec<Client>,
    history: Vec<HistOp>,
    /// Writes whose client timed out: (op id, call), settled at the end.
    unknown: Vec<(u64, HistOp)>,
    /// op id -> (time, output) of its first application on any node.
    first_applied: BTreeMap<u64, (u64, u64)>,
    next_op_id: u64,
    healed_at: Option<u64>,
    progressed_after_heal: bool,
    last_commit: BTreeMap<NodeId, (u64, u64)>,
    pub stats: Stats,
}

/// Client operations time out after this many ticks (outcome unknown).
const CLIENT_TIMEOUT_TICKS: u64 = 25;
/// Ticks a run continues after the first post-heal write committed.
const SETTLE_AFTER_PROGRESS_TICKS: u64 = 50;
/// Safety valve: events processed per run.
const STEPS_MAX: u64 = 5_000_000;

pub fn node_config(
    id: NodeId,
    seed: u64,
    rng: &mut Rng,
    priorities: &BTreeMap<NodeId, Priority>,
) -> Config {
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
        let mut cluster = Cluster::new(&ids, &voters, |id| {
            node_config(id, seed, &mut cfg_rng.clone().fork(), &priorities)
        });
        // Per-node knobs from one stream (the closure above must be Fn, so re-derive).
        for &id in &ids {
            let mut c = node_config(id, seed, &mut cfg_rng, &priorities);
            c.check_quorum = check_quorum;
            c.pre_vote = pre_vote;
            let node = cluster.nodes.get_mut(&id).expect("node");
            node.cfg = c.clone();
            node.raft =
                Some(RawNode::new(c, node.durable.snapshot.config.clone()).expect("valid config"));
            node.auto_sync = false;
        }
        if cfg.trace {
            cluster.trace = Some(Vec::new());
        }
        let mut tick_period = BTreeMap::new();
        for &id in &ids {
            // Clock drift: some nodes tick up to ~18% faster than nominal.
            let p = if cfg.faults && rng.chance(400) {
                rng.range(85, 100)
            } else {
                TICK_UNITS
            };
            tick_period.insert(id, p);
        }
        let mut disk_delay_max = BTreeMap::new();
        for &id in &ids {
            disk_delay_max.insert(
                id,
                if rng.chance(300) {
                    rng.range(50, 400)
                } else {
                    40
                },
            );
        }
        let clients = (0..cfg.clients)
            .map(|_| Client {
                seq: 0,
                waiting: None,
                leader_guess: 1,
            })
            .collect();
        let mut sim = Sim {
            cfg,
            cluster,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            net: Net {
                delay_max: 20,
                ..Default::default()
            },
            tick_period,
            disk_delay_max,
            syncs_scheduled: BTreeMap::new(),
            install_scheduled: BTreeMap::new(),
            clients,
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
        sim
    }

    fn schedule(&mut self, delay: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at: self.now + delay,
            seq: self.seq,
            ev: Box::new(ev),
        });
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
            self.stats.steps += 1;
            assert!(self.stats.steps < STEPS_MAX, "event budget exhausted");
            self.handle(*s.ev);
            let touched = self.route();
            self.after_step(&touched);
        }
        if !self.progressed_after_heal {
            panic!(
                "no progress: no write committed within {} ticks after faults stopped",
                self.cfg.settle_ticks
            );
        }
        // Whatever is still waiting has an unknown outcome.
        for c in &mut self.clients {
            if let Some((Waiting::Write { op_id, .. }, h)) = c.waiting.take() {
                self.unknown.push((op_id, h));
                self.stats.writes_unknown += 1;
            }
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
            let r = n
                .raft
                .as_ref()
                .map_or((0, 0), |r| (r.term(), r.committed()));
            h = fnv(h, &[*id as u8]);
            h = fnv(h, &r.0.to_le_bytes());
            h = fnv(h, &r.1.to_le_bytes());
        }
        self.stats.max_commit = self
            .cluster
            .check
            .committed
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0);
        Outcome {
            trace_hash: h,
            stats: self.stats.clone(),
            trace: self.cluster.trace.take().unwrap_or_default(),
        }
    }

    fn faults_active(&self) -> bool {
        self.healed_at.is_none()
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Tick(id) => {
                self.cluster.tick(id);
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
            Ev::Restart(id) => {
                if !self.cluster.is_up(id) {
                    self.cluster.restart(id);
                    self.syncs_scheduled.insert(id, 0);
                    self.install_scheduled.insert(id, false);
                    self.last_commit.remove(&id);
                }
            }
            Ev::Crash(id, inc) => {
                let down = self
                    .cluster
                    .nodes
                    .keys()
                    .filter(|&&i| !self.cluster.is_up(i))
                    .count() as u64;
                let n = self.cluster.nodes.len() as u64;
                if self.faults_active()
                    && self.cluster.nodes[&id].incarnation == inc
                    && self.cluster.is_up(id)
                    && down < n.div_ceil(2)
                {
                    self.trace(|| format!("chaos: crash {id} before its vote is durable"));
                    self.cluster.crash(id);
                    self.stats.crashes += 1;
                    self.syncs_scheduled.insert(id, 0);
                    let d = self.rng.range(10, 3 * TICK_UNITS);
                    self.schedule(d, Ev::Restart(id));
                }
            }
            Ev::Client(c) => self.client_start(c),
            Ev::ClientTimeout(c, seq) => self.client_timeout(c, seq),
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
        self.net = Net {
            delay_max: 20,
            ..Default::default()
        };
        let down: Vec<NodeId> = self
            .cluster
            .nodes
            .keys()
            .copied()
            .filter(|&id| !self.cluster.is_up(id))
            .collect();
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
            let copies = if self.rng.chance(self.net.dup_pm) {
                2
            } else {
                1
            };
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
            if self.cluster.nodes[&id].install.is_some()
                && !self.install_scheduled.get(&id).copied().unwrap_or(false)
            {
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
            let Some(r) = &n.raft else { continue };
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

    fn on_note(&mut self, n: Note) {
        let now = self.now;
        if let Note::Applied { op_id, output, .. } = &n {
            self.first_applied.entry(*op_id).or_insert((now, *output));
        }
        for ci in 0..self.clients.len() {
            let c = &mut self.clients[ci];
            let Some((w, h)) = &c.waiting else { continue };
            match (&n, w) {
                (
                    Note::Applied {
                        node,
                        index,
                        op_id,
                        output,
                    },
                    Waiting::Write {
                        node: wn,
                        index: wi,
                        op_id: wo,
                    },
                ) if node == wn => {
                    if op_id == wo {
                        let mut h = *h;
                        h.response = Some(now);
                        h.output = *output;
                        self.history.push(h);
                        self.stats.writes_ok += 1;
                        if self.healed_at.is_some_and(|t| h.invoke >= t) {
                            self.progressed_after_heal = true;
                        }
                        c.waiting = None;
                        let d = self.rng.range(1, 3 * TICK_UNITS);
                        self.schedule(d, Ev::Client(ci as u64));
                    } else if index == wi {
                        // Another entry committed at our index: ours never will.
                        c.waiting = None;
                        let d = self.rng.range(1, 3 * TICK_UNITS);
                        self.schedule(d, Ev::Client(ci as u64));
                    }
                }
                (Note::ReadDone { node, id, value_of }, Waiting::Read { node: wn, id: wid })
                    if node == wn && id == wid =>
                {
                    let mut h = *h;
                    h.response = Some(now);
                    h.output = value_of.get(h.key);
                    self.history.push(h);
                    self.stats.reads_ok += 1;
                    c.waiting = None;
                    let d = self.rng.range(1, 3 * TICK_UNITS);
                    self.schedule(d, Ev::Client(ci as u64));
                }
                _ => {}
            }
        }
    }

    fn client_start(&mut self, ci: u64) {
        if self.clients[ci as usize].waiting.is_some() {
            return;
        }
        let up: Vec<NodeId> = self
            .cluster
            .nodes
            .keys()
            .copied()
            .filter(|&id| self.cluster.is_up(id))
            .collect();
        let guess = self.clients[ci as usize].leader_guess;
        let node = if self.cluster.is_up(guess) && self.rng.chance(700) {
            guess
        } else {
            *self.rng.pick(&up).unwrap_or(&1)
        };
        let retry = self.rng.range(TICK_UNITS / 2, 2 * TICK_UNITS);
        if !self.cluster.is_up(node) {
            self.schedule(retry, Ev::Client(ci));
            return;
        }
        let key = self.rng.range(0, self.cfg.keys as u64 - 1) as u8;
        let roll = self.rng.range(0, 99);
        let op_id = self.next_op_id;
        self.next_op_id += 1;
        let op = if roll < 30 {
            Op::Put(op_id)
        } else if roll < 55 {
            Op::Incr
        } else {
            Op::Get
        };
        let h = HistOp {
            key,
            op,
            invoke: self.now,
            response: None,
            output: 0,
        };
        let res = match op {
            Op::Get => {
                let mode = if self.rng.chance(500) {
                    ReadMode::Lease
                } else {
                    ReadMode::Safe
                };
                self.cluster
                    .raft_mut(node)
                    .read_index(op_id, mode)
                    .map(|_| Waiting::Read { node, id: op_id })
            }
            _ => {
                let cmd = Command { op_id, key, op };
                self.cluster
                    .raft_mut(node)
                    .propose(cmd.encode())
                    .map(|(index, _)| Waiting::Write { node, index, op_id })
            }
        };
        self.cluster.process(node);
        self.trace(|| format!("client {ci}: {op:?} key {key} at node {node}: {res:?}"));
        match res {
            Ok(w) => {
                let c = &mut self.clients[ci as usize];
                c.seq += 1;
                c.waiting = Some((w, h));
                let seq = c.seq;
                self.schedule(
                    CLIENT_TIMEOUT_TICKS * TICK_UNITS,
                    Ev::ClientTimeout(ci, seq),
                );
            }
            Err(e) => {
                if let RaftError::NotLeader {
                    leader_hint: Some(l),
                } = e
                {
                    self.clients[ci as usize].leader_guess = l;
                } else if let RaftError::NotLeader { leader_hint: None } = e {
                    self.clients[ci as usize].leader_guess = *self.rng.pick(&up).unwrap_or(&1);
                }
                self.schedule(retry, Ev::Client(ci));
            }
        }
    }

    fn client_timeout(&mut self, ci: u64, seq: u64) {
        let c = &mut self.clients[ci as usize];
        if c.seq != seq {
            return;
        }
        let Some((w, mut h)) = c.waiting.take() else {
            return;
        };
        if let Waiting::Write { op_id, .. } = w {
            h.response = None;
            self.unknown.push((op_id, h));
            self.stats.writes_unknown += 1;
        }
        let up: Vec<NodeId> = self
            .cluster
            .nodes
            .keys()
            .copied()
            .filter(|&id| self.cluster.is_up(id))
            .collect();
        self.clients[ci as usize].leader_guess = *self.rng.pick(&up).unwrap_or(&1);
        self.schedule(1, Ev::Client(ci));
    }

    fn chaos(&mut self) {
        let ids: Vec<NodeId> = self.cluster.nodes.keys().copied().collect();
        let n = ids.len() as u64;
        let roll = self.rng.range(0, 99);
        let leader = self.cluster.leader();
        if self.cfg.faults && roll < 25 {
            let up: Vec<NodeId> = ids
                .iter()
                .copied()
                .filter(|&i| self.cluster.is_up(i))
                .collect();
            if (n - up.len() as u64) < n.div_ceil(2) {
                // Prefer a node with unsynced writes: that is where durability bugs hide.
                let dirty: Vec<NodeId> = up
                    .iter()
                    .copied()
                    .filter(|&i| self.cluster.pending_writes(i) > 0)
                    .collect();
                let pool = if !dirty.is_empty() && self.rng.chance(600) {
                    dirty
                } else {
                    up.clone()
                };
                if let Some(&victim) = self.rng.pick(&pool) {
                    self.trace(|| format!("chaos: crash {victim}"));
                    self.cluster.crash(victim);
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
                _ => ids
                    .iter()
                    .copied()
                    .filter(|_| self.rng.chance(400))
                    .collect(),
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
            let Some(l) = leader else { return };
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
            let pool = if !fitting.is_empty() && self.rng.chance(850) {
                fitting
            } else {
                ids.clone()
            };
            let pick = *self.rng.pick(&pool).expect("non-empty");
            let r = match kind {
                0 => self.cluster.raft_mut(l).add_peer(pick),
                1 if conf.voters.len() > 1 => self.cluster.raft_mut(l).remove_peer(pick),
                2 => self.cluster.raft_mut(l).add_learner(pick),
                3 => self.cluster.raft_mut(l).promote_learner(pick),
                4 => self.cluster.raft_mut(l).remove_learner(pick),
                _ => {
                    let voters: Vec<NodeId> = ids
                        .iter()
                        .copied()
                        .filter(|_| self.rng.chance(600))
                        .collect();
                    let learners: Vec<NodeId> = ids
                        .iter()
                        .copied()
                        .filter(|i| {
                            !voters.contains(i) && !conf.voters.contains(i) && self.rng.chance(300)
                        })
                        .collect();
                    if voters.is_empty() {
                        Err(RaftError::Busy)
                    } else {
                        self.cluster.raft_mut(l).change_peers(voters, learners)
                    }
                }
            };
            if r.is_ok() {
                self.stats.conf_changes += 1;
            }
            self.trace(|| format!("chaos: conf change kind {kind} node {pick} on {l}: {r:?}"));
            self.cluster.process(l);
        } else if self.cfg.churn {
            let Some(l) = leader else { return };
            let voters: Vec<NodeId> = self
                .cluster
                .raft(l)
                .configuration()
                .voters
                .iter()
                .copied()
                .filter(|&v| v != l)
                .collect();
            let target = if self.rng.chance(400) || voters.is_empty() {
                None
            } else if self.rng.chance(900) {
                Some(*self.rng.pick(&voters).expect("non-empty"))
            } else {
                Some(*self.rng.pick(&ids).expect("non-empty"))
            };
            let r = self.cluster.raft_mut(l).transfer_leader(target);
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
