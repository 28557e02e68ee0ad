//! kv state machines on real components (tests/guests/kv-probe,
//! examples/atomic-kv): an entry's writes are all or nothing, a query
//! cannot write, nothing in a guest's memory outlives a call, a snapshot of
//! the store loads back identical, and the host's bounds hold.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use waft_runtime::kv::{KV_SCAN_PAIRS_MAX, KV_VALUE_BYTES_MAX};
use waft_runtime::{ApplyError, Engine, FaultKind, KvHandle, Limits, MemKv, RuntimeError, StateMachine};

fn kv_machine(name: &str) -> (StateMachine, KvHandle) {
    let engine = Engine::new().unwrap();
    let module = load(&engine, name);
    assert!(module.uses_kv(), "{name} imports waft:fsm/kv");
    let mut sm = StateMachine::new(&module, Limits::default(), name).unwrap();
    let store: KvHandle = Arc::new(Mutex::new(MemKv::default()));
    sm.attach_kv(store.clone());
    (sm, store)
}

fn query(sm: &mut StateMachine, request: &str) -> String {
    String::from_utf8(sm.query(request.as_bytes()).unwrap().to_vec()).unwrap()
}

fn count(sm: &mut StateMachine, prefix: &str) -> String {
    query(sm, &format!(r#"{{"count":{{"prefix":"{prefix}"}}}}"#))
}

#[test]
fn an_entry_that_fails_after_several_puts_leaves_nothing_behind() {
    let (mut sm, _) = kv_machine("waft_kv_probe");
    let results = sm
        .apply(&entries(
            1,
            &[
                r#"{"put_many":{"prefix":"ok","n":3}}"#,
                r#"{"put_many_then_panic":{"prefix":"trap","n":5}}"#,
                r#"{"put_many_then_err":{"prefix":"err","n":5}}"#,
                r#"{"put":{"key":"after","value":"1"}}"#,
                r#"{"scan":{"start":"","end":null,"limit":100}}"#,
            ],
        ))
        .unwrap();
    assert_eq!(texts(&results[..1]), ["3"]);
    assert!(matches!(&results[1], Err(ApplyError::Fault(f)) if f.kind == FaultKind::Trap), "{:?}", results[1]);
    assert!(matches!(&results[2], Err(ApplyError::Rejected(m)) if m == "refused after puts"), "{:?}", results[2]);
    // What the next entries see: the first entry's puts and their own, none
    // of the failed entries'.
    assert_eq!(texts(&results[3..]), ["null", r#"[["after","1"],["ok0","0"],["ok1","1"],["ok2","2"]]"#]);
    assert_eq!(count(&mut sm, "trap"), "0");
    assert_eq!(count(&mut sm, "err"), "0");
    assert_eq!(count(&mut sm, "ok"), "3");
}

#[test]
fn an_entry_sees_its_own_writes_and_the_store_the_entries_before_it_left() {
    let (mut sm, _) = kv_machine("waft_kv_probe");
    sm.apply(&entries(1, &[r#"{"put_many":{"prefix":"k","n":4}}"#])).unwrap();
    let results = sm
        .apply(&entries(
            2,
            &[
                r#"{"delete":{"key":"k1"}}"#,
                r#"{"get":{"key":"k1"}}"#,
                r#"{"scan":{"start":"k","end":"k3","limit":10}}"#,
                r#"{"scan":{"start":"k","end":null,"limit":2}}"#,
            ],
        ))
        .unwrap();
    assert_eq!(texts(&results), ["null", "null", r#"[["k0","0"],["k2","2"]]"#, r#"[["k0","0"],["k2","2"]]"#]);
}

#[test]
fn a_query_cannot_write_and_memory_does_not_outlive_a_call() {
    let (mut sm, store) = kv_machine("waft_kv_probe");
    let answer = query(&mut sm, r#"{"try_put":{"key":"q","value":"1"}}"#);
    assert!(answer.contains("read-only"), "{answer}");
    assert_eq!(query(&mut sm, r#"{"get":{"key":"q"}}"#), "null");
    let mut keys = 0;
    store
        .lock()
        .unwrap()
        .scan(b"", None, &mut |_, _| {
            keys += 1;
            true
        })
        .unwrap();
    assert_eq!(keys, 0, "the store is untouched");
    let results = sm.apply(&entries(1, &[r#""memory_counter""#, r#""memory_counter""#])).unwrap();
    assert_eq!(texts(&results), ["1", "1"], "each entry runs on a fresh instance");
    assert_eq!(query(&mut sm, r#""memory_counter""#), "1");
    assert_eq!(query(&mut sm, r#""memory_counter""#), "1");
}

#[test]
fn writes_past_the_hosts_bounds_are_refused_and_change_nothing() {
    let (mut sm, _) = kv_machine("waft_kv_probe");
    let too_big = KV_VALUE_BYTES_MAX + 1;
    let results = sm
        .apply(&entries(
            1,
            &[
                &format!(r#"{{"put_big":{{"key":"big","bytes":{too_big}}}}}"#),
                &format!(r#"{{"put_big":{{"key":"fits","bytes":{KV_VALUE_BYTES_MAX}}}}}"#),
            ],
        ))
        .unwrap();
    let texts = texts(&results);
    assert!(texts[0].contains("err") && texts[0].contains("exceeds"), "{}", texts[0]);
    assert_eq!(texts[1], r#"{"ok":null}"#);
    assert_eq!(count(&mut sm, "big"), "0");
    assert_eq!(count(&mut sm, "fits"), "1");
}

#[test]
fn a_scan_is_bounded_and_the_sdk_pages_past_the_bound() {
    let (mut sm, _) = kv_machine("waft_kv_probe");
    let n = KV_SCAN_PAIRS_MAX + 100;
    sm.apply(&entries(1, &[&format!(r#"{{"put_many":{{"prefix":"p","n":{n}}}}}"#)])).unwrap();
    let one_scan = query(&mut sm, &format!(r#"{{"scan":{{"start":"p","end":null,"limit":{}}}}}"#, n + 10));
    assert_eq!(one_scan.matches("],[").count() + 1, KV_SCAN_PAIRS_MAX as usize, "one scan is cut at the bound");
    assert_eq!(count(&mut sm, "p"), n.to_string());
}

#[test]
fn a_snapshot_of_the_store_loads_back_identical_and_a_bad_one_changes_nothing() {
    let (mut sm, _) = kv_machine("waft_atomic_kv");
    let commands: Vec<String> = (0..200).map(|i| format!(r#"{{"set":{{"key":"k{i}","value":{i}}}}}"#)).collect();
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    sm.apply(&entries(1, &commands)).unwrap();
    let saved = snapshot(&mut sm);
    let digest = sm.state_for_digest().unwrap();
    let (mut other, _) = kv_machine("waft_atomic_kv");
    other.apply(&entries(1, &[r#"{"set":{"key":"stale","value":9}}"#])).unwrap();
    // Not a store snapshot: refused, nothing changed.
    let err = other.load_snapshot(std::io::Cursor::new(b"1 stale\n".to_vec())).unwrap_err();
    assert!(matches!(err, RuntimeError::Guest(_)), "{err}");
    assert_eq!(query(&mut other, r#"{"get":{"key":"stale"}}"#), "9");
    other.load_snapshot(std::io::Cursor::new(saved.clone())).unwrap();
    assert_eq!(snapshot(&mut other), saved);
    assert_eq!(other.state_for_digest().unwrap(), digest);
    assert_eq!(query(&mut other, r#"{"get":{"key":"stale"}}"#), "0", "the load replaced the store");
    assert_eq!(query(&mut other, r#"{"get":{"key":"k150"}}"#), "150");
    // A snapshot cut short once loading began leaves a half-loaded store:
    // an error the group must stop on, never a quiet success.
    let err = other.load_snapshot(std::io::Cursor::new(saved[..saved.len() / 2].to_vec())).unwrap_err();
    assert!(matches!(err, RuntimeError::Recovery(_)), "{err}");
}

#[test]
fn atomic_kv_answers_as_atomic_does() {
    let commands = [
        r#"{"set":{"key":"a","value":5}}"#,
        r#"{"incr":{"key":"a","delta":3}}"#,
        r#"{"cas":{"key":"a","expect":8,"new":1}}"#,
        r#"{"cas":{"key":"a","expect":8,"new":2}}"#,
        r#"{"get":{"key":"a"}}"#,
        r#"{"incr":{"key":"b","delta":-1}}"#,
        r#"{"incr":{"key":"b","delta":-9223372036854775808}}"#,
    ];
    let mut memory = machine("waft_atomic", Limits::default());
    let (mut kv, _) = kv_machine("waft_atomic_kv");
    let from_memory = memory.apply(&entries(1, &commands)).unwrap();
    let from_kv = kv.apply(&entries(1, &commands)).unwrap();
    assert_eq!(texts(&from_kv), texts(&from_memory));
    assert!(from_kv[6].is_err(), "overflow is rejected");
    for key in ["a", "b", "c"] {
        let q = format!(r#"{{"get":{{"key":"{key}"}}}}"#);
        assert_eq!(query(&mut kv, &q), query(&mut memory, &q));
    }
}

/// Seeded: random puts, deletes and failing entries, applied in batches of
/// different sizes on two machines; the digest each keeps as it commits
/// equals the other's and a sum computed afresh from every pair.
#[test]
fn the_kept_digest_equals_a_fresh_one_whatever_the_batching() {
    for seed in 1..=8u64 {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let commands: Vec<String> = (0..300)
            .map(|_| {
                let key = format!("k{}", next(40));
                match next(6) {
                    0 => format!(r#"{{"delete":{{"key":"{key}"}}}}"#),
                    1 => format!(r#"{{"put_many_then_err":{{"prefix":"{key}","n":3}}}}"#),
                    2 => format!(r#"{{"put_many":{{"prefix":"{key}-","n":{}}}}}"#, next(4)),
                    _ => format!(r#"{{"put":{{"key":"{key}","value":"{}"}}}}"#, next(1000)),
                }
            })
            .collect();
        let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
        let all = entries(1, &commands);
        let (mut a, _) = kv_machine("waft_kv_probe");
        let (mut b, _) = kv_machine("waft_kv_probe");
        for chunk in all.chunks(1 + next(50) as usize) {
            a.apply(chunk).unwrap();
        }
        for chunk in all.chunks(1 + next(7) as usize) {
            b.apply(chunk).unwrap();
        }
        let (da, db) = (a.state_for_digest().unwrap(), b.state_for_digest().unwrap());
        assert_eq!(da, db, "seed {seed}");
        assert_eq!(a.kv_sum_by_scan().unwrap().map(|s| s.to_vec()), Some(da.to_vec()), "seed {seed}: kept sum drifted");
        // A snapshot loaded elsewhere brings the same digest.
        let saved = snapshot(&mut a);
        let (mut c, _) = kv_machine("waft_kv_probe");
        c.load_snapshot(std::io::Cursor::new(saved)).unwrap();
        assert_eq!(c.state_for_digest().unwrap(), da, "seed {seed}");
    }
}
