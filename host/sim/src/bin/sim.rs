//! Runs simulator seeds. `--seed N [--trace]` replays one seed; `--seeds N
//! --from S` soaks N seeds starting at S and reports seeds per second and
//! what the session clients met. `--no-dedup` runs the machine without
//! session deduplication (the checker should then fail some seeds);
//! `--no-lease-clock` counts the leader lease in ticks alone, which a
//! stalled leader outlives (the checker should then fail some seeds).

use std::time::Instant;
use waft_sim::sim::{SimConfig, Stats, run_seed};

fn arg(args: &[String], name: &str) -> Option<u64> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).and_then(|v| v.parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let trace = args.iter().any(|a| a == "--trace");
    let dedup = !args.iter().any(|a| a == "--no-dedup");
    let lease_clock = !args.iter().any(|a| a == "--no-lease-clock");
    let config = |seed| SimConfig { dedup, lease_clock, ..SimConfig::from_seed(seed) };
    if let Some(seed) = arg(&args, "--seed") {
        let mut cfg = config(seed);
        cfg.trace = trace;
        println!("seed {seed}: {cfg:?}");
        let mut c2 = cfg.clone();
        c2.trace = true;
        std::panic::set_hook(Box::new(|_| {}));
        match run_seed(cfg) {
            Ok(o) => {
                for l in &o.trace {
                    println!("{l}");
                }
                println!("ok: hash {:016x} {:?}", o.trace_hash, o.stats);
            }
            Err(e) => {
                if trace {
                    // Re-run with tracing to show the events leading to the failure.
                    let mut sim = waft_sim::sim::Sim::new(c2);
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run()));
                    for l in sim.cluster.trace.take().unwrap_or_default() {
                        println!("{l}");
                    }
                    for l in sim.cluster.describe() {
                        println!("{l}");
                    }
                }
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
        return;
    }
    // Failures are reported once, with their replay command, not as panic dumps.
    std::panic::set_hook(Box::new(|_| {}));
    let n = arg(&args, "--seeds").unwrap_or(1000);
    let from = arg(&args, "--from").unwrap_or(0);
    let start = Instant::now();
    let mut failures = 0u64;
    let mut total = Stats::default();
    for seed in from..from + n {
        match run_seed(config(seed)) {
            Ok(o) => total.add(&o.stats),
            Err(e) => {
                failures += 1;
                eprintln!("{e}");
            }
        }
        let done = seed - from + 1;
        if done.is_multiple_of(1000) {
            let s = start.elapsed().as_secs_f64();
            println!("{done} seeds, {failures} failures, {:.1} seeds/s", done as f64 / s);
        }
    }
    let s = start.elapsed().as_secs_f64();
    println!("seeds {from}..{}: {failures} failures in {s:.1}s, {:.1} seeds/s", from + n, n as f64 / s);
    println!(
        "clients: {} writes ok, {} unknown, {} reads; sessions: {} registered, {} refused (table full), {} expired; \
         {} resends, {} answers from saved replies, {} committed copies deduplicated",
        total.writes_ok,
        total.writes_unknown,
        total.reads_ok,
        total.registrations,
        total.registrations_refused,
        total.sessions_expired,
        total.resends,
        total.replies_saved,
        total.copies_deduplicated
    );
    println!(
        "digests: {} divergences injected, {} verdicts found a node different, {} rebuilds, {} digest points verified",
        total.divergences, total.mismatches, total.rebuilds, total.verified_points
    );
    if failures > 0 {
        std::process::exit(1);
    }
}
