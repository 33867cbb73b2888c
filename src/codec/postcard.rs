//! postcard over serde (feature `postcard`).

use std::marker::PhantomData;

use bytes::{Bytes, BytesMut};
use serde::de::{DeserializeOwned, DeserializeSeed};
use serde::Serialize;

use super::bincode::guard;
use super::{Codec, SerdeFormat, DEFAULT_MAX_DEPTH};
use crate::wire::error::Error;

/// Serde types in postcard, a maintained compact serde format.
///
/// As with bincode, an enum's variant is written as its declaration index.
/// A frame nested deeper than [`DEFAULT_MAX_DEPTH`] levels is a decode
/// error whose source is [`DepthLimitExceeded`](super::DepthLimitExceeded);
/// [`PostcardWithDepth`] sets another limit.
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use chitchat_net::{Codec, Postcard};
///
/// let mut buf = BytesMut::new();
/// Postcard.encode(&(7u64, "seven".to_string()), &mut buf).unwrap();
/// let back: (u64, String) = Postcard.decode(buf.freeze()).unwrap();
/// assert_eq!(back.0, 7);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

/// [`Postcard`] with a nesting limit of `DEPTH` levels instead of
/// [`DEFAULT_MAX_DEPTH`]: raise it only as far as the stack of the threads
/// that decode allows (tokio's worker threads have 2 MiB).
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use chitchat_net::codec::PostcardWithDepth;
/// use chitchat_net::Codec;
///
/// let mut buf = BytesMut::new();
/// let nested = vec![vec![vec![1u8]]];
/// PostcardWithDepth::<2>.encode(&nested, &mut buf).unwrap();
/// // Three levels of sequences: one too many.
/// assert!(Codec::<Vec<Vec<Vec<u8>>>>::decode(&PostcardWithDepth::<2>, buf.freeze()).is_err());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct PostcardWithDepth<const DEPTH: usize>;

/// A postcard output flavor that appends to a `BytesMut`.
struct Append<'a>(&'a mut BytesMut);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.extend_from_slice(&[data]);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

fn encode_value<T: Serialize + ?Sized>(item: &T, dst: &mut BytesMut) -> Result<(), Error> {
    postcard::serialize_with_flavor(item, Append(dst)).map_err(|e| Error::encode("postcard", e))
}

/// Decodes through the serde guard (see the bincode codec): sizes hinted
/// beyond the frame are not trusted, and nesting deeper than `max_depth` is
/// a [`DepthLimitExceeded`](super::DepthLimitExceeded).
fn decode_prefix<T: DeserializeOwned>(bytes: &[u8], max_depth: usize) -> Result<(T, usize), Error> {
    let seed = guard::Guarded {
        seed: PhantomData::<T>,
        limits: guard::Limits {
            // postcard has no length limit of its own to mirror; what serde
            // preallocates is still capped at the frame's length.
            max_len: usize::MAX,
            hint_cap: bytes.len(),
            max_depth,
        },
    };
    guard::run("postcard", || {
        let mut de = postcard::Deserializer::from_bytes(bytes);
        let value = seed.deserialize(&mut de)?;
        let rest = de.finalize()?;
        Ok::<_, postcard::Error>((value, bytes.len() - rest.len()))
    })
}

/// The inherent methods, `Codec` and `SerdeFormat` of a postcard codec type
/// with the given depth limit.
macro_rules! postcard_codec {
    ($ty:ty, $depth:expr $(, const $param:ident)?) => {
        impl<$(const $param: usize)?> $ty {
            /// Appends the postcard encoding of any serde value to `dst`.
            ///
            /// # Errors
            ///
            /// [`Error::Encode`] if serde refuses the value.
            pub fn encode_value<T: Serialize + ?Sized>(
                &self,
                item: &T,
                dst: &mut BytesMut,
            ) -> Result<(), Error> {
                encode_value(item, dst)
            }

            /// Decodes one serde value from the start of `bytes`; returns it
            /// and the number of bytes it took.
            ///
            /// # Errors
            ///
            /// [`Error::Decode`] if the bytes are not a valid encoding, with
            /// [`DepthLimitExceeded`](super::DepthLimitExceeded) if they are
            /// nested too deep.
            pub fn decode_prefix<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<(T, usize), Error> {
                decode_prefix(bytes, $depth)
            }
        }

        // A derived enum is not a serde type: the error names the
        // `Codec` trait (and `serde_format(..)`), not `Serialize` (whose
        // advice, deriving it, would write serde's variant indexes).
        #[diagnostic::do_not_recommend]
        impl<T: Serialize + DeserializeOwned $(, const $param: usize)?> Codec<T> for $ty {
            fn name(&self) -> &'static str {
                "postcard"
            }

            fn serde_format(&self) -> Option<super::Format> {
                ($depth == DEFAULT_MAX_DEPTH).then_some(super::Format::Postcard)
            }

            fn is_binary(&self) -> bool {
                true
            }

            fn in_format(&self, format: super::Format) -> Option<&'static dyn Codec<T>>
            where
                T: 'static,
            {
                Some(super::serde_codec::<T>(format))
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
                let (value, used) = decode_prefix(frame, $depth)?;
                super::expect_consumed("postcard", used, frame.len())?;
                Ok(value)
            }
        }

        impl<$(const $param: usize)?> SerdeFormat for $ty {
            fn name(&self) -> &'static str {
                "postcard"
            }

            fn encode_value<T: Serialize + ?Sized>(
                &self,
                item: &T,
                dst: &mut BytesMut,
            ) -> Result<(), Error> {
                encode_value(item, dst)
            }

            fn decode_prefix<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<(T, usize), Error> {
                decode_prefix(bytes, $depth)
            }
        }
    };
}

postcard_codec!(Postcard, DEFAULT_MAX_DEPTH);
postcard_codec!(PostcardWithDepth<DEPTH>, DEPTH, const DEPTH);
