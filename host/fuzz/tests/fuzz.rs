//! Every fuzz target, seeded from its corpus and mutated for a short while
//! (`WAFT_FUZZ_MS` per target, default 1,500; `WAFT_FUZZ_SEED` to replay a
//! run). A failure prints the target, seed and iteration, and writes the
//! input to `target/waft-fuzz-failures/`.

use std::time::Duration;

use waft_fuzz::{TARGETS, engine};

/// Milliseconds each target runs unless `WAFT_FUZZ_MS` says otherwise.
const FUZZ_MS_DEFAULT: u64 = 1_500;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|e| panic!("{name}={v:?}: {e}")))
}

#[test]
fn every_target_survives_its_corpus_and_mutations_of_it() {
    let budget = Duration::from_millis(env_u64("WAFT_FUZZ_MS").unwrap_or(FUZZ_MS_DEFAULT));
    let seed = env_u64("WAFT_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    println!("fuzz seed {seed} (replay with WAFT_FUZZ_SEED={seed}), {budget:?} per target");
    // A panic inside a target is caught and reported once, not printed as
    // it happens.
    std::panic::set_hook(Box::new(|_| {}));
    let mut failures = Vec::new();
    for (i, target) in TARGETS.iter().enumerate() {
        let target_seed = seed.wrapping_add(i as u64);
        match engine::run(target, budget, target_seed) {
            Ok(stats) => {
                println!("{:<20} {:>9} executions from {} inputs", target.0, stats.executions, stats.inputs)
            }
            Err(failure) => {
                let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/waft-fuzz-failures");
                let _ = std::fs::create_dir_all(&dir);
                let path = dir.join(format!("{}-{}-{}", failure.target, failure.seed, failure.iteration));
                let _ = std::fs::write(&path, &failure.input);
                failures.push(format!("{failure}; input in {}", path.display()));
            }
        }
    }
    let _ = std::panic::take_hook();
    assert!(failures.is_empty(), "fuzz seed {seed}:\n{}", failures.join("\n"));
}

/// The engine is deterministic: a seed and an iteration name one input.
#[test]
fn a_seed_and_an_iteration_name_one_input() {
    let a = engine::replay_input("session_envelope", 42, 100);
    let b = engine::replay_input("session_envelope", 42, 100);
    let c = engine::replay_input("session_envelope", 43, 100);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

/// Every target has seeds, so no target runs on noise alone.
#[test]
fn every_target_has_valid_seeds() {
    for target in TARGETS {
        assert!(!engine::seeds::seeds(target.0).is_empty(), "{} has no seeds", target.0);
    }
}

/// Writes every target's seeds into its corpus directory (each file named
/// by a hash of its bytes), for cargo-fuzz to start from. Run by hand after
/// a format changes: `cargo test -p waft-fuzz --test fuzz -- --ignored`.
#[test]
#[ignore]
fn write_seeds_into_the_corpus() {
    for target in TARGETS {
        let dir = engine::corpus_dir(target.0);
        std::fs::create_dir_all(&dir).unwrap();
        for seed in engine::seeds::seeds(target.0) {
            let name = format!("seed-{:016x}", fnv1a(&seed));
            std::fs::write(dir.join(name), seed).unwrap();
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
