//! What a [`ThreadPool`](super::ThreadPool)'s threads, its handle and its jobs share:
//! the queue of work, the entry of every live job, and each job's flags.
//!
//! One lock guards the queue and the entries; nothing that may run user code (the
//! last reference to a job ends its sink, which may run callbacks) is dropped under
//! it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// A unit of work on the pool's queue: the calls of one chunk.
pub(super) type Work = Box<dyn FnOnce() + Send>;

/// What the pool, the job's chunks and an `AsyncResult` share of a job.
#[derive(Default)]
pub(super) struct Flags {
    cancelled: AtomicBool,
    /// Chunks of the job running now.
    pub(super) running: AtomicUsize,
}

impl Flags {
    pub(super) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    pub(super) fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    pub(super) fn running(&self) -> bool {
        self.running.load(Ordering::Relaxed) > 0
    }
}

pub(super) struct State {
    /// Chunks of every job, in submission order.
    pub(super) queue: VecDeque<Work>,
    pub(super) closed: bool,
    /// Every job not over yet.
    pub(super) jobs: HashMap<u64, Entry>,
}

/// The pool's entry for a job, from its open until it is over (its last reference
/// gone): how to cancel it by its id, even once sealed (a `map` that failed cancels
/// the rest of its calls), and until it is sealed, a reference that keeps it open.
pub(super) struct Entry {
    pub(super) flags: Arc<Flags>,
    pub(super) hold: Option<Arc<dyn Send + Sync>>,
}

pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) work: Condvar,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// No more calls for `job`: the pool lets go of it, so it is over once its
    /// queued chunks have run.
    pub(super) fn seal(&self, job: u64) {
        let hold = self.lock().jobs.get_mut(&job).and_then(|e| e.hold.take());
        // Dropped after the lock: the last reference to a job ends its sink, which
        // may run callbacks that use this pool (and it takes the lock to `forget`).
        drop(hold);
    }

    /// Nobody wants `job`'s answers: its queued chunks will not run, and the answers
    /// of those running are thrown away (a thread cannot be stopped).
    pub(super) fn cancel(&self, job: u64) {
        let entry = self.lock().jobs.remove(&job);
        if let Some(e) = &entry {
            e.flags.cancel();
        }
        // Dropped after the lock (see `seal`).
        drop(entry);
    }

    /// `job` is over (its last reference is gone).
    pub(super) fn forget(&self, job: u64) {
        let entry = self.lock().jobs.remove(&job);
        drop(entry); // it holds no job by now: nothing runs on this drop
    }
}
