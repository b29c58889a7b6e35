//! Shared memory: [`SharedMemory`] (raw bytes), [`Value`] and [`Array`] (typed plain
//! data with a lock), all zero-copy between processes.
//!
//! A handle passed to a child (as a task argument or result, or through a channel)
//! carries a descriptor, never the contents: the child maps the same pages. Handing a
//! 256 MiB [`Array`] to a worker costs a descriptor and an `mmap`, well under a
//! millisecond.

mod array;
pub(crate) mod segment;
pub(crate) mod tracker;
mod value;

pub use array::{Array, ArrayGuard};
pub use segment::{SharedMemory, SharedMemoryBuilder};
pub use value::{Value, ValueGuard};

use crate::sync::MUTEX_SIZE;

/// Where the data of a `Value<T>`/`Array<T>` starts: after the lock, aligned for `T`.
pub(crate) const fn data_offset<T>() -> usize {
    MUTEX_SIZE.next_multiple_of(align_of::<T>())
}
