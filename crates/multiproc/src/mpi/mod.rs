//! The pool interface on MPI ranks (feature `mpi`): when one machine is not enough.
//!
//! The same program, the same task functions, the same [`TaskPool`](crate::TaskPool)
//! interface as the process pool; only the launcher changes:
//!
//! ```text
//! mpirun -n 3 ./app                              # one machine: rank 0 + 2 workers
//! mpirun --host a:1,b:4,c:4 ./app                # three machines (same path on each)
//! srun --mpi=pmix -n 9 ./app                     # under Slurm
//! ```
//!
//! Rank 0 runs `main`. Every other rank becomes a worker in [`crate::init`] (it
//! initializes MPI, serves tasks from rank 0, finalizes MPI and exits without
//! returning), so call `init()` first in `main`. On rank 0, [`Pool::new`] starts one
//! thread that makes every MPI call of the process (MPI is initialized with
//! `Threading::Funneled` on it), greets the workers and hands them chunks. It drives
//! the same pool core as the process pool (job table, chunking, pipelining, answers
//! of a long chunk in pieces), and the ranks run the same worker loop.
//!
//! ## What travels
//!
//! Exactly what travels to a worker process: the `Run`/`Done` frames of the process
//! pool, encoded by the same codec, one MPI message each, under the same limit per
//! value ([`max_frame_size`](crate::max_frame_size), and never over 2 GiB − 1 − 1 MiB,
//! MPI's count limit less room for the envelope): an argument over it is that call's
//! [`Error::FrameTooLarge`](crate::Error::FrameTooLarge) at once (no rank sees it), a
//! result over it comes back as that call's error. Tasks are found by their offset in the executable, so every rank
//! must run the same build: rank 0's hello carries its build id, and a rank that runs
//! another build refuses; [`Pool::new`] then fails with an [`Error::Mpi`](crate::Error::Mpi) that names the
//! rank and both build ids. Descriptors (pipes, queues, shared memory) cannot cross
//! ranks: such an argument is that call's `Error::Encode` at once (the message says
//! so), such a result is that call's error. Big values travel inline (no shared memory
//! across machines).
//!
//! ## Without a launcher
//!
//! `./app` alone: [`Pool::new`] returns [`Error::Mpi`](crate::Error::Mpi) ("not started by an MPI
//! launcher... use multiproc::Pool for local worker processes") at once, without
//! initializing MPI. There is no silent fallback to local processes: the two pools have
//! different costs and failure modes, and a program that wants one can match the error
//! and build a [`crate::Pool`]. `mpirun -n 1 ./app` (no worker rank): the same error,
//! "this MPI job has 1 rank".
//!
//! ## Failures: MPI is fail-fast
//!
//! - A task that panics on a worker rank: caught there, and the call answers
//!   [`Error::Panicked`](crate::Error::Panicked) with the panic's message, location and
//!   the rank's pid, as in the process pool. The rank goes on serving.
//! - A panic on a worker rank outside a task (or any panic under `panic = "abort"`):
//!   the rank prints it and calls `MPI_Abort` (exit code 101), since unwinding into
//!   `MPI_Finalize` would hang the job.
//! - A worker rank that dies (a signal, the OOM killer, `exit()` in a task): `mpirun`
//!   kills the whole job, rank 0 included, within about a second and exits non-zero,
//!   naming the rank, its pid, host and signal. MPI (Open MPI 4, MPICH, rsmpi) offers no
//!   recovery inside a job, so results not yet returned are lost *loudly*: the program
//!   does not finish, nothing is silently dropped.
//! - A task past the pool's [`task_timeout`](PoolBuilder::task_timeout): its call
//!   answers [`Error::Timeout`](crate::Error::Timeout) and its rank gets no new work; if
//!   the rank has not finished after as long again, rank 0 aborts the job (exit code
//!   124) with a message naming the rank. Without a timeout, a task that never returns
//!   hangs the job, as in any MPI program.
//! - A rank that does not answer rank 0's hello within the
//!   [`hello_timeout`](PoolBuilder::hello_timeout) (60 s): the job is aborted, naming it.
//!
//! ## One pool per process
//!
//! MPI can be initialized once per process. The pool finalizes it when dropped (after
//! its work and after telling every worker to exit), so create one pool and keep it for
//! the whole program; a second [`Pool::new`] in the same process is an [`Error::Mpi`](crate::Error::Mpi).
//! Leaking the pool (or `std::process::exit` while it lives) skips `MPI_Finalize`, which
//! `mpirun` reports as an error.

mod driver;
mod launch;
mod link;
mod pool;
mod worker;

pub use pool::{Pool, PoolBuilder};

/// Exit code of a rank that broke or met a broken protocol: a worker's.
use crate::worker::EXIT_PROTOCOL;
/// Exit code of the job when a worker rank panicked outside a task.
const EXIT_PANIC: i32 = 101;
/// Exit code of the job when a task stayed past twice its timeout.
const EXIT_TIMEOUT: i32 = 124;

/// A worker rank of an MPI [`Pool`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankInfo {
    /// Its rank in `MPI_COMM_WORLD` (≥ 1).
    pub rank: usize,
    /// Its process id, on its host.
    pub pid: u32,
    /// Its host (`MPI_Get_processor_name`).
    pub host: String,
}

/// This process's rank as the MPI launcher announced it (from `OMPI_COMM_WORLD_RANK`,
/// `PMIX_RANK` or `PMI_RANK`), or `None` without a launcher. Does not touch MPI.
pub fn launcher_rank() -> Option<usize> {
    launch::launcher_rank()
}

/// Called by [`crate::init`]: on a worker rank, serves tasks and exits; otherwise
/// returns at once.
pub(crate) fn enter_if_worker() {
    if matches!(launch::launcher_rank(), Some(r) if r > 0) {
        worker::serve();
    }
}
