//! What a connection speaks: its framing plus the codec overrides, shared by
//! every connection of a server or client (pure, no I/O).

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::envelope::{self, Envelope};
use crate::handshake::Hello;
use crate::requests::{Matching, Requests};
use crate::{Codec, Error, FrameCodec, Framing, Message};

/// A codec override for one message type, stored as `Arc<dyn Codec<M>>`
/// behind `Any` so that one registry holds overrides for several types.
pub(crate) type Override = Arc<dyn Any + Send + Sync>;

/// Requests in flight at most per connection, by default: a request waits
/// for a slot beyond that.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4096;

/// Framing (with escaping resolved) and codecs of a connection.
#[derive(Clone)]
pub(crate) struct Wire {
    frame: FrameCodec,
    overrides: Arc<Vec<Override>>,
    /// Whether every frame carries the request envelope.
    envelope: bool,
    /// How replies are matched to requests.
    matching: Matching,
    /// Requests in flight at most, per connection.
    max_in_flight: usize,
    /// Refuse to encode an empty frame (Go chitchat peers crash on one).
    refuse_empty: bool,
}

impl fmt::Debug for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wire")
            .field("framing", &self.frame.framing())
            .field("overrides", &self.overrides.len())
            .field("envelope", &self.envelope)
            .finish()
    }
}

impl Wire {
    /// `framing` resolved for `binary` payloads, with the given overrides.
    pub(crate) fn new(framing: Framing, binary: bool, overrides: Vec<Override>) -> Self {
        Wire {
            frame: FrameCodec::new(framing.resolve(binary)),
            overrides: Arc::new(overrides),
            envelope: false,
            matching: Matching::Off,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            refuse_empty: false,
        }
    }

    /// The wire a server's or client's connections speak: `config`'s
    /// framing for `binary` payloads (escaped if request ids are on), with
    /// `overrides` and `config`'s request matching.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for request ids over an explicitly raw framing.
    pub(crate) fn build(
        config: &crate::config::ConnectionConfig,
        binary: bool,
        overrides: Vec<Override>,
    ) -> Result<Self, Error> {
        let wire = if config.request_ids {
            Wire::with_envelope(config.framing, overrides)?
        } else if config.ordered_replies {
            Wire::new(config.framing, binary, overrides).ordered_replies()
        } else {
            Wire::new(config.framing, binary, overrides)
        };
        let mut wire = wire.max_in_flight(config.max_in_flight);
        wire.refuse_empty = config.refuse_empty_frames;
        if config.handshake.is_some() {
            wire.check_hello()?;
        }
        Ok(wire)
    }

    /// Whether hello frames can be sent on this wire: not in EOF framing
    /// (one frame per stream), nor raw with a delimiter a hello may hold.
    fn check_hello(&self) -> Result<(), Error> {
        if self.frame.framing().is_eof() {
            return Err(Error::Config(
                "the handshake needs a framing with more than one frame: not EOF framing",
            ));
        }
        let fingerprint = |v| Some(crate::handshake::Fingerprint::from_u64(v));
        let samples = [
            Hello {
                sends: fingerprint(0x0123_4567_89ab_cdef),
                accepts: fingerprint(0xfedc_ba98_7654_3210),
            },
            Hello {
                sends: None,
                accepts: None,
            },
        ];
        for hello in samples {
            if self.encode_hello(&hello, &mut BytesMut::new()).is_err() {
                return Err(Error::Config(
                    "the handshake's text holds this raw framing's delimiter: use an escaped framing",
                ));
            }
        }
        Ok(())
    }

    /// Appends one framed hello (without the envelope) to `dst` (nothing on
    /// error).
    pub(crate) fn encode_hello(&self, hello: &Hello, dst: &mut BytesMut) -> Result<(), Error> {
        self.frame.encode_with(dst, |d| {
            hello.encode(d);
            Ok(())
        })
    }

    /// Matches replies to requests in the order the requests were sent
    /// (for peers without the envelope).
    pub(crate) fn ordered_replies(mut self) -> Self {
        if !self.envelope {
            self.matching = Matching::Ordered;
        }
        self
    }

    /// At most `max` requests in flight per connection.
    pub(crate) fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max;
        self
    }

    /// How replies are matched to requests.
    pub(crate) fn matching(&self) -> Matching {
        self.matching
    }

    /// The table for a connection's requests, if requests are on.
    pub(crate) fn requests(&self) -> Option<Box<Requests>> {
        (self.matching != Matching::Off).then(|| Box::new(Requests::new(self.max_in_flight)))
    }

    /// `framing` with the request envelope on every frame (escaped when
    /// escaping is `Auto`: the header is binary).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an explicitly raw delimited framing.
    pub(crate) fn with_envelope(framing: Framing, overrides: Vec<Override>) -> Result<Self, Error> {
        if framing.escaping() == Some(crate::Escaping::Raw) {
            return Err(Error::Config(
                "request ids need an escaped (or EOF or length-prefixed) framing, not a raw one",
            ));
        }
        let mut wire = Wire::new(framing, true, overrides);
        wire.envelope = true;
        wire.matching = Matching::Ids;
        Ok(wire)
    }

    /// A fresh frame decoder for one connection.
    pub(crate) fn decoder(&self) -> FrameCodec {
        FrameCodec::new(self.frame.framing())
    }

    /// Appends one framed message to `dst` (nothing on error).
    pub(crate) fn encode<M: Message>(&self, msg: &M, dst: &mut BytesMut) -> Result<(), Error> {
        self.encode_as(Envelope::Message, msg, dst)
    }

    /// Appends one framed message to `dst` as `kind` (the envelope is
    /// written only if the connection has it on; nothing on error).
    pub(crate) fn encode_as<M: Message>(
        &self,
        kind: Envelope,
        msg: &M,
        dst: &mut BytesMut,
    ) -> Result<(), Error> {
        let header = |d: &mut BytesMut| {
            if self.envelope {
                envelope::encode(kind, d);
            }
        };
        match self.override_for::<M>() {
            Some(codec) => self.frame.encode_with(dst, |d| {
                let start = d.len();
                header(d);
                codec.encode(msg, d)?;
                self.check_empty(d.len() - start)
            }),
            None => self.frame.encode_with(dst, |d| {
                let start = d.len();
                header(d);
                M::Codec::default().encode(msg, d)?;
                self.check_empty(d.len() - start)
            }),
        }
    }

    /// [`Error::EmptyFrame`] for a payload of `len` 0 if empty frames are
    /// refused.
    fn check_empty(&self, len: usize) -> Result<(), Error> {
        if self.refuse_empty && len == 0 {
            Err(Error::EmptyFrame)
        } else {
            Ok(())
        }
    }

    /// Appends one framed raw payload to `dst` (nothing on error).
    pub(crate) fn encode_bytes(&self, payload: &[u8], dst: &mut BytesMut) -> Result<(), Error> {
        self.frame.encode_with(dst, |d| {
            let start = d.len();
            if self.envelope {
                envelope::encode(Envelope::Message, d);
            }
            d.extend_from_slice(payload);
            self.check_empty(d.len() - start)
        })
    }

    /// What a received frame is, and its message bytes: the envelope is
    /// read if the connection has it on (every frame is a
    /// [`Envelope::Message`] otherwise).
    ///
    /// # Errors
    ///
    /// [`Error::Envelope`] for a malformed header.
    pub(crate) fn open(&self, frame: Bytes) -> Result<(Envelope, Bytes), Error> {
        if !self.envelope {
            return Ok((Envelope::Message, frame));
        }
        let (kind, rest) = envelope::decode(&frame)?;
        let start = frame.len() - rest.len();
        Ok((kind, frame.slice(start..)))
    }

    /// Decodes one frame into a message.
    pub(crate) fn decode<M: Message>(&self, frame: Bytes) -> Result<M, Error> {
        match self.override_for::<M>() {
            Some(codec) => codec.decode(frame),
            None => M::Codec::default().decode(frame),
        }
    }

    fn override_for<M: Message>(&self) -> Option<&Arc<dyn Codec<M>>> {
        self.overrides
            .iter()
            .find_map(|o| o.downcast_ref::<Arc<dyn Codec<M>>>())
    }
}

/// Builds the override entry for `codec` used with messages of type `M`.
pub(crate) fn codec_override<M: Message, C: Codec<M>>(codec: C) -> (bool, Override) {
    let binary = codec.is_binary();
    let codec: Arc<dyn Codec<M>> = Arc::new(codec);
    (binary, Arc::new(codec))
}

/// Whether `M`'s default codec is binary.
pub(crate) fn default_is_binary<M: Message>() -> bool {
    M::Codec::default().is_binary()
}
