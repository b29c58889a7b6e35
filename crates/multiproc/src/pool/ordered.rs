//! A job's results put back in call order, as they arrive in completion order.
//!
//! Chunks answer runs of consecutive calls, mostly in the order they were handed out.
//! A run that continues what is in order is moved onto the end of the result (one
//! block copy for a chunk of plain values); a run that arrives early waits, merged with
//! its neighbours, until the gap before it fills. Nothing is kept per call: a `map` of
//! 200,000 calls touches the memory of its result once, not a vector of `Option`s
//! and then the result.

use std::collections::BTreeMap;

use super::batch::Values;
use super::core::Indices;

/// The results of calls `0 .. n`, gathered in any order.
pub(super) struct Ordered<R> {
    n: usize,
    /// The results of calls `0 .. done.len()`.
    done: Vec<R>,
    /// Runs that arrived before the calls just before them, by first call number.
    early: BTreeMap<usize, Vec<R>>,
    /// Results placed, in `done` and `early`.
    filled: usize,
}

impl<R> Ordered<R> {
    /// Room for the results of `n` calls.
    pub(super) fn new(n: usize) -> Self {
        let mut done = Vec::with_capacity(n);
        crate::sys::mem::prefault_spare(&mut done);
        Ordered {
            n,
            done,
            early: BTreeMap::new(),
            filled: 0,
        }
    }

    /// A batch's values for the calls `at` (in that order): plain data that continues
    /// what is in order is copied from the bytes that came straight onto the end of
    /// the result; anything else is decoded and placed as [`add`](Self::add) does.
    pub(super) fn add_batch(&mut self, at: Indices, values: Values<R>) {
        let data = match values {
            Values::Decoded(v) => return self.add(at, v),
            Values::Plain(data) => data,
        };
        let mut bytes = data.bytes();
        for run in at.runs() {
            let (start, len) = (run.start, run.len());
            let in_order = start == self.done.len()
                && start.saturating_add(len) <= self.n
                && !self.overlaps(start, start + len);
            let mut early = Vec::new();
            let into = if in_order { &mut self.done } else { &mut early };
            // The batch was checked when it was made: this cannot fail.
            if crate::sys::plain::read_run::<R>(&mut bytes, len, into) != Some(Ok(())) {
                return;
            }
            if in_order {
                self.filled += len;
                self.take_early();
            } else {
                self.place(start, early);
            }
        }
    }

    /// The values of the calls `at` (in that order). Call numbers past `n`, and calls
    /// already placed, are ignored: every call has one result.
    pub(super) fn add(&mut self, at: Indices, mut values: Vec<R>) {
        if at.len() != values.len() {
            return;
        }
        let runs: Vec<std::ops::Range<usize>> = at.runs().collect();
        // From the last run back, so each split takes the tail of what is left.
        for run in runs.into_iter().rev() {
            let rest = match values.len() - run.len() {
                // The first (usually the only) run takes the vector as it is.
                0 => std::mem::take(&mut values),
                at => values.split_off(at),
            };
            self.place(run.start, rest);
        }
    }

    fn place(&mut self, start: usize, mut run: Vec<R>) {
        let len = run.len();
        let end = start.saturating_add(len);
        if len == 0 || end > self.n || start < self.done.len() || self.overlaps(start, end) {
            return;
        }
        self.filled += len;
        if start == self.done.len() {
            self.done.append(&mut run);
            self.take_early();
            return;
        }
        if let Some(mut after) = self.early.remove(&end) {
            run.append(&mut after);
        }
        match self.early.range_mut(..start).next_back() {
            Some((&before, prev)) if before + prev.len() == start => prev.append(&mut run),
            _ => {
                self.early.insert(start, run);
            }
        }
    }

    /// Moves the early runs that now continue what is in order onto its end.
    fn take_early(&mut self) {
        while let Some(next) = self.early.first_entry()
            && *next.key() == self.done.len()
        {
            self.done.append(&mut next.remove());
        }
    }

    /// Whether calls `start .. end` were placed already (among the early runs).
    fn overlaps(&self, start: usize, end: usize) -> bool {
        let before = self.early.range(..end).next_back();
        before.is_some_and(|(&s, run)| s + run.len() > start)
    }

    /// Whether every call has its result.
    pub(super) fn is_full(&self) -> bool {
        self.filled == self.n
    }

    /// How many calls have their result.
    #[cfg(test)]
    fn filled(&self) -> usize {
        self.filled
    }

    /// The results in call order, if every call has one.
    pub(super) fn finish(self) -> Option<Vec<R>> {
        (self.done.len() == self.n).then_some(self.done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(v: &[usize]) -> Indices {
        v.iter().copied().collect()
    }

    #[test]
    fn runs_in_any_order_end_in_call_order() {
        let mut o = Ordered::new(10);
        o.add(runs(&[6, 7]), vec![6, 7]);
        o.add(runs(&[3, 4]), vec![3, 4]);
        o.add(runs(&[5]), vec![5]);
        o.add(runs(&[8, 9, 1, 2]), vec![8, 9, 1, 2]);
        assert!(!o.is_full());
        assert_eq!(o.filled(), 9);
        o.add(runs(&[0]), vec![0]);
        assert!(o.is_full());
        assert_eq!(o.finish(), Some((0..10).collect::<Vec<_>>()));
    }

    #[test]
    fn twice_placed_or_out_of_range_calls_are_ignored() {
        let mut o = Ordered::new(4);
        o.add(runs(&[2, 3]), vec![2, 3]);
        o.add(runs(&[3]), vec![99]);
        o.add(runs(&[4]), vec![99]);
        o.add(runs(&[0, 1]), vec![0]);
        assert_eq!(o.filled(), 2);
        o.add(runs(&[0, 1]), vec![0, 1]);
        o.add(runs(&[1]), vec![99]);
        assert_eq!(o.finish(), Some(vec![0, 1, 2, 3]));
    }

    fn plain(values: &[u64]) -> Values<u64> {
        let bytes = crate::sys::plain::slice_bytes(values).unwrap().to_vec();
        Values::Plain(crate::wire::values::Received::Inline(bytes, 0))
    }

    #[test]
    fn plain_batches_land_in_order_from_their_bytes() {
        let mut o = Ordered::new(8);
        // Early, in two runs: kept aside until the gap fills.
        o.add_batch(runs(&[5, 6, 2]), plain(&[50, 60, 20]));
        o.add_batch(runs(&[0, 1]), plain(&[0, 10]));
        assert_eq!(o.filled(), 5);
        // A decoded batch and a plain one mix.
        o.add_batch(runs(&[3, 4]), Values::Decoded(vec![30, 40]));
        o.add_batch(runs(&[7]), plain(&[70]));
        // Twice placed: ignored.
        o.add_batch(runs(&[7]), plain(&[99]));
        assert!(o.is_full());
        assert_eq!(o.finish(), Some(vec![0, 10, 20, 30, 40, 50, 60, 70]));
    }

    #[test]
    fn an_unfilled_result_is_none() {
        let mut o: Ordered<u8> = Ordered::new(2);
        o.add(runs(&[1]), vec![1]);
        assert_eq!(o.finish(), None);
        assert_eq!(Ordered::<u8>::new(0).finish(), Some(vec![]));
    }
}
