//! `waft run`: a state machine in waft's sandbox, without a cluster.
//!
//! Owns the author's local loop: load a component exactly as a replica
//! would (the same checks, limits and WASI stand-ins), apply commands to it
//! as consecutive log entries, run queries, and check that its snapshot
//! survives a reload byte for byte (a save that is not canonical gets
//! healthy replicas fenced: docs/divergence.md). Must never pretend to more
//! than one replica: there is no log, no session and no network here.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use waft_runtime::{ApplyError, Engine, Entry, KvHandle, Limits, MemKv, Module, StateMachine};

/// The group id the sandbox seeds randomness with (as a replica of group 1).
const GROUP: u64 = 1;
/// The term every entry carries.
const TERM: u64 = 1;

#[derive(clap::Args)]
pub struct RunArgs {
    /// The component, e.g. target/wasm32-wasip2/release/waft_counter.wasm.
    module: PathBuf,
    /// A command to apply, as text (e.g. '{"incr":5}'); repeat for more.
    /// Applied in order, as log entries 1, 2, ...
    #[arg(long = "apply", value_name = "COMMAND")]
    apply: Vec<String>,
    /// A query to run after the commands, as text; repeat for more.
    #[arg(long = "query", value_name = "QUERY")]
    query: Vec<String>,
    /// Steps from a file, one a line, run before --apply and --query:
    /// `apply TEXT`, `query TEXT` or `check` (the snapshot check, now);
    /// blank lines and lines starting with # are skipped.
    #[arg(long)]
    script: Option<PathBuf>,
}

enum Step {
    Apply(String),
    Query(String),
    Check,
}

fn script_steps(path: &Path) -> Result<Vec<Step>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut steps = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (verb, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        steps.push(match verb {
            "apply" => Step::Apply(rest.trim().to_string()),
            "query" => Step::Query(rest.trim().to_string()),
            "check" => Step::Check,
            _ => bail!("{}:{}: expected `apply TEXT`, `query TEXT` or `check`, got {line:?}", path.display(), n + 1),
        });
    }
    Ok(steps)
}

/// Bytes as text when they are printable UTF-8, as hex otherwise.
fn shown(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => s.to_string(),
        _ => format!("0x{}", hex(bytes)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A machine as a replica of group 1 runs it, with an empty in-memory store
/// when the module keeps its state in the key-value store.
fn machine(module: &Module, label: &str) -> Result<StateMachine> {
    let mut sm = StateMachine::for_group(module, Limits::default(), GROUP, label)
        .map_err(|e| anyhow!("cannot instantiate the module: {e}"))?;
    if sm.uses_kv() {
        sm.attach_kv(Arc::new(Mutex::new(MemKv::default())) as KvHandle);
    }
    Ok(sm)
}

/// Saves the state, loads it into a fresh instance and saves again: the two
/// saves must be the same bytes. Returns a line describing the snapshot.
fn check_snapshot(module: &Module, sm: &mut StateMachine) -> Result<String> {
    let (saved, bytes) = sm.save_snapshot(Vec::new()).map_err(|e| anyhow!("the snapshot save failed: {e}"))?;
    let mut fresh = machine(module, "run-reload")?;
    fresh
        .load_snapshot_of(Cursor::new(saved.clone()), bytes)
        .map_err(|e| anyhow!("a fresh instance could not load the snapshot this one saved: {e}"))?;
    let (again, _) = fresh.save_snapshot(Vec::new()).map_err(|e| anyhow!("the save after a reload failed: {e}"))?;
    if again != saved {
        bail!(
            "the state saved after a reload differs from the state saved before it ({} bytes, then {}): a \
             replica restored from a snapshot would report another digest and be fenced; save the state in \
             a canonical order (docs/writing-a-state-machine.md, \"Determinism\")",
            saved.len(),
            again.len()
        );
    }
    Ok(format!(
        "snapshot: {} bytes, sha256 {}; a fresh instance loaded it and saved the same bytes",
        saved.len(),
        hex(&Sha256::digest(&saved))
    ))
}

pub fn run(args: RunArgs) -> Result<()> {
    let bytes = std::fs::read(&args.module).with_context(|| format!("cannot read {}", args.module.display()))?;
    let engine = Engine::new().map_err(|e| anyhow!("cannot start the wasm engine: {e}"))?;
    let module = Module::load(&engine, &bytes).map_err(|e| anyhow!("{}: {e}", args.module.display()))?;
    let mut sm = machine(&module, "run")?;
    println!(
        "module {}: {} bytes, sha256 {}{}",
        args.module.display(),
        bytes.len(),
        hex(&Sha256::digest(&bytes)),
        if sm.uses_kv() { ", a kv state machine (an empty in-memory store)" } else { "" }
    );
    let mut steps = match &args.script {
        Some(path) => script_steps(path)?,
        None => Vec::new(),
    };
    steps.extend(args.apply.into_iter().map(Step::Apply));
    steps.extend(args.query.into_iter().map(Step::Query));
    steps.push(Step::Check);
    let mut index = 0;
    for step in steps {
        match step {
            Step::Apply(command) => {
                index += 1;
                let results = sm
                    .apply(&[Entry::new(index, TERM, command.clone().into_bytes())])
                    .map_err(|e| anyhow!("entry {index}: the runtime failed: {e}"))?;
                let outcome = match results.into_iter().next() {
                    Some(Ok(result)) => format!("ok {}", shown(&result)),
                    Some(Err(ApplyError::Rejected(why))) => format!("rejected: {why}"),
                    Some(Err(ApplyError::Fault(fault))) => format!("guest fault (rejected, state unchanged): {fault}"),
                    None => bail!("entry {index}: the runtime returned no result"),
                };
                println!("apply {index} {command} -> {outcome}");
            }
            Step::Query(request) => {
                let outcome = match sm.query(request.as_bytes()) {
                    Ok(answer) => format!("ok {}", shown(&answer)),
                    Err(e) => format!("error: {e}"),
                };
                println!("query {request} -> {outcome}");
            }
            Step::Check => println!("{}", check_snapshot(&module, &mut sm)?),
        }
    }
    Ok(())
}
