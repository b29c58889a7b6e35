//! The worker's transport: the [`Link`] it serves over (frames in, frames out), the
//! socket to its parent that implements it for a process, and the frame limits both
//! ends derive from the value limit.

use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;

use crate::error::Result;
use crate::wire::message::{self, Refusal, Reply};
use crate::wire::{FrameReader, Next, fds, send_all, wait_readable};

/// Room in a frame for its envelope beside the data (failure messages, counts).
pub(crate) const ENVELOPE_ROOM: usize = 1 << 20;

/// The largest frame that carries values of up to `max_value` bytes.
pub(crate) fn frame_limit(max_value: usize) -> usize {
    max_value.saturating_add(ENVELOPE_ROOM)
}

/// Frames in, frames out: what the worker loop needs of a transport.
pub(crate) trait Link {
    /// The next frame's body; `None` at end of stream.
    fn recv(&mut self) -> Result<Option<Vec<u8>>>;
    /// The next `n` descriptors that arrived (the frame just received names them).
    fn take_fds(&mut self, n: usize) -> Result<Vec<OwnedFd>>;
    /// Sends a frame: `head` (header and envelope), then `data`, with `fds`.
    fn send(&mut self, head: &[u8], data: &[u8], fds: &[OwnedFd]) -> Result<()>;
    /// Sends what `send` gathered.
    fn flush(&mut self) -> Result<()>;
    /// Descriptors one frame may carry (0: none cross this link).
    fn max_fds(&self) -> usize;
    /// The frame limit changed (the hello, or a chunk, said so).
    fn set_max_frame(&mut self, max: usize);
    /// Where the panic hook reports a panic under `panic = "abort"`.
    fn abort_channel(&self) -> Option<Rc<OwnedFd>>;
    /// Answers the hello: `refusal` says why this worker will run nothing (`None`:
    /// ready). Returns whether to go on serving.
    fn greeted(&mut self, refusal: Option<Refusal>) -> Result<bool>;
    /// This worker serves a pool (it got a call slot): chunks of many calls will come.
    fn serves_pool(&mut self) {}
}

/// A worker's end of a Unix stream socket to its parent.
pub(super) struct SocketLink {
    sock: Rc<OwnedFd>,
    reader: FrameReader,
    /// Small frames gathered while more requests wait in `reader`, sent in one write.
    out: Vec<u8>,
}

/// Frames gathered before a write, at most.
const GATHER: usize = 64 << 10;

impl SocketLink {
    pub(super) fn new(sock: OwnedFd) -> Self {
        SocketLink {
            sock: Rc::new(sock),
            reader: FrameReader::new(frame_limit(crate::wire::max_frame_size())),
            out: Vec::new(),
        }
    }
}

impl Link for SocketLink {
    fn serves_pool(&mut self) {
        self.reader.map_ahead();
    }

    fn recv(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            match self.reader.next(self.sock.as_fd())? {
                Next::Frame(body) => return Ok(Some(body)),
                Next::Closed => return Ok(None),
                Next::Empty => {
                    // About to wait: whatever was gathered goes now.
                    self.flush()?;
                    wait_readable(self.sock.as_fd(), None)
                        .map_err(|e| crate::Error::io("waiting for work", e))?;
                }
            }
        }
    }

    fn take_fds(&mut self, n: usize) -> Result<Vec<OwnedFd>> {
        self.reader.take_fds(n)
    }

    fn send(&mut self, head: &[u8], data: &[u8], fds: &[OwnedFd]) -> Result<()> {
        if fds.is_empty() && self.out.len() + head.len() + data.len() <= GATHER {
            self.out.extend_from_slice(head);
            self.out.extend_from_slice(data);
            if !self.reader.has_buffered() {
                self.flush()?;
            }
            return Ok(());
        }
        self.flush()?;
        send_all(self.sock.as_fd(), &[head, data], fds)
    }

    fn flush(&mut self) -> Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = send_all(self.sock.as_fd(), &[&self.out], &[]);
        self.out.clear();
        r
    }

    fn max_fds(&self) -> usize {
        fds::MAX_FDS_PER_FRAME
    }

    fn set_max_frame(&mut self, max: usize) {
        self.reader.set_max(frame_limit(max));
    }

    fn abort_channel(&self) -> Option<Rc<OwnedFd>> {
        Some(self.sock.clone())
    }

    /// A parent is told only of a refusal; then the worker exits.
    fn greeted(&mut self, refusal: Option<Refusal>) -> Result<bool> {
        let Some(reason) = refusal else {
            return Ok(true);
        };
        let mut head = Vec::new();
        message::frame_head(&Reply::Refused { reason }, 0, &mut head)?;
        self.send(&head, &[], &[])?;
        self.flush()?;
        Ok(false)
    }
}
