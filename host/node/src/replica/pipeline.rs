//! The Ready pipeline: the one place that orders a replica's Readies against
//! their writes, for every caller (the daemon's driver, the simulator, tests
//! that pump by hand).
//!
//! A caller takes a Ready (`begin_ready`), sends its early messages, starts
//! its write on its way to disk however it likes (one synced write of its
//! own, a commit thread merging many groups, a simulated disk), applies it
//! (`apply_ready`: entries committed earlier are durable already), and hands
//! it back (`enqueue_ready`). When the disk says a write is durable the
//! caller reports its token (`write_durable`), and `finish_durable` finishes
//! every Ready whose turn has come, strictly in the order they were taken:
//! the core hears what is persisted, and the messages that promise it leave.
//! A snapshot pulled meanwhile (`install_pulled`) waits until the pipeline is
//! empty, and no new Ready begins while it waits.
//!
//! Must never finish a Ready before its write is durable, nor out of order.

use waft_raft::Message;
use waft_storage::{LogStore, SnapshotStore, WriteSet};

use super::{Install, Output, PendingReady, Replica};
use crate::error::Result;

/// Readies whose writes may be on their way to disk at once. While they sync
/// the caller goes on: it takes acknowledgements and proposals, and entries
/// committed meanwhile (durable already) apply and answer. Beyond it
/// `begin_ready` hands out nothing until the oldest write is durable.
pub const WRITES_IN_FLIGHT_MAX: usize = 8;

/// Names one Ready's write, for `Replica::write_durable`. Tokens of one
/// replica increase in the order its Readies were taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteToken(u64);

impl Replica {
    /// Whether `begin_ready` may hand out another Ready: the pipeline has
    /// room and no pulled snapshot waits for it to drain.
    pub(super) fn pipeline_has_room(&self) -> bool {
        self.pipeline.len() < WRITES_IN_FLIGHT_MAX && self.install_waiting.is_none()
    }

    pub(super) fn next_write_token(&mut self) -> WriteToken {
        let t = WriteToken(self.next_token);
        self.next_token += 1;
        t
    }

    /// Hands a Ready taken by `begin_ready` (its write taken and on its way,
    /// `apply_ready` run or not) back to the pipeline; returns the token to
    /// report its write durable by. A Ready that had nothing to write is
    /// durable already.
    pub fn enqueue_ready(&mut self, pending: PendingReady) -> WriteToken {
        debug_assert!(pending.write.is_empty(), "enqueue_ready before the write was taken");
        debug_assert!(self.pipeline.back().is_none_or(|p| p.token < pending.token), "Readies enqueued out of order");
        let token = pending.token;
        self.pipeline.push_back(pending);
        token
    }

    /// The write named `token` is durable. Tokens may be reported in any
    /// order; Readies still finish in the order they were taken.
    pub fn write_durable(&mut self, token: WriteToken) {
        if let Some(p) = self.pipeline.iter_mut().find(|p| p.token == token) {
            p.durable = true;
        }
    }

    /// Whether the next `finish_durable` that drains the pipeline may run
    /// long or sync the disk: it installs a pulled snapshot that waited, or
    /// writes a snapshot's log purge. A caller on an async runtime moves such
    /// a call off its worker.
    pub fn finish_may_block(&self) -> bool {
        self.install_waiting.is_some() || self.purge_pending.is_some()
    }

    /// Readies handed back and not finished yet.
    pub fn writes_in_flight(&self) -> usize {
        self.pipeline.len()
    }

    /// Tokens of the Readies whose writes are not durable yet, oldest first.
    pub fn writes_pending(&self) -> impl Iterator<Item = WriteToken> + '_ {
        self.pipeline.iter().filter(|p| !p.durable).map(|p| p.token)
    }

    /// Finishes the oldest Readies whose writes are durable, in order (see
    /// `finish_ready`'s notes on what finishing does), then a pulled snapshot
    /// that waited for them. Results, reads and notices go into `out`.
    pub fn finish_durable(
        &mut self,
        store: &mut dyn LogStore,
        snapshots: &SnapshotStore,
        send: &mut dyn FnMut(Message),
        out: &mut Output,
    ) -> Result<()> {
        while self.pipeline.front().is_some_and(|p| p.durable) {
            let Some(pending) = self.pipeline.pop_front() else { break };
            self.finish_one(pending, snapshots, send, out)?;
        }
        if self.pipeline.is_empty()
            && let Some((upto, term)) = self.purge_pending.take()
        {
            // No write of this group is on its way: the purge cannot
            // overtake one.
            let mut set = WriteSet::new();
            set.purge(self.group, upto, term);
            store.write(set).map_err(|e| self.stop(e))?;
        }
        if self.pipeline.is_empty()
            && let Some(pulled) = self.install_waiting.take()
        {
            self.install_now(pulled, store, snapshots, out)?;
        }
        Ok(())
    }

    /// A snapshot pull the core asked for ended: with every file received
    /// (`Ok`), or failed (`Err`: why). Installs it now if no write is in
    /// flight, else once the pipeline drains (`finish_durable`); the outcome
    /// is `Output::install_finished`. `Err` only when the replica stopped.
    pub fn install_pulled(
        &mut self,
        pulled: std::result::Result<Install, String>,
        store: &mut dyn LogStore,
        snapshots: &SnapshotStore,
        out: &mut Output,
    ) -> Result<()> {
        if self.pipeline.is_empty() {
            self.install_now(pulled, store, snapshots, out)
        } else {
            self.install_waiting = Some(pulled);
            Ok(())
        }
    }

    fn install_now(
        &mut self,
        pulled: std::result::Result<Install, String>,
        store: &mut dyn LogStore,
        snapshots: &SnapshotStore,
        out: &mut Output,
    ) -> Result<()> {
        let install = match pulled {
            Ok(install) => install,
            Err(why) => {
                self.abandon_install();
                out.install_finished = Some(Err(why));
                return Ok(());
            }
        };
        let id = install.id();
        match self.finish_install(store, snapshots, install) {
            Ok(()) => out.install_finished = Some(Ok(id)),
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => out.install_finished = Some(Err(e.to_string())),
        }
        Ok(())
    }
}
