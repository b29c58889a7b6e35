//! [`Pool`]: a pool of worker processes that survives crashed workers.
//!
//! Python's `Pool` hangs forever when a worker is killed, and `ProcessPoolExecutor`
//! fails every pending task. Here a worker that dies — a panic under
//! `panic = "abort"`, a segfault, SIGKILL from outside, the OOM killer — costs only the
//! call(s) it held: they come back as [`Error::Killed`](crate::Error::Killed) (or
//! are retried, if [`PoolBuilder::retries`] allows), a new worker takes its place, and
//! every other call completes. A call past its [`PoolBuilder::task_timeout`] has its
//! worker killed and replaced and answers [`Error::Timeout`](crate::Error::Timeout).
//!
//! ## Chunking
//!
//! Tiny calls must not pay a round trip each, so calls travel to workers in chunks.
//! [`ChunkSize::Auto`] (the default) sizes each chunk as the smaller of
//! - a fair share: the job's outstanding calls / (4 × workers), rounded up, so the
//!   tail of a job still spreads over every worker (Python's rule), and
//! - what runs in about 5 ms at the call time measured so far (the first chunk of a
//!   job, before anything is measured, is 16 calls),
//!
//! and at least 1. With a [`task_timeout`](PoolBuilder::task_timeout) the automatic
//! size is 1, so that the timeout applies to each call. [`ChunkSize::Fixed`] sets it.
//! Whatever the size, a chunk stops growing once its arguments pass 4 MiB, so large
//! arguments travel a few at a time.

pub(crate) mod api;
mod handle;
mod manager;
mod progress;
mod worker;

pub use api::{Arg, Ret, TaskPool};
pub use handle::{AsyncResult, Imap, Indexed};
pub use progress::{Progress, ProgressFn};

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

use crate::error::{Error, Result};
use crate::start::StartMethod;
use crate::task::{self, TaskRef};
use crate::wire;
use api::sealed::{Backend, Results};
use manager::{Answers, Command, Config, JobSpec, Manager};
use worker::Call;

/// How calls are grouped into chunks sent to one worker at a time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChunkSize {
    /// Sized by the pool; see the [module docs](crate::pool#chunking) for the rule.
    #[default]
    Auto,
    /// Exactly this many calls per chunk (0 counts as 1).
    Fixed(usize),
}

/// A pool of worker processes.
///
/// ```
/// use multiproc::prelude::*;
///
/// fn work((start, end): (u64, u64)) -> u64 { (start..end).sum() }
///
/// # fn main() -> multiproc::Result<()> {
/// multiproc::init();
/// let pool = Pool::new(2)?;
/// let sums = pool.map(work, [(0, 1000), (1000, 2000)])?;
/// assert_eq!(sums.iter().sum::<u64>(), 1_999_000);
/// # Ok(()) }
/// ```
///
/// Dropping a pool closes it, waits for the work already submitted, and lets its
/// workers exit; [`terminate`](TaskPool::terminate) stops at once.
pub struct Pool {
    tx: mpsc::Sender<Command>,
    wake: UnixStream,
    manager: Mutex<Option<JoinHandle<()>>>,
    next_job: AtomicU64,
    closed: AtomicBool,
    processes: usize,
    chunk: ChunkSize,
    progress: Progress,
}

/// Options for a [`Pool`].
///
/// ```
/// use std::time::Duration;
/// use multiproc::prelude::*;
///
/// fn setup(greeting: String) { let _ = greeting; }
///
/// # fn main() -> multiproc::Result<()> {
/// let pool = Pool::builder()
///     .processes(2)
///     .start_method(StartMethod::ForkServer)
///     .initializer(setup, "hello".to_string())
///     .max_tasks_per_child(1000)
///     .task_timeout(Duration::from_secs(60))
///     .retries(1)
///     .chunk_size(ChunkSize::Auto)
///     .build()?;
/// # drop(pool);
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct PoolBuilder {
    processes: Option<usize>,
    method: Option<StartMethod>,
    initializer: Option<(TaskRef, ByteBuf)>,
    init_error: Option<String>,
    max_tasks_per_child: Option<usize>,
    task_timeout: Option<Duration>,
    retries: u32,
    chunk: ChunkSize,
    progress: Progress,
}

impl PoolBuilder {
    /// Number of worker processes; default [`cpu_count`](crate::cpu_count).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n.max(1));
        self
    }

    /// How workers are started; default [`get_start_method`](crate::get_start_method).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Runs `f(args)` once in each worker before its first call (to open a
    /// connection, load a model...). A worker whose initializer fails is replaced; if
    /// it fails in 3 workers in a row and never succeeded, the pool's calls answer
    /// [`Error::Initializer`].
    pub fn initializer<A: Serialize + DeserializeOwned>(mut self, f: fn(A), args: A) -> Self {
        match wire::encode(&args) {
            Ok(bytes) => self.initializer = Some((TaskRef::of(f), ByteBuf::from(bytes))),
            Err(e) => self.init_error = Some(e.to_string()),
        }
        self
    }

    /// Replaces a worker after it has run this many calls (to bound leaks).
    pub fn max_tasks_per_child(mut self, n: usize) -> Self {
        self.max_tasks_per_child = Some(n.max(1));
        self
    }

    /// Kills and replaces a worker whose call runs longer than this; the call answers
    /// [`Error::Timeout`].
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// How many times a call whose worker died is run again (alone, on a new worker)
    /// before its error is returned. Default 0. Panics and timeouts are not retried.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Chunk size policy; default [`ChunkSize::Auto`].
    pub fn chunk_size(mut self, chunk: ChunkSize) -> Self {
        self.chunk = chunk;
        self
    }

    /// Progress reporting for `map`, `map_results` and `imap`.
    pub fn progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// Starts the pool and its workers.
    pub fn build(self) -> Result<Pool> {
        if let Some(reason) = self.init_error {
            return Err(Error::Encode {
                type_name: "initializer argument".into(),
                reason,
            });
        }
        let processes = self.processes.unwrap_or_else(crate::cpu_count);
        let cfg = Config {
            processes,
            method: self.method.unwrap_or_else(crate::get_start_method),
            initializer: self.initializer,
            max_tasks_per_child: self.max_tasks_per_child,
            task_timeout: self.task_timeout,
            retries: self.retries,
        };
        let (wake, wake_rx) = UnixStream::pair().map_err(|e| Error::io("creating a pool", e))?;
        for s in [&wake, &wake_rx] {
            s.set_nonblocking(true)
                .map_err(|e| Error::io("creating a pool", e))?;
        }
        let (tx, rx) = mpsc::channel();
        let manager = Manager::new(cfg, rx, wake_rx);
        let handle = std::thread::Builder::new()
            .name("multiproc-pool".into())
            .spawn(move || manager.run())
            .map_err(|e| Error::io("starting the pool's manager thread", e))?;
        Ok(Pool {
            tx,
            wake,
            manager: Mutex::new(Some(handle)),
            next_job: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            processes,
            chunk: self.chunk,
            progress: self.progress,
        })
    }
}

impl Pool {
    /// A pool of `processes` workers with default options.
    pub fn new(processes: usize) -> Result<Pool> {
        Pool::builder().processes(processes).build()
    }

    /// A [`PoolBuilder`].
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// Number of worker processes.
    pub fn processes(&self) -> usize {
        self.processes
    }

    fn command(&self, cmd: Command) -> Result<()> {
        self.tx.send(cmd).map_err(|_| Error::PoolClosed)?;
        // A full wake-up socket already has a wake-up pending.
        let _ = (&self.wake).write(&[1]);
        Ok(())
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
                fds,
            } => task::decode_chunk(pid, indices, &values, failures, fds),
        };
        let _ = tx.send(typed);
    })
}

impl Backend for Pool {
    fn open<A: Arg, R: Ret>(&self, f: fn(A) -> R, chunk: ChunkSize) -> Result<(u64, Results<R>)> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::PoolClosed);
        }
        let id = self.next_job.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        self.command(Command::Open(JobSpec {
            id,
            entry: TaskRef::of(f),
            sink: sink(tx),
            chunk,
        }))?;
        Ok((id, rx))
    }

    fn submit<A: Arg, R: Ret>(
        &self,
        job: u64,
        _f: fn(A) -> R,
        first: usize,
        items: Vec<A>,
    ) -> Result<()> {
        let mut calls = Vec::with_capacity(items.len());
        for (k, item) in items.iter().enumerate() {
            let (bytes, fds) = wire::fds::capture(|| wire::encode(item));
            let bytes = match bytes {
                Ok(b) => b,
                Err(e) => {
                    self.cancel(job);
                    return Err(e);
                }
            };
            calls.push(Call {
                job,
                index: first + k,
                bytes,
                fds,
                attempts: 0,
            });
        }
        self.command(Command::Calls(job, calls))
    }

    fn seal(&self, job: u64) {
        let _ = self.command(Command::Seal(job));
    }

    fn cancel(&self, job: u64) {
        let _ = self.command(Command::Cancel(job));
    }

    fn parallelism(&self) -> usize {
        self.processes
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

api::inherent_task_pool_methods!(Pool);

impl Drop for Pool {
    fn drop(&mut self) {
        self.close();
        self.wait_manager();
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.processes)
            .field("chunk", &self.chunk)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}
