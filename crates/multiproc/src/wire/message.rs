//! The messages a parent (a pool, a `Process`) and a worker exchange, one per frame.
//!
//! Parent → worker: `Hello` once (protocol version, build id, process name, frame
//! limit), for a pool's worker `Slot` once (its call slot, a memory file), then any number of `Run` (a chunk of calls of one task), then `Exit` (or end
//! of stream). Worker → parent: one or more `Done` per `Run` (a long chunk is answered
//! in pieces, as its calls finish), or one `Refused` instead of everything if the hello
//! does not match. Under `panic = "abort"` a panicking task sends `Aborting` from the
//! panic hook, just before the process dies.
//!
//! A frame's body is a 4-byte little-endian envelope length, the envelope (postcard),
//! then the data: the chunk's encoded values laid end to end, each self-delimiting
//! (postcard), so no table of offsets travels. When the envelope says `shared`, the
//! data is not in the frame but in a sealed memory file, the frame's first descriptor.
//! Descriptors inside values (`PassFd`) are numbered across the whole frame; the
//! envelope says how many descriptors the frame carries in all, so a reader that reads
//! several frames at once knows which descriptors are whose.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::codec::{decode, encode_into};
use super::frame::HEADER_LEN;
use crate::error::{Error, Result};

/// Bumped whenever a message changes shape.
pub(crate) const PROTOCOL_VERSION: u32 = 4;

/// Bytes of envelope length at the start of a frame body.
const ENVELOPE_LEN: usize = 4;

/// Where a task lives in an executable: image offsets of its typed trampoline and of
/// the user's function. Plain data; only a worker of the same build may act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TaskRef {
    pub(crate) trampoline: u64,
    pub(crate) function: u64,
}

/// Parent → worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    Hello {
        version: u32,
        build_id: ByteBuf,
        name: String,
        max_frame: u64,
        /// The worker leaves SIGTERM to its parent (a cluster node's pool: the node
        /// drains on SIGTERM and stops its workers itself).
        leave_term: bool,
    },
    /// `calls` calls of the task at `entry`; their arguments are the data.
    Run {
        /// Numbers the chunks sent to one worker, in order.
        seq: u64,
        entry: TaskRef,
        calls: u32,
        /// The largest result the worker may send (the parent's frame limit now).
        max_value: u64,
        /// Descriptors the frame carries.
        fds: u32,
        /// The data is in the frame's first descriptor.
        shared: bool,
    },
    Exit,
    /// A pool's worker gets this once, after the hello: the frame carries one
    /// descriptor, a memory file of at least 8 bytes, its *call slot*. The worker maps
    /// it and, as it starts each call, stores which call (see `task::call_word`), so
    /// that the parent knows, after the worker's death, which call was running.
    Slot,
}

impl Request {
    /// The hello, a worker's first message: the protocol version and this build's id
    /// (which the worker checks), the name it takes, its frame limit, and whether it
    /// leaves SIGTERM to its parent.
    pub(crate) fn hello(name: String, max_frame: u64, leave_term: bool) -> Request {
        Request::Hello {
            version: PROTOCOL_VERSION,
            build_id: ByteBuf::from(crate::sys::build_id::build_id().to_vec()),
            name,
            max_frame,
            leave_term,
        }
    }
}

/// Worker → parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Refused {
        reason: Refusal,
    },
    /// Answers for calls `first .. first + answered` of chunk `seq`: the data holds the
    /// values of those calls not listed in `failures` (chunk positions), in order.
    Done {
        seq: u64,
        first: u32,
        answered: u32,
        failures: Vec<(u32, Failure)>,
        /// Time these calls took in the worker, for adaptive chunk sizes.
        nanos: u64,
        fds: u32,
        shared: bool,
    },
    Aborting {
        seq: u64,
        index: u32,
        message: String,
        location: Option<String>,
        backtrace: Option<String>,
    },
}

/// Why a worker refused to serve.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Refusal {
    Version { child: u32 },
    Build { child: ByteBuf },
}

/// Why one call produced no value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Failure {
    Panicked {
        message: String,
        location: Option<String>,
        /// The child's backtrace, when `RUST_BACKTRACE` asked for one.
        backtrace: Option<String>,
    },
    /// The worker could not decode the argument as the task's parameter type.
    BadArgs { type_name: String, reason: String },
    /// The task's return value could not be encoded.
    BadResult { type_name: String, reason: String },
    /// The encoded result is over the frame limit.
    TooLarge { len: u64, max: u64 },
    /// The task reference did not point into this program's code.
    BadEntry,
}

/// Writes a frame header and `envelope` into `out` (cleared first); the frame's data,
/// `data_len` bytes, is sent right after it.
pub(crate) fn frame_head<T: Serialize>(
    envelope: &T,
    data_len: usize,
    out: &mut Vec<u8>,
) -> Result<()> {
    out.clear();
    out.extend_from_slice(&[0; HEADER_LEN + ENVELOPE_LEN]);
    encode_into(envelope, out)?;
    let env = out.len() - HEADER_LEN - ENVELOPE_LEN;
    let body = ENVELOPE_LEN + env + data_len;
    out[..HEADER_LEN].copy_from_slice(&(body as u64).to_le_bytes());
    out[HEADER_LEN..HEADER_LEN + ENVELOPE_LEN]
        .copy_from_slice(&(env as u32).to_le_bytes());
    Ok(())
}

/// A frame body's envelope, decoded, and where its data starts. The body came from
/// another process: a malformed one is an error, never a panic.
pub(crate) fn open_frame<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<(T, usize)> {
    let bad = |detail: &str| Error::Protocol {
        pid: 0,
        detail: detail.into(),
    };
    let len = body
        .get(..ENVELOPE_LEN)
        .ok_or_else(|| bad("a frame too short for its envelope"))?;
    let len = u32::from_le_bytes(len.try_into().map_err(|_| bad("a short envelope length"))?);
    let end = ENVELOPE_LEN
        .checked_add(len as usize)
        .filter(|&e| e <= body.len())
        .ok_or_else(|| bad("an envelope longer than its frame"))?;
    let envelope = decode(&body[ENVELOPE_LEN..end])?;
    Ok((envelope, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_head_and_its_data_open_again() {
        let mut head = Vec::new();
        let data = b"xyz";
        frame_head(&Request::Exit, data.len(), &mut head).unwrap();
        let len = u64::from_le_bytes(head[..8].try_into().unwrap()) as usize;
        let mut body = head[8..].to_vec();
        body.extend_from_slice(data);
        assert_eq!(body.len(), len);
        let (req, start): (Request, usize) = open_frame(&body).unwrap();
        assert!(matches!(req, Request::Exit));
        assert_eq!(&body[start..], data);
        assert!(open_frame::<Request>(&[9, 9]).is_err());
        assert!(open_frame::<Request>(&[200, 0, 0, 0, 1]).is_err());
    }
}
