//! Synced append throughput of the RocksDB log store next to the physical limit:
//! a raw `write` + `fdatasync` loop on the same disk, in the same run.
//!
//! For each batch size (1, 16, 256 entries of 256 bytes) and each round, one
//! timed trial of the raw loop and one of the store, interleaved so drift hits
//! both; the table reports medians over rounds. Every store call is one
//! `LogStore::write` that returns after its sync, exactly as the daemon uses it.
//!
//!     cargo bench -p waft-storage --bench log_append
//!     WAFT_BENCH_ROUNDS=7 WAFT_BENCH_TRIAL_MS=2000 cargo bench -p waft-storage --bench log_append

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use waft_storage::{EntryKind, LogEntry, LogStore, RocksLogStore, WriteSet};

const ENTRY_BYTES: usize = 256;
const BATCH_SIZES: [usize; 3] = [1, 16, 256];
const ROUNDS_DEFAULT: usize = 5;
const TRIAL_MS_DEFAULT: u64 = 1500;
/// Stop a trial after this many syncs even if time remains (bounds disk use).
const TRIAL_SYNCS_MAX: u64 = 200_000;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Trial {
    entries: u64,
    elapsed: Duration,
}

impl Trial {
    fn entries_per_s(&self) -> f64 {
        self.entries as f64 / self.elapsed.as_secs_f64()
    }

    fn mb_per_s(&self) -> f64 {
        self.entries_per_s() * ENTRY_BYTES as f64 / 1e6
    }
}

fn raw_trial(dir: &Path, batch: usize, trial: Duration) -> Trial {
    let path = dir.join("raw.log");
    let mut file = File::create(&path).expect("create raw file");
    let buf = vec![0xABu8; batch * ENTRY_BYTES];
    let start = Instant::now();
    let mut syncs = 0u64;
    while start.elapsed() < trial && syncs < TRIAL_SYNCS_MAX {
        file.write_all(&buf).expect("write");
        file.sync_data().expect("fdatasync");
        syncs += 1;
    }
    let elapsed = start.elapsed();
    drop(file);
    std::fs::remove_file(&path).expect("remove raw file");
    Trial { entries: syncs * batch as u64, elapsed }
}

fn store_trial(dir: &Path, batch: usize, trial: Duration) -> Trial {
    let path = dir.join("db");
    let mut store = RocksLogStore::open(&path).expect("open store");
    let payload = Bytes::from(vec![0xCDu8; ENTRY_BYTES]);
    let mut next = 1u64;
    let start = Instant::now();
    let mut syncs = 0u64;
    while start.elapsed() < trial && syncs < TRIAL_SYNCS_MAX {
        let entries = (next..next + batch as u64)
            .map(|i| LogEntry::new(i, 1, EntryKind::Normal, payload.clone()))
            .collect();
        let mut set = WriteSet::new();
        set.append(1, entries);
        store.write(set).expect("synced write");
        next += batch as u64;
        syncs += 1;
    }
    let elapsed = start.elapsed();
    assert_eq!(store.last_index(1), next - 1);
    drop(store);
    std::fs::remove_dir_all(&path).expect("remove db");
    Trial { entries: syncs * batch as u64, elapsed }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing
    // useful either way. Both run the full measurement.
    let rounds = env_or("WAFT_BENCH_ROUNDS", ROUNDS_DEFAULT as u64) as usize;
    let trial = Duration::from_millis(env_or("WAFT_BENCH_TRIAL_MS", TRIAL_MS_DEFAULT));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("log_append-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    println!("log_append: {rounds} rounds x {} ms per trial, entries of {ENTRY_BYTES} B, dir {}", trial.as_millis(), dir.display());

    // Warm the disk and the allocator once, unmeasured.
    raw_trial(&dir, 16, Duration::from_millis(200));
    store_trial(&dir, 16, Duration::from_millis(200));

    let mut rows = Vec::new();
    for batch in BATCH_SIZES {
        let (mut raw, mut store) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let r = raw_trial(&dir, batch, trial);
            let s = store_trial(&dir, batch, trial);
            eprintln!(
                "  batch {batch:>3} round {round}: raw {:>9.0} entries/s {:>7.2} MB/s | store {:>9.0} entries/s {:>7.2} MB/s",
                r.entries_per_s(),
                r.mb_per_s(),
                s.entries_per_s(),
                s.mb_per_s()
            );
            raw.push(r);
            store.push(s);
        }
        let raw_eps = median(raw.iter().map(Trial::entries_per_s).collect());
        let store_eps = median(store.iter().map(Trial::entries_per_s).collect());
        let raw_mbs = median(raw.iter().map(Trial::mb_per_s).collect());
        let store_mbs = median(store.iter().map(Trial::mb_per_s).collect());
        let ratios: Vec<f64> = raw.iter().zip(&store).map(|(r, s)| s.mb_per_s() / r.mb_per_s()).collect();
        rows.push((batch, raw_eps, raw_mbs, store_eps, store_mbs, store_mbs / raw_mbs, median(ratios)));
    }
    println!();
    println!("| batch | raw entries/s | raw MB/s | store entries/s | store MB/s | store/raw (of medians) | store/raw (median of rounds) |");
    println!("|------:|--------------:|---------:|----------------:|-----------:|-----------------------:|-----------------------------:|");
    for (batch, raw_eps, raw_mbs, store_eps, store_mbs, ratio, ratio_med) in rows {
        println!(
            "| {batch:>5} | {raw_eps:>13.0} | {raw_mbs:>8.2} | {store_eps:>15.0} | {store_mbs:>10.2} | {:>21.0}% | {:>27.0}% |",
            ratio * 100.0,
            ratio_med * 100.0
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
