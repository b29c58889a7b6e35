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

/// Bytes queued for reading on a Unix socket (`SIOCINQ`): for a seqpacket socket, the
/// sum of the lengths of all queued messages, so an empty message adds nothing.
pub(crate) fn unread_bytes(sock: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCINQ (FIONREAD) writes one int through the pointer, which points to a
    // live local of that type; on a descriptor that is not a socket it fails instead.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as usize)
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

/// In a child just forked from this program, before it runs anything else: replaces
/// every close-on-exec descriptor but stdin, stdout, stderr and `keep` with a socket
/// whose peer is closed, so the child holds exactly what an exec'd child would (the
/// descriptors without close-on-exec) plus `keep`.
///
/// Every descriptor multiproc makes is close-on-exec, so none of the parent's pipe ends,
/// queues, worker sockets or pidfds stays open in the child: a reader elsewhere sees its
/// channel close when its real holders drop it, not when some unrelated child exits.
///
/// The numbers stay taken instead of being closed: the child's memory still holds the
/// parent's objects (a `File` in a static, a library's cached descriptor), and a closed
/// number would be reused by the next descriptor the child opens, so that such an
/// object would read or write the wrong file. This way it gets an end of stream or
/// `EPIPE` instead.
pub(crate) fn disown_inherited(keep: RawFd) {
    let mut pair = [-1 as RawFd; 2];
    // SAFETY: socketpair writes two descriptor numbers into the two-element array.
    let made = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    } == 0;
    let dead = made.then(|| {
        // SAFETY: pair[1] was just created here and is owned by nothing else.
        unsafe { libc::close(pair[1]) };
        pair[0]
    });
    let retire = |fd: RawFd, dir: RawFd| {
        if fd <= 2 || fd == keep || fd == dir || Some(fd) == dead {
            return;
        }
        // SAFETY: F_GETFD only reads the descriptor table (-1/EBADF if not open).
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 || flags & libc::FD_CLOEXEC == 0 {
            return;
        }
        match dead {
            // SAFETY: dup3 atomically closes `fd` and makes it a copy of the dead
            // socket. `fd` is the parent's, copied by fork, and nothing in this child
            // may use it (see above); objects that still name it get the dead socket.
            Some(d) => unsafe {
                libc::dup3(d, fd, libc::O_CLOEXEC);
            },
            // SAFETY: as above; without a spare descriptor, closing is the next best.
            None => unsafe {
                libc::close(fd);
            },
        }
    };
    // SAFETY: open reads a NUL-terminated path that is a static string.
    let dir = unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir >= 0 {
        // The directory lists descriptors by number; replacing one changes no number,
        // so reading on while replacing is sound.
        let mut buf = [0u64; 512];
        loop {
            // SAFETY: getdents64 writes at most the buffer's length of bytes into the
            // buffer, which is exclusively borrowed and 8-byte aligned.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    dir,
                    buf.as_mut_ptr(),
                    std::mem::size_of_val(&buf),
                )
            };
            if n <= 0 {
                break;
            }
            // SAFETY: the kernel initialized the first `n` bytes of the buffer, and `n`
            // is at most its length; u8 has no alignment requirement.
            let bytes =
                unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
            for fd in dirents(bytes) {
                retire(fd, dir);
            }
        }
        // SAFETY: `dir` was opened above and is not used after this.
        unsafe { libc::close(dir) };
    } else {
        // No /proc: try every number below the descriptor limit (capped, for the
        // limits of a million that containers often set).
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit struct into the local passed by address.
        let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            lim.rlim_cur.min(1 << 16) as RawFd
        } else {
            1024
        };
        for fd in 3..max {
            retire(fd, -1);
        }
    }
    if let Some(d) = dead {
        // SAFETY: the dead socket made above; its copies stand on their own.
        unsafe { libc::close(d) };
    }
}

/// The descriptor numbers named in a buffer of `linux_dirent64` records (`.` and `..`,
/// and anything not a number, skipped). Stops at a malformed record.
fn dirents(bytes: &[u8]) -> impl Iterator<Item = RawFd> + '_ {
    // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
    const NAME: usize = 19;
    let mut at = 0usize;
    std::iter::from_fn(move || {
        loop {
            let rec = bytes.get(at..)?;
            let reclen = u16::from_ne_bytes([*rec.get(16)?, *rec.get(17)?]) as usize;
            if reclen <= NAME || reclen > rec.len() {
                return None;
            }
            at += reclen;
            let name = &rec[NAME..reclen];
            let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
            if let Some(fd) = std::str::from_utf8(name)
                .ok()
                .and_then(|s| s.parse::<RawFd>().ok())
            {
                return Some(fd);
            }
        }
    })
}
