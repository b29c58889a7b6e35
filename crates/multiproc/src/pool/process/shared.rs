//! What a pool's threads share ([`Shared`]): the lock around its [`State`], the
//! condition variables followers and the background thread wait on, the wake-up
//! socket that reaches a polling leader, and the hand-over of answers to async
//! handles outside the lock. Who leads is `lead`'s (see the README there); what one
//! turn of the loop does, `event_loop`'s.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Condvar, Mutex, MutexGuard};

use super::state::{Lead, State};
use crate::error::{Error, Result};
use crate::pool::core::Core;
use crate::start::StartMethod;
use crate::wire::message::TaskRef;

/// What a pool is built with, read by the leader when it starts workers.
pub(super) struct Settings {
    pub(super) processes: usize,
    pub(super) method: StartMethod,
    /// The initializer, its encoded argument, and the handles in it (dup'ed for
    /// each worker).
    pub(super) initializer: Option<(TaskRef, Vec<u8>, Vec<OwnedFd>)>,
    /// The workers leave SIGTERM to this process (a cluster node's pool).
    pub(super) leave_term: bool,
}

/// A pool's state and the means for its threads to take turns driving it.
pub(super) struct Shared {
    st: Mutex<State>,
    /// Followers wait here for answers, or for the lead to be free.
    pub(super) follow: Condvar,
    /// The background thread waits here for work nobody waits for.
    pub(super) background: Condvar,
    /// Written to interrupt a polling leader; `wake_rx` is in its poll set.
    wake_tx: UnixStream,
    pub(super) wake_rx: UnixStream,
    pub(super) settings: Settings,
}

impl Shared {
    pub(super) fn new(mut core: Core, settings: Settings) -> Result<Shared> {
        // Workers have call slots: a death costs only the running call, the others
        // go back to the queue, from the arguments the core keeps.
        core.set_requeue(true);
        let (wake_tx, wake_rx) = UnixStream::pair().map_err(|e| Error::io("creating a pool", e))?;
        for s in [&wake_tx, &wake_rx] {
            s.set_nonblocking(true)
                .map_err(|e| Error::io("creating a pool", e))?;
        }
        Ok(Shared {
            st: Mutex::new(State::new(core)),
            follow: Condvar::new(),
            background: Condvar::new(),
            wake_tx,
            wake_rx,
            settings,
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Interrupts a leader that polls, so that it sees new work or a request.
    fn wake(&self) {
        // A full socket already has a wake-up pending.
        let _ = (&self.wake_tx).write(&[1]);
    }

    /// New calls or a state change: make sure someone acts on it.
    pub(super) fn notify(&self, st: &State, caller_driven: bool) {
        match st.lead {
            // It waits without the lock: only the socket reaches it.
            Lead::Polling => self.wake(),
            // It holds the lock, or takes it again before it polls next: it will see.
            Lead::Held => {}
            // Whoever waits on caller-driven work leads; other work needs the
            // background thread.
            Lead::Free if !caller_driven => self.background.notify_one(),
            Lead::Free => {}
        }
    }

    /// Wakes the background thread (to stop, or to lead).
    pub(super) fn notify_background(&self) {
        self.background.notify_all();
    }

    /// Hands over what is due to the jobs' sinks (async handles), outside the lock:
    /// a sink decodes, and may run callbacks that call into the pool.
    pub(super) fn settle<'a>(&'a self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.settle_counted(st).0
    }

    /// [`Shared::settle`], saying whether anything was handed over.
    pub(super) fn settle_counted<'a>(
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
    pub(super) fn wake_waiters(&self) {
        let st = self.lock();
        if st.lead == Lead::Polling {
            self.wake();
        }
        if st.waiting > 0 {
            self.follow.notify_all();
        }
    }

}
