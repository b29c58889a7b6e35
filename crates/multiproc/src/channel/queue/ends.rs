//! [`Ends`]: the kernel objects every handle of one queue shares (the socket pair, the
//! shared words, the spill log and its eventfd) and this process's epoll set over
//! them; the non-waiting receive from the socket.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

use super::at::{self, OPEN};
use super::datagram::{INLINE_MAX, INLINE_MIN, WHAT};
use crate::error::{Error, Result};
use crate::sync::{MUTEX_SIZE, RawLock};

/// The largest message this process sends inline on `tx`: a quarter of the send
/// buffer the kernel granted, within `INLINE_MIN..=INLINE_MAX`.
fn inline_limit(tx: &OwnedFd) -> usize {
    let granted = nix::sys::socket::getsockopt(tx, nix::sys::socket::sockopt::SndBuf).unwrap_or(0);
    (granted / 4).clamp(INLINE_MIN, INLINE_MAX)
}

/// What every handle of one queue shares (the kernel objects), plus this process's
/// own epoll set over them.
#[derive(Debug)]
pub(super) struct Ends {
    /// Producers send here. `None` after `close`. A put clones the `Arc` and lets go
    /// of the lock before it waits, so that `close` never waits for a put (a put
    /// already under way finishes on its own reference).
    pub(super) tx: RwLock<Option<Arc<OwnedFd>>>,
    /// Consumers receive here.
    pub(super) rx: OwnedFd,
    /// Encoded messages up to this size go inline (see [`inline_limit`]).
    pub(super) inline_max: usize,
    /// The spill lock and the shared words (`at::*`).
    pub(super) shared: RawLock,
    /// The spill log: a memfd of length-prefixed encoded items, `HEAD..TAIL`.
    pub(super) log: OwnedFd,
    /// An eventfd, readable while the spill log holds items.
    pub(super) spill_ready: OwnedFd,
    /// `rx` and `spill_ready` in one epoll set: readable when a `get` would not wait.
    pub(super) ready: Epoll,
}

// The small accessors are `#[inline]`: every put and get calls them from the other
// files of this folder, which may land in other codegen units.
impl Ends {
    pub(super) fn build(
        tx: Option<OwnedFd>,
        rx: OwnedFd,
        shared: RawLock,
        log: OwnedFd,
        spill_ready: OwnedFd,
    ) -> Result<Self> {
        if shared.segment().len() < MUTEX_SIZE + at::LEN {
            return Err(Error::SharedMemory {
                detail: "a received queue's state segment is too small".into(),
            });
        }
        let fail = |e: Errno| Error::io("making a queue's wait set", e);
        let ready = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(fail)?;
        ready
            .add(&rx, EpollEvent::new(EpollFlags::EPOLLIN, 0))
            .map_err(fail)?;
        ready
            .add(&spill_ready, EpollEvent::new(EpollFlags::EPOLLIN, 1))
            .map_err(fail)?;
        Ok(Ends {
            inline_max: tx.as_ref().map_or(INLINE_MIN, inline_limit),
            tx: RwLock::new(tx.map(Arc::new)),
            rx,
            shared,
            log,
            spill_ready,
            ready,
        })
    }

    /// This process's put side, if it did not close it.
    #[inline]
    pub(super) fn sender(&self) -> Option<Arc<OwnedFd>> {
        self.tx.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    #[inline]
    pub(super) fn word(&self, offset: usize) -> &AtomicU32 {
        // In bounds and aligned: checked in `build`, and the segment is page-aligned.
        self.shared
            .segment()
            .map()
            .atomic_at::<AtomicU32>(offset)
            .expect("a queue's state segment holds its words")
    }

    #[inline]
    pub(super) fn word64(&self, offset: usize) -> &AtomicU64 {
        self.shared
            .segment()
            .map()
            .atomic_at::<AtomicU64>(offset)
            .expect("a queue's state segment holds its words")
    }

    #[inline]
    pub(super) fn state(&self) -> u32 {
        self.word(at::STATE).load(Ordering::Acquire)
    }

    #[inline]
    pub(super) fn maxsize(&self) -> u32 {
        self.word(at::MAXSIZE).load(Ordering::Relaxed)
    }

    #[inline]
    pub(super) fn spilled(&self) -> bool {
        self.word(at::SPILLED).load(Ordering::Acquire) != 0
    }

    /// The error for a put or get that found the queue shut down or closed.
    pub(super) fn gone(&self) -> Error {
        if self.state() == OPEN {
            Error::Closed { what: WHAT }
        } else {
            Error::ShutDown { what: WHAT }
        }
    }

    /// One receive from the socket, without waiting.
    pub(super) fn recv_now(&self, buf: &mut [u8]) -> Result<Received> {
        loop {
            match crate::sys::fd::recv_fds(self.rx.as_fd(), buf, true) {
                Ok((0, _)) => {
                    if self.hung_up() {
                        return Ok(Received::Ended);
                    }
                    // An empty datagram: not one of ours (ours are never empty) and not
                    // the end of the stream. Drop it.
                }
                Ok((n, fds)) => return Ok(Received::Item(n, fds)),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    return Ok(Received::Nothing);
                }
                Err(err) => return Err(Error::io("taking a message from a queue", err)),
            }
        }
    }

    /// After a receive of 0 bytes: whether that was the end of the stream (every put
    /// side closed, or the queue shut down, and no item left in the socket) rather
    /// than an empty datagram some handle holder sent.
    fn hung_up(&self) -> bool {
        let mut fds = [libc::pollfd {
            fd: self.rx.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        }];
        let hangup = match crate::sys::fd::poll_raw(&mut fds, 0) {
            Ok(_) => fds[0].revents & (libc::POLLRDHUP | libc::POLLHUP) != 0,
            Err(_) => true,
        };
        // After a hangup, empty datagrams may still sit before real items.
        hangup && crate::sys::fd::unread_bytes(self.rx.as_fd()).unwrap_or(0) == 0
    }
}

/// What one non-waiting receive from a queue's socket found.
pub(super) enum Received {
    /// A datagram of this many bytes, with its descriptors.
    Item(usize, Vec<OwnedFd>),
    /// Nothing now.
    Nothing,
    /// The end of the stream, and nothing left in the socket.
    Ended,
}
