//! # multiproc
//!
//! Python's `multiprocessing`, done right, in Rust: run work in separate OS processes,
//! each with its own memory, and get the results back **by value, typed** — or an
//! [`Error`] that says exactly why not (the panic message, the signal, the exit code,
//! the timeout). Nothing is ever silently lost.
//!
//! ```
//! fn work((start, end): (u64, u64)) -> u64 {
//!     (start..end).sum()
//! }
//!
//! fn main() -> multiproc::Result<()> {
//!     multiproc::init(); // first line of main
//!     let halves = [(0, 500), (500, 1000)];
//!     let procs = halves
//!         .into_iter()
//!         .map(|h| multiproc::Process::start(work, h))
//!         .collect::<multiproc::Result<Vec<_>>>()?;
//!     let total: u64 = procs
//!         .into_iter()
//!         .map(|p| p.join())
//!         .sum::<multiproc::Result<u64>>()?;
//!     assert_eq!(total, 499_500);
//!     Ok(())
//! }
//! ```
//!
//! The classic tutorial bug — children append to their own copy of a list and the
//! parent sums an empty one — cannot be written: a child's only way to hand something
//! back is its return value, which [`Process::join`] returns.
//!
//! ## Tasks
//!
//! A task is a plain `fn(A) -> R` (non-capturing closures coerce to one) whose argument
//! and result implement serde's `Serialize` and `Deserialize`. The child finds the
//! function in the same executable, by its offset. That is safe against forged messages
//! and other builds because the child first checks that the parent runs the same build
//! (the ELF build id, exchanged in a hello; another build answers
//! [`Error::BuildMismatch`]), an exec'd child takes orders only from a socket whose peer
//! is its own parent with its own uid, child mode is refused in a privileged (setuid)
//! process, and both offsets must fall inside the child's own code.
//!
//! ## Start methods
//!
//! [`StartMethod::ForkServer`] (the default, as in Python 3.14 on Linux),
//! [`StartMethod::Fork`] and [`StartMethod::Spawn`]; see [`StartMethod`] for when each
//! is safe and what each costs.
//!
//! ## Bootstrap, and testing
//!
//! Call [`init`] first in `main`. A child re-executed from your program (spawn, and the
//! fork server) must become a worker before your `main` runs; multiproc does this from
//! a load-time constructor, so children work unchanged under `cargo test` — in unit
//! tests, integration tests and doctests, with the stock test harness. `init` starts
//! the fork server early and is the documented place where a child stops; calling it is
//! cheap and idempotent.
//!
//! ## Sentinels: waiting on processes and channels
//!
//! [`Process`], [`PipeEnd`], [`Queue`], and [`connection`]'s listeners and connections
//! implement [`AsFd`](std::os::fd::AsFd) (a process by its pidfd, readable once it
//! ended); [`wait_ready`] waits until any of
//! several are ready, as Python's `multiprocessing.connection.wait`, and
//! [`active_children`] lists the children still running. (For pool results, see
//! [`wait`] and [`as_completed`].)
//!
//! ## Failures
//!
//! - A panicking task: [`Error::Panicked`] with its message and location, also under
//!   `panic = "abort"` (the child reports before it aborts).
//! - A signal: [`Error::Killed`] with its name (`SIGSEGV`, `SIGKILL`, `SIGABRT`, ...).
//! - An early `exit(n)`: [`Error::Exited`] with `n`.
//! - A deadline: [`Error::Timeout`].
//! - When the parent dies, even by SIGKILL, its children die with it (parent-death
//!   signal, set from a thread that lives as long as the process).
//!
//! A program that ignores SIGCHLD (`signal(SIGCHLD, SIG_IGN)`, as many servers do) gets
//! the same results: a value that arrived is returned. The kernel then reaps each child
//! itself when it exits; multiproc still learns how it ended from the child's pidfd on
//! Linux 6.15 and later. On older kernels that status is gone, and a child that died
//! without answering is reported as exactly that: [`Error::StatusLost`], never a
//! guessed signal or code; [`Process::exitcode`] stays `None`
//! while [`Process::is_alive`] turns `false`.
#![deny(missing_docs)]
// Every unsafe block lives in `sys`, each with a SAFETY comment (see its docs): the
// workspace denies `unsafe_code` everywhere else.

// Linux only: everything below needs pidfd, memfd, SOCK_SEQPACKET, PR_SET_PDEATHSIG,
// futexes and robust process-shared mutexes. Elsewhere the build stops at this one
// message, not at a cascade of missing calls.
#[cfg(not(target_os = "linux"))]
compile_error!(
    "multiproc runs on Linux only (5.10 or later): it is built on pidfd, memfd, \
     SOCK_SEQPACKET, PR_SET_PDEATHSIG, futexes and robust process-shared mutexes; \
     see the README's Platform section"
);

/// Keeps every item of the crate to Linux (see the `compile_error!` above).
macro_rules! linux_only {
    ($($item:item)*) => { $( #[cfg(target_os = "linux")] $item )* };
}

linux_only! {

mod bootstrap;
mod channel;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod connection;
mod error;
mod failure;
mod handle;
pub mod managers;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod pool;
mod process;
mod sentinel;
mod shm;
mod start;
mod sync;
#[allow(unsafe_code)]
mod sys;
mod task;
// The frame layer, public only for the fuzz target and the wire tests: not part of
// the API (the frame limit is, re-exported at the crate root).
#[doc(hidden)]
pub mod wire;
mod worker;

pub use channel::{JoinableQueue, Pipe, PipeEnd, PipeReader, PipeWriter, Queue, SimpleQueue};
pub use error::{Error, ExitStatus, Result, Signal};
pub use handle::Handle;
pub use pool::{
    AsCompleted, AsyncResult, ChunkSize, Pool, PoolBuilder, Progress, TaskPool, ThreadPool,
    ThreadPoolBuilder, Wait, Waitable, WorkerInfo, as_completed, wait,
};
pub use process::{Builder, Process, active_children};
pub use sentinel::wait_ready;
pub use shm::{
    Array, ArrayGuard, RawArray, RawValue, SharedMemory, SharedMemoryBuilder, SharedMemoryManager,
    Value, ValueGuard,
};
pub use start::{StartMethod, get_start_method, set_start_method};
pub use sync::{Barrier, BoundedSemaphore, Condition, Event, Lock, LockGuard, RLock, Semaphore};
pub use wire::{DEFAULT_MAX_FRAME_SIZE, max_frame_size, set_max_frame_size};

/// Everything a program using pools needs in scope, the [`TaskPool`] trait included.
///
/// ```
/// use multiproc::prelude::*;
/// ```
pub mod prelude {
    pub use crate::{
        AsyncResult, ChunkSize, Error, Pool, Process, Progress, Result, StartMethod, TaskPool,
        ThreadPool,
    };
}

/// Bootstraps multiproc; call it first in `main`.
///
/// In a child started by multiproc it never returns: the process becomes a worker.
/// With feature `mpi`, the same holds on an MPI rank other than 0 (see the `mpi`
/// module); with feature `cluster` (on by default), in a process started with
/// `MULTIPROC_CLUSTER` set, which serves as a cluster node until SIGTERM (see
/// [`cluster`]).
/// (This normally happens even earlier, before `main`, from a load-time constructor.)
/// In a parent it starts the fork server if the default start method needs one, while
/// the program is still young; it is idempotent and cheap after the first call.
pub fn init() {
    bootstrap::enter_if_child();
    #[cfg(feature = "mpi")]
    mpi::enter_if_worker();
    #[cfg(feature = "cluster")]
    cluster::enter_if_node();
    if get_start_method() == StartMethod::ForkServer {
        // Failure is not fatal here: the first Process::start retries and reports it.
        let _ = start::forkserver::ensure_started();
    }
}

/// The number of CPUs this process may run on (affinity and cgroup quotas included).
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Who a process is, as [`current_process`], [`parent_process`] and [`active_children`]
/// report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: u32,
    /// The name its parent gave it (`MainProcess` for a process multiproc did not start).
    pub name: String,
}

/// This process: its pid, and its name (as given by [`Builder::name`] in the parent,
/// or `MainProcess`).
///
/// ```
/// assert_eq!(multiproc::current_process().name, "MainProcess");
/// ```
pub fn current_process() -> ProcessInfo {
    ProcessInfo {
        pid: std::process::id(),
        name: worker::name().unwrap_or_else(|| "MainProcess".to_owned()),
    }
}

/// The multiproc parent of this process, or `None` if multiproc did not start it.
///
/// Its `name` is `MainProcess` whatever its parent named it (a child is not told).
///
/// # No `is_alive()`, no `join()`
///
/// Python's `parent_process()` returns a handle whose `is_alive()` a child polls (or
/// whose sentinel it waits on) to stop once its parent is gone. A multiproc child
/// cannot outlive its parent: the kernel kills it (SIGKILL, the parent-death signal)
/// the moment the parent ends, however it ends, under every start method, and its
/// own children die with it in turn. Seen from a running child, the parent is
/// always alive, and a wait for its end would never return; such a handle would only
/// answer that, so multiproc offers none. To act before the end, let the parent tell
/// the child (an [`Event`], a [`Queue`]).
pub fn parent_process() -> Option<ProcessInfo> {
    worker::parent_pid().map(|pid| ProcessInfo {
        pid,
        name: "MainProcess".to_owned(),
    })
}

/// The README's code blocks, compiled and run as doctests so that the README stays true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
}
