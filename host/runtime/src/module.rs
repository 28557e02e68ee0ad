//! Loading and validating a state-machine component.
//!
//! Owns the question "may this wasm run as a waft state machine?", answered
//! once, before any replica depends on it. Must never accept a module that
//! could fail later for a reason visible now, and must name the problem in
//! every refusal: not wasm, a core module, another world or WIT version, a
//! missing export, an import the host does not allow, a wrong signature.

use std::sync::Arc;

use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, ComponentExportIndex, InstancePre};

use crate::engine::Engine;
use crate::host::{HostState, linker};
use crate::native::{NATIVE_MAGIC, NativeKind};

/// The WIT package state machines are built against.
pub const WIT_PACKAGE: &str = "waft:fsm";
/// The WIT version this host speaks.
pub const WIT_VERSION: &str = "0.1.0";
pub(crate) const HOST_INTERFACE: &str = "waft:fsm/host@0.1.0";
pub(crate) const TYPES_INTERFACE: &str = "waft:fsm/types@0.1.0";
pub(crate) const MACHINE_INTERFACE: &str = "waft:fsm/machine@0.1.0";
pub(crate) const KV_INTERFACE: &str = "waft:fsm/kv@0.1.0";

/// The functions `waft:fsm/machine` must export.
pub const REQUIRED_EXPORTS: [&str; 7] = [
    "on-apply",
    "query",
    "on-snapshot-save",
    "on-snapshot-load",
    "on-leader-start",
    "on-leader-stop",
    "on-configuration-committed",
];

/// WASI interfaces a guest may import (any 0.2.x version). The host answers
/// each with a fixed stand-in (see `wasi.rs`), linked by `wasi_link.rs`
/// (which must link every one of them). Filesystem is allowed because
/// the Rust standard library may import it; with no preopened directories a
/// guest can never open anything, on any replica.
pub(crate) const WASI_ALLOWED: [&str; 20] = [
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
];

/// Why a module was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoadError {
    #[error("not a WebAssembly binary (it does not start with \\0asm); expected a component built for wasm32-wasip2")]
    NotWasm,
    #[error(
        "this is a core WebAssembly module, not a component; build the state machine with \
         `cargo build --release --target wasm32-wasip2` (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    #[error("malformed component: {0}")]
    Malformed(String),
    #[error(
        "the component targets {found}, but this host speaks {WIT_PACKAGE}@{WIT_VERSION}; rebuild it against \
         this host's wit/ (or run a host that speaks {found})"
    )]
    WrongVersion { found: String },
    #[error(
        "the component does not implement the {WIT_PACKAGE}@{WIT_VERSION} state-machine world: it exports [{exports}] \
         but not {MACHINE_INTERFACE}"
    )]
    WrongWorld { exports: String },
    #[error("the component's {MACHINE_INTERFACE} lacks the export `{name}`")]
    MissingExport { name: String },
    #[error(
        "the component imports `{name}`, which the host does not provide: a state machine may import only \
         {WIT_PACKAGE}/host, {WIT_PACKAGE}/types, {WIT_PACKAGE}/kv and deterministic WASI (io, cli, clocks, random, filesystem)"
    )]
    ImportNotAllowed { name: String },
    #[error("the component does not match the host's interfaces: {0}")]
    Incompatible(String),
    #[error(
        "this file names a bench-only native state machine ({name}); this waft was built without them. They \
         exist to measure the wasm sandbox's cost: build with `cargo build --release -p waft --features \
         bench-native`, or deploy the state machine's .wasm"
    )]
    NativeNotBuilt { name: String },
    #[error("no bench-only native state machine is called `{name}`; the ones there are: atomic, registers")]
    UnknownNative { name: String },
}

/// A validated component, ready to instantiate any number of times (or,
/// in bench builds, a native machine: see [`crate::native`]).
#[derive(Clone)]
pub struct Module {
    pub(crate) kind: ModuleKind,
}

#[derive(Clone)]
pub(crate) enum ModuleKind {
    Wasm(Arc<ModuleInner>),
    Native(NativeKind),
}

pub(crate) struct ModuleInner {
    /// The wasmtime engine the component was compiled for: the `Engine`'s
    /// own, or its pooled one for a kv state machine.
    pub(crate) wasm_engine: wasmtime::Engine,
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) exports: ExportIndexes,
    /// Whether the component imports any `wasi:random` interface. Such a
    /// guest is handed one entry per `on-apply` call, so the random stream
    /// can restart at every entry (see `machine`).
    pub(crate) draws_randomness: bool,
    /// Whether the component imports `waft:fsm/kv`: a kv state machine,
    /// whose state is the group's key-value store (see `kv`).
    pub(crate) uses_kv: bool,
}

/// Where each export lives, looked up once.
pub(crate) struct ExportIndexes {
    pub(crate) on_apply: ComponentExportIndex,
    pub(crate) query: ComponentExportIndex,
    pub(crate) save: ComponentExportIndex,
    pub(crate) load: ComponentExportIndex,
    pub(crate) leader_start: ComponentExportIndex,
    pub(crate) leader_stop: ComponentExportIndex,
    pub(crate) configuration_committed: ComponentExportIndex,
}

impl Module {
    /// Validate and compile `bytes`. Instantiates it once, so a module that
    /// loads also runs.
    ///
    /// A file that starts with [`NATIVE_MAGIC`] names a bench-only native
    /// machine instead; it loads only in a build with the `bench-native`
    /// feature and is refused, saying so, in any other.
    pub fn load(engine: &Engine, bytes: &[u8]) -> Result<Module, LoadError> {
        if let Some(named) = NativeKind::parse(bytes) {
            let kind = named.map_err(|name| LoadError::UnknownNative { name })?;
            if !cfg!(feature = "bench-native") && !engine.native_machines {
                let name = String::from_utf8_lossy(&bytes[NATIVE_MAGIC.len()..]).trim_end().to_string();
                return Err(LoadError::NativeNotBuilt { name });
            }
            return Ok(Module::native(kind));
        }
        check_header(bytes)?;
        let component = Component::new(&engine.inner, bytes).map_err(|e| LoadError::Malformed(format!("{e:#}")))?;
        let Imports { draws_randomness, uses_kv } = check_imports(engine, &component)?;
        check_exports(&engine.inner, &component)?;
        let (wasm_engine, component) = if uses_kv {
            // A kv state machine runs on the pooled engine (see
            // `Engine::pooled`): the same code, moved over without a
            // second compilation.
            let pooled = engine.pooled().map_err(|e| LoadError::Incompatible(e.to_string()))?.clone();
            let moved = component.serialize().and_then(|code| {
                // SAFETY: `code` was just produced by an engine with the same
                // compilation settings, in this process.
                unsafe { Component::deserialize(&pooled, &code) }
            });
            let component = match moved {
                Ok(c) => c,
                Err(_) => Component::new(&pooled, bytes).map_err(|e| LoadError::Malformed(format!("{e:#}")))?,
            };
            (pooled, component)
        } else {
            (engine.inner.clone(), component)
        };
        let exports = check_exports(&wasm_engine, &component)?;
        let linker = linker(&wasm_engine).map_err(|e| LoadError::Incompatible(format!("{e:#}")))?;
        let pre = linker.instantiate_pre(&component).map_err(|e| LoadError::Incompatible(format!("{e:#}")))?;
        let module = Module {
            kind: ModuleKind::Wasm(Arc::new(ModuleInner { wasm_engine, pre, exports, draws_randomness, uses_kv })),
        };
        // Typecheck every export against the host's expectations.
        crate::machine::Live::instantiate(&module, &crate::Limits::default(), "validate".into())
            .map_err(|e| LoadError::Incompatible(e.to_string()))?;
        Ok(module)
    }

    /// A native machine, whatever the build's features: for tests and
    /// benches that compare it with its guest. Not for serving groups: it
    /// has no fuel, memory limit or fault containment (see [`crate::native`]).
    pub fn native(kind: NativeKind) -> Module {
        Module { kind: ModuleKind::Native(kind) }
    }

    /// Whether this is a bench-only native machine.
    pub fn is_native(&self) -> bool {
        matches!(self.kind, ModuleKind::Native(_))
    }

    /// Whether the guest imports randomness, and so applies one entry per
    /// call (a determinism rule, at some cost in apply throughput).
    pub fn draws_randomness(&self) -> bool {
        matches!(&self.kind, ModuleKind::Wasm(inner) if inner.draws_randomness)
    }

    /// Whether the guest imports `waft:fsm/kv`: its state is the group's
    /// key-value store, and every call runs on a fresh instance (see `kv`).
    pub fn uses_kv(&self) -> bool {
        matches!(&self.kind, ModuleKind::Wasm(inner) if inner.uses_kv)
    }
}

fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm);
    }
    match bytes[4..8] {
        [1, 0, 0, 0] => Err(LoadError::CoreModule),
        // Component binaries: version 0x0d, layer 1.
        [0x0d, 0, 1, 0] => Ok(()),
        [a, b, c, d] => Err(LoadError::Malformed(format!(
            "unknown binary version/layer {a:#04x} {b:#04x} {c:#04x} {d:#04x}; expected a component (0x0d 0x00 0x01 0x00)"
        ))),
        _ => Err(LoadError::NotWasm),
    }
}

/// Split `ns:pkg/iface@ver` into (`ns:pkg/iface`, `ver`).
fn split_version(name: &str) -> (&str, Option<&str>) {
    match name.split_once('@') {
        Some((base, version)) => (base, Some(version)),
        None => (name, None),
    }
}

/// What a component's imports say about how it must run.
struct Imports {
    /// It imports a `wasi:random` interface.
    draws_randomness: bool,
    /// It imports `waft:fsm/kv`.
    uses_kv: bool,
}

/// Checks every import is allowed.
fn check_imports(engine: &Engine, component: &Component) -> Result<Imports, LoadError> {
    let ty = component.component_type();
    let mut draws_randomness = false;
    let mut uses_kv = false;
    for (name, _) in ty.imports(&engine.inner) {
        let (base, version) = split_version(name);
        if base.starts_with(&format!("{WIT_PACKAGE}/")) {
            if version != Some(WIT_VERSION) {
                return Err(LoadError::WrongVersion { found: name.to_string() });
            }
            if base == "waft:fsm/host" || base == "waft:fsm/types" {
                continue;
            }
            if base == "waft:fsm/kv" {
                uses_kv = true;
                continue;
            }
            return Err(LoadError::ImportNotAllowed { name: name.to_string() });
        }
        let wasi_ok = WASI_ALLOWED.contains(&base) && version.is_some_and(|v| v.starts_with("0.2."));
        if !wasi_ok {
            return Err(LoadError::ImportNotAllowed { name: name.to_string() });
        }
        draws_randomness |= base.starts_with("wasi:random/");
    }
    Ok(Imports { draws_randomness, uses_kv })
}

fn check_exports(engine: &wasmtime::Engine, component: &Component) -> Result<ExportIndexes, LoadError> {
    let ty = component.component_type();
    let mut names = Vec::new();
    let mut machine = None;
    for (name, item) in ty.exports(engine) {
        names.push(name.to_string());
        let (base, _) = split_version(name);
        if base == "waft:fsm/machine" {
            if name != MACHINE_INTERFACE {
                return Err(LoadError::WrongVersion { found: name.to_string() });
            }
            machine = Some(item);
        }
    }
    let Some(machine) = machine else {
        return Err(LoadError::WrongWorld { exports: names.join(", ") });
    };
    let ComponentItem::ComponentInstance(instance) = machine.ty else {
        return Err(LoadError::WrongWorld { exports: names.join(", ") });
    };
    let present: Vec<String> = instance.exports(engine).map(|(n, _)| n.to_string()).collect();
    for required in REQUIRED_EXPORTS {
        if !present.iter().any(|n| n == required) {
            return Err(LoadError::MissingExport { name: required.to_string() });
        }
    }
    let machine_index = component
        .get_export_index(None, MACHINE_INTERFACE)
        .ok_or_else(|| LoadError::WrongWorld { exports: names.join(", ") })?;
    let index = |name: &str| {
        component
            .get_export_index(Some(&machine_index), name)
            .ok_or_else(|| LoadError::MissingExport { name: name.to_string() })
    };
    Ok(ExportIndexes {
        on_apply: index("on-apply")?,
        query: index("query")?,
        save: index("on-snapshot-save")?,
        load: index("on-snapshot-load")?,
        leader_start: index("on-leader-start")?,
        leader_stop: index("on-leader-stop")?,
        configuration_committed: index("on-configuration-committed")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks_name_the_problem() {
        assert_eq!(check_header(b"hello world"), Err(LoadError::NotWasm));
        assert_eq!(check_header(b"\0asm"), Err(LoadError::NotWasm));
        assert_eq!(check_header(b"\0asm\x01\0\0\0"), Err(LoadError::CoreModule));
        assert_eq!(check_header(b"\0asm\x0d\0\x01\0"), Ok(()));
        assert!(matches!(check_header(b"\0asm\x02\0\0\0"), Err(LoadError::Malformed(_))));
    }

    #[test]
    fn versions_split() {
        assert_eq!(split_version("wasi:io/poll@0.2.6"), ("wasi:io/poll", Some("0.2.6")));
        assert_eq!(split_version("plain"), ("plain", None));
    }
}
