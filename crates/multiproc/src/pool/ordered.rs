//! A job's results put back in call order, as they arrive in completion order.
//!
//! Chunks answer runs of consecutive calls, mostly in the order they were handed out.
//! Plain values (`sys::plain`) are written once, straight from the bytes that came, at
//! their place in the result, whatever order their runs arrive in (`sys::scatter`), or
//! over their own calls' arguments when those are plain values of the same size
//! (`sys::lend`: no result vector of its own).
//! Other values: a run that continues what is in order is moved onto the end of the
//! result; a run that arrives early waits, merged with its neighbours, until the gap
//! before it fills. Nothing is kept per call: a `map` of 200,000 calls touches the
//! memory of its result once, not a vector of `Option`s and then the result.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::batch::Values;
use super::core::Indices;
use crate::sys::lend::{self, PlainBytes};
use crate::sys::scatter::{Put, Scatter};

/// The results of calls `0 .. n`, gathered in any order.
pub(super) struct Ordered<R> {
    n: usize,
    store: Store<R>,
    /// Results placed.
    filled: usize,
}

/// Where the results wait.
enum Store<R> {
    /// Plain values, each run written at its place.
    Plain(Scatter<R>),
    /// Plain values written over their calls' arguments.
    InPlace {
        bytes: Arc<PlainBytes>,
        /// Runs whose arguments were still lent when they came, as (first call, calls,
        /// bytes): put again after every batch, and at the end.
        waiting: Vec<(usize, usize, Vec<u8>)>,
    },
    Values {
        /// The results of calls `0 .. done.len()`.
        done: Vec<R>,
        /// Runs that arrived before the calls just before them, by first call number.
        early: BTreeMap<usize, Vec<R>>,
    },
}

impl<R> Ordered<R> {
    /// Room for the results of `n` calls (their pages mapped up front, see `sys::mem`).
    pub(super) fn new(n: usize) -> Self {
        let store = Scatter::new(n).map(Store::Plain).unwrap_or_else(|| {
            let mut done = Vec::with_capacity(n);
            crate::sys::mem::prefault_spare(&mut done);
            Store::Values {
                done,
                early: BTreeMap::new(),
            }
        });
        Ordered {
            n,
            store,
            filled: 0,
        }
    }

    /// Room for the results of the `n` calls whose arguments `bytes` holds, written over
    /// those (see `sys::lend`).
    pub(super) fn in_place(n: usize, bytes: Arc<PlainBytes>) -> Self {
        Ordered {
            n,
            store: Store::InPlace {
                bytes,
                waiting: Vec::new(),
            },
            filled: 0,
        }
    }

    /// A batch's values for the calls `at` (in that order). Plain values go from the
    /// bytes that came straight to their place in the result.
    pub(super) fn add_batch(&mut self, at: Indices, values: Values<R>) {
        match (&mut self.store, values) {
            (Store::InPlace { bytes, waiting }, Values::Plain(data)) => {
                self.filled += put_in_place::<R>(bytes, waiting, &at, data.bytes());
            }
            (Store::Plain(scatter), Values::Plain(data)) => {
                let placed = put_runs(scatter, &at, data.bytes());
                self.filled += placed;
            }
            (_, values) => {
                let values = values.into_vec(at.len());
                self.add(at, values);
            }
        }
    }

    /// The values of the calls `at` (in that order). Call numbers past `n`, and calls
    /// already placed, are ignored: every call has one result.
    pub(super) fn add(&mut self, at: Indices, mut values: Vec<R>) {
        if at.len() != values.len() {
            return;
        }
        if let Store::Plain(scatter) = &mut self.store {
            if let Some(bytes) = crate::sys::plain::slice_bytes(&values) {
                self.filled += put_runs(scatter, &at, bytes);
            }
            return;
        }
        if let Store::InPlace { bytes, waiting } = &mut self.store {
            if let Some(values) = crate::sys::plain::slice_bytes(&values) {
                self.filled += put_in_place::<R>(bytes, waiting, &at, values);
            }
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
        let Store::Values { done, early } = &mut self.store else {
            return;
        };
        let len = run.len();
        let end = start.saturating_add(len);
        if len == 0 || end > self.n || start < done.len() || overlaps(early, start, end) {
            return;
        }
        self.filled += len;
        if start == done.len() {
            done.append(&mut run);
            while let Some(next) = early.first_entry()
                && *next.key() == done.len()
            {
                done.append(&mut next.remove());
            }
            return;
        }
        if let Some(mut after) = early.remove(&end) {
            run.append(&mut after);
        }
        match early.range_mut(..start).next_back() {
            Some((&before, prev)) if before + prev.len() == start => prev.append(&mut run),
            _ => {
                early.insert(start, run);
            }
        }
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
        let done = match self.store {
            Store::Plain(scatter) => scatter.into_vec(),
            Store::InPlace { bytes, waiting } => finish_in_place(&bytes, waiting, self.n)?,
            Store::Values { done, .. } => done,
        };
        (done.len() == self.n).then_some(done)
    }
}

/// Puts the plain results in `values` over the arguments of the calls `at` (in that
/// order), and again the runs that waited for their arguments to be free; how many
/// calls of `at` have their result now or wait for it.
fn put_in_place<R>(
    bytes: &PlainBytes,
    waiting: &mut Vec<(usize, usize, Vec<u8>)>,
    at: &Indices,
    mut values: &[u8],
) -> usize {
    let mut placed = 0;
    for run in at.runs() {
        let Some(Ok(len)) = crate::sys::plain::check_run::<R>(values, run.len()) else {
            break; // checked when the batch was made: cannot happen
        };
        let (head, rest) = values.split_at(len);
        values = rest;
        match bytes.put_run::<R>(run.start, run.len(), head) {
            Ok(lend::Put::Placed) => placed += run.len(),
            Ok(lend::Put::Lent) => {
                waiting.push((run.start, run.len(), head.to_vec()));
                placed += run.len();
            }
            Ok(lend::Put::Ignored) | Err(_) => {}
        }
    }
    put_waiting::<R>(bytes, waiting);
    placed
}

/// Puts again the runs whose arguments were lent when they came (a chunk answered in
/// pieces is lent until its last piece); keeps those still lent.
fn put_waiting<R>(bytes: &PlainBytes, waiting: &mut Vec<(usize, usize, Vec<u8>)>) {
    waiting.retain(|(start, k, run)| bytes.put_run::<R>(*start, *k, run) == Ok(lend::Put::Lent));
}

/// The results in call order, in the arguments' own memory; or, should some of them
/// still be lent (not seen, but possible), a copy of them with the runs that waited.
fn finish_in_place<R>(
    bytes: &PlainBytes,
    mut waiting: Vec<(usize, usize, Vec<u8>)>,
    n: usize,
) -> Option<Vec<R>> {
    put_waiting::<R>(bytes, &mut waiting);
    if waiting.is_empty()
        && let Some(v) = bytes.take::<R>()
    {
        return Some(v);
    }
    let mut all = bytes.copy_all()?;
    let size = std::mem::size_of::<R>();
    for (start, k, run) in waiting {
        all.get_mut(start * size..(start + k) * size)?.copy_from_slice(&run);
    }
    let mut out = Vec::with_capacity(n);
    crate::sys::plain::read_run::<R>(&mut &all[..], n, &mut out)?.ok()?;
    Some(out)
}

/// Puts the plain values in `bytes` at the calls `at` (in that order); how many were
/// placed. Bytes that are not valid values stop it: a batch is checked when it is made
/// (see `batch`), so only a decoded one could get here, and it is valid.
fn put_runs<R>(scatter: &mut Scatter<R>, at: &Indices, mut bytes: &[u8]) -> usize {
    let mut placed = 0;
    for run in at.runs() {
        match scatter.put(run.start, run.len(), &mut bytes) {
            Ok(Put::Placed) => placed += run.len(),
            Ok(Put::Ignored) => {}
            Err(_) => break,
        }
    }
    placed
}

/// Whether calls `start .. end` were placed already among the `early` runs.
fn overlaps<R>(early: &BTreeMap<usize, Vec<R>>, start: usize, end: usize) -> bool {
    let before = early.range(..end).next_back();
    before.is_some_and(|(&s, run)| s + run.len() > start)
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
    fn values_that_are_not_plain_wait_aside_until_the_gap_fills() {
        let s = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>();
        let mut o = Ordered::new(6);
        o.add(runs(&[4, 5]), s(&[4, 5]));
        o.add(runs(&[1, 2]), s(&[1, 2]));
        // Twice placed, and out of range: ignored.
        o.add(runs(&[2]), s(&[99]));
        o.add(runs(&[6]), s(&[99]));
        o.add_batch(runs(&[0]), Values::Decoded(s(&[0])));
        assert_eq!(o.filled(), 5);
        o.add(runs(&[3]), s(&[3]));
        assert!(o.is_full());
        assert_eq!(o.finish(), Some(s(&[0, 1, 2, 3, 4, 5])));
    }

    #[test]
    fn results_in_place_wait_for_lent_arguments_and_become_their_vector() {
        for release in [true, false] {
            let args: Vec<u64> = (0..8).collect();
            let at = args.as_ptr() as usize;
            let bytes = Arc::new(PlainBytes::in_place::<u64, u64>(args).ok().unwrap());
            // Calls 2 and 3 are in a chunk still lent (answered in pieces).
            let lent = bytes.lend(16..32).unwrap();
            let mut o = Ordered::<u64>::in_place(8, bytes.clone());
            o.add_batch(runs(&[5, 6, 2]), plain(&[50, 60, 20]));
            o.add_batch(runs(&[0, 1]), plain(&[0, 10]));
            o.add(runs(&[3, 4]), vec![30, 40]);
            // Twice placed: ignored.
            o.add_batch(runs(&[0]), plain(&[99]));
            o.add_batch(runs(&[7]), plain(&[70]));
            assert!(o.is_full());
            if release {
                drop(lent);
            }
            let v = o.finish().unwrap();
            assert_eq!(v, [0, 10, 20, 30, 40, 50, 60, 70]);
            // Given back in place once nothing is lent; a copy otherwise.
            assert_eq!(v.as_ptr() as usize == at, release);
        }
    }

    #[test]
    fn an_unfilled_result_is_none() {
        let mut o: Ordered<u8> = Ordered::new(2);
        o.add(runs(&[1]), vec![1]);
        assert_eq!(o.finish(), None);
        assert_eq!(Ordered::<u8>::new(0).finish(), Some(vec![]));
    }
}
