//! The request envelope: an opt-in header at the start of every frame's
//! payload that says whether the frame is a one-way message, a request, or
//! the reply to one, with the request's id (pure: no I/O).
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
//!
//! The id is an unsigned LEB128 varint (7 bits per byte, low bits first,
//! the high bit set on every byte but the last): 1 byte below 128, at most
//! 10 bytes for a `u64`. Overlong forms (a trailing `0x00` byte group that
//! adds nothing) and values over `u64::MAX` are refused, so each id has one
//! encoding. Any other first byte is an error.
//!
//! With the envelope on, a delimited framing with
//! [`Escaping::Auto`](crate::Escaping::Auto) is escaped whatever the codec:
//! the header is binary. An explicitly raw framing is refused.
//!
//! ```
//! use chitchat_net::envelope::{self, Envelope};
//!
//! let mut frame = Vec::new();
//! envelope::encode(Envelope::Request(300), &mut frame);
//! frame.extend_from_slice(b"ping");
//! assert_eq!(frame, [0x01, 0xac, 0x02, b'p', b'i', b'n', b'g']);
//! assert_eq!(envelope::decode(&frame), Ok((Envelope::Request(300), &b"ping"[..])));
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
}

/// Why an envelope could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The frame is empty: no kind byte.
    #[error("empty frame: no envelope")]
    Empty,
    /// The kind byte is none of `0x00`, `0x01`, `0x02`.
    #[error("unknown envelope kind {0:#04x}")]
    UnknownKind(u8),
    /// The frame ends inside the id.
    #[error("the frame ends inside the request id")]
    TruncatedId,
    /// The id is longer than a `u64`, or not in its shortest form.
    #[error("the request id is overlong or over u64::MAX")]
    BadId,
}

const MESSAGE: u8 = 0x00;
const REQUEST: u8 = 0x01;
const REPLY: u8 = 0x02;

/// The longest header: a kind byte and a 10-byte id.
pub const MAX_HEADER_LEN: usize = 11;

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
    }
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
        assert_eq!(header(Envelope::Request(u64::MAX)).len(), MAX_HEADER_LEN);
    }

    #[test]
    fn malformed_headers_are_errors() {
        assert_eq!(decode(&[]), Err(EnvelopeError::Empty));
        assert_eq!(decode(&[0x03]), Err(EnvelopeError::UnknownKind(3)));
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

    proptest! {
        #[test]
        fn every_header_round_trips(kind in 0u8..3, id: u64, rest: Vec<u8>) {
            let envelope = match kind {
                0 => Envelope::Message,
                1 => Envelope::Request(id),
                _ => Envelope::Reply(id),
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
