//! Typed messages for a [`tokio_util::codec::Framed`] you drive yourself
//! (pure, no I/O): our framing and codecs, without our connection.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::codec::{Codec, Message};
use crate::wire::error::Error;
use crate::wire::frame::{FrameCodec, Framing};

/// A [`Decoder`] of received messages (`In`) and an [`Encoder`] of sent ones
/// (`Out`), for [`tokio_util::codec::Framed`], `FramedRead` and
/// `FramedWrite`: a [`FrameCodec`] under each message's [`Codec`]. It
/// speaks byte for byte what a chitchat-net [`Client`](crate::Client) or
/// [`Server`](crate::Server) with the same framing and codecs speaks, so one
/// end can be a `Framed` of your own. It speaks no
/// [handshake](crate::handshake): give the chitchat-net end
/// `.no_handshake()` if its message types are derived (it has the
/// handshake on by default then).
///
/// Decoding yields `In` (or an [`Error`]: a framing error such as
/// [`Error::FrameTooLong`] or [`Error::BadEscape`], or an [`Error::Decode`]
/// for a frame its codec refuses; as for any decoder, `Framed` yields the
/// error and then ends its stream). Encoding takes `&Out`, as
/// [`Client::send`](crate::Client::send) does: one `Encoder` impl, so that
/// `flush` and `close` on a `Framed` need no type annotation.
///
/// # Escaping
///
/// A delimited framing with [`Escaping::Auto`](crate::Escaping::Auto) is
/// resolved per direction, as chitchat-net connections do: what is sent is
/// escaped if `Out`'s codec is binary and raw if it is text, what is
/// received is cut as `In`'s codec needs. So a text type may travel one way
/// and a binary one the other.
///
/// # Examples
///
/// A `Framed` over an in-memory duplex, sending `Ping`s and receiving
/// lines of text:
///
/// ```
/// use chitchat_net::{Framing, Message, TypedCodec};
/// use futures_util::{SinkExt, StreamExt};
/// use serde::{Deserialize, Serialize};
/// use tokio_util::codec::Framed;
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize, Message)]
/// #[message(codec = "bincode")]
/// struct Ping {
///     seq: u64,
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), chitchat_net::Error> {
/// let (a, b) = tokio::io::duplex(4096);
/// let mut pinger = Framed::new(a, TypedCodec::<Ping, String>::new(Framing::lines()));
/// let mut ponger = Framed::new(b, TypedCodec::<String, Ping>::new(Framing::lines()));
///
/// pinger.send(&Ping { seq: 7 }).await?;
/// let ping = ponger.next().await.transpose()?;
/// assert_eq!(ping, Some(Ping { seq: 7 }));
/// ponger.send(&"pong 7".to_string()).await?;
/// assert_eq!(pinger.next().await.transpose()?.as_deref(), Some("pong 7"));
/// # Ok(()) }
/// ```
pub struct TypedCodec<Out, In = Out> {
    /// The framing as given (escaping perhaps `Auto`).
    framing: Framing,
    /// The framing resolved for `Out`'s codec.
    frame_out: FrameCodec,
    /// The framing resolved for `In`'s codec, with its decoder state.
    frame_in: FrameCodec,
    codec_out: Arc<dyn Codec<Out>>,
    codec_in: Arc<dyn Codec<In>>,
    _types: PhantomData<fn(Out) -> In>,
}

impl<Out: Message, In: Message> TypedCodec<Out, In> {
    /// A codec for `framing`, with each type's default codec.
    pub fn new(framing: Framing) -> Self {
        let codec_out: Arc<dyn Codec<Out>> = Arc::new(Out::Codec::default());
        let codec_in: Arc<dyn Codec<In>> = Arc::new(In::Codec::default());
        TypedCodec::with_codecs(framing, codec_out, codec_in)
    }

    /// Encodes sent messages with `codec` instead of `Out`'s default codec
    /// (the escaping of an `Auto` framing is chosen again). Call it before
    /// any use: the decoder starts afresh.
    pub fn codec_out<C: Codec<Out>>(self, codec: C) -> Self {
        TypedCodec::with_codecs(self.framing, Arc::new(codec), self.codec_in)
    }

    /// Decodes received messages with `codec` instead of `In`'s default
    /// codec (the escaping of an `Auto` framing is chosen again). Call it
    /// before any use: the decoder starts afresh.
    pub fn codec_in<C: Codec<In>>(self, codec: C) -> Self {
        TypedCodec::with_codecs(self.framing, self.codec_out, Arc::new(codec))
    }

    fn with_codecs(
        framing: Framing,
        codec_out: Arc<dyn Codec<Out>>,
        codec_in: Arc<dyn Codec<In>>,
    ) -> Self {
        TypedCodec {
            framing,
            frame_out: FrameCodec::new(framing.resolve(codec_out.is_binary())),
            frame_in: FrameCodec::new(framing.resolve(codec_in.is_binary())),
            codec_out,
            codec_in,
            _types: PhantomData,
        }
    }

    /// The framing of what is sent, its escaping resolved for `Out`'s
    /// codec (never [`Escaping::Auto`](crate::Escaping::Auto)).
    ///
    /// ```
    /// use bytes::Bytes;
    /// use chitchat_net::{Escaping, Framing, TypedCodec};
    ///
    /// let text = TypedCodec::<String>::new(Framing::lines());
    /// assert_eq!(text.framing_out().escaping(), Some(Escaping::Raw));
    /// let forced = TypedCodec::<Bytes>::new(Framing::lines().escaped());
    /// assert_eq!(forced.framing_out().escaping(), Some(Escaping::Escaped));
    /// ```
    pub fn framing_out(&self) -> Framing {
        self.frame_out.framing()
    }

    /// The framing of what is received, its escaping resolved for `In`'s
    /// codec.
    pub fn framing_in(&self) -> Framing {
        self.frame_in.framing()
    }
}

impl<Out: Message, In: Message> Clone for TypedCodec<Out, In> {
    /// The same framing and codecs, with a fresh decoder (its state belongs
    /// to one buffer).
    fn clone(&self) -> Self {
        TypedCodec {
            framing: self.framing,
            frame_out: self.frame_out.clone(),
            frame_in: FrameCodec::new(self.frame_in.framing()),
            codec_out: self.codec_out.clone(),
            codec_in: self.codec_in.clone(),
            _types: PhantomData,
        }
    }
}

impl<Out: Message, In: Message> fmt::Debug for TypedCodec<Out, In> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedCodec")
            .field("framing_out", &self.frame_out.framing())
            .field("framing_in", &self.frame_in.framing())
            .field("codec_out", &self.codec_out.name())
            .field("codec_in", &self.codec_in.name())
            .finish()
    }
}

impl<Out: Message, In: Message> Decoder for TypedCodec<Out, In> {
    type Item = In;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, Error> {
        let frame = self.frame_in.decode(src)?;
        self.typed(frame)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<In>, Error> {
        let frame = self.frame_in.decode_eof(src)?;
        self.typed(frame)
    }
}

impl<Out: Message, In: Message> TypedCodec<Out, In> {
    /// Decodes a frame cut by the framing into `In`.
    fn typed(&self, frame: Option<bytes::Bytes>) -> Result<Option<In>, Error> {
        frame
            .map(|frame| self.codec_in.decode(frame).map_err(Error::decoding::<In>))
            .transpose()
    }
}

impl<Out: Message, In: Message> Encoder<&Out> for TypedCodec<Out, In> {
    type Error = Error;

    /// Appends one framed message to `dst` (nothing on error).
    fn encode(&mut self, item: &Out, dst: &mut BytesMut) -> Result<(), Error> {
        let codec = &self.codec_out;
        self.frame_out
            .encode_with(dst, |dst| codec.encode(item, dst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::wire::{default_is_binary, Wire};
    use bytes::Bytes;

    /// What a chitchat-net connection writes for `msg`, sending `M`.
    fn wire_bytes<M: Message>(framing: Framing, msg: &M) -> Vec<u8> {
        let wire = Wire::new(framing, default_is_binary::<M>(), Vec::new());
        let mut dst = BytesMut::new();
        wire.encode(msg, &mut dst).unwrap();
        dst.to_vec()
    }

    #[test]
    fn writes_what_a_connection_writes() {
        let framings = [
            Framing::lines(),
            Framing::delimited(0),
            Framing::length_prefixed(),
            Framing::eof(),
        ];
        for framing in framings {
            let text = "a line".to_string();
            let mut dst = BytesMut::new();
            TypedCodec::<String>::new(framing)
                .encode(&text, &mut dst)
                .unwrap();
            assert_eq!(dst.to_vec(), wire_bytes(framing, &text), "{framing:?}");

            let bytes = Bytes::from_static(b"\x00\n\xFF\r");
            let mut dst = BytesMut::new();
            let codec = TypedCodec::<Bytes>::new(framing.escaped());
            codec.clone().encode(&bytes, &mut dst).unwrap();
            assert_eq!(dst.to_vec(), wire_bytes(framing.escaped(), &bytes));
        }
    }

    #[test]
    fn each_direction_is_escaped_as_its_codec_needs() {
        use crate::codec::PodCodec;
        use crate::wire::frame::Escaping;
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        #[repr(C)]
        struct Pair(u32, u32);
        impl Message for Pair {
            type Codec = PodCodec;
        }
        let (escaped, raw) = (Some(Escaping::Escaped), Some(Escaping::Raw));
        let text_out = TypedCodec::<String, Pair>::new(Framing::lines());
        assert_eq!(text_out.framing_out().escaping(), raw);
        assert_eq!(text_out.framing_in().escaping(), escaped);
        let pod_out = TypedCodec::<Pair, String>::new(Framing::lines());
        assert_eq!(pod_out.framing_out().escaping(), escaped);
        assert_eq!(pod_out.framing_in().escaping(), raw);
        let forced = TypedCodec::<Pair>::new(Framing::lines().raw());
        assert_eq!(forced.framing_out().escaping(), raw);
        assert_eq!(forced.framing_in().escaping(), raw);
    }

    #[test]
    fn a_decode_error_names_the_codec_and_leaves_the_next_frame() {
        let mut codec = TypedCodec::<String>::new(Framing::lines());
        let mut src = BytesMut::from(&b"\xC3\x28\nnext\n"[..]);
        assert!(matches!(
            codec.decode(&mut src),
            Err(Error::Decode { codec: "text", .. })
        ));
        assert_eq!(codec.decode(&mut src).unwrap().as_deref(), Some("next"));
    }
}
