//! `Text` (UTF-8 strings) and `Raw` (bytes as they are).

use bytes::{Bytes, BytesMut};
use chitchat_net::{Codec, Error, Escaping, FrameCodec, Framing, Message, Raw, Text};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

fn text_round_trip(text: &str) -> String {
    let mut buf = BytesMut::new();
    Text.encode(&text.to_string(), &mut buf).unwrap();
    assert_eq!(
        &buf[..],
        text.as_bytes(),
        "text is written as its UTF-8 bytes"
    );
    Text.decode(buf.freeze()).unwrap()
}

#[test]
fn text_round_trips_ascii_unicode_and_empty_strings() {
    for text in [
        "heartbeat ping",
        "",
        "héllo wörld",
        "日本語 🎉",
        "tab\tand\r\nnewline",
        "\0",
    ] {
        assert_eq!(text_round_trip(text), text);
    }
}

#[test]
fn text_invalid_utf8_is_a_text_decode_error() {
    for bad in [
        &b"\xC3"[..],
        b"\xFF",
        b"ok\x80",
        b"\xED\xA0\x80",
        b"\xF0\x9F\x98",
    ] {
        let result: Result<String, Error> = Text.decode(Bytes::copy_from_slice(bad));
        match result {
            Err(Error::Decode { codec, source, .. }) => {
                assert_eq!(codec, "text");
                assert!(
                    source.downcast_ref::<std::str::Utf8Error>().is_some(),
                    "source: {source:?}"
                );
            }
            other => panic!("{bad:?}: expected a text decode error, got {other:?}"),
        }
    }
}

#[test]
fn text_decode_error_is_per_frame() {
    let err = Codec::<String>::decode(&Text, Bytes::from_static(b"\xFF")).unwrap_err();
    assert!(!err.is_fatal());
}

#[test]
fn text_and_raw_are_not_binary() {
    assert!(!Codec::<String>::is_binary(&Text));
    assert!(!Codec::<Bytes>::is_binary(&Raw));
    assert!(!Codec::<Vec<u8>>::is_binary(&Raw));
    assert_eq!(Codec::<String>::name(&Text), "text");
    assert_eq!(Codec::<Bytes>::name(&Raw), "raw");
    assert_eq!(Codec::<Vec<u8>>::name(&Raw), "raw");
}

#[test]
fn raw_bytes_round_trip_untouched() {
    let payload: Vec<u8> = (0..=255).collect();
    let mut buf = BytesMut::new();
    Raw.encode(&Bytes::from(payload.clone()), &mut buf).unwrap();
    assert_eq!(&buf[..], &payload[..]);
    let back: Bytes = Raw.decode(buf.clone().freeze()).unwrap();
    assert_eq!(&back[..], &payload[..]);
    let mut buf2 = BytesMut::new();
    Raw.encode(&payload, &mut buf2).unwrap();
    assert_eq!(buf2, buf);
    let back: Vec<u8> = Raw.decode(buf2.freeze()).unwrap();
    assert_eq!(back, payload);
}

#[test]
fn raw_decode_into_bytes_copies_nothing() {
    let frame = Bytes::from(vec![1u8, 2, 3]);
    let ptr = frame.as_ptr();
    let back: Bytes = Raw.decode(frame).unwrap();
    assert_eq!(back.as_ptr(), ptr);
}

#[test]
fn raw_and_text_encode_append_to_dst() {
    let mut buf = BytesMut::from(&b"a"[..]);
    Raw.encode(&Bytes::from_static(b"b"), &mut buf).unwrap();
    Text.encode(&"c".to_string(), &mut buf).unwrap();
    assert_eq!(&buf[..], b"abc");
}

fn default_codec_name<M: Message>() -> &'static str {
    <M::Codec as Default>::default().name()
}

#[test]
fn strings_travel_as_text_and_bytes_as_raw_by_default() {
    assert_eq!(default_codec_name::<String>(), "text");
    assert_eq!(default_codec_name::<Bytes>(), "raw");
    assert_eq!(default_codec_name::<Vec<u8>>(), "raw");
}

#[test]
fn text_over_auto_lines_is_raw_and_byte_identical_to_plain_lines() {
    let framing = Framing::lines().resolve(Codec::<String>::is_binary(&Text));
    assert_eq!(framing.escaping(), Some(Escaping::Raw));
    let mut codec = FrameCodec::new(framing);
    let mut wire = BytesMut::new();
    for line in ["first", "ünïcode", ""] {
        codec
            .encode_with(&mut wire, |dst| Text.encode(&line.to_string(), dst))
            .unwrap();
    }
    assert_eq!(&wire[..], "first\nünïcode\n\n".as_bytes());
    let mut lines = Vec::new();
    while let Some(frame) = codec.decode(&mut wire).unwrap() {
        lines.push(Codec::<String>::decode(&Text, frame).unwrap());
    }
    assert_eq!(lines, ["first", "ünïcode", ""]);
}

#[test]
fn text_holding_the_delimiter_is_refused_by_raw_framing_and_nothing_is_written() {
    let codec = FrameCodec::new(Framing::lines().raw());
    let mut wire = BytesMut::from(&b"queued\n"[..]);
    let err = codec
        .encode_with(&mut wire, |dst| Text.encode(&"two\nlines".to_string(), dst))
        .unwrap_err();
    assert!(matches!(
        err,
        Error::DelimiterInPayload {
            delimiter: b'\n',
            offset: 3
        }
    ));
    assert_eq!(&wire[..], b"queued\n");
}

#[test]
fn raw_bytes_cross_length_prefixed_framing_untouched() {
    let mut codec = FrameCodec::new(Framing::length_prefixed());
    let payload = Bytes::from_static(b"\n\r\0\xFF anything");
    let mut wire = BytesMut::new();
    codec.encode(payload.clone(), &mut wire).unwrap();
    let frame = codec.decode(&mut wire).unwrap().unwrap();
    let back: Bytes = Raw.decode(frame).unwrap();
    assert_eq!(back, payload);
}

proptest! {
    #[test]
    fn prop_text_round_trips_any_string(text in any::<String>()) {
        let mut buf = BytesMut::new();
        Text.encode(&text, &mut buf).unwrap();
        prop_assert_eq!(Codec::<String>::decode(&Text, buf.freeze()).unwrap(), text);
    }

    #[test]
    fn prop_text_accepts_exactly_valid_utf8(bytes in prop::collection::vec(any::<u8>(), 0..32)) {
        let result: Result<String, Error> = Text.decode(Bytes::from(bytes.clone()));
        match std::str::from_utf8(&bytes) {
            Ok(s) => prop_assert_eq!(result.unwrap(), s),
            Err(_) => prop_assert!(
                matches!(result, Err(Error::Decode { codec: "text", .. })),
                "{:?}", result
            ),
        }
    }

    #[test]
    fn prop_raw_round_trips_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut buf = BytesMut::new();
        Raw.encode(&bytes, &mut buf).unwrap();
        let back: Vec<u8> = Raw.decode(buf.freeze()).unwrap();
        prop_assert_eq!(back, bytes);
    }
}
