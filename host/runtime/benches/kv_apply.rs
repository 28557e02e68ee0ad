//! The atomic example's apply throughput in memory (`examples/atomic`) next
//! to the same state machine on the key-value store (`examples/atomic-kv`,
//! an in-memory store: the sandbox's share, not the disk's), in one run.
//!
//! `cargo bench -p waft-runtime --bench kv_apply` (build the guests first:
//! `cargo xtask guests`). Prints medians of entries per second and the CPU
//! time an entry costs; a kv entry runs on a fresh instance, so the gap is
//! mostly instantiation.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use waft_runtime::{Engine, Entry, KvHandle, Limits, MemKv, Module, StateMachine};

const ROUNDS: usize = 5;
const ENTRIES: usize = 20_000;
const BATCH: usize = 64;
const KEYS: usize = 1_000;

fn guest(name: &str) -> Vec<u8> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = std::env::var_os("WAFT_GUEST_DIR").map(PathBuf::from).unwrap_or(target.join("wasm32-wasip2/release"));
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask guests`", path.display()))
}

fn entries() -> Vec<Entry> {
    (0..ENTRIES)
        .map(|i| {
            let key = format!("key-{:06}", (i * 7919) % KEYS);
            Entry::new(i as u64 + 1, 1, format!(r#"{{"incr":{{"key":"{key}","delta":1}}}}"#).into_bytes())
        })
        .collect()
}

fn run(module: &Module, entries: &[Entry]) -> f64 {
    let mut sm = StateMachine::new(module, Limits::default(), "bench").unwrap();
    let store: KvHandle = Arc::new(Mutex::new(MemKv::default()));
    sm.attach_kv(store);
    let start = Instant::now();
    for chunk in entries.chunks(BATCH) {
        black_box(sm.apply(chunk).unwrap());
    }
    entries.len() as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let engine = Engine::new().unwrap();
    let memory = Module::load(&engine, &guest("waft_atomic")).unwrap();
    let kv = Module::load(&engine, &guest("waft_atomic_kv")).unwrap();
    let entries = entries();
    let (mut m, mut k) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Alternate the order, so neither always runs first.
        if round % 2 == 0 {
            m.push(run(&memory, &entries));
            k.push(run(&kv, &entries));
        } else {
            k.push(run(&kv, &entries));
            m.push(run(&memory, &entries));
        }
    }
    let (m, k) = (median(m), median(k));
    println!("atomic incr, {KEYS} keys, batches of {BATCH}, median of {ROUNDS} runs of {ENTRIES} entries");
    println!("{:<12} {:>12} {:>10}", "machine", "entries/s", "us/entry");
    println!("{:<12} {:>12.0} {:>10.2}", "memory", m, 1e6 / m);
    println!("{:<12} {:>12.0} {:>10.2}", "kv (mem)", k, 1e6 / k);
    println!("kv / memory: {:.3}", k / m);
}
