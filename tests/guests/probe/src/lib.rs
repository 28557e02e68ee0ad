//! A test-only state machine that misbehaves on command, so the host's fault
//! containment and determinism can be checked against a real component.
//!
//! State: a counter plus the list of observations made by `observe`.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::io::{Read, Write};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use waft_guest::{Position, StateMachine};

#[derive(Default)]
pub struct Probe {
    value: i64,
    observations: Vec<String>,
    /// Memory held on purpose by `hog`.
    hoard: Vec<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Add to the counter; returns the new value.
    Incr(i64),
    /// Add to the counter, then panic: the addition must not survive.
    IncrThenTrap(i64),
    /// Loop forever: fuel must stop it.
    Spin,
    /// Spin `n` rounds, then add 1: a known amount of fuel.
    Burn(u64),
    /// Allocate without bound: the memory limit must stop it.
    Hog,
    /// Read the clocks, random bytes and the environment, and keep what
    /// was seen in the state.
    Observe,
    /// Iterate a std `HashMap` (randomly seeded) and the SDK's
    /// `waft_guest::HashMap` (fixed hasher); keep both orders in the state.
    HashOrder,
    /// Reject the command without changing state.
    Reject,
    /// Reply with where the entry sits in the log: index × 1000 + term.
    Position,
    /// Print a line to stdout and to stderr (through WASI), then add to the
    /// counter.
    Print(i64),
    /// Sleep this many milliseconds (a WASI clock pollable), then add 1.
    Sleep(u64),
    /// Read stdin to its end, then add 1 plus the bytes read.
    ReadStdin,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Query {
    Value,
    Observations,
    Spin,
    /// Panic (the panic message goes to stderr, through WASI).
    Panic,
    /// Print a line to stdout and to stderr, then answer the value.
    Print,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Value(i64),
    Observations(Vec<String>),
}

fn observe() -> String {
    let wall = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mono = Instant::now();
    let mut random = [0u8; 16];
    let random = match getrandom::fill(&mut random) {
        Ok(()) => format!("{random:02x?}"),
        Err(e) => format!("error {e}"),
    };
    let env: Vec<(String, String)> = std::env::vars().collect();
    let args: Vec<String> = std::env::args().collect();
    let cwd = std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_else(|e| format!("error {e:?}"));
    let file = std::fs::read("/etc/passwd").map(|b| b.len().to_string()).unwrap_or_else(|e| format!("error {e:?}"));
    format!("wall={wall} mono={:?} random={random} env={env:?} args={args:?} cwd={cwd} file={file}", mono.elapsed())
}

fn hash_order() -> String {
    let std_map: HashMap<u32, u32> = (0..64).map(|i| (i, i * i)).collect();
    let sdk_map: waft_guest::HashMap<u32, u32> = (0..64).map(|i| (i, i * i)).collect();
    let seeded = RandomState::new().hash_one(42u64);
    let std_order: Vec<u32> = std_map.keys().copied().collect();
    let sdk_order: Vec<u32> = sdk_map.keys().copied().collect();
    format!("std={std_order:?} seeded={seeded} sdk={sdk_order:?}")
}

impl StateMachine for Probe {
    type Command = Command;
    type Response = i64;
    type Query = Query;
    type Answer = Answer;

    fn apply(&mut self, command: Command, at: Position) -> Result<i64, String> {
        match command {
            Command::Position => return Ok((at.index * 1000 + at.term) as i64),
            Command::Incr(delta) => self.value = self.value.wrapping_add(delta),
            Command::IncrThenTrap(delta) => {
                self.value = self.value.wrapping_add(delta);
                panic!("probe: trap requested after adding {delta}");
            }
            Command::Burn(rounds) => {
                let mut n = 0u64;
                for _ in 0..rounds {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
                self.value = self.value.wrapping_add(1);
            }
            Command::Spin => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Command::Hog => loop {
                let mut block = vec![0u8; 1 << 20];
                block[0] = 1;
                self.hoard.push(std::hint::black_box(block));
            },
            Command::Observe => self.observations.push(observe()),
            Command::HashOrder => self.observations.push(hash_order()),
            Command::Reject => return Err("probe: rejected on request".into()),
            Command::Print(delta) => {
                println!("probe: adding {delta} (stdout)");
                eprintln!("probe: adding {delta} (stderr)");
                self.value = self.value.wrapping_add(delta);
            }
            Command::ReadStdin => {
                let mut input = Vec::new();
                let read = std::io::stdin().read_to_end(&mut input).map_err(|e| format!("stdin: {e}"))?;
                self.value = self.value.wrapping_add(1 + read as i64);
            }
            Command::Sleep(ms) => {
                std::thread::sleep(std::time::Duration::from_millis(ms));
                self.value = self.value.wrapping_add(1);
            }
        }
        Ok(self.value)
    }

    fn query(&self, query: Query) -> Result<Answer, String> {
        Ok(match query {
            Query::Value => Answer::Value(self.value),
            Query::Observations => Answer::Observations(self.observations.clone()),
            Query::Spin => loop {
                std::hint::black_box(());
            },
            Query::Panic => panic!("the probe was asked to panic in a query"),
            Query::Print => {
                println!("probe: value {} (stdout)", self.value);
                eprintln!("probe: value {} (stderr)", self.value);
                Answer::Value(self.value)
            }
        })
    }

    fn save(&self, mut out: impl Write) -> std::io::Result<()> {
        writeln!(out, "{}", self.value)?;
        for o in &self.observations {
            writeln!(out, "{o}")?;
        }
        Ok(())
    }

    fn load(&mut self, mut input: impl Read) -> std::io::Result<()> {
        let mut text = String::new();
        input.read_to_string(&mut text)?;
        let mut lines = text.lines();
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad probe snapshot");
        self.value = lines.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        self.observations = lines.map(str::to_string).collect();
        Ok(())
    }
}

waft_guest::export!(Probe);
