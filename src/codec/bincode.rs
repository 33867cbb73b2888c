//! bincode 2 over serde.

use std::marker::PhantomData;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Codec, SerdeFormat};
use crate::wire::error::Error;

/// The default decode limit of [`Bincode`]: 1 MiB, the default maximum frame
/// length.
pub const DEFAULT_BINCODE_LIMIT: usize = 1024 * 1024;

/// The default nesting limit of the serde codecs ([`Bincode`], `Postcard`,
/// and the tagged enums over them): 128 levels.
///
/// Each sequence, tuple, struct, map, enum variant, `Some` and newtype
/// struct being decoded is one level. A frame nested deeper is a decode
/// error whose source is [`DepthLimitExceeded`], found before the stack is:
/// without the limit, a recursive type (`enum Tree { Leaf, Node(Box<Tree>) }`)
/// lets a small frame overflow the stack and abort the process. Set another
/// limit with [`BincodeWithLimit`]'s second parameter or
/// [`PostcardWithDepth`](super::PostcardWithDepth).
pub const DEFAULT_MAX_DEPTH: usize = 128;

/// A frame nested deeper than the codec's depth limit (see
/// [`DEFAULT_MAX_DEPTH`]): the source of the [`Error::Decode`].
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use chitchat_net::codec::DepthLimitExceeded;
/// use chitchat_net::{BincodeWithLimit, Codec, Error};
///
/// // Ten nested options, decoded with a limit of four levels.
/// let deep = Some(Some(Some(Some(Some(Some(Some(Some(Some(Some(1u8))))))))));
/// let mut buf = BytesMut::new();
/// BincodeWithLimit::<1024>.encode(&deep, &mut buf).unwrap();
/// let shallow = BincodeWithLimit::<1024, 4>;
/// let err = Codec::<Option<Option<Option<Option<Option<Option<Option<Option<Option<Option<u8>>>>>>>>>>>::decode(&shallow, buf.freeze())
///     .unwrap_err();
/// let Error::Decode { source, .. } = &err else { panic!("{err:?}") };
/// assert_eq!(source.downcast_ref::<DepthLimitExceeded>(), Some(&DepthLimitExceeded { limit: 4 }));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("nested deeper than the limit of {limit} levels")]
pub struct DepthLimitExceeded {
    /// The codec's depth limit.
    pub limit: usize,
}

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
/// decode, or holds bytes after the value, is a decode error. A frame nested
/// deeper than [`DEFAULT_MAX_DEPTH`] levels is a decode error whose source
/// is [`DepthLimitExceeded`].
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
/// `DEPTH` is the nesting limit (default [`DEFAULT_MAX_DEPTH`]): raise it
/// only as far as the stack of the threads that decode allows (tokio's
/// worker threads have 2 MiB).
///
/// # Examples
///
/// ```
/// use chitchat_net::codec::Tagged;
/// use chitchat_net::BincodeWithLimit;
///
/// // 4 MiB frames, 256 levels: for a server's `.codec(..)` of a derived enum.
/// let codec = Tagged::<BincodeWithLimit<{ 4 << 20 }, 256>>::default();
/// # let _ = codec;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct BincodeWithLimit<const LIMIT: usize, const DEPTH: usize = DEFAULT_MAX_DEPTH>;

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

fn decode_prefix<T: DeserializeOwned>(
    bytes: &[u8],
    limit: usize,
    max_depth: usize,
) -> Result<(T, usize), Error> {
    let seed = guard::Guarded {
        seed: PhantomData::<T>,
        limits: guard::Limits {
            max_len: limit,
            hint_cap: bytes.len(),
            max_depth,
        },
    };
    guard::run("bincode", || {
        bincode::serde::seed_decode_from_slice(seed, bytes, config())
    })
}

/// The inherent methods, `Codec` and `SerdeFormat` of a bincode codec type
/// with the given limit.
macro_rules! bincode_codec {
    ($ty:ty, $limit:expr, $depth:expr $(, const $param:ident, const $depth_param:ident)?) => {
        impl<$(const $param: usize, const $depth_param: usize)?> $ty {
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
            /// [`Error::Decode`] if the bytes are not a valid encoding, with
            /// [`DepthLimitExceeded`] if they are nested too deep.
            pub fn decode_prefix<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<(T, usize), Error> {
                decode_prefix(bytes, $limit, $depth)
            }
        }

        // A derived enum is not a serde type: the error names the
        // `Codec` trait (and `serde_format(..)`), not `Serialize` (whose
        // advice, deriving it, would write serde's variant indexes).
        #[diagnostic::do_not_recommend]
        impl<T: Serialize + DeserializeOwned $(, const $param: usize, const $depth_param: usize)?> Codec<T> for $ty {
            fn name(&self) -> &'static str {
                "bincode"
            }

            fn serde_format(&self) -> Option<super::Format> {
                ($limit == DEFAULT_BINCODE_LIMIT && $depth == DEFAULT_MAX_DEPTH).then_some(super::Format::Bincode)
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
                self.decode_slice(&frame)
            }

            fn copies_out(&self) -> bool {
                true
            }

            fn decode_slice(&self, frame: &[u8]) -> Result<T, Error> {
                let (value, used) = decode_prefix(frame, $limit, $depth)?;
                super::expect_consumed("bincode", used, frame.len())?;
                Ok(value)
            }
        }

        impl<$(const $param: usize, const $depth_param: usize)?> SerdeFormat for $ty {
            fn name(&self) -> &'static str {
                "bincode"
            }

            fn encode_value<T: Serialize + ?Sized>(&self, item: &T, dst: &mut BytesMut) -> Result<(), Error> {
                encode_value(item, dst)
            }

            fn decode_prefix<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<(T, usize), Error> {
                decode_prefix(bytes, $limit, $depth)
            }
        }
    };
}

bincode_codec!(Bincode, DEFAULT_BINCODE_LIMIT, DEFAULT_MAX_DEPTH);
bincode_codec!(BincodeWithLimit<LIMIT, DEPTH>, LIMIT, DEPTH, const LIMIT, const DEPTH);

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
///   at the frame's length;
/// - counts nesting levels (each sequence, map, enum, `Some` and newtype
///   struct visited) and refuses to go deeper than `max_depth`, so that a
///   recursive type cannot overflow the stack.
///
/// The postcard codec runs its decode through the same adapter.
///
/// The depth is counted per thread, not per call, so that a decode nested
/// in another (a `Deserialize` impl that decodes a tagged enum, say)
/// continues its count; decoding is synchronous, so nothing else runs on
/// the thread meanwhile.
pub(super) mod guard {
    use std::cell::Cell;
    use std::fmt;

    use serde::de::{self, DeserializeSeed, Deserializer, Visitor};

    use super::DepthLimitExceeded;
    use crate::wire::error::{BoxError, Error};

    #[derive(Clone, Copy)]
    pub(in crate::codec) struct Limits {
        /// The largest length a length field may claim.
        pub(in crate::codec) max_len: usize,
        /// The frame's length: no size hint is trusted beyond it.
        pub(in crate::codec) hint_cap: usize,
        /// The deepest nesting allowed.
        pub(in crate::codec) max_depth: usize,
    }

    thread_local! {
        /// Nesting levels entered on this thread by guarded decodes.
        static DEPTH: Cell<usize> = const { Cell::new(0) };
        /// Set when a guarded decode went over its depth limit: the limit.
        static EXCEEDED: Cell<Option<usize>> = const { Cell::new(None) };
    }

    /// One nesting level, left when dropped (on unwinding too).
    struct Level;

    impl Drop for Level {
        fn drop(&mut self) {
            DEPTH.set(DEPTH.get().saturating_sub(1));
        }
    }

    /// Enters one nesting level, or fails if that goes over `max_depth`.
    fn enter<E: de::Error>(max_depth: usize) -> Result<Level, E> {
        let depth = DEPTH.get() + 1;
        if depth > max_depth {
            EXCEEDED.set(Some(max_depth));
            return Err(E::custom(DepthLimitExceeded { limit: max_depth }));
        }
        DEPTH.set(depth);
        Ok(Level)
    }

    /// Runs one guarded decode of `codec`; an error it ends with because
    /// the depth limit was exceeded becomes a [`DepthLimitExceeded`] (the
    /// format's own error may have lost its message).
    pub(in crate::codec) fn run<T, E: Into<BoxError>>(
        codec: &'static str,
        decode: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, Error> {
        let outermost = DEPTH.get() == 0;
        let result = decode();
        // The outermost decode clears the flag; a nested one leaves it for
        // the decodes around it.
        let exceeded = if outermost {
            EXCEEDED.take()
        } else {
            EXCEEDED.get()
        };
        result.map_err(|error| match exceeded {
            Some(limit) => Error::decode(codec, DepthLimitExceeded { limit }),
            None => Error::decode(codec, error),
        })
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
    pub(in crate::codec) struct Guarded<S> {
        pub(in crate::codec) seed: S,
        pub(in crate::codec) limits: Limits,
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
            let _level = enter::<D::Error>(self.limits.max_depth)?;
            self.visitor.visit_some(GuardDe {
                de,
                limits: self.limits,
            })
        }

        fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
            let _level = enter::<D::Error>(self.limits.max_depth)?;
            self.visitor.visit_newtype_struct(GuardDe {
                de,
                limits: self.limits,
            })
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
            if let Some(len) = seq.size_hint() {
                self.limits.check::<A::Error>(len)?;
            }
            let _level = enter::<A::Error>(self.limits.max_depth)?;
            self.visitor.visit_seq(GuardAccess {
                access: seq,
                limits: self.limits,
            })
        }

        fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
            if let Some(len) = map.size_hint() {
                self.limits.check::<A::Error>(len)?;
            }
            let _level = enter::<A::Error>(self.limits.max_depth)?;
            self.visitor.visit_map(GuardAccess {
                access: map,
                limits: self.limits,
            })
        }

        fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
            let _level = enter::<A::Error>(self.limits.max_depth)?;
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::codec::Tagged;

    /// A recursive type: `levels` nodes and a leaf take `levels + 1`
    /// nesting levels (one enum each).
    #[derive(Debug, Serialize, Deserialize)]
    enum Tree {
        Leaf,
        Node(Box<Tree>),
    }

    /// `nodes` nodes around a leaf, as bincode (and postcard) write it:
    /// one variant index byte per level. Built by hand: encoding (and
    /// dropping) 50,000 levels would itself recurse that deep.
    fn nested(nodes: usize) -> Bytes {
        let mut frame = vec![1u8; nodes];
        frame.push(0);
        Bytes::from(frame)
    }

    fn depth(tree: &Tree) -> usize {
        let (mut tree, mut levels) = (tree, 1);
        while let Tree::Node(inner) = tree {
            tree = inner;
            levels += 1;
        }
        levels
    }

    fn exceeded(error: &Error) -> Option<DepthLimitExceeded> {
        match error {
            Error::Decode { source, .. } => source.downcast_ref().copied(),
            _ => None,
        }
    }

    /// On a thread with tokio's worker stack (2 MiB), as a server decodes.
    fn on_worker_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn nesting_up_to_the_limit_decodes_and_deeper_is_a_typed_error() {
        on_worker_stack(|| {
            let tree: Tree = Bincode.decode(nested(DEFAULT_MAX_DEPTH - 1)).unwrap();
            assert_eq!(depth(&tree), DEFAULT_MAX_DEPTH);
            let error = Codec::<Tree>::decode(&Bincode, nested(DEFAULT_MAX_DEPTH)).unwrap_err();
            assert_eq!(exceeded(&error), Some(DepthLimitExceeded { limit: 128 }));
            // 50 KB of nesting: refused, not a stack overflow.
            let error = Codec::<Tree>::decode(&Bincode, nested(50_000)).unwrap_err();
            assert_eq!(exceeded(&error), Some(DepthLimitExceeded { limit: 128 }));
        });
    }

    #[test]
    fn the_depth_limit_is_a_parameter() {
        let shallow = BincodeWithLimit::<1024, 8>;
        let tree: Tree = shallow.decode(nested(7)).unwrap();
        assert_eq!(depth(&tree), 8);
        let error = Codec::<Tree>::decode(&shallow, nested(8)).unwrap_err();
        assert_eq!(exceeded(&error), Some(DepthLimitExceeded { limit: 8 }));
        // Raised: deeper than the default decodes.
        let deep = BincodeWithLimit::<1024, 200>;
        let tree: Tree = on_worker_stack(move || deep.decode(nested(150)).unwrap());
        assert_eq!(depth(&tree), 151);
    }

    #[test]
    fn the_count_is_left_clean_after_every_decode() {
        for _ in 0..3 {
            let error = Codec::<Tree>::decode(&Bincode, nested(500)).unwrap_err();
            assert!(exceeded(&error).is_some());
            // A failure that is not about depth is not reported as one.
            let error =
                Codec::<Tree>::decode(&Bincode, Bytes::from_static(&[1, 1, 9])).unwrap_err();
            assert_eq!(exceeded(&error), None, "{error:?}");
            let tree: Tree = Bincode.decode(nested(100)).unwrap();
            assert_eq!(depth(&tree), 101);
        }
    }

    #[test]
    fn every_kind_of_nesting_counts() {
        // Sequences: one level each.
        let mut buf = BytesMut::new();
        Bincode.encode(&vec![vec![vec![1u8]]], &mut buf).unwrap();
        let limited = BincodeWithLimit::<1024, 3>;
        assert!(Codec::<Vec<Vec<Vec<u8>>>>::decode(&limited, buf.clone().freeze()).is_ok());
        let limited = BincodeWithLimit::<1024, 2>;
        let error = Codec::<Vec<Vec<Vec<u8>>>>::decode(&limited, buf.freeze()).unwrap_err();
        assert_eq!(exceeded(&error), Some(DepthLimitExceeded { limit: 2 }));
        let mut buf = BytesMut::new();
        Bincode.encode(&Some(Some(Some(1u8))), &mut buf).unwrap();
        let error =
            Codec::<Option<Option<Option<u8>>>>::decode(&limited, buf.freeze()).unwrap_err();
        assert_eq!(exceeded(&error), Some(DepthLimitExceeded { limit: 2 }));
        // Maps and structs (tuples in bincode).
        let mut buf = BytesMut::new();
        let map = std::collections::BTreeMap::from([(1u8, (2u8, (3u8,)))]);
        Bincode.encode(&map, &mut buf).unwrap();
        let error =
            Codec::<std::collections::BTreeMap<u8, (u8, (u8,))>>::decode(&limited, buf.freeze())
                .unwrap_err();
        assert_eq!(exceeded(&error), Some(DepthLimitExceeded { limit: 2 }));
    }

    /// What a level costs on the stack, unoptimised: 128 levels fit in a
    /// quarter of a tokio worker's stack, so the default leaves room for
    /// the handler and the runtime around the decode.
    #[test]
    fn the_default_depth_fits_a_small_stack() {
        let tree = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(|| Codec::<Tree>::decode(&Bincode, nested(DEFAULT_MAX_DEPTH - 1)).is_ok())
            .unwrap()
            .join()
            .unwrap();
        assert!(tree);
    }

    /// A derived tagged enum whose field is the recursive type: the fields
    /// are decoded through the same guard.
    #[derive(Debug)]
    enum Wrapped {
        Tree(Tree),
    }

    impl crate::codec::TaggedEnum for Wrapped {
        fn tag(&self) -> u32 {
            0
        }

        fn encode_fields<F: SerdeFormat>(
            &self,
            format: &F,
            dst: &mut BytesMut,
        ) -> Result<(), Error> {
            let Wrapped::Tree(tree) = self;
            format.encode_value(&(tree,), dst)
        }

        fn decode_fields<F: SerdeFormat>(
            format: &F,
            _tag: u32,
            bytes: &[u8],
        ) -> Result<(Self, usize), Error> {
            let ((tree,), len) = format.decode_prefix::<(Tree,)>(bytes)?;
            Ok((Wrapped::Tree(tree), len))
        }
    }

    #[test]
    fn tagged_enums_are_guarded_too() {
        on_worker_stack(|| {
            let mut frame = vec![0u8]; // tag 0
            frame.extend_from_slice(&nested(50_000));
            let error = Codec::<Wrapped>::decode(&Tagged::<Bincode>::default(), Bytes::from(frame))
                .unwrap_err();
            assert_eq!(exceeded(&error), Some(DepthLimitExceeded { limit: 128 }));
            // The fields' tuple is one level: 126 nodes and a leaf fit.
            let mut frame = vec![0u8];
            frame.extend_from_slice(&nested(DEFAULT_MAX_DEPTH - 2));
            let Wrapped::Tree(tree) = Tagged::<Bincode>::default()
                .decode(Bytes::from(frame))
                .unwrap();
            assert_eq!(depth(&tree), DEFAULT_MAX_DEPTH - 1);
        });
    }

    #[cfg(feature = "postcard")]
    #[test]
    fn postcard_is_guarded_alike() {
        use crate::codec::{Postcard, PostcardWithDepth};
        on_worker_stack(|| {
            let tree: Tree = Postcard.decode(nested(DEFAULT_MAX_DEPTH - 1)).unwrap();
            assert_eq!(depth(&tree), DEFAULT_MAX_DEPTH);
            for frame in [nested(DEFAULT_MAX_DEPTH), nested(50_000)] {
                let error = Codec::<Tree>::decode(&Postcard, frame).unwrap_err();
                assert_eq!(exceeded(&error), Some(DepthLimitExceeded { limit: 128 }));
            }
            let error = Codec::<Tree>::decode(&PostcardWithDepth::<4>, nested(4)).unwrap_err();
            assert_eq!(exceeded(&error), Some(DepthLimitExceeded { limit: 4 }));
            let mut frame = vec![0u8];
            frame.extend_from_slice(&nested(50_000));
            let error =
                Codec::<Wrapped>::decode(&Tagged::<Postcard>::default(), Bytes::from(frame))
                    .unwrap_err();
            assert_eq!(exceeded(&error), Some(DepthLimitExceeded { limit: 128 }));
        });
    }
}
