//! `Postcard` and `Tagged<Postcard>` (feature `postcard`).
#![cfg(feature = "postcard")]

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use chitchat_net::codec::{SerdeFormat, Tagged, TaggedEnum, UnknownTag};
use chitchat_net::{Codec, Error, FrameCodec, Framing, Postcard, TrailingBytes};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use tokio_util::codec::Decoder;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Event {
    Joined { name: String },
    Left(u64),
    Tick,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Update {
    seq: u64,
    events: Vec<Event>,
    meta: HashMap<String, i32>,
    raw: Vec<u8>,
    maybe: Option<(u8, char)>,
}

fn update() -> Update {
    Update {
        seq: 1 << 40,
        events: vec![
            Event::Joined {
                name: "ada\n".into(),
            },
            Event::Left(7),
            Event::Tick,
        ],
        meta: [("k".to_string(), -3)].into(),
        raw: vec![0x0A, 0xFF, 0x00],
        maybe: Some((1, 'ß')),
    }
}

fn encode<T: Serialize + serde::de::DeserializeOwned>(value: &T) -> Bytes {
    let mut buf = BytesMut::new();
    Codec::<T>::encode(&Postcard, value, &mut buf).unwrap();
    buf.freeze()
}

fn decode<T: Serialize + serde::de::DeserializeOwned>(frame: &[u8]) -> Result<T, Error> {
    Postcard.decode(Bytes::copy_from_slice(frame))
}

fn assert_postcard_decode_error<T: std::fmt::Debug>(
    result: Result<T, Error>,
) -> chitchat_net::BoxError {
    match result {
        Err(Error::Decode {
            codec: "postcard",
            source,
            ..
        }) => source,
        other => panic!("expected a postcard decode error, got {other:?}"),
    }
}

#[test]
fn postcard_round_trips_a_nested_value() {
    assert_eq!(decode::<Update>(&encode(&update())).unwrap(), update());
    assert_eq!(decode::<String>(&encode(&String::new())).unwrap(), "");
    assert_eq!(decode::<u128>(&encode(&u128::MAX)).unwrap(), u128::MAX);
}

#[test]
fn postcard_encode_appends_to_dst() {
    let mut buf = BytesMut::from(&b"head"[..]);
    Codec::<u8>::encode(&Postcard, &5, &mut buf).unwrap();
    assert_eq!(&buf[..], b"head\x05");
}

#[test]
fn postcard_is_binary_and_named_postcard() {
    assert!(Codec::<u8>::is_binary(&Postcard));
    assert_eq!(Codec::<u8>::name(&Postcard), "postcard");
}

#[test]
fn postcard_garbage_and_truncation_are_decode_errors() {
    assert_postcard_decode_error(decode::<bool>(&[2]));
    assert_postcard_decode_error(decode::<Update>(&[]));
    assert_postcard_decode_error(decode::<Event>(&[9]));
    assert_postcard_decode_error(decode::<String>(&[1, 0xFF]));
    let frame = encode(&update());
    assert_postcard_decode_error(decode::<Update>(&frame[..frame.len() - 1]));
}

#[test]
fn postcard_trailing_bytes_are_a_decode_error() {
    let mut frame = encode(&7u16).to_vec();
    frame.extend_from_slice(b"xy");
    let source = assert_postcard_decode_error(decode::<u16>(&frame));
    assert_eq!(
        source.downcast_ref::<TrailingBytes>(),
        Some(&TrailingBytes { trailing: 2 })
    );
}

#[test]
fn postcard_huge_length_claims_are_decode_errors() {
    for claim in [u64::MAX, 1 << 40, 1 << 20] {
        let mut frame = encode(&claim).to_vec();
        frame.extend_from_slice(&[1, 2, 3]);
        assert_postcard_decode_error(decode::<Vec<u64>>(&frame));
        assert_postcard_decode_error(decode::<String>(&frame));
        assert_postcard_decode_error(decode::<Vec<u8>>(&frame));
        assert_postcard_decode_error(decode::<HashMap<u8, u8>>(&frame));
    }
}

#[test]
fn postcard_values_cross_escaped_framing() {
    let framing = Framing::delimited(0x00).resolve(true);
    let mut codec = FrameCodec::new(framing);
    let mut wire = BytesMut::new();
    codec
        .encode_with(&mut wire, |dst| Postcard.encode(&update(), dst))
        .unwrap();
    let frame = codec.decode(&mut wire).unwrap().unwrap();
    assert_eq!(Codec::<Update>::decode(&Postcard, frame).unwrap(), update());
}

#[derive(Debug, Clone, PartialEq)]
enum Cmd {
    Get(String),
    Put { key: String, value: Vec<u8> },
}

impl TaggedEnum for Cmd {
    fn tag(&self) -> u32 {
        match self {
            Cmd::Get(_) => 10,
            Cmd::Put { .. } => 20,
        }
    }

    fn encode_fields<F: SerdeFormat>(&self, format: &F, dst: &mut BytesMut) -> Result<(), Error> {
        match self {
            Cmd::Get(key) => format.encode_value(&(key,), dst),
            Cmd::Put { key, value } => format.encode_value(&(key, value), dst),
        }
    }

    fn decode_fields<F: SerdeFormat>(
        format: &F,
        tag: u32,
        bytes: &[u8],
    ) -> Result<(Self, usize), Error> {
        match tag {
            10 => {
                let ((key,), used) = format.decode_prefix::<(String,)>(bytes)?;
                Ok((Cmd::Get(key), used))
            }
            20 => {
                let ((key, value), used) = format.decode_prefix::<(String, Vec<u8>)>(bytes)?;
                Ok((Cmd::Put { key, value }, used))
            }
            _ => Err(Error::decode(format.name(), UnknownTag { tag })),
        }
    }
}

#[test]
fn tagged_postcard_round_trips_and_names_unknown_tags() {
    let codec = Tagged::<Postcard>::default();
    for cmd in [
        Cmd::Get("k".into()),
        Cmd::Put {
            key: "k".into(),
            value: vec![0, 0xFF],
        },
    ] {
        let mut buf = BytesMut::new();
        codec.encode(&cmd, &mut buf).unwrap();
        let back: Cmd = codec.decode(buf.freeze()).unwrap();
        assert_eq!(back, cmd);
    }
    assert_eq!(Codec::<Cmd>::name(&codec), "postcard");
    let mut frame = encode(&11u32).to_vec();
    frame.extend_from_slice(&encode(&("k".to_string(),)));
    let result: Result<Cmd, Error> = codec.decode(Bytes::from(frame));
    let source = assert_postcard_decode_error(result);
    assert_eq!(
        source.downcast_ref::<UnknownTag>(),
        Some(&UnknownTag { tag: 11 })
    );
}

proptest! {
    #[test]
    fn prop_postcard_round_trips_values(
        seq in any::<u64>(),
        names in prop::collection::vec(any::<String>(), 0..4),
        left in any::<u64>(),
        raw in prop::collection::vec(any::<u8>(), 0..64),
        maybe in any::<Option<(u8, char)>>(),
    ) {
        let mut events: Vec<Event> = names.into_iter().map(|name| Event::Joined { name }).collect();
        events.push(Event::Left(left));
        events.push(Event::Tick);
        let value = Update { seq, events, meta: HashMap::new(), raw, maybe };
        prop_assert_eq!(decode::<Update>(&encode(&value)).unwrap(), value);
    }

    #[test]
    fn prop_postcard_decode_of_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode::<Update>(&bytes);
        let _ = Codec::<Cmd>::decode(&Tagged::<Postcard>::default(), Bytes::from(bytes));
    }
}
