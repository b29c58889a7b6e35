//! Channels between processes: [`Pipe`] (two typed, duplex ends), [`Queue`] (many
//! producers, many consumers), [`JoinableQueue`] and [`SimpleQueue`].
//!
//! ## How handles travel
//!
//! A pipe end or queue handle is a value like any other: make it in the parent and
//! pass it to a child as (part of) a task argument, return one from a task, or send
//! one through another channel. Its OS descriptors cross with `SCM_RIGHTS` and the
//! receiver gets fresh descriptors for the same kernel objects; nothing is named on the
//! system. The sender keeps its own handle until it drops it.
//!
//! No channel has a hidden feeder thread: a `send`/`put` returns once the message is in
//! the kernel (or in a sealed memory file the kernel holds, or in a queue's shared spill
//! log once its socket is full), so a process can exit right
//! after it without waiting for a reader, and `join` never deadlocks on unread data
//! (the classic `multiprocessing.Queue` trap).

mod pipe;
mod queue;

pub use pipe::{Pipe, PipeEnd, PipeReader, PipeWriter};
pub use queue::{JoinableQueue, Queue, SimpleQueue};

use crate::error::Error;

/// Turns an I/O error from a peer that went away into [`Error::Closed`].
pub(crate) fn closed_if_peer_gone(e: Error, what: &'static str) -> Error {
    match &e {
        Error::Io { source, .. }
            if matches!(
                source.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::NotConnected
            ) =>
        {
            Error::Closed { what }
        }
        _ => e,
    }
}
