//! waft's deterministic WebAssembly runtime.
//!
//! Owns everything between the host and a state-machine component: loading
//! and validating a component against `wit/waft-fsm.wit`, instantiating it
//! with settings that keep replicas byte-identical, applying batches of
//! committed entries, queries, and streaming snapshots. Must never let a
//! guest's trap, runaway loop or allocation take the host down or make two
//! replicas diverge: see [`machine`] for how a faulting entry is rejected
//! while the rest of its batch applies.
//!
//! ```no_run
//! use waft_runtime::{Engine, Entry, Limits, Module, StateMachine};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Engine::new()?;
//! let bytes = std::fs::read("waft_counter.wasm")?;
//! let module = Module::load(&engine, &bytes)?;
//! let mut sm = StateMachine::new(&module, Limits::default(), "counter")?;
//! let results = sm.apply(&[Entry::new(1, 1, br#"{"incr":5}"#.to_vec())])?;
//! assert_eq!(results[0].as_deref().ok(), Some(&b"5"[..]));
//! # Ok(()) }
//! ```

mod abi;
mod engine;
mod host;
pub mod kv;
pub mod machine;
mod module;
pub mod native;
mod wasi;
mod wasi_link;

pub use engine::{Engine, EngineError, Limits};
pub use kv::{KvCapture, KvError, KvFile, KvFiles, KvHandle, KvProvider, KvSnapshot, KvStore, KvView, KvWrites, MemKv};
pub use machine::{ApplyError, ApplyResult, Entry, FaultKind, GuestFault, RuntimeError, StateMachine};
pub use module::{LoadError, Module, REQUIRED_EXPORTS, WIT_PACKAGE, WIT_VERSION};
