//! The spill log: where puts go once the socket is full, a memory file every handle
//! shares, appended to under a robust process-shared lock and committed with one
//! store, so that a process killed at any step leaves nothing half done.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;

use nix::errno::Errno;

use super::at;
use super::ends::{Ends, Received};
use super::datagram::{INLINE_MIN, bad};
use super::hook;
use crate::error::{Error, Result};
use crate::sys::shm as sys_shm;
use crate::wire;

const SPILL_LOCK: &str = "queue's spill lock";
/// The spill log gives consumed memory back in steps of this many bytes.
const SPILL_RELEASE: u64 = 1 << 20;

impl Ends {
    /// Takes the spill lock and makes the log's words, its flag and its eventfd agree
    /// (a holder may have died between two of its steps).
    pub(super) fn lock_spill(&self) -> Result<crate::sync::LockGuard<'_>> {
        let guard = self.shared.lock(SPILL_LOCK, None)?;
        let (head, tail) = (self.word64(at::HEAD), self.word64(at::TAIL));
        let spilled = self.word(at::SPILLED);
        let empty = head.load(Ordering::Acquire) >= tail.load(Ordering::Acquire);
        if empty {
            // Reset to the start. Tail first, so that a death between the two stores
            // still leaves an empty log.
            tail.store(0, Ordering::Release);
            head.store(0, Ordering::Release);
        }
        if guard.owner_died() {
            // The flag and the eventfd may disagree with the log and with each other,
            // whatever step the dead holder reached: set both from the log.
            if empty {
                self.disarm();
                spilled.store(0, Ordering::Release);
            } else {
                spilled.store(1, Ordering::Release);
                self.arm();
            }
        } else if empty {
            if spilled.swap(0, Ordering::AcqRel) != 0 {
                self.disarm();
            }
        } else if spilled.swap(1, Ordering::AcqRel) == 0 {
            self.arm();
        }
        Ok(guard)
    }

    /// Makes `spill_ready` readable.
    fn arm(&self) {
        let _ = nix::unistd::write(&self.spill_ready, &1u64.to_ne_bytes());
    }

    /// Makes `spill_ready` unreadable.
    fn disarm(&self) {
        let mut b = [0u8; 8];
        let _ = nix::unistd::read(&self.spill_ready, &mut b);
    }

    /// Appends one encoded item to the spill log (the spill lock held).
    ///
    /// Every step leaves a state the next holder of the lock can repair if this process
    /// dies right after it: the flag and the eventfd first (a death then leaves at
    /// worst a getter woken for a log that turns out empty), the record next, and the
    /// one store that commits it last (a death before it wrote nothing).
    pub(super) fn spill(&self, bytes: &[u8]) -> Result<()> {
        let tail = self.word64(at::TAIL);
        let start = tail.load(Ordering::Acquire);
        let len = u32::try_from(bytes.len()).map_err(|_| Error::FrameTooLarge {
            what: "a frame".into(),
            len: bytes.len() as u64,
            max: u32::MAX as u64,
        })?;
        // The tail is shared memory: a peer may have left any value there.
        let end = start
            .checked_add(4 + u64::from(len))
            .ok_or_else(|| Error::io("spilling a queue item to memory", Errno::EFBIG))?;
        if self.word(at::SPILLED).swap(1, Ordering::AcqRel) == 0 {
            hook::run("spill:flagged");
            self.arm();
        }
        hook::run("spill:armed");
        write_all_at(&self.log, &len.to_le_bytes(), start)?;
        write_all_at(&self.log, bytes, start + 4)?;
        hook::run("spill:written");
        tail.store(end, Ordering::Release);
        hook::run("spill:committed");
        Ok(())
    }

    /// Takes the next item for a consumer that found the socket empty and the spill
    /// flag set: the socket's oldest datagram if one came in meanwhile, otherwise the
    /// spill log's oldest record.
    ///
    /// Why the socket is tried again, under the lock: between a consumer's look at
    /// the socket and its look at the flag, a producer may have filled the socket with
    /// its item X and then spilled its next item Y; taking Y then X would break that
    /// producer's order. The invariant that makes the look under the lock enough: *the
    /// socket never holds an item put after a producer's item still in the log.* A
    /// producer sends to the socket only when it saw the flag clear, and the flag is
    /// set, under this lock, before any record is written and cleared only once the
    /// log is empty; a spill (also under this lock) comes only after the producer found
    /// the socket full or the log not empty. So when the socket is empty under the
    /// lock, every item older than the log's head, from any producer that also has
    /// items in the log, has been taken.
    ///
    /// The log is shared memory any handle holder can write: a malformed record costs
    /// only itself (or, if its length cannot be trusted, the rest of the log), is
    /// reported as [`Unspilled::Skipped`] and counted as taken, and never wedges the
    /// log or panics.
    pub(super) fn unspill(&self, buf: &mut [u8]) -> Result<Option<Unspilled>> {
        let _guard = self.lock_spill()?;
        if let Received::Item(n, fds) = self.recv_now(buf)? {
            return Ok(Some(Unspilled::Datagram(n, fds)));
        }
        let (h, t) = (
            self.word64(at::HEAD).load(Ordering::Acquire),
            self.word64(at::TAIL).load(Ordering::Acquire),
        );
        if h >= t {
            return Ok(None);
        }
        let skip = |to: u64, err: Error| {
            self.consumed(h, to, t);
            Ok(Some(Unspilled::Skipped(err)))
        };
        let Some(body) = (t - h).checked_sub(4) else {
            return skip(t, bad("a spilled item cut short"));
        };
        let mut header = [0u8; 4];
        if let Err(err) = read_exact_at(&self.log, &mut header, h) {
            // Where the next record starts is unknown: the rest goes.
            return skip(t, err);
        }
        let len = u64::from(u32::from_le_bytes(header));
        if len > body {
            return skip(t, bad("a spilled item longer than the spill log"));
        }
        let next = h + 4 + len;
        let max = wire::max_frame_size() as u64;
        if len > max {
            // Another process may allow larger frames than this one: only this item
            // is lost to this consumer.
            return skip(
                next,
                Error::FrameTooLarge {
                    what: "a frame".into(),
                    len,
                    max,
                },
            );
        }
        if len > INLINE_MIN as u64
            && sys_shm::file_len(self.log.as_fd()).is_ok_and(|size| next > size as u64)
        {
            // A tail a peer moved past the file's end: do not allocate for a record
            // that cannot be there.
            return skip(t, bad("a spilled item past the spill log's end"));
        }
        let mut bytes = vec![0u8; len as usize];
        if let Err(err) = read_exact_at(&self.log, &mut bytes, h + 4) {
            return skip(next, err);
        }
        self.consumed(h, next, t);
        Ok(Some(Unspilled::Record(bytes)))
    }

    /// Moves the log's head from `h` to `next` (`t` the tail; the spill lock held),
    /// emptying the log when that was its last record.
    fn consumed(&self, h: u64, next: u64, t: u64) {
        let (head, tail) = (self.word64(at::HEAD), self.word64(at::TAIL));
        head.store(next, Ordering::Release);
        hook::run("unspill:advanced");
        if next >= t {
            tail.store(0, Ordering::Release);
            head.store(0, Ordering::Release);
            let _ = nix::unistd::ftruncate(&self.log, 0);
            hook::run("unspill:reset");
            // Disarm before clearing the flag: a consumer that dies in between leaves
            // the flag set (the next holder of the lock repairs it), never a readable
            // eventfd over an empty log, which would make every waiting getter spin.
            self.disarm();
            hook::run("unspill:disarmed");
            self.word(at::SPILLED).store(0, Ordering::Release);
        } else if h / SPILL_RELEASE != next / SPILL_RELEASE {
            // Give the consumed whole steps back to the system; the file keeps its size.
            let upto = next / SPILL_RELEASE * SPILL_RELEASE;
            let _ = nix::fcntl::fallocate(
                &self.log,
                nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                    | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                0,
                libc::off_t::try_from(upto).unwrap_or(libc::off_t::MAX),
            );
        }
    }
}

/// What [`Ends::unspill`] took (every kind counts as one item taken).
pub(super) enum Unspilled {
    /// A datagram from the socket: this many bytes of the buffer, with descriptors.
    Datagram(usize, Vec<OwnedFd>),
    /// A record from the spill log.
    Record(Vec<u8>),
    /// A malformed record, skipped.
    Skipped(Error),
}

pub(super) fn write_all_at(fd: &OwnedFd, mut bytes: &[u8], mut at: u64) -> Result<()> {
    let fail = |e: Errno| Error::io("spilling a queue item to memory", e);
    while !bytes.is_empty() {
        let off = libc::off_t::try_from(at).map_err(|_| fail(Errno::EFBIG))?;
        match nix::sys::uio::pwrite(fd, bytes, off) {
            Ok(0) => return Err(fail(Errno::ENOSPC)),
            Ok(n) => {
                bytes = &bytes[n..];
                at += n as u64;
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(fail(e)),
        }
    }
    Ok(())
}

fn read_exact_at(fd: &OwnedFd, mut buf: &mut [u8], mut at: u64) -> Result<()> {
    while !buf.is_empty() {
        let off = libc::off_t::try_from(at).map_err(|_| bad("a spilled item out of range"))?;
        match nix::sys::uio::pread(fd, buf, off) {
            Ok(0) => return Err(bad("a truncated spill log")),
            Ok(n) => {
                buf = &mut buf[n..];
                at += n as u64;
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::io("reading a spilled queue item", e)),
        }
    }
    Ok(())
}
