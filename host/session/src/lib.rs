//! waft-session: exactly-once client sessions, kept by the host for every
//! state machine. A client opens a session through the log, numbers its
//! commands, and retries a command with the same number after a timeout, a
//! not-leader reply or a lost connection; the host applies each number once
//! and answers every retry with the reply it saved.
//!
//! Pure: no I/O, no clock, no randomness. Time is the leader's timestamp
//! carried in each entry, so every replica expires the same sessions at the
//! same log index. The Raft core knows nothing of sessions: they are a layer
//! between the log and the guest.
//!
//! ```
//! use bytes::Bytes;
//! use waft_session::{Body, Envelope, SessionConfig, SessionTable, Verdict};
//!
//! let mut table = SessionTable::new(SessionConfig::default()).unwrap();
//! // Propose (leader): wrap what the client sent, stamped with the leader's clock.
//! let register = Envelope::new(1_000, Body::Register { nonce: Some(7) }).encode().unwrap();
//! // Apply (every replica, log order): the session id is the entry's index.
//! let v = table.apply(5, Envelope::decode(&register).unwrap());
//! assert_eq!(v, Verdict::Registered { session_id: 5 });
//!
//! let incr = Envelope::new(1_010, Body::Command {
//!     session_id: 5, seq: 1, lowest_unacked_seq: 1, payload: Bytes::from_static(b"incr"),
//! });
//! // First copy: the guest applies it, then the table saves its reply.
//! let Verdict::Apply { payload, ticket: Some(ticket) } = table.apply(6, incr.clone()) else { panic!() };
//! assert_eq!(payload, "incr");
//! table.record_reply(ticket, Bytes::from_static(b"1"));
//! // A retry through another leader commits again: answered, not re-applied.
//! assert_eq!(table.apply(9, incr), Verdict::Duplicate { reply: Bytes::from_static(b"1") });
//!
//! // Snapshot: a host-owned section beside the guest's stream.
//! let section = table.encode_snapshot().unwrap();
//! let restored = SessionTable::decode_snapshot(SessionConfig::default(), &section).unwrap();
//! assert_eq!(restored, table);
//! ```
//!
//! # What the host does
//!
//! * **Propose** (leader): wrap the client's request in an [`Envelope`] with
//!   the leader's wall clock in ms ([`Envelope::encode`]) and propose the bytes.
//!   A command's payload may be at most the proposal limit minus
//!   [`ENVELOPE_OVERHEAD_BYTES_MAX`].
//! * **Apply** (every replica, in log order): skip the leader's empty no-op;
//!   [`Envelope::decode`] each client entry (a decode error is the entry's
//!   result, identical everywhere); call [`SessionTable::apply`] with the entry's
//!   index and act on the [`Verdict`]: `Apply` → give the payload to the guest
//!   (batched as before), then [`SessionTable::record_reply`] with the ticket and
//!   the encoded outcome (success or the guest's error, so a retry sees the same
//!   outcome); `Duplicate` → the saved reply; `DuplicateInFlight` → the reply of
//!   the entry at `original_index` in the same batch; `Registered`, `Done`,
//!   `Refused` → answer directly. Hand in every ticket of a batch (any order)
//!   before applying the next batch; a snapshot is refused while one is out.
//!   Replicas that batch differently may answer a duplicate differently
//!   (`DuplicateInFlight` here, `Duplicate` there), but always with the same
//!   reply, and their tables are equal after every batch.
//! * **Snapshot**: save [`SessionTable::encode_snapshot`] as its own section
//!   beside the guest's stream; on install, [`SessionTable::decode_snapshot`]
//!   with the group's [`SessionConfig`] and replace the table with it.
//!
//! # Rules
//!
//! * **Deduplication** (Raft dissertation §6.3): per session the table keeps
//!   the client's lowest unacknowledged sequence number and, for every applied
//!   command at or above it, the saved reply. A command below it is refused as
//!   [`SessionError::Stale`] (its client already has the reply; this copy is a
//!   late duplicate). A command at most `window_commands_max - 1` above it is
//!   applied once, in whatever order the copies commit; beyond that it is
//!   refused as [`SessionError::WindowFull`]. Saved replies are therefore
//!   bounded by the window per session.
//! * **Reply bytes**: `reply_bytes_per_session_max` and `reply_bytes_total_max`
//!   bound what is saved. A reply that would cross either is not kept; the
//!   command still applied exactly once, and a retry gets
//!   [`SessionError::ReplyDiscarded`] instead of a second application. The
//!   decision is taken at the command's place in the log, as if its reply
//!   were recorded the moment it applied, so every replica keeps the same
//!   replies however it batches the guest's calls.
//! * **Expiry**: table time is the largest leader timestamp applied so far
//!   (never a local clock). Before each entry applies, every session idle for
//!   more than `session_idle_timeout_ms` of table time is removed; its client
//!   then gets [`SessionError::UnknownOrExpired`] and opens a new session. A
//!   keep-alive, a command or a duplicate keeps a session alive.
//! * **Full table**: a registration beyond `sessions_open_max` is refused with
//!   [`SessionError::TableFull`]; no open session is evicted. Evicting the least
//!   recently used session would let a burst of new clients silently cancel the
//!   exactly-once promise of a live client that is retrying a command right
//!   now (its retry would meet "expired" with the outcome unknown) — the very
//!   ambiguity sessions exist to remove. A refusal is loud and safe: the new
//!   client learns at once, retries later, and the operator sees a capacity
//!   limit to raise. Dead clients' sessions still leave by idle expiry, so the
//!   table drains by itself.
//! * **Registration retries**: a client that may retry `Register` picks a random
//!   nonce; a registration whose nonce names an open session returns that
//!   session, so a retried registration does not leak a second one.

mod envelope;
mod records;
mod snapshot;
mod table;
mod wire;

pub use envelope::{Body, ENVELOPE_OVERHEAD_BYTES_MAX, ENVELOPE_VERSION, Envelope, EnvelopeError, PAYLOAD_BYTES_MAX};
pub use records::{Record, StoredRecord};
pub use snapshot::{SNAPSHOT_VERSION, SnapshotError, snapshot_bytes_max};
pub use table::{
    ConfigError, REPLY_BYTES_PER_SESSION_MAX_DEFAULT, REPLY_BYTES_TOTAL_MAX_CEILING, REPLY_BYTES_TOTAL_MAX_DEFAULT,
    SESSION_IDLE_TIMEOUT_MS_DEFAULT, SESSIONS_OPEN_MAX_CEILING, SESSIONS_OPEN_MAX_DEFAULT, SessionConfig, SessionError,
    SessionTable, Ticket, Verdict, WINDOW_COMMANDS_MAX_CEILING, WINDOW_COMMANDS_MAX_DEFAULT,
};
