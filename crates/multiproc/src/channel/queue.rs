//! `Queue`, `JoinableQueue`, `SimpleQueue`: many producers, many consumers.

use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::sync::Words;
use crate::sys::futex;
use crate::sys::shm::{self as sys_shm, Mapping};
use crate::wire::{self, fds};

const WHAT: &str = "queue";

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

/// The two sockets shared by every handle of one queue.
#[derive(Debug)]
struct Ends {
    /// Producers send here. `None` after `close`.
    tx: RwLock<Option<OwnedFd>>,
    /// Consumers receive here.
    rx: OwnedFd,
    /// Encoded messages up to this size go inline (see [`inline_limit`]).
    inline_max: usize,
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
/// ## Design: one SOCK_SEQPACKET socket pair, large messages in sealed memfds
///
/// Every handle, in every process, holds the same two sockets of one Unix
/// `SOCK_SEQPACKET` pair: producers send on one, consumers receive on the other. The
/// kernel delivers each datagram whole to exactly one `recvmsg`, so
///
/// - no message is ever delivered twice or interleaved with another, with no lock
///   between processes at all;
/// - a producer killed mid-`put` either queued its whole message or nothing: there is
///   no half-written frame and no lock left held to wedge the others;
/// - the queue is bounded by the kernel's socket buffer: `put` blocks (or times out, or
///   returns [`Error::Full`]) when consumers fall behind — back-pressure, and no
///   hidden feeder thread.
///
/// A datagram must fit the socket buffer, so a message travels inline only up to a
/// limit set by the send buffer the kernel granted (`net.core.wmem_max`): at most a
/// quarter of it, never less than 64 KiB nor more than 2 MiB. With a large enough
/// buffer a 1 MiB message is one datagram: two copies in the kernel, no page
/// allocation, no mapping. A larger message (or one the kernel cannot allocate a
/// datagram for) travels in a `memfd`: the producer writes the encoded bytes there, seals it against any further
/// change (`F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW`) and sends only the descriptor
/// in a one-byte datagram. The consumer maps it and decodes in place. The memory
/// belongs to the kernel object, not the producer, so the producer can exit at once,
/// and a consumer refuses a memfd that is not sealed (a peer could otherwise truncate
/// it under the mapping).
///
/// A consumer killed between receiving a message and returning it takes that message
/// with it, as in any queue.
///
/// ## Closing
///
/// [`Queue::close`] gives up this process's ability to put. Once every handle in
/// every process has closed (or its process has ended), consumers drain what is left
/// and then get [`Error::Closed`] instead of waiting forever.
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
            .finish_non_exhaustive()
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// A new, empty queue.
    pub fn new() -> Result<Self> {
        let (tx, rx) = crate::sys::fd::pair(nix::sys::socket::SockType::SeqPacket)
            .map_err(|e| Error::io("creating a queue", e))?;
        // A larger buffer holds more small messages before producers block; the
        // kernel caps the request, and a smaller buffer still works.
        let _ = nix::sys::socket::setsockopt(&tx, nix::sys::socket::sockopt::SndBuf, &SEND_BUFFER);
        Ok(Queue {
            ends: Arc::new(Ends {
                inline_max: inline_limit(&tx),
                tx: RwLock::new(Some(tx)),
                rx,
            }),
            _t: PhantomData,
        })
    }

    /// Puts `item`, waiting while the queue is full.
    pub fn put(&self, item: &T) -> Result<()> {
        self.put_until(item, None, Duration::ZERO)
    }

    /// Puts `item`, waiting at most `timeout` for room ([`Error::Full`] after that).
    pub fn put_timeout(&self, item: &T, timeout: Duration) -> Result<()> {
        self.put_until(item, Instant::now().checked_add(timeout), timeout)
    }

    /// Puts `item` if there is room now ([`Error::Full`] otherwise).
    pub fn try_put(&self, item: &T) -> Result<()> {
        self.put_until(item, Some(Instant::now()), Duration::ZERO)
    }

    fn put_until(&self, item: &T, deadline: Option<Instant>, _timeout: Duration) -> Result<()> {
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
        let guard = self.ends.tx.read().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = guard.as_ref() else {
            return Err(Error::Closed { what: WHAT });
        };
        let user: Vec<RawFd> = user_fds.iter().map(|f| f.as_raw_fd()).collect();
        if bytes.len() <= self.ends.inline_max {
            match send(tx, &[INLINE], bytes, &user, deadline) {
                // The kernel could not take a datagram this large (a smaller buffer
                // than it granted at first, or no contiguous memory): use a memfd.
                Err(Failed::Os(Errno::EMSGSIZE | Errno::ENOBUFS | Errno::ENOMEM))
                    if bytes.len() > INLINE_MIN => {}
                r => return sent(r),
            }
        }
        let memfd = to_sealed_memfd(bytes)?;
        let mut raw: Vec<RawFd> = Vec::with_capacity(user.len() + 1);
        raw.push(memfd.as_raw_fd());
        raw.extend(user);
        sent(send(tx, &[IN_MEMFD], &[], &raw, deadline))
    }

    /// Takes the next item, waiting as long as it takes. [`Error::Closed`] once every
    /// handle has closed and the queue is drained.
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

    /// Whether the queue looks empty now (racy by nature: another process may put or
    /// take an item at once).
    pub fn is_empty(&self) -> bool {
        !wire::wait_readable(self.ends.rx.as_fd(), Some(Instant::now())).unwrap_or(false)
    }

    /// Gives up putting from this process (every clone of this handle): consumers see
    /// [`Error::Closed`] once all handles everywhere have closed and the queue is
    /// drained. Getting still works.
    ///
    /// Consumers count too: a consumer's handle could put, so it keeps the queue open
    /// for itself. A consumer that reads until `Closed` must close its own handle first.
    pub fn close(&self) {
        let mut tx = self.ends.tx.write().unwrap_or_else(|p| p.into_inner());
        *tx = None;
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
        let rx = self.ends.rx.as_fd();
        loop {
            if !wire::wait_readable(rx, deadline)
                .map_err(|e| Error::io("waiting for a queue item", e))?
            {
                return Ok(None);
            }
            let (n, mut received) = match crate::sys::fd::recv_fds(rx, buf, true) {
                Ok(r) => r,
                // Another consumer took it first.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(Error::io("taking a message from a queue", e)),
            };
            if n == 0 {
                // End of stream: every producer side is closed and nothing is left.
                return Err(Error::Closed { what: WHAT });
            }
            if n > INLINE_MAX + 1 {
                return Err(bad("an oversized datagram"));
            }
            return match buf[0] {
                INLINE => fds::provide(received, || wire::decode(&buf[1..n])).map(Some),
                IN_MEMFD if n == 1 && !received.is_empty() => {
                    let memfd = received.remove(0);
                    let map = map_sealed(memfd)?;
                    fds::provide(received, || wire::decode(map.sealed_bytes())).map(Some)
                }
                _ => Err(bad("a malformed datagram")),
            };
        }
    }
}

/// Why [`send`] did not send.
enum Failed {
    /// `sendmsg` failed with this.
    Os(Errno),
    /// Anything else (no room before the deadline, a failed wait).
    Other(Error),
}

/// Sends one datagram, `kind` then `payload`, with `fds` attached, waiting for room
/// until `deadline`.
fn send(
    tx: &OwnedFd,
    kind: &[u8; 1],
    payload: &[u8],
    fds: &[RawFd],
    deadline: Option<Instant>,
) -> std::result::Result<(), Failed> {
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
            Err(Errno::EAGAIN) => match wait_writable(tx.as_fd(), deadline) {
                Ok(true) => {}
                Ok(false) => return Err(Failed::Other(Error::Full { what: WHAT })),
                Err(e) => return Err(Failed::Other(e)),
            },
            Err(e) => return Err(Failed::Os(e)),
        }
    }
}

/// The outcome of a `put` from that of its [`send`].
fn sent(r: std::result::Result<(), Failed>) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(Failed::Os(Errno::EPIPE | Errno::ECONNRESET)) => Err(Error::Closed { what: WHAT }),
        Err(Failed::Os(e)) => Err(Error::io("putting a message on a queue", e)),
        Err(Failed::Other(e)) => Err(e),
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

fn wait_writable(fd: std::os::fd::BorrowedFd<'_>, deadline: Option<Instant>) -> Result<bool> {
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

/// The consumers' socket: readable when an item is in the queue or every producer has
/// closed (then [`get`](Queue::get) does not wait), which is how [`crate::wait_ready`]
/// waits for a queue. A handle never buffers items in this process, so the socket tells
/// the whole truth, but other consumers may take the item first: after a wait, use
/// [`try_get`](Queue::try_get) or a timeout.
///
/// Read only through the `Queue`; a datagram taken from the socket directly is lost.
impl<T> AsFd for Queue<T> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.ends.rx.as_fd()
    }
}

/// The socket of the underlying [`Queue`]; see its `AsFd`.
impl<T> AsFd for JoinableQueue<T> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.queue.as_fd()
    }
}

/// The socket of the underlying [`Queue`]; see its `AsFd`.
impl<T> AsFd for SimpleQueue<T> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.queue.as_fd()
    }
}

/// What a queue handle looks like on the wire: the two sockets (the put side absent
/// once closed).
#[derive(Serialize, Deserialize)]
struct WireQueue {
    tx: Option<fds::PassFd>,
    rx: fds::PassFd,
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map(fds::PassFd::new)
                .map_err(|e| S::Error::custom(format!("cannot duplicate a queue handle: {e}")))
        };
        let tx = self.ends.tx.read().unwrap_or_else(|p| p.into_inner());
        WireQueue {
            tx: tx.as_ref().map(dup).transpose()?,
            rx: dup(&self.ends.rx)?,
        }
        .serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let w = WireQueue::deserialize(d)?;
        let tx = w.tx.map(|f| f.0);
        Ok(Queue {
            ends: Arc::new(Ends {
                inline_max: tx.as_ref().map_or(INLINE_MIN, inline_limit),
                tx: RwLock::new(tx),
                rx: w.rx.0,
            }),
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
    /// A new, empty queue.
    pub fn new() -> Result<Self> {
        Ok(JoinableQueue {
            queue: Queue::new()?,
            unfinished: Words::new("multiproc-joinable-queue")?,
        })
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

    /// Whether the queue looks empty now.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
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
}
