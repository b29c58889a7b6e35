//! [`Pool`]: a pool of worker processes that survives crashed workers.
//!
//! Python's `Pool` hangs forever when a worker is killed, and `ProcessPoolExecutor`
//! fails every pending task. Here a worker that dies — a panic under
//! `panic = "abort"`, a segfault, SIGKILL from outside, the OOM killer — costs only the
//! call it was running: that call comes back as [`Error::Killed`](crate::Error::Killed)
//! (or is retried, if [`PoolBuilder::retries`] allows), the other calls it held run on
//! another worker, a new worker takes its place, and every other call completes. A call past its [`PoolBuilder::task_timeout`] has its
//! worker killed and replaced and answers [`Error::Timeout`](crate::Error::Timeout).
//!
//! ## Chunking
//!
//! Tiny calls must not pay a round trip each, so calls travel to workers in chunks.
//! [`ChunkSize::Auto`] (the default):
//! - the first chunk of a job is 1 call, a probe: nothing is known of the call time
//!   yet, and a chunk of many 40 ms calls would keep one worker busy while the others
//!   idle;
//! - then the job's fair share, its pending calls / (4 × workers) rounded up (Python's
//!   rule, recomputed as the job drains, so the tail still spreads over every worker),
//!   but at least what runs in 250 µs and at most what runs in 5 ms at the measured
//!   call time;
//! - 1 with a [`task_timeout`](PoolBuilder::task_timeout), so that the timeout is per
//!   call.
//!
//! [`ChunkSize::Fixed`] sets it. Whatever the size, a chunk stops growing once its
//! arguments pass 16 MiB or would pass the frame limit, or carry as many OS handles as
//! one message may (253).
//!
//! ## Pipelining, and what a crash costs
//!
//! A worker may hold several chunks at once, so that it never waits a round trip
//! between small chunks: more are sent while what it holds is estimated to run under
//! 2 ms (at most 128 chunks; one more behind a long call while the job has more
//! pending calls than workers; only one while a job's call time is unknown or under a
//! task timeout). A worker answers a long chunk in pieces as its calls finish (at
//! least every 10 ms), and as it starts each call it stores which one in a word of
//! memory shared with the pool (one store per call, no system call). So a worker that
//! dies costs exactly the call it was running: that call is retried alone on another
//! worker if [`PoolBuilder::retries`] allows, or answered with the error that says how
//! the worker died. Answers it already sent are kept. Every other call it held goes
//! back to the queue, which is not a retry and does not count against `retries`: those
//! it had not started, and those it had run whose answers had not left it yet — **such
//! a call runs twice**, so side effects of a call may happen twice (a task that must
//! not repeat them should make them idempotent). A worker that dies between two calls
//! costs no call; a call that such deaths hand back 3 times answers
//! [`Error::LostWithWorker`](crate::Error::LostWithWorker), which names how the worker
//! died and the call it was running, if any. Under a
//! [`task_timeout`](PoolBuilder::task_timeout) with chunks of several calls
//! ([`ChunkSize::Fixed`]), a chunk has the timeout once per call, and the call running
//! when it runs out answers [`Error::Timeout`](crate::Error::Timeout); the chunk's
//! others go back to the queue.
//!
//! ## Big values
//!
//! A chunk's arguments (and a reply's results) are encoded once, straight into the
//! buffer they travel from. Past 1 MiB that buffer is a memory file, sealed and passed
//! as a descriptor: the worker maps it and decodes from it, so a 256 MiB argument is
//! not copied through the socket. The frame limit ([`set_max_frame_size`](crate::set_max_frame_size))
//! applies to each argument and each result on its own, read when the chunk is sent:
//! a value over it fails with [`Error::FrameTooLarge`](crate::Error::FrameTooLarge)
//! for that call only, and no worker is harmed.
//!
//! ## Who does the I/O
//!
//! There is no manager thread between a caller and the workers: the thread waiting
//! for results (in `map`, `apply`, `get`) sends the chunks and reads the replies
//! itself, so one `apply` costs about what two processes echoing over a pipe do.
//! Work nobody waits for at the moment (`apply_async`, `map_async`) is driven by a
//! background thread.

pub(crate) mod api;
pub(crate) mod backend;
pub(crate) mod batch;
pub(crate) mod core;
pub(crate) mod future;
mod imap;
pub(crate) mod options;
mod ordered;
mod process;
mod progress;
mod reduce;
#[cfg(any(feature = "mpi", feature = "cluster"))]
pub(crate) mod remote;
mod thread;
mod wait;

pub use api::TaskPool;
pub use backend::{Arg, Ret};
pub use future::AsyncResult;
pub use imap::{Imap, Indexed};
pub use process::{Pool, PoolBuilder, WorkerInfo};
pub use progress::{Progress, ProgressFn};
pub use thread::{ThreadPool, ThreadPoolBuilder};
pub use wait::{AsCompleted, Wait, Waitable, as_completed, wait};

/// How calls are grouped into chunks sent to one worker at a time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChunkSize {
    /// Sized by the pool; see the [module docs](crate::pool#chunking) for the rule.
    #[default]
    Auto,
    /// Exactly this many calls per chunk (0 counts as 1).
    Fixed(usize),
}
