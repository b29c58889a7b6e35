//! A vector of plain values (`sys::plain`) held as the bytes they are, lent run by run
//! without a copy, and able to take a job's results in place.
//!
//! A job's plain arguments travel to workers straight from their vector: each chunk is
//! a [`Lend`] of a run of its bytes, held by the message that carries it and by the
//! pool's core, which keeps a chunk's arguments until it is answered (to run its calls
//! again should the worker die).
//!
//! A `map` from a plain type to a plain type of the same size and alignment (`u64 ->
//! u64`, `f64 -> f64`, `[f32; 4] -> [f32; 4]`) needs no memory of its own for its
//! result: each call's result is written over that call's argument once nothing borrows
//! the argument any more, and the vector becomes the result (as the standard library's
//! in-place `collect` reuses a vector). On a program's first `map` that spares a fresh
//! buffer the size of the result, whose every page faults, and it halves the memory of
//! a big one.
//!
//! Soundness does not rest on the pool's protocol: with results in place every read goes
//! through a `Lend` (registered before it reads) or holds the lock, and a write, under
//! the lock, is refused over any byte a `Lend` holds ([`Put::Lent`]: the caller keeps that run
//! aside and puts it again later). The vector is given away as the result only when
//! every call has a checked value and nothing is lent; after that nothing reads it.

use std::collections::BTreeMap;
use std::mem::{align_of, size_of};
use std::ops::{Deref, Range};
use std::sync::{Arc, Mutex, MutexGuard};

use super::plain::{check_run, is_plain};

/// A vector of plain values owned as its bytes (see the module's documentation).
// `pub` in a crate-private module: the pool backends' trait names it, nothing outside can.
pub struct PlainBytes {
    /// The vector's buffer: `len` bytes of values, room for `cap` values.
    ptr: *mut u8,
    len: usize,
    cap: usize,
    /// Frees the buffer as the vector it was (its element type's layout).
    free: unsafe fn(*mut u8, usize),
    /// Whether it takes results: only then is anything written, so only then are lends
    /// counted (a lock and a lookup per chunk, which arguments alone do without).
    in_place: bool,
    state: Mutex<State>,
}

struct State {
    /// Byte ranges lent, as start -> (end, how many [`Lend`]s hold it): disjoint (a
    /// lend that would meet another range partly is refused), so whether a write meets
    /// one is two lookups, whatever the number of chunks in flight.
    lent: BTreeMap<usize, (usize, usize)>,
    /// The results written in place, if this vector takes them.
    out: Option<Results>,
    /// The buffer was given away as the result vector: never read or freed here again.
    taken: bool,
}

/// Which calls have their result written in place.
struct Results {
    /// The results' type: plain, with the arguments' size and alignment.
    ty: std::any::TypeId,
    size: usize,
    /// Calls (values) in all.
    count: usize,
    /// Calls `0 .. front` have their result.
    front: usize,
    /// Runs of calls written past `front`, as start -> end: disjoint, none starting at
    /// `front`.
    ahead: BTreeMap<usize, usize>,
}

/// What [`PlainBytes::put_run`] did with a run of results.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Put {
    /// Written over its calls' arguments.
    Placed,
    /// Past the end, or over calls that have their result already: ignored (every call
    /// has one result).
    Ignored,
    /// Some of its calls' arguments are still lent (a chunk answered in pieces is kept
    /// whole until its last piece): nothing written; put it again later.
    Lent,
}

// SAFETY: the buffer belongs to this value alone (freed with it, or given away once,
// under the lock) and holds plain bytes, which nothing ties to a thread.
unsafe impl Send for PlainBytes {}
// SAFETY: shared, the bytes are written only under the lock (and only with results in
// place), never over a byte a `Lend` holds; with results in place every read goes
// through a registered `Lend` or holds the lock: no two threads ever race on a byte.
unsafe impl Sync for PlainBytes {}

/// Frees a buffer of `cap` values of `T` taken from a vector.
///
/// # Safety
///
/// `ptr` and `cap` must be the pointer and capacity of a `Vec<T>` taken apart, freed
/// once.
unsafe fn free_vec<T>(ptr: *mut u8, cap: usize) {
    // SAFETY: the caller's promise; length 0, so no value is dropped (plain values have
    // no drop anyway).
    drop(unsafe { Vec::from_raw_parts(ptr.cast::<T>(), 0, cap) });
}

impl PlainBytes {
    /// The values of `values` as bytes, or `values` back if `T` is not plain data.
    pub(crate) fn new<T: Send + 'static>(values: Vec<T>) -> Result<Self, Vec<T>> {
        Self::build(values, None)
    }

    /// Like [`new`](PlainBytes::new), and the bytes take the results of type `R` in
    /// place (see the module's documentation). `values` back if `A` or `R` is not plain
    /// data, if their sizes or alignments differ, or if there are no values.
    pub(crate) fn in_place<A: Send + 'static, R>(values: Vec<A>) -> Result<Self, Vec<A>> {
        if !is_plain::<R>()
            || size_of::<A>() != size_of::<R>()
            || align_of::<A>() != align_of::<R>()
            || values.is_empty()
        {
            return Err(values);
        }
        let out = Results {
            ty: typeid::of::<R>(),
            size: size_of::<R>(),
            count: values.len(),
            front: 0,
            ahead: BTreeMap::new(),
        };
        Self::build(values, Some(out))
    }

    fn build<T: Send + 'static>(values: Vec<T>, out: Option<Results>) -> Result<Self, Vec<T>> {
        if !is_plain::<T>() {
            return Err(values);
        }
        let mut values = std::mem::ManuallyDrop::new(values);
        Ok(PlainBytes {
            ptr: values.as_mut_ptr().cast::<u8>(),
            len: std::mem::size_of_val(values.as_slice()),
            cap: values.capacity(),
            free: free_vec::<T>,
            in_place: out.is_some(),
            state: Mutex::new(State {
                lent: BTreeMap::new(),
                out,
                taken: false,
            }),
        })
    }

    /// The values' bytes, end to end: how many.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned lock's state is whole anyway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lends bytes `range`, to read without the lock until the [`Lend`] is dropped;
    /// `None` if it is empty, out of bounds, partly over a range lent already, or the
    /// buffer was given away.
    pub(crate) fn lend(self: &Arc<Self>, range: Range<usize>) -> Option<Lend> {
        if range.start >= range.end || range.end > self.len {
            return None;
        }
        // Never written without results in place: nothing to keep a lend from.
        if self.in_place && !self.register(&range) {
            return None;
        }
        Some(Lend {
            bytes: self.clone(),
            range,
        })
    }

    /// Registers one more holder of `range`; `false` if the buffer was given away or
    /// `range` meets a lent range without being it.
    fn register(&self, range: &Range<usize>) -> bool {
        let mut st = self.state();
        !st.taken && st.add_lend(range)
    }

    fn unregister(&self, range: &Range<usize>) {
        self.state().remove_lend(range);
    }

    /// Runs `f` on bytes `range` under the lock (a copy into a message); `None` if it is
    /// out of bounds or the buffer was given away.
    pub(crate) fn with_range<T>(&self, range: Range<usize>, f: impl FnOnce(&[u8]) -> T) -> Option<T> {
        if range.start > range.end || range.end > self.len {
            return None;
        }
        // Arguments alone are never written nor given away: no lock needed.
        let st = self.in_place.then(|| self.state());
        if st.as_ref().is_some_and(|st| st.taken) {
            return None;
        }
        // SAFETY: `range` lies inside the `len` initialized bytes of the buffer, which
        // is ours (not given away: checked under the lock, or never for arguments
        // alone). Writes happen only under the lock, which we hold until `f` returns
        // (and never without results in place), so the bytes do not change while the
        // slice lives; `Lend` holders only read.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr.add(range.start), range.len()) };
        let r = f(bytes);
        drop(st);
        Some(r)
    }

    /// Writes the `k` results in `run` (exactly their bytes) over the arguments of calls
    /// `start .. start + k`. `Err` if this vector takes no results of type `R`, or if
    /// `run` is not `k` valid values of it (they came from another process).
    pub(crate) fn put_run<R>(&self, start: usize, k: usize, run: &[u8]) -> Result<Put, &'static str> {
        match check_run::<R>(run, k) {
            Some(Ok(len)) if len == run.len() => {}
            Some(Ok(_)) => return Err("a run of results of the wrong length"),
            Some(Err(why)) => return Err(why),
            None => return Err("not plain data"),
        }
        let mut guard = self.state();
        let st = &mut *guard;
        let Some(out) = st.out.as_mut().filter(|o| o.ty == typeid::of::<R>()) else {
            return Err("results of another type");
        };
        let Some(end) = start.checked_add(k).filter(|&end| end <= out.count) else {
            return Ok(Put::Ignored);
        };
        if st.taken || k == 0 || start < out.front || out.overlaps_ahead(start, end) {
            return Ok(Put::Ignored);
        }
        let bytes = start * out.size..end * out.size;
        if meets(&st.lent, &bytes) {
            return Ok(Put::Lent);
        }
        // SAFETY: `bytes` lies inside the buffer (`end <= count`, and `count * size ==
        // len`), which is ours (not given away). We hold the lock, under which alone
        // bytes are written or read without a `Lend`, and no `Lend` holds any of these
        // bytes (just checked; a new one is registered only under the lock): nothing
        // else reads or writes them meanwhile. `run` is exactly `bytes.len()` bytes,
        // just checked to be `k` valid `R`s, and does not overlap them: the only slices
        // into the buffer are a `Lend`'s (whose bytes are refused above) and
        // `with_range`'s (which holds the lock we hold). A byte copy has no alignment
        // needs.
        unsafe {
            std::ptr::copy_nonoverlapping(run.as_ptr(), self.ptr.add(bytes.start), bytes.len());
        }
        out.written(start, end);
        Ok(Put::Placed)
    }

    /// The results as a vector in the arguments' own memory, if every call has one and
    /// nothing is lent any more; `None` otherwise (the buffer stays as it is).
    pub(crate) fn take<R>(&self) -> Option<Vec<R>> {
        let mut st = self.state();
        let out = st.out.as_ref()?;
        let count = out.count;
        if out.ty != typeid::of::<R>() || out.front != count || !st.lent.is_empty() || st.taken {
            return None;
        }
        st.taken = true;
        // SAFETY: the buffer was allocated by a `Vec` of the arguments' type with room
        // for `cap` values; `R` has that type's size and alignment (`in_place`), so the
        // layout is the same. Every one of the `count` values was written by `put_run`
        // from bytes checked to be a valid `R` (`front == count`). It is given away
        // once (`taken`, under the lock): from here nothing here reads, writes or frees
        // it, and no `Lend` exists to read it (none is lent, and none is made once
        // taken).
        Some(unsafe { Vec::from_raw_parts(self.ptr.cast::<R>(), count, self.cap) })
    }

    /// A copy of every byte, results and arguments as they are now.
    pub(crate) fn copy_all(&self) -> Option<Vec<u8>> {
        self.with_range(0..self.len, <[u8]>::to_vec)
    }
}

impl State {
    /// Registers one more holder of `range` (not empty); `false` if it meets a lent
    /// range without being it.
    fn add_lend(&mut self, range: &Range<usize>) -> bool {
        if let Some((end, n)) = self.lent.get_mut(&range.start)
            && *end == range.end
        {
            *n += 1;
            return true;
        }
        if meets(&self.lent, range) {
            return false;
        }
        self.lent.insert(range.start, (range.end, 1));
        true
    }

    fn remove_lend(&mut self, range: &Range<usize>) {
        if let Some((end, n)) = self.lent.get_mut(&range.start)
            && *end == range.end
        {
            *n -= 1;
            if *n == 0 {
                self.lent.remove(&range.start);
            }
        }
    }

}

/// Whether `bytes` (not empty) meets one of the `lent` ranges. They are disjoint: only
/// the last one starting before `bytes` ends can.
fn meets(lent: &BTreeMap<usize, (usize, usize)>, bytes: &Range<usize>) -> bool {
    lent.range(..bytes.end)
        .next_back()
        .is_some_and(|(_, &(end, _))| end > bytes.start)
}

impl Results {
    fn overlaps_ahead(&self, start: usize, end: usize) -> bool {
        let before = self.ahead.range(..end).next_back();
        before.is_some_and(|(_, &e)| e > start)
    }

    fn written(&mut self, start: usize, end: usize) {
        if start == self.front {
            self.front = end;
            while let Some(next) = self.ahead.remove(&self.front) {
                self.front = next;
            }
        } else {
            self.ahead.insert(start, end);
        }
    }
}

impl Drop for PlainBytes {
    fn drop(&mut self) {
        let taken = self.state.get_mut().map_or_else(|p| p.into_inner().taken, |s| s.taken);
        if !taken {
            // SAFETY: `ptr` and `cap` are those of the vector `build` took apart, and
            // it was not given away: freed here, once.
            unsafe { (self.free)(self.ptr, self.cap) }
        }
    }
}

/// A run of a [`PlainBytes`]'s bytes, lent: readable without a lock for as long as it
/// lives, and never written meanwhile.
pub(crate) struct Lend {
    bytes: Arc<PlainBytes>,
    range: Range<usize>,
}

impl Clone for Lend {
    fn clone(&self) -> Self {
        // Alive, so registered and not given away: one more holder of the same range.
        if self.bytes.in_place {
            self.bytes.register(&self.range);
        }
        Lend {
            bytes: self.bytes.clone(),
            range: self.range.clone(),
        }
    }
}

impl Drop for Lend {
    fn drop(&mut self) {
        if self.bytes.in_place {
            self.bytes.unregister(&self.range);
        }
    }
}

impl Deref for Lend {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `range` lies inside the buffer's `len` initialized bytes (checked in
        // `lend`), which the `Arc` keeps alive. Without results in place nothing ever
        // writes them or gives them away; with, this `Lend` is registered (from `lend`
        // or `clone` until its drop), so `put_run` writes none of its bytes and `take`
        // does not give the buffer away: the bytes stay as they are for as long as the
        // slice, borrowed from `self`, lives.
        unsafe { std::slice::from_raw_parts(self.bytes.ptr.add(self.range.start), self.range.len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::plain::slice_bytes;

    #[test]
    fn plain_vectors_are_lent_as_their_bytes() {
        // Arguments alone: lent freely (never written), nothing counted.
        let b = Arc::new(PlainBytes::new(vec![1u16, 2, 0xffff]).ok().unwrap());
        assert_eq!(b.len(), 6);
        let all = b.lend(0..6).unwrap();
        assert_eq!(&all[..], slice_bytes(&[1u16, 2, 0xffff]).unwrap());
        assert_eq!(&b.lend(2..4).unwrap().clone()[..], slice_bytes(&[2u16]).unwrap());
        assert!(b.lend(4..8).is_none() && b.lend(3..3).is_none());
        assert_eq!(b.with_range(0..2, <[u8]>::to_vec), Some(vec![1, 0]));
        assert!(b.state().lent.is_empty());
        // No results go in.
        assert!(b.put_run::<u16>(0, 1, &[0, 0]).is_err());
        assert!(PlainBytes::new(Vec::<u8>::new()).ok().unwrap().copy_all().unwrap().is_empty());
        assert_eq!(PlainBytes::new(vec![String::new()]).err().unwrap().len(), 1);

        // Taking results: every lend is counted, clones too, until its drop.
        let b = Arc::new(PlainBytes::in_place::<u16, u16>(vec![1, 2, 3]).ok().unwrap());
        let all = b.lend(0..6).unwrap();
        // Partly over a lent range, empty, or out of bounds: refused.
        assert!(b.lend(2..4).is_none());
        assert!(b.lend(3..3).is_none());
        assert!(b.lend(4..8).is_none());
        let again = b.lend(0..6).unwrap();
        drop(all);
        let middle = again.clone();
        drop(again);
        assert_eq!(b.state().lent.len(), 1);
        drop(middle);
        assert!(b.state().lent.is_empty());
        let two = b.lend(2..4).unwrap();
        assert_eq!(&two.clone()[..], slice_bytes(&[2u16]).unwrap());
        assert!(b.lend(0..2).is_some() && b.lend(4..6).is_some());
        drop(two);
        assert!(b.state().lent.is_empty());
    }

    #[test]
    fn results_go_over_their_arguments_and_the_vector_becomes_the_result() {
        let b = Arc::new(PlainBytes::in_place::<u64, f64>((0..6u64).collect()).ok().unwrap());
        let run = |v: &[f64]| slice_bytes(v).unwrap().to_vec();
        let chunk = b.lend(16..48).unwrap(); // calls 2 .. 6
        let kept = chunk.clone();
        assert_eq!(b.put_run::<f64>(0, 2, &run(&[0.5, 1.5])), Ok(Put::Placed));
        // Calls 2 .. 4 are lent (their chunk is kept): nothing written.
        assert_eq!(b.put_run::<f64>(2, 2, &run(&[2.5, 3.5])), Ok(Put::Lent));
        drop(chunk);
        assert_eq!(b.put_run::<f64>(2, 2, &run(&[2.5, 3.5])), Ok(Put::Lent));
        assert!(b.take::<f64>().is_none(), "not every call has its result");
        drop(kept);
        assert_eq!(b.put_run::<f64>(4, 2, &run(&[4.5, 5.5])), Ok(Put::Placed));
        // Over a result already written, or past the end: ignored.
        assert_eq!(b.put_run::<f64>(5, 1, &run(&[9.0])), Ok(Put::Ignored));
        assert_eq!(b.put_run::<f64>(6, 1, &run(&[9.0])), Ok(Put::Ignored));
        assert_eq!(b.put_run::<f64>(2, 2, &run(&[2.5, 3.5])), Ok(Put::Placed));
        // Wrong type or length: refused.
        assert!(b.put_run::<u64>(0, 1, &[0; 8]).is_err());
        assert!(b.put_run::<f64>(0, 2, &[0; 8]).is_err());
        assert!(b.take::<u64>().is_none());
        let lent = b.lend(0..8).unwrap();
        assert!(b.take::<f64>().is_none(), "a lent buffer is not given away");
        drop(lent);
        let v = b.take::<f64>().unwrap();
        assert_eq!(v, [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]);
        // Given away: nothing more is lent, read or written.
        assert!(b.lend(0..8).is_none());
        assert!(b.copy_all().is_none());
        assert_eq!(b.put_run::<f64>(0, 1, &run(&[1.0])), Ok(Put::Ignored));
        drop(b);
        assert_eq!(v.iter().sum::<f64>(), 18.0);
    }

    #[test]
    fn hostile_results_are_refused_and_types_must_match() {
        let b = PlainBytes::in_place::<u8, bool>(vec![0, 1, 0]).ok().unwrap();
        assert!(b.put_run::<bool>(0, 3, &[1, 2, 0]).is_err());
        assert_eq!(b.put_run::<bool>(0, 3, &[1, 0, 1]), Ok(Put::Placed));
        assert_eq!(b.take::<bool>(), Some(vec![true, false, true]));
        assert!(PlainBytes::in_place::<u32, u64>(vec![1]).is_err());
        assert!(PlainBytes::in_place::<u64, String>(vec![1]).is_err());
        assert!(PlainBytes::in_place::<u64, u64>(Vec::new()).is_err());
        // Dropped without being taken: freed as the vector it was.
        let b = PlainBytes::in_place::<[u32; 4], [f32; 4]>(vec![[1, 2, 3, 4]; 100]).ok().unwrap();
        assert_eq!(b.copy_all().unwrap().len(), 1600);
    }
}
