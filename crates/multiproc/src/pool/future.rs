//! [`AsyncResult`]: one submission's result, to collect later — by waiting, by
//! `.await`, through a callback, or among others with [`wait`](crate::wait) and
//! [`as_completed`](crate::as_completed); and to cancel.
//!
//! The pool pushes answers into the handle's shared state as they arrive (a
//! [`BatchSink`]), so that a handle completes even when nobody waits on it: that is
//! what lets it wake a future, run a callback, or count in a wait on many handles.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::backend::Control;
use super::batch::{Batch, BatchSink};
use super::ordered::Ordered;
use crate::error::{Error, Result};

type Callback<T> = Box<dyn FnOnce(&Result<T>) + Send>;

/// Completion order across every handle of the process (for `as_completed`).
static ORDER: AtomicU64 = AtomicU64::new(0);

enum Outcome<T> {
    Pending,
    /// Callbacks are running; the result is with the thread that runs them.
    Completing,
    Ready(Result<T>),
    /// Handed out by `get_timeout`.
    Taken,
}

struct State<T> {
    outcome: Outcome<T>,
    /// Whether the result is (or was) a success; set on completion.
    ok: Option<bool>,
    cancelled: bool,
    /// When it completed, in [`ORDER`].
    order: u64,
    callbacks: Vec<Callback<T>>,
    wakers: Vec<Waker>,
    watchers: Vec<Weak<WakeUp>>,
    callback_panic: Option<String>,
}

/// A handle's shared state: filled by the pool (through a sink), read by the handle.
pub(super) struct Completion<T> {
    st: Mutex<State<T>>,
    cond: Condvar,
}

/// A wake-up shared by one wait on many handles (`pub` only to be named by `Watch`).
pub struct WakeUp {
    ticks: Mutex<u64>,
    cond: Condvar,
}

impl WakeUp {
    pub(super) fn new() -> Arc<WakeUp> {
        Arc::new(WakeUp {
            ticks: Mutex::new(0),
            cond: Condvar::new(),
        })
    }

    /// The current tick count, to wait past.
    pub(super) fn ticks(&self) -> u64 {
        *self.ticks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ring(&self) {
        *self.ticks.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.cond.notify_all();
    }

    /// Waits until the tick count passes `seen` or `deadline` passes.
    pub(super) fn wait_past(&self, seen: u64, deadline: Option<Instant>) {
        let mut t = self.ticks.lock().unwrap_or_else(|p| p.into_inner());
        while *t == seen {
            t = match deadline {
                None => self.cond.wait(t).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return;
                    }
                    self.cond
                        .wait_timeout(t, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }
}

impl<T> Completion<T> {
    fn new() -> Arc<Self> {
        Arc::new(Completion {
            st: Mutex::new(State {
                outcome: Outcome::Pending,
                ok: None,
                cancelled: false,
                order: 0,
                callbacks: Vec::new(),
                wakers: Vec::new(),
                watchers: Vec::new(),
                callback_panic: None,
            }),
            cond: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Completed (callbacks may still be running).
    fn is_done(&self) -> bool {
        !matches!(self.lock().outcome, Outcome::Pending)
    }

    /// Sets the result, unless there is one; `false` if there was. Runs the
    /// callbacks (on this thread), then publishes the result.
    fn complete(&self, r: Result<T>, cancelled: bool) -> bool {
        let callbacks = {
            let mut st = self.lock();
            if !matches!(st.outcome, Outcome::Pending) {
                return false;
            }
            st.outcome = Outcome::Completing;
            st.ok = Some(r.is_ok());
            st.cancelled = cancelled;
            st.order = ORDER.fetch_add(1, Ordering::Relaxed);
            std::mem::take(&mut st.callbacks)
        };
        self.finish(r, callbacks);
        true
    }

    /// Runs `callbacks` (and any registered meanwhile) on `r`, then stores it and
    /// wakes everyone waiting.
    fn finish(&self, r: Result<T>, mut callbacks: Vec<Callback<T>>) {
        loop {
            for cb in callbacks {
                if let Err(payload) = catch_unwind(AssertUnwindSafe(|| cb(&r))) {
                    let message = crate::error::panic_message(payload.as_ref());
                    tracing::error!("an AsyncResult callback panicked: {message}");
                    self.lock().callback_panic.get_or_insert(message);
                }
            }
            let mut st = self.lock();
            callbacks = std::mem::take(&mut st.callbacks);
            if callbacks.is_empty() {
                st.outcome = Outcome::Ready(r);
                let wakers = std::mem::take(&mut st.wakers);
                let watchers = std::mem::take(&mut st.watchers);
                drop(st);
                self.cond.notify_all();
                for w in wakers {
                    w.wake();
                }
                for w in watchers.iter().filter_map(Weak::upgrade) {
                    w.ring();
                }
                return;
            }
        }
    }

    /// Registers `f` to run with the result: now, on this thread, if it is there.
    fn on_done(&self, f: Callback<T>) {
        let mut st = self.lock();
        match std::mem::replace(&mut st.outcome, Outcome::Completing) {
            Outcome::Ready(r) => {
                drop(st);
                self.finish(r, vec![f]);
            }
            other => {
                st.outcome = other;
                if !matches!(st.outcome, Outcome::Taken) {
                    st.callbacks.push(f);
                }
            }
        }
    }

    /// Waits (on this state alone) until done or `deadline`; `true` if done.
    fn wait(&self, deadline: Option<Instant>) -> bool {
        let mut st = self.lock();
        while matches!(st.outcome, Outcome::Pending) {
            st = match deadline {
                None => self.cond.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    self.cond
                        .wait_timeout(st, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        true
    }

    /// The result, once done (waits for running callbacks to finish).
    fn take(&self) -> Result<T> {
        let mut st = self.lock();
        loop {
            match std::mem::replace(&mut st.outcome, Outcome::Taken) {
                Outcome::Ready(r) => return r,
                Outcome::Taken => return Err(Error::PoolTerminated),
                other => {
                    st.outcome = other;
                    st = self.cond.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }

    /// Takes the result if it is there, else registers `waker`.
    fn poll_take(&self, waker: &Waker) -> Poll<Result<T>> {
        let mut st = self.lock();
        match std::mem::replace(&mut st.outcome, Outcome::Taken) {
            Outcome::Ready(r) => Poll::Ready(r),
            Outcome::Taken => Poll::Ready(Err(Error::PoolTerminated)),
            other => {
                st.outcome = other;
                if !st.wakers.iter().any(|w| w.will_wake(waker)) {
                    st.wakers.push(waker.clone());
                }
                Poll::Pending
            }
        }
    }
}

/// The status a wait on many handles reads (`pub` only to be named by the sealed
/// `Waitable`; this module is private).
pub struct Status {
    pub(super) done: bool,
    pub(super) failed: bool,
    pub(super) order: u64,
}

/// A handle as a wait on many sees it (object-safe, type-erased; `pub` only to be
/// named by the sealed `Waitable`).
pub trait Watch {
    fn status(&self) -> Status;
    fn watch(&self, w: &Arc<WakeUp>);
}

impl<T> Watch for Completion<T> {
    fn status(&self) -> Status {
        let st = self.lock();
        let done = !matches!(st.outcome, Outcome::Pending);
        Status {
            done,
            // A cancel is not a failure of the work (Python's FIRST_EXCEPTION skips
            // cancelled futures too).
            failed: done && st.ok == Some(false) && !st.cancelled,
            order: st.order,
        }
    }

    fn watch(&self, w: &Arc<WakeUp>) {
        let mut st = self.lock();
        st.watchers.retain(|w| w.strong_count() > 0);
        st.watchers.push(Arc::downgrade(w));
    }
}

/// Gathers the one result of an `apply_async`.
struct One<R>(Arc<Completion<R>>);

impl<R: Send> BatchSink<R> for One<R> {
    fn add(&self, batch: Batch<R>) {
        if let Some((_, r)) = batch.into_iter().next() {
            self.0.complete(r, false);
        }
    }

    fn end(&self) {
        self.0.complete(Err(Error::PoolTerminated), false);
    }
}

/// Gathers the ordered results of a `map_async`; the first failure is its result.
struct Many<R> {
    c: Arc<Completion<Vec<R>>>,
    /// `None` once complete.
    slots: Mutex<Option<Ordered<R>>>,
}

impl<R: Send> Many<R> {
    fn complete_if_full(&self, slots: &mut Option<Ordered<R>>) {
        if slots.as_ref().is_some_and(Ordered::is_full) {
            let values = slots.take().and_then(Ordered::finish);
            self.c.complete(values.ok_or(Error::PoolTerminated), false);
        }
    }
}

/// The sink side of [`Many`].
struct ManySink<R>(Arc<Many<R>>);

impl<R: Send> BatchSink<R> for ManySink<R> {
    fn add(&self, batch: Batch<R>) {
        let many = &self.0;
        let (at, values, errors) = batch.into_parts();
        if let Some((_, e)) = errors.into_iter().next() {
            many.c.complete(Err(e), false);
            return;
        }
        let mut slots = many.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slots) = slots.as_mut() {
            slots.add_batch(at, values);
        }
        many.complete_if_full(&mut slots);
    }

    fn end(&self) {
        let many = &self.0;
        let mut slots = many.slots.lock().unwrap_or_else(|p| p.into_inner());
        many.complete_if_full(&mut slots);
        drop(slots);
        many.c.complete(Err(Error::PoolTerminated), false);
    }
}

/// A handle's state, and the sink the pool fills it through.
type StateAndSink<T, R> = (Arc<Completion<T>>, Arc<dyn BatchSink<R>>);

/// The state and sink of a one-call handle.
pub(super) fn one<R: Send + 'static>() -> StateAndSink<R, R> {
    let c = Completion::new();
    (c.clone(), Arc::new(One(c)))
}

/// The state and sink of a handle on `n` ordered results.
pub(super) fn many<R: Send + 'static>(n: usize) -> StateAndSink<Vec<R>, R> {
    let c = Completion::new();
    if n == 0 {
        c.complete(Ok(Vec::new()), false);
    }
    let many = Arc::new(Many {
        c: c.clone(),
        slots: Mutex::new(Some(Ordered::new(n))),
    });
    (c, Arc::new(ManySink(many)))
}

/// The result of [`apply_async`](crate::TaskPool::apply_async) or
/// [`map_async`](crate::TaskPool::map_async), to collect later.
///
/// - **Collect** it with [`get`](AsyncResult::get) (or
///   [`get_timeout`](AsyncResult::get_timeout)), or `.await` it: it is a
///   [`Future`] that needs no particular runtime.
/// - **Watch** it with others: [`wait`](crate::wait), [`as_completed`](crate::as_completed).
/// - **Steer** it: [`cancel`](AsyncResult::cancel) stops it; [`on_done`](AsyncResult::on_done)
///   (and [`callback`](AsyncResult::callback), [`error_callback`](AsyncResult::error_callback))
///   run code when it completes.
/// - **Dropping** a handle that has not completed cancels its queued calls (calls
///   already running finish, their answers are thrown away); [`detach`](AsyncResult::detach)
///   lets the work run to its end with nobody waiting.
///
/// ```
/// use multiproc::prelude::*;
/// fn inc(x: u32) -> u32 { x + 1 }
///
/// # fn main() -> multiproc::Result<()> {
/// let pool = Pool::new(2)?;
/// let one = pool.apply_async(inc, 1)?;
/// let many = pool.map_async(inc, 0..10)?;
/// many.wait();
/// assert!(many.ready());
/// assert_eq!(one.get()?, 2);
/// assert_eq!(many.get()?, (1..=10).collect::<Vec<_>>());
/// # Ok(()) }
/// ```
#[must_use = "dropping an AsyncResult cancels its work: call get(), .await it, or detach() it"]
pub struct AsyncResult<T> {
    c: Arc<Completion<T>>,
    control: Arc<dyn Control>,
    job: u64,
    detached: bool,
}

impl<T: Send + 'static> AsyncResult<T> {
    pub(super) fn new(c: Arc<Completion<T>>, control: Arc<dyn Control>, job: u64) -> Self {
        AsyncResult {
            c,
            control,
            job,
            detached: false,
        }
    }

    /// Waits until done or `deadline`: drives the pool meanwhile if the pool is
    /// driven by the threads that wait on it.
    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        if self.c.is_done() {
            return true;
        }
        let c = &self.c;
        if self.control.drive(&|| c.is_done(), deadline) {
            return self.c.is_done();
        }
        self.c.wait(deadline)
    }

    /// Whether the result is there (or the call failed, or was cancelled). Never
    /// blocks.
    pub fn ready(&self) -> bool {
        self.c.is_done()
    }

    /// Same as [`ready`](AsyncResult::ready), under the name `concurrent.futures` uses.
    pub fn done(&self) -> bool {
        self.c.is_done()
    }

    /// Whether a call of it runs on a worker now.
    pub fn running(&self) -> bool {
        !self.c.is_done() && self.control.running(self.job)
    }

    /// Whether it was cancelled ([`cancel`](AsyncResult::cancel)) before it completed.
    pub fn cancelled(&self) -> bool {
        self.c.lock().cancelled
    }

    /// Waits until the result is there.
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits at most `timeout`; `true` if the result is there.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Some(Instant::now() + timeout))
    }

    /// Whether the call succeeded; `None` while it runs.
    pub fn successful(&self) -> Option<bool> {
        self.c.lock().ok
    }

    /// Waits for the result.
    pub fn get(self) -> Result<T> {
        self.wait_until(None);
        self.c.take()
    }

    /// Waits at most `timeout` for the result: [`Error::Timeout`] if it is not
    /// there yet (wait again, or later `get`). A result is handed out once; after that
    /// the handle answers [`Error::PoolTerminated`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        if !self.wait_until(Some(Instant::now() + timeout)) {
            return Err(Error::Timeout {
                what: "an asynchronous pool result".into(),
                timeout,
            });
        }
        self.c.take()
    }

    /// Cancels the work: calls still queued are removed; a call already running has
    /// its worker killed and replaced (process pool). A thread cannot be killed, nor
    /// one MPI rank stopped, nor a call on a cluster node reached: there a running call
    /// runs to its end and its answer is thrown away. [`get`](AsyncResult::get) then returns [`Error::Cancelled`].
    ///
    /// Returns `true` if the handle is cancelled now, also when it already was (as
    /// Python's `Future.cancel`); `false` (and changes nothing) if its result was
    /// already there.
    ///
    /// A worker is killed only if every call it holds is this handle's: one that
    /// also holds other work (queued behind the running call) is left to finish.
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::prelude::*;
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let pool = Pool::new(1)?;
    /// let slow = pool.apply_async(nap, 60_000)?;
    /// assert!(slow.cancel());
    /// assert!(slow.cancelled());
    /// assert!(matches!(slow.get(), Err(Error::Cancelled)));
    /// assert_eq!(pool.apply(nap, 1)?, 1); // a new worker took the killed one's place
    /// # Ok(()) }
    /// ```
    pub fn cancel(&self) -> bool {
        if self.c.is_done() {
            return self.cancelled();
        }
        // Stop the work first, so that no answer races the cancel needlessly.
        self.control.cancel(self.job, true);
        let won = self.c.complete(Err(Error::Cancelled), true);
        self.control.wake();
        // Lost to another cancel (another thread's): cancelled all the same.
        won || self.cancelled()
    }

    /// Lets the work run to its end with nobody waiting for it (fire and forget);
    /// callbacks registered still run.
    pub fn detach(mut self) {
        self.detached = true;
    }

    /// Runs `f` once with the result when it is there: on the thread that drives the
    /// pool at that moment (the pool's background thread, or a thread waiting on the
    /// pool), or right away on this thread if the result is already there. Also run
    /// with [`Error::Cancelled`] on cancel. Keep it short: the pool waits for it. It may
    /// submit work to any pool, and wait on a process pool (the thread leads it
    /// meanwhile), but not wait on the pool that runs it otherwise (a `ThreadPool`, or
    /// an MPI or cluster pool, whose one driving thread it runs on): that waits for
    /// itself.
    ///
    /// A callback that panics does not harm the pool: the panic is reported (a
    /// `tracing` error event, and [`callback_panic`](AsyncResult::callback_panic)).
    /// After [`get_timeout`](AsyncResult::get_timeout) handed the result out, `f`
    /// never runs.
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use multiproc::prelude::*;
    /// fn inc(x: u32) -> u32 { x + 1 }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let pool = Pool::new(2)?;
    /// let (tx, rx) = mpsc::channel();
    /// let h = pool.apply_async(inc, 41)?;
    /// h.on_done(move |r| tx.send(*r.as_ref().unwrap()).unwrap());
    /// h.detach();
    /// assert_eq!(rx.recv().unwrap(), 42);
    /// # Ok(()) }
    /// ```
    pub fn on_done(&self, f: impl FnOnce(&Result<T>) + Send + 'static) {
        self.c.on_done(Box::new(f));
    }

    /// Runs `f` with the value if the work succeeds (Python's `callback`); see
    /// [`on_done`](AsyncResult::on_done).
    pub fn callback(self, f: impl FnOnce(&T) + Send + 'static) -> Self {
        self.on_done(move |r| {
            if let Ok(v) = r {
                f(v)
            }
        });
        self
    }

    /// Runs `f` with the error if the work fails (Python's `error_callback`); see
    /// [`on_done`](AsyncResult::on_done).
    pub fn error_callback(self, f: impl FnOnce(&Error) + Send + 'static) -> Self {
        self.on_done(move |r| {
            if let Err(e) = r {
                f(e)
            }
        });
        self
    }

    /// The message of the first callback of this handle that panicked, if any.
    pub fn callback_panic(&self) -> Option<String> {
        self.c.lock().callback_panic.clone()
    }

    pub(super) fn watcher(&self) -> &dyn Watch {
        &*self.c
    }
}

impl<T> Drop for AsyncResult<T> {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        // Also for a handle that completed: a map that failed early has calls left,
        // nobody wants them (cancelling a finished job does nothing).
        self.control.cancel(self.job, false);
        if !matches!(self.c.lock().outcome, Outcome::Ready(_) | Outcome::Taken) {
            self.c.complete(Err(Error::Cancelled), true);
            self.control.wake();
        }
    }
}

impl<T: Send + 'static> Future for AsyncResult<T> {
    type Output = Result<T>;

    /// Ready once the pool answered; the pool's own threads complete it (no executor
    /// is needed in the library: any runtime's waker works).
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        self.c.poll_take(cx.waker())
    }
}

impl<T> std::fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.c.lock();
        let state = match st.outcome {
            Outcome::Pending => "pending",
            Outcome::Completing | Outcome::Ready(_) if st.cancelled => "cancelled",
            Outcome::Completing | Outcome::Ready(_) => "done",
            Outcome::Taken => "taken",
        };
        f.debug_struct("AsyncResult")
            .field("state", &state)
            .finish()
    }
}
