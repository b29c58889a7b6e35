//! The serde codec: postcard, with errors that name the type.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Encodes `value`, naming its type if it cannot be encoded.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    super::fds::take_error();
    postcard::to_stdvec(value).map_err(|e| Error::Encode {
        type_name: std::any::type_name::<T>().to_owned(),
        reason: super::fds::take_error().unwrap_or_else(|| e.to_string()),
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
            reason: super::fds::take_error().unwrap_or_else(|| e.to_string()),
        }),
    }
}

/// Encodes `value` into `buf` (cleared first), reusing its allocation: for a sender
/// that encodes many messages, no per-message allocation or regrowth copies.
pub(crate) fn encode_reusing<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<()> {
    buf.clear();
    encode_into(value, buf)
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
