//! The request envelope: an opt-in header at the start of every frame's
//! payload that says whether the frame is a one-way message, a request, the
//! reply to one, or the error reply that says why a request failed, with
//! the request's id (pure: no I/O).
//!
//! Both ends switch it on ([`ClientBuilder::request_ids`] and
//! [`ServerBuilder::request_ids`]); a peer without it reads the header as
//! part of the message and fails to decode it.
//!
//! # Wire format
//!
//! The header comes first in the payload, before the codec's bytes, and is
//! framed (and escaped) with them: on the wire it sits inside the frame,
//! after the framing's escaping, exactly like the message bytes.
//!
//! | first byte | then | the frame is |
//! |---|---|---|
//! | `0x00` | the message | a one-way message |
//! | `0x01` | id, message | a request |
//! | `0x02` | id, message | the reply to the request with that id |
//! | `0x03` | id, code, text | the error reply to the request with that id |
//! | `0x04` | id, remaining ms, message | a request with a deadline |
//! | `0x05` | id | cancel: the caller gave up the request with that id |
//! | `0x06` | nothing | drain: see below |
//! | `0x07` | id, message | one item of the reply stream of request `id` |
//! | `0x08` | id [, code, text] | the end of the reply stream of request `id` |
//! | `0x09` | id, n | credit: the subscriber takes `n` more items of stream `id` |
//!
//! The id is an unsigned LEB128 varint (7 bits per byte, low bits first,
//! the high bit set on every byte but the last): 1 byte below 128, at most
//! 10 bytes for a `u64`. Overlong forms (a trailing `0x00` byte group that
//! adds nothing) and values over `u64::MAX` are refused, so each id has one
//! encoding. Any other first byte is an error.
//!
//! A request with a deadline (`0x04`) carries, after its id, the time its
//! caller still waits for the answer, in whole milliseconds, as a second
//! varint (the same encoding): relative, so that the two clocks need not
//! agree. The receiver's deadline is the moment it read the frame plus that
//! time. It is sent only to a peer whose hello announces
//! [`DEADLINES`](crate::handshake::features::DEADLINES); otherwise a request
//! is `0x01`. A cancel (`0x05`) has nothing after its id; it is sent only to a
//! peer that announces
//! [`CANCELLATION`](crate::handshake::features::CANCELLATION), and a cancel
//! for a request the receiver does not know (answered already, or never
//! seen) is ignored.
//!
//! An error reply carries no message of the codec: after the id come one
//! status byte ([`ErrorCode`]: `0x01` the handler failed, `0x02` the request
//! did not decode, `0x03` it was left unanswered, `0x04` it is a variant
//! the peer does not know, `0x05` its deadline passed before its handler
//! started, `0x06` the server is overloaded, `0x07` it was cancelled,
//! `0x08` the server drains and did not run it, `0x09` a reply stream
//! refused or stopped by its server; others are kept as
//! [`ErrorCode::Other`]) and a UTF-8 text of at most
//! [`MAX_ERROR_TEXT`] bytes (1 KiB; longer texts are cut at a character
//! boundary when encoded, and refused when decoded), like a gRPC status.
//! It is a kind of its own so that it can never be decoded as a reply: the
//! waiting request fails with
//! [`RequestError::Remote`](crate::RequestError::Remote) at once.
//!
//! # Drain
//!
//! A drain frame is the kind byte `0x06` alone (no id, no message; bytes
//! after it are ignored, for later versions). It is sent only on a
//! connection where both hellos set the
//! [`DRAIN`](crate::handshake::features::DRAIN) feature bit. The server
//! sends it when it starts a graceful shutdown: "send no new request on
//! this connection". The client answers with the same frame, after every
//! request it sent before it: "no request follows". The server answers
//! what arrived before that answer, then closes; a request that comes
//! after it anyway is refused with [`ErrorCode::Draining`] (not run).
//!
//! # Reply streams
//!
//! Kinds `0x07` to `0x09` are used only on a connection whose two hellos
//! set [`REPLY_STREAMS`](crate::handshake::features::REPLY_STREAMS) (a
//! peer without it never receives them). A subscriber sends a request
//! (`0x01`, its id); the request itself grants a credit of one item. The
//! peer serving it answers with items (`0x07`), never more than the credit
//! granted so far, and ends the stream once with `0x08`: with nothing
//! after the id, a normal end; with a status byte and a text (as in an
//! error reply, at most [`MAX_ERROR_TEXT`] bytes), an error. The
//! subscriber grants the rest of its window with a credit (`0x09`) when
//! the first item arrives, then more as it takes items, so every credit
//! comes after the stream's first item: a credit for a stream that is not
//! open (any more) is dropped. A credit of `n = 0` cancels the stream (the
//! subscriber dropped it): the server's sink is closed and sends nothing
//! more, not even an end; an item for a stream the subscriber no longer
//! has is answered with such a cancel. Items and ends travel from the
//! stream's server to the subscriber, credits the other way, so every id
//! is the subscriber's request id whichever side serves. The server may
//! instead answer the request with an error reply (`0x03`: a handler that
//! failed before it took the stream, a request that did not decode,
//! [`ErrorCode::StreamRefused`]); that ends the stream too. A graceful
//! close of the serving side ends each open stream with
//! [`ErrorCode::StreamRefused`]. The `n` of a credit is a varint like the
//! id, and the whole body: anything after it is an error.
//!
//! ```
//! use chitchat_net::envelope::{self, Envelope, ErrorCode};
//!
//! // The subscriber of request 5 grants 31 more items (a window of 32).
//! let mut credit = Vec::new();
//! envelope::encode_credit(5, 31, &mut credit);
//! assert_eq!(credit, [0x09, 0x05, 0x1f]);
//! let (kind, body) = envelope::decode(&credit).unwrap();
//! assert_eq!((kind, envelope::decode_credit(body)), (Envelope::Credit(5), Ok(31)));
//!
//! // Its server ends it with an error.
//! let mut end = Vec::new();
//! envelope::encode_stream_end(5, Some((ErrorCode::Handler, "gone")), &mut end);
//! assert_eq!(end, [0x08, 0x05, 0x01, b'g', b'o', b'n', b'e']);
//! let (kind, body) = envelope::decode(&end).unwrap();
//! assert_eq!(kind, Envelope::StreamEnd(5));
//! assert_eq!(envelope::decode_stream_end(body), Ok(Some((ErrorCode::Handler, "gone"))));
//! ```
//!
//! With the envelope on, a delimited framing with
//! [`Escaping::Auto`](crate::Escaping::Auto) is escaped whatever the codec:
//! the header is binary. An explicitly raw framing is refused.
//!
//! ```
//! use chitchat_net::envelope::{self, Envelope, ErrorCode};
//!
//! let mut frame = Vec::new();
//! envelope::encode(Envelope::Request(300), &mut frame);
//! frame.extend_from_slice(b"ping");
//! assert_eq!(frame, [0x01, 0xac, 0x02, b'p', b'i', b'n', b'g']);
//! assert_eq!(envelope::decode(&frame), Ok((Envelope::Request(300), &b"ping"[..])));
//!
//! // The error reply to request 300: the handler failed, "no such key".
//! let mut frame = Vec::new();
//! envelope::encode_error(300, ErrorCode::Handler, "no such key", &mut frame);
//! assert_eq!(&frame[..5], [0x03, 0xac, 0x02, 0x01, b'n']);
//! let (kind, body) = envelope::decode(&frame).unwrap();
//! assert_eq!(kind, Envelope::ErrorReply(300));
//! assert_eq!(envelope::decode_error(body), Ok((ErrorCode::Handler, "no such key")));
//! ```
//!
//! [`ClientBuilder::request_ids`]: crate::ClientBuilder::request_ids
//! [`ServerBuilder::request_ids`]: crate::ServerBuilder::request_ids

/// What a frame is, as its envelope says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Envelope {
    /// A one-way message: nobody waits for an answer.
    Message,
    /// A request that waits for the reply with the same id.
    Request(u64),
    /// The reply to the request with this id.
    Reply(u64),
    /// The error reply to the request with this id: an [`ErrorCode`] and a
    /// text follow (see [`decode_error`]), never a message.
    ErrorReply(u64),
    /// A request (with this id) whose caller waits for its answer at most
    /// `remaining_ms` more milliseconds.
    DeadlineRequest {
        /// The request's id.
        id: u64,
        /// Milliseconds its caller still waits, counted from when the frame
        /// is read.
        remaining_ms: u64,
    },
    /// The caller gave up the request with this id (nothing follows).
    Cancel(u64),
    /// A drain (kind `0x06`, no id): from a server, "I am shutting down:
    /// send no new request on this connection"; from a client, its answer,
    /// "no request follows" (see the module docs).
    Drain,
    /// One item of the reply stream of the request with this id (`0x07`).
    StreamItem(u64),
    /// The end of the reply stream of the request with this id (`0x08`):
    /// nothing, or an [`ErrorCode`] and a text (see [`decode_stream_end`]).
    StreamEnd(u64),
    /// Credit for the reply stream of the request with this id (`0x09`):
    /// a varint count follows (see [`decode_credit`]); 0 cancels the
    /// stream.
    Credit(u64),
}

/// Why a request failed, as its error reply says (the status byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `0x01`: the handler returned an error for this request; the text is
    /// its message.
    Handler,
    /// `0x02`: the request's frame did not decode into the type the peer
    /// receives (another type, codec or version); the text says why.
    BadRequest,
    /// `0x03`: the request was handed to a
    /// [`Replier`](crate::Replier) that was dropped without answering, or
    /// the stream it asked for was handed to a
    /// [`ReplySink`](crate::ReplySink) dropped without ending it.
    Unanswered,
    /// `0x04`: the request is a variant the peer does not know (a tag its
    /// type lacks: it is of an older version); the text names the type and
    /// the tag. See the README, "Evolving your messages".
    UnknownVariant,
    /// `0x05`: the request's deadline passed before its handler started,
    /// so it was not run.
    DeadlineExceeded,
    /// `0x06`: the server handles as many requests as it takes (on this
    /// connection, or in all) and refused this one at once: try again
    /// later, or elsewhere.
    Overloaded,
    /// `0x07`: the request was cancelled.
    Cancelled,
    /// `0x08`: the server is draining (shutting down gracefully) and did
    /// not run the request, which came after the client's answer to the
    /// drain: it is safe to send it again elsewhere.
    Draining,
    /// `0x09`: the peer does not serve this reply stream (any more): the
    /// request asked for a stream on a connection where reply streams are
    /// off, or the peer's connection closed (a graceful shutdown) while
    /// the stream was open. Subscribe again, elsewhere or later.
    StreamRefused,
    /// Any other status byte (from a later version), kept as it came.
    Other(u8),
}

impl ErrorCode {
    /// The status byte on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            ErrorCode::Handler => 0x01,
            ErrorCode::BadRequest => 0x02,
            ErrorCode::Unanswered => 0x03,
            ErrorCode::UnknownVariant => 0x04,
            ErrorCode::StreamRefused => 0x09,
            ErrorCode::Draining => 0x08,
            ErrorCode::DeadlineExceeded => 0x05,
            ErrorCode::Overloaded => 0x06,
            ErrorCode::Cancelled => 0x07,
            ErrorCode::Other(byte) => byte,
        }
    }

    /// The code a status byte stands for.
    pub fn from_byte(byte: u8) -> Self {
        match byte {
            0x01 => ErrorCode::Handler,
            0x02 => ErrorCode::BadRequest,
            0x03 => ErrorCode::Unanswered,
            0x04 => ErrorCode::UnknownVariant,
            0x09 => ErrorCode::StreamRefused,
            0x08 => ErrorCode::Draining,
            0x05 => ErrorCode::DeadlineExceeded,
            0x06 => ErrorCode::Overloaded,
            0x07 => ErrorCode::Cancelled,
            other => ErrorCode::Other(other),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorCode::Handler => f.write_str("the handler failed"),
            ErrorCode::BadRequest => f.write_str("bad request"),
            ErrorCode::Unanswered => f.write_str("left unanswered"),
            ErrorCode::UnknownVariant => f.write_str("unknown variant"),
            ErrorCode::StreamRefused => f.write_str("stream refused"),
            ErrorCode::Draining => f.write_str("the server is draining"),
            ErrorCode::DeadlineExceeded => f.write_str("deadline exceeded before it was handled"),
            ErrorCode::Overloaded => f.write_str("the server is overloaded"),
            ErrorCode::Cancelled => f.write_str("cancelled"),
            ErrorCode::Other(byte) => write!(f, "error code {byte:#04x}"),
        }
    }
}

/// Why an envelope could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The frame is empty: no kind byte.
    #[error("empty frame: no envelope")]
    Empty,
    /// The kind byte is none of `0x00` to `0x09`.
    #[error("unknown envelope kind {0:#04x}")]
    UnknownKind(u8),
    /// The frame ends inside the id.
    #[error("the frame ends inside the request id")]
    TruncatedId,
    /// The id is longer than a `u64`, or not in its shortest form.
    #[error("the request id is overlong or over u64::MAX")]
    BadId,
    /// An error reply ends before its status byte.
    #[error("the error reply has no status byte")]
    NoErrorCode,
    /// An error reply's text is not UTF-8, or longer than
    /// [`MAX_ERROR_TEXT`].
    #[error("the error reply's text is not UTF-8 or longer than 1 KiB")]
    BadErrorText,
    /// A credit's count is missing, overlong, or followed by more bytes.
    #[error("the credit's count is malformed")]
    BadCredit,
}

const MESSAGE: u8 = 0x00;
const REQUEST: u8 = 0x01;
const REPLY: u8 = 0x02;
const ERROR_REPLY: u8 = 0x03;
const DEADLINE_REQUEST: u8 = 0x04;
const CANCEL: u8 = 0x05;
/// The kind byte of a drain frame.
pub(crate) const DRAIN: u8 = 0x06;
const STREAM_ITEM: u8 = 0x07;
const STREAM_END: u8 = 0x08;
const CREDIT: u8 = 0x09;

/// The longest text of an error reply, in bytes (1 KiB).
pub const MAX_ERROR_TEXT: usize = 1024;

/// The longest header: a kind byte, a 10-byte id and (a request with a
/// deadline) a 10-byte time.
pub const MAX_HEADER_LEN: usize = 21;

/// Appends the header for `envelope` to `dst`.
pub fn encode(envelope: Envelope, dst: &mut impl Extend<u8>) {
    match envelope {
        Envelope::Message => dst.extend([MESSAGE]),
        Envelope::Request(id) => {
            dst.extend([REQUEST]);
            encode_id(id, dst);
        }
        Envelope::Reply(id) => {
            dst.extend([REPLY]);
            encode_id(id, dst);
        }
        Envelope::ErrorReply(id) => {
            dst.extend([ERROR_REPLY]);
            encode_id(id, dst);
        }
        Envelope::DeadlineRequest { id, remaining_ms } => {
            dst.extend([DEADLINE_REQUEST]);
            encode_id(id, dst);
            encode_id(remaining_ms, dst);
        }
        Envelope::Cancel(id) => {
            dst.extend([CANCEL]);
            encode_id(id, dst);
        }
        Envelope::Drain => dst.extend([DRAIN]),
        Envelope::StreamItem(id) => {
            dst.extend([STREAM_ITEM]);
            encode_id(id, dst);
        }
        Envelope::StreamEnd(id) => {
            dst.extend([STREAM_END]);
            encode_id(id, dst);
        }
        Envelope::Credit(id) => {
            dst.extend([CREDIT]);
            encode_id(id, dst);
        }
    }
}

/// Appends a whole stream end of stream `id` to `dst`: the header and, for
/// an error, its status byte and `text` (cut as in [`encode_error`]).
pub fn encode_stream_end(id: u64, error: Option<(ErrorCode, &str)>, dst: &mut impl Extend<u8>) {
    encode(Envelope::StreamEnd(id), dst);
    if let Some((code, text)) = error {
        dst.extend([code.to_byte()]);
        dst.extend(truncate(text, MAX_ERROR_TEXT).bytes());
    }
}

/// Reads the body of a stream end (what follows the header of an
/// [`Envelope::StreamEnd`]): `None` for a normal end, or the error's code
/// and text.
///
/// # Errors
///
/// As [`decode_error`], for a body that is not empty.
pub fn decode_stream_end(body: &[u8]) -> Result<Option<(ErrorCode, &str)>, EnvelopeError> {
    if body.is_empty() {
        return Ok(None);
    }
    decode_error(body).map(Some)
}

/// Appends a whole credit frame for stream `id` to `dst`: the header and
/// the count `n` (0 cancels the stream).
pub fn encode_credit(id: u64, n: u64, dst: &mut impl Extend<u8>) {
    encode(Envelope::Credit(id), dst);
    encode_id(n, dst);
}

/// Reads the body of a credit (what follows the header of an
/// [`Envelope::Credit`]): the count.
///
/// # Errors
///
/// [`EnvelopeError::BadCredit`] if the count is missing, overlong, or
/// followed by more bytes.
pub fn decode_credit(body: &[u8]) -> Result<u64, EnvelopeError> {
    match decode_id(body) {
        Ok((n, [])) => Ok(n),
        _ => Err(EnvelopeError::BadCredit),
    }
}

/// Appends a whole error reply to request `id` to `dst`: the header, the
/// status byte of `code`, and `text`, cut to at most [`MAX_ERROR_TEXT`]
/// bytes at a character boundary.
pub fn encode_error(id: u64, code: ErrorCode, text: &str, dst: &mut impl Extend<u8>) {
    encode(Envelope::ErrorReply(id), dst);
    dst.extend([code.to_byte()]);
    dst.extend(truncate(text, MAX_ERROR_TEXT).bytes());
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Reads the body of an error reply (what follows the header of an
/// [`Envelope::ErrorReply`]): its code and text.
///
/// # Errors
///
/// [`EnvelopeError::NoErrorCode`] for an empty body,
/// [`EnvelopeError::BadErrorText`] for a text that is not UTF-8 or longer
/// than [`MAX_ERROR_TEXT`].
pub fn decode_error(body: &[u8]) -> Result<(ErrorCode, &str), EnvelopeError> {
    let (&code, text) = body.split_first().ok_or(EnvelopeError::NoErrorCode)?;
    if text.len() > MAX_ERROR_TEXT {
        return Err(EnvelopeError::BadErrorText);
    }
    let text = std::str::from_utf8(text).map_err(|_| EnvelopeError::BadErrorText)?;
    Ok((ErrorCode::from_byte(code), text))
}

fn encode_id(mut id: u64, dst: &mut impl Extend<u8>) {
    let mut bytes = [0u8; 10];
    let mut len = 0;
    loop {
        let low = (id & 0x7f) as u8;
        id >>= 7;
        if id == 0 {
            bytes[len] = low;
            len += 1;
            break;
        }
        bytes[len] = low | 0x80;
        len += 1;
    }
    dst.extend(bytes[..len].iter().copied());
}

/// Reads the header at the start of `frame`; returns what the frame is and
/// the rest of it (the message's bytes).
///
/// # Errors
///
/// [`EnvelopeError`] if the header is malformed (see the module docs).
pub fn decode(frame: &[u8]) -> Result<(Envelope, &[u8]), EnvelopeError> {
    let (&kind, rest) = frame.split_first().ok_or(EnvelopeError::Empty)?;
    match kind {
        MESSAGE => Ok((Envelope::Message, rest)),
        REQUEST => decode_id(rest).map(|(id, rest)| (Envelope::Request(id), rest)),
        REPLY => decode_id(rest).map(|(id, rest)| (Envelope::Reply(id), rest)),
        ERROR_REPLY => decode_id(rest).map(|(id, rest)| (Envelope::ErrorReply(id), rest)),
        DEADLINE_REQUEST => {
            let (id, rest) = decode_id(rest)?;
            let (remaining_ms, rest) = decode_id(rest)?;
            Ok((Envelope::DeadlineRequest { id, remaining_ms }, rest))
        }
        CANCEL => decode_id(rest).map(|(id, rest)| (Envelope::Cancel(id), rest)),
        DRAIN => Ok((Envelope::Drain, rest)),
        STREAM_ITEM => decode_id(rest).map(|(id, rest)| (Envelope::StreamItem(id), rest)),
        STREAM_END => decode_id(rest).map(|(id, rest)| (Envelope::StreamEnd(id), rest)),
        CREDIT => decode_id(rest).map(|(id, rest)| (Envelope::Credit(id), rest)),
        other => Err(EnvelopeError::UnknownKind(other)),
    }
}

fn decode_id(bytes: &[u8]) -> Result<(u64, &[u8]), EnvelopeError> {
    let mut id: u64 = 0;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        let low = u64::from(byte & 0x7f);
        // The tenth byte may only hold the top bit of a u64.
        if i == 9 && byte > 0x01 {
            return Err(EnvelopeError::BadId);
        }
        id |= low << (7 * i);
        if byte & 0x80 == 0 {
            // Shortest form only: a last byte of zero adds nothing.
            if byte == 0 && i > 0 {
                return Err(EnvelopeError::BadId);
            }
            return Ok((id, &bytes[i + 1..]));
        }
    }
    if bytes.len() >= 10 {
        Err(EnvelopeError::BadId)
    } else {
        Err(EnvelopeError::TruncatedId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(envelope: Envelope) -> Vec<u8> {
        let mut out = Vec::new();
        encode(envelope, &mut out);
        out
    }

    #[test]
    fn known_encodings() {
        assert_eq!(header(Envelope::Message), [0x00]);
        assert_eq!(header(Envelope::Request(0)), [0x01, 0x00]);
        assert_eq!(header(Envelope::Reply(127)), [0x02, 0x7f]);
        assert_eq!(header(Envelope::Reply(128)), [0x02, 0x80, 0x01]);
        assert_eq!(header(Envelope::Request(u64::MAX)).len(), 11);
        assert_eq!(
            header(Envelope::DeadlineRequest {
                id: 300,
                remaining_ms: 1500
            }),
            [0x04, 0xac, 0x02, 0xdc, 0x0b]
        );
        assert_eq!(header(Envelope::Cancel(300)), [0x05, 0xac, 0x02]);
        assert_eq!(
            header(Envelope::DeadlineRequest {
                id: u64::MAX,
                remaining_ms: u64::MAX
            })
            .len(),
            MAX_HEADER_LEN
        );
        assert_eq!(header(Envelope::Drain), [0x06]);
        assert_eq!(decode(&[0x06]), Ok((Envelope::Drain, &[][..])));
        // Bytes after it are left for the caller (later versions).
        assert_eq!(decode(&[0x06, 0x01]), Ok((Envelope::Drain, &[0x01][..])));
        assert_eq!(ErrorCode::from_byte(0x08), ErrorCode::Draining);
        assert_eq!(ErrorCode::Draining.to_byte(), 0x08);
    }

    #[test]
    fn malformed_headers_are_errors() {
        assert_eq!(decode(&[]), Err(EnvelopeError::Empty));
        assert_eq!(decode(&[0x0a]), Err(EnvelopeError::UnknownKind(0x0a)));
        assert_eq!(decode(&[0x07]), Err(EnvelopeError::TruncatedId));
        assert_eq!(decode(&[0x09, 0x80]), Err(EnvelopeError::TruncatedId));
        assert_eq!(decode(&[0x04, 0x07]), Err(EnvelopeError::TruncatedId));
        assert_eq!(decode(&[0x04, 0x07, 0x80, 0x00]), Err(EnvelopeError::BadId));
        assert_eq!(decode(&[0x05]), Err(EnvelopeError::TruncatedId));
        assert_eq!(decode(&[0x03]), Err(EnvelopeError::TruncatedId));
        assert_eq!(decode(&[0x01]), Err(EnvelopeError::TruncatedId));
        assert_eq!(decode(&[0x01, 0x80]), Err(EnvelopeError::TruncatedId));
        // Overlong: 0 written in two bytes.
        assert_eq!(decode(&[0x01, 0x80, 0x00]), Err(EnvelopeError::BadId));
        // Eleven bytes, or a tenth byte over the top bit.
        assert_eq!(
            decode(&[0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            Err(EnvelopeError::BadId)
        );
        assert_eq!(
            decode(&[0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(EnvelopeError::BadId)
        );
    }

    #[test]
    fn error_replies_carry_a_code_and_a_bounded_text() {
        let mut frame = Vec::new();
        encode_error(
            7,
            ErrorCode::BadRequest,
            "unknown variant tag 97",
            &mut frame,
        );
        assert_eq!(&frame[..3], [0x03, 0x07, 0x02]);
        let (kind, body) = decode(&frame).unwrap();
        assert_eq!(kind, Envelope::ErrorReply(7));
        assert_eq!(
            decode_error(body),
            Ok((ErrorCode::BadRequest, "unknown variant tag 97"))
        );
        // Cut at 1 KiB, at a character boundary ('é' is two bytes).
        let long = "é".repeat(MAX_ERROR_TEXT);
        let mut frame = Vec::new();
        encode_error(1, ErrorCode::Handler, &long, &mut frame);
        let (_, body) = decode(&frame).unwrap();
        let (_, text) = decode_error(body).unwrap();
        assert_eq!(text.len(), MAX_ERROR_TEXT);
        // Refused: no code, bad UTF-8, too long; unknown codes are kept.
        assert_eq!(decode_error(&[]), Err(EnvelopeError::NoErrorCode));
        assert_eq!(decode_error(&[1, 0xff]), Err(EnvelopeError::BadErrorText));
        let mut over = vec![1];
        over.extend(std::iter::repeat_n(b'a', MAX_ERROR_TEXT + 1));
        assert_eq!(decode_error(&over), Err(EnvelopeError::BadErrorText));
        assert_eq!(decode_error(&[0x7f]), Ok((ErrorCode::Other(0x7f), "")));
        for byte in 0..=u8::MAX {
            assert_eq!(ErrorCode::from_byte(byte).to_byte(), byte);
        }
    }

    #[test]
    fn stream_frames_have_one_form_each() {
        assert_eq!(header(Envelope::StreamItem(1)), [0x07, 0x01]);
        assert_eq!(header(Envelope::StreamEnd(1)), [0x08, 0x01]);
        assert_eq!(header(Envelope::Credit(300)), [0x09, 0xac, 0x02]);
        // A normal end has nothing after the id; an error end a code and text.
        let mut end = Vec::new();
        encode_stream_end(3, None, &mut end);
        assert_eq!(end, [0x08, 0x03]);
        let (_, body) = decode(&end).unwrap();
        assert_eq!(decode_stream_end(body), Ok(None));
        let mut end = Vec::new();
        encode_stream_end(3, Some((ErrorCode::StreamRefused, "closing")), &mut end);
        let (_, body) = decode(&end).unwrap();
        assert_eq!(
            decode_stream_end(body),
            Ok(Some((ErrorCode::StreamRefused, "closing")))
        );
        assert_eq!(
            decode_stream_end(&[1, 0xff]),
            Err(EnvelopeError::BadErrorText)
        );
        // Credit: one varint, nothing after it.
        let mut credit = Vec::new();
        encode_credit(3, u64::MAX, &mut credit);
        let (_, body) = decode(&credit).unwrap();
        assert_eq!(decode_credit(body), Ok(u64::MAX));
        assert_eq!(decode_credit(&[]), Err(EnvelopeError::BadCredit));
        assert_eq!(decode_credit(&[0x05, 0x00]), Err(EnvelopeError::BadCredit));
        assert_eq!(decode_credit(&[0x80, 0x00]), Err(EnvelopeError::BadCredit));
        assert_eq!(decode_credit(&[0x80]), Err(EnvelopeError::BadCredit));
        assert_eq!(ErrorCode::from_byte(0x09), ErrorCode::StreamRefused);
    }

    proptest! {
        #[test]
        fn every_header_round_trips(kind in 0u8..10, id: u64, ms: u64, rest: Vec<u8>) {
            let envelope = match kind {
                0 => Envelope::Message,
                1 => Envelope::Request(id),
                2 => Envelope::Reply(id),
                3 => Envelope::ErrorReply(id),
                4 => Envelope::DeadlineRequest { id, remaining_ms: ms },
                5 => Envelope::Cancel(id),
                6 => Envelope::StreamItem(id),
                7 => Envelope::StreamEnd(id),
                8 => Envelope::Credit(id),
                _ => Envelope::Drain,
            };
            let mut frame = header(envelope);
            frame.extend_from_slice(&rest);
            prop_assert_eq!(decode(&frame), Ok((envelope, &rest[..])));
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panic(frame: Vec<u8>) {
            if let Ok((envelope, rest)) = decode(&frame) {
                // What decodes re-encodes to the same bytes: one form per id.
                let mut again = header(envelope);
                again.extend_from_slice(rest);
                prop_assert_eq!(again, frame);
            }
        }
    }
}
