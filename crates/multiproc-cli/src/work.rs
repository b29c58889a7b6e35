//! The tutorial's job: add up a range of integers, one by one.

use std::hint::black_box;

/// Sums `start..end` with a real loop: one addition per number.
///
/// `black_box` on the index hides each value from the optimizer, so the loop cannot be
/// folded into `n(n-1)/2` or vectorized away; it stays one load and one add per
/// iteration (~14 ms per 50M numbers on this kind of machine, against ~0 for a
/// formula). The same function runs sequentially, in threads and in child processes;
/// `inline(never)` makes that literally the same machine code (one copy of the loop,
/// one alignment), so the modes differ only in how they run it.
#[inline(never)]
pub fn work((start, end): (u64, u64)) -> u64 {
    let mut total = 0u64;
    for i in start..end {
        total += black_box(i);
    }
    total
}

/// What `work((0, n))` must return, by the closed formula, or `None` if `runs` such
/// sums do not fit in a `u64`.
pub fn expected_total(n: u64, runs: u64) -> Option<u64> {
    let one = u128::from(n) * u128::from(n.saturating_sub(1)) / 2;
    u64::try_from(one * u128::from(runs)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_matches_the_formula() {
        assert_eq!(work((0, 1000)), 499_500);
        assert_eq!(work((10, 10)), 0);
        assert_eq!(expected_total(1000, 1), Some(499_500));
        assert_eq!(expected_total(50_000_000, 2), Some(2_499_999_950_000_000));
        assert_eq!(expected_total(0, 2), Some(0));
        assert_eq!(expected_total(u64::MAX, 1), None);
    }
}
