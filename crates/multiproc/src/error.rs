//! One error type for everything that can go wrong between a parent and its children.
//!
//! Each variant says what happened in words a user can act on: which process, which
//! signal, which exit code, which type failed to encode. Nothing is ever reported as a
//! bare "broken pipe" when the real cause is known.

use std::fmt;
use std::io;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `Result<T, multiproc::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A signal, printed by name (`SIGSEGV`, `SIGKILL`, ...).
///
/// ```
/// let s = multiproc::Signal::from_raw(9);
/// assert_eq!(s.name(), "SIGKILL");
/// assert_eq!(s.to_string(), "SIGKILL (signal 9)");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Signal(i32);

impl Signal {
    /// `SIGTERM`, what [`Process::terminate`](crate::Process::terminate) sends.
    pub const TERM: Signal = Signal(libc::SIGTERM);
    /// `SIGKILL`, what [`Process::kill`](crate::Process::kill) sends.
    pub const KILL: Signal = Signal(libc::SIGKILL);
    /// `SIGSEGV`: invalid memory access.
    pub const SEGV: Signal = Signal(libc::SIGSEGV);
    /// `SIGABRT`: `abort()`, including a Rust panic under `panic = "abort"`.
    pub const ABRT: Signal = Signal(libc::SIGABRT);
    /// `SIGINT`: Ctrl-C.
    pub const INT: Signal = Signal(libc::SIGINT);

    /// Wraps a raw signal number (as found in a wait status).
    pub const fn from_raw(signo: i32) -> Self {
        Signal(signo)
    }

    /// The raw signal number.
    pub const fn raw(self) -> i32 {
        self.0
    }

    /// The conventional name, such as `"SIGSEGV"`, or `"SIG?"` for a number the
    /// platform does not name (real-time signals, for example).
    pub fn name(self) -> &'static str {
        nix::sys::signal::Signal::try_from(self.0)
            .map(|s| s.as_str())
            .unwrap_or("SIG?")
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (signal {})", self.name(), self.0)
    }
}

/// How a child process ended, as [`Process::exitcode`](crate::Process::exitcode) reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// The process called `exit` (or returned from its task: code 0).
    Code(i32),
    /// The process was ended by a signal.
    Signaled {
        /// Which signal.
        signal: Signal,
        /// Whether the kernel wrote a core dump.
        core_dumped: bool,
    },
}

impl ExitStatus {
    /// `true` for `Code(0)`.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }

    /// The exit code, Python-style: negative signal number for a signal death.
    pub fn python_exitcode(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signaled { signal, .. } => -signal.raw(),
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signaled {
                signal,
                core_dumped,
            } => {
                write!(f, "killed by {signal}")?;
                if *core_dumped {
                    f.write_str(", core dumped")?;
                }
                Ok(())
            }
        }
    }
}

/// Everything that can go wrong running work in another process.
///
/// Match on it, or use the predicates ([`is_panic`](Error::is_panic),
/// [`is_timeout`](Error::is_timeout), [`signal`](Error::signal), ...).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The task panicked in the child. The message and location are the panic's own.
    #[error("task panicked in process {pid}: {message}{}", location_suffix(.location))]
    Panicked {
        /// The child's pid.
        pid: u32,
        /// The panic payload, when it was a string (it almost always is).
        message: String,
        /// `file:line:column` of the panic.
        location: Option<String>,
        /// The child's backtrace at the panic, when the child ran with
        /// `RUST_BACKTRACE=1` (or `full`) — children inherit the variable. Not part of
        /// the message; print it yourself.
        backtrace: Option<String>,
    },

    /// The child was killed by a signal before it returned a result.
    #[error(
        "process {pid} was killed by {signal}{} before returning a result{}",
        if *.core_dumped { ", core dumped" } else { "" },
        signal_hint(*.signal)
    )]
    Killed {
        /// The child's pid.
        pid: u32,
        /// The signal that ended it.
        signal: Signal,
        /// Whether the kernel wrote a core dump.
        core_dumped: bool,
    },

    /// The child ended before returning a result, and how it ended is unknown: the
    /// kernel reaped it and kept no status (this program ignores SIGCHLD, on Linux
    /// before 6.15), or another wait of this program took it.
    #[error(
        "process {pid} ended before returning a result, and its exit status is lost (SIGCHLD is ignored on a kernel older than Linux 6.15, or the program waited for it itself)"
    )]
    StatusLost {
        /// The child's pid.
        pid: u32,
    },

    /// The child exited (for example with `std::process::exit(3)`) before it returned a
    /// result.
    #[error(
        "process {pid} exited with code {code} before returning a result (did the task call std::process::exit?)"
    )]
    Exited {
        /// The child's pid.
        pid: u32,
        /// Its exit code.
        code: i32,
    },

    /// The operation did not finish in time. For
    /// [`Process::join_timeout`](crate::Process::join_timeout) the process is still running:
    /// join again, or terminate it.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// The time allowed.
        timeout: Duration,
    },

    /// A value could not be serialized.
    #[error("could not encode a value of type {type_name}: {reason}")]
    Encode {
        /// The Rust type that failed.
        type_name: String,
        /// The codec's message.
        reason: String,
    },

    /// Bytes from the other side could not be decoded as the expected type.
    #[error(
        "could not decode a value of type {type_name}: {reason} (do both sides use the same types?)"
    )]
    Decode {
        /// The Rust type expected.
        type_name: String,
        /// The codec's message.
        reason: String,
    },

    /// A frame larger than the configured maximum was sent or announced.
    #[error(
        "{what} is {len} bytes, over the maximum frame size of {max} bytes; raise it with multiproc::set_max_frame_size or send bulk data through shared memory"
    )]
    FrameTooLarge {
        /// What was too large: `"a frame"`, or which call's argument or result.
        what: String,
        /// Its length (at least this long, when encoding stopped at the limit).
        len: u64,
        /// The limit in force.
        max: u64,
    },

    /// The other side broke the protocol: it sent a message that makes no sense here.
    #[error("protocol violation from process {pid}: {detail}")]
    Protocol {
        /// The peer's pid (0 if unknown).
        pid: u32,
        /// What was wrong.
        detail: String,
    },

    /// The child runs a different build of the program and refused the task rather
    /// than call into code it cannot trust.
    #[error(
        "process {pid} runs a different build (its build id {child}, ours {parent}) and refused the task; start children from the same executable"
    )]
    BuildMismatch {
        /// The child's pid.
        pid: u32,
        /// Our build id (hex).
        parent: String,
        /// The child's build id (hex).
        child: String,
    },

    /// A child process could not be started.
    #[error("could not start a child process with start method {method}: {source}")]
    Start {
        /// The start method in use.
        method: crate::StartMethod,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The result of this process was already taken by an earlier join.
    #[error("the result of process {pid} was already taken by an earlier join")]
    AlreadyJoined {
        /// The child's pid.
        pid: u32,
    },

    /// The pool was closed; it takes no new work.
    #[error("the pool is closed and takes no new work")]
    PoolClosed,

    /// `join` was called on a pool that is still open.
    #[error("join() on a pool that is still open: call close() or terminate() first")]
    PoolNotClosed,

    /// The pool was terminated before this task finished.
    #[error("the pool was terminated before this task finished")]
    PoolTerminated,

    /// The call was cancelled ([`AsyncResult::cancel`](crate::AsyncResult::cancel)) before
    /// it answered: it did not run, or its worker was stopped, or (where a running call
    /// cannot be stopped) its answer was thrown away.
    #[error("the call was cancelled before it answered")]
    Cancelled,

    /// The pool's initializer failed in every worker that tried it, so no worker can
    /// run tasks.
    #[error("the pool's initializer failed: {message}")]
    Initializer {
        /// What the initializer's failure said.
        message: String,
    },

    /// An MPI pool (feature `mpi`) cannot serve: the program was not started by an MPI
    /// launcher, the job has no worker ranks, MPI was already finalized in this process,
    /// or a rank broke the protocol. The text says which, and what to do.
    #[error("MPI: {detail}")]
    Mpi {
        /// What went wrong, and what to do about it.
        detail: String,
    },

    /// The cluster pool (feature `cluster`) cannot reach or use its Redis server, no
    /// node accepts its work, or a call was lost with the nodes that held it. The text
    /// says which, and what to do.
    #[error("cluster ({address}): {detail}")]
    Cluster {
        /// The Redis server (its URL without the password).
        address: String,
        /// What went wrong.
        detail: String,
    },

    /// A call failed on a cluster node: `error` says how (a panic, a killed or exited
    /// worker process of the node, a timeout); `host` names the node's machine. The
    /// helpers ([`Error::is_panic`], [`Error::signal`], ...) look through it.
    #[error("{error} (on cluster node {host})")]
    OnNode {
        /// The node's host name (and pid).
        host: String,
        /// How the call failed there.
        error: Box<Error>,
    },

    /// The other end of a channel is gone: its process exited (or was killed), or it
    /// closed or dropped its handle. Nothing more will arrive, or nothing sent can be
    /// read.
    #[error("{what} is closed: the other side exited, was killed, or dropped its handle")]
    Closed {
        /// Which channel (`"pipe"`, `"queue"`, ...).
        what: &'static str,
    },

    /// Nothing was waiting in a queue or pipe (from a non-blocking `try_*` call).
    #[error("{what} is empty")]
    Empty {
        /// Which channel.
        what: &'static str,
    },

    /// A queue is full (from a non-blocking or timed `put`): it holds the `maxsize`
    /// items it was made with (or, for an item carrying descriptors, its socket has no
    /// room), and no consumer took one in time.
    #[error("{what} is full: no consumer has taken the items already in it")]
    Full {
        /// Which channel.
        what: &'static str,
    },

    /// The calling thread already holds this non-recursive lock: taking it again would
    /// wait forever. Use an `RLock` to lock recursively.
    #[error(
        "this thread already holds the {what}; locking it again would deadlock (use an RLock to lock recursively)"
    )]
    Deadlock {
        /// Which primitive.
        what: &'static str,
    },

    /// A `BoundedSemaphore` was released more times than it was acquired.
    #[error(
        "BoundedSemaphore released too many times: its value would exceed its bound of {bound}"
    )]
    SemaphoreOverflow {
        /// The bound given at creation.
        bound: u32,
    },

    /// A `Barrier` is broken: a party timed out, or [`abort`](crate::Barrier::abort)
    /// was called. Every waiter, now and later, gets this until the barrier is
    /// [`reset`](crate::Barrier::reset).
    #[error(
        "the barrier is broken: a party timed out or it was aborted (reset it to use it again)"
    )]
    BrokenBarrier,

    /// `JoinableQueue::task_done` was called more times than items were put.
    #[error("task_done() called more times than items were put on the JoinableQueue")]
    TaskDoneTooOften,

    /// A shared-memory segment could not be created, opened or accepted.
    #[error("shared memory: {detail}")]
    SharedMemory {
        /// What was wrong, and with which segment.
        detail: String,
    },

    /// An operating-system call failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What multiproc was doing.
        context: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A connection's handshake failed: the peer's key differs from ours, it has none
    /// where one is required (or the reverse), or it did not answer in time. Both ends
    /// of a failed handshake get this error.
    #[error("authentication with {peer} failed: {detail}")]
    AuthenticationFailed {
        /// The other end: its address, or for an accepted connection who connected.
        peer: String,
        /// What went wrong, and on which side.
        detail: String,
    },

    /// A connection could not be set up or used as asked: an address that does not
    /// parse or cannot be bound or reached, a key that is too short, TCP without a key,
    /// OS handles over TCP. The text says which, and what to do.
    #[error("connection ({address}): {detail}")]
    Connection {
        /// The address involved (empty if none yet).
        address: String,
        /// What went wrong.
        detail: String,
    },

    /// A message did not fit in the buffer given to
    /// [`Connection::recv_bytes_into`](crate::connection::Connection::recv_bytes_into);
    /// it is not lost: here it is (Python's `BufferTooShort`).
    #[error(
        "a message of {} bytes does not fit in the {room} bytes of the buffer after the offset (the message is in this error)",
        .message.len()
    )]
    BufferTooShort {
        /// Bytes of the buffer after the offset.
        room: usize,
        /// The whole message.
        message: Vec<u8>,
    },

    /// The queue was shut down ([`Queue::shutdown`](crate::Queue::shutdown)): it takes
    /// no more items, and once it is drained (or at once, after an immediate shutdown)
    /// it gives none either. Python's `queue.ShutDown`.
    #[error("{what} was shut down: it takes no more items and has none left to give")]
    ShutDown {
        /// Which channel.
        what: &'static str,
    },

    /// An argument that cannot work, refused where it is given (a pool of 0 workers,
    /// `max_tasks_per_child(0)`, a barrier too large): Python raises `ValueError`.
    #[error("invalid argument: {detail}")]
    InvalidArgument {
        /// What was wrong, and what to give instead.
        detail: String,
    },

    /// A pool call that did not cause its worker's death, yet could not be run again
    /// after it. A dead worker's other calls normally go back to the queue and run on
    /// another worker (only the call it was running answers the death); this error is
    /// for the rare call that cannot: its worker died between calls (no call running)
    /// each of the several times it was handed out, or its arguments could not be kept.
    /// The message names the call that was running, if any, and how the worker died.
    #[error("{}", lost_message(*.pid, .cause, *.running, *.started))]
    LostWithWorker {
        /// The dead worker's pid.
        pid: u32,
        /// How the worker died: what the call it was running answered
        /// ([`Error::Killed`], [`Error::Exited`], [`Error::Timeout`]...).
        cause: Box<Error>,
        /// The call the worker was running when it died (its index in the job, as
        /// `map_results` numbers it), or `None` if it died between calls.
        running: Option<usize>,
        /// Whether this call had run in that worker (its answer died with it) rather
        /// than not started.
        started: bool,
    },

    /// The manager of a proxy is gone: it was shut down, exited or was killed, or it
    /// was restarted and no longer holds this proxy's object. Every call on its proxies
    /// answers this, at once.
    #[error(
        "the manager at {address} is gone ({detail}): it was shut down, exited, was killed or restarted"
    )]
    ManagerGone {
        /// The manager's address.
        address: String,
        /// What the client saw.
        detail: String,
    },

    /// A manager could not do what was asked: the object is gone, is another kind, an
    /// index is out of range, a lock is not held by this thread... The text says which.
    #[error("manager at {address}: {detail}")]
    Manager {
        /// The manager's address.
        address: String,
        /// What went wrong.
        detail: String,
    },
}

/// How a worker died, in a few words: for [`Error::LostWithWorker`], whose message names
/// another call.
fn death_summary(cause: &Error) -> String {
    match cause {
        Error::Killed {
            signal,
            core_dumped,
            ..
        } => format!(
            "killed by {signal}{}",
            if *core_dumped { ", core dumped" } else { "" }
        ),
        Error::Exited { code, .. } => format!("exited with code {code}"),
        Error::StatusLost { .. } => "its exit status is lost".into(),
        Error::Timeout { timeout, .. } => format!("killed past its task_timeout of {timeout:?}"),
        Error::Panicked { message, .. } => format!("panicked under panic = \"abort\": {message}"),
        other => other.to_string(),
    }
}

fn lost_message(pid: u32, cause: &Error, running: Option<usize>, started: bool) -> String {
    let how = death_summary(cause);
    let this = if started {
        "this call had run, but its answer was lost with the worker"
    } else {
        "this call had not started"
    };
    match running {
        Some(call) => format!(
            "pool worker {pid} died ({how}) while running call {call}; {this}, and it could not be run again"
        ),
        None => format!(
            "pool worker {pid} died ({how}) between calls; {this}; workers died holding it too many times, so it is not run again"
        ),
    }
}

fn location_suffix(location: &Option<String>) -> String {
    location
        .as_ref()
        .map(|l| format!(" (at {l})"))
        .unwrap_or_default()
}

fn signal_hint(signal: Signal) -> &'static str {
    match signal.raw() {
        libc::SIGSEGV | libc::SIGBUS => {
            " (invalid memory access in the task or a library it called)"
        }
        libc::SIGABRT => {
            " (abort(): a failed assertion in C code, or a panic under panic = \"abort\")"
        }
        libc::SIGKILL => {
            " (killed from outside: Process::kill, kill -9, or the kernel's OOM killer)"
        }
        _ => "",
    }
}

impl Error {
    /// A copy for each of several calls that failed for one reason. Variants that hold
    /// an `io::Error` keep its kind and message.
    pub(crate) fn clone_shallow(&self) -> Error {
        use Error::*;
        let io_copy = |e: &io::Error| io::Error::new(e.kind(), e.to_string());
        match self {
            Panicked {
                pid,
                message,
                location,
                backtrace,
            } => Panicked {
                pid: *pid,
                message: message.clone(),
                location: location.clone(),
                backtrace: backtrace.clone(),
            },
            Killed {
                pid,
                signal,
                core_dumped,
            } => Killed {
                pid: *pid,
                signal: *signal,
                core_dumped: *core_dumped,
            },
            StatusLost { pid } => StatusLost { pid: *pid },
            Exited { pid, code } => Exited {
                pid: *pid,
                code: *code,
            },
            Timeout { what, timeout } => Timeout {
                what: what.clone(),
                timeout: *timeout,
            },
            Encode { type_name, reason } => Encode {
                type_name: type_name.clone(),
                reason: reason.clone(),
            },
            Decode { type_name, reason } => Decode {
                type_name: type_name.clone(),
                reason: reason.clone(),
            },
            FrameTooLarge { what, len, max } => FrameTooLarge {
                what: what.clone(),
                len: *len,
                max: *max,
            },
            Protocol { pid, detail } => Protocol {
                pid: *pid,
                detail: detail.clone(),
            },
            BuildMismatch { pid, parent, child } => BuildMismatch {
                pid: *pid,
                parent: parent.clone(),
                child: child.clone(),
            },
            Start { method, source } => Start {
                method: *method,
                source: io_copy(source),
            },
            AlreadyJoined { pid } => AlreadyJoined { pid: *pid },
            PoolClosed => PoolClosed,
            PoolNotClosed => PoolNotClosed,
            PoolTerminated => PoolTerminated,
            Cancelled => Cancelled,
            Initializer { message } => Initializer {
                message: message.clone(),
            },
            Mpi { detail } => Mpi {
                detail: detail.clone(),
            },
            Closed { what } => Closed { what },
            Cluster { address, detail } => Cluster {
                address: address.clone(),
                detail: detail.clone(),
            },
            OnNode { host, error } => OnNode {
                host: host.clone(),
                error: Box::new(error.clone_shallow()),
            },
            Empty { what } => Empty { what },
            Full { what } => Full { what },
            Deadlock { what } => Deadlock { what },
            SemaphoreOverflow { bound } => SemaphoreOverflow { bound: *bound },
            BrokenBarrier => BrokenBarrier,
            TaskDoneTooOften => TaskDoneTooOften,
            SharedMemory { detail } => SharedMemory {
                detail: detail.clone(),
            },
            ShutDown { what } => ShutDown { what },
            Io { context, source } => Io {
                context,
                source: io_copy(source),
            },
            AuthenticationFailed { peer, detail } => AuthenticationFailed {
                peer: peer.clone(),
                detail: detail.clone(),
            },
            Connection { address, detail } => Connection {
                address: address.clone(),
                detail: detail.clone(),
            },
            BufferTooShort { room, message } => BufferTooShort {
                room: *room,
                message: message.clone(),
            },
            InvalidArgument { detail } => InvalidArgument {
                detail: detail.clone(),
            },
            LostWithWorker {
                pid,
                cause,
                running,
                started,
            } => LostWithWorker {
                pid: *pid,
                cause: Box::new(cause.clone_shallow()),
                running: *running,
                started: *started,
            },
            ManagerGone { address, detail } => ManagerGone {
                address: address.clone(),
                detail: detail.clone(),
            },
            Manager { address, detail } => Manager {
                address: address.clone(),
                detail: detail.clone(),
            },
        }
    }

    pub(crate) fn io(context: &'static str, source: impl Into<io::Error>) -> Self {
        Error::Io {
            context,
            source: source.into(),
        }
    }

    /// The error itself, or for [`Error::OnNode`] how the call failed on the node.
    pub(crate) fn inner(&self) -> &Error {
        match self {
            Error::OnNode { error, .. } => error.inner(),
            e => e,
        }
    }

    /// `true` if the task panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self.inner(), Error::Panicked { .. })
    }

    /// `true` if a channel's other side is gone ([`Error::Closed`]).
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::Closed { .. })
    }

    /// `true` if a deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self.inner(), Error::Timeout { .. })
    }

    /// `true` if the child died without answering (a signal or an early exit).
    pub fn is_process_death(&self) -> bool {
        matches!(
            self.inner(),
            Error::Killed { .. } | Error::Exited { .. } | Error::StatusLost { .. }
        )
    }

    /// The signal that killed the child, if that is what happened.
    pub fn signal(&self) -> Option<Signal> {
        match self.inner() {
            Error::Killed { signal, .. } => Some(*signal),
            _ => None,
        }
    }

    /// The child's exit code, if it exited before answering.
    pub fn exit_code(&self) -> Option<i32> {
        match self.inner() {
            Error::Exited { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The child's backtrace, if the task panicked in a child run with
    /// `RUST_BACKTRACE` set.
    pub fn backtrace(&self) -> Option<&str> {
        match self.inner() {
            Error::Panicked { backtrace, .. } => backtrace.as_deref(),
            _ => None,
        }
    }

    /// The panic message, if the task panicked.
    pub fn panic_message(&self) -> Option<&str> {
        match self.inner() {
            Error::Panicked { message, .. } => Some(message),
            _ => None,
        }
    }
}

/// The text of a panic's payload (a `&str` or a `String`, as `panic!` makes).
pub(crate) fn panic_message(payload: &dyn std::any::Any) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any> (a panic payload that is not a string)".to_owned()
    }
}
