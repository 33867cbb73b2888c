//! Requests that name their reply ([`Request`]), and `()` as a message that
//! is never sent ([`Nothing`]).

use bytes::{Bytes, BytesMut};

use crate::codec::Message;
use crate::wire::error::Error;

/// A message sent as a request, and the type of its reply.
///
/// [`Client::request`](crate::Client::request) and
/// [`ConnectionHandle::request`](crate::ConnectionHandle::request) return
/// `Self::Reply`: the caller does not choose the reply type, so asking for
/// another one does not compile. Derive it with
/// `#[message(reply = YourReply)]` beside `#[derive(Message)]`; the derived
/// handler's methods then answer by returning a `YourReply` (see
/// [`derive@crate::Message`]).
///
/// Implemented for [`String`], answered by a `String`: a text line asks, a
/// text line answers (Go chitchat peers, `heartbeat ping`). For a peer
/// whose replies have no declared type, use
/// [`request_untyped`](crate::Client::request_untyped).
///
/// # Examples
///
/// ```
/// use chitchat_net::{Message, Request};
///
/// #[derive(Debug, Message)]
/// #[message(codec = "bincode", reply = Reply)]
/// enum Command { Get { key: String } }
///
/// #[derive(Debug, Message)]
/// #[message(codec = "bincode")]
/// enum Reply { Value { value: String }, NotFound }
///
/// fn reply_of<Q: Request>() -> &'static str { std::any::type_name::<Q::Reply>() }
/// assert!(reply_of::<Command>().ends_with("Reply"));
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not name its reply type: it is not a `Request`",
    label = "`request` needs a message that declares its reply",
    note = "declare the reply with `#[message(reply = YourReply)]` on `{Self}` (or `impl Request for {Self}`); toward a peer whose replies have no declared type, call `request_untyped::<YourReply>(..)`"
)]
pub trait Request: Message {
    /// What the peer answers to it.
    type Reply: Message;
}

impl Request for String {
    type Reply = String;
}

/// The codec of `()`, the message a client sends when it only receives
/// (`Client::<()>::builder().receive::<T>(n)`): `()` is an empty payload,
/// and only an empty payload decodes to `()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Nothing;

/// A frame that should have been empty held bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{len} bytes where `()` has none")]
pub struct NotEmpty {
    /// The frame's length.
    pub len: usize,
}

impl crate::codec::Codec<()> for Nothing {
    fn name(&self) -> &'static str {
        "nothing"
    }

    fn is_binary(&self) -> bool {
        false
    }

    fn encode(&self, _item: &(), _dst: &mut BytesMut) -> Result<(), Error> {
        Ok(())
    }

    fn decode(&self, frame: Bytes) -> Result<(), Error> {
        self.decode_slice(&frame)
    }

    fn decode_slice(&self, frame: &[u8]) -> Result<(), Error> {
        if frame.is_empty() {
            Ok(())
        } else {
            Err(Error::decode("nothing", NotEmpty { len: frame.len() }))
        }
    }

    fn copies_out(&self) -> bool {
        true
    }
}

/// Nothing: the send type of a client that only receives. Sending `()`
/// sends an empty frame.
impl Message for () {
    type Codec = Nothing;
}
