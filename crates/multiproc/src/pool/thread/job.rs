//! One job of a [`ThreadPool`](super::ThreadPool), typed by its result: where its
//! answers go, whether it was cancelled, and how its calls are cut into chunks, the
//! units of work on the pool's queue.
//!
//! Typed end to end: a chunk is a closure that owns its arguments and a reference to
//! its job; it runs the calls in order on one thread and hands the answers to the
//! job's sink. The handle the opener adds calls through ([`JobRef`]) carries the job's
//! result type, so calls cannot reach another job's sink: the compiler refuses them,
//! nothing is checked at run time.
//!
//! A job is over (its channel disconnects, its sink hears `end`) when the last
//! reference to it is gone: the pool's own, held from open until seal or cancel, and
//! one per chunk queued or running.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak, mpsc};

use super::shared::{Flags, Shared, Work};
use crate::error::Error;
use crate::pool::backend::JobId;
use crate::pool::batch::{Batch, BatchSink};
use crate::pool::{Arg, ChunkSize, Ret};

/// Calls in one chunk of an automatically sized job at most: a chunk's answers reach
/// the caller only when its last call ends, so `imap` and progress would stall behind
/// huge chunks.
const MAX_AUTO_CHUNK: usize = 1024;

/// Calls per chunk when `len` calls are submitted at once to `workers` threads.
///
/// - [`ChunkSize::Fixed(n)`](ChunkSize::Fixed): `n` (0 counts as 1), as in the
///   process pool.
/// - [`ChunkSize::Auto`]: the fair share, `len / (4 × workers)` rounded up (Python's
///   rule, which the process pool applies too), at most [`MAX_AUTO_CHUNK`]. Unlike the
///   process pool, no probe and no call-time bounds: a chunk costs a thread no message,
///   only a queue entry, so small chunks are cheap.
pub(super) fn chunk_len(chunk: ChunkSize, len: usize, workers: usize) -> usize {
    match chunk {
        ChunkSize::Fixed(n) => n.max(1),
        ChunkSize::Auto => len.div_ceil(4 * workers.max(1)).clamp(1, MAX_AUTO_CHUNK),
    }
}

/// Where a caller reads a job's answers, a chunk at a time.
pub(crate) type Answers<R> = mpsc::Receiver<Batch<R>>;

/// Where a job's answers go.
enum Out<R> {
    /// A caller pulls them (`map`, `imap`, `apply`).
    Channel(mpsc::Sender<Batch<R>>),
    /// An `AsyncResult`'s sink; it hears `end` when the job is dropped.
    Sink(Arc<dyn BatchSink<R>>),
}

/// One job's typed state.
pub(super) struct Job<R> {
    id: u64,
    /// The pool, told when the job is over (it keeps an entry per live job).
    pool: Weak<Shared>,
    chunk: ChunkSize,
    workers: usize,
    out: Out<R>,
    flags: Arc<Flags>,
}

/// What the opener of a job holds to add calls to it (the pool's
/// [`Backend::Job`](crate::pool::backend::Backend::Job)). Weak: the job must end
/// when its last chunk is done even while the opener (an `Imap`) lives on.
pub struct JobRef<R> {
    id: u64,
    job: Weak<Job<R>>,
}

impl<R> JobId for JobRef<R> {
    fn id(&self) -> u64 {
        self.id
    }
}

impl<R> JobRef<R> {
    /// The job, unless it is over (cancelled or terminated, and its chunks gone).
    pub(super) fn get(&self) -> Option<Arc<Job<R>>> {
        self.job.upgrade()
    }
}

impl<R: Ret> Job<R> {
    /// Job `id` of `pool`, whose answers go to a channel the caller reads.
    pub(super) fn channel(
        id: u64,
        pool: Weak<Shared>,
        chunk: ChunkSize,
        workers: usize,
    ) -> (Arc<Self>, Answers<R>) {
        let (tx, rx) = mpsc::channel();
        (Self::new(id, pool, chunk, workers, Out::Channel(tx)), rx)
    }

    /// Job `id` of `pool`, whose answers go to `sink`.
    pub(super) fn sink(
        id: u64,
        pool: Weak<Shared>,
        chunk: ChunkSize,
        workers: usize,
        sink: Arc<dyn BatchSink<R>>,
    ) -> Arc<Self> {
        Self::new(id, pool, chunk, workers, Out::Sink(sink))
    }

    fn new(id: u64, pool: Weak<Shared>, chunk: ChunkSize, workers: usize, out: Out<R>) -> Arc<Self> {
        Arc::new(Job {
            id,
            pool,
            chunk,
            workers,
            out,
            flags: Arc::new(Flags::default()),
        })
    }

    pub(super) fn flags(&self) -> &Arc<Flags> {
        &self.flags
    }

    /// The opener's handle on this job.
    pub(super) fn handle(self: &Arc<Self>) -> JobRef<R> {
        JobRef {
            id: self.id,
            job: Arc::downgrade(self),
        }
    }

    /// Calls `first, first+1, ...` on `items`, cut into chunks by the job's chunk
    /// size: one closure and one vector per chunk, nothing per call.
    pub(super) fn chunks<A: Arg>(
        self: &Arc<Self>,
        f: fn(A) -> R,
        first: usize,
        items: Vec<A>,
    ) -> Vec<Work> {
        let len = chunk_len(self.chunk, items.len(), self.workers);
        let mut works: Vec<Work> = Vec::with_capacity(items.len().div_ceil(len));
        let mut at = first;
        let mut items = items.into_iter();
        loop {
            let calls: Vec<A> = items.by_ref().take(len).collect();
            if calls.is_empty() {
                break;
            }
            let job = self.clone();
            let start = at;
            at += calls.len();
            works.push(Box::new(move || job.run(f, start, calls)));
        }
        works
    }

    /// Runs one chunk, calls `first, first+1, ...`, and hands its answers on.
    fn run<A>(&self, f: fn(A) -> R, first: usize, calls: Vec<A>) {
        if self.flags.cancelled() {
            return;
        }
        self.flags.running.fetch_add(1, Ordering::Relaxed);
        // Values and their call numbers (one run) apart, as the caller files them.
        let mut answers = Batch::with_capacity(calls.len());
        for (k, a) in calls.into_iter().enumerate() {
            let r = catch_unwind(AssertUnwindSafe(|| f(a))).map_err(panicked);
            answers.push(first + k, r);
        }
        self.flags.running.fetch_sub(1, Ordering::Relaxed);
        if self.flags.cancelled() {
            return;
        }
        match &self.out {
            // The caller may have stopped reading (an error ended its `map`).
            Out::Channel(tx) => drop(tx.send(answers)),
            Out::Sink(sink) => sink.add(answers),
        }
    }
}

impl<R> Drop for Job<R> {
    /// The last reference is gone: the job gives no more answers. Never runs under
    /// the pool's lock (every reference is dropped outside it), so it may take it.
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.forget(self.id);
        }
        if let Out::Sink(sink) = &self.out {
            sink.end();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_chunks_hold_n_calls() {
        assert_eq!(chunk_len(ChunkSize::Fixed(7), 1000, 4), 7);
        assert_eq!(chunk_len(ChunkSize::Fixed(0), 1000, 4), 1);
        assert_eq!(chunk_len(ChunkSize::Fixed(50), 3, 4), 50);
    }

    #[test]
    fn auto_chunks_are_a_quarter_of_each_threads_share() {
        // Python's rule: ceil(len / (4 × workers)).
        assert_eq!(chunk_len(ChunkSize::Auto, 100, 2), 13);
        assert_eq!(chunk_len(ChunkSize::Auto, 8, 2), 1);
        assert_eq!(chunk_len(ChunkSize::Auto, 1, 8), 1);
        assert_eq!(chunk_len(ChunkSize::Auto, 0, 8), 1);
        assert_eq!(chunk_len(ChunkSize::Auto, 1 << 20, 2), MAX_AUTO_CHUNK);
        assert_eq!(chunk_len(ChunkSize::Auto, 100, 0), 25);
    }

    fn double(x: u32) -> u32 {
        x * 2
    }

    #[test]
    fn chunks_number_their_calls_and_answer_in_order() {
        let (job, rx) = Job::<u32>::channel(0, Weak::new(), ChunkSize::Fixed(3), 2);
        let works = job.chunks(double, 10, (0..8).collect());
        assert_eq!(works.len(), 3);
        drop(job);
        for w in works {
            w();
        }
        let got: Vec<Vec<(usize, u32)>> = rx
            .iter()
            .map(|c| c.into_iter().map(|(i, r)| (i, r.unwrap())).collect())
            .collect();
        assert_eq!(
            got,
            [
                vec![(10, 0), (11, 2), (12, 4)],
                vec![(13, 6), (14, 8), (15, 10)],
                vec![(16, 12), (17, 14)],
            ]
        );
    }

    #[test]
    fn a_cancelled_job_runs_nothing_and_ends() {
        let (job, rx) = Job::<u32>::channel(5, Weak::new(), ChunkSize::Fixed(1), 2);
        let handle = job.handle();
        assert_eq!(handle.id(), 5);
        let works = job.chunks(double, 0, vec![1, 2]);
        job.flags().cancel();
        drop(job);
        assert!(handle.get().is_some(), "its chunks hold it");
        for w in works {
            w();
        }
        assert!(handle.get().is_none());
        assert!(rx.recv().is_err(), "no answers, and the channel disconnected");
    }
}
