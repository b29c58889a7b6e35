//! The messages rank 0 and a worker rank exchange, one per MPI message: the process
//! pool's protocol as it was before values travelled end to end (MPI moves whole
//! messages, so a chunk is one message and one reply). The failure and refusal kinds
//! are the process pool's.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::Result;
pub(crate) use crate::wire::message::{Failure, Refusal, TaskRef};

/// Bumped whenever a message changes shape.
pub(crate) const PROTOCOL_VERSION: u32 = 1;

/// Parent → child.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    Hello {
        version: u32,
        build_id: ByteBuf,
        name: String,
        max_frame: u64,
    },
    Run {
        job: u64,
        entry: TaskRef,
        args: Batch,
    },
    Exit,
}

/// Child → parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Refused {
        reason: Refusal,
    },
    Done {
        job: u64,
        /// One value per call; a failed call's slot is empty and listed in `failures`.
        values: Batch,
        failures: Vec<(u32, Failure)>,
        /// Time the chunk took in the child, for adaptive chunk sizes.
        nanos: u64,
    },
    Aborting {
        job: u64,
        index: u32,
        message: String,
        location: Option<String>,
    },
}

/// Encoded values laid end to end in one buffer — one allocation per chunk, not per
/// call. Value `i` is `data[ends[i-1]..ends[i]]`; `fds[i]` of the frame's descriptors
/// belong to it, in order (`fds` is empty when no value has any).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Batch {
    pub(crate) data: ByteBuf,
    ends: Vec<u64>,
    fds: Vec<u32>,
}

impl Batch {
    pub(crate) fn with_capacity(values: usize, bytes: usize) -> Self {
        Batch {
            data: ByteBuf::with_capacity(bytes),
            ends: Vec::with_capacity(values),
            fds: Vec::new(),
        }
    }

    /// Appends a value already encoded.
    pub(crate) fn push(&mut self, bytes: &[u8], fds: usize) {
        self.data.extend_from_slice(bytes);
        self.close_value(fds);
    }

    /// Ends the value whose bytes were appended to `data` since the previous one.
    pub(crate) fn close_value(&mut self, fds: usize) {
        // `fds` stays empty until some value has descriptors; from then on it has one
        // count per value.
        if fds > 0 || !self.fds.is_empty() {
            self.fds.resize(self.ends.len(), 0);
            self.fds.push(fds as u32);
        }
        self.ends.push(self.data.len() as u64);
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Value `i` and its descriptor count, or `None` if the batch is malformed there
    /// (it came from another process: never trusted).
    pub(crate) fn get(&self, i: usize) -> Option<(&[u8], usize)> {
        let end = usize::try_from(*self.ends.get(i)?).ok()?;
        let start = match i {
            0 => 0,
            _ => usize::try_from(*self.ends.get(i - 1)?).ok()?,
        };
        let bytes = self.data.get(start..end)?;
        let fds = self.fds.get(i).copied().unwrap_or(0) as usize;
        Some((bytes, fds))
    }

    /// Total descriptors the batch claims (untrusted: saturating).
    pub(crate) fn total_fds(&self) -> usize {
        self.fds
            .iter()
            .fold(0usize, |total, &n| total.saturating_add(n as usize))
    }
}

impl Request {
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        crate::wire::decode(bytes)
    }
}

impl Reply {
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        crate::wire::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_counts_descriptors_whichever_value_has_them() {
        let mut b = Batch::with_capacity(3, 8);
        b.push(b"a", 1);
        b.push(b"bc", 0);
        b.push(b"d", 2);
        assert_eq!(b.len(), 3);
        assert_eq!(b.total_fds(), 3);
        assert_eq!(b.get(0), Some((&b"a"[..], 1)));
        assert_eq!(b.get(1), Some((&b"bc"[..], 0)));
        assert_eq!(b.get(2), Some((&b"d"[..], 2)));
        assert_eq!(b.get(3), None);
        let mut late = Batch::with_capacity(2, 2);
        late.push(b"x", 0);
        late.push(b"y", 1);
        assert_eq!(late.total_fds(), 1);
        assert_eq!(late.get(0), Some((&b"x"[..], 0)));
        assert_eq!(late.get(1), Some((&b"y"[..], 1)));
    }
}
