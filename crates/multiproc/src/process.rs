//! `Process`: run one task in a child process and get its result back, typed.

use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ExitStatus, Result};
use crate::start::{self, StartMethod};
use crate::sys;
use crate::{failure, task};
use crate::wire::message::{self, Reply, Request, TaskRef};
use crate::wire::values::{Data, ValueBuf, map_sealed};
use crate::wire::{self, FrameDecoder, Received, recv_frame, send_all};

/// A task running in a child process.
///
/// Start one with [`Process::start`] or [`Process::builder`], then [`join`](Process::join)
/// it for the task's return value, or an [`Error`] that says how it failed.
///
/// ```
/// fn square(x: u64) -> u64 { x * x }
///
/// # fn main() -> multiproc::Result<()> {
/// multiproc::init();
/// let p = multiproc::Process::start(square, 12)?;
/// assert_eq!(p.join()?, 144);
/// # Ok(()) }
/// ```
///
/// # Dropping, and daemon processes
///
/// Dropping a `Process` that was not joined **kills it** (SIGKILL) and reaps it: nobody
/// can read its result any more, and a process left running would outlive its handle
/// (an orphan) or, once finished, stay a zombie. To let a child finish, join it.
///
/// Python instead joins its non-daemonic children when the interpreter exits, and
/// kills only those marked `daemon`. multiproc has no `daemon` flag, deliberately:
/// - A Rust program has no "interpreter exit" to join at; the handle's scope is the
///   one lifetime a child can be tied to, and `Drop` is where it ends.
/// - A dropped handle's child can hand nothing back (its result travels only through
///   the handle), so letting it run on buys nothing but side effects nobody checks.
/// - Waiting in `drop` instead (a "non-daemonic" drop) would block a parent that is
///   unwinding from a panic on a child that may never end, and would hide the child's
///   failure: its error is only in `join`'s result. Join explicitly (with
///   [`join_timeout`](Process::join_timeout) if it may hang) to wait.
/// - At process exit every multiproc child already ends with its parent (the
///   kernel's parent-death signal), even when the parent is killed: all children are
///   "daemonic" there, and none is left behind. Unlike Python's daemonic processes,
///   a multiproc child may start children of its own.
#[must_use = "dropping a Process kills it; call join() to wait for its result"]
pub struct Process<R> {
    pid: u32,
    name: String,
    method: StartMethod,
    pidfd: OwnedFd,
    sock: Option<OwnedFd>,
    decoder: FrameDecoder,
    /// The reply, the frame it came in (its data starts at the offset), its descriptors.
    reply: Option<(Reply, Vec<u8>, usize, Vec<OwnedFd>)>,
    status: Option<ExitStatus>,
    /// Reaped (by us, or by the kernel when SIGCHLD is ignored): its pid is free.
    reaped: bool,
    taken: bool,
    _result: PhantomData<fn() -> R>,
}

/// Options for starting a [`Process`].
///
/// ```
/// use multiproc::{Process, StartMethod};
/// fn hello(who: String) -> String { format!("hello, {who}") }
///
/// # fn main() -> multiproc::Result<()> {
/// let p = Process::builder()
///     .name("greeter")
///     .start_method(StartMethod::Spawn)
///     .start(hello, "world".to_string())?;
/// assert_eq!(p.name(), "greeter");
/// assert_eq!(p.join()?, "hello, world");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Builder {
    name: Option<String>,
    method: Option<StartMethod>,
    executable: Option<PathBuf>,
}

impl Builder {
    /// A builder with the defaults: the global start method, a generated name.
    pub fn new() -> Self {
        Builder::default()
    }

    /// The process's name, as [`Process::name`] and [`crate::current_process`] report
    /// it. Default: `Process-<n>`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The start method for this process; default: [`crate::get_start_method`].
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// The program a [`StartMethod::Spawn`] child runs (Python's `set_executable`).
    /// Default: this very executable. A different build refuses the task with
    /// [`Error::BuildMismatch`]; the option exists for wrappers and for testing that.
    pub fn executable(mut self, path: impl AsRef<Path>) -> Self {
        self.executable = Some(path.as_ref().to_path_buf());
        self
    }

    /// Starts `f(args)` in a new child process.
    pub fn start<A, R>(self, f: fn(A) -> R, args: A) -> Result<Process<R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        // Encoded (and checked against the limits) before a process is spent on it.
        let mut buf = ValueBuf::new(wire::max_frame_size(), true);
        let mut fds = Vec::new();
        wire::encode_value(&args, &mut buf, &mut fds, &|| "the task's argument".into())?;
        wire::check_fd_count(fds.len() + 1)?;
        let args = buf.finish()?;
        let method = self.method.unwrap_or_else(start::get_start_method);
        let name = self.name.unwrap_or_else(next_name);
        let launched = start::launch(method, self.executable.as_deref())?;
        let mut process = Process {
            pid: launched.pid,
            name,
            method,
            pidfd: launched.pidfd,
            sock: Some(launched.sock),
            decoder: FrameDecoder::new(crate::worker::frame_limit(wire::max_frame_size())),
            reply: None,
            status: None,
            reaped: false,
            taken: false,
            _result: PhantomData,
        };
        start::children::add(process.pid, &process.name, process.pidfd.as_fd());
        process.send_task(task::task_ref(f), args, fds)?;
        Ok(process)
    }
}

fn next_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    format!("Process-{}", N.fetch_add(1, Ordering::Relaxed))
}

impl Process<()> {
    /// A [`Builder`] for a name, a start method, or an executable.
    pub fn builder() -> Builder {
        Builder::new()
    }
}

impl<R: DeserializeOwned> Process<R> {
    /// Starts `f(args)` in a new child process with the default start method.
    ///
    /// `f` is a plain function or a non-capturing closure; `args` and the result travel
    /// by value (serde). The call returns once the child exists and has its task; use
    /// [`join`](Process::join) for the result.
    pub fn start<A>(f: fn(A) -> R, args: A) -> Result<Self>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize,
    {
        Builder::new().start(f, args)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The start method that created the child.
    pub fn start_method(&self) -> StartMethod {
        self.method
    }

    fn send_task(&mut self, entry: TaskRef, args: Data, mut fds: Vec<OwnedFd>) -> Result<()> {
        let max = wire::max_frame_size();
        let hello = Request::hello(self.name.clone(), max as u64, false);
        let (inline, shared) = match args {
            Data::Inline(v) => (v, false),
            Data::Shared(file) => {
                fds.insert(0, file);
                (Vec::new(), true)
            }
        };
        let run = Request::Run {
            seq: 0,
            entry,
            calls: 1,
            max_value: max as u64,
            fds: fds.len() as u32,
            shared,
        };
        let (mut hello_head, mut run_head, mut exit_head) = (Vec::new(), Vec::new(), Vec::new());
        message::frame_head(&hello, 0, &mut hello_head)?;
        message::frame_head(&run, inline.len(), &mut run_head)?;
        message::frame_head(&Request::Exit, 0, &mut exit_head)?;
        let sock = self.sock.as_ref().expect("a new process has its socket");
        // One write for the three frames; descriptors must arrive with the frame that
        // names them (the Run), so with descriptors the hello goes first, alone.
        let sent = if fds.is_empty() {
            send_all(
                sock.as_fd(),
                &[&hello_head, &run_head, &inline, &exit_head],
                &[],
            )
        } else {
            send_all(sock.as_fd(), &[&hello_head], &[])
                .and_then(|()| send_all(sock.as_fd(), &[&run_head, &inline, &exit_head], &fds))
        };
        match sent {
            Ok(()) => Ok(()),
            // The child closed its end early: most likely it refused (another build) or
            // died. Its reply and exit status explain better than "broken pipe".
            Err(Error::Io { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether the child is still running. Reaps it if it has exited.
    pub fn is_alive(&mut self) -> bool {
        self.exitcode().is_none() && !self.reaped
    }

    /// How the child ended, or `None` while it runs. Never blocks.
    ///
    /// Also `None` for a child that ended in the one case where the kernel keeps no
    /// status: in a program that ignores SIGCHLD, on Linux before 6.15
    /// ([`is_alive`](Self::is_alive) is then `false`).
    pub fn exitcode(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() && !self.reaped {
            match sys::proc::wait_pidfd(&self.pidfd, false) {
                Ok(Some(status)) => {
                    self.status = Some(status);
                    self.reaped = true;
                }
                Ok(None) => {}
                // Reaped elsewhere, its status lost.
                Err(_) => self.reaped = true,
            }
        }
        self.status
    }

    /// Sends SIGTERM. The child ends unless its task handles the signal; a later
    /// `join` reports [`Error::Killed`] with `SIGTERM`. A no-op once the child was reaped.
    pub fn terminate(&self) -> Result<()> {
        self.signal(crate::Signal::TERM)
    }

    /// Sends SIGKILL. A no-op once the child was reaped.
    pub fn kill(&self) -> Result<()> {
        self.signal(crate::Signal::KILL)
    }

    /// Sends SIGINT, as Python's `Process.interrupt` (where it raises
    /// `KeyboardInterrupt` in the child). Rust has no such exception: the child ends as
    /// a program without a SIGINT handler does, and a later `join` reports
    /// [`Error::Killed`] with `SIGINT`. A task that installs its own SIGINT handler
    /// receives the signal instead (to stop cleanly). A no-op once the child was
    /// reaped.
    ///
    /// Only this SIGINT ends a child: a worker drops every other one (the terminal's
    /// Ctrl-C, which reaches the whole process group, or `kill -INT`), since the parent
    /// decides how its children end.
    ///
    /// ```
    /// fn nap(ms: u64) { std::thread::sleep(std::time::Duration::from_millis(ms)) }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let p = multiproc::Process::start(nap, 60_000)?;
    /// p.interrupt()?;
    /// assert_eq!(p.join().unwrap_err().signal(), Some(multiproc::Signal::INT));
    /// # Ok(()) }
    /// ```
    pub fn interrupt(&self) -> Result<()> {
        if self.reaped {
            return Ok(());
        }
        sys::proc::pidfd_interrupt(self.pidfd.as_fd())
            .map_err(|e| Error::io("interrupting a child process", e))
    }

    fn signal(&self, signal: crate::Signal) -> Result<()> {
        if self.reaped {
            return Ok(());
        }
        sys::proc::pidfd_signal(self.pidfd.as_fd(), signal)
            .map_err(|e| Error::io("signalling a child process", e))
    }

    /// Waits for the child to finish and returns its task's result.
    ///
    /// Errors: [`Error::Panicked`] with the panic's message and location;
    /// [`Error::Killed`] with the signal (SIGSEGV, SIGKILL, SIGABRT...);
    /// [`Error::Exited`] with the code if the task called `exit`;
    /// [`Error::Decode`]/[`Error::Encode`] if a value could not cross;
    /// [`Error::BuildMismatch`] if the child runs another build.
    ///
    /// The result does not depend on this program's SIGCHLD disposition; with SIGCHLD
    /// ignored, on Linux before 6.15, a death's signal or code is lost (see the crate's
    /// notes on failures).
    pub fn join(mut self) -> Result<R> {
        self.finish(None, Duration::ZERO)
    }

    /// Like [`join`](Process::join), but gives up after `timeout` with
    /// [`Error::Timeout`], leaving the child running: join again, or terminate it.
    ///
    /// ```
    /// use std::time::Duration;
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let mut p = multiproc::Process::start(nap, 10_000)?;
    /// let err = p.join_timeout(Duration::from_millis(50)).unwrap_err();
    /// assert!(err.is_timeout());
    /// p.kill()?;
    /// assert_eq!(p.join_timeout(Duration::from_secs(5)).unwrap_err().signal(),
    ///            Some(multiproc::Signal::KILL));
    /// # Ok(()) }
    /// ```
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<R> {
        self.finish(Some(Instant::now() + timeout), timeout)
    }

    fn finish(&mut self, deadline: Option<Instant>, timeout: Duration) -> Result<R> {
        if self.taken {
            return Err(Error::AlreadyJoined { pid: self.pid });
        }
        let timed_out = || Error::Timeout {
            what: format!("process {} to finish", self.pid),
            timeout,
        };
        while self.reply.is_none() {
            let Some(sock) = self.sock.as_ref() else {
                break;
            };
            // Wait for the socket *or the child's exit*: a copy of the child's end of the
            // socket can outlive the child (a process the task forks inherits it, as does
            // one forked meanwhile by code other than multiproc's) and then holds the
            // stream open after the child died.
            let exited = self.reaped;
            let Some(exited) =
                wait_socket_or_exit(sock.as_fd(), self.pidfd.as_fd(), exited, deadline)
                    .map_err(|e| Error::io("waiting for a child process", e))?
            else {
                return Err(timed_out());
            };
            // Read what is there without blocking; once the child exited, that is all.
            match recv_frame(sock.as_fd(), &mut self.decoder, Some(Instant::now()))? {
                Received::Frame(frame, fds) => match message::open_frame::<Reply>(&frame) {
                    Ok((reply, start)) => self.reply = Some((reply, frame, start, fds)),
                    Err(e) => {
                        let _ = self.kill();
                        self.sock = None;
                        return Err(Error::Protocol {
                            pid: self.pid,
                            detail: format!("undecodable reply: {e}"),
                        });
                    }
                },
                Received::Closed => self.sock = None,
                Received::TimedOut if exited => self.sock = None,
                Received::TimedOut => {}
            }
        }
        self.sock = None;
        if !self.reaped {
            if deadline.is_some()
                && !wire::wait_readable(self.pidfd.as_fd(), deadline)
                    .map_err(|e| Error::io("waiting for a child process", e))?
            {
                return Err(timed_out());
            }
            // An error here means the status is lost (SIGCHLD ignored on an old kernel,
            // see `sys::proc::wait_pidfd`): the reply, if one came, is still the answer.
            self.status = sys::proc::wait_pidfd(&self.pidfd, true).ok().flatten();
            self.reaped = true;
        }
        self.taken = true;
        let pid = self.pid;
        match self.reply.take() {
            Some((
                Reply::Done {
                    answered: 1,
                    mut failures,
                    shared,
                    ..
                },
                frame,
                start,
                mut fds,
            )) => match failures.pop() {
                Some((_, failure)) => Err(failure::failure_error(failure, pid, 0)),
                None if shared => {
                    if fds.is_empty() {
                        return Err(Error::Protocol {
                            pid,
                            detail: "shared data without its memory file".into(),
                        });
                    }
                    let file = fds.remove(0);
                    let map = map_sealed(&file, wire::max_frame_size(), "a task's result")?;
                    wire::fds::provide(fds, || wire::decode_task_value(map.sealed_bytes()))
                }
                None => wire::fds::provide(fds, || wire::decode_task_value(&frame[start..])),
            },
            Some((
                Reply::Aborting {
                    message,
                    location,
                    backtrace,
                    ..
                },
                ..,
            )) => Err(Error::Panicked {
                pid,
                message,
                location,
                backtrace,
            }),
            Some((Reply::Refused { reason }, ..)) => Err(failure::refusal_error(reason, pid)),
            Some((Reply::Done { answered, .. }, ..)) => Err(Error::Protocol {
                pid,
                detail: format!("{answered} results for one task"),
            }),
            None => Err(failure::death_error(self.status, pid)),
        }
    }
}

/// Waits until `sock` is readable or the process behind `pidfd` has exited (or is
/// already known to have: `exited`). `Some(true)` once it exited, `Some(false)` if only
/// the socket is ready, `None` when the deadline passed.
fn wait_socket_or_exit(
    sock: BorrowedFd<'_>,
    pidfd: BorrowedFd<'_>,
    exited: bool,
    deadline: Option<Instant>,
) -> std::io::Result<Option<bool>> {
    if exited {
        return Ok(Some(true));
    }
    loop {
        let timeout = wire::poll_timeout(deadline);
        let mut fds = [
            PollFd::new(sock, PollFlags::POLLIN),
            PollFd::new(pidfd, PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Ok(0) if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(None),
            Ok(0) | Err(Errno::EINTR) => {}
            Ok(_) => return Ok(Some(fds[1].any().unwrap_or(false))),
            Err(e) => return Err(e.into()),
        }
    }
}

impl<R> Drop for Process<R> {
    fn drop(&mut self) {
        // Before the pidfd closes (after this body): the list polls it.
        start::children::remove(self.pidfd.as_fd());
        if !self.reaped {
            let _ = sys::proc::pidfd_signal(self.pidfd.as_fd(), crate::Signal::KILL);
            let _ = sys::proc::wait_pidfd(&self.pidfd, true);
        }
    }
}

/// The child's pidfd: it becomes readable when the child ends, which is how
/// [`crate::wait_ready`] waits for a process (Python's `Process.sentinel`).
///
/// Wait on it (`poll`, `epoll`, an async reactor), but do not reap the child through it
/// (`waitid`): its [`join`](Process::join) needs the exit status.
impl<R> AsFd for Process<R> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
}

/// The children this process started with [`Process::start`] (or a [`Builder`]), and
/// the workers of its [`Pool`](crate::Pool)s, that are still running, in the order they
/// were started: each one's pid and name (`PoolWorker-N` for a pool's) — Python's
/// `multiprocessing.active_children()`.
///
/// A child counts from its start until it ends, as long as its [`Process`] handle (or
/// its pool) exists.
/// Unlike Python's, this reaps nothing: a child that ended stays a zombie until its
/// handle is joined or dropped, because the handle owns its exit status. (Python reaps
/// here because its handles may be forgotten; a `Process` cannot be: dropping it kills
/// and reaps its child.)
///
/// ```
/// use std::time::Duration;
/// fn nap(ms: u64) { std::thread::sleep(Duration::from_millis(ms)) }
///
/// # fn main() -> multiproc::Result<()> {
/// let p = multiproc::Process::builder().name("napper").start(nap, 10_000)?;
/// let running = multiproc::active_children();
/// assert!(running.iter().any(|c| c.pid == p.pid() && c.name == "napper"));
/// p.kill()?;
/// let _ = p.join();
/// assert!(multiproc::active_children().iter().all(|c| c.name != "napper"));
/// # Ok(()) }
/// ```
pub fn active_children() -> Vec<crate::ProcessInfo> {
    start::children::running()
        .into_iter()
        .map(|(pid, name)| crate::ProcessInfo { pid, name })
        .collect()
}

impl<R> std::fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("pid", &self.pid)
            .field("name", &self.name)
            .field("start_method", &self.method)
            .field("status", &self.status)
            .finish()
    }
}
