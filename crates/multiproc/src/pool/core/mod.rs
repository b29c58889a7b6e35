//! The pool core: I/O-free bookkeeping shared by every pool that sends work over a
//! wire (local worker processes; MPI ranks and cluster nodes drive the same core from
//! their own event loops).
//!
//! It owns the job table ([`jobs`]), the chunking rule ([`chunking`]) and, per worker,
//! the chunks it holds. An event loop feeds it what happened — a worker joined, a
//! reply arrived, a worker died, a deadline passed — and asks it what to send next.
//! It never touches a socket or a process, so every rule here has unit tests that need
//! neither.
//!
//! What a worker's death costs: the call it was running, and nothing else. Answers it
//! sent before dying are kept (a worker answers a long chunk in pieces, as its calls
//! finish). A worker may hold several chunks at once (pipelining, see [`chunking`]);
//! the event loop says which call it had started last ([`LastStart`], from the
//! worker's call slot). That call is retried alone on another worker, if the pool
//! allows retries, or answered with the error that says how the worker died. Every
//! other call it held goes back to the queue ([`jobs::HandedBack`]; not a retry): those
//! it had not started, and those it had run whose answers died with it (they run
//! twice). For that the core keeps each chunk's encoded arguments until the chunk is
//! answered ([`Core::set_requeue`]; shared with the message that carries them, not
//! copied). A death with no call running (between calls) hands everything back, at
//! most [`MAX_HANDBACKS`](death::MAX_HANDBACKS) times per call; after that the call
//! answers [`Error::LostWithWorker`], which names how the worker died. A transport
//! without call slots ([`LastStart::Unknown`], MPI) answers every held call with the
//! death.
//!
//! The rooms: this file holds [`Core`] and what it does with jobs; [`slot`] a worker
//! and its life ([`SlotState`]); [`chunk`] building the next chunk for a worker;
//! [`kept`] a chunk's arguments, kept to run its calls again; [`answers`] filing what
//! workers answer and handing it to the jobs' handles; [`death`] what a worker's
//! death costs. The core knows bytes, call numbers ([`Indices`]) and [`Answers`] only:
//! decoding them as the task's result type is the pool layer's (`pool::batch`).

mod answers;
mod chunk;
pub(crate) mod chunking;
mod death;
mod ends;
mod indices;
pub(crate) mod jobs;
mod kept;
mod slot;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::pool::ChunkSize;
use crate::wire::message::TaskRef;
use jobs::{Job, Source};

#[cfg(feature = "cluster")]
pub(crate) use answers::Part;
pub(crate) use answers::{Answers, Sink};
pub(super) use answers::Delivery;
pub(crate) use chunk::Limits;
pub(crate) use death::LastStart;
pub(super) use indices::Indices;
pub(super) use slot::Abort;
pub(crate) use slot::{SlotState, WorkerId};
use answers::note_due;
use slot::Slot;

/// Pool-wide settings the core applies.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) workers: usize,
    pub(crate) retries: u32,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) max_tasks_per_child: Option<usize>,
    /// A worker may hold more than one chunk. Off for a transport whose sends block
    /// until received (MPI): rank 0 sending the next chunk while the rank sends its
    /// answer would deadlock both.
    pub(crate) pipeline: bool,
    /// How long automatically sized chunks run.
    pub(crate) chunk_time: chunking::ChunkTime,
}

/// The core of one pool: its jobs, its workers' slots, and the rules between them.
/// One event loop owns it (behind the pool's lock) and calls it as things happen.
pub(crate) struct Core {
    cfg: Config,
    jobs: BTreeMap<u64, Job>,
    next_job: u64,
    slots: HashMap<WorkerId, Slot>,
    /// Why the pool cannot run work (an initializer that keeps failing...).
    broken: Option<Error>,
    /// Jobs with a sink that have answers (or their end) to hand over.
    due: Vec<u64>,
    /// Keep every chunk's arguments until it is answered, to hand a dead worker's
    /// calls back (see [`Core::set_requeue`]).
    requeue: bool,
}

impl Core {
    pub(crate) fn new(cfg: Config) -> Self {
        Core {
            cfg,
            jobs: BTreeMap::new(),
            next_job: 0,
            slots: HashMap::new(),
            broken: None,
            due: Vec::new(),
            requeue: false,
        }
    }

    /// Keeps every chunk's arguments until the chunk is answered, so that a dead
    /// worker's calls other than the running one go back to the queue (for a
    /// transport whose deaths say which call was running: [`LastStart`]). Inline
    /// arguments are then shared with the message ([`Chunk::shared`](chunk::Chunk::shared)), not copied.
    pub(super) fn set_requeue(&mut self, on: bool) {
        self.requeue = on;
    }

    /// The number of workers the fair share divides by (an MPI pool learns it once
    /// its ranks have answered).
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pub(crate) fn set_workers(&mut self, workers: usize) {
        self.cfg.workers = workers.max(1);
    }

    pub(super) fn open(&mut self, entry: TaskRef, chunk: ChunkSize, caller_driven: bool) -> u64 {
        let id = self.next_job;
        self.next_job += 1;
        self.jobs.insert(id, Job::new(entry, chunk, caller_driven));
        id
    }

    /// Opens a job whose answers go to `sink` as they arrive (see [`Sink`]), handed
    /// over by [`Core::take_deliveries`]. Nobody waits on it right away.
    pub(super) fn open_sunk(
        &mut self,
        entry: TaskRef,
        chunk: ChunkSize,
        sink: Arc<dyn Sink>,
    ) -> u64 {
        let id = self.open(entry, chunk, false);
        if let Some(j) = self.jobs.get_mut(&id) {
            j.sink = Some(sink);
        }
        id
    }

    /// Whether a call of `job` is running: the chunk a worker works on (the first it
    /// holds) is the job's.
    pub(super) fn running(&self, job: u64) -> bool {
        self.slots
            .values()
            .any(|s| s.held.front().is_some_and(|h| h.job == job))
    }

    /// Whether a caller waits on `job` right away (see [`Core::open`]).
    pub(super) fn caller_driven(&self, job: u64) -> bool {
        self.jobs.get(&job).is_some_and(|j| j.caller_driven)
    }

    /// Adds calls `first, first + 1, ...` to `job` (a no-op for a job that is gone).
    pub(super) fn submit(&mut self, job: u64, first: usize, source: Box<dyn Source>) {
        let broken = self.broken.as_ref().map(clone_error);
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        let n = source.len();
        j.outstanding += n;
        match broken {
            Some(e) => {
                let answers = (first..first + n).map(|i| (i, clone_error(&e))).collect();
                self.deliver(job, Answers::Failed(answers));
            }
            None => j.sources.push_back((first, source)),
        }
    }

    pub(super) fn seal(&mut self, job: u64) {
        if let Some(j) = self.jobs.get_mut(&job) {
            j.sealed = true;
        }
        self.remove_if_finished(job);
    }

    /// Nobody wants `job`'s answers: its pending calls are dropped, answers still to
    /// come are thrown away. With `stop_running`, returns the workers to kill to stop
    /// the job's running calls: those whose every chunk is the job's. A worker that
    /// also holds another job's chunk is left to run (its answers to this job are
    /// thrown away): killing it would cost calls nobody cancelled.
    pub(super) fn cancel(&mut self, job: u64, stop_running: bool) -> Vec<WorkerId> {
        if self.jobs.remove(&job).is_none() || !stop_running {
            return Vec::new();
        }
        self.slots
            .iter_mut()
            .filter(|(_, s)| !s.held.is_empty() && s.held.iter().all(|h| h.job == job))
            .map(|(id, s)| {
                // Its death is the cancel's doing, not a timeout or a panic.
                s.state.cancel();
                *id
            })
            .collect()
    }

    /// Whether `job` will give no more answers (finished, cancelled, or never was).
    pub(super) fn job_over(&self, job: u64) -> bool {
        self.jobs.get(&job).is_none_or(Job::finished)
    }

    fn remove_if_finished(&mut self, job: u64) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        if j.sink.is_some() {
            // Its answers go to its sink first: the job leaves in `take_deliveries`.
            if j.finished() || !j.inbox.is_empty() {
                note_due(&mut self.due, job, j);
            }
        } else if j.finished() {
            self.jobs.remove(&job);
        }
    }

    /// Calls submitted and not answered, in all jobs.
    pub(crate) fn outstanding(&self) -> usize {
        self.jobs.values().map(|j| j.outstanding).sum()
    }

    /// Whether some job nobody is waiting on right away has calls to run: a
    /// background thread must drive the pool.
    pub(super) fn needs_background(&self) -> bool {
        self.jobs
            .values()
            .any(|j| !j.caller_driven && j.outstanding > 0)
    }

    /// The pool cannot run work: answer everything pending, and everything to come.
    pub(super) fn break_pool(&mut self, error: Error) {
        self.fail_pending(&error);
        self.broken = Some(error);
    }

    /// Answers every call not yet handed to a worker with `error`.
    fn fail_pending(&mut self, error: &Error) {
        for j in self.jobs.values_mut() {
            let mut failed = Vec::new();
            for r in std::mem::take(&mut j.retries) {
                failed.push((r.index, clone_error(error)));
            }
            for (first, s) in std::mem::take(&mut j.sources) {
                failed.extend((first..first + s.len()).map(|i| (i, clone_error(error))));
            }
            j.deliver(Answers::Failed(failed));
        }
        let ids: Vec<u64> = self.jobs.keys().copied().collect();
        for id in ids {
            self.remove_if_finished(id);
        }
    }

    /// Answers every call submitted and not answered with `error` (whatever holds
    /// it), keeping the workers: for a pool whose workers are places in a queue
    /// (cluster lanes), not processes, when nobody will answer what they hold.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn fail_outstanding(&mut self, error: &Error) {
        let ids: Vec<WorkerId> = self.slots.keys().copied().collect();
        for id in ids {
            self.fail_held(id, error);
            self.add_worker(id, SlotState::Working);
        }
        self.fail_pending(error);
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken.is_some()
    }
}

/// Errors hold no `Clone` (an `io::Error` inside); a copy keeps kind and message.
fn clone_error(e: &Error) -> Error {
    e.clone_shallow()
}

#[cfg(test)]
mod tests;
