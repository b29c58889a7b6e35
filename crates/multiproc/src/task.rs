//! Tasks: how a child finds the function to run and knows it may call it.
//!
//! A task is a plain `fn(A) -> R` (a non-capturing closure coerces to one). Such a
//! function has no state, so "which function" is all a child needs, and in a child of
//! the same build that is an offset into the same executable. The child checks that
//! claim before acting on it:
//!
//! 1. The parent's hello carries this build's id (the ELF `NT_GNU_BUILD_ID`, or a hash
//!    of the executable if the linker wrote none); a child of any other build refuses
//!    with [`Error::BuildMismatch`](crate::Error::BuildMismatch) and calls nothing.
//! 2. A re-executed child takes orders only from a socket whose peer is its own parent
//!    with its own uid, and refuses child mode entirely in a privileged (setuid,
//!    AT_SECURE) process — the hole that let a forged message jump anywhere in
//!    mitosis#13.
//! 3. Both offsets must fall inside this executable's code.
//!
//! Why not a table of registered names? A name table needs a macro on every task and
//! cannot hold closures. With the three checks above, the only process that can name a
//! function is one that already runs this exact program as this user, and it could run
//! any of its code anyway.

use std::io::{Read, Seek, SeekFrom};
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::error::ExitStatus;
use crate::wire::message::{Batch, Failure, Refusal};
use std::os::fd::OwnedFd;

/// Where a task lives in this executable: image offsets of its typed trampoline and of
/// the user's function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TaskRef {
    pub(crate) trampoline: u64,
    pub(crate) function: u64,
}

impl TaskRef {
    pub(crate) fn of<A: DeserializeOwned, R: Serialize>(f: fn(A) -> R) -> Self {
        crate::sys::image::entry_of(f)
    }
}

/// Decodes the argument, calls the task, and appends its encoded result to `out`.
/// Panics propagate to the caller (the worker loop catches them).
pub(crate) fn invoke<A: DeserializeOwned, R: Serialize>(
    f: fn(A) -> R,
    args: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    let a: A = crate::wire::decode(args).map_err(|e| match e {
        Error::Decode { type_name, reason } => Failure::BadArgs { type_name, reason },
        other => Failure::BadArgs {
            type_name: std::any::type_name::<A>().into(),
            reason: other.to_string(),
        },
    })?;
    let r = f(a);
    crate::wire::encode_into(&r, out).map_err(|e| Failure::BadResult {
        type_name: std::any::type_name::<R>().into(),
        reason: e.to_string(),
    })
}

/// A call's value, decoded with the descriptors that came with it.
pub(crate) fn decode_value<R: DeserializeOwned>(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<R, Error> {
    if fds.is_empty() {
        crate::wire::decode(bytes)
    } else {
        crate::wire::fds::provide(fds, || crate::wire::decode(bytes))
    }
}

/// Typed results of a chunk a worker answered: call `k` of the chunk is input
/// `indices[k]`; its value is `values[k]` (with its share of `fds`, in order) unless
/// `failures` lists `k`. The batch came from another process: a malformed one gives
/// errors, never a panic.
pub(crate) fn decode_chunk<R: DeserializeOwned>(
    pid: u32,
    indices: Vec<usize>,
    values: &Batch,
    failures: Vec<(u32, Failure)>,
    fds: Vec<OwnedFd>,
) -> Vec<(usize, Result<R, Error>)> {
    let mut failures = failures.into_iter().peekable();
    let mut fds = fds.into_iter();
    indices
        .into_iter()
        .enumerate()
        .map(|(k, index)| {
            let failed = failures.next_if(|(at, _)| *at as usize == k);
            let r = match (failed, values.get(k)) {
                (Some((_, f)), _) => Err(failure_error(f, pid)),
                (None, Some((bytes, n))) => decode_value(bytes, fds.by_ref().take(n).collect()),
                (None, None) => Err(Error::Protocol {
                    pid,
                    detail: "a malformed result batch".into(),
                }),
            };
            (index, r)
        })
        .collect()
}

/// The error for a call that failed in the child.
pub(crate) fn failure_error(failure: Failure, pid: u32) -> Error {
    match failure {
        Failure::Panicked { message, location } => Error::Panicked {
            pid,
            message,
            location,
        },
        Failure::BadArgs { type_name, reason } => Error::Decode {
            type_name,
            reason: format!("in the child, decoding the task's argument: {reason}"),
        },
        Failure::BadResult { type_name, reason } => Error::Encode {
            type_name,
            reason: format!("in the child, encoding the task's result: {reason}"),
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
        None => Error::Protocol {
            pid,
            detail: "the child closed its socket but its exit status is unavailable".into(),
        },
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

/// This build's identity: the GNU build id of the executable, or failing that a hash of
/// its bytes. Computed once per process.
pub(crate) fn build_id() -> &'static [u8] {
    static ID: OnceLock<Vec<u8>> = OnceLock::new();
    ID.get_or_init(|| {
        let path = "/proc/self/exe";
        match std::fs::File::open(path) {
            Ok(mut f) => gnu_build_id(&mut f).unwrap_or_else(|| content_hash(&mut f)),
            Err(_) => b"unknown".to_vec(),
        }
    })
}

/// Hex form of a build id, for messages.
pub(crate) fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn content_hash(f: &mut std::fs::File) -> Vec<u8> {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    if f.seek(SeekFrom::Start(0)).is_err() {
        return b"unknown".to_vec();
    }
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        h.write(&buf[..n]);
    }
    h.finish().to_le_bytes().to_vec()
}

/// Finds `NT_GNU_BUILD_ID` in the PT_NOTE segments of a 64-bit little-endian ELF file.
fn gnu_build_id(f: &mut std::fs::File) -> Option<Vec<u8>> {
    fn read_at(f: &mut std::fs::File, off: u64, len: usize) -> Option<Vec<u8>> {
        if len > 1 << 20 {
            return None;
        }
        let mut b = vec![0u8; len];
        f.seek(SeekFrom::Start(off)).ok()?;
        f.read_exact(&mut b).ok()?;
        Some(b)
    }
    let u16_at = |b: &[u8], o: usize| -> Option<u16> {
        Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
    };
    let u32_at = |b: &[u8], o: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
    };
    let u64_at = |b: &[u8], o: usize| -> Option<u64> {
        Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
    };
    let eh = read_at(f, 0, 64)?;
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return None;
    }
    let phoff = u64_at(&eh, 0x20)?;
    let phentsize = u16_at(&eh, 0x36)? as usize;
    let phnum = u16_at(&eh, 0x38)? as usize;
    if phentsize < 56 {
        return None;
    }
    let ph = read_at(f, phoff, phentsize * phnum)?;
    for i in 0..phnum {
        let p = &ph[i * phentsize..];
        if u32_at(p, 0)? != 4 {
            continue; // not PT_NOTE
        }
        let notes = read_at(f, u64_at(p, 8)?, u64_at(p, 32)? as usize)?;
        let mut o = 0usize;
        while o + 12 <= notes.len() {
            let namesz = u32_at(&notes, o)? as usize;
            let descsz = u32_at(&notes, o + 4)? as usize;
            let kind = u32_at(&notes, o + 8)?;
            let name_at = o + 12;
            let desc_at = name_at + namesz.div_ceil(4) * 4;
            let next = desc_at + descsz.div_ceil(4) * 4;
            if kind == 3 && notes.get(name_at..name_at + namesz)? == b"GNU\0" {
                return Some(notes.get(desc_at..desc_at + descsz)?.to_vec());
            }
            o = next;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_has_a_build_id() {
        let id = build_id();
        assert!(id.len() >= 8, "build id {}", hex(id));
        assert_eq!(build_id(), id);
    }

    #[test]
    fn invoke_round_trip_and_bad_args() {
        fn double(x: u32) -> u64 {
            x as u64 * 2
        }
        let args = crate::wire::encode(&21u32).unwrap();
        let mut out = Vec::new();
        invoke(double, &args, &mut out).unwrap();
        assert_eq!(crate::wire::decode::<u64>(&out).unwrap(), 42);
        match invoke(double, &[], &mut out) {
            Err(Failure::BadArgs { type_name, .. }) => assert_eq!(type_name, "u32"),
            other => panic!("{other:?}"),
        }
    }
}
