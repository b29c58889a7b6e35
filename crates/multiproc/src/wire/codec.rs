//! The serde codec: postcard, with errors that name the type.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Why `value` did not encode, in the words of whoever said so: a handle error of ours,
/// the custom message of the value's own `Serialize` (which postcard drops), or
/// postcard's.
#[cold]
fn reason<T: Serialize + ?Sized>(value: &T, e: &postcard::Error) -> String {
    super::fds::take_error()
        .or_else(|| {
            matches!(e, postcard::Error::SerdeSerCustom)
                .then(|| super::probe::custom_message(value))
                .flatten()
        })
        .unwrap_or_else(|| e.to_string())
}

/// Encodes `value`, naming its type if it cannot be encoded.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    super::fds::take_error();
    postcard::to_stdvec(value).map_err(|e| Error::Encode {
        type_name: std::any::type_name::<T>().to_owned(),
        reason: reason(value, &e),
    })
}

/// Encodes `value` at the end of `out`. On error, `out` keeps what it held before and
/// possibly a partial encoding after it (callers truncate).
pub(crate) fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<()> {
    super::fds::take_error();
    match postcard::to_io(value, &mut *out) {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::Encode {
            type_name: std::any::type_name::<T>().to_owned(),
            reason: reason(value, &e),
        }),
    }
}

/// Encodes `value` into `buf` (cleared first), reusing its allocation: for a sender
/// that encodes many messages, no per-message allocation or regrowth copies.
pub(crate) fn encode_reusing<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<()> {
    buf.clear();
    encode_into(value, buf)
}

/// Encodes `value` at the end of `buf`, its descriptors at the end of `fds` (numbered
/// after those already there). On error both are as before. A value that does not fit
/// under the buffer's limit is `Error::FrameTooLarge`, its length counted without
/// storing it; `what` names it in that message ("the argument of call 3").
pub(crate) fn encode_value<T: Serialize>(
    value: &T,
    buf: &mut super::values::ValueBuf,
    fds: &mut Vec<std::os::fd::OwnedFd>,
    what: &dyn Fn() -> String,
) -> Result<()> {
    let fd_mark = fds.len();
    let r = super::fds::capture_into(fds, || encode_captured(value, buf, what));
    if r.is_err() {
        fds.truncate(fd_mark);
    }
    r
}

/// [`encode_value`] for a caller that captures descriptors itself (around many values:
/// see `wire::fds::capture_into`). On error `buf` is as before; the caller undoes the
/// descriptors.
#[inline]
pub(crate) fn encode_captured<T: Serialize>(
    value: &T,
    buf: &mut super::values::ValueBuf,
    what: &dyn Fn() -> String,
) -> Result<()> {
    // No clearing of a stale handle error first: this is the hot path of small calls,
    // and a handle error is consumed by the failure it causes.
    let mark = buf.len();
    // Plain data (integers, floats, bool, char) travels as its bytes: see `sys::plain`.
    if let Some(bytes) = crate::sys::plain::bytes_of(value) {
        if buf.append_plain(bytes) {
            return Ok(());
        }
        return encode_failed(value, buf, mark, what, postcard::Error::SerializeBufferFull);
    }
    let mut ser = postcard::Serializer { output: &mut *buf };
    match value.serialize(&mut ser) {
        Ok(()) => Ok(()),
        Err(e) => encode_failed(value, buf, mark, what, e),
    }
}

/// The error for a value that did not encode, with `buf` as it was before it.
#[cold]
#[inline(never)]
fn encode_failed<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut super::values::ValueBuf,
    mark: usize,
    what: &dyn Fn() -> String,
    e: postcard::Error,
) -> Result<()> {
    let overflowed = buf.overflowed();
    buf.truncate(mark);
    if overflowed {
        return Err(Error::FrameTooLarge {
            what: what(),
            len: encoded_len(value) as u64,
            max: buf.limit() as u64,
        });
    }
    Err(Error::Encode {
        type_name: std::any::type_name::<T>().to_owned(),
        reason: reason(value, &e),
    })
}

/// The encoded length of `value`, without storing it (descriptors count as indices).
fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    struct Count(usize);
    impl postcard::ser_flavors::Flavor for Count {
        type Output = usize;
        fn try_push(&mut self, _: u8) -> postcard::Result<()> {
            self.0 += 1;
            Ok(())
        }
        fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
            self.0 += data.len();
            Ok(())
        }
        fn finalize(self) -> postcard::Result<usize> {
            Ok(self.0)
        }
    }
    let mut scratch = Vec::new();
    super::fds::capture_into(&mut scratch, || {
        postcard::serialize_with_flavor(value, Count(0))
    })
    .unwrap_or(0)
}

/// Decodes task values (arguments and results) laid end to end, one after another:
/// plain data as its bytes (see `sys::plain`), everything else with postcard.
pub(crate) struct Values<'de> {
    rest: &'de [u8],
    broken: bool,
}

impl<'de> Values<'de> {
    pub(crate) fn new(bytes: &'de [u8]) -> Self {
        Values {
            rest: bytes,
            broken: false,
        }
    }

    /// Bytes not decoded yet.
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// The next value, if `T` is plain data (`sys::plain`); `None` for other types.
    /// The hot loop of a plain-data chunk: nothing but a bounds check and a copy.
    #[inline(always)]
    pub(crate) fn next_plain<T>(&mut self) -> Option<Result<T>> {
        let r = crate::sys::plain::read::<T>(&mut self.rest)?;
        Some(r.map_err(|why| {
            self.broken = true;
            Error::Decode {
                type_name: std::any::type_name::<T>().to_owned(),
                reason: why.into(),
            }
        }))
    }

    /// The next value as `T`. After an error the rest cannot be found (values are
    /// self-delimiting only when each decodes): every later call fails too.
    #[inline]
    pub(crate) fn next<T: DeserializeOwned>(&mut self) -> Result<T> {
        let fail = |reason: String| Error::Decode {
            type_name: std::any::type_name::<T>().to_owned(),
            reason,
        };
        if self.broken {
            return Err(fail("it follows a value that could not be decoded".into()));
        }
        if let Some(r) = self.next_plain::<T>() {
            return r;
        }
        let mut de = postcard::Deserializer::from_bytes(self.rest);
        match T::deserialize(&mut de) {
            Ok(v) => {
                // `finalize` gives back what the value did not use.
                self.rest = de.finalize().unwrap_or(&[]);
                Ok(v)
            }
            Err(e) => {
                self.broken = true;
                Err(fail(super::fds::take_error().unwrap_or_else(|| e.to_string())))
            }
        }
    }
}

/// Encodes one task value (an argument or a result) on its own, as [`Values`] reads it.
pub(crate) fn encode_task_value<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    match crate::sys::plain::bytes_of(value) {
        Some(bytes) => Ok(bytes.to_vec()),
        None => encode(value),
    }
}

/// Decodes one whole buffer as a task value (an argument or a result) of type `T`;
/// trailing bytes are an error.
pub(crate) fn decode_task_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    super::fds::take_error();
    let mut values = Values::new(bytes);
    let value = values.next::<T>()?;
    if values.remaining() != 0 {
        return Err(Error::Decode {
            type_name: std::any::type_name::<T>().to_owned(),
            reason: format!("{} unexpected trailing bytes", values.remaining()),
        });
    }
    Ok(value)
}

/// Decodes a whole buffer as `T`; trailing bytes are an error (they mean the two
/// sides disagree on the type).
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let fail = |reason: String| Error::Decode {
        type_name: std::any::type_name::<T>().to_owned(),
        reason,
    };
    super::fds::take_error();
    let (value, rest) = postcard::take_from_bytes::<T>(bytes)
        .map_err(|e| fail(super::fds::take_error().unwrap_or_else(|| e.to_string())))?;
    if !rest.is_empty() {
        return Err(fail(format!("{} unexpected trailing bytes", rest.len())));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_trailing_bytes() {
        let v = (7u64, String::from("x"), vec![1u8, 2, 3]);
        let b = encode(&v).unwrap();
        assert_eq!(decode::<(u64, String, Vec<u8>)>(&b).unwrap(), v);
        let mut longer = b.clone();
        longer.push(0);
        let err = decode::<(u64, String, Vec<u8>)>(&longer).unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
        let err = decode::<String>(&[0xff, 0xff, 0xff]).unwrap_err();
        assert!(err.to_string().contains("String"), "{err}");
    }
}
