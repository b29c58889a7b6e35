//! `Semaphore` and `BoundedSemaphore`: a counter in a shared futex word.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Words;
use crate::error::{Error, Result};
use crate::sys::futex;

const VALUE: usize = 0;
const BOUND: usize = 1;
/// Word 1 of an unbounded semaphore.
const UNBOUNDED: u32 = u32::MAX;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Counter {
    words: Words<2>,
}

impl Counter {
    fn new(value: u32, bound: u32) -> Result<Self> {
        let words = Words::new("multiproc-semaphore")?;
        words.at(VALUE).store(value, Ordering::Relaxed);
        words.at(BOUND).store(bound, Ordering::Relaxed);
        Ok(Counter { words })
    }

    /// `Ok(true)` if a unit was taken before the timeout.
    fn acquire(&self, timeout: Option<Duration>) -> bool {
        let deadline = super::deadline(timeout);
        let v = self.words.at(VALUE);
        let mut cur = v.load(Ordering::Relaxed);
        loop {
            if cur > 0 {
                match v.compare_exchange_weak(cur, cur - 1, Ordering::Acquire, Ordering::Relaxed) {
                    Ok(_) => return true,
                    Err(now) => {
                        cur = now;
                        continue;
                    }
                }
            }
            if futex::wait(v, 0, deadline) == futex::Wait::TimedOut {
                // One last look: a release may have raced the deadline.
                cur = v.load(Ordering::Relaxed);
                if cur == 0 {
                    return false;
                }
                continue;
            }
            cur = v.load(Ordering::Relaxed);
        }
    }

    fn release(&self, n: u32) -> Result<()> {
        let v = self.words.at(VALUE);
        let bound = self.words.at(BOUND).load(Ordering::Relaxed);
        let mut cur = v.load(Ordering::Relaxed);
        loop {
            let next = match cur.checked_add(n) {
                Some(next) if bound == UNBOUNDED || next <= bound => next,
                _ if bound == UNBOUNDED => {
                    return Err(Error::SemaphoreOverflow { bound: u32::MAX });
                }
                _ => return Err(Error::SemaphoreOverflow { bound }),
            };
            match v.compare_exchange_weak(cur, next, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        futex::wake(v, n);
        Ok(())
    }

    fn value(&self) -> u32 {
        self.words.at(VALUE).load(Ordering::Relaxed)
    }
}

macro_rules! semaphore_methods {
    ($what:literal) => {
        /// Takes one unit, waiting as long as it takes.
        pub fn acquire(&self) -> Result<()> {
            self.c.acquire(None);
            Ok(())
        }

        /// Takes one unit, waiting at most `timeout` ([`Error::Timeout`] after that).
        pub fn acquire_timeout(&self, timeout: Duration) -> Result<()> {
            if self.c.acquire(Some(timeout)) {
                Ok(())
            } else {
                Err(super::timeout_error($what, timeout))
            }
        }

        /// Takes one unit if one is available now; `false` otherwise.
        pub fn try_acquire(&self) -> bool {
            self.c.acquire(Some(Duration::ZERO))
        }

        /// The current value (racy by nature: others may change it at once).
        pub fn value(&self) -> u32 {
            self.c.value()
        }
    };
}

/// A process-shared counting semaphore (Python's `multiprocessing.Semaphore`).
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// let s = multiproc::Semaphore::new(1)?;
/// s.acquire()?;
/// assert!(!s.try_acquire());
/// s.release()?;
/// assert!(s.try_acquire());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Semaphore {
    c: Counter,
}

impl Semaphore {
    /// A semaphore holding `value` units.
    pub fn new(value: u32) -> Result<Self> {
        Ok(Semaphore {
            c: Counter::new(value, UNBOUNDED)?,
        })
    }

    semaphore_methods!("a Semaphore");

    /// Gives one unit back, waking a waiter.
    pub fn release(&self) -> Result<()> {
        self.c.release(1)
    }

    /// Gives `n` units back, waking up to `n` waiters.
    pub fn release_n(&self, n: u32) -> Result<()> {
        self.c.release(n)
    }
}

/// A semaphore that refuses to be released above its initial value (Python's
/// `BoundedSemaphore`): an extra release is [`Error::SemaphoreOverflow`], which
/// catches a unit given back twice.
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// let s = multiproc::BoundedSemaphore::new(2)?;
/// assert!(s.release().is_err());
/// s.acquire()?;
/// s.release()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BoundedSemaphore {
    c: Counter,
}

impl BoundedSemaphore {
    /// A semaphore holding `value` units, never more.
    pub fn new(value: u32) -> Result<Self> {
        Ok(BoundedSemaphore {
            c: Counter::new(value, value.min(UNBOUNDED - 1))?,
        })
    }

    semaphore_methods!("a BoundedSemaphore");

    /// Gives one unit back; [`Error::SemaphoreOverflow`] if that would exceed the bound.
    pub fn release(&self) -> Result<()> {
        self.c.release(1)
    }
}
