//! Randomized simulation sweeps: many seeds with faults and churn, and the
//! determinism of a seed. Failures print the one command that replays them.

use waft_sim::sim::{SimConfig, run_seed};

/// CI runs `cargo test --release`: 1,000 seeds there; a debug build runs fewer.
const SEEDS_RELEASE: u64 = 1_000;
const SEEDS_DEBUG: u64 = 100;
/// Worker threads for the sweep (the CI machine has 2 cores).
const THREADS: u64 = 2;

#[test]
fn thousand_seeds_with_faults_and_churn() {
    let seeds = if cfg!(debug_assertions) {
        SEEDS_DEBUG
    } else {
        SEEDS_RELEASE
    };
    std::panic::set_hook(Box::new(|_| {}));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                let mut stats = (0u64, 0u64, 0u64, 0u64);
                for seed in (t..seeds).step_by(THREADS as usize) {
                    match run_seed(SimConfig::from_seed(seed)) {
                        Ok(o) => {
                            stats.0 += o.stats.conf_changes;
                            stats.1 += o.stats.crashes;
                            stats.2 += o.stats.writes_ok + o.stats.reads_ok;
                            stats.3 += o.stats.snapshots_installed;
                        }
                        Err(e) => failures.push(e),
                    }
                }
                (failures, stats)
            })
        })
        .collect();
    let mut failures = Vec::new();
    let mut total = (0, 0, 0, 0);
    for h in handles {
        let (f, s) = h.join().expect("worker");
        failures.extend(f);
        total = (total.0 + s.0, total.1 + s.1, total.2 + s.2, total.3 + s.3);
    }
    let _ = std::panic::take_hook();
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The sweep must really exercise churn and faults.
    assert!(total.0 > seeds, "too few membership changes: {total:?}");
    assert!(total.1 > seeds, "too few crashes: {total:?}");
    assert!(total.3 > seeds / 10, "too few snapshot installs: {total:?}");
    assert!(total.2 > seeds * 20, "too few client operations: {total:?}");
}

#[test]
fn same_seed_same_trace() {
    for seed in [1, 42, 4242] {
        let a = run_seed(SimConfig::from_seed(seed)).expect("seed passes");
        let b = run_seed(SimConfig::from_seed(seed)).expect("seed passes");
        assert_eq!(
            a.trace_hash, b.trace_hash,
            "seed {seed} is not deterministic"
        );
        assert_eq!(a.stats, b.stats);
    }
    let a = run_seed(SimConfig::from_seed(1)).expect("seed passes");
    let b = run_seed(SimConfig::from_seed(2)).expect("seed passes");
    assert_ne!(
        a.trace_hash, b.trace_hash,
        "different seeds, different runs"
    );
}
