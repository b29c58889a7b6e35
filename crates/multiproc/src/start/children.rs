//! The children this process started as [`crate::Process`]es and still holds a handle
//! to, for [`crate::active_children`].
//!
//! A handle adds its child when it is made and removes it before it closes the child's
//! pidfd, so every pidfd listed here is open for as long as the lock is held.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::{Mutex, MutexGuard};

pub(super) struct Child {
    pid: u32,
    name: String,
    pidfd: RawFd,
}

static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());

/// The list, locked. The Fork start method holds it across `fork()`, so that the child
/// finds it in a known state, and empties it there: the parent's children are not the
/// child's.
pub(super) fn lock() -> MutexGuard<'static, Vec<Child>> {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Lists a child; `pidfd` must stay open until [`remove`] is called with it.
pub(crate) fn add(pid: u32, name: &str, pidfd: BorrowedFd<'_>) {
    lock().push(Child {
        pid,
        name: name.to_owned(),
        pidfd: pidfd.as_raw_fd(),
    });
}

/// Unlists the child named by `pidfd` (a pid alone could name two entries: a reaped
/// child's, whose handle is not dropped yet, and a new child's that reuses the pid).
pub(crate) fn remove(pidfd: BorrowedFd<'_>) {
    let fd = pidfd.as_raw_fd();
    lock().retain(|c| c.pidfd != fd);
}

/// The listed children that have not ended, in the order they were started: pid and
/// name. Nothing is reaped (each handle keeps its child's exit status for its `join`).
pub(crate) fn running() -> Vec<(u32, String)> {
    let list = lock();
    let mut fds: Vec<libc::pollfd> = list
        .iter()
        .map(|c| libc::pollfd {
            fd: c.pidfd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // A pidfd is readable once its process ended. If the poll fails, say nothing ended
    // rather than hide a running child.
    if crate::sys::fd::poll_raw(&mut fds, 0).is_err() {
        fds.iter_mut().for_each(|f| f.revents = 0);
    }
    list.iter()
        .zip(&fds)
        .filter(|(_, f)| f.revents == 0)
        .map(|(c, _)| (c.pid, c.name.clone()))
        .collect()
}
