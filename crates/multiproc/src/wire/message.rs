//! The messages parent and child exchange, one per frame.
//!
//! Parent → child: `Hello` once (protocol version, build id, process name), then any
//! number of `Run`, then `Exit` (or end of stream). Child → parent: one `Done` per
//! `Run`, or one `Refused` instead of everything if the hello does not match.

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
        args: ByteBuf,
    },
    Exit,
}

/// Child → parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Refused { reason: Refusal },
    Done { job: u64, outcome: Outcome },
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
    Value(ByteBuf),
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
