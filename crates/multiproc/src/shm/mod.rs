//! Shared memory: [`SharedMemory`] (raw bytes), [`Value`] and [`Array`] (typed plain
//! data with a lock), [`RawValue`] and [`RawArray`] (without one), all zero-copy between
//! processes; named segments for unrelated processes, a [`SharedMemoryManager`], and
//! the tracker that removes the names a dead owner left.
//!
//! A handle passed to a child (as a task argument or result, or through a channel)
//! carries a descriptor, never the contents: the child maps the same pages. Handing a
//! 256 MiB [`Array`] to a worker costs a descriptor and an `mmap`, well under a
//! millisecond.

mod array;
mod manager;
mod name;
mod raw;
pub(crate) mod segment;
pub(crate) mod tracker;
mod value;

pub use array::{Array, ArrayGuard};
pub use manager::SharedMemoryManager;
pub use raw::{RawArray, RawValue};
pub use segment::{SharedMemory, SharedMemoryBuilder};
pub use value::{Value, ValueGuard};

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::sync::MUTEX_SIZE;
use crate::sys::shm::Mapping;

/// Where the data of a `Value<T>`/`Array<T>` starts: after the lock, aligned for `T`.
pub(crate) const fn data_offset<T>() -> usize {
    MUTEX_SIZE.next_multiple_of(align_of::<T>())
}

/// The width of the relaxed atomic pieces in which a `T` is copied to or from shared
/// memory without a lock: its size where that is 1, 2, 4 or 8 (the width its atomic
/// methods use, so that no two racing accesses differ in size), else the largest of
/// those that divides its size. Elements sit at multiples of their size from a
/// page-aligned start, so every piece is aligned.
pub(crate) const fn piece_width<T>() -> usize {
    let size = size_of::<T>();
    if size % 8 == 0 {
        8
    } else if size % 4 == 0 {
        4
    } else if size % 2 == 0 {
        2
    } else {
        1
    }
}

/// Where a named `Value`/`Array` describes itself: in the lock's cache line, after the
/// mutex. An unrelated process that attaches by name checks it.
const HEADER: usize = 48;
const _: () = assert!(size_of::<libc::pthread_mutex_t>() <= HEADER && HEADER + 16 <= MUTEX_SIZE);
pub(crate) const VALUE_MAGIC: u32 = u32::from_le_bytes(*b"MPV1");
pub(crate) const ARRAY_MAGIC: u32 = u32::from_le_bytes(*b"MPA1");

/// Writes a named segment's self-description (before the segment gets its name).
pub(crate) fn write_header(map: &Mapping, magic: u32, elem: usize, len: usize) {
    let word = |at| map.atomic_at::<AtomicU32>(at);
    if let (Some(m), Some(e), Some(l)) = (
        word(HEADER),
        word(HEADER + 4),
        map.atomic_at::<AtomicU64>(HEADER + 8),
    ) {
        e.store(elem as u32, Ordering::Relaxed);
        l.store(len as u64, Ordering::Relaxed);
        m.store(magic, Ordering::Release);
    }
}

/// Checks the self-description of a named segment made by `Value`/`Array`
/// (`magic`), holding elements of `elem` bytes; returns its element count.
pub(crate) fn check_header(map: &Mapping, magic: u32, elem: usize, name: &str) -> Result<usize> {
    let what = if magic == VALUE_MAGIC { "Value" } else { "Array" };
    let bad = |why: String| Error::SharedMemory {
        detail: format!("segment {name:?} is not a named {what} of this type: {why}"),
    };
    let word = |at| map.atomic_at::<AtomicU32>(at);
    let (Some(m), Some(e), Some(l)) = (
        word(HEADER),
        word(HEADER + 4),
        map.atomic_at::<AtomicU64>(HEADER + 8),
    ) else {
        return Err(bad("it is too small".into()));
    };
    if m.load(Ordering::Acquire) != magic {
        return Err(bad(format!("it was not made by {what}::create_named")));
    }
    let size = e.load(Ordering::Relaxed) as usize;
    if size != elem {
        return Err(bad(format!(
            "its elements are {size} bytes, this type's are {elem}"
        )));
    }
    let len = usize::try_from(l.load(Ordering::Relaxed)).map_err(|_| bad("length overflows".into()))?;
    Ok(len)
}

/// A fresh name for a manager's segment: this process, a counter, and some
/// randomness against a leftover of an earlier process with the same pid.
pub(crate) fn fresh_name() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "multiproc-{}-{}-{nanos:08x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
