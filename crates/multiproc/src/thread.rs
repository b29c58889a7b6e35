//! [`ThreadPool`]: the pool interface on threads of this process, for I/O-bound work
//! (Python's `multiprocessing.pool.ThreadPool`).
//!
//! Calls run in this process: no encoding, no fork, no isolation. A panicking call
//! answers [`Error::Panicked`]; there are no per-call timeouts or worker replacement,
//! since a thread cannot be killed.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak, mpsc};
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::pool::api::sealed::{Backend, Batch, BatchSink, Control, Results};
use crate::pool::{Arg, ChunkSize, Progress, Ret, TaskPool};

type Work = Box<dyn FnOnce() + Send>;

/// Where a job's answers go: a channel (a caller pulls them) or an `AsyncResult`'s
/// sink. Every queued chunk holds a clone; when the last is gone (run or dropped) and
/// the job is sealed, the job is over (the channel disconnects, the sink hears `end`).
type Deliver<R> = Arc<dyn Fn(Vec<(usize, Result<R>)>) + Send + Sync>;

/// A job's state shared with its chunks and its handle.
#[derive(Default)]
struct JobFlags {
    cancelled: AtomicBool,
    running: AtomicUsize,
}

struct State {
    queue: VecDeque<Work>,
    closed: bool,
    /// Each open job's `Deliver<R>` (as `Any`) and flags. Sealing drops this copy of
    /// the `Deliver`.
    jobs: HashMap<u64, (Box<dyn Any + Send>, Arc<JobFlags>)>,
    /// Each sealed job's flags while a chunk of it is queued or running (the chunks
    /// hold them): so that a job cancelled after its seal (a map's timeout or error, a
    /// dropped `imap`) still drops its queued chunks.
    sealed: HashMap<u64, Weak<JobFlags>>,
    /// `sealed`'s length after its last pruning of finished jobs.
    sealed_pruned: usize,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

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
    chunk: ChunkSize,
    progress: Progress,
}

impl ThreadPoolBuilder {
    /// Number of threads; default [`cpu_count`](crate::cpu_count). 0 makes
    /// [`build`](ThreadPoolBuilder::build) fail with
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument), as Python's
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

    /// Calls per queue entry; default [`ChunkSize::Auto`] (a quarter of each thread's
    /// share of a map, at most 1024).
    pub fn chunk_size(mut self, chunk: ChunkSize) -> Self {
        self.chunk = chunk;
        self
    }

    /// Progress reporting for `map`, `map_results` and `imap`.
    pub fn progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
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
                sealed: HashMap::new(),
                sealed_pruned: 0,
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
            chunk: self.chunk,
            progress: self.progress,
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

fn panicked(payload: Box<dyn Any + Send>) -> Error {
    Error::Panicked {
        pid: std::process::id(),
        message: crate::error::panic_message(payload.as_ref()),
        backtrace: None,
        location: None,
    }
}

/// An `AsyncResult`'s view of its job: cancel it, see it run.
struct ThreadJob {
    shared: Arc<Shared>,
    flags: Arc<JobFlags>,
}

impl Control for ThreadJob {
    /// A thread cannot be killed: a running call runs to its end, its answer is
    /// thrown away.
    fn cancel(&self, job: u64, _stop_running: bool) {
        self.flags.cancelled.store(true, Ordering::Relaxed);
        // Dropped after the lock: the last `Deliver` ends its sink, which may run
        // callbacks that use this pool.
        let removed = self.shared.lock().jobs.remove(&job);
        drop(removed);
    }

    fn running(&self, _job: u64) -> bool {
        self.flags.running.load(Ordering::Relaxed) > 0
    }
}

/// Tells a sink its job is over when the last chunk holding it is gone.
struct EndOnDrop<R>(Arc<dyn BatchSink<R>>);

impl<R> Drop for EndOnDrop<R> {
    fn drop(&mut self) {
        self.0.end();
    }
}

impl ThreadPool {
    fn open_with<R: Ret>(&self, deliver: Deliver<R>) -> Result<(u64, Arc<JobFlags>)> {
        let mut st = self.shared.lock();
        if st.closed {
            drop(st);
            drop(deliver); // outside the lock (see `ThreadJob::cancel`)
            return Err(Error::PoolClosed);
        }
        let id = self.next_job.fetch_add(1, Ordering::Relaxed);
        let flags = Arc::new(JobFlags::default());
        st.jobs.insert(id, (Box::new(deliver), flags.clone()));
        Ok((id, flags))
    }
}

impl Backend for ThreadPool {
    fn open<A: Arg, R: Ret>(
        &self,
        _f: fn(A) -> R,
        _chunk: ChunkSize,
        _caller_driven: bool,
    ) -> Result<(u64, Results<R>)> {
        let (tx, rx) = mpsc::channel::<Vec<(usize, Result<R>)>>();
        let deliver: Deliver<R> = Arc::new(move |answers| {
            let _ = tx.send(answers);
        });
        let (id, _) = self.open_with(deliver)?;
        Ok((id, Results::channel(rx)))
    }

    fn open_async<A: Arg, R: Ret>(
        &self,
        _f: fn(A) -> R,
        _chunk: ChunkSize,
        sink: Arc<dyn BatchSink<R>>,
    ) -> Result<(u64, Arc<dyn Control>)> {
        let end = EndOnDrop(sink);
        let deliver: Deliver<R> = Arc::new(move |answers| end.0.add(Batch::from_results(answers)));
        let (id, flags) = self.open_with(deliver)?;
        let control = ThreadJob {
            shared: self.shared.clone(),
            flags,
        };
        Ok((id, Arc::new(control)))
    }

    fn submit<A: Arg, R: Ret>(
        &self,
        job: u64,
        f: fn(A) -> R,
        first: usize,
        items: Vec<A>,
    ) -> Result<()> {
        let mut st = self.shared.lock();
        if st.closed {
            return Err(Error::PoolClosed);
        }
        let Some((deliver, flags)) = st.jobs.get(&job) else {
            return Err(Error::PoolClosed);
        };
        let Some(deliver) = deliver.downcast_ref::<Deliver<R>>() else {
            return Err(Error::PoolClosed);
        };
        let chunk = match self.chunk {
            ChunkSize::Fixed(n) => n.max(1),
            ChunkSize::Auto => items.len().div_ceil(4 * self.n).clamp(1, 1024),
        };
        let mut items = items.into_iter().enumerate().peekable();
        let mut works: Vec<Work> = Vec::new();
        while items.peek().is_some() {
            let batch: Vec<(usize, A)> = items.by_ref().take(chunk).collect();
            let deliver = deliver.clone();
            let flags = flags.clone();
            works.push(Box::new(move || {
                if flags.cancelled.load(Ordering::Relaxed) {
                    return;
                }
                flags.running.fetch_add(1, Ordering::Relaxed);
                let answers = batch
                    .into_iter()
                    .map(|(k, a)| {
                        (
                            first + k,
                            catch_unwind(AssertUnwindSafe(|| f(a))).map_err(panicked),
                        )
                    })
                    .collect();
                flags.running.fetch_sub(1, Ordering::Relaxed);
                if !flags.cancelled.load(Ordering::Relaxed) {
                    deliver(answers);
                }
            }));
        }
        st.queue.extend(works);
        drop(st);
        self.shared.work.notify_all();
        Ok(())
    }

    fn seal(&self, job: u64) {
        let mut st = self.shared.lock();
        let removed = st.jobs.remove(&job);
        if let Some((_, flags)) = &removed {
            st.sealed.insert(job, Arc::downgrade(flags));
            // Finished jobs' entries go now and then: amortized O(1) per seal.
            if st.sealed.len() > 2 * st.sealed_pruned + 64 {
                st.sealed.retain(|_, f| f.strong_count() > 0);
                st.sealed_pruned = st.sealed.len();
            }
        }
        // Dropped after the lock (see `ThreadJob::cancel`).
        drop(st);
        drop(removed);
    }

    fn cancel(&self, job: u64, _stop_running: bool) {
        let mut st = self.shared.lock();
        let removed = st.jobs.remove(&job);
        let flags = match &removed {
            Some((_, flags)) => Some(flags.clone()),
            None => st.sealed.remove(&job).and_then(|f| f.upgrade()),
        };
        if let Some(flags) = flags {
            flags.cancelled.store(true, Ordering::Relaxed);
        }
        drop(st);
        drop(removed);
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
        // Dropped after the lock: the last `Deliver` of a job ends its sink, which may
        // run callbacks that use this pool.
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
