//! What the host gives a guest: the store's data, the resource limiter, and
//! the `waft:fsm/host` and `waft:fsm/types` imports.
//!
//! Owns per-call bookkeeping (the log budget, the memory-limit flag) and the snapshot stream resources. Must never hand the guest
//! anything that differs between replicas, and never trust a guest-supplied
//! length without a bound.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use wasmtime::component::{ComponentType, Lift, Linker, Resource, ResourceTable, ResourceType};
use wasmtime::{ResourceLimiter, StoreContextMut};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::module::{HOST_INTERFACE, TYPES_INTERFACE};
use crate::wasi::{FixedRandom, deterministic_ctx};

/// Largest snapshot chunk moved in one call, either way.
pub(crate) const SNAPSHOT_CHUNK_BYTES_MAX: usize = 64 * 1024;
/// Longest guest log line kept; the rest is cut.
const LOG_LINE_BYTES_MAX: usize = 1024;

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
}

impl HostState {
    pub(crate) fn new(memory_bytes_max: usize, label: Arc<str>) -> Self {
        let (wasi, random) = deterministic_ctx();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter { memory_bytes_max, memory_limit_hit: false },
            random,
            log_budget: 0,
            label,
        }
    }

    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
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
/// Most elements one table may grow to.
const TABLE_ELEMENTS_MAX: usize = 1 << 20;

/// Bounds memory growth and records whether the bound was hit, so a trap
/// that follows a refused growth is reported as a memory-limit fault.
pub(crate) struct Limiter {
    memory_bytes_max: usize,
    pub(crate) memory_limit_hit: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes_max {
            self.memory_limit_hit = true;
            return Err(wasmtime::Error::msg(format!(
                "memory limit: the guest asked for {desired} bytes, the limit is {}",
                self.memory_bytes_max
            )));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_MAX)
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

    let mut host = linker.instance(HOST_INTERFACE)?;
    host.func_wrap("log", |mut store: StoreContextMut<'_, HostState>, (level, message): (Level, String)| {
        let state = store.data_mut();
        if state.log_budget == 0 {
            return Ok(());
        }
        state.log_budget -= 1;
        let mut line = message;
        if line.len() > LOG_LINE_BYTES_MAX {
            let mut cut = LOG_LINE_BYTES_MAX;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        let label = &*state.label;
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
        |mut store: StoreContextMut<'_, HostState>, (this, chunk): (Resource<WriterRes>, Vec<u8>)| {
            if chunk.len() > SNAPSHOT_CHUNK_BYTES_MAX {
                return Ok((Err(format!(
                    "snapshot chunk of {} bytes exceeds the {SNAPSHOT_CHUNK_BYTES_MAX}-byte limit",
                    chunk.len()
                )),));
            }
            let writer = store.data_mut().table.get_mut(&this)?;
            let result = writer.sink.write_all(&chunk).map_err(|e| format!("snapshot write failed: {e}"));
            if result.is_ok() {
                writer.bytes += chunk.len() as u64;
            }
            Ok((result,))
        },
    )?;
    types.func_wrap(
        "[method]snapshot-reader.read",
        |mut store: StoreContextMut<'_, HostState>, (this, max_len): (Resource<ReaderRes>, u32)| {
            let reader = store.data_mut().table.get_mut(&this)?;
            let want = (max_len as usize).min(SNAPSHOT_CHUNK_BYTES_MAX);
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
