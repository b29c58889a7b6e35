//! The item count, which a bounded queue (`maxsize`) waits on: a producer reserves a
//! slot before it puts, a consumer releases one as it takes.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::at::{self, OPEN};
use super::ends::Ends;
use super::datagram::WHAT;
use super::hook;
use crate::error::{Error, Result};
use crate::sys::futex;

/// The largest `maxsize` (the item count is a 32-bit futex word).
pub(super) const MAXSIZE_LIMIT: usize = u32::MAX as usize - 1;

impl Ends {
    /// Counts one more item, waiting until `deadline` for room in a bounded queue.
    ///
    /// A waiting producer sleeps on the `ROOM` word, read *before* it looks at the state
    /// and the count: a release or a shutdown that comes after that look bumps `ROOM`
    /// first, so the wait returns at once instead of missing the wake-up (the count
    /// alone is no good: a shutdown does not change it).
    pub(super) fn reserve(&self, deadline: Option<Instant>) -> Result<()> {
        let count = self.word(at::COUNT);
        let room = self.word(at::ROOM);
        let max = self.maxsize();
        loop {
            let seen = room.load(Ordering::SeqCst);
            if self.state() != OPEN {
                return Err(Error::ShutDown { what: WHAT });
            }
            let c = count.load(Ordering::SeqCst);
            if max == 0 || c < max {
                if count
                    .compare_exchange(c, c.wrapping_add(1), Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            if deadline.is_some_and(|d| d <= Instant::now()) {
                return Err(Error::Full { what: WHAT });
            }
            hook::run("reserve:full");
            let waiters = self.word(at::PUT_WAITERS);
            waiters.fetch_add(1, Ordering::SeqCst);
            let woke = futex::wait(room, seen, deadline);
            waiters.fetch_sub(1, Ordering::SeqCst);
            if woke == futex::Wait::TimedOut && count.load(Ordering::SeqCst) >= max {
                return Err(Error::Full { what: WHAT });
            }
        }
    }

    /// Counts one item less (taken, or a put that failed), waking a waiting producer.
    pub(super) fn release(&self) {
        let count = self.word(at::COUNT);
        // Never below zero, even if a peer's counting went wrong.
        let _ = count.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1));
        let room = self.word(at::ROOM);
        room.fetch_add(1, Ordering::SeqCst);
        if self.word(at::PUT_WAITERS).load(Ordering::SeqCst) != 0 {
            futex::wake(room, u32::MAX);
        }
    }

    /// Wakes every producer waiting for room, to look at the queue's state again.
    pub(super) fn wake_producers(&self) {
        let room = self.word(at::ROOM);
        room.fetch_add(1, Ordering::SeqCst);
        futex::wake(room, u32::MAX);
    }
}
