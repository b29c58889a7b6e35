//! `RawValue<T>` and `RawArray<T>`: plain data in shared memory without a lock
//! (Python's `RawValue`/`RawArray`, and `Value(..., lock=False)`).

use std::marker::PhantomData;
use std::sync::Arc;

use bytemuck::Pod;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::piece_width;
use super::segment::Segment;
use crate::error::{Error, Result};

/// Reads `dst.len()` bytes at `offset` in pieces of `T`'s width (see
/// [`piece_width`]).
fn load<T>(seg: &Segment, offset: usize, dst: &mut [u8]) {
    let done = seg.map().load_relaxed(offset, dst, piece_width::<T>());
    assert!(done, "in bounds and aligned: checked when made or received");
}

/// Writes `src` at `offset` in pieces of `T`'s width.
fn store<T>(seg: &Segment, offset: usize, src: &[u8]) {
    let done = seg.map().store_relaxed(offset, src, piece_width::<T>());
    assert!(done, "in bounds and aligned: checked when made or received");
}

fn too_small<T>(what: &str) -> Error {
    Error::SharedMemory {
        detail: format!(
            "a received {what}<{}>'s segment is too small for it",
            std::any::type_name::<T>()
        ),
    }
}

/// One value of plain data in shared memory, **without** a lock (Python's
/// `RawValue`, or `Value(..., lock=False)`).
///
/// [`get`](Self::get) and [`set`](Self::set) copy the value with no lock, in relaxed
/// atomic pieces: for a `T` of 1, 2, 4 or 8 bytes one piece, so a read racing a write
/// (in another process or another thread) sees the old or the new value whole; a
/// larger `T` is copied in pieces of up to 8 bytes, and a racing read may see some
/// pieces old and some new (torn), never anything worse. For integer `T` the atomic
/// operations ([`load`](RawValue::<u64>::load),
/// [`fetch_add`](RawValue::<u64>::fetch_add), ...) are exact. Use it where one writer
/// owns the value at a time, or where atomics suffice; otherwise use [`Value`](crate::Value),
/// whose lock makes a read-modify-write whole.
///
/// ```
/// use multiproc::{Process, RawValue};
///
/// fn count(v: RawValue<u64>) {
///     for _ in 0..1000 {
///         v.fetch_add(1);
///     }
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let v = RawValue::new(0u64)?;
/// let ps = (0..2).map(|_| Process::start(count, v.clone())).collect::<Result<Vec<_>, _>>()?;
/// for p in ps { p.join()?; }
/// assert_eq!(v.get(), 2000);
/// # Ok(()) }
/// ```
pub struct RawValue<T> {
    seg: Arc<Segment>,
    _t: PhantomData<T>,
}

impl<T> Clone for RawValue<T> {
    fn clone(&self) -> Self {
        RawValue {
            seg: self.seg.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for RawValue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawValue")
            .field("type", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

impl<T: Pod> RawValue<T> {
    /// A new value in a new shared segment.
    pub fn new(value: T) -> Result<Self> {
        let seg = Segment::anonymous("multiproc-rawvalue", size_of::<T>())?;
        store::<T>(&seg, 0, bytemuck::bytes_of(&value));
        Ok(RawValue {
            seg: Arc::new(seg),
            _t: PhantomData,
        })
    }

    /// A copy of the value (no lock: a `T` of more than 8 bytes may be torn by a racing
    /// `set`).
    pub fn get(&self) -> T {
        let mut v = T::zeroed();
        load::<T>(&self.seg, 0, bytemuck::bytes_of_mut(&mut v));
        v
    }

    /// Replaces the value (unsynchronized).
    pub fn set(&self, value: T) {
        store::<T>(&self.seg, 0, bytemuck::bytes_of(&value));
    }

    fn atomic<A: crate::sys::shm::AtomicCell>(&self) -> &A {
        // T has A's size; the segment is page-aligned and holds it (checked).
        self.seg
            .map()
            .atomic_at::<A>(0)
            .expect("a RawValue's segment holds its value")
    }
}

impl<T: Pod> Serialize for RawValue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.seg.serialize(s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for RawValue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let seg = Segment::deserialize(d)?;
        if seg.len() < size_of::<T>() {
            return Err(serde::de::Error::custom(too_small::<T>("RawValue")));
        }
        Ok(RawValue {
            seg: Arc::new(seg),
            _t: PhantomData,
        })
    }
}

/// A fixed-length array of plain data in shared memory, **without** a lock (Python's
/// `RawArray`, or `Array(..., lock=False)`).
///
/// Element and whole-array copies take no lock, as for [`RawValue`]: each element of
/// 1, 2, 4 or 8 bytes is read or written whole (a larger one may be torn by a racing
/// write), but a copy of several elements may mix old and new ones. Integer elements
/// also have exact atomic operations. Index out of bounds panics, as for a
/// slice.
///
/// ```
/// use multiproc::{Process, RawArray};
///
/// fn fill(a: RawArray<f64>) {
///     for i in 0..a.len() {
///         a.set(i, i as f64 / 2.0);
///     }
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let a = RawArray::<f64>::new(4)?;
/// Process::start(fill, a.clone())?.join()?;
/// assert_eq!(a.to_vec(), [0.0, 0.5, 1.0, 1.5]);
/// # Ok(()) }
/// ```
pub struct RawArray<T> {
    seg: Arc<Segment>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T> Clone for RawArray<T> {
    fn clone(&self) -> Self {
        RawArray {
            seg: self.seg.clone(),
            len: self.len,
            _t: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for RawArray<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawArray")
            .field("type", &std::any::type_name::<T>())
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

fn bytes_for<T>(len: usize) -> Result<usize> {
    len.checked_mul(size_of::<T>())
        .ok_or_else(|| Error::SharedMemory {
            detail: format!(
                "a RawArray of {len} x {} does not fit in memory",
                std::any::type_name::<T>()
            ),
        })
}

impl<T: Pod> RawArray<T> {
    /// A new array of `len` zeroed elements.
    pub fn new(len: usize) -> Result<Self> {
        let seg = Segment::anonymous("multiproc-rawarray", bytes_for::<T>(len)?)?;
        Ok(RawArray {
            seg: Arc::new(seg),
            len,
            _t: PhantomData,
        })
    }

    /// A new array holding a copy of `items`.
    pub fn from_slice(items: &[T]) -> Result<Self> {
        let a = Self::new(items.len())?;
        a.copy_from_slice(items);
        Ok(a)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// `true` for an empty array.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, i: usize) {
        assert!(
            i < self.len,
            "index {i} out of bounds for a RawArray of length {}",
            self.len
        );
    }

    /// A copy of element `i` (unsynchronized). Panics if `i >= len`.
    pub fn get(&self, i: usize) -> T {
        self.check(i);
        let mut v = T::zeroed();
        load::<T>(&self.seg, i * size_of::<T>(), bytemuck::bytes_of_mut(&mut v));
        v
    }

    /// Writes element `i` (unsynchronized). Panics if `i >= len`.
    pub fn set(&self, i: usize, value: T) {
        self.check(i);
        store::<T>(&self.seg, i * size_of::<T>(), bytemuck::bytes_of(&value));
    }

    /// A copy of the contents (unsynchronized).
    pub fn to_vec(&self) -> Vec<T> {
        let mut v = vec![T::zeroed(); self.len];
        load::<T>(&self.seg, 0, bytemuck::cast_slice_mut(&mut v));
        v
    }

    /// Overwrites the contents with `items` (unsynchronized). Panics if the lengths
    /// differ, as `slice::copy_from_slice` does.
    pub fn copy_from_slice(&self, items: &[T]) {
        assert_eq!(
            items.len(),
            self.len,
            "copy_from_slice: {} items into a RawArray of length {}",
            items.len(),
            self.len
        );
        store::<T>(&self.seg, 0, bytemuck::cast_slice(items));
    }

    fn atomic<A: crate::sys::shm::AtomicCell>(&self, i: usize) -> &A {
        self.check(i);
        self.seg
            .map()
            .atomic_at::<A>(i * size_of::<T>())
            .expect("a RawArray's segment holds its elements")
    }
}

impl<T: Pod> Serialize for RawArray<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        (&*self.seg, self.len as u64).serialize(s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for RawArray<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (seg, len) = <(Segment, u64)>::deserialize(d)?;
        let len = usize::try_from(len).map_err(serde::de::Error::custom)?;
        if !bytes_for::<T>(len).is_ok_and(|b| b <= seg.len()) {
            return Err(serde::de::Error::custom(too_small::<T>("RawArray")));
        }
        Ok(RawArray {
            seg: Arc::new(seg),
            len,
            _t: PhantomData,
        })
    }
}

macro_rules! atomic_raw {
    ($($t:ty => $a:ty),*) => {$(
        impl RawValue<$t> {
            /// Atomically adds `v` (wrapping); returns the previous value.
            pub fn fetch_add(&self, v: $t) -> $t {
                self.atomic::<$a>().fetch_add(v, std::sync::atomic::Ordering::SeqCst)
            }
            /// Atomically reads the value.
            pub fn load(&self) -> $t {
                self.atomic::<$a>().load(std::sync::atomic::Ordering::SeqCst)
            }
            /// Atomically writes the value.
            pub fn store(&self, v: $t) {
                self.atomic::<$a>().store(v, std::sync::atomic::Ordering::SeqCst)
            }
        }
        impl RawArray<$t> {
            /// Atomically adds `v` to element `i` (wrapping); returns the previous value.
            /// Panics if `i >= len`.
            pub fn fetch_add(&self, i: usize, v: $t) -> $t {
                self.atomic::<$a>(i).fetch_add(v, std::sync::atomic::Ordering::SeqCst)
            }
            /// Atomically reads element `i`. Panics if `i >= len`.
            pub fn load(&self, i: usize) -> $t {
                self.atomic::<$a>(i).load(std::sync::atomic::Ordering::SeqCst)
            }
            /// Atomically writes element `i`. Panics if `i >= len`.
            pub fn store(&self, i: usize, v: $t) {
                self.atomic::<$a>(i).store(v, std::sync::atomic::Ordering::SeqCst)
            }
        }
    )*};
}

atomic_raw!(
    u8 => std::sync::atomic::AtomicU8,
    u16 => std::sync::atomic::AtomicU16,
    u32 => std::sync::atomic::AtomicU32,
    u64 => std::sync::atomic::AtomicU64,
    usize => std::sync::atomic::AtomicUsize,
    i8 => std::sync::atomic::AtomicI8,
    i16 => std::sync::atomic::AtomicI16,
    i32 => std::sync::atomic::AtomicI32,
    i64 => std::sync::atomic::AtomicI64,
    isize => std::sync::atomic::AtomicIsize
);
