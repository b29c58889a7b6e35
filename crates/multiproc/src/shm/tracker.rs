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
//! The owner keeps the set of names it told and has not taken back: if the tracker is
//! killed, the owner starts another on its next message and tells it the whole set
//! again. A send waits a bounded time for room in the socket, so a stopped tracker
//! cannot hang the owner (a registration then fails, a removal is skipped).
//!
//! A process's normal exit is an owner's death too: names it never removed (a handle
//! leaked, or `std::process::exit` skipping destructors) are removed then.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{MsgFlags, SockType};

use super::name::{SHM_DIR, validate_name};
use crate::sys;

const REGISTER: u8 = b'R';
const UNREGISTER: u8 = b'U';

/// How long a registration waits for room in the tracker's socket buffer before
/// `create_named` gives up: the tracker reads at once unless it is stopped or starved.
const REGISTER_PATIENCE: Duration = Duration::from_secs(5);
/// The same for a removal, which runs in a drop: bounded so that a stopped tracker
/// cannot hang it; once one timed out, later ones try once until a send succeeds.
const UNREGISTER_PATIENCE: Duration = Duration::from_millis(500);

/// This process's side of tracking.
struct Tracker {
    /// The process this state belongs to (a forked child must start its own).
    owner: u32,
    /// The tracker process, once started (again `None` after it was found dead).
    running: Option<Running>,
    /// Every name this process told its tracker and has not taken back, with the
    /// file's device and inode: told again to a tracker started after one died, so
    /// that a restart forgets nothing.
    names: HashMap<String, (u64, u64)>,
    /// The last send timed out (the tracker is stopped or starved): removals try once
    /// instead of waiting, until a send succeeds.
    stuck: bool,
}

struct Running {
    sock: OwnedFd,
    pidfd: OwnedFd,
}

static TRACKER: Mutex<Option<Tracker>> = Mutex::new(None);

fn start() -> io::Result<Running> {
    let (ours, theirs) = sys::fd::pair(SockType::SeqPacket)?;
    let env = [(
        sys::spawn::ENV_CHILD,
        format!("shmtracker:{}", theirs.as_raw_fd()),
    )];
    let pid = sys::tracker::spawn_tracker(Path::new("/proc/self/exe"), &env, theirs.as_fd())?;
    drop(theirs);
    let pidfd = sys::proc::pidfd_open(pid)?;
    Ok(Running { sock: ours, pidfd })
}

fn slot() -> MutexGuard<'static, Option<Tracker>> {
    TRACKER.lock().unwrap_or_else(|p| p.into_inner())
}

/// This process's tracking state, made fresh in a process that has none yet or
/// inherited its parent's through a fork.
fn ours(slot: &mut Option<Tracker>) -> &mut Tracker {
    if slot.as_ref().is_some_and(|t| t.owner != std::process::id()) {
        forget_inherited(slot);
    }
    slot.get_or_insert_with(|| Tracker {
        owner: std::process::id(),
        running: None,
        names: HashMap::new(),
        stuck: false,
    })
}

/// Drops a parent's tracking state inherited through a fork. Its descriptors belong
/// to the parent's bookkeeping (a forked child may have closed or reused their
/// numbers), so they are forgotten, not closed; its names are the parent's to track.
fn forget_inherited(slot: &mut Option<Tracker>) {
    if let Some(t) = slot.take() {
        std::mem::forget(t.running);
    }
}

fn register_message(name: &str, dev: u64, ino: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(17 + name.len());
    m.push(REGISTER);
    m.extend_from_slice(&dev.to_le_bytes());
    m.extend_from_slice(&ino.to_le_bytes());
    m.extend_from_slice(name.as_bytes());
    m
}

/// Sends `message` without blocking for longer than `patience` (a stopped tracker
/// with a full socket buffer would otherwise block the sender for good).
fn send_bounded(sock: &OwnedFd, message: &[u8], patience: Duration) -> Result<(), Errno> {
    let deadline = Instant::now() + patience;
    loop {
        let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
        match nix::sys::socket::send(sock.as_raw_fd(), message, flags) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Errno::EAGAIN);
                }
                let wait = left.min(Duration::from_millis(50));
                let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLOUT)];
                let ms = PollTimeout::try_from(wait).unwrap_or(PollTimeout::ZERO);
                let _ = poll(&mut fds, ms);
            }
            Err(e) => return Err(e),
        }
    }
}

impl Tracker {
    /// Sends `message` to the tracker, starting one first if none runs (and telling
    /// a new one every name still tracked), and once more if the tracker was found
    /// dead (killed from outside).
    fn tell(&mut self, message: &[u8], patience: Duration) -> io::Result<()> {
        let mut last = None;
        for _ in 0..2 {
            let fresh = self.running.is_none();
            if fresh {
                self.running = Some(start()?);
                self.stuck = false;
            }
            let r = match self.running.as_ref() {
                Some(run) if fresh => self
                    .names
                    .iter()
                    .try_for_each(|(n, &(dev, ino))| {
                        send_bounded(&run.sock, &register_message(n, dev, ino), patience)
                    })
                    .and_then(|()| send_bounded(&run.sock, message, patience)),
                Some(run) => send_bounded(&run.sock, message, patience),
                None => unreachable!("started above"),
            };
            match r {
                Ok(()) => {
                    self.stuck = false;
                    return Ok(());
                }
                // The tracker died: reap it and start another.
                Err(e @ (Errno::EPIPE | Errno::ECONNRESET | Errno::ENOTCONN)) => {
                    if let Some(run) = self.running.take() {
                        let _ = sys::proc::wait_pidfd(&run.pidfd, true);
                    }
                    last = Some(io::Error::from(e));
                }
                Err(Errno::EAGAIN) => {
                    self.stuck = true;
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the shared-memory tracker is not reading its messages \
                         (stopped, or starved of CPU)",
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("the tracker failed")))
    }
}

/// Has the tracker remove `name` (in `/dev/shm`) when this process dies, if it still
/// refers to the file `dev`/`ino`. Starts the tracker on first use.
pub(crate) fn register(name: &str, dev: u64, ino: u64) -> io::Result<()> {
    let mut slot = slot();
    let t = ours(&mut slot);
    let old = t.names.insert(name.to_owned(), (dev, ino));
    let r = t.tell(&register_message(name, dev, ino), REGISTER_PATIENCE);
    if r.is_err() {
        // The caller removes the file and fails; keep what was tracked before.
        match old {
            Some(v) => t.names.insert(name.to_owned(), v),
            None => t.names.remove(name),
        };
    }
    r
}

/// The owner removed `name` itself: the tracker forgets it. Best effort and bounded
/// in time: a removal the tracker misses is harmless, as it removes a name only if it
/// still refers to the file it was told about.
pub(crate) fn unregister(name: &str) {
    let mut slot = slot();
    let t = ours(&mut slot);
    t.names.remove(name);
    if t.running.is_none() && t.names.is_empty() {
        // Nothing to watch: no tracker needs starting to hear it.
        return;
    }
    let mut m = Vec::with_capacity(1 + name.len());
    m.push(UNREGISTER);
    m.extend_from_slice(name.as_bytes());
    let patience = if t.stuck {
        Duration::ZERO
    } else {
        UNREGISTER_PATIENCE
    };
    let _ = t.tell(&m, patience);
}

/// The tracking state held across a `Fork` start's `fork`: a thread that was inside
/// `register` (holding the lock while it spawns the tracker) cannot leave the lock
/// held forever in the child, where that thread does not exist.
pub(crate) struct ForkHold(MutexGuard<'static, Option<Tracker>>);

/// Takes the tracking lock for a fork.
pub(crate) fn hold_for_fork() -> ForkHold {
    ForkHold(slot())
}

impl ForkHold {
    /// In the forked child: forgets the parent's tracker (the child starts its own on
    /// its first tracked name) and releases the lock.
    pub(crate) fn in_child(mut self) {
        forget_inherited(&mut self.0);
    }
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
    // Only the socket's end or the owner's pidfd firing means the owner is dead; any
    // other failure is retried (after a pause, not to spin), never taken for a death:
    // removing the names of a living owner would pull its segments from under it.
    // Without a pidfd (pidfd_open failed), the socket's end alone decides.
    let pause = || std::thread::sleep(std::time::Duration::from_millis(10));
    'serve: loop {
        let mut fds = vec![PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        if let Some(p) = &owner_fd {
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => {
                pause();
                continue;
            }
        }
        let owner_gone = fds
            .get(1)
            .and_then(|f| f.revents())
            .is_some_and(|r| !r.is_empty());
        loop {
            match nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => break 'serve,
                Ok(n) => handle(&buf[..n], &mut names),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                // The owner's side is gone.
                Err(Errno::ECONNRESET | Errno::ENOTCONN | Errno::EPIPE) => break 'serve,
                Err(_) => {
                    pause();
                    break;
                }
            }
        }
        if owner_gone {
            break;
        }
    }
    for (name, (dev, ino)) in names {
        let path = PathBuf::from(SHM_DIR).join(&name);
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
            .filter(|n| validate_name(n).is_ok())
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
