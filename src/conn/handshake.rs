//! The handshake: each side of a connection says what it speaks in its
//! first frame, and checks the peer's before any frame reaches a handler
//! (pure, no I/O).
//!
//! A client built with the wrong message type, or with one setting that
//! differs from the server's (request ids, a serde format, a codec, the
//! framing, the cluster), would otherwise be accepted silently: its frames
//! fail to decode one by one, or decode as the wrong variant, and its
//! requests time out. With the handshake, [`connect`](crate::ClientBuilder::connect)
//! fails at once with [`ConnectError::Handshake`](crate::ConnectError::Handshake),
//! naming the first difference in words ("the server uses request ids,
//! this client ordered replies"; "tag 2 is `Get` in the server's `Command`
//! and `Fetch` in this client's"), and the server logs the same
//! difference at WARN, once per peer address.
//!
//! # When it is on
//!
//! By default, on each side whose message types declare a
//! [`Fingerprint`] (every `#[derive(Message)]` type does), or that has a
//! [cluster label](crate::Options::cluster); off for `String`, `Bytes`,
//! `Vec<u8>` and hand-written types without a fingerprint (text and raw
//! peers, Go chitchat peers), and in framings that cannot carry a hello
//! (EOF framing; a raw framing whose delimiter is a character of the
//! hello). A client's types are what it sends and what it receives (its
//! handler's or receive buffer's type); a server's, what its handler
//! receives, and what it sends if it says so with
//! [`ServerBuilder::handshake`](crate::ServerBuilder::handshake).
//! [`no_handshake()`](crate::Options::no_handshake) turns it off,
//! [`ClientBuilder::handshake`](crate::ClientBuilder::handshake) and
//! `ServerBuilder::handshake` on (then a framing that cannot carry it is
//! refused with [`Error::Config`](crate::Error::Config)). Both ends must
//! agree, and are told at once when they do not: a side with it off
//! refuses a hello as its peer's first frame
//! ([`HandshakeError::UnexpectedHello`], never handed to its handler as a
//! message) and answers with a refusal ([`NO_HELLO_MAGIC`]), on which the
//! side with it on fails ([`HandshakeError::NoHandshake`]); a side with
//! it on whose peer's first frame is not a hello fails too
//! ([`HandshakeError::NotAHello`]). Only a peer that sends nothing (a Go
//! peer waiting for a request) is a [`HandshakeError::Timeout`].
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
//! (`Vec<Entry>` covers the spelling `Entry`, not `Entry`'s fields), nor
//! type aliases (`u64` and `Id` differ even if `type Id = u64`). The hello
//! carries the fingerprint with the name of the codec the type is written
//! with on the connection mixed in ([`effective_fingerprint`]): a builder's
//! `.codec(..)` or `serde_format(..)` counts.
//!
//! # The hello frame (version 2)
//!
//! One frame, the first each side sends, in the connection's framing but
//! without the request envelope. Its payload is ASCII text, at most
//! [`MAX_HELLO_LEN`] (4 KiB) bytes: the magic, then `key=value` fields
//! separated by single spaces, in this order (a reader skips keys it does
//! not know, so a later version can add some):
//!
//! | field | value |
//! |---|---|
//! | magic | `chitchat-hello/2` (a version 1 hello, `chitchat-hello/1 …`, is recognised: [`HandshakeError::OldPeer`]) |
//! | `proto` | the protocol versions spoken, `min-max` (this build: `1-1`); the ranges must overlap |
//! | `cluster` | the cluster label (`[A-Za-z0-9_.-]`, 1 to 64 characters), or `-`; must be equal |
//! | `requests` | `none`, `ids` or `ordered`; `ids` at both ends or at neither |
//! | `send-framing` | the framing of what this side sends ([`framing_name`]: `delimited:0x0a:escaped`, `delimited:0x0a:raw`, `length:u32be`, `eof`), or `-` if not declared; must be what the peer reads |
//! | `receive-framing` | the framing it cuts received frames with |
//! | `features` | optional protocol pieces, a 64-bit bitfield in 16 lowercase hex digits ([`features`]); the bits both set are used |
//! | `sends` | the type it sends, or `-` if it declares none (then anything matches) |
//! | `accepts` | the type it accepts, likewise |
//! | `sends-shapes`, `accepts-shapes` | optional: each listed variant's own fingerprint, `tag/shape` separated by commas (`shape`: 8 hex digits, [`fold`]ed) |
//! | `sends-also`, `accepts-also` | optional: the effective fingerprints of earlier versions the type still decodes, separated by commas (at most [`MAX_ALSO_DECODES`]) |
//!
//! A type is `Name:codec:fingerprint:variants`: its name without module
//! path, its codec's name, the 16 hex digits of its effective fingerprint,
//! and its variants as `tag.Name` separated by commas (empty for a
//! struct), with `+` last when the list was cut (at
//! [`MAX_LISTED_VARIANTS`], or to keep the hello within its size). Names
//! are cut to [`MAX_NAME_LEN`] characters of `[A-Za-z0-9_.-]`.
//!
//! The shapes and earlier versions came after the first builds of version
//! 2 and have keys of their own, which those builds skip: the two kinds
//! read each other's hello, and compare types by fingerprint where a side
//! does not give shapes (as before: a variant added on one side only is
//! then refused, so upgrade the library everywhere before adding variants).
//!
//! # Which types agree
//!
//! In each direction, the receiver's type accepts the sender's if it
//! declares the sender's fingerprint an earlier version it still decodes;
//! else the names and codecs must be equal, and then, when both list all
//! their variants with their shapes, every tag both have must have the
//! same name and shape (a tag keeps its meaning), and at least one tag
//! must be shared: tags only one side has are fine (a rolling upgrade
//! adds a variant at one node at a time). A frame of a variant the
//! receiver lacks is skipped there as an
//! [`Error::UnknownVariant`](crate::Error::UnknownVariant) event, and a
//! request of it is answered with an
//! [`ErrorCode::UnknownVariant`](crate::envelope::ErrorCode::UnknownVariant)
//! error reply. [`Hello::one_sided`] says which variants only one side
//! has; a client logs it at INFO, a server at DEBUG. Structs, and types
//! whose lists were cut, must have equal fingerprints.
//!
//! Each side checks the peer's hello against its own (see [`Hello::check`]
//! for the order): the first difference is the error. A frame that is not
//! a hello ([`HandshakeError::NotAHello`]), a refusal
//! ([`HandshakeError::NoHandshake`]), a mismatch
//! ([`HandshakeError::Mismatch`]), no hello within the handshake timeout
//! ([`HandshakeError::Timeout`]) or an end of stream before it
//! ([`HandshakeError::Closed`]) ends the connection with an
//! [`Error::Handshake`](crate::Error::Handshake) event, and fails the
//! client's `connect` with
//! [`ConnectError::Handshake`](crate::ConnectError::Handshake); frames that
//! came after the peer's hello never reach the handler then. A
//! reconnecting client that meets a mismatch, or whose handshake is off and
//! that refuses its server's hello, gives up instead of dialling again.
//!
//! # Examples
//!
//! ```
//! use chitchat_net::handshake::{Fingerprint, Hello, RequestMode, Role, TypeInfo};
//!
//! let client = Hello {
//!     protocol: (1, 1),
//!     cluster: Some("prod-eu".into()),
//!     requests: RequestMode::Ids,
//!     send_framing: Some("delimited:0x0a:escaped".into()),
//!     receive_framing: "delimited:0x0a:escaped".into(),
//!     features: 0,
//!     sends: Some(TypeInfo::new("Command", "bincode", Fingerprint::from_u64(7), &[(0, "Put"), (1, "Get")])),
//!     accepts: None,
//! };
//! let mut frame = bytes::BytesMut::new();
//! client.encode(&mut frame);
//! let text = std::str::from_utf8(&frame).unwrap();
//! assert!(text.starts_with(
//!     "chitchat-hello/2 proto=1-1 cluster=prod-eu requests=ids \
//!      send-framing=delimited:0x0a:escaped receive-framing=delimited:0x0a:escaped \
//!      features=0000000000000000 sends=Command:bincode:"
//! ));
//! assert!(text.ends_with(":0.Put,1.Get accepts=-"));
//! assert_eq!(Hello::decode(&frame), Ok(client.clone()));
//!
//! // A server of another cluster: the difference, in words.
//! let mut server = client.clone();
//! server.cluster = Some("staging".into());
//! let refused = client.check(&server, Role::Client).unwrap_err();
//! assert_eq!(refused.to_string(), "the server's cluster is staging, this client's prod-eu");
//! ```

use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

use crate::codec::{Codec, Message};
use crate::wire::error::Error;
use crate::wire::frame::{Escaping, Framing};
pub use crate::wire::hello::{
    effective_fingerprint, features, fold, Fingerprint, FingerprintBuilder, HandshakeError, Hello,
    Mismatch, RequestMode, Role, Setting, TypeInfo, VariantInfo, HELLO_MAGIC, HELLO_V1_MAGIC,
    MAX_ALSO_DECODES, MAX_HELLO_LEN, MAX_LISTED_VARIANTS, MAX_NAME_LEN, NO_HELLO_MAGIC,
    PROTOCOL_VERSIONS,
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

/// A type's name without its module path (`Command`, `Vec<u8>`).
pub(crate) fn short_name<M>() -> &'static str {
    let full = std::any::type_name::<M>();
    let head = full.split('<').next().unwrap_or(full);
    let start = head.rfind("::").map_or(0, |i| i + 2);
    &full[start..]
}

/// Whether the handshake is on: decided by the message types unless a
/// builder says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Switch {
    /// On if the side's message types declare a fingerprint, or it has a
    /// cluster label.
    #[default]
    Auto,
    /// On (`.handshake()`).
    On,
    /// Off (`.no_handshake()`).
    Off,
}

/// What the builders record about the handshake.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settings {
    pub(crate) switch: Switch,
    /// The cluster label.
    pub(crate) cluster: Option<Arc<str>>,
    /// Feature bits this side does not announce (`no_reply_streams()`).
    pub(crate) features_off: u64,
    /// The feature bits announced, if fewer than every one supported.
    pub(crate) features: Option<u64>,
}

impl Settings {
    /// Refuses a cluster label that cannot be carried, or one set with
    /// the handshake off.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if let Some(label) = &self.cluster {
            if !crate::wire::hello::valid_cluster(label) {
                return Err(Error::Config(
                    "a cluster label is 1 to 64 characters of A-Z, a-z, 0-9, `_`, `.` and `-`",
                ));
            }
            if self.switch == Switch::Off {
                return Err(Error::Config(
                    "a cluster label needs the handshake: remove `.no_handshake()`",
                ));
            }
        }
        Ok(())
    }
}

/// The handshake of every connection of a server or client: the hello
/// it sends, and its side.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) hello: Hello,
    pub(crate) role: Role,
}

/// How a connection's handshake went, once it has, and the tasks waiting
/// for it (a client's `connect`).
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Whether the connection has a handshake.
    planned: std::sync::atomic::AtomicBool,
    result: OnceLock<Result<u64, HandshakeError>>,
    waiters: tokio::sync::Notify,
}

impl Outcome {
    /// Says that the connection has a handshake: [`wait`](Self::wait)
    /// waits for it.
    pub(crate) fn plan(&self) {
        self.planned
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Records the outcome (the first one counts) and wakes the waiters.
    pub(crate) fn set(&self, result: Result<u64, HandshakeError>) {
        let _ = self.result.set(result);
        self.waiters.notify_waiters();
    }

    /// The feature bits both hellos set, once the handshake has succeeded
    /// (0 before, after a failure, and without a handshake).
    pub(crate) fn features(&self) -> u64 {
        match self.result.get() {
            Some(Ok(bits)) => *bits,
            _ => 0,
        }
    }

    /// The outcome, once there is one (a side without the handshake has
    /// one only if it refused a hello).
    pub(crate) fn outcome(&self) -> Option<&Result<u64, HandshakeError>> {
        self.result.get()
    }

    /// Wakes the waiters without an outcome: the connection has ended.
    pub(crate) fn ended(&self) {
        self.waiters.notify_waiters();
    }

    /// Waits for the outcome (at once `Ok(0)` without a handshake);
    /// [`HandshakeError::Closed`] if `ended` says the connection ended
    /// without one.
    pub(crate) async fn wait(&self, ended: impl Fn() -> bool) -> Result<u64, HandshakeError> {
        if !self.planned.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(0);
        }
        loop {
            let notified = self.waiters.notified();
            tokio::pin!(notified);
            // Registered before the checks: a `set` in between still wakes us.
            notified.as_mut().enable();
            if let Some(result) = self.result.get() {
                return result.clone();
            }
            if ended() {
                return Err(HandshakeError::Closed);
            }
            notified.await;
        }
    }
}

impl Hello {
    /// The hello of a side that sends `S` and accepts `A`, with the
    /// default settings (no cluster label, no requests, lines framing,
    /// each type's own codec).
    pub fn of<S: Message, A: Message>() -> Self {
        let sends = S::fingerprint().map(|shape| {
            TypeInfo::new(
                short_name::<S>(),
                S::Codec::default().name(),
                shape,
                S::variant_tags(),
            )
            .with_variant_shapes(&S::variant_fingerprints())
            .with_also_decodes(&S::also_decodes())
        });
        let accepts = A::fingerprint().map(|shape| {
            TypeInfo::new(
                short_name::<A>(),
                A::Codec::default().name(),
                shape,
                A::variant_tags(),
            )
            .with_variant_shapes(&A::variant_fingerprints())
            .with_also_decodes(&A::also_decodes())
        });
        let framing = |binary| framing_name(Framing::default().resolve(binary));
        Hello {
            protocol: PROTOCOL_VERSIONS,
            cluster: None,
            requests: RequestMode::None,
            send_framing: Some(framing(S::Codec::default().is_binary())),
            receive_framing: framing(A::Codec::default().is_binary()),
            features: features::SUPPORTED,
            sends,
            accepts,
        }
    }
}

/// A framing as a hello names it: `delimited:0x0a:escaped`,
/// `delimited:0x0a:raw`, `length:u32be` or `eof` (the frame length limit is
/// not part of it).
pub fn framing_name(framing: Framing) -> String {
    if framing.is_eof() {
        return "eof".to_owned();
    }
    if framing.is_length_prefixed() {
        return "length:u32be".to_owned();
    }
    let escaping = match framing.escaping() {
        Some(Escaping::Raw) => "raw",
        Some(Escaping::Escaped) => "escaped",
        _ => "auto",
    };
    format!(
        "delimited:0x{:02x}:{escaping}",
        framing.delimiter().unwrap_or(0)
    )
}
