//! The pool's manager: one thread that owns the workers, hands out chunks, collects
//! results, and turns every failure into an answer for exactly the calls it touched.
//!
//! It waits in one `poll` on a wake-up socket (new commands), each worker's socket
//! (replies) and each worker's pidfd (deaths), with the nearest task deadline as the
//! timeout. Each worker holds at most one chunk, so a worker's death or timeout costs
//! that chunk and nothing else: its calls are retried one by one (if retries are
//! allowed) or answered with the error that says how the worker died, and a new
//! worker takes its place. No state is shared with the callers except the command
//! channel and each job's result sink.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};
use serde_bytes::ByteBuf;

use super::ChunkSize;
use super::worker::{Busy, Call, INIT_JOB, Worker};
use crate::error::{Error, ExitStatus};
use crate::start::StartMethod;
use crate::task::{self, TaskRef};
use crate::wire::message::{Batch, Failure, Reply};

/// Answers for some calls of one job, still encoded.
pub(crate) enum Answers {
    /// What a worker sent for a chunk: call `k` of the chunk is input `indices[k]`;
    /// its value is `values[k]` unless `failures` lists `k`.
    Chunk {
        pid: u32,
        indices: Vec<usize>,
        values: Batch,
        failures: Vec<(u32, Failure)>,
        fds: Vec<OwnedFd>,
    },
    /// Calls that ended without an answer from a worker.
    Failed(Vec<(usize, Error)>),
}

impl Answers {
    fn len(&self) -> usize {
        match self {
            Answers::Chunk { indices, .. } => indices.len(),
            Answers::Failed(v) => v.len(),
        }
    }
}

/// Where a job's answers go, a chunk at a time (typed decoding happens inside). One
/// call per chunk, not per answer: a consumer thread woken per answer would cost more
/// than tiny calls themselves.
pub(crate) type Sink = Box<dyn FnMut(Answers) + Send>;

/// What a chunk of an automatically sized job should take in a worker: long enough that
/// the round trip is noise, short enough to balance load and keep progress visible.
const TARGET_CHUNK: Duration = Duration::from_millis(5);
/// The first chunk of an automatically sized job, before its task time is known.
const PROBE_CHUNK: usize = 16;
const MAX_CHUNK: usize = 1 << 16;
/// A chunk stops growing past this many bytes of arguments: big arguments travel a few
/// at a time, so no frame (and no copy of it) grows to hundreds of MiB.
const MAX_CHUNK_BYTES: usize = 4 << 20;
/// Consecutive initializer failures, with none succeeding, after which the pool stops
/// trying and fails its work instead of forking forever.
const MAX_INIT_FAILURES: u32 = 3;

pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) method: StartMethod,
    pub(crate) initializer: Option<(TaskRef, ByteBuf)>,
    pub(crate) max_tasks_per_child: Option<usize>,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) retries: u32,
}

pub(crate) struct JobSpec {
    pub(crate) id: u64,
    pub(crate) entry: TaskRef,
    pub(crate) sink: Sink,
    pub(crate) chunk: ChunkSize,
}

pub(crate) enum Command {
    Open(JobSpec),
    Calls(u64, Vec<Call>),
    /// No more calls for this job.
    Seal(u64),
    /// Nobody wants this job's answers any more.
    Cancel(u64),
    Close,
    Terminate,
}

struct Job {
    entry: TaskRef,
    sink: Sink,
    chunk: ChunkSize,
    /// Calls queued or running, not yet answered.
    outstanding: usize,
    sealed: bool,
    cancelled: bool,
    /// Mean nanoseconds per call, as workers measured.
    nanos_per_call: Option<f64>,
}

pub(crate) struct Manager {
    cfg: Config,
    rx: mpsc::Receiver<Command>,
    wake: UnixStream,
    workers: Vec<Worker>,
    queue: VecDeque<Call>,
    jobs: HashMap<u64, Job>,
    closed: bool,
    init_failures: u32,
    init_ok: bool,
    /// Why the pool cannot run work (initializer failing, workers cannot start).
    broken: Option<String>,
    spawned: usize,
}

impl Manager {
    pub(crate) fn new(cfg: Config, rx: mpsc::Receiver<Command>, wake: UnixStream) -> Self {
        Manager {
            cfg,
            rx,
            wake,
            workers: Vec::new(),
            queue: VecDeque::new(),
            jobs: HashMap::new(),
            closed: false,
            init_failures: 0,
            init_ok: false,
            broken: None,
            spawned: 0,
        }
    }

    pub(crate) fn run(mut self) {
        self.fill();
        loop {
            if !self.drain_commands() {
                self.terminate();
                return;
            }
            self.dispatch();
            if self.closed && self.jobs.is_empty() && self.queue.is_empty() {
                self.shut_down();
                return;
            }
            self.wait_and_handle();
            self.check_deadlines();
            self.fill();
        }
    }

    /// Applies queued commands. `false` means terminate now.
    fn drain_commands(&mut self) -> bool {
        let mut buf = [0u8; 256];
        while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
        loop {
            match self.rx.try_recv() {
                Ok(Command::Open(spec)) => {
                    self.jobs.insert(
                        spec.id,
                        Job {
                            entry: spec.entry,
                            sink: spec.sink,
                            chunk: spec.chunk,
                            outstanding: 0,
                            sealed: false,
                            cancelled: false,
                            nanos_per_call: None,
                        },
                    );
                }
                Ok(Command::Calls(job, calls)) => {
                    if let Some(j) = self.jobs.get_mut(&job) {
                        j.outstanding += calls.len();
                        self.queue.extend(calls);
                    }
                    if let Some(reason) = self.broken.clone() {
                        self.fail_queued(&reason);
                    }
                }
                Ok(Command::Seal(job)) => {
                    if let Some(j) = self.jobs.get_mut(&job) {
                        j.sealed = true;
                    }
                    self.finish_if_done(job);
                }
                Ok(Command::Cancel(job)) => {
                    if let Some(j) = self.jobs.get_mut(&job) {
                        j.cancelled = true;
                        j.sealed = true;
                    }
                    let before = self.queue.len();
                    self.queue.retain(|c| c.job != job);
                    let dropped = before - self.queue.len();
                    if let Some(j) = self.jobs.get_mut(&job) {
                        j.outstanding -= dropped;
                    }
                    self.finish_if_done(job);
                }
                Ok(Command::Close) => self.closed = true,
                Ok(Command::Terminate) => return false,
                Err(mpsc::TryRecvError::Empty) => return true,
                // Every handle is gone: finish what was submitted, then stop.
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.closed = true;
                    return true;
                }
            }
        }
    }

    /// Starts workers until the pool has its number (unless it is closing or broken).
    fn fill(&mut self) {
        if self.closed && self.jobs.is_empty() {
            return;
        }
        while self.broken.is_none() && self.live_workers() < self.cfg.processes {
            self.spawned += 1;
            match Worker::launch(self.cfg.method, format!("PoolWorker-{}", self.spawned)) {
                Ok(mut w) => {
                    if let Some((entry, args)) = &self.cfg.initializer {
                        let call = Call {
                            job: INIT_JOB,
                            index: 0,
                            bytes: args.to_vec(),
                            fds: Vec::new(),
                            attempts: 0,
                        };
                        w.send(*entry, INIT_JOB, std::slice::from_ref(&call));
                        w.busy = Some(Busy::Initializing);
                    }
                    self.workers.push(w);
                }
                Err(e) => {
                    if self.workers.is_empty() {
                        self.break_pool(format!("cannot start worker processes: {e}"));
                    }
                    return;
                }
            }
        }
    }

    fn live_workers(&self) -> usize {
        self.workers.iter().filter(|w| !w.retiring).count()
    }

    /// The pool cannot run work: answer everything queued, and everything to come.
    fn break_pool(&mut self, reason: String) {
        self.fail_queued(&reason);
        self.broken = Some(reason);
    }

    fn fail_queued(&mut self, reason: &str) {
        for call in std::mem::take(&mut self.queue) {
            self.answer(
                call.job,
                call.index,
                Error::Initializer {
                    message: reason.to_owned(),
                },
            );
        }
    }

    fn chunk_len(&self, job: &Job) -> usize {
        match job.chunk {
            ChunkSize::Fixed(n) => n.max(1),
            // A timeout is per task: chunks of one keep it so.
            ChunkSize::Auto if self.cfg.task_timeout.is_some() => 1,
            ChunkSize::Auto => {
                let workers = self.cfg.processes.max(1);
                let fair = job.outstanding.div_ceil(4 * workers).max(1);
                let by_time = match job.nanos_per_call {
                    None => PROBE_CHUNK,
                    Some(ns) => (TARGET_CHUNK.as_nanos() as f64 / ns.max(1.0)) as usize,
                };
                fair.min(by_time).clamp(1, MAX_CHUNK)
            }
        }
    }

    /// Gives each idle worker a chunk.
    fn dispatch(&mut self) {
        for w in 0..self.workers.len() {
            if self.queue.is_empty() {
                return;
            }
            let worker = &self.workers[w];
            if worker.busy.is_some() || worker.retiring || worker.sock.is_none() {
                continue;
            }
            let Some(front) = self.queue.front() else {
                return;
            };
            let job_id = front.job;
            let Some(job) = self.jobs.get(&job_id) else {
                self.queue.pop_front();
                continue;
            };
            let entry = job.entry;
            // A retried call runs alone, so a call that kills workers takes no
            // innocent neighbour with it again.
            let mut n = if front.attempts > 0 {
                1
            } else {
                self.chunk_len(job)
            };
            if let Some(max) = self.cfg.max_tasks_per_child {
                n = n.min(max.saturating_sub(worker.done).max(1));
            }
            let mut calls = Vec::with_capacity(n.min(self.queue.len()));
            let mut bytes = 0;
            while calls.len() < n && bytes < MAX_CHUNK_BYTES {
                match self.queue.front() {
                    Some(c) if c.job == job_id && (calls.is_empty() || c.attempts == 0) => {
                        let c = self.queue.pop_front().expect("front exists");
                        bytes += c.bytes.len();
                        calls.push(c);
                    }
                    _ => break,
                }
            }
            let deadline = self
                .cfg
                .task_timeout
                .map(|t| Instant::now() + t * calls.len() as u32);
            let worker = &mut self.workers[w];
            let sent = worker.send(entry, job_id, &calls);
            worker.busy = Some(Busy::Chunk {
                job: job_id,
                calls,
                deadline,
            });
            if !sent {
                // Its death, seen through its pidfd, answers or requeues the chunk.
                worker.kill();
            }
        }
    }

    fn wait_and_handle(&mut self) {
        let deadline = self
            .workers
            .iter()
            .filter_map(|w| match &w.busy {
                Some(Busy::Chunk { deadline, .. }) if !w.timed_out => *deadline,
                _ => None,
            })
            .min();
        let timeout = crate::wire::poll_timeout(deadline);
        let (sock_ready, dead) = {
            let mut fds = Vec::with_capacity(1 + 2 * self.workers.len());
            fds.push(PollFd::new(self.wake.as_fd(), PollFlags::POLLIN));
            for w in &self.workers {
                fds.push(PollFd::new(w.pidfd.as_fd(), PollFlags::POLLIN));
                match &w.sock {
                    Some(s) => fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN)),
                    // Keeps the indices regular; a negative fd is ignored by poll.
                    None => fds.push(PollFd::new(w.pidfd.as_fd(), PollFlags::empty())),
                }
            }
            if poll(&mut fds, timeout).is_err() {
                return;
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            let sock_ready: Vec<bool> = (0..self.workers.len())
                .map(|i| ready(&fds[2 + 2 * i]))
                .collect();
            let dead: Vec<bool> = (0..self.workers.len())
                .map(|i| ready(&fds[1 + 2 * i]))
                .collect();
            (sock_ready, dead)
        };
        for i in 0..self.workers.len() {
            if sock_ready[i] || dead[i] {
                self.read_worker(i);
            }
        }
        // Deaths last, and from the back, so indices stay valid while removing.
        for i in (0..self.workers.len()).rev() {
            if dead[i] {
                // Whatever it sent before dying counts.
                self.read_worker(i);
                let mut w = self.workers.swap_remove(i);
                let status = w.reap();
                self.worker_died(w, status);
            }
        }
    }

    fn read_worker(&mut self, i: usize) {
        let replies = match self.workers[i].read_replies() {
            Ok(r) => r,
            Err(_) => {
                // A worker that speaks garbage is killed; its death answers its chunk.
                self.workers[i].kill();
                self.workers[i].sock = None;
                return;
            }
        };
        for (reply, fds) in replies {
            self.handle_reply(i, reply, fds);
        }
    }

    fn handle_reply(&mut self, i: usize, reply: Reply, fds: Vec<OwnedFd>) {
        let pid = self.workers[i].pid;
        match reply {
            Reply::Done {
                job,
                values,
                mut failures,
                nanos,
            } => match self.workers[i].busy.take() {
                Some(Busy::Initializing) if job == INIT_JOB => match failures.pop() {
                    None if values.len() == 1 => {
                        self.init_ok = true;
                        self.init_failures = 0;
                    }
                    failure => {
                        let why = match failure {
                            Some((_, f)) => task::failure_error(f, pid).to_string(),
                            None => "a malformed answer".to_owned(),
                        };
                        self.init_failed(why);
                        self.workers[i].kill();
                        self.workers[i].retiring = true;
                    }
                },
                Some(Busy::Chunk {
                    job: running,
                    calls,
                    ..
                }) if running == job && values.len() == calls.len() => {
                    let n = calls.len();
                    if let Some(j) = self.jobs.get_mut(&job) {
                        let per_call = nanos as f64 / n as f64;
                        j.nanos_per_call = Some(match j.nanos_per_call {
                            None => per_call,
                            Some(old) => 0.7 * old + 0.3 * per_call,
                        });
                    }
                    let indices = calls.iter().map(|c| c.index).collect();
                    self.answer_many(
                        job,
                        Answers::Chunk {
                            pid,
                            indices,
                            values,
                            failures,
                            fds,
                        },
                    );
                    let w = &mut self.workers[i];
                    w.done += n;
                    if self
                        .cfg
                        .max_tasks_per_child
                        .is_some_and(|max| w.done >= max)
                    {
                        w.retire();
                    }
                }
                busy => {
                    // An answer to nothing we asked: protocol violation. Put the chunk
                    // back where its death will find it, and end the worker.
                    self.workers[i].busy = busy;
                    self.workers[i].kill();
                }
            },
            Reply::Aborting {
                index,
                message,
                location,
                ..
            } => self.workers[i].aborting = Some((index, message, location)),
            Reply::Refused { reason } => {
                let e = task::refusal_error(reason, pid);
                self.break_pool(e.to_string());
                self.workers[i].kill();
            }
        }
    }

    fn init_failed(&mut self, why: String) {
        self.init_failures += 1;
        if !self.init_ok && self.init_failures >= MAX_INIT_FAILURES {
            self.break_pool(format!(
                "{why} (in {} workers in a row)",
                self.init_failures
            ));
        }
    }

    fn worker_died(&mut self, mut w: Worker, status: Option<ExitStatus>) {
        let pid = w.pid;
        match w.busy.take() {
            None => {}
            Some(Busy::Initializing) => {
                self.init_failed(task::death_error(status, pid).to_string());
            }
            Some(Busy::Chunk {
                job,
                calls,
                deadline,
                ..
            }) => {
                let timeout = self.cfg.task_timeout.unwrap_or_default();
                let mut retry = Vec::new();
                let mut answers = Vec::new();
                for (pos, mut call) in calls.into_iter().enumerate() {
                    let error = if w.timed_out {
                        let _ = deadline;
                        Error::Timeout {
                            what: format!(
                                "task {} of a pool job (worker {pid} was killed)",
                                call.index
                            ),
                            timeout,
                        }
                    } else if let Some((_, message, location)) =
                        w.aborting.as_ref().filter(|(i, ..)| *i as usize == pos)
                    {
                        Error::Panicked {
                            pid,
                            message: message.clone(),
                            location: location.clone(),
                        }
                    } else if call.attempts < self.cfg.retries {
                        call.attempts += 1;
                        retry.push(call);
                        continue;
                    } else {
                        task::death_error(status, pid)
                    };
                    answers.push((call.index, error));
                }
                self.answer_many(job, Answers::Failed(answers));
                // Retried calls go first: they have waited longest.
                for call in retry.into_iter().rev() {
                    self.queue.push_front(call);
                }
            }
        }
    }

    fn check_deadlines(&mut self) {
        let now = Instant::now();
        for w in &mut self.workers {
            if let Some(Busy::Chunk {
                deadline: Some(d), ..
            }) = &w.busy
                && *d <= now
                && !w.timed_out
            {
                w.timed_out = true;
                w.kill();
            }
        }
    }

    /// Answers one call with an error, and closes the job when it was the last.
    fn answer(&mut self, job: u64, index: usize, error: Error) {
        self.answer_many(job, Answers::Failed(vec![(index, error)]));
    }

    /// Delivers answers of one job, and closes the job when they were the last.
    fn answer_many(&mut self, job: u64, answers: Answers) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        if answers.len() == 0 {
            return;
        }
        j.outstanding = j.outstanding.saturating_sub(answers.len());
        if !j.cancelled {
            (j.sink)(answers);
        }
        self.finish_if_done(job);
    }

    fn finish_if_done(&mut self, job: u64) {
        if self
            .jobs
            .get(&job)
            .is_some_and(|j| j.sealed && j.outstanding == 0)
        {
            // Dropping the sink closes the job's channel: its reader sees the end.
            self.jobs.remove(&job);
        }
    }

    /// Closed and idle: let the workers exit, reap them.
    fn shut_down(&mut self) {
        for w in &mut self.workers {
            w.retire();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for mut w in std::mem::take(&mut self.workers) {
            let left = deadline.saturating_duration_since(Instant::now());
            if !crate::wire::wait_readable(w.pidfd.as_fd(), Some(Instant::now() + left))
                .unwrap_or(false)
            {
                w.kill();
            }
            w.reap();
        }
    }

    fn terminate(&mut self) {
        for w in &self.workers {
            w.kill();
        }
        for mut w in std::mem::take(&mut self.workers) {
            w.reap();
            if let Some(Busy::Chunk { job, calls, .. }) = w.busy.take() {
                for call in calls {
                    self.answer(job, call.index, Error::PoolTerminated);
                }
            }
        }
        for call in std::mem::take(&mut self.queue) {
            self.answer(call.job, call.index, Error::PoolTerminated);
        }
        self.jobs.clear();
    }
}
