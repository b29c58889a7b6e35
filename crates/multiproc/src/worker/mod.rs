//! The worker side: what a process (or an MPI rank) does with the frames its parent
//! sends. One loop over a small [`Link`] (frames in, frames out): answer the hello or
//! refuse it, run each chunk, answer it, exit on `Exit` or end of stream.
//!
//! - `serve`: the loop.
//! - `chunk`: running one chunk, answering it in pieces; the call slot's word.
//! - `link`: the [`Link`] trait, the socket to the parent, the frame limits.
//! - `panic`: the panic hook, and the running call's context it reads.
//! - `identity`: the parent's pid and the name it gave this process.
//! - `exit`: exit codes, and how a worker process ends.
//!
//! This module (with [`serve_socket`], a child process's life as a worker) imports
//! only what lies below it: `task` (one invocation), `wire`, `sys`, `error`. The
//! start methods and the bootstrap, above it, enter it.

mod chunk;
mod exit;
mod identity;
mod link;
mod panic;
mod serve;

use std::os::fd::OwnedFd;

use crate::sys;

pub(crate) use chunk::NO_CALL;
#[cfg(test)]
pub(crate) use chunk::call_word;
pub(crate) use exit::{EXIT_ORPHANED, EXIT_PROTOCOL, EXIT_REFUSED};
pub(crate) use identity::{name, parent_pid};
pub(crate) use link::{Link, frame_limit};
pub(crate) use panic::install_panic_hook;
// For other worker loops, which install their own panic hook and transport.
#[cfg(feature = "mpi")]
pub(crate) use link::ENVELOPE_ROOM;
#[cfg(feature = "mpi")]
pub(crate) use panic::{in_task, record_panic};
pub(crate) use serve::serve;

/// How this worker came to be; decides what it may take on trust.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A fork of the parent: same memory, same build by construction.
    Forked,
    /// A fresh image of an executable (spawn, or a fork of the fork server).
    Execd,
}

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
    install_panic_hook();
    let mut link = link::SocketLink::new(sock);
    let code = serve(&mut link, origin);
    drop(link);
    exit::end(code, origin)
}
