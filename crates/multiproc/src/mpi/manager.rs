//! Rank 0's manager: the one thread that makes every MPI call of rank 0 (MPI is
//! initialized with `Threading::Funneled` on it), greets the worker ranks, hands out
//! chunks, collects replies and enforces task deadlines.
//!
//! User threads talk to it through a channel. It blocks on that channel while no chunk
//! is out, and polls MPI (`MPI_Improbe`) and the channel while one is, backing off from
//! yielding to short sleeps so that an idle rank 0 does not steal a core from the
//! workers it waits for.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use mpi::Threading;
use mpi::point_to_point::{Destination, Source};
use mpi::topology::{Communicator, Rank, SimpleCommunicator};
use serde_bytes::ByteBuf;

use super::link::{self, Greeting, TAG_GREETING, TAG_REPLY, TAG_REQUEST};
use super::message::{Batch, Failure, PROTOCOL_VERSION, Reply, Request, TaskRef};
use super::{EXIT_PROTOCOL, EXIT_TIMEOUT, RankInfo};
use crate::error::{Error, Result};
use crate::pool::ChunkSize;
use crate::task;

/// What a chunk of an automatically sized job should take on a rank (as in the
/// process pool, longer: a round trip over TCP costs more than over a socketpair).
const TARGET_CHUNK: Duration = Duration::from_millis(10);
/// The first chunk of an automatically sized job, before its task time is known.
const PROBE_CHUNK: usize = 16;
const MAX_CHUNK: usize = 1 << 16;
/// Arguments per chunk, at most (one call may be larger): big chunks of bulk data
/// would serialize the ranks behind one long send.
const CHUNK_BYTES: usize = 8 << 20;
/// Room for a `Run`'s envelope around its arguments.
const ENVELOPE: usize = 64;

/// A job's answers, a chunk at a time; typed decoding happens inside.
pub(crate) type Sink = Box<dyn FnMut(Answers) + Send>;

/// What reaches a job's sink.
pub(crate) enum Answers {
    /// Calls that failed on rank 0's side (timeout, protocol).
    Failed(Vec<(usize, Error)>),
    /// A rank's reply: call `k` of the chunk is input `indices[k]`.
    Chunk {
        pid: u32,
        indices: Vec<usize>,
        values: Batch,
        failures: Vec<(u32, Failure)>,
    },
}

pub(crate) struct Config {
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) hello_timeout: Duration,
}

pub(crate) struct JobSpec {
    pub(crate) id: u64,
    pub(crate) entry: TaskRef,
    pub(crate) sink: Sink,
    pub(crate) chunk: ChunkSize,
}

/// One call: its job, its index in the job, its encoded argument.
pub(crate) struct Call {
    pub(crate) job: u64,
    pub(crate) index: usize,
    pub(crate) bytes: Vec<u8>,
}

pub(crate) enum Command {
    Open(JobSpec),
    Calls(Vec<Call>),
    Seal(u64),
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
    nanos_per_call: Option<f64>,
}

/// A chunk out on a rank.
struct Out {
    job: u64,
    indices: Vec<usize>,
    deadline: Option<Instant>,
    /// Its calls already answered `Timeout`; the reply, if it ever comes, is dropped.
    timed_out: bool,
}

struct Worker {
    info: RankInfo,
    out: Option<Out>,
    /// Broke the protocol: gets no more work.
    broken: bool,
}

struct Manager {
    cfg: Config,
    world: SimpleCommunicator,
    rx: mpsc::Receiver<Command>,
    workers: Vec<Worker>,
    jobs: HashMap<u64, Job>,
    queue: VecDeque<Call>,
    closing: bool,
}

/// Initializes MPI on this thread, greets the workers, reports them (or why not) on
/// `ready`, then serves until the pool closes; finally tells every worker to exit and
/// finalizes MPI.
pub(crate) fn run(
    cfg: Config,
    rx: mpsc::Receiver<Command>,
    ready: mpsc::Sender<Result<Vec<RankInfo>>>,
) {
    let Some((universe, _)) = mpi::initialize_with_threading(Threading::Funneled) else {
        let _ = ready.send(Err(Error::Mpi {
            detail: "MPI was already initialized (or finalized) in this process: create one \
                     multiproc::mpi::Pool per run and keep it for the whole program"
                .into(),
        }));
        return;
    };
    let world = universe.world();
    let size = world.size();
    if size < 2 {
        let _ = ready.send(Err(Error::Mpi {
            detail: "this MPI job has 1 rank, so no worker: run under `mpirun -n N` with N >= 2 \
                     (rank 0 runs main, the other ranks run tasks)"
                .into(),
        }));
        return; // drops the universe: MPI_Finalize
    }
    let hello_timeout = cfg.hello_timeout;
    let mut manager = Manager {
        cfg,
        world,
        rx,
        workers: Vec::new(),
        jobs: HashMap::new(),
        queue: VecDeque::new(),
        closing: false,
    };
    // A panic here is a multiproc bug; unwinding into MPI_Finalize would hang the job.
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        match manager.greet(size, hello_timeout) {
            Ok(infos) => {
                let _ = ready.send(Ok(infos));
                manager.serve();
            }
            Err(e) => {
                let _ = ready.send(Err(e));
            }
        }
        manager.exit_all();
    }));
    if served.is_err() {
        link::abort_job(EXIT_PROTOCOL, "the MPI pool's manager thread panicked");
    }
    drop(manager);
    drop(universe); // MPI_Finalize, with every worker on its way there too
}

impl Manager {
    /// Sends the hello to every worker rank and waits for each one's answer.
    fn greet(&mut self, size: Rank, timeout: Duration) -> Result<Vec<RankInfo>> {
        let hello = crate::wire::encode(&Request::Hello {
            version: PROTOCOL_VERSION,
            build_id: ByteBuf::from(task::build_id().to_vec()),
            name: String::new(),
            max_frame: link::limit() as u64,
        })?;
        for r in 1..size {
            link::send(&self.world, r, TAG_REQUEST, &hello)?;
        }
        let mut answers: Vec<Option<Greeting>> = (1..size).map(|_| None).collect();
        let deadline = Instant::now() + timeout;
        let mut backoff = Backoff::default();
        while answers.iter().any(Option::is_none) {
            let probed = self
                .world
                .any_process()
                .immediate_matched_probe_with_tag(TAG_GREETING);
            let Some((msg, status)) = probed else {
                if Instant::now() > deadline {
                    let missing: Vec<String> = answers
                        .iter()
                        .enumerate()
                        .filter(|(_, a)| a.is_none())
                        .map(|(i, _)| (i + 1).to_string())
                        .collect();
                    link::abort_job(
                        EXIT_PROTOCOL,
                        &format!(
                            "rank(s) {} did not answer the hello within {timeout:?}: does every \
                             rank run this program, with multiproc::init() first in main?",
                            missing.join(", ")
                        ),
                    );
                }
                backoff.idle(None);
                continue;
            };
            let from = status.source_rank();
            let greeting = link::receive(msg, status)
                .ok()
                .and_then(|b| crate::wire::decode::<Greeting>(&b).ok());
            match greeting {
                Some(g) if from >= 1 && from < size => answers[from as usize - 1] = Some(g),
                _ => link::abort_job(
                    EXIT_PROTOCOL,
                    &format!("rank {from} answered the hello with something else"),
                ),
            }
        }
        let mut infos = Vec::new();
        let mut refusal = None;
        for (i, g) in answers.into_iter().flatten().enumerate() {
            let rank = i + 1;
            match g {
                Greeting::Ready { pid, host } => infos.push(RankInfo { rank, pid, host }),
                Greeting::Refused { pid, host, reason } => {
                    refusal.get_or_insert_with(|| {
                        let e = task::refusal_error(reason, pid);
                        Error::Mpi {
                            detail: format!(
                                "MPI rank {rank} on {host} refused to serve: {e} (every rank \
                                 must run the same executable)"
                            ),
                        }
                    });
                }
            }
        }
        if let Some(e) = refusal {
            return Err(e);
        }
        self.workers = infos
            .iter()
            .map(|info| Worker {
                info: info.clone(),
                out: None,
                broken: false,
            })
            .collect();
        Ok(infos)
    }

    fn serve(&mut self) {
        let mut backoff = Backoff::default();
        loop {
            let mut progressed = false;
            loop {
                match self.rx.try_recv() {
                    Ok(cmd) => {
                        self.command(cmd);
                        progressed = true;
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.closing = true;
                        break;
                    }
                }
            }
            self.dispatch();
            while let Some((msg, status)) = self
                .world
                .any_process()
                .immediate_matched_probe_with_tag(TAG_REPLY)
            {
                let from = status.source_rank();
                match link::receive(msg, status) {
                    Ok(bytes) => self.on_reply(from, &bytes),
                    Err(len) => link::abort_job(
                        EXIT_PROTOCOL,
                        &format!(
                            "rank {from} sent a reply of {len} bytes, over the maximum frame \
                             size of {} bytes",
                            link::limit()
                        ),
                    ),
                }
                progressed = true;
                self.dispatch();
            }
            self.check_deadlines();
            let busy = self.workers.iter().any(|w| w.out.is_some());
            if self.closing && !busy && (self.queue.is_empty() || self.no_usable_worker()) {
                return;
            }
            if progressed {
                backoff.reset();
            } else if busy {
                if let Some(cmd) = backoff.idle(Some(&self.rx)) {
                    self.command(cmd);
                    backoff.reset();
                }
            } else {
                match self.rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(cmd) => self.command(cmd),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => self.closing = true,
                }
            }
        }
    }

    fn no_usable_worker(&self) -> bool {
        self.workers.iter().all(|w| w.broken)
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Open(spec) => {
                self.jobs.insert(
                    spec.id,
                    Job {
                        entry: spec.entry,
                        sink: spec.sink,
                        chunk: spec.chunk,
                        outstanding: 0,
                        sealed: false,
                        nanos_per_call: None,
                    },
                );
            }
            Command::Calls(calls) => {
                for call in calls {
                    if let Some(job) = self.jobs.get_mut(&call.job) {
                        job.outstanding += 1;
                        self.queue.push_back(call);
                    }
                }
            }
            Command::Seal(id) => {
                if let Some(job) = self.jobs.get_mut(&id) {
                    job.sealed = true;
                }
                self.finish_if_done(id);
            }
            Command::Cancel(id) => {
                // Dropping the job drops its sink: its channel ends. Replies for it
                // are dropped when they come.
                if self.jobs.remove(&id).is_some() {
                    self.queue.retain(|c| c.job != id);
                }
            }
            Command::Close => self.closing = true,
            Command::Terminate => {
                self.closing = true;
                self.queue.clear();
                self.jobs.clear();
            }
        }
    }

    fn finish_if_done(&mut self, id: u64) {
        if self
            .jobs
            .get(&id)
            .is_some_and(|j| j.sealed && j.outstanding == 0)
        {
            self.jobs.remove(&id);
        }
    }

    fn chunk_len(&self, job: &Job) -> usize {
        match job.chunk {
            ChunkSize::Fixed(n) => n.max(1),
            ChunkSize::Auto if self.cfg.task_timeout.is_some() => 1,
            ChunkSize::Auto => {
                let workers = self.workers.len().max(1);
                let fair = job.outstanding.div_ceil(4 * workers).max(1);
                let by_time = match job.nanos_per_call {
                    None => PROBE_CHUNK,
                    Some(ns) => (TARGET_CHUNK.as_nanos() as f64 / ns.max(1.0)) as usize,
                };
                fair.min(by_time).clamp(1, MAX_CHUNK)
            }
        }
    }

    /// Gives each idle worker rank a chunk.
    fn dispatch(&mut self) {
        let budget = link::limit().min(CHUNK_BYTES).saturating_sub(ENVELOPE);
        for w in 0..self.workers.len() {
            if self.workers[w].out.is_some() || self.workers[w].broken {
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
            let n = self.chunk_len(job);
            let mut args = Batch::with_capacity(n.min(self.queue.len()), 0);
            let mut indices = Vec::with_capacity(n.min(self.queue.len()));
            while indices.len() < n {
                match self.queue.front() {
                    Some(c)
                        if c.job == job_id
                            && (indices.is_empty()
                                || args.data.len() + c.bytes.len() <= budget) =>
                    {
                        let c = self.queue.pop_front().expect("front exists");
                        args.push(&c.bytes, 0);
                        indices.push(c.index);
                    }
                    _ => break,
                }
            }
            let calls = indices.len() as u32;
            let rank = self.workers[w].info.rank as Rank;
            let sent = crate::wire::encode(&Request::Run {
                job: job_id,
                entry,
                args,
            })
            .and_then(|frame| link::send(&self.world, rank, TAG_REQUEST, &frame));
            match sent {
                Ok(()) => {
                    self.workers[w].out = Some(Out {
                        job: job_id,
                        indices,
                        deadline: self.cfg.task_timeout.map(|t| Instant::now() + t * calls),
                        timed_out: false,
                    });
                }
                Err(e) => {
                    let failed = indices.into_iter().map(|i| (i, clone_error(&e))).collect();
                    self.answer(job_id, Answers::Failed(failed), calls as usize);
                }
            }
        }
    }

    fn answer(&mut self, job_id: u64, answers: Answers, calls: usize) {
        if let Some(job) = self.jobs.get_mut(&job_id) {
            (job.sink)(answers);
            job.outstanding = job.outstanding.saturating_sub(calls);
        }
        self.finish_if_done(job_id);
    }

    fn on_reply(&mut self, from: Rank, bytes: &[u8]) {
        let Some(w) = self
            .workers
            .iter()
            .position(|w| w.info.rank as Rank == from)
        else {
            return; // Not a worker of ours: nothing to attribute it to.
        };
        let pid = self.workers[w].info.pid;
        let Some(out) = self.workers[w].out.take() else {
            self.workers[w].broken = true;
            return;
        };
        let n = out.indices.len();
        let reply = Reply::decode(bytes);
        if out.timed_out {
            return; // Already answered Timeout; the rank is free again.
        }
        match reply {
            Ok(Reply::Done {
                job,
                values,
                failures,
                nanos,
            }) if job == out.job && values.len() == n => {
                if let Some(j) = self.jobs.get_mut(&job) {
                    let per = nanos as f64 / n.max(1) as f64;
                    j.nanos_per_call = Some(match j.nanos_per_call {
                        None => per,
                        Some(old) => 0.5 * old + 0.5 * per,
                    });
                }
                let answers = Answers::Chunk {
                    pid,
                    indices: out.indices,
                    values,
                    failures,
                };
                self.answer(job, answers, n);
            }
            other => {
                let detail = match other {
                    Err(e) => format!("undecodable reply from MPI rank {from}: {e}"),
                    Ok(r) => format!("MPI rank {from} answered a chunk with {r:?}"),
                };
                self.workers[w].broken = true;
                let failed = out
                    .indices
                    .into_iter()
                    .map(|i| {
                        (
                            i,
                            Error::Protocol {
                                pid,
                                detail: detail.clone(),
                            },
                        )
                    })
                    .collect();
                self.answer(out.job, Answers::Failed(failed), n);
                if self.no_usable_worker() {
                    let calls: Vec<Call> = self.queue.drain(..).collect();
                    for c in calls {
                        let e = Error::Mpi {
                            detail: "no MPI worker rank is left to run tasks".into(),
                        };
                        self.answer(c.job, Answers::Failed(vec![(c.index, e)]), 1);
                    }
                }
            }
        }
    }

    /// A chunk past its deadline answers `Timeout` at once and its rank gets no new
    /// work. MPI cannot stop one rank: if it is still busy after as long again, the job
    /// is aborted.
    fn check_deadlines(&mut self) {
        let Some(timeout) = self.cfg.task_timeout else {
            return;
        };
        let now = Instant::now();
        for w in 0..self.workers.len() {
            let worker = &mut self.workers[w];
            let info = &worker.info;
            let Some(out) = worker.out.as_mut() else {
                continue;
            };
            let Some(deadline) = out.deadline else {
                continue;
            };
            if now < deadline {
                continue;
            }
            if out.timed_out {
                if now >= deadline + timeout {
                    link::abort_job(
                        EXIT_TIMEOUT,
                        &format!(
                            "a task on MPI rank {} (pid {} on {}) is still running twice its \
                             task_timeout of {timeout:?}; MPI cannot stop one rank",
                            info.rank, info.pid, info.host,
                        ),
                    );
                }
                continue;
            }
            out.timed_out = true;
            let (job, indices) = (out.job, out.indices.clone());
            let what = format!("a task on MPI rank {}", info.rank);
            let failed: Vec<(usize, Error)> = indices
                .into_iter()
                .map(|i| {
                    (
                        i,
                        Error::Timeout {
                            what: what.clone(),
                            timeout,
                        },
                    )
                })
                .collect();
            let n = failed.len();
            self.answer(job, Answers::Failed(failed), n);
        }
    }

    /// Waits for every chunk still out (their replies must be received before
    /// `MPI_Finalize`), then tells every worker to exit.
    fn exit_all(&mut self) {
        self.jobs.clear();
        self.queue.clear();
        let mut backoff = Backoff::default();
        while self.workers.iter().any(|w| w.out.is_some()) {
            match self
                .world
                .any_process()
                .immediate_matched_probe_with_tag(TAG_REPLY)
            {
                Some((msg, status)) => {
                    let from = status.source_rank();
                    let _ = link::receive(msg, status);
                    if let Some(w) = self
                        .workers
                        .iter_mut()
                        .find(|w| w.info.rank as Rank == from)
                    {
                        w.out = None;
                    }
                }
                None => {
                    self.check_deadlines();
                    backoff.idle(None);
                }
            }
        }
        if let Ok(exit) = crate::wire::encode(&Request::Exit) {
            for r in 1..self.world.size() {
                self.world
                    .process_at_rank(r)
                    .send_with_tag(&exit[..], TAG_REQUEST);
            }
        }
    }
}

/// A copy of an error for each call of a chunk that failed as a whole.
fn clone_error(e: &Error) -> Error {
    match e {
        e @ Error::FrameTooLarge { .. } => e.clone_shallow(),
        other => Error::Mpi {
            detail: other.to_string(),
        },
    }
}

/// Waiting while chunks are out: yield for a while, then sleep a little longer each
/// time (at most 200 µs), listening to the command channel meanwhile.
#[derive(Default)]
struct Backoff {
    idle: u32,
}

impl Backoff {
    fn reset(&mut self) {
        self.idle = 0;
    }

    fn idle(&mut self, rx: Option<&mpsc::Receiver<Command>>) -> Option<Command> {
        self.idle = self.idle.saturating_add(1);
        if self.idle < 64 {
            std::thread::yield_now();
            return None;
        }
        let pause = Duration::from_micros(u64::from((self.idle - 63).min(20)) * 10);
        match rx {
            Some(rx) => rx.recv_timeout(pause).ok(),
            None => {
                std::thread::sleep(pause);
                None
            }
        }
    }
}
