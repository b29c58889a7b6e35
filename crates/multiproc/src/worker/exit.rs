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
    if origin == Origin::Forked {
        // A `Fork` child is a copy of a program that may have other threads: if one
        // of them held `stdout`'s lock (or C stdio's) at the instant of the fork, the
        // copy of that lock stays held forever in the child, and a plain flush would
        // hang the child at its very end (a test harness printing "test ... ok" while
        // a test forks is enough). So an alarm ends the child with its code if the
        // flushes have not returned in a short while (its task, had it printed, would
        // have hung on the same lock: the hazard `StartMethod::Fork` documents). An
        // alarm, not a flushing thread: starting a thread in every child that ends
        // doubled the cost of starting and joining a `Fork` process.
        sys::proc::exit_if_stuck(FLUSH_BOUND, code);
    }
    let _ = std::io::stdout().flush();
    sys::proc::flush_c_stdio(origin == Origin::Execd);
    sys::proc::exit_now(code)
}

/// How long a `Fork` child's last flushes may take before it ends anyway.
const FLUSH_BOUND: std::time::Duration = std::time::Duration::from_millis(200);
