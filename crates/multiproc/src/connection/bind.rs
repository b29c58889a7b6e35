//! Binding a listener: what a failed bind says, and a Unix path taken safely (a lock
//! file beside it, a stale socket replaced only when nobody listens on it).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

use super::Address;
use crate::error::{Error, Result};
use super::socket::config_error;

pub(super) fn bind_error(address: &Address, e: io::Error) -> Error {
    let hint = match e.kind() {
        io::ErrorKind::AddrInUse => " (another listener has it)",
        io::ErrorKind::PermissionDenied => " (permission denied)",
        _ => "",
    };
    config_error(address, format!("cannot listen: {e}{hint}"))
}

/// The lock a listener holds beside its socket file, so that another bind learns that
/// the path is in use without connecting to it (a connection would reach the live
/// listener's `accept` and fail its handshake there).
pub(super) struct PathLock {
    path: PathBuf,
    file: Flock<std::fs::File>,
}

impl PathLock {
    /// `<socket path>.lock`, locked (`flock`, without waiting), or `Ok(None)` if a live
    /// listener holds it.
    fn take(socket: &Path) -> io::Result<Option<PathLock>> {
        let mut path = socket.as_os_str().to_owned();
        path.push(".lock");
        let path = std::path::absolute(PathBuf::from(path))?;
        // A listener that is closing removes the file, then unlocks: a lock taken on a
        // file no longer at the path is worth nothing, so open the path again.
        for _ in 0..100 {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)?;
            let (locked, file) = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(f) => (true, LockedOrNot::Locked(f)),
                Err((f, Errno::EWOULDBLOCK)) => (false, LockedOrNot::Not(f)),
                Err((_, e)) => return Err(e.into()),
            };
            let here = file.as_file().metadata()?;
            let current = std::fs::metadata(&path)
                .is_ok_and(|m| m.dev() == here.dev() && m.ino() == here.ino());
            if !current {
                continue;
            }
            return Ok(match file {
                LockedOrNot::Locked(file) if locked => Some(PathLock { path, file }),
                _ => None,
            });
        }
        Err(io::Error::other("the lock file keeps changing under us"))
    }
}

enum LockedOrNot {
    Locked(Flock<std::fs::File>),
    Not(std::fs::File),
}

impl LockedOrNot {
    fn as_file(&self) -> &std::fs::File {
        match self {
            LockedOrNot::Locked(f) => f,
            LockedOrNot::Not(f) => f,
        }
    }
}

impl Drop for PathLock {
    fn drop(&mut self) {
        // Removed before it is unlocked (when `file` drops after this): whoever opens
        // the path next creates a fresh file, and whoever still holds the old one sees
        // it is no longer at the path.
        let here = self.file.metadata();
        let ours = std::fs::metadata(&self.path).is_ok_and(|m| {
            here.as_ref()
                .is_ok_and(|h| h.dev() == m.dev() && h.ino() == m.ino())
        });
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether a Unix socket file is one nothing listens on: a connection attempt, without
/// waiting (a listener whose backlog is full does not hold us), is refused. Only made
/// when no multiproc listener holds the path's lock, so it can reach only a listener of
/// another program (or of an older multiproc), which sees a client that leaves at once.
fn nobody_listens(path: &Path) -> bool {
    let Ok(sock) = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return false;
    };
    let Ok(addr) = UnixAddr::new(path) else {
        return false;
    };
    matches!(socket::connect(sock.as_raw_fd(), &addr), Err(Errno::ECONNREFUSED))
}

/// Binds a socket file, holding its lock; a file left by a dead listener is replaced,
/// anything else there is an error.
pub(super) fn bind_path(address: &Address, path: &Path) -> Result<(UnixListener, PathLock)> {
    let lock = PathLock::take(path)
        .map_err(|e| config_error(address, format!("cannot take the lock file beside it: {e}")))?
        .ok_or_else(|| bind_error(address, Errno::EADDRINUSE.into()))?;
    match UnixListener::bind(path) {
        Ok(l) => Ok((l, lock)),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            // We hold the lock, so no multiproc listener is live there.
            let is_socket = std::fs::symlink_metadata(path)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            if !(is_socket && nobody_listens(path)) {
                return Err(bind_error(address, e));
            }
            std::fs::remove_file(path)
                .map_err(|e| config_error(address, format!("cannot remove a stale socket: {e}")))?;
            let l = UnixListener::bind(path).map_err(|e| bind_error(address, e))?;
            Ok((l, lock))
        }
        Err(e) => Err(bind_error(address, e)),
    }
}
