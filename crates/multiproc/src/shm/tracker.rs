//! The shared-memory tracker: a small process, started on the first tracked named
//! segment a process creates, that removes the names that process still owns when it
//! dies, however it dies (Python's `resource_tracker`, one per owning process).
//!
//! The owner tells the tracker, over a seqpacket socket, each name it creates
//! (`R`, with the file's device and inode) and each name it removes itself (`U`). The
//! tracker notices its owner's death twice over: the socket reaches its end once no
//! process holds the owner's side any more (the kernel closes it, whatever killed the
//! owner), and the owner's pidfd becomes readable when the owner exits (in case a
//! descriptor leaked elsewhere keeps the socket open). It then reads what is still
//! queued, removes every name that still refers to the file it was told about (a name
//! re-created since by someone else is left alone), and exits. It ignores SIGINT,
//! SIGTERM and SIGHUP, so that a Ctrl-C or a signal to the whole process group does not
//! end it before its owner; it takes no other orders, and holds nothing else.
//!
//! A process's normal exit is an owner's death too: names it never removed (a handle
//! leaked, or `std::process::exit` skipping destructors) are removed then.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{MsgFlags, SockType};

use crate::sys;

const REGISTER: u8 = b'R';
const UNREGISTER: u8 = b'U';

/// This process's tracker.
struct Tracker {
    /// The process the tracker watches (a forked child must start its own).
    owner: u32,
    sock: OwnedFd,
    pidfd: OwnedFd,
}

static TRACKER: Mutex<Option<Tracker>> = Mutex::new(None);

fn start() -> io::Result<Tracker> {
    let (ours, theirs) = sys::fd::pair(SockType::SeqPacket)?;
    let env = [(
        crate::start::ENV_CHILD,
        format!("shmtracker:{}", theirs.as_raw_fd()),
    )];
    let pid = sys::tracker::spawn_tracker(Path::new("/proc/self/exe"), &env, theirs.as_fd())?;
    drop(theirs);
    let pidfd = sys::proc::pidfd_open(pid)?;
    Ok(Tracker {
        owner: std::process::id(),
        sock: ours,
        pidfd,
    })
}

fn tell(message: &[u8]) -> io::Result<()> {
    let mut slot = TRACKER.lock().unwrap_or_else(|p| p.into_inner());
    if slot.as_ref().is_some_and(|t| t.owner != std::process::id()) {
        // Inherited through a fork: the parent's tracker, not ours. Its descriptors
        // belong to the parent's bookkeeping (a forked child may have closed or reused
        // their numbers), so forget them without closing.
        std::mem::forget(slot.take());
    }
    let mut last = None;
    for _ in 0..2 {
        if slot.is_none() {
            *slot = Some(start()?);
        }
        let t = slot.as_ref().expect("just set");
        match nix::sys::socket::send(t.sock.as_raw_fd(), message, MsgFlags::MSG_NOSIGNAL) {
            Ok(_) => return Ok(()),
            // The tracker died (killed from outside): reap it and start another.
            Err(e @ (Errno::EPIPE | Errno::ECONNRESET)) => {
                let _ = sys::proc::wait_pidfd(&t.pidfd, true);
                *slot = None;
                last = Some(e);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.map_or_else(|| io::Error::other("the tracker failed"), io::Error::from))
}

/// Has the tracker remove `name` (in `/dev/shm`) when this process dies, if it still
/// refers to the file `dev`/`ino`. Starts the tracker on first use.
pub(crate) fn register(name: &str, dev: u64, ino: u64) -> io::Result<()> {
    let mut m = Vec::with_capacity(17 + name.len());
    m.push(REGISTER);
    m.extend_from_slice(&dev.to_le_bytes());
    m.extend_from_slice(&ino.to_le_bytes());
    m.extend_from_slice(name.as_bytes());
    tell(&m)
}

/// The owner removed `name` itself: the tracker forgets it.
pub(crate) fn unregister(name: &str) {
    let mut m = Vec::with_capacity(1 + name.len());
    m.push(UNREGISTER);
    m.extend_from_slice(name.as_bytes());
    let _ = tell(&m);
}

/// The tracker's main loop (in the tracker process). Never returns.
pub(crate) fn serve(sock: OwnedFd) -> ! {
    sys::tracker::ignore_stop_signals();
    // The owner made the socket pair; it may have died already (then the socket's end
    // tells us as well).
    let owner_fd = sys::fd::peer(sock.as_fd())
        .ok()
        .and_then(|(pid, _)| sys::proc::pidfd_open(pid).ok());
    let mut names: HashMap<String, (u64, u64)> = HashMap::new();
    let mut buf = [0u8; 1024];
    'serve: loop {
        let mut fds = vec![PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        if let Some(p) = &owner_fd {
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => break,
        }
        let owner_gone = owner_fd.is_none()
            || fds
                .get(1)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty());
        loop {
            match nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => break 'serve,
                Ok(n) => handle(&buf[..n], &mut names),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                Err(_) => break 'serve,
            }
        }
        if owner_gone {
            break;
        }
    }
    for (name, (dev, ino)) in names {
        let path = PathBuf::from(super::segment::SHM_DIR).join(&name);
        let same = std::fs::symlink_metadata(&path)
            .is_ok_and(|m| m.dev() == dev && m.ino() == ino);
        if same {
            let _ = std::fs::remove_file(&path);
        }
    }
    sys::proc::exit_now(0)
}

fn handle(message: &[u8], names: &mut HashMap<String, (u64, u64)>) {
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .ok()
            .filter(|n| super::segment::validate_name(n).is_ok())
            .map(str::to_owned)
    };
    match message.split_first() {
        Some((&REGISTER, rest)) if rest.len() > 16 => {
            let dev = u64::from_le_bytes(rest[..8].try_into().unwrap_or_default());
            let ino = u64::from_le_bytes(rest[8..16].try_into().unwrap_or_default());
            if let Some(name) = text(&rest[16..]) {
                names.insert(name, (dev, ino));
            }
        }
        Some((&UNREGISTER, rest)) => {
            if let Some(name) = text(rest) {
                names.remove(&name);
            }
        }
        _ => {}
    }
}
