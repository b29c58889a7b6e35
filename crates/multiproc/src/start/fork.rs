//! `Fork`: the child is a copy of this process, made on the launcher thread.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::{forget_runtime_after_fork, runtime, runtime_slot};
use crate::sys;
use crate::sys::proc::{Forked, die_with_parent, exit_now, fork};
use crate::worker::{self, EXIT_ORPHANED, Origin};

pub(super) fn start(theirs: OwnedFd) -> io::Result<u32> {
    let parent = std::process::id();
    // Rust's stdout is flushed first, here on the calling thread (which may hold its
    // lock: the launcher could not take it): a partial line it buffered is the
    // parent's, and the child would write it again when it ends. (Python flushes its
    // streams before a fork too.)
    let _ = std::io::Write::flush(&mut std::io::stdout());
    runtime().on_launcher(move || {
        // Before the fork, so that the child need not (see the function's notes).
        worker::install_panic_hook();
        // Held across fork so that the child finds this lock in a known state (held by
        // the one thread it has) rather than perhaps held by a thread it lacks.
        let mut slot = runtime_slot();
        let mut children = super::children::lock();
        // Likewise the shared-memory tracker's state (a thread may be starting a
        // tracker under its lock).
        let tracker = crate::shm::tracker::hold_for_fork();
        // A Ctrl-C must not kill the child before it sets a worker's SIGINT handling:
        // blocked across the fork, it stays pending until the child's handler takes it
        // (and drops it; an interrupt sent meanwhile is acted on then).
        let mask = sys::proc::block_sigint();
        let forked = fork();
        if !matches!(forked, Ok(Forked::Child)) {
            sys::proc::restore_sigmask(mask);
        }
        match forked? {
            Forked::Child => {
                // SIGINT stays blocked until the worker's handler is in place
                // (`worker::serve_socket`, which unblocks it).
                // What C's stdio buffered is the parent's to write (see `flush_c_stdio`).
                sys::proc::purge_inherited_c_stdio();
                // Its own children start as it was started (Python's `fork` context).
                super::set_start_method(super::StartMethod::Fork);
                tracker.in_child();
                forget_runtime_after_fork(&mut slot);
                drop(slot);
                children.clear();
                drop(children);
                // Only what an exec'd child would hold, and our own socket: the parent's
                // pipe ends, queues and other children's sockets must not stay open here
                // (their readers would wait for this child to exit), nor the parent's end
                // of our socket (it would hide the parent's death from us). The task's
                // own descriptors arrive with the task.
                sys::fd::disown_inherited(theirs.as_raw_fd());
                if !die_with_parent(parent) {
                    exit_now(EXIT_ORPHANED);
                }
                worker::serve_socket(theirs, Origin::Forked)
            }
            Forked::Parent(pid) => {
                drop(tracker);
                drop(children);
                drop(slot);
                drop(theirs);
                Ok(pid)
            }
        }
    })
}
