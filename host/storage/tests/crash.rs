//! Crash safety with real processes: the `crash-writer` child appends with sync
//! and announces each durable write; this test SIGKILLs it at seeded random
//! moments and, after every kill, reopens the store and checks it holds exactly
//! the acknowledged writes (or those plus the one write in flight, which may or
//! may not have reached the disk): nothing acknowledged is lost, no torn tail is
//! served, hard state never goes backwards.
//!
//! WAFT_CRASH_KILLS sets the number of kills (default 200); WAFT_CRASH_SEED
//! replays a run.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use waft_storage::testkit::{LineOp, Model, Rng, parse_ops};
use waft_storage::{LogStore, RocksLogStore};

const KILLS_DEFAULT: u64 = 200;
/// Longest a child may take to open the store before the test gives up.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Kill delays are drawn below these bounds.
const KILL_DURING_OPEN_MAX_US: u64 = 30_000;
const KILL_DURING_WRITES_MAX_US: u64 = 40_000;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// What one child run printed, complete lines only (a line cut by the kill is
/// not a statement).
struct Transcript {
    ready: bool,
    /// Writes acknowledged with `D`, in order.
    durable: Vec<Vec<LineOp>>,
    /// A write announced with `W` but not acknowledged.
    in_flight: Option<Vec<LineOp>>,
}

fn parse_transcript(lines: &[String]) -> Transcript {
    let mut t = Transcript { ready: false, durable: Vec::new(), in_flight: None };
    for line in lines {
        if line == "R" {
            t.ready = true;
        } else if let Some(ops) = line.strip_prefix("W ") {
            assert!(t.in_flight.is_none(), "two intents without an ack");
            t.in_flight = Some(parse_ops(ops).expect("child printed a bad intent"));
        } else if line == "D" {
            t.durable.push(t.in_flight.take().expect("ack without intent"));
        } else {
            panic!("unexpected line from child: {line:?}");
        }
    }
    t
}

#[test]
fn sigkill_never_loses_acknowledged_writes() {
    let kills = env_u64("WAFT_CRASH_KILLS").unwrap_or(KILLS_DEFAULT);
    let seed = env_u64("WAFT_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    // Printed up front: cargo shows it with the failure output.
    println!("crash test: seed {seed} (replay with WAFT_CRASH_SEED={seed}), {kills} kills");
    let scratch = common::Scratch::new("crash");
    let db = scratch.join("db");
    let mut rng = Rng::new(seed);
    let mut model = Model::default();
    let started = Instant::now();
    let (mut acked_writes, mut in_flight_landed, mut kills_during_open) = (0u64, 0u64, 0u64);

    for kill in 0..kills {
        let child_seed = Rng::seed_for(seed, kill);
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash-writer"))
            .arg(&db)
            .arg(child_seed.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn crash-writer");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if buf.last() == Some(&b'\n') => {
                        let line = String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned();
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                    Ok(_) => break, // cut by the kill
                }
            }
        });

        let mut lines = Vec::new();
        if rng.below(5) == 0 {
            // Kill while the child opens (and recovers) the store.
            std::thread::sleep(Duration::from_micros(rng.below(KILL_DURING_OPEN_MAX_US)));
        } else {
            match rx.recv_timeout(OPEN_TIMEOUT) {
                Ok(line) => lines.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let out = child.wait_with_output().expect("wait");
                    panic!(
                        "seed {seed} kill {kill}: child did not open the store: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            std::thread::sleep(Duration::from_micros(rng.below(KILL_DURING_WRITES_MAX_US)));
        }
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait for child");
        reader.join().expect("reader thread");
        lines.extend(rx.try_iter());
        let transcript = parse_transcript(&lines);
        if !transcript.ready {
            kills_during_open += 1;
        }
        if status.code().is_some() {
            // Exited by itself before the kill: only an error does that.
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("seed {seed} kill {kill}: child exited with {status}: {err}");
        }

        for ops in &transcript.durable {
            model.apply(ops);
        }
        acked_writes += transcript.durable.len() as u64;
        let before = model.clone();

        let store = RocksLogStore::open(&db)
            .unwrap_or_else(|e| panic!("seed {seed} kill {kill}: reopen after SIGKILL failed: {e}"));
        let exact = model.check(&store);
        if let Err(without) = exact {
            let Some(pending) = &transcript.in_flight else {
                panic!("seed {seed} kill {kill}: store lost acknowledged writes: {without}");
            };
            let mut with = model.clone();
            with.apply(pending);
            if let Err(with_err) = with.check(&store) {
                panic!(
                    "seed {seed} kill {kill}: store matches neither the acknowledged state ({without}) \
                     nor that plus the write in flight ({with_err})"
                );
            }
            model = with;
            in_flight_landed += 1;
        }
        for group in store.groups() {
            let (now, was) = (store.hard_state(group), before.hard_state(group));
            assert!(
                now.term >= was.term && now.commit >= was.commit,
                "seed {seed} kill {kill}: group {group} hard state went back from {was:?} to {now:?}"
            );
        }
        drop(store);
    }
    println!(
        "crash test: {kills} kills ({kills_during_open} during open), {acked_writes} acknowledged writes, \
         {in_flight_landed} unacknowledged writes found durable, {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(acked_writes > kills, "too few writes between kills to mean anything");
}
