//! Spare frame buffers: the memory of a frame that was read, decoded and dropped is
//! kept for the next frame of its size instead of going back to the allocator.
//!
//! A pool's chunks and answers are frames of tens to hundreds of KiB. Allocated fresh
//! each time, every one of their pages is a page fault (the allocator hands big blocks
//! back to the kernel when they are freed); on a virtual machine a fault costs
//! microseconds, and on a program's first `map` these faults were most of the time
//! spent reading answers. A few buffers, kept in a small process-wide list, make the
//! steady state fault-free. Small frames do not use it: the allocator reuses their
//! memory anyway.

use std::sync::Mutex;

/// Frames smaller than this are allocated as usual.
const MIN: usize = 32 << 10;
/// A buffer bigger than this is not kept (inline frames are at most about 1 MiB: bigger
/// data travels in a memory file).
const MAX: usize = 2 << 20;
/// Buffers kept at most (so at most `KEEP × MAX` bytes lie idle).
const KEEP: usize = 4;

static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// An empty buffer with room for `len` bytes: a spare one if one is big enough, else a
/// new one (whose pages are mapped in one call, see `sys::mem`, if it is of a size
/// this side bounds).
pub(crate) fn take(len: usize) -> Vec<u8> {
    if (MIN..=MAX).contains(&len) {
        let mut spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = spare.iter().position(|v| v.capacity() >= len) {
            return spare.swap_remove(k);
        }
    }
    let mut v = Vec::with_capacity(len);
    // Only a length this side bounds: a frame's header is the peer's word.
    if len <= MAX {
        crate::sys::mem::prefault_spare(&mut v);
    }
    v
}

/// Keeps `v`'s memory for a later [`take`], if it is of a size worth keeping and
/// there is room.
pub(crate) fn give(mut v: Vec<u8>) {
    if !(MIN..=MAX).contains(&v.capacity()) {
        return;
    }
    v.clear();
    let mut spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
    if spare.len() < KEEP {
        spare.push(v);
    } else if let Some(smallest) = spare.iter_mut().min_by_key(|s| s.capacity())
        && smallest.capacity() < v.capacity()
    {
        *smallest = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_comes_back_for_a_frame_it_fits() {
        let mut v = take(100 << 10);
        v.extend_from_slice(&[7; 100 << 10]);
        let at = v.as_ptr();
        give(v);
        // Other tests may take it first (the list is process-wide): only if it is
        // handed out here must it be empty and big enough.
        let w = take(90 << 10);
        assert!(w.is_empty() && w.capacity() >= 90 << 10);
        if w.as_ptr() == at {
            assert!(w.capacity() >= 100 << 10);
        }
        give(vec![0; 10]);
        give(Vec::with_capacity(MAX + 1));
        assert!(
            SPARE
                .lock()
                .unwrap()
                .iter()
                .all(|s| (MIN..=MAX).contains(&s.capacity()))
        );
    }
}
