//! A chunk's arguments kept until it is answered ([`Kept`]), to run its calls again
//! should its worker die: shared with the message that carries them, or a copy.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::ends::Ends;
use crate::wire::bytes::SharedBytes;
use crate::wire::values::Data;

/// A chunk's arguments, kept until it is answered, to run its calls again should its
/// worker die.
pub(super) struct Kept {
    data: KeptData,
    /// Where each call's argument ends in `data`.
    ends: Ends,
    /// Copies of the chunk's descriptors (its arguments number them).
    pub(super) fds: Vec<OwnedFd>,
}

enum KeptData {
    /// Shared with the message that carries them (or a copy, for a transport that
    /// needs its own).
    Inline(SharedBytes),
    /// A copy of the descriptor of the sealed memory file they travel in.
    File(OwnedFd),
}

impl Drop for Kept {
    fn drop(&mut self) {
        // The chunk was answered (or given up): its buffer serves a later chunk or
        // frame (see `wire::spare`), unless the message still holds it.
        if let KeptData::Inline(v) = &mut self.data {
            std::mem::take(v).recycle();
        }
    }
}

impl Kept {
    /// The encoded arguments of the calls at `positions` (`None`: the memory file they
    /// travel in cannot be read back).
    pub(super) fn arguments(&self, positions: &[usize]) -> Option<Vec<Vec<u8>>> {
        let map;
        let all: &[u8] = match &self.data {
            KeptData::Inline(v) => &v[..],
            KeptData::File(file) => {
                map = crate::wire::values::map_sealed(file, usize::MAX, "kept arguments").ok()?;
                map.sealed_bytes()
            }
        };
        positions
            .iter()
            .map(|&p| {
                all.get(self.ends.span(p)?).map(<[u8]>::to_vec)
            })
            .collect()
    }

    /// Copies of the chunk's descriptors.
    pub(super) fn fds(&self) -> Vec<OwnedFd> {
        self.fds.iter().filter_map(|f| f.try_clone().ok()).collect()
    }
}

/// What is kept of a chunk whose arguments (holding no descriptors) are shared with
/// the message that carries them.
pub(super) fn keep_shared(data: SharedBytes, ends: Ends) -> Kept {
    Kept {
        data: KeptData::Inline(data),
        ends,
        fds: Vec::new(),
    }
}

/// What is kept of a chunk about to be sent ([`Kept`]), and its data as sent: inline
/// data is shared with the message (`share`) or copied.
pub(super) fn keep_chunk(
    data: Data,
    ends: Ends,
    fds: &[OwnedFd],
    share: bool,
) -> (Data, Option<SharedBytes>, Option<Kept>) {
    // Only a chunk whose descriptors could all be copied can run again.
    let fd_copies: Option<Vec<OwnedFd>> = fds.iter().map(|f| f.try_clone().ok()).collect();
    let kept = |data| {
        fd_copies.map(|fds| Kept {
            data,
            ends,
            fds,
        })
    };
    match data {
        Data::Inline(v) if share => {
            let v = SharedBytes::Buffer(Arc::new(v));
            let k = kept(KeptData::Inline(v.clone()));
            (Data::Inline(Vec::new()), Some(v), k)
        }
        Data::Inline(v) => {
            let k = kept(KeptData::Inline(SharedBytes::Buffer(Arc::new(v.clone()))));
            (Data::Inline(v), None, k)
        }
        Data::Shared(file) => {
            let k = file
                .try_clone()
                .ok()
                .and_then(|copy| kept(KeptData::File(copy)));
            (Data::Shared(file), None, k)
        }
    }
}
