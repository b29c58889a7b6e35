//! Peak memory of a large `Pool::map`: 10,000,000 `u64`s in, 10,000,000 out, in a
//! fresh process (this binary re-executed), so that nothing the benchmark allocated
//! before counts; the peak (`VmHWM`) is held against the 160 MB that an input and an
//! output vector of that length take. (`u64 -> u64` writes its results over the
//! arguments, in their vector: the peak can be half of that.)

use std::error::Error;
use std::process::{Command, ExitCode};
use std::time::Instant;

use super::at_most;
use super::pool::{double, started_pool};

/// The workload's name, as `--only` takes it.
pub const NAME: &str = "map memory";
/// The hidden subcommand that runs the measurement in the fresh process.
pub const CHILD_COMMAND: &str = "bench-rss";
const ITEMS: u64 = 10_000_000;
const MIB: f64 = (1u64 << 20) as f64;

/// What the fresh process measured.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct MemoryReport {
    pub items: u64,
    /// The input and output vectors: 8 bytes per item each, in MB (10^6 bytes).
    pub vectors_mb: f64,
    /// Resident memory just before the map (the program and a started pool), MiB.
    pub before_mib: f64,
    /// Peak resident memory of the process that called `map` (`VmHWM`), MiB.
    pub peak_mib: f64,
    /// The peak over the vectors' bytes: the target is at most 3.
    pub peak_over_vectors: f64,
    /// How long the map took.
    pub seconds: f64,
    /// Whether the peak met that target.
    pub finding: String,
}

/// Runs the measurement in a fresh copy of this program and reads its report.
pub fn measure() -> Result<MemoryReport, Box<dyn Error>> {
    let exe = std::path::Path::new("/proc/self/exe");
    let exe = if exe.exists() {
        exe.to_path_buf()
    } else {
        std::env::current_exe()?
    };
    let out = Command::new(exe).arg(CHILD_COMMAND).output()?;
    if !out.status.success() {
        return Err(format!(
            "{NAME}: the measuring process failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The fresh process's side: one map, then its peak, as JSON on stdout.
pub fn run_child() -> Result<ExitCode, Box<dyn Error>> {
    let pool = started_pool(multiproc::cpu_count())?;
    let before = status_kib("VmRSS:")?;
    let t = Instant::now();
    let out: Vec<u64> = pool.map(double, 0..ITEMS)?;
    let seconds = t.elapsed().as_secs_f64();
    let peak = status_kib("VmHWM:")?;
    if out.len() as u64 != ITEMS || out.iter().enumerate().any(|(i, &v)| v != 2 * i as u64) {
        return Err("wrong results from a map of x -> 2x".into());
    }
    let vectors = 2 * ITEMS * 8;
    let peak_over_vectors = (peak * 1024) as f64 / vectors as f64;
    let report = MemoryReport {
        items: ITEMS,
        vectors_mb: vectors as f64 / 1e6,
        before_mib: (before * 1024) as f64 / MIB,
        peak_mib: (peak * 1024) as f64 / MIB,
        peak_over_vectors,
        seconds,
        finding: at_most("peak RSS over the vectors' bytes", peak_over_vectors, 3.0),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(ExitCode::SUCCESS)
}

/// A `kB` field of `/proc/self/status`.
fn status_kib(field: &str) -> Result<u64, Box<dyn Error>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no {field} in /proc/self/status").into())
}
