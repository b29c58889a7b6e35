//! [`ThreadPool`]: the pool interface on threads of this process, for I/O-bound work
//! (Python's `multiprocessing.pool.ThreadPool`).
//!
//! Calls run in this process: no encoding, no fork, no isolation. A panicking call
//! answers [`Error::Panicked`]; there are no per-call timeouts or worker replacement,
//! since a thread cannot be killed.
//!
//! ## Chunks
//!
//! Calls go to the threads in chunks, one queue entry each: a chunk's calls run in
//! order on one thread and their answers reach the caller together.
//! [`ThreadPoolBuilder::chunk_size`] sets the size: `Fixed(n)` is `n` calls, as in the
//! process pool; `Auto` is Python's rule for `map`, `ceil(len / (4 × threads))` of the
//! calls submitted at once, but at most 1024, so that `imap` and progress see answers
//! while a long map runs (Python's `imap` defaults to 1 call a chunk instead, and its
//! `map` has no cap). A job is typed by its result ([`job`]): a chunk is a closure
//! that owns its arguments and hands its answers to its own job, so no answer can
//! reach a job of another type.

mod job;
mod shared;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;

use self::job::{Job, JobRef};
use self::shared::{Entry, Flags, Shared, State};
use crate::error::{Error, Result};
use crate::pool::backend::{Backend, Control, JobId, Results};
use crate::pool::batch::BatchSink;
use crate::pool::options::{PoolOptions, option_setters};
use crate::pool::{Arg, ChunkSize, Progress, Ret, TaskPool};

/// A pool of threads with the [`TaskPool`] interface.
///
/// ```
/// use multiproc::prelude::*;
/// fn fetch(id: u32) -> String { format!("item {id}") }
///
/// # fn main() -> multiproc::Result<()> {
/// let pool = ThreadPool::new(4)?;
/// let pages: Vec<String> = pool.map(fetch, 0..3)?;
/// assert_eq!(pages[2], "item 2");
/// # Ok(()) }
/// ```
pub struct ThreadPool {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    n: usize,
    next_job: AtomicU64,
    chunk: ChunkSize,
    progress: Progress,
}

/// Options for a [`ThreadPool`].
#[derive(Default)]
pub struct ThreadPoolBuilder {
    threads: Option<usize>,
    initializer: Option<Arc<dyn Fn() + Send + Sync>>,
    options: PoolOptions,
}

impl ThreadPoolBuilder {
    /// Number of threads; default [`cpu_count`](crate::cpu_count). 0 makes
    /// [`build`](ThreadPoolBuilder::build) fail with
    /// [`Error::InvalidArgument`], as Python's
    /// `ThreadPoolExecutor(0)` raises `ValueError`.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self
    }

    /// Runs `f(args.clone())` once on each thread before its first call.
    pub fn initializer<A: Clone + Send + Sync + 'static>(mut self, f: fn(A), args: A) -> Self {
        self.initializer = Some(Arc::new(move || f(args.clone())));
        self
    }

    option_setters! { options;
        /// Calls per unit of work (a chunk: its calls run in order on one thread, and
        /// their answers reach the caller together); default [`ChunkSize::Auto`].
        /// `Fixed(n)`: `n` calls. `Auto`: a quarter of each thread's share of what is
        /// submitted at once (`ceil(len / (4 × threads))`, Python's rule), at most 1024.
        ///
        /// ```
        /// use multiproc::{ChunkSize, ThreadPool};
        /// fn id(x: u32) -> u32 { x }
        ///
        /// # fn main() -> multiproc::Result<()> {
        /// let pool = ThreadPool::builder().threads(2).chunk_size(ChunkSize::Fixed(64)).build()?;
        /// assert_eq!(pool.map(id, 0..1000)?.len(), 1000);
        /// # Ok(()) }
        /// ```
        fn chunk_size(chunk: ChunkSize);

        /// Progress reporting for `map`, `map_results` and `imap`.
        fn progress(progress: Progress);
    }

    /// Starts the threads. Errors: [`Error::InvalidArgument`] for `threads(0)`.
    pub fn build(self) -> Result<ThreadPool> {
        if self.threads == Some(0) {
            return Err(Error::InvalidArgument {
                detail: "a thread pool needs at least 1 thread, not 0 (leave the count out \
                         for one per CPU)"
                    .into(),
            });
        }
        let n = self.threads.unwrap_or_else(crate::cpu_count);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
                jobs: HashMap::new(),
            }),
            work: Condvar::new(),
        });
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let shared = shared.clone();
            let init = self.initializer.clone();
            let t = std::thread::Builder::new()
                .name(format!("multiproc-thread-{i}"))
                .spawn(move || {
                    if let Some(init) = init {
                        init();
                    }
                    run_thread(&shared);
                })
                .map_err(|e| Error::io("starting a pool thread", e))?;
            threads.push(t);
        }
        Ok(ThreadPool {
            shared,
            threads: Mutex::new(threads),
            n,
            next_job: AtomicU64::new(0),
            chunk: self.options.chunk,
            progress: self.options.progress,
        })
    }
}

fn run_thread(shared: &Shared) {
    loop {
        let work = {
            let mut st = shared.lock();
            loop {
                if let Some(w) = st.queue.pop_front() {
                    break w;
                }
                if st.closed {
                    return;
                }
                st = shared.work.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        };
        work();
    }
}

impl ThreadPool {
    /// A pool of `threads` threads; 0 is refused with [`Error::InvalidArgument`].
    pub fn new(threads: usize) -> Result<ThreadPool> {
        ThreadPool::builder().threads(threads).build()
    }

    /// A [`ThreadPoolBuilder`].
    pub fn builder() -> ThreadPoolBuilder {
        ThreadPoolBuilder::default()
    }

    /// Number of threads.
    pub fn threads(&self) -> usize {
        self.n
    }
}

/// An `AsyncResult`'s view of its job: cancel it, see it run.
struct AsyncJob {
    shared: Arc<Shared>,
    flags: Arc<Flags>,
}

impl Control for AsyncJob {
    /// A thread cannot be killed: a running call runs to its end, its answer is
    /// thrown away.
    fn cancel(&self, job: u64, _stop_running: bool) {
        self.flags.cancel();
        self.shared.cancel(job);
    }

    fn running(&self, _job: u64) -> bool {
        self.flags.running()
    }
}

impl ThreadPool {
    /// Registers a new job, unless the pool is closed.
    fn register<R: Ret>(&self, job: Arc<Job<R>>) -> Result<JobRef<R>> {
        let mut st = self.shared.lock();
        if st.closed {
            drop(st);
            drop(job); // outside the lock (see `Shared::seal`)
            return Err(Error::PoolClosed);
        }
        let handle = job.handle();
        let entry = Entry {
            flags: job.flags().clone(),
            hold: Some(job),
        };
        st.jobs.insert(handle.id(), entry);
        Ok(handle)
    }

    /// A new job's id, and the pool it tells when it is over.
    fn next_id(&self) -> (u64, Weak<Shared>) {
        let id = self.next_job.fetch_add(1, Ordering::Relaxed);
        (id, Arc::downgrade(&self.shared))
    }
}

impl Backend for ThreadPool {
    type Job<A: Arg, R: Ret> = JobRef<R>;

    fn open<A: Arg, R: Ret>(
        &self,
        _f: fn(A) -> R,
        chunk: ChunkSize,
        _caller_driven: bool,
    ) -> Result<(JobRef<R>, Results<R>)> {
        let (id, pool) = self.next_id();
        let (job, rx) = Job::channel(id, pool, chunk, self.n);
        Ok((self.register(job)?, Results::channel(rx)))
    }

    fn open_async<A: Arg, R: Ret>(
        &self,
        _f: fn(A) -> R,
        chunk: ChunkSize,
        sink: Arc<dyn BatchSink<R>>,
    ) -> Result<(JobRef<R>, Arc<dyn Control>)> {
        let (id, pool) = self.next_id();
        let job = Job::sink(id, pool, chunk, self.n, sink);
        let control = AsyncJob {
            shared: self.shared.clone(),
            flags: job.flags().clone(),
        };
        Ok((self.register(job)?, Arc::new(control)))
    }

    fn submit<A: Arg, R: Ret>(
        &self,
        job: &JobRef<R>,
        f: fn(A) -> R,
        first: usize,
        items: Vec<A>,
    ) -> Result<()> {
        // Gone only after a cancel or terminate took the pool's hold on it.
        let Some(job) = job.get() else {
            return Err(Error::PoolClosed);
        };
        let works = job.chunks(f, first, items);
        let mut st = self.shared.lock();
        if st.closed {
            drop(st);
            // Outside the lock (see `Shared::seal`).
            drop((works, job));
            return Err(Error::PoolClosed);
        }
        st.queue.extend(works);
        drop(st);
        self.shared.work.notify_all();
        drop(job);
        Ok(())
    }

    fn seal(&self, job: u64) {
        self.shared.seal(job);
    }

    fn cancel(&self, job: u64, _stop_running: bool) {
        self.shared.cancel(job);
    }

    fn parallelism(&self) -> usize {
        self.n
    }

    fn progress(&self) -> &Progress {
        &self.progress
    }

    fn chunk_size(&self) -> ChunkSize {
        self.chunk
    }
}

impl TaskPool for ThreadPool {
    fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_all();
    }

    /// Drops queued calls (they answer [`Error::PoolTerminated`]); calls already
    /// running on a thread finish, since a thread cannot be killed.
    fn terminate(&self) {
        let mut st = self.shared.lock();
        st.closed = true;
        // Dropped after the lock (see `Shared::seal`).
        let queued = std::mem::take(&mut st.queue);
        let jobs = std::mem::take(&mut st.jobs);
        drop(st);
        drop((queued, jobs));
        self.shared.work.notify_all();
    }

    fn join(&self) -> Result<()> {
        if !self.shared.lock().closed {
            return Err(Error::PoolNotClosed);
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
        Ok(())
    }
}

crate::pool::api::inherent_task_pool_methods!(ThreadPool);

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.close();
        let _ = self.join();
    }
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.n)
            .finish()
    }
}
