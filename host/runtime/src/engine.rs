//! The wasmtime engine with waft's determinism settings, and the limits that
//! bound every instance.
//!
//! Owns the `Config` every replica must agree on. Must never enable a wasm
//! feature whose results can differ between machines (threads, relaxed SIMD
//! without deterministic lowering, NaN bit patterns).

use wasmtime::{Config, OptLevel};

/// One per process; shared by every loaded module.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: wasmtime::Engine,
}

impl Engine {
    /// An engine configured for deterministic execution:
    /// - fuel metering bounds every call (fuel, not epochs: fuel counts
    ///   instructions, so it trips at the same point on every replica);
    /// - NaN canonicalization, so float results have one bit pattern;
    /// - no threads, no relaxed SIMD, no GC or stack switching;
    /// - a bounded wasm stack.
    pub fn new() -> Result<Self, EngineError> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(true)
            .cranelift_nan_canonicalization(true)
            .cranelift_opt_level(OptLevel::Speed)
            .wasm_relaxed_simd(false)
            .relaxed_simd_deterministic(true)
            // wasmtime is built without its `threads` and
            // `component-model-async` features, so neither can be enabled.
            .wasm_shared_everything_threads(false)
            .wasm_stack_switching(false)
            .max_wasm_stack(STACK_BYTES_MAX);
        let inner = wasmtime::Engine::new(&config).map_err(|e| EngineError(format!("{e:#}")))?;
        Ok(Self { inner })
    }
}

/// The engine could not be configured (e.g. the CPU lacks a feature the
/// compiler needs).
#[derive(Debug, thiserror::Error)]
#[error("cannot configure the wasm engine: {0}")]
pub struct EngineError(String);

/// Largest wasm stack a guest may use; deep recursion traps instead of
/// growing without bound.
pub const STACK_BYTES_MAX: usize = 1024 * 1024;

/// Bounds on one state-machine instance. Every replica of a group must use
/// the same values, or a guest near a limit could fail on one and not
/// another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Fuel (roughly, wasm instructions) one entry may spend. The budget is
    /// reset between entries, so it does not depend on batching.
    pub fuel_per_entry: u64,
    /// Fuel for one query or lifecycle hook.
    pub fuel_per_query: u64,
    /// Fuel for saving or loading one snapshot.
    pub fuel_per_snapshot: u64,
    /// Linear memory one instance may grow to.
    pub memory_bytes_max: usize,
    /// Entries handed to the guest in one `on-apply` call; longer batches
    /// are split.
    pub apply_batch_entries_max: usize,
    /// Entries applied since the last in-memory checkpoint before a new one
    /// is taken. Bounds the replay work after a fault and the memory the
    /// replay log holds.
    pub replay_entries_max: usize,
    /// Command bytes applied since the last checkpoint before a new one is
    /// taken.
    pub replay_bytes_max: usize,
    /// Log lines a guest may write per call; the rest are dropped.
    pub log_lines_per_call_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel_per_entry: 50_000_000,
            fuel_per_query: 50_000_000,
            fuel_per_snapshot: 20_000_000_000,
            memory_bytes_max: 256 * 1024 * 1024,
            apply_batch_entries_max: 1024,
            replay_entries_max: 8192,
            replay_bytes_max: 8 * 1024 * 1024,
            log_lines_per_call_max: 64,
        }
    }
}
