//! The local process pool's event loop, run by whichever thread needs it.
//!
//! There is no manager thread on the data path. A thread that waits for answers
//! (`map`, `apply`, `AsyncResult::get`, an `Imap`) becomes the *leader* if nobody is:
//! it sends the chunks, polls the workers' sockets and pidfds, reads the replies and
//! files them in the core, so a round trip costs the same wake-ups as two processes
//! talking over a pipe (every thread hop would add one, tens of µs on an idle vCPU).
//! Other waiting threads are *followers*: the leader files their answers and wakes
//! them; when the leader has what it came for it hands the lead on.
//!
//! Work nobody is waiting for right away (`apply_async`, `map_async`, an `Imap`
//! between two `next` calls) is driven by a background thread that leads only while
//! such work is outstanding and no caller leads.
//!
//! Only the leader starts, reaps or removes workers, so it can poll their descriptors
//! without holding the lock.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::proc::{Body, Proc};
use crate::error::{Error, Result};
use crate::pool::core::{Answers, Core, LastStart, Limits, WorkerId};
use crate::start::StartMethod;
use crate::failure;
use crate::wire::message::{self, Reply, Request, TaskRef};
use crate::wire::values::{Data, Received, map_sealed};
use crate::wire::{self, Next};

/// The chunk number of the initializer's run (the core numbers chunks from 0).
const INIT_SEQ: u64 = u64::MAX;
/// Consecutive initializer failures, with none succeeding, after which the pool stops
/// trying and fails its work instead of forking forever.
const MAX_INIT_FAILURES: u32 = 3;
/// How long a closing pool waits for its workers to exit before killing them.
const EXIT_GRACE: Duration = Duration::from_secs(5);

pub(crate) struct Settings {
    pub(crate) processes: usize,
    pub(crate) method: StartMethod,
    /// The initializer, its encoded argument, and the handles in it (dup'ed for
    /// each worker).
    pub(crate) initializer: Option<(TaskRef, Vec<u8>, Vec<std::os::fd::OwnedFd>)>,
    /// The workers leave SIGTERM to this process (a cluster node's pool).
    pub(crate) leave_term: bool,
}

pub(crate) struct State {
    pub(crate) core: Core,
    procs: Vec<(WorkerId, Proc)>,
    next_id: WorkerId,
    spawned: usize,
    leader: bool,
    polling: bool,
    /// Followers waiting for answers.
    waiting: usize,
    pub(crate) closed: bool,
    terminate: bool,
    pub(crate) stopped: bool,
    pub(crate) stop_background: bool,
    init_failures: u32,
    init_ok: bool,
    /// Workers killed to stop a cancelled call, not yet reaped: someone must lead
    /// until they are (and replaced).
    cancel_killed: Vec<WorkerId>,
    /// Deliveries taken from the core and not yet handed over: handed over one at a
    /// time, so that a callback that waits on another handle (leading the pool from
    /// inside the hand-over) finds that handle's answers here, not stuck further up its
    /// own stack.
    due: std::collections::VecDeque<crate::pool::core::Delivery>,
}

thread_local! {
    /// The pools this thread leads now (by address). A callback run while handing
    /// answers over may call into the same pool (`map`, `get`): it must go on leading,
    /// not wait for a leader that is itself.
    static LEADING: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

pub(crate) struct Shared {
    st: Mutex<State>,
    follow: Condvar,
    background: Condvar,
    wake_tx: UnixStream,
    wake_rx: UnixStream,
    settings: Settings,
}

impl Shared {
    pub(crate) fn new(mut core: Core, settings: Settings) -> Result<Shared> {
        // Workers have call slots: a death costs only the running call, the others
        // go back to the queue, from the arguments the core keeps.
        core.set_requeue(true);
        let (wake_tx, wake_rx) = UnixStream::pair().map_err(|e| Error::io("creating a pool", e))?;
        for s in [&wake_tx, &wake_rx] {
            s.set_nonblocking(true)
                .map_err(|e| Error::io("creating a pool", e))?;
        }
        Ok(Shared {
            st: Mutex::new(State {
                core,
                procs: Vec::new(),
                next_id: 0,
                spawned: 0,
                leader: false,
                polling: false,
                waiting: 0,
                closed: false,
                terminate: false,
                stopped: false,
                stop_background: false,
                init_failures: 0,
                init_ok: false,
                cancel_killed: Vec::new(),
                due: std::collections::VecDeque::new(),
            }),
            follow: Condvar::new(),
            background: Condvar::new(),
            wake_tx,
            wake_rx,
            settings,
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Interrupts a leader that polls, so that it sees new work or a request.
    fn wake(&self) {
        // A full socket already has a wake-up pending.
        let _ = (&self.wake_tx).write(&[1]);
    }

    /// New calls or a state change: make sure someone acts on it.
    pub(crate) fn notify(&self, st: &State, caller_driven: bool) {
        if st.leader {
            if st.polling {
                self.wake();
            }
        } else if !caller_driven {
            self.background.notify_one();
        }
    }

    /// Wakes the background thread (to stop, or to lead).
    pub(crate) fn notify_background(&self) {
        self.background.notify_all();
    }

    fn key(&self) -> usize {
        self as *const Shared as usize
    }

    /// Whether this thread leads the pool now (further up its stack).
    fn led_here(&self) -> bool {
        let key = self.key();
        LEADING.with(|l| l.borrow().contains(&key))
    }

    /// Takes the lead (the caller set `st.leader`).
    fn lead(&self) {
        let key = self.key();
        LEADING.with(|l| l.borrow_mut().push(key));
    }

    /// Gives up the lead taken by [`Shared::lead`].
    fn unlead(&self) {
        let key = self.key();
        LEADING.with(|l| {
            let mut l = l.borrow_mut();
            if let Some(at) = l.iter().rposition(|&k| k == key) {
                l.remove(at);
            }
        });
    }

    /// Hands over what is due to the jobs' sinks (async handles), outside the lock:
    /// a sink decodes, and may run callbacks that call into the pool.
    pub(crate) fn settle<'a>(&'a self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.settle_counted(st).0
    }

    /// [`Shared::settle`], saying whether anything was handed over.
    fn settle_counted<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
    ) -> (MutexGuard<'a, State>, bool) {
        let mut handed = false;
        loop {
            let fresh = st.core.take_deliveries();
            st.due.extend(fresh);
            let Some(d) = st.due.pop_front() else {
                break;
            };
            drop(st);
            d.hand_over();
            handed = true;
            st = self.lock();
        }
        if handed && st.waiting > 0 {
            // A follower may wait on a handle just completed.
            self.follow.notify_all();
        }
        (st, handed)
    }

    /// A handle completed outside the pool's own answers (a cancel): whoever waits on
    /// it by leading or following the pool must look again.
    pub(crate) fn wake_waiters(&self) {
        let st = self.lock();
        if st.leader && st.polling {
            self.wake();
        }
        if st.waiting > 0 {
            self.follow.notify_all();
        }
    }

    /// Stops the running calls of a cancelled job: kills the workers that hold only
    /// its chunks (the leader reaps and replaces them).
    pub(crate) fn kill_for_cancel(&self, st: &mut State, workers: Vec<WorkerId>) {
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

    /// Drives the pool (as leader, or as follower of another thread) until `check`
    /// returns something, or `deadline` passes (`None` then).
    pub(crate) fn drive<T>(
        &self,
        deadline: Option<Instant>,
        mut check: impl FnMut(&mut State) -> Option<T>,
    ) -> Option<T> {
        let mut st = self.lock();
        loop {
            if let Some(t) = check(&mut st) {
                return Some(t);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return None;
            }
            if st.leader && self.led_here() {
                // Called back from this thread's own hand-over: lead on, nested.
                loop {
                    st = self.turn(st, deadline);
                    if let Some(t) = check(&mut st) {
                        return Some(t);
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return None;
                    }
                }
            }
            if st.leader {
                st.waiting += 1;
                st = match deadline {
                    None => self.follow.wait(st).unwrap_or_else(|p| p.into_inner()),
                    Some(d) => {
                        self.follow
                            .wait_timeout(st, d - now)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                };
                st.waiting -= 1;
                continue;
            }
            st.leader = true;
            self.lead();
            let lead = Lead(self);
            let found = loop {
                st = self.turn(st, deadline);
                if let Some(t) = check(&mut st) {
                    break Some(t);
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break None;
                }
            };
            std::mem::forget(lead);
            self.unlead();
            st.leader = false;
            self.hand_off(&st);
            if found.is_some() {
                return found;
            }
        }
    }

    /// The leader is leaving: a follower takes over, or the background thread.
    fn hand_off(&self, st: &State) {
        if st.waiting > 0 {
            self.follow.notify_all();
        } else if st.core.needs_background() || st.terminate || !st.cancel_killed.is_empty() {
            self.background.notify_one();
        }
    }

    /// The background thread: leads while work nobody waits for is outstanding.
    pub(crate) fn background(&self) {
        let mut st = self.lock();
        loop {
            if st.stop_background {
                return;
            }
            let wanted = !st.leader
                && (st.core.needs_background() || st.terminate || !st.cancel_killed.is_empty());
            if !wanted {
                st = self.background.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.leader = true;
            self.lead();
            let lead = Lead(self);
            while !st.stop_background
                && (st.core.outstanding() > 0 || st.terminate || !st.cancel_killed.is_empty())
            {
                st = self.turn(st, None);
                if st.stopped {
                    break;
                }
            }
            std::mem::forget(lead);
            self.unlead();
            st.leader = false;
            if st.waiting > 0 {
                self.follow.notify_all();
            }
        }
    }

    /// Asks the pool to stop at once; returns when it has.
    pub(crate) fn terminate(&self) {
        {
            let mut st = self.lock();
            st.terminate = true;
            st.closed = true;
            self.notify(&st, false);
        }
        self.drive(None, |st| st.stopped.then_some(()));
    }

    /// Drives until every submitted call was answered, then lets the workers exit.
    pub(crate) fn finish(&self) {
        self.drive(None, |st| {
            (st.stopped || st.core.outstanding() == 0).then_some(())
        });
        let mut st = self.lock();
        // Nobody else leads once all work is done (a caller that submits now finds the
        // pool closed).
        if !st.stopped {
            shut_down(&mut st);
        }
    }

    /// One round of the event loop: start workers, send chunks, wait (at most until
    /// `deadline` or a task deadline) for something to happen, handle it.
    fn turn<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        deadline: Option<Instant>,
    ) -> MutexGuard<'a, State> {
        if st.terminate {
            terminate_now(&mut st);
            self.follow.notify_all();
            return self.settle(st);
        }
        if st.stopped {
            return st;
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
        let mut fds = Vec::with_capacity(1 + 2 * st.procs.len());
        fds.push(pollfd(self.wake_rx.as_raw_fd(), libc::POLLIN));
        for (_, p) in &st.procs {
            fds.push(pollfd(p.pidfd.as_raw_fd(), libc::POLLIN));
            let mut events = libc::POLLIN;
            if p.has_output() {
                events |= libc::POLLOUT;
            }
            // A negative descriptor is ignored by poll: keeps the indices regular.
            fds.push(pollfd(
                p.sock.as_ref().map_or(-1, |s| s.as_raw_fd()),
                events,
            ));
        }
        st.polling = true;
        drop(st);
        let _ = crate::sys::fd::poll_raw(&mut fds, timeout_ms(until));
        let mut st = self.lock();
        st.polling = false;
        let mut buf = [0u8; 64];
        while matches!((&self.wake_rx).read(&mut buf), Ok(n) if n > 0) {}

        let n = st.procs.len();
        let mut dead = Vec::new();
        for i in 0..n {
            let died = fds[1 + 2 * i].revents != 0;
            let sock = fds[2 + 2 * i].revents;
            if sock & libc::POLLOUT != 0 {
                write_proc(&mut st, i);
            }
            if sock != 0 || died {
                read_proc(&mut st, i);
            }
            if died {
                dead.push(i);
            }
        }
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
            if !st.procs[i].1.retiring && st.core.spent(id) {
                st.core.set_paused(id, true);
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
        if (st.closed && st.core.outstanding() == 0) || st.core.is_broken() {
            return;
        }
        let live = st.procs.iter().filter(|(_, p)| !p.retiring).count();
        for _ in live..self.settings.processes {
            st.spawned += 1;
            let name = format!("PoolWorker-{}", st.spawned);
            match Proc::launch(self.settings.method, name, self.settings.leave_term) {
                Ok(mut p) => {
                    tracing::debug!(pid = p.pid, name = %p.name, "pool worker started");
                    let id = st.next_id;
                    st.next_id += 1;
                    let init = self.settings.initializer.as_ref();
                    st.core.add_worker(id, init.is_some());
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
                        let _ = p.queue(&run, args.clone(), fds);
                        p.initializing = true;
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
        let death = p.death();
        if p.initializing {
            init_failed(st, death.to_string());
        }
        let cause = death.to_string();
        let last = p.last_start();
        let cost = st.core.on_death(id, p.pid, death, last);
        if !p.retiring || cost.lost > 0 || cost.handed_back > 0 {
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
    pub(crate) fn workers(&self) -> Vec<super::WorkerInfo> {
        let st = self.lock();
        st.procs
            .iter()
            .filter(|(_, p)| !p.retiring)
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

fn pollfd(fd: i32, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn timeout_ms(until: Option<Instant>) -> i32 {
    match until {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
        }
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
        .filter(|&i| !st.procs[i].1.retiring && st.procs[i].1.sock.is_some())
        .collect();
    while !wanting.is_empty() {
        wanting.retain(|&i| {
            let (id, p) = &mut st.procs[i];
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
            st.procs[i].1.sock.is_some()
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
            p.sock = None;
        }
        Err(e) => {
            let pid = p.pid;
            p.kill();
            p.sock = None;
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
        let Some(sock) = p.sock.as_ref() else {
            return;
        };
        let body = match p.reader.next(sock.as_fd()) {
            Ok(Next::Frame(body)) => body,
            Ok(Next::Empty) => return,
            Ok(Next::Closed) => {
                p.sock = None;
                return;
            }
            Err(_) => {
                // A worker that speaks garbage is ended; its death answers its calls.
                p.kill();
                p.sock = None;
                return;
            }
        };
        let id = *id;
        if let Err(why) = handle_frame(st, i, id, body) {
            let p = &mut st.procs[i].1;
            tracing::debug!(pid = p.pid, "pool worker broke the protocol: {why}");
            p.kill();
            p.sock = None;
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
        } if st.procs[i].1.initializing => {
            st.procs[i].1.initializing = false;
            match failures.pop() {
                None => {
                    st.init_ok = true;
                    st.init_failures = 0;
                    st.core.set_paused(id, false);
                }
                Some((_, f)) => {
                    init_failed(st, failure::failure_error(f, pid, 0).to_string());
                    let p = &mut st.procs[i].1;
                    p.kill();
                    p.retiring = true;
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
    st.init_failures += 1;
    if !st.init_ok && st.init_failures >= MAX_INIT_FAILURES {
        let message = format!("{why} (in {} workers in a row)", st.init_failures);
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
fn shut_down(st: &mut State) {
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
        let mut fds = Vec::with_capacity(2 * st.procs.len());
        for (_, p) in &st.procs {
            fds.push(pollfd(p.pidfd.as_raw_fd(), libc::POLLIN));
            let events = if p.has_output() {
                libc::POLLIN | libc::POLLOUT
            } else {
                libc::POLLIN
            };
            fds.push(pollfd(
                p.sock.as_ref().map_or(-1, |s| s.as_raw_fd()),
                events,
            ));
        }
        let _ = crate::sys::fd::poll_raw(&mut fds, timeout_ms(Some(deadline)));
        for i in 0..st.procs.len() {
            let sock = fds[2 * i + 1].revents;
            if sock & libc::POLLOUT != 0 {
                write_proc(st, i);
            }
            if sock != 0 {
                read_proc(st, i);
            }
        }
    }
    st.cancel_killed.clear();
    st.stopped = true;
}

fn terminate_now(st: &mut State) {
    for (_, p) in &st.procs {
        p.kill();
    }
    for (_, mut p) in std::mem::take(&mut st.procs) {
        p.reap();
    }
    st.core.terminate();
    st.cancel_killed.clear();
    st.stopped = true;
    st.terminate = false;
}

/// Gives the lead up if the leader unwinds (a panic in a user's `Deserialize` while
/// answers are handed over): the pool must not be left with a leader that is gone.
/// Forgotten on the normal way out, which gives the lead up itself.
struct Lead<'a>(&'a Shared);

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        self.0.unlead();
        let mut st = self.0.lock();
        st.leader = false;
        st.polling = false;
        self.0.hand_off(&st);
    }
}

/// What a job's handle drains: answers as they come, then the end.
pub(crate) enum Polled {
    Got(Answers),
    Ended,
}
