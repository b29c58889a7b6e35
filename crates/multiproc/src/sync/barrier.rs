//! `Barrier`: wait until a fixed number of processes arrive.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Words;
use crate::error::{Error, Result};
use crate::sys::futex;

const PARTIES: usize = 0;
const COUNT: usize = 1;
/// Generation number (low 31 bits) and the broken flag (top bit), in one futex word so
/// that a waiter cannot miss a break between checking and sleeping.
const STATE: usize = 2;
const BROKEN: u32 = 1 << 31;

/// A process-shared barrier (Python's `multiprocessing.Barrier`): each of `parties`
/// processes (or threads) calls [`wait`](Self::wait), and all are released when the last
/// arrives. A timeout, or [`abort`](Self::abort), *breaks* the barrier: every waiter then
/// gets [`Error::BrokenBarrier`] until [`reset`](Self::reset).
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// let b = multiproc::Barrier::new(1)?;
/// assert_eq!(b.wait()?, 0);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Barrier {
    words: Words<3>,
}

impl Barrier {
    /// A barrier for `parties` participants (at least 1).
    pub fn new(parties: u32) -> Result<Self> {
        let words = Words::new("multiproc-barrier")?;
        words.at(PARTIES).store(parties.max(1), Ordering::Relaxed);
        Ok(Barrier { words })
    }

    /// The number of participants.
    pub fn parties(&self) -> u32 {
        self.words.at(PARTIES).load(Ordering::Relaxed).max(1)
    }

    /// How many are waiting now.
    pub fn n_waiting(&self) -> u32 {
        self.words.at(COUNT).load(Ordering::Relaxed)
    }

    /// Whether the barrier is broken.
    pub fn is_broken(&self) -> bool {
        self.words.at(STATE).load(Ordering::Acquire) & BROKEN != 0
    }

    /// Waits for all parties. Returns this party's arrival index, `0..parties` (the
    /// last to arrive gets `parties - 1`), as Python does, so one party can be chosen
    /// for follow-up work.
    pub fn wait(&self) -> Result<u32> {
        self.wait_inner(None)
    }

    /// Like [`wait`](Self::wait), for at most `timeout`; on timeout the barrier breaks
    /// and this call returns [`Error::BrokenBarrier`].
    pub fn wait_timeout(&self, timeout: Duration) -> Result<u32> {
        self.wait_inner(Some(timeout))
    }

    fn wait_inner(&self, timeout: Option<Duration>) -> Result<u32> {
        let state = self.words.at(STATE);
        let count = self.words.at(COUNT);
        let parties = self.parties();
        let deadline = super::deadline(timeout);
        let gen_state = state.load(Ordering::Acquire);
        if gen_state & BROKEN != 0 {
            return Err(Error::BrokenBarrier);
        }
        let index = count.fetch_add(1, Ordering::AcqRel);
        if index + 1 >= parties {
            count.store(0, Ordering::Relaxed);
            state.store(gen_state.wrapping_add(1) & !BROKEN, Ordering::Release);
            futex::wake(state, u32::MAX);
            return Ok(index.min(parties - 1));
        }
        loop {
            let now = state.load(Ordering::Acquire);
            if now & BROKEN != 0 {
                return Err(Error::BrokenBarrier);
            }
            if now != gen_state {
                return Ok(index);
            }
            if futex::wait(state, gen_state, deadline) == futex::Wait::TimedOut {
                match state.compare_exchange(
                    gen_state,
                    gen_state | BROKEN,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        futex::wake(state, u32::MAX);
                        return Err(Error::BrokenBarrier);
                    }
                    // The last party arrived just before the deadline: we passed.
                    Err(now) if now & BROKEN == 0 => return Ok(index),
                    Err(_) => return Err(Error::BrokenBarrier),
                }
            }
        }
    }

    /// Breaks the barrier: current and future waiters get [`Error::BrokenBarrier`].
    pub fn abort(&self) {
        let state = self.words.at(STATE);
        state.fetch_or(BROKEN, Ordering::AcqRel);
        futex::wake(state, u32::MAX);
    }

    /// Makes a broken barrier usable again (Python's `reset`): waiters of the current
    /// round get [`Error::BrokenBarrier`], later calls start a fresh round.
    pub fn reset(&self) {
        let state = self.words.at(STATE);
        self.abort();
        self.words.at(COUNT).store(0, Ordering::Relaxed);
        let s = state.load(Ordering::Acquire);
        state.store(s.wrapping_add(1) & !BROKEN, Ordering::Release);
    }
}
