//! The pool contract: what a pool must do ([`Backend`]) for the
//! [`TaskPool`](crate::TaskPool) methods to work, what a handle asks of its pool
//! afterwards ([`Control`]), and how results come back ([`Results`], or a
//! [`BatchSink`] for a handle that does not pull them). Every pool (processes,
//! threads, MPI ranks, cluster nodes) implements it; the façade in `api` is written
//! once over it.
//!
//! The items are public in a module the crate keeps to itself: `TaskPool` names
//! `Backend` as its supertrait, so a user can call the methods but cannot implement
//! a pool of their own (a sealed trait).

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ChunkSize;
use super::batch::{Batch, BatchSink};
use super::progress::Progress;
use crate::error::{Error, Result};

/// Bounds a task's argument must meet to run on every kind of pool: serde's
/// `Serialize` and `DeserializeOwned` (the value is copied into the worker, so it owns
/// its data: no borrowed `&str`, use `String`), `Send` and `'static`. Implemented for
/// every type that meets them; see [`Ret`] for which types qualify and which do not.
pub trait Arg: Serialize + DeserializeOwned + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Send + 'static> Arg for T {}

/// Bounds a task's result must meet to run on every kind of pool (the same as
/// [`Arg`]'s): the value travels back to the caller by value, so it must have a serde
/// form that means the same thing in another process.
///
/// What qualifies: numbers, `bool`, `char`, `String`, `Vec`, arrays, tuples, `Option`,
/// `Result`, maps and sets of those, your own types with `#[derive(Serialize,
/// Deserialize)]`, `serde_bytes::ByteBuf` for bulk bytes (sent as one run), and
/// multiproc's own handles: [`Pipe`](crate::Pipe) ends, [`Queue`](crate::Queue)s,
/// [`SharedMemory`](crate::SharedMemory), [`Value`](crate::Value),
/// [`Array`](crate::Array), and [`Handle`](crate::Handle) for any other OS handle.
///
/// What does not, and why: a [`File`](std::fs::File), a socket or an
/// [`OwnedFd`](std::os::fd::OwnedFd) by itself (its number means nothing in another
/// process: wrap it in a [`Handle`](crate::Handle), which the kernel duplicates into
/// the receiver); references and `Rc` (the value is copied, not shared); closures
/// (a task is a plain `fn`). The compiler names the missing bound, `Serialize` or
/// `Deserialize`, "required for `File` to implement `Ret`".
pub trait Ret: Serialize + DeserializeOwned + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Send + 'static> Ret for T {}

/// What an [`AsyncResult`](crate::AsyncResult) asks of its pool after submitting.
pub trait Control: Send + Sync {
    /// Nobody wants `job`'s results any more: its queued calls are dropped; with
    /// `stop_running`, its running calls are stopped where the pool can.
    fn cancel(&self, job: u64, stop_running: bool);
    /// Whether a call of `job` runs now.
    fn running(&self, job: u64) -> bool;
    /// For a pool whose waiting threads do its I/O: drives it until `done()` or
    /// `deadline`, and returns `true`. Others return `false` at once (their own
    /// threads complete the handle; it just waits).
    fn drive(&self, _done: &dyn Fn() -> bool, _deadline: Option<Instant>) -> bool {
        false
    }
    /// A handle completed without an answer of the pool's (a cancel): threads
    /// that wait on it through the pool must look again.
    fn wake(&self) {}
}

/// What one wait for a job's results gave.
pub enum Step<R> {
    /// Some results, with their input indices, in completion order.
    Got(Batch<R>),
    /// None before the deadline.
    Empty,
    /// The job will give no more (its last result was taken, or the pool stopped).
    Ended,
}

/// Where a pool delivers one job's results.
pub trait ResultSource<R>: Send {
    /// Waits until `deadline` (`None`: as long as it takes) for results.
    fn recv(&mut self, deadline: Option<Instant>) -> Step<R>;
}

/// Results of one job, in completion order.
pub struct Results<R>(pub(super) Box<dyn ResultSource<R>>);

impl<R: Send + 'static> Results<R> {
    /// Waits until `deadline` (`None`: as long as it takes) for results.
    pub fn recv(&mut self, deadline: Option<Instant>) -> Step<R> {
        self.0.recv(deadline)
    }

    /// Results sent on a channel (pools whose workers answer on their own
    /// threads); the job ends when every sender is gone.
    pub(super) fn channel(rx: mpsc::Receiver<Batch<R>>) -> Self {
        struct Channel<R>(mpsc::Receiver<Batch<R>>);
        impl<R: Send> ResultSource<R> for Channel<R> {
            fn recv(&mut self, deadline: Option<Instant>) -> Step<R> {
                use mpsc::RecvTimeoutError::{Disconnected, Timeout};
                let r = match deadline {
                    None => self.0.recv().map_err(|_| Disconnected),
                    Some(d) => self
                        .0
                        .recv_timeout(d.saturating_duration_since(Instant::now())),
                };
                match r {
                    Ok(batch) => Step::Got(batch),
                    Err(Timeout) => Step::Empty,
                    Err(Disconnected) => Step::Ended,
                }
            }
        }
        Results(Box::new(Channel(rx)))
    }
}

/// How an [`AsyncResult`](crate::AsyncResult) holds its pool's [`Control`].
pub type ControlRef = Arc<dyn Control>;

/// The id of an open job, as a [`Backend::Job`] gives it.
pub trait JobId {
    /// The id [`Backend::seal`] and [`Backend::cancel`] take.
    fn id(&self) -> u64;
}

impl JobId for u64 {
    fn id(&self) -> u64 {
        *self
    }
}

/// What a pool must do for [`TaskPool`](super::TaskPool)'s methods to work.
pub trait Backend {
    /// What the opener of a job holds to add calls to it. A pool whose core is
    /// untyped (it encodes the calls) needs only the id (`u64`); a pool that runs
    /// the calls in this process holds the job's typed state in it, so that calls
    /// of one type cannot reach another job's results: the compiler refuses them,
    /// nothing is checked at run time.
    type Job<A: Arg, R: Ret>: JobId;
    /// Opens a job running `f`; its results arrive on the returned channel.
    /// `caller_driven`: the caller waits for the results right away (a pool may
    /// then let the caller's thread do the I/O instead of another thread).
    fn open<A: Arg, R: Ret>(
        &self,
        f: fn(A) -> R,
        chunk: ChunkSize,
        caller_driven: bool,
    ) -> Result<(Self::Job<A, R>, Results<R>)>;
    /// Opens a job running `f` whose results go to `sink` as they arrive (an
    /// [`AsyncResult`](crate::AsyncResult)'s); nobody waits on it right away.
    fn open_async<A: Arg, R: Ret>(
        &self,
        f: fn(A) -> R,
        chunk: ChunkSize,
        sink: Arc<dyn BatchSink<R>>,
    ) -> Result<(Self::Job<A, R>, ControlRef)>;
    /// Adds calls `first, first+1, ...` to a job.
    fn submit<A: Arg, R: Ret>(
        &self,
        job: &Self::Job<A, R>,
        f: fn(A) -> R,
        first: usize,
        items: Vec<A>,
    ) -> Result<()>;
    /// Whether `map` should hand plain arguments to [`submit_lent`](Backend::submit_lent)
    /// and take the results in place: a pool whose workers get them as bytes, chunks
    /// of many calls at a time; if not, `map` keeps its own vector of results.
    fn lends_plain(&self) -> bool {
        false
    }
    /// Adds calls `first, first+1, ...` to a job, their plain arguments held in `items`
    /// (which may take the results in place, see `sys::lend`): lent to the workers
    /// chunk by chunk. A pool that does not lend gets the values, copied.
    fn submit_lent<A: Arg, R: Ret>(
        &self,
        job: &Self::Job<A, R>,
        f: fn(A) -> R,
        first: usize,
        items: Arc<crate::sys::lend::PlainBytes>,
    ) -> Result<()> {
        let values = items
            .with_range(0..items.len(), |mut bytes| {
                let n = bytes.len() / std::mem::size_of::<A>().max(1);
                let mut out = Vec::with_capacity(n);
                crate::sys::plain::read_run::<A>(&mut bytes, n, &mut out)
                    .and_then(|r| r.ok())
                    .map(|()| out)
            })
            .flatten()
            .ok_or(Error::PoolTerminated)?;
        self.submit(job, f, first, values)
    }
    /// No more calls for `job`.
    fn seal(&self, job: u64);
    /// Nobody wants `job`'s results any more (see [`Control::cancel`]).
    fn cancel(&self, job: u64, stop_running: bool);
    /// Workers, for window sizes.
    fn parallelism(&self) -> usize;
    /// The progress reporting configured for this pool.
    fn progress(&self) -> &Progress;
    /// Chunking configured for this pool.
    fn chunk_size(&self) -> ChunkSize;
}
