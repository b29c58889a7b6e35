//! The panic hook of a worker, and the context of the running call it reads: which
//! chunk and call run on this thread, and where to report under `panic = "abort"`.

use std::cell::RefCell;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;

use super::identity;
use crate::wire::message::{Failure, Reply};

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
        let name = identity::name().unwrap_or_else(|| "a multiproc child".to_owned());
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
/// under `panic = "abort"`); [`with_index`] says which call of it.
pub(super) fn set_current(sock: Option<Rc<OwnedFd>>, seq: u64) {
    IN_TASK.set(true);
    CURRENT.with(|c| *c.borrow_mut() = sock.map(|s| (s, seq, 0)));
}

/// Whether a task runs on this thread (for a panic hook: a panic there is the task's).
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub(crate) fn in_task() -> bool {
    IN_TASK.get()
}

/// Runs `f` with the cell that holds the position in its chunk of the call now
/// running on this thread (set before each call starts, see `task::Mark`).
pub(super) fn with_index<T>(f: impl FnOnce(&std::cell::Cell<u32>) -> T) -> T {
    INDEX.with(f)
}

/// No call runs on this thread any more.
pub(super) fn clear_current() {
    IN_TASK.set(false);
    CURRENT.with(|c| *c.borrow_mut() = None);
}

/// The failure for a call that panicked with `payload`: the message and location the
/// hook recorded.
pub(super) fn take_panic(payload: &(dyn std::any::Any + Send)) -> Failure {
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

/// Writes to file descriptor 2 directly, without `std::io::stderr()`'s lock: in a
/// `Fork` child that lock may be a copy of one another thread of the parent held at
/// the fork, held forever (see `exit::end`). Stderr is unbuffered anyway.
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
