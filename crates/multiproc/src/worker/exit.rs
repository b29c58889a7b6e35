//! How a worker process ends: its exit codes, and what it flushes before `_exit`.

use std::io::Write;

use super::identity::Origin;
use crate::sys;

/// Exit code of a child whose parent was gone before it could start.
pub(crate) const EXIT_ORPHANED: i32 = 70;
/// Exit code of a child that received something that is not the protocol.
pub(crate) const EXIT_PROTOCOL: i32 = 71;
/// Exit code of a child that refused to serve (wrong build, privileged process).
pub(crate) const EXIT_REFUSED: i32 = 72;

/// Ends this worker process with `code`, after flushing what its tasks printed (see
/// `serve_socket` for what does not run).
pub(super) fn end(code: i32, origin: Origin) -> ! {
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
