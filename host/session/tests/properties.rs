//! Randomised properties of the envelope codec and the session table, one
//! seed per run. A failure names its seed and the command that replays it:
//! `WAFT_SESSION_SEED=N cargo test --release -p waft-session --test properties`.
//! `WAFT_SESSION_SEEDS=N` runs N seeds instead of the default.

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use waft_session::{Body, Envelope, SessionConfig, SessionError, SessionTable, Ticket, Verdict, snapshot_bytes_max};

const SEEDS_DEFAULT: u64 = 400;

/// splitmix64: the tests' only randomness, so a seed replays a run.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi].
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// Runs `f` for every seed, turning a panic into a report that names the seed.
fn for_seeds(test: &str, f: impl Fn(u64) + std::panic::RefUnwindSafe) {
    let seeds: Vec<u64> = match env_u64("WAFT_SESSION_SEED") {
        Some(s) => vec![s],
        None => (0..env_u64("WAFT_SESSION_SEEDS").unwrap_or(SEEDS_DEFAULT)).collect(),
    };
    for seed in seeds {
        if let Err(e) = std::panic::catch_unwind(|| f(seed)) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "{test}: seed {seed} failed: {msg}\nreplay: WAFT_SESSION_SEED={seed} cargo test --release -p waft-session --test properties {test}"
            );
        }
    }
}

fn random_envelope(r: &mut Rng) -> Envelope {
    let len = r.range(0, 40);
    let payload = Bytes::from((0..len).map(|_| r.next() as u8).collect::<Vec<_>>());
    let small = |r: &mut Rng| {
        let bits = r.range(1, 63);
        r.range(1, 1 << bits)
    };
    let body = match r.range(0, 4) {
        0 => Body::Plain { payload },
        1 => Body::Register { nonce: r.chance(500).then(|| (r.next() as u128) << 64 | r.next() as u128) },
        2 => {
            let seq = small(r);
            Body::Command { session_id: small(r), seq, lowest_unacked_seq: r.range(1, seq), payload }
        }
        3 => Body::KeepAlive { session_id: small(r), lowest_unacked_seq: small(r) },
        _ => Body::Unregister { session_id: small(r) },
    };
    Envelope::new(r.next(), body)
}

#[test]
fn envelopes_round_trip_and_damaged_ones_never_panic() {
    for_seeds("envelopes_round_trip_and_damaged_ones_never_panic", |seed| {
        let mut r = Rng::new(seed);
        for _ in 0..50 {
            let e = random_envelope(&mut r);
            let b = e.encode().expect("valid envelope");
            assert_eq!(Envelope::decode(&b).as_ref(), Ok(&e));
            for _ in 0..20 {
                let mut v = b.to_vec();
                match r.range(0, 2) {
                    0 => {
                        let i = r.range(0, v.len() as u64 - 1) as usize;
                        v[i] ^= 1 << r.range(0, 7);
                    }
                    1 => v.truncate(r.range(0, v.len() as u64) as usize),
                    _ => v.extend((0..r.range(1, 8)).map(|_| r.next() as u8)),
                }
                // Whatever decodes is canonical: it encodes back to the same bytes.
                let v = Bytes::from(v);
                if let Ok(d) = Envelope::decode(&v) {
                    assert_eq!(d.encode().expect("decoded is valid"), v);
                }
            }
        }
    });
}

/// A client of the model: numbers commands, retries copies, acknowledges replies.
#[derive(Default)]
struct Client {
    /// Bumped when the client starts over: answers to an older generation's
    /// registration are not its own (a real client matches them by request).
    generation: u64,
    nonce: Option<u128>,
    session: Option<u64>,
    registering: bool,
    next_seq: u64,
    /// Sent, no reply accepted yet.
    outstanding: BTreeSet<u64>,
}

impl Client {
    /// Forgets the session and starts over with a fresh nonce (or none).
    fn start_over(&mut self, r: &mut Rng) {
        *self = Client {
            generation: self.generation + 1,
            nonce: r.chance(700).then(|| r.next() as u128),
            next_seq: 1,
            ..Default::default()
        };
    }

    fn lowest_unacked(&self) -> u64 {
        self.outstanding.first().copied().unwrap_or(self.next_seq)
    }
}

/// One replica's table and the replies it owes (recorded when it flushes).
struct Replica {
    table: SessionTable,
    tickets: Vec<(Ticket, Bytes)>,
}

impl Replica {
    /// Runs the "guest" on the batch so far: hands in every owed reply, in
    /// an order the seed picks (the table must not care).
    fn flush(&mut self, r: &mut Rng) {
        while !self.tickets.is_empty() {
            let i = if r.chance(700) { 0 } else { r.range(0, self.tickets.len() as u64 - 1) as usize };
            let (t, reply) = self.tickets.remove(i);
            self.table.record_reply(t, reply);
        }
        self.table.check_invariants().expect("invariants");
    }
}

/// Verdicts that may differ between replicas that batch differently: a copy
/// of a command applied earlier in the same batch points at the original,
/// one in a later batch gets the saved reply (or hears it was discarded).
fn same_decision(a: &Verdict, b: &Verdict) -> bool {
    let dup = |v: &Verdict| {
        matches!(
            v,
            Verdict::Duplicate { .. }
                | Verdict::DuplicateInFlight { .. }
                | Verdict::Refused(SessionError::ReplyDiscarded { .. })
        )
    };
    a == b || (dup(a) && dup(b))
}

/// Clients retry and the network duplicates, delays and reorders their
/// copies; the log applies them to a table (and, after a snapshot, to a
/// restored twin in lockstep, which runs its guest at other points of each
/// batch). Every command applies at most once, every duplicate gets the
/// original's reply, and the twin decides alike and ends every batch equal.
#[test]
fn retried_commands_apply_once_and_a_restored_twin_agrees() {
    for_seeds("retried_commands_apply_once_and_a_restored_twin_agrees", |seed| {
        let mut r = Rng::new(seed);
        let cfg = SessionConfig {
            sessions_open_max: r.range(1, 5),
            window_commands_max: r.range(1, 6),
            session_idle_timeout_ms: r.range(50, 2_000),
            reply_bytes_per_session_max: r.range(0, 24),
            reply_bytes_total_max: r.range(24, 64),
        };
        let mut a = Replica { table: SessionTable::new(cfg.clone()).expect("valid limits"), tickets: Vec::new() };
        let mut twin: Option<Replica> = None;
        let mut clients: Vec<Client> = (0..r.range(1, 5))
            .map(|_| Client { nonce: r.chance(700).then(|| r.next() as u128), next_seq: 1, ..Default::default() })
            .collect();
        // Copies in the network: (client, its generation, envelope body) waiting to be appended.
        let mut net: Vec<(usize, u64, Body)> = Vec::new();
        // Replies in flight back to clients: (client, session, seq, reply).
        let mut replies: Vec<(usize, u64, u64, Bytes)> = Vec::new();
        // Ground truth: (session, seq) -> (index applied at, reply the guest gave).
        let mut applied: BTreeMap<(u64, u64), (u64, Bytes)> = BTreeMap::new();
        let mut accepted: BTreeMap<(u64, u64), Bytes> = BTreeMap::new();
        let mut counter = 0u64;
        let mut clock_ms = 1_000u64;
        let mut index = 0u64;
        for _step in 0..r.range(50, 600) {
            // Clients act.
            let ci = r.range(0, clients.len() as u64 - 1) as usize;
            let c = &mut clients[ci];
            let g = c.generation;
            match c.session {
                None if !c.registering || r.chance(100) => {
                    c.registering = true;
                    net.push((ci, g, Body::Register { nonce: c.nonce }));
                }
                None => {}
                Some(sid) => {
                    let lowest_unacked_seq = c.lowest_unacked();
                    let roll = r.range(0, 99);
                    if roll < 40 {
                        let seq = c.next_seq;
                        c.next_seq += 1;
                        c.outstanding.insert(seq);
                        net.push((ci, g, command(sid, seq, lowest_unacked_seq)));
                    } else if roll < 75 && !c.outstanding.is_empty() {
                        // Retry an outstanding command with the same seq.
                        let n = c.outstanding.len() as u64;
                        let seq = *c.outstanding.iter().nth(r.range(0, n - 1) as usize).expect("n > 0");
                        net.push((ci, g, command(sid, seq, lowest_unacked_seq.min(seq))));
                    } else if roll < 85 {
                        net.push((ci, g, Body::KeepAlive { session_id: sid, lowest_unacked_seq }));
                    } else if roll < 87 && c.outstanding.is_empty() {
                        net.push((ci, g, Body::Unregister { session_id: sid }));
                        c.start_over(&mut r);
                    }
                }
            }
            // The network duplicates now and then.
            if !net.is_empty() && r.chance(150) {
                let i = r.range(0, net.len() as u64 - 1) as usize;
                net.push(net[i].clone());
            }
            // Replies reach clients (or are lost).
            while !replies.is_empty() && r.chance(500) {
                let i = r.range(0, replies.len() as u64 - 1) as usize;
                let (ci, sid, seq, reply) = replies.swap_remove(i);
                let c = &mut clients[ci];
                if r.chance(100) || c.session != Some(sid) || !c.outstanding.remove(&seq) {
                    continue;
                }
                assert!(accepted.insert((sid, seq), reply).is_none(), "one reply per command");
            }
            // A leader's clock: mostly forward, sometimes a lagging new leader.
            clock_ms = if r.chance(50) {
                clock_ms.saturating_sub(r.range(0, 500))
            } else {
                clock_ms + r.range(0, cfg.session_idle_timeout_ms / 8)
            };
            if r.chance(10) {
                clock_ms += cfg.session_idle_timeout_ms + 1;
            }
            // The log commits a batch of copies, in random order.
            if net.is_empty() || !r.chance(400) {
                continue;
            }
            for _ in 0..r.range(1, 6).min(net.len() as u64) {
                let i = r.range(0, net.len() as u64 - 1) as usize;
                let (ci, g, body) = net.swap_remove(i);
                index += r.range(1, 3); // no-ops and configuration entries take indexes too
                let e = Envelope::new(clock_ms, body.clone());
                let e = Envelope::decode(&e.encode().expect("valid")).expect("round trip");
                let v = a.table.apply(index, e.clone());
                if let Some(t) = &mut twin {
                    let tv = t.table.apply(index, e);
                    assert!(same_decision(&tv, &v), "the twin decides entry {index} as {tv:?}, not {v:?}");
                    if let Verdict::Apply { ticket: Some(tk), .. } = tv {
                        t.tickets.push((tk, reply_for(counter + 1)));
                    }
                    if r.chance(300) {
                        t.flush(&mut r);
                    }
                }
                let c = &mut clients[ci];
                match (v, body) {
                    (Verdict::Registered { session_id }, Body::Register { .. }) => {
                        if c.registering && c.session.is_none() && c.generation == g {
                            c.session = Some(session_id);
                            c.registering = false;
                        }
                    }
                    (Verdict::Apply { ticket: Some(tk), .. }, Body::Command { session_id, seq, .. }) => {
                        counter += 1;
                        let reply = reply_for(counter);
                        let prev = applied.insert((session_id, seq), (index, reply.clone()));
                        assert!(prev.is_none(), "session {session_id} seq {seq} applied twice");
                        assert_eq!((tk.session_id(), tk.seq(), tk.index()), (session_id, seq, index));
                        a.tickets.push((tk, reply.clone()));
                        replies.push((ci, session_id, seq, reply));
                    }
                    (Verdict::Duplicate { reply }, Body::Command { session_id, seq, .. }) => {
                        assert_eq!(applied[&(session_id, seq)].1, reply, "a duplicate gets the original's reply");
                        replies.push((ci, session_id, seq, reply));
                    }
                    (Verdict::DuplicateInFlight { original_index }, Body::Command { session_id, seq, .. }) => {
                        let (at, reply) = applied[&(session_id, seq)].clone();
                        assert_eq!(at, original_index);
                        replies.push((ci, session_id, seq, reply));
                    }
                    (Verdict::Refused(SessionError::UnknownOrExpired { session_id }), _) => {
                        if c.session == Some(session_id) {
                            // The client starts over; its unanswered commands stay unknown.
                            c.start_over(&mut r);
                        }
                    }
                    (Verdict::Refused(SessionError::ReplyDiscarded { session_id, seq }), _) => {
                        assert!(applied.contains_key(&(session_id, seq)), "discarded means applied");
                    }
                    (Verdict::Refused(SessionError::Stale { session_id, seq, .. }), _) => {
                        assert!(
                            accepted.contains_key(&(session_id, seq)) || c.session != Some(session_id),
                            "stale only below what the client acknowledged"
                        );
                    }
                    (Verdict::Refused(SessionError::TableFull { .. }), Body::Register { .. }) => {
                        if c.generation == g {
                            c.registering = false;
                        }
                    }
                    (Verdict::Refused(SessionError::WindowFull { .. }), Body::Command { .. }) => {}
                    (Verdict::Done, Body::KeepAlive { .. } | Body::Unregister { .. }) => {}
                    (v, b) => panic!("verdict {v:?} for {b:?}"),
                }
            }
            a.flush(&mut r);
            if let Some(t) = &mut twin {
                t.flush(&mut r);
                assert_eq!(t.table, a.table, "twin diverged after index {index}");
            }
            // Now and then a replica restores from the other's snapshot.
            if r.chance(80) {
                let snap = a.table.encode_snapshot().expect("between batches");
                assert!(snap.len() as u64 <= snapshot_bytes_max(&cfg));
                let table = SessionTable::decode_snapshot(cfg.clone(), &snap).expect("own snapshot");
                assert_eq!(table, a.table);
                twin = Some(Replica { table, tickets: Vec::new() });
            }
        }
        // Every reply a client accepted is the one its command's single application gave.
        for (k, reply) in &accepted {
            assert_eq!(&applied[k].1, reply, "client accepted a reply not from its command");
        }
    });
}

fn command(session_id: u64, seq: u64, lowest_unacked_seq: u64) -> Body {
    Body::Command { session_id, seq, lowest_unacked_seq, payload: Bytes::from_static(b"incr") }
}

/// The model guest: an increment-and-get counter whose reply is its new value.
fn reply_for(counter: u64) -> Bytes {
    Bytes::from(counter.to_string())
}

/// A stream of random, mostly meaningless envelopes never panics the table or
/// breaks its invariants, and its snapshots always restore.
#[test]
fn random_entries_keep_every_invariant() {
    for_seeds("random_entries_keep_every_invariant", |seed| {
        let mut r = Rng::new(seed);
        let cfg = SessionConfig {
            sessions_open_max: r.range(1, 8),
            window_commands_max: r.range(1, 8),
            session_idle_timeout_ms: r.range(1, 100),
            reply_bytes_per_session_max: r.range(0, 16),
            reply_bytes_total_max: r.range(16, 48),
        };
        let mut t = SessionTable::new(cfg.clone()).expect("valid limits");
        let mut pending = Vec::new();
        for index in 1..r.range(2, 400) {
            let sid = r.range(1, index);
            let seq = r.range(1, 12);
            let body = match r.range(0, 5) {
                0 => Body::Register { nonce: r.chance(500).then(|| r.range(0, 3) as u128) },
                1 | 2 => command(sid, seq, r.range(1, seq)),
                3 => Body::KeepAlive { session_id: sid, lowest_unacked_seq: r.range(1, 12) },
                4 => Body::Unregister { session_id: sid },
                _ => Body::Plain { payload: Bytes::new() },
            };
            if let Verdict::Apply { ticket: Some(tk), .. } = t.apply(index, Envelope::new(r.range(0, index * 10), body))
            {
                pending.push(tk);
            }
            if r.chance(300) {
                for tk in pending.drain(..) {
                    let n = r.range(0, 12) as usize;
                    t.record_reply(tk, Bytes::from(vec![1u8; n]));
                }
                t.check_invariants().expect("invariants");
                let snap = t.encode_snapshot().expect("no pending");
                assert_eq!(SessionTable::decode_snapshot(cfg.clone(), &snap).expect("restores"), t);
            }
        }
    });
}
