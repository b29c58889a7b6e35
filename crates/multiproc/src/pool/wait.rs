//! Waiting on many handles at once: [`wait`] and [`as_completed`], as in Python's
//! `concurrent.futures`, across submissions and pools of every kind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::future::{AsyncResult, WakeUp, Watch};
use crate::error::Result;
use private::Sealed as _;

/// When [`wait`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// As soon as one handle is done (or already was).
    FirstCompleted,
    /// As soon as one handle failed (its work answered an error), or when all are
    /// done. A cancelled handle counts as done, not as failed, as in Python's
    /// `FIRST_EXCEPTION`.
    FirstError,
    /// When every handle is done.
    AllCompleted,
}

mod private {
    /// Keeps [`Waitable`](super::Waitable) implemented only here.
    pub trait Sealed {
        #[doc(hidden)]
        fn watched(&self) -> &dyn super::Watch;
    }
}

/// A handle [`wait`] can watch: an [`AsyncResult`] of any type, or a reference to one
/// (`&dyn Waitable` mixes handles of different result types in one wait).
pub trait Waitable: private::Sealed {}

impl<T: Send + 'static> private::Sealed for AsyncResult<T> {
    fn watched(&self) -> &dyn Watch {
        self.watcher()
    }
}
impl<T: Send + 'static> Waitable for AsyncResult<T> {}

impl<W: Waitable + ?Sized> private::Sealed for &W {
    fn watched(&self) -> &dyn Watch {
        (**self).watched()
    }
}
impl<W: Waitable + ?Sized> Waitable for &W {}

/// Waits until `mode` is met or `timeout` passes (`None`: no limit); returns the
/// indices of the handles that are done and of those still pending, as Python's
/// `concurrent.futures.wait` returns its two sets. Nothing is taken from the handles:
/// collect the results with `get` afterwards.
///
/// ```
/// use std::time::Duration;
/// use multiproc::prelude::*;
/// use multiproc::{Wait, wait};
/// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
///
/// # fn main() -> multiproc::Result<()> {
/// let pool = Pool::new(2)?;
/// let handles = vec![pool.apply_async(nap, 5_000)?, pool.apply_async(nap, 1)?];
/// let (done, pending) = wait(&handles, Wait::FirstCompleted, None);
/// assert_eq!((done, pending), (vec![1], vec![0]));
/// # for h in &handles { h.cancel(); }
/// # Ok(()) }
/// ```
///
/// Handles of different result types (or pools) go in one slice as `&dyn Waitable`:
/// cast the first element and the rest follow (without the cast, the array's element
/// type is the first handle's, and the second fails with E0308 "mismatched types").
///
/// ```
/// use multiproc::prelude::*;
/// use multiproc::{Wait, Waitable, wait};
/// fn double(x: u64) -> u64 { 2 * x }
/// fn name(x: u64) -> String { format!("#{x}") }
///
/// # fn main() -> multiproc::Result<()> {
/// let pool = Pool::new(2)?;
/// let a = pool.apply_async(double, 21)?;
/// let b = pool.apply_async(name, 7)?;
/// let (done, _) = wait(&[&a as &dyn Waitable, &b], Wait::AllCompleted, None);
/// assert_eq!(done, [0, 1]);
/// assert_eq!((a.get()?, b.get()?), (42, "#7".to_owned()));
/// # Ok(()) }
/// ```
pub fn wait<W: Waitable>(
    handles: &[W],
    mode: Wait,
    timeout: Option<Duration>,
) -> (Vec<usize>, Vec<usize>) {
    let deadline = timeout.map(|t| Instant::now() + t);
    let wake = WakeUp::new();
    for h in handles {
        h.watched().watch(&wake);
    }
    loop {
        // Read the tick count before the states: a completion after the read rings.
        let seen = wake.ticks();
        let statuses: Vec<_> = handles.iter().map(|h| h.watched().status()).collect();
        let done = statuses.iter().filter(|s| s.done).count();
        let met = match mode {
            Wait::FirstCompleted => done > 0,
            Wait::FirstError => done == handles.len() || statuses.iter().any(|s| s.failed),
            Wait::AllCompleted => done == handles.len(),
        };
        if met || handles.is_empty() || deadline.is_some_and(|d| Instant::now() >= d) {
            let (done, pending): (Vec<usize>, Vec<usize>) =
                (0..handles.len()).partition(|&i| statuses[i].done);
            return (done, pending);
        }
        wake.wait_past(seen, deadline);
    }
}

/// The results of `handles` in the order they complete, each with its position in
/// `handles`, as Python's `concurrent.futures.as_completed` yields its futures.
///
/// ```
/// use std::time::Duration;
/// use multiproc::prelude::*;
/// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
///
/// # fn main() -> multiproc::Result<()> {
/// let pool = Pool::new(2)?;
/// let handles = vec![pool.apply_async(nap, 300)?, pool.apply_async(nap, 1)?];
/// let order: Vec<usize> = multiproc::as_completed(handles).map(|(i, _)| i).collect();
/// assert_eq!(order, vec![1, 0]);
/// # Ok(()) }
/// ```
pub fn as_completed<T: Send + 'static>(
    handles: impl IntoIterator<Item = AsyncResult<T>>,
) -> AsCompleted<T> {
    let handles: Vec<(usize, AsyncResult<T>)> = handles.into_iter().enumerate().collect();
    let wake = WakeUp::new();
    for (_, h) in &handles {
        h.watched().watch(&wake);
    }
    AsCompleted {
        handles,
        wake,
        deadline: None,
    }
}

/// The iterator of [`as_completed`]. Dropping it cancels the handles it did not yield
/// (as dropping them would).
#[must_use = "an AsCompleted holds work in progress; iterate it for the results"]
pub struct AsCompleted<T> {
    handles: Vec<(usize, AsyncResult<T>)>,
    wake: Arc<WakeUp>,
    deadline: Option<Instant>,
}

impl<T: Send + 'static> AsCompleted<T> {
    /// Stops yielding once `timeout` has passed from now: handles not done by then
    /// stay in the iterator (see [`remaining`](AsCompleted::remaining)).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.deadline = Some(Instant::now() + timeout);
        self
    }

    /// The handles not yet yielded, with their positions.
    pub fn remaining(self) -> Vec<(usize, AsyncResult<T>)> {
        self.handles
    }
}

impl<T: Send + 'static> Iterator for AsCompleted<T> {
    type Item = (usize, Result<T>);

    fn next(&mut self) -> Option<(usize, Result<T>)> {
        loop {
            if self.handles.is_empty() {
                return None;
            }
            let seen = self.wake.ticks();
            let first = self
                .handles
                .iter()
                .enumerate()
                .filter_map(|(k, (_, h))| {
                    let s = h.watched().status();
                    s.done.then_some((s.order, k))
                })
                .min();
            if let Some((_, k)) = first {
                let (i, h) = self.handles.swap_remove(k);
                return Some((i, h.get()));
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            self.wake.wait_past(seen, self.deadline);
        }
    }
}
