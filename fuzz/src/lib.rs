//! Shared pieces of the fuzz targets: how an input picks a framing, a
//! reference model of the frame decoder, and a driver that feeds a stream to
//! [`FrameCodec`] in chunks the way a connection does.
//!
//! The layout of a `frame_decode` input (also used by `examples/seeds.rs`):
//!
//! | byte | meaning |
//! |---|---|
//! | 0 | bits 0-1: mode (0 raw, 1 escaped, 2 end of stream, 3 length-prefixed); bit 2: keep decoding after an error |
//! | 1 | the delimiter (delimited modes) |
//! | 2, 3 | max frame length: `u16` little-endian modulo 4097 (0..=4096) |
//! | 4 | number of chunk sizes: 1 + (byte % 8) |
//! | next | the chunk sizes, one byte each, used in turn; 0 = everything left |
//! | rest | the byte stream |

use bytes::{Bytes, BytesMut};
use chitchat_net::{Error, FrameCodec, Framing};
use tokio_util::codec::Decoder;

pub mod codecs;

/// The largest max frame length an input can choose.
pub const MAX_LIMIT: usize = 4096;

/// A framing mode, as the fuzz input chooses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Delimited, no escaping.
    Raw(u8),
    /// Delimited, byte stuffing.
    Escaped(u8),
    /// One frame per stream.
    Eof,
    /// `u32` big-endian length header.
    LengthPrefixed,
}

impl Mode {
    /// Mode from a selector byte (bits 0-1) and a delimiter byte.
    pub fn from_bytes(selector: u8, delimiter: u8) -> Mode {
        match selector & 3 {
            0 => Mode::Raw(delimiter),
            1 => Mode::Escaped(delimiter),
            2 => Mode::Eof,
            _ => Mode::LengthPrefixed,
        }
    }

    /// The selector byte's mode bits.
    pub fn selector(self) -> u8 {
        match self {
            Mode::Raw(_) => 0,
            Mode::Escaped(_) => 1,
            Mode::Eof => 2,
            Mode::LengthPrefixed => 3,
        }
    }

    /// The delimiter, if delimited.
    pub fn delimiter(self) -> Option<u8> {
        match self {
            Mode::Raw(d) | Mode::Escaped(d) => Some(d),
            _ => None,
        }
    }

    /// The framing for this mode with the given limit.
    pub fn framing(self, max: usize) -> Framing {
        let framing = match self {
            Mode::Raw(d) => Framing::delimited(d).raw(),
            Mode::Escaped(d) => Framing::delimited(d).escaped(),
            Mode::Eof => Framing::eof(),
            Mode::LengthPrefixed => Framing::length_prefixed(),
        };
        framing.max_frame_length(max)
    }

    /// Bytes of framing around a payload on the wire (delimiter or header).
    pub fn overhead(self) -> usize {
        match self {
            Mode::Raw(_) | Mode::Escaped(_) => 1,
            Mode::Eof => 0,
            Mode::LengthPrefixed => 4,
        }
    }
}

/// The escape byte of escaped mode for `delimiter`, as the module docs of
/// `chitchat_net::frame` specify it.
pub fn escape_byte(delimiter: u8) -> u8 {
    if delimiter == 0xFF || delimiter == 0xDF {
        0xFE
    } else {
        0xFF
    }
}

/// A parsed `frame_decode` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The framing mode.
    pub mode: Mode,
    /// Keep decoding after an error (the codec resyncs) instead of stopping
    /// as a chitchat-net connection does.
    pub keep_going: bool,
    /// The max frame length, 0..=4096.
    pub max: usize,
    /// Chunk sizes, used in turn; 0 = everything left.
    pub chunks: Vec<u8>,
}

impl Header {
    /// Parses the header; returns it and the stream. Missing bytes read as 0.
    pub fn parse(data: &[u8]) -> (Header, &[u8]) {
        let mut cur = Cursor(data);
        let selector = cur.byte();
        let delimiter = cur.byte();
        let max = usize::from(u16::from_le_bytes([cur.byte(), cur.byte()])) % (MAX_LIMIT + 1);
        let n = 1 + usize::from(cur.byte() % 8);
        let chunks = (0..n).map(|_| cur.byte()).collect();
        let header = Header {
            mode: Mode::from_bytes(selector, delimiter),
            keep_going: selector & 4 != 0,
            max,
            chunks,
        };
        (header, cur.0)
    }

    /// The bytes [`Header::parse`] reads back as this header.
    pub fn to_bytes(&self) -> Vec<u8> {
        assert!(!self.chunks.is_empty() && self.chunks.len() <= 8);
        assert!(self.max <= MAX_LIMIT);
        let mut out = vec![
            self.mode.selector() | if self.keep_going { 4 } else { 0 },
            self.mode.delimiter().unwrap_or(0),
        ];
        out.extend_from_slice(&(self.max as u16).to_le_bytes());
        out.push((self.chunks.len() - 1) as u8);
        out.extend_from_slice(&self.chunks);
        out
    }
}

/// Reads bytes from the front of a slice; 0 once it is empty.
pub struct Cursor<'a>(pub &'a [u8]);

impl Cursor<'_> {
    /// The next byte, or 0.
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
}

/// What the decoder yields, in a form two decoders can be compared on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A frame.
    Frame(Bytes),
    /// `Error::FrameTooLong`; `len` is left out: it depends on how much was
    /// buffered when the decoder noticed.
    TooLong,
    /// `Error::BadEscape` at this offset of the wire frame.
    BadEscape(usize),
    /// `Error::PartialFrame` with these pending bytes.
    Partial(usize),
    /// Any other error (never expected from a decoder).
    Other(String),
}

impl Event {
    fn from_error(e: Error) -> Event {
        match e {
            Error::FrameTooLong { .. } => Event::TooLong,
            Error::BadEscape { offset } => Event::BadEscape(offset),
            Error::PartialFrame { len } => Event::Partial(len),
            other => Event::Other(format!("{other:?}")),
        }
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        !matches!(self, Event::Frame(_))
    }
}

/// Feeds `stream` to a fresh [`FrameCodec`] in chunks of the sizes given (in
/// turn, 0 = everything left), calling `decode` after each chunk until it has
/// nothing more, then `decode_eof` until it yields `None`, and returns what
/// it yielded. Stops at the first error unless `keep_going`.
///
/// Asserts on the way, after every call:
/// - a call that yields a frame or an error consumes at least one byte (so
///   the loops end: no hang);
/// - a frame is no longer than the limit, nor than the bytes consumed less
///   the framing overhead;
/// - the buffer never holds more than limit + chunk + 4 bytes;
/// - `decode_eof` leaves the buffer empty when it yields `None`.
pub fn drive(mode: Mode, max: usize, chunks: &[u8], keep_going: bool, stream: &[u8]) -> Vec<Event> {
    assert!(!chunks.is_empty());
    let mut codec = FrameCodec::new(mode.framing(max));
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let mut pos = 0;
    let mut turn = 0;
    let mut chunk = 0;
    let step = |codec: &mut FrameCodec, buf: &mut BytesMut, eof: bool, chunk: usize| {
        let before = buf.len();
        let result = if eof {
            codec.decode_eof(buf)
        } else {
            codec.decode(buf)
        };
        let after = buf.len();
        assert!(
            after <= max + chunk + 4,
            "buffer of {after} bytes, limit {max}, chunk {chunk}"
        );
        match result {
            Ok(None) => None,
            Ok(Some(frame)) => {
                assert!(after < before, "frame yielded without consuming input");
                let consumed = before - after;
                assert!(frame.len() <= max, "frame of {} > limit {max}", frame.len());
                assert!(
                    frame.len() + mode.overhead() <= consumed,
                    "frame of {} from {consumed} wire bytes",
                    frame.len()
                );
                Some(Event::Frame(frame))
            }
            Err(e) => {
                assert!(after < before, "error {e:?} without consuming input");
                Some(Event::from_error(e))
            }
        }
    };
    while pos < stream.len() {
        let size = usize::from(chunks[turn % chunks.len()]);
        turn += 1;
        chunk = if size == 0 {
            stream.len() - pos
        } else {
            size.min(stream.len() - pos)
        };
        buf.extend_from_slice(&stream[pos..pos + chunk]);
        pos += chunk;
        while let Some(event) = step(&mut codec, &mut buf, false, chunk) {
            let error = event.is_error();
            events.push(event);
            if error && !keep_going {
                return events;
            }
        }
    }
    loop {
        match step(&mut codec, &mut buf, true, chunk) {
            None => {
                assert!(buf.is_empty(), "decode_eof left {} bytes", buf.len());
                return events;
            }
            Some(event) => {
                let error = event.is_error();
                events.push(event);
                if error && !keep_going {
                    return events;
                }
            }
        }
    }
}

/// What the decoder must yield for `stream` as a whole, written from the
/// module docs of `chitchat_net::frame`, independently of `FrameCodec`.
pub fn reference(mode: Mode, max: usize, keep_going: bool, stream: &[u8]) -> Vec<Event> {
    let mut events = Vec::new();
    match mode {
        Mode::Eof => {
            if stream.len() > max {
                events.push(Event::TooLong);
            } else if !stream.is_empty() {
                events.push(Event::Frame(Bytes::copy_from_slice(stream)));
            }
        }
        Mode::LengthPrefixed => {
            let mut pos = 0;
            while pos < stream.len() {
                let rest = &stream[pos..];
                if rest.len() < 4 {
                    events.push(Event::Partial(rest.len()));
                    break;
                }
                let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                if len > max {
                    events.push(Event::TooLong);
                    // Drops the announced bytes, or the rest of the stream.
                    pos = pos.saturating_add(4).saturating_add(len);
                    continue;
                }
                if rest.len() - 4 < len {
                    events.push(Event::Partial(rest.len()));
                    break;
                }
                events.push(Event::Frame(Bytes::copy_from_slice(&rest[4..4 + len])));
                pos += 4 + len;
            }
        }
        Mode::Raw(d) | Mode::Escaped(d) => {
            let escaped = matches!(mode, Mode::Escaped(_));
            let mut pos = 0;
            while pos < stream.len() {
                let rest = &stream[pos..];
                let Some(at) = rest.iter().position(|&b| b == d) else {
                    // The stream ends inside a frame.
                    if rest.len() > max {
                        events.push(Event::TooLong);
                    } else {
                        events.push(Event::Partial(rest.len()));
                    }
                    break;
                };
                pos += at + 1;
                let mut wire = &rest[..at];
                if wire.len() > max {
                    events.push(Event::TooLong);
                    continue;
                }
                if d == b'\n' && wire.last() == Some(&b'\r') {
                    wire = &wire[..wire.len() - 1];
                }
                if !escaped {
                    events.push(Event::Frame(Bytes::copy_from_slice(wire)));
                    continue;
                }
                events.push(match unescape(wire, d) {
                    Ok(payload) => Event::Frame(payload.into()),
                    Err(offset) => Event::BadEscape(offset),
                });
            }
        }
    }
    if !keep_going {
        if let Some(first_error) = events.iter().position(Event::is_error) {
            events.truncate(first_error + 1);
        }
    }
    events
}

/// The escaped form of `payload` (module docs), for the reference model.
pub fn escape(payload: &[u8], d: u8) -> Vec<u8> {
    let e = escape_byte(d);
    let mut out = Vec::with_capacity(payload.len());
    for (i, &b) in payload.iter().enumerate() {
        let trailing_cr = d == b'\n' && b == b'\r' && i + 1 == payload.len();
        if b == d || b == e || trailing_cr {
            out.push(e);
            out.push(b ^ 0x20);
        } else {
            out.push(b);
        }
    }
    out
}

/// Undoes [`escape`]; `Err(offset)` of the first bad escape.
pub fn unescape(wire: &[u8], d: u8) -> Result<Vec<u8>, usize> {
    let e = escape_byte(d);
    let mut out = Vec::with_capacity(wire.len());
    let mut i = 0;
    while i < wire.len() {
        let b = wire[i];
        if b != e {
            out.push(b);
            i += 1;
            continue;
        }
        let Some(&code) = wire.get(i + 1) else {
            return Err(i);
        };
        let byte = code ^ 0x20;
        if byte == d || byte == e || (d == b'\n' && byte == b'\r') {
            out.push(byte);
            i += 2;
        } else {
            return Err(i);
        }
    }
    Ok(out)
}
