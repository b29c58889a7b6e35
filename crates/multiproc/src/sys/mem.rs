//! Faulting in, in one system call, the pages a big buffer is about to be written to.
//!
//! On a program's first `map`, most of the caller's time went to page faults: every
//! fresh page of the arguments, the chunks and the result costs a trap into the kernel
//! the first time it is written, and on a virtual machine a trap costs microseconds.
//! `MADV_POPULATE_WRITE` (Linux 5.14) maps the same pages in one call, without a trap
//! per page; elsewhere it fails and the pages fault in as before.

/// Below this, a buffer's few faults cost less than the call.
const WORTH: usize = 64 << 10;
/// Above this, pages fault in as they are written: a capacity can come from a size
/// hint (an iterator's lower bound), and a wrong one must not turn into that much
/// memory at once.
const MOST: usize = 1 << 30;

/// Maps the whole pages inside `start .. start + len` as a write would, without
/// writing, if there are enough to be worth a system call. Contents are untouched: only
/// page tables change (a page never written reads as zeros either way).
///
/// # Safety
///
/// `start .. start + len` must lie inside one allocation that stays allocated during
/// the call.
unsafe fn populate_inward(start: usize, len: usize) {
    if !(WORTH..=MOST).contains(&len) {
        return;
    }
    let page = 4096usize;
    let first = start.next_multiple_of(page);
    let end = (start + len) & !(page - 1);
    if end <= first {
        return;
    }
    // SAFETY: `first .. end` lies inside `start .. start + len`, inside a live
    // allocation (the caller's promise). The advice maps pages as a write would,
    // without writing: no byte of the allocation (or outside it) changes, so no Rust
    // value is affected. An error (an old kernel without the advice) leaves everything
    // as it was.
    unsafe {
        libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_POPULATE_WRITE);
    }
}

/// Maps the pages of `s` (inward from its ends, to whole pages), if there are enough
/// to be worth a system call.
pub(crate) fn prefault_slice<T>(s: &mut [T]) {
    let len = std::mem::size_of_val(s);
    // SAFETY: the range is `s`, borrowed exclusively during the call.
    unsafe { populate_inward(s.as_mut_ptr() as usize, len) }
}

/// Maps the pages of `v`'s spare capacity (room past its length), if there is enough of
/// it to be worth a system call.
pub(crate) fn prefault_spare<T>(v: &mut Vec<T>) {
    let size = std::mem::size_of::<T>();
    if size == 0 {
        return;
    }
    let spare = (v.capacity() - v.len()).saturating_mul(size);
    let start = v.as_mut_ptr().wrapping_add(v.len()) as usize;
    // SAFETY: the range is `v`'s spare capacity, inside the allocation `v` owns, which
    // stays allocated (`v` is borrowed) during the call.
    unsafe { populate_inward(start, spare) }
}
