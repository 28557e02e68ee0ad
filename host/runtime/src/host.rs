//! What the host gives a guest: the store's data, the resource limiter, and
//! the `waft:fsm/host` and `waft:fsm/types` imports.
//!
//! Owns per-call bookkeeping (the log budget, the memory-limit flag), the
//! fuel the host charges for its own work, and the snapshot stream
//! resources. Must never hand the guest anything that differs between
//! replicas, never trust a guest-supplied length without a bound, and never
//! copy or check guest bytes before charging the guest's budget for them.
//!
//! # What host work costs
//!
//! Fuel bounds a call's wall time only if the host's own work is paid from
//! it too: every call into the host costs [`HOSTCALL_FUEL`], and every byte
//! it copies, checks or produces for the guest (log lines, snapshot chunks,
//! stream writes, random bytes) costs [`FUEL_PER_HOST_BYTE`]. Charges are
//! taken before the work where the size is known up front (log, snapshot
//! chunks), and on the way back into the guest otherwise (the store's call
//! hook); a call that cannot pay ends with `OutOfFuel`, the same on every
//! replica, since what it asked of the host is the same.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext};
use wasmtime::component::{ComponentType, Lift, Linker, Resource, ResourceTable, ResourceType, WasmList, WasmStr};
use wasmtime::{CallHook, ResourceLimiter, StoreContextMut, Trap, ValRaw};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::module::{HOST_INTERFACE, TYPES_INTERFACE};
use crate::wasi::{FixedRandom, deterministic_ctx};
use crate::wasi_link::NoWaitIo;

/// Largest snapshot chunk moved in one call, either way.
pub(crate) const SNAPSHOT_CHUNK_BYTES_MAX: usize = 64 * 1024;
/// Longest guest log line kept; the rest is cut.
const LOG_LINE_BYTES_MAX: usize = 1024;
/// Fuel every call from the guest into the host costs, whatever it does: a
/// host call costs about as much as this many simple wasm instructions.
pub const HOSTCALL_FUEL: u64 = 1_000;
/// Fuel per byte the host copies, checks or produces for the guest.
pub const FUEL_PER_HOST_BYTE: u64 = 1;

/// The data of one instance's store.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) random: FixedRandom,
    /// Log lines the guest may still write in the current call.
    pub(crate) log_budget: u32,
    /// Tag on every guest log line (e.g. group and node).
    pub(crate) label: Arc<str>,
    /// Bytes written to WASI streams and not yet charged for.
    written: u64,
    /// The key-value store this call may use (a kv state machine's calls).
    pub(crate) kv: Option<crate::kv::KvCall>,
}

impl HostState {
    pub(crate) fn new(memory_bytes_max: usize, label: Arc<str>) -> Self {
        let (wasi, random) = deterministic_ctx();
        let mut table = ResourceTable::new();
        table.set_max_capacity(HOST_RESOURCES_MAX);
        Self {
            wasi,
            table,
            limiter: Limiter::new(memory_bytes_max),
            random,
            log_budget: 0,
            label,
            written: 0,
            kv: None,
        }
    }

    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// The view our `wasi:io` functions work on.
    pub(crate) fn no_wait_io(&mut self) -> NoWaitIo<'_> {
        NoWaitIo { table: &mut self.table, written: &mut self.written }
    }

    /// Fuel owed for host work done since the last charge: bytes written to
    /// streams and random bytes drawn.
    fn take_owed_fuel(&mut self) -> u64 {
        let bytes = std::mem::take(&mut self.written).saturating_add(self.random.take_drawn_bytes());
        bytes.saturating_mul(FUEL_PER_HOST_BYTE)
    }
}

/// Takes `fuel` from the running call, or ends it with `OutOfFuel` (the fuel
/// left set to zero) when it cannot pay.
pub(crate) fn charge(store: &mut StoreContextMut<'_, HostState>, fuel: u64) -> wasmtime::Result<()> {
    let left = store.get_fuel()?;
    match left.checked_sub(fuel) {
        Some(rest) => store.set_fuel(rest),
        None => {
            store.set_fuel(0)?;
            Err(Trap::OutOfFuel.into())
        }
    }
}

/// The store's call hook: charges every call into the host, and on the way
/// back the bytes that call moved.
pub(crate) fn call_hook(mut store: StoreContextMut<'_, HostState>, hook: CallHook) -> wasmtime::Result<()> {
    match hook {
        CallHook::CallingHost => charge(&mut store, HOSTCALL_FUEL),
        CallHook::ReturningFromHost => {
            let owed = store.data_mut().take_owed_fuel();
            if owed == 0 { Ok(()) } else { charge(&mut store, owed) }
        }
        CallHook::CallingWasm | CallHook::ReturningFromWasm => Ok(()),
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Most instances, tables and memories one component may create. A
/// Rust-built component needs a handful; the bound stops a hostile one.
const INSTANCES_MAX: usize = 64;
const TABLES_MAX: usize = 64;
const MEMORIES_MAX: usize = 16;
/// Most host resources (WASI streams, pollables, snapshot streams) one
/// instance may hold at once. A Rust guest holds a handful; the bound stops
/// a guest that leaks them from holding host memory the memory limit does
/// not count. Reaching it counts as a memory-limit hit (decided on a fresh
/// instance, like one), since how many a long-lived instance holds depends
/// on its history.
pub const HOST_RESOURCES_MAX: usize = 4096;

/// Most table elements one instance may hold, over all its tables.
pub const TABLE_ELEMENTS_MAX: usize = 1 << 20;

/// Bounds the memory and table growth of one instance — all its memories
/// together, all its tables together — and records whether the memory bound
/// was hit, so a trap that follows a refused growth is reported as a
/// memory-limit fault.
pub(crate) struct Limiter {
    pub(crate) memory_bytes_max: usize,
    pub(crate) memory_limit_hit: bool,
    /// Bytes of all memories of the instance, as grown so far.
    memory_bytes: usize,
    /// Elements of all tables of the instance, as grown so far.
    table_elements: usize,
}

impl Limiter {
    pub(crate) fn new(memory_bytes_max: usize) -> Limiter {
        Limiter { memory_bytes_max, memory_limit_hit: false, memory_bytes: 0, table_elements: 0 }
    }

    /// Bytes of linear memory the instance holds, all memories together.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.memory_bytes.saturating_sub(current).saturating_add(desired);
        if total > self.memory_bytes_max {
            self.memory_limit_hit = true;
            return Err(wasmtime::Error::msg(format!(
                "memory limit: the guest asked for {total} bytes of memory in all, the limit is {}",
                self.memory_bytes_max
            )));
        }
        self.memory_bytes = total;
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.table_elements.saturating_sub(current).saturating_add(desired);
        if total > TABLE_ELEMENTS_MAX {
            return Ok(false);
        }
        self.table_elements = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        INSTANCES_MAX
    }
    fn tables(&self) -> usize {
        TABLES_MAX
    }
    fn memories(&self) -> usize {
        MEMORIES_MAX
    }
}

/// `waft:fsm/host.level`. Built only by lifting from the guest.
#[allow(dead_code)]
#[derive(ComponentType, Lift, Clone, Copy, Debug)]
#[component(enum)]
#[repr(u8)]
pub(crate) enum Level {
    #[component(name = "trace")]
    Trace,
    #[component(name = "debug")]
    Debug,
    #[component(name = "info")]
    Info,
    #[component(name = "warn")]
    Warn,
    #[component(name = "error")]
    Error,
}

/// The host side of `snapshot-writer`: forwards chunks to a shared sink so
/// the caller gets its writer back after the call.
pub(crate) struct WriterRes {
    pub(crate) sink: Box<dyn Write + Send>,
    pub(crate) bytes: u64,
    /// Most bytes this snapshot may hold (`Limits::snapshot_bytes_max`).
    pub(crate) bytes_max: u64,
    /// Whether the guest tried to write past `bytes_max`: the save fails
    /// even if the guest ignores the error it was given.
    pub(crate) over_limit: bool,
}

/// The host side of `snapshot-reader`.
pub(crate) struct ReaderRes {
    pub(crate) source: Box<dyn Read + Send>,
    pub(crate) bytes: u64,
}

/// A writer shared between the caller and the resource table for the length
/// of one call.
pub(crate) struct SharedWrite<W>(pub(crate) Arc<Mutex<W>>);

impl<W: Write> Write for SharedWrite<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock() {
            Ok(mut w) => w.write(buf),
            Err(_) => Err(std::io::Error::other("snapshot sink poisoned")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.lock() {
            Ok(mut w) => w.flush(),
            Err(_) => Err(std::io::Error::other("snapshot sink poisoned")),
        }
    }
}

/// Build the linker: deterministic WASI, then waft's own imports.
pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::<HostState>::new(engine);
    crate::wasi_link::add_to_linker(&mut linker)?;
    crate::kv::add_to_linker(&mut linker)?;

    let mut host = linker.instance(HOST_INTERFACE)?;
    host.func_wrap("log", |mut store: StoreContextMut<'_, HostState>, (level, message): (Level, LogLine)| {
        // Lifting a `LogLine` copied at most `LOG_LINE_BYTES_MAX` bytes and
        // checked nothing: a line past the budget costs the call and no
        // more, a kept one the bytes that were copied.
        if store.data().log_budget == 0 {
            return Ok(());
        }
        store.data_mut().log_budget -= 1;
        charge(&mut store, (message.head.len() as u64).saturating_mul(FUEL_PER_HOST_BYTE))?;
        let line = String::from_utf8_lossy(&message.head);
        let label = &*store.data().label;
        match level {
            Level::Trace => tracing::trace!(target: "waft::guest", sm = label, "{line}"),
            Level::Debug => tracing::debug!(target: "waft::guest", sm = label, "{line}"),
            Level::Info => tracing::info!(target: "waft::guest", sm = label, "{line}"),
            Level::Warn => tracing::warn!(target: "waft::guest", sm = label, "{line}"),
            Level::Error => tracing::error!(target: "waft::guest", sm = label, "{line}"),
        }
        Ok(())
    })?;

    let mut types = linker.instance(TYPES_INTERFACE)?;
    types.resource("snapshot-writer", ResourceType::host::<WriterRes>(), |_, _| Ok(()))?;
    types.resource("snapshot-reader", ResourceType::host::<ReaderRes>(), |_, _| Ok(()))?;
    types.func_wrap(
        "[method]snapshot-writer.write",
        |mut store: StoreContextMut<'_, HostState>, (this, chunk): (Resource<WriterRes>, WasmList<u8>)| {
            // Sizes first: nothing is copied for a chunk that is refused.
            if chunk.len() > SNAPSHOT_CHUNK_BYTES_MAX {
                return Ok((Err(format!(
                    "snapshot chunk of {} bytes exceeds the {SNAPSHOT_CHUNK_BYTES_MAX}-byte limit",
                    chunk.len()
                )),));
            }
            let writer = store.data_mut().table.get_mut(&this)?;
            if writer.bytes.saturating_add(chunk.len() as u64) > writer.bytes_max {
                writer.over_limit = true;
                return Ok((Err(format!(
                    "the snapshot would exceed its limit of {} bytes; this state machine's state is too large to save",
                    writer.bytes_max
                )),));
            }
            charge(&mut store, (chunk.len() as u64).saturating_mul(FUEL_PER_HOST_BYTE))?;
            let bytes = chunk.as_le_slice(&store).to_vec();
            let writer = store.data_mut().table.get_mut(&this)?;
            let result = writer.sink.write_all(&bytes).map_err(|e| format!("snapshot write failed: {e}"));
            if result.is_ok() {
                writer.bytes += bytes.len() as u64;
            }
            Ok((result,))
        },
    )?;
    types.func_wrap(
        "[method]snapshot-reader.read",
        |mut store: StoreContextMut<'_, HostState>, (this, max_len): (Resource<ReaderRes>, u32)| {
            let want = (max_len as usize).min(SNAPSHOT_CHUNK_BYTES_MAX);
            charge(&mut store, (want as u64).saturating_mul(FUEL_PER_HOST_BYTE))?;
            let reader = store.data_mut().table.get_mut(&this)?;
            let mut chunk = vec![0u8; want];
            let mut filled = 0;
            // Fill the chunk unless the source ends: an empty reply means EOF.
            while filled < want {
                match reader.source.read(&mut chunk[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Ok((Err(format!("snapshot read failed: {e}")),)),
                }
            }
            chunk.truncate(filled);
            reader.bytes += filled as u64;
            Ok((Ok(chunk),))
        },
    )?;
    Ok(linker)
}

/// A guest's log message as the `log` import lifts it: its first
/// `LOG_LINE_BYTES_MAX` bytes and nothing more, whatever its length, so a
/// huge message costs the host no more than a long line. (wasmtime's own
/// `String` and `WasmStr` lifts read, or validate, the whole string.)
pub(crate) struct LogLine {
    head: Vec<u8>,
}

// SAFETY: the ABI and flat representation are those of `string` (a pointer
// pair), and `typecheck` is `WasmStr`'s.
unsafe impl ComponentType for LogLine {
    type Lower = [ValRaw; 2];

    const ABI: CanonicalAbiInfo = CanonicalAbiInfo::POINTER_PAIR;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <WasmStr as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: reads only inside guest memory, after a bounds check.
unsafe impl Lift for LogLine {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        _ty: InterfaceType,
        src: &[ValRaw; 2],
    ) -> wasmtime::Result<Self> {
        Self::lift(cx, usize::try_from(src[0].get_u32())?, usize::try_from(src[1].get_u32())?)
    }

    fn linear_lift_from_memory(cx: &mut LiftContext<'_>, _ty: InterfaceType, bytes: &[u8]) -> wasmtime::Result<Self> {
        let word = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        Self::lift(cx, usize::try_from(word(0))?, usize::try_from(word(4))?)
    }
}

impl LogLine {
    fn lift(cx: &mut LiftContext<'_>, ptr: usize, len: usize) -> wasmtime::Result<Self> {
        // A UTF-8 length is in bytes; other encodings' lines come out garbled
        // but bounded, which is all a log line needs.
        let take = len.min(LOG_LINE_BYTES_MAX);
        let memory = cx.memory();
        match ptr.checked_add(take) {
            Some(end) if end <= memory.len() => Ok(LogLine { head: memory[ptr..end].to_vec() }),
            _ => wasmtime::bail!("string pointer/length out of bounds of memory"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_holds_a_bounded_number_of_host_resources() {
        let mut state = HostState::new(1 << 20, Arc::from("test"));
        for _ in 0..HOST_RESOURCES_MAX {
            state.table().push(0u32).unwrap();
        }
        let full = state.table().push(0u32).unwrap_err();
        assert!(matches!(full, wasmtime::component::ResourceTableError::Full), "{full}");
    }

    /// The bound is on the instance: a second memory or table cannot add
    /// its own allowance to the first's.
    #[test]
    fn memory_and_table_limits_count_every_memory_and_table_of_the_instance() {
        let mut l = Limiter::new(10 << 20);
        assert!(l.memory_growing(0, 6 << 20, None).unwrap(), "first memory");
        assert!(l.memory_growing(0, 3 << 20, None).unwrap(), "second memory, 9 MiB in all");
        assert!(l.memory_growing(0, 2 << 20, None).is_err(), "a third would make 11 MiB");
        assert!(l.memory_limit_hit);
        assert_eq!(l.memory_bytes(), 9 << 20);
        // Growing the first from 6 to 7 MiB: 10 MiB in all, at the limit.
        assert!(l.memory_growing(6 << 20, 7 << 20, None).unwrap());
        assert!(l.memory_growing(3 << 20, (3 << 20) + 1, None).is_err());

        assert!(l.table_growing(0, TABLE_ELEMENTS_MAX / 2, None).unwrap());
        assert!(l.table_growing(0, TABLE_ELEMENTS_MAX / 2, None).unwrap());
        assert!(!l.table_growing(0, 1, None).unwrap(), "every table together is bounded");
        assert!(l.table_growing(TABLE_ELEMENTS_MAX / 2, TABLE_ELEMENTS_MAX / 2, None).unwrap());
    }
}
