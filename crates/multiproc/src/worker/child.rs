//! A child process's life as a worker: set up its signals and panic hook, serve its
//! parent over the inherited socket, end with `_exit`.

use std::os::fd::OwnedFd;

use super::identity::{self, Origin};
use super::link::SocketLink;
use super::{exit, panic, serve};
use crate::sys;

/// The worker loop over the socket to the parent. Never returns.
///
/// The process ends with `_exit` once the parent says so: what the task printed is
/// flushed first (Rust's `stdout`; C's `stdout` and `stderr`, and every C stream in a
/// child that was exec'd), but `atexit` handlers, C++ static destructors and other
/// threads' thread-local destructors do not run: in a `Fork` child they are the
/// parent's (they would run twice), and every start method ends the same way (as
/// Python's fork and forkserver children end with `os._exit`).
pub(crate) fn serve_socket(sock: OwnedFd, origin: Origin) -> ! {
    // SIGTERM waits until the parent's hello says whether this worker leaves it to the
    // parent (a cluster node's pool: see `sys::term::settle_terminate`).
    sys::term::hold_terminate();
    sys::proc::worker_signals(true);
    identity::remember_parent();
    panic::install_panic_hook();
    let mut link = SocketLink::new(sock);
    let code = serve::serve(&mut link, origin);
    drop(link);
    exit::end(code, origin)
}
