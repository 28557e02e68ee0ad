//! A running state machine: apply, query, snapshot, with guest faults
//! contained to the entry that caused them, and every replica kept
//! byte-identical whatever its own history.
//!
//! Owns the *apply instance* (the replicated state), an in-memory
//! checkpoint, and a *query instance*. Must never let a fault change what any
//! other entry returns, never report a state that differs from "every
//! successful entry applied, in order", and never let anything that runs on
//! one replica only (a query, a leader hook, a snapshot save, a fault's
//! recovery) change what a later entry sees.
//!
//! # Determinism rules
//!
//! - **Randomness per entry.** Before every call the random stream is
//!   reseeded: for `on-apply`, from the group and the first entry's index
//!   (`wasi::entry_seed`). A guest that imports `wasi:random` is handed one
//!   entry per call, so each entry draws from its own stream, whatever the
//!   batching, restarts or re-runs. Other calls (load, save, configuration,
//!   query) get fixed per-group seeds.
//! - **Queries and leader hooks never touch the apply instance.** They run on
//!   a second instance of the same module that replays the entries the apply
//!   instance applied (from the checkpoint and its replay log), caught up
//!   lazily before each query. A query may scribble on it; the replicated
//!   state, and what later entries see, cannot change. The price: a second
//!   copy of the guest's memory, and the entries applied since the last
//!   query applied once more, in batches, before the next one.
//! - **Limits whose outcome depends on heap history are decided on a fresh
//!   instance.** An entry that hits the memory limit or runs out of fuel on
//!   the apply instance is not rejected for it straight away: the state
//!   before it is saved and loaded into a fresh instance, which runs the
//!   entry alone with twice the memory and fuel (`CANONICAL_FACTOR`). The
//!   entry is rejected only if it exceeds those there, and the fresh instance
//!   depends only on the state's bytes, not on any replica's history. A
//!   replica whose apply instance did not hit the limit accepted an entry
//!   that, run anywhere else, needed at most a bit over the limit on top of
//!   the state's own load; the doubled bounds cover that, so every replica
//!   accepts it too. A state that grew past the limit that way is saved and
//!   loaded with the doubled memory wherever it is rebuilt, and its instance
//!   keeps the memory it holds as its limit. If the state cannot be saved to
//!   decide an entry, the group stops on that replica: a verdict from the
//!   apply instance alone could differ from the others'. Configuration
//!   hooks are decided the same way.
//! - **Host work is paid from fuel** (`host`), and a wall-clock backstop
//!   (epoch interruption, [`Limits::call_wall_ms_max`]) stops a call the fuel
//!   did not. Where a backstop stops a call depends on the machine, so it is
//!   never an entry's outcome: the runtime reports
//!   [`RuntimeError::Backstop`] and the caller stops the group on this
//!   replica.
//! - **A call that may run long never runs on an async worker**: with an
//!   offload hook set ([`StateMachine::set_offload`]), apply and query calls
//!   run in place only within a small fuel slice ([`IN_PLACE_FUEL_MAX`]);
//!   past it the work is re-run through the hook (the daemon's
//!   `block_in_place`), its partial run discarded.
//!
//! # How a fault on one entry is contained
//!
//! A trap leaves a component instance unusable, and wasmtime offers no way to
//! copy a component's memory back. So the runtime keeps a *checkpoint*: the
//! bytes of the guest's own `on-snapshot-save` at some point, plus the log of
//! every entry (and configuration hook) applied since. When a call faults:
//!
//! 1. a fresh instance is created, loads the checkpoint, and replays the log
//!    since; it now holds exactly the state before the faulting call (the
//!    results of a call that faulted are lost with it);
//! 2. if the call carried several entries, they are run again one entry per
//!    call;
//! 3. an entry that faults on its own gets an error result (after the fresh-
//!    instance check above for the memory and fuel limits) and is *not*
//!    added to the log, so the state is as if it never ran; the rest of the
//!    batch goes on.
//!
//! Fuel: every `on-apply` call gets [`Limits::fuel_per_entry`], however many
//! entries it carries. A batch that fits succeeds entry by entry, and each of
//! its entries would also fit alone; a batch that does not is re-run one
//! entry per call. To keep heavy entries off that slow path, the runtime
//! sizes batches from the fuel recent entries used, aiming at a quarter of
//! the budget per call.
//!
//! The checkpoint moves forward (one `on-snapshot-save` into memory) once the
//! log since it passes [`Limits::replay_entries_max`] entries or
//! [`Limits::replay_bytes_max`] bytes, or where the host asks
//! ([`StateMachine::checkpoint_begin`]: its digest points and snapshots).
//! The apply instance saves in place, and the group waits meanwhile; with a
//! spawn hook ([`StateMachine::set_spawn`]) a second instance replays the
//! log since the last checkpoint and saves instead, on another thread while
//! the applies go on (the `save` module), and the checkpoint moves once the
//! bytes are in.
//! A save larger than [`Limits::snapshot_bytes_max`] fails; the log then
//! keeps growing up to [`REPLAY_GROWTH_MAX`] times its bounds, past which the
//! group stops with a clear error rather than hold unbounded memory. If a restore itself fails
//! (a replayed entry that succeeded before now faults), the state machine is
//! poisoned: every later call returns [`RuntimeError::Poisoned`] and the
//! caller must stop the group rather than diverge.

use std::collections::VecDeque;
use std::io::{Cursor, Read, Write};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime::component::{Func, Resource, ResourceTableError, TypedFunc};
use wasmtime::{Store, Trap};

use crate::abi::{Entries, Replies, ResultTooLarge, with_result_cap};
use crate::engine::{EPOCH_TICK, Limits};
use crate::host::{HostState, ReaderRes, SharedWrite, WriterRes};
use crate::kv::{
    KV_SNAPSHOT_END, KV_SNAPSHOT_MAGIC, KV_SUM_RECORD, KvCall, KvHandle, KvSnapshot, KvStore, KvSum, KvWrites,
};
use crate::module::{Module, ModuleKind};
use crate::native::Native;
use crate::wasi::{call_seed, entry_seed};

mod save;
use save::SaveJob;
pub use save::{SAVES_IN_FLIGHT_MAX, SaveError, SaveResult, SavedState, Spawn};

/// Fuel the apply and query calls of one public call may spend in place on
/// the caller's thread (an async worker, in the daemon) before the rest is
/// handed to the offload hook: a few milliseconds of guest work.
pub const IN_PLACE_FUEL_MAX: u64 = 2_000_000;
/// Fuel a load gets for each byte of the state it reads, on top of
/// `Limits::fuel_per_snapshot`: loading a state costs a guest far more than
/// saving it (the atomic example's load of 800,000 keys, about 175 MB, ran
/// out of the default 20e9 while its save did not; its load of 20,000
/// 200-byte keys needs over 300 a byte), and a state must load wherever it
/// is rebuilt (a restart, an install, a fault's recovery, the query
/// instance). The same for the same bytes on every replica; bounded by
/// `Limits::snapshot_bytes_max` and the wall-clock backstop.
pub const LOAD_FUEL_PER_BYTE: u64 = 1024;
/// How much more memory and fuel the fresh instance that decides a limit hit
/// gets (see the module docs).
pub const CANONICAL_FACTOR: u64 = 2;
/// Extra memory the fresh instance gets beyond `CANONICAL_FACTOR` times the
/// limit, for the allocator's own rounding.
const CANONICAL_MEMORY_SLACK_BYTES: usize = 4 * 1024 * 1024;
/// How far past its bounds the replay log may grow while checkpoints fail
/// (a state too large to save) before the group stops.
pub const REPLAY_GROWTH_MAX: usize = 8;
/// How far past its bounds (a factor) the replay log may grow while
/// checkpoint saves run, before the apply path waits for the oldest.
/// Below `REPLAY_GROWTH_MAX`, which stops a machine whose saves fail.
pub const SAVING_REPLAY_FACTOR_MAX: usize = 6;
/// Entries a query instance may be behind when the checkpoint moves and
/// still be caught up rather than dropped (and rebuilt by the next query).
const QUERY_CATCH_UP_MAX: usize = 1024;
/// Entries a query instance may be behind and still catch up in place on
/// the caller's thread.
const QUERY_CATCH_UP_IN_PLACE_MAX: usize = 64;

/// Kinds of calls that belong to no entry, for their random seeds.
const SEED_SAVE: u64 = 1;
const SEED_LOAD: u64 = 2;
const SEED_CONFIG: u64 = 3;
const SEED_QUERY: u64 = 4;

/// Runs a closure where it may block for long (the daemon: `block_in_place`).
pub type Offload = Arc<dyn Fn(&mut dyn FnMut()) + Send + Sync>;

/// One committed entry, as the host hands it to the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    pub command: Bytes,
}

impl Entry {
    pub fn new(index: u64, term: u64, command: impl Into<Bytes>) -> Self {
        Self { index, term, command: command.into() }
    }
}

/// What went wrong inside the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// A wasm trap: a panic, unreachable, an out-of-bounds access, a stack
    /// overflow.
    Trap,
    /// The entry spent its whole fuel budget.
    OutOfFuel,
    /// The guest tried to grow its memory past the limit.
    MemoryLimit,
    /// The guest called `exit`.
    Exit,
    /// The guest broke the interface contract (e.g. returned the wrong
    /// number of results).
    Protocol,
    /// The entry's result was larger than [`Limits::result_bytes_max`].
    ResultTooLarge,
    /// The wall-clock backstop stopped the call. Never an entry's outcome.
    Backstop,
}

/// A guest fault, with a message for the client whose entry caused it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("guest fault ({kind:?}): {message}")]
pub struct GuestFault {
    pub kind: FaultKind,
    pub message: String,
}

/// Why an entry produced no response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The state machine rejected the command (its own error).
    #[error("rejected by the state machine: {0}")]
    Rejected(String),
    /// The guest faulted on this entry; state is as if it never applied.
    #[error(transparent)]
    Fault(GuestFault),
}

/// The outcome of one entry.
pub type ApplyResult = Result<Bytes, ApplyError>;

/// Errors of the runtime itself, or of a query or snapshot call.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The guest returned an error from a query or snapshot call.
    #[error("the state machine returned an error: {0}")]
    Guest(String),
    /// The guest faulted in a query, snapshot or hook; its state was
    /// restored.
    #[error(transparent)]
    Fault(GuestFault),
    /// A fresh instance could not be created.
    #[error("cannot instantiate the state machine: {0}")]
    Instantiate(String),
    /// Restoring after a fault failed; see [`RuntimeError::Poisoned`].
    #[error("cannot restore the state machine after a fault: {0}; the group must stop")]
    Recovery(String),
    /// An earlier restore failed; the state machine can no longer be trusted.
    #[error("the state machine is unusable after a failed restore; the group must stop")]
    Poisoned,
    /// The wall-clock backstop stopped an apply call. How far it got depends
    /// on this machine's speed, so no outcome can be reported for its
    /// entries: the group must stop on this replica.
    #[error("the wall-clock backstop stopped the state machine: {0}; the group must stop on this replica")]
    Backstop(String),
    /// The group's key-value store failed (a disk error), or a kv state
    /// machine has none: no outcome can be trusted, and the group must stop
    /// on this replica.
    #[error("{0}; the group must stop on this replica")]
    Store(String),
}

/// Longest fault message kept; traps can carry long backtraces.
const FAULT_MESSAGE_BYTES_MAX: usize = 512;

type ApplyFn<'a> = TypedFunc<(Entries<'a>,), (Replies,)>;
type QueryFn<'a> = TypedFunc<(&'a [u8],), (Result<Vec<u8>, String>,)>;
type SaveFn = TypedFunc<(Resource<WriterRes>,), (Result<(), String>,)>;
type LoadFn = TypedFunc<(Resource<ReaderRes>,), (Result<(), String>,)>;
type LeaderStartFn = TypedFunc<(u64,), ()>;
type LeaderStopFn = TypedFunc<(), ()>;
type ConfigFn<'a> = TypedFunc<(&'a [u64], &'a [u64]), ()>;

/// One instance and its exports. Unusable after any fault.
pub(crate) struct Live {
    store: Store<HostState>,
    on_apply: Func,
    query: Func,
    save: Func,
    load: Func,
    leader_start: LeaderStartFn,
    leader_stop: LeaderStopFn,
    config: Func,
    limits: Limits,
    group: u64,
    /// Fuel the last call was given.
    fuel_given: u64,
}

/// A fault in one call.
struct CallFault {
    fault: GuestFault,
}

impl CallFault {
    /// Whether the call ran out of a fuel slice smaller than its budget: not
    /// an outcome, only a sign it must be run again elsewhere.
    fn out_of_slice(&self, budget: u64, given: u64) -> bool {
        self.fault.kind == FaultKind::OutOfFuel && given < budget
    }
}

/// Ticks of the epoch that make up `ms` milliseconds, rounded up.
fn epoch_ticks(ms: u64) -> u64 {
    ms.div_ceil(EPOCH_TICK.as_millis().max(1) as u64).max(1)
}

impl Live {
    pub(crate) fn instantiate(module: &Module, limits: &Limits, label: Arc<str>) -> Result<Live, RuntimeError> {
        Live::instantiate_for(module, limits, 0, label)
    }

    fn instantiate_for(module: &Module, limits: &Limits, group: u64, label: Arc<str>) -> Result<Live, RuntimeError> {
        let ModuleKind::Wasm(inner) = &module.kind else {
            return Err(RuntimeError::Instantiate("a native machine has no wasm instance".into()));
        };
        let mut store = Store::new(&inner.wasm_engine, HostState::new(limits.memory_bytes_max, label));
        store.limiter(|state| &mut state.limiter);
        store.call_hook(crate::host::call_hook);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(epoch_ticks(limits.call_wall_ms_max));
        let err = |e: wasmtime::Error| RuntimeError::Instantiate(format!("{e:#}"));
        store.set_fuel(limits.fuel_per_query).map_err(err)?;
        store.data().random.reseed(call_seed(group, SEED_LOAD));
        let instance = inner.pre.instantiate(&mut store).map_err(err)?;
        let mut func = |index, name: &str| {
            instance
                .get_func(&mut store, index)
                .ok_or_else(|| RuntimeError::Instantiate(format!("export `{name}` is not a function")))
        };
        let on_apply = func(&inner.exports.on_apply, "on-apply")?;
        let query = func(&inner.exports.query, "query")?;
        let save = func(&inner.exports.save, "on-snapshot-save")?;
        let load = func(&inner.exports.load, "on-snapshot-load")?;
        let leader_start = func(&inner.exports.leader_start, "on-leader-start")?;
        let leader_stop = func(&inner.exports.leader_stop, "on-leader-stop")?;
        let config = func(&inner.exports.configuration_committed, "on-configuration-committed")?;
        let sig = |name: &str, e: wasmtime::Error| {
            RuntimeError::Instantiate(format!("export `{name}` has the wrong signature: {e:#}"))
        };
        // Check every signature once; calls below then use unchecked typed
        // views of the same functions (they differ only in lifetimes).
        on_apply.typed::<(Entries<'_>,), (Replies,)>(&store).map_err(|e| sig("on-apply", e))?;
        query.typed::<(&[u8],), (Result<Vec<u8>, String>,)>(&store).map_err(|e| sig("query", e))?;
        let _: SaveFn = save.typed(&store).map_err(|e| sig("on-snapshot-save", e))?;
        let _: LoadFn = load.typed(&store).map_err(|e| sig("on-snapshot-load", e))?;
        let leader_start = leader_start.typed(&store).map_err(|e| sig("on-leader-start", e))?;
        let leader_stop = leader_stop.typed(&store).map_err(|e| sig("on-leader-stop", e))?;
        config.typed::<(&[u64], &[u64]), ()>(&store).map_err(|e| sig("on-configuration-committed", e))?;
        Ok(Live {
            store,
            on_apply,
            query,
            save,
            load,
            leader_start,
            leader_stop,
            config,
            limits: limits.clone(),
            group,
            fuel_given: 0,
        })
    }

    /// Sets the memory limit from now on (all memories together).
    fn set_memory_limit(&mut self, bytes: usize) {
        self.store.data_mut().limiter.memory_bytes_max = bytes;
    }

    /// Reset per-call state: fuel, log budget, memory flag, randomness,
    /// the backstop's deadline.
    fn begin_call(&mut self, fuel: u64, seed: u64, wall_ms: u64) -> Result<(), CallFault> {
        let log_budget = self.limits.log_lines_per_call_max;
        let state = self.store.data_mut();
        state.log_budget = log_budget;
        state.limiter.memory_limit_hit = false;
        state.random.reseed(seed);
        self.store.set_epoch_deadline(epoch_ticks(wall_ms));
        self.fuel_given = fuel;
        self.store.set_fuel(fuel).map_err(|e| self.fault(e))
    }

    fn classify(&self, err: wasmtime::Error) -> GuestFault {
        let trap = err.downcast_ref::<Trap>().copied();
        let resources_full = matches!(err.downcast_ref::<ResourceTableError>(), Some(ResourceTableError::Full));
        let kind = if self.store.data().limiter.memory_limit_hit || resources_full {
            FaultKind::MemoryLimit
        } else if trap == Some(Trap::OutOfFuel) {
            FaultKind::OutOfFuel
        } else if trap == Some(Trap::Interrupt) {
            FaultKind::Backstop
        } else if err.downcast_ref::<ResultTooLarge>().is_some() {
            FaultKind::ResultTooLarge
        } else if err.downcast_ref::<wasmtime_wasi::I32Exit>().is_some() {
            FaultKind::Exit
        } else {
            FaultKind::Trap
        };
        let mut message = match kind {
            FaultKind::OutOfFuel => format!("the call used its whole fuel budget ({} units)", self.fuel_given),
            FaultKind::MemoryLimit => {
                format!("the guest hit the {}-byte memory limit", self.store.data().limiter.memory_bytes_max)
            }
            FaultKind::Backstop => format!(
                "a call into the guest ran past the wall-clock backstop ({} ms for a call, {} ms for a snapshot)",
                self.limits.call_wall_ms_max, self.limits.snapshot_wall_ms_max
            ),
            FaultKind::ResultTooLarge => err.root_cause().to_string(),
            // A Rust panic reaches the host as `unreachable`.
            _ => match trap {
                Some(Trap::UnreachableCodeReached) => "wasm trap: unreachable executed (a panic, in Rust)".to_string(),
                Some(trap) => format!("wasm trap: {trap}"),
                // A host function's error (an exit, a WASI call that would
                // wait): its own words, not the wasm backtrace wrapped round it.
                None => err.root_cause().to_string(),
            },
        };
        truncate(&mut message, FAULT_MESSAGE_BYTES_MAX);
        GuestFault { kind, message }
    }

    fn fault(&self, err: wasmtime::Error) -> CallFault {
        CallFault { fault: self.classify(err) }
    }

    /// Fuel the last call spent.
    fn fuel_used(&self) -> u64 {
        self.fuel_given.saturating_sub(self.store.get_fuel().unwrap_or(0))
    }

    /// The guest's own results, one per entry, lifted by `abi::Replies`;
    /// mapped by the caller straight into its output. The random stream is
    /// the first entry's (the only one's, for a guest that draws).
    fn call_apply(&mut self, entries: &[Entry], fuel: u64) -> Result<Replies, CallFault> {
        let seed = entries.first().map_or(0, |e| entry_seed(self.group, e.index));
        self.begin_call(fuel, seed, self.limits.call_wall_ms_max)?;
        // SAFETY: the signature was checked in `instantiate`.
        let f: ApplyFn<'_> = unsafe { TypedFunc::new_unchecked(self.on_apply) };
        let cap = self.limits.result_bytes_max;
        let (results,) =
            with_result_cap(cap, || f.call(&mut self.store, (Entries(entries),))).map_err(|e| self.fault(e))?;
        if results.len() != entries.len() {
            return Err(CallFault {
                fault: GuestFault {
                    kind: FaultKind::Protocol,
                    message: format!("on-apply returned {} results for {} entries", results.len(), entries.len()),
                },
            });
        }
        Ok(results)
    }

    fn call_query(&mut self, request: &[u8], fuel: u64) -> Result<Result<Vec<u8>, String>, CallFault> {
        self.begin_call(fuel, call_seed(self.group, SEED_QUERY), self.limits.call_wall_ms_max)?;
        // SAFETY: the signature was checked in `instantiate`.
        let f: QueryFn<'_> = unsafe { TypedFunc::new_unchecked(self.query) };
        let (result,) = f.call(&mut self.store, (request,)).map_err(|e| self.fault(e))?;
        let len = match &result {
            Ok(bytes) => bytes.len(),
            Err(message) => message.len(),
        };
        if len > self.limits.result_bytes_max {
            return Err(CallFault {
                fault: GuestFault {
                    kind: FaultKind::ResultTooLarge,
                    message: ResultTooLarge { len, max: self.limits.result_bytes_max }.to_string(),
                },
            });
        }
        Ok(result)
    }

    fn call_config(&mut self, voters: &[u64], learners: &[u64], fuel: u64) -> Result<(), CallFault> {
        self.begin_call(fuel, call_seed(self.group, SEED_CONFIG), self.limits.call_wall_ms_max)?;
        // SAFETY: the signature was checked in `instantiate`.
        let f: ConfigFn<'_> = unsafe { TypedFunc::new_unchecked(self.config) };
        f.call(&mut self.store, (voters, learners)).map_err(|e| self.fault(e))
    }

    fn call_leader_hook(&mut self, term: Option<u64>) -> Result<(), CallFault> {
        self.begin_call(self.limits.fuel_per_query, call_seed(self.group, SEED_QUERY), self.limits.call_wall_ms_max)?;
        match term {
            Some(term) => self.leader_start.call(&mut self.store, (term,)).map_err(|e| self.fault(e)),
            None => self.leader_stop.call(&mut self.store, ()).map_err(|e| self.fault(e)),
        }
    }

    fn call_save<W: Write + Send + 'static>(&mut self, out: W) -> Result<(Result<(), String>, W, u64), CallFault> {
        self.begin_call(
            self.limits.fuel_per_snapshot,
            call_seed(self.group, SEED_SAVE),
            self.limits.snapshot_wall_ms_max,
        )?;
        let shared = Arc::new(Mutex::new(out));
        let sink = Box::new(SharedWrite(shared.clone()));
        let writer = WriterRes { sink, bytes: 0, bytes_max: self.limits.snapshot_bytes_max, over_limit: false };
        let res = self.store.data_mut().table().push(writer).map_err(|e| self.fault(e.into()))?;
        let rep = Resource::<WriterRes>::new_borrow(res.rep());
        // SAFETY: the signature was checked in `instantiate`.
        let f: SaveFn = unsafe { TypedFunc::new_unchecked(self.save) };
        let called = f.call(&mut self.store, (rep,));
        let writer = self.store.data_mut().table().delete(res);
        let (mut result,) = called.map_err(|e| self.fault(e))?;
        let writer = writer.map_err(|e| self.fault(e.into()))?;
        let bytes = writer.bytes;
        if writer.over_limit && result.is_ok() {
            // The guest went on after its write was refused: the snapshot
            // is incomplete whatever it says.
            result = Err(format!(
                "the snapshot would exceed its limit of {} bytes; this state machine's state is too large to save",
                writer.bytes_max
            ));
        }
        drop(writer);
        let out = match Arc::try_unwrap(shared) {
            Ok(mutex) => mutex.into_inner().map_err(|_| self.protocol("snapshot sink poisoned"))?,
            Err(_) => return Err(self.protocol("snapshot sink still shared after the call")),
        };
        Ok((result, out, bytes))
    }

    /// Loads `input`, `bytes` long (0 if not known): the call gets
    /// `fuel_per_snapshot` and `LOAD_FUEL_PER_BYTE` for each of its bytes.
    fn call_load<R: Read + Send + 'static>(&mut self, input: R, bytes: u64) -> Result<Result<(), String>, CallFault> {
        self.begin_call(
            self.limits.fuel_per_snapshot.saturating_add(bytes.saturating_mul(LOAD_FUEL_PER_BYTE)),
            call_seed(self.group, SEED_LOAD),
            self.limits.snapshot_wall_ms_max,
        )?;
        let res = self
            .store
            .data_mut()
            .table()
            .push(ReaderRes { source: Box::new(input), bytes: 0 })
            .map_err(|e| self.fault(e.into()))?;
        let rep = Resource::<ReaderRes>::new_borrow(res.rep());
        // SAFETY: the signature was checked in `instantiate`.
        let f: LoadFn = unsafe { TypedFunc::new_unchecked(self.load) };
        let called = f.call(&mut self.store, (rep,));
        let _ = self.store.data_mut().table().delete(res);
        let (result,) = called.map_err(|e| self.fault(e))?;
        Ok(result)
    }

    fn protocol(&self, message: &str) -> CallFault {
        CallFault { fault: GuestFault { kind: FaultKind::Protocol, message: message.to_string() } }
    }
}

#[cfg(test)]
impl Live {
    /// The store, its fuel set as for an `on-apply` call, and the raw
    /// `on-apply` export: for checking `abi` against wasmtime's own lifting.
    pub(crate) fn on_apply_for_test(&mut self, fuel: u64) -> (&mut Store<HostState>, Func) {
        self.store.set_fuel(fuel).expect("fuel metering is on");
        (&mut self.store, self.on_apply)
    }
}

/// The memory a fresh instance gets to decide a limit hit.
fn canonical_memory(limits: &Limits) -> usize {
    limits.memory_bytes_max.saturating_mul(CANONICAL_FACTOR as usize).saturating_add(CANONICAL_MEMORY_SLACK_BYTES)
}

/// The memory limit an instance gets for entries: the configured one, or
/// what it already holds when an entry accepted on a fresh instance left it
/// above that (so it is never refused all growth for good).
fn memory_limit(limits: &Limits, live: &Live) -> usize {
    limits.memory_bytes_max.max(live.store.data().limiter.memory_bytes())
}

/// A fresh instance of `module` holding `state` (the initial state for
/// `None`), loaded with the doubled memory: a state accepted through the
/// doubled bound must load again wherever it is rebuilt.
fn load_fresh(
    module: &Module,
    limits: &Limits,
    group: u64,
    label: &Arc<str>,
    state: Option<&Arc<[u8]>>,
) -> Result<Live, RuntimeError> {
    let mut live = Live::instantiate_for(module, limits, group, label.clone())?;
    live.set_memory_limit(canonical_memory(limits));
    if let Some(state) = state {
        let failed = |why: &dyn std::fmt::Display| {
            RuntimeError::Recovery(format!("the state does not load into a fresh instance: {why}"))
        };
        match live.call_load(Cursor::new(state.clone()), state.len() as u64) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(failed(&e)),
            Err(f) => return Err(failed(&f.fault)),
        }
    }
    Ok(live)
}

/// Replays `items` of a replay log (their commands in `arena`) into `live`
/// in batches of up to `apply_batch_entries_max` entries, each call with the
/// doubled fuel for each of its entries, where the guest draws no
/// randomness; one entry per call where it does. For instances whose heap
/// need not match anyone's (a query instance, a saver): a limit hit here
/// fails the replay, and the caller falls back to `replay_items`.
fn replay_items_batched(
    live: &mut Live,
    module: &Module,
    items: &[Replay],
    arena: &[u8],
    limits: &Limits,
) -> Result<(), RuntimeError> {
    let fuel = limits.fuel_per_entry.saturating_mul(CANONICAL_FACTOR);
    if module.draws_randomness() {
        return replay_items(live, items, arena, limits, fuel);
    }
    let failed = |fault: GuestFault| RuntimeError::Recovery(format!("batched replay faulted: {fault}"));
    let mut batch: Vec<Entry> = Vec::new();
    let flush = |live: &mut Live, batch: &mut Vec<Entry>| -> Result<(), RuntimeError> {
        if batch.is_empty() {
            return Ok(());
        }
        live.call_apply(batch, fuel.saturating_mul(batch.len() as u64)).map_err(|f| failed(f.fault))?;
        batch.clear();
        Ok(())
    };
    for item in items {
        match item {
            Replay::Entry { index, term, start, end } => {
                batch.push(replayed_entry(*index, *term, arena.get(*start..*end))?);
                if batch.len() >= limits.apply_batch_entries_max {
                    flush(live, &mut batch)?;
                }
            }
            Replay::Configuration(members) => {
                flush(live, &mut batch)?;
                let (voters, learners) = &**members;
                live.call_config(voters, learners, limits.fuel_per_query.saturating_mul(CANONICAL_FACTOR))
                    .map_err(|f| failed(f.fault))?;
            }
        }
    }
    flush(live, &mut batch)
}

/// A replay log's entry, its command looked up in the log's arena.
fn replayed_entry(index: u64, term: u64, command: Option<&[u8]>) -> Result<Entry, RuntimeError> {
    let command = command
        .ok_or_else(|| RuntimeError::Recovery(format!("entry {index} lies outside the replay log's commands")))?;
    Ok(Entry::new(index, term, Bytes::copy_from_slice(command)))
}

/// Replays `items` of a replay log (their commands in `arena`) into `live`,
/// one entry per call with `fuel` (each is known to fit the budget alone,
/// not necessarily with its neighbours).
fn replay_items(
    live: &mut Live,
    items: &[Replay],
    arena: &[u8],
    limits: &Limits,
    fuel: u64,
) -> Result<(), RuntimeError> {
    let failed = |fault: GuestFault| RuntimeError::Recovery(format!("replay faulted: {fault}"));
    for item in items {
        match item {
            Replay::Entry { index, term, start, end } => {
                let entry = replayed_entry(*index, *term, arena.get(*start..*end))?;
                live.call_apply(std::slice::from_ref(&entry), fuel).map_err(|f| failed(f.fault))?;
            }
            Replay::Configuration(members) => {
                let (voters, learners) = &**members;
                live.call_config(voters, learners, limits.fuel_per_query.saturating_mul(CANONICAL_FACTOR))
                    .map_err(|f| failed(f.fault))?;
            }
        }
    }
    Ok(())
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
}

/// What has been applied since the checkpoint, in order. Entry commands
/// live in the checkpoint's byte arena, so recording one costs a copy into a
/// growing buffer rather than an allocation.
#[derive(Clone)]
enum Replay {
    Entry { index: u64, term: u64, start: usize, end: usize },
    // Boxed: rare, and it keeps the common variant's slot small.
    Configuration(Box<(Vec<u64>, Vec<u64>)>),
}

/// A known-good state to rebuild from: the guest's snapshot bytes (or the
/// fresh state when `None`) plus everything applied since.
#[derive(Default)]
struct Checkpoint {
    snapshot: Option<Arc<[u8]>>,
    since: Vec<Replay>,
    /// The commands of `since`, back to back.
    arena: Vec<u8>,
}

/// The instance queries and leader hooks run on: the apply instance's
/// state, as rebuilt from the checkpoint `epoch` and the first `applied`
/// items of its replay log.
struct QueryInstance {
    live: Live,
    epoch: u64,
    applied: usize,
}

/// A running state machine. See the module docs for its fault model.
///
/// A bench-only native machine (see [`crate::native`]) runs in `native`
/// instead, with no instance, checkpoint or fault containment: every public
/// method hands it the call first.
pub struct StateMachine {
    native: Option<Native>,
    module: Module,
    limits: Limits,
    /// The group, for the random seeds; equal on every replica.
    group: u64,
    label: Arc<str>,
    /// The apply instance. `None` once a restore failed: nothing may run
    /// any more.
    live: Option<Live>,
    checkpoint: Checkpoint,
    /// Counts checkpoint replacements, so a query instance knows what it
    /// was built from.
    checkpoint_epoch: u64,
    /// Built by the first query or leader hook, dropped when it faults or
    /// falls far behind.
    query: Option<QueryInstance>,
    /// Where checkpoint saves run (see `save`); `None` runs them in place.
    spawn: Option<Spawn>,
    /// The instance checkpoints are saved on, at the checkpoint's state
    /// while no save runs; `None` until the first save, or after one failed.
    saver: Option<Live>,
    /// The checkpoint save in flight, if any.
    saving: VecDeque<Saving>,
    /// After a failed save: the replay log's length (items, command bytes)
    /// at which the next is tried.
    save_retry_at: (usize, usize),
    /// Entries per `on-apply` call, adapted to the fuel entries use so a
    /// call stays well inside its budget. 1 ..= apply_batch_entries_max;
    /// always 1 for a guest that draws randomness.
    batch_entries: usize,
    /// Where long work goes; `None` runs everything in place.
    offload: Option<Offload>,
    /// Set while the offload hook runs, so nothing offloads twice.
    offloaded: bool,
    /// A recent call needed more than the in-place slice: offload at once
    /// until the next checkpoint.
    heavy: bool,
    /// Fuel an entry of the last successful `on-apply` call used, on
    /// average: sizes batches that run in place.
    fuel_per_entry_recent: u64,
    /// A kv state machine's store (see `kv`); `None` for any other, and
    /// for a kv one until `attach_kv`.
    kv: Option<KvHandle>,
    /// Writes of applied entries not committed to the store yet: at the
    /// end of each `apply`, or by `commit_kv` when the caller commits them
    /// with records of its own (`defer_kv_commits`).
    kv_pending: KvWrites,
    kv_deferred: bool,
    /// The store's sum as last committed (see `KvSum`); read from its
    /// record, or by a scan, at first use.
    kv_sum: Option<KvSum>,
    /// A kv state machine can no longer be trusted (a backstop stopped a
    /// call): what `live` being `None` says for any other.
    kv_broken: bool,
}

/// Where a state machine's checkpoint stands (`StateMachine::checkpoint_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointStatus {
    /// Entries and configuration hooks applied since the checkpoint.
    pub replay_items: usize,
    /// Their command bytes.
    pub replay_bytes: usize,
    /// Checkpoint saves in flight.
    pub saves_in_flight: usize,
    /// An instance at the checkpoint's state waits for the next save.
    pub saver: bool,
}

/// A checkpoint save in flight: of the state after the replay log's first
/// `items` items, whose commands are the arena's first `arena` bytes.
struct Saving {
    state: SavedState,
    items: usize,
    arena: usize,
    /// A later save takes this one's saver over when it is done.
    handed_on: bool,
}

/// How one `apply_batch` went.
enum BatchRun {
    Done,
    /// The batch ran out of the in-place fuel slice: nothing of it applied,
    /// and the apply instance must be restored before anything else runs.
    OutOfSlice,
}

impl StateMachine {
    /// Instantiate `module` in its initial state, for a machine outside any
    /// group (tests, benches, validation). `label` tags the guest's log lines.
    pub fn new(module: &Module, limits: Limits, label: &str) -> Result<Self, RuntimeError> {
        Self::for_group(module, limits, 0, label)
    }

    /// Instantiate `module` in its initial state as `group`'s state
    /// machine: `group` keys the random streams, so it must be the same on
    /// every replica. `label` tags the guest's log lines (e.g. "group 7 node 2").
    pub fn for_group(module: &Module, limits: Limits, group: u64, label: &str) -> Result<Self, RuntimeError> {
        assert!(limits.apply_batch_entries_max > 0, "apply_batch_entries_max must be positive");
        let label: Arc<str> = label.into();
        let batch_entries = if module.draws_randomness() { 1 } else { limits.apply_batch_entries_max };
        let mut sm = Self {
            native: None,
            module: module.clone(),
            limits,
            group,
            label,
            live: None,
            checkpoint: Checkpoint::default(),
            checkpoint_epoch: 0,
            query: None,
            spawn: None,
            saver: None,
            saving: VecDeque::new(),
            save_retry_at: (0, 0),
            batch_entries,
            offload: None,
            offloaded: false,
            heavy: false,
            fuel_per_entry_recent: 1,
            kv: None,
            kv_pending: KvWrites::default(),
            kv_deferred: false,
            kv_sum: None,
            kv_broken: false,
        };
        if let ModuleKind::Native(kind) = module.kind {
            tracing::warn!(
                sm = &*sm.label,
                ?kind,
                "running a bench-only native state machine: no sandbox, fuel or fault containment"
            );
            sm.native = Some(kind.instantiate());
            return Ok(sm);
        }
        if module.uses_kv() {
            // Every call gets a fresh instance; none is held between calls
            // (each would hold a slot of the pooled engine).
            return Ok(sm);
        }
        sm.live = Some(Live::instantiate_for(module, &sm.limits, group, sm.label.clone())?);
        Ok(sm)
    }

    /// Where calls that may run long go (the daemon: `block_in_place`).
    /// Without it everything runs in place.
    pub fn set_offload(&mut self, offload: Option<Offload>) {
        self.offload = offload;
    }

    /// Where checkpoint saves run from now on (the daemon, with background
    /// saves on: its save threads), on a second instance. Without it the
    /// apply instance saves in place.
    pub fn set_spawn(&mut self, spawn: Option<Spawn>) {
        self.spawn = spawn;
    }

    /// Runs `work` through the offload hook if there is one and it is not
    /// running already; in place otherwise.
    fn offloaded<T>(&mut self, work: impl FnOnce(&mut Self) -> T) -> T {
        match self.offload.clone() {
            Some(offload) if !self.offloaded => {
                self.offloaded = true;
                let mut work = Some(work);
                let mut result = None;
                offload(&mut || {
                    if let Some(work) = work.take() {
                        result = Some(work(self));
                    }
                });
                self.offloaded = false;
                match result {
                    Some(result) => result,
                    // An offload hook that did not run its closure: run here.
                    None => match work.take() {
                        Some(work) => work(self),
                        None => unreachable!("the closure ran but left no result"),
                    },
                }
            }
            _ => work(self),
        }
    }

    /// Whether calls now run within the in-place fuel slice.
    fn in_place(&self) -> bool {
        self.offload.is_some() && !self.offloaded && !self.heavy
    }

    fn live(&mut self) -> Result<&mut Live, RuntimeError> {
        self.live.as_mut().ok_or(RuntimeError::Poisoned)
    }

    /// Apply committed entries in order; one result per entry. The outer
    /// error means the runtime itself can no longer continue.
    pub fn apply(&mut self, entries: &[Entry]) -> Result<Vec<ApplyResult>, RuntimeError> {
        if let Some(native) = &mut self.native {
            return Ok(entries
                .iter()
                .map(|e| native.apply(&e.command).map(Bytes::from).map_err(ApplyError::Rejected))
                .collect());
        }
        if self.module.uses_kv() {
            return self.kv_apply(entries);
        }
        // A checkpoint saved meanwhile moves in before anything can fault.
        self.poll_save(false);
        if self.offload.is_some() && !self.offloaded && self.heavy {
            // A recent call outgrew the slice: all of this goes off the
            // caller's thread at once.
            return self.offloaded(|sm| sm.apply_rest(entries, 0, Vec::with_capacity(entries.len())));
        }
        let mut out = Vec::with_capacity(entries.len());
        let mut spent = 0u64;
        let mut at = 0;
        while at < entries.len() {
            let mut n = (entries.len() - at).min(self.batch_entries);
            let slice = if self.in_place() { Some(IN_PLACE_FUEL_MAX.saturating_sub(spent)) } else { None };
            if let Some(slice) = slice {
                // In place, a batch is cut to what the slice pays for at
                // twice the recent fuel an entry, so running out of it (and
                // the restore that follows) takes an entry far heavier than
                // its predecessors. None fits: the rest goes off this thread
                // before anything of it ran.
                let fit = slice / self.fuel_per_entry_recent.saturating_mul(2).max(1);
                n = n.min(usize::try_from(fit).unwrap_or(usize::MAX));
                if n == 0 {
                    self.heavy = true;
                    return self.offloaded(|sm| sm.apply_rest(entries, at, out));
                }
            }
            let batch = &entries[at..at + n];
            match self.apply_batch(batch, &mut out, slice)? {
                BatchRun::Done => {
                    spent = spent.saturating_add(self.live.as_ref().map_or(0, Live::fuel_used));
                    at += n;
                }
                BatchRun::OutOfSlice => {
                    self.heavy = true;
                    return self.offloaded(|sm| {
                        sm.restore()?;
                        sm.apply_rest(entries, at, out)
                    });
                }
            }
        }
        if self.checkpoint_due() {
            self.maybe_checkpoint()?;
        }
        debug_assert_eq!(out.len(), entries.len());
        Ok(out)
    }

    /// Applies `entries[at..]` with full budgets (off the async worker),
    /// then moves the checkpoint if due.
    fn apply_rest(
        &mut self,
        entries: &[Entry],
        mut at: usize,
        mut out: Vec<ApplyResult>,
    ) -> Result<Vec<ApplyResult>, RuntimeError> {
        while at < entries.len() {
            let n = (entries.len() - at).min(self.batch_entries);
            self.apply_batch(&entries[at..at + n], &mut out, None)?;
            at += n;
        }
        self.maybe_checkpoint()?;
        debug_assert_eq!(out.len(), entries.len());
        Ok(out)
    }

    /// One `on-apply` call with the full budget, or with `slice` fuel when
    /// it is smaller; on a fault, restore and go one entry per call.
    fn apply_batch(
        &mut self,
        batch: &[Entry],
        out: &mut Vec<ApplyResult>,
        slice: Option<u64>,
    ) -> Result<BatchRun, RuntimeError> {
        let budget = self.limits.fuel_per_entry;
        let fuel = slice.map_or(budget, |s| s.min(budget));
        let call = self.live()?.call_apply(batch, fuel);
        match call {
            Ok(results) => {
                self.adapt_batch(batch.len());
                for entry in batch {
                    self.record_entry(entry);
                }
                out.extend(results.into_results().map(|r| r.map_err(ApplyError::Rejected)));
            }
            Err(f) if f.out_of_slice(budget, fuel) => return Ok(BatchRun::OutOfSlice),
            Err(CallFault { fault }) if fault.kind == FaultKind::Backstop => {
                self.live = None;
                return Err(RuntimeError::Backstop(fault.message));
            }
            Err(CallFault { fault }) => {
                // A restore and re-runs with full budgets: off the worker.
                self.offloaded(|sm| sm.contain_fault(batch, fault, out))?;
            }
        }
        Ok(BatchRun::Done)
    }

    /// After `batch` faulted: restores the apply instance to before it, then
    /// decides its only entry, or re-runs its entries one per call.
    fn contain_fault(
        &mut self,
        batch: &[Entry],
        fault: GuestFault,
        out: &mut Vec<ApplyResult>,
    ) -> Result<(), RuntimeError> {
        self.restore()?;
        if let [entry] = batch {
            let verdict = match fault.kind {
                FaultKind::MemoryLimit | FaultKind::OutOfFuel => self.decide_on_fresh_instance(entry, fault)?,
                _ => Err(ApplyError::Fault(fault)),
            };
            if let Err(ApplyError::Fault(fault)) = &verdict {
                tracing::warn!(sm = &*self.label, index = entry.index, %fault, "entry rejected");
            }
            out.push(verdict);
        } else {
            for entry in batch {
                self.apply_batch(std::slice::from_ref(entry), out, None)?;
            }
        }
        Ok(())
    }

    /// Decides an entry that hit the memory limit or ran out of fuel on the
    /// apply instance (restored to just before it): the state's bytes are
    /// loaded into a fresh instance (within the normal memory limit), which
    /// runs the entry alone with `CANONICAL_FACTOR` times the memory and
    /// fuel. On success that instance becomes the apply instance; otherwise
    /// the entry is rejected with the fresh instance's fault. Either way the
    /// verdict depends only on the state's bytes and the entry.
    fn decide_on_fresh_instance(&mut self, entry: &Entry, first: GuestFault) -> Result<ApplyResult, RuntimeError> {
        let state = self.save_for_decision(&format!("entry {}", entry.index), &first)?;
        let mut fresh = self.fresh_loaded(Some(&state))?;
        let fuel = self.limits.fuel_per_entry.saturating_mul(CANONICAL_FACTOR);
        match fresh.call_apply(std::slice::from_ref(entry), fuel) {
            Ok(results) => {
                fresh.set_memory_limit(self.memory_limit_for(&fresh));
                let Some(result) = results.into_results().next() else {
                    return Err(RuntimeError::Recovery("on-apply returned no result for one entry".into()));
                };
                tracing::info!(sm = &*self.label, index = entry.index, %first, "a limit hit on the apply instance fits on a fresh one: applied");
                self.live = Some(fresh);
                self.replace_checkpoint(Some(state));
                self.record_entry(entry);
                Ok(result.map_err(ApplyError::Rejected))
            }
            Err(CallFault { fault }) if fault.kind == FaultKind::Backstop => Err(self.backstop(fault.message)),
            Err(CallFault { mut fault }) => {
                fault.message.push_str(" (decided on a fresh instance with twice the limit)");
                Ok(Err(ApplyError::Fault(fault)))
            }
        }
    }

    /// The state's bytes, saved (with the doubled memory) to decide a limit
    /// hit of `what` on a fresh instance. Without them there is no verdict
    /// that ignores heap history, so a save that fails stops the group here
    /// rather than decide from this replica's heap.
    fn save_for_decision(&mut self, what: &str, first: &GuestFault) -> Result<Arc<[u8]>, RuntimeError> {
        let memory_max = self.canonical_memory_max();
        self.live()?.set_memory_limit(memory_max);
        let saved = self.save_live_to_memory();
        self.reset_memory_limit();
        match saved {
            Ok(bytes) => Ok(bytes.into()),
            Err(RuntimeError::Fault(f)) if f.kind == FaultKind::Backstop => Err(self.backstop(f.message)),
            Err(e) => {
                self.live = None;
                Err(RuntimeError::Recovery(format!(
                    "{what} hit a limit ({first}), and the state could not be saved to decide it on a fresh instance: {e}"
                )))
            }
        }
    }

    /// The memory a fresh instance gets to decide a limit hit.
    fn canonical_memory_max(&self) -> usize {
        canonical_memory(&self.limits)
    }

    /// The memory limit an instance gets for entries: the configured one,
    /// or what it already holds when an entry accepted on a fresh instance
    /// left it above that (so it is never refused all growth for good).
    fn memory_limit_for(&self, live: &Live) -> usize {
        memory_limit(&self.limits, live)
    }

    fn reset_memory_limit(&mut self) {
        if let Some(live) = &self.live {
            let limit = self.memory_limit_for(live);
            if let Some(live) = &mut self.live {
                live.set_memory_limit(limit);
            }
        }
    }

    /// Poisons the machine for a backstop stop.
    fn backstop(&mut self, message: String) -> RuntimeError {
        self.live = None;
        self.kv_broken = true;
        RuntimeError::Backstop(message)
    }

    /// A fresh instance holding `state` (the initial state for `None`),
    /// loaded with the doubled memory: a state accepted through the doubled
    /// bound must load again wherever it is rebuilt.
    fn fresh_loaded(&self, state: Option<&Arc<[u8]>>) -> Result<Live, RuntimeError> {
        load_fresh(&self.module, &self.limits, self.group, &self.label, state)
    }

    /// Size the next batches so a call spends about a quarter of its budget.
    fn adapt_batch(&mut self, entries: usize) {
        let Some(live) = self.live.as_ref() else { return };
        let per_entry = (live.fuel_used() / entries as u64).max(1);
        self.fuel_per_entry_recent = per_entry;
        if self.module.draws_randomness() {
            return;
        }
        let fit = (self.limits.fuel_per_entry / 4 / per_entry).max(1);
        self.batch_entries = usize::try_from(fit).unwrap_or(usize::MAX).min(self.limits.apply_batch_entries_max);
    }

    fn record_entry(&mut self, entry: &Entry) {
        let cp = &mut self.checkpoint;
        let start = cp.arena.len();
        cp.arena.extend_from_slice(&entry.command);
        cp.since.push(Replay::Entry { index: entry.index, term: entry.term, start, end: cp.arena.len() });
    }

    /// Whether applying `entries` more entries, of at most `command_bytes`
    /// command bytes in all, may move the checkpoint: one `on-snapshot-save`
    /// into memory, a call as long as the guest's state is large.
    pub fn may_checkpoint_after(&self, entries: usize, command_bytes: usize) -> bool {
        if self.native.is_some() || self.module.uses_kv() {
            return false;
        }
        let cp = &self.checkpoint;
        cp.since.len().saturating_add(entries) > self.limits.replay_entries_max
            || cp.arena.len().saturating_add(command_bytes) > self.limits.replay_bytes_max
    }

    fn checkpoint_due(&self) -> bool {
        let cp = &self.checkpoint;
        cp.since.len() > self.limits.replay_entries_max || cp.arena.len() > self.limits.replay_bytes_max
    }

    /// Starts saving the state as it stands (see `save`): the host's
    /// deterministic checkpoints (its digest points, its snapshots). The
    /// checkpoint moves there once the save finished; the apply instance
    /// goes on meanwhile. Costs nothing when nothing was applied since the
    /// last checkpoint, and one save when asked twice at one point. Never
    /// waits: with `SAVES_IN_FLIGHT_MAX` saves in flight, none is started
    /// and the result is `SaveError::Behind`. A save that fails (a state
    /// past its size limit) leaves the checkpoint where it was.
    pub fn checkpoint_begin(&mut self) -> Result<SavedState, RuntimeError> {
        self.checkpoint_start(false)
    }

    fn checkpoint_start(&mut self, wait_for_room: bool) -> Result<SavedState, RuntimeError> {
        if let Some(native) = &self.native {
            let mut out = Vec::new();
            let result = native.save(&mut out).map(|_| out.into()).map_err(SaveError::Guest);
            return Ok(SavedState::ready(result));
        }
        if self.module.uses_kv() {
            return Err(RuntimeError::Guest("a kv state machine's state is its store, not saved bytes".into()));
        }
        self.check_usable()?;
        self.poll_save(false);
        let total = self.checkpoint.since.len();
        if total == 0
            && let Some(bytes) = &self.checkpoint.snapshot
        {
            return Ok(SavedState::ready(Ok(bytes.clone())));
        }
        if let Some(newest) = self.saving.back()
            && newest.items == total
        {
            return Ok(newest.state.clone());
        }
        if self.saving.len() >= SAVES_IN_FLIGHT_MAX {
            if !wait_for_room {
                return Ok(SavedState::ready(Err(SaveError::Behind(self.saving.len()))));
            }
            self.offloaded(|sm| sm.poll_save(true));
        }
        self.begin_save()
    }

    /// `checkpoint_begin`, waited for (and for room to start it).
    pub fn checkpoint_now(&mut self) -> Result<Arc<[u8]>, RuntimeError> {
        let state = self.checkpoint_start(true)?;
        let result = self.offloaded(|sm| {
            let result = state.wait();
            sm.poll_save(false);
            result
        });
        Ok(result?)
    }

    /// What a state digest covers: the state's saved bytes (and the
    /// checkpoint moves there, as `checkpoint_begin`), or for a kv state
    /// machine a sha256 of every pair of its store, in key order.
    pub fn state_for_digest_begin(&mut self) -> Result<SavedState, RuntimeError> {
        if self.module.uses_kv() {
            return Ok(SavedState::ready(Ok(self.kv_digest()?)));
        }
        self.checkpoint_begin()
    }

    /// `state_for_digest_begin`, waited for.
    pub fn state_for_digest(&mut self) -> Result<Arc<[u8]>, RuntimeError> {
        if self.module.uses_kv() {
            return self.kv_digest();
        }
        self.checkpoint_now()
    }

    /// Where the checkpoint stands: for status, metrics and tests.
    pub fn checkpoint_status(&self) -> CheckpointStatus {
        let cp = &self.checkpoint;
        CheckpointStatus {
            replay_items: cp.since.len(),
            replay_bytes: cp.arena.len(),
            saves_in_flight: self.saving.len(),
            saver: self.saver.is_some(),
        }
    }

    /// Starts a save of the state after the whole replay log: from the
    /// newest save in flight, whose saver it takes over once that one is
    /// done, or from the saver at the checkpoint. Without a `Spawn` hook,
    /// saves the apply instance in place instead.
    fn begin_save(&mut self) -> Result<SavedState, RuntimeError> {
        let Some(spawn) = self.spawn.clone() else {
            return self.save_in_place();
        };
        let cp = &self.checkpoint;
        let state = SavedState::pending();
        let after = self.saving.back_mut().map(|newest| {
            newest.handed_on = true;
            (newest.state.clone(), newest.items)
        });
        let saver = if after.is_none() { self.saver.take() } else { None };
        let job = SaveJob {
            module: self.module.clone(),
            limits: self.limits.clone(),
            group: self.group,
            label: self.label.clone(),
            saver,
            after,
            base: cp.snapshot.clone(),
            items: cp.since.clone(),
            arena: cp.arena.clone(),
            state: state.clone(),
        };
        let saving = Saving { state: state.clone(), items: cp.since.len(), arena: cp.arena.len(), handed_on: false };
        self.saving.push_back(saving);
        spawn(Box::new(move || job.run()));
        Ok(state)
    }

    /// Saves the apply instance in place (the call is as long as the state
    /// is large, and stops the group meanwhile) and moves the checkpoint
    /// there: for a machine without a `Spawn` hook, where every replica
    /// pauses at the same index.
    fn save_in_place(&mut self) -> Result<SavedState, RuntimeError> {
        let (items, arena) = (self.checkpoint.since.len(), self.checkpoint.arena.len());
        match self.offloaded(|sm| sm.save_live_to_memory()) {
            Ok(bytes) => {
                let bytes: Arc<[u8]> = bytes.into();
                self.advance_checkpoint(bytes.clone(), items, arena);
                self.save_retry_at = (0, 0);
                Ok(SavedState::ready(Ok(bytes)))
            }
            // The state is intact (restored if the save faulted).
            Err(RuntimeError::Guest(e)) => Ok(self.save_failed(SaveError::Guest(e))),
            Err(RuntimeError::Fault(f)) if f.kind == FaultKind::Backstop => {
                Ok(self.save_failed(SaveError::Failed(f.to_string())))
            }
            Err(RuntimeError::Fault(f)) => Ok(self.save_failed(SaveError::Guest(f.to_string()))),
            Err(e) => Err(e),
        }
    }

    /// A save that failed: the checkpoint stays, and the replay log keeps
    /// growing, up to a bound (`maybe_checkpoint`); the next save is tried
    /// an interval later.
    fn save_failed(&mut self, e: SaveError) -> SavedState {
        tracing::warn!(sm = &*self.label, error = %e, "checkpoint not saved; the replay log keeps growing");
        let cp = &self.checkpoint;
        self.save_retry_at = (
            cp.since.len().saturating_add(self.limits.replay_entries_max),
            cp.arena.len().saturating_add(self.limits.replay_bytes_max),
        );
        SavedState::ready(Err(e))
    }

    /// Takes in the saves in flight that finished, oldest first (with
    /// `wait`, the oldest once it has): the checkpoint moves to each saved
    /// state, and the saver comes back unless a later save took it over.
    fn poll_save(&mut self, mut wait: bool) {
        while let Some(oldest) = self.saving.front() {
            let result = if std::mem::take(&mut wait) { Some(oldest.state.wait()) } else { oldest.state.try_result() };
            let Some(result) = result else { return };
            let Some(done) = self.saving.pop_front() else { return };
            match result {
                Ok(bytes) => {
                    self.advance_checkpoint(bytes, done.items, done.arena);
                    for later in &mut self.saving {
                        later.items -= done.items;
                        later.arena -= done.arena;
                    }
                    if !done.handed_on {
                        self.saver = done.state.take_saver();
                    }
                    self.save_retry_at = (0, 0);
                }
                Err(e) => drop(self.save_failed(e)),
            }
        }
    }

    /// Moves the checkpoint to `bytes`, the state after the replay log's
    /// first `items` items (whose commands are the arena's first `arena`
    /// bytes). A query instance at or past it follows; one behind it is
    /// caught up if close, else dropped (and rebuilt by the next query).
    fn advance_checkpoint(&mut self, bytes: Arc<[u8]>, items: usize, arena: usize) {
        if self.query.as_ref().is_some_and(|q| q.epoch == self.checkpoint_epoch && q.applied < items) {
            self.catch_up_query(QUERY_CATCH_UP_MAX);
        }
        let epoch = self.checkpoint_epoch;
        let cp = &mut self.checkpoint;
        cp.since.drain(..items);
        cp.arena.drain(..arena);
        for item in &mut cp.since {
            if let Replay::Entry { start, end, .. } = item {
                *start -= arena;
                *end -= arena;
            }
        }
        cp.snapshot = Some(bytes);
        self.checkpoint_epoch += 1;
        match &mut self.query {
            Some(q) if q.epoch == epoch && q.applied >= items => {
                q.epoch = self.checkpoint_epoch;
                q.applied -= items;
            }
            _ => self.query = None,
        }
        self.heavy = false;
    }

    /// Starts a checkpoint save when the replay log since the newest one
    /// (in flight, or the checkpoint) is past its bounds and fewer than
    /// `SAVES_IN_FLIGHT_MAX` are in flight. Waits for the oldest save only
    /// while the log since the checkpoint is `SAVING_REPLAY_FACTOR_MAX`
    /// times past them: the bound on its memory.
    fn maybe_checkpoint(&mut self) -> Result<(), RuntimeError> {
        self.poll_save(false);
        if !self.saving.is_empty() && self.replay_past(SAVING_REPLAY_FACTOR_MAX) {
            let started = std::time::Instant::now();
            while !self.saving.is_empty() && self.replay_past(SAVING_REPLAY_FACTOR_MAX) {
                self.offloaded(|sm| sm.poll_save(true));
            }
            let ms = started.elapsed().as_millis() as u64;
            tracing::info!(
                sm = &*self.label,
                ms,
                "applies waited for checkpoint saves (the replay log is at its bound)"
            );
        }
        let cp = &self.checkpoint;
        let (from_items, from_bytes) = self.saving.back().map_or((0, 0), |newest| (newest.items, newest.arena));
        if cp.since.len() - from_items <= self.limits.replay_entries_max
            && cp.arena.len() - from_bytes <= self.limits.replay_bytes_max
        {
            return Ok(());
        }
        let failing = self.save_retry_at != (0, 0);
        if failing && self.replay_past(REPLAY_GROWTH_MAX) {
            self.live = None;
            return Err(RuntimeError::Recovery(format!(
                "no checkpoint could be saved for {} entries; the replay log is at its bound",
                cp.since.len()
            )));
        }
        let (items, bytes) = self.save_retry_at;
        if (cp.since.len() < items && cp.arena.len() < bytes) || self.saving.len() >= SAVES_IN_FLIGHT_MAX {
            return Ok(());
        }
        self.begin_save()?;
        Ok(())
    }

    /// Whether the replay log is more than `factor` times past its bounds.
    fn replay_past(&self, factor: usize) -> bool {
        let cp = &self.checkpoint;
        cp.since.len() > self.limits.replay_entries_max.saturating_mul(factor)
            || cp.arena.len() > self.limits.replay_bytes_max.saturating_mul(factor)
    }

    /// Makes `snapshot` the checkpoint, with an empty replay log. A save in
    /// flight, and the saver, belong to the old one: dropped.
    fn replace_checkpoint(&mut self, snapshot: Option<Arc<[u8]>>) {
        self.checkpoint = Checkpoint { snapshot, ..Checkpoint::default() };
        self.checkpoint_epoch += 1;
        self.saving.clear();
        self.saver = None;
        self.save_retry_at = (0, 0);
    }

    /// The apply instance's state, saved into memory.
    fn save_live_to_memory(&mut self) -> Result<Vec<u8>, RuntimeError> {
        let (result, bytes, _) = self.guarded(|live| live.call_save(Vec::new()))?;
        result.map_err(RuntimeError::Guest)?;
        Ok(bytes)
    }

    /// A fresh instance at the checkpoint plus the replay log (its first
    /// `upto` items), replayed one entry per call with the doubled bounds:
    /// every one of them succeeded before, maybe on a fresh instance.
    fn rebuild(&self, upto: usize) -> Result<Live, RuntimeError> {
        let mut live = self.fresh_loaded(self.checkpoint.snapshot.as_ref())?;
        let fuel = self.limits.fuel_per_entry.saturating_mul(CANONICAL_FACTOR);
        self.replay_into(&mut live, 0, upto, fuel)?;
        live.set_memory_limit(self.memory_limit_for(&live));
        Ok(live)
    }

    /// Replays items `from..upto` of the replay log into `live`, one entry
    /// per call (each is known to fit the budget alone, not necessarily with
    /// its neighbours).
    fn replay_into(&self, live: &mut Live, from: usize, upto: usize, fuel: u64) -> Result<(), RuntimeError> {
        let cp = &self.checkpoint;
        replay_items(live, &cp.since[from..upto], &cp.arena, &self.limits, fuel)
    }

    /// Rebuild the apply instance at the checkpoint plus the replay log.
    fn restore(&mut self) -> Result<(), RuntimeError> {
        self.live = None;
        let live = self.rebuild(self.checkpoint.since.len())?;
        self.live = Some(live);
        Ok(())
    }

    /// Run a guest call on the apply instance that must not change state
    /// (a save); restore the instance if it faults.
    fn guarded<T>(&mut self, call: impl FnOnce(&mut Live) -> Result<T, CallFault>) -> Result<T, RuntimeError> {
        let result = call(self.live()?);
        match result {
            Ok(value) => Ok(value),
            Err(CallFault { fault, .. }) => {
                self.restore()?;
                Err(RuntimeError::Fault(fault))
            }
        }
    }

    /// Brings the query instance up to the apply instance's state if it is
    /// at most `max_behind` items behind; drops it if it falls further
    /// behind or faults.
    fn catch_up_query(&mut self, max_behind: usize) {
        let Some(q) = self.query.as_mut() else { return };
        let total = self.checkpoint.since.len();
        if q.epoch != self.checkpoint_epoch || total - q.applied.min(total) > max_behind {
            self.query = None;
            return;
        }
        let Some(mut q) = self.query.take() else { return };
        let from = q.applied;
        q.live.set_memory_limit(self.canonical_memory_max());
        if self.replay_batched(&mut q.live, from, total).is_ok() {
            let limit = self.memory_limit_for(&q.live);
            q.live.set_memory_limit(limit);
            q.applied = total;
            self.query = Some(q);
        }
    }

    /// Replays items `from..upto` into a query instance, in batches where
    /// the guest draws no randomness (its heap need not match anyone's).
    fn replay_batched(&self, live: &mut Live, from: usize, upto: usize) -> Result<(), RuntimeError> {
        let cp = &self.checkpoint;
        replay_items_batched(live, &self.module, &cp.since[from..upto], &cp.arena, &self.limits)
    }

    /// The query instance, at the apply instance's state. Builds it when
    /// missing (a load and a replay: off the async worker).
    fn sync_query(&mut self) -> Result<(), RuntimeError> {
        let total = self.checkpoint.since.len();
        let current = self.query.as_ref().is_some_and(|q| q.epoch == self.checkpoint_epoch);
        let behind = self.query.as_ref().map_or(usize::MAX, |q| total.saturating_sub(q.applied));
        if current && behind == 0 {
            return Ok(());
        }
        let in_place = self.in_place() && current && behind <= QUERY_CATCH_UP_IN_PLACE_MAX;
        let work = |sm: &mut Self| -> Result<(), RuntimeError> {
            if sm.query.as_ref().is_some_and(|q| q.epoch == sm.checkpoint_epoch) {
                sm.catch_up_query(usize::MAX);
                if sm.query.is_some() {
                    return Ok(());
                }
            }
            sm.query = None;
            // Batched first; a batch can fail where its entries one by one
            // did not (the host's copy bound on a call's results), so then
            // one entry per call. A query instance that cannot be built
            // fails the query, never the group.
            let live = match sm.build_query_instance(total, true) {
                Ok(live) => live,
                Err(_) => sm
                    .build_query_instance(total, false)
                    .map_err(|e| RuntimeError::Guest(format!("the query instance cannot be built: {e}")))?,
            };
            sm.query = Some(QueryInstance { live, epoch: sm.checkpoint_epoch, applied: total });
            Ok(())
        };
        if in_place { work(self) } else { self.offloaded(work) }
    }

    /// A query instance at the checkpoint plus the first `upto` items of the
    /// replay log, replayed in batches or one entry per call.
    fn build_query_instance(&self, upto: usize, batched: bool) -> Result<Live, RuntimeError> {
        let mut live = self.fresh_loaded(self.checkpoint.snapshot.as_ref())?;
        if batched {
            self.replay_batched(&mut live, 0, upto)?;
        } else {
            self.replay_into(&mut live, 0, upto, self.limits.fuel_per_entry.saturating_mul(CANONICAL_FACTOR))?;
        }
        live.set_memory_limit(self.memory_limit_for(&live));
        Ok(live)
    }

    /// Answer a read-only query, on the query instance: whatever the guest
    /// does in it, the replicated state does not change.
    pub fn query(&mut self, request: &[u8]) -> Result<Bytes, RuntimeError> {
        if let Some(native) = &self.native {
            return native.query(request).map(Bytes::from).map_err(RuntimeError::Guest);
        }
        self.check_usable()?;
        if self.module.uses_kv() {
            return self.kv_query(request);
        }
        if self.offload.is_some() && !self.offloaded && self.heavy {
            return self.offloaded(|sm| sm.query(request));
        }
        self.sync_query()?;
        let budget = self.limits.fuel_per_query;
        let fuel = if self.in_place() { budget.min(IN_PLACE_FUEL_MAX) } else { budget };
        let Some(q) = self.query.as_mut() else {
            return Err(RuntimeError::Instantiate("the query instance is missing".into()));
        };
        match q.live.call_query(request, fuel) {
            Ok(result) => result.map(Bytes::from).map_err(RuntimeError::Guest),
            Err(f) => {
                // Whatever the guest left half done goes with the instance.
                self.query = None;
                if f.out_of_slice(budget, fuel) {
                    self.heavy = true;
                    return self.offloaded(|sm| sm.query(request));
                }
                Err(RuntimeError::Fault(f.fault))
            }
        }
    }

    fn check_usable(&self) -> Result<(), RuntimeError> {
        // A kv state machine keeps no instance between calls.
        let gone = if self.module.uses_kv() { self.kv_broken } else { self.live.is_none() };
        if gone { Err(RuntimeError::Poisoned) } else { Ok(()) }
    }

    /// Stream the state into `out`; returns `out` and the bytes written.
    pub fn save_snapshot<W: Write + Send + 'static>(&mut self, mut out: W) -> Result<(W, u64), RuntimeError> {
        if let Some(native) = &self.native {
            let bytes = native.save(&mut out).map_err(RuntimeError::Guest)?;
            return Ok((out, bytes));
        }
        if self.module.uses_kv() {
            return self.kv_save(out);
        }
        let (result, out, bytes) = self.guarded(|live| live.call_save(out))?;
        result.map_err(RuntimeError::Guest)?;
        Ok((out, bytes))
    }

    /// Replace the state with a snapshot read from `input`. Loads into a
    /// fresh instance, so a refused or faulting load leaves the current state
    /// untouched; on success the snapshot also becomes the checkpoint.
    pub fn load_snapshot<R: Read + Send + 'static>(&mut self, input: R) -> Result<(), RuntimeError> {
        self.load_snapshot_of(input, 0)
    }

    /// `load_snapshot` of a snapshot `bytes` long: the load gets fuel for
    /// each of them (`LOAD_FUEL_PER_BYTE`).
    pub fn load_snapshot_of<R: Read + Send + 'static>(&mut self, mut input: R, bytes: u64) -> Result<(), RuntimeError> {
        if let Some(native) = &mut self.native {
            return native.load(&mut input).map_err(RuntimeError::Guest);
        }
        if self.module.uses_kv() {
            return self.kv_load(input);
        }
        let mut fresh = Live::instantiate_for(&self.module, &self.limits, self.group, self.label.clone())?;
        match fresh.call_load(input, bytes) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(RuntimeError::Guest(e)),
            Err(f) => return Err(RuntimeError::Fault(f.fault)),
        }
        // The checkpoint is taken from the loaded instance before anything
        // changes, so a save that fails leaves the machine as it was.
        let bytes = match fresh.call_save(Vec::new()) {
            Ok((Ok(()), bytes, _)) => bytes,
            Ok((Err(e), _, _)) => {
                return Err(RuntimeError::Guest(format!("the loaded state cannot be saved again: {e}")));
            }
            Err(f) => return Err(RuntimeError::Fault(f.fault)),
        };
        self.live = Some(fresh);
        self.query = None;
        self.replace_checkpoint(Some(bytes.into()));
        Ok(())
    }

    /// Tell the guest this replica leads in `term`: on the query instance,
    /// so the replicated state cannot depend on it.
    pub fn on_leader_start(&mut self, term: u64) -> Result<(), RuntimeError> {
        self.leader_hook(Some(term))
    }

    /// Tell the guest this replica no longer leads (on the query instance).
    pub fn on_leader_stop(&mut self) -> Result<(), RuntimeError> {
        self.leader_hook(None)
    }

    fn leader_hook(&mut self, term: Option<u64>) -> Result<(), RuntimeError> {
        // A kv state machine's instance lives for one call: a hook would be
        // forgotten at once.
        if self.native.is_some() || self.module.uses_kv() {
            return Ok(());
        }
        self.check_usable()?;
        self.sync_query()?;
        let Some(q) = self.query.as_mut() else { return Ok(()) };
        match q.live.call_leader_hook(term) {
            Ok(()) => Ok(()),
            Err(f) => {
                self.query = None;
                Err(RuntimeError::Fault(f.fault))
            }
        }
    }

    /// Tell the guest a configuration committed. Replayed after a fault, like
    /// an entry.
    pub fn on_configuration_committed(&mut self, voters: &[u64], learners: &[u64]) -> Result<(), RuntimeError> {
        if self.native.is_some() {
            return Ok(());
        }
        if self.module.uses_kv() {
            return self.kv_configuration(voters, learners);
        }
        let fuel = self.limits.fuel_per_query;
        match self.guarded(|live| live.call_config(voters, learners, fuel)) {
            Ok(()) => {}
            // Where a backstop stops a call depends on the machine: this
            // replica cannot know what the others made of the hook.
            Err(RuntimeError::Fault(f)) if f.kind == FaultKind::Backstop => return Err(self.backstop(f.message)),
            // As for an entry: decided on a fresh instance, not this heap.
            Err(RuntimeError::Fault(f)) if matches!(f.kind, FaultKind::MemoryLimit | FaultKind::OutOfFuel) => {
                return self.decide_hook_on_fresh_instance(voters, learners, f);
            }
            Err(e) => return Err(e),
        }
        self.checkpoint.since.push(Replay::Configuration(Box::new((voters.to_vec(), learners.to_vec()))));
        Ok(())
    }

    /// `decide_on_fresh_instance` for a configuration hook that hit a limit
    /// (the apply instance already restored to before it): on success the
    /// fresh instance, hook applied, becomes the apply instance; otherwise
    /// the hook's fault, with nothing of it kept, on every replica alike.
    fn decide_hook_on_fresh_instance(
        &mut self,
        voters: &[u64],
        learners: &[u64],
        first: GuestFault,
    ) -> Result<(), RuntimeError> {
        let state = self.save_for_decision("a configuration hook", &first)?;
        let mut fresh = self.fresh_loaded(Some(&state))?;
        let fuel = self.limits.fuel_per_query.saturating_mul(CANONICAL_FACTOR);
        match fresh.call_config(voters, learners, fuel) {
            Ok(()) => {
                fresh.set_memory_limit(self.memory_limit_for(&fresh));
                self.live = Some(fresh);
                self.replace_checkpoint(Some(state));
                self.checkpoint.since.push(Replay::Configuration(Box::new((voters.to_vec(), learners.to_vec()))));
                Ok(())
            }
            Err(CallFault { fault }) if fault.kind == FaultKind::Backstop => Err(self.backstop(fault.message)),
            Err(CallFault { mut fault }) => {
                fault.message.push_str(" (decided on a fresh instance with twice the limit)");
                Err(RuntimeError::Fault(fault))
            }
        }
    }
}

/// Pairs written to the store at once while a snapshot loads.
const KV_LOAD_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// A kv state machine (see `kv`): every call on a fresh instance, the state
/// in the store.
impl StateMachine {
    /// Whether this runs a kv state machine.
    pub fn uses_kv(&self) -> bool {
        self.module.uses_kv()
    }

    /// Gives a kv state machine its group's store (a deploy or a new limit
    /// hands the next machine the same one). Ignored by any other.
    pub fn attach_kv(&mut self, store: KvHandle) {
        if self.module.uses_kv() {
            self.kv = Some(store);
        }
    }

    /// The store `attach_kv` gave.
    pub fn kv_store(&self) -> Option<KvHandle> {
        self.kv.clone()
    }

    fn kv_handle(&self) -> Result<KvHandle, RuntimeError> {
        self.kv.clone().ok_or_else(|| RuntimeError::Store("a kv state machine has no store attached".into()))
    }

    /// Leaves the writes of applied entries to `commit_kv`, which the
    /// caller calls with records of its own (its applied index, its
    /// session table) after every `apply`, before anything reads the store
    /// (a query, a save, a digest).
    pub fn defer_kv_commits(&mut self) {
        self.kv_deferred = true;
    }

    /// Commits the writes of the entries applied since the last commit
    /// together with `records` (see `defer_kv_commits`).
    /// The store's sum moves with them, in the same commit.
    pub fn commit_kv(&mut self, mut records: KvWrites) -> Result<(), RuntimeError> {
        let store = self.kv_handle()?;
        let writes = std::mem::take(&mut self.kv_pending);
        if writes.is_empty() && records.is_empty() {
            return Ok(());
        }
        let store_err = |e: crate::KvError| RuntimeError::Store(e.to_string());
        let mut store = store.lock().map_err(|_| RuntimeError::Store("the store's lock is poisoned".into()))?;
        if !writes.is_empty() {
            let mut sum = match self.kv_sum {
                Some(sum) => sum,
                None => Self::kv_sum_of(&*store)?,
            };
            for (key, value) in writes.iter() {
                if let Some(old) = store.get(key).map_err(store_err)? {
                    sum.sub(key, &old);
                }
                if let Some(value) = value {
                    sum.add(key, value);
                }
            }
            records.insert(KV_SUM_RECORD.to_vec(), Some(sum.to_bytes().to_vec()));
            // Cached only once committed: a failed commit stops the group.
            self.kv_sum = None;
            store.commit(&writes, &records).map_err(store_err)?;
            self.kv_sum = Some(sum);
            return Ok(());
        }
        store.commit(&writes, &records).map_err(store_err)
    }

    /// The store's sum: its record, or (a store that has none yet) a scan.
    fn kv_sum_of(store: &dyn KvStore) -> Result<KvSum, RuntimeError> {
        let store_err = |e: crate::KvError| RuntimeError::Store(e.to_string());
        if let Some(bytes) = store.record(KV_SUM_RECORD).map_err(store_err)? {
            return KvSum::from_bytes(&bytes)
                .ok_or_else(|| RuntimeError::Store("the store's sum record is damaged".into()));
        }
        let mut sum = KvSum::default();
        store
            .scan(&[], None, &mut |k, v| {
                sum.add(k, v);
                true
            })
            .map_err(store_err)?;
        Ok(sum)
    }

    /// Commits what `apply` left unless the caller does (`defer_kv_commits`).
    fn kv_commit_unless_deferred(&mut self) -> Result<(), RuntimeError> {
        if self.kv_deferred { Ok(()) } else { self.commit_kv(KvWrites::default()) }
    }

    /// Refuses to read the store whole while writes wait for the caller's
    /// commit: what it read would not be the state at any index.
    fn kv_committed(&mut self) -> Result<(), RuntimeError> {
        self.kv_commit_unless_deferred()?;
        if self.kv_pending.is_empty() {
            Ok(())
        } else {
            Err(RuntimeError::Store("the store was read whole before the applied writes were committed".into()))
        }
    }

    /// A fresh instance holding a call on the store, over `base` (writes
    /// not committed yet).
    fn kv_instance(&self, store: &KvHandle, writable: bool, base: KvWrites) -> Result<Live, RuntimeError> {
        let mut live = Live::instantiate_for(&self.module, &self.limits, self.group, self.label.clone())?;
        live.store.data_mut().kv = Some(KvCall::new(store.clone(), writable, base));
        Ok(live)
    }

    /// Takes the call's writes, and the uncommitted ones it was given, back
    /// from an instance; or the store's own failure during the call.
    fn kv_finish(live: &mut Live) -> Result<(KvWrites, KvWrites), RuntimeError> {
        match live.store.data_mut().kv.take() {
            Some(KvCall { failed: Some(e), .. }) => Err(RuntimeError::Store(e.to_string())),
            Some(call) => Ok((call.base, call.writes)),
            None => Err(RuntimeError::Store("the call's store went missing".into())),
        }
    }

    /// Applies entries one per call, each on a fresh instance: in place
    /// within the fuel slice, the rest through the offload hook once one
    /// entry needs more (it is run again there, from nothing: its writes
    /// went with the instance).
    fn kv_apply(&mut self, entries: &[Entry]) -> Result<Vec<ApplyResult>, RuntimeError> {
        self.check_usable()?;
        let store = self.kv_handle()?;
        let mut out = Vec::with_capacity(entries.len());
        let budget = self.limits.fuel_per_entry;
        let mut spent = 0u64;
        for (at, entry) in entries.iter().enumerate() {
            let slice = if self.in_place() { Some(IN_PLACE_FUEL_MAX.saturating_sub(spent)) } else { None };
            let fuel = slice.map_or(budget, |s| s.min(budget));
            match self.kv_entry(&store, entry, fuel)? {
                Some((result, used)) => {
                    spent = spent.saturating_add(used);
                    out.push(result);
                }
                None => {
                    return self.offloaded(|sm| {
                        for entry in &entries[at..] {
                            match sm.kv_entry(&store, entry, budget)? {
                                Some((result, _)) => out.push(result),
                                None => unreachable!("a full budget is not a slice"),
                            }
                        }
                        sm.kv_commit_unless_deferred()?;
                        Ok(out)
                    });
                }
            }
        }
        self.kv_commit_unless_deferred()?;
        Ok(out)
    }

    /// One entry on a fresh instance with `fuel`: its result and the fuel
    /// it used, or `None` when it ran out of a slice smaller than its
    /// budget (nothing of it kept).
    fn kv_entry(
        &mut self,
        store: &KvHandle,
        entry: &Entry,
        fuel: u64,
    ) -> Result<Option<(ApplyResult, u64)>, RuntimeError> {
        let budget = self.limits.fuel_per_entry;
        // An instance that cannot be made stops the group: what is
        // pending goes with it.
        let base = std::mem::take(&mut self.kv_pending);
        let mut live = self.kv_instance(store, true, base)?;
        let call = live.call_apply(std::slice::from_ref(entry), fuel);
        let (base, writes) = Self::kv_finish(&mut live)?;
        self.kv_pending = base;
        let used = live.fuel_used();
        let result = match call {
            Ok(results) => match results.into_results().next() {
                Some(Ok(reply)) => {
                    self.kv_pending.merge(writes);
                    Ok(reply)
                }
                Some(Err(message)) => Err(ApplyError::Rejected(message)),
                None => return Err(RuntimeError::Recovery("on-apply returned no result for one entry".into())),
            },
            Err(f) if f.out_of_slice(budget, fuel) => return Ok(None),
            Err(CallFault { fault }) if fault.kind == FaultKind::Backstop => {
                return Err(self.backstop(fault.message));
            }
            Err(CallFault { fault }) => {
                tracing::warn!(sm = &*self.label, index = entry.index, %fault, "entry rejected; its writes discarded");
                Err(ApplyError::Fault(fault))
            }
        };
        Ok(Some((result, used)))
    }

    /// A query on a fresh instance over the store, read-only.
    fn kv_query(&mut self, request: &[u8]) -> Result<Bytes, RuntimeError> {
        let store = self.kv_handle()?;
        let budget = self.limits.fuel_per_query;
        let fuel = if self.in_place() { budget.min(IN_PLACE_FUEL_MAX) } else { budget };
        let mut live = self.kv_instance(&store, false, self.kv_pending.clone())?;
        let call = live.call_query(request, fuel);
        Self::kv_finish(&mut live)?;
        match call {
            Ok(result) => result.map(Bytes::from).map_err(RuntimeError::Guest),
            Err(f) if f.out_of_slice(budget, fuel) => self.offloaded(|sm| sm.kv_query(request)),
            Err(f) => Err(RuntimeError::Fault(f.fault)),
        }
    }

    /// A configuration hook, like an entry: on a fresh instance, its writes
    /// kept only if it returns.
    fn kv_configuration(&mut self, voters: &[u64], learners: &[u64]) -> Result<(), RuntimeError> {
        self.check_usable()?;
        let store = self.kv_handle()?;
        let base = std::mem::take(&mut self.kv_pending);
        let mut live = self.kv_instance(&store, true, base)?;
        let call = live.call_config(voters, learners, self.limits.fuel_per_query);
        let (base, writes) = Self::kv_finish(&mut live)?;
        self.kv_pending = base;
        match call {
            Ok(()) => {
                self.kv_pending.merge(writes);
                self.kv_commit_unless_deferred()
            }
            Err(CallFault { fault }) if fault.kind == FaultKind::Backstop => Err(self.backstop(fault.message)),
            Err(CallFault { fault }) => Err(RuntimeError::Fault(fault)),
        }
    }

    /// Visits every pair of the store in key order.
    fn kv_each(&self, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), RuntimeError> {
        let store = self.kv_handle()?;
        let store = store.lock().map_err(|_| RuntimeError::Store("the store's lock is poisoned".into()))?;
        store.scan(&[], None, visit).map_err(|e| RuntimeError::Store(e.to_string()))
    }

    /// The store as a snapshot (see `kv::write_snapshot`).
    fn kv_save<W: Write>(&mut self, out: W) -> Result<(W, u64), RuntimeError> {
        self.kv_committed()?;
        let store = self.kv_handle()?;
        let store = store.lock().map_err(|_| RuntimeError::Store("the store's lock is poisoned".into()))?;
        crate::kv::write_snapshot(|visit| store.scan(&[], None, visit), out).map_err(RuntimeError::Guest)
    }

    /// The store as it is now (every applied entry committed), to write as
    /// a snapshot on another thread while applies go on. `None` for a
    /// state machine that is not a kv one.
    pub fn kv_snapshot(&mut self) -> Result<Option<KvSnapshot>, RuntimeError> {
        if !self.module.uses_kv() {
            return Ok(None);
        }
        self.kv_committed()?;
        let store = self.kv_handle()?;
        let store = store.lock().map_err(|_| RuntimeError::Store("the store's lock is poisoned".into()))?;
        let capture = store.capture().map_err(|e| RuntimeError::Store(e.to_string()))?;
        Ok(Some(KvSnapshot::new(capture)))
    }

    /// Replaces a kv state machine's store with a checkpoint's files (see
    /// `KvStore::restore`). On an error the store is as it was, but the
    /// group must stop (`Recovery`): the snapshot the files came from is
    /// the node's latest already.
    pub fn restore_kv(&mut self, files: &[(String, std::path::PathBuf)]) -> Result<(), RuntimeError> {
        if !self.module.uses_kv() {
            return Err(RuntimeError::Guest(
                "a key-value store's files for a state machine that keeps no store".into(),
            ));
        }
        let store = self.kv_handle()?;
        let mut store = store.lock().map_err(|_| RuntimeError::Store("the store's lock is poisoned".into()))?;
        store
            .restore(files)
            // The snapshot is committed by now: a restart loads it again.
            .map_err(|e| RuntimeError::Recovery(format!("cannot restore the store from the snapshot's files: {e}")))?;
        self.kv_pending = KvWrites::default();
        self.kv_sum = None;
        Ok(())
    }

    /// Replaces the store with a snapshot `kv_save` wrote. A file that is
    /// not one is refused before anything changes; one that breaks off
    /// once the store is being replaced leaves it half loaded, and the
    /// group must stop (a restart loads the snapshot again).
    fn kv_load<R: Read>(&mut self, mut input: R) -> Result<(), RuntimeError> {
        let store = self.kv_handle()?;
        let mut magic = [0u8; 8];
        input
            .read_exact(&mut magic)
            .map_err(|e| RuntimeError::Guest(format!("not a key-value store snapshot: {e}")))?;
        if &magic != KV_SNAPSHOT_MAGIC {
            return Err(RuntimeError::Guest("not a key-value store snapshot (its first bytes differ)".into()));
        }
        let half = |what: String| {
            RuntimeError::Recovery(format!(
                "the store's snapshot broke off while loading ({what}): the store is half loaded"
            ))
        };
        self.kv_pending = KvWrites::default();
        self.kv_sum = None;
        let mut sum = KvSum::default();
        let mut store = store.lock().map_err(|_| RuntimeError::Store("the store's lock is poisoned".into()))?;
        store.clear().map_err(|e| RuntimeError::Store(e.to_string()))?;
        let none = KvWrites::default();
        let mut batch = KvWrites::default();
        let mut batch_bytes = 0usize;
        let read_u32 = |input: &mut R| -> Result<u32, RuntimeError> {
            let mut word = [0u8; 4];
            input.read_exact(&mut word).map_err(|e| half(e.to_string()))?;
            Ok(u32::from_le_bytes(word))
        };
        let mut last: Option<Vec<u8>> = None;
        loop {
            let key_len = read_u32(&mut input)?;
            if key_len == KV_SNAPSHOT_END {
                break;
            }
            if key_len as usize > crate::kv::KV_KEY_BYTES_MAX {
                return Err(half(format!("a key of {key_len} bytes")));
            }
            let mut key = vec![0u8; key_len as usize];
            input.read_exact(&mut key).map_err(|e| half(e.to_string()))?;
            let value_len = read_u32(&mut input)?;
            if value_len as usize > crate::kv::KV_VALUE_BYTES_MAX {
                return Err(half(format!("a value of {value_len} bytes")));
            }
            let mut value = vec![0u8; value_len as usize];
            input.read_exact(&mut value).map_err(|e| half(e.to_string()))?;
            if last.as_ref().is_some_and(|l| *l >= key) {
                return Err(half("keys out of order".into()));
            }
            batch_bytes += key.len() + value.len();
            sum.add(&key, &value);
            last = Some(key.clone());
            batch.insert(key, Some(value));
            if batch_bytes >= KV_LOAD_BATCH_BYTES {
                store.commit(&batch, &none).map_err(|e| RuntimeError::Store(e.to_string()))?;
                batch = KvWrites::default();
                batch_bytes = 0;
            }
        }
        let mut records = KvWrites::default();
        records.insert(KV_SUM_RECORD.to_vec(), Some(sum.to_bytes().to_vec()));
        store.commit(&batch, &records).map_err(|e| RuntimeError::Store(e.to_string()))?;
        self.kv_sum = Some(sum);
        Ok(())
    }

    /// What a digest covers of the store: its sum (see `KvSum`), kept with
    /// every commit, so it costs nothing that grows with the state.
    fn kv_digest(&mut self) -> Result<Arc<[u8]>, RuntimeError> {
        self.kv_committed()?;
        let sum = match self.kv_sum {
            Some(sum) => sum,
            None => {
                let store = self.kv_handle()?;
                let store = store.lock().map_err(|_| RuntimeError::Store("the store's lock is poisoned".into()))?;
                Self::kv_sum_of(&*store)?
            }
        };
        self.kv_sum = Some(sum);
        Ok(Arc::from(&sum.to_bytes()[..]))
    }

    /// Bytes of the applied writes not committed yet.
    pub fn kv_pending_bytes(&self) -> usize {
        self.kv_pending.bytes()
    }

    /// Pairs in a kv state machine's store, and the bytes of their keys and
    /// values, as of the last commit.
    pub fn kv_size(&mut self) -> Result<Option<(u64, u64)>, RuntimeError> {
        if !self.module.uses_kv() {
            return Ok(None);
        }
        if self.kv_sum.is_none() {
            let store = self.kv_handle()?;
            let store = store.lock().map_err(|_| RuntimeError::Store("the store's lock is poisoned".into()))?;
            self.kv_sum = Some(Self::kv_sum_of(&*store)?);
        }
        Ok(self.kv_sum.map(|s| (s.pairs(), s.bytes())))
    }

    /// The store's sum computed afresh from every pair: what the kept sum
    /// must equal (for tests and checks).
    pub fn kv_sum_by_scan(&mut self) -> Result<Option<[u8; crate::kv::KV_SUM_BYTES]>, RuntimeError> {
        if !self.module.uses_kv() {
            return Ok(None);
        }
        let mut sum = KvSum::default();
        self.kv_each(&mut |k, v| {
            sum.add(k, v);
            true
        })?;
        Ok(Some(sum.to_bytes()))
    }
}
