//! `Event`: a shared flag that processes wait on.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Words;
use crate::error::Result;
use crate::sys::futex;

/// A process-shared flag (Python's `multiprocessing.Event`): [`wait`](Self::wait)
/// blocks until some process calls [`set`](Self::set).
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// let e = multiproc::Event::new()?;
/// assert!(!e.wait_timeout(std::time::Duration::from_millis(1)));
/// e.set();
/// e.wait();
/// assert!(e.is_set());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    words: Words<1>,
}

impl Event {
    /// A new event, not set.
    pub fn new() -> Result<Self> {
        Ok(Event {
            words: Words::new("multiproc-event")?,
        })
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        let w = self.words.at(0);
        w.store(1, Ordering::Release);
        futex::wake(w, u32::MAX);
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.words.at(0).store(0, Ordering::Release);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.words.at(0).load(Ordering::Acquire) != 0
    }

    /// Waits until the flag is set.
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits at most `timeout` for the flag; returns whether it is set.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(super::deadline(Some(timeout)))
    }

    fn wait_until(&self, deadline: Option<std::time::Instant>) -> bool {
        let w = self.words.at(0);
        while w.load(Ordering::Acquire) == 0 {
            if futex::wait(w, 0, deadline) == futex::Wait::TimedOut {
                return self.is_set();
            }
        }
        true
    }
}
