//! Apply throughput of the counter in each language waft has an SDK or a
//! path for, in one run: Rust with the SDK, Rust straight from the WIT,
//! Python (componentize-py) and JavaScript (componentize-js). JSON commands
//! (`{"incr":1}`, the form every one of them reads), batches of 1, 64 and
//! 1,024 entries per `on-apply` call, default limits (a batch whose fuel
//! runs out is re-run one entry per call, as on a replica).
//!
//! `cargo xtask guests && cargo bench -p waft-runtime --bench languages`.
//! Prints entries per second (median of `ROUNDS`) and the compile time.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use waft_runtime::{Engine, Entry, Limits, Module, StateMachine};

const ROUNDS: usize = 3;
const BATCHES: [usize; 3] = [1, 64, 1024];
/// (label, component, entries per round): fewer for the slow ones.
const GUESTS: [(&str, &str, usize); 4] = [
    ("Rust (SDK)", "waft_counter", 65_536),
    ("Rust (WIT, no SDK)", "waft_counter_wit", 65_536),
    ("Python (SDK)", "waft_counter_py", 4_096),
    ("JavaScript (SDK)", "waft_counter_js", 4_096),
];

fn guest_path(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    std::env::var_os("WAFT_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or(target.join("wasm32-wasip2/release"))
        .join(format!("{name}.wasm"))
}

fn run(module: &Module, entries: &[Entry], batch: usize) -> f64 {
    let mut sm = StateMachine::new(module, Limits::default(), "bench").expect("instantiate");
    let start = Instant::now();
    for chunk in entries.chunks(batch) {
        let results = sm.apply(chunk).expect("apply");
        assert!(results.iter().all(Result::is_ok), "an entry was rejected");
        black_box(results);
    }
    entries.len() as f64 / start.elapsed().as_secs_f64()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let engine = Engine::new().expect("engine");
    println!("{:<20} {:>10} {:>12} {:>12} {:>12}", "counter", "compile s", "batch 1", "batch 64", "batch 1024");
    for (label, name, n) in GUESTS {
        let path = guest_path(name);
        let Ok(bytes) = std::fs::read(&path) else {
            println!("{label:<20} missing: {} (cargo xtask guests)", path.display());
            continue;
        };
        let started = Instant::now();
        let module = Module::load(&engine, &bytes).expect("load");
        let compile = started.elapsed().as_secs_f64();
        let entries: Vec<Entry> = (0..n).map(|i| Entry::new(i as u64 + 1, 1, br#"{"incr":1}"#.to_vec())).collect();
        let rates: Vec<f64> =
            BATCHES.iter().map(|&b| median((0..ROUNDS).map(|_| run(&module, &entries, b)).collect())).collect();
        println!("{label:<20} {compile:>10.1} {:>12.0} {:>12.0} {:>12.0}", rates[0], rates[1], rates[2]);
    }
}
