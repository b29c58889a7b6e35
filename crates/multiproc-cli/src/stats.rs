//! Summaries of repeated measurements: medians and percentiles, never means.

use std::time::Duration;

/// Order statistics of a set of durations.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub min: Duration,
    pub p10: Duration,
    pub median: Duration,
    pub p90: Duration,
    pub max: Duration,
}

impl Summary {
    /// Summarizes `samples` (in any order). `None` if there are none.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_unstable();
        Some(Summary {
            min: s[0],
            p10: percentile(&s, 10),
            median: median(&s),
            p90: percentile(&s, 90),
            max: s[s.len() - 1],
        })
    }
}

/// The median of sorted samples (the mean of the two middle ones for an even count).
fn median(sorted: &[Duration]) -> Duration {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    }
}

/// The nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&x| Duration::from_millis(x)).collect()
    }

    #[test]
    fn order_statistics() {
        let s = Summary::of(&ms(&[5, 1, 4, 2, 3])).unwrap();
        assert_eq!(s.median, Duration::from_millis(3));
        assert_eq!(s.min, Duration::from_millis(1));
        assert_eq!(s.max, Duration::from_millis(5));
        let s = Summary::of(&ms(&[4, 1, 3, 2])).unwrap();
        assert_eq!(s.median, Duration::from_micros(2500));
        let s = Summary::of(&ms(&(1..=100).collect::<Vec<_>>())).unwrap();
        assert_eq!(s.p10, Duration::from_millis(10));
        assert_eq!(s.p90, Duration::from_millis(90));
        assert!(Summary::of(&[]).is_none());
    }
}
