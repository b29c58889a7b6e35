//! Finding the text of a custom serde error that postcard dropped.
//!
//! postcard turns `S::Error::custom(message)` into a bare "Serde Serialization Error",
//! losing what the type's author wrote. When an encode fails so (a cold path), the value
//! is walked once more with [`Probe`], a serializer that writes nothing and whose error
//! keeps the message.

use serde::ser::{self, Serialize};

/// The message of the first custom error `value`'s `Serialize` raises, if any.
pub(crate) fn custom_message<T: Serialize + ?Sized>(value: &T) -> Option<String> {
    match value.serialize(&mut Probe) {
        Err(Custom(message)) => Some(message),
        Ok(()) => None,
    }
}

/// A custom error's message.
#[derive(Debug)]
pub(crate) struct Custom(String);

impl std::fmt::Display for Custom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Custom {}

impl ser::Error for Custom {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Custom(msg.to_string())
    }
}

/// Walks a value, writing nothing.
pub(crate) struct Probe;

type R = Result<(), Custom>;

impl ser::Serializer for &mut Probe {
    type Ok = ();
    type Error = Custom;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, _: bool) -> R {
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> R {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> R {
        Ok(())
    }
    fn serialize_i32(self, _: i32) -> R {
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> R {
        Ok(())
    }
    fn serialize_i128(self, _: i128) -> R {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> R {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> R {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> R {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> R {
        Ok(())
    }
    fn serialize_u128(self, _: u128) -> R {
        Ok(())
    }
    fn serialize_f32(self, _: f32) -> R {
        Ok(())
    }
    fn serialize_f64(self, _: f64) -> R {
        Ok(())
    }
    fn serialize_char(self, _: char) -> R {
        Ok(())
    }
    fn serialize_str(self, _: &str) -> R {
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> R {
        Ok(())
    }
    fn serialize_none(self) -> R {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> R {
        value.serialize(self)
    }
    fn serialize_unit(self) -> R {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> R {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> R {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> R {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> R {
        value.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, Custom> {
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, Custom> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Custom> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Custom> {
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self, Custom> {
        Ok(self)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Custom> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Custom> {
        Ok(self)
    }
}

/// Every compound form walks its elements the same way.
macro_rules! walk {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for &mut Probe {
            type Ok = ();
            type Error = Custom;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> R {
                value.serialize(&mut **self)
            }
            fn end(self) -> R {
                Ok(())
            }
        }
    )*};
}

walk!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for &mut Probe {
    type Ok = ();
    type Error = Custom;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> R {
        key.serialize(&mut **self)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> R {
        value.serialize(&mut **self)
    }
    fn end(self) -> R {
        Ok(())
    }
}

/// Named fields walk their values the same way.
macro_rules! walk_fields {
    ($($trait:ident),*) => {$(
        impl ser::$trait for &mut Probe {
            type Ok = ();
            type Error = Custom;
            fn serialize_field<T: Serialize + ?Sized>(&mut self, _: &'static str, value: &T) -> R {
                value.serialize(&mut **self)
            }
            fn end(self) -> R {
                Ok(())
            }
        }
    )*};
}

walk_fields!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use super::*;

    struct Refuses;
    impl Serialize for Refuses {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(ser::Error::custom("no, because"))
        }
    }

    #[test]
    fn finds_a_custom_message_deep_inside_a_value() {
        let v = (1u8, vec![Some(String::from("x"))], [(3u16, Refuses)]);
        assert_eq!(custom_message(&v).as_deref(), Some("no, because"));
        assert_eq!(custom_message(&(1u8, "fine")), None);
    }
}
