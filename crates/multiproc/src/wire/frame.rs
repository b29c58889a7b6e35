//! Length-prefixed frames over a stream socket.
//!
//! [`FrameDecoder`] is the I/O-free core (what the fuzz target drives); `recv_frame`
//! and `send_frame_with_fds` move it over a socket with a deadline.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

use crate::error::{Error, Result};

/// Bytes in a frame header: the body length as a little-endian `u64`.
pub const HEADER_LEN: usize = 8;

/// The first allocation for a body; it then doubles as bytes arrive, so that memory
/// follows what was received, not what a (possibly garbage) header claims.
const FIRST_CHUNK: usize = 1 << 20;

/// The largest body [`FrameDecoder::recycle`] keeps for reuse.
const RECYCLE_MAX: usize = 8 << 20;

/// Why a byte stream is not a valid sequence of frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The header announced more than the maximum frame size.
    TooLarge {
        /// Announced length.
        len: u64,
        /// Limit in force.
        max: u64,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max} bytes")
            }
        }
    }
}

impl From<FrameError> for Error {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::TooLarge { len, max } => Error::FrameTooLarge {
                what: "a frame".into(),
                len,
                max,
            },
        }
    }
}

/// Reassembles frames from bytes as they arrive, without reading ahead of the
/// current frame (so a socket can change hands between frames).
///
/// ```
/// use multiproc::wire::FrameDecoder;
/// let mut d = FrameDecoder::new(1024);
/// let stream = [3u8, 0, 0, 0, 0, 0, 0, 0, b'a', b'b', b'c'];
/// let mut frames = Vec::new();
/// let mut rest = &stream[..];
/// while !rest.is_empty() {
///     let spare = d.spare();
///     let n = spare.len().min(rest.len());
///     spare[..n].copy_from_slice(&rest[..n]);
///     rest = &rest[n..];
///     if let Some(f) = d.advance(n).unwrap() { frames.push(f); }
/// }
/// assert_eq!(frames, vec![b"abc".to_vec()]);
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    max: usize,
    header: [u8; HEADER_LEN],
    header_filled: usize,
    expected: usize,
    body: Vec<u8>,
    body_filled: usize,
    /// A buffer given back by [`recycle`](Self::recycle), reused for the next body
    /// (its old contents are overwritten, so it need not be zeroed again).
    recycled: Vec<u8>,
    /// Descriptors that arrived with the current frame.
    fds: Vec<OwnedFd>,
    /// Why the stream behind this decoder can no longer be read (see `recv_frame`).
    broken: Option<Error>,
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            max,
            header: [0; HEADER_LEN],
            header_filled: 0,
            expected: 0,
            body: Vec::new(),
            body_filled: 0,
            recycled: Vec::new(),
            fds: Vec::new(),
            broken: None,
        }
    }

    /// `true` between frames: no partial header or body is held.
    pub fn is_idle(&self) -> bool {
        self.header_filled == 0
    }

    /// Where the next bytes go. Never longer than what the current frame still needs.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.header_filled < HEADER_LEN {
            return &mut self.header[self.header_filled..];
        }
        if self.body_filled == self.body.len() {
            let grown = (self.body.len() * 2).clamp(FIRST_CHUNK.min(self.expected), self.expected);
            self.body.resize(grown, 0);
        }
        &mut self.body[self.body_filled..]
    }

    /// Records that `n` bytes were written at the start of [`spare`](Self::spare).
    /// Returns the frame's body once it is complete.
    pub fn advance(&mut self, n: usize) -> Result<Option<Vec<u8>>, FrameError> {
        if self.header_filled < HEADER_LEN {
            self.header_filled = (self.header_filled + n).min(HEADER_LEN);
            if self.header_filled < HEADER_LEN {
                return Ok(None);
            }
            let len = u64::from_le_bytes(self.header);
            if len > self.max as u64 {
                self.header_filled = 0;
                return Err(FrameError::TooLarge {
                    len,
                    max: self.max as u64,
                });
            }
            // Fits in usize: bounded by `max`.
            self.expected = len as usize;
            self.body = std::mem::take(&mut self.recycled);
            self.body.truncate(self.expected);
            self.body_filled = 0;
        } else {
            self.body_filled = (self.body_filled + n).min(self.body.len());
        }
        if self.body_filled < self.expected {
            return Ok(None);
        }
        self.header_filled = 0;
        let mut body = std::mem::take(&mut self.body);
        body.truncate(self.expected);
        Ok(Some(body))
    }

    /// Gives back the body of a frame that was consumed, so that the next frame is
    /// received into it instead of a new, zeroed allocation. Buffers over 8 MiB are
    /// dropped, so a decoder does not keep a huge buffer alive for small frames.
    pub fn recycle(&mut self, body: Vec<u8>) {
        if body.len() <= RECYCLE_MAX && body.len() > self.recycled.len() {
            self.recycled = body;
        }
    }

    /// Bytes of the current frame received so far (header included).
    pub fn partial_len(&self) -> usize {
        if self.header_filled < HEADER_LEN {
            // Between frames `body_filled` still counts the previous frame's body.
            self.header_filled
        } else {
            HEADER_LEN + self.body_filled
        }
    }
}

/// What one attempt to read a frame produced.
#[derive(Debug)]
pub(crate) enum Received {
    /// A whole frame, and the descriptors that came with it.
    Frame(Vec<u8>, Vec<OwnedFd>),
    /// The peer closed the stream between frames.
    Closed,
    /// The deadline passed; the decoder keeps any partial frame for the next call.
    TimedOut,
}

/// The `poll` timeout that ends at `deadline` (none: wait forever), as nix takes it;
/// the conversion itself is [`crate::sys::poll::timeout_ms`].
pub(crate) fn poll_timeout(deadline: Option<Instant>) -> PollTimeout {
    match crate::sys::poll::timeout_ms(deadline) {
        ms if ms < 0 => PollTimeout::NONE,
        ms => PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
    }
}

/// Waits until `fd` is readable or the deadline passes. `Ok(false)` means timed out.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> io::Result<bool> {
    loop {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, poll_timeout(deadline)) {
            Ok(0) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(false);
                }
            }
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads one frame from a stream socket, waiting at most until `deadline`.
///
/// A frame over the limit (its body stays unread on the socket) or one with more
/// descriptors than a frame may carry (the bytes that brought them were not counted)
/// leaves the stream at an unknown place inside a frame: whatever came next would be
/// read as garbage. So the decoder is marked broken, and this and every later call on
/// it returns the same error.
pub(crate) fn recv_frame(
    fd: BorrowedFd<'_>,
    decoder: &mut FrameDecoder,
    deadline: Option<Instant>,
) -> Result<Received> {
    if let Some(e) = &decoder.broken {
        return Err(e.clone_shallow());
    }
    let r = recv_frame_once(fd, decoder, deadline);
    if let Err(e @ (Error::FrameTooLarge { .. } | Error::Protocol { .. })) = &r {
        decoder.broken = Some(e.clone_shallow());
    }
    r
}

fn recv_frame_once(
    fd: BorrowedFd<'_>,
    decoder: &mut FrameDecoder,
    deadline: Option<Instant>,
) -> Result<Received> {
    // Try to read first and poll only when nothing is there: a busy stream costs one
    // syscall per read instead of two.
    let mut ready = true;
    loop {
        if !ready
            && !wait_readable(fd, deadline).map_err(|e| Error::io("waiting for a frame", e))?
        {
            return Ok(Received::TimedOut);
        }
        let n = match crate::sys::fd::recv_fds(fd, decoder.spare(), true) {
            Ok((n, fds)) => {
                ready = true;
                if decoder.fds.len() + fds.len() > super::fds::MAX_FDS_PER_FRAME {
                    return Err(Error::Protocol {
                        pid: 0,
                        detail: "a frame carried more OS handles than any message may".into(),
                    });
                }
                decoder.fds.extend(fds);
                n
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready = false;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A peer that died with unread data in its socket resets the connection:
            // that is an end of stream like any other, and the caller asks the kernel
            // how the peer ended.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(Error::io("reading a frame", e)),
        };
        if n == 0 {
            if decoder.is_idle() {
                return Ok(Received::Closed);
            }
            // A peer that dies mid-frame has not sent a message: treat as closed, and
            // let the caller find out how it died.
            *decoder = FrameDecoder::new(decoder.max);
            return Ok(Received::Closed);
        }
        if let Some(frame) = decoder.advance(n)? {
            return Ok(Received::Frame(frame, std::mem::take(&mut decoder.fds)));
        }
    }
}

/// Writes `payload` as one frame with `fds` attached to its first byte.
pub(crate) fn send_frame_with_fds(
    fd: impl AsFd,
    payload: &[u8],
    fds: &[OwnedFd],
    max: usize,
) -> Result<()> {
    send_frames(fd, &[payload], fds, max)
}

/// Writes each payload as a frame, in one `sendmsg` when the socket takes it all, with
/// `fds` attached to the first byte (so they arrive with the first frame).
pub(crate) fn send_frames(
    fd: impl AsFd,
    payloads: &[&[u8]],
    fds: &[OwnedFd],
    max: usize,
) -> Result<()> {
    if let Some(p) = payloads.iter().find(|p| p.len() > max) {
        return Err(Error::FrameTooLarge {
            what: "a frame".into(),
            len: p.len() as u64,
            max: max as u64,
        });
    }
    let headers: Vec<[u8; HEADER_LEN]> = payloads
        .iter()
        .map(|p| (p.len() as u64).to_le_bytes())
        .collect();
    let parts: Vec<&[u8]> = headers
        .iter()
        .zip(payloads)
        .flat_map(|(h, p)| [&h[..], *p])
        .collect();
    send_all(fd.as_fd(), &parts, fds)
}

/// Writes `parts` back to back, blocking until all is written, with `fds` attached to
/// the first byte.
pub(crate) fn send_all(sock: BorrowedFd<'_>, parts: &[&[u8]], fds: &[OwnedFd]) -> Result<()> {
    check_fd_count(fds.len())?;
    let raw_fds: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let fd = sock.as_raw_fd();
    let mut written = 0usize;
    while written < total {
        // The parts not yet fully written, the first one cut where the last write ended.
        let mut skip = written;
        let iov: Vec<IoSlice<'_>> = parts
            .iter()
            .filter_map(|p| {
                if skip >= p.len() {
                    skip -= p.len();
                    None
                } else {
                    let rest = &p[skip..];
                    skip = 0;
                    Some(IoSlice::new(rest))
                }
            })
            .take(64)
            .collect();
        let rights = [ControlMessage::ScmRights(&raw_fds)];
        let cmsgs: &[ControlMessage<'_>] = if written == 0 && !raw_fds.is_empty() {
            &rights
        } else {
            &[]
        };
        match sendmsg::<()>(fd, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => written += n,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                // A non-blocking socket that is full: wait for room.
                let mut p = [PollFd::new(sock, PollFlags::POLLOUT)];
                let _ = poll(&mut p, PollTimeout::NONE);
            }
            Err(e) => return Err(Error::io("sending a frame", e)),
        }
    }
    Ok(())
}

/// Refuses a message with more descriptors than one `sendmsg` may carry, before the
/// kernel does (it would answer only `EINVAL`).
pub(crate) fn check_fd_count(n: usize) -> Result<()> {
    let max = super::fds::MAX_FDS_PER_FRAME;
    if n > max {
        return Err(Error::Encode {
            type_name: "message".into(),
            reason: format!("it holds {n} OS handles, more than one message can carry ({max})"),
        });
    }
    Ok(())
}

/// Reads frames from a stream socket ahead of need: one `recv` can bring many small
/// frames, which matters when a chunk's answers arrive as many small frames. The
/// descriptors that arrive are queued in order; each frame's envelope says how many of
/// them are its own, and the caller takes that many (see [`FrameReader::take_fds`]).
#[derive(Debug)]
pub(crate) struct FrameReader {
    max: usize,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    fds: std::collections::VecDeque<OwnedFd>,
    closed: bool,
}

/// What [`FrameReader::next`] found.
#[derive(Debug)]
pub(crate) enum Next {
    Frame(Vec<u8>),
    /// Nothing complete yet; the socket has nothing more to read now.
    Empty,
    /// End of stream (a partial frame at the end is dropped: the peer died mid-frame).
    Closed,
}

/// The read-ahead buffer; frames larger than this are read into their own buffer.
const READ_AHEAD: usize = 256 << 10;
/// The most descriptors a reader holds for frames not yet taken.
const MAX_QUEUED_FDS: usize = 4 * super::fds::MAX_FDS_PER_FRAME;

impl FrameReader {
    pub(crate) fn new(max: usize) -> Self {
        FrameReader {
            max,
            buf: vec![0; READ_AHEAD],
            start: 0,
            end: 0,
            fds: Default::default(),
            closed: false,
        }
    }

    /// Maps the read-ahead buffer's pages now, for a reader that will carry big frames
    /// (either end of a pool's worker): not page by page as the first big frames of a
    /// program's first `map` arrive. (A one-shot `Process` does not pay for it.)
    pub(crate) fn map_ahead(&mut self) {
        crate::sys::mem::prefault_slice(&mut self.buf);
    }

    /// The frame limit.
    pub(crate) fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// The next complete frame, reading from `sock` without blocking as needed.
    pub(crate) fn next(&mut self, sock: BorrowedFd<'_>) -> Result<Next> {
        loop {
            let have = self.end - self.start;
            if have >= HEADER_LEN {
                let head: [u8; HEADER_LEN] = self.buf[self.start..self.start + HEADER_LEN]
                    .try_into()
                    .expect("8 bytes");
                let len = u64::from_le_bytes(head);
                if len > self.max as u64 {
                    return Err(FrameError::TooLarge {
                        len,
                        max: self.max as u64,
                    }
                    .into());
                }
                let len = len as usize;
                if have >= HEADER_LEN + len {
                    let at = self.start + HEADER_LEN;
                    let mut body = super::spare::take(len);
                    body.extend_from_slice(&self.buf[at..at + len]);
                    self.start = at + len;
                    return Ok(Next::Frame(body));
                }
                if HEADER_LEN + len > self.buf.len() {
                    return self.read_big(sock, len);
                }
            }
            if self.closed {
                return Ok(Next::Closed);
            }
            if self.start > 0 && (self.end == self.buf.len() || self.start == self.end) {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if !self.fill(sock)? {
                return Ok(if self.closed {
                    Next::Closed
                } else {
                    Next::Empty
                });
            }
        }
    }

    /// Reads into the buffer's free space; `false` if nothing was there.
    fn fill(&mut self, sock: BorrowedFd<'_>) -> Result<bool> {
        loop {
            match crate::sys::fd::recv_fds(sock, &mut self.buf[self.end..], true) {
                Ok((0, _)) => {
                    self.closed = true;
                    return Ok(false);
                }
                Ok((n, fds)) => {
                    self.end += n;
                    self.queue_fds(fds)?;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    self.closed = true;
                    return Ok(false);
                }
                Err(e) => return Err(Error::io("reading a frame", e)),
            }
        }
    }

    fn queue_fds(&mut self, fds: Vec<OwnedFd>) -> Result<()> {
        if self.fds.len() + fds.len() > MAX_QUEUED_FDS {
            return Err(Error::Protocol {
                pid: 0,
                detail: "a peer sent more OS handles than its messages name".into(),
            });
        }
        self.fds.extend(fds);
        Ok(())
    }

    /// A frame bigger than the read-ahead buffer: read the rest of it straight into
    /// its own allocation (blocking: the peer is in the middle of sending it).
    fn read_big(&mut self, sock: BorrowedFd<'_>, len: usize) -> Result<Next> {
        let at = self.start + HEADER_LEN;
        let mut body = super::spare::take(len);
        body.extend_from_slice(&self.buf[at..self.end]);
        self.start = 0;
        self.end = 0;
        while body.len() < len {
            let filled = body.len();
            // Grow with what arrives, not with what the header claims.
            let want = (len - filled).min(FIRST_CHUNK.max(filled));
            body.resize(filled + want, 0);
            match crate::sys::fd::recv_fds(sock, &mut body[filled..], false) {
                Ok((0, _)) => {
                    self.closed = true;
                    return Ok(Next::Closed);
                }
                Ok((n, fds)) => {
                    body.truncate(filled + n);
                    self.queue_fds(fds)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => body.truncate(filled),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    self.closed = true;
                    return Ok(Next::Closed);
                }
                Err(e) => return Err(Error::io("reading a frame", e)),
            }
        }
        Ok(Next::Frame(body))
    }

    /// The next `n` descriptors that arrived, for the frame that names them.
    pub(crate) fn take_fds(&mut self, n: usize) -> Result<Vec<OwnedFd>> {
        if n > self.fds.len() {
            return Err(Error::Protocol {
                pid: 0,
                detail: format!(
                    "a frame names {n} OS handles, but only {} arrived",
                    self.fds.len()
                ),
            });
        }
        Ok(self.fds.drain(..n).collect())
    }

    /// Whether a frame or part of one is buffered.
    pub(crate) fn has_buffered(&self) -> bool {
        self.end > self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(d: &mut FrameDecoder, bytes: &[u8], step: usize) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let spare = d.spare();
            let n = spare.len().min(rest.len()).min(step);
            spare[..n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            if let Some(f) = d.advance(n)? {
                out.push(f);
            }
        }
        Ok(out)
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn frames_in_any_split() {
        let mut stream = frame(b"hello");
        stream.extend(frame(b""));
        stream.extend(frame(&vec![7u8; 3 << 20]));
        for step in [1, 3, 8, 4096, usize::MAX] {
            let mut d = FrameDecoder::new(16 << 20);
            let frames = feed(&mut d, &stream, step).unwrap();
            assert_eq!(frames.len(), 3);
            assert_eq!(frames[0], b"hello");
            assert!(frames[1].is_empty());
            assert_eq!(frames[2].len(), 3 << 20);
            assert!(d.is_idle());
        }
    }

    #[test]
    fn oversized_header_is_refused_before_allocating() {
        let mut d = FrameDecoder::new(1000);
        let err = feed(&mut d, &frame(&[0; 1001]), usize::MAX).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: 1001,
                max: 1000
            }
        );
        let mut d = FrameDecoder::new(usize::MAX);
        // A header claiming 2^62 bytes followed by 10 bytes: memory follows the bytes.
        let mut s = (1u64 << 62).to_le_bytes().to_vec();
        s.extend([0u8; 10]);
        assert!(feed(&mut d, &s, usize::MAX).unwrap().is_empty());
        assert!(d.body.capacity() <= FIRST_CHUNK);
    }
}
