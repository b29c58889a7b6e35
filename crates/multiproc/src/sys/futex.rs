//! Futexes over shared memory: wait on a 32-bit word until another process changes it.
//!
//! The operations are the *shared* (not `FUTEX_PRIVATE_FLAG`) kind, keyed by the
//! physical page, so they work across processes that map the same segment at
//! different addresses.

use std::sync::atomic::AtomicU32;
use std::time::Instant;

/// How a wait ended. Spurious wake-ups are possible: callers re-check their condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Woken, interrupted, or the word no longer held `expected`.
    Woken,
    /// The deadline passed.
    TimedOut,
}

/// Sleeps while `*word == expected`, at most until `deadline`.
pub(crate) fn wait(word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> Wait {
    let ts;
    let ts_ptr: *const libc::timespec = match deadline {
        None => std::ptr::null(),
        Some(d) => {
            let now = Instant::now();
            if now >= d {
                return Wait::TimedOut;
            }
            let left = d - now;
            ts = libc::timespec {
                tv_sec: left.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            };
            &ts
        }
    };
    // SAFETY: `word` is a valid, aligned 32-bit atomic for the duration of the call
    // (a reference); the kernel only reads it. `ts_ptr` is null or points to a
    // timespec that lives until the call returns.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT) {
        return Wait::TimedOut;
    }
    Wait::Woken
}

/// Wakes at most `n` waiters on `word` (in any process). Returns how many woke.
pub(crate) fn wake(word: &AtomicU32, n: u32) -> usize {
    let n = n.min(i32::MAX as u32) as i32;
    // SAFETY: FUTEX_WAKE only uses the address as a key; `word` is valid and aligned.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    r.max(0) as usize
}
