//! Synced append throughput of the RocksDB log store next to the physical limit:
//! raw `write` + `fdatasync` loops on the same disk, in the same run.
//!
//! Two raw loops bound the store: `append` grows a fresh file (what a naive log
//! does: every sync also persists block allocation and file size), and
//! `prealloc` overwrites a file whose blocks were written beforehand (only data
//! reaches the disk: the true physical limit; RocksDB gets close to it because
//! it preallocates its WAL). For each batch size (1, 16, 256 entries of 256
//! bytes) and round, the three alternate in 50 ms slices until each has run for
//! the trial time, so drift in the shared disk's speed (it swings between
//! ~0.1 ms and ~5 ms per fdatasync within seconds) hits all alike. The table
//! reports medians over rounds.
//!
//!     cargo bench -p waft-storage --bench log_append
//!     WAFT_BENCH_ROUNDS=7 WAFT_BENCH_TRIAL_MS=2000 cargo bench -p waft-storage --bench log_append
//!     WAFT_BENCH_BATCH=256 ...   one batch size only (for profiling)

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use waft_storage::{EntryKind, LogEntry, LogStore, RocksLogStore, WriteSet};

const ENTRY_BYTES: usize = 256;
const BATCH_SIZES: [usize; 3] = [1, 16, 256];
const ROUNDS_DEFAULT: usize = 5;
const TRIAL_MS_DEFAULT: u64 = 1500;
/// Length of one alternation slice.
const SLICE: Duration = Duration::from_millis(50);
/// Size of the preallocated raw file; the overwrite loop wraps around in it.
const PREALLOC_BYTES: u64 = 16 * 1024 * 1024;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Default)]
struct Trial {
    entries: u64,
    syncs: u64,
    elapsed: Duration,
}

impl Trial {
    fn entries_per_s(&self) -> f64 {
        self.entries as f64 / self.elapsed.as_secs_f64()
    }

    fn mb_per_s(&self) -> f64 {
        self.entries_per_s() * ENTRY_BYTES as f64 / 1e6
    }

    fn us_per_sync(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e6 / self.syncs.max(1) as f64
    }
}

/// Something that performs synced writes of one batch each.
trait Side {
    /// One synced write of `batch` entries.
    fn sync_once(&mut self);
    fn finish(self: Box<Self>);
}

struct RawSide {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
    /// Overwrite mode: wrap back to offset 0 at this size. None: append forever.
    wrap_at: Option<u64>,
    offset: u64,
}

impl RawSide {
    fn append(dir: &Path, batch: usize) -> RawSide {
        let path = dir.join("raw-append.log");
        let file = File::create(&path).expect("create raw file");
        RawSide { file, path, buf: vec![0xABu8; batch * ENTRY_BYTES], wrap_at: None, offset: 0 }
    }

    fn prealloc(dir: &Path, batch: usize) -> RawSide {
        let path = dir.join("raw-prealloc.log");
        let mut file = File::create(&path).expect("create raw file");
        let chunk = vec![0u8; 1024 * 1024];
        for _ in 0..PREALLOC_BYTES / chunk.len() as u64 {
            file.write_all(&chunk).expect("prefill");
        }
        file.sync_all().expect("fsync prefill");
        file.seek(SeekFrom::Start(0)).expect("seek");
        let buf = vec![0xABu8; batch * ENTRY_BYTES];
        let wrap = PREALLOC_BYTES - PREALLOC_BYTES % buf.len() as u64;
        RawSide { file, path, buf, wrap_at: Some(wrap), offset: 0 }
    }
}

impl Side for RawSide {
    fn sync_once(&mut self) {
        if let Some(wrap) = self.wrap_at
            && self.offset + self.buf.len() as u64 > wrap
        {
            self.file.seek(SeekFrom::Start(0)).expect("seek");
            self.offset = 0;
        }
        self.file.write_all(&self.buf).expect("write");
        self.file.sync_data().expect("fdatasync");
        self.offset += self.buf.len() as u64;
    }

    fn finish(self: Box<Self>) {
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
        let payload = Bytes::from(vec![0xCDu8; ENTRY_BYTES]);
        StoreSide { store, path, payload, batch: batch as u64, next: 1 }
    }
}

impl Side for StoreSide {
    fn sync_once(&mut self) {
        let entries = (self.next..self.next + self.batch)
            .map(|i| LogEntry::new(i, 1, EntryKind::Normal, self.payload.clone()))
            .collect();
        let mut set = WriteSet::new();
        set.append(1, entries);
        self.store.write(set).expect("synced write");
        self.next += self.batch;
    }

    fn finish(self: Box<Self>) {
        assert_eq!(self.store.last_index(1), self.next - 1);
        let path = self.path.clone();
        drop(self);
        std::fs::remove_dir_all(&path).expect("remove db");
    }
}

/// One round: the sides alternate in short slices until each ran `trial`.
/// Returns [raw append, raw prealloc, store].
fn paired_round(dir: &Path, batch: usize, trial: Duration) -> [Trial; 3] {
    let mut sides: [Box<dyn Side>; 3] = [
        Box::new(RawSide::append(dir, batch)),
        Box::new(RawSide::prealloc(dir, batch)),
        Box::new(StoreSide::new(dir, batch)),
    ];
    let mut trials: [Trial; 3] = Default::default();
    while trials.iter().any(|t| t.elapsed < trial) {
        for (side, t) in sides.iter_mut().zip(trials.iter_mut()) {
            let start = Instant::now();
            while start.elapsed() < SLICE {
                side.sync_once();
                t.syncs += 1;
            }
            t.elapsed += start.elapsed();
        }
    }
    for side in sides {
        side.finish();
    }
    for t in &mut trials {
        t.entries = t.syncs * batch as u64;
    }
    trials
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 }
}

fn main() {
    // `cargo bench` passes --bench; nothing else is parsed.
    let rounds = env_or("WAFT_BENCH_ROUNDS", ROUNDS_DEFAULT as u64) as usize;
    let trial = Duration::from_millis(env_or("WAFT_BENCH_TRIAL_MS", TRIAL_MS_DEFAULT));
    let only = std::env::var("WAFT_BENCH_BATCH").ok().and_then(|v| v.parse::<usize>().ok());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("log_append-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    println!(
        "log_append: {rounds} rounds x {} ms per side, entries of {ENTRY_BYTES} B, dir {}",
        trial.as_millis(),
        dir.display()
    );
    // Warm the disk and the allocator once, unmeasured.
    paired_round(&dir, 16, Duration::from_millis(100));

    let mut table = Vec::new();
    for batch in BATCH_SIZES.into_iter().filter(|b| only.is_none_or(|o| o == *b)) {
        let mut rounds_out: Vec<[Trial; 3]> = Vec::new();
        for round in 0..rounds {
            let [a, p, s] = paired_round(&dir, batch, trial);
            eprintln!(
                "  batch {batch:>3} round {round}: append {:>7.2} MB/s ({:>5.0} us/sync) | prealloc {:>7.2} MB/s ({:>5.0} us/sync) | store {:>7.2} MB/s ({:>5.0} us/write)",
                a.mb_per_s(),
                a.us_per_sync(),
                p.mb_per_s(),
                p.us_per_sync(),
                s.mb_per_s(),
                s.us_per_sync()
            );
            rounds_out.push([a, p, s]);
        }
        let med = |k: usize, f: fn(&Trial) -> f64| median(rounds_out.iter().map(|r| f(&r[k])).collect());
        let ratio = |k: usize| median(rounds_out.iter().map(|r| r[2].mb_per_s() / r[k].mb_per_s()).collect());
        let worst = rounds_out.iter().map(|r| r[2].mb_per_s() / r[1].mb_per_s()).fold(f64::INFINITY, f64::min);
        table.push(format!(
            "| {batch:>5} | {:>8.0} | {:>8.2} | {:>8.0} | {:>8.2} | {:>11.0} | {:>8.2} | {:>11.0}% | {:>13.0}% | {:>14.0}% |",
            med(0, Trial::us_per_sync),
            med(0, Trial::mb_per_s),
            med(1, Trial::us_per_sync),
            med(1, Trial::mb_per_s),
            med(2, Trial::entries_per_s),
            med(2, Trial::mb_per_s),
            ratio(0) * 100.0,
            ratio(1) * 100.0,
            worst * 100.0,
        ));
    }
    println!();
    println!("raw append = write+fdatasync growing a fresh file; raw prealloc = the same over preallocated blocks.");
    println!("Ratios are medians over rounds of the per-round store/raw MB/s; worst = lowest round vs prealloc.");
    println!();
    println!(
        "| batch | append us/sync | append MB/s | prealloc us/sync | prealloc MB/s | store entries/s | store MB/s | store/append | store/prealloc | worst/prealloc |"
    );
    println!(
        "|------:|---------:|---------:|---------:|---------:|------------:|---------:|------------:|--------------:|---------------:|"
    );
    for row in table {
        println!("{row}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
