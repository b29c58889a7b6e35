//! The put side of a [`Queue`]: an item goes inline in one datagram, or in a sealed
//! memory file whose descriptor the datagram carries, or to the spill log while the
//! socket is full.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::at::OPEN;
use super::Queue;
use super::datagram::{IN_MEMFD, INLINE, INLINE_MIN, WHAT};
use crate::error::{Error, Result};
use crate::sys::shm as sys_shm;
use crate::wire::{self, fds};

/// The largest encoding buffer a thread keeps for its next `put`.
const KEEP_BUFFER: usize = 8 << 20;
/// How often a put that must wait for socket room (an item carrying descriptors)
/// looks again at the spill and the queue's state.
const ROOM_POLL: Duration = Duration::from_millis(10);

thread_local! {
    /// This thread's encoding buffer for `put`, reused across messages.
    static OUT: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// Puts `item`, waiting while a bounded queue is full.
    pub fn put(&self, item: &T) -> Result<()> {
        self.put_until(item, None)
    }

    /// Puts `item`, waiting at most `timeout` for room ([`Error::Full`] after that).
    pub fn put_timeout(&self, item: &T, timeout: Duration) -> Result<()> {
        self.put_until(item, Instant::now().checked_add(timeout))
    }

    /// Puts `item` if there is room now ([`Error::Full`] otherwise).
    pub fn try_put(&self, item: &T) -> Result<()> {
        self.put_until(item, Some(Instant::now()))
    }

    fn put_until(&self, item: &T, deadline: Option<Instant>) -> Result<()> {
        OUT.with(|out| {
            let mut out = out.take();
            let sent = self.put_encoded(item, deadline, &mut out);
            if out.capacity() <= KEEP_BUFFER {
                OUT.with(|o| o.replace(out));
            }
            sent
        })
    }

    fn put_encoded(&self, item: &T, deadline: Option<Instant>, bytes: &mut Vec<u8>) -> Result<()> {
        let (encoded, user_fds) = fds::capture(|| wire::encode_reusing(item, bytes));
        encoded?;
        let bytes = &bytes[..];
        let max = wire::max_frame_size();
        if bytes.len() > max {
            return Err(Error::FrameTooLarge {
                what: "a frame".into(),
                len: bytes.len() as u64,
                max: max as u64,
            });
        }
        // No lock held from here on: the waits below must not hold up `close`.
        let Some(tx) = self.ends.sender() else {
            return Err(Error::Closed { what: WHAT });
        };
        let user: Vec<RawFd> = user_fds.iter().map(|f| f.as_raw_fd()).collect();
        self.ends.reserve(deadline)?;
        self.deliver(&tx, bytes, &user, deadline)
            .inspect_err(|_| self.ends.release())
    }

    /// Hands a counted item to the kernel: the socket if it has room and nothing is
    /// spilled, the spill log otherwise.
    fn deliver(
        &self,
        tx: &OwnedFd,
        bytes: &[u8],
        user: &[RawFd],
        deadline: Option<Instant>,
    ) -> Result<()> {
        let e = &self.ends;
        if !user.is_empty() {
            return self.deliver_with_fds(tx, bytes, user, deadline);
        }
        if !e.spilled() && self.send_now(tx, bytes, user)? {
            return Ok(());
        }
        let _guard = e.lock_spill()?;
        if e.state() != OPEN {
            return Err(Error::ShutDown { what: WHAT });
        }
        // Under the lock the log cannot start or drain behind our back: if it is
        // empty, the socket is where this item belongs (if it has room now).
        if !e.spilled() && self.send_now(tx, bytes, user)? {
            return Ok(());
        }
        e.spill(bytes)
    }

    /// An item with descriptors cannot be spilled: wait for the log to drain and for
    /// room in the socket, looking again every [`ROOM_POLL`].
    fn deliver_with_fds(
        &self,
        tx: &OwnedFd,
        bytes: &[u8],
        user: &[RawFd],
        deadline: Option<Instant>,
    ) -> Result<()> {
        let e = &self.ends;
        loop {
            if e.state() != OPEN {
                return Err(Error::ShutDown { what: WHAT });
            }
            if !e.spilled() && self.send_now(tx, bytes, user)? {
                return Ok(());
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| d <= now) {
                return Err(Error::Full { what: WHAT });
            }
            let slice = now + ROOM_POLL;
            let until = deadline.map_or(slice, |d| d.min(slice));
            if e.spilled() {
                std::thread::sleep(until.saturating_duration_since(now));
            } else {
                wait_writable(tx.as_fd(), Some(until))?;
            }
        }
    }

    /// Sends one item now if the socket has room: `Ok(false)` if it has not.
    fn send_now(&self, tx: &OwnedFd, bytes: &[u8], user: &[RawFd]) -> Result<bool> {
        let outcome = |r: std::result::Result<(), Errno>| match r {
            Ok(()) => Ok(true),
            Err(Errno::EAGAIN) => Ok(false),
            Err(Errno::EPIPE | Errno::ECONNRESET) => Err(self.ends.gone()),
            Err(e) => Err(Error::io("putting a message on a queue", e)),
        };
        if bytes.len() <= self.ends.inline_max {
            match send(tx, &[INLINE], bytes, user) {
                // The kernel could not take a datagram this large (a smaller buffer
                // than it granted at first, or no contiguous memory): use a memfd.
                Err(Errno::EMSGSIZE | Errno::ENOBUFS | Errno::ENOMEM) if bytes.len() > INLINE_MIN => {
                }
                r => return outcome(r),
            }
        }
        let memfd = to_sealed_memfd(bytes)?;
        let mut raw: Vec<RawFd> = Vec::with_capacity(user.len() + 1);
        raw.push(memfd.as_raw_fd());
        raw.extend(user);
        outcome(send(tx, &[IN_MEMFD], &[], &raw))
    }
}

/// Sends one datagram, `kind` then `payload`, with `fds` attached, without waiting.
fn send(
    tx: &OwnedFd,
    kind: &[u8; 1],
    payload: &[u8],
    fds: &[RawFd],
) -> std::result::Result<(), Errno> {
    let iov = [std::io::IoSlice::new(kind), std::io::IoSlice::new(payload)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(
            tx.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

fn to_sealed_memfd(bytes: &[u8]) -> Result<OwnedFd> {
    let fail = |e: std::io::Error| Error::io("writing a large queue message to shared memory", e);
    let fd = sys_shm::memfd_unsealed("multiproc-queue-msg").map_err(fail)?;
    sys_shm::write_all(fd.as_fd(), bytes).map_err(fail)?;
    sys_shm::seal_final(fd.as_fd()).map_err(fail)?;
    Ok(fd)
}

fn wait_writable(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> Result<bool> {
    use nix::poll::{PollFd, PollFlags, poll};
    loop {
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Ok(false);
        }
        let timeout = crate::wire::poll_timeout(deadline);
        let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
        match poll(&mut fds, timeout) {
            Ok(0) => {}
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::io("waiting for room in a queue", e)),
        }
    }
}
