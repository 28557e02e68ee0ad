//! The `waft` command.
//!
//! Owns the command line. Today it runs the demo: SOFAJRaft's counter and
//! atomic scenarios against the real example components, on three replicas
//! fed the same entries, showing their states stay byte-identical and that a
//! faulting entry is rejected alone. The daemon (`waft serve`) and its
//! clients come with the daemon work.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use waft_runtime::{ApplyResult, Engine, Entry, Limits, Module, StateMachine};

#[derive(Parser)]
#[command(name = "waft", version, about = "waft: Raft groups whose state machines are WebAssembly components")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run SOFAJRaft's counter and atomic scenarios on three replicas of the
    /// example components and print what happened.
    Demo {
        /// Directory holding waft_counter.wasm and waft_atomic.wasm
        /// (built by `cargo xtask guests`).
        #[arg(long, default_value = "target/wasm32-wasip2/release")]
        modules: PathBuf,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    match Cli::parse().command {
        Cmd::Demo { modules } => demo(&modules),
    }
}

const REPLICAS: usize = 3;

/// Three replicas of one module, fed identical entries like a Raft group's
/// members would be.
struct Group {
    name: &'static str,
    replicas: Vec<StateMachine>,
    next_index: u64,
}

impl Group {
    fn new(engine: &Engine, dir: &Path, name: &'static str, file: &str) -> Result<Self> {
        let path = dir.join(file);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read {}; build the guests with `cargo xtask guests`", path.display()))?;
        let module = Module::load(engine, &bytes).with_context(|| format!("{} refused", path.display()))?;
        let replicas = (0..REPLICAS)
            .map(|i| StateMachine::new(&module, Limits::default(), &format!("{name} replica {i}")))
            .collect::<Result<Vec<_>, _>>()?;
        println!("loaded {name} ({} KiB) on {REPLICAS} replicas", bytes.len() / 1024);
        Ok(Self { name, replicas, next_index: 1 })
    }

    /// Apply commands on every replica; check they all answer alike.
    fn propose(&mut self, commands: &[&str]) -> Result<Vec<ApplyResult>> {
        let entries: Vec<Entry> = commands
            .iter()
            .enumerate()
            .map(|(i, c)| Entry::new(self.next_index + i as u64, 1, c.as_bytes().to_vec()))
            .collect();
        self.next_index += entries.len() as u64;
        let mut first: Option<Vec<ApplyResult>> = None;
        for replica in &mut self.replicas {
            let results = replica.apply(&entries)?;
            match &first {
                None => first = Some(results),
                Some(f) if *f != results => bail!("{}: replicas disagree", self.name),
                Some(_) => {}
            }
        }
        let results = first.unwrap_or_default();
        for (cmd, result) in commands.iter().zip(&results) {
            match result {
                Ok(reply) => println!("  {:<44} -> {}", cmd, String::from_utf8_lossy(reply)),
                Err(e) => println!("  {:<44} -> error: {e}", cmd),
            }
        }
        Ok(results)
    }

    fn query(&mut self, request: &str) -> Result<String> {
        let reply = self.replicas[0].query(request.as_bytes())?;
        let text = String::from_utf8_lossy(&reply).into_owned();
        println!("  query {:<38} -> {text}", request);
        Ok(text)
    }

    /// Every replica's snapshot must be the same bytes; returns them.
    fn check_identical(&mut self) -> Result<Vec<u8>> {
        let mut snapshots = Vec::new();
        for replica in &mut self.replicas {
            snapshots.push(replica.save_snapshot(Vec::new())?.0);
        }
        if snapshots.windows(2).any(|w| w[0] != w[1]) {
            bail!("{}: replica snapshots differ", self.name);
        }
        println!("  {REPLICAS} replicas hold byte-identical state ({} snapshot bytes)", snapshots[0].len());
        Ok(snapshots.swap_remove(0))
    }
}

fn expect(label: &str, got: &str, want: &str) -> Result<()> {
    if got != want {
        bail!("{label}: expected {want}, got {got}");
    }
    Ok(())
}

fn demo(dir: &Path) -> Result<()> {
    let engine = Engine::new()?;

    println!("== counter (SOFAJRaft CounterStateMachine) ==");
    let mut counter = Group::new(&engine, dir, "counter", "waft_counter.wasm")?;
    counter.propose(&[r#"{"incr":1}"#, r#"{"incr":2}"#, r#"{"incr":3}"#, r#""get""#])?;
    expect("counter read", &counter.query(r#""get""#)?, "6")?;
    println!("  a malformed command is rejected alone:");
    counter.propose(&[r#"{"incr":10}"#, r#"{"decrement":1}"#, r#"{"incr":-4}"#])?;
    expect("counter read", &counter.query(r#""get""#)?, "12")?;
    let snapshot = counter.check_identical()?;

    println!("  restore a fourth replica from the snapshot:");
    let module = Module::load(&engine, &std::fs::read(dir.join("waft_counter.wasm"))?)?;
    let mut restored = StateMachine::new(&module, Limits::default(), "counter replica 3")?;
    restored.load_snapshot(std::io::Cursor::new(snapshot))?;
    let text = String::from_utf8_lossy(&restored.query(br#""get""#)?).into_owned();
    println!("  query \"get\" on the restored replica         -> {text}");
    expect("restored read", &text, "12")?;

    println!("== atomic (SOFAJRaft AtomicStateMachine) ==");
    let mut atomic = Group::new(&engine, dir, "atomic", "waft_atomic.wasm")?;
    let results = atomic.propose(&[
        r#"{"set":{"key":"a","value":1}}"#,
        r#"{"get":{"key":"a"}}"#,
        r#"{"cas":{"key":"a","expect":1,"new":2}}"#,
        r#"{"cas":{"key":"a","expect":1,"new":3}}"#,
        r#"{"incr":{"key":"a","delta":10}}"#,
        r#"{"incr":{"key":"b","delta":-5}}"#,
    ])?;
    let cas: Vec<String> = results[2..4]
        .iter()
        .map(|r| r.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default())
        .collect();
    expect("first cas", &cas[0], r#"{"success":true}"#)?;
    expect("second cas", &cas[1], r#"{"success":false}"#)?;
    expect("atomic read a", &atomic.query(r#"{"get":{"key":"a"}}"#)?, "12")?;
    expect("atomic read b", &atomic.query(r#"{"get":{"key":"b"}}"#)?, "-5")?;
    atomic.check_identical()?;
    println!("demo finished: every replica agreed at every step");
    Ok(())
}
