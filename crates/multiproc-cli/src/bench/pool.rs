//! Pool workloads: tiny tasks (what per-call overhead costs, and what chunking saves),
//! and the tutorial's job split over every CPU (what a pool costs on real work) — each
//! held against rayon, the speed limit of threads, and CPython's `multiprocessing`, in
//! the same run.

use std::error::Error;
use std::time::Instant;

use multiproc::{ChunkSize, Pool, ThreadPool};
use rayon::prelude::*;

use super::{Case, CaseResult, Kind, Row, Workload, find, python, versus_python};
use crate::work::{expected_total, work};

/// The tiny task.
pub fn double(x: u64) -> u64 {
    x.wrapping_mul(2)
}

/// A pool of `workers` whose workers are all running: a pool may start them lazily,
/// and their start is not what the workloads measure.
pub fn started_pool(workers: usize) -> multiproc::Result<Pool> {
    let pool = Pool::new(workers)?;
    pool.map(double, 0..4 * workers as u64)?;
    Ok(pool)
}

/// A ThreadPool of `workers` whose threads are all running, for the same reason.
pub fn started_thread_pool(workers: usize) -> multiproc::Result<ThreadPool> {
    let pool = ThreadPool::new(workers)?;
    pool.map(double, 0..4 * workers as u64)?;
    Ok(pool)
}

/// `x -> 2x` over a chunk the user cut by hand (procspawn's style: one task per chunk,
/// a `Vec<u64>` each way).
pub fn double_chunk(chunk: Vec<u64>) -> Vec<u64> {
    chunk.into_iter().map(double).collect()
}

pub const TINY: u64 = 200_000;
/// The hand-cut chunk: 200,000 calls in 8 tasks (procspawn's examples' way).
pub const MANUAL_CHUNK: u64 = 25_000;
pub const RAYON: &str = "rayon par_iter";
const POOL_AUTO: &str = "Pool, auto chunks";
const POOL_MANUAL: &str = "Pool, chunks of 25,000 by hand";
const PY_AUTO: &str = "Python Pool.map, auto chunks";
const PY_ONE: &str = "Python Pool.map, chunksize=1";

pub fn check_doubles(out: &[u64]) -> Result<(), Box<dyn Error>> {
    if out.len() as u64 == TINY && out.iter().enumerate().all(|(i, &v)| v == 2 * i as u64) {
        Ok(())
    } else {
        Err("wrong results from a map of x -> 2x".into())
    }
}

pub fn timed_map(f: impl Fn() -> multiproc::Result<Vec<u64>>) -> CaseResult {
    let t = Instant::now();
    let out = f()?;
    let d = t.elapsed();
    check_doubles(&out)?;
    Ok(d)
}

/// 200,000 calls of `x -> 2x`.
pub struct TinyTasks;

impl Workload for TinyTasks {
    fn name(&self) -> &'static str {
        "tiny tasks"
    }

    fn description(&self) -> &'static str {
        "map x -> 2x over 200,000 inputs (pools started before timing)"
    }

    fn first_call(&self) -> bool {
        true
    }

    fn calls_per_rep(&self) -> Option<u64> {
        Some(TINY)
    }

    fn reference(&self) -> &'static str {
        RAYON
    }

    fn max_iters(&self) -> Option<u64> {
        Some(5)
    }

    fn cases(&self) -> Vec<Case> {
        let workers = multiproc::cpu_count();
        let threads = started_thread_pool(workers);
        let auto = started_pool(workers).map(std::rc::Rc::new);
        let one = Pool::builder()
            .processes(workers)
            .chunk_size(ChunkSize::Fixed(1))
            .build()
            .and_then(|p| p.map(double, 0..4 * workers as u64).map(|_| p));
        let mut cases = vec![
            Case::new(RAYON, Kind::Floor, |_| {
                let t = Instant::now();
                let out: Vec<u64> = (0..TINY).into_par_iter().map(double).collect();
                let d = t.elapsed();
                check_doubles(&out)?;
                Ok(d)
            })
            .vs_python(PY_AUTO),
        ];
        match threads {
            Ok(p) => cases.push(
                Case::new("ThreadPool, auto chunks", Kind::Multiproc, move |_| {
                    timed_map(|| p.map(double, 0..TINY))
                })
                .vs_python(PY_AUTO),
            ),
            Err(e) => eprintln!("bench: no ThreadPool: {e}"),
        }
        match auto {
            Ok(p) => {
                let manual = p.clone();
                cases.push(
                    Case::new(POOL_AUTO, Kind::Multiproc, move |_| {
                        timed_map(|| p.map(double, 0..TINY))
                    })
                    .vs_python(PY_AUTO),
                );
                cases.push(
                    Case::new(POOL_MANUAL, Kind::Multiproc, move |_| {
                        timed_map(|| {
                            let chunks = (0..TINY)
                                .step_by(MANUAL_CHUNK as usize)
                                .map(|s| (s..(s + MANUAL_CHUNK).min(TINY)).collect::<Vec<u64>>());
                            let done = manual.map(double_chunk, chunks)?;
                            Ok(done.into_iter().flatten().collect())
                        })
                    })
                    .vs_python(PY_AUTO),
                );
            }
            Err(e) => eprintln!("bench: no Pool: {e}"),
        }
        match one {
            Ok(p) => cases.push(
                Case::new("Pool, chunk size 1", Kind::Multiproc, move |_| {
                    timed_map(|| p.map(double, 0..TINY))
                })
                .vs_python(PY_ONE),
            ),
            Err(e) => eprintln!("bench: no Pool: {e}"),
        }
        for (name, chunks) in [(PY_AUTO, "auto"), (PY_ONE, "1")] {
            let args = [TINY.to_string(), chunks.to_string()];
            cases.extend(python::case(name, "tiny-map", workers, &args, &[], 1));
        }
        cases
    }

    fn notes(&self) -> Vec<String> {
        vec![
            "rayon calls x -> 2x in place: ~nothing but the loop. A process pool must encode \
             each argument and result (postcard), move them over a socket in chunks, and decode \
             them: that per-call cost (tens of ns), not the task, is what this measures."
                .into(),
            "chunk size 1 sends one frame per call each way (up to 128 in flight per worker, \
             written and read many at a time); auto chunks pay that once per chunk. Python's \
             rows do the same with pickle and its own chunking rule (chunksize = len / (4 × \
             workers))."
                .into(),
            python::note(),
        ]
    }

    fn findings(&self, rows: &[Row]) -> Vec<String> {
        [POOL_AUTO, POOL_MANUAL, "Pool, chunk size 1"]
            .iter()
            .filter_map(|name| find(rows, name))
            .filter_map(versus_python)
            .collect()
    }

    fn first_call_findings(&self, rows: &[Row]) -> Vec<String> {
        let first = |name: &str| find(rows, name).and_then(|r| r.first_call.as_ref());
        let mut out = Vec::new();
        if let Some(auto) = first(POOL_AUTO) {
            if let Some(s) = auto.speedup_vs_python {
                out.push(super::at_least(
                    "first call, Pool auto chunks, times faster than Python",
                    s,
                    10.0,
                ));
            }
            if let Some(manual) = first(POOL_MANUAL) {
                out.push(super::at_least(
                    "first call, Pool auto chunks over chunks cut by hand (speed-up)",
                    manual.median_us / auto.median_us,
                    1.5,
                ));
            }
            if let Some(rayon) = first(RAYON) {
                out.push(format!(
                    "first call, Pool auto chunks: {:.1}x rayon's time",
                    auto.median_us / rayon.median_us
                ));
            }
        }
        if let Some(one) = first("Pool, chunk size 1").and_then(|f| f.speedup_vs_python) {
            out.push(format!(
                "first call, Pool chunk size 1: {} than Python chunksize=1",
                super::faster_or_slower(one)
            ));
        }
        out
    }
}

const SEQUENTIAL: &str = "sequential";
/// The tutorial's job: two sums of 0..50,000,000.
pub const N: u64 = 50_000_000;
pub const RUNS: u64 = 2;

/// The tutorial's two runs of 0..N, cut into `pieces` ranges in all.
pub fn split(pieces: u64) -> Vec<(u64, u64)> {
    let per_run = pieces.div_ceil(RUNS).max(1);
    let step = N.div_ceil(per_run);
    (0..RUNS)
        .flat_map(|_| (0..per_run).map(move |k| (k * step, ((k + 1) * step).min(N))))
        .collect()
}

pub fn timed_sum(f: impl FnOnce() -> Result<u64, Box<dyn Error>>) -> CaseResult {
    let want = expected_total(N, RUNS).ok_or("total overflows")?;
    let t = Instant::now();
    let got = f()?;
    let d = t.elapsed();
    if got != want {
        return Err(format!("wrong total {got}, want {want}").into());
    }
    Ok(d)
}

/// The tutorial's job over every CPU.
pub struct TutorialJob;

impl Workload for TutorialJob {
    fn name(&self) -> &'static str {
        "tutorial job"
    }

    fn description(&self) -> &'static str {
        "sum 0..50,000,000 twice, split over cpu_count() workers (pools started before timing)"
    }

    fn reference(&self) -> &'static str {
        SEQUENTIAL
    }

    fn max_iters(&self) -> Option<u64> {
        Some(21)
    }

    fn cases(&self) -> Vec<Case> {
        let workers = multiproc::cpu_count();
        let pieces = split(workers as u64);
        let mut cases = vec![
            Case::new(SEQUENTIAL, Kind::Floor, |_| {
                timed_sum(|| Ok((0..RUNS).map(|_| work((0, N))).sum()))
            }),
            Case::new(RAYON, Kind::Floor, {
                let pieces = pieces.clone();
                move |_| timed_sum(|| Ok(pieces.par_iter().map(|&r| work(r)).sum()))
            }),
        ];
        if let Ok(p) = Pool::new(workers) {
            let pieces = pieces.clone();
            cases.push(Case::new("Pool", Kind::Multiproc, move |_| {
                timed_sum(|| Ok(p.map(work, pieces.iter().copied())?.iter().sum()))
            }));
        }
        if let Ok(p) = ThreadPool::new(workers) {
            let pieces = pieces.clone();
            cases.push(Case::new("ThreadPool", Kind::Multiproc, move |_| {
                timed_sum(|| Ok(p.map(work, pieces.iter().copied())?.iter().sum()))
            }));
        }
        if let Some(want) = expected_total(N, RUNS) {
            let spec: Vec<String> = pieces.iter().map(|(a, b)| format!("{a}:{b}")).collect();
            let args = [want.to_string(), spec.join(",")];
            cases.extend(python::case(
                "Python Pool.map",
                "tutorial",
                workers,
                &args,
                &[],
                1,
            ));
        }
        cases
    }

    fn notes(&self) -> Vec<String> {
        vec![
            "target: Pool within 10% of rayon. Both split the job the same way; the pool adds \
             one round trip per piece (tens of µs) to a job of tens of ms."
                .into(),
            "Python's row runs the tutorial's own loop (`for i in range(..): total += i`) on \
             the same pieces: it measures the interpreter as much as the pool."
                .into(),
            python::note(),
        ]
    }

    fn findings(&self, rows: &[Row]) -> Vec<String> {
        let mut out = Vec::new();
        if let (Some(pool), Some(rayon)) = (find(rows, "Pool"), find(rows, RAYON)) {
            out.push(super::at_most(
                "Pool's time over rayon's",
                pool.ratio / rayon.ratio,
                1.1,
            ));
        }
        out.extend(find(rows, "Pool").and_then(versus_python));
        out
    }
}
