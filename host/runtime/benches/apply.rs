//! Counter apply throughput through the wasm runtime, next to the same
//! counter logic as native Rust, in one run.
//!
//! `cargo bench -p waft-runtime --bench apply` (build the guests first:
//! `cargo xtask guests`). Prints a table of medians; the native column runs
//! the same decode / add / encode steps the guest SDK does.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use waft_guest::codec::{self, Format};
use waft_runtime::{Engine, Entry, Limits, Module, StateMachine};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Command {
    Incr(i64),
    Get,
}

/// The counter's query.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Query {
    Get,
}

const ROUNDS: usize = 7;
const BATCHES: [usize; 3] = [1, 64, 1024];

fn guest_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    std::env::var_os("WAFT_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or(target.join("wasm32-wasip2/release"))
        .join("waft_counter.wasm")
}

fn commands(n: usize) -> Vec<Entry> {
    (0..n).map(|i| Entry::new(i as u64 + 1, 1, codec::encode(&Command::Incr(1), Format::Binary).unwrap())).collect()
}

fn wasm_run(module: &Module, entries: &[Entry], batch: usize) -> f64 {
    let mut sm = StateMachine::new(module, Limits::default(), "bench").unwrap();
    let start = Instant::now();
    for chunk in entries.chunks(batch) {
        let results = sm.apply(chunk).unwrap();
        black_box(results);
    }
    entries.len() as f64 / start.elapsed().as_secs_f64()
}

/// The counter's logic without the sandbox: decode, add, encode.
fn native_apply(value: &mut i64, entry: &Entry) -> Result<Vec<u8>, String> {
    let (cmd, format) = codec::decode::<Command>(&entry.command).map_err(|e| e.0)?;
    if let Command::Incr(d) = cmd {
        *value = value.checked_add(d).ok_or("counter overflow")?;
    }
    codec::encode(value, format).map_err(|e| e.0)
}

fn native_run(entries: &[Entry], batch: usize) -> f64 {
    let mut value = 0i64;
    let start = Instant::now();
    for chunk in entries.chunks(batch) {
        let results: Vec<Result<bytes::Bytes, String>> =
            chunk.iter().map(|e| native_apply(&mut value, e).map(bytes::Bytes::from)).collect();
        black_box(results);
    }
    entries.len() as f64 / start.elapsed().as_secs_f64()
}

/// Queries per second: `reads` queries after each `writes`-entry apply, so
/// the query path's catching up with new entries is in the figure too.
fn query_run(module: &Module, rounds: usize, writes: usize, reads: usize) -> f64 {
    let mut sm = StateMachine::new(module, Limits::default(), "bench").unwrap();
    let get = codec::encode(&Query::Get, Format::Binary).unwrap();
    let mut index = 0u64;
    let start = Instant::now();
    for _ in 0..rounds {
        let entries: Vec<Entry> = (0..writes)
            .map(|_| {
                index += 1;
                Entry::new(index, 1, codec::encode(&Command::Incr(1), Format::Binary).unwrap())
            })
            .collect();
        black_box(sm.apply(&entries).unwrap());
        for _ in 0..reads {
            black_box(sm.query(&get).unwrap());
        }
    }
    (rounds * reads) as f64 / start.elapsed().as_secs_f64()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn main() {
    let path = guest_path();
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}; run `cargo xtask guests` first", path.display()));
    let engine = Engine::new().unwrap();
    let module = Module::load(&engine, &bytes).unwrap();
    println!("counter apply throughput, median of {ROUNDS} rounds (fuel metering on)");
    println!("{:>6} {:>16} {:>16} {:>12}", "batch", "wasm entries/s", "native entries/s", "wasm/native");
    for batch in BATCHES {
        let n = if batch == 1 { 100_000 } else { 400_000 };
        let entries = commands(n);
        let mut wasm = Vec::new();
        let mut native = Vec::new();
        // Interleave the two so machine noise hits both alike.
        for _ in 0..ROUNDS {
            wasm.push(wasm_run(&module, &entries, batch));
            native.push(native_run(&entries, batch));
        }
        let (w, n) = (median(wasm), median(native));
        println!("{batch:>6} {w:>16.0} {n:>16.0} {:>11.1}%", 100.0 * w / n);
    }

    // Reads: only queries (the fast read path), then a mix of one write per
    // nine reads, then one write per read.
    println!("counter queries, median of {ROUNDS} rounds");
    println!("{:>22} {:>12}", "writes:reads a round", "queries/s");
    for (writes, reads) in [(0, 100), (1, 9), (1, 1)] {
        let rounds = 200_000 / reads;
        let q: Vec<f64> = (0..ROUNDS).map(|_| query_run(&module, rounds, writes, reads)).collect();
        println!("{:>22} {:>12.0}", format!("{writes}:{reads}"), median(q));
    }
}
