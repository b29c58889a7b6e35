//! `Barrier`: wait until a fixed number of processes arrive.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Words;
use crate::error::{Error, Result};
use crate::sys::futex;

const PARTIES: usize = 0;
/// The whole state in one futex word, so that every change (an arrival, a trip, a
/// break, a reset) is one compare-and-swap and a waiter cannot miss one between
/// checking and sleeping: the parties inside the current round (low 16 bits; equal to
/// the parties while the last one runs the action), the round's number (14 bits), and
/// two flags.
const STATE: usize = 2;
const COUNT: u32 = 0xffff;
const GEN_ONE: u32 = 1 << 16;
const GEN: u32 = 0x3fff << 16;
/// A reset is under way: the parties of the broken round are leaving; the last one
/// out starts a fresh round. Arrivals wait for it.
const RESETTING: u32 = 1 << 30;
const BROKEN: u32 = 1 << 31;

/// The most parties a barrier can have.
const MAX_PARTIES: u32 = COUNT;

/// The state of a fresh round after the one in `s`: nobody inside, no flag.
fn next_round(s: u32) -> u32 {
    (s & GEN).wrapping_add(GEN_ONE) & GEN
}

/// A process-shared barrier (Python's `multiprocessing.Barrier`): each of `parties`
/// processes (or threads) calls [`wait`](Self::wait), and all are released when the last
/// arrives. A timeout, or [`abort`](Self::abort), *breaks* the barrier: every waiter then
/// gets [`Error::BrokenBarrier`] until [`reset`](Self::reset).
///
/// As in Python, a barrier may have an **action** ([`with_action`](Self::with_action)),
/// run by the last party to arrive before any is released, and a **default timeout**
/// for [`wait`](Self::wait) ([`with_timeout`](Self::with_timeout)). Both travel with
/// the handle (set them before passing it on).
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// let b = multiproc::Barrier::new(1)?;
/// assert_eq!(b.wait()?, 0);
/// # Ok(()) }
/// ```
///
/// A process that dies inside [`wait`](Self::wait) is not noticed (the barrier has no
/// owner to track): the others wait for their timeout, which breaks the barrier; and a
/// [`reset`](Self::reset) then waits for that party to leave, which it never does, so
/// the next round's parties time out too. Give every `wait` a timeout when a party may
/// be killed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Barrier {
    words: Words<3>,
    /// The action's image offset (see `sys::image::fn_offset`).
    action: Option<u64>,
    timeout: Option<Duration>,
}

impl Barrier {
    /// A barrier for `parties` participants (at least 1, at most 65,535: more is
    /// [`Error::InvalidArgument`]).
    pub fn new(parties: u32) -> Result<Self> {
        if parties > MAX_PARTIES {
            return Err(Error::InvalidArgument {
                detail: format!("a Barrier holds at most {MAX_PARTIES} parties, not {parties}"),
            });
        }
        let words = Words::new("multiproc-barrier")?;
        words.at(PARTIES).store(parties.max(1), Ordering::Relaxed);
        Ok(Barrier {
            words,
            action: None,
            timeout: None,
        })
    }

    /// Runs `action` once per round, in the last party to arrive, before any party is
    /// released (Python's `action=`). It is a plain `fn()`, not a closure: it runs in
    /// whichever process trips the barrier, which finds it in its own copy of the
    /// program (as a task is found), so it can capture nothing of the process that set
    /// it.
    ///
    /// If the action panics, the party that ran it gets [`Error::Panicked`], the others
    /// [`Error::BrokenBarrier`], and the barrier stays broken until
    /// [`reset`](Self::reset) (as in Python, where the action's exception breaks it).
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// static TRIPS: AtomicU32 = AtomicU32::new(0);
    /// fn count_trip() { TRIPS.fetch_add(1, Ordering::Relaxed); }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let b = multiproc::Barrier::new(1)?.with_action(count_trip);
    /// b.wait()?;
    /// b.wait()?;
    /// assert_eq!(TRIPS.load(Ordering::Relaxed), 2);
    /// # Ok(()) }
    /// ```
    pub fn with_action(mut self, action: fn()) -> Self {
        self.action = Some(crate::sys::image::fn_offset(action));
        self
    }

    /// The timeout [`wait`](Self::wait) uses (Python's `timeout=`); default: none.
    /// [`wait_timeout`](Self::wait_timeout) overrides it.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    fn state(&self) -> &AtomicU32 {
        self.words.at(STATE)
    }

    /// The number of participants.
    pub fn parties(&self) -> u32 {
        self.words.at(PARTIES).load(Ordering::Relaxed).max(1)
    }

    /// How many are waiting now for the current round (0 while it is releasing them,
    /// broken or being reset).
    pub fn n_waiting(&self) -> u32 {
        let s = self.state().load(Ordering::Relaxed);
        let count = s & COUNT;
        if s & (BROKEN | RESETTING) != 0 || count >= self.parties() {
            0
        } else {
            count
        }
    }

    /// Whether the barrier is broken (not counting a reset under way, which ends in
    /// a usable barrier).
    pub fn is_broken(&self) -> bool {
        let s = self.state().load(Ordering::Acquire);
        s & BROKEN != 0 && s & RESETTING == 0
    }

    /// Waits for all parties, at most the default timeout if one was set
    /// ([`with_timeout`](Self::with_timeout)). Returns this party's arrival index,
    /// `0..parties` (the last to arrive gets `parties - 1`), as Python does, so one
    /// party can be chosen for follow-up work.
    pub fn wait(&self) -> Result<u32> {
        self.wait_inner(self.timeout)
    }

    /// Like [`wait`](Self::wait), for at most `timeout`; on timeout the barrier breaks
    /// and this call returns [`Error::BrokenBarrier`].
    pub fn wait_timeout(&self, timeout: Duration) -> Result<u32> {
        self.wait_inner(Some(timeout))
    }

    fn wait_inner(&self, timeout: Option<Duration>) -> Result<u32> {
        let state = self.state();
        let parties = self.parties();
        let deadline = super::deadline(timeout);
        // Arrive: join the current round, unless it is releasing its parties (its last
        // one runs the action) or being reset; then wait for the next.
        let (index, round) = loop {
            let s = state.load(Ordering::Acquire);
            if s & RESETTING == 0 && s & BROKEN != 0 {
                return Err(Error::BrokenBarrier);
            }
            if s & RESETTING != 0 || s & COUNT >= parties {
                if futex::wait(state, s, deadline) == futex::Wait::TimedOut {
                    self.abort();
                    return Err(Error::BrokenBarrier);
                }
                continue;
            }
            if state
                .compare_exchange(s, s + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                break (s & COUNT, s & GEN);
            }
        };
        if index + 1 == parties {
            return self.trip(index, round);
        }
        loop {
            let s = state.load(Ordering::Acquire);
            if s & GEN != round {
                // The round moves on only when it trips (a reset waits for every party
                // of the round, this one included, to leave first): we passed.
                return Ok(index);
            }
            if s & BROKEN != 0 {
                return self.leave_broken(round);
            }
            if futex::wait(state, s, deadline) == futex::Wait::TimedOut {
                // Break the round, unless it tripped or broke meanwhile.
                loop {
                    let s = state.load(Ordering::Acquire);
                    if s & GEN != round {
                        return Ok(index);
                    }
                    if s & BROKEN != 0
                        || state
                            .compare_exchange(s, s | BROKEN, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok()
                    {
                        futex::wake(state, u32::MAX);
                        return self.leave_broken(round);
                    }
                }
            }
        }
    }

    /// The last party of `round` arrived: runs the action, then releases everyone.
    fn trip(&self, index: u32, round: u32) -> Result<u32> {
        let state = self.state();
        if let Some(failed) = self.run_action() {
            self.abort();
            let _ = self.leave_broken(round);
            return Err(failed);
        }
        loop {
            let s = state.load(Ordering::Acquire);
            if s & BROKEN != 0 {
                // Aborted or reset while the action ran.
                return self.leave_broken(round);
            }
            if state
                .compare_exchange(s, next_round(s), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                futex::wake(state, u32::MAX);
                return Ok(index);
            }
        }
    }

    /// Runs the action, if there is one; the error for the party that ran it if it
    /// panicked.
    fn run_action(&self) -> Option<Error> {
        let offset = self.action?;
        let Some(action) = crate::sys::image::fn_at(offset) else {
            return Some(Error::Protocol {
                pid: std::process::id(),
                detail: "a Barrier's action is not in this program's code".into(),
            });
        };
        std::panic::catch_unwind(action).err().map(|payload| Error::Panicked {
            pid: std::process::id(),
            message: crate::error::panic_message(payload.as_ref()),
            location: None,
            backtrace: None,
        })
    }

    /// This party leaves a broken `round`; the last one out of a round being reset
    /// starts a fresh one.
    fn leave_broken(&self, round: u32) -> Result<u32> {
        let state = self.state();
        loop {
            let s = state.load(Ordering::Acquire);
            if s & GEN != round || s & COUNT == 0 {
                return Err(Error::BrokenBarrier);
            }
            let last = s & COUNT == 1;
            let new = if last && s & RESETTING != 0 {
                next_round(s)
            } else {
                s - 1
            };
            if state
                .compare_exchange(s, new, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                if new & RESETTING == 0 && s & RESETTING != 0 {
                    futex::wake(state, u32::MAX);
                }
                return Err(Error::BrokenBarrier);
            }
        }
    }

    /// Breaks the barrier: current and future waiters get [`Error::BrokenBarrier`]
    /// until [`reset`](Self::reset) (also after a reset under way).
    pub fn abort(&self) {
        let state = self.state();
        let mut s = state.load(Ordering::Acquire);
        loop {
            let new = (s | BROKEN) & !RESETTING;
            if new == s {
                return;
            }
            match state.compare_exchange(s, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        futex::wake(state, u32::MAX);
    }

    /// Makes the barrier usable again (Python's `reset`), atomically: every party
    /// waiting in the current round gets [`Error::BrokenBarrier`] (none passes), and
    /// calls made after `reset` returns start a fresh round. A party that arrives while
    /// the old round's parties are still leaving waits for them, then joins the new
    /// round.
    ///
    /// ```
    /// # fn main() -> multiproc::Result<()> {
    /// let b = multiproc::Barrier::new(2)?;
    /// b.abort();
    /// assert!(b.is_broken());
    /// b.reset();
    /// assert!(!b.is_broken());
    /// # Ok(()) }
    /// ```
    pub fn reset(&self) {
        let state = self.state();
        let mut s = state.load(Ordering::Acquire);
        loop {
            if s & RESETTING != 0 {
                return; // one is under way
            }
            let new = if s & COUNT == 0 {
                next_round(s)
            } else {
                s | BROKEN | RESETTING
            };
            match state.compare_exchange(s, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        futex::wake(state, u32::MAX);
    }
}
