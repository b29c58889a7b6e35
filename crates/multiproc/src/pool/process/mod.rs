//! The local process pool: [`Pool`] and its builder, over the pool core.
//!
//! - `lead`: how the threads that wait take turns driving the pool (its README, beside
//!   it, tells the protocol);
//! - `event_loop`: one turn of the loop the leader runs, and how a pool ends;
//! - `shared`: what the threads share: the lock, the condition variables and the
//!   wake-up socket;
//! - `state`: what is under the lock, with the pool's life cycle;
//! - `proc`: one worker process as the parent sees it.

mod event_loop;
mod lead;
mod proc;
mod shared;
mod state;

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::pool::ChunkSize;
use crate::pool::api::{self, TaskPool};
use crate::pool::backend::{Arg, Backend, Control, ResultSource, Results, Ret, Step};
use crate::pool::batch::{BatchSink, decode_answers, decoding};
use crate::pool::core::jobs::{Items, Source};
use crate::pool::core::{Config as CoreConfig, Core};
use crate::pool::options::{PoolOptions, option_setters};
use crate::pool::progress::Progress;
use crate::start::StartMethod;
use crate::task;
use crate::wire;
use crate::wire::message::TaskRef;
use lead::Polled;
use shared::{Settings, Shared};

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
    shared: Arc<Shared>,
    background: Mutex<Option<JoinHandle<()>>>,
    processes: usize,
    chunk: ChunkSize,
    /// Whether calls have a time limit (`task_timeout`): then they go one at a time.
    timed: bool,
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
    initializer: Option<(TaskRef, Vec<u8>, Vec<std::os::fd::OwnedFd>)>,
    init_error: Option<Error>,
    max_tasks_per_child: Option<usize>,
    options: PoolOptions,
    leave_term: bool,
}

impl PoolBuilder {
    /// The workers leave SIGTERM to this process: a cluster node's own pool, whose
    /// workers must outlive a SIGTERM sent to the node's whole process group (the node
    /// drains, then stops them). Only for that pool, never inherited: a process or
    /// pool a task starts has the default SIGTERM.
    #[cfg(feature = "cluster")]
    pub(crate) fn workers_leave_sigterm(mut self) -> Self {
        self.leave_term = true;
        self
    }

    /// Number of worker processes; default [`cpu_count`](crate::cpu_count). 0 makes
    /// [`build`](PoolBuilder::build) fail with [`Error::InvalidArgument`] (as Python's
    /// `Pool(0)` raises `ValueError`): a pool without workers would never answer.
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
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
    ///
    /// `args` may hold shared objects ([`Value`](crate::Value), [`Lock`](crate::Lock),
    /// [`Queue`](crate::Queue), [`Array`](crate::Array)...), as a task's argument may:
    /// each worker receives its own handles on the same objects (Python's
    /// `initargs=(counter,)` idiom).
    ///
    /// Workers start lazily, with the pool's first work (see [`Pool::workers`]), and
    /// the initializer runs once in each worker started, before its first call (also
    /// in each worker that replaces one). So a pool closed without any work starts no
    /// worker and runs the initializer nowhere, unlike Python's `Pool`, which starts
    /// its workers (and runs `initializer` in each) in its constructor.
    pub fn initializer<A: Serialize + DeserializeOwned>(mut self, f: fn(A), args: A) -> Self {
        // The handles in `args` ride along as descriptors, dup'ed for each worker.
        let (bytes, fds) = wire::fds::capture(|| wire::encode_task_value(&args));
        match bytes.and_then(|b| wire::check_fd_count(fds.len()).map(|()| b)) {
            Ok(bytes) => self.initializer = Some((task::task_ref(f), bytes, fds)),
            Err(e) => self.init_error = Some(e),
        }
        self
    }

    /// Replaces a worker after it has run this many calls (to bound leaks). 0 makes
    /// [`build`](PoolBuilder::build) fail with [`Error::InvalidArgument`] (Python
    /// raises `ValueError`): a worker that may run no call could never run one.
    pub fn max_tasks_per_child(mut self, n: usize) -> Self {
        self.max_tasks_per_child = Some(n);
        self
    }

    option_setters! { options;
        /// Kills and replaces a worker whose call runs longer than this; the call answers
        /// [`Error::Timeout`].
        fn task_timeout(timeout: Duration);

        /// How many times a call whose worker died while running it is run again (alone,
        /// on a new worker) before its error is returned. Default 0. Panics and timeouts
        /// are not retried. The dead worker's other calls run again whatever this says
        /// (see [the module docs](crate::pool#pipelining-and-what-a-crash-costs)).
        fn retries(n: u32);

        /// Chunk size policy; default [`ChunkSize::Auto`].
        fn chunk_size(chunk: ChunkSize);

        /// Progress reporting for `map`, `map_results` and `imap`.
        fn progress(progress: Progress);
    }

    /// Starts the pool. Its workers start with its first work (see [`Pool::workers`]);
    /// if they cannot be started, the calls answer [`Error::Initializer`].
    ///
    /// Errors: [`Error::InvalidArgument`] for `processes(0)` or
    /// `max_tasks_per_child(0)`; [`Error::Encode`] if the initializer's argument could
    /// not be encoded.
    ///
    /// ```
    /// use multiproc::{Error, Pool};
    /// assert!(matches!(Pool::new(0), Err(Error::InvalidArgument { .. })));
    /// ```
    pub fn build(self) -> Result<Pool> {
        if let Some(e) = self.init_error {
            return Err(e);
        }
        if self.processes == Some(0) {
            return Err(Error::InvalidArgument {
                detail: "a pool needs at least 1 worker process, not 0 (leave the count \
                         out for one per CPU)"
                    .into(),
            });
        }
        if self.max_tasks_per_child == Some(0) {
            return Err(Error::InvalidArgument {
                detail: "max_tasks_per_child must be at least 1: a worker that may run no \
                         call would never run one"
                    .into(),
            });
        }
        let processes = self.processes.unwrap_or_else(crate::cpu_count);
        let core = Core::new(CoreConfig {
            workers: processes,
            retries: self.options.retries,
            task_timeout: self.options.task_timeout,
            max_tasks_per_child: self.max_tasks_per_child,
            pipeline: true,
            chunk_time: crate::pool::core::chunking::LOCAL,
        });
        let settings = Settings {
            processes,
            method: self.method.unwrap_or_else(crate::get_start_method),
            initializer: self.initializer,
            leave_term: self.leave_term,
        };
        let shared = Arc::new(Shared::new(core, settings)?);
        let bg = shared.clone();
        let background = std::thread::Builder::new()
            .name("multiproc-pool".into())
            .spawn(move || bg.background())
            .map_err(|e| Error::io("starting the pool's background thread", e))?;
        Ok(Pool {
            shared,
            background: Mutex::new(Some(background)),
            processes,
            chunk: self.options.chunk,
            timed: self.options.task_timeout.is_some(),
            progress: self.options.progress,
        })
    }
}

impl Pool {
    /// Adds a submission's calls to `job` and wakes whoever sends them.
    fn add_source(&self, job: u64, first: usize, source: Box<dyn Source>) {
        let mut st = self.shared.lock();
        let caller_driven = st.core.caller_driven(job);
        st.core.submit(job, first, source);
        self.shared.notify(&st, caller_driven);
        // A broken pool answers at once.
        drop(self.shared.settle(st));
    }

    /// A pool of `processes` workers with default options; 0 is refused with
    /// [`Error::InvalidArgument`].
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

    /// The live workers: pid, name, start time, calls answered, busy or idle. Workers
    /// start with the pool's first work, so a new pool may list none yet.
    ///
    /// ```
    /// use multiproc::prelude::*;
    /// fn pid(_: ()) -> u32 { std::process::id() }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let pool = Pool::new(2)?;
    /// let ran_on = pool.apply(pid, ())?;
    /// let workers = pool.workers();
    /// assert!(workers.iter().any(|w| w.pid == ran_on && w.calls >= 1));
    /// # Ok(()) }
    /// ```
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.shared.workers()
    }

    /// Runs calls of `entry` on arguments encoded elsewhere (packed as they came), their
    /// answers going to `sink` undecoded: how a cluster node relays a chunk it took
    /// to its local workers without knowing the task's types.
    #[cfg(feature = "cluster")]
    pub(crate) fn run_encoded(
        &self,
        entry: TaskRef,
        args: super::core::jobs::Packed,
        sink: Arc<dyn super::core::Sink>,
    ) -> Result<(u64, Arc<dyn Control>)> {
        let mut st = self.shared.lock();
        if st.life.is_closed() {
            return Err(Error::PoolClosed);
        }
        let job = st.core.open_sunk(entry, self.chunk, sink);
        st.core.submit(job, 0, Box::new(args));
        st.core.seal(job);
        self.shared.notify(&st, false);
        drop(self.shared.settle(st));
        Ok((job, self.shared.clone()))
    }

    /// Ends the background thread, once the pool has stopped (it ends then).
    fn stop_background(&self) {
        debug_assert!(self.shared.lock().life.is_stopped());
        self.shared.notify_background();
        let handle = self
            .background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// One worker process of a [`Pool`], as [`Pool::workers`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Its pid.
    pub pid: u32,
    /// Its name (`PoolWorker-N`, numbered in start order).
    pub name: String,
    /// When it started.
    pub started: std::time::SystemTime,
    /// Calls it has answered.
    pub calls: u64,
    /// Whether it holds calls now.
    pub busy: bool,
}

/// A job's results, read by the thread that waits for them (which drives the pool
/// meanwhile, see `lead`).
struct PoolResults<R> {
    shared: Arc<Shared>,
    job: u64,
    _r: PhantomData<fn() -> R>,
}

impl<R: Ret> ResultSource<R> for PoolResults<R> {
    fn recv(&mut self, deadline: Option<Instant>) -> Step<R> {
        let job = self.job;
        let polled = self.shared.drive(deadline, |st| {
            if let Some(a) = st.core.take_answers(job) {
                Some(Polled::Got(a))
            } else if st.core.job_over(job) {
                Some(Polled::Ended)
            } else {
                None
            }
        });
        match polled {
            None => Step::Empty,
            Some(Polled::Got(a)) => Step::Got(decode_answers::<R>(a)),
            Some(Polled::Ended) => Step::Ended,
        }
    }
}

impl Backend for Pool {
    type Job<A: Arg, R: Ret> = u64;

    fn open<A: Arg, R: Ret>(
        &self,
        f: fn(A) -> R,
        chunk: ChunkSize,
        caller_driven: bool,
    ) -> Result<(u64, Results<R>)> {
        let mut st = self.shared.lock();
        if st.life.is_closed() {
            return Err(Error::PoolClosed);
        }
        let job = st.core.open(task::task_ref(f), chunk, caller_driven);
        drop(st);
        let results = PoolResults {
            shared: self.shared.clone(),
            job,
            _r: PhantomData,
        };
        Ok((job, Results(Box::new(results))))
    }

    fn open_async<A: Arg, R: Ret>(
        &self,
        f: fn(A) -> R,
        chunk: ChunkSize,
        sink: Arc<dyn BatchSink<R>>,
    ) -> Result<(u64, Arc<dyn Control>)> {
        let mut st = self.shared.lock();
        if st.life.is_closed() {
            return Err(Error::PoolClosed);
        }
        let job = st.core.open_sunk(task::task_ref(f), chunk, decoding(sink));
        Ok((job, self.shared.clone()))
    }

    fn submit<A: Arg, R: Ret>(
        &self,
        &job: &u64,
        _f: fn(A) -> R,
        first: usize,
        items: Vec<A>,
    ) -> Result<()> {
        self.add_source(job, first, Box::new(Items::new(items)));
        Ok(())
    }

    fn lends_plain(&self) -> bool {
        // Results in place cost a lock and a lookup per chunk: worth it when chunks carry
        // many calls (automatic ones carry at least 250 µs of calls), not for one call
        // at a time (a task timeout, or a small fixed size).
        match self.chunk {
            ChunkSize::Auto => !self.timed,
            ChunkSize::Fixed(n) => n >= 1024,
        }
    }

    fn submit_lent<A: Arg, R: Ret>(
        &self,
        &job: &u64,
        _f: fn(A) -> R,
        first: usize,
        items: Arc<crate::sys::lend::PlainBytes>,
    ) -> Result<()> {
        self.add_source(job, first, Box::new(Items::<A>::lent(items)));
        Ok(())
    }

    fn seal(&self, job: u64) {
        let mut st = self.shared.lock();
        st.core.seal(job);
        // An empty job is over at once.
        drop(self.shared.settle(st));
    }

    fn cancel(&self, job: u64, stop_running: bool) {
        Control::cancel(&*self.shared, job, stop_running);
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

impl Control for Shared {
    fn cancel(&self, job: u64, stop_running: bool) {
        let mut st = self.lock();
        let workers = st.core.cancel(job, stop_running);
        self.kill_for_cancel(&mut st, workers);
    }

    fn running(&self, job: u64) -> bool {
        self.lock().core.running(job)
    }

    fn drive(&self, done: &dyn Fn() -> bool, deadline: Option<Instant>) -> bool {
        Shared::drive(self, deadline, |_| done().then_some(()));
        true
    }

    fn wake(&self) {
        self.wake_waiters();
    }
}

impl TaskPool for Pool {
    fn close(&self) {
        self.shared.lock().life.close();
    }

    fn terminate(&self) {
        self.shared.terminate();
        self.stop_background();
    }

    fn join(&self) -> Result<()> {
        if !self.shared.lock().life.is_closed() {
            return Err(Error::PoolNotClosed);
        }
        self.shared.finish();
        self.stop_background();
        Ok(())
    }
}

api::inherent_task_pool_methods!(Pool);

impl Drop for Pool {
    fn drop(&mut self) {
        self.close();
        self.shared.finish();
        self.stop_background();
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.processes)
            .field("chunk", &self.chunk)
            .field("closed", &self.shared.lock().life.is_closed())
            .finish()
    }
}
