//! How many calls go to a worker at once, and when a worker gets another chunk before
//! it has answered the last one. One rule for every pool that sends work over a wire.
//!
//! - [`ChunkSize::Fixed(n)`](crate::ChunkSize::Fixed): `n` calls.
//! - Automatic, with a task timeout: 1 (the timeout is per call).
//! - Automatic, before the job's call time is known: 1 call (a probe). A job of
//!   40 ms calls must not start with a chunk of many calls that keeps one worker busy
//!   while the others idle.
//! - Automatic, call time known: the job's fair share, `pending / (4 × workers)`
//!   rounded up (Python's rule, recomputed as the job drains, so the tail still spreads
//!   over every worker), but no less than what runs in the pool's [`ChunkTime`] `min`
//!   (so a tail of tiny calls does not dissolve into many tiny messages) and no more
//!   than what runs in its `max` ([`LOCAL`]: 250 µs to 5 ms; [`BROKER`]: 100 ms to 1 s),
//!   a call counting its run time plus [`ChunkTime`]'s `per_call` (moving its bytes).
//!
//! Pipelining: a worker holds more than one chunk while what it holds is estimated to
//! run for less than [`PIPELINE_TIME`], at most [`MAX_IN_FLIGHT`] chunks, so that it
//! never waits a round trip between small chunks. Behind a long chunk it holds one
//! more while the job has plenty left (over [`PLENTY_PER_WORKER`] pending calls per
//! worker): the next argument is already there when a call ends, and near the end of
//! the job no worker sits on a call another could run. A worker holding a probe (call
//! time unknown) or any chunk under a task timeout holds only that one.

use std::time::Duration;

use crate::pool::ChunkSize;

/// How long an automatically sized chunk should run in a worker: at least `min` (a
/// tail of tiny calls does not dissolve into many tiny messages), at most `max`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChunkTime {
    min: Duration,
    max: Duration,
    /// What moving one call's argument and result costs beside the call itself
    /// (encoding, copies, decoding: what the worker's call time does not count),
    /// added to the call time when sizing chunks. Without it, a job of calls of a few
    /// nanoseconds looks like too little work to share, and one worker takes it all
    /// while the other idles. (Behind a broker, calls run far longer than this.)
    per_call: Duration,
}

/// For workers a socket away: a message costs microseconds.
pub(crate) const LOCAL: ChunkTime = ChunkTime {
    min: Duration::from_micros(250),
    max: Duration::from_millis(5),
    per_call: Duration::from_nanos(10),
};

/// For workers behind a broker: every chunk costs several broker operations (add,
/// read, answer, acknowledge, lease renewals), and one Redis serves on the order of
/// 10^5 operations a second, so chunks must run far longer than locally.
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) const BROKER: ChunkTime = ChunkTime {
    min: Duration::from_millis(100),
    max: Duration::from_secs(1),
    per_call: Duration::ZERO,
};
/// A worker is given more work while what it holds runs shorter than this.
const PIPELINE_TIME: Duration = Duration::from_millis(2);
/// Chunks one worker holds at most.
const MAX_IN_FLIGHT: usize = 128;
/// Pending calls per worker above which a worker busy with a long chunk gets the next
/// one already.
pub(super) const PLENTY_PER_WORKER: usize = 1;
/// Calls in one chunk at most.
const MAX_CHUNK: usize = 1 << 17;
/// A chunk stops growing once its arguments pass this many bytes (big arguments
/// travel a few at a time, so workers share them out).
pub(super) const CHUNK_BYTES: usize = 16 << 20;

/// The smoothing of a job's measured call time: a chunk of few calls (whose time is
/// mostly fixed costs) counts for little, a chunk of many nearly replaces the estimate.
fn newest_weight(calls: usize) -> f64 {
    (calls as f64 / (calls as f64 + 4.0)).clamp(0.2, 0.95)
}

/// Calls in the next chunk of a job.
pub(super) fn chunk_len(
    chunk: ChunkSize,
    timeout: bool,
    pending: usize,
    workers: usize,
    nanos_per_call: Option<f64>,
    window: ChunkTime,
) -> usize {
    match chunk {
        ChunkSize::Fixed(n) => n.max(1),
        ChunkSize::Auto if timeout => 1,
        ChunkSize::Auto => match nanos_per_call {
            None => 1,
            Some(ns) => {
                let ns = (ns.max(0.0) + window.per_call.as_nanos() as f64).max(1.0);
                let fair = pending.div_ceil(4 * workers.max(1));
                let lo = (window.min.as_nanos() as f64 / ns) as usize;
                let hi = (window.max.as_nanos() as f64 / ns) as usize;
                fair.max(lo).min(hi).clamp(1, MAX_CHUNK)
            }
        },
    }
}

/// Whether a worker that holds `held` chunks, estimated to run `held_nanos` in all
/// (`None`: some of it has an unknown call time), should get another; `plenty`: the
/// job has plenty of calls left.
pub(super) fn wants_more(
    held: usize,
    held_nanos: Option<f64>,
    timeout: bool,
    plenty: bool,
) -> bool {
    match (held, held_nanos) {
        (0, _) => true,
        _ if timeout => false,
        (_, None) => false,
        (n, _) if n >= MAX_IN_FLIGHT => false,
        (_, Some(ns)) if ns < PIPELINE_TIME.as_nanos() as f64 => true,
        (n, Some(_)) => n == 1 && plenty,
    }
}

/// The new smoothed call time after a worker measured `nanos` over `calls` calls.
pub(super) fn update_call_time(old: Option<f64>, nanos: u64, calls: usize) -> Option<f64> {
    if calls == 0 {
        return old;
    }
    let now = nanos as f64 / calls as f64;
    Some(match old {
        None => now,
        Some(old) => (1.0 - newest_weight(calls)) * old + newest_weight(calls) * now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_jobs_never_start_with_a_big_chunk() {
        assert_eq!(chunk_len(ChunkSize::Auto, false, 64, 2, None, LOCAL), 1);
        // 40 ms calls: one at a time.
        assert_eq!(
            chunk_len(ChunkSize::Auto, false, 60, 2, Some(40e6), LOCAL),
            1
        );
    }

    #[test]
    fn tiny_calls_get_a_fair_share_bounded_by_time() {
        // 20 ns calls, 200,000 pending over 2 workers: the fair share 25,000.
        assert_eq!(
            chunk_len(ChunkSize::Auto, false, 200_000, 2, Some(20.0), LOCAL),
            25_000
        );
        // The tail keeps at least 250 µs worth of calls (each 20 ns, plus 10 ns to
        // move it).
        assert_eq!(
            chunk_len(ChunkSize::Auto, false, 100, 2, Some(20.0), LOCAL),
            8_333
        );
        // 2 ns calls still share: 250 µs is 20,833 calls of 12 ns.
        assert_eq!(
            chunk_len(ChunkSize::Auto, false, 60_000, 2, Some(2.0), LOCAL),
            20_833
        );
        // 1 µs calls: at most 5 ms worth.
        assert_eq!(
            chunk_len(ChunkSize::Auto, false, 10_000_000, 2, Some(1000.0), LOCAL),
            4_950
        );
        assert_eq!(
            chunk_len(ChunkSize::Auto, true, 1000, 2, Some(20.0), LOCAL),
            1
        );
        // Behind a broker, 1 ms calls go at least 100 at a time, at most 1,000.
        assert_eq!(
            chunk_len(ChunkSize::Auto, false, 150, 2, Some(1e6), BROKER),
            100
        );
        assert_eq!(
            chunk_len(ChunkSize::Auto, false, 1 << 20, 2, Some(1e6), BROKER),
            1000
        );
        assert_eq!(
            chunk_len(ChunkSize::Fixed(0), false, 1000, 2, None, LOCAL),
            1
        );
    }

    #[test]
    fn pipelining_for_known_short_work_and_one_behind_long_work() {
        assert!(wants_more(0, None, true, false));
        assert!(!wants_more(1, None, false, true));
        assert!(!wants_more(1, Some(10.0), true, true));
        assert!(wants_more(1, Some(1e5), false, false));
        assert!(!wants_more(MAX_IN_FLIGHT, Some(10.0), false, true));
        // Behind a 3 ms chunk: one more while plenty is left, none near the end.
        assert!(wants_more(1, Some(3e6), false, true));
        assert!(!wants_more(1, Some(3e6), false, false));
        assert!(!wants_more(2, Some(6e6), false, true));
    }

    #[test]
    fn call_time_is_smoothed() {
        assert_eq!(update_call_time(None, 1000, 10), Some(100.0));
        // 10 calls weigh 10/14.
        let t = update_call_time(Some(100.0), 2000, 10).unwrap();
        assert!((t - (100.0 * 4.0 / 14.0 + 200.0 * 10.0 / 14.0)).abs() < 1e-9);
        // One call weighs little: its time is mostly fixed costs.
        let t = update_call_time(Some(100.0), 1000, 1).unwrap();
        assert!((t - (0.8 * 100.0 + 0.2 * 1000.0)).abs() < 1e-9);
        assert_eq!(update_call_time(Some(5.0), 0, 0), Some(5.0));
    }
}
