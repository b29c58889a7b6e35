//! `Array<T>`: a fixed-length array of plain data in shared memory, with its lock.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use bytemuck::Pod;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::data_offset;
use crate::error::{Error, Result};
use crate::sync::{LockGuard, MUTEX_SIZE, RawLock};

const WHAT: &str = "Array's lock";

/// A fixed-length array of plain data (`T: bytemuck::Pod`) in shared memory, with a
/// process-shared lock (Python's `multiprocessing.Array`).
///
/// Passing an `Array` to a child passes a descriptor: the child maps the same pages,
/// so a 256 MiB array costs the same to hand over as a 4 KiB one. Read and write it
/// through [`lock`](Self::lock) (a guard that dereferences to `[T]`), or, for integer
/// `T`, element-wise one-step operations ([`fetch_add`](Array::<u64>::fetch_add),
/// [`load`](Array::<u64>::load), [`store`](Array::<u64>::store)) that take the lock
/// for that step. They cannot be lock-free: a guard hands out `&mut [T]`, and a
/// lock-free write racing it would be undefined behaviour. For lock-free element
/// atomics use [`RawArray`](crate::RawArray). They panic if this thread already holds
/// the lock (use the guard instead) or the lock is broken, and on an index out of
/// bounds.
///
/// ```
/// use multiproc::{Array, Process};
///
/// fn squares(a: Array<u32>) {
///     let mut g = a.lock().unwrap();
///     for (i, x) in g.iter_mut().enumerate() {
///         *x = (i * i) as u32;
///     }
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let a = Array::<u32>::new(5)?;
/// Process::start(squares, a.clone())?.join()?;
/// assert_eq!(a.to_vec()?, [0, 1, 4, 9, 16]);
/// # Ok(()) }
/// ```
pub struct Array<T> {
    raw: RawLock,
    len: usize,
    _t: PhantomData<T>,
}

impl<T> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array {
            raw: self.raw.clone(),
            len: self.len,
            _t: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Array")
            .field("type", &std::any::type_name::<T>())
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

fn bytes_for<T>(len: usize) -> Result<usize> {
    len.checked_mul(size_of::<T>())
        .and_then(|b| b.checked_add(data_offset::<T>()))
        .ok_or_else(|| Error::SharedMemory {
            detail: format!(
                "an Array of {len} x {} does not fit in memory",
                std::any::type_name::<T>()
            ),
        })
}

impl<T: Pod> Array<T> {
    /// A new array of `len` zeroed elements.
    pub fn new(len: usize) -> Result<Self> {
        let bytes = bytes_for::<T>(len)?;
        Ok(Array {
            raw: RawLock::new("multiproc-array", bytes - MUTEX_SIZE, false)?,
            len,
            _t: PhantomData,
        })
    }

    /// A new array holding a copy of `items`.
    pub fn from_slice(items: &[T]) -> Result<Self> {
        let a = Self::new(items.len())?;
        a.lock()?.copy_from_slice(items);
        Ok(a)
    }

    /// Creates a new array holding a copy of `items` in the named segment
    /// `/dev/shm/<name>`, for processes that did not start each other: another attaches
    /// with [`open_named`](Self::open_named) (what Python's `ShareableList` is used
    /// for). This handle owns the name as
    /// [`SharedMemory::create_named`](crate::SharedMemory::create_named) does: dropping
    /// it (and its clones) removes the name, and the tracker removes it if this process
    /// dies first.
    ///
    /// ```
    /// # fn main() -> multiproc::Result<()> {
    /// let name = format!("doc-array-{}", std::process::id());
    /// let a = multiproc::Array::create_named(&name, &[1u32, 2, 3])?;
    /// let other = multiproc::Array::<u32>::open_named(&name)?; // any process, by name
    /// other.lock()?[0] = 10;
    /// assert_eq!(a.to_vec()?, [10, 2, 3]);
    /// # Ok(()) }
    /// ```
    pub fn create_named(name: &str, items: &[T]) -> Result<Self> {
        Ok(Self::named(name, items, true)?.0)
    }

    /// [`create_named`](Self::create_named), returning the claim on the name apart.
    pub(crate) fn named(
        name: &str,
        items: &[T],
        keep_owner: bool,
    ) -> Result<(Self, Option<super::segment::NamedOwner>)> {
        let len = items.len();
        let bytes = bytes_for::<T>(len)?;
        let (raw, owner) = RawLock::named(name, bytes - MUTEX_SIZE, true, keep_owner, |map| {
            super::write_header(map, super::ARRAY_MAGIC, size_of::<T>(), len);
            // Nobody else maps the segment yet; any width would do.
            map.store_relaxed(
                data_offset::<T>(),
                bytemuck::cast_slice(items),
                super::piece_width::<T>(),
            );
            Ok(())
        })?;
        Ok((
            Array {
                raw,
                len,
                _t: PhantomData,
            },
            owner,
        ))
    }

    /// Attaches to an array made by [`create_named`](Self::create_named) (in any
    /// process), of the length it was made with. The segment says its elements are
    /// `size_of::<T>()` bytes; a different type of the same size cannot be told apart,
    /// as in Python.
    pub fn open_named(name: &str) -> Result<Self> {
        let raw = RawLock::open_named(name)?;
        let len = super::check_header(
            raw.segment().map(),
            super::ARRAY_MAGIC,
            size_of::<T>(),
            name,
        )?;
        if !bytes_for::<T>(len).is_ok_and(|b| b <= raw.segment().len()) {
            return Err(too_small::<T>());
        }
        Ok(Array {
            raw,
            len,
            _t: PhantomData,
        })
    }

    /// The name of an array made by [`create_named`](Self::create_named) or opened by
    /// name (kept by copies passed to other processes).
    pub fn name(&self) -> Option<&str> {
        self.raw.segment().name()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// `true` for an empty array.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes the lock; the guard dereferences to `[T]`. This is Python's
    /// `with a.get_lock(): ...`: the guard is both the lock held and the contents.
    pub fn lock(&self) -> Result<ArrayGuard<'_, T>> {
        self.guard(self.raw.lock(WHAT, None)?)
    }

    /// Takes the lock, waiting at most `timeout`.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<ArrayGuard<'_, T>> {
        self.guard(self.raw.lock(WHAT, Some(timeout))?)
    }

    fn guard<'a>(&'a self, guard: LockGuard<'a>) -> Result<ArrayGuard<'a, T>> {
        if guard
            .held()
            .data::<T>(data_offset::<T>(), self.len)
            .is_none()
        {
            return Err(too_small::<T>());
        }
        Ok(ArrayGuard {
            guard,
            len: self.len,
            _t: PhantomData,
        })
    }

    /// A copy of the contents, read under the lock.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        Ok(self.lock()?.to_vec())
    }

    /// Runs `f` on element `i` under the lock (the one-step operations). Panics where
    /// they document it.
    fn locked<R>(&self, op: &str, i: usize, f: impl FnOnce(&mut T) -> R) -> R {
        assert!(
            i < self.len,
            "index {i} out of bounds for an Array of length {}",
            self.len
        );
        match self.lock() {
            Ok(mut g) => f(&mut g[i]),
            Err(e @ Error::Deadlock { .. }) => {
                panic!("Array::{op}: {e}; while a thread holds an ArrayGuard, use the guard")
            }
            Err(e) => panic!("Array::{op}: cannot take the array's lock: {e}"),
        }
    }
}

fn too_small<T>() -> Error {
    Error::SharedMemory {
        detail: format!(
            "a received Array<{}>'s segment is too small for its length",
            std::any::type_name::<T>()
        ),
    }
}

impl<T: Pod> Serialize for Array<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        (&self.raw, self.len as u64).serialize(s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Array<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (raw, len) = <(RawLock, u64)>::deserialize(d)?;
        let len = usize::try_from(len).map_err(serde::de::Error::custom)?;
        let fits = bytes_for::<T>(len).is_ok_and(|b| b <= raw.segment().len());
        if !fits {
            return Err(serde::de::Error::custom(too_small::<T>()));
        }
        Ok(Array {
            raw,
            len,
            _t: PhantomData,
        })
    }
}

/// The locked contents of an [`Array`]; dereferences to `[T]`. Dropping it unlocks.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ArrayGuard<'a, T> {
    guard: LockGuard<'a>,
    len: usize,
    _t: PhantomData<&'a mut [T]>,
}

impl<T> ArrayGuard<'_, T> {
    /// `true` if the previous holder of the lock died holding it: the contents may be
    /// half-updated.
    pub fn owner_died(&self) -> bool {
        self.guard.owner_died()
    }
}

impl<T: Pod> Deref for ArrayGuard<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.guard
            .held()
            .data::<T>(data_offset::<T>(), self.len)
            .expect("checked when the guard was made")
    }
}

impl<T: Pod> DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let len = self.len;
        self.guard
            .held_mut()
            .data_mut::<T>(data_offset::<T>(), len)
            .expect("checked when the guard was made")
    }
}

macro_rules! atomic_array {
    ($($t:ty),*) => {$(
        impl Array<$t> {
            /// Adds `v` to element `i` (wrapping) under the lock; returns the previous
            /// value.
            ///
            /// # Panics
            ///
            /// If `i >= len`, this thread holds the lock already, or the lock is broken.
            pub fn fetch_add(&self, i: usize, v: $t) -> $t {
                self.locked("fetch_add", i, |x| std::mem::replace(x, x.wrapping_add(v)))
            }
            /// Reads element `i` under the lock.
            ///
            /// # Panics
            ///
            /// If `i >= len`, this thread holds the lock already, or the lock is broken.
            pub fn load(&self, i: usize) -> $t {
                self.locked("load", i, |x| *x)
            }
            /// Writes element `i` under the lock.
            ///
            /// # Panics
            ///
            /// If `i >= len`, this thread holds the lock already, or the lock is broken.
            pub fn store(&self, i: usize, v: $t) {
                self.locked("store", i, |x| *x = v)
            }
        }
    )*};
}

atomic_array!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);
