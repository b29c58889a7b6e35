//! Starting the shared-memory tracker: fork + exec of this executable with one socket
//! inherited and, unlike a worker, no parent-death signal: the tracker must outlive
//! its owner long enough to clean up after it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::sys::signal::{SigHandler, Signal};

/// Starts `exe` with `env` set and `sock` inherited (under the same descriptor
/// number), ignoring SIGINT, SIGTERM and SIGHUP from the start: a Ctrl-C or a hang-up
/// that ends the whole process group must not end the tracker before its owner.
/// Returns the child's pid.
pub(crate) fn spawn_tracker(
    exe: &Path,
    env: &[(&str, String)],
    sock: BorrowedFd<'_>,
) -> io::Result<u32> {
    let fd = sock.as_raw_fd();
    let mut cmd = Command::new(exe);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (sigaction, fcntl); it allocates nothing. Ignored
    // dispositions survive exec.
    unsafe {
        cmd.pre_exec(move || {
            ignore_stop_signals();
            super::fd::inheritable(fd)
        });
    }
    let child = cmd.spawn()?;
    // `Child` neither waits nor kills on drop; the caller owns the pid from here on.
    Ok(child.id())
}

/// Ignores SIGINT, SIGTERM, SIGHUP and SIGPIPE (async-signal-safe).
pub(crate) fn ignore_stop_signals() {
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGPIPE] {
        // SAFETY: SIG_IGN installs no handler, so no code runs in signal context;
        // sigaction is async-signal-safe.
        let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigIgn) };
    }
}
