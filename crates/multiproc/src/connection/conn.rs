//! `Connection`: one end of an accepted or connected socket, typed.

use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::handshake::SessionKey;
use crate::error::{Error, Result};
use crate::wire::fds::{self, PassFd};
use crate::wire::{self, FrameDecoder, Received};

const WHAT: &str = "connection";
/// Sends `S`, receives `R`; `Send` and `Sync` whatever they are (no value is held).
type Types<S, R> = (fn(S), fn() -> R);
/// The largest encoding buffer a connection keeps for its next message.
const KEEP_BUFFER: usize = 8 << 20;
/// The body of the frame that carries a handle from [`Connection::send_handle`].
const HANDLE_FRAME: &[u8] = b"multiproc-handle";

/// One end of a connection made by a [`Listener`](super::Listener) or a
/// [`Client`](super::Client): sends values of type `S`, receives values of type `R`
/// (one type both ways unless said: `Connection<T>`).
///
/// Every message is one frame, whether a typed value ([`send`](Self::send)) or raw
/// bytes ([`send_bytes`](Self::send_bytes)); [`recv_bytes`](Self::recv_bytes) returns
/// any message's bytes, so a typed message can be read raw (it is its postcard
/// encoding), as in Python. When the peer closes or its process dies, receiving returns
/// [`Error::Closed`] once everything it sent was read; sending returns it at once.
///
/// Over a Unix socket, values holding OS handles (a [`PipeEnd`](crate::PipeEnd), a
/// [`Queue`](crate::Queue), shared memory...) cross as on a pipe, and
/// [`send_handle`](Self::send_handle) passes any descriptor. Over TCP both are an
/// error that says so.
///
/// A connection is itself a value that can be passed to a child process (as a task
/// argument, or through a pipe or another Unix connection), as Python pickles one.
pub struct Connection<S, R = S> {
    sock: OwnedFd,
    unix: bool,
    peer: String,
    decoder: FrameDecoder,
    out: Vec<u8>,
    session: Option<SessionKey>,
    _t: PhantomData<Types<S, R>>,
}

impl<S, R> std::fmt::Debug for Connection<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("authenticated", &self.session.is_some())
            .field("send", &std::any::type_name::<S>())
            .field("recv", &std::any::type_name::<R>())
            .finish_non_exhaustive()
    }
}

impl<S, R> Connection<S, R> {
    pub(super) fn new(
        sock: OwnedFd,
        unix: bool,
        peer: String,
        session: Option<SessionKey>,
    ) -> Self {
        Connection {
            sock,
            unix,
            peer,
            decoder: FrameDecoder::new(wire::max_frame_size()),
            out: Vec::new(),
            session,
            _t: PhantomData,
        }
    }

    /// Who is at the other end: the address connected to, or for an accepted
    /// connection the peer's TCP address or (Unix) its process id.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// `true` if the peer proved it holds the key.
    pub fn is_authenticated(&self) -> bool {
        self.session.is_some()
    }

    /// `true` over a Unix socket (which carries OS handles), `false` over TCP.
    pub fn is_unix(&self) -> bool {
        self.unix
    }

    /// A secret both ends derived from the key and both handshake challenges, unique to
    /// this connection: for a layer above that signs each message (managers).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn session_key(&self) -> Option<&SessionKey> {
        self.session.as_ref()
    }

    /// Closes the connection (as dropping it does): the peer's next receive returns
    /// [`Error::Closed`] once it has read what was sent.
    pub fn close(self) {}

    /// Sends one message of raw bytes; the peer reads it with
    /// [`recv_bytes`](Self::recv_bytes). Blocks while the peer's buffer is full.
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        wire::send_frame_with_fds(self.sock.as_fd(), bytes, &[], wire::max_frame_size())
            .map_err(|e| super::super::channel::closed_if_peer_gone(e, WHAT))
    }

    /// Receives one message as bytes, waiting as long as it takes.
    pub fn recv_bytes(&mut self) -> Result<Vec<u8>> {
        self.frame(None)?
            .map(|(bytes, _fds)| bytes)
            .ok_or(Error::Closed { what: WHAT })
    }

    /// Like [`recv_bytes`](Self::recv_bytes), waiting at most `timeout`
    /// ([`Error::Timeout`]); a message partly received by then is kept for the next call.
    pub fn recv_bytes_timeout(&mut self, timeout: Duration) -> Result<Vec<u8>> {
        let deadline = Instant::now().checked_add(timeout);
        self.frame(deadline)?
            .map(|(bytes, _fds)| bytes)
            .ok_or_else(|| timed_out(timeout))
    }

    /// Receives one message into `buf` from `offset` on and returns its length (Python's
    /// `recv_bytes_into`). A message longer than `buf.len() - offset` is not lost: it
    /// comes back whole in [`Error::BufferTooShort`].
    pub fn recv_bytes_into(&mut self, buf: &mut [u8], offset: usize) -> Result<usize> {
        let Some(room) = buf.len().checked_sub(offset) else {
            return Err(Error::Connection {
                address: self.peer.clone(),
                detail: format!(
                    "recv_bytes_into: offset {offset} is past the end of the {}-byte buffer",
                    buf.len()
                ),
            });
        };
        let message = self.recv_bytes()?;
        if message.len() > room {
            return Err(Error::BufferTooShort {
                room,
                message,
            });
        }
        buf[offset..offset + message.len()].copy_from_slice(&message);
        let n = message.len();
        self.decoder.recycle(message);
        Ok(n)
    }

    /// Spins for at most `spin`, looking for a message without sleeping, and tells
    /// whether one is there. For a request-reply loop: on a machine whose idle CPUs
    /// take tens of µs to wake, a reply that comes within a few µs is taken without the
    /// sleep and the wake-up (`recv` after it then returns at once); after `spin` the
    /// caller blocks as usual, so an idle connection costs no CPU past the window.
    pub(crate) fn spin_for_message(&self, spin: Duration) -> bool {
        let start = Instant::now();
        loop {
            if !self.decoder.is_idle() || self.poll(Duration::ZERO).unwrap_or(true) {
                return true;
            }
            if start.elapsed() >= spin {
                return false;
            }
            // Yield, not just spin: when the peer shares this CPU, it must run for the
            // message to come at all.
            std::thread::yield_now();
        }
    }

    /// Whether a receive would return without waiting (a message is arriving, or the
    /// peer closed), waiting at most `timeout` for that.
    pub fn poll(&self, timeout: Duration) -> Result<bool> {
        wire::wait_readable(self.sock.as_fd(), Instant::now().checked_add(timeout))
            .map_err(|e| Error::io("polling a connection", e))
    }

    /// Passes an OS handle (any descriptor: a file, a pipe, a socket) to the peer, which
    /// takes it with [`recv_handle`](Self::recv_handle) and gets its own descriptor for
    /// the same open file. Unix sockets only: over TCP this is an error.
    pub fn send_handle(&mut self, handle: impl AsFd) -> Result<()> {
        self.require_unix("send an OS handle")?;
        let dup = handle
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::io("duplicating a handle to send", e))?;
        wire::send_frame_with_fds(
            self.sock.as_fd(),
            HANDLE_FRAME,
            &[dup],
            wire::max_frame_size(),
        )
        .map_err(|e| super::super::channel::closed_if_peer_gone(e, WHAT))
    }

    /// Receives a handle sent with [`send_handle`](Self::send_handle). Unix sockets
    /// only. A message that is not a handle is an error (and is consumed).
    pub fn recv_handle(&mut self) -> Result<OwnedFd> {
        self.require_unix("receive an OS handle")?;
        let (bytes, mut fds) = self.frame(None)?.ok_or(Error::Closed { what: WHAT })?;
        if bytes != HANDLE_FRAME || fds.len() != 1 {
            return Err(Error::Protocol {
                pid: 0,
                detail: format!(
                    "recv_handle on the connection with {}: the next message is not a handle \
                     sent with send_handle ({} bytes, {} handles)",
                    self.peer,
                    bytes.len(),
                    fds.len()
                ),
            });
        }
        Ok(fds.remove(0))
    }

    fn require_unix(&self, to: &str) -> Result<()> {
        if self.unix {
            return Ok(());
        }
        Err(Error::Connection {
            address: self.peer.clone(),
            detail: format!(
                "cannot {to} over TCP: OS handles pass only over Unix sockets (a path or an \
                 abstract address) between processes of one machine"
            ),
        })
    }

    /// One frame. `Ok(None)`: timed out. `Err(Closed)` at end of stream.
    fn frame(&mut self, deadline: Option<Instant>) -> Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
        match wire::recv_frame(self.sock.as_fd(), &mut self.decoder, deadline)
            .map_err(|e| super::super::channel::closed_if_peer_gone(e, WHAT))?
        {
            Received::Frame(bytes, fds) => Ok(Some((bytes, fds))),
            Received::Closed => Err(Error::Closed { what: WHAT }),
            Received::TimedOut => Ok(None),
        }
    }
}

fn timed_out(timeout: Duration) -> Error {
    Error::Timeout {
        what: "a message on a connection".into(),
        timeout,
    }
}

impl<S: Serialize, R> Connection<S, R> {
    /// Sends one value; blocks while the peer's buffer is full.
    pub fn send(&mut self, value: &S) -> Result<()> {
        let mut out = std::mem::take(&mut self.out);
        let (encoded, fds) = fds::capture(|| wire::encode_reusing(value, &mut out));
        let sent = encoded.and_then(|()| {
            if !fds.is_empty() {
                self.require_unix("send a value holding an OS handle (a pipe end, a queue...)")?;
            }
            wire::send_frame_with_fds(self.sock.as_fd(), &out, &fds, wire::max_frame_size())
                .map_err(|e| super::super::channel::closed_if_peer_gone(e, WHAT))
        });
        if out.capacity() <= KEEP_BUFFER {
            self.out = out;
        }
        sent
    }
}

impl<S, R: DeserializeOwned> Connection<S, R> {
    /// Receives one value, waiting as long as it takes. [`Error::Closed`] once the peer
    /// is gone and everything it sent was received.
    pub fn recv(&mut self) -> Result<R> {
        self.recv_until(None)?.ok_or(Error::Closed { what: WHAT })
    }

    /// Like [`recv`](Self::recv), waiting at most `timeout` ([`Error::Timeout`]); a
    /// message partly received by then is kept for the next call.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<R> {
        let deadline = Instant::now().checked_add(timeout);
        self.recv_until(deadline)?.ok_or_else(|| timed_out(timeout))
    }

    /// Receives a value if a whole one is available now: `Ok(None)` otherwise.
    pub fn try_recv(&mut self) -> Result<Option<R>> {
        self.recv_until(Some(Instant::now()))
    }

    fn recv_until(&mut self, deadline: Option<Instant>) -> Result<Option<R>> {
        let Some((bytes, fds)) = self.frame(deadline)? else {
            return Ok(None);
        };
        let value = fds::provide(fds, || wire::decode(&bytes));
        self.decoder.recycle(bytes);
        value.map(Some)
    }
}

/// The socket: readable when a message is arriving or the peer closed, which is how
/// [`crate::wait_ready`] waits for a connection. A connection never holds a whole
/// message it read ahead, so the socket tells the whole truth.
///
/// Read only through the `Connection`; bytes taken from the socket directly are lost.
impl<S, R> AsFd for Connection<S, R> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// What travels when a connection is passed to another process: its socket, and what
/// the handshake established (the session key crosses only a Unix socket to a process
/// of this program, inside the message that carries the socket).
#[derive(Serialize, Deserialize)]
struct Wire {
    sock: PassFd,
    unix: bool,
    peer: String,
    session: Option<SessionKey>,
}

impl<S, R> Serialize for Connection<S, R> {
    fn serialize<Ser: Serializer>(&self, s: Ser) -> std::result::Result<Ser::Ok, Ser::Error> {
        use serde::ser::Error as _;
        if !self.decoder.is_idle() {
            return Err(Ser::Error::custom(
                "a connection holding a partly received message cannot be sent",
            ));
        }
        let sock = self
            .sock
            .try_clone()
            .map_err(|e| Ser::Error::custom(format!("cannot duplicate a connection: {e}")))?;
        Wire {
            sock: PassFd::new(sock),
            unix: self.unix,
            peer: self.peer.clone(),
            session: self.session,
        }
        .serialize(s)
    }
}

impl<'de, S, R> Deserialize<'de> for Connection<S, R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        Ok(Connection::new(w.sock.0, w.unix, w.peer, w.session))
    }
}
