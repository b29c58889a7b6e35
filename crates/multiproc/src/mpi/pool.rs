//! [`Pool`]: the [`TaskPool`] interface on MPI worker ranks.

use std::sync::{Arc, mpsc};
use std::time::Duration;

use super::RankInfo;
use super::driver::{self, Config, Shared};
use crate::error::{Error, Result};
use crate::pool::core::{Config as CoreConfig, Core};
use crate::pool::options::{PoolOptions, option_setters};
use crate::pool::remote::RemotePool;
use crate::pool::{ChunkSize, Progress};

/// A pool whose workers are the other ranks of an MPI job (feature `mpi`).
///
/// Start the program with `mpirun -n N ./app` (N ≥ 2): rank 0 runs `main`; every
/// other rank becomes a worker in [`crate::init`]. The pool has the same interface as
/// the process [`Pool`](crate::Pool): `map`, `imap`, `imap_unordered`, `apply_async`...
///
/// ```no_run
/// use multiproc::prelude::*;
///
/// fn square(x: u64) -> u64 { x * x }
///
/// fn main() -> multiproc::Result<()> {
///     multiproc::init(); // ranks >= 1 serve tasks here and never return
///     let pool = multiproc::mpi::Pool::new()?; // an Error::Mpi without mpirun
///     assert_eq!(pool.map(square, 1..=4)?, vec![1, 4, 9, 16]);
///     Ok(())
/// }
/// ```
///
/// One pool per process: MPI can be initialized once, and the pool finalizes it when
/// dropped (after telling every worker rank to exit). See the [module
/// docs](crate::mpi) for failures.
pub struct Pool {
    remote: RemotePool,
    ranks: Vec<RankInfo>,
}

/// Options for an MPI [`Pool`].
#[derive(Debug)]
pub struct PoolBuilder {
    options: PoolOptions,
    hello_timeout: Duration,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            options: PoolOptions::default(),
            hello_timeout: Duration::from_secs(60),
        }
    }
}

impl PoolBuilder {
    option_setters! { options;
        /// A call running longer than this answers [`Error::Timeout`] and its rank gets no
        /// more work; if the rank is still busy after as long again, the MPI job is aborted
        /// (exit code 124), since MPI cannot stop one rank. With a timeout,
        /// [`ChunkSize::Auto`] sends one call at a time.
        fn task_timeout(timeout: Duration);
    }

    /// How long rank 0 waits for every worker rank's hello (default 60 s); past it the
    /// job is aborted with the ranks that did not answer.
    pub fn hello_timeout(mut self, timeout: Duration) -> Self {
        self.hello_timeout = timeout;
        self
    }

    option_setters! { options;
        /// Chunk size policy; default [`ChunkSize::Auto`] (the process pool's rule; see
        /// [`crate::pool`]).
        fn chunk_size(chunk: ChunkSize);

        /// Progress reporting for `map`, `map_results` and `imap`.
        fn progress(progress: Progress);
    }

    /// Initializes MPI, greets the worker ranks and checks they run this build.
    ///
    /// Errors ([`Error::Mpi`]) without an MPI launcher (without even initializing MPI),
    /// with a single rank, when a pool was already created in this process, or when a
    /// rank runs another build. On a worker rank (if `main` did not call
    /// [`crate::init`] first) it serves tasks and never returns.
    pub fn build(self) -> Result<Pool> {
        match super::launch::launcher_rank() {
            None => {
                return Err(Error::Mpi {
                    detail: "this program was not started by an MPI launcher: run it with \
                             `mpirun -n N` (N >= 2: rank 0 runs main, the others run tasks), or \
                             use multiproc::Pool for local worker processes"
                        .into(),
                });
            }
            Some(0) => {}
            Some(_) => super::worker::serve(),
        }
        let cfg = Config {
            task_timeout: self.options.task_timeout,
            hello_timeout: self.hello_timeout,
        };
        // The worker count is known once the ranks answered; the core learns it below.
        let core = Core::new(CoreConfig {
            workers: 1,
            retries: 0,
            task_timeout: self.options.task_timeout,
            max_tasks_per_child: None,
            pipeline: false,
            chunk_time: crate::pool::core::chunking::LOCAL,
        });
        let shared = Arc::new(Shared::new(core));
        let (ready_tx, ready_rx) = mpsc::channel();
        let mpi_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("multiproc-mpi".into())
            .spawn(move || driver::run(cfg, mpi_shared, ready_tx))
            .map_err(|e| Error::io("starting the MPI pool's manager thread", e))?;
        let ranks = match ready_rx.recv() {
            Ok(Ok(ranks)) => ranks,
            Ok(Err(e)) => {
                let _ = handle.join();
                return Err(e);
            }
            Err(_) => {
                let _ = handle.join();
                return Err(Error::Mpi {
                    detail: "the MPI pool's manager thread ended during start-up".into(),
                });
            }
        };
        shared.lock().core.set_workers(ranks.len());
        Ok(Pool {
            remote: RemotePool::new(shared, handle, self.options.chunk, self.options.progress),
            ranks,
        })
    }
}

impl Pool {
    /// A pool on every other rank of the MPI job, with default options.
    pub fn new() -> Result<Pool> {
        Pool::builder().build()
    }

    /// A [`PoolBuilder`].
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The worker ranks: rank number, pid and host of each.
    pub fn ranks(&self) -> &[RankInfo] {
        &self.ranks
    }

    /// Number of worker ranks (the job's size minus one).
    pub fn processes(&self) -> usize {
        self.ranks.len()
    }

    fn parallelism_now(&self) -> usize {
        self.ranks.len()
    }
}

crate::pool::remote::remote_pool_impls!(Pool);

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mpi::Pool")
            .field("ranks", &self.ranks)
            .field("chunk", &self.remote.chunk)
            .field("closed", &self.remote.is_closed())
            .finish()
    }
}
