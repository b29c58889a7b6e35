//! Proxies of the queues and synchronisation primitives a manager serves (Python's
//! `SyncManager` types). Each blocking call blocks in the manager, on a thread that
//! serves this caller alone, and answers when it is done, times out, or the manager
//! dies (then at once, with [`Error::ManagerGone`]).
//!
//! Unlike [`crate::Lock`] and the other shared-memory primitives, these work between
//! processes that share nothing but the manager's address: unrelated programs, other
//! machines. They cost a message per call; on one machine, between processes that
//! multiproc started, the shared-memory ones are much faster.

use std::marker::PhantomData;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::protocol::{Op, Reply};
use super::proxy::{ObjRef, owner};
use crate::error::{Error, Result};

fn unit(obj: &ObjRef, r: Reply) -> Result<()> {
    match r {
        Reply::Unit => Ok(()),
        r => Err(obj.unexpected(&r)),
    }
}

fn boolean(obj: &ObjRef, r: Reply) -> Result<bool> {
    match r {
        Reply::Bool(b) => Ok(b),
        r => Err(obj.unexpected(&r)),
    }
}

fn count(obj: &ObjRef, r: Reply) -> Result<u64> {
    match r {
        Reply::Count(n) => Ok(n),
        r => Err(obj.unexpected(&r)),
    }
}

fn timeout_error(what: &str, timeout: Duration) -> Error {
    Error::Timeout {
        what: what.to_owned(),
        timeout,
    }
}

fn put_op<T: Serialize>(
    obj: &ObjRef,
    item: &T,
    block: bool,
    timeout: Option<Duration>,
) -> Result<()> {
    let r = obj.op(Op::Put {
        item: obj.encode(item)?,
        block,
        timeout,
    })?;
    unit(obj, r)
}

fn get_op<T: DeserializeOwned>(obj: &ObjRef, block: bool, timeout: Option<Duration>) -> Result<T> {
    match obj.op(Op::Take { block, timeout })? {
        Reply::Bytes(b) => obj.decode(&b),
        r => Err(obj.unexpected(&r)),
    }
}

macro_rules! queue_methods {
    () => {
        /// Adds `item`, waiting while the queue is full.
        pub fn put(&self, item: &T) -> Result<()> {
            put_op(&self.obj, item, true, None)
        }

        /// Like [`put`](Self::put), waiting at most `timeout` ([`Error::Full`] then).
        pub fn put_timeout(&self, item: &T, timeout: Duration) -> Result<()> {
            put_op(&self.obj, item, true, Some(timeout))
        }

        /// Adds `item` if there is room now ([`Error::Full`] otherwise).
        pub fn try_put(&self, item: &T) -> Result<()> {
            put_op(&self.obj, item, false, None)
        }

        /// Takes the next item, waiting as long as it takes.
        pub fn get(&self) -> Result<T> {
            get_op(&self.obj, true, None)
        }

        /// Like [`get`](Self::get), waiting at most `timeout` ([`Error::Timeout`]).
        pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
            get_op(&self.obj, true, Some(timeout))
        }

        /// Takes the next item if there is one now ([`Error::Empty`] otherwise).
        pub fn try_get(&self) -> Result<T> {
            get_op(&self.obj, false, None)
        }

        /// The number of items now (Python's `qsize`).
        pub fn len(&self) -> Result<usize> {
            let r = self.obj.op(Op::Len)?;
            count(&self.obj, r).map(|n| n as usize)
        }

        /// Whether it holds no item now.
        pub fn is_empty(&self) -> Result<bool> {
            Ok(self.len()? == 0)
        }
    };
}

/// A proxy of a FIFO queue held by a manager (Python's `manager.Queue(maxsize)`).
///
/// A proxy put in it (a queue of `Dict`s) is kept alive by the queue until the queue
/// itself goes.
pub struct Queue<T> {
    pub(crate) obj: ObjRef,
    pub(crate) _t: PhantomData<fn(T) -> T>,
}

super::proxy_common!(Queue<T>, Queue);

impl<T: Serialize + DeserializeOwned> Queue<T> {
    queue_methods!();
}

/// A [`Queue`] whose consumers say when each item is done, so that a producer can
/// [`join`](Self::join) (Python's `manager.JoinableQueue()`).
pub struct JoinableQueue<T> {
    pub(crate) obj: ObjRef,
    pub(crate) _t: PhantomData<fn(T) -> T>,
}

super::proxy_common!(JoinableQueue<T>, JoinableQueue);

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    queue_methods!();

    /// Says one item taken with `get` is done ([`Error::TaskDoneTooOften`] if more
    /// were done than put).
    pub fn task_done(&self) -> Result<()> {
        let r = self.obj.op(Op::TaskDone)?;
        unit(&self.obj, r)
    }

    /// Waits until every item put was done.
    pub fn join(&self) -> Result<()> {
        let r = self.obj.op(Op::Join { timeout: None })?;
        boolean(&self.obj, r).map(drop)
    }

    /// Like [`join`](Self::join), waiting at most `timeout`: `false` if items are still
    /// not done then.
    pub fn join_timeout(&self, timeout: Duration) -> Result<bool> {
        let r = self.obj.op(Op::Join {
            timeout: Some(timeout),
        })?;
        boolean(&self.obj, r)
    }
}

/// Held while the guard lives: released when it drops.
#[must_use = "the lock is released when the guard drops"]
pub struct Guard<'a> {
    obj: &'a ObjRef,
}

impl std::fmt::Debug for Guard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Guard({:?})", self.obj)
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let _ = self.obj.op(Op::Release { owner: owner() });
    }
}

fn acquire(obj: &ObjRef, block: bool, timeout: Option<Duration>) -> Result<bool> {
    let r = obj.op(Op::Acquire {
        owner: owner(),
        block,
        timeout,
    })?;
    boolean(obj, r)
}

fn release(obj: &ObjRef) -> Result<()> {
    let r = obj.op(Op::Release { owner: owner() })?;
    unit(obj, r)
}

macro_rules! lock_methods {
    ($what:literal) => {
        /// Takes it, waiting as long as it takes; released when the guard drops.
        pub fn lock(&self) -> Result<Guard<'_>> {
            acquire(&self.obj, true, None)?;
            Ok(Guard { obj: &self.obj })
        }

        /// Like [`lock`](Self::lock), waiting at most `timeout` ([`Error::Timeout`]).
        pub fn lock_timeout(&self, timeout: Duration) -> Result<Guard<'_>> {
            if acquire(&self.obj, true, Some(timeout))? {
                Ok(Guard { obj: &self.obj })
            } else {
                Err(timeout_error($what, timeout))
            }
        }

        /// Takes it if it is free now.
        pub fn try_lock(&self) -> Result<Option<Guard<'_>>> {
            Ok(acquire(&self.obj, false, None)?.then_some(Guard { obj: &self.obj }))
        }

        /// Takes it without a guard (Python's `acquire()`); give it back with
        /// [`release`](Self::release).
        pub fn acquire(&self) -> Result<()> {
            acquire(&self.obj, true, None).map(drop)
        }

        /// Gives back what [`acquire`](Self::acquire) took.
        pub fn release(&self) -> Result<()> {
            release(&self.obj)
        }

        /// Whether some thread holds it now.
        pub fn is_locked(&self) -> Result<bool> {
            let r = self.obj.op(Op::IsSet)?;
            boolean(&self.obj, r)
        }
    };
}

/// A proxy of a lock held by a manager (Python's `manager.Lock()`).
///
/// Locking it again from the thread that holds it, without a timeout, is
/// [`Error::Manager`] rather than a deadlock; as in Python, any thread may release it.
/// A lock held by a client process that dies stays held (as in Python): prefer
/// [`crate::Lock`] between processes of one program, which knows when its holder died.
pub struct Lock {
    pub(crate) obj: ObjRef,
    pub(crate) _t: PhantomData<()>,
}

super::proxy_common!(Lock<>, Lock);

impl Lock {
    lock_methods!("a manager's Lock");
}

/// A proxy of a re-entrant lock held by a manager (Python's `manager.RLock()`): the
/// thread that holds it may take it again, and must release it as many times.
pub struct RLock {
    pub(crate) obj: ObjRef,
    pub(crate) _t: PhantomData<()>,
}

super::proxy_common!(RLock<>, RLock);

impl RLock {
    lock_methods!("a manager's RLock");
}

/// A proxy of a condition variable held by a manager, with its own re-entrant lock
/// (Python's `manager.Condition()`).
///
/// Hold it (`lock()` or `acquire()`) to [`wait`](Self::wait) or
/// [`notify`](Self::notify), as in Python.
pub struct Condition {
    pub(crate) obj: ObjRef,
    pub(crate) _t: PhantomData<()>,
}

super::proxy_common!(Condition<>, Condition);

impl Condition {
    lock_methods!("a manager's Condition");

    /// Releases the lock, waits for a notification, and takes the lock back.
    pub fn wait(&self) -> Result<()> {
        let r = self.obj.op(Op::Wait {
            owner: owner(),
            timeout: None,
        })?;
        boolean(&self.obj, r).map(drop)
    }

    /// Like [`wait`](Self::wait), waiting at most `timeout` for the notification:
    /// whether it came. The lock is held again either way.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        let r = self.obj.op(Op::Wait {
            owner: owner(),
            timeout: Some(timeout),
        })?;
        boolean(&self.obj, r)
    }

    /// Waits until `predicate()` holds, checking it at each notification (Python's
    /// `wait_for`, without a timeout).
    pub fn wait_for(&self, mut predicate: impl FnMut() -> Result<bool>) -> Result<()> {
        while !predicate()? {
            self.wait()?;
        }
        Ok(())
    }

    /// Wakes up to `n` waiters.
    pub fn notify(&self, n: u32) -> Result<()> {
        let r = self.obj.op(Op::Notify {
            owner: owner(),
            n: n.into(),
        })?;
        unit(&self.obj, r)
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) -> Result<()> {
        let r = self.obj.op(Op::Notify {
            owner: owner(),
            n: u64::MAX,
        })?;
        unit(&self.obj, r)
    }
}

macro_rules! semaphore_methods {
    () => {
        /// Takes one unit, waiting until there is one.
        pub fn acquire(&self) -> Result<()> {
            acquire(&self.obj, true, None).map(drop)
        }

        /// Like [`acquire`](Self::acquire), waiting at most `timeout`: whether it took one.
        pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool> {
            acquire(&self.obj, true, Some(timeout))
        }

        /// Takes one unit if there is one now.
        pub fn try_acquire(&self) -> Result<bool> {
            acquire(&self.obj, false, None)
        }

        /// Units free now.
        pub fn value(&self) -> Result<u32> {
            let r = self.obj.op(Op::Len)?;
            count(&self.obj, r).map(|n| n as u32)
        }
    };
}

/// A proxy of a counting semaphore held by a manager (Python's `manager.Semaphore(n)`).
pub struct Semaphore {
    pub(crate) obj: ObjRef,
    pub(crate) _t: PhantomData<()>,
}

super::proxy_common!(Semaphore<>, Semaphore);

impl Semaphore {
    semaphore_methods!();

    /// Gives back one unit.
    pub fn release(&self) -> Result<()> {
        release(&self.obj)
    }
}

/// A [`Semaphore`] that refuses to be released above its starting value
/// ([`Error::SemaphoreOverflow`]); Python's `manager.BoundedSemaphore(n)`.
pub struct BoundedSemaphore {
    pub(crate) obj: ObjRef,
    pub(crate) _t: PhantomData<()>,
}

super::proxy_common!(BoundedSemaphore<>, BoundedSemaphore);

impl BoundedSemaphore {
    semaphore_methods!();

    /// Gives back one unit; an error if that would exceed the starting value.
    pub fn release(&self) -> Result<()> {
        release(&self.obj)
    }
}

/// A proxy of an event flag held by a manager (Python's `manager.Event()`).
pub struct Event {
    pub(crate) obj: ObjRef,
    pub(crate) _t: PhantomData<()>,
}

super::proxy_common!(Event<>, Event);

impl Event {
    /// Sets the flag, waking every waiter.
    pub fn set(&self) -> Result<()> {
        let r = self.obj.op(Op::SetFlag)?;
        unit(&self.obj, r)
    }

    /// Clears the flag.
    pub fn clear(&self) -> Result<()> {
        let r = self.obj.op(Op::ClearFlag)?;
        unit(&self.obj, r)
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> Result<bool> {
        let r = self.obj.op(Op::IsSet)?;
        boolean(&self.obj, r)
    }

    /// Waits until the flag is set.
    pub fn wait(&self) -> Result<()> {
        let r = self.obj.op(Op::WaitFlag { timeout: None })?;
        boolean(&self.obj, r).map(drop)
    }

    /// Waits at most `timeout` for the flag: whether it is set.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        let r = self.obj.op(Op::WaitFlag {
            timeout: Some(timeout),
        })?;
        boolean(&self.obj, r)
    }
}

/// A proxy of a barrier held by a manager (Python's `manager.Barrier(parties)`).
///
/// As in Python, a party that times out breaks the barrier for every party; so does,
/// here, a party whose process dies while it waits (the others would wait forever).
pub struct Barrier {
    pub(crate) obj: ObjRef,
    pub(crate) _t: PhantomData<()>,
}

super::proxy_common!(Barrier<>, Barrier);

impl Barrier {
    /// Waits until every party waits; each gets a distinct index in `0..parties`.
    pub fn wait(&self) -> Result<u32> {
        let r = self.obj.op(Op::BarrierWait { timeout: None })?;
        count(&self.obj, r).map(|n| n as u32)
    }

    /// Like [`wait`](Self::wait), for at most `timeout`; then the barrier breaks
    /// ([`Error::BrokenBarrier`], for every party).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<u32> {
        let r = self.obj.op(Op::BarrierWait {
            timeout: Some(timeout),
        })?;
        count(&self.obj, r).map(|n| n as u32)
    }

    /// Breaks the barrier: every waiter, now and later, gets [`Error::BrokenBarrier`].
    pub fn abort(&self) -> Result<()> {
        let r = self.obj.op(Op::Abort)?;
        unit(&self.obj, r)
    }

    /// Makes it whole and empty again; parties waiting now get [`Error::BrokenBarrier`].
    pub fn reset(&self) -> Result<()> {
        let r = self.obj.op(Op::Reset)?;
        unit(&self.obj, r)
    }

    /// The number of parties.
    pub fn parties(&self) -> Result<u32> {
        let r = self.obj.op(Op::Parties)?;
        count(&self.obj, r).map(|n| n as u32)
    }

    /// Parties waiting now.
    pub fn n_waiting(&self) -> Result<u32> {
        let r = self.obj.op(Op::Waiting)?;
        count(&self.obj, r).map(|n| n as u32)
    }

    /// Whether it is broken.
    pub fn is_broken(&self) -> Result<bool> {
        let r = self.obj.op(Op::Broken)?;
        boolean(&self.obj, r)
    }
}
