//! Group commit across groups: every group's log writes on this node become
//! durable through one thread that merges whatever is waiting into one
//! RocksDB write with one sync.
//!
//! Owns the synced writes of the node's shared RocksDB. A driver hands over
//! the write of a Ready (`waft_node::PendingReady::take_write`) and awaits its
//! durability; meanwhile the thread is syncing the previous batch, so under
//! load many groups' entries share each sync, and an idle node pays one
//! thread hand-off per write. Must never reorder one group's writes (a driver
//! has at most one write in flight, and a batch keeps submission order) nor
//! merge beyond the store's per-write limit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use waft_storage::{LogStore, RocksLogStore, WRITE_SET_BYTES_MAX, WriteSet};

/// Writes waiting for the commit thread. Full means the disk is behind every
/// group: drivers wait here, which is the node's back-pressure on writes.
pub const COMMIT_QUEUE_WRITES_MAX: usize = 1024;
/// Writes merged into one synced RocksDB write at most.
pub const COMMIT_BATCH_WRITES_MAX: usize = 256;
/// Payload bytes merged into one write at most (well under the store's own
/// limit, so a merged write is never refused for its size).
pub const COMMIT_BATCH_BYTES_MAX: usize = WRITE_SET_BYTES_MAX / 4;

struct Request {
    write: WriteSet,
    done: oneshot::Sender<Result<(), String>>,
}

/// The drivers' handle on the commit thread. Cheap to clone.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::Sender<Request>,
    stats: Arc<Stats>,
}

/// What the commit thread did, for metrics and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Writes handed to the thread.
    pub writes_submitted: AtomicU64,
    /// Writes made durable (or failed).
    pub writes_done: AtomicU64,
    /// Synced RocksDB writes: `writes_done / syncs` is the merge factor.
    pub syncs: AtomicU64,
}

impl Committer {
    /// Starts the commit thread for `store`; it ends (and lets go of the
    /// store) when every handle is gone. Join it to know the store is closed.
    pub fn start(store: Arc<Mutex<RocksLogStore>>) -> std::io::Result<(Committer, std::thread::JoinHandle<()>)> {
        let (queue, rx) = mpsc::channel(COMMIT_QUEUE_WRITES_MAX);
        let stats = Arc::new(Stats::default());
        let thread_stats = stats.clone();
        let thread =
            std::thread::Builder::new().name("waft-commit".into()).spawn(move || run(store, rx, &thread_stats))?;
        Ok((Committer { queue, stats }, thread))
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The counters alone, for a reader that must not keep the commit thread
    /// (and so RocksDB) alive, such as the metrics endpoint.
    pub fn stats_handle(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Makes `write` durable, together with whatever other groups wrote
    /// meanwhile. An error means the disk write failed: the caller's replica
    /// must stop.
    pub async fn write(&self, write: WriteSet) -> Result<(), String> {
        durable(&mut self.submit(write).await?).await
    }

    /// Hands `write` to the commit thread (waiting while its queue is full)
    /// and returns what says when it is durable (see [`durable`]), so the
    /// caller can work while the disk syncs. Writes become durable in the
    /// order submitted.
    pub async fn submit(&self, write: WriteSet) -> Result<Durable, String> {
        let (done, rx) = oneshot::channel();
        self.queue.send(Request { write, done }).await.map_err(|_| "the commit thread has stopped".to_string())?;
        self.stats.writes_submitted.fetch_add(1, Ordering::Relaxed);
        Ok(rx)
    }
}

/// A submitted write's outcome, to come.
pub type Durable = oneshot::Receiver<Result<(), String>>;

/// Waits for a submitted write: `Ok` once it is durable.
pub async fn durable(rx: &mut Durable) -> Result<(), String> {
    rx.await.map_err(|_| "the commit thread stopped before the write was durable".to_string())?
}

fn run(store: Arc<Mutex<RocksLogStore>>, mut rx: mpsc::Receiver<Request>, stats: &Stats) {
    // One request may wait over from the previous round (it would have made
    // that batch too large).
    let mut carried: Option<Request> = None;
    loop {
        let first = match carried.take() {
            Some(r) => r,
            None => match rx.blocking_recv() {
                Some(r) => r,
                None => return,
            },
        };
        let mut bytes = first.write.data_bytes();
        let mut merged = first.write;
        let mut waiting = vec![first.done];
        while waiting.len() < COMMIT_BATCH_WRITES_MAX {
            let Ok(next) = rx.try_recv() else { break };
            if bytes + next.write.data_bytes() > COMMIT_BATCH_BYTES_MAX {
                carried = Some(next);
                break;
            }
            bytes += next.write.data_bytes();
            waiting.push(next.done);
            waft_node::merge_write(&mut merged, next.write);
        }
        let synced = merged.must_sync();
        let outcome = SharedStore(store.clone()).write(merged).map_err(|e| e.to_string());
        if let Err(e) = &outcome {
            tracing::error!(error = %e, writes = waiting.len(), "log write failed; the groups in it stop");
        }
        if synced {
            stats.syncs.fetch_add(1, Ordering::Relaxed);
        }
        stats.writes_done.fetch_add(waiting.len() as u64, Ordering::Relaxed);
        for done in waiting {
            let _ = done.send(outcome.clone());
        }
    }
}

/// The node's store as one group sees it outside the commit thread: every
/// call takes the lock for just that call, so a group applying entries or
/// saving a snapshot never holds up the other groups' commits.
pub struct SharedStore(pub Arc<Mutex<RocksLogStore>>);

impl SharedStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, RocksLogStore> {
        // A panic while holding the lock cannot leave RocksDB half-written
        // (writes are atomic batches); the store poisons itself on I/O errors.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl LogStore for SharedStore {
    fn write(&mut self, set: WriteSet) -> waft_storage::Result<()> {
        self.lock().write(set)
    }

    fn log_state(&self, group: u64) -> waft_storage::LogState {
        self.lock().log_state(group)
    }

    fn term(&self, group: u64, index: u64) -> waft_storage::Result<u64> {
        self.lock().term(group, index)
    }

    fn entries(
        &self,
        group: u64,
        lo: u64,
        hi: u64,
        max_bytes: u64,
    ) -> waft_storage::Result<Vec<waft_storage::LogEntry>> {
        self.lock().entries(group, lo, hi, max_bytes)
    }

    fn hard_state(&self, group: u64) -> waft_storage::HardState {
        self.lock().hard_state(group)
    }

    fn config_entries(&self, group: u64) -> waft_storage::Result<Vec<waft_storage::LogEntry>> {
        self.lock().config_entries(group)
    }

    fn groups(&self) -> Vec<u64> {
        self.lock().groups()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use waft_storage::{EntryKind, LogEntry};

    /// Writes of 64 groups submitted while the disk is busy (the store's lock
    /// held, as during a sync) become durable in at most two synced writes:
    /// whatever the thread took before it blocked, then all the rest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::await_holding_lock)] // the held lock stands for a sync in progress
    async fn writes_waiting_for_the_disk_share_one_sync() {
        const GROUPS: u64 = 64;
        let dir = std::env::temp_dir().join(format!("waft-commit-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Arc::new(Mutex::new(RocksLogStore::open(&dir).unwrap()));
        let (committer, thread) = Committer::start(store.clone()).unwrap();
        // Held across the waits on purpose: it stands for a sync in progress.
        let busy = store.lock().unwrap();
        let mut tasks = Vec::new();
        for group in 1..=GROUPS {
            let c = committer.clone();
            tasks.push(tokio::spawn(async move {
                let mut set = WriteSet::new();
                set.append(group, vec![LogEntry::new(1, 1, EntryKind::Normal, vec![group as u8; 16])]);
                c.write(set).await
            }));
        }
        while committer.stats().writes_submitted.load(Ordering::Relaxed) < GROUPS {
            tokio::task::yield_now().await;
        }
        drop(busy);
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let stats = committer.stats();
        assert_eq!(stats.writes_done.load(Ordering::Relaxed), GROUPS);
        let syncs = stats.syncs.load(Ordering::Relaxed);
        assert!((1..=2).contains(&syncs), "{GROUPS} writes took {syncs} syncs");
        for group in 1..=GROUPS {
            assert_eq!(store.lock().unwrap().last_index(group), 1, "group {group} is durable");
        }
        drop(committer);
        thread.join().unwrap();
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
