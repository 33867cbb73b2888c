//! `FrameCodec::encode` then `decode` gives the payloads back, in every mode.
//!
//! Input: the header of `frame_decode` (mode, delimiter, max frame length
//! 0..=4096, chunk sizes; its keep-going bit is unused), then payloads, each
//! a length byte (255: a `u16` little-endian length follows) and its bytes.
//!
//! Checks: the encoder refuses exactly the payloads it must (raw mode: those
//! holding the delimiter, with its first offset; any mode: those whose wire
//! form is over the limit) and then writes nothing; an escaped wire frame
//! holds no delimiter and is the documented escaping; decoding the wire in
//! the chosen chunks yields exactly the accepted payloads, with no error (raw
//! `\n` mode drops one trailing `\r`; end-of-stream mode carries one payload,
//! and an empty one yields no frame).
#![no_main]

use bytes::{Bytes, BytesMut};
use chitchat_net::{Error, FrameCodec};
use chitchat_net_fuzz::{drive, escape, Cursor, Event, Header, Mode};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Encoder;

fuzz_target!(|data: &[u8]| {
    let (header, rest) = Header::parse(data);
    let mode = header.mode;
    let max = header.max;
    let chunks = header.chunks;
    let mut payloads = payloads(rest);
    if mode == Mode::Eof {
        payloads.truncate(1);
    }

    let mut codec = FrameCodec::new(mode.framing(max));
    let mut wire = BytesMut::new();
    let mut expected = Vec::new();
    for payload in &payloads {
        let start = wire.len();
        let result = codec.encode(*payload, &mut wire);
        match refusal(mode, max, payload) {
            Some(Refusal::Delimiter(offset)) => {
                match result {
                    Err(Error::DelimiterInPayload {
                        delimiter,
                        offset: o,
                    }) => {
                        assert_eq!(Some(delimiter), mode.delimiter());
                        assert_eq!(o, offset);
                    }
                    other => panic!("{mode:?}: payload {payload:?} holds the delimiter: {other:?}"),
                }
                assert_eq!(wire.len(), start, "refused payload left bytes");
            }
            Some(Refusal::TooLong) => {
                assert!(
                    matches!(result, Err(Error::FrameTooLong { .. })),
                    "{mode:?} max {max}: {payload:?}: {result:?}"
                );
                assert_eq!(wire.len(), start, "refused payload left bytes");
            }
            None => {
                assert!(
                    result.is_ok(),
                    "{mode:?} max {max}: {payload:?}: {result:?}"
                );
                check_wire(mode, payload, &wire[start..]);
                let mut frame = &payload[..];
                if mode == Mode::Raw(b'\n') && frame.last() == Some(&b'\r') {
                    frame = &frame[..frame.len() - 1];
                }
                if !(mode == Mode::Eof && frame.is_empty()) {
                    expected.push(Event::Frame(Bytes::copy_from_slice(frame)));
                }
            }
        }
    }

    let got = drive(mode, max, &chunks, false, &wire);
    assert_eq!(got, expected, "{mode:?} max {max} chunks {chunks:?}");
});

/// Splits the input into payloads, each a length byte and that many bytes;
/// a length byte 255 is followed by the length as a little-endian `u16`.
fn payloads(input: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut cur = Cursor(input);
    while !cur.0.is_empty() {
        let mut len = usize::from(cur.byte());
        if len == 255 {
            len = usize::from(u16::from_le_bytes([cur.byte(), cur.byte()]));
        }
        let (payload, tail) = cur.0.split_at(len.min(cur.0.len()));
        out.push(payload);
        cur = Cursor(tail);
    }
    out
}

enum Refusal {
    Delimiter(usize),
    TooLong,
}

/// Why the encoder must refuse `payload`, if it must.
fn refusal(mode: Mode, max: usize, payload: &[u8]) -> Option<Refusal> {
    let wire_len = match mode {
        Mode::Raw(d) => {
            if let Some(offset) = payload.iter().position(|&b| b == d) {
                return Some(Refusal::Delimiter(offset));
            }
            payload.len()
        }
        Mode::Escaped(d) => escape(payload, d).len(),
        Mode::Eof | Mode::LengthPrefixed => payload.len(),
    };
    (wire_len > max).then_some(Refusal::TooLong)
}

/// The wire form of one accepted payload is as the module docs say.
fn check_wire(mode: Mode, payload: &[u8], wire: &[u8]) {
    match mode {
        Mode::Raw(d) => {
            assert_eq!(&wire[..wire.len() - 1], payload);
            assert_eq!(wire[wire.len() - 1], d);
        }
        Mode::Escaped(d) => {
            let (last, body) = wire.split_last().unwrap();
            assert_eq!(*last, d);
            assert!(!body.contains(&d), "escaped wire holds the delimiter");
            assert_eq!(body, &escape(payload, d)[..]);
        }
        Mode::Eof => assert_eq!(wire, payload),
        Mode::LengthPrefixed => {
            assert_eq!(&wire[..4], &(payload.len() as u32).to_be_bytes());
            assert_eq!(&wire[4..], payload);
        }
    }
}
