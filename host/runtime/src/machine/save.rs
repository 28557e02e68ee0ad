//! Checkpoint saves of an in-memory state machine, off the apply path.
//!
//! A checkpoint (a digest point, a snapshot, a replay log past its bounds)
//! needs the guest's `on-snapshot-save` of the state at one applied point, a
//! call as long as the state is large. Without a [`Spawn`] hook the apply
//! instance makes it in place, and its group waits; every replica waits at
//! the same index, so none times out on the others. With one, the apply
//! instance does not make it: a *save job* gets a copy of the replay log
//! since the checkpoint, replays it into a second instance (the *saver*)
//! and saves there, on another thread ([`Spawn`]) while the apply instance
//! goes on.
//!
//! The saver stays at the checkpoint's state between saves, so a save costs
//! no load: loading a state takes a guest far longer than saving it (the
//! atomic example loads 800,000 keys in more than the default
//! `fuel_per_snapshot`, and saves them in a fraction of it). It is built
//! when there is none (the first save, or after one failed) as a fault's
//! recovery rebuilds the apply instance: the checkpoint's bytes loaded into
//! a fresh instance. Entries are replayed in batches (one entry per call
//! for a guest that draws randomness, or when a batch fails), with the
//! doubled bounds, as a query instance catches up.
//!
//! What the apply path pays for a checkpoint is a copy of the replay log
//! since the checkpoint (its bound, [`Limits::replay_bytes_max`] bytes, or
//! up to `SAVING_REPLAY_FACTOR_MAX` times that while saves queue); a second
//! core pays the replay (what applying those entries cost the first) and
//! the save, and the saver holds one more copy of the guest's memory.
//! Saves queue behind one another (at most [`SAVES_IN_FLIGHT_MAX`]), each
//! going on from where the last one left its saver. When the queue is full
//! the checkpoint asked for is skipped (a digest point without a digest on
//! this replica, a snapshot later); the apply path waits for the oldest
//! save only once the replay log is `SAVING_REPLAY_FACTOR_MAX` times past
//! its bounds, the bound on its memory.
//!
//! [`Limits::replay_bytes_max`]: crate::Limits::replay_bytes_max

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::{Live, Replay, RuntimeError, load_fresh, replay_items, replay_items_batched};
use crate::engine::Limits;
use crate::module::Module;

/// Checkpoint saves a state machine has in flight at once. They run one
/// after another, each on the saver the last one leaves; a checkpoint
/// asked for while this many are in flight is not saved
/// ([`SaveError::Behind`]): the saves are behind the applies.
pub const SAVES_IN_FLIGHT_MAX: usize = 4;

/// Runs a save job somewhere else (the daemon: a blocking thread). Without
/// one, a job runs where it is started.
pub type Spawn = Arc<dyn Fn(Box<dyn FnOnce() + Send>) + Send + Sync>;

/// Why a checkpoint save gave no bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SaveError {
    /// The guest's save refused, or faulted: decided by the state alone,
    /// so the same on every replica.
    #[error("the state machine could not save its state: {0}")]
    Guest(String),
    /// The job failed on this replica only (a replay that faulted, a
    /// backstop, a thread that died).
    #[error("the state could not be saved here: {0}")]
    Failed(String),
    /// Not started: this many saves are in flight already, behind the
    /// applies (a replica short of CPU).
    #[error("not saved: {0} checkpoint saves are still running")]
    Behind(usize),
}

impl From<SaveError> for RuntimeError {
    fn from(e: SaveError) -> Self {
        // Neither poisons anything: the apply instance never took part.
        RuntimeError::Guest(e.to_string())
    }
}

/// What a save gives: the state's bytes.
pub type SaveResult = Result<Arc<[u8]>, SaveError>;

/// The state at one applied point, saved now or on its way (see the module
/// docs). Clones share one save.
#[derive(Clone)]
pub struct SavedState(Arc<Slot>);

struct Slot {
    done: Mutex<Done>,
    finished: Condvar,
}

#[derive(Default)]
struct Done {
    result: Option<SaveResult>,
    /// The saver, at the saved state, for the state machine to take back.
    saver: Option<Live>,
}

impl std::fmt::Debug for SavedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavedState").field("finished", &self.is_finished()).finish()
    }
}

impl SavedState {
    /// A save that has finished already.
    pub fn ready(result: SaveResult) -> SavedState {
        let state = SavedState::pending();
        state.finish(result, None);
        state
    }

    pub(super) fn pending() -> SavedState {
        SavedState(Arc::new(Slot { done: Mutex::new(Done::default()), finished: Condvar::new() }))
    }

    fn lock(&self) -> MutexGuard<'_, Done> {
        // Nothing a panic could leave half-written: a result is set whole.
        self.0.done.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn is_finished(&self) -> bool {
        self.lock().result.is_some()
    }

    /// The result, if the save finished.
    pub fn try_result(&self) -> Option<SaveResult> {
        self.lock().result.clone()
    }

    /// Waits for the save to finish. Blocks: off any async worker.
    pub fn wait(&self) -> SaveResult {
        let mut done = self.lock();
        loop {
            if let Some(result) = &done.result {
                return result.clone();
            }
            done = self.0.finished.wait(done).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    fn finish(&self, result: SaveResult, saver: Option<Live>) {
        let mut done = self.lock();
        if done.result.is_none() {
            done.result = Some(result);
            done.saver = saver;
        }
        drop(done);
        self.0.finished.notify_all();
    }

    pub(super) fn take_saver(&self) -> Option<Live> {
        self.lock().saver.take()
    }
}

/// One checkpoint save: the state at `base` plus `items`, saved on the
/// saver the save `after` leaves (at its point, the first so many items),
/// or on `saver` (at `base`), or on a fresh instance loaded from `base`.
pub(super) struct SaveJob {
    pub module: Module,
    pub limits: Limits,
    pub group: u64,
    pub label: Arc<str>,
    pub saver: Option<Live>,
    pub after: Option<(SavedState, usize)>,
    pub base: Option<Arc<[u8]>>,
    pub items: Vec<Replay>,
    pub arena: Vec<u8>,
    pub state: SavedState,
}

/// Finishes a job's slot if the job never did (a panic on its thread), so
/// nothing waits forever.
struct Unfinished(SavedState);

impl Drop for Unfinished {
    fn drop(&mut self) {
        self.0.finish(Err(SaveError::Failed("the save job ended without a result".into())), None);
    }
}

impl SaveJob {
    /// Runs the job and files its result, and the saver on success.
    pub fn run(self) {
        let SaveJob { module, limits, group, label, saver, after, base, items, arena, state } = self;
        let guard = Unfinished(state);
        let fuel = limits.fuel_per_entry.saturating_mul(super::CANONICAL_FACTOR);
        let failed = |e: RuntimeError| SaveError::Failed(e.to_string());
        // The save before this one runs first; its saver is at its point.
        let (saver, from) = match after {
            Some((before, upto)) => match before.wait() {
                Ok(_) => (before.take_saver(), upto),
                Err(_) => (None, 0),
            },
            None => (saver, 0),
        };
        let (saver, from) = match saver {
            Some(mut live) => {
                live.set_memory_limit(super::canonical_memory(&limits));
                (Ok(live), from)
            }
            None => (load_fresh(&module, &limits, group, &label, base.as_ref()).map_err(failed), 0),
        };
        let rest = items.get(from..).unwrap_or_default();
        // In batches first; a batch can fail where its entries one by one
        // did not (the host's copy bound on a call's results): then again
        // from the checkpoint, one entry per call, as a recovery replays.
        let replayed =
            saver.and_then(|mut live| match replay_items_batched(&mut live, &module, rest, &arena, &limits) {
                Ok(()) => Ok(live),
                Err(_) => {
                    let mut live = load_fresh(&module, &limits, group, &label, base.as_ref()).map_err(failed)?;
                    replay_items(&mut live, &items, &arena, &limits, fuel).map_err(failed)?;
                    Ok(live)
                }
            });
        let (result, saver) = match replayed {
            Ok(live) => save(live),
            Err(e) => (Err(e), None),
        };
        guard.0.finish(result, saver);
    }
}

/// Saves `live`'s state into memory; gives the instance back only with the
/// bytes (after a failed save it is ahead of the checkpoint).
fn save(mut live: Live) -> (SaveResult, Option<Live>) {
    match live.call_save(Vec::new()) {
        Ok((Ok(()), bytes, _)) => (Ok(bytes.into()), Some(live)),
        Ok((Err(e), _, _)) => (Err(SaveError::Guest(e)), None),
        // Where a backstop stops a call depends on this machine's speed.
        Err(f) if f.fault.kind == super::FaultKind::Backstop => (Err(SaveError::Failed(f.fault.to_string())), None),
        Err(f) => (Err(SaveError::Guest(f.fault.to_string())), None),
    }
}
