//! `Dict<K, V>`: a map held by a manager.

use std::borrow::Borrow;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::protocol::{Op, Reply};
use super::proxy::ObjRef;
use crate::error::Result;

/// Keys and values of type `K` and `V` cross; a dict holds none (so it is `Send` and
/// `Sync` whatever they are).
type Types<K, V> = fn(K, V) -> (K, V);

/// A proxy of a map held by a manager (Python's `manager.dict()`): every call is one
/// message to the manager and back, and every process holding a proxy sees one map.
///
/// Made by [`Manager::dict`](super::Manager::dict). Keys and values are serde values;
/// the manager holds them encoded, keyed by the encoding of the key, so `K` must
/// encode the same way every time for equal keys: strings, integers, tuples and
/// structs of those do; a `HashMap` (whose order varies) or a float `NaN` does not.
/// A `&str` looks up a `String` key, as in a `HashMap`.
///
/// Reads return copies (`keys`, `values`, `items` are snapshots); a value that is a
/// proxy ([`List`](super::List), another `Dict`...) comes back as a live proxy of the
/// same object, so `Dict<String, List<u64>>` is a dict of shared lists.
pub struct Dict<K, V> {
    pub(crate) obj: ObjRef,
    pub(crate) _t: PhantomData<Types<K, V>>,
}

super::proxy_common!(Dict<K, V>, Dict);

impl<K, V> Dict<K, V>
where
    K: Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    fn maybe(&self, r: Reply) -> Result<Option<V>> {
        match r {
            Reply::MaybeBytes(b) => b.map(|b| self.obj.decode(&b)).transpose(),
            r => Err(self.obj.unexpected(&r)),
        }
    }

    fn list<T: DeserializeOwned>(&self, r: Reply) -> Result<Vec<T>> {
        match r {
            Reply::List(items) => items.iter().map(|b| self.obj.decode(b)).collect(),
            r => Err(self.obj.unexpected(&r)),
        }
    }

    /// The value for `key`, if any.
    pub fn get<Q: Serialize + ?Sized>(&self, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
    {
        let r = self.obj.op(Op::Get(self.obj.key(key)?))?;
        self.maybe(r)
    }

    /// Sets `key` to `value`; the value it had, if any.
    pub fn insert(&self, key: K, value: V) -> Result<Option<V>> {
        let r = self
            .obj
            .op(Op::Insert(self.obj.key(&key)?, self.obj.encode(&value)?))?;
        self.maybe(r)
    }

    /// Removes `key`; the value it had, if any (Python's `d.pop(k, None)`).
    pub fn remove<Q: Serialize + ?Sized>(&self, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
    {
        let r = self.obj.op(Op::Remove(self.obj.key(key)?))?;
        self.maybe(r)
    }

    /// Whether `key` is there (Python's `k in d`).
    pub fn contains<Q: Serialize + ?Sized>(&self, key: &Q) -> Result<bool>
    where
        K: Borrow<Q>,
    {
        match self.obj.op(Op::Contains(self.obj.key(key)?))? {
            Reply::Bool(b) => Ok(b),
            r => Err(self.obj.unexpected(&r)),
        }
    }

    /// The number of entries.
    pub fn len(&self) -> Result<usize> {
        match self.obj.op(Op::Len)? {
            Reply::Count(n) => Ok(n as usize),
            r => Err(self.obj.unexpected(&r)),
        }
    }

    /// Whether it has no entries.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The keys now (a snapshot, in no particular order).
    pub fn keys(&self) -> Result<Vec<K>> {
        let r = self.obj.op(Op::Keys)?;
        self.list(r)
    }

    /// The values now (a snapshot).
    pub fn values(&self) -> Result<Vec<V>> {
        let r = self.obj.op(Op::Values)?;
        self.list(r)
    }

    /// The entries now (a snapshot; Python's `d.items()` or `d.copy()`).
    pub fn items(&self) -> Result<Vec<(K, V)>> {
        match self.obj.op(Op::Snapshot)? {
            Reply::Pairs(items) => items
                .iter()
                .map(|(k, v)| Ok((self.obj.decode(k)?, self.obj.decode(v)?)))
                .collect(),
            r => Err(self.obj.unexpected(&r)),
        }
    }

    /// Inserts every entry in one message: the fast way to load many.
    pub fn update(&self, items: impl IntoIterator<Item = (K, V)>) -> Result<()> {
        let items = items
            .into_iter()
            .map(|(k, v)| Ok((self.obj.key(&k)?, self.obj.encode(&v)?)))
            .collect::<Result<Vec<_>>>()?;
        self.obj.op(Op::Update(items)).map(drop)
    }

    /// Removes every entry.
    pub fn clear(&self) -> Result<()> {
        self.obj.op(Op::Clear).map(drop)
    }

    /// The value for `key`, inserting `default` first if there is none, in one step
    /// (Python's `d.setdefault(k, default)`; `HashMap::entry(k).or_insert(default)`).
    pub fn get_or_insert(&self, key: K, default: V) -> Result<V> {
        match self
            .obj
            .op(Op::GetOrInsert(self.obj.key(&key)?, self.obj.encode(&default)?))?
        {
            Reply::Bytes(b) => self.obj.decode(&b),
            r => Err(self.obj.unexpected(&r)),
        }
    }

    /// Removes and returns some entry, or `None` if it is empty (Python's `popitem`).
    pub fn pop_item(&self) -> Result<Option<(K, V)>> {
        match self.obj.op(Op::PopItem)? {
            Reply::MaybePair(p) => p
                .map(|(k, v)| Ok((self.obj.decode(&k)?, self.obj.decode(&v)?)))
                .transpose(),
            r => Err(self.obj.unexpected(&r)),
        }
    }
}
