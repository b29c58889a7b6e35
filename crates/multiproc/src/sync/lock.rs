//! `Lock` and `RLock`: robust, process-shared mutexes.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::shm::segment::Segment;
use crate::sys::pmutex::{self, Held, Locked};

/// Bytes reserved for a mutex at the start of a segment (a `pthread_mutex_t`, padded
/// to a cache line).
pub(crate) const MUTEX_SIZE: usize = 64;
const _: () = assert!(size_of::<libc::pthread_mutex_t>() <= MUTEX_SIZE);

/// A mutex at offset 0 of a segment: the part shared by `Lock`, `RLock`, `Value`,
/// `Array` and `Condition`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RawLock {
    seg: Arc<Segment>,
}

impl RawLock {
    /// A new segment of `MUTEX_SIZE + extra` bytes with an initialized mutex at 0.
    pub(crate) fn new(what: &str, extra: usize, recursive: bool) -> Result<Self> {
        let seg = Segment::anonymous(what, MUTEX_SIZE + extra)?;
        pmutex::init(seg.map(), 0, recursive).map_err(|e| Error::io("initializing a lock", e))?;
        Ok(RawLock { seg: Arc::new(seg) })
    }

    /// A new named segment `/dev/shm/<name>` of `MUTEX_SIZE + extra` bytes with an
    /// initialized mutex at 0 and `init` run on it, all before the name exists. With
    /// `keep_owner == false`, the owner's claim on the name is returned separately
    /// (for a manager) instead of living in the lock's segment.
    pub(crate) fn named(
        name: &str,
        extra: usize,
        track: bool,
        keep_owner: bool,
        init: impl FnOnce(&crate::sys::shm::Mapping) -> Result<()>,
    ) -> Result<(Self, Option<crate::shm::segment::NamedOwner>)> {
        let mut seg = Segment::create_named(name, MUTEX_SIZE + extra, track, |map| {
            pmutex::init(map, 0, false).map_err(|e| Error::io("initializing a lock", e))?;
            init(map)
        })?;
        let owner = if keep_owner { None } else { seg.take_owner() };
        Ok((RawLock { seg: Arc::new(seg) }, owner))
    }

    /// Attaches to a named segment made by [`named`](Self::named), as a non-owner.
    pub(crate) fn open_named(name: &str) -> Result<Self> {
        Ok(RawLock {
            seg: Arc::new(Segment::open_named(name)?),
        })
    }

    pub(crate) fn segment(&self) -> &Segment {
        &self.seg
    }

    /// Locks, naming the primitive as `what` in errors.
    pub(crate) fn lock(
        &self,
        what: &'static str,
        timeout: Option<Duration>,
    ) -> Result<LockGuard<'_>> {
        match acquire(&self.seg, what, timeout)? {
            Some(g) => Ok(g),
            None => Err(super::timeout_error(what, timeout.unwrap_or_default())),
        }
    }

    pub(crate) fn try_lock(&self, what: &'static str) -> Result<Option<LockGuard<'_>>> {
        match acquire(&self.seg, what, Some(Duration::ZERO)) {
            // Held by this very thread: not available, like any other holder.
            Err(Error::Deadlock { .. }) => Ok(None),
            r => r,
        }
    }

    pub(crate) fn same(&self, seg: &Segment) -> bool {
        std::ptr::eq(&*self.seg, seg)
    }
}

fn acquire<'a>(
    seg: &'a Segment,
    what: &'static str,
    timeout: Option<Duration>,
) -> Result<Option<LockGuard<'a>>> {
    let outcome = pmutex::lock(seg.map(), 0, super::deadline(timeout))
        .map_err(|e| Error::io("locking a process-shared lock", e))?;
    let (held, owner_died) = match outcome {
        Locked::Acquired(held) => (held, false),
        Locked::OwnerDied(held) => {
            tracing::warn!(
                "{what}: the previous holder died holding it; the protected data may be inconsistent"
            );
            (held, true)
        }
        Locked::TimedOut => return Ok(None),
        Locked::Deadlock => return Err(Error::Deadlock { what }),
        Locked::TooDeep => {
            return Err(Error::io(
                "locking an RLock",
                std::io::Error::other("locked recursively too many times"),
            ));
        }
    };
    Ok(Some(LockGuard {
        seg,
        held,
        owner_died,
    }))
}

/// Proof that this thread holds a [`Lock`] or [`RLock`] (or the lock of a
/// [`Value`](crate::Value), [`Array`](crate::Array) or [`Condition`](crate::Condition));
/// dropping it releases the lock.
///
/// A guard belongs to the thread that locked (pthread robust mutexes are owned by a
/// thread), so it is neither `Send` nor `Sync`.
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct LockGuard<'a> {
    seg: &'a Segment,
    held: Held<'a>,
    owner_died: bool,
}

impl<'a> LockGuard<'a> {
    /// `true` if the previous holder died while holding the lock (its process was
    /// killed or exited, or its thread ended). The lock is usable again, but the data
    /// it protects may be half-updated: check or repair it.
    pub fn owner_died(&self) -> bool {
        self.owner_died
    }

    pub(crate) fn segment(&self) -> &'a Segment {
        self.seg
    }

    pub(crate) fn held(&self) -> &Held<'a> {
        &self.held
    }

    pub(crate) fn held_mut(&mut self) -> &mut Held<'a> {
        &mut self.held
    }

    /// Releases the lock, runs `f`, and locks it again (for `Condition::wait`).
    pub(crate) fn unlocked<R>(
        self,
        what: &'static str,
        f: impl FnOnce() -> R,
    ) -> Result<(Self, R)> {
        let seg = self.seg;
        drop(self);
        let r = f();
        let g =
            acquire(seg, what, None)?.ok_or_else(|| super::timeout_error(what, Duration::ZERO))?;
        Ok((g, r))
    }
}

/// A process-shared, non-recursive lock (Python's `multiprocessing.Lock`), robust to
/// holders that die.
///
/// Clones are handles to the same lock; so is a copy passed to a child as a task
/// argument. Locking again from the thread that holds it is an
/// [`Error::Deadlock`], not a hang.
///
/// ```
/// use multiproc::Lock;
/// # fn main() -> multiproc::Result<()> {
/// let lock = Lock::new()?;
/// {
///     let guard = lock.lock()?;
///     assert!(!guard.owner_died());
///     assert!(lock.try_lock()?.is_none()); // held (by us)
/// }
/// assert!(lock.try_lock()?.is_some());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lock {
    raw: RawLock,
}

const LOCK: &str = "Lock";
const RLOCK: &str = "RLock";

impl Lock {
    /// A new, unlocked lock.
    pub fn new() -> Result<Self> {
        Ok(Lock {
            raw: RawLock::new("multiproc-lock", 0, false)?,
        })
    }

    /// Waits for the lock and takes it.
    pub fn lock(&self) -> Result<LockGuard<'_>> {
        self.raw.lock(LOCK, None)
    }

    /// Takes the lock, waiting at most `timeout` ([`Error::Timeout`] after that).
    pub fn lock_timeout(&self, timeout: Duration) -> Result<LockGuard<'_>> {
        self.raw.lock(LOCK, Some(timeout))
    }

    /// Takes the lock if it is free, without waiting: `Ok(None)` if another thread or
    /// process holds it.
    pub fn try_lock(&self) -> Result<Option<LockGuard<'_>>> {
        self.raw.try_lock(LOCK)
    }
}

/// A process-shared recursive lock (Python's `multiprocessing.RLock`): the thread that
/// holds it may lock it again, and it is released when every guard is dropped. Robust
/// to holders that die, like [`Lock`].
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// let r = multiproc::RLock::new()?;
/// let a = r.lock()?;
/// let b = r.lock()?; // the same thread: fine
/// drop(b);
/// drop(a);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RLock {
    raw: RawLock,
}

impl RLock {
    /// A new, unlocked recursive lock.
    pub fn new() -> Result<Self> {
        Ok(RLock {
            raw: RawLock::new("multiproc-rlock", 0, true)?,
        })
    }

    /// Waits for the lock and takes it (again, if this thread holds it).
    pub fn lock(&self) -> Result<LockGuard<'_>> {
        self.raw.lock(RLOCK, None)
    }

    /// Takes the lock, waiting at most `timeout`.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<LockGuard<'_>> {
        self.raw.lock(RLOCK, Some(timeout))
    }

    /// Takes the lock if free (or held by this thread), without waiting.
    pub fn try_lock(&self) -> Result<Option<LockGuard<'_>>> {
        self.raw.try_lock(RLOCK)
    }
}
