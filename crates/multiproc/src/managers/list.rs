//! `List<T>`: a list held by a manager.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::protocol::{Op, Reply, Request};
use super::proxy::ObjRef;
use crate::error::Result;

/// A proxy of a list held by a manager (Python's `manager.list()`): every call is one
/// message to the manager and back, and every process holding a proxy sees one list.
///
/// Made by [`Manager::list`](super::Manager::list). Indexes are `usize` from 0 (no
/// negative indexes); an index out of range is `None` for [`get`](Self::get) and an
/// error for the calls that change the list. Reads return copies.
pub struct List<T> {
    pub(crate) obj: ObjRef,
    pub(crate) _t: PhantomData<fn(T) -> T>,
}

super::proxy_common!(List<T>, List);

impl<T: Serialize + DeserializeOwned> List<T> {
    fn one(&self, r: Reply) -> Result<T> {
        match r {
            Reply::Bytes(b) => self.obj.decode(&b),
            r => Err(self.obj.unexpected(&r)),
        }
    }

    fn maybe(&self, r: Reply) -> Result<Option<T>> {
        match r {
            Reply::MaybeBytes(b) => b.map(|b| self.obj.decode(&b)).transpose(),
            r => Err(self.obj.unexpected(&r)),
        }
    }

    /// Appends `item` (Python's `append`).
    pub fn push(&self, item: T) -> Result<()> {
        self.obj.op(Op::Push(self.obj.encode(&item)?)).map(drop)
    }

    /// Removes and returns the last item, or `None` if it is empty.
    pub fn pop(&self) -> Result<Option<T>> {
        let r = self.obj.op(Op::Pop)?;
        self.maybe(r)
    }

    /// The item at `index`, or `None` past the end.
    pub fn get(&self, index: usize) -> Result<Option<T>> {
        let r = self.obj.op(Op::At(index as u64))?;
        self.maybe(r)
    }

    /// Replaces the item at `index`; the item it replaced. Past the end: an error.
    pub fn set(&self, index: usize, item: T) -> Result<T> {
        let r = self.obj.op(Op::Set(index as u64, self.obj.encode(&item)?))?;
        self.one(r)
    }

    /// The number of items.
    pub fn len(&self) -> Result<usize> {
        match self.obj.op(Op::Len)? {
            Reply::Count(n) => Ok(n as usize),
            r => Err(self.obj.unexpected(&r)),
        }
    }

    /// Whether it has no items.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Appends every item in one message: the fast way to add many.
    pub fn extend(&self, items: impl IntoIterator<Item = T>) -> Result<()> {
        let items = items
            .into_iter()
            .map(|i| self.obj.encode(&i))
            .collect::<Result<Vec<_>>>()?;
        self.obj.op(Op::Extend(items)).map(drop)
    }

    /// Inserts `item` before `index` (`index == len` appends); past that, an error.
    pub fn insert(&self, index: usize, item: T) -> Result<()> {
        self.obj
            .op(Op::InsertAt(index as u64, self.obj.encode(&item)?))
            .map(drop)
    }

    /// Removes and returns the item at `index` (Python's `pop(i)`); past the end, an
    /// error.
    pub fn remove(&self, index: usize) -> Result<T> {
        let r = self.obj.op(Op::RemoveAt(index as u64))?;
        self.one(r)
    }

    /// Every item now, in order (Python's `list(l)` or `l[:]`).
    pub fn snapshot(&self) -> Result<Vec<T>> {
        match self.obj.op(Op::Snapshot)? {
            Reply::List(items) => items.iter().map(|b| self.obj.decode(b)).collect(),
            r => Err(self.obj.unexpected(&r)),
        }
    }

    /// Removes every item.
    pub fn clear(&self) -> Result<()> {
        self.obj.op(Op::Clear).map(drop)
    }
}

impl<T: Serialize + DeserializeOwned + Ord> List<T> {
    /// Sorts the list in the manager, by `T`'s order: the manager runs this build's
    /// code for `T` (which is why a manager serves only clients of its own build).
    pub fn sort(&self) -> Result<()> {
        let entry = super::server::method_entry(sort_encoded::<T>);
        match self.obj.link.call(&Request::Method {
            id: self.obj.id,
            entry,
            arg: serde_bytes::ByteBuf::from(crate::wire::encode(&())?),
        })? {
            Reply::Bytes(b) => match crate::wire::decode::<std::result::Result<(), String>>(&b)? {
                Ok(()) => Ok(()),
                Err(reason) => Err(crate::Error::Decode {
                    type_name: std::any::type_name::<T>().into(),
                    reason: format!("in the manager, sorting: {reason}"),
                }),
            },
            r => Err(self.obj.unexpected(&r)),
        }
    }
}

/// Runs in the manager: decodes every item as `T`, sorts, encodes them back (the list
/// is unchanged if an item does not decode).
fn sort_encoded<T: Serialize + DeserializeOwned + Ord>(
    items: &mut Vec<Vec<u8>>,
    _: (),
) -> std::result::Result<(), String> {
    let mut typed = items
        .iter()
        .map(|b| crate::wire::decode::<T>(b).map(|t| (t, b.clone())))
        .collect::<Result<Vec<_>>>()
        .map_err(|e| e.to_string())?;
    typed.sort_by(|a, b| a.0.cmp(&b.0));
    *items = typed.into_iter().map(|(_, b)| b).collect();
    Ok(())
}
