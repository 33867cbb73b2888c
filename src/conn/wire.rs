//! What a connection speaks: its framing plus the codec overrides, shared by
//! every connection of a server or client (pure, no I/O).

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::codec::{Codec, Message};
use crate::conn::config::{ConnectionConfig, DEFAULT_CONCURRENT_REQUESTS, DEFAULT_MAX_IN_FLIGHT};
use crate::conn::handshake::{framing_name, short_name, Plan, Switch};
use crate::wire::envelope::{self, Envelope};
use crate::wire::error::Error;
use crate::wire::frame::{FrameCodec, Framing};
use crate::wire::hello::{
    features, in_hello_alphabet, Hello, RequestMode, Role, TypeInfo, NO_HELLO_MAGIC,
    PROTOCOL_VERSIONS,
};

/// A codec override for one message type, stored as `Arc<dyn Codec<M>>`
/// behind `Any` so that one registry holds overrides for several types.
pub(crate) type Override = Arc<dyn Any + Send + Sync>;

/// How replies are matched to requests on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Matching {
    /// Requests are not enabled.
    Off,
    /// By the id in the request envelope.
    Ids,
    /// The next frame answers the oldest request.
    Ordered,
}

/// What a connection speaks: framing, codecs and the request envelope.
/// Cloning it is one reference count: every connection of a server or
/// client shares one.
///
/// Escaping (with a delimited framing whose escaping is `Auto`) is decided
/// per message type, from that type's codec (or its override), when it is
/// sent: a binary codec's messages are escaped, a text codec's are raw. The
/// frames a connection receives are cut with the escaping of the type it
/// receives. With the request envelope on, everything is escaped.
#[derive(Clone)]
pub(crate) struct Wire {
    spec: Arc<Spec>,
}

#[derive(Clone)]
struct Spec {
    /// The framing for binary messages (escaped with `Auto`).
    escaped: FrameCodec,
    /// The framing for text messages (raw with `Auto`).
    raw: FrameCodec,
    /// Whether raw payloads (`send_bytes`) are framed as binary: as the
    /// connection's own message type is.
    bytes_binary: bool,
    /// Whether received frames are cut as binary: as the received type is.
    receive_binary: bool,
    overrides: Vec<Override>,
    /// Whether every frame carries the request envelope.
    envelope: bool,
    /// How replies are matched to requests.
    matching: Matching,
    /// Requests in flight at most, per connection.
    max_in_flight: usize,
    /// Requests from the peer handled at once, per connection.
    concurrent_requests: usize,
    /// The next request id, shared by every connection made with this wire
    /// (every connection of a reconnecting client): ids never repeat
    /// within a client.
    ids: Arc<std::sync::atomic::AtomicU64>,
    /// The serde format of every serde message, if switched.
    format: Option<crate::codec::Format>,
    /// Refuse to encode an empty frame (Go chitchat peers crash on one).
    refuse_empty: bool,
}

impl fmt::Debug for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wire")
            .field("framing", &self.spec.raw.framing())
            .field("overrides", &self.spec.overrides.len())
            .field("envelope", &self.spec.envelope)
            .finish()
    }
}

impl Wire {
    /// `framing` for a connection whose own message type is `binary` (how
    /// raw payloads and received frames are framed), with the given
    /// overrides.
    pub(crate) fn new(framing: Framing, binary: bool, overrides: Vec<Override>) -> Self {
        Wire {
            spec: Arc::new(Spec {
                escaped: FrameCodec::new(framing.resolve(true)),
                raw: FrameCodec::new(framing.resolve(false)),
                bytes_binary: binary,
                receive_binary: binary,
                ids: Arc::default(),
                overrides,
                envelope: false,
                matching: Matching::Off,
                max_in_flight: DEFAULT_MAX_IN_FLIGHT,
                concurrent_requests: DEFAULT_CONCURRENT_REQUESTS,
                format: None,
                refuse_empty: false,
            }),
        }
    }

    /// The wire a server's or client's connections speak: `config`'s
    /// framing, for a connection whose own message type is `binary`, with
    /// `overrides` and `config`'s request matching.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for request ids over an explicitly raw framing,
    /// and for settings that cannot work.
    pub(crate) fn build(
        config: &ConnectionConfig,
        binary: bool,
        overrides: Vec<Override>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let mut wire = Wire::new(config.framing, binary, overrides);
        let spec = Arc::make_mut(&mut wire.spec);
        if config.request_ids {
            if config.framing.escaping() == Some(crate::wire::frame::Escaping::Raw) {
                return Err(Error::Config(
                    "request ids need an escaped (or EOF or length-prefixed) framing, not a raw one",
                ));
            }
            spec.envelope = true;
            spec.matching = Matching::Ids;
        } else if config.ordered_replies {
            spec.matching = Matching::Ordered;
        }
        spec.max_in_flight = config.max_in_flight;
        spec.concurrent_requests = match config.overload {
            Some((per_connection, _)) => config.concurrent_requests.min(per_connection),
            None => config.concurrent_requests,
        };
        spec.format = config.serde_format;
        spec.refuse_empty = config.refuse_empty_frames;
        Ok(wire)
    }

    /// Appends one framed hello (without the envelope) to `dst` (nothing on
    /// error). The hello is ASCII text: raw and escaped framing write it
    /// alike, so the peer cuts it whatever type it receives.
    pub(crate) fn encode_hello(&self, hello: &Hello, dst: &mut BytesMut) -> Result<(), Error> {
        self.spec.raw.encode_with(dst, |d| {
            hello.encode(d);
            Ok(())
        })
    }

    /// Appends one framed refusal of a hello ([`NO_HELLO_MAGIC`]), like a
    /// hello (see [`encode_hello`](Self::encode_hello)).
    pub(crate) fn encode_no_hello(&self, dst: &mut BytesMut) -> Result<(), Error> {
        self.spec.raw.encode_with(dst, |d| {
            d.extend_from_slice(NO_HELLO_MAGIC);
            Ok(())
        })
    }

    /// [`Error::EmptyFrame`] for a payload of `len` 0 if empty frames are
    /// refused.
    fn check_empty(&self, len: usize) -> Result<(), Error> {
        if self.spec.refuse_empty && len == 0 {
            Err(Error::EmptyFrame)
        } else {
            Ok(())
        }
    }

    /// Cuts received frames with the escaping of `R` (what a client
    /// receives may be of another type than what it sends).
    pub(crate) fn receiving<R: Message>(mut self) -> Self {
        let binary = self.is_binary::<R>();
        Arc::make_mut(&mut self.spec).receive_binary = binary;
        self
    }

    /// How replies are matched to requests.
    #[inline]
    pub(crate) fn matching(&self) -> Matching {
        self.spec.matching
    }

    /// The request mode, as a hello says it.
    pub(crate) fn request_mode(&self) -> RequestMode {
        match self.spec.matching {
            Matching::Off => RequestMode::None,
            Matching::Ids => RequestMode::Ids,
            Matching::Ordered => RequestMode::Ordered,
        }
    }

    /// The name of the codec `M` is written with on this wire (its
    /// override, its serde format, or its own).
    pub(crate) fn codec_name<M: Message>(&self) -> &'static str {
        match self.codec_for::<M>() {
            Some(codec) => codec.name(),
            None => M::Codec::default().name(),
        }
    }

    /// The framing messages of type `M` are sent in.
    pub(crate) fn framing_of<M: Message>(&self) -> Framing {
        self.frame(self.is_binary::<M>()).framing()
    }

    /// Requests in flight at most, per connection.
    pub(crate) fn max_in_flight(&self) -> usize {
        self.spec.max_in_flight
    }

    /// Requests from the peer handled at once, per connection.
    pub(crate) fn concurrent_requests(&self) -> usize {
        self.spec.concurrent_requests
    }

    /// Appends one framed cancel of request `id` to `dst` (nothing without
    /// the envelope).
    pub(crate) fn encode_cancel(&self, id: u64, dst: &mut BytesMut) -> Result<(), Error> {
        if !self.spec.envelope {
            return Ok(());
        }
        self.spec.escaped.encode_with(dst, |d| {
            envelope::encode(Envelope::Cancel(id), d);
            Ok(())
        })
    }

    /// Where request ids come from: one counter shared by every connection
    /// of a client, so that an id never comes back.
    pub(crate) fn ids(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.spec.ids.clone()
    }

    /// A fresh frame decoder for one connection.
    pub(crate) fn decoder(&self) -> FrameCodec {
        FrameCodec::new(self.frame(self.spec.receive_binary).framing())
    }

    /// The framing for binary or text payloads (everything is binary with
    /// the envelope).
    fn frame(&self, binary: bool) -> &FrameCodec {
        if binary || self.spec.envelope {
            &self.spec.escaped
        } else {
            &self.spec.raw
        }
    }

    /// Whether `M`'s codec (or its override) is binary.
    fn is_binary<M: Message>(&self) -> bool {
        match self.codec_for::<M>() {
            Some(codec) => codec.is_binary(),
            None => default_is_binary::<M>(),
        }
    }

    /// The codec `M` is switched to (by an override for `M`, or by the
    /// connection's serde format), if any; `M`'s default codec otherwise.
    fn codec_for<M: Message>(&self) -> Option<&dyn Codec<M>> {
        if let Some(codec) = self.override_for::<M>() {
            return Some(&**codec);
        }
        let format = self.spec.format?;
        M::Codec::default().in_format(format)
    }

    /// Appends one framed message to `dst` (nothing on error).
    pub(crate) fn encode<M: Message>(&self, msg: &M, dst: &mut BytesMut) -> Result<(), Error> {
        self.encode_as(Envelope::Message, msg, dst)
    }

    /// Appends one framed message to `dst` as `kind` (the envelope is
    /// written only if the connection has it on; nothing on error), framed
    /// as `M`'s codec needs.
    pub(crate) fn encode_as<M: Message>(
        &self,
        kind: Envelope,
        msg: &M,
        dst: &mut BytesMut,
    ) -> Result<(), Error> {
        let envelope = self.spec.envelope;
        let header = |d: &mut BytesMut| {
            if envelope {
                envelope::encode(kind, d);
            }
        };
        match self.codec_for::<M>() {
            Some(codec) => self.frame(codec.is_binary()).encode_with(dst, |d| {
                let start = d.len();
                header(d);
                codec.encode(msg, d)?;
                self.check_empty(d.len() - start)
            }),
            None => {
                let codec = M::Codec::default();
                self.frame(codec.is_binary()).encode_with(dst, |d| {
                    let start = d.len();
                    header(d);
                    codec.encode(msg, d)?;
                    self.check_empty(d.len() - start)
                })
            }
        }
    }

    /// Encodes `msg` with its codec, unframed: a request's bytes, encoded
    /// once when the request is made (so that it does not keep the message
    /// borrowed) and framed with its envelope when queued
    /// ([`encode_encoded`](Self::encode_encoded)).
    ///
    /// # Errors
    ///
    /// Encode errors; [`Error::EmptyFrame`] for an empty payload if empty
    /// frames are refused (and the connection has no envelope).
    pub(crate) fn encode_body<M: Message>(&self, msg: &M) -> Result<Encoded, Error> {
        // One allocation for a small message, however many pieces its
        // codec writes.
        let mut body = BytesMut::with_capacity(64);
        let binary = match self.codec_for::<M>() {
            Some(codec) => {
                codec.encode(msg, &mut body)?;
                codec.is_binary()
            }
            None => {
                let codec = M::Codec::default();
                codec.encode(msg, &mut body)?;
                codec.is_binary()
            }
        };
        if !self.spec.envelope {
            self.check_empty(body.len())?;
        }
        Ok(Encoded {
            body: body.freeze(),
            binary,
        })
    }

    /// Appends one framed message already encoded (by
    /// [`encode_body`](Self::encode_body)) to `dst` as `kind` (nothing on
    /// error).
    pub(crate) fn encode_encoded(
        &self,
        kind: Envelope,
        encoded: &Encoded,
        dst: &mut BytesMut,
    ) -> Result<(), Error> {
        let envelope = self.spec.envelope;
        self.frame(encoded.binary).encode_with(dst, |d| {
            if envelope {
                envelope::encode(kind, d);
            }
            d.extend_from_slice(&encoded.body);
            Ok(())
        })
    }

    /// Whether the connection's frames carry the request envelope (request
    /// ids on): only then can a request be answered with an error reply.
    pub(crate) fn has_envelope(&self) -> bool {
        self.spec.envelope
    }

    /// Appends one framed drain frame (envelope kind `0x06`) to `dst`;
    /// nothing without the envelope, which it needs.
    pub(crate) fn encode_drain(&self, dst: &mut BytesMut) -> Result<(), Error> {
        if !self.spec.envelope {
            return Ok(());
        }
        self.spec.escaped.encode_with(dst, |d| {
            envelope::encode(Envelope::Drain, d);
            Ok(())
        })
    }

    /// Appends one framed error reply to request `id` to `dst` (see
    /// [`envelope::encode_error`]); nothing without the envelope, which an
    /// error reply needs.
    pub(crate) fn encode_error_reply(
        &self,
        id: u64,
        code: envelope::ErrorCode,
        text: &str,
        dst: &mut BytesMut,
    ) -> Result<(), Error> {
        if !self.spec.envelope {
            return Ok(());
        }
        self.spec.escaped.encode_with(dst, |d| {
            envelope::encode_error(id, code, text, d);
            Ok(())
        })
    }

    /// Appends one framed control frame of the envelope (a stream's credit
    /// or end: no message of a codec), written whole by `write`, to `dst`;
    /// nothing without the envelope, which it needs.
    pub(crate) fn encode_control(
        &self,
        dst: &mut BytesMut,
        write: impl FnOnce(&mut BytesMut),
    ) -> Result<(), Error> {
        if !self.spec.envelope {
            return Ok(());
        }
        self.spec.escaped.encode_with(dst, |d| {
            write(d);
            Ok(())
        })
    }

    /// Appends one framed raw payload to `dst` (nothing on error), framed
    /// as the connection's own message type is.
    pub(crate) fn encode_bytes(&self, payload: &[u8], dst: &mut BytesMut) -> Result<(), Error> {
        let envelope = self.spec.envelope;
        self.frame(self.spec.bytes_binary).encode_with(dst, |d| {
            let start = d.len();
            if envelope {
                envelope::encode(Envelope::Message, d);
            }
            d.extend_from_slice(payload);
            self.check_empty(d.len() - start)
        })
    }

    /// What a received frame is: the envelope is read if the connection has
    /// it on (every frame is a [`Envelope::Message`] otherwise). Returns
    /// the kind and the length of the envelope header (0 without the
    /// envelope); the message bytes follow the header.
    ///
    /// # Errors
    ///
    /// A malformed header (the connection reports it as
    /// [`Error::Envelope`]). The small error keeps the result small: a
    /// `Result` with [`Error`] in it is stored through memory at every
    /// frame.
    #[inline]
    pub(crate) fn open_header(
        &self,
        frame: &[u8],
    ) -> Result<(Envelope, usize), envelope::EnvelopeError> {
        if !self.spec.envelope {
            return Ok((Envelope::Message, 0));
        }
        let (kind, rest) = envelope::decode(frame)?;
        Ok((kind, frame.len() - rest.len()))
    }

    /// Whether `M`'s codec (or its override) decodes from a lent slice at
    /// no extra cost ([`Codec::copies_out`]): then connections call
    /// [`decode_slice`](Self::decode_slice).
    pub(crate) fn copies_out<M: Message>(&self) -> bool {
        match self.codec_for::<M>() {
            Some(codec) => codec.copies_out(),
            None => M::Codec::default().copies_out(),
        }
    }

    /// Decodes one frame, lent from the read buffer, into a message.
    pub(crate) fn decode_slice<M: Message>(&self, frame: &[u8]) -> Result<M, Error> {
        let decoded = match self.codec_for::<M>() {
            Some(codec) => codec.decode_slice(frame),
            None => M::Codec::default().decode_slice(frame),
        };
        decoded.map_err(decode_error::<M>)
    }

    /// Decodes one frame into a message.
    pub(crate) fn decode<M: Message>(&self, frame: Bytes) -> Result<M, Error> {
        let decoded = match self.codec_for::<M>() {
            Some(codec) => codec.decode(frame),
            None => M::Codec::default().decode(frame),
        };
        decoded.map_err(decode_error::<M>)
    }

    fn override_for<M: Message>(&self) -> Option<&Arc<dyn Codec<M>>> {
        self.spec
            .overrides
            .iter()
            .find_map(|o| o.downcast_ref::<Arc<dyn Codec<M>>>())
    }
}

/// A message encoded with its codec, not yet framed: see
/// [`Wire::encode_body`].
#[derive(Debug, Clone)]
pub(crate) struct Encoded {
    body: Bytes,
    /// Whether its codec is binary (how it is framed).
    binary: bool,
}

/// Builds the override entry for `codec` used with messages of type `M`.
///
/// A serde codec (`Bincode`, `Postcard`) set for a type whose own codec
/// writes variant tags (a derived enum that also derives serde's traits,
/// else it would not compile) writes the tags in that format, as
/// `serde_format(..)` does: never serde's variant indexes, which would
/// remap the variants whose tags are pinned.
pub(crate) fn codec_override<M: Message, C: Codec<M>>(codec: C) -> (bool, Override) {
    let binary = codec.is_binary();
    let own = M::Codec::default();
    let tagged = codec
        .serde_format()
        .filter(|_| own.keeps_tags())
        .and_then(|format| own.in_format(format));
    let codec: Arc<dyn Codec<M>> = match tagged {
        Some(tagged) => Arc::new(Static(tagged)),
        None => Arc::new(codec),
    };
    (binary, Arc::new(codec))
}

/// A codec that lives for the whole program, as an override.
struct Static<M: 'static>(&'static dyn Codec<M>);

impl<M: 'static> Codec<M> for Static<M> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn is_binary(&self) -> bool {
        self.0.is_binary()
    }

    fn encode(&self, item: &M, dst: &mut BytesMut) -> Result<(), Error> {
        self.0.encode(item, dst)
    }

    fn decode(&self, frame: Bytes) -> Result<M, Error> {
        self.0.decode(frame)
    }

    fn decode_slice(&self, frame: &[u8]) -> Result<M, Error> {
        self.0.decode_slice(frame)
    }

    fn copies_out(&self) -> bool {
        self.0.copies_out()
    }

    fn keeps_tags(&self) -> bool {
        self.0.keeps_tags()
    }
}

/// A decode error into `M`, naming `M`: an [`Error::UnknownVariant`] if the
/// codec read a tag `M` does not have.
fn decode_error<M: Message>(error: Error) -> Error {
    if let Error::Decode { source, .. } = &error {
        if let Some(unknown) = source.downcast_ref::<crate::codec::UnknownTag>() {
            return Error::UnknownVariant {
                type_name: short_name::<M>(),
                tag: unknown.tag,
            };
        }
    }
    error.decoding::<M>()
}

/// Whether `M`'s default codec is binary.
pub(crate) fn default_is_binary<M: Message>() -> bool {
    M::Codec::default().is_binary()
}

/// How `M` is described in a hello on `wire` (its effective codec), if it
/// declares a fingerprint.
pub(crate) fn type_info<M: Message>(wire: &Wire) -> Option<TypeInfo> {
    let shape = M::fingerprint()?;
    Some(
        TypeInfo::new(
            short_name::<M>(),
            wire.codec_name::<M>(),
            shape,
            M::variant_tags(),
        )
        .with_variant_shapes(&M::variant_fingerprints())
        .with_also_decodes(&M::also_decodes()),
    )
}

/// What a server says it sends (`ServerBuilder::handshake::<S>()`): the
/// type and the framing of `S` on the server's wire.
pub(crate) type Declared = fn(&Wire) -> (Option<TypeInfo>, String);

/// The [`Declared`] of `S`.
pub(crate) fn declared<S: Message>(wire: &Wire) -> (Option<TypeInfo>, String) {
    (type_info::<S>(wire), framing_name(wire.framing_of::<S>()))
}

/// The plan of a client that sends `M` and accepts `A` (`None`: a
/// write-only client, which accepts anything), if its handshake is on.
///
/// # Errors
///
/// [`Error::Config`] for a handshake switched on in a framing that cannot
/// carry it.
pub(crate) fn client_plan<M: Message, A: Message>(
    config: &ConnectionConfig,
    wire: &Wire,
    accepts: bool,
) -> Result<Option<Arc<Plan>>, Error> {
    let sends = type_info::<M>(wire);
    let accepts = if accepts { type_info::<A>(wire) } else { None };
    let send_framing = Some(framing_name(wire.framing_of::<M>()));
    plan(config, wire, Role::Client, sends, send_framing, accepts)
}

/// The plan of a server whose handler accepts `A` and that says it sends
/// `server_sends` (if it does), if its handshake is on.
///
/// # Errors
///
/// As [`client_plan`].
pub(crate) fn server_plan<A: Message>(
    config: &ConnectionConfig,
    wire: &Wire,
    server_sends: Option<Declared>,
) -> Result<Option<Arc<Plan>>, Error> {
    let (sends, send_framing) = match server_sends {
        Some(declared) => {
            let (info, framing) = declared(wire);
            (info, Some(framing))
        }
        None => (None, None),
    };
    plan(
        config,
        wire,
        Role::Server,
        sends,
        send_framing,
        type_info::<A>(wire),
    )
}

/// `Some(role)` if this side has its handshake off and reads a framing
/// that can carry a hello (so that one can be told from a message): see
/// [`ConnectionConfig::no_hello`].
pub(crate) fn no_hello(config: &ConnectionConfig, wire: &Wire, role: Role) -> Option<Role> {
    let framing = wire.decoder().framing();
    let can_carry = !framing.is_eof() && !framing.delimiter().is_some_and(in_hello_alphabet);
    (config.hello.is_none() && can_carry).then_some(role)
}

fn plan(
    config: &ConnectionConfig,
    wire: &Wire,
    role: Role,
    sends: Option<TypeInfo>,
    send_framing: Option<String>,
    accepts: Option<TypeInfo>,
) -> Result<Option<Arc<Plan>>, Error> {
    let settings = &config.handshake;
    settings.validate()?;
    let auto = settings.switch == Switch::Auto;
    let on = match settings.switch {
        Switch::Off => false,
        Switch::On => true,
        Switch::Auto => sends.is_some() || accepts.is_some() || settings.cluster.is_some(),
    };
    if !on {
        return Ok(None);
    }
    let hello = Hello {
        protocol: PROTOCOL_VERSIONS,
        cluster: settings.cluster.as_deref().map(str::to_owned),
        requests: wire.request_mode(),
        send_framing,
        receive_framing: framing_name(wire.decoder().framing()),
        features: {
            let announced = settings
                .features
                .map_or(features::SUPPORTED, |bits| bits & features::SUPPORTED);
            let mut bits = announced & !settings.features_off;
            if !config.drain {
                bits &= !features::DRAIN;
            }
            bits
        },
        sends,
        accepts,
    };
    // Only an explicit switch (or a cluster label, which needs it) makes a
    // framing that cannot carry it an error: by default it is just off.
    let explicit = !auto || settings.cluster.is_some();
    if wire.decoder().framing().is_eof() {
        return if explicit {
            Err(Error::Config(
                "the handshake needs a framing with more than one frame: not EOF framing",
            ))
        } else {
            Ok(None)
        };
    }
    let delimiter = wire.decoder().framing().delimiter();
    if delimiter.is_some_and(in_hello_alphabet)
        || wire
            .encode_hello(&hello, &mut bytes::BytesMut::new())
            .is_err()
    {
        return if explicit {
            Err(Error::Config(
                "the handshake's text holds this raw framing's delimiter: use an escaped framing",
            ))
        } else {
            Ok(None)
        };
    }
    Ok(Some(Arc::new(Plan { hello, role })))
}
