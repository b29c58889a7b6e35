//! `Value<T>`: one plain-data value in shared memory, with its lock.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use bytemuck::Pod;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::data_offset;
use crate::error::{Error, Result};
use crate::sync::{LockGuard, RawLock};

const WHAT: &str = "Value's lock";

/// One value of plain data (`T: bytemuck::Pod`: integers, floats, arrays and
/// `#[repr(C)]` structs of them) in shared memory, with a process-shared lock
/// (Python's `multiprocessing.Value`).
///
/// - [`lock`](Self::lock) gives a guard that dereferences to `T`; a guard whose
///   previous holder died says so ([`ValueGuard::owner_died`]).
/// - For integer `T`, the one-step operations ([`fetch_add`](Value::<u64>::fetch_add),
///   [`load`](Value::<u64>::load), [`store`](Value::<u64>::store),
///   [`compare_exchange`](Value::<u64>::compare_exchange), ...) are shorthands that
///   take the lock for that one step, as Python's `v.value` does. They cannot be
///   lock-free: a guard hands out `&T`/`&mut T`, and a lock-free write racing one
///   would be undefined behaviour. For lock-free atomics use
///   [`RawValue`](crate::RawValue), which has no lock and no guard to race with.
///   They panic if this thread already holds the lock (use the guard instead), or if
///   the lock itself is broken (its bytes overwritten).
///
/// Clones, and copies passed to children, all name the same memory.
///
/// ```
/// use multiproc::{Process, Value};
///
/// fn add(v: Value<u64>) {
///     for _ in 0..1000 {
///         *v.lock().unwrap() += 1;
///     }
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let v = Value::new(0u64)?;
/// let ps = (0..2).map(|_| Process::start(add, v.clone())).collect::<Result<Vec<_>, _>>()?;
/// for p in ps { p.join()?; }
/// assert_eq!(v.get()?, 2000);
/// assert_eq!(v.fetch_add(5), 2000);
/// assert_eq!(v.load(), 2005);
/// # Ok(()) }
/// ```
pub struct Value<T> {
    raw: RawLock,
    _t: PhantomData<T>,
}

impl<T> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value {
            raw: self.raw.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Value")
            .field("type", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

impl<T: Pod> Value<T> {
    /// A new value in a new shared segment.
    pub fn new(value: T) -> Result<Self> {
        let raw = RawLock::new(
            "multiproc-value",
            data_offset::<T>() - crate::sync::MUTEX_SIZE + size_of::<T>(),
            false,
        )?;
        let v = Value {
            raw,
            _t: PhantomData,
        };
        *v.lock()? = value;
        Ok(v)
    }

    /// Creates a new value in the named segment `/dev/shm/<name>`, for processes that
    /// did not start each other: another attaches with [`open_named`](Self::open_named)
    /// (what Python's `ShareableList` and named `SharedMemory` are used for). This
    /// handle owns the name as [`SharedMemory::create_named`](crate::SharedMemory::create_named)
    /// does: dropping it (and its clones) removes the name, and the tracker removes it
    /// if this process dies first.
    ///
    /// ```
    /// # fn main() -> multiproc::Result<()> {
    /// let name = format!("doc-value-{}", std::process::id());
    /// let v = multiproc::Value::create_named(&name, 41u64)?;
    /// let other = multiproc::Value::<u64>::open_named(&name)?; // any process, by name
    /// other.fetch_add(1);
    /// assert_eq!(v.get()?, 42);
    /// # Ok(()) }
    /// ```
    pub fn create_named(name: &str, value: T) -> Result<Self> {
        Ok(Self::named(name, value, true)?.0)
    }

    /// [`create_named`](Self::create_named), returning the claim on the name apart.
    pub(crate) fn named(
        name: &str,
        value: T,
        keep_owner: bool,
    ) -> Result<(Self, Option<super::segment::NamedOwner>)> {
        let extra = data_offset::<T>() - crate::sync::MUTEX_SIZE + size_of::<T>();
        let (raw, owner) = RawLock::named(name, extra, true, keep_owner, |map| {
            super::write_header(map, super::VALUE_MAGIC, size_of::<T>(), 1);
            // Nobody else maps the segment yet; any width would do.
            map.store_relaxed(
                data_offset::<T>(),
                bytemuck::bytes_of(&value),
                super::piece_width::<T>(),
            );
            Ok(())
        })?;
        Ok((
            Value {
                raw,
                _t: PhantomData,
            },
            owner,
        ))
    }

    /// Attaches to a value made by [`create_named`](Self::create_named) (in any
    /// process). The segment says it holds one value of `size_of::<T>()` bytes; a
    /// different type of the same size cannot be told apart, as in Python.
    pub fn open_named(name: &str) -> Result<Self> {
        let raw = RawLock::open_named(name)?;
        let len = super::check_header(
            raw.segment().map(),
            super::VALUE_MAGIC,
            size_of::<T>(),
            name,
        )?;
        if len != 1 || raw.segment().len() < data_offset::<T>() + size_of::<T>() {
            return Err(too_small::<T>());
        }
        Ok(Value {
            raw,
            _t: PhantomData,
        })
    }

    /// The name of a value made by [`create_named`](Self::create_named) or opened by
    /// name (kept by copies passed to other processes).
    pub fn name(&self) -> Option<&str> {
        self.raw.segment().name()
    }

    /// Takes the lock; the guard dereferences to the value. This is Python's
    /// `with v.get_lock(): v.value += 1`, in one step: `*v.lock()? += 1`.
    pub fn lock(&self) -> Result<ValueGuard<'_, T>> {
        self.guard(self.raw.lock(WHAT, None)?)
    }

    /// Takes the lock, waiting at most `timeout`.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<ValueGuard<'_, T>> {
        self.guard(self.raw.lock(WHAT, Some(timeout))?)
    }

    fn guard<'a>(&'a self, guard: LockGuard<'a>) -> Result<ValueGuard<'a, T>> {
        // Checked once here, so deref cannot fail later.
        if guard.held().data::<T>(data_offset::<T>(), 1).is_none() {
            return Err(too_small::<T>());
        }
        Ok(ValueGuard {
            guard,
            _t: PhantomData,
        })
    }

    /// A copy of the value, read under the lock.
    pub fn get(&self) -> Result<T> {
        Ok(*self.lock()?)
    }

    /// Replaces the value, under the lock.
    pub fn set(&self, value: T) -> Result<()> {
        *self.lock()? = value;
        Ok(())
    }

    /// Runs `f` on the value under the lock (the one-step operations). Panics where
    /// they document it.
    fn locked<R>(&self, op: &str, f: impl FnOnce(&mut T) -> R) -> R {
        match self.lock() {
            Ok(mut g) => f(&mut g),
            Err(e @ Error::Deadlock { .. }) => {
                panic!("Value::{op}: {e}; while a thread holds a ValueGuard, use the guard")
            }
            Err(e) => panic!("Value::{op}: cannot take the value's lock: {e}"),
        }
    }
}

fn too_small<T>() -> Error {
    Error::SharedMemory {
        detail: format!(
            "a received Value<{}>'s segment is too small for it",
            std::any::type_name::<T>()
        ),
    }
}

impl<T: Pod> Serialize for Value<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.raw.serialize(s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Value<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let raw = RawLock::deserialize(d)?;
        if raw.segment().len() < data_offset::<T>() + size_of::<T>() {
            return Err(serde::de::Error::custom(too_small::<T>()));
        }
        Ok(Value {
            raw,
            _t: PhantomData,
        })
    }
}

/// The locked value of a [`Value`]; dereferences to `T`. Dropping it unlocks.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ValueGuard<'a, T> {
    guard: LockGuard<'a>,
    _t: PhantomData<&'a mut T>,
}

impl<T> ValueGuard<'_, T> {
    /// `true` if the previous holder of the lock died holding it: the value may be
    /// half-updated.
    pub fn owner_died(&self) -> bool {
        self.guard.owner_died()
    }
}

impl<T: Pod> Deref for ValueGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // The bounds were checked when the guard was made.
        &self
            .guard
            .held()
            .data::<T>(data_offset::<T>(), 1)
            .expect("checked when the guard was made")[0]
    }
}

impl<T: Pod> DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self
            .guard
            .held_mut()
            .data_mut::<T>(data_offset::<T>(), 1)
            .expect("checked when the guard was made")[0]
    }
}

impl<T: Pod + std::fmt::Debug> std::fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

macro_rules! atomic_value {
    ($($t:ty),*) => {$(
        impl Value<$t> {
            /// Adds `v` (wrapping) under the lock; returns the previous value.
            ///
            /// # Panics
            ///
            /// If this thread holds the lock already, or the lock is broken.
            pub fn fetch_add(&self, v: $t) -> $t {
                self.locked("fetch_add", |x| std::mem::replace(x, x.wrapping_add(v)))
            }
            /// Subtracts `v` (wrapping) under the lock; returns the previous value.
            ///
            /// # Panics
            ///
            /// If this thread holds the lock already, or the lock is broken.
            pub fn fetch_sub(&self, v: $t) -> $t {
                self.locked("fetch_sub", |x| std::mem::replace(x, x.wrapping_sub(v)))
            }
            /// Reads the value under the lock.
            ///
            /// # Panics
            ///
            /// If this thread holds the lock already, or the lock is broken.
            pub fn load(&self) -> $t {
                self.locked("load", |x| *x)
            }
            /// Writes the value under the lock.
            ///
            /// # Panics
            ///
            /// If this thread holds the lock already, or the lock is broken.
            pub fn store(&self, v: $t) {
                self.locked("store", |x| *x = v)
            }
            /// Replaces the value under the lock; returns the previous one.
            ///
            /// # Panics
            ///
            /// If this thread holds the lock already, or the lock is broken.
            pub fn swap(&self, v: $t) -> $t {
                self.locked("swap", |x| std::mem::replace(x, v))
            }
            /// Replaces `current` with `new` under the lock: `Ok(previous)` if it held
            /// `current`, `Err(actual)` otherwise.
            ///
            /// # Panics
            ///
            /// If this thread holds the lock already, or the lock is broken.
            pub fn compare_exchange(&self, current: $t, new: $t) -> std::result::Result<$t, $t> {
                self.locked("compare_exchange", |x| {
                    if *x == current {
                        *x = new;
                        Ok(current)
                    } else {
                        Err(*x)
                    }
                })
            }
        }
    )*};
}

atomic_value!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);
