//! A vector of plain values (`sys::plain`) filled in any order, a run at a time,
//! straight from the bytes that came.
//!
//! A `map`'s chunks answer runs of calls in completion order: with two workers, about
//! half the runs arrive before the calls just before them. Kept aside in vectors of
//! their own, those runs cost fresh memory (whose every page faults, on a program's
//! first `map`), a copy into it, reallocations as neighbours merge, and a second copy
//! into the result once the gap fills. For plain values none of that is needed: each
//! run is written once, at its place in the result's own memory, and the result's
//! length advances over whatever is complete from the front.

use std::collections::BTreeMap;

use super::plain::{check_run, is_plain};

/// Room for `n` plain values, filled a run at a time in any order.
pub(crate) struct Scatter<T> {
    /// The values of `0 .. vec.len()`, all written; room for `n`.
    vec: Vec<T>,
    n: usize,
    /// Runs written past `vec.len()`, as start -> end: disjoint, none starting at
    /// `vec.len()` (that one would be part of it).
    ahead: BTreeMap<usize, usize>,
}

/// What [`Scatter::put`] did with a run.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Put {
    /// Written at its place.
    Placed,
    /// Past the end, or over values already written: ignored (every index has one
    /// value).
    Ignored,
}

impl<T> Scatter<T> {
    /// Room for `n` values of `T`, or `None` if `T` is not plain data (those keep
    /// their own way of being put in order).
    pub(crate) fn new(n: usize) -> Option<Self> {
        if !is_plain::<T>() {
            return None;
        }
        let mut vec = Vec::with_capacity(n);
        super::mem::prefault_spare(&mut vec);
        Some(Scatter {
            vec,
            n,
            ahead: BTreeMap::new(),
        })
    }

    /// Writes the `k` values at the start of `bytes` at indices `start .. start + k`
    /// and advances `bytes` past them. `Err` (nothing written, `bytes` unchanged) if
    /// the bytes are too few or one of them is not a valid `T`: they came from
    /// another process.
    pub(crate) fn put(
        &mut self,
        start: usize,
        k: usize,
        bytes: &mut &[u8],
    ) -> Result<Put, &'static str> {
        let len = match check_run::<T>(bytes, k) {
            Some(Ok(len)) => len,
            Some(Err(why)) => return Err(why),
            None => return Err("not plain data"),
        };
        let (head, rest) = bytes.split_at(len);
        *bytes = rest;
        let Some(end) = start.checked_add(k).filter(|&end| end <= self.n) else {
            return Ok(Put::Ignored);
        };
        if k == 0 || start < self.vec.len() || self.overlaps_ahead(start, end) {
            return Ok(Put::Ignored);
        }
        // SAFETY: `T` is plain data (checked in `new`): no padding, no pointers, no
        // drop, and `head` holds `k` values just checked to be valid `T`s. The
        // destination `start .. end` lies inside the vector's allocation
        // (`end <= n <= capacity`) and past its length, so no value in use is
        // overwritten; nothing else refers to that memory. A byte copy has no alignment
        // needs on the source.
        unsafe {
            let at = self.vec.as_mut_ptr().add(start).cast::<u8>();
            std::ptr::copy_nonoverlapping(head.as_ptr(), at, len);
        }
        if start == self.vec.len() {
            let mut new_len = end;
            while let Some(next_end) = self.ahead.remove(&new_len) {
                new_len = next_end;
            }
            // SAFETY: every index below `new_len` was written: those below the old
            // length already, `start .. end` just now, and each run taken from `ahead`
            // when it was put (runs there are disjoint and lie past the length).
            unsafe { self.vec.set_len(new_len) };
        } else {
            self.ahead.insert(start, end);
        }
        Ok(Put::Placed)
    }

    /// Whether `start .. end` meets a run written ahead.
    fn overlaps_ahead(&self, start: usize, end: usize) -> bool {
        let before = self.ahead.range(..end).next_back();
        before.is_some_and(|(_, &e)| e > start)
    }

    /// How many values from the front are written.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.vec.len()
    }

    /// The values written from the front, in order (all `n` once every run is in).
    pub(crate) fn into_vec(self) -> Vec<T> {
        self.vec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(v: &[u32]) -> Vec<u8> {
        super::super::plain::slice_bytes(v).unwrap().to_vec()
    }

    #[test]
    fn runs_in_any_order_end_in_order() {
        let mut s = Scatter::<u32>::new(7).unwrap();
        let b = bytes(&[5, 6]);
        assert_eq!(s.put(5, 2, &mut &b[..]), Ok(Put::Placed));
        let b = bytes(&[2, 3]);
        assert_eq!(s.put(2, 2, &mut &b[..]), Ok(Put::Placed));
        assert_eq!(s.len(), 0);
        let b = bytes(&[0, 1]);
        assert_eq!(s.put(0, 2, &mut &b[..]), Ok(Put::Placed));
        assert_eq!(s.len(), 4);
        let b = bytes(&[4]);
        assert_eq!(s.put(4, 1, &mut &b[..]), Ok(Put::Placed));
        assert_eq!(s.len(), 7);
        assert_eq!(s.into_vec(), [0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn overlapping_or_out_of_range_runs_are_ignored_and_consumed() {
        let mut s = Scatter::<u32>::new(4).unwrap();
        let b = bytes(&[2, 3, 9]);
        let mut at = &b[..];
        assert_eq!(s.put(2, 2, &mut at), Ok(Put::Placed));
        assert_eq!(at.len(), 4);
        // Over the run at 2..4, past the end, before the length: ignored.
        for (start, k) in [(1, 2), (3, 2), (4, 1), (usize::MAX, 1)] {
            let b = bytes(&vec![99; k]);
            assert_eq!(s.put(start, k, &mut &b[..]), Ok(Put::Ignored));
        }
        let b = bytes(&[0, 1]);
        assert_eq!(s.put(0, 2, &mut &b[..]), Ok(Put::Placed));
        let b = bytes(&[99]);
        assert_eq!(s.put(0, 1, &mut &b[..]), Ok(Put::Ignored));
        assert_eq!(s.into_vec(), [0, 1, 2, 3]);
    }

    #[test]
    fn hostile_bytes_are_refused_and_nothing_is_written() {
        let mut s = Scatter::<bool>::new(3).unwrap();
        let b = [1u8, 2, 0];
        let mut at = &b[..];
        assert!(s.put(0, 3, &mut at).is_err());
        assert_eq!((s.len(), at.len()), (0, 3));
        assert!(s.put(0, 4, &mut at).is_err());
        assert!(Scatter::<String>::new(3).is_none());
    }
}
