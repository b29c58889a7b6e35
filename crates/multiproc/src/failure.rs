//! What a caller makes of a worker that gave no value: the [`Error`] for a call that
//! failed there ([`Failure`]), for a worker that refused to serve ([`Refusal`]), and
//! for one that ended without answering (its exit status).
//!
//! One mapping for every caller (a process, the pools, MPI ranks), so that the same
//! failure reads the same wherever it happened.

use crate::error::{Error, ExitStatus};
use crate::sys::build_id::{build_id, hex};
use crate::wire::message::{Failure, Refusal};

/// The error for a call (input `index`) that failed in the worker.
pub(crate) fn failure_error(failure: Failure, pid: u32, index: usize) -> Error {
    match failure {
        Failure::Panicked {
            message,
            location,
            backtrace,
        } => Error::Panicked {
            pid,
            message,
            location,
            backtrace,
        },
        Failure::BadArgs { type_name, reason } => Error::Decode {
            type_name,
            reason: format!("in the child, decoding the argument of call {index}: {reason}"),
        },
        Failure::BadResult { type_name, reason } => Error::Encode {
            type_name,
            reason: format!("in the child, the result of call {index}: {reason}"),
        },
        Failure::TooLarge { len, max } => Error::FrameTooLarge {
            what: format!("the result of call {index}"),
            len,
            max,
        },
        Failure::BadEntry => Error::Protocol {
            pid,
            detail: "the child found no task at the given address".into(),
        },
    }
}

/// The error for a child that ended (as `status` says) without answering.
pub(crate) fn death_error(status: Option<ExitStatus>, pid: u32) -> Error {
    match status {
        Some(ExitStatus::Signaled {
            signal,
            core_dumped,
        }) => Error::Killed {
            pid,
            signal,
            core_dumped,
        },
        Some(ExitStatus::Code(code)) => Error::Exited { pid, code },
        // Never a guess: the child is gone and nobody can know how it ended.
        None => Error::StatusLost { pid },
    }
}

/// The error for a child that refused to serve.
pub(crate) fn refusal_error(reason: Refusal, pid: u32) -> Error {
    match reason {
        Refusal::Build { child } => Error::BuildMismatch {
            pid,
            parent: hex(build_id()),
            child: hex(&child),
        },
        Refusal::Version { child } => Error::Protocol {
            pid,
            detail: format!(
                "the child speaks protocol version {child}, we speak {}",
                crate::wire::message::PROTOCOL_VERSION
            ),
        },
    }
}
