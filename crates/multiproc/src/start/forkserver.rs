//! `ForkServer`: a small server, exec'd from this executable while nothing else runs in
//! it, forks every child on request.
//!
//! The server is single-threaded and has run nothing but multiproc's own start-up, so a
//! fork of it is always safe, and cheap (its memory is small). It forks with
//! `CLONE_PARENT`, which makes each child a direct child of the *user's* process: that
//! process waits for it, signals it by pidfd and learns how it died exactly as for the
//! other start methods, and the parent-death signal ties the child to the user's process,
//! not to the server.
//!
//! Protocol, over a seqpacket socket: the parent sends `F` with the child's socket
//! attached (SCM_RIGHTS); the server answers `[0, pid: u32 LE]` or `[1, errno: i32 LE]`.
//! End of stream (or the parent's death) ends the server.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::SockType;

use super::spawn::SELF_EXE;
use super::{Runtime, runtime};
use crate::sys;
use crate::sys::proc::Forked;
use crate::sys::spawn::ENV_CHILD;
use crate::worker::{self, EXIT_ORPHANED, EXIT_PROTOCOL, Origin};

/// The parent's handle on its fork server.
pub(super) struct Server {
    ctrl: OwnedFd,
    pidfd: OwnedFd,
}

impl Server {
    fn start(rt: &Runtime) -> io::Result<Server> {
        let (ctrl, theirs) = sys::fd::pair(SockType::SeqPacket)?;
        let pid = rt.on_launcher(move || {
            let env = [(ENV_CHILD, format!("forkserver:{}", theirs.as_raw_fd()))];
            sys::spawn::spawn_with_socket(SELF_EXE.as_ref(), &env, theirs.as_fd())
        })?;
        let pidfd = sys::proc::pidfd_open(pid)?;
        Ok(Server { ctrl, pidfd })
    }

    fn fork(&self, child_sock: &OwnedFd) -> io::Result<u32> {
        sys::fd::send_with_fd(self.ctrl.as_fd(), b"F", child_sock.as_fd())?;
        let mut reply = [0u8; 16];
        let (n, _) = sys::fd::recv_with_fd(self.ctrl.as_fd(), &mut reply)?;
        match (n, reply[0]) {
            (5, 0) => Ok(u32::from_le_bytes([reply[1], reply[2], reply[3], reply[4]])),
            (5, 1) => Err(io::Error::from_raw_os_error(i32::from_le_bytes([
                reply[1], reply[2], reply[3], reply[4],
            ]))),
            (0, _) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the fork server exited",
            )),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the fork server sent a malformed reply",
            )),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Closing the control socket (our field drop, right after this) ends the server;
        // kill it first so that reaping it here cannot wait on a server stuck in a fork.
        let _ = sys::proc::pidfd_signal(self.pidfd.as_fd(), crate::Signal::KILL);
        let _ = sys::proc::wait_pidfd(&self.pidfd, true);
    }
}

/// Starts the server now if it is not running (what [`crate::init`] does).
pub(crate) fn ensure_started() -> io::Result<()> {
    let rt = runtime();
    let mut slot = rt.forkserver.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_none() {
        *slot = Some(Server::start(&rt)?);
    }
    Ok(())
}

/// Has the server fork a child that will serve on `theirs`; returns the child's pid.
pub(super) fn start(theirs: OwnedFd) -> io::Result<u32> {
    let rt = runtime();
    let mut slot = rt.forkserver.lock().unwrap_or_else(|p| p.into_inner());
    let mut last_error = None;
    // A server that died (killed from outside, say) is replaced once, transparently.
    for _ in 0..2 {
        if slot.is_none() {
            *slot = Some(Server::start(&rt)?);
        }
        let server = slot.as_ref().expect("just set");
        match server.fork(&theirs) {
            Ok(pid) => return Ok(pid),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                *slot = None;
                last_error = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("the fork server failed")))
}

/// The server's main loop (in the server process). Never returns.
pub(crate) fn serve(ctrl: OwnedFd) -> ! {
    sys::proc::worker_signals(false);
    // The parent-death signal was set before exec (see `sys::spawn`); the parent it
    // checked is the one every forked child must die with too.
    let parent = nix::unistd::getppid().as_raw() as u32;
    let robust = sys::proc::robust_list();
    // Computed once here, inherited by every child, instead of re-read by each.
    let _ = crate::sys::build_id::build_id();
    let mut buf = [0u8; 16];
    loop {
        let (n, fd) = match sys::fd::recv_with_fd(ctrl.as_fd(), &mut buf) {
            Ok(r) => r,
            Err(_) => sys::proc::exit_now(0),
        };
        if n == 0 {
            sys::proc::exit_now(0);
        }
        let Some(child_sock) = fd.filter(|_| n == 1 && buf[0] == b'F') else {
            // Not our protocol: the parent is confused or not a multiproc parent.
            sys::proc::exit_now(EXIT_PROTOCOL);
        };
        let reply = match sys::proc::fork_as_sibling() {
            Ok(Forked::Child) => {
                if let Some(list) = robust {
                    sys::proc::restore_robust_list(list);
                }
                drop(ctrl);
                if !sys::proc::die_with_parent(parent) {
                    sys::proc::exit_now(EXIT_ORPHANED);
                }
                worker::serve_socket(child_sock, Origin::Execd)
            }
            Ok(Forked::Parent(pid)) => {
                let p = pid.to_le_bytes();
                [0, p[0], p[1], p[2], p[3]]
            }
            Err(e) => {
                let c = e.raw_os_error().unwrap_or(libc::EIO).to_le_bytes();
                [1, c[0], c[1], c[2], c[3]]
            }
        };
        drop(child_sock);
        if nix::sys::socket::send(
            ctrl.as_raw_fd(),
            &reply,
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        )
        .is_err()
        {
            sys::proc::exit_now(0);
        }
    }
}
