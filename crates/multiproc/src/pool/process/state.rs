//! The pool's state under its one lock, and the three small state machines in it:
//! the pool's life cycle ([`Life`]), who drives the event loop ([`Lead`]), and whether
//! the initializer ever worked ([`InitRecord`]); and what the leader's poll set
//! watches ([`Source`]).
//!
//! Every transition is a method that checks (with `debug_assert!`) the state it
//! expects, so a path the design does not allow fails the tests instead of leaving a
//! pool half in one state and half in another.
//!
//! No atomics: everything here is read and written under `Shared`'s mutex, whose
//! lock/unlock orders every access. The leader reads the workers' descriptors without
//! the lock while it polls, which is sound because only the leader adds or removes
//! workers (see the README beside this file).

use std::collections::VecDeque;

use super::proc::Proc;
use crate::pool::core::{Core, Delivery, WorkerId};
use crate::sys::poll::PollSet;

/// Consecutive initializer failures, with none succeeding, after which the pool stops
/// trying and fails its work instead of forking forever.
const MAX_INIT_FAILURES: u32 = 3;

/// The pool's life cycle.
///
/// ```text
/// Running ──close──▶ Closed ──(all answered, workers exited)──▶ Joined
///    │                  │
///    └────terminate─────┴──▶ Terminating ──(workers killed)──▶ Terminated
/// ```
///
/// `close` and `terminate` may be called in any state (from any thread, any number of
/// times); a call that does not apply changes nothing, as in Python. The two
/// completions are the event loop's, and assert where they come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Life {
    /// Takes work.
    Running,
    /// Takes no new work; finishes what it has, then lets its workers exit.
    Closed,
    /// Asked to stop at once: the next turn of the event loop kills the workers and
    /// answers what is left with `PoolTerminated`.
    Terminating,
    /// Closed, its work done, its workers exited and reaped. No answer comes any more.
    Joined,
    /// Terminated: its workers killed and reaped. No answer comes any more.
    Terminated,
}

impl Life {
    /// Whether new jobs are refused.
    pub(super) fn is_closed(self) -> bool {
        self != Life::Running
    }

    /// Whether the pool has stopped for good (nothing will be answered any more, and
    /// the background thread ends).
    pub(super) fn is_stopped(self) -> bool {
        matches!(self, Life::Joined | Life::Terminated)
    }

    /// `close`: `Running -> Closed`; anything else stays.
    pub(super) fn close(&mut self) {
        if *self == Life::Running {
            *self = Life::Closed;
        }
    }

    /// `terminate`: `Running | Closed -> Terminating`; a pool already terminating or
    /// stopped stays as it is. Says whether it changed.
    pub(super) fn terminate(&mut self) -> bool {
        match self {
            Life::Running | Life::Closed => {
                *self = Life::Terminating;
                true
            }
            Life::Terminating | Life::Joined | Life::Terminated => false,
        }
    }

    /// The workers of a closed pool have exited: `Closed -> Joined`.
    pub(super) fn joined(&mut self) {
        debug_assert_eq!(*self, Life::Closed, "only a closed pool is joined");
        *self = Life::Joined;
    }

    /// The workers of a terminating pool are killed: `Terminating -> Terminated`.
    pub(super) fn terminated(&mut self) {
        debug_assert_eq!(*self, Life::Terminating, "only a terminating pool ends so");
        *self = Life::Terminated;
    }
}

/// Who drives the event loop (see the README beside this file).
///
/// ```text
/// Free ──take──▶ Held ──poll──▶ Polling
///  ▲              │ ▲              │
///  └───release────┘ └───polled─────┘
/// ```
///
/// `Polling` is `Held` while the leader waits in `poll(2)` without the lock: only then
/// does new work need the wake-up socket to be seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lead {
    /// Nobody leads: the next thread that waits (or the background thread) takes it.
    Free,
    /// A thread leads and holds the lock, or works with it released briefly.
    Held,
    /// The leader waits in `poll(2)`, the lock released.
    Polling,
}

impl Lead {
    /// Whether some thread leads.
    pub(super) fn is_held(self) -> bool {
        self != Lead::Free
    }

    /// `Free -> Held`.
    pub(super) fn take(&mut self) {
        debug_assert_eq!(*self, Lead::Free, "the lead is taken only when free");
        *self = Lead::Held;
    }

    /// The leader goes to wait: `Held -> Polling`.
    pub(super) fn poll(&mut self) {
        debug_assert_eq!(*self, Lead::Held, "only the leader polls");
        *self = Lead::Polling;
    }

    /// The leader is back with the lock: `Polling -> Held`.
    pub(super) fn polled(&mut self) {
        debug_assert_eq!(*self, Lead::Polling, "only a polling leader comes back");
        *self = Lead::Held;
    }

    /// The leader leaves: `Held | Polling -> Free` (`Polling` only when it unwinds).
    pub(super) fn release(&mut self) {
        debug_assert_ne!(*self, Lead::Free, "only a leader gives the lead up");
        *self = Lead::Free;
    }
}

/// Whether the pool's initializer ever succeeded, and if not, how often in a row it
/// failed: a pool whose initializer never works breaks instead of forking forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum InitRecord {
    /// It has not succeeded yet; it failed this many times in a row.
    Unproven { failures: u32 },
    /// It succeeded once: later failures replace the worker, never break the pool.
    Proven,
}

impl InitRecord {
    /// A worker's initializer succeeded.
    pub(super) fn succeeded(&mut self) {
        *self = InitRecord::Proven;
    }

    /// A worker's initializer failed; `Some(n)` when that is the `n`th failure in a
    /// row of one that never worked and the pool must break.
    pub(super) fn failed(&mut self) -> Option<u32> {
        match self {
            InitRecord::Proven => None,
            InitRecord::Unproven { failures } => {
                *failures += 1;
                (*failures >= MAX_INIT_FAILURES).then_some(*failures)
            }
        }
    }
}

/// What a descriptor in the leader's poll set is. Indices are into `State::procs`,
/// which only the leader changes, and only after it has handled what the poll found.
#[derive(Clone, Copy, Debug)]
pub(super) enum Source {
    /// The wake-up socket: new work or a request.
    Wake,
    /// Worker `i`'s stream: answers to read, or room to write.
    Stream(usize),
    /// Worker `i`'s pidfd: it exited.
    Exit(usize),
}

/// Everything a pool's threads share, under `Shared`'s mutex.
pub(super) struct State {
    pub(super) core: Core,
    /// The workers, by the core's id. Only the leader adds or removes one.
    pub(super) procs: Vec<(WorkerId, Proc)>,
    pub(super) next_id: WorkerId,
    /// Workers started so far, for their names.
    pub(super) spawned: usize,
    pub(super) life: Life,
    pub(super) lead: Lead,
    /// Followers waiting for answers.
    pub(super) waiting: usize,
    pub(super) init: InitRecord,
    /// Workers killed to stop a cancelled call, not yet reaped: someone must lead
    /// until they are (and replaced).
    pub(super) cancel_killed: Vec<WorkerId>,
    /// Deliveries taken from the core and not yet handed over: handed over one at a
    /// time, so that a callback that waits on another handle (leading the pool from
    /// inside the hand-over) finds that handle's answers here, not stuck further up its
    /// own stack.
    pub(super) due: VecDeque<Delivery>,
    /// The leader's poll set, kept between turns for its buffers (taken out while it
    /// waits without the lock).
    pub(super) poll: PollSet<Source>,
}

impl State {
    pub(super) fn new(core: Core) -> State {
        State {
            core,
            procs: Vec::new(),
            next_id: 0,
            spawned: 0,
            life: Life::Running,
            lead: Lead::Free,
            waiting: 0,
            init: InitRecord::Unproven { failures: 0 },
            cancel_killed: Vec::new(),
            due: VecDeque::new(),
            poll: PollSet::default(),
        }
    }

    /// Whether work nobody waits for right away needs the background thread to lead.
    pub(super) fn wants_background(&self) -> bool {
        self.core.needs_background()
            || self.life == Life::Terminating
            || !self.cancel_killed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn life_cycle() {
        let mut life = Life::Running;
        assert!(!life.is_closed());
        life.close();
        life.close();
        assert_eq!(life, Life::Closed);
        life.joined();
        assert!(life.is_stopped());
        assert!(!life.terminate(), "a joined pool stays joined");
        assert_eq!(life, Life::Joined);

        let mut life = Life::Running;
        assert!(life.terminate());
        assert!(life.is_closed() && !life.is_stopped());
        life.close();
        assert_eq!(life, Life::Terminating);
        life.terminated();
        assert!(life.is_stopped());
    }

    #[test]
    #[should_panic(expected = "only a closed pool is joined")]
    #[cfg(debug_assertions)]
    fn a_running_pool_is_not_joined() {
        Life::Running.joined();
    }

    #[test]
    fn lead_hand_over() {
        let mut lead = Lead::Free;
        lead.take();
        lead.poll();
        assert!(lead.is_held());
        lead.polled();
        lead.release();
        assert_eq!(lead, Lead::Free);
    }

    #[test]
    fn an_initializer_that_never_works_breaks_the_pool_once_proven_never() {
        let mut init = InitRecord::Unproven { failures: 0 };
        assert_eq!(init.failed(), None);
        assert_eq!(init.failed(), None);
        assert_eq!(init.failed(), Some(MAX_INIT_FAILURES));
        let mut init = InitRecord::Unproven { failures: 0 };
        init.failed();
        init.succeeded();
        for _ in 0..5 {
            assert_eq!(init.failed(), None);
        }
    }
}
