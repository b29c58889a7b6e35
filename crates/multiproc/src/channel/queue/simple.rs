//! [`SimpleQueue`]: the simplest queue.

use std::os::fd::{AsFd, BorrowedFd};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::Queue;
use crate::error::Result;

/// The simplest queue (Python's `SimpleQueue`): `put`, `get`, `is_empty`, `close`. The
/// same machinery as [`Queue`], without timeouts.
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// let q = multiproc::SimpleQueue::new()?;
/// q.put(&"x".to_string())?;
/// assert_eq!(q.get()?, "x");
/// assert!(q.is_empty());
/// # Ok(()) }
/// ```
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct SimpleQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for SimpleQueue<T> {
    fn clone(&self) -> Self {
        SimpleQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T> std::fmt::Debug for SimpleQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimpleQueue")
            .field("type", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

impl<T: Serialize + DeserializeOwned> SimpleQueue<T> {
    /// A new, empty queue.
    pub fn new() -> Result<Self> {
        Ok(SimpleQueue {
            queue: Queue::new()?,
        })
    }

    /// Puts `item`, waiting while the queue is full.
    pub fn put(&self, item: &T) -> Result<()> {
        self.queue.put(item)
    }

    /// Takes the next item, waiting as long as it takes.
    pub fn get(&self) -> Result<T> {
        self.queue.get()
    }

    /// Whether the queue looks empty now; see [`Queue::is_empty`].
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The number of items put and not yet taken; see [`Queue::qsize`].
    pub fn qsize(&self) -> usize {
        self.queue.qsize()
    }

    /// See [`Queue::close`].
    pub fn close(&self) {
        self.queue.close()
    }
}

/// The wait set of the underlying [`Queue`]; see its `AsFd`.
impl<T> AsFd for SimpleQueue<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.queue.as_fd()
    }
}
