//! Length-prefixed frames over a stream socket.
//!
//! [`FrameDecoder`] is the I/O-free core (what the fuzz target drives); `recv_frame`
//! and `send_frame` move it over a socket with a deadline.

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
            FrameError::TooLarge { len, max } => Error::FrameTooLarge { len, max },
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

/// The `poll` timeout that ends at `deadline` (none: wait forever). Rounded up, so that
/// a sub-millisecond remainder still waits instead of spinning.
pub(crate) fn poll_timeout(deadline: Option<Instant>) -> PollTimeout {
    match deadline {
        None => PollTimeout::NONE,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
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
pub(crate) fn recv_frame(
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

/// Writes `payload` as one frame, blocking until it is all written.
pub(crate) fn send_frame(fd: impl AsFd, payload: &[u8], max: usize) -> Result<()> {
    send_frames(fd, &[payload], &[], max)
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
            len: p.len() as u64,
            max: max as u64,
        });
    }
    let raw_fds: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let headers: Vec<[u8; HEADER_LEN]> = payloads
        .iter()
        .map(|p| (p.len() as u64).to_le_bytes())
        .collect();
    let parts: Vec<&[u8]> = headers
        .iter()
        .zip(payloads)
        .flat_map(|(h, p)| [&h[..], *p])
        .collect();
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let fd = fd.as_fd().as_raw_fd();
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
            Err(e) => return Err(Error::io("sending a frame", e)),
        }
    }
    Ok(())
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
