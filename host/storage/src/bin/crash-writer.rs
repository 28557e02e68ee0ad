//! crash-writer: the child process of the crash test (tests/crash.rs).
//!
//! Opens a RocksDB log store, prints `R` once it is open, then loops forever:
//! picks the next write from the store's state, prints `W <ops>` (its intent),
//! writes it with one sync, and prints `D` only after the write returned. The
//! test SIGKILLs it at random moments and checks that every write announced with
//! `D` survived, exactly. It must never print `D` before the write is durable.
//!
//! Usage: crash-writer <db-dir> <seed>

use std::io::Write;

use waft_storage::testkit::{Rng, encode_ops, next_ops, to_write_set};
use waft_storage::{LogStore, RocksLogStore};

const GROUPS: [u64; 3] = [1, 2, 3];
/// Keeps each group's log short enough to verify completely after every kill.
const LOG_LEN_MAX: u64 = 1500;

fn main() {
    if let Err(e) = run() {
        eprintln!("crash-writer: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, seed] = args.as_slice() else {
        return Err("usage: crash-writer <db-dir> <seed>".to_string());
    };
    let seed: u64 = seed.parse().map_err(|e| format!("seed {seed:?}: {e}"))?;
    let mut store = RocksLogStore::open(dir).map_err(|e| e.to_string())?;
    let mut rng = Rng::new(seed);
    let mut out = std::io::stdout().lock();
    let mut say = |line: &str| -> Result<(), String> {
        out.write_all(line.as_bytes())
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())
    };
    say("R")?;
    loop {
        let ops = next_ops(&store, &mut rng, &GROUPS, LOG_LEN_MAX);
        say(&format!("W {}", encode_ops(&ops)))?;
        store.write(to_write_set(&ops)).map_err(|e| e.to_string())?;
        say("D")?;
    }
}
