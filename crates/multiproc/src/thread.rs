//! [`ThreadPool`]: the pool interface on threads of this process, for I/O-bound work
//! (Python's `multiprocessing.pool.ThreadPool`).
//!
//! Calls run in this process: no encoding, no fork, no isolation. A panicking call
//! answers [`Error::Panicked`]; there are no per-call timeouts or worker replacement,
//! since a thread cannot be killed.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::pool::api::sealed::{Backend, Results};
use crate::pool::{Arg, ChunkSize, Progress, Ret, TaskPool};

type Work = Box<dyn FnOnce() + Send>;

struct State {
    queue: VecDeque<Work>,
    closed: bool,
    /// Each open job's sender (as `Any`) and cancel flag. Sealing drops the sender, so
    /// the job's channel ends when its last call has answered.
    jobs: HashMap<u64, (Box<dyn Any + Send>, Arc<AtomicBool>)>,
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
    /// Number of threads; default [`cpu_count`](crate::cpu_count).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n.max(1));
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

    /// Starts the threads.
    pub fn build(self) -> Result<ThreadPool> {
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
    /// A pool of `threads` threads.
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
    let message = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any> (a panic payload that is not a string)".to_owned()
    };
    Error::Panicked {
        pid: std::process::id(),
        message,
        location: None,
    }
}

impl Backend for ThreadPool {
    fn open<A: Arg, R: Ret>(
        &self,
        _f: fn(A) -> R,
        _chunk: ChunkSize,
        _caller_driven: bool,
    ) -> Result<(u64, Results<R>)> {
        let mut st = self.shared.lock();
        if st.closed {
            return Err(Error::PoolClosed);
        }
        let id = self.next_job.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel::<Vec<(usize, Result<R>)>>();
        st.jobs
            .insert(id, (Box::new(tx), Arc::new(AtomicBool::new(false))));
        Ok((id, Results::channel(rx)))
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
        let Some((tx, cancelled)) = st.jobs.get(&job) else {
            return Err(Error::PoolClosed);
        };
        let Some(tx) = tx.downcast_ref::<mpsc::Sender<Vec<(usize, Result<R>)>>>() else {
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
            let tx = tx.clone();
            let cancelled = cancelled.clone();
            works.push(Box::new(move || {
                if cancelled.load(Ordering::Relaxed) {
                    return;
                }
                let answers = batch
                    .into_iter()
                    .map(|(k, a)| {
                        (
                            first + k,
                            catch_unwind(AssertUnwindSafe(|| f(a))).map_err(panicked),
                        )
                    })
                    .collect();
                let _ = tx.send(answers);
            }));
        }
        st.queue.extend(works);
        drop(st);
        self.shared.work.notify_all();
        Ok(())
    }

    fn seal(&self, job: u64) {
        if let Some((tx, flag)) = self.shared.lock().jobs.remove(&job) {
            drop((tx, flag));
        }
    }

    fn cancel(&self, job: u64) {
        if let Some((_, flag)) = self.shared.lock().jobs.remove(&job) {
            flag.store(true, Ordering::Relaxed);
        }
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
        st.queue.clear();
        st.jobs.clear();
        drop(st);
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
