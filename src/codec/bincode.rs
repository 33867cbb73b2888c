//! bincode 2 over serde.

use std::marker::PhantomData;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Codec, SerdeFormat};
use crate::Error;

/// The default decode limit of [`Bincode`]: 1 MiB, the default maximum frame
/// length.
pub const DEFAULT_BINCODE_LIMIT: usize = 1024 * 1024;

/// Serde types in bincode 2's standard configuration (little-endian,
/// variable-length integers), with a decode limit of
/// [`DEFAULT_BINCODE_LIMIT`]; [`BincodeWithLimit`] sets another.
///
/// Decoding bounds what length fields may claim: a string or byte array
/// longer than the bytes left in the frame, or longer than the limit, and a
/// sequence or map of more than the limit's number of elements are decode
/// errors, found before anything is allocated for them, so a small frame
/// cannot ask for a large allocation (what serde preallocates for a sequence
/// is capped by the frame's length). Every frame within the limit that
/// [`Codec::encode`] wrote decodes (bar a sequence of more than the limit's
/// number of values that take no bytes, such as `()`). A frame that fails to
/// decode, or holds bytes after the value, is a decode error.
///
/// Beware: bincode writes an enum's variant as its declaration index, so
/// reordering variants changes the wire format. The `Message` derive gives
/// enums stable tags instead.
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use chitchat_net::{Bincode, BincodeWithLimit, Codec};
///
/// let mut buf = BytesMut::new();
/// Bincode.encode(&(7u64, "seven".to_string()), &mut buf).unwrap();
/// let back: (u64, String) = Bincode.decode(buf.freeze()).unwrap();
/// assert_eq!(back, (7, "seven".to_string()));
///
/// // A smaller limit on what length fields may claim.
/// let strict = BincodeWithLimit::<64>;
/// let mut buf = BytesMut::new();
/// strict.encode(&vec![0u8; 65], &mut buf).unwrap();
/// assert!(Codec::<Vec<u8>>::decode(&strict, buf.freeze()).is_err());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Bincode;

/// [`Bincode`] with a decode limit of `LIMIT` bytes (or elements) on what
/// length fields may claim; raise it if you raise the maximum frame length.
#[derive(Debug, Clone, Copy, Default)]
pub struct BincodeWithLimit<const LIMIT: usize>;

/// Without bincode's own limit, which counts in-memory sizes (8 bytes for
/// any `u64`), refusing valid frames well under the limit, and does not
/// check sequence lengths on the serde path: `decode_prefix` bounds lengths
/// itself (see `guard`).
fn config() -> impl bincode::config::Config {
    bincode::config::standard()
}

fn encode_value<T: Serialize + ?Sized>(item: &T, dst: &mut BytesMut) -> Result<(), Error> {
    bincode::serde::encode_into_std_write(item, &mut dst.writer(), config())
        .map(drop)
        .map_err(|e| Error::encode("bincode", e))
}

fn decode_prefix<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<(T, usize), Error> {
    let seed = guard::Guarded {
        seed: PhantomData::<T>,
        limits: guard::Limits {
            max_len: limit,
            hint_cap: bytes.len(),
        },
    };
    bincode::serde::seed_decode_from_slice(seed, bytes, config())
        .map_err(|e| Error::decode("bincode", e))
}

/// The inherent methods, `Codec` and `SerdeFormat` of a bincode codec type
/// with the given limit.
macro_rules! bincode_codec {
    ($ty:ty, $limit:expr $(, const $param:ident)?) => {
        impl<$(const $param: usize)?> $ty {
            /// Appends the bincode encoding of any serde value to `dst`.
            ///
            /// # Errors
            ///
            /// [`Error::Encode`] if serde refuses the value.
            pub fn encode_value<T: Serialize + ?Sized>(&self, item: &T, dst: &mut BytesMut) -> Result<(), Error> {
                encode_value(item, dst)
            }

            /// Decodes one serde value from the start of `bytes`; returns it
            /// and the number of bytes it took.
            ///
            /// # Errors
            ///
            /// [`Error::Decode`] if the bytes are not a valid encoding.
            pub fn decode_prefix<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<(T, usize), Error> {
                decode_prefix(bytes, $limit)
            }
        }

        impl<T: Serialize + DeserializeOwned $(, const $param: usize)?> Codec<T> for $ty {
            fn name(&self) -> &'static str {
                "bincode"
            }

            fn in_format(&self, format: super::Format) -> Option<&'static dyn Codec<T>>
            where
                T: 'static,
            {
                Some(super::serde_codec::<T>(format))
            }

            fn is_binary(&self) -> bool {
                true
            }

            fn encode(&self, item: &T, dst: &mut BytesMut) -> Result<(), Error> {
                encode_value(item, dst)
            }

            fn decode(&self, frame: Bytes) -> Result<T, Error> {
                let (value, used) = decode_prefix(&frame, $limit)?;
                super::expect_consumed("bincode", used, frame.len())?;
                Ok(value)
            }
        }

        impl<$(const $param: usize)?> SerdeFormat for $ty {
            fn name(&self) -> &'static str {
                "bincode"
            }

            fn encode_value<T: Serialize + ?Sized>(&self, item: &T, dst: &mut BytesMut) -> Result<(), Error> {
                encode_value(item, dst)
            }

            fn decode_prefix<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<(T, usize), Error> {
                decode_prefix(bytes, $limit)
            }
        }
    };
}

bincode_codec!(Bincode, DEFAULT_BINCODE_LIMIT);
bincode_codec!(BincodeWithLimit<LIMIT>, LIMIT, const LIMIT);

/// A serde adapter around bincode's deserializer that bounds what length
/// fields may claim.
///
/// bincode 2's `with_limit` does not fit a frame codec: it counts in-memory
/// sizes (8 bytes for every `u64`, even one that takes 1 byte on the wire), so
/// it refuses valid frames far below the limit, and on the serde path it
/// never checks a sequence's length (only serde's 1 MiB cap on
/// preallocation stands between a 10-byte frame and a large allocation). So
/// the decode runs without bincode's limit, through this adapter, which:
///
/// - reads strings and byte arrays through bincode's borrowing path, which
///   checks the length against the bytes left in the frame before copying,
///   instead of the owning path, which allocates the claimed length first;
/// - refuses a string, byte array, sequence or map longer than `max_len`;
/// - caps the size hint of a sequence or map (what serde preallocates from)
///   at the frame's length.
mod guard {
    use std::fmt;

    use serde::de::{self, DeserializeSeed, Deserializer, Visitor};

    #[derive(Clone, Copy)]
    pub(super) struct Limits {
        /// The largest length a length field may claim.
        pub(super) max_len: usize,
        /// The frame's length: no size hint is trusted beyond it.
        pub(super) hint_cap: usize,
    }

    impl Limits {
        fn check<E: de::Error>(self, len: usize) -> Result<(), E> {
            if len > self.max_len {
                Err(E::custom(format_args!(
                    "length {len} is over the limit of {}",
                    self.max_len
                )))
            } else {
                Ok(())
            }
        }
    }

    /// Deserializes `T` (a seed) with every nested deserializer guarded.
    pub(super) struct Guarded<S> {
        pub(super) seed: S,
        pub(super) limits: Limits,
    }

    impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Guarded<S> {
        type Value = S::Value;

        fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
            self.seed.deserialize(GuardDe {
                de,
                limits: self.limits,
            })
        }
    }

    struct GuardDe<D> {
        de: D,
        limits: Limits,
    }

    struct GuardVisitor<V> {
        visitor: V,
        limits: Limits,
    }

    impl<D> GuardDe<D> {
        fn wrap<V>(&self, visitor: V) -> GuardVisitor<V> {
            GuardVisitor {
                visitor,
                limits: self.limits,
            }
        }
    }

    macro_rules! forward {
        ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
                let visitor = self.wrap(visitor);
                self.de.$method($($arg,)* visitor)
            }
        )*};
    }

    impl<'de, D: Deserializer<'de>> Deserializer<'de> for GuardDe<D> {
        type Error = D::Error;

        forward! {
            deserialize_any();
            deserialize_bool();
            deserialize_i8();
            deserialize_i16();
            deserialize_i32();
            deserialize_i64();
            deserialize_i128();
            deserialize_u8();
            deserialize_u16();
            deserialize_u32();
            deserialize_u64();
            deserialize_u128();
            deserialize_f32();
            deserialize_f64();
            deserialize_char();
            deserialize_str();
            deserialize_bytes();
            deserialize_option();
            deserialize_unit();
            deserialize_unit_struct(name: &'static str);
            deserialize_newtype_struct(name: &'static str);
            deserialize_seq();
            deserialize_tuple(len: usize);
            deserialize_tuple_struct(name: &'static str, len: usize);
            deserialize_map();
            deserialize_struct(name: &'static str, fields: &'static [&'static str]);
            deserialize_enum(name: &'static str, variants: &'static [&'static str]);
            deserialize_identifier();
            deserialize_ignored_any();
        }

        /// Borrowed, so the length is checked against the frame first; the
        /// visitor copies what it needs.
        fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            let visitor = self.wrap(visitor);
            self.de.deserialize_str(visitor)
        }

        /// Borrowed, as for strings.
        fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            let visitor = self.wrap(visitor);
            self.de.deserialize_bytes(visitor)
        }

        fn is_human_readable(&self) -> bool {
            self.de.is_human_readable()
        }
    }

    macro_rules! visit {
        ($($method:ident($ty:ty);)*) => {$(
            fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
                self.visitor.$method(v)
            }
        )*};
    }

    impl<'de, V: Visitor<'de>> Visitor<'de> for GuardVisitor<V> {
        type Value = V::Value;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.visitor.expecting(f)
        }

        visit! {
            visit_bool(bool);
            visit_i8(i8);
            visit_i16(i16);
            visit_i32(i32);
            visit_i64(i64);
            visit_i128(i128);
            visit_u8(u8);
            visit_u16(u16);
            visit_u32(u32);
            visit_u64(u64);
            visit_u128(u128);
            visit_f32(f32);
            visit_f64(f64);
            visit_char(char);
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<V::Value, E> {
            self.limits.check(v.len())?;
            self.visitor.visit_str(v)
        }

        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<V::Value, E> {
            self.limits.check(v.len())?;
            self.visitor.visit_borrowed_str(v)
        }

        fn visit_string<E: de::Error>(self, v: String) -> Result<V::Value, E> {
            self.limits.check(v.len())?;
            self.visitor.visit_string(v)
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<V::Value, E> {
            self.limits.check(v.len())?;
            self.visitor.visit_bytes(v)
        }

        fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<V::Value, E> {
            self.limits.check(v.len())?;
            self.visitor.visit_borrowed_bytes(v)
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<V::Value, E> {
            self.limits.check(v.len())?;
            self.visitor.visit_byte_buf(v)
        }

        fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
            self.visitor.visit_none()
        }

        fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
            self.visitor.visit_unit()
        }

        fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
            self.visitor.visit_some(GuardDe {
                de,
                limits: self.limits,
            })
        }

        fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
            self.visitor.visit_newtype_struct(GuardDe {
                de,
                limits: self.limits,
            })
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
            if let Some(len) = seq.size_hint() {
                self.limits.check::<A::Error>(len)?;
            }
            self.visitor.visit_seq(GuardAccess {
                access: seq,
                limits: self.limits,
            })
        }

        fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
            if let Some(len) = map.size_hint() {
                self.limits.check::<A::Error>(len)?;
            }
            self.visitor.visit_map(GuardAccess {
                access: map,
                limits: self.limits,
            })
        }

        fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
            self.visitor.visit_enum(GuardAccess {
                access: data,
                limits: self.limits,
            })
        }
    }

    /// A guarded `SeqAccess`, `MapAccess`, `EnumAccess` or `VariantAccess`.
    struct GuardAccess<A> {
        access: A,
        limits: Limits,
    }

    impl<A> GuardAccess<A> {
        fn seed<S>(&self, seed: S) -> Guarded<S> {
            Guarded {
                seed,
                limits: self.limits,
            }
        }

        fn cap(&self, hint: Option<usize>) -> Option<usize> {
            hint.map(|len| len.min(self.limits.hint_cap))
        }
    }

    impl<'de, A: de::SeqAccess<'de>> de::SeqAccess<'de> for GuardAccess<A> {
        type Error = A::Error;

        fn next_element_seed<T: DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<Option<T::Value>, A::Error> {
            let seed = self.seed(seed);
            self.access.next_element_seed(seed)
        }

        fn size_hint(&self) -> Option<usize> {
            self.cap(self.access.size_hint())
        }
    }

    impl<'de, A: de::MapAccess<'de>> de::MapAccess<'de> for GuardAccess<A> {
        type Error = A::Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, A::Error> {
            let seed = self.seed(seed);
            self.access.next_key_seed(seed)
        }

        fn next_value_seed<T: DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<T::Value, A::Error> {
            let seed = self.seed(seed);
            self.access.next_value_seed(seed)
        }

        fn size_hint(&self) -> Option<usize> {
            self.cap(self.access.size_hint())
        }
    }

    impl<'de, A: de::EnumAccess<'de>> de::EnumAccess<'de> for GuardAccess<A> {
        type Error = A::Error;
        type Variant = GuardAccess<A::Variant>;

        fn variant_seed<T: DeserializeSeed<'de>>(
            self,
            seed: T,
        ) -> Result<(T::Value, Self::Variant), A::Error> {
            let limits = self.limits;
            let seed = self.seed(seed);
            let (value, access) = self.access.variant_seed(seed)?;
            Ok((value, GuardAccess { access, limits }))
        }
    }

    impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for GuardAccess<A> {
        type Error = A::Error;

        fn unit_variant(self) -> Result<(), A::Error> {
            self.access.unit_variant()
        }

        fn newtype_variant_seed<T: DeserializeSeed<'de>>(
            self,
            seed: T,
        ) -> Result<T::Value, A::Error> {
            let seed = self.seed(seed);
            self.access.newtype_variant_seed(seed)
        }

        fn tuple_variant<V: Visitor<'de>>(
            self,
            len: usize,
            visitor: V,
        ) -> Result<V::Value, A::Error> {
            let visitor = GuardVisitor {
                visitor,
                limits: self.limits,
            };
            self.access.tuple_variant(len, visitor)
        }

        fn struct_variant<V: Visitor<'de>>(
            self,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, A::Error> {
            let visitor = GuardVisitor {
                visitor,
                limits: self.limits,
            };
            self.access.struct_variant(fields, visitor)
        }
    }
}
