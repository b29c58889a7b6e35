//! One turn of the pool's event loop, run by the thread that leads (see `lead`):
//! start workers, send them chunks, wait on their streams and pidfds, read and file
//! their answers, reap and replace the dead; and the two ways a pool ends
//! ([`shut_down`], [`terminate_now`]).
//!
//! Everything here runs with the lock held, except the wait in `poll(2)`, during which
//! the workers' descriptors are read without it: only the leader adds, removes or
//! closes them, so they stay open.

use std::io::Read;
use std::os::fd::AsFd;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use super::shared::Shared;
use super::proc::{Body, Proc, Stage};
use super::state::{Life, Source, State};
use crate::error::Error;
use crate::pool::core::{LastStart, Limits, SlotState, WorkerId};
use crate::sys::poll::{Interest, PollSet};
use crate::failure;
use crate::wire::message::{self, Reply, Request};
use crate::wire::values::{Data, Received, map_sealed};
use crate::wire::{self, Next};

/// The chunk number of the initializer's run (the core numbers chunks from 0).
const INIT_SEQ: u64 = u64::MAX;
/// How long a closing pool waits for its workers to exit before killing them.
const EXIT_GRACE: Duration = Duration::from_secs(5);

impl Shared {
    /// Stops the running calls of a cancelled job: kills the workers that hold only
    /// its chunks (the leader reaps and replaces them).
    pub(super) fn kill_for_cancel(&self, st: &mut State, workers: Vec<WorkerId>) {
        if workers.is_empty() {
            return;
        }
        for id in workers {
            if let Some((_, p)) = st.procs.iter().find(|(w, _)| *w == id) {
                tracing::debug!(
                    pid = p.pid,
                    "killing a pool worker to stop a cancelled call"
                );
                p.kill();
                st.cancel_killed.push(id);
            }
        }
        self.notify(st, false);
    }


    /// One round of the event loop: start workers, send chunks, wait (at most until
    /// `deadline` or a task deadline) for something to happen, handle it.
    pub(super) fn turn<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        deadline: Option<Instant>,
    ) -> MutexGuard<'a, State> {
        match st.life {
            Life::Terminating => {
                terminate_now(&mut st);
                self.follow.notify_all();
                return self.settle(st);
            }
            Life::Joined | Life::Terminated => return st,
            Life::Running | Life::Closed => {}
        }
        // Deliveries still due (a callback of this thread's hand-over may lead here,
        // waiting on one of them): hand them over before waiting on anything.
        let (g, handed) = self.settle_counted(st);
        st = g;
        if handed {
            return st;
        }
        let before = st.core.outstanding();
        self.fill(&mut st);
        dispatch(&mut st);
        // Calls answered while sending (an argument over a limit): nothing to wait for
        // before the caller looks.
        let until = if st.core.outstanding() != before {
            Some(Instant::now())
        } else {
            [deadline, st.core.next_deadline()]
                .into_iter()
                .flatten()
                .min()
        };
        let mut set = std::mem::take(&mut st.poll);
        set.clear();
        set.add(self.wake_rx.as_fd(), Interest::Read, Source::Wake);
        watch_procs(&st.procs, &mut set);
        st.lead.poll();
        drop(st);
        let _ = set.wait(until);
        let mut st = self.lock();
        st.lead.polled();
        if st.life.is_stopped() {
            // `finish` shut the pool down meanwhile (under the lock, without the lead):
            // the workers the poll set named are gone.
            st.poll = set;
            return st;
        }
        let mut dead = Vec::new();
        for (source, ready) in set.ready() {
            match source {
                Source::Wake => {
                    let mut buf = [0u8; 64];
                    while matches!((&self.wake_rx).read(&mut buf), Ok(n) if n > 0) {}
                }
                Source::Stream(i) => {
                    if ready.writable() {
                        write_proc(&mut st, i);
                    }
                    read_proc(&mut st, i);
                }
                Source::Exit(i) => {
                    // What it sent before it died counts: read it before the reaping.
                    read_proc(&mut st, i);
                    dead.push(i);
                }
            }
        }
        st.poll = set;
        for &i in dead.iter().rev() {
            self.reap(&mut st, i);
        }
        for id in st.core.expired(Instant::now()) {
            if let Some((_, p)) = st.procs.iter().find(|(w, _)| *w == id) {
                tracing::debug!(pid = p.pid, "pool worker past its task timeout: killing it");
                p.kill();
            }
        }
        for i in 0..st.procs.len() {
            let id = st.procs[i].0;
            if st.procs[i].1.is_live() && st.core.spent(id) {
                st.core.retire(id);
                st.procs[i].1.retire();
            }
        }
        if st.waiting > 0 && st.core.outstanding() != before {
            self.follow.notify_all();
        }
        self.settle(st)
    }

    /// Starts workers until the pool has its number (unless it is closing or broken).
    fn fill(&self, st: &mut State) {
        if (st.life.is_closed() && st.core.outstanding() == 0) || st.core.is_broken() {
            return;
        }
        let live = st.procs.iter().filter(|(_, p)| p.is_live()).count();
        for _ in live..self.settings.processes {
            st.spawned += 1;
            let name = format!("PoolWorker-{}", st.spawned);
            match Proc::launch(self.settings.method, name, self.settings.leave_term) {
                Ok(mut p) => {
                    tracing::debug!(pid = p.pid, name = %p.name, "pool worker started");
                    let id = st.next_id;
                    st.next_id += 1;
                    let init = self.settings.initializer.as_ref();
                    let start = match init {
                        Some(_) => SlotState::Initializing,
                        None => SlotState::Working,
                    };
                    st.core.add_worker(id, start);
                    if let Some((entry, args, fds)) = init {
                        // Each worker gets its own copies of the argument's handles;
                        // one that cannot be copied fails that worker's initializer
                        // (it then says why) rather than the pool.
                        let fds: Vec<_> = fds.iter().filter_map(|f| f.try_clone().ok()).collect();
                        let run = Request::Run {
                            seq: INIT_SEQ,
                            entry: *entry,
                            calls: 1,
                            max_value: wire::max_frame_size() as u64,
                            fds: fds.len() as u32,
                            shared: false,
                        };
                        let _ = p.initialize(&run, args.clone(), fds);
                    }
                    let _ = p.write();
                    st.procs.push((id, p));
                }
                Err(e) => {
                    if st.procs.is_empty() {
                        st.core.break_pool(Error::Initializer {
                            message: format!("cannot start worker processes: {e}"),
                        });
                    }
                    return;
                }
            }
        }
    }

    /// Worker `i` exited: whatever it sent before counts; the call it was running (its
    /// call slot says which) is retried or answered with how it died, its other
    /// unanswered calls go back to the queue.
    fn reap(&self, st: &mut State, i: usize) {
        let (id, mut p) = st.procs.swap_remove(i);
        let cancelled = st.cancel_killed.contains(&id);
        st.cancel_killed.retain(|&w| w != id);
        let stage = p.stage();
        let death = p.death();
        if stage == Stage::Initializing {
            init_failed(st, death.to_string());
        }
        let cause = death.to_string();
        let last = p.last_start();
        let cost = st.core.on_death(id, p.pid, death, last);
        if stage != Stage::Retiring || cost.lost > 0 || cost.handed_back > 0 {
            tracing::debug!(
                pid = p.pid,
                lost = cost.lost,
                retried = cost.retried,
                handed_back = cost.handed_back,
                cancelled,
                "pool worker died: {cause}; it is replaced"
            );
        }
    }

    /// The pool's live workers, for `Pool::workers`.
    pub(super) fn workers(&self) -> Vec<super::WorkerInfo> {
        let st = self.lock();
        st.procs
            .iter()
            .filter(|(_, p)| p.is_live())
            .map(|(id, p)| {
                let (calls, busy) = st.core.worker_state(*id).unwrap_or((0, false));
                super::WorkerInfo {
                    pid: p.pid,
                    name: p.name.clone(),
                    started: p.started,
                    calls: calls as u64,
                    busy,
                }
            })
            .collect()
    }
}

/// Adds every worker's stream (if not cut) and pidfd to `set`, the stream first.
fn watch_procs(procs: &[(WorkerId, Proc)], set: &mut PollSet<Source>) {
    for (i, (_, p)) in procs.iter().enumerate() {
        if let Some(sock) = p.sock() {
            let interest = if p.has_output() {
                Interest::ReadWrite
            } else {
                Interest::Read
            };
            set.add(sock.as_fd(), interest, Source::Stream(i));
        }
        set.add(p.pidfd.as_fd(), Interest::Read, Source::Exit(i));
    }
}

/// The limits chunks are built under now (the frame limit may change at any time).
fn limits() -> Limits {
    Limits {
        max_value: wire::max_frame_size(),
        max_fds: wire::fds::MAX_FDS_PER_FRAME,
        may_spill: true,
        ends: false,
    }
}

/// Gives each worker the chunks it should hold, one chunk per worker per round, so
/// that every worker starts early (one worker's pipeline is not filled while the next
/// waits), and each chunk is written as soon as it is built.
fn dispatch(st: &mut State) {
    let limits = limits();
    let now = Instant::now();
    for (_, p) in &mut st.procs {
        p.reader
            .set_max(crate::worker::frame_limit(limits.max_value));
    }
    let mut wanting: Vec<usize> = (0..st.procs.len())
        .filter(|&i| st.procs[i].1.may_take_work())
        .collect();
    while !wanting.is_empty() {
        wanting.retain(|&i| {
            let (id, p) = &mut st.procs[i];
            // A chunk is built when its worker's socket can take it, not before: one
            // that waits in the outbox holds a buffer (fresh memory, on a program's
            // first `map`) and a chunk size chosen with what was known then.
            if p.has_output() {
                return false;
            }
            let Some(chunk) = st.core.next_chunk(*id, &limits, now) else {
                return false;
            };
            let (data, fds, shared): (Body, _, _) = match (chunk.data, chunk.shared) {
                (_, Some(kept)) => (kept.into(), chunk.fds, false),
                (Data::Inline(v), None) => (v.into(), chunk.fds, false),
                (Data::Shared(file), None) => {
                    let mut fds = chunk.fds;
                    fds.insert(0, file);
                    (Vec::new().into(), fds, true)
                }
            };
            let run = Request::Run {
                seq: chunk.seq,
                entry: chunk.entry,
                calls: chunk.calls,
                max_value: limits.max_value as u64,
                fds: fds.len() as u32,
                shared,
            };
            if let Err(e) = p.queue(&run, data, fds) {
                // An envelope that does not encode cannot happen with these types;
                // if it ever did, the worker's calls say so instead of hanging.
                let pid = p.pid;
                st.core.on_death(*id, pid, e, LastStart::Unknown);
                p.kill();
                return false;
            }
            write_proc(st, i);
            st.procs[i].1.sock().is_some()
        });
    }
}

/// Writes what worker `i` has queued. A failed write is reported as what it is: the
/// worker's calls answer that I/O error (the worker is ended, its stream is cut).
fn write_proc(st: &mut State, i: usize) {
    let (id, p) = &mut st.procs[i];
    match p.write() {
        Ok(()) => {}
        // The worker is gone; its pidfd tells how, and its death answers its calls.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => {
            p.cut();
        }
        Err(e) => {
            let pid = p.pid;
            p.kill();
            p.cut();
            // Not a crash: what failed is the sending, and sending again would fail
            // again; the calls the worker held answer why.
            let e = Error::io("sending work to a pool worker", e);
            st.core.on_death(*id, pid, e, LastStart::Unknown);
        }
    }
}

/// Reads and files every complete frame worker `i` sent.
fn read_proc(st: &mut State, i: usize) {
    loop {
        let (id, p) = &mut st.procs[i];
        let body = match p.next_frame() {
            None | Some(Ok(Next::Empty)) => return,
            Some(Ok(Next::Frame(body))) => body,
            Some(Ok(Next::Closed)) => {
                p.cut();
                return;
            }
            Some(Err(_)) => {
                // A worker that speaks garbage is ended; its death answers its calls.
                p.kill();
                p.cut();
                return;
            }
        };
        let id = *id;
        if let Err(why) = handle_frame(st, i, id, body) {
            let p = &mut st.procs[i].1;
            tracing::debug!(pid = p.pid, "pool worker broke the protocol: {why}");
            p.kill();
            p.cut();
            return;
        }
    }
}

fn handle_frame(
    st: &mut State,
    i: usize,
    id: WorkerId,
    body: Vec<u8>,
) -> std::result::Result<(), String> {
    let (reply, start) = message::open_frame::<Reply>(&body).map_err(|e| e.to_string())?;
    let pid = st.procs[i].1.pid;
    match reply {
        Reply::Done {
            seq: INIT_SEQ,
            mut failures,
            ..
        } if st.procs[i].1.stage() == Stage::Initializing => {
            match failures.pop() {
                None => {
                    st.procs[i].1.initialized();
                    st.init.succeeded();
                    st.core.initialized(id);
                }
                Some((_, f)) => {
                    init_failed(st, failure::failure_error(f, pid, 0).to_string());
                    st.procs[i].1.reject_initializer();
                }
            }
            Ok(())
        }
        Reply::Done {
            seq,
            first,
            answered,
            failures,
            nanos,
            fds,
            shared,
        } => {
            let p = &mut st.procs[i].1;
            let mut fds = p.reader.take_fds(fds as usize).map_err(|e| e.to_string())?;
            let data = if shared {
                if fds.is_empty() {
                    return Err("shared data without its memory file".into());
                }
                let file = fds.remove(0);
                let map = map_sealed(&file, wire::max_frame_size(), "a chunk's results")
                    .map_err(|e| e.to_string())?;
                Received::Shared(map)
            } else {
                Received::Inline(body, start)
            };
            st.core
                .on_done(id, pid, seq, first, answered, failures, nanos, data, fds)
        }
        Reply::Aborting {
            seq,
            index,
            message,
            location,
            backtrace,
        } => {
            let abort = crate::pool::core::Abort {
                seq,
                index,
                message,
                location,
                backtrace,
            };
            st.core.on_aborting(id, abort);
            Ok(())
        }
        Reply::Refused { reason } => {
            st.core.break_pool(failure::refusal_error(reason, pid));
            st.procs[i].1.kill();
            Ok(())
        }
    }
}

fn init_failed(st: &mut State, why: String) {
    if let Some(in_a_row) = st.init.failed() {
        let message = format!("{why} (in {in_a_row} workers in a row)");
        st.core.break_pool(Error::Initializer { message });
    }
}

/// Closed and idle: let the workers exit, reap them.
///
/// Until they have exited, their sockets are still served: a worker may be writing an
/// answer nobody wants any more (a call of a map that failed and was abandoned) and
/// cannot read its `Exit` before that answer is read. Answers that come are filed as
/// usual (the core drops those of cancelled calls). A worker not gone after
/// [`EXIT_GRACE`] is killed.
pub(super) fn shut_down(st: &mut State) {
    for (_, p) in &mut st.procs {
        p.retire();
    }
    let deadline = Instant::now() + EXIT_GRACE;
    loop {
        // Reap those that exited.
        let mut i = 0;
        while i < st.procs.len() {
            if wire::wait_readable(st.procs[i].1.pidfd.as_fd(), Some(Instant::now()))
                .unwrap_or(true)
            {
                read_proc(st, i);
                let (_, mut p) = st.procs.swap_remove(i);
                p.reap();
            } else {
                i += 1;
            }
        }
        if st.procs.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for (_, mut p) in std::mem::take(&mut st.procs) {
                p.kill();
                p.reap();
            }
            break;
        }
        let mut set = std::mem::take(&mut st.poll);
        set.clear();
        watch_procs(&st.procs, &mut set);
        let _ = set.wait(Some(deadline));
        for (source, ready) in set.ready() {
            // An exit is found by the reaping above.
            if let Source::Stream(i) = source {
                if ready.writable() {
                    write_proc(st, i);
                }
                read_proc(st, i);
            }
        }
        st.poll = set;
    }
    st.cancel_killed.clear();
    st.life.joined();
}

/// Terminating: kill the workers, reap them, answer what is left `PoolTerminated`.
fn terminate_now(st: &mut State) {
    for (_, p) in &st.procs {
        p.kill();
    }
    for (_, mut p) in std::mem::take(&mut st.procs) {
        p.reap();
    }
    st.core.terminate();
    st.cancel_killed.clear();
    st.life.terminated();
}
