//! The worker loop: answer the hello or refuse it, take the call slot, run each chunk,
//! exit on `Exit` or end of stream.
//!
//! A pool's worker also gets a *call slot* (`Request::Slot`), a word of memory shared
//! with its parent, where it stores which call it starts: one store per call, no
//! system call. If the worker dies, the parent reads the slot and knows which call was
//! running: that call answers the death, and the worker's other calls run again
//! elsewhere.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::AtomicU64;

use serde_bytes::ByteBuf;

use super::chunk::ChunkRun;
use super::exit::{EXIT_PROTOCOL, EXIT_REFUSED};
use super::identity::{self, Origin};
use super::link::Link;
use crate::wire::message::{self, PROTOCOL_VERSION, Refusal, Request};
use crate::wire::values::{Received, map_sealed};

/// Why a worker (of this build, started as `origin` says) refuses a parent's hello.
fn refusal(version: u32, build_id: &[u8], origin: Origin) -> Option<Refusal> {
    if version != PROTOCOL_VERSION {
        Some(Refusal::Version {
            child: PROTOCOL_VERSION,
        })
    } else if origin == Origin::Execd && build_id != crate::sys::build_id::build_id() {
        Some(Refusal::Build {
            child: ByteBuf::from(crate::sys::build_id::build_id().to_vec()),
        })
    } else {
        None
    }
}

/// Serves the parent on `link` until it says `Exit` or goes away; returns the exit
/// code the process should end with.
pub(crate) fn serve(link: &mut impl Link, origin: Origin) -> i32 {
    let mut greeted = false;
    // The call slot the parent shares (a pool's worker): a mapped memory file.
    let mut slot: Option<crate::sys::shm::Mapping> = None;
    loop {
        let body = match link.recv() {
            Ok(Some(b)) => b,
            Ok(None) => return 0,
            Err(_) => return EXIT_PROTOCOL,
        };
        let Ok((request, data_start)) = message::open_frame::<Request>(&body) else {
            return EXIT_PROTOCOL;
        };
        match request {
            Request::Hello {
                version,
                build_id,
                name,
                max_frame,
                leave_term,
            } => {
                // Until now a SIGTERM waited (see `serve_socket`): one sent meanwhile
                // is acted on now, with the disposition the parent asked for.
                crate::sys::term::settle_terminate(leave_term);
                let refused = refusal(version, &build_id, origin);
                let ok = refused.is_none();
                match link.greeted(refused) {
                    Ok(true) => {}
                    Ok(false) => return EXIT_REFUSED,
                    Err(_) => return EXIT_PROTOCOL,
                }
                if !ok {
                    continue; // refused, but told to wait for Exit
                }
                if !name.is_empty() {
                    identity::set_name(name);
                }
                let max = usize::try_from(max_frame).unwrap_or(usize::MAX);
                crate::wire::set_max_frame_size(max);
                link.set_max_frame(max);
                greeted = true;
            }
            Request::Run {
                seq,
                entry,
                calls,
                max_value,
                fds,
                shared,
            } => {
                if !greeted {
                    return EXIT_PROTOCOL;
                }
                let max_value = usize::try_from(max_value).unwrap_or(usize::MAX);
                if max_value != crate::wire::max_frame_size() {
                    crate::wire::set_max_frame_size(max_value);
                    link.set_max_frame(max_value);
                }
                let Ok(mut fds) = link.take_fds(fds as usize) else {
                    return EXIT_PROTOCOL;
                };
                let data = if shared {
                    if fds.is_empty() {
                        return EXIT_PROTOCOL;
                    }
                    let file = fds.remove(0);
                    match map_sealed(&file, max_value, "a chunk's arguments") {
                        Ok(map) => Received::Shared(map),
                        Err(_) => return EXIT_PROTOCOL,
                    }
                } else {
                    Received::Inline(body, data_start)
                };
                let chunk = ChunkRun {
                    seq,
                    entry,
                    calls,
                    max_value,
                    slot: slot.as_ref().and_then(|m| m.atomic_at::<AtomicU64>(0)),
                };
                if chunk.run(link, &data, fds).is_err() {
                    // The parent is gone (or its socket is): nothing left to serve.
                    return 0;
                }
            }
            Request::Slot => {
                if !greeted || slot.is_some() {
                    return EXIT_PROTOCOL;
                }
                let Ok(mut fds) = link.take_fds(1) else {
                    return EXIT_PROTOCOL;
                };
                match map_slot(fds.pop()) {
                    Some(m) => slot = Some(m),
                    None => return EXIT_PROTOCOL,
                }
                link.serves_pool();
            }
            Request::Exit => {
                let _ = link.flush();
                return 0;
            }
        }
    }
}

/// Maps the call slot the parent sent: a memory file whose size is sealed (so that
/// nobody can shrink it under the mapping, which would make a store fault) and holds
/// the slot's word.
fn map_slot(file: Option<OwnedFd>) -> Option<crate::sys::shm::Mapping> {
    let file = file?;
    let len = crate::sys::shm::file_len(file.as_fd()).ok()?;
    if len < 8 || !crate::sys::shm::is_size_sealed(file.as_fd()) {
        return None;
    }
    let map = crate::sys::shm::Mapping::new(file.as_fd(), 8, true).ok()?;
    map.atomic_at::<AtomicU64>(0)?;
    Some(map)
}
