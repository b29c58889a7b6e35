//! One worker process of a pool, as the pool's manager sees it.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use serde_bytes::ByteBuf;

use crate::error::{Error, ExitStatus, Result};
use crate::start::{self, StartMethod};
use crate::sys;
use crate::task::{self, TaskRef};
use crate::wire::message::{Batch, PROTOCOL_VERSION, Reply, Request};
use crate::wire::{self, FrameDecoder, Received, recv_frame, send_frame, send_frame_with_fds};

/// A call waiting to run, or running: which job and which item of it, its encoded
/// argument, and how often a worker died under it.
pub(crate) struct Call {
    pub(crate) job: u64,
    pub(crate) index: usize,
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
    pub(crate) attempts: u32,
}

/// What a worker is doing.
pub(crate) enum Busy {
    /// Running the pool's initializer.
    Initializing,
    /// Running a chunk of calls of one job.
    Chunk {
        job: u64,
        calls: Vec<Call>,
        deadline: Option<Instant>,
    },
}

pub(crate) struct Worker {
    pub(crate) pid: u32,
    pub(crate) pidfd: OwnedFd,
    pub(crate) sock: Option<OwnedFd>,
    decoder: FrameDecoder,
    pub(crate) busy: Option<Busy>,
    /// Calls completed, for `max_tasks_per_child`.
    pub(crate) done: usize,
    /// Told to exit; takes no more work.
    pub(crate) retiring: bool,
    /// Killed because its chunk ran past the deadline.
    pub(crate) timed_out: bool,
    /// What the panic hook reported before a `panic = "abort"` death: call index,
    /// message, location.
    pub(crate) aborting: Option<(u32, String, Option<String>)>,
    reaped: bool,
}

/// A job id no user job has: the initializer's.
pub(crate) const INIT_JOB: u64 = u64::MAX;

impl Worker {
    pub(crate) fn launch(method: StartMethod, name: String) -> Result<Worker> {
        let launched = start::launch(method, None)?;
        let max = wire::max_frame_size();
        let hello = wire::encode(&Request::Hello {
            version: PROTOCOL_VERSION,
            build_id: ByteBuf::from(task::build_id().to_vec()),
            name,
            max_frame: max as u64,
        })?;
        let worker = Worker {
            pid: launched.pid,
            pidfd: launched.pidfd,
            sock: Some(launched.sock),
            decoder: FrameDecoder::new(max),
            busy: None,
            done: 0,
            retiring: false,
            timed_out: false,
            aborting: None,
            reaped: false,
        };
        // A failure shows up as the worker's death, handled like any other.
        let _ = send_frame(worker.sock_fd(), &hello, max);
        Ok(worker)
    }

    fn sock_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_ref().expect("an open worker socket").as_fd()
    }

    /// Sends a chunk (or the initializer). `false` if the worker is gone.
    pub(crate) fn send(&mut self, entry: TaskRef, job: u64, calls: &[Call]) -> bool {
        if self.sock.is_none() {
            return false;
        }
        let mut args = Batch::with_capacity(calls.len(), calls.iter().map(|c| c.bytes.len()).sum());
        for c in calls {
            args.push(&c.bytes, c.fds.len());
        }
        let fds: Vec<OwnedFd> = calls
            .iter()
            .flat_map(|c| c.fds.iter().filter_map(|f| f.try_clone().ok()))
            .collect();
        let Ok(frame) = wire::encode(&Request::Run { job, entry, args }) else {
            return false;
        };
        send_frame_with_fds(self.sock_fd(), &frame, &fds, wire::max_frame_size()).is_ok()
    }

    /// Asks the worker to finish and exit.
    pub(crate) fn retire(&mut self) {
        self.retiring = true;
        if let (Some(sock), Ok(exit)) = (self.sock.as_ref(), wire::encode(&Request::Exit)) {
            let _ = send_frame(sock.as_fd(), &exit, wire::max_frame_size());
        }
    }

    /// Reads what the worker sent without blocking: complete replies, in order.
    /// The socket is dropped at end of stream.
    pub(crate) fn read_replies(&mut self) -> Result<Vec<(Reply, Vec<OwnedFd>)>> {
        let mut replies = Vec::new();
        while let Some(sock) = self.sock.as_ref() {
            match recv_frame(sock.as_fd(), &mut self.decoder, Some(Instant::now()))? {
                Received::Frame(frame, fds) => {
                    let reply = Reply::decode(&frame).map_err(|e| Error::Protocol {
                        pid: self.pid,
                        detail: format!("undecodable reply: {e}"),
                    })?;
                    replies.push((reply, fds));
                }
                Received::Closed => self.sock = None,
                Received::TimedOut => break,
            }
        }
        Ok(replies)
    }

    pub(crate) fn kill(&self) {
        let _ = sys::proc::pidfd_signal(self.pidfd.as_fd(), crate::Signal::KILL);
    }

    /// Reaps the worker (it has exited: its pidfd was readable).
    pub(crate) fn reap(&mut self) -> Option<ExitStatus> {
        self.reaped = true;
        sys::proc::wait_pidfd(&self.pidfd, true).ok().flatten()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A worker leaves the pool reaped; this covers the manager's early exits.
        if !self.reaped {
            self.kill();
            let _ = sys::proc::wait_pidfd(&self.pidfd, true);
        }
    }
}
