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
//! most [`MAX_HANDBACKS`] times per call; after that the call answers
//! [`Error::LostWithWorker`], which names how the worker died. A transport without
//! call slots ([`LastStart::Unknown`], MPI) answers every held call with the death.

pub(crate) mod chunking;
pub(crate) mod ends;
pub(crate) mod indices;
pub(crate) mod jobs;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::pool::ChunkSize;
use crate::wire::message::{Failure, TaskRef};
use crate::wire::values::{Data, Received, ValueBuf};
use ends::Ends;
pub(crate) use indices::Indices;
use jobs::{Encoded, HandedBack, Job, Retry, Source};

/// Deaths with no call running after which a call they handed back is no longer handed
/// out but answered ([`Error::LostWithWorker`]): a chunk that kills every worker before
/// its first call starts (or between calls) must not be handed out forever.
pub(crate) const MAX_HANDBACKS: u32 = 3;

/// What a dead worker had started last, as its call slot said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LastStart {
    /// The worker has no call slot (MPI ranks): which call was running is unknown, and
    /// every call it held answers its death.
    Unknown,
    /// It started no call.
    Nothing,
    /// Call `pos` of the chunk whose number's low 32 bits are `seq` (see
    /// `worker::call_word`). It may have finished since (the worker died between two
    /// calls): if its answer arrived, nothing was running; if not, it is taken for the
    /// running call, the closest one to the death.
    Call { seq: u32, pos: u32 },
}

impl LastStart {
    /// The state a call slot's word describes.
    pub(crate) fn of_word(word: u64) -> LastStart {
        if word == crate::worker::NO_CALL {
            LastStart::Nothing
        } else {
            LastStart::Call {
                seq: (word >> 32) as u32,
                pos: word as u32,
            }
        }
    }
}

/// Answers for some calls of one job, still encoded.
pub(crate) enum Answers {
    /// What a worker sent: the calls at `indices`, in order; those listed in
    /// `failures` (by position in `indices`) failed, the others' values lie end to end
    /// in `data`, with `fds` (numbered across the whole frame).
    Values {
        pid: u32,
        indices: Indices,
        failures: Vec<(u32, Failure)>,
        data: Received,
        fds: Vec<OwnedFd>,
        /// The machine that ran them, when not this one (failures name it).
        host: Option<Arc<str>>,
    },
    /// Calls that ended without a value from a worker.
    Failed(Vec<(usize, Error)>),
}

impl Answers {
    /// The calls answered, by index.
    pub(crate) fn indices(&self) -> Indices {
        match self {
            Answers::Values { indices, .. } => indices.clone(),
            Answers::Failed(v) => v.iter().map(|(i, _)| *i).collect(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Answers::Values { indices, .. } => indices.len(),
            Answers::Failed(v) => v.len(),
        }
    }
}

/// Where a job's answers go as they arrive, when its handle does not pull them (an
/// `AsyncResult`: it may be awaited, watched with others, or have callbacks, so
/// answers must reach it without anyone waiting on the pool).
///
/// The core only lists deliveries due ([`Core::take_deliveries`]); the event loop
/// hands them over after releasing its lock, since a sink decodes and may run user
/// callbacks that call into the pool again.
pub(crate) trait Sink: Send + Sync {
    /// Answers for some of the job's calls. Every call is answered (a worker's death,
    /// a broken or terminated pool answer with errors), so a sink needs no end: two
    /// threads may hand over a job's answers at once, and an "end" could overtake them.
    fn answers(&self, answers: Answers);
}

/// Answers due to one job's [`Sink`].
pub(crate) struct Delivery {
    sink: Arc<dyn Sink>,
    answers: Vec<Answers>,
}

impl Delivery {
    /// Hands the answers over: call without holding the pool's lock.
    pub(crate) fn hand_over(self) {
        for a in self.answers {
            self.sink.answers(a);
        }
    }
}

/// What the pool allows a chunk to carry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// The largest encoded argument (and result), and the most a chunk's data holds.
    pub(crate) max_value: usize,
    /// Descriptors one message may carry (0: the transport passes none).
    pub(crate) max_fds: usize,
    /// Big data may travel in a sealed memory file.
    pub(crate) may_spill: bool,
    /// Chunks record where each argument ends ([`Chunk::ends`]): a relay that splits
    /// them without knowing their type needs it.
    pub(crate) ends: bool,
}

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

/// A worker's identity in the core (the event loop maps it to a process, a rank...).
pub(crate) type WorkerId = u64;

/// A chunk a worker holds.
struct Held {
    seq: u64,
    job: u64,
    indices: Indices,
    /// Calls of it answered so far (answers come in order).
    answered: usize,
    deadline: Option<Instant>,
    /// Estimated run time, for pipelining (`None`: call time unknown).
    nanos: Option<f64>,
    /// To run its calls again (retries, hand-backs): its arguments.
    kept: Option<Kept>,
    /// Attempts so far of a retried call (0 for a first run).
    attempts: u32,
    /// See [`jobs::HandedBack::handbacks`].
    handbacks: u32,
}

/// A chunk's arguments, kept until it is answered, to run its calls again should its
/// worker die.
struct Kept {
    data: KeptData,
    /// Where each call's argument ends in `data`.
    ends: Ends,
    /// Copies of the chunk's descriptors (its arguments number them).
    fds: Vec<OwnedFd>,
}

enum KeptData {
    /// Shared with the message that carries them (or a copy, for a transport that
    /// needs its own).
    Inline(Arc<Vec<u8>>),
    /// A copy of the descriptor of the sealed memory file they travel in.
    File(OwnedFd),
}

impl Kept {
    /// The encoded arguments of the calls at `positions` (`None`: the memory file they
    /// travel in cannot be read back).
    fn arguments(&self, positions: &[usize]) -> Option<Vec<Vec<u8>>> {
        let map;
        let all: &[u8] = match &self.data {
            KeptData::Inline(v) => v,
            KeptData::File(file) => {
                map = crate::wire::values::map_sealed(file, usize::MAX, "kept arguments").ok()?;
                map.sealed_bytes()
            }
        };
        positions
            .iter()
            .map(|&p| {
                all.get(self.ends.span(p)?).map(<[u8]>::to_vec)
            })
            .collect()
    }

    /// Copies of the chunk's descriptors.
    fn fds(&self) -> Vec<OwnedFd> {
        self.fds.iter().filter_map(|f| f.try_clone().ok()).collect()
    }
}

/// One worker as the core sees it: the chunks it holds, and where it is in its life.
struct Slot {
    held: VecDeque<Held>,
    next_seq: u64,
    /// Calls answered, for `max_tasks_per_child`.
    done: usize,
    /// Calls handed out, for `max_tasks_per_child`.
    given: usize,
    state: SlotState,
}

impl Slot {
    fn new(state: SlotState) -> Self {
        Slot {
            held: VecDeque::new(),
            next_seq: 0,
            done: 0,
            given: 0,
            state,
        }
    }
}

/// Where a worker is in its life. Only a [`Working`](SlotState::Working) worker is
/// given chunks.
///
/// ```text
/// Initializing --initialized--> Working --retire--> Retiring
///      |                          |
///      +--------------------------+--cancel / expired / on_aborting--> Doomed(Doom)
/// ```
///
/// A doomed worker stays doomed until its death removes the slot; a later doom
/// replaces an earlier one only if it says more of the death: `TimedOut` over
/// `Aborting` over `Cancelled`.
pub(crate) enum SlotState {
    /// Running the pool's initializer: takes no work until [`Core::initialized`].
    Initializing,
    /// Takes work.
    Working,
    /// Reached `max_tasks_per_child` with nothing held: takes no more work and exits.
    Retiring,
    /// Being ended, by the pool or by itself: takes no more work, and its [`Doom`]
    /// says how its death answers the call it was running.
    Doomed(Doom),
}

/// Why a worker is being ended, which is how its death reads.
pub(crate) enum Doom {
    /// A cancel stopped the only job it held: its calls' answers are unwanted, so its
    /// death costs nothing.
    Cancelled,
    /// Its chunk passed its deadline: the running call answers [`Error::Timeout`].
    TimedOut,
    /// Its panic hook reported a panic under `panic = "abort"`: the call it names
    /// answers that panic.
    Aborting(Abort),
}

impl SlotState {
    fn takes_work(&self) -> bool {
        matches!(self, SlotState::Working)
    }

    fn timed_out(&self) -> bool {
        matches!(self, SlotState::Doomed(Doom::TimedOut))
    }

    /// What the panic hook reported, if the worker is dying of a `panic = "abort"`.
    fn abort(&self) -> Option<&Abort> {
        match self {
            SlotState::Doomed(Doom::Aborting(a)) => Some(a),
            _ => None,
        }
    }

    /// Initializing -> Working: the initializer succeeded.
    fn initialized(&mut self) {
        debug_assert!(matches!(self, SlotState::Initializing), "initialized twice");
        if matches!(self, SlotState::Initializing) {
            *self = SlotState::Working;
        }
    }

    /// Working -> Retiring. A doomed worker (killed, and it answered its last call
    /// before the kill landed) stays doomed: it is going already.
    fn retire(&mut self) {
        debug_assert!(
            matches!(self, SlotState::Working | SlotState::Doomed(_)),
            "only a working worker retires"
        );
        if matches!(self, SlotState::Working) {
            *self = SlotState::Retiring;
        }
    }

    /// -> Doomed(Cancelled), unless doomed already (its doom says more). Only a
    /// worker holding chunks is cancelled, and neither an initializing nor a retiring
    /// one holds any.
    fn cancel(&mut self) {
        debug_assert!(
            matches!(self, SlotState::Working | SlotState::Doomed(_)),
            "a worker holding chunks works"
        );
        if matches!(self, SlotState::Working) {
            *self = SlotState::Doomed(Doom::Cancelled);
        }
    }

    /// -> Doomed(TimedOut): the timeout wins over any other doom.
    fn expire(&mut self) {
        debug_assert!(
            matches!(self, SlotState::Working | SlotState::Doomed(_)) && !self.timed_out(),
            "a worker holding chunks works, and times out once"
        );
        *self = SlotState::Doomed(Doom::TimedOut);
    }

    /// -> Doomed(Aborting), unless it timed out (the timeout is what its death
    /// answers). An initializer may panic too, so an initializing worker may abort.
    fn aborting(&mut self, abort: Abort) {
        debug_assert!(
            !matches!(self, SlotState::Retiring),
            "a retiring worker runs no call"
        );
        if !self.timed_out() {
            *self = SlotState::Doomed(Doom::Aborting(abort));
        }
    }
}

/// What a worker's panic hook reported before a `panic = "abort"` death: which call of
/// which chunk, and the panic.
pub(crate) struct Abort {
    pub(crate) seq: u64,
    pub(crate) index: u32,
    pub(crate) message: String,
    pub(crate) location: Option<String>,
    pub(crate) backtrace: Option<String>,
}

/// What a worker's death cost: the calls it held unanswered answered with an error
/// (`lost`), retried (the running call, as `retries` allows) and handed back to the
/// queue (the others).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cost {
    pub(crate) lost: usize,
    pub(crate) retried: usize,
    pub(crate) handed_back: usize,
}

/// A chunk ready to send.
pub(crate) struct Chunk {
    pub(crate) seq: u64,
    pub(crate) entry: TaskRef,
    pub(crate) calls: u32,
    pub(crate) data: Data,
    /// With [`Core::set_requeue`], inline data is here instead of in `data` (left
    /// empty): shared with the core, which keeps it until the chunk is answered.
    pub(crate) shared: Option<Arc<Vec<u8>>>,
    pub(crate) fds: Vec<OwnedFd>,
    /// Where each call's argument ends in `data`, if [`Limits::ends`] asked.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) ends: Ends,
}

/// Some answers of a chunk, for [`Core::on_chunk`]: calls named by their position in
/// the chunk.
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) enum Part {
    /// Calls at `positions`, in order; those listed in `failures` (by place in
    /// `positions`) failed, the others' values lie end to end in `data`.
    Values {
        pid: u32,
        positions: Vec<u32>,
        failures: Vec<(u32, Failure)>,
        data: Received,
    },
    /// Calls that ended without a value.
    Failed(Vec<(u32, Error)>),
}
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
    /// arguments are then shared with the message ([`Chunk::shared`]), not copied.
    pub(crate) fn set_requeue(&mut self, on: bool) {
        self.requeue = on;
    }

    /// The number of workers the fair share divides by (an MPI pool learns it once
    /// its ranks have answered).
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pub(crate) fn set_workers(&mut self, workers: usize) {
        self.cfg.workers = workers.max(1);
    }

    // ---- jobs ----

    pub(crate) fn open(&mut self, entry: TaskRef, chunk: ChunkSize, caller_driven: bool) -> u64 {
        let id = self.next_job;
        self.next_job += 1;
        self.jobs.insert(id, Job::new(entry, chunk, caller_driven));
        id
    }

    /// Opens a job whose answers go to `sink` as they arrive (see [`Sink`]), handed
    /// over by [`Core::take_deliveries`]. Nobody waits on it right away.
    pub(crate) fn open_sunk(
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

    /// Files answers for `job` (gone: thrown away), listing a delivery due if it has a
    /// sink.
    fn deliver(&mut self, job: u64, answers: Answers) {
        if let Some(j) = self.jobs.get_mut(&job) {
            j.deliver(answers);
            note_due(&mut self.due, job, j);
        }
    }

    /// What is due to the jobs' sinks: answers filed since the last call. A job that
    /// is over leaves the table.
    pub(crate) fn take_deliveries(&mut self) -> Vec<Delivery> {
        let mut out = Vec::new();
        for id in std::mem::take(&mut self.due) {
            let Some(j) = self.jobs.get_mut(&id) else {
                continue;
            };
            j.due = false;
            let Some(sink) = j.sink.clone() else {
                continue;
            };
            let answers: Vec<Answers> = j.inbox.drain(..).collect();
            if j.finished() {
                self.jobs.remove(&id);
            }
            if !answers.is_empty() {
                out.push(Delivery { sink, answers });
            }
        }
        out
    }

    /// Whether a call of `job` is running: the chunk a worker works on (the first it
    /// holds) is the job's.
    pub(crate) fn running(&self, job: u64) -> bool {
        self.slots
            .values()
            .any(|s| s.held.front().is_some_and(|h| h.job == job))
    }

    /// Whether a caller waits on `job` right away (see [`Core::open`]).
    pub(crate) fn caller_driven(&self, job: u64) -> bool {
        self.jobs.get(&job).is_some_and(|j| j.caller_driven)
    }

    /// Adds calls `first, first + 1, ...` to `job` (a no-op for a job that is gone).
    pub(crate) fn submit(&mut self, job: u64, first: usize, source: Box<dyn Source>) {
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

    pub(crate) fn seal(&mut self, job: u64) {
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
    pub(crate) fn cancel(&mut self, job: u64, stop_running: bool) -> Vec<WorkerId> {
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

    /// The next answers for `job`'s handle.
    pub(crate) fn take_answers(&mut self, job: u64) -> Option<Answers> {
        let a = self.jobs.get_mut(&job)?.inbox.pop_front();
        self.remove_if_finished(job);
        a
    }

    /// Whether `job` will give no more answers (finished, cancelled, or never was).
    pub(crate) fn job_over(&self, job: u64) -> bool {
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
    pub(crate) fn needs_background(&self) -> bool {
        self.jobs
            .values()
            .any(|j| !j.caller_driven && j.outstanding > 0)
    }

    /// The pool cannot run work: answer everything pending, and everything to come.
    pub(crate) fn break_pool(&mut self, error: Error) {
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

    // ---- workers ----

    /// A new worker, `Initializing` (it runs the pool's initializer first) or
    /// `Working`.
    pub(crate) fn add_worker(&mut self, id: WorkerId, start: SlotState) {
        debug_assert!(
            matches!(start, SlotState::Initializing | SlotState::Working),
            "a worker starts initializing or working"
        );
        self.slots.insert(id, Slot::new(start));
    }

    /// Worker `id`'s initializer succeeded: it takes work.
    pub(crate) fn initialized(&mut self, id: WorkerId) {
        if let Some(s) = self.slots.get_mut(&id) {
            s.state.initialized();
        }
    }

    /// Worker `id` is retiring ([`Core::spent`]): it gets no more work.
    pub(crate) fn retire(&mut self, id: WorkerId) {
        if let Some(s) = self.slots.get_mut(&id) {
            s.state.retire();
        }
    }

    /// Whether `id` reached `max_tasks_per_child` and holds nothing: time to retire it.
    pub(crate) fn spent(&self, id: WorkerId) -> bool {
        let Some(max) = self.cfg.max_tasks_per_child else {
            return false;
        };
        self.slots
            .get(&id)
            .is_some_and(|s| s.done >= max && s.held.is_empty())
    }

    /// The next chunk for worker `id`, if it should get one now. Calls whose argument
    /// cannot be sent (it does not encode, is over the frame limit, carries too many
    /// descriptors) are answered with that error here, for that call only.
    pub(crate) fn next_chunk(
        &mut self,
        id: WorkerId,
        limits: &Limits,
        now: Instant,
    ) -> Option<Chunk> {
        let timeout = self.cfg.task_timeout;
        let slot = self.slots.get(&id)?;
        // A retried call runs alone: its worker holds nothing else, before or after.
        if !slot.state.takes_work() || slot.held.iter().any(|h| h.attempts > 0) {
            return None;
        }
        let held_nanos = slot
            .held
            .iter()
            .try_fold(0.0, |sum, h| h.nanos.map(|n| sum + n));
        let quota = self
            .cfg
            .max_tasks_per_child
            .map(|max| max.saturating_sub(slot.given));
        if quota == Some(0) {
            return None;
        }
        let workers = self.cfg.workers;
        let keep = self.requeue || self.cfg.retries > 0;
        let share = self.requeue;
        let (job_id, job) = self.jobs.iter_mut().find(|(_, j)| j.pending() > 0)?;
        let job_id = *job_id;
        let plenty = job.pending() > chunking::PLENTY_PER_WORKER * workers.max(1);
        let pipelined = self.cfg.pipeline || slot.held.is_empty();
        if !pipelined
            || !chunking::wants_more(slot.held.len(), held_nanos, timeout.is_some(), plenty)
        {
            return None;
        }
        let idle = slot.held.is_empty();
        let mut built = if !job.retries.is_empty() {
            if !idle {
                return None;
            }
            Built::retry(job.retries.pop_front()?)
        } else {
            let n = chunking::chunk_len(
                job.chunk,
                timeout.is_some(),
                job.pending(),
                workers,
                job.nanos_per_call,
                self.cfg.chunk_time,
            );
            let n = quota.map_or(n, |q| n.min(q));
            build(job, n, limits, keep)
        };
        if !built.failed.is_empty() {
            job.deliver(Answers::Failed(built.failed));
            note_due(&mut self.due, job_id, job);
        }
        let entry = job.entry;
        let nanos = job.nanos_per_call.map(|ns| ns * built.indices.len() as f64);
        if built.indices.is_empty() {
            self.remove_if_finished(job_id);
            return None;
        }
        let (data, shared, kept) = if keep {
            let ends = if limits.ends {
                built.ends.clone()
            } else {
                std::mem::take(&mut built.ends)
            };
            keep_chunk(built.data, ends, &built.fds, share)
        } else {
            (built.data, None, None)
        };
        let slot = self.slots.get_mut(&id)?;
        let seq = slot.next_seq;
        slot.next_seq += 1;
        slot.given += built.indices.len();
        let calls = built.indices.len() as u32;
        slot.held.push_back(Held {
            seq,
            job: job_id,
            deadline: timeout.map(|t| now + t * calls),
            indices: built.indices,
            answered: 0,
            nanos,
            kept,
            attempts: built.attempts,
            handbacks: built.handbacks,
        });
        Some(Chunk {
            seq,
            entry,
            calls,
            data,
            shared,
            fds: built.fds,
            ends: if limits.ends { built.ends } else { Ends::default() },
        })
    }

    /// A worker answered calls `first .. first + values` of its chunk `seq`. An answer
    /// that does not fit what the worker holds is a protocol violation (`Err`): the
    /// event loop ends the worker, whose death then answers what it held.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_done(
        &mut self,
        id: WorkerId,
        pid: u32,
        seq: u64,
        first: u32,
        answered: u32,
        failures: Vec<(u32, Failure)>,
        nanos: u64,
        data: Received,
        fds: Vec<OwnedFd>,
    ) -> std::result::Result<(), String> {
        let slot = self.slots.get_mut(&id).ok_or("an unknown worker")?;
        let held = slot.held.front_mut().ok_or("an answer to no chunk")?;
        let (first, answered) = (first as usize, answered as usize);
        if held.seq != seq || held.answered != first || first + answered > held.indices.len() {
            return Err(format!(
                "an answer to calls {first}..{} of chunk {seq}, expected chunk {} from call {}",
                first + answered,
                held.seq,
                held.answered
            ));
        }
        let indices = held.indices.slice(first, first + answered);
        let mut shifted = Vec::with_capacity(failures.len());
        for (at, f) in failures {
            let k = (at as usize)
                .checked_sub(first)
                .filter(|&k| k < answered)
                .ok_or("a failure outside the answered calls")?;
            if shifted.last().is_some_and(|(prev, _)| *prev >= k as u32) {
                return Err("failures out of order".into());
            }
            shifted.push((k as u32, f));
        }
        held.answered += answered;
        let job_id = held.job;
        if held.answered == held.indices.len() {
            slot.held.pop_front();
        }
        slot.done += answered;
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.nanos_per_call = chunking::update_call_time(job.nanos_per_call, nanos, answered);
            self.deliver(
                job_id,
                Answers::Values {
                    pid,
                    indices,
                    failures: shifted,
                    data,
                    fds,
                    host: None,
                },
            );
            self.remove_if_finished(job_id);
        }
        Ok(())
    }

    /// Worker `id` answered every call of its chunk `seq` at once, in parts that name
    /// the calls by position (in any order: a relay may run them on several workers).
    /// `host` names the machine that ran them. Answers that do not cover the chunk
    /// exactly once are refused (`Err`), and nothing of them is filed.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn on_chunk(
        &mut self,
        id: WorkerId,
        seq: u64,
        parts: Vec<Part>,
        nanos: u64,
        host: Option<Arc<str>>,
    ) -> std::result::Result<(), String> {
        let slot = self.slots.get_mut(&id).ok_or("an unknown worker")?;
        let at = slot
            .held
            .iter()
            .position(|h| h.seq == seq)
            .ok_or("an answer to no chunk")?;
        let held = &slot.held[at];
        let len = held.indices.len();
        let mut seen = vec![false; len];
        let mut mark = |p: u32| -> std::result::Result<usize, String> {
            let p = p as usize;
            match seen.get_mut(p) {
                Some(s) if !*s => {
                    *s = true;
                    Ok(held.indices.at(p))
                }
                Some(_) => Err(format!("call {p} of chunk {seq} answered twice")),
                None => Err(format!("an answer to call {p} of a chunk of {len}")),
            }
        };
        let mut answers = Vec::with_capacity(parts.len());
        for part in parts {
            answers.push(match part {
                Part::Values {
                    pid,
                    positions,
                    failures,
                    data,
                } => {
                    if failures.iter().any(|(k, _)| *k as usize >= positions.len()) {
                        return Err("a failure outside its part".into());
                    }
                    let indices = positions
                        .into_iter()
                        .map(&mut mark)
                        .collect::<std::result::Result<Indices, _>>()?;
                    Answers::Values {
                        pid,
                        indices,
                        failures,
                        data,
                        fds: Vec::new(),
                        host: host.clone(),
                    }
                }
                Part::Failed(failed) => Answers::Failed(
                    failed
                        .into_iter()
                        .map(|(p, e)| mark(p).map(|i| (i, e)))
                        .collect::<std::result::Result<Vec<_>, _>>()?,
                ),
            });
        }
        if seen.iter().any(|s| !s) {
            return Err(format!("chunk {seq} answered only in part"));
        }
        let held = slot.held.remove(at).ok_or("an answer to no chunk")?;
        slot.done += len;
        if let Some(job) = self.jobs.get_mut(&held.job) {
            job.nanos_per_call = chunking::update_call_time(job.nanos_per_call, nanos, len);
        }
        for a in answers {
            self.deliver(held.job, a);
        }
        self.remove_if_finished(held.job);
        Ok(())
    }

    /// The job's numbers (as the caller sees them) of the calls of chunk `seq` held by
    /// worker `id`, by position in the chunk: for errors and logs of a pool whose
    /// answers name calls by position.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn chunk_indices(&self, id: WorkerId, seq: u64) -> Option<&Indices> {
        let slot = self.slots.get(&id)?;
        let held = slot.held.iter().find(|h| h.seq == seq)?;
        Some(&held.indices)
    }

    /// The panic hook of worker `id` reported a panic under `panic = "abort"`.
    pub(crate) fn on_aborting(&mut self, id: WorkerId, abort: Abort) {
        if let Some(s) = self.slots.get_mut(&id) {
            s.state.aborting(abort);
        }
    }

    /// The nearest deadline of any chunk held.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .values()
            .filter(|s| !s.state.timed_out())
            .filter_map(|s| s.held.front().and_then(|h| h.deadline))
            .min()
    }

    /// Workers whose chunk is past its deadline, marked so that their death answers
    /// `Error::Timeout`; the event loop kills them.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<WorkerId> {
        let mut out = Vec::new();
        for (id, s) in &mut self.slots {
            if !s.state.timed_out()
                && s.held
                    .front()
                    .and_then(|h| h.deadline)
                    .is_some_and(|d| d <= now)
            {
                s.state.expire();
                out.push(*id);
            }
        }
        out
    }

    /// Worker `id` is gone. `death` is how it ended; `last` what its call slot says it
    /// started last. The call it was running answers the death (or is retried, as
    /// `retries` allows); every other call it held goes back to the queue (see the
    /// module's docs). Returns what it cost.
    pub(crate) fn on_death(
        &mut self,
        id: WorkerId,
        pid: u32,
        death: Error,
        last: LastStart,
    ) -> Cost {
        let Some(slot) = self.slots.remove(&id) else {
            return Cost::default();
        };
        // Under `panic = "abort"` the panic hook said which call it was, slot or not.
        let last = match (last, slot.state.abort()) {
            (LastStart::Unknown, Some(a)) => LastStart::Call {
                seq: a.seq as u32,
                pos: a.index,
            },
            (last, _) => last,
        };
        let running = match last {
            LastStart::Unknown => return self.fail_unknown(slot, pid, death),
            LastStart::Nothing => None,
            // Started and not answered (an answered call had finished: the worker died
            // after it, between calls).
            LastStart::Call { seq, pos } => {
                let pos = pos as usize;
                slot.held
                    .iter()
                    .position(|h| h.seq as u32 == seq)
                    .filter(|&k| pos < slot.held[k].indices.len() && pos >= slot.held[k].answered)
                    .map(|k| (k, pos))
            }
        };
        let running_index = running.map(|(k, pos)| slot.held[k].indices.at(pos));
        let cause = match slot.state.abort() {
            _ if slot.state.timed_out() => Error::Timeout {
                what: format!("a call of a pool job on worker {pid}"),
                timeout: self.cfg.task_timeout.unwrap_or_default(),
            },
            Some(a) => Error::Panicked {
                pid,
                message: a.message.clone(),
                location: a.location.clone(),
                backtrace: a.backtrace.clone(),
            },
            None => death,
        };
        let mut cost = Cost::default();
        // Last chunk first: each pushes what it hands back to the front of the queue,
        // so the calls end up there in the order they had.
        for (k, held) in slot.held.into_iter().enumerate().rev() {
            if !self.jobs.contains_key(&held.job) {
                continue; // cancelled: nobody wants its answers
            }
            let mut failed = Vec::new();
            let mut back = Vec::new();
            for p in held.answered..held.indices.len() {
                let index = held.indices.at(p);
                match running {
                    Some(r) if r == (k, p) => {}
                    // Calls before the running one had run; their answers died with it.
                    _ => {
                        back.push((p, running.is_some_and(|r| (k, p) < r)));
                        continue;
                    }
                }
                let error = if slot.state.timed_out() {
                    Error::Timeout {
                        what: format!("call {index} of a pool job on worker {pid}"),
                        timeout: self.cfg.task_timeout.unwrap_or_default(),
                    }
                } else if slot
                    .state
                    .abort()
                    .is_some_and(|a| a.seq == held.seq && a.index as usize == p)
                {
                    clone_error(&cause)
                } else if let Some(retry) = self.retry_of(&held, p) {
                    if let Some(job) = self.jobs.get_mut(&held.job) {
                        job.retries.push_back(retry);
                    }
                    cost.retried += 1;
                    continue;
                } else {
                    clone_error(&cause)
                };
                failed.push((index, error));
            }
            let lost = Lost {
                pid,
                cause: &cause,
                running: running_index,
            };
            self.hand_back(&held, back, &lost, &mut failed, &mut cost);
            cost.lost += failed.len();
            self.deliver(held.job, Answers::Failed(failed));
            self.remove_if_finished(held.job);
        }
        cost
    }

    /// The retry of call `p` of `held`, if the pool allows one more and its argument
    /// was kept.
    fn retry_of(&self, held: &Held, p: usize) -> Option<Retry> {
        if held.attempts >= self.cfg.retries {
            return None;
        }
        let kept = held.kept.as_ref()?;
        Some(Retry {
            index: held.indices.at(p),
            bytes: kept.arguments(&[p])?.pop()?,
            fds: kept.fds(),
            attempts: held.attempts + 1,
            handbacks: held.handbacks,
        })
    }

    /// Puts the calls of `held` at positions `back` (with whether each had run) back
    /// at the front of their job's queue. A call that cannot go back (its arguments
    /// were not kept, or deaths with no call running handed it back too often) is
    /// answered [`Error::LostWithWorker`] in `failed`.
    fn hand_back(
        &mut self,
        held: &Held,
        back: Vec<(usize, bool)>,
        lost: &Lost<'_>,
        failed: &mut Vec<(usize, Error)>,
        cost: &mut Cost,
    ) {
        if back.is_empty() {
            return;
        }
        let handbacks = held.handbacks + u32::from(lost.running.is_none());
        let positions: Vec<usize> = back.iter().map(|(p, _)| *p).collect();
        let kept = held.kept.as_ref().filter(|_| handbacks <= MAX_HANDBACKS);
        let args = kept.and_then(|k| Some((k, k.arguments(&positions)?)));
        let (Some((kept, args)), Some(job)) = (args, self.jobs.get_mut(&held.job)) else {
            failed.extend(back.into_iter().map(|(p, started)| {
                let e = Error::LostWithWorker {
                    pid: lost.pid,
                    cause: Box::new(clone_error(lost.cause)),
                    running: lost.running,
                    started,
                };
                (held.indices.at(p), e)
            }));
            return;
        };
        cost.handed_back += back.len();
        if held.attempts > 0 || !kept.fds.is_empty() {
            // Their encodings number the chunk's descriptors: each goes alone, with
            // all of them (as a retry does).
            for (bytes, &p) in args.into_iter().zip(&positions).rev() {
                job.retries.push_front(Retry {
                    index: held.indices.at(p),
                    bytes,
                    fds: kept.fds(),
                    attempts: held.attempts,
                    handbacks,
                });
            }
            return;
        }
        // Runs of consecutive calls, each a source of its own, first run first.
        let mut runs: Vec<(usize, VecDeque<Vec<u8>>)> = Vec::new();
        for (bytes, &p) in args.into_iter().zip(&positions) {
            let index = held.indices.at(p);
            match runs.last_mut() {
                Some((first, run)) if *first + run.len() == index => run.push_back(bytes),
                _ => runs.push((index, VecDeque::from([bytes]))),
            }
        }
        for (first, run) in runs.into_iter().rev() {
            let source = HandedBack {
                args: Encoded(run),
                handbacks,
            };
            job.sources.push_front((first, Box::new(source)));
        }
    }

    /// A death on a transport without call slots: every call the worker held and had
    /// not answered answers it (or is retried, as `retries` allows).
    fn fail_unknown(&mut self, slot: Slot, pid: u32, death: Error) -> Cost {
        let mut cost = Cost::default();
        for held in slot.held {
            if !self.jobs.contains_key(&held.job) {
                continue; // cancelled: nobody wants its answers
            }
            let mut failed = Vec::new();
            for p in held.answered..held.indices.len() {
                let index = held.indices.at(p);
                let error = if slot.state.timed_out() {
                    Error::Timeout {
                        what: format!("call {index} of a pool job on worker {pid}"),
                        timeout: self.cfg.task_timeout.unwrap_or_default(),
                    }
                } else if let Some(retry) = self.retry_of(&held, p) {
                    if let Some(job) = self.jobs.get_mut(&held.job) {
                        job.retries.push_back(retry);
                        cost.retried += 1;
                    }
                    continue;
                } else {
                    clone_error(&death)
                };
                failed.push((index, error));
            }
            cost.lost += failed.len();
            self.deliver(held.job, Answers::Failed(failed));
            self.remove_if_finished(held.job);
        }
        cost
    }

    /// Answers every call worker `id` holds and has not answered with `error`, and
    /// forgets the worker.
    fn fail_held(&mut self, id: WorkerId, error: &Error) {
        let Some(slot) = self.slots.remove(&id) else {
            return;
        };
        for held in slot.held {
            let failed = held
                .indices
                .slice(held.answered, held.indices.len())
                .into_iter()
                .map(|i| (i, clone_error(error)))
                .collect();
            self.deliver(held.job, Answers::Failed(failed));
            self.remove_if_finished(held.job);
        }
    }

    /// What `id` has answered, and whether it holds work now: for `Pool::workers`.
    pub(crate) fn worker_state(&self, id: WorkerId) -> Option<(usize, bool)> {
        self.slots.get(&id).map(|s| (s.done, !s.held.is_empty()))
    }

    /// The pool stops at once: every call not yet answered answers
    /// [`Error::PoolTerminated`], whatever held it.
    pub(crate) fn terminate(&mut self) {
        self.stop(Error::PoolTerminated);
    }

    /// The pool stops at once: every call not yet answered, and every call to come,
    /// answers `error`, whatever held it.
    pub(crate) fn stop(&mut self, error: Error) {
        let ids: Vec<WorkerId> = self.slots.keys().copied().collect();
        for id in ids {
            self.fail_held(id, &error);
        }
        self.break_pool(error);
    }
}

/// What calls lost with a worker say of its death ([`Error::LostWithWorker`]).
struct Lost<'a> {
    pid: u32,
    cause: &'a Error,
    running: Option<usize>,
}

/// Lists `job` (with a sink) among the deliveries due, once.
fn note_due(due: &mut Vec<u64>, id: u64, job: &mut Job) {
    if job.sink.is_some() && !job.due {
        job.due = true;
        due.push(id);
    }
}

/// A chunk being built.
struct Built {
    indices: Indices,
    data: Data,
    fds: Vec<OwnedFd>,
    failed: Vec<(usize, Error)>,
    attempts: u32,
    handbacks: u32,
    /// Where each argument ends in `data` (recorded when the chunk is kept, or when
    /// [`Limits::ends`] asks).
    ends: Ends,
}

impl Built {
    fn retry(r: Retry) -> Built {
        Built {
            ends: Ends::one(r.bytes.len()),
            indices: Indices::run(r.index..r.index + 1),
            data: Data::Inline(r.bytes),
            fds: r.fds,
            failed: Vec::new(),
            attempts: r.attempts,
            handbacks: r.handbacks,
        }
    }
}

/// What is kept of a chunk about to be sent ([`Kept`]), and its data as sent: inline
/// data is shared with the message (`share`) or copied.
fn keep_chunk(
    data: Data,
    ends: Ends,
    fds: &[OwnedFd],
    share: bool,
) -> (Data, Option<Arc<Vec<u8>>>, Option<Kept>) {
    // Only a chunk whose descriptors could all be copied can run again.
    let fd_copies: Option<Vec<OwnedFd>> = fds.iter().map(|f| f.try_clone().ok()).collect();
    let kept = |data| {
        fd_copies.map(|fds| Kept {
            data,
            ends,
            fds,
        })
    };
    match data {
        Data::Inline(v) if share => {
            let v = Arc::new(v);
            let k = kept(KeptData::Inline(v.clone()));
            (Data::Inline(Vec::new()), Some(v), k)
        }
        Data::Inline(v) => {
            let k = kept(KeptData::Inline(Arc::new(v.clone())));
            (Data::Inline(v), None, k)
        }
        Data::Shared(file) => {
            let k = file
                .try_clone()
                .ok()
                .and_then(|copy| kept(KeptData::File(copy)));
            (Data::Shared(file), None, k)
        }
    }
}

/// Encodes up to `n` of `job`'s pending arguments into one chunk, within `limits`.
fn build(job: &mut Job, n: usize, limits: &Limits, keep: bool) -> Built {
    let mut buf = ValueBuf::new(limits.max_value, limits.may_spill);
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut indices = Indices::new();
    let mut ends = Ends::default();
    let mut failed = Vec::new();
    let mut handbacks = 0;
    // One capture for the whole chunk: the descriptors of every argument are numbered
    // across the frame, and the hot path of tiny calls pays no per-value set-up.
    crate::wire::fds::capture_into(&mut fds, || {
        while indices.len() < n {
            let Some((first, source)) = job.sources.front_mut() else {
                break;
            };
            let start = *first;
            let source_handbacks = source.handbacks();
            let ends_if_kept = (keep || limits.ends).then_some(&mut ends);
            let took = source.encode_run(
                n - indices.len(),
                &mut buf,
                chunking::CHUNK_BYTES,
                ends_if_kept,
            );
            if took > 0 {
                handbacks = handbacks.max(source_handbacks);
                indices.push_run(start..start + took);
                *first += took;
                if buf.len() >= chunking::CHUNK_BYTES {
                    break;
                }
                continue;
            }
            // The first argument needs a closer look: it holds handles, fails to
            // encode, is over a limit, or there is none.
            let index = *first;
            let (mark, fd_mark) = (buf.len(), crate::wire::fds::captured_len());
            let result = match source.encode_first(index, &mut buf) {
                None => {
                    job.sources.pop_front();
                    continue;
                }
                Some(r) => r,
            };
            handbacks = handbacks.max(source_handbacks);
            let fd_count = crate::wire::fds::captured_len();
            let too_many_fds = fd_count > limits.max_fds;
            let error = match result {
                Ok(()) if !too_many_fds => None,
                Ok(()) => Some(Error::Encode {
                    type_name: "task argument".into(),
                    reason: match limits.max_fds {
                        0 => "it holds OS handles (a Pipe, a Queue, shared memory...), which cannot cross to this pool's workers".into(),
                        max => format!(
                            "it holds {} OS handles, more than one message can carry ({max})",
                            fd_count - fd_mark
                        ),
                    },
                }),
                Err(e) => Some(e),
            };
            match error {
                None => {
                    source.pop();
                    *first += 1;
                    indices.push(index);
                    if keep || limits.ends {
                        ends.push(buf.len());
                    }
                    if buf.len() >= chunking::CHUNK_BYTES {
                        break;
                    }
                }
                Some(e) => {
                    buf.truncate(mark);
                    crate::wire::fds::truncate_captured(fd_mark);
                    // Over a limit beside the calls before it: it goes first in the
                    // next chunk, where it is tried alone.
                    let shared_limit = matches!(e, Error::FrameTooLarge { .. }) || too_many_fds;
                    if shared_limit && !indices.is_empty() {
                        break;
                    }
                    source.pop();
                    *first += 1;
                    failed.push((index, e));
                }
            }
        }
    });
    let data = match buf.finish() {
        Ok(d) => d,
        Err(e) => {
            failed.extend(std::mem::take(&mut indices).into_iter().map(|i| (i, clone_error(&e))));
            Data::Inline(Vec::new())
        }
    };
    Built {
        indices,
        data,
        fds,
        failed,
        attempts: 0,
        handbacks,
        ends,
    }
}

/// Errors hold no `Clone` (an `io::Error` inside); a copy keeps kind and message.
pub(crate) fn clone_error(e: &Error) -> Error {
    e.clone_shallow()
}

#[cfg(test)]
mod tests;
