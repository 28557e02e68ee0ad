//! waft-node: one Raft group's replica on one node, synchronous and
//! transport-free. It wires the pure Raft core (`waft-raft`), the log and
//! snapshot stores (`waft-storage`) and the wasm state machine
//! (`waft-runtime`); the daemon wraps each [`Replica`] in a task and gives it
//! a clock, a transport and clients.
//!
//! Owns the ordering rules of `waft_raft::Ready` in one place: the
//! replica's pipeline (`begin_ready` → the caller's write → `apply_ready` →
//! `enqueue_ready` → `write_durable` → `finish_durable`), which the daemon,
//! the simulator and hand-pumped tests all drive; [`Replica::process`] is its
//! synchronous special case. Must never use tokio, sockets or a clock, so the
//! same code runs under the simulator and tests that pump messages by hand.
//!
//! ```text
//! let module = GuestModule::load(&engine, bytes)?;    // the founding module
//! let mut r = Replica::open(group, cfg, &mut store, &snaps, &module, &[1, 2, 3])?;
//! loop {
//!     r.tick();                                   // from the daemon's clock
//!     r.step(msg);                                // from the network
//!     let (index, term) = r.propose(&Envelope::new(now_ms, body))?; // from a client (leader only)
//!     let out = r.process(&mut store, &snaps, &mut |m| transport.send(m))?;
//!     // out.applied: answer clients waiting on (index, term) with its Outcome
//!     // out.read_states: serve reads once r.applied_index() >= index
//!     // out.snapshot_install: pull meta + chunks from out.snapshot_install.from,
//!     //   then begin_install / Install::write_chunk / finish_install
//! }
//! ```
//!
//! Every client entry is a `waft_session::Envelope`: a session-less command,
//! a session's registration, keep-alive or close, or a numbered session
//! command, stamped with the leader's clock. The replica runs each through
//! its session table (`waft-session`) before the guest sees it, so a retried
//! command applies once and its retries get the saved result
//! ([`Outcome::Saved`]); the table is saved in every snapshot as
//! [`SESSIONS_FILE`], beside the guest's [`STATE_FILE`].
//!
//! A group's module changes through its log: a `Body::Deploy` entry makes
//! every replica switch at that index (the old module saves its state, the
//! new one loads it). Every snapshot carries its module ([`MODULE_FILE`]),
//! so a replica restored from one runs the module the state was made by.
//!
//! Everything else that shapes what apply produces (guest fuel, memory,
//! result and snapshot caps; session limits) is the group's
//! [`GroupSettings`], carried the same way: a `Body::Found` entry, proposed
//! by a group's first leader, binds every replica (a late joiner too) to
//! one module and one set of settings; `Body::Settings` entries change
//! them; every snapshot records them ([`SETTINGS_FILE`]). A node's own
//! flags only found a group.
//!
//! `process` is `begin_ready` → `LogStore::write` → `finish_ready` in a loop.
//! A daemon serving many groups drives the pipeline itself: it merges the
//! groups' writes ([`merge_write`]) into one atomic write with one sync
//! (group commit) and applies while they sync, up to
//! [`WRITES_IN_FLIGHT_MAX`] Readies per group.
//! Errors: [`Error::is_fatal`] means drop the replica and reopen it from storage.

mod convert;
mod error;
mod kv;
mod module;
mod outcome;
mod replica;
mod settings;

pub use error::{Error, Result};
pub use kv::KvStores;
pub use module::{GuestModule, MODULE_BYTES_MAX, MODULE_FILE};
pub use outcome::Outcome;
pub use replica::{
    APPLY_BATCH_ENTRIES_MAX, APPLY_IN_PLACE_BYTES_MAX, APPLY_IN_PLACE_ENTRIES_MAX, Applied, DIGEST_REPORT_EVERY_TICKS,
    DIGESTS_KEPT_MAX, Digest, DigestStatus, Fence, Install, ModuleSource, Output, PendingReady, READY_ROUNDS_MAX,
    Replica, ReplicaConfig, SESSIONS_FILE, STATE_FILE, SnapshotDone, SnapshotJob, WRITES_IN_FLIGHT_MAX, WriteToken,
    merge_write,
};
pub use settings::{DIGEST_INTERVAL_DEFAULT, GroupSettings, SETTINGS_FILE, SettingsError};
