//! [`Pool`]: the [`TaskPool`] interface on MPI worker ranks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::RankInfo;
use super::manager::{self, Answers, Call, Command, Config, JobSpec};
use super::message::{Batch, Failure};
use crate::error::{Error, Result};
use crate::pool::api::sealed::{Backend, Results};
use crate::pool::{Arg, ChunkSize, Progress, Ret, TaskPool};
use crate::task;

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
    tx: mpsc::Sender<Command>,
    manager: Mutex<Option<JoinHandle<()>>>,
    next_job: AtomicU64,
    closed: AtomicBool,
    ranks: Vec<RankInfo>,
    chunk: ChunkSize,
    progress: Progress,
}

/// Options for an MPI [`Pool`].
#[derive(Debug)]
pub struct PoolBuilder {
    task_timeout: Option<Duration>,
    hello_timeout: Duration,
    chunk: ChunkSize,
    progress: Progress,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            task_timeout: None,
            hello_timeout: Duration::from_secs(60),
            chunk: ChunkSize::Auto,
            progress: Progress::default(),
        }
    }
}

impl PoolBuilder {
    /// A call running longer than this answers [`Error::Timeout`] and its rank gets no
    /// more work; if the rank is still busy after as long again, the MPI job is aborted
    /// (exit code 124), since MPI cannot stop one rank. With a timeout,
    /// [`ChunkSize::Auto`] sends one call at a time.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// How long rank 0 waits for every worker rank's hello (default 60 s); past it the
    /// job is aborted with the ranks that did not answer.
    pub fn hello_timeout(mut self, timeout: Duration) -> Self {
        self.hello_timeout = timeout;
        self
    }

    /// Chunk size policy; default [`ChunkSize::Auto`] (the process pool's rule, aiming
    /// at 10 ms of work per chunk).
    pub fn chunk_size(mut self, chunk: ChunkSize) -> Self {
        self.chunk = chunk;
        self
    }

    /// Progress reporting for `map`, `map_results` and `imap`.
    pub fn progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
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
            task_timeout: self.task_timeout,
            hello_timeout: self.hello_timeout,
        };
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("multiproc-mpi".into())
            .spawn(move || manager::run(cfg, rx, ready_tx))
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
        Ok(Pool {
            tx,
            manager: Mutex::new(Some(handle)),
            next_job: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            ranks,
            chunk: self.chunk,
            progress: self.progress,
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
    pub fn workers(&self) -> usize {
        self.ranks.len()
    }

    fn command(&self, cmd: Command) -> Result<()> {
        self.tx.send(cmd).map_err(|_| Error::PoolClosed)
    }

    fn wait_manager(&self) {
        let handle = self
            .manager
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// Decodes a job's answers into typed results on the manager thread.
fn sink<R: DeserializeOwned + Send + 'static>(
    tx: mpsc::Sender<Vec<(usize, Result<R>)>>,
) -> manager::Sink {
    Box::new(move |answers: Answers| {
        let typed = match answers {
            Answers::Failed(errors) => errors.into_iter().map(|(i, e)| (i, Err(e))).collect(),
            Answers::Chunk {
                pid,
                indices,
                values,
                failures,
            } => decode_chunk(pid, indices, &values, failures),
        };
        let _ = tx.send(typed);
    })
}

impl Backend for Pool {
    fn open<A: Arg, R: Ret>(
        &self,
        f: fn(A) -> R,
        chunk: ChunkSize,
        _caller_driven: bool,
    ) -> Result<(u64, Results<R>)> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::PoolClosed);
        }
        let id = self.next_job.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        self.command(Command::Open(JobSpec {
            id,
            entry: task::task_ref(f),
            sink: sink(tx),
            chunk,
        }))?;
        Ok((id, Results::channel(rx)))
    }

    fn submit<A: Arg, R: Ret>(
        &self,
        job: u64,
        _f: fn(A) -> R,
        first: usize,
        items: Vec<A>,
    ) -> Result<()> {
        let max = super::link::limit();
        let mut calls = Vec::with_capacity(items.len());
        for (k, item) in items.iter().enumerate() {
            let (bytes, fds) = crate::wire::fds::capture(|| crate::wire::encode(item));
            let refused = match bytes {
                Err(e) => Err(e),
                Ok(_) if !fds.is_empty() => Err(Error::Encode {
                    type_name: std::any::type_name::<A>().to_owned(),
                    reason: format!(
                        "it holds {} descriptor(s) (a pipe, queue or shared-memory handle), \
                         which cannot cross MPI ranks; send the data itself",
                        fds.len()
                    ),
                }),
                Ok(b) if b.len() > max => Err(Error::FrameTooLarge {
                    what: "a frame".into(),
                    len: b.len() as u64,
                    max: max as u64,
                }),
                Ok(b) => Ok(b),
            };
            match refused {
                Ok(bytes) => calls.push(Call {
                    job,
                    index: first + k,
                    bytes,
                }),
                Err(e) => {
                    self.cancel(job);
                    return Err(e);
                }
            }
        }
        self.command(Command::Calls(calls))
    }

    fn seal(&self, job: u64) {
        let _ = self.command(Command::Seal(job));
    }

    fn cancel(&self, job: u64) {
        let _ = self.command(Command::Cancel(job));
    }

    fn parallelism(&self) -> usize {
        self.ranks.len()
    }

    fn progress(&self) -> &Progress {
        &self.progress
    }

    fn chunk_size(&self) -> ChunkSize {
        self.chunk
    }
}

impl TaskPool for Pool {
    fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.command(Command::Close);
        }
    }

    /// Drops the work not yet sent (it answers [`Error::PoolTerminated`]). Chunks already
    /// running on a rank finish first: MPI cannot stop one rank.
    fn terminate(&self) {
        self.closed.store(true, Ordering::Release);
        let _ = self.command(Command::Terminate);
        self.wait_manager();
    }

    fn join(&self) -> Result<()> {
        if !self.closed.load(Ordering::Acquire) {
            return Err(Error::PoolNotClosed);
        }
        self.wait_manager();
        Ok(())
    }
}

impl Drop for Pool {
    /// Closes the pool, waits for the work submitted, tells the worker ranks to exit and
    /// finalizes MPI.
    fn drop(&mut self) {
        self.close();
        self.wait_manager();
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mpi::Pool")
            .field("workers", &self.ranks.len())
            .field("chunk", &self.chunk)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

/// Typed results of a chunk a rank answered: call `k` of the chunk is input
/// `indices[k]`; its value is `values[k]` unless `failures` lists `k`. The batch came
/// from another process: a malformed one gives errors, never a panic.
fn decode_chunk<R: DeserializeOwned>(
    pid: u32,
    indices: Vec<usize>,
    values: &Batch,
    failures: Vec<(u32, Failure)>,
) -> Vec<(usize, Result<R>)> {
    let mut failures = failures.into_iter().peekable();
    indices
        .into_iter()
        .enumerate()
        .map(|(k, index)| {
            let failed = failures.next_if(|(at, _)| *at as usize == k);
            let r = match (failed, values.get(k)) {
                (Some((_, f)), _) => Err(task::failure_error(f, pid, index)),
                (None, Some((bytes, _))) => crate::wire::decode(bytes),
                (None, None) => Err(Error::Protocol {
                    pid,
                    detail: "a malformed result batch".into(),
                }),
            };
            (index, r)
        })
        .collect()
}
