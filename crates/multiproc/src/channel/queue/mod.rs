//! [`Queue`], [`JoinableQueue`], [`SimpleQueue`]: many producers, many consumers.
//!
//! One concept a file: the queue handle, its construction, size, closing and wire
//! form (this file); the kernel objects its handles share ([`ends`]) and the words in
//! shared memory ([`at`]); what a producer sends ([`datagram`]); the item count a
//! bounded queue waits on ([`bounded`]); the spill log ([`spill`]); the put side
//! ([`put`]) and the get side ([`get`]); [`JoinableQueue`] ([`joinable`]) and
//! [`SimpleQueue`] ([`simple`]).

mod at;
mod bounded;
mod datagram;
mod ends;
mod get;
mod hook;
mod joinable;
mod put;
mod simple;
mod spill;
#[cfg(test)]
mod tests;

pub use joinable::JoinableQueue;
pub use simple::SimpleQueue;

use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use self::at::{DRAINING, OPEN, STOPPED};
use self::bounded::MAXSIZE_LIMIT;
use self::datagram::{INLINE_MAX, SEND_BUFFER};
use self::ends::{Ends, Received};
use crate::error::{Error, Result};
use crate::sync::RawLock;
use crate::sys::shm as sys_shm;
use crate::wire::fds;

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
