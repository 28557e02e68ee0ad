//! A seeded mutation engine: takes a target's seeds (valid encodings, built
//! by [`seeds`], and the files of its corpus directory), mutates them
//! (bit flips, byte and integer substitutions, insertions, deletions,
//! duplications, splices of two inputs, truncations) and runs the target on
//! each, catching a panic.
//!
//! Owns reproducibility: one seed decides every mutation, so a failure
//! names its seed and iteration and replays with them. Must never judge an
//! input itself: only a target's panic is a failure. It is not coverage
//! guided; the long runs are cargo-fuzz's (`host/fuzz/fuzz/`).

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Target;

pub mod seeds;

/// Longest input a mutation makes.
pub const INPUT_BYTES_MAX: usize = 64 * 1024;
/// A corpus file larger than this is skipped.
pub const CORPUS_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Mutations stacked on one input before it runs.
pub const STACK_MAX: usize = 8;

/// xorshift64*: small, fast, and the same everywhere.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Integers that find off-by-ones and overflows.
const INTERESTING: &[u64] =
    &[0, 1, 2, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xffff, 0x7fff_ffff, 0xffff_ffff, u64::MAX >> 1, u64::MAX];

/// Mutates `input` in place: one to `STACK_MAX` mutations, `other` a second
/// input to splice from.
pub fn mutate(input: &mut Vec<u8>, other: &[u8], rng: &mut Rng) {
    for _ in 0..1 + rng.below(STACK_MAX) {
        let len = input.len();
        match rng.below(10) {
            0 if len > 0 => {
                let at = rng.below(len);
                input[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                input[at] = rng.next_u64() as u8;
            }
            2 if len > 0 => {
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let width = [1, 2, 4, 8][rng.below(4)].min(len);
                let at = rng.below(len - width + 1);
                let bytes = if rng.below(2) == 0 { v.to_le_bytes() } else { v.to_be_bytes() };
                input[at..at + width].copy_from_slice(&bytes[..width]);
            }
            3 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                input.splice(at..at, bytes);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                input.drain(at..at + n);
            }
            5 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                let copy = input[at..at + n].to_vec();
                let to = rng.below(len + 1);
                input.splice(to..to, copy);
            }
            6 if !other.is_empty() => {
                let from = rng.below(other.len());
                let n = 1 + rng.below((other.len() - from).min(256));
                let at = rng.below(len + 1);
                let end = (at + n).min(len);
                input.splice(at..end, other[from..from + n].iter().copied());
            }
            7 if len > 0 => input.truncate(rng.below(len)),
            8 if len > 0 => {
                // A protobuf varint or length at a random place, made huge.
                let at = rng.below(len);
                input[at] |= 0x80;
            }
            _ => {
                let at = rng.below(len + 1);
                input.insert(at, INTERESTING[rng.below(INTERESTING.len())] as u8);
            }
        }
    }
    input.truncate(INPUT_BYTES_MAX);
}

/// Where a target's corpus lives in the repository.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target)
}

/// The files of `target`'s corpus directory (bounded; unreadable ones are
/// skipped), sorted by name.
pub fn corpus_files(target: &str) -> Vec<Vec<u8>> {
    let Ok(dir) = std::fs::read_dir(corpus_dir(target)) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
    paths.sort();
    paths
        .into_iter()
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() <= CORPUS_FILE_BYTES_MAX))
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

/// A target that panicked.
#[derive(Debug)]
pub struct Failure {
    pub target: &'static str,
    pub seed: u64,
    /// 0 for a corpus or seed input as it is.
    pub iteration: u64,
    pub input: Vec<u8>,
    pub panic: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "target {} panicked (seed {}, iteration {}, {} input bytes): {}",
            self.target,
            self.seed,
            self.iteration,
            self.input.len(),
            self.panic
        )
    }
}

/// What a run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub executions: u64,
    pub inputs: usize,
}

fn attempt(target: &Target, input: &[u8]) -> Result<(), String> {
    std::panic::catch_unwind(AssertUnwindSafe(|| (target.1)(input))).map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".to_string())
    })
}

/// Runs `target` on every seed and corpus input, then on mutations of them
/// for `budget`, drawn from `seed`.
pub fn run(target: &Target, budget: Duration, seed: u64) -> Result<Stats, Failure> {
    let mut inputs = seeds::seeds(target.0);
    inputs.extend(corpus_files(target.0));
    if inputs.is_empty() {
        inputs.push(Vec::new());
    }
    let fail =
        |iteration, input: &[u8], panic| Failure { target: target.0, seed, iteration, input: input.to_vec(), panic };
    for input in &inputs {
        attempt(target, input).map_err(|p| fail(0, input, p))?;
    }
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut stats = Stats { executions: inputs.len() as u64, inputs: inputs.len() };
    let mut iteration = 0u64;
    while started.elapsed() < budget {
        // A batch between clock reads.
        for _ in 0..64 {
            iteration += 1;
            let mut input = inputs[rng.below(inputs.len())].clone();
            let other = &inputs[rng.below(inputs.len())];
            mutate(&mut input, other, &mut rng);
            attempt(target, &input).map_err(|p| fail(iteration, &input, p))?;
            stats.executions += 1;
        }
    }
    Ok(stats)
}

/// Replays iteration `iteration` of a run with `seed`: the input it ran.
pub fn replay_input(target: &str, seed: u64, iteration: u64) -> Vec<u8> {
    let mut inputs = seeds::seeds(target);
    inputs.extend(corpus_files(target));
    if inputs.is_empty() {
        inputs.push(Vec::new());
    }
    let mut rng = Rng::new(seed);
    let mut input = Vec::new();
    for _ in 0..iteration {
        input = inputs[rng.below(inputs.len())].clone();
        let other = &inputs[rng.below(inputs.len())];
        mutate(&mut input, other, &mut rng);
    }
    input
}
