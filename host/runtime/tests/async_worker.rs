//! Guest calls made on an async runtime's worker thread, as the daemon's
//! group drivers make them, without `block_in_place`: every WASI function a
//! guest reaches (a panic message or a print to stderr and stdout, a sleep)
//! must finish without the ambient tokio runtime, and give what it gives on
//! any other thread.

mod common;

use std::any::Any;

use common::*;
use waft_runtime::{ApplyError, FaultKind, Limits, RuntimeError, StateMachine};

/// Runs `call` in a task on a worker of a multi-thread runtime, as a group
/// driver runs a guest call; a host panic comes back as `Err` with its message.
fn on_worker<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a tokio runtime");
    runtime.block_on(async {
        let task = tokio::spawn(async move {
            assert!(tokio::runtime::Handle::try_current().is_ok(), "the call runs inside the runtime");
            call()
        });
        task.await.map_err(|e| if e.is_panic() { panic_text(e.into_panic()) } else { e.to_string() })
    })
}

fn panic_text(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload.downcast_ref::<&str>().map_or("(no message)".into(), |s| s.to_string()),
    }
}

fn host_panic(e: String) -> ! {
    panic!("the guest call panicked the host on the async worker: {e}")
}

fn probe() -> StateMachine {
    machine("waft_probe", Limits::default())
}

fn value(sm: &mut StateMachine) -> String {
    String::from_utf8(sm.query(br#""value""#).expect("the value query").to_vec()).expect("utf-8")
}

#[test]
fn a_query_that_panics_on_an_async_worker_is_a_guest_fault() {
    let mut sm = probe();
    sm.apply(&entries(1, &[r#"{"incr":5}"#])).unwrap();
    let (answer, sm) = on_worker(move || (sm.query(br#""panic""#), sm)).unwrap_or_else(|e| host_panic(e));
    match answer {
        Err(RuntimeError::Fault(f)) => assert_eq!(f.kind, FaultKind::Trap, "{f}"),
        other => panic!("expected a guest fault, got {other:?}"),
    }
    let mut sm = sm;
    assert_eq!(value(&mut sm), r#"{"value":5}"#, "the state survives the fault");
}

#[test]
fn an_entry_that_panics_on_an_async_worker_fails_alone() {
    let sm = probe();
    let batch = entries(1, &[r#"{"incr":1}"#, r#"{"incr_then_trap":100}"#, r#"{"incr":2}"#]);
    let (results, mut sm) = on_worker(move || {
        let mut sm = sm;
        (sm.apply(&batch), sm)
    })
    .unwrap_or_else(|e| host_panic(e));
    let results = results.expect("the runtime goes on");
    assert_eq!(texts(&results), ["1", "ERR", "3"]);
    assert!(matches!(&results[1], Err(ApplyError::Fault(f)) if f.kind == FaultKind::Trap), "{:?}", results[1]);
    assert_eq!(value(&mut sm), r#"{"value":3}"#);
}

#[test]
fn printing_on_an_async_worker_succeeds() {
    let sm = probe();
    let (results, answer) = on_worker(move || {
        let mut sm = sm;
        let results = sm.apply(&entries(1, &[r#"{"print":4}"#]));
        (results, sm.query(br#""print""#))
    })
    .unwrap_or_else(|e| host_panic(e));
    assert_eq!(texts(&results.expect("the runtime goes on")), ["4"]);
    assert_eq!(&answer.expect("the print query answers")[..], br#"{"value":4}"#);
}

#[test]
fn a_guest_that_sleeps_traps_whatever_the_thread() {
    // The guest's clock never advances, so a sleep could never end: it traps
    // at once, on a worker and on a plain thread alike. A zero sleep returns.
    let batch = entries(1, &[r#"{"sleep":0}"#, r#"{"sleep":10}"#, r#"{"incr":1}"#]);
    let mut plain = probe();
    let on_plain = plain.apply(&batch).expect("the runtime goes on");
    let worker = probe();
    let (on_async, mut worker) = on_worker(move || {
        let mut sm = worker;
        (sm.apply(&batch), sm)
    })
    .unwrap_or_else(|e| host_panic(e));
    let on_async = on_async.expect("the runtime goes on");
    assert_eq!(texts(&on_plain), ["1", "ERR", "2"]);
    assert_eq!(on_plain, on_async);
    match &on_plain[1] {
        Err(ApplyError::Fault(f)) => {
            assert_eq!(f.kind, FaultKind::Trap);
            assert!(f.message.contains("never advances"), "{}", f.message);
        }
        other => panic!("expected a fault, got {other:?}"),
    }
    assert_eq!(snapshot(&mut plain), snapshot(&mut worker));
}

#[test]
fn every_wasi_path_gives_the_same_results_on_a_worker_and_on_a_plain_thread() {
    let batch = entries(
        1,
        &[
            r#"{"print":1}"#,
            r#""observe""#,
            r#"{"incr_then_trap":5}"#,
            r#"{"sleep":1}"#,
            r#""read_stdin""#,
            r#"{"print":2}"#,
        ],
    );
    let mut plain = probe();
    let on_plain = (plain.apply(&batch).expect("the runtime goes on"), plain.query(br#""print""#).ok());
    let worker = probe();
    let (on_async, mut worker) = on_worker(move || {
        let mut sm = worker;
        let results = sm.apply(&batch).expect("the runtime goes on");
        let answer = sm.query(br#""print""#).ok();
        ((results, answer), sm)
    })
    .unwrap_or_else(|e| host_panic(e));
    // stdin is closed: reading it ends at once, with nothing read.
    assert_eq!(texts(&on_plain.0), ["1", "1", "ERR", "ERR", "2", "4"]);
    assert_eq!(on_plain, on_async);
    assert_eq!(snapshot(&mut plain), snapshot(&mut worker));
}
