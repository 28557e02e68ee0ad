//! A running state machine: apply, query, snapshot, with guest faults
//! contained to the entry that caused them.
//!
//! Owns one live instance of a module plus an in-memory checkpoint. Must
//! never let a fault change what any other entry returns, and never report a
//! state that differs from "every successful entry applied, in order".
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
//! 3. an entry that faults on its own gets an error result and is *not*
//!    added to the log, so the state is as if it never ran; the instance is
//!    restored again and the rest of the batch goes on.
//!
//! Fuel: every `on-apply` call gets [`Limits::fuel_per_entry`], however many
//! entries it carries. A batch that fits succeeds entry by entry, and each of
//! its entries would also fit alone; a batch that does not is re-run one
//! entry per call. So an entry fails exactly when it alone exceeds the
//! budget, whatever the batching, and replicas that batch differently agree.
//! To keep heavy entries off that slow path, the runtime sizes batches from
//! the fuel recent entries used, aiming at a quarter of the budget per call.
//!
//! The checkpoint moves forward (one `on-snapshot-save` into memory) once the
//! log since it passes [`Limits::replay_entries_max`] entries or
//! [`Limits::replay_bytes_max`] bytes, which bounds both the replay work
//! after a fault and the memory the log holds. The price is one in-memory
//! save per that many entries, and a copy of the state in memory: cheap for
//! small states, worth raising the bounds for large ones. If a restore itself fails (a
//! replayed entry that succeeded before now faults, which only a guest whose
//! behaviour depends on its heap layout can cause), the state machine is
//! poisoned: every later call returns [`RuntimeError::Poisoned`] and the
//! caller must stop the group rather than diverge.
//!
//! Known limit: fuel use and memory growth depend on the guest's heap as well
//! as on the entry. A replica restored from a snapshot has a fresher heap than
//! one that ran from the start, so an entry within a hair of a limit could
//! fault on one and not the other. Limits are meant as guards against runaway
//! entries, far above what well-behaved entries use.

use std::io::{Cursor, Read, Write};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime::component::{Func, Resource, TypedFunc};
use wasmtime::{Store, Trap};

use crate::abi::{Entries, Replies};
use crate::engine::Limits;
use crate::host::{HostState, ReaderRes, SharedWrite, WriterRes};
use crate::module::{Module, ModuleKind};
use crate::native::Native;

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
}

/// A fault in one call.
struct CallFault {
    fault: GuestFault,
}

impl Live {
    pub(crate) fn instantiate(module: &Module, limits: &Limits, label: Arc<str>) -> Result<Live, RuntimeError> {
        let ModuleKind::Wasm(inner) = &module.kind else {
            return Err(RuntimeError::Instantiate("a native machine has no wasm instance".into()));
        };
        let mut store = Store::new(&inner.engine.inner, HostState::new(limits.memory_bytes_max, label));
        store.limiter(|state| &mut state.limiter);
        let err = |e: wasmtime::Error| RuntimeError::Instantiate(format!("{e:#}"));
        store.set_fuel(limits.fuel_per_query).map_err(err)?;
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
        Ok(Live { store, on_apply, query, save, load, leader_start, leader_stop, config, limits: limits.clone() })
    }

    /// Reset per-call state: fuel, log budget, memory flag, randomness.
    fn begin_call(&mut self, fuel: u64) -> Result<(), CallFault> {
        let log_budget = self.limits.log_lines_per_call_max;
        let state = self.store.data_mut();
        state.log_budget = log_budget;
        state.limiter.memory_limit_hit = false;
        state.random.rewind();
        self.store.set_fuel(fuel).map_err(|e| self.fault(e))
    }

    fn classify(&self, err: wasmtime::Error) -> GuestFault {
        let kind = if self.store.data().limiter.memory_limit_hit {
            FaultKind::MemoryLimit
        } else if let Some(trap) = err.downcast_ref::<Trap>() {
            if *trap == Trap::OutOfFuel { FaultKind::OutOfFuel } else { FaultKind::Trap }
        } else if err.downcast_ref::<wasmtime_wasi::I32Exit>().is_some() {
            FaultKind::Exit
        } else {
            FaultKind::Trap
        };
        let mut message = match kind {
            FaultKind::OutOfFuel => "the call used its whole fuel budget".to_string(),
            FaultKind::MemoryLimit => format!("the guest hit the {}-byte memory limit", self.limits.memory_bytes_max),
            // A Rust panic reaches the host as `unreachable`.
            _ => match err.downcast_ref::<Trap>() {
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

    /// Fuel the last call left unspent.
    fn fuel_left(&self) -> u64 {
        self.store.get_fuel().unwrap_or(0)
    }

    /// The guest's own results, one per entry, lifted by `abi::Replies`;
    /// mapped by the caller straight into its output.
    fn call_apply(&mut self, entries: &[Entry]) -> Result<Replies, CallFault> {
        self.begin_call(self.limits.fuel_per_entry)?;
        // SAFETY: the signature was checked in `instantiate`.
        let f: ApplyFn<'_> = unsafe { TypedFunc::new_unchecked(self.on_apply) };
        let (results,) = f.call(&mut self.store, (Entries(entries),)).map_err(|e| self.fault(e))?;
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

    fn call_query(&mut self, request: &[u8]) -> Result<Result<Vec<u8>, String>, CallFault> {
        self.begin_call(self.limits.fuel_per_query)?;
        // SAFETY: the signature was checked in `instantiate`.
        let f: QueryFn<'_> = unsafe { TypedFunc::new_unchecked(self.query) };
        let (result,) = f.call(&mut self.store, (request,)).map_err(|e| self.fault(e))?;
        Ok(result)
    }

    fn call_config(&mut self, voters: &[u64], learners: &[u64]) -> Result<(), CallFault> {
        self.begin_call(self.limits.fuel_per_query)?;
        // SAFETY: the signature was checked in `instantiate`.
        let f: ConfigFn<'_> = unsafe { TypedFunc::new_unchecked(self.config) };
        f.call(&mut self.store, (voters, learners)).map_err(|e| self.fault(e))
    }

    fn call_save<W: Write + Send + 'static>(&mut self, out: W) -> Result<(Result<(), String>, W, u64), CallFault> {
        self.begin_call(self.limits.fuel_per_snapshot)?;
        let shared = Arc::new(Mutex::new(out));
        let sink = Box::new(SharedWrite(shared.clone()));
        let res = self.store.data_mut().table().push(WriterRes { sink, bytes: 0 }).map_err(|e| self.fault(e.into()))?;
        let rep = Resource::<WriterRes>::new_borrow(res.rep());
        // SAFETY: the signature was checked in `instantiate`.
        let f: SaveFn = unsafe { TypedFunc::new_unchecked(self.save) };
        let called = f.call(&mut self.store, (rep,));
        let writer = self.store.data_mut().table().delete(res);
        let (result,) = called.map_err(|e| self.fault(e))?;
        let writer = writer.map_err(|e| self.fault(e.into()))?;
        let bytes = writer.bytes;
        drop(writer);
        let out = match Arc::try_unwrap(shared) {
            Ok(mutex) => mutex.into_inner().map_err(|_| self.protocol("snapshot sink poisoned"))?,
            Err(_) => return Err(self.protocol("snapshot sink still shared after the call")),
        };
        Ok((result, out, bytes))
    }

    fn call_load<R: Read + Send + 'static>(&mut self, input: R) -> Result<Result<(), String>, CallFault> {
        self.begin_call(self.limits.fuel_per_snapshot)?;
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

/// A running state machine. See the module docs for its fault model.
///
/// A bench-only native machine (see [`crate::native`]) runs in `native`
/// instead, with no instance, checkpoint or fault containment: every public
/// method hands it the call first.
pub struct StateMachine {
    native: Option<Native>,
    module: Module,
    limits: Limits,
    label: Arc<str>,
    /// `None` once a restore failed: nothing may run any more.
    live: Option<Live>,
    checkpoint: Checkpoint,
    /// Entries per `on-apply` call, adapted to the fuel entries use so a
    /// call stays well inside its budget. 1 ..= apply_batch_entries_max.
    batch_entries: usize,
}

impl StateMachine {
    /// Instantiate `module` in its initial state. `label` tags the guest's
    /// log lines (e.g. "group 7 node 2").
    pub fn new(module: &Module, limits: Limits, label: &str) -> Result<Self, RuntimeError> {
        assert!(limits.apply_batch_entries_max > 0, "apply_batch_entries_max must be positive");
        let label: Arc<str> = label.into();
        let batch_entries = limits.apply_batch_entries_max;
        if let ModuleKind::Native(kind) = module.kind {
            tracing::warn!(sm = &*label, ?kind, "running a bench-only native state machine: no sandbox, fuel or fault containment");
            return Ok(Self {
                native: Some(kind.instantiate()),
                module: module.clone(),
                limits,
                label,
                live: None,
                checkpoint: Checkpoint::default(),
                batch_entries,
            });
        }
        let live = Live::instantiate(module, &limits, label.clone())?;
        Ok(Self {
            native: None,
            module: module.clone(),
            limits,
            label,
            live: Some(live),
            checkpoint: Checkpoint::default(),
            batch_entries,
        })
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
        let mut out = Vec::with_capacity(entries.len());
        let mut rest = entries;
        while !rest.is_empty() {
            let n = rest.len().min(self.batch_entries);
            self.apply_batch(&rest[..n], &mut out)?;
            rest = &rest[n..];
        }
        self.maybe_checkpoint()?;
        debug_assert_eq!(out.len(), entries.len());
        Ok(out)
    }

    /// One `on-apply` call; on a fault, restore and go one entry per call.
    fn apply_batch(&mut self, batch: &[Entry], out: &mut Vec<ApplyResult>) -> Result<(), RuntimeError> {
        let call = self.live()?.call_apply(batch);
        match call {
            Ok(results) => {
                self.adapt_batch(batch.len());
                for entry in batch {
                    self.record_entry(entry);
                }
                out.extend(results.into_results().map(|r| r.map_err(ApplyError::Rejected)));
            }
            Err(CallFault { fault }) => {
                self.restore()?;
                if let [entry] = batch {
                    tracing::warn!(sm = &*self.label, index = entry.index, %fault, "entry rejected");
                    out.push(Err(ApplyError::Fault(fault)));
                } else {
                    for entry in batch {
                        self.apply_batch(std::slice::from_ref(entry), out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Size the next batches so a call spends about a quarter of its budget.
    fn adapt_batch(&mut self, entries: usize) {
        let Some(live) = self.live.as_ref() else { return };
        let used = self.limits.fuel_per_entry.saturating_sub(live.fuel_left());
        let per_entry = (used / entries as u64).max(1);
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
        if self.native.is_some() {
            return false;
        }
        let cp = &self.checkpoint;
        cp.since.len().saturating_add(entries) > self.limits.replay_entries_max
            || cp.arena.len().saturating_add(command_bytes) > self.limits.replay_bytes_max
    }

    /// Move the checkpoint forward when the replay log is past its bounds.
    fn maybe_checkpoint(&mut self) -> Result<(), RuntimeError> {
        let cp = &self.checkpoint;
        if cp.since.len() <= self.limits.replay_entries_max && cp.arena.len() <= self.limits.replay_bytes_max {
            return Ok(());
        }
        match self.save_to_memory() {
            Ok(bytes) => {
                self.checkpoint = Checkpoint { snapshot: Some(bytes.into()), ..Checkpoint::default() };
                Ok(())
            }
            Err(RuntimeError::Guest(e)) | Err(RuntimeError::Fault(GuestFault { message: e, .. })) => {
                // The state is intact (restored if it faulted); only the
                // checkpoint could not move. Keep the longer replay log.
                tracing::warn!(sm = &*self.label, error = %e, "checkpoint failed; replay log keeps growing");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn save_to_memory(&mut self) -> Result<Vec<u8>, RuntimeError> {
        let (bytes, _) = self.save_snapshot(Vec::new())?;
        Ok(bytes)
    }

    /// Rebuild the live instance at the checkpoint plus the replay log.
    fn restore(&mut self) -> Result<(), RuntimeError> {
        self.live = None;
        let mut live = Live::instantiate(&self.module, &self.limits, self.label.clone())?;
        let failed = |what: &str, fault: GuestFault| RuntimeError::Recovery(format!("{what}: {fault}"));
        if let Some(snapshot) = &self.checkpoint.snapshot {
            match live.call_load(Cursor::new(snapshot.clone())) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(RuntimeError::Recovery(format!("checkpoint load refused: {e}"))),
                Err(f) => return Err(failed("checkpoint load faulted", f.fault)),
            }
        }
        // One entry per call: each of these entries is known to fit the
        // budget alone, not necessarily together with its neighbours.
        let arena = Bytes::copy_from_slice(&self.checkpoint.arena);
        for item in &self.checkpoint.since {
            match item {
                Replay::Entry { index, term, start, end } => {
                    let entry = Entry::new(*index, *term, arena.slice(*start..*end));
                    live.call_apply(std::slice::from_ref(&entry)).map_err(|f| failed("replay faulted", f.fault))?;
                }
                Replay::Configuration(members) => {
                    let (voters, learners) = &**members;
                    live.call_config(voters, learners).map_err(|f| failed("replay faulted", f.fault))?;
                }
            }
        }
        self.live = Some(live);
        Ok(())
    }

    /// Run a guest call that must not change state (query, hooks, save);
    /// restore the instance if it faults.
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

    /// Answer a read-only query.
    pub fn query(&mut self, request: &[u8]) -> Result<Bytes, RuntimeError> {
        if let Some(native) = &self.native {
            return native.query(request).map(Bytes::from).map_err(RuntimeError::Guest);
        }
        self.guarded(|live| live.call_query(request))?.map(Bytes::from).map_err(RuntimeError::Guest)
    }

    /// Stream the state into `out`; returns `out` and the bytes written.
    pub fn save_snapshot<W: Write + Send + 'static>(&mut self, mut out: W) -> Result<(W, u64), RuntimeError> {
        if let Some(native) = &self.native {
            let bytes = native.save(&mut out).map_err(RuntimeError::Guest)?;
            return Ok((out, bytes));
        }
        let (result, out, bytes) = self.guarded(|live| live.call_save(out))?;
        result.map_err(RuntimeError::Guest)?;
        Ok((out, bytes))
    }

    /// Replace the state with a snapshot read from `input`. Loads into a
    /// fresh instance, so a refused or faulting load leaves the current state
    /// untouched; on success the snapshot also becomes the checkpoint.
    pub fn load_snapshot<R: Read + Send + 'static>(&mut self, mut input: R) -> Result<(), RuntimeError> {
        if let Some(native) = &mut self.native {
            return native.load(&mut input).map_err(RuntimeError::Guest);
        }
        let mut fresh = Live::instantiate(&self.module, &self.limits, self.label.clone())?;
        match fresh.call_load(input) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(RuntimeError::Guest(e)),
            Err(f) => return Err(RuntimeError::Fault(f.fault)),
        }
        self.live = Some(fresh);
        self.checkpoint = Checkpoint::default();
        let bytes = self.save_to_memory()?;
        self.checkpoint.snapshot = Some(bytes.into());
        Ok(())
    }

    /// Tell the guest this replica leads in `term`.
    pub fn on_leader_start(&mut self, term: u64) -> Result<(), RuntimeError> {
        if self.native.is_some() {
            return Ok(());
        }
        let fuel = self.limits.fuel_per_query;
        self.guarded(|live| {
            live.begin_call(fuel)?;
            live.leader_start.call(&mut live.store, (term,)).map_err(|e| live.fault(e))
        })
    }

    /// Tell the guest this replica no longer leads.
    pub fn on_leader_stop(&mut self) -> Result<(), RuntimeError> {
        if self.native.is_some() {
            return Ok(());
        }
        let fuel = self.limits.fuel_per_query;
        self.guarded(|live| {
            live.begin_call(fuel)?;
            live.leader_stop.call(&mut live.store, ()).map_err(|e| live.fault(e))
        })
    }

    /// Tell the guest a configuration committed. Replayed after a fault, like
    /// an entry.
    pub fn on_configuration_committed(&mut self, voters: &[u64], learners: &[u64]) -> Result<(), RuntimeError> {
        if self.native.is_some() {
            return Ok(());
        }
        self.guarded(|live| live.call_config(voters, learners))?;
        self.checkpoint.since.push(Replay::Configuration(Box::new((voters.to_vec(), learners.to_vec()))));
        Ok(())
    }
}
