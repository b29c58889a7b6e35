//! Running Open MPI jobs from a test: one at a time, under a time limit, with their
//! shared-memory segments in a directory of their own (removed afterwards).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One MPI job at a time: they share two cores.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// Root, oversubscription, no UCX probing (it halves start-up), loopback only, and
/// yield when idle (ranks share 2 cores; without it, messages stall for milliseconds).
pub const MPI_ENV: [(&str, &str); 8] = [
    ("OMPI_ALLOW_RUN_AS_ROOT", "1"),
    ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
    ("OMPI_MCA_rmaps_base_oversubscribe", "1"),
    ("OMPI_MCA_pml", "ob1"),
    ("OMPI_MCA_osc", "^ucx"),
    ("OMPI_MCA_btl_tcp_if_include", "lo"),
    ("OMPI_MCA_oob_tcp_if_include", "lo"),
    ("OMPI_MCA_mpi_yield_when_idle", "1"),
];

/// A directory of its own for one job's shared-memory segments, removed afterwards:
/// a job that aborts (as some tests make it) leaves its segments behind, which in
/// `/dev/shm` would outlive the tests.
pub struct ShmDir(pub PathBuf);

impl ShmDir {
    pub fn new() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("multiproc-mpi-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating a directory for MPI segments");
        ShmDir(dir)
    }
}

impl Drop for ShmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn have_mpirun() -> bool {
    let found = Command::new("sh")
        .args(["-c", "command -v mpirun"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "SKIPPED: mpirun is not installed (Debian: apt-get install openmpi-bin libopenmpi-dev)"
        );
    }
    found
}

/// Runs `mpirun <args>` under `timeout -k 5 60` (a stuck job must not hang the tests).
pub fn mpirun(args: &[&str]) -> (Output, Duration) {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let shm = ShmDir::new();
    let started = Instant::now();
    let out = Command::new("timeout")
        .args(["-k", "5", "60", "mpirun"])
        .args(args)
        .envs(MPI_ENV)
        .env("OMPI_MCA_btl_vader_backing_directory", &shm.0)
        .output()
        .expect("running timeout mpirun");
    drop(shm);
    let took = started.elapsed();
    eprintln!(
        "mpirun {args:?}: {:?} in {took:?}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, took)
}
