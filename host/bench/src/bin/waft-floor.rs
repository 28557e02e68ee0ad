//! `waft-floor`: the least time one replicated write can take on this
//! machine, measured, for reading single-client latency against.
//!
//! A write acknowledged by a three-node group needs at least the leader's
//! log sync and a follower's log sync, and two loopback round trips (client
//! to leader and back, leader to follower and back). This measures the
//! median of each on the same disk and loopback the daemons use and prints
//! the floor: two syncs plus two round trips. It writes only in `--dir`,
//! into one file it removes at the end, and listens only on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

/// Most syncs or round trips one run may ask for.
const SAMPLES_MAX: usize = 1_000_000;
/// Most bytes one sync's append may carry.
const APPEND_BYTES_MAX: usize = 1 << 20;

#[derive(Parser)]
#[command(
    name = "waft-floor",
    version,
    about = "Measure fdatasync and loopback round-trip latency: the floor under one replicated write"
)]
struct Cli {
    /// Directory on the disk the daemons write (a temporary file is made there).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Appends, each followed by an fdatasync.
    #[arg(long, default_value_t = 400)]
    syncs: usize,
    /// Bytes each append writes (a small log batch).
    #[arg(long, default_value_t = 512)]
    append_bytes: usize,
    /// Request-reply exchanges over one loopback TCP connection.
    #[arg(long, default_value_t = 4000)]
    round_trips: usize,
    /// Bytes of each request and reply.
    #[arg(long, default_value_t = 300)]
    message_bytes: usize,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// Median and 99th percentile of `samples`, in microseconds.
fn summary(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

fn syncs(cli: &Cli) -> anyhow::Result<Vec<Duration>> {
    let path = cli.dir.join(format!(".waft-floor-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let chunk = vec![0x5a_u8; cli.append_bytes];
    let mut out = Vec::with_capacity(cli.syncs);
    let result = (|| {
        for _ in 0..cli.syncs {
            let started = Instant::now();
            file.write_all(&chunk)?;
            file.sync_data()?;
            out.push(started.elapsed());
        }
        Ok::<_, std::io::Error>(())
    })();
    let _ = std::fs::remove_file(&path);
    result.with_context(|| format!("writing {}", path.display()))?;
    Ok(out)
}

fn round_trips(cli: &Cli) -> anyhow::Result<Vec<Duration>> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen on 127.0.0.1")?;
    let addr = listener.local_addr()?;
    let (n, len) = (cli.round_trips, cli.message_bytes);
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut conn, _) = listener.accept()?;
        conn.set_nodelay(true)?;
        let mut buf = vec![0u8; len];
        for _ in 0..n {
            conn.read_exact(&mut buf)?;
            conn.write_all(&buf)?;
        }
        Ok(())
    });
    let mut conn = TcpStream::connect(addr).context("cannot connect over loopback")?;
    conn.set_nodelay(true)?;
    let request = vec![0xa5_u8; len];
    let mut reply = vec![0u8; len];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        conn.write_all(&request)?;
        conn.read_exact(&mut reply)?;
        out.push(started.elapsed());
    }
    match echo.join() {
        Ok(result) => result.context("the echo side failed")?,
        Err(_) => bail!("the echo thread panicked"),
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    for (name, n) in [("--syncs", cli.syncs), ("--round-trips", cli.round_trips)] {
        if n == 0 || n > SAMPLES_MAX {
            bail!("{name} {n}: between 1 and {SAMPLES_MAX}");
        }
    }
    if cli.append_bytes == 0
        || cli.append_bytes > APPEND_BYTES_MAX
        || cli.message_bytes == 0
        || cli.message_bytes > APPEND_BYTES_MAX
    {
        bail!("--append-bytes and --message-bytes are 1 to {APPEND_BYTES_MAX}");
    }
    let (sync_p50, sync_p99) = summary(syncs(&cli)?);
    let (rtt_p50, rtt_p99) = summary(round_trips(&cli)?);
    let floor = 2.0 * sync_p50 + 2.0 * rtt_p50;
    println!(
        "fdatasync of a {}-byte append: p50 {sync_p50:.1} µs, p99 {sync_p99:.1} µs ({} samples)",
        cli.append_bytes, cli.syncs
    );
    println!(
        "loopback round trip of {} bytes: p50 {rtt_p50:.1} µs, p99 {rtt_p99:.1} µs ({} samples)",
        cli.message_bytes, cli.round_trips
    );
    println!("floor (2 syncs + 2 round trips, medians): {:.3} ms", floor / 1000.0);
    if let Some(path) = &cli.json_out {
        let json = serde_json::json!({
            "fdatasync_p50_us": sync_p50, "fdatasync_p99_us": sync_p99,
            "round_trip_p50_us": rtt_p50, "round_trip_p99_us": rtt_p99,
            "floor_ms": floor / 1000.0,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
