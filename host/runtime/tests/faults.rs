//! Guest faults are contained to the entry that caused them, and guests
//! cannot tell replicas apart.

mod common;

use common::*;
use waft_runtime::{ApplyError, FaultKind, Limits, RuntimeError};

/// Small budgets so runaway guests are stopped quickly.
fn tight() -> Limits {
    Limits { fuel_per_entry: 20_000_000, fuel_per_query: 20_000_000, memory_bytes_max: 48 << 20, ..Limits::default() }
}

fn fault_kind(r: &waft_runtime::ApplyResult) -> Option<FaultKind> {
    match r {
        Err(ApplyError::Fault(f)) => Some(f.kind),
        _ => None,
    }
}

fn value(sm: &mut waft_runtime::StateMachine) -> String {
    String::from_utf8(sm.query(br#""value""#).unwrap().to_vec()).unwrap()
}

#[test]
fn a_guest_that_loops_forever_is_stopped_by_fuel() {
    let mut sm = machine("waft_probe", tight());
    let results = sm.apply(&entries(1, &[r#"{"incr":1}"#, r#""spin""#, r#"{"incr":2}"#])).unwrap();
    assert_eq!(texts(&results), ["1", "ERR", "3"]);
    assert_eq!(fault_kind(&results[1]), Some(FaultKind::OutOfFuel));
    assert_eq!(value(&mut sm), r#"{"value":3}"#);
}

#[test]
fn a_guest_that_allocates_without_bound_is_stopped_by_the_memory_limit() {
    // Fuel to spare, so the memory limit is what stops it.
    let limits = Limits { fuel_per_entry: 2_000_000_000, memory_bytes_max: 24 << 20, ..tight() };
    let mut sm = machine("waft_probe", limits);
    let results = sm.apply(&entries(1, &[r#"{"incr":1}"#, r#""hog""#, r#"{"incr":2}"#])).unwrap();
    assert_eq!(texts(&results), ["1", "ERR", "3"]);
    assert_eq!(fault_kind(&results[1]), Some(FaultKind::MemoryLimit), "{:?}", results[1]);
    assert_eq!(value(&mut sm), r#"{"value":3}"#);
}

#[test]
fn a_trap_on_the_third_of_five_entries_rejects_only_that_entry() {
    let batch = [r#"{"incr":1}"#, r#"{"incr":2}"#, r#"{"incr_then_trap":100}"#, r#"{"incr":4}"#, r#"{"incr":8}"#];
    let mut sm = machine("waft_probe", tight());
    sm.apply(&entries(1, &[r#""observe""#])).unwrap();
    let results = sm.apply(&entries(2, &batch)).unwrap();
    assert_eq!(texts(&results), ["1", "3", "ERR", "7", "15"]);
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
    assert_eq!(fault_kind(&results[2]), Some(FaultKind::Trap));
    let msg = results[2].as_ref().unwrap_err().to_string();
    assert!(msg.contains("wasm trap: unreachable"), "{msg}");

    // State equals applying only the other four, byte for byte.
    let mut only_four = machine("waft_probe", tight());
    only_four.apply(&entries(1, &[r#""observe""#])).unwrap();
    let four: Vec<&str> = batch.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, c)| *c).collect();
    only_four.apply(&entries(2, &four)).unwrap();
    assert_eq!(value(&mut sm), r#"{"value":15}"#);
    assert_eq!(snapshot(&mut sm), snapshot(&mut only_four));

    // And the runtime keeps serving.
    assert_eq!(texts(&sm.apply(&entries(7, &[r#"{"incr":1}"#])).unwrap()), ["16"]);
}

#[test]
fn faults_after_a_checkpoint_restore_from_snapshot_plus_replay() {
    // A checkpoint every 3 entries: the restore must load the guest's
    // snapshot, then replay what came after it.
    let limits = Limits { replay_entries_max: 3, ..tight() };
    let mut sm = machine("waft_probe", limits);
    let mut expected = 0i64;
    for round in 0..6u64 {
        let cmds = [r#"{"incr":1}"#, r#"{"incr":10}"#, r#"{"incr_then_trap":1000}"#, r#""reject""#];
        let results = sm.apply(&entries(1 + round * 4, &cmds)).unwrap();
        expected += 11;
        assert_eq!(texts(&results), [(expected - 10).to_string(), expected.to_string(), "ERR".into(), "ERR".into()]);
        assert!(matches!(&results[3], Err(ApplyError::Rejected(_))));
    }
    assert_eq!(value(&mut sm), format!(r#"{{"value":{expected}}}"#));
}

#[test]
fn an_entry_fails_for_fuel_exactly_when_it_alone_exceeds_the_budget_whatever_the_batching() {
    // Each light entry uses well under the budget, five together well over;
    // the heavy one exceeds it alone.
    let light = r#"{"burn":1500000}"#;
    let heavy = r#"{"burn":40000000}"#;
    let cmds = [light, light, heavy, light, light, light];
    let mut batched = machine("waft_probe", tight());
    let mut single = machine("waft_probe", tight());
    let rb = batched.apply(&entries(1, &cmds)).unwrap();
    let mut rs = Vec::new();
    for (i, c) in cmds.iter().enumerate() {
        rs.extend(single.apply(&entries(1 + i as u64, &[c])).unwrap());
    }
    assert_eq!(texts(&rb), ["1", "2", "ERR", "3", "4", "5"]);
    assert_eq!(rb, rs);
    assert_eq!(fault_kind(&rb[2]), Some(FaultKind::OutOfFuel));
    assert_eq!(snapshot(&mut batched), snapshot(&mut single));
}

#[test]
fn a_runaway_query_is_stopped_and_the_state_kept() {
    let mut sm = machine("waft_probe", tight());
    sm.apply(&entries(1, &[r#"{"incr":5}"#])).unwrap();
    match sm.query(br#""spin""#) {
        Err(RuntimeError::Fault(f)) => assert_eq!(f.kind, FaultKind::OutOfFuel),
        other => panic!("expected a fuel fault, got {other:?}"),
    }
    assert_eq!(value(&mut sm), r#"{"value":5}"#);
}

#[test]
fn clocks_randomness_environment_and_hash_order_are_identical_across_instances() {
    let cmds = [r#""observe""#, r#""hash_order""#, r#"{"incr":3}"#, r#""observe""#, r#""hash_order""#];
    let mut a = machine("waft_probe", Limits::default());
    let mut b = machine("waft_probe", Limits::default());
    let ra = a.apply(&entries(1, &cmds)).unwrap();
    let rb = b.apply(&entries(1, &cmds)).unwrap();
    assert_eq!(texts(&ra), texts(&rb));
    assert_eq!(snapshot(&mut a), snapshot(&mut b), "snapshots differ");
    let obs = a.query(br#""observations""#).unwrap();
    assert_eq!(obs, b.query(br#""observations""#).unwrap());
    let text = String::from_utf8(obs.to_vec()).unwrap();
    assert!(text.contains("wall=0 mono=0ns"), "{text}");
    assert!(text.contains("env=[] args=[]"), "{text}");
    assert!(text.contains("file=error"), "{text}");
}

#[test]
fn a_restored_replica_sees_the_same_stand_ins_and_sdk_hash_order() {
    let mut a = machine("waft_probe", Limits::default());
    a.apply(&entries(1, &[r#""observe""#, r#""hash_order""#, r#""observe""#])).unwrap();
    let mut c = machine("waft_probe", Limits::default());
    c.load_snapshot(std::io::Cursor::new(snapshot(&mut a))).unwrap();

    // Clocks, random bytes (the stream restarts at every call), environment:
    // a replica restored from a snapshot sees what a long-running one sees.
    let more = entries(4, &[r#""observe""#]);
    assert_eq!(texts(&a.apply(&more).unwrap()), texts(&c.apply(&more).unwrap()));
    assert_eq!(snapshot(&mut a), snapshot(&mut c));

    // The SDK's HashMap iterates alike too; std's randomly keyed one is
    // documented not to (see waft_guest's crate docs).
    let order = entries(5, &[r#""hash_order""#]);
    a.apply(&order).unwrap();
    c.apply(&order).unwrap();
    let sdk = |sm: &mut waft_runtime::StateMachine| {
        let obs = String::from_utf8(sm.query(br#""observations""#).unwrap().to_vec()).unwrap();
        let last = obs.rsplit("std=").next().unwrap().to_string();
        last.split("sdk=").nth(1).unwrap().to_string()
    };
    assert_eq!(sdk(&mut a), sdk(&mut c));
}
