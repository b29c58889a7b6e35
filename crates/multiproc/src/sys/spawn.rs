//! Fork + exec of this executable, with one socket inherited.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// The environment variable a parent sets on a child it execs: `<role>:<fd>`, the role
/// being `worker`, `forkserver` or `shmtracker` and `fd` the inherited socket to the
/// parent (read by the crate's bootstrap).
pub(crate) const ENV_CHILD: &str = "MULTIPROC_CHILD";

/// Starts `exe` with `env` set and `sock` inherited (under the same descriptor
/// number). The child dies with the calling thread. Returns its pid.
pub(crate) fn spawn_with_socket(
    exe: &Path,
    env: &[(&str, String)],
    sock: BorrowedFd<'_>,
) -> io::Result<u32> {
    let parent = std::process::id();
    let fd = sock.as_raw_fd();
    let mut cmd = Command::new(exe);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (sigaction, sigprocmask, prctl, getppid, fcntl); it allocates
    // nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Ignored and blocked across exec (after std reset the mask): a Ctrl-C cannot
            // kill the child before its worker (or fork server) sets its own SIGINT
            // handling, and a `Process::interrupt` sent meanwhile stays pending until
            // the worker's handler takes it (a blocked signal is kept, even ignored).
            super::proc::ignore_sigint();
            let _ = super::proc::block_sigint();
            if !super::proc::die_with_parent(parent) {
                return Err(io::Error::other(
                    "the parent exited before its child started",
                ));
            }
            super::fd::inheritable(fd)
        });
    }
    let child = cmd.spawn()?;
    // `Child` neither waits nor kills on drop; the caller owns the pid from here on.
    Ok(child.id())
}
