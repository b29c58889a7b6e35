//! Encoded values laid end to end: how a chunk's arguments (or a reply's results) are
//! written once, by the encoder, where they will travel from.
//!
//! Small data stays on the heap and goes inline in the frame. Data that grows past
//! [`SPILL_AT`] moves to a memory file (`memfd`) and the encoder keeps writing there:
//! the bytes are written once, the file is sealed against any change and its
//! descriptor is sent instead of the bytes. The receiver maps it read-only and decodes
//! straight from the mapping. A 256 MiB value is thus copied twice in all (encoded into
//! the file, decoded out of it) instead of through a socket in 64 KiB pieces.
//!
//! The file is reserved at the frame limit up front (sparse: untouched pages cost
//! nothing), so the encoder never reallocates and never writes past the limit: a value
//! that does not fit is refused as soon as it passes it.

use std::os::fd::{AsFd, OwnedFd};

use postcard::ser_flavors::Flavor;

use crate::error::{Error, Result};
use crate::sys::shm::{self as sys_shm, Mapping};

/// Data over this many bytes travels in a sealed memory file instead of inline.
pub const SPILL_AT: usize = 1 << 20;

/// Writes to the mapping are gathered in a heap buffer of this size first, so that a
/// value encoded byte by byte does not pay a bounds-checked copy per byte.
const STAGE: usize = 64 << 10;

/// Where encoded values go.
#[derive(Debug)]
pub(crate) struct ValueBuf {
    heap: Vec<u8>,
    spill: Option<Spill>,
    /// Spill past [`SPILL_AT`] (false: a transport that cannot pass descriptors).
    may_spill: bool,
    /// No write may take the data past this many bytes.
    limit: usize,
    /// A write went past `limit`; the current value is lost (the caller truncates).
    overflowed: bool,
}

#[derive(Debug)]
struct Spill {
    fd: OwnedFd,
    map: Mapping,
    /// Bytes in the file; `heap` holds what comes after them.
    written: usize,
    /// Bytes of the mapping faulted in ahead of writing.
    populated: usize,
}

/// The file's pages are faulted in ahead of the encoder, as much again as was written
/// (at least 256 KiB, at most 8 MiB at a time): a value just over the spill threshold
/// does not pay for 8 MiB of zeroed pages.
const POPULATE_MIN: usize = 256 << 10;
const POPULATE_MAX: usize = 8 << 20;

/// Data ready to travel.
#[derive(Debug)]
pub(crate) enum Data {
    Inline(Vec<u8>),
    /// A sealed memory file.
    Shared(OwnedFd),
}

impl ValueBuf {
    /// An empty buffer that never grows past `limit` bytes.
    pub(crate) fn new(limit: usize, may_spill: bool) -> Self {
        ValueBuf {
            heap: Vec::new(),
            spill: None,
            may_spill,
            limit,
            overflowed: false,
        }
    }

    /// Bytes written so far.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.spill.as_ref().map_or(0, |s| s.written) + self.heap.len()
    }

    /// Forgets everything after the first `len` bytes (undoes a value that failed).
    pub(crate) fn truncate(&mut self, len: usize) {
        self.overflowed = false;
        match &mut self.spill {
            None => self.heap.truncate(len),
            Some(s) if len >= s.written => self.heap.truncate(len - s.written),
            Some(s) => {
                // Rare: a big value failed. The file keeps stale bytes past `len`,
                // which the next write overwrites and `finish` cuts off.
                s.written = len;
                self.heap.clear();
            }
        }
    }

    /// The most bytes it holds.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Whether a write went past the limit since the last `truncate`.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Appends bytes encoded elsewhere (a value relayed as it came); `false` if that
    /// goes past the limit (the buffer then holds a partial value: truncate it).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn append(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() > 16 {
            // A run of values at once (plain data): room for exactly them.
            self.reserve(bytes.len());
        }
        self.write(bytes)
    }

    /// Makes room for `n` more bytes that will stay in memory (not spill), mapped in
    /// one call (see `sys::mem`): a chunk's run of plain values is about to be written.
    pub(crate) fn reserve(&mut self, n: usize) {
        let stays = self.heap.len().saturating_add(n) <= SPILL_AT.min(self.limit);
        if self.spill.is_none() && stays && self.heap.capacity() - self.heap.len() < n {
            if self.heap.capacity() == 0 {
                // A spare buffer of an earlier chunk or frame (see `wire::spare`).
                self.heap = super::spare::take(n);
            } else {
                self.heap.reserve_exact(n);
                crate::sys::mem::prefault_spare(&mut self.heap);
            }
        }
    }

    /// Appends the bytes of one plain value (`sys::plain`): a few bytes whose count is
    /// a constant where this is inlined, so the copy is a single move.
    #[inline(always)]
    pub(crate) fn append_plain(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() <= 16
            && self.spill.is_none()
            && self.heap.len() + 16 <= SPILL_AT.min(self.limit)
        {
            self.heap.extend_from_slice(bytes);
            return true;
        }
        self.write_slow(bytes)
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) -> bool {
        // Tiny values (varints, small fields) dominate small calls: no memcpy call, no
        // spill bookkeeping for them.
        if bytes.len() <= 16
            && self.spill.is_none()
            && self.heap.len() + 16 <= SPILL_AT.min(self.limit)
        {
            // A byte loop: a call to memcpy costs more than these few bytes.
            self.heap.reserve(16);
            for &b in bytes {
                self.heap.push(b);
            }
            return true;
        }
        self.write_slow(bytes)
    }

    fn write_slow(&mut self, bytes: &[u8]) -> bool {
        // Tiny values (varints, small fields) dominate small calls: no memcpy call, no
        // spill bookkeeping for them.
        if bytes.len() <= 16
            && self.spill.is_none()
            && self.heap.len() + 16 <= SPILL_AT.min(self.limit)
        {
            for &b in bytes {
                self.heap.push(b);
            }
            return true;
        }
        if self.len() + bytes.len() > self.limit {
            self.overflowed = true;
            return false;
        }
        if self.spill.is_none() && self.may_spill && self.heap.len() + bytes.len() > SPILL_AT {
            match Spill::start(self.limit) {
                Ok(s) => self.spill = Some(s),
                // No memory file (fd limit, no memfd): stay on the heap.
                Err(_) => self.may_spill = false,
            }
        }
        match &mut self.spill {
            Some(s) if self.heap.len() + bytes.len() > STAGE => {
                if !s.append(&self.heap) {
                    self.overflowed = true;
                    return false;
                }
                self.heap.clear();
                if bytes.len() > STAGE {
                    if !s.append(bytes) {
                        self.overflowed = true;
                        return false;
                    }
                    return true;
                }
                self.heap.extend_from_slice(bytes);
                true
            }
            _ => {
                self.heap.extend_from_slice(bytes);
                true
            }
        }
    }

    /// The data, sealed if it went to a file.
    pub(crate) fn finish(mut self) -> Result<Data> {
        let Some(mut s) = self.spill.take() else {
            return Ok(Data::Inline(self.heap));
        };
        if !s.append(&self.heap) {
            return Err(Error::FrameTooLarge {
                what: "a frame".into(),
                len: (s.written + self.heap.len()) as u64,
                max: self.limit as u64,
            });
        }
        let fail = |e| Error::io("sealing a shared-memory message", e);
        drop(s.map); // a writable mapping would make F_SEAL_WRITE fail
        sys_shm::set_len(s.fd.as_fd(), s.written).map_err(fail)?;
        sys_shm::seal_final(s.fd.as_fd()).map_err(fail)?;
        Ok(Data::Shared(s.fd))
    }

    /// The bytes, for a buffer that did not spill (tests).
    #[cfg(test)]
    pub(crate) fn heap(&self) -> Option<&[u8]> {
        self.spill.is_none().then_some(&self.heap[..])
    }
}

impl Spill {
    /// Copies `bytes` to the end of the file's data; `false` past the mapping.
    fn append(&mut self, bytes: &[u8]) -> bool {
        let end = self.written + bytes.len();
        if end > self.populated {
            let step = self.populated.clamp(POPULATE_MIN, POPULATE_MAX);
            let upto = end.max(self.populated + step);
            self.map
                .populate_write(self.populated, upto - self.populated);
            self.populated = upto;
        }
        if !self.map.copy_in(self.written, bytes) {
            return false;
        }
        self.written = end;
        true
    }

    fn start(limit: usize) -> std::io::Result<Spill> {
        let fd = sys_shm::memfd_unsealed("multiproc-values")?;
        sys_shm::set_len(fd.as_fd(), limit)?;
        let map = Mapping::new(fd.as_fd(), limit, true)?;
        map.dont_fork()?;
        Ok(Spill {
            fd,
            map,
            written: 0,
            populated: 0,
        })
    }
}

impl Flavor for &mut ValueBuf {
    type Output = ();

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.try_extend(std::slice::from_ref(&data))
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if self.write(data) {
            Ok(())
        } else {
            Err(postcard::Error::SerializeBufferFull)
        }
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Received data: a slice of a frame, or a read-only mapping of a sealed file.
pub(crate) enum Received {
    Inline(Vec<u8>, usize),
    Shared(Mapping),
}

impl Drop for Received {
    fn drop(&mut self) {
        // The frame's memory serves the next frame (see `wire::spare`).
        if let Received::Inline(v, _) = self {
            super::spare::give(std::mem::take(v));
        }
    }
}

impl Received {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Received::Inline(v, start) => v.get(*start..).unwrap_or(&[]),
            Received::Shared(m) => m.sealed_bytes(),
        }
    }
}

/// Maps a memory file a peer sent, refusing one that could still change (unsealed: a
/// peer could truncate it under the mapping) or that is over `max` bytes.
pub(crate) fn map_sealed(fd: &OwnedFd, max: usize, what: &str) -> Result<Mapping> {
    if !sys_shm::is_sealed_final(fd.as_fd()) {
        return Err(Error::Protocol {
            pid: 0,
            detail: format!("{what} in a memory file that is not sealed"),
        });
    }
    let len = sys_shm::file_len(fd.as_fd()).map_err(|e| Error::io("reading shared memory", e))?;
    if len > max {
        return Err(Error::FrameTooLarge {
            what: "a frame".into(),
            len: len as u64,
            max: max as u64,
        });
    }
    Mapping::new_readonly_populated(fd.as_fd(), len)
        .map_err(|e| Error::io("mapping shared memory", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode<T: serde::Serialize>(v: &T, buf: &mut ValueBuf) -> postcard::Result<()> {
        postcard::serialize_with_flavor(v, buf)
    }

    #[test]
    fn small_values_stay_inline_and_truncate_undoes_one() {
        let mut b = ValueBuf::new(1 << 20, true);
        encode(&7u64, &mut b).unwrap();
        let mark = b.len();
        encode(&"hello", &mut b).unwrap();
        b.truncate(mark);
        encode(&9u8, &mut b).unwrap();
        match b.finish().unwrap() {
            Data::Inline(v) => assert_eq!(v, vec![7, 9]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn big_values_spill_to_a_sealed_file_and_read_back() {
        let big = serde_bytes::ByteBuf::from(vec![5u8; 3 << 20]);
        let mut b = ValueBuf::new(64 << 20, true);
        encode(&1u8, &mut b).unwrap();
        encode(&big, &mut b).unwrap();
        encode(&2u8, &mut b).unwrap();
        let Data::Shared(fd) = b.finish().unwrap() else {
            panic!("expected a memory file")
        };
        let map = map_sealed(&fd, 64 << 20, "test").unwrap();
        assert!(map.len() > 3 << 20);
        let bytes = map.sealed_bytes();
        let (a, rest): (u8, _) = postcard::take_from_bytes(bytes).unwrap();
        let (v, rest): (serde_bytes::ByteBuf, _) = postcard::take_from_bytes(rest).unwrap();
        let (c, rest): (u8, _) = postcard::take_from_bytes(rest).unwrap();
        assert_eq!((a, v.len(), c, rest.len()), (1, 3 << 20, 2, 0));
        assert!(v.iter().all(|&x| x == 5));
    }

    #[test]
    fn a_value_past_the_limit_overflows_without_allocating_it() {
        let mut b = ValueBuf::new(2 << 20, true);
        let big = serde_bytes::ByteBuf::from(vec![1u8; 3 << 20]);
        assert!(encode(&big, &mut b).is_err());
        assert!(b.overflowed());
        b.truncate(0);
        encode(&3u8, &mut b).unwrap();
        assert!(!b.overflowed());
    }
}
