//! `Pipe`: two typed, duplex ends over a Unix stream socket pair.

use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::wire::fds::{self, PassFd};
use crate::wire::{self, FrameDecoder, Received};

const WHAT: &str = "pipe";
/// Socket buffer size requested for each end.
const SOCKET_BUFFER: usize = 1 << 20;
/// The largest encoding buffer a `PipeEnd` keeps for its next message.
const KEEP_BUFFER: usize = 8 << 20;

/// Makes connected pipe ends (Python's `multiprocessing.Pipe()`).
///
/// ```
/// use multiproc::{Pipe, PipeEnd, Process};
///
/// fn echo(mut end: PipeEnd<String>) {
///     while let Ok(s) = end.recv() {
///         end.send(&s.to_uppercase()).unwrap();
///     }
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let (mut here, there) = Pipe::<String>::new()?;
/// let p = Process::start(echo, there)?; // the child's end moves to the child
/// here.send(&"hello".to_string())?;
/// assert_eq!(here.recv()?, "HELLO");
/// drop(here); // the child sees the pipe closed and returns
/// p.join()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Pipe<T>(PhantomData<fn(T) -> T>);

impl<T: Serialize + DeserializeOwned> Pipe<T> {
    /// Two connected, duplex ends: what one sends, the other receives, both ways.
    #[allow(clippy::new_ret_no_self)] // Python's `Pipe()`: a pair of ends, not a `Pipe`
    pub fn new() -> Result<(PipeEnd<T>, PipeEnd<T>)> {
        let (a, b) = crate::sys::fd::pair(nix::sys::socket::SockType::Stream)
            .map_err(|e| Error::io("creating a pipe", e))?;
        Ok((PipeEnd::from_fd(a), PipeEnd::from_fd(b)))
    }

    /// A one-way pipe (Python's `Pipe(duplex=False)`): what the writer sends, the
    /// reader receives. Returned reader first, as Python's `r, w = Pipe(False)`.
    ///
    /// Either end can be passed to a child as a [`PipeEnd`] can. When the writer is
    /// dropped (or its process ends) the reader gets [`Error::Closed`] after the last
    /// message; when the reader is gone, [`send`](PipeWriter::send) returns it.
    ///
    /// ```
    /// use multiproc::{Pipe, PipeWriter, Process};
    ///
    /// fn produce(mut w: PipeWriter<u32>) {
    ///     for i in 0..3 {
    ///         w.send(&i).unwrap();
    ///     }
    /// }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let (mut r, w) = Pipe::<u32>::one_way()?;
    /// let p = Process::start(produce, w)?;
    /// let got: Vec<u32> = std::iter::from_fn(|| r.recv().ok()).collect();
    /// assert_eq!(got, [0, 1, 2]);
    /// p.join()?;
    /// # Ok(()) }
    /// ```
    pub fn one_way() -> Result<(PipeReader<T>, PipeWriter<T>)> {
        let (r, w) = crate::sys::fd::pair(nix::sys::socket::SockType::Stream)
            .map_err(|e| Error::io("creating a pipe", e))?;
        // The direction is the kernel's: it stays with the sockets wherever they go.
        nix::sys::socket::shutdown(std::os::fd::AsRawFd::as_raw_fd(&r), nix::sys::socket::Shutdown::Write)
            .map_err(|e| Error::io("making a pipe one-way", e))?;
        nix::sys::socket::shutdown(std::os::fd::AsRawFd::as_raw_fd(&w), nix::sys::socket::Shutdown::Read)
            .map_err(|e| Error::io("making a pipe one-way", e))?;
        Ok((
            PipeReader(PipeEnd::from_fd(r)),
            PipeWriter(PipeEnd::from_fd(w)),
        ))
    }
}

/// One end of a [`Pipe`]: send and receive values of type `T`.
///
/// Each message is one frame on a stream socket, so a message of any size up to the
/// maximum frame size ([`crate::set_max_frame_size`], 1 GiB by default) crosses whole;
/// values holding OS handles (another `PipeEnd`, a [`Queue`](crate::Queue), shared
/// memory...) cross too. When the other end is dropped, or its process exits or is
/// killed, [`recv`](Self::recv) and [`send`](Self::send) return [`Error::Closed`]:
/// never a hang.
///
/// An end is a value: pass it to a child as (part of) a task argument, and drop your
/// copy of it so that the child's exit is seen as a close.
///
/// A child holds only the ends its task was given, under every start method: an end
/// left open in the parent does not leak into a child started meanwhile (not even
/// under [`StartMethod::Fork`](crate::StartMethod::Fork), unlike Python's `fork`), so
/// dropping the last real copy is always seen as a close.
pub struct PipeEnd<T> {
    sock: OwnedFd,
    decoder: FrameDecoder,
    /// The last message's encoding buffer, reused (kept only while small enough).
    out: Vec<u8>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> std::fmt::Debug for PipeEnd<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipeEnd")
            .field("type", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

impl<T: Serialize + DeserializeOwned> PipeEnd<T> {
    fn from_fd(sock: OwnedFd) -> Self {
        // Larger socket buffers mean fewer sleeps and wake-ups per large message; the
        // kernel caps the request (net.core.wmem_max/rmem_max), and any size works.
        let _ =
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::SndBuf, &SOCKET_BUFFER);
        let _ =
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBuf, &SOCKET_BUFFER);
        PipeEnd {
            sock,
            decoder: FrameDecoder::new(wire::max_frame_size()),
            out: Vec::new(),
            _t: PhantomData,
        }
    }

    /// Sends one value; blocks while the other side's buffer is full.
    pub fn send(&mut self, value: &T) -> Result<()> {
        let mut out = std::mem::take(&mut self.out);
        let (encoded, fds) = fds::capture(|| wire::encode_reusing(value, &mut out));
        let sent = encoded.and_then(|()| {
            wire::send_frame_with_fds(self.sock.as_fd(), &out, &fds, wire::max_frame_size())
                .map_err(|e| super::closed_if_peer_gone(e, WHAT))
        });
        if out.capacity() <= KEEP_BUFFER {
            self.out = out;
        }
        sent
    }

    /// Receives one value, waiting as long as it takes. [`Error::Closed`] once the other
    /// end is gone and everything it sent was received.
    pub fn recv(&mut self) -> Result<T> {
        self.recv_until(None)?.ok_or(Error::Closed { what: WHAT })
    }

    /// Like [`recv`](Self::recv), waiting at most `timeout` ([`Error::Timeout`]). A
    /// message that was partly received when the time ran out is kept for the next call.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T> {
        let deadline = Instant::now().checked_add(timeout);
        self.recv_until(deadline)?.ok_or_else(|| Error::Timeout {
            what: "a message on a pipe".into(),
            timeout,
        })
    }

    /// Receives a value if a whole one is available now: `Ok(None)` otherwise.
    pub fn try_recv(&mut self) -> Result<Option<T>> {
        self.recv_until(Some(Instant::now()))
    }

    /// Whether [`recv`](Self::recv) would return without waiting (a message, or the
    /// news that the other end closed), waiting at most `timeout` for that.
    pub fn poll(&self, timeout: Duration) -> Result<bool> {
        wire::wait_readable(self.sock.as_fd(), Instant::now().checked_add(timeout))
            .map_err(|e| Error::io("polling a pipe", e))
    }

    /// `Ok(None)`: timed out. `Err(Closed)` at end of stream.
    fn recv_until(&mut self, deadline: Option<Instant>) -> Result<Option<T>> {
        match wire::recv_frame(self.sock.as_fd(), &mut self.decoder, deadline)
            .map_err(|e| super::closed_if_peer_gone(e, WHAT))?
        {
            Received::Frame(bytes, fds) => {
                let value = fds::provide(fds, || wire::decode(&bytes));
                self.decoder.recycle(bytes);
                value.map(Some)
            }
            Received::Closed => Err(Error::Closed { what: WHAT }),
            Received::TimedOut => Ok(None),
        }
    }
}

/// The end's socket: readable when a message is arriving or the other end closed
/// (then [`recv`](PipeEnd::recv) does not wait for one to start), which is how
/// [`crate::wait_ready`] waits for a pipe. An end never holds a whole message that it
/// read ahead, so the socket tells the whole truth.
///
/// Read only through the `PipeEnd`; bytes taken from the socket directly are lost.
impl<T> AsFd for PipeEnd<T> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl<T> Serialize for PipeEnd<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        if !self.decoder.is_idle() {
            return Err(S::Error::custom(
                "a pipe end holding a partly received message cannot be sent",
            ));
        }
        let fd = self
            .sock
            .try_clone()
            .map_err(|e| S::Error::custom(format!("cannot duplicate a pipe end: {e}")))?;
        PassFd::new(fd).serialize(s)
    }
}

impl<'de, T: Serialize + DeserializeOwned> Deserialize<'de> for PipeEnd<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let fd = PassFd::deserialize(d)?;
        Ok(PipeEnd::from_fd(fd.0))
    }
}

/// The receiving end of a one-way pipe ([`Pipe::one_way`]). Implements [`AsFd`]:
/// [`crate::wait_ready`] sees it ready when a message is arriving or the writer closed.
pub struct PipeReader<T>(PipeEnd<T>);

/// The sending end of a one-way pipe ([`Pipe::one_way`]).
///
/// Unlike the reader, a writer does not implement [`AsFd`], so it cannot be given to
/// [`crate::wait_ready`]: its socket's receiving side is shut, so it would always look
/// ready, and what a writer waits for (room to write) is not what `wait_ready` waits
/// for. A [`send`](Self::send) blocks while the reader's buffer is full, and fails
/// with [`Error::Closed`] once the reader is gone. (Python's `wait` on a write-only
/// `Connection` is not meaningful either.)
pub struct PipeWriter<T>(PipeEnd<T>);

impl<T: Serialize + DeserializeOwned> PipeReader<T> {
    /// Receives one value, waiting as long as it takes; [`Error::Closed`] once the
    /// writer is gone and everything it sent was received.
    pub fn recv(&mut self) -> Result<T> {
        self.0.recv()
    }

    /// Like [`recv`](Self::recv), waiting at most `timeout` ([`Error::Timeout`]).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T> {
        self.0.recv_timeout(timeout)
    }

    /// Receives a value if a whole one is available now: `Ok(None)` otherwise.
    pub fn try_recv(&mut self) -> Result<Option<T>> {
        self.0.try_recv()
    }

    /// Whether [`recv`](Self::recv) would return without waiting, waiting at most
    /// `timeout` for that.
    pub fn poll(&self, timeout: Duration) -> Result<bool> {
        self.0.poll(timeout)
    }
}

impl<T: Serialize + DeserializeOwned> PipeWriter<T> {
    /// Sends one value; blocks while the reader's buffer is full.
    pub fn send(&mut self, value: &T) -> Result<()> {
        self.0.send(value)
    }
}

macro_rules! one_way_end {
    ($ty:ident, $name:literal) => {
        impl<T> std::fmt::Debug for $ty<T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct($name)
                    .field("type", &std::any::type_name::<T>())
                    .finish_non_exhaustive()
            }
        }

        impl<T> Serialize for $ty<T> {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                self.0.serialize(s)
            }
        }

        impl<'de, T: Serialize + DeserializeOwned> Deserialize<'de> for $ty<T> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                Ok($ty(PipeEnd::deserialize(d)?))
            }
        }
    };
}

/// The reader's socket (see [`PipeEnd`]'s `AsFd`): readable when a message is arriving
/// or the writer closed, which is how [`crate::wait_ready`] waits for it.
impl<T> AsFd for PipeReader<T> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

one_way_end!(PipeReader, "PipeReader");
one_way_end!(PipeWriter, "PipeWriter");
