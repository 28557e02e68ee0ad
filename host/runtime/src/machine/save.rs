//! Checkpoint saves of an in-memory state machine, off the apply path.
//!
//! A checkpoint (a digest point, a snapshot, a replay log past its bounds)
//! needs the guest's `on-snapshot-save` of the state at one applied point, a
//! call as long as the state is large. The apply instance does not make it:
//! a *save job* gets the last checkpoint's bytes and a copy of the replay
//! log since, loads the bytes into a fresh instance (the *saver*), replays
//! the log into it and saves there, on another thread ([`Spawn`]) while the
//! apply instance goes on.
//!
//! The saver is built exactly as a fault's recovery rebuilds the apply
//! instance, and as a restarted replica rebuilds its state (a load, then
//! one entry per call with the doubled bounds), and it is never kept for
//! the next save: a save is a call like any other, and a guest whose later
//! behaviour depends on the calls its instance ran before (a std
//! `RandomState` seeded on first use, say) would otherwise carry one save's
//! traces into the next checkpoint.
//!
//! What the apply path pays for a checkpoint is a copy of the replay log
//! since the last one (at most [`Limits::replay_bytes_max`] bytes); a second
//! core pays the load, the replay (what applying those entries cost the
//! first) and the save. At most one job is in flight
//! ([`SAVES_IN_FLIGHT_MAX`]): a checkpoint due while one runs waits for it
//! only once the replay log is twice past its bounds.
//!
//! [`Limits::replay_bytes_max`]: crate::Limits::replay_bytes_max

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::{Live, Replay, RuntimeError, load_fresh, replay_items};
use crate::engine::Limits;
use crate::module::Module;

/// Checkpoint saves a state machine has running at once.
pub const SAVES_IN_FLIGHT_MAX: usize = 1;

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
        state.finish(result);
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

    fn finish(&self, result: SaveResult) {
        let mut done = self.lock();
        if done.result.is_none() {
            done.result = Some(result);
        }
        drop(done);
        self.0.finished.notify_all();
    }
}

/// One checkpoint save: the state at `base` plus `items`, rebuilt on a fresh
/// instance and saved there.
pub(super) struct SaveJob {
    pub module: Module,
    pub limits: Limits,
    pub group: u64,
    pub label: Arc<str>,
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
        self.0.finish(Err(SaveError::Failed("the save job ended without a result".into())));
    }
}

impl SaveJob {
    /// Runs the job and files its result.
    pub fn run(self) {
        let SaveJob { module, limits, group, label, base, items, arena, state } = self;
        let guard = Unfinished(state);
        let fuel = limits.fuel_per_entry.saturating_mul(super::CANONICAL_FACTOR);
        let failed = |e: RuntimeError| SaveError::Failed(e.to_string());
        let result = load_fresh(&module, &limits, group, &label, base.as_ref()).map_err(failed).and_then(|mut live| {
            replay_items(&mut live, &items, &arena, &limits, fuel).map_err(failed)?;
            save(&mut live)
        });
        guard.0.finish(result);
    }
}

/// Saves `live`'s state into memory.
fn save(live: &mut Live) -> SaveResult {
    match live.call_save(Vec::new()) {
        Ok((Ok(()), bytes, _)) => Ok(bytes.into()),
        Ok((Err(e), _, _)) => Err(SaveError::Guest(e)),
        // Where a backstop stops a call depends on this machine's speed.
        Err(f) if f.fault.kind == super::FaultKind::Backstop => Err(SaveError::Failed(f.fault.to_string())),
        Err(f) => Err(SaveError::Guest(f.fault.to_string())),
    }
}
