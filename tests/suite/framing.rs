//! The framing layer through its public API: `FrameCodec` as a tokio-util
//! `Decoder`/`Encoder`, fed by hand and through `Framed` over a duplex pipe.

use bytes::{BufMut, Bytes, BytesMut};
use chitchat_net::{Error, Escaping, FrameCodec, Framing, DEFAULT_MAX_FRAME_LENGTH};
use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder, Framed};

/// The delimiters every delimited test runs with: the usual ones, and those
/// that collide with the escape byte (0xFF, 0xDF) or with the other escape
/// byte (0xFE).
const DELIMITERS: [u8; 6] = [b'\n', b';', 0x00, 0xFF, 0xDF, 0xFE];

/// Bytes that mean something to some framing: delimiters, escape bytes,
/// their escaped forms, `\r`.
const SPECIALS: [u8; 11] = [
    b'\n', b'\r', b';', 0x00, 0xFF, 0xDF, 0xFE, 0xDE, 0x2A, 0x2D, 0x20,
];

/// Length of the length-prefixed header.
const HEADER: usize = 4;

/// Every framing (raw and escaped for each delimiter, EOF, length-prefixed)
/// with the given maximum frame length.
fn all_framings(limit: usize) -> Vec<Framing> {
    let mut framings = Vec::new();
    for d in DELIMITERS {
        framings.push(Framing::delimited(d).raw().max_frame_length(limit));
        framings.push(Framing::delimited(d).escaped().max_frame_length(limit));
    }
    framings.push(Framing::eof().max_frame_length(limit));
    framings.push(Framing::length_prefixed().max_frame_length(limit));
    framings
}

/// The delimited framings only.
fn delimited_framings(limit: usize) -> Vec<Framing> {
    all_framings(limit)
        .into_iter()
        .filter(|f| f.delimiter().is_some())
        .collect()
}

/// The most bytes a decoder may still hold after it has returned
/// `Ok(None)`: an incomplete frame (with its header if length-prefixed).
fn held_bound(framing: Framing) -> usize {
    if framing.is_length_prefixed() {
        framing.max_length() + HEADER
    } else {
        framing.max_length()
    }
}

/// A payload the framing carries unchanged: no delimiter in raw mode, and
/// no trailing `\r` in raw mode with `\n`.
fn sanitize(framing: Framing, payload: &[u8]) -> Vec<u8> {
    let mut payload = payload.to_vec();
    if framing.escaping() == Some(Escaping::Raw) {
        let d = framing.delimiter().unwrap();
        payload.retain(|&b| b != d);
        if d == b'\n' {
            while payload.last() == Some(&b'\r') {
                payload.pop();
            }
        }
    }
    payload
}

fn encode(codec: &mut FrameCodec, payloads: &[Vec<u8>]) -> BytesMut {
    let mut wire = BytesMut::new();
    for p in payloads {
        codec.encode(&p[..], &mut wire).unwrap();
    }
    wire
}

/// What a decoder returned, in order, for a whole stream.
type Outcomes = Vec<Result<Bytes, Error>>;

/// Calls `decode` until it returns `Ok(None)`, going on after errors (the
/// codec is meant to recover from them).
fn drain(codec: &mut FrameCodec, src: &mut BytesMut, out: &mut Outcomes) {
    for _ in 0..100_000 {
        match codec.decode(src) {
            Ok(None) => return,
            other => out.push(other.map(Option::unwrap)),
        }
    }
    panic!("decode never returned Ok(None)");
}

/// Feeds `wire` to a fresh codec in chunks whose sizes cycle through
/// `chunks` (a 0 counts as 1), drains after each chunk, then ends the stream
/// as `Framed` does (`decode_eof` until `Ok(None)` or an error). Checks that
/// the decoder never holds more than its bound plus one chunk.
fn decode_stream(framing: Framing, wire: &[u8], chunks: &[usize]) -> Outcomes {
    let mut codec = FrameCodec::new(framing);
    let bound = held_bound(codec.framing());
    let mut src = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = wire;
    let mut sizes = chunks.iter().copied().cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(usize::MAX).max(1).min(rest.len());
        assert!(
            src.len() <= bound,
            "holds {} > {bound} before a feed",
            src.len()
        );
        src.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        drain(&mut codec, &mut src, &mut out);
        assert!(
            src.len() <= bound,
            "{framing:?}: holds {} bytes after draining, bound {bound}",
            src.len()
        );
    }
    for _ in 0..100_000 {
        match codec.decode_eof(&mut src) {
            Ok(None) => return out,
            Ok(Some(frame)) => out.push(Ok(frame)),
            Err(e) => {
                out.push(Err(e));
                return out;
            }
        }
    }
    panic!("decode_eof never returned Ok(None)");
}

/// The frames of a stream that must hold no error.
fn frames(outcomes: Outcomes) -> Vec<Vec<u8>> {
    outcomes
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|e| panic!("unexpected error {e:?}"))
                .to_vec()
        })
        .collect()
}

fn one_at_a_time() -> &'static [usize] {
    &[1]
}

fn whole() -> &'static [usize] {
    &[usize::MAX]
}

fn assert_too_long(result: &Result<Bytes, Error>, len: usize, limit: usize) {
    match result {
        Err(Error::FrameTooLong { len: l, limit: m }) => {
            assert_eq!((*l, *m), (len, limit), "FrameTooLong fields");
        }
        other => panic!("expected FrameTooLong {{ len: {len}, limit: {limit} }}, got {other:?}"),
    }
}

/// A wire frame of `n` bytes (none special), as the framing sends it, bypassing
/// the encoder's length check.
fn raw_wire_frame(framing: Framing, n: usize) -> Vec<u8> {
    let body = vec![b'a'; n];
    let mut wire = Vec::new();
    if framing.is_length_prefixed() {
        wire.extend_from_slice(&(n as u32).to_be_bytes());
        wire.extend_from_slice(&body);
    } else {
        wire.extend_from_slice(&body);
        if let Some(d) = framing.delimiter() {
            wire.push(d);
        }
    }
    wire
}

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

#[test]
fn frame_exactly_at_max_length_round_trips_in_every_mode() {
    let limit = 16;
    for framing in all_framings(limit) {
        let payload = vec![b'x'; limit];
        let mut codec = FrameCodec::new(framing);
        let wire = encode(&mut codec, std::slice::from_ref(&payload));
        for chunks in [whole(), one_at_a_time()] {
            let got = frames(decode_stream(framing, &wire, chunks));
            assert_eq!(got, vec![payload.clone()], "{framing:?}");
        }
    }
}

#[test]
fn escaped_frame_whose_wire_form_is_exactly_max_length_is_accepted() {
    let limit = 16;
    for framing in delimited_framings(limit) {
        if framing.escaping() != Some(Escaping::Escaped) {
            continue;
        }
        // 14 plain bytes and one escaped delimiter: 16 bytes on the wire.
        let mut payload = vec![b'x'; limit - 2];
        payload.push(framing.delimiter().unwrap());
        let mut wire = BytesMut::new();
        FrameCodec::new(framing)
            .encode(&payload[..], &mut wire)
            .unwrap();
        assert_eq!(wire.len(), limit + 1, "{framing:?}");
        assert_eq!(
            frames(decode_stream(framing, &wire, whole())),
            vec![payload]
        );
    }
}

#[test]
fn one_byte_over_max_length_is_frame_too_long_on_decode() {
    let limit = 16;
    for framing in all_framings(limit) {
        let wire = raw_wire_frame(framing, limit + 1);
        for chunks in [whole(), one_at_a_time(), &[3, 5][..]] {
            let out = decode_stream(framing, &wire, chunks);
            assert_eq!(out.len(), 1, "{framing:?} {chunks:?}: {out:?}");
            assert_too_long(&out[0], limit + 1, limit);
        }
    }
}

#[test]
fn length_prefixed_overflow_is_reported_as_soon_as_the_header_arrives() {
    let mut codec = FrameCodec::new(Framing::length_prefixed().max_frame_length(100));
    let mut src = BytesMut::from(&1_000_000u32.to_be_bytes()[..3]);
    assert!(codec.decode(&mut src).unwrap().is_none());
    src.put_u8(1_000_000u32.to_be_bytes()[3]);
    assert!(matches!(
        codec.decode(&mut src),
        Err(Error::FrameTooLong {
            len: 1_000_000,
            limit: 100
        })
    ));
    assert!(src.is_empty());
    // It does not reserve room for the announced frame either.
    assert!(src.capacity() < 1_000_000);
}

#[test]
fn delimited_overflow_is_reported_once_limit_is_passed_without_delimiter() {
    // The decoder must not wait for the delimiter to refuse a long frame.
    for framing in delimited_framings(8) {
        let mut codec = FrameCodec::new(framing);
        let mut src = BytesMut::from(&[b'a'; 8][..]);
        assert!(codec.decode(&mut src).unwrap().is_none(), "{framing:?}");
        src.put_u8(b'a');
        let err = codec.decode(&mut src);
        assert!(
            matches!(err, Err(Error::FrameTooLong { len: 9, limit: 8 })),
            "{framing:?}: {err:?}"
        );
        assert!(src.is_empty());
    }
}

#[test]
fn decoder_never_holds_more_than_limit_plus_one_feed() {
    // A stream that never ends a frame, fed in chunks of several sizes:
    // decode_stream asserts the bound after every feed.
    let limit = 64;
    let garbage: Vec<u8> = (0..5_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    for framing in all_framings(limit) {
        for chunks in [&[1][..], &[7][..], &[63, 64, 65][..], &[1000][..]] {
            let out = decode_stream(framing, &garbage, chunks);
            assert!(
                out.iter()
                    .all(|r| matches!(r, Err(Error::FrameTooLong { limit: 64, .. }))),
                "{framing:?}: {out:?}"
            );
        }
    }
}

#[test]
fn default_max_frame_length_is_one_mebibyte() {
    assert_eq!(DEFAULT_MAX_FRAME_LENGTH, 1024 * 1024);
    for framing in [Framing::lines(), Framing::eof(), Framing::length_prefixed()] {
        assert_eq!(framing.max_length(), DEFAULT_MAX_FRAME_LENGTH);
    }
}

// ---------------------------------------------------------------------------
// Splitting and batching
// ---------------------------------------------------------------------------

fn sample_payloads() -> Vec<Vec<u8>> {
    vec![
        b"hello".to_vec(),
        Vec::new(),
        b"a\nb;c\0d\xFFe\xDFf\xFEg".to_vec(),
        (0..=255u8).collect(),
        b"end\r".to_vec(),
    ]
}

#[test]
fn frames_split_one_byte_at_a_time_decode_in_every_mode() {
    for framing in all_framings(1024) {
        let payloads: Vec<Vec<u8>> = if framing.is_eof() {
            vec![b"a whole\nstream;\0\xFF".to_vec()]
        } else {
            sample_payloads()
                .iter()
                .map(|p| sanitize(framing, p))
                .collect()
        };
        let wire = encode(&mut FrameCodec::new(framing), &payloads);
        let got = frames(decode_stream(framing, &wire, one_at_a_time()));
        assert_eq!(got, payloads, "{framing:?}");
    }
}

#[test]
fn several_frames_in_one_read_all_decode() {
    for framing in all_framings(1024) {
        if framing.is_eof() {
            continue;
        }
        let payloads: Vec<Vec<u8>> = sample_payloads()
            .iter()
            .map(|p| sanitize(framing, p))
            .collect();
        let wire = encode(&mut FrameCodec::new(framing), &payloads);
        let mut codec = FrameCodec::new(framing);
        let mut src = BytesMut::from(&wire[..]);
        let mut got = Vec::new();
        while let Some(frame) = codec.decode(&mut src).unwrap() {
            got.push(frame.to_vec());
        }
        assert_eq!(got, payloads, "{framing:?}");
        assert!(src.is_empty());
    }
}

#[test]
fn long_frame_fed_in_many_small_pieces_decodes_correctly() {
    let limit = 200_000;
    for framing in all_framings(limit) {
        let payload: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        let payload = sanitize(framing, &payload);
        let payloads = vec![payload, b"next".to_vec()];
        let payloads = if framing.is_eof() {
            payloads[..1].to_vec()
        } else {
            payloads
        };
        let wire = encode(&mut FrameCodec::new(framing), &payloads);
        let got = frames(decode_stream(framing, &wire, &[7, 13, 1]));
        assert_eq!(got, payloads, "{framing:?}");
    }
}

#[test]
fn decoded_frames_do_not_copy_unescaped_payloads() {
    // A frame without escape sequences is a slice of the read buffer.
    let mut codec = FrameCodec::new(Framing::lines().escaped());
    let mut src = BytesMut::from(&b"plain\n"[..]);
    let base = src.as_ptr();
    let frame = codec.decode(&mut src).unwrap().unwrap();
    assert_eq!(frame.as_ptr(), base);
}

// ---------------------------------------------------------------------------
// Recovery after an overflow
// ---------------------------------------------------------------------------

#[test]
fn delimited_overflow_resyncs_at_next_delimiter() {
    let limit = 8;
    for framing in delimited_framings(limit) {
        let d = framing.delimiter().unwrap();
        let mut wire = vec![b'z'; 50];
        wire.push(d);
        wire.extend_from_slice(b"ok");
        wire.push(d);
        wire.extend_from_slice(b"ok2");
        wire.push(d);
        for chunks in [whole(), one_at_a_time(), &[5, 11][..]] {
            let out = decode_stream(framing, &wire, chunks);
            assert_eq!(out.len(), 3, "{framing:?} {chunks:?}: {out:?}");
            assert!(
                matches!(out[0], Err(Error::FrameTooLong { limit: 8, len }) if len > limit),
                "{framing:?}: {:?}",
                out[0]
            );
            assert_eq!(&out[1].as_ref().unwrap()[..], b"ok");
            assert_eq!(&out[2].as_ref().unwrap()[..], b"ok2");
        }
    }
}

#[test]
fn delimited_overflow_with_whole_frame_in_buffer_reports_its_length() {
    let mut codec = FrameCodec::new(Framing::delimited(b';').raw().max_frame_length(4));
    let mut src = BytesMut::from(&b"abcdef;ok;"[..]);
    assert!(matches!(
        codec.decode(&mut src),
        Err(Error::FrameTooLong { len: 6, limit: 4 })
    ));
    assert_eq!(&codec.decode(&mut src).unwrap().unwrap()[..], b"ok");
}

#[test]
fn length_prefixed_overflow_skips_the_announced_bytes() {
    let limit = 8;
    let framing = Framing::length_prefixed().max_frame_length(limit);
    // The too-long payload looks like headers and frames: none may be read.
    let mut bad_payload = Vec::new();
    for _ in 0..5 {
        bad_payload.extend_from_slice(&1u32.to_be_bytes());
        bad_payload.push(b'!');
    }
    let mut wire = (bad_payload.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&bad_payload);
    wire.extend_from_slice(&2u32.to_be_bytes());
    wire.extend_from_slice(b"ok");
    for chunks in [whole(), one_at_a_time(), &[3, 4, 6][..]] {
        let out = decode_stream(framing, &wire, chunks);
        assert_eq!(out.len(), 2, "{chunks:?}: {out:?}");
        assert_too_long(&out[0], bad_payload.len(), limit);
        assert_eq!(&out[1].as_ref().unwrap()[..], b"ok");
    }
}

#[test]
fn eof_mode_overflow_drops_the_rest_of_the_stream() {
    let framing = Framing::eof().max_frame_length(4);
    for chunks in [whole(), one_at_a_time()] {
        let out = decode_stream(framing, b"abcdefghij", chunks);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(matches!(out[0], Err(Error::FrameTooLong { limit: 4, .. })));
    }
}

// ---------------------------------------------------------------------------
// End of stream
// ---------------------------------------------------------------------------

#[test]
fn eof_with_leftover_bytes_is_partial_frame_in_delimited_and_length_prefixed_modes() {
    for framing in all_framings(1024) {
        if framing.is_eof() {
            continue;
        }
        let mut wire = encode(&mut FrameCodec::new(framing), &[b"done".to_vec()]).to_vec();
        let complete = wire.len();
        wire.extend_from_slice(&encode(&mut FrameCodec::new(framing), &[b"cut".to_vec()]));
        wire.pop(); // The delimiter, or the last payload byte.
        let leftover = wire.len() - complete;
        for chunks in [whole(), one_at_a_time()] {
            let out = decode_stream(framing, &wire, chunks);
            assert_eq!(out.len(), 2, "{framing:?}: {out:?}");
            assert_eq!(&out[0].as_ref().unwrap()[..], b"done");
            match &out[1] {
                Err(Error::PartialFrame { len }) => assert_eq!(*len, leftover, "{framing:?}"),
                other => panic!("{framing:?}: expected PartialFrame, got {other:?}"),
            }
        }
    }
}

#[test]
fn length_prefixed_eof_inside_header_is_partial_frame() {
    let out = decode_stream(Framing::length_prefixed(), &[0, 0], whole());
    assert!(
        matches!(out[..], [Err(Error::PartialFrame { len: 2 })]),
        "{out:?}"
    );
}

#[test]
fn eof_without_leftover_bytes_yields_no_extra_frame() {
    for framing in all_framings(1024) {
        if framing.is_eof() {
            continue;
        }
        let wire = encode(
            &mut FrameCodec::new(framing),
            &[b"a".to_vec(), b"b".to_vec()],
        );
        let got = frames(decode_stream(framing, &wire, whole()));
        assert_eq!(got, vec![b"a".to_vec(), b"b".to_vec()], "{framing:?}");
    }
}

#[test]
fn empty_stream_yields_no_frame_in_every_mode() {
    for framing in all_framings(1024) {
        let out = decode_stream(framing, b"", whole());
        assert!(out.is_empty(), "{framing:?}: {out:?}");
    }
}

#[test]
fn eof_mode_yields_the_whole_stream_as_one_frame() {
    let framing = Framing::eof();
    let stream = b"line one\nline two;\0\xFF\xFE and \r\n more";
    for chunks in [whole(), one_at_a_time(), &[4][..]] {
        let got = frames(decode_stream(framing, stream, chunks));
        assert_eq!(got, vec![stream.to_vec()]);
    }
}

#[test]
fn eof_mode_decode_waits_for_the_end_of_stream() {
    let mut codec = FrameCodec::new(Framing::eof());
    let mut src = BytesMut::from(&b"abc\n"[..]);
    assert!(codec.decode(&mut src).unwrap().is_none());
    assert_eq!(src.len(), 4);
    assert_eq!(&codec.decode_eof(&mut src).unwrap().unwrap()[..], b"abc\n");
    assert!(codec.decode_eof(&mut src).unwrap().is_none());
}

#[test]
fn eof_mode_encode_writes_the_payload_alone() {
    let mut wire = BytesMut::new();
    FrameCodec::new(Framing::eof())
        .encode(&b"a\nb"[..], &mut wire)
        .unwrap();
    assert_eq!(&wire[..], b"a\nb");
}

#[test]
fn length_prefixed_header_is_big_endian_u32() {
    let mut wire = BytesMut::new();
    FrameCodec::new(Framing::length_prefixed())
        .encode(&[7u8; 258][..], &mut wire)
        .unwrap();
    assert_eq!(&wire[..4], &[0, 0, 1, 2]);
    assert_eq!(wire.len(), 4 + 258);
}

// ---------------------------------------------------------------------------
// \r\n
// ---------------------------------------------------------------------------

#[test]
fn crlf_is_stripped_with_newline_delimiter_in_raw_mode() {
    let framing = Framing::lines().raw();
    let got = frames(decode_stream(framing, b"one\r\ntwo\n\r\n\r\r\n", whole()));
    // Only one trailing \r is removed.
    assert_eq!(
        got,
        vec![b"one".to_vec(), b"two".to_vec(), Vec::new(), b"\r".to_vec()]
    );
}

#[test]
fn crlf_from_a_text_peer_is_stripped_in_escaped_mode_too() {
    let got = frames(decode_stream(
        Framing::lines().escaped(),
        b"ping\r\n",
        whole(),
    ));
    assert_eq!(got, vec![b"ping".to_vec()]);
}

#[test]
fn carriage_return_is_kept_with_other_delimiters() {
    for d in [b';', 0x00, 0xFF] {
        let framing = Framing::delimited(d).raw();
        let wire = [b'a', b'\r', d];
        assert_eq!(
            frames(decode_stream(framing, &wire, whole())),
            vec![b"a\r".to_vec()]
        );
    }
}

#[test]
fn raw_newline_mode_loses_a_trailing_carriage_return_as_documented() {
    let framing = Framing::lines().raw();
    let wire = encode(&mut FrameCodec::new(framing), &[b"x\r".to_vec()]);
    assert_eq!(&wire[..], b"x\r\n");
    assert_eq!(
        frames(decode_stream(framing, &wire, whole())),
        vec![b"x".to_vec()]
    );
}

// ---------------------------------------------------------------------------
// Escaped mode
// ---------------------------------------------------------------------------

#[test]
fn escaped_mode_round_trips_special_payloads_for_every_delimiter() {
    for framing in delimited_framings(4096) {
        if framing.escaping() != Some(Escaping::Escaped) {
            continue;
        }
        let d = framing.delimiter().unwrap();
        let e = framing.escape_byte().unwrap();
        let payloads = vec![
            b"ends in cr\r".to_vec(),
            b"\r".to_vec(),
            b"\r\r".to_vec(),
            vec![b'a', d, b'b'],
            vec![d],
            vec![d, d, d],
            vec![e],
            vec![b'x', e, e, b'y'],
            vec![e, d ^ 0x20, d, e ^ 0x20],
            vec![e, b'\r'],
            (0..=255u8).collect(),
            (0..=255u8).rev().collect(),
            Vec::new(),
        ];
        let wire = encode(&mut FrameCodec::new(framing), &payloads);
        // The delimiter only ever ends frames on the wire.
        assert_eq!(
            wire.iter().filter(|&&b| b == d).count(),
            payloads.len(),
            "{framing:?}"
        );
        for chunks in [whole(), one_at_a_time()] {
            assert_eq!(
                frames(decode_stream(framing, &wire, chunks)),
                payloads,
                "{framing:?}"
            );
        }
    }
}

#[test]
fn escape_bytes_are_ff_or_fe_as_documented() {
    for (d, e) in [
        (b'\n', 0xFF),
        (b';', 0xFF),
        (0x00, 0xFF),
        (0xFE, 0xFF),
        (0xFF, 0xFE),
        (0xDF, 0xFE),
    ] {
        assert_eq!(Framing::delimited(d).escape_byte(), Some(e), "{d:#x}");
    }
    assert_eq!(Framing::eof().escape_byte(), None);
    assert_eq!(Framing::length_prefixed().escape_byte(), None);
}

#[test]
fn escaped_wire_format_is_the_documented_one() {
    let mut wire = BytesMut::new();
    FrameCodec::new(Framing::lines().escaped())
        .encode(&b"A\n\xFFB\r"[..], &mut wire)
        .unwrap();
    assert_eq!(&wire[..], b"A\xFF\x2A\xFF\xDFB\xFF\x2D\n");
    // Text without specials is the same in both modes.
    let mut plain = BytesMut::new();
    FrameCodec::new(Framing::lines().escaped())
        .encode(&b"plain text"[..], &mut plain)
        .unwrap();
    assert_eq!(&plain[..], b"plain text\n");
}

#[test]
fn escape_byte_followed_by_invalid_code_is_bad_escape() {
    for framing in delimited_framings(1024) {
        if framing.escaping() != Some(Escaping::Escaped) {
            continue;
        }
        let d = framing.delimiter().unwrap();
        let e = framing.escape_byte().unwrap();
        // 'A' ^ 0x20 is 'a', which is never escaped.
        let wire = [b'x', b'y', e, b'A', b'z', d, b'o', b'k', d];
        let out = decode_stream(framing, &wire, whole());
        assert_eq!(out.len(), 2, "{framing:?}: {out:?}");
        assert!(
            matches!(out[0], Err(Error::BadEscape { offset: 2 })),
            "{framing:?}: {:?}",
            out[0]
        );
        // The bad frame is dropped; the next one decodes.
        assert_eq!(&out[1].as_ref().unwrap()[..], b"ok");
    }
}

#[test]
fn escape_byte_at_the_end_of_a_frame_is_bad_escape() {
    for framing in delimited_framings(1024) {
        if framing.escaping() != Some(Escaping::Escaped) {
            continue;
        }
        let d = framing.delimiter().unwrap();
        let e = framing.escape_byte().unwrap();
        let wire = [b'a', b'b', b'c', e, d];
        let out = decode_stream(framing, &wire, whole());
        assert!(
            matches!(out[..], [Err(Error::BadEscape { offset: 3 })]),
            "{framing:?}: {out:?}"
        );
    }
}

#[test]
fn escaped_carriage_return_code_is_only_valid_with_newline_delimiter() {
    // FF 2D is `\r`: escaped only with `\n`; with another delimiter it is not
    // one of the codes, so it is refused like any other.
    let ok = frames(decode_stream(
        Framing::lines().escaped(),
        b"a\xFF\x2D\n",
        whole(),
    ));
    assert_eq!(ok, vec![b"a\r".to_vec()]);
    let out = decode_stream(Framing::delimited(b';').escaped(), b"a\xFF\x2D;", whole());
    assert!(
        matches!(out[..], [Err(Error::BadEscape { offset: 1 })]),
        "{out:?}"
    );
}

#[test]
fn escaped_mode_leaves_raw_delimiter_free_payloads_unchanged() {
    for framing in delimited_framings(1024) {
        if framing.escaping() != Some(Escaping::Escaped) {
            continue;
        }
        let mut wire = BytesMut::new();
        FrameCodec::new(framing)
            .encode(&b"hello world"[..], &mut wire)
            .unwrap();
        assert_eq!(&wire[..11], b"hello world");
        assert_eq!(wire.len(), 12);
    }
}

// ---------------------------------------------------------------------------
// Encode-side errors
// ---------------------------------------------------------------------------

#[test]
fn raw_mode_refuses_a_payload_holding_the_delimiter_and_leaves_dst_unchanged() {
    for framing in delimited_framings(1024) {
        if framing.escaping() != Some(Escaping::Raw) {
            continue;
        }
        let d = framing.delimiter().unwrap();
        let mut codec = FrameCodec::new(framing);
        let mut dst = BytesMut::from(&b"already queued"[..]);
        let payload = [b'a', b'b', b'c', d, b'e', d];
        let err = codec.encode(&payload[..], &mut dst).unwrap_err();
        match err {
            Error::DelimiterInPayload { delimiter, offset } => {
                assert_eq!((delimiter, offset), (d, 3), "{framing:?}");
            }
            other => panic!("{framing:?}: {other:?}"),
        }
        assert_eq!(&dst[..], b"already queued", "{framing:?}");
        // The codec still works afterwards.
        codec.encode(&b"fine"[..], &mut dst).unwrap();
        assert_eq!(&dst[14..], [b'f', b'i', b'n', b'e', d]);
    }
}

#[test]
fn encode_of_a_too_long_frame_is_frame_too_long_and_leaves_dst_unchanged() {
    let limit = 16;
    for framing in all_framings(limit) {
        let mut codec = FrameCodec::new(framing);
        let mut dst = BytesMut::from(&b"earlier"[..]);
        let err = codec.encode(&[b'q'; 17][..], &mut dst).unwrap_err();
        assert!(
            matches!(err, Error::FrameTooLong { len: 17, limit: 16 }),
            "{framing:?}: {err:?}"
        );
        assert_eq!(&dst[..], b"earlier", "{framing:?}");
    }
}

#[test]
fn escaping_that_pushes_a_frame_over_the_limit_is_frame_too_long() {
    let limit = 16;
    for framing in delimited_framings(limit) {
        if framing.escaping() != Some(Escaping::Escaped) {
            continue;
        }
        let d = framing.delimiter().unwrap();
        let mut payload = vec![b'q'; limit - 1];
        payload.push(d); // 16 bytes, 17 once escaped.
        let mut dst = BytesMut::new();
        let err = FrameCodec::new(framing)
            .encode(&payload[..], &mut dst)
            .unwrap_err();
        assert!(
            matches!(err, Error::FrameTooLong { len: 17, limit: 16 }),
            "{framing:?}: {err:?}"
        );
        assert!(dst.is_empty());
    }
}

#[test]
fn encode_with_error_from_the_writer_leaves_dst_unchanged() {
    for framing in all_framings(1024) {
        let codec = FrameCodec::new(framing);
        let mut dst = BytesMut::from(&b"kept"[..]);
        let err = codec
            .encode_with(&mut dst, |dst| {
                dst.extend_from_slice(b"half written");
                Err(Error::encode("test", "writer failed"))
            })
            .unwrap_err();
        assert!(matches!(err, Error::Encode { codec: "test", .. }));
        assert_eq!(&dst[..], b"kept", "{framing:?}");
    }
}

#[test]
fn encode_with_frames_what_the_writer_appends() {
    for framing in all_framings(1024) {
        let codec = FrameCodec::new(framing);
        let mut dst = BytesMut::from(&b"x"[..]);
        codec
            .encode_with(&mut dst, |dst| {
                dst.extend_from_slice(b"payload");
                Ok(())
            })
            .unwrap();
        let wire = dst.split_off(1);
        let got = frames(decode_stream(framing, &wire, whole()));
        assert_eq!(got, vec![b"payload".to_vec()], "{framing:?}");
    }
}

#[test]
fn encoder_accepts_bytes_and_slices_alike() {
    let mut codec = FrameCodec::new(Framing::lines());
    let mut a = BytesMut::new();
    let mut b = BytesMut::new();
    codec.encode(Bytes::from_static(b"same"), &mut a).unwrap();
    codec.encode(&b"same"[..], &mut b).unwrap();
    assert_eq!(a, b);
}

// ---------------------------------------------------------------------------
// Escaping::Auto
// ---------------------------------------------------------------------------

#[test]
fn auto_escaping_resolves_to_escaped_for_binary_and_raw_otherwise() {
    for d in DELIMITERS {
        let auto = Framing::delimited(d);
        assert_eq!(auto.escaping(), Some(Escaping::Auto));
        assert_eq!(auto.resolve(true).escaping(), Some(Escaping::Escaped));
        assert_eq!(auto.resolve(false).escaping(), Some(Escaping::Raw));
        // Forced modes are kept whatever the codec.
        for binary in [true, false] {
            assert_eq!(auto.raw().resolve(binary).escaping(), Some(Escaping::Raw));
            assert_eq!(
                auto.escaped().resolve(binary).escaping(),
                Some(Escaping::Escaped)
            );
        }
        // Resolving keeps the delimiter and the limit.
        let limited = auto.max_frame_length(77).resolve(true);
        assert_eq!(limited.delimiter(), Some(d));
        assert_eq!(limited.max_length(), 77);
    }
    for f in [Framing::eof(), Framing::length_prefixed()] {
        assert_eq!(f.resolve(true), f);
        assert_eq!(f.resolve(false), f);
        assert_eq!(f.escaping(), None);
        assert_eq!(f.escaped(), f);
        assert_eq!(f.with_escaping(Escaping::Raw), f);
    }
}

#[test]
fn frame_codec_takes_auto_as_raw() {
    let codec = FrameCodec::new(Framing::delimited(b';'));
    assert_eq!(codec.framing().escaping(), Some(Escaping::Raw));
    let codec = FrameCodec::new(Framing::delimited(b';').escaped());
    assert_eq!(codec.framing().escaping(), Some(Escaping::Escaped));
}

#[test]
fn default_framing_is_lines_with_auto_escaping() {
    assert_eq!(Framing::default(), Framing::lines());
    assert_eq!(Framing::lines().delimiter(), Some(b'\n'));
    assert_eq!(Framing::lines().escaping(), Some(Escaping::Auto));
    assert!(Framing::eof().is_eof());
    assert!(!Framing::eof().is_length_prefixed());
    assert!(Framing::length_prefixed().is_length_prefixed());
    assert_eq!(Framing::length_prefixed().delimiter(), None);
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

fn payload_strategy(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![any::<u8>(), prop::sample::select(SPECIALS.to_vec())],
        0..max_len,
    )
}

fn chunks_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..40, 1..20)
}

fn delimiter_strategy() -> impl Strategy<Value = u8> {
    prop::sample::select(DELIMITERS.to_vec())
}

fn check_round_trip(
    framing: Framing,
    payloads: &[Vec<u8>],
    chunks: &[usize],
) -> Result<(), TestCaseError> {
    let wire = encode(&mut FrameCodec::new(framing), payloads);
    let got = frames(decode_stream(framing, &wire, chunks));
    prop_assert_eq!(got, payloads.to_vec());
    Ok(())
}

proptest! {
    #[test]
    fn prop_escaped_round_trips_any_payloads_cut_anywhere(
        d in delimiter_strategy(),
        payloads in prop::collection::vec(payload_strategy(64), 0..8),
        chunks in chunks_strategy(),
    ) {
        check_round_trip(Framing::delimited(d).escaped(), &payloads, &chunks)?;
    }

    #[test]
    fn prop_raw_round_trips_delimiter_free_payloads_cut_anywhere(
        d in delimiter_strategy(),
        payloads in prop::collection::vec(payload_strategy(64), 0..8),
        chunks in chunks_strategy(),
    ) {
        let framing = Framing::delimited(d).raw();
        let payloads: Vec<Vec<u8>> = payloads.iter().map(|p| sanitize(framing, p)).collect();
        check_round_trip(framing, &payloads, &chunks)?;
    }

    #[test]
    fn prop_length_prefixed_round_trips_any_payloads_cut_anywhere(
        payloads in prop::collection::vec(payload_strategy(64), 0..8),
        chunks in chunks_strategy(),
    ) {
        check_round_trip(Framing::length_prefixed(), &payloads, &chunks)?;
    }

    #[test]
    fn prop_eof_round_trips_one_payload_cut_anywhere(
        payload in payload_strategy(256).prop_filter("an empty stream has no frame", |p| !p.is_empty()),
        chunks in chunks_strategy(),
    ) {
        check_round_trip(Framing::eof(), &[payload], &chunks)?;
    }

    #[test]
    fn prop_encoded_frames_respect_the_limit_or_are_refused(
        mode in 0usize..14,
        payload in payload_strategy(40),
        limit in 0usize..40,
    ) {
        let framing = all_framings(limit)[mode];
        let mut dst = BytesMut::new();
        match FrameCodec::new(framing).encode(&payload[..], &mut dst) {
            Ok(()) => {
                let overhead = if framing.is_length_prefixed() {
                    HEADER
                } else if framing.is_eof() {
                    0
                } else {
                    1
                };
                prop_assert!(dst.len() - overhead <= limit);
            }
            Err(Error::FrameTooLong { len, limit: l }) => {
                prop_assert_eq!(l, limit);
                prop_assert!(len > limit);
                prop_assert!(dst.is_empty());
            }
            Err(Error::DelimiterInPayload { delimiter, offset }) => {
                prop_assert_eq!(framing.escaping(), Some(Escaping::Raw));
                prop_assert_eq!(payload[offset], delimiter);
                prop_assert!(!payload[..offset].contains(&delimiter));
                prop_assert!(dst.is_empty());
            }
            Err(other) => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    #[test]
    fn prop_decode_never_panics_and_stays_bounded_on_arbitrary_input(
        mode in 0usize..14,
        limit in 0usize..48,
        input in prop::collection::vec(
            prop_oneof![any::<u8>(), prop::sample::select(SPECIALS.to_vec()), Just(0u8)],
            0..400,
        ),
        chunks in chunks_strategy(),
    ) {
        let framing = all_framings(limit)[mode];
        // decode_stream asserts the bound (limit, plus the header when
        // length-prefixed) after every feed; each frame respects the limit.
        for outcome in decode_stream(framing, &input, &chunks) {
            match outcome {
                Ok(frame) => prop_assert!(frame.len() <= limit),
                Err(Error::FrameTooLong { limit: l, len }) => {
                    prop_assert_eq!(l, limit);
                    prop_assert!(len > limit);
                }
                Err(Error::BadEscape { .. }) => {
                    prop_assert_eq!(framing.escaping(), Some(Escaping::Escaped));
                }
                Err(Error::PartialFrame { len }) => prop_assert!(len > 0),
                Err(other) => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Framed over a duplex pipe
// ---------------------------------------------------------------------------

async fn send_and_receive(framing: Framing, payloads: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let (a, b) = tokio::io::duplex(64);
    let mut writer = Framed::new(a, FrameCodec::new(framing));
    let mut reader = Framed::new(b, FrameCodec::new(framing));
    let sender = tokio::spawn(async move {
        for p in payloads {
            writer.send(Bytes::from(p)).await.unwrap();
        }
        // Flushes, then shuts the writing side down: the reader sees EOF.
        SinkExt::<Bytes>::close(&mut writer).await.unwrap();
    });
    let mut got = Vec::new();
    while let Some(frame) = reader.next().await {
        got.push(frame.unwrap().to_vec());
    }
    sender.await.unwrap();
    got
}

#[tokio::test]
async fn framed_over_duplex_carries_frames_in_every_delimited_mode() {
    for framing in delimited_framings(1024) {
        let payloads: Vec<Vec<u8>> = sample_payloads()
            .iter()
            .map(|p| sanitize(framing, p))
            .collect();
        assert_eq!(
            send_and_receive(framing, payloads.clone()).await,
            payloads,
            "{framing:?}"
        );
    }
}

#[tokio::test]
async fn framed_over_duplex_carries_length_prefixed_frames() {
    let framing = Framing::length_prefixed();
    let payloads = sample_payloads();
    assert_eq!(send_and_receive(framing, payloads.clone()).await, payloads);
}

#[tokio::test]
async fn framed_over_duplex_delivers_an_eof_frame_when_the_writer_shuts_down() {
    let framing = Framing::eof();
    let payload: Vec<u8> = (0..1000u32).map(|i| (i % 256) as u8).collect();
    assert_eq!(
        send_and_receive(framing, vec![payload.clone()]).await,
        vec![payload]
    );
    // Nothing sent: no frame at all.
    assert!(send_and_receive(framing, Vec::new()).await.is_empty());
}

#[tokio::test]
async fn framed_eof_frame_arrives_when_the_writer_is_dropped() {
    let (a, b) = tokio::io::duplex(16);
    let mut reader = Framed::new(b, FrameCodec::new(Framing::eof()));
    let sender = tokio::spawn(async move {
        let mut writer = Framed::new(a, FrameCodec::new(Framing::eof()));
        writer.send(Bytes::from_static(b"bye\n")).await.unwrap();
        drop(writer);
    });
    assert_eq!(&reader.next().await.unwrap().unwrap()[..], b"bye\n");
    assert!(reader.next().await.is_none());
    sender.await.unwrap();
}

#[tokio::test]
async fn framed_reports_an_overlong_frame_as_an_error() {
    let (mut a, b) = tokio::io::duplex(1024);
    let mut reader = Framed::new(b, FrameCodec::new(Framing::lines().max_frame_length(8)));
    tokio::io::AsyncWriteExt::write_all(&mut a, b"way too long for the limit\n")
        .await
        .unwrap();
    drop(a);
    match reader.next().await {
        Some(Err(Error::FrameTooLong { limit: 8, .. })) => {}
        other => panic!("expected FrameTooLong, got {other:?}"),
    }
}

#[tokio::test]
async fn framed_reports_a_cut_frame_as_partial_frame() {
    let (mut a, b) = tokio::io::duplex(1024);
    let mut reader = Framed::new(b, FrameCodec::new(Framing::length_prefixed()));
    tokio::io::AsyncWriteExt::write_all(&mut a, &[0, 0, 0, 9, b'a'])
        .await
        .unwrap();
    drop(a);
    match reader.next().await {
        Some(Err(Error::PartialFrame { len: 5 })) => {}
        other => panic!("expected PartialFrame, got {other:?}"),
    }
}
