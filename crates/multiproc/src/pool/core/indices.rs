//! The numbers of some calls of a job, in the order a chunk holds them.
//!
//! A chunk takes its calls from the front of a job's queue, so its call numbers are
//! almost always one run (`start .. start + len`), or a few runs where submissions or
//! hand-backs meet. Stored as runs, a chunk of 25,000 tiny calls costs 16 bytes of
//! bookkeeping instead of 200 KB written, copied for every answer, and read again by
//! the handle: on a program's first `map` every one of those bytes is a fresh page.

use std::ops::Range;

/// Call numbers as runs of consecutive numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Indices {
    /// `(start, len)` of each run, `len > 0`; two neighbours never continue each
    /// other (they would be one run).
    runs: Vec<(usize, usize)>,
    len: usize,
}

impl Indices {
    /// No calls.
    pub(in crate::pool) fn new() -> Self {
        Indices::default()
    }

    /// The calls `range`, in order.
    pub(super) fn run(range: Range<usize>) -> Self {
        let mut i = Indices::new();
        i.push_run(range);
        i
    }

    /// How many calls.
    pub(in crate::pool) fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends call `index`.
    pub(in crate::pool) fn push(&mut self, index: usize) {
        self.push_run(index..index + 1);
    }

    /// Appends the calls `range`, in order.
    pub(super) fn push_run(&mut self, range: Range<usize>) {
        let n = range.len();
        if n == 0 {
            return;
        }
        self.len += n;
        if let Some((start, len)) = self.runs.last_mut()
            && *start + *len == range.start
        {
            *len += n;
            return;
        }
        self.runs.push((range.start, n));
    }

    /// The number of the call at position `pos`, if there is one.
    pub(crate) fn get(&self, mut pos: usize) -> Option<usize> {
        for &(start, len) in &self.runs {
            if pos < len {
                return Some(start + pos);
            }
            pos -= len;
        }
        None
    }

    /// The number of the call at position `pos < len()`. The core only asks for
    /// positions it knows are there; were one not, the answer is a number no call
    /// has (the answer is dropped), not a panic in the pool's driving thread.
    pub(super) fn at(&self, pos: usize) -> usize {
        debug_assert!(pos < self.len, "position {pos} of {} calls", self.len);
        self.get(pos).unwrap_or(usize::MAX)
    }

    /// The calls at positions `from .. to` (clamped to what there is).
    pub(super) fn slice(&self, from: usize, to: usize) -> Indices {
        let mut out = Indices::new();
        let mut at = 0;
        for &(start, len) in &self.runs {
            let (lo, hi) = (from.max(at), to.min(at + len));
            if lo < hi {
                out.push_run(start + (lo - at)..start + (hi - at));
            }
            at += len;
            if at >= to {
                break;
            }
        }
        out
    }

    /// The runs, in order.
    pub(in crate::pool) fn runs(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        self.runs.iter().map(|&(start, len)| start..start + len)
    }

    /// The call numbers, in order.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.runs().flatten()
    }
}

impl FromIterator<usize> for Indices {
    fn from_iter<I: IntoIterator<Item = usize>>(iter: I) -> Self {
        let mut out = Indices::new();
        for i in iter {
            out.push(i);
        }
        out
    }
}

/// A run's numbers, from its `(start, len)`.
type RunOf = fn((usize, usize)) -> Range<usize>;

impl IntoIterator for Indices {
    type Item = usize;
    type IntoIter =
        std::iter::FlatMap<std::vec::IntoIter<(usize, usize)>, Range<usize>, RunOf>;

    fn into_iter(self) -> Self::IntoIter {
        let run: RunOf = |(start, len)| start..start + len;
        self.runs.into_iter().flat_map(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_numbers_merge_into_runs() {
        let mut i = Indices::run(0..3);
        i.push(3);
        i.push_run(4..6);
        i.push(9);
        i.push_run(7..7);
        assert_eq!(i.runs().collect::<Vec<_>>(), vec![0..6, 9..10]);
        assert_eq!(i.len(), 7);
        assert_eq!(i.iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 5, 9]);
        assert_eq!(i.clone().into_iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 5, 9]);
        assert_eq!(
            [5usize, 6, 7, 2].into_iter().collect::<Indices>().runs().collect::<Vec<_>>(),
            vec![5..8, 2..3]
        );
    }

    #[test]
    fn positions_and_slices_cross_runs() {
        let i: Indices = [10usize, 11, 12, 20, 21, 30].into_iter().collect();
        assert_eq!(i.get(0), Some(10));
        assert_eq!(i.get(3), Some(20));
        assert_eq!(i.get(5), Some(30));
        assert_eq!(i.get(6), None);
        assert_eq!(i.slice(2, 5).iter().collect::<Vec<_>>(), vec![12, 20, 21]);
        assert_eq!(i.slice(4, 99).iter().collect::<Vec<_>>(), vec![21, 30]);
        assert!(i.slice(6, 9).is_empty());
        assert!(Indices::new().slice(0, 3).is_empty());
    }
}
