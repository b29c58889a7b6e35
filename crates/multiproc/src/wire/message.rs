//! The messages parent and child exchange, one per frame.
//!
//! Parent → child: `Hello` once (protocol version, build id, process name), then any
//! number of `Run` (a chunk of one or more calls of one task), then `Exit` (or end of
//! stream). Child → parent: one `Done` per `Run`, or one `Refused` instead of
//! everything if the hello does not match. Under `panic = "abort"` a panicking task
//! sends `Aborting` from the panic hook, just before the process dies.
//!
//! Descriptors ride along with a frame (SCM_RIGHTS); each argument and each value
//! says how many of them are its own, in order.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::Result;
use crate::task::TaskRef;

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
        calls: Vec<Payload>,
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
        outcomes: Vec<Outcome>,
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

/// An encoded value and how many of the frame's descriptors belong to it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Payload {
    pub(crate) bytes: ByteBuf,
    pub(crate) fds: u32,
}

/// Why a child refused to serve.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Refusal {
    Version { child: u32 },
    Build { child: ByteBuf },
}

/// How one task ended in the child.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Outcome {
    Value(Payload),
    Panicked {
        message: String,
        location: Option<String>,
    },
    /// The child could not decode the arguments as the task's parameter type.
    BadArgs {
        type_name: String,
        reason: String,
    },
    /// The task's return value could not be encoded.
    BadResult {
        type_name: String,
        reason: String,
    },
    /// The task reference did not point into this program's code.
    BadEntry,
}

impl Request {
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        super::decode(bytes)
    }
}

impl Reply {
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        super::decode(bytes)
    }
}
