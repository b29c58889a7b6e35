//! The get side of a [`Queue`]: the socket first, then the spill log; a datagram's
//! item inline or in a sealed memory file.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::at::STOPPED;
use super::ends::Received;
use super::spill::Unspilled;
use super::datagram::{IN_MEMFD, INLINE, INLINE_MAX, WHAT, bad};
use super::{Queue, hook};
use crate::error::{Error, Result};
use crate::sys::shm::{self as sys_shm, Mapping};
use crate::wire::{self, fds};

thread_local! {
    /// This thread's receive buffer for `get` (`INLINE_MAX + 2` bytes once used).
    static IN: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// Takes the next item, waiting as long as it takes. [`Error::Closed`] once every
    /// handle has closed and the queue is drained; [`Error::ShutDown`] once it was shut
    /// down and is drained.
    pub fn get(&self) -> Result<T> {
        self.get_until(None)?.ok_or(Error::Closed { what: WHAT })
    }

    /// Takes the next item, waiting at most `timeout` ([`Error::Timeout`] after that).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.get_until(Instant::now().checked_add(timeout))?
            .ok_or_else(|| Error::Timeout {
                what: "an item on a queue".into(),
                timeout,
            })
    }

    /// Takes the next item if one is there now ([`Error::Empty`] otherwise).
    pub fn try_get(&self) -> Result<T> {
        self.get_until(Some(Instant::now()))?
            .ok_or(Error::Empty { what: WHAT })
    }

    /// `Ok(None)`: timed out.
    fn get_until(&self, deadline: Option<Instant>) -> Result<Option<T>> {
        // Taken out of the thread-local, so that a value whose decoding gets from a
        // queue on this thread still works (with a buffer of its own).
        let mut buf = IN.take();
        if buf.len() < INLINE_MAX + 2 {
            buf = vec![0u8; INLINE_MAX + 2];
        }
        let got = self.get_into(&mut buf, deadline);
        IN.set(buf);
        got
    }

    fn get_into(&self, buf: &mut [u8], deadline: Option<Instant>) -> Result<Option<T>> {
        let e = &self.ends;
        loop {
            if e.state() == STOPPED {
                return Err(Error::ShutDown { what: WHAT });
            }
            // The socket first, without the lock: while the spill log holds items,
            // what the socket holds is older.
            let ended = match e.recv_now(buf)? {
                Received::Item(n, received) => {
                    e.release();
                    return self.decode_datagram(&buf[..n], received).map(Some);
                }
                Received::Nothing => false,
                Received::Ended => true,
            };
            hook::run("get:socket-empty");
            if e.spilled()
                && let Some(taken) = e.unspill(buf)?
            {
                e.release();
                return match taken {
                    Unspilled::Datagram(n, received) => {
                        self.decode_datagram(&buf[..n], received).map(Some)
                    }
                    Unspilled::Record(bytes) => wire::decode(&bytes).map(Some),
                    Unspilled::Skipped(err) => Err(err),
                };
            }
            if ended {
                // End of stream: every producer side is closed (or the queue was shut
                // down) and nothing is left.
                return Err(e.gone());
            }
            if deadline.is_some_and(|d| d <= Instant::now()) {
                return Ok(None);
            }
            if !wire::wait_readable(e.ready.0.as_fd(), deadline)
                .map_err(|err| Error::io("waiting for a queue item", err))?
            {
                return Ok(None);
            }
        }
    }

    fn decode_datagram(&self, datagram: &[u8], mut received: Vec<OwnedFd>) -> Result<T> {
        if datagram.len() > INLINE_MAX + 1 {
            return Err(bad("an oversized datagram"));
        }
        match datagram[0] {
            INLINE => fds::provide(received, || wire::decode(&datagram[1..])),
            IN_MEMFD if datagram.len() == 1 && !received.is_empty() => {
                let memfd = received.remove(0);
                let map = map_sealed(memfd)?;
                fds::provide(received, || wire::decode(map.sealed_bytes()))
            }
            _ => Err(bad("a malformed datagram")),
        }
    }
}

fn map_sealed(fd: OwnedFd) -> Result<Mapping> {
    if !sys_shm::is_sealed_final(fd.as_fd()) {
        return Err(bad("a large message in an unsealed memory file"));
    }
    let len = sys_shm::file_len(fd.as_fd()).map_err(|e| Error::io("reading a queue message", e))?;
    if len > wire::max_frame_size() {
        return Err(Error::FrameTooLarge {
            what: "a frame".into(),
            len: len as u64,
            max: wire::max_frame_size() as u64,
        });
    }
    Mapping::new_readonly_populated(fd.as_fd(), len)
        .map_err(|e| Error::io("mapping a queue message", e))
}
