//! Who this process is as a multiproc child: how it came to be one (its [`Origin`],
//! which decides what it may take on trust), its parent's pid and the name the parent
//! gave it (for `current_process` and `parent_process`, and a panic's report).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

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

/// The parent's pid, if this process is a multiproc child serving it.
pub(crate) fn parent_pid() -> Option<u32> {
    match PARENT_PID.load(Ordering::Relaxed) {
        0 => None,
        p => Some(p),
    }
}

/// The name the parent gave this process, if it is a multiproc child.
pub(crate) fn name() -> Option<String> {
    NAME.lock().map(|n| n.clone()).unwrap_or(None)
}

/// The name the parent gave this process.
pub(super) fn set_name(name: String) {
    if let Ok(mut n) = NAME.lock() {
        *n = Some(name);
    }
}

/// Remembers this process's parent: it serves one from now on.
pub(super) fn remember_parent() {
    PARENT_PID.store(nix::unistd::getppid().as_raw() as u32, Ordering::Relaxed);
}
