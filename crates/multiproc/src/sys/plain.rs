//! Plain data: task values whose bytes are their value, copied as they are.
//!
//! A pool's tiny calls (`x -> 2x` over integers) used to spend most of their time in
//! serde: a varint and a function call per value each way. For the primitive types —
//! integers, floats, `bool`, `char` — the value *is* its bytes, and so it is for arrays
//! (`[T; 1]` to `[T; 32]`) and tuples of two to four (`(T, T)`, ...) of one integer or
//! float type: same-size fields leave no padding. A task's argument or result of such
//! a type travels as those bytes, fixed width, native byte order (both ends run the
//! same build on the same architecture: the hello checks the build id). Tuples mixing
//! types are left to serde: their layout may have padding, whose bytes are not values.
//! The choice is made from the type alone (its `TypeId`, which needs no `'static`
//! bound through the `typeid` crate), so the encoder and the decoder, each
//! monomorphized for the same type in the same build, always agree. Every other type
//! keeps serde.
//!
//! Reading is checked: the bytes come from another process, so a `bool` must be 0 or 1
//! and a `char` a Unicode scalar value, or the value is refused (never undefined
//! behaviour).

use std::mem::{MaybeUninit, size_of};

/// What kind of plain type `T` is, if it is one. Every plain type has no padding and no
/// pointers: all its bytes are initialized and are its value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Every bit pattern of its size is a value (integers, floats, and arrays and
    /// tuples of one of them).
    AnyBits,
    /// `bool`: one byte, 0 or 1.
    Bool,
    /// `char`: four bytes, a Unicode scalar value.
    Char,
}

#[inline(always)]
fn kind<T: ?Sized>() -> Option<Kind> {
    let t = typeid::of::<T>();
    macro_rules! any_bits {
        ($($ty:ty),*) => { $( if t == typeid::of::<$ty>() { return Some(Kind::AnyBits); } )* };
    }
    // Arrays and tuples of one integer or float type: every byte is a field's (same
    // size and alignment everywhere, so no padding, whatever order the fields lie in),
    // and every bit pattern is a value.
    macro_rules! composites {
        ($($ty:ty),*) => { $(
            any_bits!(
                ($ty, $ty), ($ty, $ty, $ty), ($ty, $ty, $ty, $ty),
                [$ty; 1], [$ty; 2], [$ty; 3], [$ty; 4], [$ty; 5], [$ty; 6], [$ty; 7],
                [$ty; 8], [$ty; 9], [$ty; 10], [$ty; 11], [$ty; 12], [$ty; 13],
                [$ty; 14], [$ty; 15], [$ty; 16], [$ty; 17], [$ty; 18], [$ty; 19],
                [$ty; 20], [$ty; 21], [$ty; 22], [$ty; 23], [$ty; 24], [$ty; 25],
                [$ty; 26], [$ty; 27], [$ty; 28], [$ty; 29], [$ty; 30], [$ty; 31],
                [$ty; 32]
            );
        )* };
    }
    any_bits!(
        u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64
    );
    composites!(
        u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64
    );
    if t == typeid::of::<bool>() {
        return Some(Kind::Bool);
    }
    if t == typeid::of::<char>() {
        return Some(Kind::Char);
    }
    None
}

/// Whether values of `T` travel as their bytes.
#[inline(always)]
pub(crate) fn is_plain<T: ?Sized>() -> bool {
    kind::<T>().is_some()
}

/// The bytes of a plain value, or `None` if `T` is not plain data.
#[inline(always)]
pub(crate) fn bytes_of<T>(value: &T) -> Option<&[u8]> {
    kind::<T>()?;
    // SAFETY: `T` is one of the plain types matched in `kind` (its TypeId matched): it has no
    // padding and no pointers, so all `size_of::<T>()` bytes behind `value` are
    // initialized and may be read as bytes for as long as `value` is borrowed.
    Some(unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) })
}

/// Reads a plain value from the start of `bytes` and advances past it; `None` if `T`
/// is not plain data. `Some(Err(..))` if the bytes are too few or not a valid `T`.
#[inline(always)]
pub(crate) fn read<T>(bytes: &mut &[u8]) -> Option<Result<T, &'static str>> {
    let kind = kind::<T>()?;
    let n = size_of::<T>();
    let Some((head, rest)) = bytes.split_at_checked(n) else {
        return Some(Err("the message ends inside a value"));
    };
    match kind {
        Kind::AnyBits => {}
        Kind::Bool if head[0] > 1 => return Some(Err("a bool that is neither 0 nor 1")),
        Kind::Bool => {}
        Kind::Char => {
            let mut word = [0u8; 4];
            word.copy_from_slice(head);
            if char::from_u32(u32::from_ne_bytes(word)).is_none() {
                return Some(Err("a char that is not a Unicode scalar value"));
            }
        }
    }
    let mut out = MaybeUninit::<T>::uninit();
    // SAFETY: `T` is one of the plain types matched in `kind`, `head` holds exactly
    // `size_of::<T>()` bytes, and they were just checked to be a valid `T` (any bits
    // for integers, floats and their arrays and tuples; 0 or 1 for bool; a scalar value
    // for char). The copy writes every byte of `out`, which is then initialized.
    let value = unsafe {
        std::ptr::copy_nonoverlapping(head.as_ptr(), out.as_mut_ptr().cast::<u8>(), n);
        out.assume_init()
    };
    *bytes = rest;
    Some(Ok(value))
}

/// The bytes of a run of plain values, end to end (what [`bytes_of`] gives for each,
/// in one slice), or `None` if `T` is not plain data.
#[inline(always)]
pub(crate) fn slice_bytes<T>(values: &[T]) -> Option<&[u8]> {
    kind::<T>()?;
    // SAFETY: `T` is one of the plain types matched in `kind`: no padding, no pointers, and its
    // size is a multiple of its alignment, so the `values.len()` values lie end to end
    // with every byte initialized; the bytes are borrowed for as long as `values` is.
    Some(unsafe {
        std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
    })
}

/// Checks that `bytes` starts with `n` valid plain values of `T`; their length in
/// bytes. `None` if `T` is not plain data; `Some(Err(..))` if the bytes are too few or
/// one of them is not a valid `T`.
pub(crate) fn check_run<T>(bytes: &[u8], n: usize) -> Option<Result<usize, &'static str>> {
    let kind = kind::<T>()?;
    let Some(len) = n.checked_mul(size_of::<T>()) else {
        return Some(Err("the message ends inside a value"));
    };
    let Some(head) = bytes.get(..len) else {
        return Some(Err("the message ends inside a value"));
    };
    match kind {
        Kind::AnyBits => {}
        Kind::Bool => {
            if head.iter().any(|&b| b > 1) {
                return Some(Err("a bool that is neither 0 nor 1"));
            }
        }
        Kind::Char => {
            let scalar = |w: &[u8]| {
                let mut word = [0u8; 4];
                word.copy_from_slice(w);
                char::from_u32(u32::from_ne_bytes(word)).is_some()
            };
            if !head.chunks_exact(4).all(scalar) {
                return Some(Err("a char that is not a Unicode scalar value"));
            }
        }
    }
    Some(Ok(len))
}

/// Reads `n` plain values from the start of `bytes` onto the end of `out` and advances
/// past them: one check and one copy, not one call per value. `None` if `T` is not
/// plain data; `Some(Err(..))` (and `out` and `bytes` unchanged) if the bytes are too
/// few or one of them is not a valid `T`.
pub(crate) fn read_run<T>(
    bytes: &mut &[u8],
    n: usize,
    out: &mut Vec<T>,
) -> Option<Result<(), &'static str>> {
    let len = match check_run::<T>(bytes, n)? {
        Ok(len) => len,
        Err(why) => return Some(Err(why)),
    };
    let (head, rest) = bytes.split_at(len);
    out.reserve(n);
    // SAFETY: `T` is one of the plain types matched in `kind` and `head` holds exactly `n`
    // values of it, each just checked to be valid (any bits for integers, floats and
    // their arrays and tuples; 0 or 1 for bool; a scalar value for char). `reserve` made room for `n` more values
    // after `out.len()`; the copy writes all their bytes (a byte copy has no alignment
    // needs on the source), so the first `out.len() + n` values are initialized.
    unsafe {
        let end = out.as_mut_ptr().add(out.len());
        std::ptr::copy_nonoverlapping(head.as_ptr(), end.cast::<u8>(), len);
        out.set_len(out.len() + n);
    }
    *bytes = rest;
    Some(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives_arrays_and_tuples_round_trip_and_others_are_not_plain() {
        fn round<T: PartialEq + std::fmt::Debug + Copy>(v: T) {
            let bytes = bytes_of(&v).unwrap().to_vec();
            let mut at = &bytes[..];
            assert_eq!(read::<T>(&mut at).unwrap().unwrap(), v);
            assert!(at.is_empty());
        }
        round(7u8);
        round(u64::MAX - 3);
        round(-5i32);
        round(i128::MIN);
        round(1.5f64);
        round(f32::NAN.to_bits());
        round(true);
        round('ß');
        // Arrays and tuples of one integer or float type.
        round([1.5f64, -2.0, 3.25]);
        round([7u8; 32]);
        round((u64::MAX, 3u64));
        round((1i16, 2i16, 3i16, 4i16));
        round((0.5f32, 1.5f32, 2.5f32));
        assert_eq!(bytes_of(&[1u32, 2, 3]).unwrap().len(), 12);
        // Not plain: serde carries them.
        assert!(!is_plain::<String>());
        assert!(!is_plain::<(u8, u64)>());
        assert!(!is_plain::<(u64, f64)>());
        assert!(!is_plain::<[bool; 2]>());
        assert!(!is_plain::<[char; 2]>());
        assert!(!is_plain::<[u64; 33]>());
        assert!(!is_plain::<(u64, u64, u64, u64, u64)>());
        assert!(!is_plain::<Option<u64>>());
        assert!(bytes_of(&String::new()).is_none());
        assert!(read::<Vec<u8>>(&mut &[][..]).is_none());
    }

    #[test]
    fn runs_round_trip_and_append() {
        let values = [1u64, u64::MAX, 7];
        let bytes = slice_bytes(&values).unwrap().to_vec();
        assert_eq!(bytes.len(), 24);
        let mut at = &bytes[..];
        let mut out = vec![5u64];
        read_run(&mut at, 3, &mut out).unwrap().unwrap();
        assert_eq!(out, [5, 1, u64::MAX, 7]);
        assert!(at.is_empty());
        let chars = ['a', 'ß', '\u{10FFFF}'];
        let bytes = slice_bytes(&chars).unwrap().to_vec();
        let mut out = Vec::new();
        read_run::<char>(&mut &bytes[..], 3, &mut out).unwrap().unwrap();
        assert_eq!(out, chars);
        assert!(slice_bytes(&[String::new()]).is_none());
        assert!(read_run::<String>(&mut &[][..], 0, &mut Vec::new()).is_none());
    }

    #[test]
    fn hostile_runs_are_refused_whole() {
        let mut out = vec![true];
        let mut at = &[1u8, 0, 2][..];
        assert!(read_run::<bool>(&mut at, 3, &mut out).unwrap().is_err());
        assert_eq!((out.len(), at.len()), (1, 3));
        let mut bytes = ('x' as u32).to_ne_bytes().to_vec();
        bytes.extend(0xD800u32.to_ne_bytes());
        assert!(read_run::<char>(&mut &bytes[..], 2, &mut Vec::new()).unwrap().is_err());
        assert!(read_run::<u64>(&mut &[0u8; 15][..], 2, &mut Vec::new()).unwrap().is_err());
        assert!(read_run::<u64>(&mut &[0u8; 8][..], usize::MAX, &mut Vec::new()).unwrap().is_err());
    }

    #[test]
    fn hostile_bytes_are_refused_not_trusted() {
        assert!(read::<bool>(&mut &[2u8][..]).unwrap().is_err());
        let surrogate = 0xD800u32.to_ne_bytes();
        assert!(read::<char>(&mut &surrogate[..]).unwrap().is_err());
        assert!(read::<u64>(&mut &[1u8, 2, 3][..]).unwrap().is_err());
    }
}
