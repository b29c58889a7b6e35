//! What a pool driven by a thread of its own (MPI ranks, cluster nodes) shares with
//! the threads that use it: the pool core under a lock, a wake-up each way, and the
//! plumbing of the pool interface over it, written once for every such pool.
//!
//! The driving thread sends chunks and files answers in the core; a caller waiting on
//! results sleeps on [`Shared::changed`]; new work wakes the driver through
//! [`Shared::notify`]. Answers for async handles are handed over outside the lock
//! ([`Shared::settle`]).

use std::marker::PhantomData;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::pool::ChunkSize;
use crate::pool::backend::{Arg, Control, ResultSource, Results, Ret, Step};
use crate::pool::batch::{BatchSink, decode_answers, decoding};
use crate::pool::core::Core;
use crate::pool::core::jobs::Items;
use crate::task;

/// The life cycle of a pool driven by a thread of its own, as both sides see it.
///
/// ```text
/// Running ──close──▶ Closed ──(driver ends)──▶ Stopped
///    │                  │                        ▲
///    └────terminate─────┴──▶ Terminating ──(driver ends)
///    │
///    └──(driver ends on its own)──▶ Ended ──close / terminate──▶ Stopped
/// ```
///
/// The driving thread may end while nobody closed the pool (Redis unreachable for
/// too long, MPI ranks that did not start): that is `Ended`, not a closed pool. Its
/// jobs are still opened and answer at once with the error the core was left with,
/// and `join` still asks for `close` first, as before the driver ended.
///
/// `close` and `terminate` may come in any state, from any thread, any number of
/// times; one that does not apply changes nothing. The driver's end (`driver_ended`)
/// comes once, and asserts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Life {
    /// Takes work.
    Running,
    /// Takes no new work; the driver ends once the work submitted is answered.
    Closed,
    /// Asked to stop at once: the driver answers what is left with `PoolTerminated`
    /// at its next round, and ends.
    Terminating,
    /// The driver ended on its own while the pool was running. No answer comes any
    /// more, except the core's at once.
    Ended,
    /// Closed or terminated, and the driver has ended. No answer comes any more.
    Stopped,
}

impl Life {
    /// Whether new jobs are refused.
    pub(crate) fn is_closed(self) -> bool {
        !matches!(self, Life::Running | Life::Ended)
    }

    /// Whether the driving thread has ended: no answer will come any more.
    pub(crate) fn is_stopped(self) -> bool {
        matches!(self, Life::Ended | Life::Stopped)
    }

    /// Whether the driver must stop at once.
    pub(crate) fn is_terminating(self) -> bool {
        self == Life::Terminating
    }

    /// `close`: `Running -> Closed`, `Ended -> Stopped`; anything else stays. Says
    /// whether it changed.
    pub(crate) fn close(&mut self) -> bool {
        let next = match *self {
            Life::Running => Life::Closed,
            Life::Ended => Life::Stopped,
            Life::Closed | Life::Terminating | Life::Stopped => return false,
        };
        *self = next;
        true
    }

    /// `terminate`: `Running | Closed -> Terminating`, `Ended -> Stopped`; a pool
    /// already terminating or stopped stays as it is.
    pub(crate) fn terminate(&mut self) {
        match *self {
            Life::Running | Life::Closed => *self = Life::Terminating,
            Life::Ended => *self = Life::Stopped,
            Life::Terminating | Life::Stopped => {}
        }
    }

    /// The driving thread has ended: `Running -> Ended`, `Closed | Terminating ->
    /// Stopped`. It ends once.
    pub(crate) fn driver_ended(&mut self) {
        debug_assert!(!self.is_stopped(), "the driving thread ends once");
        *self = match *self {
            Life::Running => Life::Ended,
            _ => Life::Stopped,
        };
    }
}

/// The core and the pool's life cycle, which both sides read.
pub(crate) struct State {
    pub(crate) core: Core,
    /// Stored here only: the caller's side reads it under the lock it takes anyway.
    pub(crate) life: Life,
}

pub(crate) struct Shared {
    st: Mutex<State>,
    /// Answers arrived, or the pool stopped: for threads waiting on results.
    pub(crate) changed: Condvar,
    /// Work arrived, or the pool is closing: for the driving thread when idle.
    pub(crate) work: Condvar,
}

impl Shared {
    pub(crate) fn new(core: Core) -> Self {
        Shared {
            st: Mutex::new(State {
                core,
                life: Life::Running,
            }),
            changed: Condvar::new(),
            work: Condvar::new(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the driving thread that there is work or a request.
    fn notify(&self) {
        self.work.notify_all();
    }

    /// Hands over what is due to async handles' sinks, outside the lock (a sink
    /// decodes, and runs callbacks).
    pub(crate) fn settle(&self) {
        let due = self.lock().core.take_deliveries();
        for d in due {
            d.hand_over();
        }
    }

    /// Opens a job whose results the caller pulls.
    pub(crate) fn open<A: Arg, R: Ret>(
        self: &Arc<Self>,
        f: fn(A) -> R,
        chunk: ChunkSize,
        caller_driven: bool,
    ) -> Result<(u64, Results<R>)> {
        let mut st = self.lock();
        if st.life.is_closed() {
            return Err(Error::PoolClosed);
        }
        let job = st.core.open(task::task_ref(f), chunk, caller_driven);
        drop(st);
        let results = Pulled {
            shared: self.clone(),
            job,
            _r: PhantomData,
        };
        Ok((job, Results(Box::new(results))))
    }

    /// Opens a job whose results go to `sink`.
    pub(crate) fn open_async<A: Arg, R: Ret>(
        self: &Arc<Self>,
        f: fn(A) -> R,
        chunk: ChunkSize,
        sink: Arc<dyn BatchSink<R>>,
    ) -> Result<(u64, Arc<dyn Control>)> {
        let mut st = self.lock();
        if st.life.is_closed() {
            return Err(Error::PoolClosed);
        }
        let job = st.core.open_sunk(task::task_ref(f), chunk, decoding(sink));
        Ok((job, self.clone()))
    }

    pub(crate) fn submit<A: Arg>(&self, job: u64, first: usize, items: Vec<A>) {
        self.lock()
            .core
            .submit(job, first, Box::new(Items::new(items)));
        self.notify();
        // A stopped pool answers at once.
        self.settle();
    }

    pub(crate) fn seal(&self, job: u64) {
        self.lock().core.seal(job);
        // An empty job is over at once.
        self.settle();
    }
}

/// The driving thread cannot stop a call running far away (MPI is fail-fast, a
/// cluster node runs it to its end), so a cancelled call that runs already runs to
/// its end; its answer is thrown away.
impl Control for Shared {
    fn cancel(&self, job: u64, _stop_running: bool) {
        self.lock().core.cancel(job, false);
    }

    fn running(&self, job: u64) -> bool {
        self.lock().core.running(job)
    }
}

/// A job's results: filed in the core by the driving thread, taken here.
struct Pulled<R> {
    shared: Arc<Shared>,
    job: u64,
    _r: PhantomData<fn() -> R>,
}

impl<R: Ret> ResultSource<R> for Pulled<R> {
    fn recv(&mut self, deadline: Option<Instant>) -> Step<R> {
        let mut st = self.shared.lock();
        loop {
            if let Some(a) = st.core.take_answers(self.job) {
                drop(st);
                return Step::Got(decode_answers::<R>(a));
            }
            if st.core.job_over(self.job) || st.life.is_stopped() {
                return Step::Ended;
            }
            let now = Instant::now();
            st = match deadline {
                None => self
                    .shared
                    .changed
                    .wait(st)
                    .unwrap_or_else(|p| p.into_inner()),
                Some(d) if d <= now => return Step::Empty,
                Some(d) => {
                    self.shared
                        .changed
                        .wait_timeout(st, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }
}

/// The caller's side of such a pool: the shared state, the driving thread, and the
/// options every pool has. MPI's and the cluster's pools hold one and get the pool
/// interface from [`remote_pool_impls`].
pub(crate) struct RemotePool {
    pub(crate) shared: Arc<Shared>,
    driver: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub(crate) chunk: ChunkSize,
    pub(crate) progress: super::Progress,
}

impl RemotePool {
    pub(crate) fn new(
        shared: Arc<Shared>,
        driver: std::thread::JoinHandle<()>,
        chunk: ChunkSize,
        progress: super::Progress,
    ) -> Self {
        RemotePool {
            shared,
            driver: Mutex::new(Some(driver)),
            chunk,
            progress,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.shared.lock().life.is_closed()
    }

    /// Takes no new work; the driving thread ends once the work submitted is done.
    pub(crate) fn close(&self) {
        let newly = self.shared.lock().life.close();
        if newly {
            self.shared.notify();
        }
    }

    /// Stops at once; returns when the driving thread has ended.
    pub(crate) fn terminate(&self) {
        self.shared.lock().life.terminate();
        self.shared.notify();
        self.wait_driver();
    }

    pub(crate) fn join(&self) -> Result<()> {
        if !self.is_closed() {
            return Err(Error::PoolNotClosed);
        }
        self.wait_driver();
        Ok(())
    }

    fn wait_driver(&self) {
        let handle = self
            .driver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for RemotePool {
    fn drop(&mut self) {
        self.close();
        self.wait_driver();
    }
}

/// The pool interface (`Backend`, `TaskPool`, the inherent methods) for a pool type
/// with a field `remote: RemotePool` and a method `fn parallelism_now(&self) -> usize`.
macro_rules! remote_pool_impls {
    ($pool:ty) => {
        impl $crate::pool::backend::Backend for $pool {
            type Job<A: $crate::pool::Arg, R: $crate::pool::Ret> = u64;

            fn open<A: $crate::pool::Arg, R: $crate::pool::Ret>(
                &self,
                f: fn(A) -> R,
                chunk: $crate::ChunkSize,
                caller_driven: bool,
            ) -> $crate::Result<(u64, $crate::pool::backend::Results<R>)> {
                self.remote.shared.open(f, chunk, caller_driven)
            }

            fn open_async<A: $crate::pool::Arg, R: $crate::pool::Ret>(
                &self,
                f: fn(A) -> R,
                chunk: $crate::ChunkSize,
                sink: std::sync::Arc<dyn $crate::pool::batch::BatchSink<R>>,
            ) -> $crate::Result<(u64, std::sync::Arc<dyn $crate::pool::backend::Control>)>
            {
                self.remote.shared.open_async(f, chunk, sink)
            }

            fn submit<A: $crate::pool::Arg, R: $crate::pool::Ret>(
                &self,
                &job: &u64,
                _f: fn(A) -> R,
                first: usize,
                items: Vec<A>,
            ) -> $crate::Result<()> {
                self.remote.shared.submit(job, first, items);
                Ok(())
            }

            fn seal(&self, job: u64) {
                self.remote.shared.seal(job);
            }

            fn cancel(&self, job: u64, stop_running: bool) {
                $crate::pool::backend::Control::cancel(
                    &*self.remote.shared,
                    job,
                    stop_running,
                );
            }

            fn parallelism(&self) -> usize {
                self.parallelism_now().max(1)
            }

            fn progress(&self) -> &$crate::Progress {
                &self.remote.progress
            }

            fn chunk_size(&self) -> $crate::ChunkSize {
                self.remote.chunk
            }
        }

        impl $crate::TaskPool for $pool {
            fn close(&self) {
                self.remote.close();
            }

            /// Stops at once: calls not answered answer
            /// [`Error::PoolTerminated`](crate::Error::PoolTerminated); calls already
            /// running far away run to their end there (their answers are thrown away).
            fn terminate(&self) {
                self.remote.terminate();
            }

            fn join(&self) -> $crate::Result<()> {
                self.remote.join()
            }
        }

        $crate::pool::api::inherent_task_pool_methods!($pool);
    };
}
pub(crate) use remote_pool_impls;

#[cfg(test)]
mod tests {
    use super::Life;

    #[test]
    fn a_driver_that_ends_on_its_own_leaves_the_pool_open_until_closed() {
        let mut life = Life::Running;
        life.driver_ended();
        assert_eq!(life, Life::Ended);
        assert!(life.is_stopped() && !life.is_closed());
        assert!(life.close());
        assert_eq!(life, Life::Stopped);
        assert!(!life.close());
        life.terminate();
        assert_eq!(life, Life::Stopped);

    }

    #[test]
    fn close_and_terminate_end_in_stopped_when_the_driver_ends() {
        let mut life = Life::Running;
        assert!(life.close());
        assert!(life.is_closed() && !life.is_stopped() && !life.is_terminating());
        life.terminate();
        assert!(life.is_terminating());
        assert!(!life.close());
        life.driver_ended();
        assert_eq!(life, Life::Stopped);
        assert!(life.is_closed() && life.is_stopped());
    }
}
