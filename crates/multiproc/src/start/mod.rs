//! How a child comes to life: the three start methods, and the launcher thread that
//! owns every child.
//!
//! All children are created from one long-lived thread, the *launcher*, because the
//! kernel's parent-death signal (`PR_SET_PDEATHSIG`) fires when the creating *thread*
//! exits, not the process: a child forked from a short-lived user thread would be
//! killed when that thread ends. The launcher lives as long as the process, so a child
//! dies exactly when its parent process does — even by SIGKILL — and at no other time.

pub(crate) mod children;
mod fork;
pub(crate) mod forkserver;
mod spawn;

use std::fmt;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};

use nix::sys::socket::SockType;

use crate::error::{Error, Result};
use crate::sys;

/// How a child process is created, as in Python's `multiprocessing`.
///
/// | method | how | cost | safe when |
/// |---|---|---|---|
/// | `ForkServer` (default) | a small server, exec'd once, forks each child | a fork of a small process | always |
/// | `Fork` | `fork()` of the calling program | cheapest; copy-on-write of the parent | the parent has no other threads that may hold locks |
/// | `Spawn` | fork + exec of this executable | a full program start (~1 ms and up) | always |
///
/// `Fork` copies only the forking thread: a lock held at that instant by any other
/// thread (an allocator's, stdout's, a library's) stays locked forever in the child,
/// which can then hang. Python 3.14 moved its default away from `fork` for this reason.
///
/// # Descriptors
///
/// Under every method a child holds the same descriptors: stdin, stdout and stderr,
/// the ones without close-on-exec (which survive an exec), its own connection to the
/// parent, and what its task was sent (pipe ends, queues, shared memory in its
/// argument). A `Fork` child does not keep the parent's other descriptors, unlike
/// Python's `fork`: the parent's pipe ends, queues and other children's sockets would
/// otherwise stay open in every child started meanwhile, and their readers would not
/// see `Closed` until that unrelated child exited. Rust's `std` opens every file with
/// close-on-exec, so a `File` of the parent is not open in a `Fork` child either (as
/// under the other methods): open files in the task, and pass multiproc's handles in
/// its argument. (In a `Fork` child such a descriptor's number is
/// taken by a closed socket: an object of the parent still holding it gets an end of
/// stream or an error, never some other file.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum StartMethod {
    /// `fork()` the calling process. Fastest; unsafe to rely on once other threads exist.
    Fork,
    /// Re-execute this program and send it the task. Slowest; always safe; the child
    /// starts clean.
    Spawn,
    /// Ask a clean single-threaded server (started from this executable the first time
    /// it is needed, or by [`crate::init`]) to fork the child. Fast and thread-safe.
    #[default]
    ForkServer,
}

impl StartMethod {
    /// All methods, for benchmarks and tests that cover each.
    pub const ALL: [StartMethod; 3] = [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::ForkServer,
    ];

    /// Python's name for the method: `"fork"`, `"spawn"`, `"forkserver"`.
    pub fn name(self) -> &'static str {
        match self {
            StartMethod::Fork => "fork",
            StartMethod::Spawn => "spawn",
            StartMethod::ForkServer => "forkserver",
        }
    }
}

impl fmt::Display for StartMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for StartMethod {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "fork" => Ok(StartMethod::Fork),
            "spawn" => Ok(StartMethod::Spawn),
            "forkserver" | "fork-server" => Ok(StartMethod::ForkServer),
            other => Err(format!(
                "unknown start method {other:?}: expected fork, spawn or forkserver"
            )),
        }
    }
}

static DEFAULT_METHOD: AtomicU8 = AtomicU8::new(2);

/// Sets the start method used when none is given per process or pool.
///
/// ```
/// use multiproc::{StartMethod, get_start_method, set_start_method};
/// set_start_method(StartMethod::Spawn);
/// assert_eq!(get_start_method(), StartMethod::Spawn);
/// set_start_method(StartMethod::ForkServer);
/// ```
pub fn set_start_method(method: StartMethod) {
    DEFAULT_METHOD.store(method as u8, Ordering::Relaxed);
}

/// The start method used when none is given; [`StartMethod::ForkServer`] unless changed.
///
/// In a child, the method that started it (as in Python): a `Fork` child's own
/// children are forked, a `Spawn` child's spawned, a `ForkServer` child's asked of a
/// fork server (its own), unless the task calls [`set_start_method`].
pub fn get_start_method() -> StartMethod {
    match DEFAULT_METHOD.load(Ordering::Relaxed) {
        0 => StartMethod::Fork,
        1 => StartMethod::Spawn,
        _ => StartMethod::ForkServer,
    }
}

/// The environment variable a parent sets on a `Spawn` child (`spawn`): the start
/// method that child's own children use by default.
pub(crate) const ENV_START_METHOD: &str = "MULTIPROC_START_METHOD";

/// A freshly started child: its pid, a pidfd naming it, and our end of its socket.
pub(crate) struct Launched {
    pub(crate) pid: u32,
    pub(crate) pidfd: OwnedFd,
    pub(crate) sock: OwnedFd,
}

/// Starts a child that serves the worker protocol on a socket.
pub(crate) fn launch(method: StartMethod, executable: Option<&Path>) -> Result<Launched> {
    let fail = |e: std::io::Error| Error::Start { method, source: e };
    let (ours, theirs) = sys::fd::pair(SockType::Stream).map_err(fail)?;
    let pid = match method {
        StartMethod::Fork => fork::start(theirs).map_err(fail)?,
        StartMethod::Spawn => spawn::start(theirs, executable).map_err(fail)?,
        StartMethod::ForkServer => forkserver::start(theirs).map_err(fail)?,
    };
    // Our child and not yet reaped (only we reap it), so the pid cannot have been reused.
    let pidfd = sys::proc::pidfd_open(pid).map_err(fail)?;
    Ok(Launched {
        pid,
        pidfd,
        sock: ours,
    })
}

type Job = Box<dyn FnOnce() + Send>;

/// Per-process state of the parent side. A forked child must not inherit it (the
/// launcher thread does not exist there), so it is keyed by pid and rebuilt after fork.
struct Runtime {
    pid: u32,
    launcher: mpsc::Sender<Job>,
    forkserver: Mutex<Option<forkserver::Server>>,
}

static RUNTIME: Mutex<Option<Arc<Runtime>>> = Mutex::new(None);

fn lock_runtime() -> MutexGuard<'static, Option<Arc<Runtime>>> {
    RUNTIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// This process's runtime, created on first use.
fn runtime() -> Arc<Runtime> {
    let mut slot = lock_runtime();
    let me = std::process::id();
    if let Some(rt) = slot.as_ref().filter(|rt| rt.pid == me) {
        return rt.clone();
    }
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("multiproc-launcher".into())
        // Fork children run their task on this thread's stack: give it a main-sized one
        // (address space only; pages are touched on use).
        .stack_size(8 << 20)
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                job();
            }
        })
        .expect("multiproc: cannot start the launcher thread");
    let rt = Arc::new(Runtime {
        pid: me,
        launcher: tx,
        forkserver: Mutex::new(None),
    });
    if let Some(stale) = slot.replace(rt.clone()) {
        // The runtime of the process we were forked from: its thread does not exist here
        // and its locks may be held by threads that do not exist either. Touch nothing.
        std::mem::forget(stale);
    }
    rt
}

impl Runtime {
    /// Runs `job` on the launcher thread and returns its result.
    fn on_launcher<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = mpsc::sync_channel(1);
        self.launcher
            .send(Box::new(move || {
                let _ = tx.send(job());
            }))
            .expect("multiproc: launcher thread is gone");
        rx.recv().expect("multiproc: launcher thread dropped a job")
    }
}

/// Forgets the parent's runtime in a forked child. Called with the runtime lock held
/// across the fork, so the lock itself is in a known state.
fn forget_runtime_after_fork(slot: &mut Option<Arc<Runtime>>) {
    if let Some(stale) = slot.take() {
        std::mem::forget(stale);
    }
}

/// Locks the runtime slot; the Fork start method holds it across `fork()`.
fn runtime_slot() -> MutexGuard<'static, Option<Arc<Runtime>>> {
    lock_runtime()
}
