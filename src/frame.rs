//! Framing: where a frame starts and ends in a byte stream (pure, no I/O).
//!
//! A [`Framing`] says how a stream is cut into frames; a [`FrameCodec`] does the
//! cutting. It implements [`tokio_util::codec::Decoder`] and
//! [`tokio_util::codec::Encoder`], so it also works with
//! [`tokio_util::codec::Framed`] on any `AsyncRead + AsyncWrite`.
//!
//! # Modes
//!
//! | mode | on the wire | made by |
//! |---|---|---|
//! | delimited, raw | `payload D` | [`Framing::delimited`]`(D).`[`raw()`](Framing::raw) |
//! | delimited, escaped | `escape(payload) D` | [`Framing::delimited`]`(D).`[`escaped()`](Framing::escaped) |
//! | end of stream | `payload` then the sender closes its side | [`Framing::eof`] |
//! | length-prefixed | `len: u32 big-endian, payload` | [`Framing::length_prefixed`] |
//!
//! With the delimiter `b'\n'`, one trailing `b'\r'` is removed from each decoded
//! frame, as the Go original does, so text peers may send `\r\n`.
//!
//! ## Raw or escaped: the rule for [`Escaping::Auto`]
//!
//! A plain `Framing::delimited(D)` (or [`Framing::lines`]) leaves the choice to
//! the codec of the messages that travel on the connection:
//!
//! | codec ([`Codec::is_binary`](crate::Codec::is_binary)) | mode chosen | why |
//! |---|---|---|
//! | [`Text`](crate::Text), [`Raw`](crate::Raw) (`false`) | raw | byte-identical to the Go original's wire |
//! | [`Pod`](crate::PodCodec), [`Bincode`](crate::Bincode), `Postcard` (`true`) | escaped | a binary value may hold the delimiter byte |
//! | anything, after [`Framing::raw`] or [`Framing::escaped`] | as forced | |
//!
//! A [`FrameCodec`] built directly with [`FrameCodec::new`] from an `Auto`
//! framing uses raw mode (it carries raw bytes).
//!
//! ## Raw mode
//!
//! Nothing is escaped: every byte but the delimiter passes through untouched.
//! Encoding a payload that contains the delimiter fails with
//! [`Error::DelimiterInPayload`] naming its offset, and nothing is written.
//! With `b'\n'`, a payload ending in `b'\r'` loses that byte on decode (as in
//! the Go original).
//!
//! ## Escaped mode (byte stuffing)
//!
//! The escape byte `E` is `0xFF`, a byte that never occurs in UTF-8 text; when
//! the delimiter is `0xFF` or `0xDF` it is `0xFE` instead. A byte `b` that must
//! not appear as itself is written as the pair `E, b ^ 0x20`:
//!
//! - the delimiter `D` (so it never splits a frame),
//! - the escape byte `E` itself,
//! - with `D = b'\n'`, a `b'\r'` that ends the payload (so the `\r` removal
//!   above cannot eat it).
//!
//! Every other byte stands for itself, so text without `0xFF` looks the same
//! in both modes. For example, with `D = b'\n'`:
//!
//! ```text
//! payload  41 0A FF 42 0D      "A\n" 0xFF "B\r"
//! wire     41 FF 2A FF DF 42 FF 2D 0A
//! ```
//!
//! Decoding an `E` that is not followed by one of these codes (or that ends
//! the frame) is [`Error::BadEscape`]. Every byte string round-trips exactly.
//!
//! # Limits
//!
//! Every framing has a maximum frame length, 1 MiB unless set with
//! [`Framing::max_frame_length`]. It bounds the frame as it stands on the wire
//! (escaped, without delimiter or length header). A peer that sends more
//! without a delimiter gets [`Error::FrameTooLong`] as soon as the buffered
//! bytes pass the limit, so the decoder never holds more than the limit plus
//! one read. After that error the decoder drops bytes up to the end of the
//! offending frame; a chitchat-net connection closes.
//!
//! # Examples
//!
//! ```
//! use bytes::BytesMut;
//! use chitchat_net::{FrameCodec, Framing};
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! let mut codec = FrameCodec::new(Framing::lines().escaped());
//! let mut wire = BytesMut::new();
//! codec.encode(&b"one\ntwo"[..], &mut wire).unwrap();
//! assert_eq!(&wire[..], b"one\xFF\x2Atwo\n");
//! assert_eq!(codec.decode(&mut wire).unwrap().unwrap(), &b"one\ntwo"[..]);
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::Error;

/// The default maximum frame length: 1 MiB.
pub const DEFAULT_MAX_FRAME_LENGTH: usize = 1024 * 1024;

/// Length of the header in [`Framing::length_prefixed`] mode.
const LENGTH_HEADER: usize = 4;

/// XOR applied to an escaped byte.
const ESCAPE_XOR: u8 = 0x20;

/// Whether a delimited framing escapes its payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Escaping {
    /// Chosen by the codec: escaped for binary codecs, raw for text and raw
    /// bytes (see the [module docs](self)).
    Auto,
    /// Byte stuffing: any payload is allowed.
    Escaped,
    /// Byte-identical to the Go original: payloads holding the delimiter are
    /// refused at encode time.
    Raw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Delimited { delimiter: u8, escaping: Escaping },
    Eof,
    LengthPrefixed,
}

/// How a byte stream is cut into frames. See the [module docs](self) for the
/// wire format of each mode.
///
/// # Examples
///
/// ```
/// use chitchat_net::{Escaping, Framing};
///
/// let f = Framing::delimited(b';').max_frame_length(64 * 1024);
/// assert_eq!(f.delimiter(), Some(b';'));
/// assert_eq!(f.escaping(), Some(Escaping::Auto));
/// assert_eq!(f.resolve(true).escaping(), Some(Escaping::Escaped));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Framing {
    kind: Kind,
    max_frame_length: usize,
}

impl Default for Framing {
    /// [`Framing::lines`].
    fn default() -> Self {
        Framing::lines()
    }
}

impl Framing {
    /// Frames end with `delimiter`; raw or escaped as the codec needs
    /// ([`Escaping::Auto`]).
    pub fn delimited(delimiter: u8) -> Self {
        Framing {
            kind: Kind::Delimited {
                delimiter,
                escaping: Escaping::Auto,
            },
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
        }
    }

    /// Frames end with `b'\n'` (a trailing `b'\r'` is removed on decode).
    pub fn lines() -> Self {
        Framing::delimited(b'\n')
    }

    /// One frame per stream: everything until the peer ends the stream (the
    /// Go original's delimiter 0). An empty stream yields no frame.
    pub fn eof() -> Self {
        Framing {
            kind: Kind::Eof,
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
        }
    }

    /// Each frame is preceded by its length as a big-endian `u32`.
    pub fn length_prefixed() -> Self {
        Framing {
            kind: Kind::LengthPrefixed,
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
        }
    }

    /// Forces escaped mode (no effect unless delimited).
    pub fn escaped(self) -> Self {
        self.with_escaping(Escaping::Escaped)
    }

    /// Forces raw mode (no effect unless delimited).
    pub fn raw(self) -> Self {
        self.with_escaping(Escaping::Raw)
    }

    /// Sets the escaping of a delimited framing (no effect otherwise).
    pub fn with_escaping(mut self, escaping: Escaping) -> Self {
        if let Kind::Delimited { delimiter, .. } = self.kind {
            self.kind = Kind::Delimited {
                delimiter,
                escaping,
            };
        }
        self
    }

    /// Sets the maximum frame length in bytes (default 1 MiB). It bounds the
    /// memory one connection's decoder may hold, so keep it finite.
    pub fn max_frame_length(mut self, max: usize) -> Self {
        self.max_frame_length = max;
        self
    }

    /// The maximum frame length in bytes.
    pub fn max_length(&self) -> usize {
        self.max_frame_length
    }

    /// The delimiter byte, if this framing is delimited.
    pub fn delimiter(&self) -> Option<u8> {
        match self.kind {
            Kind::Delimited { delimiter, .. } => Some(delimiter),
            _ => None,
        }
    }

    /// The escaping, if this framing is delimited.
    pub fn escaping(&self) -> Option<Escaping> {
        match self.kind {
            Kind::Delimited { escaping, .. } => Some(escaping),
            _ => None,
        }
    }

    /// Whether this is end-of-stream framing.
    pub fn is_eof(&self) -> bool {
        self.kind == Kind::Eof
    }

    /// Whether this is length-prefixed framing.
    pub fn is_length_prefixed(&self) -> bool {
        self.kind == Kind::LengthPrefixed
    }

    /// Replaces [`Escaping::Auto`] by escaped mode for a binary codec and raw
    /// mode otherwise; any other framing is returned unchanged.
    pub fn resolve(self, binary: bool) -> Self {
        match self.escaping() {
            Some(Escaping::Auto) if binary => self.escaped(),
            Some(Escaping::Auto) => self.raw(),
            _ => self,
        }
    }

    /// The escape byte used in escaped mode with this framing's delimiter.
    pub fn escape_byte(&self) -> Option<u8> {
        self.delimiter().map(escape_byte_for)
    }
}

fn escape_byte_for(delimiter: u8) -> u8 {
    // 0xFF ^ 0x20 == 0xDF: with that delimiter an escaped 0xFF would be a delimiter.
    if delimiter == 0xFF || delimiter == 0xDF {
        0xFE
    } else {
        0xFF
    }
}

/// Cuts a byte stream into frames and back, as a [`Framing`] says.
///
/// Decoded frames are [`Bytes`] slices of the read buffer: no copy unless an
/// escaped frame holds escape sequences.
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use chitchat_net::{Error, FrameCodec, Framing};
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let mut codec = FrameCodec::new(Framing::lines());
/// let mut buf = BytesMut::from(&b"ping\r\npo"[..]);
/// assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), &b"ping"[..]);
/// assert_eq!(codec.decode(&mut buf).unwrap(), None); // "po" waits for more
/// assert!(matches!(codec.decode_eof(&mut buf), Err(Error::PartialFrame { len: 2 })));
///
/// // Raw mode refuses a payload that would split its frame.
/// let mut out = BytesMut::new();
/// let err = codec.encode(&b"a\nb"[..], &mut out).unwrap_err();
/// assert!(matches!(err, Error::DelimiterInPayload { offset: 1, .. }));
/// assert!(out.is_empty());
/// ```
#[derive(Debug)]
pub struct FrameCodec {
    framing: Framing,
    /// Delimited modes: where the next delimiter search starts, so bytes
    /// already scanned are never scanned again.
    next_index: usize,
    /// After a too-long frame: bytes still to drop (length-prefixed), or
    /// drop until the next delimiter (`usize::MAX`).
    discard: usize,
}

impl Clone for FrameCodec {
    /// A fresh codec with the same framing: the scan state belongs to one
    /// buffer and is not copied.
    fn clone(&self) -> Self {
        FrameCodec::new(self.framing)
    }
}

impl FrameCodec {
    /// A codec for `framing`; [`Escaping::Auto`] is taken as raw.
    pub fn new(framing: Framing) -> Self {
        FrameCodec {
            framing: framing.resolve(false),
            next_index: 0,
            discard: 0,
        }
    }

    /// The framing this codec applies (never [`Escaping::Auto`]).
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Appends one frame to `dst`, its payload written in place by `write`.
    ///
    /// This is how typed values are framed without an intermediate buffer:
    /// `write` encodes straight into `dst`, then the frame is finished in
    /// place (escaped, delimited, or its length header filled in).
    ///
    /// # Errors
    ///
    /// Whatever `write` returns; [`Error::DelimiterInPayload`] in raw mode;
    /// [`Error::FrameTooLong`] if the frame exceeds the maximum. On error
    /// `dst` is left as it was.
    pub fn encode_with<F>(&self, dst: &mut BytesMut, write: F) -> Result<(), Error>
    where
        F: FnOnce(&mut BytesMut) -> Result<(), Error>,
    {
        let start = dst.len();
        let result = self.encode_in_place(dst, start, write);
        if result.is_err() {
            dst.truncate(start);
        }
        result
    }

    fn encode_in_place<F>(&self, dst: &mut BytesMut, start: usize, write: F) -> Result<(), Error>
    where
        F: FnOnce(&mut BytesMut) -> Result<(), Error>,
    {
        let limit = self.framing.max_frame_length;
        match self.framing.kind {
            Kind::Eof => {
                write(dst)?;
                check_len(dst.len() - start, limit)
            }
            Kind::LengthPrefixed => {
                dst.put_u32(0);
                write(dst)?;
                let len = dst.len() - start - LENGTH_HEADER;
                check_len(len, limit)?;
                let header = u32::try_from(len).map_err(|_| Error::FrameTooLong { len, limit })?;
                dst[start..start + LENGTH_HEADER].copy_from_slice(&header.to_be_bytes());
                Ok(())
            }
            Kind::Delimited {
                delimiter,
                escaping,
            } => {
                write(dst)?;
                if escaping == Escaping::Escaped {
                    escape_in_place(dst, start, delimiter);
                } else if let Some(offset) = memchr::memchr(delimiter, &dst[start..]) {
                    return Err(Error::DelimiterInPayload { delimiter, offset });
                }
                check_len(dst.len() - start, limit)?;
                dst.put_u8(delimiter);
                Ok(())
            }
        }
    }

    fn decode_delimited(
        &mut self,
        src: &mut BytesMut,
        delimiter: u8,
        escaping: Escaping,
    ) -> Result<Option<Bytes>, Error> {
        let limit = self.framing.max_frame_length;
        loop {
            if self.next_index > src.len() {
                // The buffer shrank behind the codec's back (cleared by its
                // owner, or a cloned codec given a new buffer): scan it anew
                // rather than panic on the slice below.
                self.next_index = 0;
            }
            let Some(found) = memchr::memchr(delimiter, &src[self.next_index..]) else {
                if self.discard > 0 {
                    src.clear();
                    self.next_index = 0;
                    return Ok(None);
                }
                self.next_index = src.len();
                if src.len() > limit {
                    return Err(self.too_long(src, None));
                }
                return Ok(None);
            };
            let at = self.next_index + found;
            self.next_index = 0;
            if self.discard > 0 {
                // The rest of a too-long frame: drop it with its delimiter.
                src.advance(at + 1);
                self.discard = 0;
                continue;
            }
            if at > limit {
                src.advance(at + 1);
                return Err(Error::FrameTooLong { len: at, limit });
            }
            let mut frame = src.split_to(at + 1).freeze();
            frame.truncate(at);
            if delimiter == b'\n' && frame.last() == Some(&b'\r') {
                frame.truncate(at - 1);
            }
            if escaping == Escaping::Escaped {
                frame = unescape(frame, delimiter)?;
            }
            return Ok(Some(frame));
        }
    }

    fn decode_length_prefixed(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        if self.discard > 0 {
            let n = self.discard.min(src.len());
            src.advance(n);
            self.discard -= n;
            if self.discard > 0 {
                return Ok(None);
            }
        }
        if src.len() < LENGTH_HEADER {
            return Ok(None);
        }
        let mut header = [0u8; LENGTH_HEADER];
        header.copy_from_slice(&src[..LENGTH_HEADER]);
        let len = u32::from_be_bytes(header) as usize;
        let limit = self.framing.max_frame_length;
        if len > limit {
            src.advance(LENGTH_HEADER);
            return Err(self.too_long(src, Some(len)));
        }
        if src.len() < LENGTH_HEADER + len {
            src.reserve(LENGTH_HEADER + len - src.len());
            return Ok(None);
        }
        src.advance(LENGTH_HEADER);
        Ok(Some(src.split_to(len).freeze()))
    }

    /// Reports a too-long frame and starts dropping it: `Some(len)` drops
    /// the `len` announced bytes (length-prefixed), `None` everything up to
    /// the next delimiter (or the end of stream).
    fn too_long(&mut self, src: &mut BytesMut, announced: Option<usize>) -> Error {
        let limit = self.framing.max_frame_length;
        self.next_index = 0;
        let len = match announced {
            None => {
                let seen = src.len();
                src.clear();
                self.discard = usize::MAX;
                seen
            }
            Some(len) => {
                let dropped = src.len().min(len);
                src.advance(dropped);
                self.discard = len - dropped;
                len
            }
        };
        Error::FrameTooLong { len, limit }
    }
}

fn check_len(len: usize, limit: usize) -> Result<(), Error> {
    if len > limit {
        Err(Error::FrameTooLong { len, limit })
    } else {
        Ok(())
    }
}

/// Escapes `dst[start..]` in place (see the module docs): grows `dst` by one
/// byte per escape, then moves bytes back to front.
fn escape_in_place(dst: &mut BytesMut, start: usize, delimiter: u8) {
    let escape = escape_byte_for(delimiter);
    let trailing_cr = delimiter == b'\n' && dst.len() > start && dst[dst.len() - 1] == b'\r';
    let specials = memchr::memchr2_iter(delimiter, escape, &dst[start..]).count();
    let extra = specials + usize::from(trailing_cr);
    if extra == 0 {
        return;
    }
    let old_len = dst.len();
    dst.resize(old_len + extra, 0);
    // Example (D = '\n'): [41 0A 42] -> [41 FF 2A 42]; read from the old end,
    // write from the new end, so no byte is overwritten before it is read.
    let mut write = dst.len();
    for read in (start..old_len).rev() {
        let b = dst[read];
        let needs_escape = b == delimiter || b == escape || (trailing_cr && read == old_len - 1);
        if needs_escape {
            dst[write - 1] = b ^ ESCAPE_XOR;
            dst[write - 2] = escape;
            write -= 2;
        } else {
            dst[write - 1] = b;
            write -= 1;
        }
    }
    debug_assert_eq!(write, start);
}

/// Undoes [`escape_in_place`] on one wire frame.
fn unescape(frame: Bytes, delimiter: u8) -> Result<Bytes, Error> {
    let escape = escape_byte_for(delimiter);
    let Some(first) = memchr::memchr(escape, &frame) else {
        return Ok(frame);
    };
    let mut out = BytesMut::with_capacity(frame.len() - 1);
    out.extend_from_slice(&frame[..first]);
    let mut rest = first;
    while let Some(found) = memchr::memchr(escape, &frame[rest..]) {
        let at = rest + found;
        out.extend_from_slice(&frame[rest..at]);
        let code = *frame.get(at + 1).ok_or(Error::BadEscape { offset: at })?;
        let byte = code ^ ESCAPE_XOR;
        let escaped_cr = delimiter == b'\n' && byte == b'\r';
        if byte != delimiter && byte != escape && !escaped_cr {
            return Err(Error::BadEscape { offset: at });
        }
        out.put_u8(byte);
        rest = at + 2;
    }
    out.extend_from_slice(&frame[rest..]);
    Ok(out.freeze())
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        match self.framing.kind {
            Kind::Delimited {
                delimiter,
                escaping,
            } => self.decode_delimited(src, delimiter, escaping),
            Kind::LengthPrefixed => self.decode_length_prefixed(src),
            Kind::Eof => {
                if self.discard > 0 {
                    src.clear();
                    Ok(None)
                } else if src.len() > self.framing.max_frame_length {
                    Err(self.too_long(src, None))
                } else {
                    Ok(None)
                }
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        if self.discard > 0 {
            src.clear();
            self.discard = 0;
            return Ok(None);
        }
        if src.is_empty() {
            return Ok(None);
        }
        if self.framing.kind == Kind::Eof {
            return Ok(Some(src.split().freeze()));
        }
        let len = src.len();
        src.clear();
        self.next_index = 0;
        Err(Error::PartialFrame { len })
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = Error;

    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), Error> {
        self.encode_with(dst, |dst| {
            dst.extend_from_slice(payload);
            Ok(())
        })
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = Error;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), Error> {
        Encoder::<&[u8]>::encode(self, &payload, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(framing: Framing, payload: &[u8]) -> Vec<u8> {
        let mut dst = BytesMut::new();
        FrameCodec::new(framing).encode(payload, &mut dst).unwrap();
        dst.to_vec()
    }

    #[test]
    fn escape_byte_is_never_the_delimiter_or_its_escaped_form() {
        for d in 0..=255u8 {
            let e = escape_byte_for(d);
            assert_ne!(e, d);
            assert_ne!(
                e ^ ESCAPE_XOR,
                d,
                "escaped escape byte is the delimiter {d:#x}"
            );
            assert_ne!(d ^ ESCAPE_XOR, d);
        }
    }

    #[test]
    fn escaped_wire_format_matches_module_docs() {
        let got = wire(Framing::lines().escaped(), b"A\n\xFFB\r");
        assert_eq!(got, b"A\xFF\x2A\xFF\xDFB\xFF\x2D\n");
    }

    #[test]
    fn escaping_with_delimiter_ff_uses_fe() {
        let got = wire(Framing::delimited(0xFF).escaped(), b"\xFF\xFE");
        assert_eq!(got, b"\xFE\xDF\xFE\xDE\xFF");
    }

    #[test]
    fn delimiter_search_resumes_where_it_stopped() {
        for framing in [Framing::lines().raw(), Framing::delimited(0xFF).escaped()] {
            let mut codec = FrameCodec::new(framing);
            let mut buf = BytesMut::new();
            for _ in 0..100 {
                buf.extend_from_slice(b"0123456789");
                assert_eq!(codec.decode(&mut buf).unwrap(), None);
                // Everything buffered has been scanned once: the next search
                // starts after it.
                assert_eq!(codec.next_index, buf.len());
            }
            buf.put_u8(framing.delimiter().unwrap());
            buf.extend_from_slice(b"rest");
            assert_eq!(codec.decode(&mut buf).unwrap().unwrap().len(), 1000);
            assert_eq!(codec.decode(&mut buf).unwrap(), None);
            assert_eq!(codec.next_index, 4);
        }
    }

    #[test]
    fn delimiter_search_survives_a_buffer_cleared_behind_its_back() {
        let mut codec = FrameCodec::new(Framing::lines().raw());
        let mut buf = BytesMut::from(&b"partial"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.clear();
        buf.extend_from_slice(b"ok\n");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), &b"ok"[..]);
    }

    #[test]
    fn discard_after_too_long_resyncs_at_next_delimiter() {
        let mut codec = FrameCodec::new(Framing::lines().max_frame_length(4));
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(Error::FrameTooLong { len: 6, limit: 4 })
        ));
        assert!(buf.is_empty());
        buf.extend_from_slice(b"gh\nok\n");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), &b"ok"[..]);
    }
}
