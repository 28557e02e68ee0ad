//! Write waft state machines in Rust.
//!
//! A waft state machine is a WebAssembly component that every replica of a
//! Raft group runs on the same committed entries. This crate is all an author
//! depends on: implement [`StateMachine`] for a type with your own command and
//! response types, call [`export!`] once, and build with
//! `cargo build --release --target wasm32-wasip2`. For speed, give the
//! state machine's crate one codegen unit (`codegen-units = 1` in its
//! release profile): the SDK's glue is generic, compiled into your crate, and
//! inlines into your code only within a unit.
//!
//! # Example: a counter
//!
//! ```
//! use std::io::{Read, Write};
//! use serde::{Deserialize, Serialize};
//! use waft_guest::{Position, StateMachine};
//!
//! #[derive(Default)]
//! pub struct Counter {
//!     value: i64,
//! }
//!
//! #[derive(Serialize, Deserialize)]
//! #[serde(rename_all = "snake_case")]
//! pub enum Command {
//!     Incr(i64),
//! }
//!
//! #[derive(Serialize, Deserialize)]
//! #[serde(rename_all = "snake_case")]
//! pub enum Query {
//!     Get,
//! }
//!
//! impl StateMachine for Counter {
//!     type Command = Command;
//!     type Response = i64;
//!     type Query = Query;
//!     type Answer = i64;
//!
//!     fn apply(&mut self, command: Command, _at: Position) -> Result<i64, String> {
//!         let Command::Incr(delta) = command;
//!         self.value = self.value.checked_add(delta).ok_or("counter overflow")?;
//!         Ok(self.value)
//!     }
//!
//!     fn query(&self, Query::Get: Query) -> Result<i64, String> {
//!         Ok(self.value)
//!     }
//!
//!     fn save(&self, mut out: impl Write) -> std::io::Result<()> {
//!         out.write_all(&self.value.to_le_bytes())
//!     }
//!
//!     fn load(&mut self, mut input: impl Read) -> std::io::Result<()> {
//!         let mut bytes = [0u8; 8];
//!         input.read_exact(&mut bytes)?;
//!         self.value = i64::from_le_bytes(bytes);
//!         Ok(())
//!     }
//! }
//!
//! waft_guest::export!(Counter);
//! # fn main() {}
//! ```
//!
//! # State in the key-value store
//!
//! A state machine's state may also live in the group's key-value store,
//! kept by the host on disk rather than in the instance's memory, so it may
//! be far larger than the memory limit. Implement [`kv::KvStateMachine`]
//! (no `self`: the state is the store) and call [`export_kv!`] instead. The
//! host then runs every entry and query on a fresh instance, commits an
//! entry's writes only if it returns `Ok`, keeps queries read-only, and
//! snapshots the store itself; see [`kv`] for the rules and limits.
//!
//! # Commands on the wire
//!
//! Commands, queries and their replies travel as bytes in one of two forms,
//! told apart by the first byte (see [`codec`]):
//! - binary: a `0x00` byte, then the value in `postcard` encoding. Compact and
//!   fast; what Rust clients send.
//! - JSON: anything else is read as JSON text, e.g. `{"incr":5}` for the
//!   counter above. What the CLI and other tools send, so they can speak to
//!   any module built with this crate without knowing its types.
//!
//! A reply is always encoded in the form of the request it answers.
//!
//! # What the host guarantees, and what it asks
//!
//! Entries arrive once, in log order. A trap (a panic, an out-of-bounds
//! access), fuel exhaustion or a memory-limit hit while applying one entry
//! makes that entry fail with an error on every replica, and the host restores
//! the state as if it had never been applied; the other entries of the batch
//! still apply. There is no clock, environment, filesystem or network: the
//! host supplies fixed stand-ins where the Rust standard library asks for
//! them (the clock reads the Unix epoch; stdin is empty and what you print is
//! discarded). Randomness is a pure function of the entry: while applying an
//! entry, random bytes (`getrandom`, `wasi:random`) come from a stream seeded
//! by the group and the entry's index, the same on every replica whatever
//! the batching, restarts or queries. A module that imports randomness is
//! handed one entry per call, which costs it some apply throughput. Time
//! never passes inside a state machine, so a wait for it
//! (`std::thread::sleep` of more than zero) traps, on every replica alike.
//! Make the state a pure function of the applied entries.
//!
//! Queries and the leader hooks run on a second instance holding the same
//! state, never on the one entries are applied to: a query cannot change the
//! replicated state even through a `Cell` or the allocator, and what it
//! changes is not kept (the host may rebuild that instance at any time).
//! Every call is bounded by fuel (50,000,000 units an entry by default, host
//! work such as logging and printing included), memory (256 MiB an
//! instance), a result size (1 MiB) and a snapshot size (256 MiB); see
//! `wit/waft-fsm.wit` for every limit and what hitting it does.
//!
//! One thing the host cannot fix for you: `std::collections::HashMap`'s
//! default hasher takes fresh keys for every map the instance creates, so its
//! iteration order depends on how many maps the instance made before — and a
//! replica restored from a snapshot has made fewer. Two replicas that ran the
//! same entries from the start agree; a restored one may not. Never let a std
//! `HashMap`'s order reach a reply, the state or a snapshot: use `BTreeMap`,
//! or [`HashMap`] from this crate, whose hasher has fixed keys.
//!
//! Replicas compare digests of their saved state (see `docs/divergence.md`),
//! so `on-snapshot-save` must write the same bytes for the same logical
//! state, whatever the instance's history: a replica restored from a
//! snapshot must save what one that ran every entry saves. Even with fixed
//! keys a hash map's order depends on its capacity and on the order of its
//! inserts and removals; save its entries sorted (or keep a `BTreeMap`).
//! A save that is not canonical gets healthy replicas fenced and rebuilt
//! again and again.
//!
//! # Memory
//!
//! With its `allocator` feature (on by default) the SDK installs the
//! guest's global allocator: blocks of up to 256 bytes are recycled through
//! per-size free lists, larger ones come from the standard allocator. Every
//! entry's command and most small values (keys, short strings, replies) are
//! such blocks, and recycling them costs a fraction of a malloc and free.
//! Freed small blocks stay cached (at most 4 MiB in all), which counts
//! toward the host's memory limit. To use an allocator of your own, depend
//! on this crate with `default-features = false`.

use std::io::{Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub mod codec;
mod glue;
pub mod kv;
#[cfg(any(test, all(feature = "allocator", target_family = "wasm", not(target_feature = "atomics"))))]
mod small_alloc;
mod snapshot;

/// The guest's global allocator (see the crate docs, "Memory").
#[cfg(all(feature = "allocator", target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: small_alloc::SmallBlockCache = small_alloc::SmallBlockCache::new();

pub use codec::Format;
#[doc(hidden)]
pub use kv::KvAdapter;
pub use snapshot::{SnapshotReader, SnapshotWriter};

// The generated bindings refer to the runtime through this crate, so an
// author's crate needs no dependency of its own on wit-bindgen.
extern crate self as waft_guest;
#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// Bindings generated from `wit/waft-fsm.wit`. Hidden: authors use the trait.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "state-machine",
        pub_export_macro: true,
        export_macro_name: "export_raw",
        default_bindings_module: "waft_guest::bindings",
        runtime_path: "::waft_guest::__wit_bindgen::rt",
        // Hand-written in `glue::on_apply`: the hot path.
        skip: ["on-apply"],
    });
}

/// A `HashMap` whose hasher has fixed keys: instances that made the same
/// inserts and removals in the same order from an empty map iterate it in
/// the same order, however many other maps they made. (A map rebuilt from a
/// snapshot may still iterate differently: sort before saving.) Prefer it to
/// `std::collections::HashMap` whenever iteration order can reach a reply,
/// the state or a snapshot. (Fixed keys give up SipHash's defence against
/// chosen-key collisions; for keys that clients choose freely, `BTreeMap`
/// has no such weakness.)
pub type HashMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<std::hash::DefaultHasher>>;

/// Where an entry sits in the group's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Log index of the entry.
    pub index: u64,
    /// Raft term in which it was proposed.
    pub term: u64,
}

/// A replicated state machine.
///
/// Every method except [`StateMachine::query`] may change the state; every
/// replica calls them with the same arguments in the same order, so the state
/// must depend on nothing else.
pub trait StateMachine: Default + 'static {
    /// A command that changes the state, as proposed by a client.
    type Command: DeserializeOwned;
    /// What applying a command returns to the client that proposed it.
    type Response: Serialize;
    /// A read-only request.
    type Query: DeserializeOwned;
    /// What a query returns.
    type Answer: Serialize;

    /// Apply one committed command. Return `Err` to reject it; a rejected
    /// command must leave the state unchanged.
    fn apply(&mut self, command: Self::Command, at: Position) -> Result<Self::Response, String>;

    /// Answer a query. Runs on the query instance (see the crate docs):
    /// changes it makes through interior mutability are not replicated and
    /// may vanish at any time.
    fn query(&self, query: Self::Query) -> Result<Self::Answer, String>;

    /// Write the whole state. The writer streams to the host in chunks, so
    /// the state may be far larger than memory allows to copy at once.
    fn save(&self, out: impl Write) -> std::io::Result<()>;

    /// Replace the whole state with one written by [`StateMachine::save`].
    fn load(&mut self, input: impl Read) -> std::io::Result<()>;

    /// This replica became leader in `term`. Runs on the query instance, so
    /// what it changes is seen by this replica's queries only (until the
    /// host rebuilds that instance), never by entries or snapshots.
    fn on_leader_start(&mut self, term: u64) {
        let _ = term;
    }

    /// This replica stopped being leader.
    fn on_leader_stop(&mut self) {}

    /// A membership change committed; `voters` and `learners` are node ids.
    fn on_configuration_committed(&mut self, voters: &[u64], learners: &[u64]) {
        let _ = (voters, learners);
    }
}

/// Severity of a line written with [`log`].
pub use bindings::waft::fsm::host::Level;

/// Write a line to the host's log, tagged with the group and node.
pub fn log(level: Level, message: &str) {
    bindings::waft::fsm::host::log(level, message);
}

/// Export a type implementing [`StateMachine`] as this component's state
/// machine. Call it once, at the crate's top level.
#[macro_export]
macro_rules! export {
    ($ty:ty) => {
        const _: () = {
            struct WaftExport;

            // `on-apply` is exported by hand (see the SDK's `glue::on_apply`);
            // the names are the component model's for this export.
            #[unsafe(export_name = "waft:fsm/machine@0.1.0#on-apply")]
            unsafe extern "C" fn waft_on_apply(entries: *mut u8, len: usize) -> *mut u8 {
                // SAFETY: called only by the canonical ABI, as `on-apply`.
                unsafe { $crate::__private::on_apply::<$ty>(entries, len) }
            }

            #[unsafe(export_name = "cabi_post_waft:fsm/machine@0.1.0#on-apply")]
            unsafe extern "C" fn waft_on_apply_post_return(_results: *mut u8) {
                $crate::__private::on_apply_post_return()
            }

            impl $crate::bindings::exports::waft::fsm::machine::Guest for WaftExport {
                fn query(
                    request: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                    $crate::__private::query::<$ty>(request)
                }
                fn on_snapshot_save(
                    writer: &$crate::bindings::exports::waft::fsm::machine::SnapshotWriter,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::save::<$ty>(writer)
                }
                fn on_snapshot_load(
                    reader: &$crate::bindings::exports::waft::fsm::machine::SnapshotReader,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::load::<$ty>(reader)
                }
                // Trait calls are fully qualified: a caller of `export_kv!`
                // need not have `StateMachine` in scope.
                fn on_leader_start(term: u64) {
                    $crate::__private::with_state::<$ty, _>(|sm| {
                        <$ty as $crate::StateMachine>::on_leader_start(sm, term)
                    })
                }
                fn on_leader_stop() {
                    $crate::__private::with_state::<$ty, _>(|sm| <$ty as $crate::StateMachine>::on_leader_stop(sm))
                }
                fn on_configuration_committed(voters: ::std::vec::Vec<u64>, learners: ::std::vec::Vec<u64>) {
                    $crate::__private::with_state::<$ty, _>(|sm| {
                        <$ty as $crate::StateMachine>::on_configuration_committed(sm, &voters, &learners)
                    })
                }
            }

    $crate::bindings::export_raw!(WaftExport with_types_in $crate::bindings);
        };
    };
}

/// Export a type implementing [`kv::KvStateMachine`] as this component's
/// state machine, one whose state is the group's key-value store (see
/// [`kv`]). Call it once, at the crate's top level, instead of [`export!`].
#[macro_export]
macro_rules! export_kv {
    ($ty:ty) => {
        $crate::export!($crate::KvAdapter<$ty>);
    };
}

#[doc(hidden)]
pub mod __private {
    pub use crate::glue::{load, on_apply, on_apply_post_return, query, save, with_state};
}
