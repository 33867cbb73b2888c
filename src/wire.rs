//! What a connection speaks: its framing plus the codec overrides, shared by
//! every connection of a server or client (pure, no I/O).

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::{Codec, Error, FrameCodec, Framing, Message};

/// A codec override for one message type, stored as `Arc<dyn Codec<M>>`
/// behind `Any` so that one registry holds overrides for several types.
pub(crate) type Override = Arc<dyn Any + Send + Sync>;

/// Framing (with escaping resolved) and codecs of a connection.
#[derive(Clone)]
pub(crate) struct Wire {
    frame: FrameCodec,
    overrides: Arc<Vec<Override>>,
}

impl fmt::Debug for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wire")
            .field("framing", &self.frame.framing())
            .field("overrides", &self.overrides.len())
            .finish()
    }
}

impl Wire {
    /// `framing` resolved for `binary` payloads, with the given overrides.
    pub(crate) fn new(framing: Framing, binary: bool, overrides: Vec<Override>) -> Self {
        Wire {
            frame: FrameCodec::new(framing.resolve(binary)),
            overrides: Arc::new(overrides),
        }
    }

    /// A fresh frame decoder for one connection.
    pub(crate) fn decoder(&self) -> FrameCodec {
        FrameCodec::new(self.frame.framing())
    }

    /// Appends one framed message to `dst` (nothing on error).
    pub(crate) fn encode<M: Message>(&self, msg: &M, dst: &mut BytesMut) -> Result<(), Error> {
        match self.override_for::<M>() {
            Some(codec) => self.frame.encode_with(dst, |d| codec.encode(msg, d)),
            None => self
                .frame
                .encode_with(dst, |d| M::Codec::default().encode(msg, d)),
        }
    }

    /// Appends one framed raw payload to `dst` (nothing on error).
    pub(crate) fn encode_bytes(&self, payload: &[u8], dst: &mut BytesMut) -> Result<(), Error> {
        self.frame.encode_with(dst, |d| {
            d.extend_from_slice(payload);
            Ok(())
        })
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
