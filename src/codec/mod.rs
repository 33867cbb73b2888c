// The codec layer (this folder): frames ⇄ typed values, pure; and
// `TypedCodec` (typed_codec.rs), typed messages for a `Framed` of your own.
// May import: `wire`, `base`. Nothing above (`.ci/check-layers` checks it).

//! Codecs: frames ⇄ typed values (pure, no I/O).
//!
//! A [`Codec`] turns a value into a frame's payload and back; a [`Message`]
//! is a type that knows its default codec. Framing is a separate layer
//! ([`crate::frame`]): a codec never sees a delimiter or a socket.
//!
//! | codec | values | binary | notes |
//! |---|---|---|---|
//! | [`Raw`] | [`Bytes`], `Vec<u8>` | no | zero-copy decode into `Bytes` |
//! | [`Text`] | `String` | no | invalid UTF-8 is a decode error |
//! | [`PodCodec`] | any [`bytemuck::Pod`] | yes | no serialisation; machine byte order |
//! | [`Bincode`] | serde types | yes | bincode 2, standard configuration, size limit |
//! | `Postcard` (feature `postcard`) | serde types | yes | maintained serde format |
//!
//! Whether a codec is binary decides the escaping of an
//! [`Escaping::Auto`](crate::Escaping::Auto) delimited framing.
//!
//! # Writing your own
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use chitchat_net::{Codec, Error};
//!
//! /// Decimal numbers as text.
//! #[derive(Debug, Default)]
//! struct Decimal;
//!
//! impl Codec<u64> for Decimal {
//!     fn name(&self) -> &'static str { "decimal" }
//!     fn is_binary(&self) -> bool { false }
//!     fn encode(&self, item: &u64, dst: &mut BytesMut) -> Result<(), Error> {
//!         dst.extend_from_slice(item.to_string().as_bytes());
//!         Ok(())
//!     }
//!     fn decode(&self, frame: Bytes) -> Result<u64, Error> {
//!         let text = std::str::from_utf8(&frame).map_err(|e| Error::decode("decimal", e))?;
//!         text.parse().map_err(|e| Error::decode("decimal", e))
//!     }
//! }
//!
//! let mut buf = BytesMut::new();
//! Decimal.encode(&42, &mut buf).unwrap();
//! assert_eq!(Decimal.decode(buf.freeze()).unwrap(), 42);
//! ```
//!
//! `Decimal` keeps nothing of the frame, so it could also implement
//! [`Codec::decode_slice`] and return true from [`Codec::copies_out`]:
//! connections would then decode its frames where they lie in the read
//! buffer, without making each a [`Bytes`] (as every built-in codec but
//! `Raw` for `Bytes` does).

mod bincode;
mod format;
mod pod;
#[cfg(feature = "postcard")]
mod postcard;
mod raw;
mod request;
mod subscription;
mod tagged;
mod text;
pub(crate) mod typed_codec;

pub use self::bincode::{
    Bincode, BincodeWithLimit, DepthLimitExceeded, DEFAULT_BINCODE_LIMIT, DEFAULT_MAX_DEPTH,
};
pub use self::format::{serde_codec, tagged_codec, Format};
pub use self::pod::{PodCodec, SizeMismatch};
#[cfg(feature = "postcard")]
pub use self::postcard::{Postcard, PostcardWithDepth};
pub use self::raw::Raw;
pub use self::request::{NotEmpty, Nothing, Request};
pub use self::subscription::Subscription;
pub use self::tagged::{SerdeFormat, Tagged, TaggedEnum, UnknownTag};
pub use self::text::Text;

use bytes::{Bytes, BytesMut};

use crate::wire::error::Error;

/// Turns values of type `T` into frame payloads and back.
///
/// This is the Rust form of the Go original's `SetWriteFunc`: swap one codec
/// for another on a server or client, or write your own (see the
/// [module docs](self)). A codec is shared by all connections, hence
/// `Send + Sync`.
///
/// A `#[derive(Message)]` enum is written as its variant's tag and then its
/// fields: a serde codec ([`Bincode`], `Postcard`) cannot encode it, and
/// `.codec(Postcard)` on a builder for one does not compile. Switch its
/// serde format with [`serde_format(..)`](crate::Options::serde_format),
/// which keeps the tags, instead.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a codec for `{T}`",
    label = "`{Self}` cannot encode and decode `{T}`",
    note = "a `#[derive(Message)]` enum is written with its variant tags: to write it in another serde format, use `.serde_format(Format::..)` on the builder (it keeps the tags), not `.codec(..)`; deriving serde's traits for the enum would write serde's variant indexes instead",
    note = "a serde codec (`Bincode`, `Postcard`) for a struct needs `{T}: serde::Serialize + serde::de::DeserializeOwned`"
)]
pub trait Codec<T>: Send + Sync + 'static {
    /// A short name for error messages, such as `"bincode"`.
    fn name(&self) -> &'static str;

    /// Whether encoded values may hold any byte. Binary codecs get escaped
    /// delimited framing by default, text codecs raw framing.
    fn is_binary(&self) -> bool;

    /// Appends the encoding of `item` to `dst`.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] if the value cannot be encoded. `dst` may then hold
    /// a partial encoding: the caller truncates it.
    fn encode(&self, item: &T, dst: &mut BytesMut) -> Result<(), Error>;

    /// Decodes one value from a whole frame.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] if the frame does not hold exactly one value.
    fn decode(&self, frame: Bytes) -> Result<T, Error>;

    /// Decodes one value from a whole frame lent from the connection's
    /// read buffer. Connections call it instead of [`decode`](Self::decode)
    /// when [`copies_out`](Self::copies_out) is true: the frame then never
    /// becomes a [`Bytes`] (no reference count to take and drop per frame).
    /// The default copies the frame into a `Bytes` and calls `decode`.
    ///
    /// # Errors
    ///
    /// As [`decode`](Self::decode).
    fn decode_slice(&self, frame: &[u8]) -> Result<T, Error> {
        self.decode(Bytes::copy_from_slice(frame))
    }

    /// Whether decoded values copy what they keep out of the frame (plain
    /// old data, serde formats, text), so that
    /// [`decode_slice`](Self::decode_slice) costs no more than
    /// [`decode`](Self::decode). False by default: codecs that keep the
    /// frame itself (such as [`Raw`] for `Bytes`) get it without a copy.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use chitchat_net::{Codec, Raw, Text};
    ///
    /// assert!(Codec::<String>::copies_out(&Text));
    /// assert!(!Codec::<Bytes>::copies_out(&Raw));
    /// ```
    fn copies_out(&self) -> bool {
        false
    }

    /// This codec in another serde `format`, for
    /// [`Options::serde_format`](crate::Options::serde_format): `None` (the
    /// default) for a codec that is not a serde format. [`Bincode`],
    /// `Postcard` and [`Tagged`] (derived enums, which keep their tags)
    /// return one; a serde codec of your own can return
    /// [`serde_codec`] or [`tagged_codec`].
    fn in_format(&self, format: Format) -> Option<&'static dyn Codec<T>>
    where
        T: 'static,
    {
        let _ = format;
        None
    }

    /// The serde format this codec is, if it is one exactly ([`Bincode`]
    /// and `Postcard` are; limited variants and other codecs are not):
    /// `.codec(Bincode)` on a builder for a derived enum then writes the
    /// enum in that format through its tags. Not for use outside the
    /// crate.
    #[doc(hidden)]
    fn serde_format(&self) -> Option<Format> {
        None
    }

    /// Whether this codec writes an enum's variant tags ([`Tagged`]). Not
    /// for use outside the crate.
    #[doc(hidden)]
    fn keeps_tags(&self) -> bool {
        false
    }
}

/// A type that travels in frames and knows its default codec.
///
/// Implemented for [`String`] (text), [`Bytes`] and `Vec<u8>` (raw bytes);
/// derive it for your own types with [`derive@crate::Message`] (feature `derive`),
/// or implement it by hand:
///
/// ```
/// use bytes::BytesMut;
/// use chitchat_net::{Bincode, Codec, Message};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// struct Reading { sensor: u32, celsius: f32 }
///
/// impl Message for Reading {
///     type Codec = Bincode;
/// }
///
/// let codec = <Reading as Message>::Codec::default();
/// let mut buf = BytesMut::new();
/// codec.encode(&Reading { sensor: 7, celsius: 21.5 }, &mut buf).unwrap();
/// let back: Reading = codec.decode(buf.freeze()).unwrap();
/// assert_eq!(back, Reading { sensor: 7, celsius: 21.5 });
/// ```
pub trait Message: Sized + Send + 'static {
    /// The codec used for this type unless a server or client overrides it.
    type Codec: Codec<Self> + Default;

    /// The type's fingerprint, which the [handshake](crate::handshake)
    /// compares with the peer's: `None` (the default: not checked) unless
    /// the type declares one. `#[derive(Message)]` does, from the type's
    /// shape (see [`handshake`](crate::handshake) for what it covers); by
    /// hand, build one with
    /// [`FingerprintBuilder`](crate::handshake::FingerprintBuilder).
    fn fingerprint() -> Option<crate::wire::hello::Fingerprint> {
        None
    }

    /// The wire tags and names of the type's variants, which the
    /// [handshake](crate::handshake) sends so that a mismatch can be said
    /// in words ("tag 2 is `Get` in the server's `Command` and `Fetch` in
    /// this client's"; "the server's `Command` has variants Put, Get, Delete;
    /// this client's has Put, Get"). Empty (the default) for a struct or a
    /// type that does not say; `#[derive(Message)]` lists an enum's.
    fn variant_tags() -> &'static [(u32, &'static str)] {
        &[]
    }

    /// The fingerprint of each variant's fields, by tag, which the
    /// [handshake](crate::handshake) compares for the tags both peers
    /// have: a variant added with a new tag is a compatible change, a
    /// variant whose fields changed under the same tag is not. Empty (the
    /// default: then the type's whole fingerprint must match) unless the
    /// type says; `#[derive(Message)]` lists an enum's.
    fn variant_fingerprints() -> Vec<(u32, crate::wire::hello::Fingerprint)> {
        Vec::new()
    }

    /// The fingerprints of earlier versions of this type that it still
    /// decodes (`#[message(also_decodes = path::To::OldType)]`): the
    /// [handshake](crate::handshake) accepts a peer that sends one of them
    /// whatever the differences (at most
    /// [`MAX_ALSO_DECODES`](crate::handshake::MAX_ALSO_DECODES) are sent).
    /// Declaring one is a promise that this type's codec reads the earlier
    /// version's frames: see the README, "Evolving your messages". Empty
    /// by default.
    fn also_decodes() -> Vec<crate::wire::hello::Fingerprint> {
        Vec::new()
    }
}

impl Message for String {
    type Codec = Text;
}

impl Message for Bytes {
    type Codec = Raw;
}

impl Message for Vec<u8> {
    type Codec = Raw;
}

/// Trailing bytes after a decoded value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{trailing} bytes left after the value")]
pub struct TrailingBytes {
    /// How many bytes were not consumed.
    pub trailing: usize,
}

fn expect_consumed(codec: &'static str, used: usize, len: usize) -> Result<(), Error> {
    if used == len {
        Ok(())
    } else {
        Err(Error::decode(
            codec,
            TrailingBytes {
                trailing: len - used,
            },
        ))
    }
}
