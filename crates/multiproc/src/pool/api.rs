//! [`TaskPool`]: the one interface every pool offers (processes, threads, MPI ranks,
//! cluster nodes), written once over the contract each pool implements
//! ([`Backend`], in `backend`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ChunkSize;
use super::backend::{Arg, Backend, Control, JobId, Results, Ret, Step};
use super::batch::BatchSink;
use super::future::{self, AsyncResult};
use super::imap::Imap;
use crate::error::{Error, Result};

/// The pool interface shared by [`Pool`](crate::Pool) (processes),
/// [`ThreadPool`](crate::ThreadPool) (threads) and, with feature `mpi`, the MPI pool.
///
/// Every method takes a plain `fn(A) -> R` task. Results come back by value, typed, in
/// input order unless the method says otherwise; a failed call comes back as the
/// [`Error`] that says why (panic, signal, timeout...).
///
/// ```
/// use multiproc::prelude::*;
///
/// fn square(x: u64) -> u64 { x * x }
///
/// # fn main() -> multiproc::Result<()> {
/// let pool = Pool::new(2)?;
/// assert_eq!(pool.map(square, 1..=4)?, vec![1, 4, 9, 16]);
/// let threads = ThreadPool::new(2)?;
/// assert_eq!(threads.map(square, 1..=4)?, vec![1, 4, 9, 16]);
/// # Ok(()) }
/// ```
pub trait TaskPool: Backend {
    /// Takes no new work; what was submitted still runs. Idempotent.
    fn close(&self);

    /// Stops at once: workers are killed, unfinished calls answer
    /// [`Error::PoolTerminated`].
    fn terminate(&self);

    /// Waits until a closed (or terminated) pool has finished its work and its workers
    /// have exited. Errors if the pool was not closed first, as in Python.
    fn join(&self) -> Result<()>;

    /// Runs `f` on every item; returns the results in input order, or the first error
    /// to arrive (remaining work of the call is cancelled).
    ///
    /// Python's `starmap(f, [(a, b), ...])` is this `map` with a tuple argument: the
    /// task takes `(a, b): (A, B)` and the items are tuples. (A separate `starmap`
    /// would be `map` under another name: Rust functions take one typed argument
    /// here, and a tuple is one.)
    ///
    /// On a process [`Pool`](crate::Pool), plain values (integers, floats, `bool`,
    /// `char`, arrays and tuples of one of them) travel as their bytes; and when `A` and
    /// `R` are plain with the same size and alignment, each result is written over its
    /// call's argument and the arguments' vector comes back as the result (no second
    /// buffer, as `Vec::into_iter().map(..).collect()` reuses its vector).
    ///
    /// ```
    /// use multiproc::prelude::*;
    /// fn pow((base, exp): (u64, u32)) -> u64 { base.pow(exp) }
    /// fn half(x: u64) -> f64 { x as f64 / 2.0 }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let pool = Pool::new(2)?;
    /// assert_eq!(pool.map(pow, [(2, 3), (3, 2)])?, vec![8, 9]); // starmap
    /// let xs: Vec<u64> = (0..10_000).collect();
    /// let at = xs.as_ptr() as usize;
    /// let halves = pool.map(half, xs)?; // u64 -> f64: written in place
    /// assert_eq!((halves[3], halves.as_ptr() as usize), (1.5, at));
    /// # Ok(()) }
    /// ```
    #[doc(alias = "starmap")]
    fn map<A: Arg, R: Ret>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<R>> {
        map_until(self, f, items, None)
    }

    /// Like [`map`](TaskPool::map), with a deadline: once `timeout` has passed without
    /// every result, answers [`Error::Timeout`] and cancels the rest of the call
    /// (queued calls are dropped; running ones are stopped where the pool can, as
    /// [`AsyncResult::cancel`] does: a process pool's worker that holds only this
    /// call's work is killed and replaced).
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::prelude::*;
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let pool = Pool::new(2)?;
    /// let e = pool.map_timeout(nap, [1, 60_000], Duration::from_millis(200)).unwrap_err();
    /// assert!(e.is_timeout());
    /// assert_eq!(pool.map_timeout(nap, [1, 2], Duration::from_secs(30))?, vec![1, 2]);
    /// # Ok(()) }
    /// ```
    fn map_timeout<A: Arg, R: Ret>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        timeout: Duration,
    ) -> Result<Vec<R>> {
        map_until(self, f, items, Some(timeout))
    }

    /// Like [`map`](TaskPool::map), but keeps every call's own result: one failed call
    /// does not hide the others.
    fn map_results<A: Arg, R: Ret>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<Result<R>>> {
        let items: Vec<A> = items.into_iter().collect();
        let n = items.len();
        let (_, mut rx) = run_all(self, f, items, self.chunk_size(), true)?;
        let mut out: Vec<Option<Result<R>>> = (0..n).map(|_| None).collect();
        let mut bar = self.progress().start(Some(n as u64));
        let mut received = 0u64;
        while let Step::Got(batch) = rx.recv(None) {
            received += batch.len() as u64;
            for (i, r) in batch {
                if let Some(slot) = out.get_mut(i) {
                    *slot = Some(r);
                }
            }
            bar.set(received);
        }
        bar.finish();
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or(Err(Error::PoolTerminated)))
            .collect())
    }

    /// Runs `f` on every item and combines the results with `combine` (associative:
    /// `combine(a, combine(b, c)) == combine(combine(a, b), c)`), **inside the workers**:
    /// each worker combines the results of the chunk it ran and sends back one partial,
    /// and the caller combines only the partials, in input order. `None` for no items;
    /// the first error to arrive otherwise, as [`map`](TaskPool::map).
    ///
    /// Use it when the results are big and merging them is real work (a word count's
    /// maps, histograms, sums of vectors): with `map` and a merge in the caller, that
    /// merge is serial and caps the speed-up on any number of workers; here it runs in
    /// parallel (rayon's `map(..).reduce(..)`; Python's pools have no equivalent).
    /// Items are cut into three chunks per worker.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use multiproc::prelude::*;
    ///
    /// fn count(text: String) -> HashMap<String, u64> {
    ///     let mut m = HashMap::new();
    ///     for w in text.split_whitespace() {
    ///         *m.entry(w.to_owned()).or_insert(0) += 1;
    ///     }
    ///     m
    /// }
    /// fn merge(mut a: HashMap<String, u64>, b: HashMap<String, u64>) -> HashMap<String, u64> {
    ///     for (w, n) in b {
    ///         *a.entry(w).or_insert(0) += n;
    ///     }
    ///     a
    /// }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let pool = Pool::new(2)?;
    /// let texts = ["a b a", "b c", "a"].map(String::from);
    /// let total = pool.map_reduce(count, texts, merge)?.unwrap_or_default();
    /// assert_eq!((total["a"], total["b"], total["c"]), (3, 2, 1));
    /// # Ok(()) }
    /// ```
    fn map_reduce<A: Arg, R: Ret>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        combine: fn(R, R) -> R,
    ) -> Result<Option<R>>
    where
        Self: Sized,
    {
        let items: Vec<A> = items.into_iter().collect();
        let chunks = super::reduce::chunks(f, combine, items, self.parallelism());
        let partials = self.map(super::reduce::run_chunk::<A, R>, chunks)?;
        Ok(partials.into_iter().flatten().reduce(combine))
    }

    /// A lazy, ordered iterator of results. Reads `items` only as results are consumed
    /// (a bounded window ahead), so it works on an endless input with bounded memory.
    /// Dropping the iterator cancels what it had not yet received.
    fn imap<'p, A: Arg, R: Ret, I: IntoIterator<Item = A>>(
        &'p self,
        f: fn(A) -> R,
        items: I,
    ) -> Imap<'p, Self, A, R, I::IntoIter>
    where
        Self: Sized,
    {
        Imap::new(self, f, items.into_iter(), true)
    }

    /// Like [`imap`](TaskPool::imap), but yields each `Result<R>` as soon as it
    /// arrives, in completion order. [`Imap::indexed`] also gives each result's index
    /// in `items` (Python's `imap_unordered` gives no index; with it, results can be put
    /// back in place).
    ///
    /// ```
    /// use multiproc::prelude::*;
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let pool = Pool::new(2)?;
    /// let mut total = 0;
    /// for r in pool.imap_unordered(square, 1..=4) {
    ///     total += r?;
    /// }
    /// assert_eq!(total, 30);
    /// let mut back = vec![0; 4];
    /// for (i, r) in pool.imap_unordered(square, 1..=4).indexed() {
    ///     back[i] = r?;
    /// }
    /// assert_eq!(back, [1, 4, 9, 16]);
    /// # Ok(()) }
    /// ```
    fn imap_unordered<'p, A: Arg, R: Ret, I: IntoIterator<Item = A>>(
        &'p self,
        f: fn(A) -> R,
        items: I,
    ) -> Imap<'p, Self, A, R, I::IntoIter>
    where
        Self: Sized,
    {
        Imap::new(self, f, items.into_iter(), false)
    }

    /// Runs one call and waits for it.
    fn apply<A: Arg, R: Ret>(&self, f: fn(A) -> R, arg: A) -> Result<R> {
        let (job, mut rx) = run_all(self, f, vec![arg], ChunkSize::Fixed(1), true)?;
        let cancel = CancelOnDrop {
            pool: self,
            job,
            armed: true,
        };
        let r = loop {
            match rx.recv(None) {
                Step::Got(batch) => {
                    if let Some((_, r)) = batch.into_iter().next() {
                        break r;
                    }
                }
                Step::Empty => {}
                Step::Ended => break Err(Error::PoolTerminated),
            }
        };
        let mut cancel = cancel;
        cancel.armed = false;
        r
    }

    /// Starts one call; the handle gives its result later (see [`AsyncResult`]:
    /// dropping it cancels the call).
    fn apply_async<A: Arg, R: Ret>(&self, f: fn(A) -> R, arg: A) -> Result<AsyncResult<R>> {
        let (c, sink) = future::one::<R>();
        let (job, control) = submit_async(self, f, vec![arg], ChunkSize::Fixed(1), sink)?;
        Ok(AsyncResult::new(c, control, job))
    }

    /// Starts a map; the handle gives the ordered results later, or the first error
    /// (see [`AsyncResult`]: dropping it cancels the map). Python's `starmap_async`
    /// too: a tuple argument (see [`map`](TaskPool::map)).
    #[doc(alias = "starmap_async")]
    fn map_async<A: Arg, R: Ret>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> Result<AsyncResult<Vec<R>>> {
        let items: Vec<A> = items.into_iter().collect();
        let (c, sink) = future::many::<R>(items.len());
        let (job, control) = submit_async(self, f, items, self.chunk_size(), sink)?;
        Ok(AsyncResult::new(c, control, job))
    }
}

/// `map`, with or without a deadline.
fn map_until<P: Backend + ?Sized, A: Arg, R: Ret>(
    pool: &P,
    f: fn(A) -> R,
    items: impl IntoIterator<Item = A>,
    timeout: Option<Duration>,
) -> Result<Vec<R>> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let items = collect_items(items);
    let n = items.len();
    // Plain arguments and results of one size: the results go over the arguments, in
    // the vector they are already in (see `sys::lend`), where the pool lends them.
    let in_place = if pool.lends_plain() {
        crate::sys::lend::PlainBytes::in_place::<A, R>(items).map(Arc::new)
    } else {
        Err(items)
    };
    let (job, mut rx, mut out) = match in_place {
        Ok(bytes) => {
            let (job, rx) = pool.open(f, pool.chunk_size(), true)?;
            if let Err(e) = pool.submit_lent(&job, f, 0, bytes.clone()) {
                pool.cancel(job.id(), false);
                return Err(e);
            }
            pool.seal(job.id());
            let out = super::ordered::Ordered::in_place(n, bytes);
            (job.id(), rx, out)
        }
        Err(items) => {
            let (job, rx) = run_all(pool, f, items, pool.chunk_size(), true)?;
            (job, rx, super::ordered::Ordered::new(n))
        }
    };
    let mut cancel = CancelOnDrop {
        pool,
        job,
        armed: true,
    };
    let mut bar = pool.progress().start(Some(n as u64));
    let mut received = 0;
    while received < n {
        let batch = match rx.recv(deadline) {
            Step::Got(batch) => batch,
            Step::Empty => {
                if let (Some(d), Some(timeout)) = (deadline, timeout)
                    && Instant::now() >= d
                {
                    cancel.armed = false;
                    pool.cancel(job, true);
                    return Err(Error::Timeout {
                        what: format!("a map of {n} calls ({received} answered)"),
                        timeout,
                    });
                }
                continue;
            }
            Step::Ended => return Err(Error::PoolTerminated),
        };
        received += batch.len();
        bar.set(received as u64);
        let (at, values, errors) = batch.into_parts();
        if let Some((_, e)) = errors.into_iter().next() {
            return Err(e);
        }
        out.add_batch(at, values);
    }
    bar.finish();
    cancel.armed = false;
    out.finish().ok_or(Error::PoolTerminated)
}

/// The arguments of a job in a vector (as they are, if they are one already), its
/// pages mapped up front (see `sys::mem`).
fn collect_items<A, I: IntoIterator<Item = A>>(items: I) -> Vec<A> {
    let items = items.into_iter();
    if typeid::of::<I::IntoIter>() == typeid::of::<std::vec::IntoIter<A>>() {
        // Collecting a vector's own iterator reuses its buffer: nothing to map.
        return items.collect();
    }
    let mut v = Vec::with_capacity(items.size_hint().0);
    crate::sys::mem::prefault_spare(&mut v);
    v.extend(items);
    v
}

/// Opens a job for `f` whose results go to `sink`, submits all of `items` and seals
/// it: what `apply_async` and `map_async` start with.
fn submit_async<P: Backend + ?Sized, A: Arg, R: Ret>(
    pool: &P,
    f: fn(A) -> R,
    items: Vec<A>,
    chunk: ChunkSize,
    sink: Arc<dyn BatchSink<R>>,
) -> Result<(u64, Arc<dyn Control>)> {
    let (job, control) = pool.open_async(f, chunk, sink)?;
    if let Err(e) = pool.submit(&job, f, 0, items) {
        pool.cancel(job.id(), false);
        return Err(e);
    }
    pool.seal(job.id());
    Ok((job.id(), control))
}

/// Opens a job for `f`, submits all of `items` and seals it: what every eager method
/// (`map`, `map_results`, `map_async`, `apply_async`) starts with.
fn run_all<P: Backend + ?Sized, A: Arg, R: Ret>(
    pool: &P,
    f: fn(A) -> R,
    items: Vec<A>,
    chunk: ChunkSize,
    caller_driven: bool,
) -> Result<(u64, Results<R>)> {
    let (job, rx) = pool.open(f, chunk, caller_driven)?;
    if let Err(e) = pool.submit(&job, f, 0, items) {
        pool.cancel(job.id(), false);
        return Err(e);
    }
    pool.seal(job.id());
    Ok((job.id(), rx))
}

/// Cancels a job if the call that owns it returns early (an error, or a panic).
struct CancelOnDrop<'p, P: Backend + ?Sized> {
    pool: &'p P,
    job: u64,
    armed: bool,
}

impl<P: Backend + ?Sized> Drop for CancelOnDrop<'_, P> {
    fn drop(&mut self) {
        if self.armed {
            self.pool.cancel(self.job, false);
        }
    }
}

/// Gives a pool type the [`TaskPool`] methods as inherent methods, so that calling them
/// needs no trait import (and `pool.map` is never mistaken for `Iterator::map`).
macro_rules! inherent_task_pool_methods {
    ($pool:ty) => {
        impl $pool {
            /// See [`TaskPool::map`](crate::TaskPool::map) (Python's `starmap` too: a
            /// tuple argument).
            #[doc(alias = "starmap")]
            pub fn map<A: $crate::pool::Arg, R: $crate::pool::Ret>(
                &self,
                f: fn(A) -> R,
                items: impl IntoIterator<Item = A>,
            ) -> $crate::Result<Vec<R>> {
                <Self as $crate::TaskPool>::map(self, f, items)
            }

            /// See [`TaskPool::map_reduce`](crate::TaskPool::map_reduce).
            pub fn map_reduce<A: $crate::pool::Arg, R: $crate::pool::Ret>(
                &self,
                f: fn(A) -> R,
                items: impl IntoIterator<Item = A>,
                combine: fn(R, R) -> R,
            ) -> $crate::Result<Option<R>> {
                <Self as $crate::TaskPool>::map_reduce(self, f, items, combine)
            }

            /// See [`TaskPool::map_timeout`](crate::TaskPool::map_timeout).
            pub fn map_timeout<A: $crate::pool::Arg, R: $crate::pool::Ret>(
                &self,
                f: fn(A) -> R,
                items: impl IntoIterator<Item = A>,
                timeout: std::time::Duration,
            ) -> $crate::Result<Vec<R>> {
                <Self as $crate::TaskPool>::map_timeout(self, f, items, timeout)
            }

            /// See [`TaskPool::map_results`](crate::TaskPool::map_results).
            pub fn map_results<A: $crate::pool::Arg, R: $crate::pool::Ret>(
                &self,
                f: fn(A) -> R,
                items: impl IntoIterator<Item = A>,
            ) -> $crate::Result<Vec<$crate::Result<R>>> {
                <Self as $crate::TaskPool>::map_results(self, f, items)
            }

            /// See [`TaskPool::imap`](crate::TaskPool::imap).
            pub fn imap<A: $crate::pool::Arg, R: $crate::pool::Ret, I: IntoIterator<Item = A>>(
                &self,
                f: fn(A) -> R,
                items: I,
            ) -> $crate::pool::Imap<'_, Self, A, R, I::IntoIter> {
                <Self as $crate::TaskPool>::imap(self, f, items)
            }

            /// See [`TaskPool::imap_unordered`](crate::TaskPool::imap_unordered).
            pub fn imap_unordered<
                A: $crate::pool::Arg,
                R: $crate::pool::Ret,
                I: IntoIterator<Item = A>,
            >(
                &self,
                f: fn(A) -> R,
                items: I,
            ) -> $crate::pool::Imap<'_, Self, A, R, I::IntoIter> {
                <Self as $crate::TaskPool>::imap_unordered(self, f, items)
            }

            /// See [`TaskPool::apply`](crate::TaskPool::apply).
            pub fn apply<A: $crate::pool::Arg, R: $crate::pool::Ret>(
                &self,
                f: fn(A) -> R,
                arg: A,
            ) -> $crate::Result<R> {
                <Self as $crate::TaskPool>::apply(self, f, arg)
            }

            /// See [`TaskPool::apply_async`](crate::TaskPool::apply_async).
            pub fn apply_async<A: $crate::pool::Arg, R: $crate::pool::Ret>(
                &self,
                f: fn(A) -> R,
                arg: A,
            ) -> $crate::Result<$crate::AsyncResult<R>> {
                <Self as $crate::TaskPool>::apply_async(self, f, arg)
            }

            /// See [`TaskPool::map_async`](crate::TaskPool::map_async).
            pub fn map_async<A: $crate::pool::Arg, R: $crate::pool::Ret>(
                &self,
                f: fn(A) -> R,
                items: impl IntoIterator<Item = A>,
            ) -> $crate::Result<$crate::AsyncResult<Vec<R>>> {
                <Self as $crate::TaskPool>::map_async(self, f, items)
            }

            /// See [`TaskPool::close`](crate::TaskPool::close).
            pub fn close(&self) {
                <Self as $crate::TaskPool>::close(self)
            }

            /// See [`TaskPool::terminate`](crate::TaskPool::terminate).
            pub fn terminate(&self) {
                <Self as $crate::TaskPool>::terminate(self)
            }

            /// See [`TaskPool::join`](crate::TaskPool::join).
            pub fn join(&self) -> $crate::Result<()> {
                <Self as $crate::TaskPool>::join(self)
            }
        }
    };
}
pub(crate) use inherent_task_pool_methods;
