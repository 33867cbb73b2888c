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

use crate::wire::error::Error;

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
/// Decoded frames are [`Bytes`] slices of the read buffer, never copies: in
/// escaped mode a frame's escape sequences are undone in place, in the read
/// buffer, as its bytes arrive (and a frame without any is only scanned).
/// So between calls the start of the buffer may hold a partly decoded
/// frame: only append to the buffer between calls. (A buffer that shrank
/// behind the codec's back, below the bytes it had scanned, is scanned anew
/// from its start; one replaced by a longer one is not noticed.)
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
    /// Escaped mode: the wire bytes `src[..next_index]` of the frame being
    /// read are already unescaped, in place, into `src[..unescaped]`.
    unescaped: usize,
    /// Escaped mode: the offset of the first bad escape in the frame being
    /// read, reported once its delimiter arrives.
    bad_escape: Option<usize>,
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
            unescaped: 0,
            bad_escape: None,
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

    #[inline]
    fn find_delimited(
        &mut self,
        src: &mut BytesMut,
        delimiter: u8,
        escaping: Escaping,
    ) -> Result<Option<Found>, Error> {
        let limit = self.framing.max_frame_length;
        loop {
            if self.next_index > src.len() {
                // The buffer shrank behind the codec's back (cleared by its
                // owner, or a cloned codec given a new buffer): scan it anew
                // rather than panic on the slice below.
                self.reset_scan();
            }
            if escaping == Escaping::Escaped && self.discard == 0 {
                return self.find_escaped(src, delimiter);
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
            let len = if delimiter == b'\n' && at > 0 && src[at - 1] == b'\r' {
                at - 1
            } else {
                at
            };
            return Ok(Some(Found {
                start: 0,
                len,
                wire: at + 1,
            }));
        }
    }

    /// Escaped mode, outside a discard: one pass over the wire, jumping
    /// from special byte to special byte (delimiter or escape) with
    /// `memchr2`, that unescapes the frame in place as it goes (each run
    /// between escapes is moved back once). A frame without escapes is
    /// only scanned, and is a slice of the read buffer.
    ///
    /// The work done on an incomplete frame is kept (`next_index`,
    /// `unescaped`, `bad_escape`), so no byte is scanned or moved twice.
    #[inline]
    fn find_escaped(&mut self, src: &mut BytesMut, delimiter: u8) -> Result<Option<Found>, Error> {
        let limit = self.framing.max_frame_length;
        let escape = escape_byte_for(delimiter);
        // The wire bytes src[..read] are unescaped into src[..write].
        let (mut read, mut write) = (self.next_index, self.unescaped);
        let at = loop {
            if self.bad_escape.is_some() {
                // The frame is lost: only its end matters now.
                match memchr::memchr(delimiter, &src[read..]) {
                    Some(found) => break Some(read + found),
                    None => {
                        read = src.len();
                        break None;
                    }
                }
            }
            let found = memchr::memchr2(delimiter, escape, &src[read..]);
            let run_end = found.map_or(src.len(), |found| read + found);
            if write != read {
                src.copy_within(read..run_end, write);
            }
            write += run_end - read;
            read = run_end;
            if found.is_none() {
                break None;
            }
            if src[read] == delimiter {
                break Some(read);
            }
            // An escape byte; its code may not have arrived yet.
            let Some(&code) = src.get(read + 1) else {
                break None;
            };
            let byte = code ^ ESCAPE_XOR;
            let escaped_cr = delimiter == b'\n' && byte == b'\r';
            if byte == delimiter || byte == escape || escaped_cr {
                src[write] = byte;
                write += 1;
                read += 2;
            } else {
                // Also an escape that ends the frame: the code is then the
                // delimiter (`D ^ 0x20` is never a valid byte) or a `\r`
                // that ends it (`0x0D ^ 0x20` never is either).
                self.bad_escape = Some(read);
                read += 1;
            }
        };
        let Some(at) = at else {
            self.next_index = read;
            self.unescaped = write;
            if src.len() > limit {
                return Err(self.too_long(src, None));
            }
            return Ok(None);
        };
        let bad_escape = self.bad_escape.take();
        self.next_index = 0;
        self.unescaped = 0;
        if at > limit {
            src.advance(at + 1);
            return Err(Error::FrameTooLong { len: at, limit });
        }
        if let Some(offset) = bad_escape {
            src.advance(at + 1);
            return Err(Error::BadEscape { offset });
        }
        // A raw `\r` before the delimiter (a text peer's `\r\n`) is the last
        // byte of the last run: an escaped one would have been refused
        // above. The wire byte is still in place: bytes only move down, and
        // the last byte before the delimiter only when nothing moved.
        if delimiter == b'\n' && at > 0 && src[at - 1] == b'\r' {
            write -= 1;
        }
        Ok(Some(Found {
            start: 0,
            len: write,
            wire: at + 1,
        }))
    }

    /// Forgets where the scan of the buffer stopped.
    fn reset_scan(&mut self) {
        self.next_index = 0;
        self.unescaped = 0;
        self.bad_escape = None;
    }

    #[inline]
    fn find_length_prefixed(&mut self, src: &mut BytesMut) -> Result<Option<Found>, Error> {
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
        Ok(Some(Found {
            start: LENGTH_HEADER,
            len,
            wire: LENGTH_HEADER + len,
        }))
    }

    /// Reports a too-long frame and starts dropping it: `Some(len)` drops
    /// the `len` announced bytes (length-prefixed), `None` everything up to
    /// the next delimiter (or the end of stream).
    fn too_long(&mut self, src: &mut BytesMut, announced: Option<usize>) -> Error {
        let limit = self.framing.max_frame_length;
        self.reset_scan();
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

/// Whether an escaped `\r` is needed: `\n` framing and a payload ending in `\r`.
fn needs_trailing_cr_escape(payload: &[u8], delimiter: u8) -> bool {
    delimiter == b'\n' && payload.last() == Some(&b'\r')
}

/// Escapes `dst[start..]` in place (see the module docs): counts the bytes
/// to escape, grows `dst` by one byte per escape, then moves the runs between
/// them back to front with `copy_within`, so each byte moves once and no byte
/// is overwritten before it is read.
fn escape_in_place(dst: &mut BytesMut, start: usize, delimiter: u8) {
    let escape = escape_byte_for(delimiter);
    let Some(first) = memchr::memchr2(delimiter, escape, &dst[start..]) else {
        if needs_trailing_cr_escape(&dst[start..], delimiter) {
            let last = dst.len() - 1;
            dst[last] = escape;
            dst.put_u8(b'\r' ^ ESCAPE_XOR);
        }
        return;
    };
    // Bytes before the first special one stay where they are.
    let first = start + first;
    let trailing_cr = needs_trailing_cr_escape(&dst[start..], delimiter);
    let specials = 1 + memchr::memchr2_iter(delimiter, escape, &dst[first + 1..]).count();
    let mut end = dst.len();
    dst.resize(end + specials + usize::from(trailing_cr), 0);
    // Example (D = '\n'): [41 0A 42] -> [41 FF 2A 42]. `end` is the end of the
    // bytes not yet moved, `write` the end of the room left for them.
    let mut write = dst.len();
    if trailing_cr {
        dst[write - 1] = b'\r' ^ ESCAPE_XOR;
        dst[write - 2] = escape;
        write -= 2;
        end -= 1;
    }
    while let Some(found) = memchr::memrchr2(delimiter, escape, &dst[first..end]) {
        let at = first + found;
        let run = end - at - 1;
        dst.copy_within(at + 1..end, write - run);
        write -= run;
        dst[write - 1] = dst[at] ^ ESCAPE_XOR;
        dst[write - 2] = escape;
        write -= 2;
        end = at;
    }
    debug_assert_eq!(write, end);
}

/// Appends `payload` escaped (see the module docs) to `dst`: the runs between
/// bytes to escape are copied whole.
fn escape_into(payload: &[u8], dst: &mut BytesMut, delimiter: u8) {
    let escape = escape_byte_for(delimiter);
    let (body, trailing_cr) = if needs_trailing_cr_escape(payload, delimiter) {
        (&payload[..payload.len() - 1], true)
    } else {
        (payload, false)
    };
    // Room for the escapes of random bytes (about 1 %), a `\r` pair and the
    // delimiter; more is reserved as needed.
    dst.reserve(body.len() + body.len() / 64 + 3);
    let mut rest = body;
    while let Some(found) = memchr::memchr2(delimiter, escape, rest) {
        dst.extend_from_slice(&rest[..found]);
        dst.put_slice(&[escape, rest[found] ^ ESCAPE_XOR]);
        rest = &rest[found + 1..];
    }
    dst.extend_from_slice(rest);
    if trailing_cr {
        dst.put_slice(&[escape, b'\r' ^ ESCAPE_XOR]);
    }
}

impl FrameCodec {
    /// Finds the next complete frame at the start of `src` without taking
    /// it out: its payload is `src[found.payload()]` (unescaped in place),
    /// and the caller removes its `found.wire` bytes with `src.advance`
    /// before the next call (or splits them off). What [`Decoder::decode`]
    /// does, minus making the frame a [`Bytes`]: for decoders that copy
    /// what they keep out of the frame, which then never touch a reference
    /// count.
    ///
    /// # Errors
    ///
    /// As [`Decoder::decode`] (the bad bytes are already dropped then).
    #[inline]
    pub(crate) fn next_frame(&mut self, src: &mut BytesMut) -> Result<Option<Found>, Error> {
        match self.framing.kind {
            Kind::Delimited {
                delimiter,
                escaping,
            } => self.find_delimited(src, delimiter, escaping),
            Kind::LengthPrefixed => self.find_length_prefixed(src),
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

    /// [`next_frame`](Self::next_frame) at the end of the stream: in EOF
    /// framing the whole buffer is the frame; otherwise what is left after
    /// the last complete frame is a [`Error::PartialFrame`].
    ///
    /// # Errors
    ///
    /// As [`Decoder::decode_eof`].
    #[inline]
    pub(crate) fn next_frame_eof(&mut self, src: &mut BytesMut) -> Result<Option<Found>, Error> {
        if let Some(found) = self.next_frame(src)? {
            return Ok(Some(found));
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
            return Ok(Some(Found {
                start: 0,
                len: src.len(),
                wire: src.len(),
            }));
        }
        let len = src.len();
        src.clear();
        self.reset_scan();
        Err(Error::PartialFrame { len })
    }
}

/// Where [`FrameCodec::next_frame`] found a frame, at the start of the read
/// buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    /// Where the payload starts (after a length header).
    pub(crate) start: usize,
    /// The payload's length, once unescaped.
    pub(crate) len: usize,
    /// The frame's bytes on the wire (header, escapes, delimiter): what to
    /// remove from the buffer once the payload has been used.
    pub(crate) wire: usize,
}

impl Found {
    /// The payload's place in the buffer.
    #[inline]
    pub(crate) fn payload(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.len
    }

    /// Splits the frame off `src` and returns its payload `within` (a
    /// range of [`payload`](Self::payload)) as [`Bytes`], without a copy.
    #[inline]
    pub(crate) fn split(&self, src: &mut BytesMut, within: std::ops::Range<usize>) -> Bytes {
        let mut frame = src.split_to(self.wire);
        frame.truncate(within.end);
        frame.advance(within.start);
        frame.freeze()
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        Ok(self
            .next_frame(src)?
            .map(|found| found.split(src, found.payload())))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        Ok(self
            .next_frame_eof(src)?
            .map(|found| found.split(src, found.payload())))
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = Error;

    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), Error> {
        if let Kind::Delimited {
            delimiter,
            escaping: Escaping::Escaped,
        } = self.framing.kind
        {
            // Escaped while copied: one pass over the payload, rather than
            // a copy then an escape in place as `encode_with` must do.
            let start = dst.len();
            escape_into(payload, dst, delimiter);
            if let Err(e) = check_len(dst.len() - start, self.framing.max_frame_length) {
                dst.truncate(start);
                return Err(e);
            }
            dst.put_u8(delimiter);
            return Ok(());
        }
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

    /// The escaping of the module docs, one byte at a time.
    fn escape_reference(payload: &[u8], delimiter: u8) -> Vec<u8> {
        let escape = escape_byte_for(delimiter);
        let mut out = Vec::new();
        for (i, &b) in payload.iter().enumerate() {
            let last_cr = delimiter == b'\n' && b == b'\r' && i + 1 == payload.len();
            if b == delimiter || b == escape || last_cr {
                out.extend_from_slice(&[escape, b ^ ESCAPE_XOR]);
            } else {
                out.push(b);
            }
        }
        out
    }

    /// Short payloads dense in special bytes, all of them for lengths 0..=4
    /// over an alphabet holding every special byte of `delimiter`.
    fn special_payloads(delimiter: u8) -> Vec<Vec<u8>> {
        let e = escape_byte_for(delimiter);
        let alphabet = [
            b'a',
            b'\r',
            delimiter,
            e,
            e ^ ESCAPE_XOR,
            delimiter ^ ESCAPE_XOR,
        ];
        let mut all = vec![Vec::new()];
        let mut last = vec![Vec::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for p in &last {
                for &b in &alphabet {
                    let mut q = p.clone();
                    q.push(b);
                    next.push(q);
                }
            }
            all.extend(next.iter().cloned());
            last = next;
        }
        all
    }

    #[test]
    fn both_escapers_and_the_decoder_agree_with_the_reference() {
        for delimiter in [b'\n', b';', 0x00, 0xFF, 0xDF, 0xFE, 0x2D] {
            for payload in special_payloads(delimiter) {
                let expected = escape_reference(&payload, delimiter);

                let mut copied = BytesMut::from(&b"prefix"[..]);
                escape_into(&payload, &mut copied, delimiter);
                assert_eq!(&copied[6..], &expected[..], "{delimiter:#x} {payload:x?}");

                let mut in_place = BytesMut::from(&b"prefix"[..]);
                in_place.extend_from_slice(&payload);
                escape_in_place(&mut in_place, 6, delimiter);
                assert_eq!(in_place, copied, "{delimiter:#x} {payload:x?}");

                let mut codec = FrameCodec::new(Framing::delimited(delimiter).escaped());
                let mut wire = BytesMut::from(&expected[..]);
                wire.put_u8(delimiter);
                let frame = codec.decode(&mut wire).unwrap().unwrap();
                assert_eq!(&frame[..], &payload[..], "{delimiter:#x} {payload:x?}");
                assert!(wire.is_empty());
            }
        }
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
