//! One worker process of a pool, as the pool sees it from the parent's side: its pid,
//! pidfd and socket, its [`Stage`], frames waiting to be written, frames read ahead.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

use crate::error::{Error, ExitStatus, Result};
use crate::pool::core::LastStart;
use crate::start::{self, StartMethod};
use crate::sys;
use crate::failure;
use crate::wire::bytes::SharedBytes;
use crate::wire::message::{self, Request};
use crate::wire::{self, FrameReader};

/// A frame not yet fully written: its parts, the descriptors that go with its first
/// byte, and how much of it the socket took.
struct Outgoing {
    head: Vec<u8>,
    data: Body,
    fds: Vec<OwnedFd>,
    written: usize,
}

/// A frame's data: its own, or shared with the pool's core, which keeps a chunk's
/// arguments until the chunk is answered (to run its calls again should the worker
/// die), without a copy.
pub(super) enum Body {
    Owned(Vec<u8>),
    Shared(SharedBytes),
}

impl std::ops::Deref for Body {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Body::Owned(v) => v,
            Body::Shared(v) => v,
        }
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Body {
        Body::Owned(v)
    }
}

impl From<SharedBytes> for Body {
    fn from(v: SharedBytes) -> Body {
        Body::Shared(v)
    }
}

/// Frames gathered into one buffer before it is written, at most this many bytes.
const GATHER: usize = 64 << 10;
/// Data this small is copied into a gathered buffer rather than queued on its own.
const GATHER_DATA: usize = 4 << 10;

/// Where a worker is in its life, as the pool sees it.
///
/// ```text
/// Ready ──initialize──▶ Initializing ──initialized──▶ Ready
///   │                       │
///   │                       └──reject_initializer (killed)──┐
///   └──retire (Exit sent)──────────────────────────▶ Retiring
/// any ──reap──▶ Reaped
/// ```
///
/// Orthogonal to the stage is the worker's stream, cut (`None`) once it closes or
/// fails, which can happen in any stage: the worker is then dead or about to be, and
/// its pidfd says when and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// Running the pool's initializer; the core holds its work back until it answers.
    Initializing,
    /// One of the pool's workers, taking work.
    Ready,
    /// Told to exit (or killed after its initializer failed): takes no more work, but
    /// its stream is still read until it is gone.
    Retiring,
    /// Waited for: its pid may be reused; only the pidfd (which cannot be) remains.
    Reaped,
}

pub(super) struct Proc {
    pub(super) pid: u32,
    pub(super) pidfd: OwnedFd,
    /// The stream to the worker; `None` once cut.
    sock: Option<OwnedFd>,
    pub(super) reader: FrameReader,
    outbox: VecDeque<Outgoing>,
    /// Reused for the heads of frames that join a queued one.
    scratch: Vec<u8>,
    stage: Stage,
    pub(super) name: String,
    pub(super) started: std::time::SystemTime,
    /// The worker's call slot (see `task::call_word`), if it could be made.
    slot: Option<sys::shm::Mapping>,
}

impl Proc {
    /// Starts a worker and queues its hello; `leave_term`: it leaves SIGTERM to us.
    pub(super) fn launch(method: StartMethod, name: String, leave_term: bool) -> Result<Proc> {
        let launched = start::launch(method, None)?;
        let max = wire::max_frame_size();
        let mut proc = Proc {
            pid: launched.pid,
            pidfd: launched.pidfd,
            sock: Some(launched.sock),
            reader: FrameReader::new(crate::worker::frame_limit(max)),
            outbox: VecDeque::new(),
            scratch: Vec::new(),
            stage: Stage::Ready,
            name: name.clone(),
            started: std::time::SystemTime::now(),
            slot: None,
        };
        // While the child starts: this end will read chunks' answers.
        proc.reader.map_ahead();
        // Listed for `active_children`, as Python lists pool workers.
        start::children::add(proc.pid, &name, proc.pidfd.as_fd());
        let hello = Request::hello(name, max as u64, leave_term);
        proc.queue(&hello, Vec::new(), Vec::new())?;
        // Without a slot (no memory file to be had) the pool still works; a death
        // then costs every call the worker held, as when the slot names no call.
        match call_slot() {
            Ok((file, map)) => {
                proc.queue(&Request::Slot, Vec::new(), vec![file])?;
                proc.slot = Some(map);
            }
            Err(e) => tracing::debug!(pid = proc.pid, "pool worker without a call slot: {e}"),
        }
        Ok(proc)
    }

    /// What the worker's call slot says it started last, read after its death.
    pub(super) fn last_start(&self) -> LastStart {
        debug_assert_eq!(self.stage, Stage::Reaped, "the call slot is read after death");
        match self.slot.as_ref().and_then(|m| m.atomic_at::<AtomicU64>(0)) {
            None => LastStart::Unknown,
            // Relaxed: the worker is dead and reaped, so no store to the word can race
            // with this load, and the kernel's wait for its exit (a system call in this
            // thread that observed the exit) orders its last store before it.
            Some(word) => LastStart::of_word(word.load(Ordering::Relaxed)),
        }
    }

    pub(super) fn stage(&self) -> Stage {
        self.stage
    }

    /// Whether it counts as one of the pool's workers (listed, and not replaced): it
    /// initializes or is ready. The core decides whether it is given work.
    pub(super) fn is_live(&self) -> bool {
        matches!(self.stage, Stage::Initializing | Stage::Ready)
    }

    /// Whether chunks may be sent to it: live, with its stream.
    pub(super) fn may_take_work(&self) -> bool {
        self.is_live() && self.sock.is_some()
    }

    /// Its stream, while not cut.
    pub(super) fn sock(&self) -> Option<&OwnedFd> {
        self.sock.as_ref()
    }

    /// The stream closed or failed: nothing more is read or written; its pidfd tells
    /// when the worker is gone.
    pub(super) fn cut(&mut self) {
        self.sock = None;
    }

    /// The next frame it sent, if its stream is not cut.
    pub(super) fn next_frame(&mut self) -> Option<Result<wire::Next>> {
        let sock = self.sock.as_ref()?;
        Some(self.reader.next(sock.as_fd()))
    }

    /// Queues the initializer's run: `Ready -> Initializing`.
    pub(super) fn initialize(
        &mut self,
        run: &Request,
        args: Vec<u8>,
        fds: Vec<OwnedFd>,
    ) -> Result<()> {
        debug_assert_eq!(self.stage, Stage::Ready, "a worker initializes once, first");
        self.queue(run, args, fds)?;
        self.stage = Stage::Initializing;
        Ok(())
    }

    /// Its initializer succeeded: `Initializing -> Ready`.
    pub(super) fn initialized(&mut self) {
        debug_assert_eq!(self.stage, Stage::Initializing);
        self.stage = Stage::Ready;
    }

    /// Its initializer failed: it is killed (`Initializing -> Retiring`) and replaced.
    pub(super) fn reject_initializer(&mut self) {
        debug_assert_eq!(self.stage, Stage::Initializing);
        self.kill();
        self.stage = Stage::Retiring;
    }

    /// Queues a frame: `envelope`, then `data`, with `fds`.
    pub(super) fn queue(
        &mut self,
        envelope: &Request,
        data: impl Into<Body>,
        fds: Vec<OwnedFd>,
    ) -> Result<()> {
        let data = data.into();
        // Small frames without descriptors join the previous one if nothing of it was
        // written yet: one buffer, no allocation per frame of a chunk-size-1 job.
        if let Some(last) = self.outbox.back_mut()
            && fds.is_empty()
            && data.len() <= GATHER_DATA
            && last.written == 0
            && last.fds.is_empty()
            && last.data.is_empty()
            && last.head.len() < GATHER
        {
            let mut head = std::mem::take(&mut self.scratch);
            message::frame_head(envelope, data.len(), &mut head)?;
            last.head.extend_from_slice(&head);
            last.head.extend_from_slice(&data);
            self.scratch = head;
            return Ok(());
        }
        let mut head = Vec::new();
        message::frame_head(envelope, data.len(), &mut head)?;
        self.outbox.push_back(Outgoing {
            head,
            data,
            fds,
            written: 0,
        });
        Ok(())
    }

    /// Whether frames wait to be written.
    pub(super) fn has_output(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Writes queued frames until the socket is full. Frames without descriptors go
    /// out together in one `sendmsg`. Errors are the socket's own (`EPIPE` when the
    /// worker died: its pidfd says how).
    pub(super) fn write(&mut self) -> std::io::Result<()> {
        let Some(sock) = self.sock.as_ref() else {
            self.outbox.clear();
            return Ok(());
        };
        let fd = sock.as_raw_fd();
        while let Some(front) = self.outbox.front() {
            // The first frame, with its descriptors, and the frames after it that
            // have none.
            let mut parts: Vec<IoSlice<'_>> = Vec::new();
            let mut skip = front.written;
            for (k, o) in self.outbox.iter().enumerate() {
                if k > 0 && (!o.fds.is_empty() || parts.len() >= 64) {
                    break;
                }
                for part in [&o.head[..], &o.data[..]] {
                    if skip >= part.len() {
                        skip -= part.len();
                    } else if !part.is_empty() {
                        parts.push(IoSlice::new(&part[skip..]));
                        skip = 0;
                    }
                }
            }
            let raw: Vec<i32> = front.fds.iter().map(|f| f.as_raw_fd()).collect();
            let rights = [ControlMessage::ScmRights(&raw)];
            let cmsgs: &[ControlMessage<'_>] = if front.written == 0 && !raw.is_empty() {
                &rights
            } else {
                &[]
            };
            let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
            let mut n = match sendmsg::<()>(fd, &parts, cmsgs, flags, None) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            while n > 0 {
                let Some(o) = self.outbox.front_mut() else {
                    break;
                };
                let left = o.head.len() + o.data.len() - o.written;
                if n >= left {
                    n -= left;
                    if let Some(Outgoing {
                        data: Body::Owned(v),
                        ..
                    }) = self.outbox.pop_front()
                    {
                        // The next chunk's buffer (see `wire::spare`).
                        crate::wire::spare::give(v);
                    }
                } else {
                    o.written += n;
                    if !o.fds.is_empty() {
                        // Sent with the first byte: never again.
                        o.fds.clear();
                    }
                    n = 0;
                }
            }
        }
        Ok(())
    }

    /// Asks the worker to finish and exit: `Initializing | Ready -> Retiring`. One
    /// already retiring is left as it is (it was told, or killed).
    pub(super) fn retire(&mut self) {
        debug_assert_ne!(self.stage, Stage::Reaped, "a reaped worker is gone");
        if self.is_live() {
            self.stage = Stage::Retiring;
            let _ = self.queue(&Request::Exit, Vec::new(), Vec::new());
            let _ = self.write();
        }
    }

    /// Sends SIGKILL (through the pidfd: never to a reused pid).
    pub(super) fn kill(&self) {
        let _ = sys::proc::pidfd_signal(self.pidfd.as_fd(), crate::Signal::KILL);
    }

    /// Reaps the worker (its pidfd was readable, or it was killed): `any -> Reaped`.
    pub(super) fn reap(&mut self) -> Option<ExitStatus> {
        debug_assert_ne!(self.stage, Stage::Reaped, "a worker is reaped once");
        start::children::remove(self.pidfd.as_fd());
        self.stage = Stage::Reaped;
        sys::proc::wait_pidfd(&self.pidfd, true).ok().flatten()
    }

    /// The error for calls this worker held when it died.
    pub(super) fn death(&mut self) -> Error {
        let status = self.reap();
        failure::death_error(status, self.pid)
    }
}

/// A new call slot: a sealed-size memory file holding [`crate::task::NO_CALL`], and
/// this side's mapping of it (kept out of processes forked later).
fn call_slot() -> std::io::Result<(OwnedFd, sys::shm::Mapping)> {
    let file = sys::shm::memfd("multiproc-call-slot", 8)?;
    let map = sys::shm::Mapping::new(file.as_fd(), 8, true)?;
    map.dont_fork()?;
    let word = map
        .atomic_at::<AtomicU64>(0)
        .ok_or_else(|| std::io::Error::other("a misaligned mapping"))?;
    word.store(crate::task::NO_CALL, Ordering::Relaxed);
    Ok((file, map))
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A worker leaves the pool reaped; this covers early exits.
        if self.stage != Stage::Reaped {
            start::children::remove(self.pidfd.as_fd());
            self.kill();
            let _ = sys::proc::wait_pidfd(&self.pidfd, true);
        }
    }
}
