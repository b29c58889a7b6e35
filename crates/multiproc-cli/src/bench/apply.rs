//! One `apply` at a time: what a single call to a warm pool costs, end to end, held
//! against a raw pipe round trip between two processes (the least any process pool can
//! pay) and CPython's `Pool.apply`.

use std::time::Instant;

use multiproc::ThreadPool;

use super::pool::{double, started_pool};
use super::{Case, CaseResult, Kind, Row, Workload, at_most, faster_than_python, find, python};
use crate::sys;

/// Round trips per repetition; each row is the time of one.
const TRIPS: u32 = 200;
const RAW_PIPE: &str = "raw pipe round trip";
const POOL_ONE: &str = "Pool::apply, 1 worker";
const POOL_ALL: &str = "Pool::apply, cpu_count() workers";

/// `TRIPS` calls of `apply(double, i)`, one after the other, each answer checked.
fn apply_trips(apply: impl Fn(u64) -> multiproc::Result<u64>) -> CaseResult {
    let t = Instant::now();
    for i in 0..u64::from(TRIPS) {
        let got = apply(i)?;
        if got != double(i) {
            return Err(format!("apply(double, {i}) gave {got}").into());
        }
    }
    Ok(t.elapsed() / TRIPS)
}

/// `Pool::apply` of a tiny task, one call at a time.
pub struct ApplyRoundTrip;

impl Workload for ApplyRoundTrip {
    fn name(&self) -> &'static str {
        "apply round trip"
    }

    fn description(&self) -> &'static str {
        "µs per call of apply(x -> 2x, x), one at a time on a warm pool (200 calls per \
         repetition)"
    }

    fn first_call(&self) -> bool {
        true
    }

    fn reference(&self) -> &'static str {
        RAW_PIPE
    }

    fn max_iters(&self) -> Option<u64> {
        Some(51)
    }

    fn cases(&self) -> Vec<Case> {
        let workers = multiproc::cpu_count();
        let mut cases = vec![Case::new(RAW_PIPE, Kind::Floor, |_| {
            Ok(sys::raw_pipe_round_trips(TRIPS as usize)? / TRIPS)
        })];
        for (name, n) in [(POOL_ONE, 1), (POOL_ALL, workers)] {
            match started_pool(n) {
                Ok(p) => cases.push(Case::new(name, Kind::Multiproc, move |_| {
                    apply_trips(|i| p.apply(double, i))
                })),
                Err(e) => eprintln!("bench: no Pool: {e}"),
            }
        }
        match ThreadPool::new(workers) {
            Ok(p) => cases.push(Case::new("ThreadPool::apply", Kind::Multiproc, move |_| {
                apply_trips(|i| p.apply(double, i))
            })),
            Err(e) => eprintln!("bench: no ThreadPool: {e}"),
        }
        cases.extend(python::case(
            "Python Pool.apply",
            "apply",
            workers,
            &[TRIPS.to_string()],
            &[],
            TRIPS,
        ));
        cases
    }

    fn notes(&self) -> Vec<String> {
        vec![
            "the raw floor is one process writing 8 bytes into a pipe and reading 8 back \
             from a child echoing them (two context switches per trip, nothing encoded). \
             apply adds encoding and the pool's bookkeeping; the caller's own thread does \
             the I/O, so the wake-ups are those of the raw floor."
                .into(),
            "the floor's child is forked anew each repetition (outside the timing), and \
             whether the scheduler puts it on this CPU or another changes a pipe round trip \
             several-fold (waking an idle CPU); a wide p10..p90 of the floor shows both."
                .into(),
            python::note(),
        ]
    }

    fn findings(&self, rows: &[Row]) -> Vec<String> {
        let mut out = Vec::new();
        for name in [POOL_ONE, POOL_ALL] {
            if let Some(r) = find(rows, name) {
                out.push(at_most(&format!("{name} over the raw pipe"), r.ratio, 3.0));
                out.extend(faster_than_python(r, 20.0));
            }
        }
        out
    }
}
