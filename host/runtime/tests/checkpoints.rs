//! Checkpoints of an in-memory state machine are saved beside the applies
//! (on a second instance, on another thread): the bytes hold the state where
//! the checkpoint was asked for, the applies go on meanwhile, faults in
//! between are still contained, and the replay log stays bounded.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use common::*;
use waft_runtime::machine::{REPLAY_GROWTH_MAX, SAVES_IN_FLIGHT_MAX, SAVING_REPLAY_FACTOR_MAX, SaveError, Spawn};
use waft_runtime::{Limits, RuntimeError, StateMachine};

fn tight() -> Limits {
    Limits { fuel_per_entry: 20_000_000, fuel_per_query: 20_000_000, memory_bytes_max: 48 << 20, ..Limits::default() }
}

fn value(sm: &mut StateMachine) -> String {
    String::from_utf8(sm.query(br#""value""#).unwrap().to_vec()).unwrap()
}

type Job = Box<dyn FnOnce() + Send>;

/// Save jobs held back until the test runs them.
#[derive(Clone, Default)]
struct Held(Arc<Mutex<Vec<Job>>>);

impl Held {
    fn spawn(&self) -> Spawn {
        let jobs = self.0.clone();
        Arc::new(move |job| jobs.lock().unwrap().push(job))
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn run_all(&self) -> usize {
        let jobs = std::mem::take(&mut *self.0.lock().unwrap());
        let n = jobs.len();
        jobs.into_iter().for_each(|job| job());
        n
    }
}

/// Save jobs run on a thread of their own, each once the test lets one go;
/// `ran` hears of each when it is done.
struct Gated {
    go: mpsc::Sender<()>,
    ran: mpsc::Receiver<()>,
    spawn: Spawn,
}

impl Gated {
    fn new() -> Gated {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let (go, go_rx) = mpsc::channel::<()>();
        let (ran_tx, ran) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            while go_rx.recv().is_ok() {
                let Ok(job) = jobs_rx.recv() else { return };
                job();
                let _ = ran_tx.send(());
            }
        });
        let jobs_tx = Mutex::new(jobs_tx);
        Gated { go, ran, spawn: Arc::new(move |job| jobs_tx.lock().unwrap().send(job).unwrap()) }
    }

    /// Lets the next job run and waits until it has.
    fn run_one(&self) {
        self.go.send(()).unwrap();
        self.ran.recv().unwrap();
    }
}

#[test]
fn a_checkpoint_is_saved_beside_the_applies_and_holds_the_state_where_it_was_asked() {
    let held = Held::default();
    let mut sm = machine("waft_probe", tight());
    sm.set_spawn(Some(held.spawn()));
    let five = [r#"{"incr":1}"#; 5];
    sm.apply(&entries(1, &five)).unwrap();

    let saved = sm.checkpoint_begin().unwrap();
    assert!(!saved.is_finished(), "the save runs on the spawned job, not in place");
    assert_eq!(sm.checkpoint_status().saves_in_flight, 1);
    // Asked again at the same point: the same save.
    let again = sm.checkpoint_begin().unwrap();
    assert_eq!(held.len(), 1);

    // Applies go on while it is pending; a fault among them is restored
    // from the checkpoint that has not moved yet.
    let results = sm.apply(&entries(6, &[r#"{"incr":10}"#, r#"{"incr_then_trap":1000}"#, r#"{"incr":100}"#])).unwrap();
    assert_eq!(texts(&results), ["15", "ERR", "115"]);
    assert_eq!(value(&mut sm), r#"{"value":115}"#);

    // The save holds the state after entry 5: what a machine that applied
    // only those five saves.
    assert_eq!(held.run_all(), 1);
    let mut at_five = machine("waft_probe", tight());
    at_five.apply(&entries(1, &five)).unwrap();
    let bytes = saved.wait().unwrap();
    assert_eq!(&bytes[..], &snapshot(&mut at_five)[..]);
    assert_eq!(again.wait().unwrap(), bytes);

    // The next call takes it in: the checkpoint moves to entry 5, with the
    // two entries applied since on its replay log, and a fault now is
    // restored from there.
    let results = sm.apply(&entries(9, &[r#"{"incr_then_trap":1}"#, r#"{"incr":1000}"#])).unwrap();
    assert_eq!(texts(&results), ["ERR", "1115"]);
    let status = sm.checkpoint_status();
    assert!(status.saves_in_flight == 0 && status.saver, "{status:?}");
    assert_eq!(status.replay_items, 3, "{status:?}");

    // Byte for byte what the accepted entries make, without any of this.
    let mut plain = machine("waft_probe", tight());
    plain.apply(&entries(1, &five)).unwrap();
    plain.apply(&entries(6, &[r#"{"incr":10}"#])).unwrap();
    plain.apply(&entries(8, &[r#"{"incr":100}"#])).unwrap();
    plain.apply(&entries(10, &[r#"{"incr":1000}"#])).unwrap();
    let expected = snapshot(&mut plain);
    assert_eq!(snapshot(&mut sm), expected);

    // The next checkpoint is saved on the instance kept from the last.
    let next = sm.checkpoint_begin().unwrap();
    assert_eq!(held.run_all(), 1);
    assert_eq!(&next.wait().unwrap()[..], &expected[..]);
    assert_eq!(value(&mut sm), r#"{"value":1115}"#);
}

#[test]
fn saves_queue_up_and_the_apply_path_waits_only_past_their_bounds() {
    let bound = 4;
    let gated = Gated::new();
    let mut sm = machine("waft_probe", Limits { replay_entries_max: bound, ..tight() });
    sm.set_spawn(Some(gated.spawn.clone()));
    sm.apply(&entries(1, &[r#"{"incr":1}"#; 4])).unwrap();
    let first = sm.checkpoint_begin().unwrap();

    // No save runs. The applies go on, a save more queued each time the
    // log since the newest passes the bound (at 9, 14 and 19), up to
    // SAVES_IN_FLIGHT_MAX, until the log since the checkpoint is at
    // SAVING_REPLAY_FACTOR_MAX times the bound.
    assert_eq!((SAVES_IN_FLIGHT_MAX, SAVING_REPLAY_FACTOR_MAX), (4, 6), "the counts below assume these");
    let limit = bound * SAVING_REPLAY_FACTOR_MAX;
    for i in 5..=limit as u64 {
        sm.apply(&entries(i, &[r#"{"incr":1}"#])).unwrap();
        let status = sm.checkpoint_status();
        assert_eq!(status.replay_items, i as usize, "{status:?}");
        let queued = 1 + usize::from(i >= 9) + usize::from(i >= 14) + usize::from(i >= 19);
        assert_eq!(status.saves_in_flight, queued, "entry {i}: {status:?}");
    }
    assert!(!first.is_finished());
    // A checkpoint asked for now is not started: the saves are behind.
    let skipped = sm.checkpoint_begin().unwrap();
    assert_eq!(skipped.wait(), Err(SaveError::Behind(SAVES_IN_FLIGHT_MAX)));
    assert_eq!(sm.checkpoint_status().saves_in_flight, SAVES_IN_FLIGHT_MAX);

    // One more entry passes the bound: the apply waits for the oldest save,
    // takes it in (the checkpoint moves to entry 4), and queues the next.
    gated.go.send(()).unwrap();
    let next = limit as u64 + 1;
    sm.apply(&entries(next, &[r#"{"incr":1}"#])).unwrap();
    assert!(first.is_finished());
    gated.ran.recv().unwrap();
    let status = sm.checkpoint_status();
    assert_eq!(status.replay_items, next as usize - 4, "{status:?}");
    assert_eq!(status.saves_in_flight, SAVES_IN_FLIGHT_MAX, "{status:?}");

    // The rest run, each on the saver the last one left: the checkpoint
    // ends at entry `next`, and a restore from it (a trap) keeps every value.
    for _ in 0..SAVES_IN_FLIGHT_MAX {
        gated.run_one();
    }
    let results = sm.apply(&entries(next + 1, &[r#"{"incr_then_trap":5}"#])).unwrap();
    assert_eq!(texts(&results), ["ERR"]);
    let status = sm.checkpoint_status();
    assert!(status.saves_in_flight == 0 && status.saver, "{status:?}");
    assert_eq!(status.replay_items, 0, "{status:?}");
    assert_eq!(value(&mut sm), format!(r#"{{"value":{next}}}"#));
}

#[test]
fn saves_that_keep_failing_grow_the_replay_log_to_its_bound_then_stop_the_machine() {
    // Every save is past its size limit (the same on every replica).
    let bound = 2;
    let limits = Limits { replay_entries_max: bound, snapshot_bytes_max: 1, ..tight() };
    let mut sm = machine("waft_probe", limits);
    sm.apply(&entries(1, &[r#"{"incr":1}"#])).unwrap();
    let saved = sm.checkpoint_begin().unwrap();
    assert!(matches!(saved.wait(), Err(SaveError::Guest(_))), "{:?}", saved.wait());
    assert!(sm.checkpoint_now().is_err());

    let mut applied = 1;
    let stopped = loop {
        applied += 1;
        match sm.apply(&entries(applied, &[r#"{"incr":1}"#])) {
            Ok(results) => assert_eq!(texts(&results), [applied.to_string()]),
            Err(e) => break e,
        }
        assert!(applied < 100, "the replay log grew past its bound");
    };
    assert!(matches!(stopped, RuntimeError::Recovery(_)), "{stopped}");
    let max = (bound * REPLAY_GROWTH_MAX) as u64;
    assert!(applied > max && applied <= max + bound as u64 + 1, "stopped at entry {applied}");
    assert!(matches!(sm.query(br#""value""#), Err(RuntimeError::Poisoned)));
}

#[test]
fn a_load_gets_fuel_for_every_byte_of_the_state_it_reads() {
    // 20,000 keys of 200 bytes: their load costs the atomic example far
    // more fuel than their save.
    let cmds: Vec<String> = (0..20_000).map(|i| format!(r#"{{"set":{{"key":"{i:0>200}","value":{i}}}}}"#)).collect();
    let mut full = machine("waft_atomic", Limits::default());
    for (n, chunk) in cmds.chunks(1000).enumerate() {
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        full.apply(&entries(1 + n as u64 * 1000, &chunk)).unwrap();
    }
    let state = snapshot(&mut full);

    // A budget the save fits in and the load alone does not.
    let tight = Limits { fuel_per_snapshot: 200_000_000, ..Limits::default() };
    let mut unsized_load = machine("waft_atomic", tight.clone());
    let refused = unsized_load.load_snapshot(std::io::Cursor::new(state.clone()));
    assert!(
        matches!(&refused, Err(RuntimeError::Fault(f)) if f.kind == waft_runtime::FaultKind::OutOfFuel),
        "{refused:?}"
    );
    // With its size, the load gets LOAD_FUEL_PER_BYTE for each byte.
    let mut sized = machine("waft_atomic", tight);
    sized.load_snapshot_of(std::io::Cursor::new(state.clone()), state.len() as u64).unwrap();
    let key = format!("{:0>200}", 12_345);
    let got = sized.query(format!(r#"{{"get":{{"key":"{key}"}}}}"#).as_bytes()).unwrap();
    assert_eq!(&got[..], b"12345");
    assert_eq!(snapshot(&mut sized), state);
}
