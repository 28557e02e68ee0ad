//! Synced append throughput of the RocksDB log store next to the physical limit:
//! a raw `write` + `fdatasync` loop on the same disk, in the same run.
//!
//! For each batch size (1, 16, 256 entries of 256 bytes) and each round, the
//! raw loop and the store alternate in 50 ms slices until each has run for the
//! trial time, so drift in the disk's speed hits both alike; the table reports
//! medians over rounds. Every store call is one
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
/// Length of one alternation slice of raw or store writes.
const SLICE: Duration = Duration::from_millis(50);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

/// The physical limit: append a batch-sized buffer, fdatasync, repeat.
struct RawSide {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
}

impl RawSide {
    fn new(dir: &Path, batch: usize) -> RawSide {
        let path = dir.join("raw.log");
        let file = File::create(&path).expect("create raw file");
        RawSide {
            file,
            path,
            buf: vec![0xABu8; batch * ENTRY_BYTES],
        }
    }

    /// Runs synced appends for `slice`; returns syncs done.
    fn run(&mut self, slice: Duration) -> u64 {
        let start = Instant::now();
        let mut syncs = 0;
        while start.elapsed() < slice {
            self.file.write_all(&self.buf).expect("write");
            self.file.sync_data().expect("fdatasync");
            syncs += 1;
        }
        syncs
    }

    fn finish(self) {
        drop(self.file);
        std::fs::remove_file(&self.path).expect("remove raw file");
    }
}

/// The store, used exactly as the daemon uses it: one write per round, which
/// returns after its sync.
struct StoreSide {
    store: RocksLogStore,
    path: PathBuf,
    payload: Bytes,
    batch: u64,
    next: u64,
}

impl StoreSide {
    fn new(dir: &Path, batch: usize) -> StoreSide {
        let path = dir.join("db");
        let store = RocksLogStore::open(&path).expect("open store");
        StoreSide {
            store,
            path,
            payload: Bytes::from(vec![0xCDu8; ENTRY_BYTES]),
            batch: batch as u64,
            next: 1,
        }
    }

    fn run(&mut self, slice: Duration) -> u64 {
        let start = Instant::now();
        let mut syncs = 0;
        while start.elapsed() < slice {
            let entries = (self.next..self.next + self.batch)
                .map(|i| LogEntry::new(i, 1, EntryKind::Normal, self.payload.clone()))
                .collect();
            let mut set = WriteSet::new();
            set.append(1, entries);
            self.store.write(set).expect("synced write");
            self.next += self.batch;
            syncs += 1;
        }
        syncs
    }

    fn finish(self) {
        assert_eq!(self.store.last_index(1), self.next - 1);
        drop(self.store);
        std::fs::remove_dir_all(&self.path).expect("remove db");
    }
}

/// One round: raw and store alternate in short slices for `trial` each, so a
/// change in the disk's speed (shared virtual disks drift by 10x within
/// seconds) hits both sides alike.
fn paired_round(dir: &Path, batch: usize, trial: Duration) -> (Trial, Trial) {
    let mut raw = RawSide::new(dir, batch);
    let mut store = StoreSide::new(dir, batch);
    let (mut raw_syncs, mut store_syncs) = (0u64, 0u64);
    let (mut raw_time, mut store_time) = (Duration::ZERO, Duration::ZERO);
    while raw_time < trial || store_time < trial {
        let t = Instant::now();
        raw_syncs += raw.run(SLICE);
        raw_time += t.elapsed();
        let t = Instant::now();
        store_syncs += store.run(SLICE);
        store_time += t.elapsed();
    }
    raw.finish();
    store.finish();
    (
        Trial {
            entries: raw_syncs * batch as u64,
            elapsed: raw_time,
        },
        Trial {
            entries: store_syncs * batch as u64,
            elapsed: store_time,
        },
    )
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing
    // useful either way. Both run the full measurement.
    let rounds = env_or("WAFT_BENCH_ROUNDS", ROUNDS_DEFAULT as u64) as usize;
    let trial = Duration::from_millis(env_or("WAFT_BENCH_TRIAL_MS", TRIAL_MS_DEFAULT));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("log_append-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    println!(
        "log_append: {rounds} rounds x {} ms per trial, entries of {ENTRY_BYTES} B, dir {}",
        trial.as_millis(),
        dir.display()
    );

    // Warm the disk and the allocator once, unmeasured.
    paired_round(&dir, 16, Duration::from_millis(200));

    // WAFT_BENCH_BATCH=256 measures one batch size only (for profiling).
    let only = std::env::var("WAFT_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    let mut rows = Vec::new();
    for batch in BATCH_SIZES
        .into_iter()
        .filter(|b| only.is_none_or(|o| o == *b))
    {
        let (mut raw, mut store) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let (r, s) = paired_round(&dir, batch, trial);
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
        let ratios: Vec<f64> = raw
            .iter()
            .zip(&store)
            .map(|(r, s)| s.mb_per_s() / r.mb_per_s())
            .collect();
        rows.push((
            batch,
            raw_eps,
            raw_mbs,
            store_eps,
            store_mbs,
            store_mbs / raw_mbs,
            median(ratios),
        ));
    }
    println!();
    println!(
        "| batch | raw entries/s | raw MB/s | store entries/s | store MB/s | store/raw (of medians) | store/raw (median of rounds) |"
    );
    println!(
        "|------:|--------------:|---------:|----------------:|-----------:|-----------------------:|-----------------------------:|"
    );
    for (batch, raw_eps, raw_mbs, store_eps, store_mbs, ratio, ratio_med) in rows {
        println!(
            "| {batch:>5} | {raw_eps:>13.0} | {raw_mbs:>8.2} | {store_eps:>15.0} | {store_mbs:>10.2} | {:>21.0}% | {:>27.0}% |",
            ratio * 100.0,
            ratio_med * 100.0
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
