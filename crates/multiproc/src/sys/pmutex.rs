//! Process-shared, robust pthread mutexes placed in shared memory.
//!
//! glibc keeps a per-thread *robust list* of the robust mutexes a thread holds; when a
//! thread (or its whole process) dies, the kernel walks that list and marks each held
//! mutex `FUTEX_OWNER_DIED`, and the next `pthread_mutex_lock` returns `EOWNERDEAD`
//! instead of hanging. That is exactly "a lock held by a dead process is recovered and
//! the next owner is told". Children made by the fork server (a raw `clone`) have
//! their robust list re-registered in `proc::restore_robust_list`, so this holds under
//! every start method.
//!
//! The mutexes are `PTHREAD_MUTEX_ERRORCHECK` (relocking from the owning thread is an
//! error, not a silent deadlock) or `PTHREAD_MUTEX_RECURSIVE`, always
//! `PTHREAD_PROCESS_SHARED` and `PTHREAD_MUTEX_ROBUST`.

use std::io;
use std::marker::PhantomData;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::shm::Mapping;

/// What an attempt to lock produced.
#[derive(Debug)]
pub(crate) enum Locked<'a> {
    /// The caller holds the mutex.
    Acquired(Held<'a>),
    /// The caller holds the mutex, and its previous holder died holding it: the data it
    /// protects may be half-updated. The mutex was marked consistent again.
    OwnerDied(Held<'a>),
    /// Not acquired before the deadline (or at once, for a try).
    TimedOut,
    /// The calling thread already holds this (non-recursive) mutex.
    Deadlock,
    /// A recursive mutex was locked too many times.
    TooDeep,
}

fn mutex_ptr(map: &Mapping, offset: usize) -> io::Result<*mut libc::pthread_mutex_t> {
    map.mutex(offset)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "mutex out of bounds"))
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// Initializes a robust, process-shared mutex at `offset` of a fresh segment that no
/// other process or thread uses yet.
pub(crate) fn init(map: &Mapping, offset: usize, recursive: bool) -> io::Result<()> {
    let m = mutex_ptr(map, offset)?;
    let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
    let kind = if recursive {
        libc::PTHREAD_MUTEX_RECURSIVE
    } else {
        libc::PTHREAD_MUTEX_ERRORCHECK
    };
    // SAFETY: `attr` is initialized by pthread_mutexattr_init before any other use and
    // destroyed after; `m` points to an aligned, in-bounds pthread_mutex_t in a shared
    // mapping that the caller just created and nobody else uses yet.
    unsafe {
        check(libc::pthread_mutexattr_init(attr.as_mut_ptr()))?;
        let a = attr.as_mut_ptr();
        let r = (|| {
            check(libc::pthread_mutexattr_settype(a, kind))?;
            check(libc::pthread_mutexattr_setpshared(
                a,
                libc::PTHREAD_PROCESS_SHARED,
            ))?;
            check(libc::pthread_mutexattr_setrobust(
                a,
                libc::PTHREAD_MUTEX_ROBUST,
            ))?;
            check(libc::pthread_mutex_init(m, a))
        })();
        libc::pthread_mutexattr_destroy(a);
        r
    }
}

fn realtime_deadline(deadline: Instant) -> libc::timespec {
    let left = deadline.saturating_duration_since(Instant::now());
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        + left;
    libc::timespec {
        tv_sec: at.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: at.subsec_nanos() as libc::c_long,
    }
}

/// Locks the mutex at `offset`, waiting at most until `deadline` (`None`: forever;
/// a deadline already passed: a try).
pub(crate) fn lock(
    map: &Mapping,
    offset: usize,
    deadline: Option<Instant>,
) -> io::Result<Locked<'_>> {
    let m = mutex_ptr(map, offset)?;
    loop {
        // SAFETY: `m` is an in-bounds, aligned mutex in a mapping that outlives the
        // call (borrowed); it was initialized by `init` in the process that created the
        // segment before the segment was shared.
        let r = unsafe {
            match deadline {
                None => libc::pthread_mutex_lock(m),
                Some(d) if d <= Instant::now() => libc::pthread_mutex_trylock(m),
                Some(d) => {
                    let ts = realtime_deadline(d);
                    libc::pthread_mutex_timedlock(m, &ts)
                }
            }
        };
        return match r {
            0 => Ok(Locked::Acquired(Held::new(map, offset))),
            libc::EOWNERDEAD => {
                // SAFETY: we hold the mutex (EOWNERDEAD means acquired); marking it
                // consistent is the documented recovery step.
                check(unsafe { libc::pthread_mutex_consistent(m) })?;
                Ok(Locked::OwnerDied(Held::new(map, offset)))
            }
            libc::ETIMEDOUT | libc::EBUSY => {
                // timedlock measures CLOCK_REALTIME; if the wall clock jumped back, the
                // monotonic deadline decides.
                match deadline {
                    Some(d) if Instant::now() < d => continue,
                    _ => Ok(Locked::TimedOut),
                }
            }
            libc::EDEADLK => Ok(Locked::Deadlock),
            libc::EAGAIN => Ok(Locked::TooDeep),
            libc::EINTR => continue,
            e => Err(io::Error::from_raw_os_error(e)),
        };
    }
}

/// Proof that this thread holds the mutex at `offset` of `map`; unlocks on drop.
///
/// Only [`lock`] makes one. While it lives, the bytes the mutex protects (the rest of
/// its segment, by the crate's layout convention) belong to this thread, which is what
/// makes [`data`](Held::data) and [`data_mut`](Held::data_mut) sound. It is tied to the
/// locking thread (a robust mutex is owned by a thread), hence not `Send`.
#[derive(Debug)]
pub(crate) struct Held<'a> {
    map: &'a Mapping,
    offset: usize,
    _not_send: PhantomData<*const ()>,
}

impl<'a> Held<'a> {
    fn new(map: &'a Mapping, offset: usize) -> Self {
        Held {
            map,
            offset,
            _not_send: PhantomData,
        }
    }

    /// `count` values of `T` at byte `at` of the locked segment, or `None` if out of
    /// bounds, misaligned, or overlapping the mutex itself.
    pub(crate) fn data<T: bytemuck::Pod>(&self, at: usize, count: usize) -> Option<&[T]> {
        let p = self.data_ptr::<T>(at, count)?;
        // SAFETY: `p` is in bounds and aligned for `count` values of T (checked); T is
        // Pod, so any bytes are a valid T. Every writer of this region holds the
        // segment's mutex (crate invariant: Value and Array reach their data only
        // through a `Held`, their one-step operations included; no lock-free access
        // to it exists), and we hold it, so nothing changes the values while the
        // shared borrow of `self` lasts; the mapping outlives `'a`.
        Some(unsafe { std::slice::from_raw_parts(p, count) })
    }

    /// Like [`data`](Self::data), exclusive.
    pub(crate) fn data_mut<T: bytemuck::Pod>(
        &mut self,
        at: usize,
        count: usize,
    ) -> Option<&mut [T]> {
        let p = self.data_ptr::<T>(at, count)?;
        // SAFETY: as in `data`; the exclusive borrow of `self` (the only proof of the
        // lock in this process) makes this the only reference to the values.
        Some(unsafe { std::slice::from_raw_parts_mut(p, count) })
    }

    fn data_ptr<T>(&self, at: usize, count: usize) -> Option<*mut T> {
        let mutex_end = self.offset + size_of::<libc::pthread_mutex_t>();
        if at < mutex_end && at + count.checked_mul(size_of::<T>())? > self.offset {
            return None;
        }
        self.map.region::<T>(at, count)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // Cannot fail: this thread holds the mutex (the Held proves it).
        let _ = unlock(self.map, self.offset);
    }
}

/// Unlocks the mutex at `offset`. Fails with `EPERM` if the calling thread does not
/// hold it.
fn unlock(map: &Mapping, offset: usize) -> io::Result<()> {
    let m = mutex_ptr(map, offset)?;
    // SAFETY: as in `lock`.
    check(unsafe { libc::pthread_mutex_unlock(m) })
}
