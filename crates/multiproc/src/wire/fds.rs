//! Descriptors that travel inside values: how a `Pipe` end, a `Queue` or a shared
//! memory segment can be a task's argument or result.
//!
//! A value that owns an OS handle serializes it as [`PassFd`]: encoding dups the
//! descriptor into a side list and writes only its index; the list rides along with
//! the frame as `SCM_RIGHTS`, so the kernel installs fresh descriptors in the receiver;
//! decoding swaps the index back for the received descriptor. Nothing else (no path,
//! no name on the system) is involved, so a handle reaches exactly the process it was
//! sent to.

use std::cell::RefCell;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

thread_local! {
    static OUTGOING: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    static INCOMING: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
    /// Handles serialized on this thread so far: a cheap way for a loop that encodes
    /// many values to see that one of them held a handle.
    static PASSED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// postcard drops the text of custom serde errors; the codec picks it up here.
    static LAST_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The message of the last handle error on this thread, if any (consumed).
pub(crate) fn take_error() -> Option<String> {
    LAST_ERROR.with(|e| e.borrow_mut().take())
}

fn remember<E>(message: String, make: impl FnOnce(&str) -> E) -> E {
    let e = make(&message);
    LAST_ERROR.with(|l| *l.borrow_mut() = Some(message));
    e
}

/// The most descriptors one frame may carry (the kernel's `SCM_MAX_FD`).
pub(crate) const MAX_FDS_PER_FRAME: usize = 253;

/// Runs `f` (which encodes something) and returns the descriptors the encoded values
/// asked to pass along.
pub(crate) fn capture<T>(f: impl FnOnce() -> T) -> (T, Vec<OwnedFd>) {
    let outer = OUTGOING.with(|o| o.borrow_mut().replace(Vec::new()));
    let value = f();
    let fds = OUTGOING
        .with(|o| std::mem::replace(&mut *o.borrow_mut(), outer))
        .unwrap_or_default();
    (value, fds)
}

/// Like [`capture`], appending to `fds`: the encoded values number their descriptors
/// after those already in it, so that one frame can carry the descriptors of many.
pub(crate) fn capture_into<T>(fds: &mut Vec<OwnedFd>, f: impl FnOnce() -> T) -> T {
    let outer = OUTGOING.with(|o| o.borrow_mut().replace(std::mem::take(fds)));
    let value = f();
    *fds = OUTGOING
        .with(|o| std::mem::replace(&mut *o.borrow_mut(), outer))
        .unwrap_or_default();
    value
}

/// How many handles were serialized on this thread so far (see `PASSED`).
#[inline]
pub(crate) fn passed() -> u64 {
    PASSED.get()
}

/// Descriptors captured so far by the innermost [`capture_into`] (0 outside one).
pub(crate) fn captured_len() -> usize {
    OUTGOING.with(|o| o.borrow().as_ref().map_or(0, Vec::len))
}

/// Drops the descriptors captured after the first `n` (a value that failed).
pub(crate) fn truncate_captured(n: usize) {
    OUTGOING.with(|o| {
        if let Some(list) = o.borrow_mut().as_mut() {
            list.truncate(n);
        }
    });
}

/// Runs `f` (which decodes something) with `fds` available to the [`PassFd`]s in it.
/// Descriptors nobody claimed are closed.
pub(crate) fn provide<T>(fds: Vec<OwnedFd>, f: impl FnOnce() -> T) -> T {
    let outer = INCOMING.with(|i| i.borrow_mut().replace(fds.into_iter().map(Some).collect()));
    let value = f();
    INCOMING.with(|i| *i.borrow_mut() = outer);
    value
}

/// An owned descriptor that can be a field of a value sent to or from a child.
#[derive(Debug)]
pub(crate) struct PassFd(pub(crate) OwnedFd);

impl PassFd {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        PassFd(fd)
    }
}

impl AsFd for PassFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Serialize for PassFd {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        PASSED.set(PASSED.get().wrapping_add(1));
        let index = OUTGOING.with(|o| -> Result<u32, String> {
            let mut o = o.borrow_mut();
            let list = o.as_mut().ok_or_else(|| {
                "this value holds an OS handle (a Pipe end, a Queue, shared memory...), which can only cross to another process as a task's argument or result, or through a multiproc channel".to_owned()
            })?;
            let dup = self.0.try_clone().map_err(|e| format!("cannot duplicate a handle: {e}"))?;
            list.push(dup);
            Ok((list.len() - 1) as u32)
        });
        match index {
            Ok(i) => s.serialize_u32(i),
            Err(msg) => Err(remember(msg, |m| S::Error::custom(m))),
        }
    }
}

impl<'de> Deserialize<'de> for PassFd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let index = u32::deserialize(d)? as usize;
        INCOMING
            .with(|i| {
                i.borrow_mut()
                    .as_mut()
                    .and_then(|list| list.get_mut(index))
                    .and_then(Option::take)
            })
            .map(PassFd)
            .ok_or_else(|| {
                remember(
                    format!("the message names OS handle #{index}, which did not arrive with it"),
                    |m| D::Error::custom(m),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_capture_and_provide() {
        let (a, _b) = crate::sys::fd::pair(nix::sys::socket::SockType::Stream).unwrap();
        let value = (7u8, PassFd::new(a));
        let (bytes, fds) = capture(|| crate::wire::encode(&value));
        let bytes = bytes.unwrap();
        assert_eq!(fds.len(), 1);
        let back: (u8, PassFd) = provide(fds, || crate::wire::decode(&bytes)).unwrap();
        assert_eq!(back.0, 7);
        // Outside capture, encoding is refused with a message that says why.
        let err = crate::wire::encode(&value).unwrap_err().to_string();
        assert!(err.contains("OS handle"), "{err}");
        // A forged index is an error, not a panic.
        let err = provide(Vec::new(), || crate::wire::decode::<PassFd>(&bytes[1..]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("did not arrive"), "{err}");
    }
}
