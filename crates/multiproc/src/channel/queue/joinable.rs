//! [`JoinableQueue`]: a [`Queue`] that counts unfinished items.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::Queue;
use crate::error::{Error, Result};
use crate::sync::Words;
use crate::sys::futex;

/// A [`Queue`] that also counts unfinished items (Python's `JoinableQueue`): each
/// `put` adds one, each [`task_done`](Self::task_done) removes one, and
/// [`join`](Self::join) waits for zero.
///
/// A consumer that dies before calling `task_done` leaves its item counted: use
/// [`join_timeout`](Self::join_timeout) where that can happen.
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// let q = multiproc::JoinableQueue::<u32>::new()?;
/// q.put(&1)?;
/// assert_eq!(q.get()?, 1);
/// q.task_done()?;
/// q.join();
/// # Ok(()) }
/// ```
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct JoinableQueue<T> {
    queue: Queue<T>,
    unfinished: Words<1>,
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue {
            queue: self.queue.clone(),
            unfinished: self.unfinished.clone(),
        }
    }
}

impl<T> std::fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinableQueue")
            .field("type", &std::any::type_name::<T>())
            .field("unfinished", &self.unfinished.at(0).load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// A new, empty, unbounded queue.
    pub fn new() -> Result<Self> {
        Self::with_maxsize(0)
    }

    /// A new, empty queue that holds at most `maxsize` items (0: unbounded); see
    /// [`Queue::with_maxsize`].
    pub fn with_maxsize(maxsize: usize) -> Result<Self> {
        Ok(JoinableQueue {
            queue: Queue::with_maxsize(maxsize)?,
            unfinished: Words::new("multiproc-joinable-queue")?,
        })
    }

    /// See [`Queue::qsize`].
    pub fn qsize(&self) -> usize {
        self.queue.qsize()
    }

    /// See [`Queue::maxsize`].
    pub fn maxsize(&self) -> usize {
        self.queue.maxsize()
    }

    /// See [`Queue::full`].
    pub fn full(&self) -> bool {
        self.queue.full()
    }

    /// See [`Queue::is_empty`].
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// See [`Queue::shutdown`]. An immediate shutdown also counts every item it
    /// discards as done (as Python's), so that [`join`](Self::join) does not wait for
    /// items nobody will take.
    pub fn shutdown(&self, immediate: bool) {
        let discarded = self.queue.shutdown_discarding(immediate);
        let n = self.unfinished.at(0);
        for _ in 0..discarded {
            let prev = n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1));
            if prev == Ok(1) {
                futex::wake(n, u32::MAX);
            }
        }
    }

    /// See [`Queue::is_shut_down`].
    pub fn is_shut_down(&self) -> bool {
        self.queue.is_shut_down()
    }

    fn counted(&self, put: impl FnOnce(&Queue<T>) -> Result<()>) -> Result<()> {
        let n = self.unfinished.at(0);
        n.fetch_add(1, Ordering::AcqRel);
        put(&self.queue).inspect_err(|_| {
            if n.fetch_sub(1, Ordering::AcqRel) == 1 {
                futex::wake(n, u32::MAX);
            }
        })
    }

    /// Puts `item` and counts it as unfinished.
    pub fn put(&self, item: &T) -> Result<()> {
        self.counted(|q| q.put(item))
    }

    /// Puts `item`, waiting at most `timeout` for room.
    pub fn put_timeout(&self, item: &T, timeout: Duration) -> Result<()> {
        self.counted(|q| q.put_timeout(item, timeout))
    }

    /// Puts `item` if there is room now.
    pub fn try_put(&self, item: &T) -> Result<()> {
        self.counted(|q| q.try_put(item))
    }

    /// Takes the next item; see [`Queue::get`].
    pub fn get(&self) -> Result<T> {
        self.queue.get()
    }

    /// Takes the next item, waiting at most `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.queue.get_timeout(timeout)
    }

    /// Takes the next item if one is there now.
    pub fn try_get(&self) -> Result<T> {
        self.queue.try_get()
    }

    /// See [`Queue::close`].
    pub fn close(&self) {
        self.queue.close()
    }

    /// Marks one item taken with `get` as processed. More calls than items put is
    /// [`Error::TaskDoneTooOften`].
    pub fn task_done(&self) -> Result<()> {
        let n = self.unfinished.at(0);
        let mut cur = n.load(Ordering::Acquire);
        loop {
            if cur == 0 {
                return Err(Error::TaskDoneTooOften);
            }
            match n.compare_exchange_weak(cur, cur - 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if cur == 1 {
            futex::wake(n, u32::MAX);
        }
        Ok(())
    }

    /// Waits until every item put has been marked done.
    pub fn join(&self) {
        self.join_until(None);
    }

    /// Waits at most `timeout` for every item to be marked done; returns whether they
    /// were.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        self.join_until(Instant::now().checked_add(timeout))
    }

    fn join_until(&self, deadline: Option<Instant>) -> bool {
        let n = self.unfinished.at(0);
        loop {
            let cur = n.load(Ordering::Acquire);
            if cur == 0 {
                return true;
            }
            if futex::wait(n, cur, deadline) == futex::Wait::TimedOut {
                return n.load(Ordering::Acquire) == 0;
            }
        }
    }
}

/// The wait set of the underlying [`Queue`]; see its `AsFd`.
impl<T> AsFd for JoinableQueue<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.queue.as_fd()
    }
}
