//! `Namespace`: named, typed attributes held by a manager.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::protocol::{Op, Reply};
use super::proxy::ObjRef;
use crate::error::Result;

/// A proxy of a set of named attributes held by a manager (Python's
/// `manager.Namespace()`, where `ns.x = 1` is `ns.set("x", &1)` here).
///
/// Each attribute has its own type, given when it is read: `ns.get::<u64>("x")`.
/// Reading an attribute as another type than it was set with is an
/// [`Error::Decode`](crate::Error::Decode) (or, for types that encode alike, a
/// different value: keep one type per name).
///
/// [`Manager::root`](super::Manager::root) is a namespace every client of a manager
/// shares: store proxies there by name for unrelated processes to find.
pub struct Namespace {
    pub(crate) obj: ObjRef,
    pub(crate) _t: PhantomData<()>,
}

super::proxy_common!(Namespace<>, Namespace);

impl Namespace {
    /// Sets attribute `name` to `value`.
    pub fn set<T: Serialize + ?Sized>(&self, name: &str, value: &T) -> Result<()> {
        self.obj
            .op(Op::SetAttr(name.to_owned(), self.obj.encode(value)?))
            .map(drop)
    }

    /// Attribute `name` as a `T`, or `None` if it is not set.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        match self.obj.op(Op::GetAttr(name.to_owned()))? {
            Reply::MaybeBytes(b) => b.map(|b| self.obj.decode(&b)).transpose(),
            r => Err(self.obj.unexpected(&r)),
        }
    }

    /// Removes attribute `name` (Python's `del ns.name`); whether it was set.
    pub fn remove(&self, name: &str) -> Result<bool> {
        match self.obj.op(Op::DelAttr(name.to_owned()))? {
            Reply::MaybeBytes(b) => Ok(b.is_some()),
            r => Err(self.obj.unexpected(&r)),
        }
    }

    /// Whether attribute `name` is set (Python's `hasattr`).
    pub fn contains(&self, name: &str) -> Result<bool> {
        Ok(self.names()?.iter().any(|n| n == name))
    }

    /// The names set now, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        match self.obj.op(Op::Names)? {
            Reply::Names(n) => Ok(n),
            r => Err(self.obj.unexpected(&r)),
        }
    }
}
