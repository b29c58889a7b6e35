//! `Queue`, `JoinableQueue`, `SimpleQueue`: many producers, many consumers.

use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::sync::{MUTEX_SIZE, RawLock, Words};
use crate::sys::futex;
use crate::sys::shm::{self as sys_shm, Mapping};
use crate::wire::{self, fds};

const WHAT: &str = "queue";
const SPILL_LOCK: &str = "queue's spill lock";

/// Smallest inline limit: messages up to this size always go inline.
const INLINE_MIN: usize = 64 << 10;
/// Largest encoded message ever sent inline in its datagram (larger ones go by
/// memfd); also the size of every consumer thread's receive buffer.
const INLINE_MAX: usize = 2 << 20;
/// Datagram kinds (first byte).
const INLINE: u8 = 0;
const IN_MEMFD: u8 = 1;
/// Socket send buffer requested (the kernel caps it at `net.core.wmem_max`).
const SEND_BUFFER: usize = 4 << 20;
/// The largest encoding buffer a thread keeps for its next `put`.
const KEEP_BUFFER: usize = 8 << 20;
/// The largest `maxsize` (the item count is a 32-bit futex word).
const MAXSIZE_LIMIT: usize = u32::MAX as usize - 1;
/// The spill log gives consumed memory back in steps of this many bytes.
const SPILL_RELEASE: u64 = 1 << 20;
/// How often a put that must wait for socket room (an item carrying descriptors)
/// looks again at the spill and the queue's state.
const ROOM_POLL: Duration = Duration::from_millis(10);

/// Test-only: a one-shot action at a named point of a put or a get, to reproduce an
/// interleaving, or a death at that exact point, deterministically.
#[cfg(test)]
mod hook {
    use std::cell::RefCell;

    type Action = Box<dyn FnOnce()>;

    thread_local! {
        static AT: RefCell<Vec<(&'static str, Action)>> = const { RefCell::new(Vec::new()) };
    }

    /// Runs `action` (on this thread) the next time it reaches `point`.
    pub(super) fn set(point: &'static str, action: impl FnOnce() + 'static) {
        AT.with(|a| a.borrow_mut().push((point, Box::new(action))));
    }

    pub(super) fn run(point: &'static str) {
        let action = AT.with(|a| {
            let mut a = a.borrow_mut();
            let i = a.iter().position(|(p, _)| *p == point)?;
            Some(a.remove(i).1)
        });
        if let Some(f) = action {
            f();
        }
    }
}

#[cfg(not(test))]
mod hook {
    #[inline(always)]
    pub(super) fn run(_point: &'static str) {}
}

/// The shared state of one queue: words after the spill lock in its segment.
mod at {
    use super::MUTEX_SIZE;
    /// Items put and not yet taken (`qsize`).
    pub(super) const COUNT: usize = MUTEX_SIZE;
    /// `maxsize` (0: unbounded), fixed at creation.
    pub(super) const MAXSIZE: usize = MUTEX_SIZE + 4;
    /// [`OPEN`](super::OPEN), [`DRAINING`](super::DRAINING) or
    /// [`STOPPED`](super::STOPPED).
    pub(super) const STATE: usize = MUTEX_SIZE + 8;
    /// 1 while the spill log holds items, and the eventfd readable with it. Both
    /// change only under the lock, in an order that a death at any step leaves
    /// harmless; the next holder after a death sets them from `head < tail` again.
    pub(super) const SPILLED: usize = MUTEX_SIZE + 12;
    /// Producers waiting for a bounded queue to have room.
    pub(super) const PUT_WAITERS: usize = MUTEX_SIZE + 16;
    /// Bumped whenever a waiting producer should look again (an item taken, a
    /// shutdown): the word such producers sleep on.
    pub(super) const ROOM: usize = MUTEX_SIZE + 20;
    /// Spill log: offset of the oldest record (u64).
    pub(super) const HEAD: usize = MUTEX_SIZE + 24;
    /// Spill log: offset after the newest committed record (u64).
    pub(super) const TAIL: usize = MUTEX_SIZE + 32;
    /// Bytes after the lock.
    pub(super) const LEN: usize = 40;
}

/// Queue states (`at::STATE`).
const OPEN: u32 = 0;
/// Shut down: no more puts; getters drain what is left.
const DRAINING: u32 = 1;
/// Shut down immediately: no more puts, no more gets.
const STOPPED: u32 = 2;

thread_local! {
    /// This thread's encoding buffer for `put`, reused across messages.
    static OUT: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    /// This thread's receive buffer for `get` (`INLINE_MAX + 2` bytes once used).
    static IN: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The largest message this process sends inline on `tx`: a quarter of the send
/// buffer the kernel granted, within `INLINE_MIN..=INLINE_MAX`.
fn inline_limit(tx: &OwnedFd) -> usize {
    let granted = nix::sys::socket::getsockopt(tx, nix::sys::socket::sockopt::SndBuf).unwrap_or(0);
    (granted / 4).clamp(INLINE_MIN, INLINE_MAX)
}

/// What every handle of one queue shares (the kernel objects), plus this process's
/// own epoll set over them.
#[derive(Debug)]
struct Ends {
    /// Producers send here. `None` after `close`. A put clones the `Arc` and lets go
    /// of the lock before it waits, so that `close` never waits for a put (a put
    /// already under way finishes on its own reference).
    tx: RwLock<Option<Arc<OwnedFd>>>,
    /// Consumers receive here.
    rx: OwnedFd,
    /// Encoded messages up to this size go inline (see [`inline_limit`]).
    inline_max: usize,
    /// The spill lock and the shared words (`at::*`).
    shared: RawLock,
    /// The spill log: a memfd of length-prefixed encoded items, `HEAD..TAIL`.
    log: OwnedFd,
    /// An eventfd, readable while the spill log holds items.
    spill_ready: OwnedFd,
    /// `rx` and `spill_ready` in one epoll set: readable when a `get` would not wait.
    ready: Epoll,
}

impl Ends {
    fn build(
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
    fn sender(&self) -> Option<Arc<OwnedFd>> {
        self.tx.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        // In bounds and aligned: checked in `build`, and the segment is page-aligned.
        self.shared
            .segment()
            .map()
            .atomic_at::<AtomicU32>(offset)
            .expect("a queue's state segment holds its words")
    }

    fn word64(&self, offset: usize) -> &AtomicU64 {
        self.shared
            .segment()
            .map()
            .atomic_at::<AtomicU64>(offset)
            .expect("a queue's state segment holds its words")
    }

    fn state(&self) -> u32 {
        self.word(at::STATE).load(Ordering::Acquire)
    }

    fn maxsize(&self) -> u32 {
        self.word(at::MAXSIZE).load(Ordering::Relaxed)
    }

    fn spilled(&self) -> bool {
        self.word(at::SPILLED).load(Ordering::Acquire) != 0
    }

    /// The error for a put or get that found the queue shut down or closed.
    fn gone(&self) -> Error {
        if self.state() == OPEN {
            Error::Closed { what: WHAT }
        } else {
            Error::ShutDown { what: WHAT }
        }
    }

    /// Counts one more item, waiting until `deadline` for room in a bounded queue.
    ///
    /// A waiting producer sleeps on the `ROOM` word, read *before* it looks at the state
    /// and the count: a release or a shutdown that comes after that look bumps `ROOM`
    /// first, so the wait returns at once instead of missing the wake-up (the count
    /// alone is no good: a shutdown does not change it).
    fn reserve(&self, deadline: Option<Instant>) -> Result<()> {
        let count = self.word(at::COUNT);
        let room = self.word(at::ROOM);
        let max = self.maxsize();
        loop {
            let seen = room.load(Ordering::SeqCst);
            if self.state() != OPEN {
                return Err(Error::ShutDown { what: WHAT });
            }
            let c = count.load(Ordering::SeqCst);
            if max == 0 || c < max {
                if count
                    .compare_exchange(c, c.wrapping_add(1), Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            if deadline.is_some_and(|d| d <= Instant::now()) {
                return Err(Error::Full { what: WHAT });
            }
            hook::run("reserve:full");
            let waiters = self.word(at::PUT_WAITERS);
            waiters.fetch_add(1, Ordering::SeqCst);
            let woke = futex::wait(room, seen, deadline);
            waiters.fetch_sub(1, Ordering::SeqCst);
            if woke == futex::Wait::TimedOut && count.load(Ordering::SeqCst) >= max {
                return Err(Error::Full { what: WHAT });
            }
        }
    }

    /// Counts one item less (taken, or a put that failed), waking a waiting producer.
    fn release(&self) {
        let count = self.word(at::COUNT);
        // Never below zero, even if a peer's counting went wrong.
        let _ = count.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1));
        let room = self.word(at::ROOM);
        room.fetch_add(1, Ordering::SeqCst);
        if self.word(at::PUT_WAITERS).load(Ordering::SeqCst) != 0 {
            futex::wake(room, u32::MAX);
        }
    }

    /// Wakes every producer waiting for room, to look at the queue's state again.
    fn wake_producers(&self) {
        let room = self.word(at::ROOM);
        room.fetch_add(1, Ordering::SeqCst);
        futex::wake(room, u32::MAX);
    }

    /// Takes the spill lock and makes the log's words, its flag and its eventfd agree
    /// (a holder may have died between two of its steps).
    fn lock_spill(&self) -> Result<crate::sync::LockGuard<'_>> {
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
    fn spill(&self, bytes: &[u8]) -> Result<()> {
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
    fn unspill(&self, buf: &mut [u8]) -> Result<Option<Unspilled>> {
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

    /// One receive from the socket, without waiting.
    fn recv_now(&self, buf: &mut [u8]) -> Result<Received> {
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
enum Received {
    /// A datagram of this many bytes, with its descriptors.
    Item(usize, Vec<OwnedFd>),
    /// Nothing now.
    Nothing,
    /// The end of the stream, and nothing left in the socket.
    Ended,
}

/// What [`Ends::unspill`] took (every kind counts as one item taken).
enum Unspilled {
    /// A datagram from the socket: this many bytes of the buffer, with descriptors.
    Datagram(usize, Vec<OwnedFd>),
    /// A record from the spill log.
    Record(Vec<u8>),
    /// A malformed record, skipped.
    Skipped(Error),
}

fn write_all_at(fd: &OwnedFd, mut bytes: &[u8], mut at: u64) -> Result<()> {
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

/// A multi-producer, multi-consumer queue between processes (Python's
/// `multiprocessing.Queue`).
///
/// Clones share this process's handle (closing one closes them all); a copy passed to a
/// child as a task argument is that child's own handle.
///
/// ```
/// use multiproc::{Process, Queue};
///
/// fn produce((q, from): (Queue<u64>, u64)) {
///     for i in from..from + 100 {
///         q.put(&i).unwrap();
///     }
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let q = Queue::new()?;
/// let ps = [0, 100]
///     .map(|from| Process::start(produce, (q.clone(), from)));
/// let mut got: Vec<u64> = (0..200).map(|_| q.get()).collect::<Result<_, _>>()?;
/// for p in ps { p?.join()?; }
/// got.sort();
/// assert_eq!(got, (0..200).collect::<Vec<_>>());
/// # Ok(()) }
/// ```
///
/// ## Size: unbounded, or `maxsize`
///
/// [`Queue::new`] is unbounded, as Python's `Queue()`: `put` never waits, memory is the
/// limit. [`Queue::with_maxsize`] bounds it to `maxsize` items: `put` waits while it
/// holds that many, [`put_timeout`](Self::put_timeout) and [`try_put`](Self::try_put)
/// answer [`Error::Full`]. [`qsize`](Self::qsize), [`full`](Self::full) and
/// [`is_empty`](Self::is_empty) tell where it stands (racy by nature, as in Python).
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// let q = multiproc::Queue::with_maxsize(2)?;
/// q.put(&1u8)?;
/// q.put(&2u8)?;
/// assert!(q.full());
/// assert!(q.try_put(&3u8).unwrap_err().to_string().contains("full"));
/// assert_eq!(q.get()?, 1);
/// q.try_put(&3u8)?;
/// assert_eq!(q.qsize(), 2);
/// # Ok(()) }
/// ```
///
/// ## Design: one SOCK_SEQPACKET socket pair, a spill log, no feeder thread
///
/// Every handle, in every process, holds the same two sockets of one Unix
/// `SOCK_SEQPACKET` pair: producers send on one, consumers receive on the other. The
/// kernel delivers each datagram whole to exactly one `recvmsg`, so
///
/// - no message is ever delivered twice or interleaved with another, with no lock
///   between processes on the common path;
/// - a producer killed mid-`put` either queued its whole message or nothing: there is
///   no half-written frame and no lock left held to wedge the others;
/// - a `put` returns once the item is in the kernel's hands (the socket, or the spill
///   log below), so a producer may exit right after it: there is no hidden feeder
///   thread, and `join` never deadlocks on unread data (Python's trap).
///
/// The socket buffer holds some ten thousand small items (`net.core.wmem_max`
/// decides). When it is full, a `put` does not wait: it appends the item to the
/// queue's *spill log*, a memory file (memfd) that every handle shares, under a
/// robust process-shared lock, and commits it with one store, so a producer killed
/// mid-append leaves nothing behind and no lock held. From then until the log is
/// drained, every put goes to the log, and consumers, having emptied the socket (whose
/// items are older; they look at it again under the lock before they take from the
/// log), take from the log in order: each producer's items arrive in the order it put
/// them, as in Python. The log gives its memory back as consumers drain it. The socket
/// buffer is thus an implementation detail; the limit is memory (and `maxsize`, if
/// given). The log is shared memory that any handle holder can write: a record a
/// consumer cannot read (malformed, or over its
/// [`max_frame_size`](crate::max_frame_size)) is skipped, counted as taken, and that
/// `get` answers the error; the items after it are not affected.
///
/// An item that carries descriptors (a [`PipeEnd`](crate::PipeEnd), a [`Value`](crate::Value),
/// another queue...) cannot be written to memory: it waits for room in the socket
/// (and for the log to drain) instead, and its `put_timeout`/`try_put` can answer
/// [`Error::Full`] even in an unbounded queue.
///
/// A datagram must fit the socket buffer, so a message travels inline only up to a
/// limit set by the send buffer the kernel granted: at most a quarter of it, never less
/// than 64 KiB nor more than 2 MiB. A larger message (or one the kernel cannot
/// allocate a datagram for) travels in a `memfd`: the producer writes the encoded
/// bytes there, seals it against any further change (`F_SEAL_WRITE | F_SEAL_SHRINK |
/// F_SEAL_GROW`) and sends only the descriptor in a one-byte datagram. The consumer
/// maps it and decodes in place. The memory belongs to the kernel object, not the
/// producer, so the producer can exit at once, and a consumer refuses a memfd that is
/// not sealed (a peer could otherwise truncate it under the mapping).
///
/// A consumer killed between receiving a message and returning it takes that message
/// with it, as in any queue. [`qsize`](Self::qsize) is a shared count of items put and
/// not yet taken; a process killed in the middle of a `put` or `get` can leave it one
/// too high (and, for a bounded queue, one slot short), as a killed process leaves
/// Python's queue semaphore.
///
/// ## Closing and shutting down
///
/// [`Queue::close`] gives up this process's ability to put. Once every handle in
/// every process has closed (or its process has ended), consumers drain what is left
/// and then get [`Error::Closed`] instead of waiting forever.
///
/// [`Queue::shutdown`] (Python 3.13's `Queue.shutdown`) shuts the queue for every
/// handle at once: puts answer [`Error::ShutDown`]; getters drain what is left and
/// then answer `ShutDown`, or, after `shutdown(true)`, answer it at once (the items
/// left are discarded). Blocked producers and consumers wake up.
pub struct Queue<T> {
    ends: Arc<Ends>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            ends: self.ends.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("type", &std::any::type_name::<T>())
            .field("maxsize", &self.ends.maxsize())
            .finish_non_exhaustive()
    }
}

impl<T> Queue<T> {
    /// The number of items put and not yet taken (Python's `qsize()`; approximate by
    /// nature, as other processes put and take at the same time).
    pub fn qsize(&self) -> usize {
        self.ends.word(at::COUNT).load(Ordering::Acquire) as usize
    }

    /// The bound given to [`with_maxsize`](Self::with_maxsize); 0 for an unbounded
    /// queue.
    pub fn maxsize(&self) -> usize {
        self.ends.maxsize() as usize
    }

    /// Whether a bounded queue holds `maxsize` items now (always `false` for an
    /// unbounded one).
    pub fn full(&self) -> bool {
        let max = self.ends.maxsize();
        max != 0 && self.ends.word(at::COUNT).load(Ordering::Acquire) >= max
    }

    /// Whether the queue holds no item now (racy by nature: another process may put or
    /// take an item at once). A queue that is closed or shut down and holds nothing is
    /// empty.
    pub fn is_empty(&self) -> bool {
        // Our datagrams are never empty: any unread byte is an item (an empty datagram
        // a peer sent, or the end of the stream, is not).
        let queued = crate::sys::fd::unread_bytes(self.ends.rx.as_fd()).is_ok_and(|n| n > 0);
        !queued && !self.ends.spilled()
    }

    /// Gives up putting from this process (every clone of this handle): consumers see
    /// [`Error::Closed`] once all handles everywhere have closed and the queue is
    /// drained. Getting still works.
    ///
    /// Consumers count too: a consumer's handle could put, so it keeps the queue open
    /// for itself. A consumer that reads until `Closed` must close its own handle first.
    ///
    /// `close` does not wait for, nor interrupt, a put already under way in another
    /// thread (one waiting for room, say): that put finishes, or times out, on its own.
    pub fn close(&self) {
        let mut tx = self.ends.tx.write().unwrap_or_else(|p| p.into_inner());
        *tx = None;
    }

    /// Shuts the queue down for every handle in every process (Python 3.13's
    /// `Queue.shutdown`): from now on a put answers [`Error::ShutDown`]. With
    /// `immediate == false`, getters take what is left and then answer `ShutDown`
    /// instead of waiting; with `immediate == true`, they answer it at once, and the
    /// items left are discarded. Producers and consumers blocked on the queue wake up.
    ///
    /// Shutting down again may turn a draining shutdown into an immediate one, never
    /// back.
    ///
    /// ```
    /// # fn main() -> multiproc::Result<()> {
    /// let q = multiproc::Queue::new()?;
    /// q.put(&1u32)?;
    /// q.shutdown(false);
    /// assert!(matches!(q.put(&2), Err(multiproc::Error::ShutDown { .. })));
    /// assert_eq!(q.get()?, 1); // drained first
    /// assert!(matches!(q.get(), Err(multiproc::Error::ShutDown { .. })));
    /// # Ok(()) }
    /// ```
    pub fn shutdown(&self, immediate: bool) {
        self.shutdown_discarding(immediate);
    }

    /// [`shutdown`](Self::shutdown); returns how many items an immediate one discarded.
    fn shutdown_discarding(&self, immediate: bool) -> usize {
        let e = &self.ends;
        let state = if immediate { STOPPED } else { DRAINING };
        e.word(at::STATE).fetch_max(state, Ordering::AcqRel);
        // Shutting the consumers' side of the shared socket makes every send from any
        // process fail, lets receivers take what is queued and then see the end of
        // the stream, and wakes everyone polling it.
        let _ = nix::sys::socket::shutdown(e.rx.as_raw_fd(), nix::sys::socket::Shutdown::Read);
        e.wake_producers();
        let mut discarded = 0;
        if immediate {
            let mut buf = vec![0u8; INLINE_MAX + 2];
            while let Ok(Received::Item(..)) = e.recv_now(&mut buf) {
                e.release();
                discarded += 1;
            }
            while let Ok(Some(_)) = e.unspill(&mut buf) {
                e.release();
                discarded += 1;
            }
        }
        discarded
    }

    /// Whether [`shutdown`](Self::shutdown) was called on any handle of this queue.
    pub fn is_shut_down(&self) -> bool {
        self.ends.state() != OPEN
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// A new, empty, unbounded queue (Python's `Queue()`).
    pub fn new() -> Result<Self> {
        Self::with_maxsize(0)
    }

    /// A new, empty queue that holds at most `maxsize` items (Python's
    /// `Queue(maxsize)`): [`put`](Self::put) waits while it is full. `0` means
    /// unbounded, as in Python. A `maxsize` above 4,294,967,294 is an error.
    pub fn with_maxsize(maxsize: usize) -> Result<Self> {
        if maxsize > MAXSIZE_LIMIT {
            return Err(Error::Io {
                context: "creating a queue",
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("maxsize {maxsize} is above the limit of {MAXSIZE_LIMIT}"),
                ),
            });
        }
        let (tx, rx) = crate::sys::fd::pair(nix::sys::socket::SockType::SeqPacket)
            .map_err(|e| Error::io("creating a queue", e))?;
        // A larger buffer holds more small messages before the spill log is needed;
        // the kernel caps the request, and a smaller buffer still works.
        let _ = nix::sys::socket::setsockopt(&tx, nix::sys::socket::sockopt::SndBuf, &SEND_BUFFER);
        let shared = RawLock::new("multiproc-queue", at::LEN, false)?;
        let log = sys_shm::memfd_unsealed("multiproc-queue-spill")
            .map_err(|e| Error::io("creating a queue's spill log", e))?;
        let spill_ready = nix::sys::eventfd::EventFd::from_value_and_flags(
            0,
            nix::sys::eventfd::EfdFlags::EFD_CLOEXEC | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
        )
        .map(OwnedFd::from)
        .map_err(|e| Error::io("creating a queue", e))?;
        let ends = Ends::build(Some(tx), rx, shared, log, spill_ready)?;
        ends.word(at::MAXSIZE)
            .store(maxsize as u32, Ordering::Release);
        Ok(Queue {
            ends: Arc::new(ends),
            _t: PhantomData,
        })
    }

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

fn bad(what: &str) -> Error {
    Error::Protocol {
        pid: 0,
        detail: format!("a queue producer sent {what}"),
    }
}

fn to_sealed_memfd(bytes: &[u8]) -> Result<OwnedFd> {
    let fail = |e: std::io::Error| Error::io("writing a large queue message to shared memory", e);
    let fd = sys_shm::memfd_unsealed("multiproc-queue-msg").map_err(fail)?;
    sys_shm::write_all(fd.as_fd(), bytes).map_err(fail)?;
    sys_shm::seal_final(fd.as_fd()).map_err(fail)?;
    Ok(fd)
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

/// Readable when a [`get`](Queue::get) would not wait: an item is in the queue (in its
/// socket or its spill log), or every producer has closed, or the queue was shut down.
/// This is how [`crate::wait_ready`] waits for a queue. It is an epoll set of this
/// handle over the queue's shared socket and spill flag: a handle never buffers items
/// in this process, so it tells the whole truth, but other consumers may take the item
/// first: after a wait, use [`try_get`](Queue::try_get) or a timeout.
impl<T> AsFd for Queue<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ends.ready.0.as_fd()
    }
}

/// The wait set of the underlying [`Queue`]; see its `AsFd`.
impl<T> AsFd for JoinableQueue<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.queue.as_fd()
    }
}

/// The wait set of the underlying [`Queue`]; see its `AsFd`.
impl<T> AsFd for SimpleQueue<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.queue.as_fd()
    }
}

/// What a queue handle looks like on the wire: the two sockets (the put side absent
/// once closed), the shared state, the spill log and its eventfd.
#[derive(Serialize, Deserialize)]
struct WireQueue {
    tx: Option<fds::PassFd>,
    rx: fds::PassFd,
    shared: RawLock,
    log: fds::PassFd,
    spill_ready: fds::PassFd,
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map(fds::PassFd::new)
                .map_err(|e| S::Error::custom(format!("cannot duplicate a queue handle: {e}")))
        };
        WireQueue {
            tx: self.ends.sender().as_deref().map(dup).transpose()?,
            rx: dup(&self.ends.rx)?,
            shared: self.ends.shared.clone(),
            log: dup(&self.ends.log)?,
            spill_ready: dup(&self.ends.spill_ready)?,
        }
        .serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let w = WireQueue::deserialize(d)?;
        let ends = Ends::build(w.tx.map(|f| f.0), w.rx.0, w.shared, w.log.0, w.spill_ready.0)
            .map_err(serde::de::Error::custom)?;
        Ok(Queue {
            ends: Arc::new(ends),
            _t: PhantomData,
        })
    }
}

/// A [`Queue`] that also counts unfinished items (Python's `JoinableQueue`): each
/// `put` adds one, each [`task_done`](Self::task_done) removes one, and
/// [`join`](Self::join) waits for zero.
///
/// A consumer that dies before calling `task_done` leaves its item counted: use
/// [`join_timeout`](Self::join_timeout) where that can happen.
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// let q = multiproc::JoinableQueue::<u32>::new()?;
/// q.put(&1)?;
/// assert_eq!(q.get()?, 1);
/// q.task_done()?;
/// q.join();
/// # Ok(()) }
/// ```
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct JoinableQueue<T> {
    queue: Queue<T>,
    unfinished: Words<1>,
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue {
            queue: self.queue.clone(),
            unfinished: self.unfinished.clone(),
        }
    }
}

impl<T> std::fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinableQueue")
            .field("type", &std::any::type_name::<T>())
            .field("unfinished", &self.unfinished.at(0).load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// A new, empty, unbounded queue.
    pub fn new() -> Result<Self> {
        Self::with_maxsize(0)
    }

    /// A new, empty queue that holds at most `maxsize` items (0: unbounded); see
    /// [`Queue::with_maxsize`].
    pub fn with_maxsize(maxsize: usize) -> Result<Self> {
        Ok(JoinableQueue {
            queue: Queue::with_maxsize(maxsize)?,
            unfinished: Words::new("multiproc-joinable-queue")?,
        })
    }

    /// See [`Queue::qsize`].
    pub fn qsize(&self) -> usize {
        self.queue.qsize()
    }

    /// See [`Queue::maxsize`].
    pub fn maxsize(&self) -> usize {
        self.queue.maxsize()
    }

    /// See [`Queue::full`].
    pub fn full(&self) -> bool {
        self.queue.full()
    }

    /// See [`Queue::is_empty`].
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// See [`Queue::shutdown`]. An immediate shutdown also counts every item it
    /// discards as done (as Python's), so that [`join`](Self::join) does not wait for
    /// items nobody will take.
    pub fn shutdown(&self, immediate: bool) {
        let discarded = self.queue.shutdown_discarding(immediate);
        let n = self.unfinished.at(0);
        for _ in 0..discarded {
            let prev = n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1));
            if prev == Ok(1) {
                futex::wake(n, u32::MAX);
            }
        }
    }

    /// See [`Queue::is_shut_down`].
    pub fn is_shut_down(&self) -> bool {
        self.queue.is_shut_down()
    }

    fn counted(&self, put: impl FnOnce(&Queue<T>) -> Result<()>) -> Result<()> {
        let n = self.unfinished.at(0);
        n.fetch_add(1, Ordering::AcqRel);
        put(&self.queue).inspect_err(|_| {
            if n.fetch_sub(1, Ordering::AcqRel) == 1 {
                futex::wake(n, u32::MAX);
            }
        })
    }

    /// Puts `item` and counts it as unfinished.
    pub fn put(&self, item: &T) -> Result<()> {
        self.counted(|q| q.put(item))
    }

    /// Puts `item`, waiting at most `timeout` for room.
    pub fn put_timeout(&self, item: &T, timeout: Duration) -> Result<()> {
        self.counted(|q| q.put_timeout(item, timeout))
    }

    /// Puts `item` if there is room now.
    pub fn try_put(&self, item: &T) -> Result<()> {
        self.counted(|q| q.try_put(item))
    }

    /// Takes the next item; see [`Queue::get`].
    pub fn get(&self) -> Result<T> {
        self.queue.get()
    }

    /// Takes the next item, waiting at most `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.queue.get_timeout(timeout)
    }

    /// Takes the next item if one is there now.
    pub fn try_get(&self) -> Result<T> {
        self.queue.try_get()
    }

    /// See [`Queue::close`].
    pub fn close(&self) {
        self.queue.close()
    }

    /// Marks one item taken with `get` as processed. More calls than items put is
    /// [`Error::TaskDoneTooOften`].
    pub fn task_done(&self) -> Result<()> {
        let n = self.unfinished.at(0);
        let mut cur = n.load(Ordering::Acquire);
        loop {
            if cur == 0 {
                return Err(Error::TaskDoneTooOften);
            }
            match n.compare_exchange_weak(cur, cur - 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if cur == 1 {
            futex::wake(n, u32::MAX);
        }
        Ok(())
    }

    /// Waits until every item put has been marked done.
    pub fn join(&self) {
        self.join_until(None);
    }

    /// Waits at most `timeout` for every item to be marked done; returns whether they
    /// were.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        self.join_until(Instant::now().checked_add(timeout))
    }

    fn join_until(&self, deadline: Option<Instant>) -> bool {
        let n = self.unfinished.at(0);
        loop {
            let cur = n.load(Ordering::Acquire);
            if cur == 0 {
                return true;
            }
            if futex::wait(n, cur, deadline) == futex::Wait::TimedOut {
                return n.load(Ordering::Acquire) == 0;
            }
        }
    }
}

/// The simplest queue (Python's `SimpleQueue`): `put`, `get`, `is_empty`, `close`. The
/// same machinery as [`Queue`], without timeouts.
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// let q = multiproc::SimpleQueue::new()?;
/// q.put(&"x".to_string())?;
/// assert_eq!(q.get()?, "x");
/// assert!(q.is_empty());
/// # Ok(()) }
/// ```
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct SimpleQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for SimpleQueue<T> {
    fn clone(&self) -> Self {
        SimpleQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T> std::fmt::Debug for SimpleQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimpleQueue")
            .field("type", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

impl<T: Serialize + DeserializeOwned> SimpleQueue<T> {
    /// A new, empty queue.
    pub fn new() -> Result<Self> {
        Ok(SimpleQueue {
            queue: Queue::new()?,
        })
    }

    /// Puts `item`, waiting while the queue is full.
    pub fn put(&self, item: &T) -> Result<()> {
        self.queue.put(item)
    }

    /// Takes the next item, waiting as long as it takes.
    pub fn get(&self) -> Result<T> {
        self.queue.get()
    }

    /// Whether the queue looks empty now; see [`Queue::is_empty`].
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The number of items put and not yet taken; see [`Queue::qsize`].
    pub fn qsize(&self) -> usize {
        self.queue.qsize()
    }

    /// See [`Queue::close`].
    pub fn close(&self) {
        self.queue.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + len) as u8).collect()
    }

    #[test]
    fn every_size_around_the_inline_limits_arrives_intact() {
        let q = Queue::<Vec<u8>>::new().unwrap();
        let limit = q.ends.inline_max;
        assert!((INLINE_MIN..=INLINE_MAX).contains(&limit));
        for len in [
            0,
            1,
            INLINE_MIN - 8,
            INLINE_MIN + 8,
            1 << 20,
            limit - 8,
            limit,
            limit + 8,
            INLINE_MAX + 8,
            3 << 20,
        ] {
            q.put(&pattern(len)).unwrap();
            assert!(q.get().unwrap() == pattern(len), "length {len}");
        }
    }

    #[test]
    fn a_smaller_send_buffer_falls_back_to_a_memfd() {
        let q = Queue::<Vec<u8>>::new().unwrap();
        {
            let tx = q.ends.tx.read().unwrap();
            let tx = tx.as_ref().unwrap();
            nix::sys::socket::setsockopt(tx, nix::sys::socket::sockopt::SndBuf, &(64 << 10))
                .unwrap();
        }
        // The limit was computed for the larger buffer: the kernel refuses the
        // datagram (EMSGSIZE) and the message goes by memfd instead.
        let len = q.ends.inline_max.max(INLINE_MIN + 1024);
        for _ in 0..3 {
            q.put(&pattern(len)).unwrap();
            assert!(q.get().unwrap() == pattern(len));
        }
    }

    /// Runs `f` in a forked child that dies (`_exit`, holding whatever locks it holds,
    /// as a killed process would) when it reaches `point`; whether it got there.
    fn dies_at(point: &'static str, f: impl FnOnce()) -> bool {
        use crate::sys::proc::{self, Forked};
        match proc::fork().unwrap() {
            Forked::Child => {
                hook::set(point, || proc::exit_now(0));
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
                proc::exit_now(1)
            }
            Forked::Parent(pid) => {
                let fd = proc::pidfd_open(pid).unwrap();
                let status = proc::wait_pidfd(&fd, true).unwrap();
                matches!(status, Some(crate::error::ExitStatus::Code(0)))
            }
        }
    }

    fn log_is_empty<T>(q: &Queue<T>) -> bool {
        q.ends.word64(at::HEAD).load(Ordering::Acquire)
            >= q.ends.word64(at::TAIL).load(Ordering::Acquire)
    }

    /// Takes what is there now; then checks that nothing is stuck in the log, that the
    /// queue does not look ready when it is empty (a getter would spin), and that it
    /// still works.
    fn settle(q: &Queue<u64>) -> Vec<u64> {
        let mut got = Vec::new();
        loop {
            match q.try_get() {
                Ok(v) => got.push(v),
                Err(Error::Empty { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(log_is_empty(q), "an item is stuck in the spill log");
        assert!(
            crate::wait_ready(&[q], Some(Duration::from_millis(100)))
                .unwrap()
                .is_empty(),
            "an empty queue looks ready: getters would spin"
        );
        assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
        q.put(&u64::MAX).unwrap();
        assert_eq!(q.get_timeout(Duration::from_secs(2)).unwrap(), u64::MAX);
        got
    }

    #[test]
    fn a_producer_killed_anywhere_in_a_spill_leaves_the_queue_consistent() {
        for point in [
            "spill:flagged",
            "spill:armed",
            "spill:written",
            "spill:committed",
        ] {
            let q = Queue::<u64>::new().unwrap();
            let p = q.clone();
            assert!(
                dies_at(point, move || {
                    for i in 0.. {
                        p.put(&i).unwrap();
                    }
                }),
                "{point}"
            );
            let got = settle(&q);
            assert!(!got.is_empty() && got[0] == 0, "{point}");
        }
    }

    #[test]
    fn a_consumer_killed_anywhere_in_an_unspill_leaves_the_queue_consistent() {
        for point in [
            "unspill:advanced",
            "unspill:reset",
            "unspill:disarmed",
        ] {
            let q = Queue::<u64>::new().unwrap();
            let mut n = 0;
            while !q.ends.spilled() {
                q.put(&n).unwrap();
                n += 1;
            }
            for _ in 0..2 {
                q.put(&n).unwrap();
                n += 1;
            }
            let c = q.clone();
            assert!(
                dies_at(point, move || {
                    loop {
                        c.get().unwrap();
                    }
                }),
                "{point}"
            );
            let got = settle(&q);
            assert!(got.last().is_none_or(|l| *l == n - 1), "{point}");
        }
    }

    #[test]
    fn a_consumer_that_found_the_socket_empty_still_takes_older_socket_items_first() {
        let q = Queue::<u64>::new().unwrap();
        let p = q.clone();
        // Between the consumer's look at the (empty) socket and its look at the spill
        // log, a producer fills the socket and spills its next item.
        hook::set("get:socket-empty", move || {
            let mut i = 0;
            while !p.ends.spilled() {
                p.put(&i).unwrap();
                i += 1;
            }
        });
        assert_eq!(q.try_get().unwrap(), 0);
        let mut next = 1;
        while let Ok(v) = q.try_get() {
            assert_eq!(v, next);
            next += 1;
        }
        assert!(q.is_empty() && q.qsize() == 0);
    }

    #[test]
    fn shutdown_between_a_producer_s_look_and_its_wait_still_wakes_it() {
        let q = Queue::<u32>::with_maxsize(1).unwrap();
        q.put(&1).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn({
            let q = q.clone();
            move || {
                let s = q.clone();
                hook::set("reserve:full", move || s.shutdown(false));
                tx.send(q.put(&2)).unwrap();
            }
        });
        let got = rx.recv_timeout(Duration::from_secs(3));
        if got.is_err() {
            // Let the stuck producer go before failing.
            let _ = q.get();
        }
        t.join().unwrap();
        assert!(matches!(got, Ok(Err(Error::ShutDown { .. }))), "{got:?}");
    }

    #[test]
    fn an_empty_datagram_is_not_the_end_of_the_stream() {
        let q = Queue::<u32>::new().unwrap();
        {
            let tx = q.ends.tx.read().unwrap();
            let tx = tx.as_ref().unwrap();
            nix::sys::socket::send(tx.as_raw_fd(), &[], MsgFlags::MSG_DONTWAIT).unwrap();
        }
        assert!(matches!(q.try_get(), Err(Error::Empty { .. })));
        q.put(&5).unwrap();
        assert_eq!(q.try_get().unwrap(), 5);
        assert_eq!(q.qsize(), 0);
    }

    /// Fills the socket, then spills `[first, second, third]`.
    fn spill_three(q: &Queue<u64>) -> u64 {
        let mut n = 0;
        while !q.ends.spilled() {
            q.put(&n).unwrap();
            n += 1;
        }
        // `n - 1` is the first spilled item.
        q.put(&n).unwrap();
        q.put(&(n + 1)).unwrap();
        n - 1
    }

    fn drain_socket(q: &Queue<u64>, upto: u64) {
        for i in 0..upto {
            assert_eq!(q.try_get().unwrap(), i);
        }
    }

    #[test]
    fn a_log_shorter_than_a_record_header_is_refused_without_panic() {
        let q = Queue::<u64>::new().unwrap();
        let first = spill_three(&q);
        drain_socket(&q, first);
        // A peer leaves three bytes after the last record: no room for a header.
        let tail = q.ends.word64(at::TAIL);
        let end = tail.load(Ordering::Acquire);
        write_all_at(&q.ends.log, &[1, 2, 3], end).unwrap();
        tail.store(end + 3, Ordering::Release);
        for i in first..first + 3 {
            assert_eq!(q.try_get().unwrap(), i);
        }
        assert!(q.try_get().is_err());
        assert!(matches!(q.try_get(), Err(Error::Empty { .. })));
        assert!(log_is_empty(&q));
    }

    #[test]
    fn a_record_longer_than_the_log_is_skipped_and_released() {
        let q = Queue::<u64>::new().unwrap();
        let first = spill_three(&q);
        drain_socket(&q, first);
        assert_eq!(q.try_get().unwrap(), first);
        // The second record claims more bytes than the log holds.
        let head = q.ends.word64(at::HEAD).load(Ordering::Acquire);
        write_all_at(&q.ends.log, &u32::MAX.to_le_bytes(), head).unwrap();
        let before = q.qsize();
        assert!(q.try_get().is_err());
        // Where the next record starts is unknowable: the rest goes, counted once.
        assert_eq!(q.qsize(), before - 1);
        assert!(matches!(q.try_get(), Err(Error::Empty { .. })));
        assert!(log_is_empty(&q));
        q.put(&7).unwrap();
        assert_eq!(q.try_get().unwrap(), 7);
    }

    #[test]
    fn a_truncated_log_is_skipped_not_wedged() {
        let q = Queue::<u64>::new().unwrap();
        let first = spill_three(&q);
        drain_socket(&q, first);
        // A peer truncates the log under the queue.
        nix::unistd::ftruncate(&q.ends.log, 0).unwrap();
        assert!(q.try_get().is_err());
        assert!(matches!(q.try_get(), Err(Error::Empty { .. })));
        assert!(log_is_empty(&q));
        q.put(&7).unwrap();
        assert_eq!(q.try_get().unwrap(), 7);
    }
}
