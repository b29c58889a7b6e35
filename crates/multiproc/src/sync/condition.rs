//! `Condition`: wait for a change that another process announces.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{LockGuard, MUTEX_SIZE, RawLock};
use crate::error::{Error, Result};
use crate::sys::futex;

const WHAT: &str = "Condition's lock";

/// A process-shared condition variable with its own lock (Python's
/// `multiprocessing.Condition`).
///
/// Lock it, check your condition, and [`wait`](Self::wait) with the guard: the lock is
/// released while waiting and held again when `wait` returns. Another process changes
/// the state under the lock and calls [`notify`](Self::notify) or
/// [`notify_all`](Self::notify_all). Like every condition variable it may wake
/// spuriously, so wait in a loop (or use [`wait_for`](Self::wait_for)).
///
/// Built from a robust mutex and a futex sequence word (not `pthread_cond_t`, whose
/// shared state a waiter killed mid-wait can corrupt): a process that dies while
/// waiting leaves nothing behind.
///
/// ```
/// use std::time::Duration;
/// # fn main() -> multiproc::Result<()> {
/// let c = multiproc::Condition::new()?;
/// let g = c.lock()?;
/// let (g, notified) = c.wait_timeout(g, Duration::from_millis(5))?;
/// assert!(!notified);
/// drop(g);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Condition {
    raw: RawLock,
}

impl Condition {
    /// A new condition variable with a new (non-recursive) lock.
    pub fn new() -> Result<Self> {
        Ok(Condition {
            raw: RawLock::new("multiproc-condition", 4, false)?,
        })
    }

    fn seq(&self) -> Result<&AtomicU32> {
        self.raw
            .segment()
            .map()
            .atomic_u32(MUTEX_SIZE)
            .ok_or_else(|| Error::SharedMemory {
                detail: "a received Condition's segment is too small".into(),
            })
    }

    /// Takes the condition's lock.
    pub fn lock(&self) -> Result<LockGuard<'_>> {
        self.raw.lock(WHAT, None)
    }

    /// Takes the condition's lock, waiting at most `timeout`.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<LockGuard<'_>> {
        self.raw.lock(WHAT, Some(timeout))
    }

    fn check_guard(&self, guard: &LockGuard<'_>) -> Result<()> {
        if self.raw.same(guard.segment()) {
            Ok(())
        } else {
            Err(Error::Protocol {
                pid: std::process::id(),
                detail: "Condition::wait was given the guard of another lock".into(),
            })
        }
    }

    /// Releases the lock, waits for a notification, and takes the lock again.
    pub fn wait<'a>(&'a self, guard: LockGuard<'a>) -> Result<LockGuard<'a>> {
        self.wait_inner(guard, None).map(|(g, _)| g)
    }

    /// Like [`wait`](Self::wait), for at most `timeout`. The flag is `false` if the
    /// time ran out without a wake-up. The lock is held again either way.
    pub fn wait_timeout<'a>(
        &'a self,
        guard: LockGuard<'a>,
        timeout: Duration,
    ) -> Result<(LockGuard<'a>, bool)> {
        self.wait_inner(guard, Some(timeout))
    }

    /// Waits until `ready()` (evaluated under the lock) is `true`, at most `timeout`
    /// if one is given. Returns the guard and the last value of `ready()`.
    pub fn wait_for<'a>(
        &'a self,
        mut guard: LockGuard<'a>,
        mut ready: impl FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<(LockGuard<'a>, bool)> {
        let deadline = super::deadline(timeout);
        loop {
            if ready() {
                return Ok((guard, true));
            }
            let left = match deadline {
                None => None,
                Some(d) => {
                    let now = std::time::Instant::now();
                    if now >= d {
                        return Ok((guard, false));
                    }
                    Some(d - now)
                }
            };
            guard = self.wait_inner(guard, left)?.0;
        }
    }

    fn wait_inner<'a>(
        &'a self,
        guard: LockGuard<'a>,
        timeout: Option<Duration>,
    ) -> Result<(LockGuard<'a>, bool)> {
        self.check_guard(&guard)?;
        let seq = self.seq()?;
        // Read under the lock: a notifier (who holds the lock to change the state)
        // bumps it after this point, so the futex wait below cannot miss it.
        let seen = seq.load(Ordering::Acquire);
        let deadline = super::deadline(timeout);
        let (guard, wait) = guard.unlocked(WHAT, || futex::wait(seq, seen, deadline))?;
        Ok((guard, wait == futex::Wait::Woken))
    }

    /// Wakes up to `n` waiters. Call it while holding the lock, after changing the
    /// state the waiters check.
    pub fn notify(&self, n: u32) -> Result<()> {
        let seq = self.seq()?;
        seq.fetch_add(1, Ordering::Release);
        futex::wake(seq, n);
        Ok(())
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) -> Result<()> {
        self.notify(u32::MAX)
    }
}
