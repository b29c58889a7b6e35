//! Custom objects: any `T` built and changed in the manager by plain functions of this
//! build; `Value<T>` and `Array<T>` are two of them.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

use super::protocol::{Reply, Request};
use super::proxy::ObjRef;
use crate::error::Result;

/// A proxy of a custom object: a `T` that lives in the manager, made by
/// [`Manager::create`](super::Manager::create) and changed by
/// [`call`](Self::call)ing plain functions `fn(&mut T, A) -> R` on it there (Python's
/// `BaseManager.register` with an exposed class).
///
/// `T` itself never crosses: it need not be serde, only `Send + 'static`. The functions
/// are found in the manager by their place in the executable, as tasks are found in a
/// child, so a manager serves only clients of its own build (another build is refused
/// with [`Error::BuildMismatch`](crate::Error::BuildMismatch) before anything runs).
///
/// A method that panics answers [`Error::Panicked`](crate::Error::Panicked); the
/// manager goes on serving and the object stays, possibly half updated by the method
/// that panicked (as in Python).
pub struct Proxy<T> {
    pub(crate) obj: ObjRef,
    pub(crate) _t: PhantomData<fn(T) -> T>,
}

super::proxy_common!(Proxy<T>, Custom);

impl<T: Send + 'static> Proxy<T> {
    /// Runs `method(&mut object, arg)` in the manager, holding the object's lock, and
    /// returns its result. Calls on one object run one at a time.
    pub fn call<A, R>(&self, method: fn(&mut T, A) -> R, arg: A) -> Result<R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let entry = super::server::method_entry(method);
        match self.obj.link.call(&Request::Method {
            id: self.obj.id,
            entry,
            arg: self.obj.encode(&arg)?,
        })? {
            Reply::Bytes(b) => self.obj.decode(&b),
            r => Err(self.obj.unexpected(&r)),
        }
    }
}

pub(crate) fn create<A, T>(
    link: &std::sync::Arc<super::proxy::Link>,
    constructor: fn(A) -> T,
    arg: A,
) -> Result<ObjRef>
where
    A: Serialize + DeserializeOwned,
    T: Send + 'static,
{
    let entry = super::server::create_entry(constructor);
    let arg = ByteBuf::from(crate::wire::encode(&arg)?);
    match link.call(&Request::CreateCustom { entry, arg })? {
        Reply::Id(id) => Ok(ObjRef {
            link: link.clone(),
            id,
            kind: super::protocol::Kind::Custom,
        }),
        r => Err(link.unexpected(&r)),
    }
}

/// A proxy of one value held by a manager (Python's `manager.Value(typecode, v)`):
/// [`get`](Self::get), [`set`](Self::set), or change it in place in the manager with
/// [`update`](Self::update) (one message, atomic with respect to other calls).
pub struct Value<T> {
    pub(crate) inner: Proxy<T>,
}

fn value_get<T: Clone>(t: &mut T, _: ()) -> T {
    t.clone()
}

fn value_set<T>(t: &mut T, v: T) {
    *t = v;
}

impl<T> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value {
            inner: self.inner.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Value({:?})", self.inner.obj)
    }
}

impl<T> Serialize for Value<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.inner.serialize(s)
    }
}

impl<'de, T> serde::Deserialize<'de> for Value<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(Value {
            inner: Proxy::deserialize(d)?,
        })
    }
}

impl<T> Value<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + 'static,
{
    /// The value now.
    pub fn get(&self) -> Result<T> {
        self.inner.call(value_get::<T>, ())
    }

    /// Replaces the value.
    pub fn set(&self, value: T) -> Result<()> {
        self.inner.call(value_set::<T>, value)
    }

    /// Runs `f(&mut value, arg)` in the manager: a read-modify-write no other call
    /// interleaves with (`v.update(|n, d| { *n += d; *n }, 1)` counts).
    pub fn update<A, R>(&self, f: fn(&mut T, A) -> R, arg: A) -> Result<R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        self.inner.call(f, arg)
    }
}

/// A proxy of a fixed-length array held by a manager (Python's `manager.Array(typecode,
/// sequence)`).
pub struct Array<T> {
    pub(crate) inner: Proxy<Vec<T>>,
}

impl<T> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array {
            inner: self.inner.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Array({:?})", self.inner.obj)
    }
}

impl<T> Serialize for Array<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.inner.serialize(s)
    }
}

impl<'de, T> serde::Deserialize<'de> for Array<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(Array {
            inner: Proxy::deserialize(d)?,
        })
    }
}

// The object is a `Vec<T>`: a method's first parameter names its exact type.
#[allow(clippy::ptr_arg)]
fn array_get<T: Clone>(v: &mut Vec<T>, i: usize) -> Option<T> {
    v.get(i).cloned()
}

#[allow(clippy::ptr_arg)]
fn array_set<T>(v: &mut Vec<T>, (i, x): (usize, T)) -> std::result::Result<T, usize> {
    let len = v.len();
    v.get_mut(i).map(|slot| std::mem::replace(slot, x)).ok_or(len)
}

#[allow(clippy::ptr_arg)]
fn array_len<T>(v: &mut Vec<T>, _: ()) -> usize {
    v.len()
}

impl<T> Array<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + 'static,
{
    /// The item at `index`, or `None` past the end.
    pub fn get(&self, index: usize) -> Result<Option<T>> {
        self.inner.call(array_get::<T>, index)
    }

    /// Replaces the item at `index`; the item it replaced. Past the end: an error.
    pub fn set(&self, index: usize, item: T) -> Result<T> {
        self.inner
            .call(array_set::<T>, (index, item))?
            .map_err(|len| {
                self.inner
                    .obj
                    .link
                    .error(format!("index {index} is out of range for an array of {len}"))
            })
    }

    /// The number of items (fixed at creation).
    pub fn len(&self) -> Result<usize> {
        self.inner.call(array_len::<T>, ())
    }

    /// Whether it has no items.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Every item now (Python's `a[:]`).
    pub fn snapshot(&self) -> Result<Vec<T>> {
        self.inner.call(value_get::<Vec<T>>, ())
    }

    /// Runs `f(&mut items, arg)` in the manager, as one step.
    pub fn update<A, R>(&self, f: fn(&mut Vec<T>, A) -> R, arg: A) -> Result<R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        self.inner.call(f, arg)
    }
}
