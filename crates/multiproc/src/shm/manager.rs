//! `SharedMemoryManager`: named segments that live until the manager stops.

use std::sync::Mutex;

use bytemuck::Pod;

use super::segment::{NamedOwner, Segment};
use super::{Array, SharedMemory, Value};
use crate::error::Result;

/// Makes named shared memory ([`SharedMemory`], [`Value`], [`Array`]) that lives until
/// the manager stops, not until its handles go (Python's
/// `multiprocessing.managers.SharedMemoryManager`).
///
/// Each segment gets a fresh name (see `name()` on the handle): any process may attach
/// to it by that name ([`SharedMemory::open_named`], [`Value::open_named`],
/// [`Array::open_named`]), and the handles themselves can be passed to children.
/// Dropping a handle removes nothing; the manager removes every name it made when it
/// is dropped or [`shutdown`](Self::shutdown), and the tracker (see
/// [`SharedMemoryBuilder::track`](crate::SharedMemoryBuilder::track)) removes them if
/// the manager's process dies first. Handles already mapped keep working after the
/// names are gone, as in Python.
///
/// Unlike Python's, the manager is not a server process: it is an object in the
/// process that made it, and the tracker is what outlives that process.
///
/// ```
/// use multiproc::{Process, SharedMemoryManager, Value};
///
/// fn bump(name: String) {
///     let v = Value::<u32>::open_named(&name).unwrap(); // attached by name
///     v.fetch_add(1);
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let manager = SharedMemoryManager::new();
/// let v = manager.value(41u32)?;
/// let name = v.name().unwrap().to_owned();
/// Process::start(bump, name.clone())?.join()?;
/// assert_eq!(v.get()?, 42);
/// manager.shutdown(); // the name is gone; `v` still works
/// assert!(Value::<u32>::open_named(&name).is_err());
/// assert_eq!(v.load(), 42);
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct SharedMemoryManager {
    owned: Mutex<Vec<NamedOwner>>,
}

impl SharedMemoryManager {
    /// A manager that owns nothing yet (Python's `SharedMemoryManager()` after
    /// `start()`).
    pub fn new() -> Self {
        Self::default()
    }

    fn keep(&self, owner: Option<NamedOwner>) {
        if let Some(o) = owner {
            self.owned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(o);
        }
    }

    /// A new named segment of `len` zero bytes (Python's `SharedMemory(size)` on the
    /// manager).
    pub fn shared_memory(&self, len: usize) -> Result<SharedMemory> {
        let mut seg = Segment::create_named(&super::fresh_name(), len, true, |_| Ok(()))?;
        self.keep(seg.take_owner());
        Ok(SharedMemory::from_segment(seg))
    }

    /// A new named [`Value`].
    pub fn value<T: Pod>(&self, value: T) -> Result<Value<T>> {
        let (v, owner) = Value::named(&super::fresh_name(), value, false)?;
        self.keep(owner);
        Ok(v)
    }

    /// A new named [`Array`] holding a copy of `items` (Python's `ShareableList(seq)`
    /// on the manager, for plain data).
    pub fn array<T: Pod>(&self, items: &[T]) -> Result<Array<T>> {
        let (a, owner) = Array::named(&super::fresh_name(), items, false)?;
        self.keep(owner);
        Ok(a)
    }

    /// The names this manager made and has not removed yet.
    pub fn names(&self) -> Vec<String> {
        self.owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|o| o.name().to_owned())
            .collect()
    }

    /// Removes every name this manager made (Python's `shutdown()`). Handles keep
    /// their mappings. The manager may make more afterwards; dropping it does this
    /// too.
    pub fn shutdown(&self) {
        let owned = std::mem::take(&mut *self.owned.lock().unwrap_or_else(|p| p.into_inner()));
        drop(owned);
    }
}

impl Drop for SharedMemoryManager {
    fn drop(&mut self) {
        self.shutdown();
    }
}
