//! Enums with stable wire tags, over a serde format.

use std::marker::PhantomData;

use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Bincode, Codec};
use crate::wire::error::Error;

/// A serde format that can write and read values back to back, as
/// [`Tagged`] needs: [`Bincode`], [`BincodeWithLimit`](super::BincodeWithLimit), `Postcard`
/// and `PostcardWithDepth`.
pub trait SerdeFormat: Default + Send + Sync + 'static {
    /// The format's name, for error messages.
    fn name(&self) -> &'static str;

    /// Appends the encoding of `item` to `dst`.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`].
    fn encode_value<T: Serialize + ?Sized>(
        &self,
        item: &T,
        dst: &mut BytesMut,
    ) -> Result<(), Error>;

    /// Decodes one value from the start of `bytes`; returns it and the bytes
    /// it took.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`].
    fn decode_prefix<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<(T, usize), Error>;
}

/// An enum whose variants have stable wire tags. The `Message` derive
/// implements it; a variant's tag is its declaration index unless
/// `#[message(tag = N)]` pins it.
pub trait TaggedEnum: Sized + Send + 'static {
    /// The tag of this value's variant.
    fn tag(&self) -> u32;

    /// `Type::Variant` for the variant with `tag`, for error messages (the
    /// derive implements it; `None` by default).
    fn variant_name(tag: u32) -> Option<&'static str> {
        let _ = tag;
        None
    }

    /// Appends this variant's fields (as a tuple) to `dst`.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`].
    fn encode_fields<F: SerdeFormat>(&self, format: &F, dst: &mut BytesMut) -> Result<(), Error>;

    /// Decodes the fields of the variant with `tag` from the start of
    /// `bytes`; returns the value and the bytes it took.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] with [`UnknownTag`] for a tag no variant has.
    fn decode_fields<F: SerdeFormat>(
        format: &F,
        tag: u32,
        bytes: &[u8],
    ) -> Result<(Self, usize), Error>;
}

/// A frame whose tag names no variant of the enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown variant tag {tag}")]
pub struct UnknownTag {
    /// The tag read from the frame.
    pub tag: u32,
}

/// The codec of a [`TaggedEnum`]: the variant's tag as a `u32`, then its
/// fields as a tuple, both in the serde format `F`.
///
/// Unlike plain serde enums, the tag does not change when variants are added
/// or reordered, once tags are pinned with `#[message(tag = N)]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tagged<F = Bincode>(PhantomData<F>);

impl<F> Tagged<F> {
    /// The codec (it holds nothing).
    pub const NEW: Self = Tagged(PhantomData);
}

impl<T: TaggedEnum, F: SerdeFormat> Codec<T> for Tagged<F> {
    fn name(&self) -> &'static str {
        F::default().name()
    }

    fn is_binary(&self) -> bool {
        true
    }

    fn in_format(&self, format: super::Format) -> Option<&'static dyn Codec<T>> {
        Some(super::tagged_codec::<T>(format))
    }

    fn keeps_tags(&self) -> bool {
        true
    }

    fn encode(&self, item: &T, dst: &mut BytesMut) -> Result<(), Error> {
        let format = F::default();
        format.encode_value(&item.tag(), dst)?;
        item.encode_fields(&format, dst)
    }

    fn decode(&self, frame: Bytes) -> Result<T, Error> {
        self.decode_slice(&frame)
    }

    fn copies_out(&self) -> bool {
        true
    }

    fn decode_slice(&self, frame: &[u8]) -> Result<T, Error> {
        let format = F::default();
        let (tag, tag_len) = format.decode_prefix::<u32>(frame)?;
        let (value, fields_len) = T::decode_fields(&format, tag, &frame[tag_len..]).map_err(
            |error| match T::variant_name(tag) {
                Some(variant) => error.decoding_variant(variant),
                None => error,
            },
        )?;
        super::expect_consumed(format.name(), tag_len + fields_len, frame.len())?;
        Ok(value)
    }
}
