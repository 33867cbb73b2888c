//! Wrong-peer detection: message fingerprints and the opt-in handshake
//! (pure, no I/O).
//!
//! A client built with the wrong message type is often accepted silently:
//! `Reply::NotFound { key }` decodes as `Command::Get { key }`. With
//! [`ClientBuilder::handshake`](crate::ClientBuilder::handshake) and
//! [`ServerBuilder::handshake`](crate::ServerBuilder::handshake), each side
//! of a connection first sends one hello frame naming the
//! [`Fingerprint`] of the type it sends and of the type it accepts, and
//! checks the peer's before any frame reaches a handler.
//!
//! # What a fingerprint covers
//!
//! [`Message::fingerprint`] is `None` unless the type says otherwise:
//! `String`, `Bytes`, `Vec<u8>` and hand-written impls declare none, and
//! the handshake does not check them (a raw or text receiver takes any
//! frame). `#[derive(Message)]` gives every type a fingerprint: an FNV-1a
//! hash (64 bits, stable across Rust releases and platforms) of
//!
//! - whether it is a struct or an enum, and its name (without its module
//!   path, so two crates that each define `Command` match);
//! - the codec named in `#[message(codec = ...)]` (`"bincode"`, `"postcard"`,
//!   `"pod"`, or a codec type as written);
//! - for an enum, each variant's wire tag, in the order of the tags (so
//!   reordering variants whose tags are pinned does not change it; reordering
//!   unpinned ones changes their tags, and it);
//! - each field's name (`0`, `1`, … in a tuple variant or struct) and type,
//!   in declaration order (the order on the wire). A field whose type is
//!   itself a derived message contributes that type's fingerprint (so a
//!   change inside it shows); any other type contributes its spelling as
//!   written, without spaces (`Vec<Entry>`, `Box<Tree>`), with `Self`
//!   replaced by the type's name.
//!
//! It does not cover variant names (renaming a variant keeps its tag and
//! the wire), the inside of field types that are not derived messages
//! (`Vec<Entry>` covers the spelling `Entry`, not `Entry`'s fields), type
//! aliases (`u64` and `Id` differ even if `type Id = u64`), nor a codec
//! set on the builder with `.codec(..)`.
//!
//! # The hello frame
//!
//! One frame, the first each side sends, in the connection's framing but
//! without the request envelope. Its payload is 50 bytes of ASCII text, so
//! it passes raw delimited framing (unless the delimiter is one of its
//! characters: such a framing is refused when the handshake is switched on):
//!
//! | bytes | content |
//! |---|---|
//! | 0..16 | `chitchat-hello/1`: the magic and the version |
//! | 16 | a space |
//! | 17..33 | the fingerprint of the type this side sends: 16 lowercase hex digits, or 16 `-` if it declares none |
//! | 33 | a space |
//! | 34..50 | the fingerprint of the type this side accepts, likewise |
//!
//! Each side checks that what the peer sends is what it accepts and that
//! what it sends is what the peer accepts; an undeclared fingerprint on
//! either end of a direction matches anything. A frame that is not a hello
//! ([`HandshakeError::NotAHello`]), a mismatch
//! ([`HandshakeError::Mismatch`]), no hello within the handshake timeout
//! ([`HandshakeError::Timeout`]) or an end of stream before it
//! ([`HandshakeError::Closed`]) ends the connection with an
//! [`Error::Handshake`](crate::Error::Handshake) event; frames that came
//! after the peer's hello never reach the handler then.
//!
//! # Examples
//!
//! ```
//! use chitchat_net::handshake::{Fingerprint, Hello};
//!
//! let hello = Hello { sends: Some(Fingerprint::from_u64(0xabc)), accepts: None };
//! let mut frame = bytes::BytesMut::new();
//! hello.encode(&mut frame);
//! assert_eq!(&frame[..], b"chitchat-hello/1 0000000000000abc ----------------");
//! assert_eq!(Hello::decode(&frame), Ok(hello));
//! ```

use std::marker::PhantomData;

use crate::codec::Message;
pub use crate::wire::hello::{
    Fingerprint, FingerprintBuilder, HandshakeError, Hello, HELLO_LEN, HELLO_MAGIC,
};

/// What `#[derive(Message)]` uses to find a field type's fingerprint if
/// it is a message, and `None` otherwise. Not public API.
#[doc(hidden)]
pub mod __probe {
    use super::{Fingerprint, Message, PhantomData};

    /// A field type, probed by method resolution.
    #[derive(Debug)]
    pub struct Probe<T>(PhantomData<fn() -> T>);

    impl<T> Probe<T> {
        /// The probe of `T`.
        #[allow(clippy::new_without_default)]
        pub fn new() -> Self {
            Probe(PhantomData)
        }
    }

    /// Chosen first, when the field type is a message.
    pub trait ViaMessage {
        /// The field type's fingerprint.
        fn nested_fingerprint(&self) -> Option<Fingerprint>;
    }

    impl<T: Message> ViaMessage for Probe<T> {
        fn nested_fingerprint(&self) -> Option<Fingerprint> {
            T::fingerprint()
        }
    }

    /// Chosen otherwise (one more auto-reference away).
    pub trait ViaSpelling {
        /// None: the field type is not a message.
        fn nested_fingerprint(&self) -> Option<Fingerprint>;
    }

    impl<T> ViaSpelling for &Probe<T> {
        fn nested_fingerprint(&self) -> Option<Fingerprint> {
            None
        }
    }
}

impl Hello {
    /// The hello of a side that sends `S` and accepts `A`.
    pub fn of<S: Message, A: Message>() -> Self {
        Hello {
            sends: S::fingerprint(),
            accepts: A::fingerprint(),
        }
    }
}

/// What the builders record when the handshake is switched on: the
/// fingerprint of what this side sends (what it accepts is its handler's
/// message type, known where each connection starts).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) sends: Option<Fingerprint>,
}

impl Plan {
    /// The hello of a side that accepts `A`.
    pub(crate) fn hello<A: Message>(self) -> Hello {
        Hello {
            sends: self.sends,
            accepts: A::fingerprint(),
        }
    }
}
