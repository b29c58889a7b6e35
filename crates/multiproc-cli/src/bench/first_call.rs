//! The first call: what a program that makes one `map` (or one `apply`) gets, beside the
//! warm loop's figure.
//!
//! A warm loop flatters: the pool has learnt its call times, caches are hot, pages are
//! mapped, and the loop itself keeps the CPUs awake. So for each case of a workload
//! that asks for it, `bench` also runs this program anew (the hidden subcommand
//! [`CHILD_COMMAND`]) once per round: the fresh process builds the workload's cases
//! (which start each pool and warm it with one small map of `4 × workers` calls, as the
//! Python driver does before it reports ready), then times the one case once — on CPUs
//! that nothing keeps awake — and reports that time and the CPU time its whole process
//! tree used meanwhile (the caller and every worker). Rounds interleave the cases, as
//! the warm loop does.

use std::error::Error;
use std::process::{Command, ExitCode, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::{Workload, workloads};
use crate::load::own_tree_cpu_ns;
use crate::stats::Summary;

/// The hidden subcommand that times one case once in a fresh process.
pub const CHILD_COMMAND: &str = "bench-first-call";

/// In a first-call child, the one case it times: other cases skip what is costly to
/// set up (a Python interpreter and its pool) by asking [`wanted`].
static ONLY_CASE: OnceLock<String> = OnceLock::new();

/// Whether the case `name` is to be built: always, except in a first-call child timing
/// another case.
pub fn wanted(name: &str) -> bool {
    ONLY_CASE.get().is_none_or(|only| only == name)
}

/// What one fresh process measured.
#[derive(serde::Serialize, serde::Deserialize)]
struct Sample {
    ns: u64,
    cpu_ns: Option<u64>,
}

/// A case's first calls over the fresh processes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FirstCall {
    /// Fresh processes measured.
    pub runs: usize,
    pub median_us: f64,
    pub min_us: f64,
    pub max_us: f64,
    /// Median CPU time of the whole process tree during the call, µs.
    pub cpu_us: Option<f64>,
    /// The Python case's first-call median over this row's, as for the warm loop.
    pub speedup_vs_python: Option<f64>,
}

/// Measures the first call of every case of `w` in `runs` fresh processes each;
/// `None` for a case whose children failed (with a note on stderr).
pub fn measure(w: &dyn Workload, cases: &[String], runs: usize) -> Vec<Option<FirstCall>> {
    let mut samples: Vec<Vec<Sample>> = cases.iter().map(|_| Vec::new()).collect();
    let mut failed: Vec<bool> = vec![false; cases.len()];
    for _ in 0..runs {
        for (i, case) in cases.iter().enumerate() {
            if failed[i] {
                continue;
            }
            match run_child(w.name(), case) {
                Ok(s) => samples[i].push(s),
                Err(e) => {
                    eprintln!("bench: {} / {case}: no first-call figure: {e}", w.name());
                    failed[i] = true;
                }
            }
        }
    }
    samples
        .iter()
        .zip(&failed)
        .map(|(s, &failed)| (!failed && !s.is_empty()).then(|| summarize(s)))
        .collect()
}

fn summarize(samples: &[Sample]) -> FirstCall {
    let times: Vec<Duration> = samples.iter().map(|s| Duration::from_nanos(s.ns)).collect();
    let t = Summary::of(&times).expect("at least one sample");
    let cpus: Option<Vec<Duration>> = samples
        .iter()
        .map(|s| s.cpu_ns.map(Duration::from_nanos))
        .collect();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    FirstCall {
        runs: samples.len(),
        median_us: us(t.median),
        min_us: us(t.min),
        max_us: us(t.max),
        cpu_us: cpus.and_then(|c| Summary::of(&c)).map(|c| us(c.median)),
        speedup_vs_python: None,
    }
}

fn run_child(workload: &str, case: &str) -> Result<Sample, Box<dyn Error>> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args([CHILD_COMMAND, workload, case])
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "the measuring process failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The fresh process's side: build the workload's cases, time `case` once, and print
/// what it measured as JSON.
pub fn run_child_side(workload: &str, case: &str) -> Result<ExitCode, Box<dyn Error>> {
    ONLY_CASE
        .set(case.to_owned())
        .map_err(|_| "the case to time was set twice")?;
    let w = workloads()
        .into_iter()
        .find(|w| w.name() == workload)
        .ok_or_else(|| format!("no workload named {workload:?}"))?;
    w.setup()?;
    let mut cases = w.cases();
    let c = cases
        .iter_mut()
        .find(|c| c.name == case)
        .ok_or_else(|| format!("workload {workload:?} has no case {case:?} here"))?;
    // rayon's threads start on first use, as a pool's workers do: start them too.
    rayon::join(|| (), || ());
    // Let the warm-up's wake-ups settle: the call is to meet CPUs that nothing keeps
    // awake, as a program's one call does.
    std::thread::sleep(Duration::from_millis(50));
    let cpu0 = own_tree_cpu_ns();
    let d = (c.run)(0)?;
    let cpu_ns = cpu0
        .zip(own_tree_cpu_ns())
        .map(|(a, b)| b.saturating_sub(a));
    println!(
        "{}",
        serde_json::to_string(&Sample {
            ns: d.as_nanos() as u64,
            cpu_ns,
        })?
    );
    Ok(ExitCode::SUCCESS)
}
