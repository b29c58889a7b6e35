//! Shared memory: anonymous `memfd` segments, named POSIX segments, and mappings.
//!
//! A [`Mapping`] is a `MAP_SHARED` view of a whole descriptor. Everything that touches
//! its bytes goes through the bounds- and alignment-checked accessors here, so the
//! rest of the crate never handles a raw pointer.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};

/// Seals that freeze a memfd's size: a peer can then neither truncate it under our
/// mapping (which would make our accesses fault with SIGBUS) nor grow it.
const SIZE_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// A new anonymous memory file of `len` zero bytes, close-on-exec, with its size
/// sealed.
pub(crate) fn memfd(name: &str, len: usize) -> io::Result<OwnedFd> {
    let fd = memfd_unsealed(name)?;
    nix::unistd::ftruncate(&fd, len as libc::off_t)?;
    seal(fd.as_fd(), SIZE_SEALS)?;
    Ok(fd)
}

/// A new, empty anonymous memory file that accepts seals, close-on-exec.
pub(crate) fn memfd_unsealed(name: &str) -> io::Result<OwnedFd> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: memfd_create reads a NUL-terminated string that lives across the call and
    // returns a new descriptor or -1.
    let r =
        unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Adds `seals` to a memfd.
pub(crate) fn seal(fd: BorrowedFd<'_>, seals: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl(F_ADD_SEALS) takes an integer argument and touches no memory.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Seals a memfd whose contents are final: no more writes, no size change.
pub(crate) fn seal_final(fd: BorrowedFd<'_>) -> io::Result<()> {
    seal(fd, SIZE_SEALS | libc::F_SEAL_WRITE)
}

/// The seals on a descriptor (0 for a file that is not a memfd).
fn seals(fd: BorrowedFd<'_>) -> libc::c_int {
    // SAFETY: fcntl(F_GET_SEALS) touches no memory; -1 for files without seals.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    r.max(0)
}

/// `true` if the descriptor's contents can no longer change.
pub(crate) fn is_sealed_final(fd: BorrowedFd<'_>) -> bool {
    let want = libc::F_SEAL_SHRINK | libc::F_SEAL_WRITE;
    seals(fd) & want == want
}

/// `true` if the descriptor's size can no longer shrink (a mapping of it cannot fault).
pub(crate) fn is_size_sealed(fd: BorrowedFd<'_>) -> bool {
    seals(fd) & libc::F_SEAL_SHRINK != 0
}

/// The size of the file behind `fd`.
pub(crate) fn file_len(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let st = nix::sys::stat::fstat(fd)?;
    usize::try_from(st.st_size).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// Writes all of `bytes` at the current position of a (memory) file.
pub(crate) fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Sets the size of a (memory) file.
pub(crate) fn set_len(fd: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    Ok(nix::unistd::ftruncate(fd, len as libc::off_t)?)
}

/// A shared mapping of the first `len` bytes of a file, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Mapping is a range of process memory that lives until drop; through
// `&Mapping` the crate accesses it only through atomics (`atomic_at`, `load_relaxed`,
// `store_relaxed`) or through guards that a process-shared lock makes exclusive (every
// access to a locked region holds the lock); plain copies need `&mut Mapping`. Nothing
// about it is tied to one thread.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` offers only atomic access, or access under a lock.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` shared, read-write (or read-only). The caller has
    /// checked that the file is at least `len` bytes long. A sealed memfd cannot
    /// shrink; a named segment (a file of this user's, checked when opened) can be
    /// truncated by a process of that user, and an access past its new end then raises
    /// `SIGBUS`: named segments are trusted, as documented on `SharedMemory`. Either
    /// way the memory stays mapped, so nothing here becomes a dangling reference.
    pub(crate) fn new(fd: BorrowedFd<'_>, len: usize, writable: bool) -> io::Result<Mapping> {
        if len == 0 {
            return Ok(Mapping {
                ptr: NonNull::dangling(),
                len: 0,
            });
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping at an address the kernel chooses overlaps nothing Rust
        // knows about; `fd` is a valid descriptor for the duration of the call.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?,
            len,
        })
    }

    /// A read-only mapping of all `len` bytes of a sealed memfd, pre-faulted
    /// (`MAP_POPULATE`: one call instead of a page fault per page).
    pub(crate) fn new_readonly_populated(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Mapping::new(fd, 0, false);
        }
        // SAFETY: as in `new`.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?,
            len,
        })
    }

    /// Keeps the mapping out of processes forked from now on: a writable mapping that
    /// a child inherited would keep the file from being sealed against writes.
    pub(crate) fn dont_fork(&self) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        // SAFETY: madvise on exactly the range mmap returned changes only what fork
        // copies; it does not touch the memory.
        let r = unsafe { libc::madvise(self.ptr.as_ptr().cast(), self.len, libc::MADV_DONTFORK) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Faults in `len` bytes at `offset` for writing, in one call instead of a page
    /// fault per page. Best effort: a kernel without `MADV_POPULATE_WRITE` (before
    /// 5.14) leaves it to page faults.
    pub(crate) fn populate_write(&self, offset: usize, len: usize) {
        // Linux's MADV_POPULATE_WRITE (not in every libc crate version).
        const MADV_POPULATE_WRITE: libc::c_int = 23;
        let page = 4096;
        let start = offset / page * page;
        let end = offset.saturating_add(len).min(self.len);
        if start >= end {
            return;
        }
        let Some(p) = self.checked(start, end - start, page) else {
            return;
        };
        // SAFETY: the range lies inside this mapping (checked); populating only
        // allocates and maps its pages, it does not change their contents.
        unsafe { libc::madvise(p.cast(), end - start, MADV_POPULATE_WRITE) };
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// `&AtomicU32` at byte `offset`, or `None` out of bounds or misaligned.
    pub(crate) fn atomic_u32(&self, offset: usize) -> Option<&AtomicU32> {
        self.atomic_at::<AtomicU32>(offset)
    }

    /// A reference to an atomic type at `offset` (bounds and alignment checked).
    pub(crate) fn atomic_at<A: AtomicCell>(&self, offset: usize) -> Option<&A> {
        let p = self.checked(offset, size_of::<A>(), align_of::<A>())?;
        // SAFETY: `p` is in bounds and aligned for `A`; `A` is an atomic integer type
        // (sealed trait), for which every bit pattern is valid and concurrent access
        // from any thread or process is defined. The mapping lives as long as `&self`.
        Some(unsafe { &*p.cast::<A>() })
    }

    /// The address of `len` bytes at `offset` aligned to `align`, if in bounds.
    fn checked(&self, offset: usize, len: usize, align: usize) -> Option<*mut u8> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: offset + len <= self.len, so the result stays inside the mapping.
        let p = unsafe { self.ptr.as_ptr().add(offset) };
        ((p as usize) % align == 0).then_some(p)
    }

    /// Copies `dst.len()` bytes from `offset` into `dst`, `width` bytes at a time, each
    /// piece with one relaxed atomic load of that width (1, 2, 4 or 8). `false` if out
    /// of bounds, misaligned for `width`, or `dst.len()` is not a multiple of `width`.
    ///
    /// Other threads of this process may write the same bytes at the same time (the
    /// handles are `Sync`), so a plain copy would be a data race, undefined behaviour
    /// even where a torn value would be acceptable. Relaxed atomics make each piece
    /// whole and the race defined; a copy of several pieces may still mix old and new
    /// ones. Callers use one `width` per location (an element's size where it is 1, 2,
    /// 4 or 8, the width the element's atomic methods use), so no two racing accesses
    /// differ in size.
    pub(crate) fn load_relaxed(&self, offset: usize, dst: &mut [u8], width: usize) -> bool {
        if dst.is_empty() {
            return offset <= self.len;
        }
        let Some(p) = self.pieces(offset, dst.len(), width) else {
            return false;
        };
        macro_rules! copy {
            ($a:ty, $i:ty, $n:literal) => {
                for (k, out) in dst.chunks_exact_mut($n).enumerate() {
                    // SAFETY: `pieces` checked that the range lies inside the mapping and
                    // that `p` is aligned for `width == $n` with a length that is a
                    // multiple of it, so `p + k * $n` is an in-bounds, aligned `$a`. Any
                    // bit pattern is a valid integer, and atomic access to shared memory
                    // is defined whatever else other threads or processes do there. The
                    // mapping outlives the reference (it ends with this statement).
                    let a = unsafe { &*p.add(k * $n).cast::<$a>() };
                    out.copy_from_slice(&a.load(Ordering::Relaxed).to_ne_bytes());
                }
            };
        }
        match width {
            8 => copy!(AtomicU64, u64, 8),
            4 => copy!(AtomicU32, u32, 4),
            2 => copy!(AtomicU16, u16, 2),
            _ => copy!(AtomicU8, u8, 1),
        }
        true
    }

    /// Copies `src` to `offset`, `width` bytes at a time, each piece with one relaxed
    /// atomic store of that width; see [`load_relaxed`](Self::load_relaxed). `false` if
    /// out of bounds or misaligned.
    pub(crate) fn store_relaxed(&self, offset: usize, src: &[u8], width: usize) -> bool {
        if src.is_empty() {
            return offset <= self.len;
        }
        let Some(p) = self.pieces(offset, src.len(), width) else {
            return false;
        };
        macro_rules! copy {
            ($a:ty, $i:ty, $n:literal) => {
                for (k, piece) in src.chunks_exact($n).enumerate() {
                    let mut v = [0u8; $n];
                    v.copy_from_slice(piece);
                    // SAFETY: as in `load_relaxed`. Only writable mappings reach callers
                    // that store; a store through an atomic is defined under any
                    // concurrent atomic access.
                    let a = unsafe { &*p.add(k * $n).cast::<$a>() };
                    a.store(<$i>::from_ne_bytes(v), Ordering::Relaxed);
                }
            };
        }
        match width {
            8 => copy!(AtomicU64, u64, 8),
            4 => copy!(AtomicU32, u32, 4),
            2 => copy!(AtomicU16, u16, 2),
            _ => copy!(AtomicU8, u8, 1),
        }
        true
    }

    /// The address of `len` bytes at `offset` to be copied in pieces of `width`
    /// (1, 2, 4 or 8), if in bounds and aligned.
    fn pieces(&self, offset: usize, len: usize, width: usize) -> Option<*mut u8> {
        if !matches!(width, 1 | 2 | 4 | 8) || len % width != 0 {
            return None;
        }
        self.checked(offset, len, width)
    }

    /// Copies `src` to `offset` with a plain copy, for a mapping this caller has to
    /// itself (hence `&mut`: no other reference to it exists in this process). `false`
    /// if out of bounds.
    pub(crate) fn copy_in(&mut self, offset: usize, src: &[u8]) -> bool {
        let Some(p) = self.checked(offset, src.len(), 1) else {
            return false;
        };
        // SAFETY: the destination range is inside the mapping (checked) and does not
        // overlap `src`; `&mut self` means no other thread of this process can reach
        // the mapping during the copy. (Only writable mappings are handed to writers.)
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) };
        true
    }

    /// The mapped bytes, for a mapping of a memfd sealed against writes and resizes:
    /// nobody can change them while the slice lives.
    pub(crate) fn sealed_bytes(&self) -> &[u8] {
        // SAFETY: the caller mapped a file sealed with F_SEAL_WRITE|F_SEAL_SHRINK
        // (checked with `is_sealed_final` before mapping), so the bytes are immutable
        // and stay mapped for the life of `&self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The address of `count` values of `T` at `offset`, checked for bounds and
    /// alignment.
    pub(crate) fn region<T>(&self, offset: usize, count: usize) -> Option<*mut T> {
        let bytes = count.checked_mul(size_of::<T>())?;
        self.checked(offset, bytes, align_of::<T>())
            .map(|p| p.cast())
    }

    /// A pthread mutex at `offset`, checked for bounds and alignment.
    pub(crate) fn mutex(&self, offset: usize) -> Option<*mut libc::pthread_mutex_t> {
        self.checked(
            offset,
            size_of::<libc::pthread_mutex_t>(),
            align_of::<libc::pthread_mutex_t>(),
        )
        .map(|p| p.cast())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: ptr/len are exactly what mmap returned; no reference into the
            // mapping outlives `self` (all accessors borrow `self`).
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

/// Atomic integer types that may be placed over shared memory.
pub(crate) trait AtomicCell: sealed::Sealed {}

mod sealed {
    pub trait Sealed {}
}

macro_rules! atomic_cells {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl AtomicCell for $t {}
    )*};
}
atomic_cells!(
    std::sync::atomic::AtomicU8,
    std::sync::atomic::AtomicU16,
    std::sync::atomic::AtomicU32,
    std::sync::atomic::AtomicU64,
    std::sync::atomic::AtomicUsize,
    std::sync::atomic::AtomicI8,
    std::sync::atomic::AtomicI16,
    std::sync::atomic::AtomicI32,
    std::sync::atomic::AtomicI64,
    std::sync::atomic::AtomicIsize
);

/// The effective uid of this process: the owner of the files it creates, hence the
/// owner a trusted named segment must have.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Takes an advisory `flock` on `fd` without waiting: `shared` or exclusive.
/// `Ok(false)` if another open file description holds a conflicting lock.
pub(crate) fn try_flock(fd: BorrowedFd<'_>, shared: bool) -> io::Result<bool> {
    let op = if shared { libc::LOCK_SH } else { libc::LOCK_EX } | libc::LOCK_NB;
    loop {
        // SAFETY: flock takes a descriptor and an integer; it touches no memory.
        if unsafe { libc::flock(fd.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_map_and_bounds() {
        let fd = memfd("t", 8192).unwrap();
        assert_eq!(file_len(fd.as_fd()).unwrap(), 8192);
        // Sealed: cannot shrink.
        assert!(set_len(fd.as_fd(), 10).is_err());
        let mut m = Mapping::new(fd.as_fd(), 8192, true).unwrap();
        assert!(m.copy_in(8190, &[1, 2]));
        assert!(!m.copy_in(8191, &[1, 2]));
        let mut b = [0u8; 2];
        assert!(m.load_relaxed(8190, &mut b, 1));
        assert_eq!(b, [1, 2]);
        assert!(m.load_relaxed(8190, &mut b, 2));
        assert!(!m.load_relaxed(8191, &mut b, 1), "out of bounds");
        assert!(!m.load_relaxed(8189, &mut b, 2), "misaligned");
        assert!(!m.load_relaxed(8184, &mut b, 8), "not whole pieces");
        let v = 0x0102_0304_0506_0708u64.to_ne_bytes();
        for width in [1, 2, 4, 8] {
            let mut out = [0u8; 16];
            assert!(m.store_relaxed(16, &[v, v].concat(), width));
            assert!(m.load_relaxed(16, &mut out, width));
            assert_eq!(out, *[v, v].concat(), "{width}");
        }
        assert!(m.load_relaxed(8192, &mut [], 8));
        assert!(!m.store_relaxed(8193, &[], 1));
        assert!(m.atomic_u32(2).is_none());
        assert!(m.atomic_u32(8192).is_none());
        assert!(m.atomic_u32(4).is_some());
    }
}
