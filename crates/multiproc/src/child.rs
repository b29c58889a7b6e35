//! The child's side: how a started process becomes a worker, and the worker loop.

use std::cell::RefCell;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::start::{ENV_CHILD, ENV_START_METHOD};
use crate::sys;
use crate::wire::message::{Failure, Reply};

/// Exit code of a child whose parent was gone before it could start.
pub(crate) const EXIT_ORPHANED: i32 = 70;
/// Exit code of a child that received something that is not the protocol.
pub(crate) const EXIT_PROTOCOL: i32 = 71;
/// Exit code of a child that refused to serve (wrong build, privileged process).
pub(crate) const EXIT_REFUSED: i32 = 72;

/// How this worker came to be; decides what it may take on trust.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A fork of the parent: same memory, same build by construction.
    Forked,
    /// A fresh image of an executable (spawn, or a fork of the fork server).
    Execd,
}

/// The parent's pid, if this process is a multiproc child.
static PARENT_PID: AtomicU32 = AtomicU32::new(0);
/// The name the parent gave this process.
static NAME: Mutex<Option<String>> = Mutex::new(None);

pub(crate) fn parent_pid() -> Option<u32> {
    match PARENT_PID.load(Ordering::Relaxed) {
        0 => None,
        p => Some(p),
    }
}

pub(crate) fn name() -> Option<String> {
    NAME.lock().map(|n| n.clone()).unwrap_or(None)
}

/// If the parent marked this process as a child, become what it asked for and never
/// return. Otherwise return at once.
pub(crate) fn enter_if_child() {
    let Some(value) = std::env::var_os(ENV_CHILD) else {
        return;
    };
    sys::proc::remove_env(ENV_CHILD);
    // How the parent started us (only Spawn says): our own children start the same
    // way by default, as in Python.
    let method = std::env::var_os(ENV_START_METHOD);
    if method.is_some() {
        sys::proc::remove_env(ENV_START_METHOD);
    }
    let refuse = |why: &str| -> ! {
        let _ = writeln!(
            std::io::stderr(),
            "multiproc: refusing to act as a child: {why}"
        );
        sys::proc::exit_now(EXIT_REFUSED)
    };
    if sys::proc::is_secure_exec() {
        refuse("this is a privileged (setuid/setgid/capability) process");
    }
    let value = value.to_string_lossy();
    let (role, fd) = match value.split_once(':') {
        Some((role, fd)) => (role, fd.parse::<i32>().ok()),
        None => (&*value, None),
    };
    let Some(fd) = fd.filter(|fd| *fd > 2) else {
        refuse(&format!("malformed {ENV_CHILD}={value:?}"));
    };
    let sock = match sys::fd::adopt_inherited(fd) {
        Ok(s) => s,
        Err(e) => refuse(&e.to_string()),
    };
    // Take orders only from our own parent, running as our own user.
    let ppid = nix::unistd::getppid().as_raw() as u32;
    match sys::fd::peer(sock.as_fd()) {
        Ok((pid, uid)) if pid == ppid && uid == sys::proc::uid() => {}
        // A tracker outlives an owner that dies at once (then it was re-parented): it
        // only removes names its own user could remove anyway.
        Ok((_, uid)) if role == "shmtracker" && uid == sys::proc::uid() => {}
        Ok((pid, uid)) => refuse(&format!(
            "the socket's peer (pid {pid}, uid {uid}) is not this process's parent"
        )),
        Err(e) => refuse(&e.to_string()),
    }
    match role {
        "worker" => {
            if let Some(m) = method.and_then(|m| m.to_str()?.parse().ok()) {
                crate::start::set_start_method(m);
            }
            serve(sock, Origin::Execd)
        }
        "forkserver" => crate::start::forkserver::serve(sock),
        "shmtracker" => crate::shm::tracker::serve(sock),
        other => refuse(&format!("unknown role {other:?}")),
    }
}

thread_local! {
    /// The socket, chunk and call position of the task running on this thread, for
    /// the panic hook.
    static CURRENT: RefCell<Option<(Rc<OwnedFd>, u64, u32)>> = const { RefCell::new(None) };
    /// Whether a chunk's tasks run on this thread now.
    static IN_TASK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The position of the running call in its chunk (a `Cell`: set once per call).
    static INDEX: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// The message and location of the last panic on this thread.
    static LAST_PANIC: RefCell<Option<Panic>> = const { RefCell::new(None) };
}

/// Records each panic of a running task for the worker loop; under `panic = "abort"`,
/// where the process dies inside the hook, the hook itself reports to the parent first.
/// Any other panic goes to the hook that was in place before.
///
/// Installed once per process. The Fork start method installs it in the parent before
/// it forks, so that a forked child never calls `set_hook`: that takes std's hook lock
/// for writing, and in a child forked while another thread of the parent was panicking
/// (holding the lock for reading) it would wait forever.
pub(crate) fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_task = CURRENT.try_with(|c| c.borrow().is_some()).unwrap_or(false);
            if !in_task {
                return previous(info);
            }
            let panic = Panic::of(info);
            // On this process's own stderr too, as an uncaught panic of any program
            // shows (the parent gets it in the error as well).
            panic.report();
            if cfg!(panic = "abort") {
                CURRENT.with(|c| {
                    if let Some((sock, seq, _)) = c.borrow().as_ref() {
                        let reply = Reply::Aborting {
                            seq: *seq,
                            index: INDEX.get(),
                            message: panic.message.clone(),
                            location: panic.location.clone(),
                            backtrace: panic.backtrace.clone(),
                        };
                        let mut head = Vec::new();
                        if crate::wire::message::frame_head(&reply, 0, &mut head).is_ok() {
                            let _ = crate::wire::send_all(sock.as_fd(), &[&head], &[]);
                        }
                    }
                });
            }
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(panic));
        }));
    });
}

/// What a task's panic left: its message, location, and (with `RUST_BACKTRACE`) the
/// backtrace, captured in the hook, where the panicking frames still are.
struct Panic {
    message: String,
    location: Option<String>,
    backtrace: Option<String>,
}

impl Panic {
    /// Writes the panic to stderr, naming the process, in the form of Rust's own
    /// panic message.
    fn report(&self) {
        let name = name().unwrap_or_else(|| "a multiproc child".to_owned());
        let at = self
            .location
            .as_deref()
            .map(|l| format!(" at {l}"))
            .unwrap_or_default();
        let bt = self
            .backtrace
            .as_deref()
            .map(|b| format!("\nstack backtrace:\n{b}"))
            .unwrap_or_default();
        let text = format!(
            "process {} ({name}) panicked{at}:\n{}{bt}\n",
            std::process::id(),
            self.message
        );
        write_stderr_unlocked(text.as_bytes());
    }

    fn of(info: &std::panic::PanicHookInfo<'_>) -> Panic {
        let bt = std::backtrace::Backtrace::capture();
        Panic {
            message: crate::error::panic_message(info.payload()),
            location: info.location().map(|l| l.to_string()),
            backtrace: (bt.status() == std::backtrace::BacktraceStatus::Captured)
                .then(|| bt.to_string()),
        }
    }
}

/// Records a panic's message and location for the worker loop to report, as the
/// worker's panic hook does; for other worker loops (MPI ranks) that install their own
/// hook.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub(crate) fn record_panic(info: &std::panic::PanicHookInfo<'_>) {
    let panic = Panic::of(info);
    LAST_PANIC.with(|p| *p.borrow_mut() = Some(panic));
}

/// The chunk now running on this thread, for the panic hook (`sock`: where it reports
/// under `panic = "abort"`); [`set_index`] says which call of it.
pub(crate) fn set_current(sock: Option<Rc<OwnedFd>>, seq: u64) {
    IN_TASK.set(true);
    CURRENT.with(|c| *c.borrow_mut() = sock.map(|s| (s, seq, 0)));
}

/// Whether a task runs on this thread (for a panic hook: a panic there is the task's).
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub(crate) fn in_task() -> bool {
    IN_TASK.get()
}

/// The position in its chunk of the call now running on this thread.
pub(crate) fn set_index(index: u32) {
    INDEX.set(index);
}

/// No call runs on this thread any more.
pub(crate) fn clear_current() {
    IN_TASK.set(false);
    CURRENT.with(|c| *c.borrow_mut() = None);
}

/// The failure for a call that panicked with `payload`: the message and location the
/// hook recorded.
pub(crate) fn take_panic(payload: &(dyn std::any::Any + Send)) -> Failure {
    let panic = LAST_PANIC
        .with(|p| p.borrow_mut().take())
        .unwrap_or_else(|| Panic {
            message: crate::error::panic_message(payload),
            location: None,
            backtrace: None,
        });
    Failure::Panicked {
        message: panic.message,
        location: panic.location,
        backtrace: panic.backtrace,
    }
}

/// The name the parent gave this process.
pub(crate) fn set_name(name: String) {
    if let Ok(mut n) = NAME.lock() {
        *n = Some(name);
    }
}

/// The worker loop over the socket to the parent. Never returns.
///
/// The process ends with `_exit` once the parent says so: what the task printed is
/// flushed first (Rust's `stdout`; C's `stdout` and `stderr`, and every C stream in a
/// child that was exec'd), but `atexit` handlers, C++ static destructors and other
/// threads' thread-local destructors do not run: in a `Fork` child they are the
/// parent's (they would run twice), and every start method ends the same way (as
/// Python's fork and forkserver children end with `os._exit`).
pub(crate) fn serve(sock: OwnedFd, origin: Origin) -> ! {
    // SIGTERM waits until the parent's hello says whether this worker leaves it to the
    // parent (a cluster node's pool: see `sys::term::settle_terminate`).
    sys::term::hold_terminate();
    sys::proc::worker_signals(true);
    PARENT_PID.store(nix::unistd::getppid().as_raw() as u32, Ordering::Relaxed);
    install_panic_hook();
    let mut link = crate::worker::SocketLink::new(sock);
    let code = crate::worker::serve(&mut link, origin);
    drop(link);
    flush_stdout(origin);
    sys::proc::flush_c_stdio(origin == Origin::Execd);
    sys::proc::exit_now(code)
}

/// Flushes what the task wrote to Rust's `stdout` before the process ends.
///
/// A `Fork` child is a copy of a program that may have other threads: if one of them
/// held `stdout`'s lock at the instant of the fork, the copy of that lock stays held
/// forever in the child, and a plain flush would hang the child at its very end (a
/// test harness printing "test ... ok" while a test forks is enough). So a `Fork`
/// child flushes on a thread of its own and waits for it a short while; if the lock
/// never comes, the child ends anyway (its task, had it printed, would have hung on
/// the same lock: the hazard `StartMethod::Fork` documents).
fn flush_stdout(origin: Origin) {
    if origin != Origin::Forked {
        let _ = std::io::stdout().flush();
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let flusher = std::thread::Builder::new().spawn(move || {
        let _ = std::io::stdout().flush();
        let _ = tx.send(());
    });
    if flusher.is_ok() {
        let _ = rx.recv_timeout(std::time::Duration::from_millis(200));
    }
}

/// Writes to file descriptor 2 directly, without `std::io::stderr()`'s lock: in a
/// `Fork` child that lock may be a copy of one another thread of the parent held at
/// the fork, held forever (see [`flush_stdout`]). Stderr is unbuffered anyway.
fn write_stderr_unlocked(mut bytes: &[u8]) {
    use std::os::fd::AsFd;
    let stderr = std::io::stderr();
    while !bytes.is_empty() {
        match nix::unistd::write(stderr.as_fd(), bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}
