//! Handles on results still to come: [`AsyncResult`] and the [`Imap`] iterator.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::api::sealed::{Backend, Results, Step};
use super::api::{Arg, Ret};
use super::progress::Bar;
use crate::error::{Error, Result};

/// The result of [`apply_async`](crate::TaskPool::apply_async) or
/// [`map_async`](crate::TaskPool::map_async), to collect later.
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
#[must_use = "an AsyncResult holds work in progress; call get() for its result"]
pub struct AsyncResult<T> {
    state: Mutex<Box<dyn Collect<T>>>,
}

/// Gathers a job's results until it has what the handle gives out.
trait Collect<T>: Send {
    /// Receives until done or the deadline; `true` if done.
    fn pump(&mut self, deadline: Option<Instant>) -> bool;
    /// Done, and no call failed.
    fn succeeded(&self) -> bool;
    /// The result (once).
    fn take(&mut self) -> Result<T>;
}

/// Results received so far, by index.
struct Slots<R> {
    rx: Results<R>,
    slots: Vec<Option<R>>,
    received: usize,
    failure: Option<Error>,
    ended: bool,
    taken: bool,
}

impl<R: Ret> Slots<R> {
    fn new(rx: Results<R>, expected: usize) -> Self {
        Slots {
            rx,
            slots: (0..expected).map(|_| None).collect(),
            received: 0,
            failure: None,
            ended: false,
            taken: false,
        }
    }

    fn done(&self) -> bool {
        self.received == self.slots.len() || self.failure.is_some() || self.ended
    }

    fn pump(&mut self, deadline: Option<Instant>) -> bool {
        while !self.done() {
            match self.rx.recv(deadline) {
                Step::Got(batch) => {
                    for (i, r) in batch {
                        match r {
                            Ok(v) => {
                                if let Some(slot) = self.slots.get_mut(i) {
                                    *slot = Some(v);
                                    self.received += 1;
                                }
                            }
                            Err(e) => {
                                self.failure.get_or_insert(e);
                            }
                        }
                    }
                }
                Step::Ended => self.ended = true,
                Step::Empty => return false,
            }
        }
        true
    }

    fn take_all(&mut self) -> Result<Vec<R>> {
        if std::mem::replace(&mut self.taken, true) {
            return Err(Error::PoolTerminated);
        }
        if let Some(e) = self.failure.take() {
            return Err(e);
        }
        std::mem::take(&mut self.slots)
            .into_iter()
            .map(|v| v.ok_or(Error::PoolTerminated))
            .collect()
    }
}

struct One<R>(Slots<R>);
struct Many<R>(Slots<R>);

impl<R: Ret> Collect<R> for One<R> {
    fn pump(&mut self, deadline: Option<Instant>) -> bool {
        self.0.pump(deadline)
    }
    fn succeeded(&self) -> bool {
        self.0.failure.is_none() && self.0.received == self.0.slots.len()
    }
    fn take(&mut self) -> Result<R> {
        self.0.take_all()?.pop().ok_or(Error::PoolTerminated)
    }
}

impl<R: Ret> Collect<Vec<R>> for Many<R> {
    fn pump(&mut self, deadline: Option<Instant>) -> bool {
        self.0.pump(deadline)
    }
    fn succeeded(&self) -> bool {
        self.0.failure.is_none() && self.0.received == self.0.slots.len()
    }
    fn take(&mut self) -> Result<Vec<R>> {
        self.0.take_all()
    }
}

impl<R: Ret> AsyncResult<R> {
    pub(crate) fn single(rx: Results<R>) -> Self {
        AsyncResult {
            state: Mutex::new(Box::new(One(Slots::new(rx, 1)))),
        }
    }
}

impl<R: Ret> AsyncResult<Vec<R>> {
    pub(crate) fn many(rx: Results<R>, n: usize) -> Self {
        AsyncResult {
            state: Mutex::new(Box::new(Many(Slots::new(rx, n)))),
        }
    }
}

impl<T> AsyncResult<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Box<dyn Collect<T>>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the result is there (or the call failed). Never blocks.
    pub fn ready(&self) -> bool {
        self.lock().pump(Some(Instant::now()))
    }

    /// Waits until the result is there.
    pub fn wait(&self) {
        self.lock().pump(None);
    }

    /// Waits at most `timeout`; `true` if the result is there.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.lock().pump(Some(Instant::now() + timeout))
    }

    /// Whether the call succeeded; `None` while it runs.
    pub fn successful(&self) -> Option<bool> {
        let mut c = self.lock();
        c.pump(Some(Instant::now())).then(|| c.succeeded())
    }

    /// Waits for the result.
    pub fn get(self) -> Result<T> {
        let mut c = self.lock();
        c.pump(None);
        c.take()
    }

    /// Waits at most `timeout` for the result: [`Error::Timeout`] if it is not
    /// there yet (wait again, or later `get`). A result is handed out once; after that
    /// the handle answers [`Error::PoolTerminated`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        let mut c = self.lock();
        if !c.pump(Some(Instant::now() + timeout)) {
            return Err(Error::Timeout {
                what: "an asynchronous pool result".into(),
                timeout,
            });
        }
        c.take()
    }
}

/// The iterator of [`imap`](crate::TaskPool::imap) and
/// [`imap_unordered`](crate::TaskPool::imap_unordered).
///
/// It keeps at most a bounded window of calls submitted and unanswered, reading its
/// input only as results are taken: an endless input is fine. `imap` yields results in
/// input order; `imap_unordered` yields them as they arrive (with their index, see
/// [`Imap::indexed`]). Dropping it cancels calls not yet answered.
pub struct Imap<'p, P: Backend + ?Sized, A: Arg, R: Ret, I: Iterator<Item = A>> {
    pool: &'p P,
    f: fn(A) -> R,
    job: Option<(u64, Results<R>)>,
    input: Option<I>,
    ordered: bool,
    window: usize,
    submitted: usize,
    yielded: usize,
    buffer: HashMap<usize, Result<R>>,
    failed: Option<Error>,
    bar: Bar,
}

impl<'p, P: Backend + ?Sized, A: Arg, R: Ret, I: Iterator<Item = A>> Imap<'p, P, A, R, I> {
    pub(crate) fn new(pool: &'p P, f: fn(A) -> R, input: I, ordered: bool) -> Self {
        let (lower, upper) = input.size_hint();
        let total = (Some(lower) == upper).then_some(lower as u64);
        let job = pool.open(f, pool.chunk_size(), false);
        let (job, failed) = match job {
            Ok(j) => (Some(j), None),
            Err(e) => (None, Some(e)),
        };
        Imap {
            pool,
            f,
            job,
            input: Some(input),
            ordered,
            // Enough calls in flight to keep every worker busy with large chunks,
            // little enough that memory stays bounded whatever the input.
            window: (pool.parallelism() * 1024).clamp(64, 16384),
            submitted: 0,
            yielded: 0,
            buffer: HashMap::new(),
            failed,
            bar: pool.progress().start(total),
        }
    }

    /// Yields `(input index, result)` pairs instead of bare results.
    pub fn indexed(self) -> Indexed<'p, P, A, R, I> {
        Indexed(self)
    }

    fn top_up(&mut self) {
        let Some((job, _)) = &self.job else {
            return;
        };
        let job = *job;
        let Some(input) = self.input.as_mut() else {
            return;
        };
        let room = self.window.saturating_sub(self.submitted - self.yielded);
        if room < self.window / 2 && self.submitted > self.yielded {
            return; // top up in batches, not call by call
        }
        let batch: Vec<A> = input.by_ref().take(room).collect();
        let exhausted = batch.len() < room;
        if !batch.is_empty() {
            let n = batch.len();
            if let Err(e) = self.pool.submit(job, self.f, self.submitted, batch) {
                self.failed = Some(e);
                self.input = None;
                return;
            }
            self.submitted += n;
        }
        if exhausted {
            self.input = None;
            self.pool.seal(job);
        }
    }

    fn next_indexed(&mut self) -> Option<(usize, Result<R>)> {
        if let Some(e) = self.failed.take() {
            self.input = None;
            return Some((self.yielded, Err(e)));
        }
        self.top_up();
        loop {
            if self.ordered {
                if let Some(r) = self.buffer.remove(&self.yielded) {
                    return Some((self.yielded, r));
                }
            } else if let Some(&i) = self.buffer.keys().next() {
                let r = self.buffer.remove(&i)?;
                return Some((i, r));
            }
            if self.yielded >= self.submitted && self.input.is_none() {
                return None;
            }
            let (_, rx) = self.job.as_mut()?;
            match rx.recv(None) {
                Step::Got(batch) => self.buffer.extend(batch),
                Step::Empty => {}
                Step::Ended => {
                    // The pool stopped with calls unanswered.
                    self.input = None;
                    self.submitted = self.yielded;
                    return Some((self.yielded, Err(Error::PoolTerminated)));
                }
            }
        }
    }
}

impl<P: Backend + ?Sized, A: Arg, R: Ret, I: Iterator<Item = A>> Iterator for Imap<'_, P, A, R, I> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        let (_, r) = self.next_indexed()?;
        self.yielded += 1;
        self.bar.set(self.yielded as u64);
        if self.input.is_none() && self.yielded == self.submitted {
            self.bar.finish();
        }
        Some(r)
    }
}

/// [`Imap`] yielding `(input index, result)`.
pub struct Indexed<'p, P: Backend + ?Sized, A: Arg, R: Ret, I: Iterator<Item = A>>(
    Imap<'p, P, A, R, I>,
);

impl<P: Backend + ?Sized, A: Arg, R: Ret, I: Iterator<Item = A>> Iterator
    for Indexed<'_, P, A, R, I>
{
    type Item = (usize, Result<R>);

    fn next(&mut self) -> Option<(usize, Result<R>)> {
        let item = self.0.next_indexed()?;
        self.0.yielded += 1;
        self.0.bar.set(self.0.yielded as u64);
        Some(item)
    }
}

impl<P: Backend + ?Sized, A: Arg, R: Ret, I: Iterator<Item = A>> Drop for Imap<'_, P, A, R, I> {
    fn drop(&mut self) {
        if let Some((job, _)) = &self.job
            && (self.input.is_some() || self.yielded < self.submitted)
        {
            self.pool.cancel(*job);
        }
    }
}
