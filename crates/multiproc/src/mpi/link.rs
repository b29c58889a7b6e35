//! Frames over MPI: one frame body (envelope and data, as over a socket, without the
//! length header: MPI messages have their own length) per MPI message, tagged by
//! direction, under the same size limit as the process pool's sockets.

use mpi::datatype::Equivalence;
use mpi::point_to_point::{Destination, Message, Status};
use mpi::topology::{Communicator, Rank, SimpleCommunicator};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::wire::message::Refusal;

/// Rank 0 → worker: a `Request` frame.
pub(crate) const TAG_REQUEST: i32 = 1;
/// Worker → rank 0: a `Reply` frame to a `Run`.
pub(crate) const TAG_REPLY: i32 = 2;
/// Worker → rank 0: its [`Greeting`], the answer to the hello.
pub(crate) const TAG_GREETING: i32 = 3;

/// A worker rank's answer to rank 0's hello.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Greeting {
    /// Same protocol and build: ready for work.
    Ready { pid: u32, host: String },
    /// Different protocol or build: it will run nothing, and waits for `Exit`.
    Refused {
        pid: u32,
        host: String,
        reason: Refusal,
    },
}

/// The largest value (argument or result): the frame limit, with room for a frame's
/// envelope under MPI's count limit (a C int).
pub(crate) fn max_value() -> usize {
    crate::wire::max_frame_size().min(i32::MAX as usize - crate::worker::ENVELOPE_ROOM)
}

/// The largest message.
pub(crate) fn limit() -> usize {
    crate::worker::frame_limit(max_value())
}

/// Sends a frame made by `wire::message::frame_head` (its first 8 bytes, the length
/// header, stay behind) followed by `data`.
pub(crate) fn send_frame(
    world: &SimpleCommunicator,
    to: Rank,
    tag: i32,
    head: &[u8],
    data: &[u8],
) -> Result<()> {
    let head = head.get(crate::wire::HEADER_LEN..).unwrap_or_default();
    if data.is_empty() {
        return send(world, to, tag, head);
    }
    let mut bytes = Vec::with_capacity(head.len() + data.len());
    bytes.extend_from_slice(head);
    bytes.extend_from_slice(data);
    send(world, to, tag, &bytes)
}

/// Sends one frame to `to`. Refuses (before sending anything) a frame over [`limit`].
pub(crate) fn send(world: &SimpleCommunicator, to: Rank, tag: i32, bytes: &[u8]) -> Result<()> {
    let max = limit();
    if bytes.len() > max {
        return Err(Error::FrameTooLarge {
            what: "a frame".into(),
            len: bytes.len() as u64,
            max: max as u64,
        });
    }
    world.process_at_rank(to).send_with_tag(bytes, tag);
    Ok(())
}

/// Receives a probed message. A message over [`limit`] is not received (that would
/// mean allocating what the peer asks for): the error says how long it claims to be,
/// and the caller must end the job, since a matched MPI message cannot be put back.
pub(crate) fn receive(msg: Message, status: Status) -> std::result::Result<Vec<u8>, i64> {
    let count = status.count(u8::equivalent_datatype());
    match usize::try_from(count) {
        Ok(n) if n <= limit() => {
            let mut buf = vec![0u8; n];
            msg.matched_receive_into(&mut buf[..]);
            Ok(buf)
        }
        _ => {
            // Dropping an unreceived message asserts in rsmpi; the job ends right after.
            std::mem::forget(msg);
            Err(count as i64)
        }
    }
}

/// Ends the whole MPI job after saying why on stderr: MPI offers no way to lose one
/// rank and go on (no ULFM in Open MPI 4 or rsmpi), so fail fast and loudly.
pub(crate) fn abort_job(code: i32, why: &str) -> ! {
    use std::io::Write;
    let rank = SimpleCommunicator::world().rank();
    let _ = std::io::stdout().flush();
    let _ = writeln!(
        std::io::stderr(),
        "multiproc: MPI rank {rank}: {why}; aborting the MPI job (exit code {code})"
    );
    SimpleCommunicator::world().abort(code)
}
