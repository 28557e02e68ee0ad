//! Running a plan: connect, prefill, warm up, measure, report progress.
//!
//! Owns the clients' loop and the phases. The load is closed-loop and
//! bounded: `clients` tasks, each with one request in flight, so at most
//! `clients` requests are outstanding whatever the system under load does.
//! An operation counts when it *started* inside the measured window; the
//! window ends when the last such operation has answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::BenchError;
use crate::cli::{Plan, Stop};
use crate::driver::{Driver, OpError, timeout_error};
use crate::stats::{Measured, Report, Tally};
use crate::workload::{Op, Rng, next_op};

/// How often progress is printed.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// A client pauses this long after an error: against a dead endpoint, a
/// failing call returns at once and would otherwise spin a core.
pub const ERROR_PAUSE: Duration = Duration::from_millis(10);

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// What the clients share with the controller and the progress printer.
struct Shared {
    /// WARMUP, then MEASURE, then STOP; never goes back.
    phase: AtomicU8,
    /// Measured operations handed out (--ops only). May pass the limit by up
    /// to `clients`: each client takes one more ticket before it stops.
    tickets: AtomicU64,
    /// Progress counters, every phase included.
    done: AtomicU64,
    failed: AtomicU64,
    latency_us_sum: AtomicU64,
}

impl Shared {
    fn new(phase: u8) -> Shared {
        Shared {
            phase: AtomicU8::new(phase),
            tickets: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            latency_us_sum: AtomicU64::new(0),
        }
    }

    fn count(&self, took: Duration, ok: bool) {
        let counter = if ok { &self.done } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        self.latency_us_sum.fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// Runs `plan` against its target and returns what it measured.
pub async fn measure(plan: Plan) -> Result<Report, BenchError> {
    let plan = Arc::new(plan);
    let drivers = connect_all(&plan).await?;
    if plan.prefill {
        prefill(&plan, &drivers).await?;
    }
    let first_phase = if plan.warmup.is_zero() { MEASURE } else { WARMUP };
    let shared = Arc::new(Shared::new(first_phase));
    let mut clients = JoinSet::new();
    for id in 0..plan.clients {
        let driver = drivers[id % drivers.len()].clone();
        clients.spawn(client_loop(id, driver, Arc::clone(&plan), Arc::clone(&shared)));
    }
    let progress = plan.progress.then(|| tokio::spawn(print_progress(Arc::clone(&shared))));

    let mut interrupted = false;
    let started = Instant::now();
    if first_phase == WARMUP {
        tokio::select! {
            () = tokio::time::sleep(plan.warmup) => {}
            _ = tokio::signal::ctrl_c() => interrupted = true,
        }
    }
    let warmup = started.elapsed();
    let measure_start = Instant::now();
    let cpu_before = crate::cpu::Sample::take(&plan.server_pids);
    let mut tally = Tally::default();
    if interrupted {
        shared.phase.store(STOP, Ordering::Release);
    } else {
        shared.phase.store(MEASURE, Ordering::Release);
        let timer = async {
            match plan.stop {
                Stop::After(d) => tokio::time::sleep(d).await,
                Stop::Ops(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            () = join_all(&mut clients, &mut tally) => {}
            () = timer => {}
            _ = tokio::signal::ctrl_c() => interrupted = true,
        }
        shared.phase.store(STOP, Ordering::Release);
    }
    // In-flight operations answer (or time out) within request_timeout.
    join_all(&mut clients, &mut tally).await;
    let elapsed = measure_start.elapsed();
    let (server_cpu_us, client_cpu_us) = crate::cpu::Sample::take(&plan.server_pids).since(&cpu_before);
    if let Some(p) = progress {
        p.abort();
    }
    let measured =
        Measured { tally, warmup, elapsed, prefilled: plan.prefill, interrupted, server_cpu_us, client_cpu_us };
    Ok(Report::new(&plan, measured))
}

/// Merges each finished client's tally. Cancel-safe: a client joined
/// before a cancellation is merged already, the others stay in the set.
async fn join_all(clients: &mut JoinSet<Tally>, tally: &mut Tally) {
    while let Some(joined) = clients.join_next().await {
        match joined {
            Ok(t) => tally.merge(&t),
            Err(e) => tally.errors.record("client task failed", &e.to_string()),
        }
    }
}

async fn connect_all(plan: &Plan) -> Result<Vec<Driver>, BenchError> {
    let mut drivers = Vec::with_capacity(plan.conns);
    for conn in 0..plan.conns {
        drivers.push(Driver::connect(plan, conn).await?);
    }
    Ok(drivers)
}

async fn run_op(driver: &Driver, op: Op, seq: u64, timeout: Duration) -> Result<(), OpError> {
    let call = async {
        match op {
            Op::Read { key } => driver.read(key).await,
            Op::Write { key } => driver.write(key, seq).await,
        }
    };
    tokio::time::timeout(timeout, call).await.unwrap_or_else(|_| Err(timeout_error(timeout)))
}

async fn client_loop(id: usize, driver: Driver, plan: Arc<Plan>, shared: Arc<Shared>) -> Tally {
    let mut rng = Rng::for_client(plan.seed, id);
    let mut tally = Tally::default();
    // Distinct written values across clients (the value wraps at 10 digits).
    let mut seq = (id as u64) << 32;
    loop {
        let phase = shared.phase.load(Ordering::Acquire);
        if phase == STOP {
            break;
        }
        if phase == MEASURE
            && let Stop::Ops(ops_max) = plan.stop
            && shared.tickets.fetch_add(1, Ordering::Relaxed) >= ops_max
        {
            break;
        }
        let op = next_op(&mut rng, plan.read_ratio, plan.keys);
        let started = Instant::now();
        let outcome = run_op(&driver, op, seq, plan.request_timeout).await;
        let took = started.elapsed();
        seq = seq.wrapping_add(1);
        shared.count(took, outcome.is_ok());
        match outcome {
            Ok(()) if phase == MEASURE => match op {
                Op::Read { .. } => tally.reads.record(took),
                Op::Write { .. } => tally.writes.record(took),
            },
            Ok(()) => {}
            Err(e) => {
                if phase == MEASURE {
                    tally.errors.record(&e.kind, &e.message);
                }
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    tally
}

/// Writes every key once, `clients` at a time, so reads find values of the
/// run's size. Any failure stops the run: reads of missing keys would
/// measure something else.
async fn prefill(plan: &Arc<Plan>, drivers: &[Driver]) -> Result<(), BenchError> {
    let next_key = Arc::new(AtomicU64::new(0));
    let shared = Arc::new(Shared::new(WARMUP));
    let progress = plan.progress.then(|| {
        let (shared, keys) = (Arc::clone(&shared), plan.keys);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("prefill: {} of {keys} keys written", shared.done.load(Ordering::Relaxed));
            }
        })
    });
    let mut writers = JoinSet::new();
    for id in 0..plan.clients.min(usize::try_from(plan.keys).unwrap_or(usize::MAX)) {
        let (driver, plan, next_key, shared) =
            (drivers[id % drivers.len()].clone(), Arc::clone(plan), Arc::clone(&next_key), Arc::clone(&shared));
        writers.spawn(async move {
            let mut first_error = None;
            loop {
                let key = next_key.fetch_add(1, Ordering::Relaxed);
                if key >= plan.keys {
                    return first_error;
                }
                let started = Instant::now();
                let outcome = run_op(&driver, Op::Write { key }, key, plan.request_timeout).await;
                shared.count(started.elapsed(), outcome.is_ok());
                if let Err(e) = outcome {
                    first_error.get_or_insert(e);
                }
            }
        });
    }
    let mut example = None;
    while let Some(joined) = writers.join_next().await {
        match joined {
            Ok(Some(e)) => example = example.or(Some(e.message)),
            Ok(None) => {}
            Err(e) => example = example.or(Some(e.to_string())),
        }
    }
    if let Some(p) = progress {
        p.abort();
    }
    let failed = shared.failed.load(Ordering::Relaxed);
    match example {
        None if failed == 0 => Ok(()),
        example => Err(BenchError::Prefill {
            failed,
            keys: plan.keys,
            example: example.unwrap_or_else(|| "a writer task failed".into()),
        }),
    }
}

async fn print_progress(shared: Arc<Shared>) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
    tick.tick().await;
    let (mut done_before, mut failed_before, mut sum_before) = (0, 0, 0);
    loop {
        tick.tick().await;
        let done = shared.done.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        let sum = shared.latency_us_sum.load(Ordering::Relaxed);
        let ops = (done - done_before) + (failed - failed_before);
        let mean_ms = if ops > 0 { (sum - sum_before) as f64 / ops as f64 / 1000.0 } else { 0.0 };
        let phase = match shared.phase.load(Ordering::Acquire) {
            WARMUP => "warmup",
            MEASURE => "measure",
            _ => "stopping",
        };
        eprintln!(
            "[{:>4}s] {phase:<8} {:>8} ops/s  {:>6} errors/s  mean {mean_ms:>7.2} ms  ({done} ops, {failed} errors so far)",
            started.elapsed().as_secs(),
            done - done_before,
            failed - failed_before,
        );
        (done_before, failed_before, sum_before) = (done, failed, sum);
    }
}
