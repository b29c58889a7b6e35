//! Rank 0's event loop: the one thread that makes every MPI call of rank 0 (MPI is
//! initialized with `Threading::Funneled` on it). It greets the worker ranks, then
//! drives the pool core — the same job table, chunking and bookkeeping as the local
//! process pool — over MPI messages: it sends the chunks the core hands out, files the
//! replies in the core, and enforces task deadlines.
//!
//! User threads submit to the core under its lock and wait for their answers on a
//! condition variable. While chunks are out the thread polls MPI (`MPI_Improbe`),
//! backing off from yielding to short sleeps so that an idle rank 0 does not steal a
//! core from the workers it waits for; while none are, it sleeps until work comes.
//!
//! MPI cannot stop one rank, so a chunk past its deadline is answered
//! [`Error::Timeout`] at once, its rank gets no work until it has answered everything
//! it held, and if it has not after as long again the job is aborted.

use std::collections::HashMap;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use mpi::Threading;
use mpi::point_to_point::Source;
use mpi::topology::{Communicator, Rank, SimpleCommunicator};

use super::link::{self, Greeting, TAG_GREETING, TAG_REPLY, TAG_REQUEST};
use super::{EXIT_PROTOCOL, EXIT_TIMEOUT, RankInfo};
use crate::error::{Error, Result};
use crate::pool::core::{Core, LastStart, Limits, SlotState, WorkerId};
pub(crate) use crate::pool::remote::Shared;
use crate::failure;
use crate::wire::message::{self, Reply, Request};
use crate::wire::values::{Data, Received};

pub(crate) struct Config {
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) hello_timeout: Duration,
}

/// A worker rank as rank 0 tracks it: what it still owes (MPI cannot take back a
/// message, so every chunk sent must be answered before `MPI_Finalize`).
struct RankState {
    info: RankInfo,
    /// Chunks sent and not fully answered: calls in each, calls answered so far.
    owed: HashMap<u64, (u32, u32)>,
    /// Its chunk ran past the deadline (already answered `Timeout`): it gets no work
    /// until it owes nothing, and the job is aborted if it still does at this instant.
    timed_out: Option<Instant>,
}

/// Initializes MPI on this thread, greets the workers, reports them (or why not) on
/// `ready`, then serves until the pool closes; finally tells every worker to exit and
/// finalizes MPI.
pub(crate) fn run(cfg: Config, shared: Arc<Shared>, ready: mpsc::Sender<Result<Vec<RankInfo>>>) {
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
    // A panic here is a multiproc bug; unwinding into MPI_Finalize would hang the job.
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut ranks = match greet(&world, size, cfg.hello_timeout) {
            Ok(infos) => {
                let ranks: Vec<RankState> = infos
                    .iter()
                    .map(|info| RankState {
                        info: info.clone(),
                        owed: HashMap::new(),
                        timed_out: None,
                    })
                    .collect();
                {
                    let mut st = shared.lock();
                    for r in &ranks {
                        st.core.add_worker(r.info.rank as WorkerId, SlotState::Working);
                    }
                }
                let _ = ready.send(Ok(infos));
                ranks
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                Vec::new()
            }
        };
        if !ranks.is_empty() {
            serve(&world, &shared, &cfg, &mut ranks);
        }
        exit_all(&world, &cfg, &mut ranks);
    }));
    if served.is_err() {
        link::abort_job(EXIT_PROTOCOL, "the MPI pool's manager thread panicked");
    }
    let mut st = shared.lock();
    st.life.driver_ended();
    st.core.terminate();
    drop(st);
    shared.changed.notify_all();
    shared.settle();
    drop(world);
    drop(universe); // MPI_Finalize, with every worker on its way there too
}

/// Sends the hello to every worker rank and waits for each one's answer.
fn greet(world: &SimpleCommunicator, size: Rank, timeout: Duration) -> Result<Vec<RankInfo>> {
    let hello = Request::hello(String::new(), link::max_value() as u64, false);
    let mut head = Vec::new();
    message::frame_head(&hello, 0, &mut head)?;
    for r in 1..size {
        link::send_frame(world, r, TAG_REQUEST, &head, &[])?;
    }
    let mut answers: Vec<Option<Greeting>> = (1..size).map(|_| None).collect();
    let deadline = Instant::now() + timeout;
    let mut backoff = Backoff::default();
    while answers.iter().any(Option::is_none) {
        let probed = world
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
            backoff.idle();
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
    for (i, g) in answers.into_iter().flatten().enumerate() {
        let rank = i + 1;
        match g {
            Greeting::Ready { pid, host } => infos.push(RankInfo { rank, pid, host }),
            Greeting::Refused { pid, host, reason } => {
                let e = failure::refusal_error(reason, pid);
                return Err(Error::Mpi {
                    detail: format!(
                        "MPI rank {rank} on {host} refused to serve: {e} (every rank must run \
                         the same executable)"
                    ),
                });
            }
        }
    }
    Ok(infos)
}

/// The limits chunks are built under: no descriptors, no shared memory across ranks.
fn limits() -> Limits {
    Limits {
        max_value: link::max_value(),
        max_fds: 0,
        may_spill: false,
        ends: false,
    }
}

fn serve(world: &SimpleCommunicator, shared: &Shared, cfg: &Config, ranks: &mut [RankState]) {
    let mut backoff = Backoff::default();
    let mut head = Vec::new();
    loop {
        // Answers filed last round reach their async handles first.
        shared.settle();
        // What to send, chosen under the lock; sent without it.
        let mut out: Vec<(Rank, Vec<u8>, Vec<u8>)> = Vec::new();
        {
            let mut st = shared.lock();
            if st.life.is_terminating() {
                st.core.terminate();
                drop(st);
                shared.changed.notify_all();
                shared.settle();
                return;
            }
            let before = st.core.outstanding();
            let limits = limits();
            let now = Instant::now();
            for r in ranks.iter_mut().filter(|r| r.timed_out.is_none()) {
                let id = r.info.rank as WorkerId;
                while let Some(chunk) = st.core.next_chunk(id, &limits, now) {
                    let Data::Inline(data) = chunk.data else {
                        unreachable_spill();
                    };
                    let run = Request::Run {
                        seq: chunk.seq,
                        entry: chunk.entry,
                        calls: chunk.calls,
                        max_value: limits.max_value as u64,
                        fds: 0,
                        shared: false,
                    };
                    if message::frame_head(&run, data.len(), &mut head).is_err() {
                        link::abort_job(EXIT_PROTOCOL, "a chunk envelope did not encode");
                    }
                    r.owed.insert(chunk.seq, (chunk.calls, 0));
                    out.push((r.info.rank as Rank, head.clone(), data));
                }
            }
            let owed = ranks.iter().any(|r| !r.owed.is_empty());
            if st.life.is_closed() && st.core.outstanding() == 0 && !owed {
                return;
            }
            if st.core.outstanding() != before {
                shared.changed.notify_all();
            }
            if out.is_empty() && !owed {
                // Nothing out, nothing to send: sleep until work (or closing) comes.
                let _ = shared
                    .work
                    .wait_timeout(st, Duration::from_millis(100))
                    .unwrap_or_else(|p| p.into_inner());
                backoff.reset();
                continue;
            }
        }
        for (rank, head, data) in &out {
            if let Err(e) = link::send_frame(world, *rank, TAG_REQUEST, head, data) {
                link::abort_job(EXIT_PROTOCOL, &format!("cannot send a chunk: {e}"));
            }
        }
        let progressed = receive_replies(world, shared, ranks) || !out.is_empty();
        check_deadlines(shared, cfg, ranks);
        if progressed {
            backoff.reset();
        } else {
            backoff.idle();
        }
    }
}

/// Files every reply waiting; `true` if there was one.
fn receive_replies(world: &SimpleCommunicator, shared: &Shared, ranks: &mut [RankState]) -> bool {
    let mut got = Vec::new();
    while let Some((msg, status)) = world
        .any_process()
        .immediate_matched_probe_with_tag(TAG_REPLY)
    {
        let from = status.source_rank();
        match link::receive(msg, status) {
            Ok(body) => got.push((from, body)),
            Err(len) => link::abort_job(
                EXIT_PROTOCOL,
                &format!(
                    "rank {from} sent a reply of {len} bytes, over the maximum frame size of {} \
                     bytes",
                    link::limit()
                ),
            ),
        }
    }
    if got.is_empty() {
        return false;
    }
    let mut st = shared.lock();
    for (from, body) in got {
        let Some(r) = ranks.iter_mut().find(|r| r.info.rank as Rank == from) else {
            link::abort_job(
                EXIT_PROTOCOL,
                &format!("a reply from rank {from}, not a worker"),
            );
        };
        if let Err(why) = file_reply(&mut st.core, r, body) {
            link::abort_job(EXIT_PROTOCOL, &format!("MPI rank {from}: {why}"));
        }
    }
    drop(st);
    shared.changed.notify_all();
    true
}

fn file_reply(
    core: &mut Core,
    r: &mut RankState,
    body: Vec<u8>,
) -> std::result::Result<(), String> {
    let (reply, start) = message::open_frame::<Reply>(&body).map_err(|e| e.to_string())?;
    let Reply::Done {
        seq,
        first,
        answered,
        failures,
        nanos,
        fds,
        shared,
    } = reply
    else {
        return Err(format!("a reply that is not an answer: {reply:?}"));
    };
    if fds != 0 || shared {
        return Err("an answer with descriptors, which cannot cross MPI".into());
    }
    let owed = r.owed.get_mut(&seq).ok_or("an answer to no chunk")?;
    owed.1 = first.saturating_add(answered);
    if owed.1 >= owed.0 {
        r.owed.remove(&seq);
    }
    let id = r.info.rank as WorkerId;
    if r.timed_out.is_some() {
        // Its calls were answered `Timeout` already; once it owes nothing it works again.
        if r.owed.is_empty() {
            r.timed_out = None;
            core.add_worker(id, SlotState::Working);
        }
        return Ok(());
    }
    let data = Received::Inline(body, start);
    core.on_done(
        id,
        r.info.pid,
        seq,
        first,
        answered,
        failures,
        nanos,
        data,
        Vec::new(),
    )
}

/// A chunk past its deadline answers `Timeout` at once and its rank gets no new work.
/// MPI cannot stop one rank: if it is still busy after as long again, the job ends.
fn check_deadlines(shared: &Shared, cfg: &Config, ranks: &mut [RankState]) {
    let Some(timeout) = cfg.task_timeout else {
        return;
    };
    let now = Instant::now();
    for r in ranks.iter() {
        if r.timed_out.is_some_and(|abort_at| now >= abort_at) {
            link::abort_job(
                EXIT_TIMEOUT,
                &format!(
                    "a task on MPI rank {} (pid {} on {}) is still running twice its \
                     task_timeout of {timeout:?}; MPI cannot stop one rank",
                    r.info.rank, r.info.pid, r.info.host,
                ),
            );
        }
    }
    let mut st = shared.lock();
    let expired = st.core.expired(now);
    if expired.is_empty() {
        return;
    }
    for id in expired {
        if let Some(r) = ranks.iter_mut().find(|r| r.info.rank as WorkerId == id) {
            r.timed_out = Some(now + timeout);
            // A rank has no call slot: the calls it holds (one chunk, no pipelining on
            // MPI) answer the timeout.
            st.core
                .on_death(id, r.info.pid, Error::PoolTerminated, LastStart::Unknown);
        }
    }
    drop(st);
    shared.changed.notify_all();
}

/// Waits for every chunk still owed (its replies must be received before
/// `MPI_Finalize`), then tells every worker to exit.
fn exit_all(world: &SimpleCommunicator, cfg: &Config, ranks: &mut [RankState]) {
    let mut backoff = Backoff::default();
    while ranks.iter().any(|r| !r.owed.is_empty()) {
        match world
            .any_process()
            .immediate_matched_probe_with_tag(TAG_REPLY)
        {
            Some((msg, status)) => {
                let from = status.source_rank();
                let body = link::receive(msg, status).unwrap_or_default();
                let seq = message::open_frame::<Reply>(&body)
                    .ok()
                    .and_then(|(r, _)| match r {
                        Reply::Done {
                            seq,
                            first,
                            answered,
                            ..
                        } => Some((seq, first.saturating_add(answered))),
                        _ => None,
                    });
                if let (Some(r), Some((seq, upto))) =
                    (ranks.iter_mut().find(|r| r.info.rank as Rank == from), seq)
                    && r.owed.get(&seq).is_some_and(|(calls, _)| upto >= *calls)
                {
                    r.owed.remove(&seq);
                }
            }
            None => {
                if let Some(timeout) = cfg.task_timeout {
                    let now = Instant::now();
                    if let Some(r) = ranks.iter().find(|r| r.timed_out.is_some_and(|t| now >= t)) {
                        link::abort_job(
                            EXIT_TIMEOUT,
                            &format!(
                                "a task on MPI rank {} is still running twice its task_timeout \
                                 of {timeout:?}; MPI cannot stop one rank",
                                r.info.rank
                            ),
                        );
                    }
                }
                backoff.idle();
            }
        }
    }
    let mut head = Vec::new();
    if message::frame_head(&Request::Exit, 0, &mut head).is_ok() {
        for r in 1..world.size() {
            let _ = link::send_frame(world, r, TAG_REQUEST, &head, &[]);
        }
    }
}

/// Chunks are built with spilling off for MPI: shared memory cannot cross ranks.
fn unreachable_spill() -> ! {
    link::abort_job(
        EXIT_PROTOCOL,
        "a chunk went to shared memory, which cannot cross MPI",
    )
}

/// Waiting while chunks are out: yield for a while, then sleep a little longer each
/// time (at most 200 µs).
#[derive(Default)]
struct Backoff {
    idle: u32,
}

impl Backoff {
    fn reset(&mut self) {
        self.idle = 0;
    }

    fn idle(&mut self) {
        self.idle = self.idle.saturating_add(1);
        if self.idle < 64 {
            std::thread::yield_now();
            return;
        }
        let pause = Duration::from_micros(u64::from((self.idle - 63).min(20)) * 10);
        std::thread::sleep(pause);
    }
}
