//! Determinism by construction: what a replica's state becomes depends on
//! the entries alone — not on batching, restarts from a snapshot, queries,
//! leader hooks, fault re-runs or heap history — and host work is paid from
//! the guest's budget. Each test drives real guests (tests/guests/hostile,
//! tests/guests/probe) through `StateMachine` as a replica would.
//!
//! Randomised logs take a seed (`WAFT_TEST_SEED`, else a fixed one) and
//! print it on failure.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use waft_runtime::{ApplyError, Engine, Entry, FaultKind, Limits, Module, RuntimeError, StateMachine};

const GROUP: u64 = 7;

fn hostile_module() -> Module {
    load(&Engine::new().unwrap(), "waft_hostile")
}

fn group_machine(module: &Module, limits: Limits) -> StateMachine {
    StateMachine::for_group(module, limits, GROUP, "test").unwrap()
}

fn fault_kind(r: &waft_runtime::ApplyResult) -> Option<FaultKind> {
    match r {
        Err(ApplyError::Fault(f)) => Some(f.kind),
        _ => None,
    }
}

fn seed() -> u64 {
    std::env::var("WAFT_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed)
}

/// A splitmix64 step, for building logs from a seed.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A log of `n` hostile-guest commands drawn from `seed`: random draws (kept
/// in a std `HashMap` too), counter updates, query-count records.
fn hostile_log(seed: u64, n: usize) -> Vec<Entry> {
    let mut state = seed;
    let commands: Vec<String> = (0..n)
        .map(|_| match next(&mut state) % 4 {
            0 | 1 => format!(r#"{{"draw":{}}}"#, 1 + next(&mut state) % 40),
            2 => format!(r#"{{"incr":{}}}"#, next(&mut state) % 1000),
            _ => r#""record_query_count""#.to_string(),
        })
        .collect();
    commands.iter().enumerate().map(|(i, c)| Entry::new(i as u64 + 1, 1, c.clone().into_bytes())).collect()
}

/// Applies `log` in batches of `batch` entries; after each batch runs
/// `between` (queries, hooks) on the machine.
fn apply_in_batches(sm: &mut StateMachine, log: &[Entry], batch: usize, mut between: impl FnMut(&mut StateMachine)) {
    for chunk in log.chunks(batch) {
        let results = sm.apply(chunk).unwrap();
        assert_eq!(results.len(), chunk.len());
        between(sm);
    }
}

fn queries(sm: &mut StateMachine) {
    for q in [&br#""count""#[..], br#""build_hashmap""#, br#""count""#, br#""state_digest""#] {
        sm.query(q).unwrap();
    }
    sm.on_leader_start(3).unwrap();
    sm.on_leader_stop().unwrap();
}

#[test]
fn the_same_log_gives_the_same_bytes_whatever_the_batching_restarts_and_queries() {
    let seed = seed();
    let module = hostile_module();
    let log = hostile_log(seed, 600);
    let limits = Limits { replay_entries_max: 100, ..Limits::default() };

    let mut reference = group_machine(&module, limits.clone());
    apply_in_batches(&mut reference, &log, 1, |_| {});
    let want = snapshot(&mut reference);

    for batch in [1, 7, 64, 1024] {
        // Plain, with queries and hooks between batches.
        let mut sm = group_machine(&module, limits.clone());
        apply_in_batches(&mut sm, &log, batch, queries);
        assert!(snapshot(&mut sm) == want, "seed {seed}: batches of {batch} with queries between differ");

        // A restart from a snapshot in the middle: a fresh machine loads
        // the state saved at entry 250 and applies the rest.
        let mut first = group_machine(&module, limits.clone());
        apply_in_batches(&mut first, &log[..250], batch, |_| {});
        let mid = snapshot(&mut first);
        let mut second = group_machine(&module, limits.clone());
        second.load_snapshot(std::io::Cursor::new(mid)).unwrap();
        apply_in_batches(&mut second, &log[250..], batch, queries);
        assert!(snapshot(&mut second) == want, "seed {seed}: batches of {batch} across a restart differ");
    }
}

#[test]
fn what_an_entry_draws_depends_on_its_group_and_index_only() {
    let module = hostile_module();
    let draw = |group: u64, index: u64, before: &[Entry]| {
        let mut sm = StateMachine::for_group(&module, Limits::default(), group, "test").unwrap();
        sm.apply(before).unwrap();
        for _ in 0..3 {
            sm.query(br#""build_hashmap""#).unwrap();
        }
        let r = sm.apply(&[Entry::new(index, 1, br#"{"draw":16}"#.to_vec())]).unwrap();
        String::from_utf8(r[0].clone().unwrap().to_vec()).unwrap()
    };
    let a = draw(GROUP, 50, &[]);
    assert_eq!(a, draw(GROUP, 50, &entries(1, &[r#"{"draw":8}"#, r#"{"incr":1}"#])), "what came before");
    assert_ne!(a, draw(GROUP, 51, &[]), "another index draws another stream");
    assert_ne!(a, draw(GROUP + 1, 50, &[]), "another group draws another stream");
}

#[test]
fn a_query_does_not_move_what_an_entry_hashes() {
    // Every query builds a randomly seeded std `HashMap`; `store_hash`
    // hashes with a fresh std `RandomState`, whose keys come from the first
    // draw this instance made and a count of those made since. Queries run
    // elsewhere, so they move neither.
    let module = hostile_module();
    let store_hash = |queries: usize| {
        let mut sm = group_machine(&module, Limits::default());
        sm.apply(&entries(1, &[r#"{"incr":1}"#])).unwrap();
        for _ in 0..queries {
            sm.query(br#""build_hashmap""#).unwrap();
        }
        let r = sm.apply(&[Entry::new(2, 1, br#"{"store_hash":42}"#.to_vec())]).unwrap();
        String::from_utf8(r[0].clone().unwrap().to_vec()).unwrap()
    };
    assert_eq!(store_hash(0), store_hash(20));
}

#[test]
fn queries_and_leader_hooks_cannot_change_the_replicated_state() {
    let module = hostile_module();
    let mut sm = group_machine(&module, Limits::default());
    sm.apply(&entries(1, &[r#"{"incr":5}"#])).unwrap();
    let before = snapshot(&mut sm);
    for _ in 0..5 {
        sm.query(br#""count""#).unwrap();
    }
    // The query instance keeps its own count: queries see it, entries do not.
    assert_eq!(sm.query(br#""count""#).unwrap(), &b"6"[..]);
    sm.on_leader_start(2).unwrap();
    sm.on_leader_stop().unwrap();
    sm.on_leader_start(4).unwrap();
    assert!(snapshot(&mut sm) == before, "a query or a hook changed the apply instance");
    let r = sm.apply(&entries(2, &[r#""record_query_count""#])).unwrap();
    assert_eq!(r[0].as_deref().ok(), Some(&b"0"[..]), "the entry saw no query's count");
}

#[test]
fn a_query_sees_every_applied_entry() {
    let module = hostile_module();
    let mut sm = group_machine(&module, Limits { replay_entries_max: 10, ..Limits::default() });
    for i in 0..40u64 {
        sm.apply(&entries(i + 1, &[r#"{"incr":1}"#])).unwrap();
        assert_eq!(sm.query(br#""value""#).unwrap(), (i + 1).to_string().as_bytes(), "after entry {}", i + 1);
    }
}

#[test]
fn host_work_is_paid_from_the_entrys_fuel() {
    let module = hostile_module();
    let mut sm = group_machine(&module, Limits::default());
    for (command, what) in [
        (r#"{"log_spam":{"calls":2000000,"bytes":1}}"#, "two million log calls"),
        (r#"{"print_spam":{"calls":2000000,"bytes":1}}"#, "two million prints"),
        (r#""spin""#, "a spin"),
    ] {
        let started = Instant::now();
        let r = sm.apply(&entries(1, &[command])).unwrap();
        let took = started.elapsed();
        assert_eq!(fault_kind(&r[0]), Some(FaultKind::OutOfFuel), "{what}: {:?}", r[0]);
        assert!(took < Duration::from_secs(5), "{what} ran {took:?}");
        eprintln!("{what}: refused in {took:?}");
    }
    // Huge messages cost no more than the line the host keeps.
    let started = Instant::now();
    let r = sm.apply(&entries(2, &[r#"{"log_spam":{"calls":100,"bytes":104857600}}"#])).unwrap();
    eprintln!("100 log calls of 100 MiB: {:?} in {:?}", r[0].as_ref().map(|b| b.len()), started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(5));
    let r = sm.apply(&entries(3, &[r#"{"incr":1}"#])).unwrap();
    assert_eq!(r[0].as_deref().ok(), Some(&b"1"[..]), "the refused entries left nothing behind");
}

#[test]
fn a_memory_limit_hit_is_decided_by_the_state_not_the_heap_history() {
    let module = hostile_module();
    let limits = Limits { memory_bytes_max: 64 << 20, ..Limits::default() };
    // Holds 24 MiB, then 24 more, then frees the first: 24 MiB in use in a
    // heap that grew to about 48.
    let setup = entries(1, &[r#"{"reserve":24}"#, r#"{"reserve":24}"#, r#"{"free":0}"#]);
    let mut long_lived = group_machine(&module, limits.clone());
    long_lived.apply(&setup).unwrap();
    // A replica restored from a snapshot holds the same 24 MiB in a fresh heap.
    let mut restored = group_machine(&module, limits.clone());
    restored.load_snapshot(std::io::Cursor::new(snapshot(&mut long_lived))).unwrap();
    let big = entries(4, &[r#"{"reserve":36}"#]);
    let a = long_lived.apply(&big).unwrap();
    let b = restored.apply(&big).unwrap();
    assert_eq!(texts(&a), texts(&b), "the same entry on the same state: {a:?} vs {b:?}");
    assert!(snapshot(&mut long_lived) == snapshot(&mut restored));
    // An entry past even the doubled bound is refused everywhere.
    let huge = entries(5, &[r#"{"reserve":200}"#]);
    let a = long_lived.apply(&huge).unwrap();
    let b = restored.apply(&huge).unwrap();
    assert_eq!(fault_kind(&a[0]), Some(FaultKind::MemoryLimit), "{a:?}");
    assert_eq!(fault_kind(&b[0]), Some(FaultKind::MemoryLimit), "{b:?}");
    assert!(snapshot(&mut long_lived) == snapshot(&mut restored));
}

#[test]
fn a_result_past_its_limit_rejects_the_entry() {
    let module = hostile_module();
    let mut sm = group_machine(&module, Limits { result_bytes_max: 1 << 20, ..Limits::default() });
    sm.apply(&entries(1, &[r#"{"incr":1}"#])).unwrap();
    let r = sm.apply(&entries(2, &[r#"{"incr":1}"#, r#"{"big_result":2000000}"#, r#"{"incr":1}"#])).unwrap();
    assert_eq!(texts(&r)[0], "2");
    assert_eq!(fault_kind(&r[1]), Some(FaultKind::ResultTooLarge), "{:?}", r[1]);
    let Err(ApplyError::Fault(f)) = &r[1] else { unreachable!() };
    assert!(f.message.contains("result limit"), "{}", f.message);
    assert_eq!(texts(&r)[2], "3");
    let r = sm.apply(&entries(5, &[r#"{"big_result":1000}"#])).unwrap();
    assert!(r[0].is_ok(), "a result within the limit: {:?}", r[0]);
}

#[test]
fn a_snapshot_past_its_limit_fails_and_the_machine_goes_on() {
    let module = hostile_module();
    let mut sm = group_machine(&module, Limits { snapshot_bytes_max: 1 << 20, ..Limits::default() });
    sm.apply(&entries(1, &[r#"{"incr":1}"#, r#"{"pad_snapshot":2}"#])).unwrap();
    match sm.save_snapshot(Vec::new()) {
        Err(RuntimeError::Guest(e)) => assert!(e.contains("limit"), "{e}"),
        other => panic!("a 2 MiB snapshot past a 1 MiB limit: {:?}", other.map(|(b, n)| (b.len(), n))),
    }
    sm.apply(&entries(3, &[r#"{"pad_snapshot":0}"#])).unwrap();
    assert!(sm.save_snapshot(Vec::new()).is_ok());
    assert_eq!(sm.query(br#""value""#).unwrap(), &b"1"[..]);
}

#[test]
fn the_wall_clock_backstop_stops_the_machine_not_the_entry() {
    let module = hostile_module();
    let limits = Limits { fuel_per_entry: u64::MAX / 4, call_wall_ms_max: 200, ..Limits::default() };
    let mut sm = group_machine(&module, limits);
    let started = Instant::now();
    match sm.apply(&entries(1, &[r#""spin""#])) {
        Err(RuntimeError::Backstop(e)) => eprintln!("backstop after {:?}: {e}", started.elapsed()),
        other => panic!("a spin past the backstop: {other:?}"),
    }
    assert!(matches!(sm.apply(&entries(2, &[r#"{"incr":1}"#])), Err(RuntimeError::Poisoned)));
}

#[test]
fn work_past_the_in_place_slice_goes_through_the_offload_hook() {
    let engine = Engine::new().unwrap();
    let probe = load(&engine, "waft_probe");
    let run = |offload: bool| {
        let mut sm = StateMachine::for_group(&probe, Limits::default(), GROUP, "test").unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        if offload {
            let counted = calls.clone();
            sm.set_offload(Some(Arc::new(move |work: &mut dyn FnMut()| {
                counted.fetch_add(1, Ordering::Relaxed);
                work()
            })));
        }
        let cheap = sm.apply(&entries(1, &[r#"{"incr":1}"#, r#"{"incr":2}"#])).unwrap();
        let cheap_calls = calls.load(Ordering::Relaxed);
        let heavy = sm.apply(&entries(3, &[r#"{"incr":1}"#, r#"{"burn":3000000}"#, r#"{"incr":1}"#])).unwrap();
        (texts(&cheap), texts(&heavy), cheap_calls, calls.load(Ordering::Relaxed), snapshot(&mut sm))
    };
    let (cheap, heavy, cheap_calls, calls, state) = run(true);
    assert_eq!(cheap_calls, 0, "two small entries stay in place");
    assert!(calls >= 1, "a burn past the slice is offloaded");
    let (cheap2, heavy2, _, _, state2) = run(false);
    assert_eq!((cheap, heavy), (cheap2, heavy2), "offloading changes no outcome");
    assert!(state == state2);
}

#[test]
fn a_snapshot_whose_state_cannot_be_saved_again_is_refused_and_changes_nothing() {
    let module = hostile_module();
    let mut big = group_machine(&module, Limits::default());
    big.apply(&entries(1, &[r#"{"incr":5}"#, r#"{"pad_snapshot":2}"#])).unwrap();
    let bytes = snapshot(&mut big);
    // A machine whose snapshot limit the loaded state would break.
    let mut small = group_machine(&module, Limits { snapshot_bytes_max: 1 << 20, ..Limits::default() });
    small.apply(&entries(1, &[r#"{"incr":1}"#])).unwrap();
    assert!(small.load_snapshot(std::io::Cursor::new(bytes)).is_err(), "its checkpoint could not be taken");
    assert_eq!(small.query(br#""value""#).unwrap(), &b"1"[..], "the state before the refused load");
    let r = small.apply(&entries(2, &[r#"{"incr":1}"#])).unwrap();
    assert_eq!(texts(&r), ["2"]);
}

#[test]
fn after_a_heavy_entry_the_next_calls_go_off_the_thread_at_once() {
    let engine = Engine::new().unwrap();
    let probe = load(&engine, "waft_probe");
    let mut sm = StateMachine::for_group(&probe, Limits::default(), GROUP, "test").unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    sm.set_offload(Some(Arc::new(move |work: &mut dyn FnMut()| {
        counted.fetch_add(1, Ordering::Relaxed);
        work()
    })));
    sm.apply(&entries(1, &[r#"{"burn":3000000}"#])).unwrap();
    let after_heavy = calls.load(Ordering::Relaxed);
    assert!(after_heavy >= 1);
    let r = sm.apply(&entries(2, &[r#"{"incr":1}"#])).unwrap();
    assert_eq!(texts(&r), ["2"]);
    assert_eq!(calls.load(Ordering::Relaxed), after_heavy + 1, "the cheap entry after it went through the hook");
    sm.query(br#""value""#).unwrap();
    assert_eq!(calls.load(Ordering::Relaxed), after_heavy + 2, "and so did the query");
}
