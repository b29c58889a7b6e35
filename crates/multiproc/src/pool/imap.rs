//! The lazy iterator of results of `imap` and `imap_unordered`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::backend::{Arg, Backend, JobId, Results, Ret, Step};
use super::progress::Bar;
use crate::error::{Error, Result};

/// The iterator of [`imap`](crate::TaskPool::imap) and
/// [`imap_unordered`](crate::TaskPool::imap_unordered).
///
/// It keeps at most a bounded window of calls submitted and unanswered, reading its
/// input only as results are taken: an endless input is fine. `imap` yields results in
/// input order; `imap_unordered` yields them as they arrive (with their index, see
/// [`Imap::indexed`]). Dropping it cancels calls not yet answered.
#[must_use = "an Imap does nothing until iterated; dropping it cancels its calls"]
pub struct Imap<'p, P: Backend + ?Sized, A: Arg, R: Ret, I: Iterator<Item = A>> {
    pool: &'p P,
    f: fn(A) -> R,
    job: Option<(P::Job<A, R>, Results<R>)>,
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
    pub(super) fn new(pool: &'p P, f: fn(A) -> R, input: I, ordered: bool) -> Self {
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
            self.pool.seal(job.id());
        }
    }

    /// The next result, waiting until `deadline` (`None`: as long as it takes);
    /// `Err(())` if it passed first.
    fn next_until(
        &mut self,
        deadline: Option<Instant>,
    ) -> std::result::Result<Option<(usize, Result<R>)>, ()> {
        if let Some(e) = self.failed.take() {
            self.input = None;
            return Ok(Some((self.yielded, Err(e))));
        }
        self.top_up();
        loop {
            if self.ordered {
                if let Some(r) = self.buffer.remove(&self.yielded) {
                    return Ok(Some((self.yielded, r)));
                }
            } else if let Some(&i) = self.buffer.keys().next() {
                return Ok(self.buffer.remove(&i).map(|r| (i, r)));
            }
            if self.yielded >= self.submitted && self.input.is_none() {
                return Ok(None);
            }
            let Some((_, rx)) = self.job.as_mut() else {
                return Ok(None);
            };
            match rx.recv(deadline) {
                Step::Got(batch) => self.buffer.extend(batch),
                Step::Empty if deadline.is_some_and(|d| Instant::now() >= d) => return Err(()),
                Step::Empty => {}
                Step::Ended => {
                    // The pool stopped with calls unanswered.
                    self.input = None;
                    self.submitted = self.yielded;
                    return Ok(Some((self.yielded, Err(Error::PoolTerminated))));
                }
            }
        }
    }

    fn next_indexed(&mut self) -> Option<(usize, Result<R>)> {
        self.next_until(None).unwrap_or(None)
    }

    /// Like [`Iterator::next`], waiting at most `timeout` (Python's
    /// `IMapIterator.next(timeout)`): `Err(`[`Error::Timeout`]`)` if no result came in
    /// time. Nothing is lost then: the iterator goes on where it was, and the call
    /// keeps running. `Ok(None)` once every result was yielded.
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::prelude::*;
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let pool = Pool::new(1)?;
    /// let mut results = pool.imap(nap, [300]);
    /// assert!(results.next_timeout(Duration::from_millis(10)).unwrap_err().is_timeout());
    /// assert_eq!(results.next_timeout(Duration::from_secs(30))?.transpose()?, Some(300));
    /// assert!(results.next_timeout(Duration::from_secs(1))?.is_none());
    /// # Ok(()) }
    /// ```
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Result<R>>> {
        let deadline = Instant::now().checked_add(timeout);
        match self.next_until(deadline) {
            Ok(item) => Ok(item.map(|(_, r)| self.yielded_one(r))),
            Err(()) => Err(Error::Timeout {
                what: "the next result of an imap".into(),
                timeout,
            }),
        }
    }

    /// Counts a result as yielded (progress included) and passes it on.
    fn yielded_one(&mut self, r: Result<R>) -> Result<R> {
        self.yielded += 1;
        self.bar.set(self.yielded as u64);
        if self.input.is_none() && self.yielded == self.submitted {
            self.bar.finish();
        }
        r
    }
}

impl<P: Backend + ?Sized, A: Arg, R: Ret, I: Iterator<Item = A>> Iterator for Imap<'_, P, A, R, I> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        let (_, r) = self.next_indexed()?;
        Some(self.yielded_one(r))
    }
}

/// [`Imap`] yielding `(input index, result)`.
#[must_use = "an Indexed does nothing until iterated; dropping it cancels its calls"]
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
            self.pool.cancel(job.id(), false);
        }
    }
}
