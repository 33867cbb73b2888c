//! Switching the serde format of derived messages at run time, keeping
//! their pinned tags: [`Format`] and what the `Message` derive calls.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Bincode, Codec, Tagged, TaggedEnum};

/// A serde format that every serde message (derived `codec = "bincode"`
/// or `codec = "postcard"`, or any type whose codec is [`Bincode`],
/// `Postcard` or [`Tagged`]) can be switched to with one call on a builder
/// ([`Options::serde_format`](crate::Options::serde_format)).
///
/// A derived enum keeps its pinned tags in any format: only how the tag and
/// the fields are written changes (bincode's varints or postcard's). A
/// struct is written as serde writes it in that format. Messages with
/// another codec (`pod`, text, raw bytes, hand-written codecs) are not
/// affected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// [`Bincode`] (bincode 2, standard configuration).
    Bincode,
    /// [`Postcard`](crate::Postcard) (feature `postcard`).
    #[cfg(feature = "postcard")]
    Postcard,
}

/// The codec of a tagged enum `T` (a derived enum) in `format`: what
/// [`Tagged`]'s [`Codec::in_format`] returns.
pub fn tagged_codec<T: TaggedEnum>(format: Format) -> &'static dyn Codec<T> {
    match format {
        Format::Bincode => &Tagged::<Bincode>::NEW,
        #[cfg(feature = "postcard")]
        Format::Postcard => &Tagged::<crate::codec::Postcard>::NEW,
    }
}

/// The codec of a serde type `T` in `format`: what [`Bincode`]'s and
/// `Postcard`'s [`Codec::in_format`] return.
pub fn serde_codec<T>(format: Format) -> &'static dyn Codec<T>
where
    T: Serialize + DeserializeOwned + 'static,
{
    match format {
        Format::Bincode => &Bincode,
        #[cfg(feature = "postcard")]
        Format::Postcard => &crate::codec::Postcard,
    }
}
