//! waft-raft: the Raft protocol (SOFAJRaft feature set, etcd/raft shape) as a
//! pure, deterministic state machine. No I/O, no clock, no threads, no OS
//! randomness: time arrives as `tick()`, work leaves as a [`Ready`] batch.
//!
//! ```
//! use waft_raft::{Config, Configuration, RawNode};
//! let mut node = RawNode::new(Config::new(1, 42), Configuration::new([1])).unwrap();
//! for _ in 0..20 { node.tick(); }               // single voter: campaigns
//! let rd = node.ready();                        // persist term and vote ...
//! node.on_hard_state_persisted(rd.hard_state.unwrap()); // ... then it leads
//! let rd = node.ready();                        // the leader's no-op entry
//! if let Some(e) = rd.entries.last() { node.on_persisted(e.index, e.term); }
//! let (index, _term) = node.propose(bytes::Bytes::from_static(b"cmd")).unwrap();
//! let rd = node.ready();
//! node.on_persisted(index, rd.entries.last().unwrap().term);
//! assert_eq!(node.ready().committed_entries.last().unwrap().index, index);
//! ```
//!
//! # Shape
//!
//! * Build: [`RawNode::new`] (founding member or empty joiner) or
//!   [`RawNode::restart`] from what storage holds ([`RestartState`]: hard
//!   state, latest snapshot meta, entries after it, applied index).
//! * Inputs: `tick`, `step(Message)`, `propose`, `read_index(id, ReadMode)`,
//!   admin (`add_peer`, `remove_peer`, `change_peers`, `add_learner`,
//!   `remove_learner`, `promote_learner`, `transfer_leader`, `reset_peers`,
//!   `campaign_now`) and completion notices (`on_hard_state_persisted`,
//!   `on_persisted`, `on_snapshot_saved`/`_save_failed`,
//!   `on_snapshot_installed`/`_install_failed`).
//! * Output: [`RawNode::ready`] drains a [`Ready`]; its doc holds the ordering rules.
//! * The log since the last snapshot lives in memory (bounded by
//!   `Config::snapshot_margin_entries` plus `uncommitted_entries_max`); storage
//!   is write-behind and the storage crate owns its own record types.
//! * Configuration changes take effect when their entry is appended (Raft
//!   dissertation §4.1); entries carry the whole new configuration
//!   ([`Configuration::encode`]).
//!
//! The crate is exercised by `waft-sim` (seeded simulator, scenario tests).

pub mod config;
pub mod log;
pub mod node;
pub mod progress;
pub mod quorum;
pub mod read_only;
pub mod types;

pub use config::{Config, PRIORITY_DISABLED, PRIORITY_NEVER, Priority};
pub use node::{
    Event, RawNode, ReadMode, ReadState, Ready, RestartState, Role, SnapshotInstall, SoftState, StartError,
};
pub use types::*;
