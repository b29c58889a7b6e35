//! Where each argument of a chunk ends in its data, for running some of its calls
//! again after a death, or for a relay that splits the chunk without knowing its
//! type.
//!
//! Kept as runs of arguments of one size: a chunk of 25,000 plain `u64`s is one run
//! (16 bytes of bookkeeping, not 200 KB of offsets written on a program's first call
//! into fresh pages); arguments of varying sizes cost one entry per change of size.

/// The end offsets of a chunk's arguments, as runs of equal sizes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ends {
    /// `(count, size)`: `count` arguments of `size` bytes each, end to end.
    runs: Vec<(usize, usize)>,
    len: usize,
    total: usize,
}

impl Ends {
    /// The ends of one argument of `len` bytes.
    pub(super) fn one(len: usize) -> Self {
        let mut e = Ends::default();
        e.push(len);
        e
    }

    /// Arguments recorded.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    /// The next argument ends at `end` (not before the last end).
    pub(super) fn push(&mut self, end: usize) {
        let size = end.saturating_sub(self.total);
        self.push_run(1, size);
    }

    /// `count` more arguments of `size` bytes each.
    pub(super) fn push_run(&mut self, count: usize, size: usize) {
        if count == 0 {
            return;
        }
        self.len += count;
        self.total += count * size;
        match self.runs.last_mut() {
            Some((n, s)) if *s == size => *n += count,
            _ => self.runs.push((count, size)),
        }
    }

    /// The bytes of argument `pos`: `start .. end` in the chunk's data.
    pub(super) fn span(&self, mut pos: usize) -> Option<std::ops::Range<usize>> {
        let mut at = 0;
        for &(count, size) in &self.runs {
            if pos < count {
                let start = at + pos * size;
                return Some(start..start + size);
            }
            at += count * size;
            pos -= count;
        }
        None
    }

    /// Every end offset, in order (what a relay's message carries).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn offsets(&self) -> impl Iterator<Item = usize> + '_ {
        let mut at = 0;
        self.runs.iter().flat_map(move |&(count, size)| {
            let base = at;
            at += count * size;
            (1..=count).map(move |k| base + k * size)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_sizes_make_one_run_and_spans_cross_runs() {
        let mut e = Ends::default();
        e.push_run(3, 8);
        e.push(32);
        e.push(35);
        e.push(38);
        e.push_run(0, 5);
        assert_eq!(e.len(), 6);
        assert_eq!(e.runs, vec![(4, 8), (2, 3)]);
        assert_eq!(e.span(0), Some(0..8));
        assert_eq!(e.span(3), Some(24..32));
        assert_eq!(e.span(5), Some(35..38));
        assert_eq!(e.span(6), None);
        assert_eq!(e.offsets().collect::<Vec<_>>(), vec![8, 16, 24, 32, 35, 38]);
        assert_eq!(Ends::one(7).span(0), Some(0..7));
    }
}
