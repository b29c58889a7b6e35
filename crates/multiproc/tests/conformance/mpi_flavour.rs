//! The MPI flavour: ranks 1 and 2 of an `mpirun -n 3` job as the pool's workers. One pool
//! per process (MPI is initialized once), so each test re-runs this binary under
//! `mpirun`, asking for itself alone; there rank 0 runs the check and the other ranks
//! serve in `multiproc::init()`. Without `mpirun` the tests say so and pass (as `mpi.rs`).

use super::common::mpi::{have_mpirun, mpirun};
use super::contract::{Caps, Flavour, WORKERS};

pub struct Mpi;

impl Flavour for Mpi {
    type P = multiproc::mpi::Pool;
    /// One rank cannot be stopped without the whole job: a running call runs to its end
    /// (documented on `AsyncResult::cancel` and the remote pools' `terminate`).
    const CAPS: Caps = Caps {
        cancel_stops_running: false,
        terminate_stops_running: false,
        terminate_delivers_running: false,
    };

    fn with_pool(f: impl FnOnce(&Self::P)) {
        let pool = multiproc::mpi::Pool::new().unwrap();
        f(&pool);
        // Dropping it tells the ranks to exit and finalizes MPI; `mpirun` then checks
        // that every rank exited cleanly.
    }

    fn workers(p: &Self::P) -> usize {
        p.ranks().len()
    }

    fn run(test: &str, check: fn()) {
        if multiproc::mpi::launcher_rank().is_some() {
            multiproc::init(); // ranks >= 1 serve here and never return
            check();
            return;
        }
        if !have_mpirun() {
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let n = (WORKERS + 1).to_string();
        let (out, _) = mpirun(&[
            "-n",
            &n,
            exe.to_str().unwrap(),
            "--exact",
            test,
            "--nocapture",
            "--test-threads=1",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{test} under mpirun failed");
        assert!(stdout.contains("1 passed"), "{test} did not run: {stdout}");
    }
}
