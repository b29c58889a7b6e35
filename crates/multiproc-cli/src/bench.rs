//! `multiproc bench`: measurements held against a floor measured in the same run.
//!
//! A [`Workload`] is a family of [`Case`]s timed side by side: the cases of a workload
//! run round-robin (one repetition of each, then the next round), so a slow moment of a
//! shared machine hits every case alike, and each row is reported with its ratio to the
//! workload's reference case (a floor such as raw `fork()`), and, where the workload has
//! one, with how many times faster it is than CPython's `multiprocessing` doing the same
//! job (see [`python`]). To add a workload, write a module that implements [`Workload`]
//! and list it in [`workloads`].

mod apply;
mod cluster;
mod first_call;
mod ipc;
mod latency;
mod managers;
mod memory;
mod pool;
mod python;
mod report;
mod values;
mod wordcount;
mod zlib;

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::load::{LoadMeter, OtherLoad};
use crate::stats::Summary;
use crate::warm;

/// Options of `multiproc bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Timed repetitions of each case.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    iters: u64,

    /// Untimed repetitions of each case before timing (first-use costs, caches).
    /// The CPUs are also spun for 0.2 s first, whatever this says.
    #[arg(long, value_name = "ROUNDS", default_value_t = 20)]
    warmup: u64,

    /// Print machine-readable JSON instead of a table.
    #[arg(long)]
    json: bool,

    /// Run only the workloads with these names (repeatable): "start+join",
    /// "tiny tasks", "tutorial job", "apply round trip", "256 MiB values", "zlib", "word count",
    /// "bandwidth", "round trip", "256 MiB hand-off", "managers", "cluster tiny calls",
    /// "cluster tutorial job", "cluster node loss", "map memory"; or "cluster" for the
    /// three cluster workloads (they need redis-server on the PATH).
    #[arg(long = "only", value_name = "WORKLOAD")]
    only: Vec<String>,

    /// Also draw one SVG chart per workload into this directory (created if missing):
    /// each case's median time with p10 to p90 whiskers, named after the workload
    /// ("tiny tasks" is tiny-tasks.svg).
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,

    /// Fresh processes per case for the "first call" figures of the workloads that
    /// have them (a program's one call: pool started and warmed by one small map,
    /// then the case timed once); 0 skips them.
    #[arg(long, value_name = "RUNS", default_value_t = 5)]
    first_call: usize,
}

pub use first_call::{
    CHILD_COMMAND as FIRST_CALL_CHILD_COMMAND, run_child_side as first_call_child,
};

pub use memory::{CHILD_COMMAND as MEMORY_CHILD_COMMAND, run_child as memory_child};

/// Result of one timed repetition.
pub type CaseResult = Result<Duration, Box<dyn Error>>;

/// What a row is: a floor to compare against, or what is being measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A reference: the same job done with the least machinery (raw syscalls, threads).
    Floor,
    /// multiproc itself.
    Multiproc,
    /// CPython's `multiprocessing` doing the same job: what users would otherwise run.
    Python,
}

/// One thing to time. Each call of `run` performs one repetition and returns its
/// duration (measured by the case, so that it may leave set-up out), or an error, which
/// ends the benchmark: a wrong answer makes every number meaningless.
pub struct Case {
    pub name: String,
    pub kind: Kind,
    pub run: Box<dyn FnMut(u64) -> CaseResult>,
    /// The Python case this row is compared with; `None`: the workload's only one.
    pub python: Option<&'static str>,
}

impl Case {
    pub fn new(
        name: impl Into<String>,
        kind: Kind,
        run: impl FnMut(u64) -> CaseResult + 'static,
    ) -> Case {
        Case {
            name: name.into(),
            kind,
            run: Box::new(run),
            python: None,
        }
    }

    /// Compares this row with the Python case `name` (for workloads with several).
    pub fn vs_python(mut self, name: &'static str) -> Case {
        self.python = Some(name);
        self
    }
}

/// Times `f`; for cases whose whole body is the measurement.
pub fn timed<E: Into<Box<dyn Error>>>(f: impl FnOnce() -> Result<(), E>) -> CaseResult {
    let t = Instant::now();
    f().map_err(Into::into)?;
    Ok(t.elapsed())
}

/// A family of cases measured side by side against one reference case.
pub trait Workload {
    /// Short name, as the table title and the JSON `name`.
    fn name(&self) -> &'static str;
    /// One sentence: what a repetition does.
    fn description(&self) -> &'static str;
    /// The name of the case every row's ratio is computed against.
    fn reference(&self) -> &'static str;
    /// The cases, in the order of the table.
    fn cases(&self) -> Vec<Case>;
    /// A name shared with related workloads, which `--only` also accepts.
    fn group(&self) -> Option<&'static str> {
        None
    }
    /// Why the workload cannot run on this machine (a program it needs is missing), if
    /// so: it is then skipped with that note, as Python rows are without `python3`.
    fn unavailable(&self) -> Option<String> {
        None
    }
    /// Starts what the cases need (servers), before [`cases`](Workload::cases); an
    /// error ends the benchmark, as a failed repetition does.
    fn setup(&self) -> Result<(), Box<dyn Error>> {
        Ok(())
    }
    /// At most this many timed repetitions (and one untimed), for workloads whose
    /// repetition takes seconds; `None` follows `--iters`.
    fn max_iters(&self) -> Option<u64> {
        None
    }
    /// Whether each case also gets a "first call" figure (see [`first_call`]).
    fn first_call(&self) -> bool {
        false
    }
    /// How many calls one repetition makes, for CPU time per call.
    fn calls_per_rep(&self) -> Option<u64> {
        None
    }
    /// Lines printed under the table: how to read it.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
    /// Lines computed from the measured rows: speed-ups, targets met or missed.
    fn findings(&self, rows: &[Row]) -> Vec<String> {
        let _ = rows;
        Vec::new()
    }
    /// Lines computed from the first-call figures, once they are in the rows.
    fn first_call_findings(&self, rows: &[Row]) -> Vec<String> {
        let _ = rows;
        Vec::new()
    }
}

/// The row named `name`, if that case ran.
pub fn find<'r>(rows: &'r [Row], name: &str) -> Option<&'r Row> {
    rows.iter().find(|r| r.name == name)
}

/// "`what`: 2.41x (target ≤ 3x): met", for a value that must stay at most `max`.
pub fn at_most(what: &str, value: f64, max: f64) -> String {
    let verdict = if value <= max { "met" } else { "MISSED" };
    format!("{what}: {value:.2}x (target ≤ {max}x): {verdict}")
}

/// "`what`: 25.1x (target ≥ 20x): met", for a value that must reach at least `min`.
pub fn at_least(what: &str, value: f64, min: f64) -> String {
    let verdict = if value >= min { "met" } else { "MISSED" };
    format!("{what}: {value:.2}x (target ≥ {min}x): {verdict}")
}

/// "12.3x faster" or "1.52x slower", for a speed-up (the other's time over this one's).
pub fn faster_or_slower(speedup: f64) -> String {
    if speedup >= 1.0 {
        format!("{speedup:.2}x faster")
    } else {
        format!("{:.2}x slower", 1.0 / speedup)
    }
}

/// "Pool: 12.3x faster than Python Pool.map", if `row` has a Python case.
pub fn versus_python(row: &Row) -> Option<String> {
    let speedup = row.speedup_vs_python?;
    let python = row.python_case.as_deref()?;
    Some(format!(
        "{}: {} than {python}",
        row.name,
        faster_or_slower(speedup)
    ))
}

/// How many times faster than its Python case `row` was, against a target.
pub fn faster_than_python(row: &Row, min: f64) -> Option<String> {
    let speedup = row.speedup_vs_python?;
    let python = row.python_case.as_deref()?;
    Some(at_least(
        &format!("{}, times faster than {python}", row.name),
        speedup,
        min,
    ))
}

/// Every workload `multiproc bench` runs, in order.
fn workloads() -> Vec<Box<dyn Workload>> {
    vec![
        Box::new(latency::StartJoin),
        Box::new(pool::TinyTasks),
        Box::new(pool::TutorialJob),
        Box::new(apply::ApplyRoundTrip),
        Box::new(values::LargeValues),
        Box::new(zlib::Zlib),
        Box::new(wordcount::WordCount::default()),
        Box::new(ipc::Bandwidth),
        Box::new(ipc::RoundTrip),
        Box::new(ipc::Handoff),
        Box::new(managers::Managers),
        Box::new(cluster::TinyCalls::default()),
        Box::new(cluster::TutorialJob::default()),
        Box::new(cluster::NodeLoss::default()),
    ]
}

/// One row of results.
#[derive(Debug, serde::Serialize)]
pub struct Row {
    pub name: String,
    pub kind: Kind,
    pub median_us: f64,
    pub p10_us: f64,
    pub p90_us: f64,
    pub min_us: f64,
    pub max_us: f64,
    /// Median over the reference's median (time: below 1 is faster than the reference).
    pub ratio: f64,
    /// The Python case this row is compared with, if the workload has one.
    pub python_case: Option<String>,
    /// That case's median over this row's: above 1, this row is that many times faster
    /// than Python; below 1, slower.
    pub speedup_vs_python: Option<f64>,
    /// Median CPU time per repetition, µs, summed over this program's process tree (the
    /// caller, its pools' workers, a Python driver and its pool), where procfs tells.
    pub cpu_us: Option<f64>,
    /// The same case as a program's first call, in fresh processes.
    pub first_call: Option<first_call::FirstCall>,
}

/// All rows of one workload.
#[derive(Debug, serde::Serialize)]
pub struct WorkloadReport {
    pub name: &'static str,
    pub description: &'static str,
    pub reference: &'static str,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    /// Computed from the rows: speed-ups, and each target met or missed.
    pub findings: Vec<String>,
    /// Other processes' CPU use while this workload ran, if procfs could tell.
    pub other_load: Option<OtherLoad>,
    /// Calls per repetition, where the workload counts them (CPU per call).
    pub calls_per_rep: Option<u64>,
}

/// Everything `multiproc bench` measured.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub iters: u64,
    pub warmup: u64,
    pub cpus: usize,
    pub workloads: Vec<WorkloadReport>,
    /// Peak memory of a large `Pool::map`, if the "map memory" workload ran.
    pub memory: Option<memory::MemoryReport>,
}

pub fn run(args: &BenchArgs) -> Result<ExitCode, Box<dyn Error>> {
    warm::warm_cpus(warm::DEFAULT_SPIN);
    let mut report = Report {
        iters: args.iters,
        warmup: args.warmup,
        cpus: multiproc::cpu_count(),
        workloads: Vec::new(),
        memory: None,
    };
    let workloads = workloads();
    let mut names: Vec<&str> = workloads.iter().map(|w| w.name()).collect();
    names.push(memory::NAME);
    for group in workloads.iter().filter_map(|w| w.group()) {
        if !names.contains(&group) {
            names.push(group);
        }
    }
    if let Some(unknown) = args.only.iter().find(|o| !names.contains(&o.as_str())) {
        return Err(format!(
            "no workload named {unknown:?}; there are: {}",
            names.join(", ")
        )
        .into());
    }
    let selected = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    // Workloads that cannot run here, by reason (one note for a group).
    let mut skipped: Vec<(String, Vec<&str>)> = Vec::new();
    for w in &workloads {
        if !selected(w.name()) && !w.group().is_some_and(selected) {
            continue;
        }
        if let Some(why) = w.unavailable() {
            match skipped.iter_mut().find(|(w, _)| *w == why) {
                Some((_, names)) => names.push(w.name()),
                None => skipped.push((why, vec![w.name()])),
            }
            continue;
        }
        let (iters, warmup) = match w.max_iters() {
            Some(max) => (args.iters.min(max), args.warmup.min(1)),
            None => (args.iters, args.warmup),
        };
        let mut measured = measure(&**w, iters, warmup)?;
        if w.first_call() && args.first_call > 0 {
            add_first_calls(&**w, &mut measured, args.first_call);
        }
        report.workloads.push(measured);
    }
    for (why, names) in &skipped {
        eprintln!("bench: skipped {}: {why}", names.join(", "));
    }
    if selected(memory::NAME) {
        report.memory = Some(memory::measure()?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report::print_table(&report);
    }
    if let Some(dir) = &args.plot {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        for w in &report.workloads {
            let path = dir.join(crate::plot::file_name(w.name));
            crate::plot::workload(&path, w, report.iters)
                .map_err(|e| format!("drawing {}: {e}", path.display()))?;
            // stderr: with --json, stdout holds only the JSON.
            eprintln!("bench: chart of {} written to {}", w.name, path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Adds each case's first-call figure, and its speed-up over its Python case's.
fn add_first_calls(w: &dyn Workload, report: &mut WorkloadReport, runs: usize) {
    let names: Vec<String> = report.rows.iter().map(|r| r.name.clone()).collect();
    for (row, first) in report
        .rows
        .iter_mut()
        .zip(first_call::measure(w, &names, runs))
    {
        row.first_call = first;
    }
    let python_first = |name: &str| {
        find(&report.rows, name)
            .and_then(|r| r.first_call.as_ref())
            .map(|f| f.median_us)
    };
    let speedups: Vec<Option<f64>> = report
        .rows
        .iter()
        .map(|r| {
            let py = python_first(r.python_case.as_deref()?)?;
            Some(py / r.first_call.as_ref()?.median_us)
        })
        .collect();
    for (row, speedup) in report.rows.iter_mut().zip(speedups) {
        if let Some(f) = &mut row.first_call {
            f.speedup_vs_python = speedup;
        }
    }
    report.findings.extend(w.first_call_findings(&report.rows));
}

/// Runs a workload's cases round-robin: `warmup` untimed rounds, then `iters` timed.
fn measure(w: &dyn Workload, iters: u64, warmup: u64) -> Result<WorkloadReport, Box<dyn Error>> {
    w.setup()
        .map_err(|e| format!("{}: setting up: {e}", w.name()))?;
    let mut cases = w.cases();
    let fail = |case: &Case, e: Box<dyn Error>| format!("{} / {}: {e}", w.name(), case.name);
    for i in 0..warmup {
        for c in &mut cases {
            (c.run)(i).map_err(|e| fail(c, e))?;
        }
    }
    let meter = LoadMeter::start();
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(iters as usize); cases.len()];
    // CPU per repetition, over this program's whole process tree; `None` once procfs
    // fails to tell for a case.
    let mut cpu: Vec<Option<Vec<Duration>>> = vec![Some(Vec::new()); cases.len()];
    for i in 0..iters {
        for ((c, s), cpu) in cases.iter_mut().zip(&mut samples).zip(&mut cpu) {
            let cpu0 = crate::load::own_tree_cpu_ns();
            s.push((c.run)(i).map_err(|e| fail(c, e))?);
            let used = cpu0
                .zip(crate::load::own_tree_cpu_ns())
                .map(|(a, b)| Duration::from_nanos(b.saturating_sub(a)));
            match (cpu.as_mut(), used) {
                (Some(list), Some(d)) => list.push(d),
                _ => *cpu = None,
            }
        }
    }
    let other_load = meter.finish();

    let summaries: Vec<Summary> = samples
        .iter()
        .map(|s| Summary::of(s).expect("iters >= 1"))
        .collect();
    let reference = cases
        .iter()
        .position(|c| c.name == w.reference())
        .map(|i| summaries[i].median)
        .ok_or_else(|| {
            format!(
                "workload {} has no case named {:?}",
                w.name(),
                w.reference()
            )
        })?;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let pythons: Vec<usize> = (0..cases.len())
        .filter(|&i| cases[i].kind == Kind::Python)
        .collect();
    let python_of = |c: &Case| -> Option<usize> {
        if c.kind == Kind::Python {
            return None;
        }
        match c.python {
            Some(name) => pythons.iter().copied().find(|&i| cases[i].name == name),
            None if pythons.len() == 1 => Some(pythons[0]),
            None => None,
        }
    };
    let rows: Vec<Row> = cases
        .iter()
        .zip(&summaries)
        .zip(&cpu)
        .map(|((c, s), cpu)| {
            let python = python_of(c);
            Row {
                name: c.name.clone(),
                kind: c.kind,
                median_us: us(s.median),
                p10_us: us(s.p10),
                p90_us: us(s.p90),
                min_us: us(s.min),
                max_us: us(s.max),
                ratio: s.median.as_secs_f64() / reference.as_secs_f64(),
                python_case: python.map(|i| cases[i].name.clone()),
                speedup_vs_python: python
                    .map(|i| summaries[i].median.as_secs_f64() / s.median.as_secs_f64()),
                cpu_us: cpu.as_deref().and_then(Summary::of).map(|c| us(c.median)),
                first_call: None,
            }
        })
        .collect();
    Ok(WorkloadReport {
        name: w.name(),
        description: w.description(),
        reference: w.reference(),
        findings: w.findings(&rows),
        rows,
        notes: w.notes(),
        other_load,
        calls_per_rep: w.calls_per_rep(),
    })
}
