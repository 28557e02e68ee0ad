//! The wasmtime engine with waft's determinism settings, and the limits that
//! bound every instance.
//!
//! Owns the `Config` every replica must agree on. Must never enable a wasm
//! feature whose results can differ between machines (threads, relaxed SIMD
//! without deterministic lowering, NaN bit patterns).

use std::sync::{Arc, OnceLock};

use wasmtime::{Config, Enabled, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

/// Instances of kv state machines alive at once, over the whole process
/// (each lives for one call; a call waits for none): far more than the
/// threads that run guest calls. Each memory slot reserves about 4 GiB of
/// address space (none of it resident until used), so the pool reserves
/// about 4 TiB of the 128 TiB a process has.
pub const KV_POOL_INSTANCES: u32 = 1024;
/// Largest memory of a kv state machine's instance, whatever a group's
/// memory limit says.
pub const KV_POOL_MEMORY_BYTES_MAX: usize = 1 << 30;
/// Decommits of pooled slots made at once.
const KV_POOL_DECOMMIT_BATCH: usize = 64;
/// Bytes of a pooled memory (and table) zeroed in place when its slot is
/// reused.
const KV_POOL_KEEP_RESIDENT_BYTES: usize = 4 << 20;

/// The settings every engine shares (see [`Engine::new`]).
fn base_config() -> Config {
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
        .max_wasm_stack(STACK_BYTES_MAX)
        .epoch_interruption(true);
    config
}

/// One per process; shared by every loaded module.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: wasmtime::Engine,
    /// The kv state machines' engine (see [`Engine::pooled`]).
    pooled: Arc<OnceLock<wasmtime::Engine>>,
    /// Whether `Module::load` accepts a file naming a native machine in a
    /// build without the `bench-native` feature (see
    /// [`Engine::with_native_machines`]).
    pub(crate) native_machines: bool,
}

impl Engine {
    /// An engine configured for deterministic execution:
    /// - fuel metering bounds every call (fuel, not epochs: fuel counts
    ///   instructions, so it trips at the same point on every replica);
    /// - NaN canonicalization, so float results have one bit pattern;
    /// - no threads, no relaxed SIMD, no GC or stack switching;
    /// - a bounded wasm stack;
    /// - epoch interruption, the wall-clock backstop: a thread ticks the
    ///   engine's epoch every [`EPOCH_TICK`], and a call that outlives its
    ///   deadline ([`Limits::call_wall_ms_max`]) is stopped. Where it stops
    ///   depends on the machine's speed, so a backstop stop is never an
    ///   entry's outcome: the runtime stops the group on that replica
    ///   instead (see `machine`).
    pub fn new() -> Result<Self, EngineError> {
        let inner = wasmtime::Engine::new(&base_config()).map_err(|e| EngineError(format!("{e:#}")))?;
        spawn_epoch_ticker(&inner)?;
        Ok(Self { inner, pooled: Arc::new(OnceLock::new()), native_machines: false })
    }

    /// The engine kv state machines run on: the same settings, with
    /// wasmtime's pooling allocator, since such a guest gets a fresh instance
    /// for every call and mapping a new memory each time costs tens of
    /// microseconds. Made at its first use, so nodes without kv state
    /// machines reserve nothing for it.
    pub(crate) fn pooled(&self) -> Result<&wasmtime::Engine, EngineError> {
        if let Some(engine) = self.pooled.get() {
            return Ok(engine);
        }
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(KV_POOL_INSTANCES)
            .total_core_instances(KV_POOL_INSTANCES * 16)
            .total_memories(KV_POOL_INSTANCES)
            .total_tables(KV_POOL_INSTANCES * 2)
            .max_memory_size(KV_POOL_MEMORY_BYTES_MAX)
            .table_elements(crate::host::TABLE_ELEMENTS_MAX)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .max_core_instances_per_component(32)
            // What a call dirtied is zeroed in place when its slot is reused,
            // rather than decommitted and faulted in again; decommits that
            // remain go in batches (each is a TLB shootdown).
            .linear_memory_keep_resident(KV_POOL_KEEP_RESIDENT_BYTES)
            .table_keep_resident(KV_POOL_KEEP_RESIDENT_BYTES)
            .decommit_batch_size(KV_POOL_DECOMMIT_BATCH)
            // Where the kernel can say which pages a call dirtied (Linux 6.7
            // and later), only those are reset.
            .pagemap_scan(Enabled::Auto);
        let mut config = base_config();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = wasmtime::Engine::new(&config).map_err(|e| EngineError(format!("{e:#}")))?;
        spawn_epoch_ticker(&engine)?;
        Ok(self.pooled.get_or_init(|| engine))
    }

    /// This engine, loading module files that name a native machine (see
    /// [`crate::native`]) whatever the build's features: for the simulator,
    /// which runs replicas on its native registers. A serving node never
    /// makes one; a feature would not do, as cargo unifies features across
    /// a workspace's test build.
    pub fn with_native_machines(mut self) -> Engine {
        self.native_machines = true;
        self
    }
}

/// How often the engine's epoch moves: the backstop's resolution.
pub const EPOCH_TICK: std::time::Duration = std::time::Duration::from_millis(50);

/// Ticks the engine's epoch until the engine is dropped.
fn spawn_epoch_ticker(engine: &wasmtime::Engine) -> Result<(), EngineError> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("waft-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .map(drop)
        .map_err(|e| EngineError(format!("cannot start the epoch thread: {e}")))
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
    /// Largest result one entry or query may return. A larger one rejects
    /// the entry (`FaultKind::ResultTooLarge`), its changes undone.
    pub result_bytes_max: usize,
    /// Largest snapshot the guest may write; a larger save fails.
    pub snapshot_bytes_max: u64,
    /// Wall-clock backstop for one call into the guest, in milliseconds.
    /// Fuel bounds a call's work; this catches a host too slow for the fuel
    /// budget or host work fuel does not see. A call that hits it stops the
    /// group on this replica (never a different result).
    pub call_wall_ms_max: u64,
    /// Wall-clock backstop for one snapshot save or load, in milliseconds.
    pub snapshot_wall_ms_max: u64,
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
            result_bytes_max: 1024 * 1024,
            snapshot_bytes_max: 256 * 1024 * 1024,
            call_wall_ms_max: 30_000,
            snapshot_wall_ms_max: 600_000,
        }
    }
}
