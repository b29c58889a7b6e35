//! Descriptors across Unix sockets.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};

/// A connected pair of Unix stream (or seqpacket) sockets, close-on-exec.
pub(crate) fn pair(kind: SockType) -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        kind,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Clears close-on-exec so `fd` survives into an exec'd child. Async-signal-safe.
pub(crate) fn inheritable(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl(F_SETFD) on an integer descriptor touches no memory; on a closed
    // descriptor it fails with EBADF, which is returned.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ownership of a descriptor number inherited across exec.
pub(crate) fn adopt_inherited(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl(F_GETFD) only queries the descriptor table; -1/EBADF if not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("inherited descriptor {fd} is not open"),
        ));
    }
    // SAFETY: `fd` is open (checked above) and was placed in this process by the parent
    // for this purpose alone: nothing else in the process knows its number, so this is
    // its only owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let st = nix::sys::stat::fstat(&owned)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        // Not ours after all: give the number back untouched rather than close it.
        let _ = owned.into_raw_fd();
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("inherited descriptor {fd} is not a socket"),
        ));
    }
    // Close-on-exec again, so it does not leak into programs the task runs.
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(owned)
}

/// Sends `bytes` with `fd` attached (one seqpacket message).
pub(crate) fn send_with_fd(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fd: BorrowedFd<'_>,
) -> io::Result<()> {
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    loop {
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(bytes)],
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives into `buf` from a Unix socket, with the descriptors attached to those
/// bytes (`SCM_RIGHTS`, made close-on-exec). Returns the byte count (0 at end of
/// stream) and the descriptors. `EINTR` is retried; `EAGAIN` is returned.
pub(crate) fn recv_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    nonblocking: bool,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = nix::cmsg_space!([RawFd; 253]);
    let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
    if nonblocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), flags) {
            Ok(m) => m,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut received: Vec<OwnedFd> = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for raw in fds {
                    // SAFETY: the kernel just installed `raw` in this process for this
                    // message (SCM_RIGHTS); nobody else holds it, so we own it.
                    received.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
        return Ok((msg.bytes, received));
    }
}

/// Receives one seqpacket message into `buf`, with at most one attached descriptor
/// (extras are closed). Returns the message length (0 at end of stream).
pub(crate) fn recv_with_fd(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Option<OwnedFd>)> {
    let (n, mut fds) = recv_fds(sock, buf, false)?;
    let fd = if fds.is_empty() {
        None
    } else {
        Some(fds.swap_remove(0))
    };
    Ok((n, fd))
}

/// The pid and uid of the process at the other end of a Unix socket.
pub(crate) fn peer(sock: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    let cred = nix::sys::socket::getsockopt(&sock, nix::sys::socket::sockopt::PeerCredentials)?;
    Ok((cred.pid() as u32, cred.uid()))
}

/// `poll(2)` over descriptor numbers, for an event loop that polls without holding the
/// lock that owns the descriptors (only that loop closes them). `timeout_ms < 0` waits
/// forever. `EINTR` counts as nothing ready.
pub(crate) fn poll_raw(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: poll reads `fds.len()` pollfd structs from a valid, exclusively borrowed
    // slice and writes only their `revents`; a descriptor number that is not open is
    // reported as POLLNVAL, never dereferenced.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(r as usize)
}
