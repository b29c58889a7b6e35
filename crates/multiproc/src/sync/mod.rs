//! Process-shared synchronization: [`Lock`], [`RLock`], [`Semaphore`],
//! [`BoundedSemaphore`], [`Event`], [`Condition`], [`Barrier`].
//!
//! Each primitive lives in a small anonymous shared-memory segment (a memfd), so it
//! works between any processes that hold a handle: clone it for threads of this
//! process, pass it to a child as (part of) a task argument, or send it through a
//! channel. Every blocking call has a `*_timeout` form.
//!
//! ## Dead holders
//!
//! [`Lock`] and [`RLock`] are robust, process-shared pthread mutexes: if the process
//! (or thread) holding one dies, the kernel releases it, and the next `lock` succeeds
//! with a guard whose [`owner_died`](LockGuard::owner_died) is `true`: the data the lock
//! protects may be half-updated, check or repair it. This holds under every start
//! method. A dead process never deadlocks the others.
//!
//! The counting primitives ([`Semaphore`], [`Event`], [`Barrier`]) are futex words and
//! have no owner: a process that dies after `acquire` does not give its unit back, and
//! one that never reaches a barrier leaves the others to their timeout (the barrier then
//! breaks, as Python's does).

mod barrier;
mod condition;
mod event;
mod lock;
mod semaphore;

pub use barrier::Barrier;
pub use condition::Condition;
pub use event::Event;
pub use lock::{Lock, LockGuard, RLock};
pub(crate) use lock::{MUTEX_SIZE, RawLock};
pub use semaphore::{BoundedSemaphore, Semaphore};

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::shm::segment::Segment;

/// The deadline for a timeout (`None`: wait forever; an absurdly long timeout also
/// waits forever).
pub(crate) fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}

pub(crate) fn timeout_error(what: &str, timeout: Duration) -> crate::Error {
    crate::Error::Timeout {
        what: what.to_owned(),
        timeout,
    }
}

/// `N` 32-bit futex words in their own segment: the state of the counting primitives.
/// A handle received from another process is checked to hold all `N` words.
#[derive(Debug, Clone)]
pub(crate) struct Words<const N: usize> {
    seg: Arc<Segment>,
}

impl<const N: usize> Words<N> {
    pub(crate) fn new(what: &str) -> crate::Result<Self> {
        Ok(Words {
            seg: Arc::new(Segment::anonymous(what, N * 4)?),
        })
    }

    /// Word `i` (`i < N`).
    pub(crate) fn at(&self, i: usize) -> &AtomicU32 {
        assert!(i < N);
        // In bounds and aligned: the segment holds at least N words (checked when made
        // or received) and is page-aligned.
        self.seg
            .map()
            .atomic_u32(i * 4)
            .expect("a Words segment holds N aligned words")
    }
}

impl<const N: usize> Serialize for Words<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.seg.serialize(s)
    }
}

impl<'de, const N: usize> Deserialize<'de> for Words<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let seg = Segment::deserialize(d)?;
        if seg.len() < N * 4 {
            return Err(serde::de::Error::custom(
                "a received synchronization handle's segment is too small",
            ));
        }
        Ok(Words { seg: Arc::new(seg) })
    }
}
