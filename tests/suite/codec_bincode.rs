//! `Bincode` and `Tagged<Bincode>`: round trips, decode errors, and what a
//! hostile frame can make the decoder allocate.
//!
//! The suite's global allocator counts bytes ([`crate::HEAP`]): the tests
//! that measure allocations run alone in a child process
//! ([`crate::child`]), so that no other test allocates meanwhile.

use std::collections::{BTreeMap, HashMap};

use bytes::{Bytes, BytesMut};
use chitchat_net::codec::{SerdeFormat, Tagged, TaggedEnum, UnknownTag};
use chitchat_net::{
    Bincode, Codec, Error, FrameCodec, Framing, TrailingBytes, DEFAULT_BINCODE_LIMIT,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use tokio_util::codec::Decoder;

/// Runs `f` and returns its result with the bytes allocated meanwhile (an
/// upper bound on the peak, as frees are not subtracted).
fn allocated_by<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = crate::HEAP.total_allocated();
    let result = f();
    (result, crate::HEAP.total_allocated() - before)
}

const BINCODE: Bincode = Bincode;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Command {
    Ping,
    Move { x: i32, y: i32 },
    Say(String),
    Batch(Vec<Command>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Envelope {
    id: u64,
    sender: String,
    tags: Vec<String>,
    scores: HashMap<String, f64>,
    ordered: BTreeMap<u8, Vec<u16>>,
    payload: Vec<u8>,
    reply_to: Option<u32>,
    command: Command,
    unit: (),
    tuple: (u8, i64, bool, char),
    big: u128,
}

fn envelope() -> Envelope {
    Envelope {
        id: u64::MAX - 3,
        sender: "node-7 ✓".into(),
        tags: vec!["a".into(), String::new(), "c\nd".into()],
        scores: [("x".to_string(), 1.5), ("y".to_string(), -0.0)].into(),
        ordered: [(1, vec![1, 2, 3]), (255, Vec::new())].into(),
        payload: vec![0x0A, 0xFF, 0x00, 0xDF],
        reply_to: Some(99),
        command: Command::Batch(vec![
            Command::Ping,
            Command::Move { x: -1, y: i32::MAX },
            Command::Say("hi".into()),
        ]),
        unit: (),
        tuple: (7, i64::MIN, true, '🎉'),
        big: u128::MAX / 3,
    }
}

fn encode<T: Serialize + serde::de::DeserializeOwned>(value: &T) -> Bytes {
    let mut buf = BytesMut::new();
    Codec::<T>::encode(&BINCODE, value, &mut buf).unwrap();
    buf.freeze()
}

fn decode<T: Serialize + serde::de::DeserializeOwned>(frame: &[u8]) -> Result<T, Error> {
    BINCODE.decode(Bytes::copy_from_slice(frame))
}

/// The bincode (standard configuration) encoding of a length field.
fn length_field(len: u64) -> Vec<u8> {
    encode(&len).to_vec()
}

fn assert_bincode_decode_error<T: std::fmt::Debug>(
    result: Result<T, Error>,
) -> chitchat_net::BoxError {
    match result {
        Err(Error::Decode {
            codec: "bincode",
            source,
            ..
        }) => source,
        other => {
            let mut shown = format!("{other:?}");
            shown.truncate(200);
            panic!("expected a bincode decode error, got {shown}")
        }
    }
}

// ---------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------

#[test]
fn bincode_round_trips_a_nested_serde_value() {
    let value = envelope();
    assert_eq!(decode::<Envelope>(&encode(&value)).unwrap(), value);
}

#[test]
fn bincode_round_trips_primitives_strings_and_collections() {
    assert_eq!(decode::<u8>(&encode(&200u8)).unwrap(), 200);
    assert_eq!(decode::<i64>(&encode(&i64::MIN)).unwrap(), i64::MIN);
    assert_eq!(
        decode::<String>(&encode(&"über".to_string())).unwrap(),
        "über"
    );
    assert_eq!(decode::<String>(&encode(&String::new())).unwrap(), "");
    assert_eq!(
        decode::<Vec<u64>>(&encode(&vec![1u64, u64::MAX])).unwrap(),
        [1, u64::MAX]
    );
    assert_eq!(decode::<Option<()>>(&encode(&Some(()))).unwrap(), Some(()));
    assert_eq!(
        decode::<Vec<()>>(&encode(&vec![(); 10])).unwrap(),
        vec![(); 10]
    );
    assert_eq!(
        decode::<(bool, char)>(&encode(&(false, 'x'))).unwrap(),
        (false, 'x')
    );
}

#[test]
fn bincode_uses_the_standard_configuration() {
    // Variable-length little-endian integers: 300 is 0xFB then a u16.
    assert_eq!(&encode(&300u32)[..], &[0xFB, 0x2C, 0x01]);
    assert_eq!(&encode(&"ab".to_string())[..], &[2, b'a', b'b']);
}

#[test]
fn bincode_decodes_a_valid_frame_much_smaller_than_the_limit() {
    // bincode's own `with_limit` counts 8 bytes for each u64, even one that
    // takes a single byte on the wire: a 200 kB frame of small numbers used to
    // be refused under a 1 MiB limit.
    let value = vec![0u64; 200_000];
    let frame = encode(&value);
    assert!(frame.len() < DEFAULT_BINCODE_LIMIT / 4);
    assert_eq!(decode::<Vec<u64>>(&frame).unwrap(), value);
    let strings = vec![String::new(); 300_000];
    assert_eq!(decode::<Vec<String>>(&encode(&strings)).unwrap(), strings);
}

#[test]
fn bincode_decodes_a_string_up_to_the_limit() {
    type Small = chitchat_net::BincodeWithLimit<16>;
    let ok = "0123456789abcdef".to_string();
    let mut buf = BytesMut::new();
    Small::default().encode(&ok, &mut buf).unwrap();
    assert_eq!(
        Codec::<String>::decode(&Small::default(), buf.freeze()).unwrap(),
        ok
    );
}

#[test]
fn bincode_decode_prefix_reports_the_bytes_used() {
    let mut buf = BytesMut::new();
    BINCODE.encode_value(&(1u8, "two"), &mut buf).unwrap();
    let used_by_first = buf.len();
    BINCODE.encode_value(&3u64, &mut buf).unwrap();
    let ((a, b), used) = BINCODE.decode_prefix::<(u8, String)>(&buf).unwrap();
    assert_eq!((a, b.as_str(), used), (1, "two", used_by_first));
    let (c, _) = BINCODE.decode_prefix::<u64>(&buf[used..]).unwrap();
    assert_eq!(c, 3);
}

#[test]
fn bincode_is_binary_and_named_bincode() {
    assert!(Codec::<u8>::is_binary(&BINCODE));
    assert_eq!(Codec::<u8>::name(&BINCODE), "bincode");
}

#[test]
fn bincode_values_cross_auto_framing_escaped() {
    let framing = Framing::lines().resolve(Codec::<Envelope>::is_binary(&BINCODE));
    let mut codec = FrameCodec::new(framing);
    let mut wire = BytesMut::new();
    codec
        .encode_with(&mut wire, |dst| BINCODE.encode(&envelope(), dst))
        .unwrap();
    let frame = codec.decode(&mut wire).unwrap().unwrap();
    assert_eq!(
        Codec::<Envelope>::decode(&BINCODE, frame).unwrap(),
        envelope()
    );
}

// ---------------------------------------------------------------------------
// Decode errors
// ---------------------------------------------------------------------------

#[test]
fn bincode_garbage_is_a_decode_error() {
    assert_bincode_decode_error(decode::<bool>(&[2]));
    assert_bincode_decode_error(decode::<Envelope>(b"\xFF\xFF\xFF garbage"));
    assert_bincode_decode_error(decode::<Envelope>(&[]));
    assert_bincode_decode_error(decode::<Command>(&[9]));
    assert_bincode_decode_error(decode::<String>(&[2, 0xC3, 0x28]));
    assert_bincode_decode_error(decode::<char>(&[0xFF]));
    // A valid value cut short.
    let frame = encode(&envelope());
    assert_bincode_decode_error(decode::<Envelope>(&frame[..frame.len() - 1]));
    let err = decode::<bool>(&[2]).unwrap_err();
    assert!(!err.is_fatal());
}

#[test]
fn bincode_trailing_bytes_after_the_value_are_a_decode_error() {
    let mut frame = encode(&(5u32, "x".to_string())).to_vec();
    frame.extend_from_slice(b"abc");
    let source = assert_bincode_decode_error(decode::<(u32, String)>(&frame));
    assert_eq!(
        source.downcast_ref::<TrailingBytes>(),
        Some(&TrailingBytes { trailing: 3 })
    );
}

/// Frames whose length field claims `claim` elements of `T`, with a few
/// bytes of data after it (or none).
fn hostile_frames(claim: u64) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    for tail in [&[][..], &[1, 2, 3, 4, 5, 6, 7][..]] {
        let mut frame = length_field(claim);
        frame.extend_from_slice(tail);
        frames.push(frame);
    }
    frames
}

/// Decodes `frame` as `T`, asserting a bincode decode error that allocated
/// less than `max_bytes`.
fn assert_refused_cheaply<T>(frame: &[u8], max_bytes: usize)
where
    T: Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let frame = Bytes::copy_from_slice(frame);
    let start = std::time::Instant::now();
    let (result, allocated) = allocated_by(|| Codec::<T>::decode(&BINCODE, frame.clone()));
    assert_bincode_decode_error(result);
    assert!(
        allocated < max_bytes,
        "{}: decoding {frame:02x?} allocated {allocated} bytes",
        std::any::type_name::<T>()
    );
    // Generous: this is a hang guard (a length of u64::MAX zero-sized values
    // would spin for ages), not a benchmark; a refusal takes microseconds.
    assert!(start.elapsed().as_secs() < 5);
}

#[tokio::test]
async fn bincode_huge_length_claims_fail_fast_without_large_allocations() {
    crate::child::run(module_path!(), "child_huge_length_claims").await;
}

#[test]
#[ignore = "run alone in a child process by bincode_huge_length_claims_fail_fast_without_large_allocations"]
fn child_huge_length_claims() {
    // Well under the 4 MiB the design allows; before the fix a String claim
    // just under the limit allocated 1 MiB.
    const SMALL: usize = 64 * 1024;
    for claim in [
        u64::MAX,
        1 << 40,
        (1 << 32) + 1,
        DEFAULT_BINCODE_LIMIT as u64 - 1,
        100_000,
    ] {
        for frame in hostile_frames(claim) {
            assert_refused_cheaply::<Vec<u64>>(&frame, SMALL);
            assert_refused_cheaply::<String>(&frame, SMALL);
            assert_refused_cheaply::<Vec<u8>>(&frame, SMALL);
            assert_refused_cheaply::<Vec<String>>(&frame, SMALL);
            assert_refused_cheaply::<Vec<Vec<u64>>>(&frame, SMALL);
            assert_refused_cheaply::<HashMap<u64, u64>>(&frame, SMALL);
            if claim > DEFAULT_BINCODE_LIMIT as u64 {
                // Zero-sized values take no bytes: only the limit stops these.
                assert_refused_cheaply::<Vec<()>>(&frame, SMALL);
            }
        }
    }
}

#[tokio::test]
async fn bincode_nested_huge_length_claims_fail_without_large_allocations() {
    crate::child::run(module_path!(), "child_nested_huge_length_claims").await;
}

#[test]
#[ignore = "run alone in a child process by bincode_nested_huge_length_claims_fail_without_large_allocations"]
fn child_nested_huge_length_claims() {
    // Each level claims a huge inner collection: the preallocation must not
    // add up level by level.
    let mut frame = Vec::new();
    for _ in 0..8 {
        frame.extend_from_slice(&length_field(1 << 40));
    }
    assert_refused_cheaply::<Vec<Vec<Vec<Vec<Vec<Vec<Vec<Vec<u64>>>>>>>>>(&frame, 64 * 1024);
    // The same inside a struct, an option and an enum.
    let mut frame = encode(&(7u64, Some(1u8))).to_vec();
    frame.truncate(1);
    frame.push(1); // Some
    frame.extend_from_slice(&length_field(u64::MAX));
    assert_refused_cheaply::<(u64, Option<String>)>(&frame, 64 * 1024);
    let mut frame = vec![3]; // Command::Batch
    frame.extend_from_slice(&length_field(1 << 40));
    assert_refused_cheaply::<Command>(&frame, 64 * 1024);
    let mut frame = vec![2]; // Command::Say
    frame.extend_from_slice(&length_field(1 << 40));
    assert_refused_cheaply::<Command>(&frame, 64 * 1024);
}

#[test]
fn bincode_lengths_over_the_limit_are_refused() {
    type Small = chitchat_net::BincodeWithLimit<16>;
    let small = Small::default();
    let mut buf = BytesMut::new();
    small.encode(&"x".repeat(17), &mut buf).unwrap();
    assert_bincode_decode_error(Codec::<String>::decode(&small, buf.freeze()));

    let mut buf = BytesMut::new();
    small.encode(&vec![1u8; 17], &mut buf).unwrap();
    assert_bincode_decode_error(Codec::<Vec<u8>>::decode(&small, buf.freeze()));

    let mut buf = BytesMut::new();
    small.encode(&vec![1u64; 17], &mut buf).unwrap();
    assert_bincode_decode_error(Codec::<Vec<u64>>::decode(&small, buf.freeze()));

    let mut buf = BytesMut::new();
    let map: HashMap<u8, u8> = (0..17).map(|i| (i, i)).collect();
    small.encode(&map, &mut buf).unwrap();
    assert_bincode_decode_error(Codec::<HashMap<u8, u8>>::decode(&small, buf.freeze()));

    let mut buf = BytesMut::new();
    small.encode(&vec![(); 17], &mut buf).unwrap();
    assert_bincode_decode_error(Codec::<Vec<()>>::decode(&small, buf.freeze()));

    // 16 of each is fine.
    let mut buf = BytesMut::new();
    small.encode(&vec![1u64; 16], &mut buf).unwrap();
    assert_eq!(
        Codec::<Vec<u64>>::decode(&small, buf.freeze()).unwrap(),
        vec![1; 16]
    );
}

// ---------------------------------------------------------------------------
// Tagged<Bincode>
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Shape {
    Circle(f64),
    Rect { w: u32, h: u32, label: String },
}

impl TaggedEnum for Shape {
    fn tag(&self) -> u32 {
        match self {
            Shape::Circle(_) => 1,
            Shape::Rect { .. } => 700,
        }
    }

    fn encode_fields<F: SerdeFormat>(&self, format: &F, dst: &mut BytesMut) -> Result<(), Error> {
        match self {
            Shape::Circle(r) => format.encode_value(&(r,), dst),
            Shape::Rect { w, h, label } => format.encode_value(&(w, h, label), dst),
        }
    }

    fn decode_fields<F: SerdeFormat>(
        format: &F,
        tag: u32,
        bytes: &[u8],
    ) -> Result<(Self, usize), Error> {
        match tag {
            1 => {
                let ((r,), used) = format.decode_prefix::<(f64,)>(bytes)?;
                Ok((Shape::Circle(r), used))
            }
            700 => {
                let ((w, h, label), used) = format.decode_prefix::<(u32, u32, String)>(bytes)?;
                Ok((Shape::Rect { w, h, label }, used))
            }
            _ => Err(Error::decode(format.name(), UnknownTag { tag })),
        }
    }
}

type ShapeCodec = Tagged<Bincode>;

fn encode_shape(shape: &Shape) -> Bytes {
    let mut buf = BytesMut::new();
    ShapeCodec::default().encode(shape, &mut buf).unwrap();
    buf.freeze()
}

#[test]
fn tagged_bincode_round_trips_both_variants() {
    for shape in [
        Shape::Circle(2.5),
        Shape::Rect {
            w: 3,
            h: 4,
            label: "box\n".into(),
        },
    ] {
        let frame = encode_shape(&shape);
        let back: Shape = ShapeCodec::default().decode(frame).unwrap();
        assert_eq!(back, shape);
    }
}

#[test]
fn tagged_bincode_writes_the_tag_then_the_fields() {
    let frame = encode_shape(&Shape::Rect {
        w: 3,
        h: 4,
        label: "ab".into(),
    });
    // 700 as a varint (0xFB + u16 LE), then the tuple (3, 4, "ab").
    assert_eq!(&frame[..], &[0xFB, 0xBC, 0x02, 3, 4, 2, b'a', b'b']);
    assert!(Codec::<Shape>::is_binary(&ShapeCodec::default()));
    assert_eq!(Codec::<Shape>::name(&ShapeCodec::default()), "bincode");
}

#[test]
fn tagged_bincode_unknown_tag_is_a_decode_error_naming_the_tag() {
    let mut frame = encode(&42u32).to_vec();
    frame.extend_from_slice(&encode(&(1.0f64,)));
    let result: Result<Shape, Error> = ShapeCodec::default().decode(Bytes::from(frame));
    let source = assert_bincode_decode_error(result);
    assert_eq!(
        source.downcast_ref::<UnknownTag>(),
        Some(&UnknownTag { tag: 42 })
    );
    assert_eq!(source.to_string(), "unknown variant tag 42");
}

#[test]
fn tagged_bincode_trailing_bytes_and_truncation_are_decode_errors() {
    let mut frame = encode_shape(&Shape::Circle(1.0)).to_vec();
    frame.push(0);
    let source = assert_bincode_decode_error::<Shape>(
        ShapeCodec::default().decode(Bytes::from(frame.clone())),
    );
    assert_eq!(
        source.downcast_ref::<TrailingBytes>(),
        Some(&TrailingBytes { trailing: 1 })
    );
    frame.truncate(frame.len() - 2);
    assert_bincode_decode_error::<Shape>(ShapeCodec::default().decode(Bytes::from(frame)));
    assert_bincode_decode_error::<Shape>(ShapeCodec::default().decode(Bytes::new()));
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

fn command_strategy() -> impl Strategy<Value = Command> {
    let leaf = prop_oneof![
        Just(Command::Ping),
        (any::<i32>(), any::<i32>()).prop_map(|(x, y)| Command::Move { x, y }),
        any::<String>().prop_map(Command::Say),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop::collection::vec(inner, 0..4).prop_map(Command::Batch)
    })
}

proptest! {
    #[test]
    fn prop_bincode_round_trips_values(
        id in any::<u64>(),
        sender in any::<String>(),
        tags in prop::collection::vec(any::<String>(), 0..4),
        payload in prop::collection::vec(any::<u8>(), 0..64),
        reply_to in any::<Option<u32>>(),
        command in command_strategy(),
        tuple in any::<(u8, i64, bool, char)>(),
        big in any::<u128>(),
    ) {
        let value = Envelope {
            id,
            sender,
            tags,
            scores: HashMap::new(),
            ordered: BTreeMap::new(),
            payload,
            reply_to,
            command,
            unit: (),
            tuple,
            big,
        };
        prop_assert_eq!(decode::<Envelope>(&encode(&value)).unwrap(), value);
    }

    #[test]
    fn prop_bincode_round_trips_tagged_enums(
        r in any::<f64>().prop_filter("NaN != NaN", |r| !r.is_nan()),
        w in any::<u32>(),
        h in any::<u32>(),
        label in any::<String>(),
    ) {
        for shape in [Shape::Circle(r), Shape::Rect { w, h, label: label.clone() }] {
            let back: Shape = ShapeCodec::default().decode(encode_shape(&shape)).unwrap();
            prop_assert_eq!(back, shape);
        }
    }

    #[test]
    #[ignore = "run alone in a child process by prop_bincode_decode_of_arbitrary_bytes_never_panics_or_allocates_much"]
    fn child_prop_decode_of_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let frame = Bytes::from(bytes);
        let (_, allocated) = allocated_by(|| {
            let _ = Codec::<Envelope>::decode(&BINCODE, frame.clone());
            let _ = Codec::<Vec<Vec<String>>>::decode(&BINCODE, frame.clone());
            let _ = Codec::<Shape>::decode(&ShapeCodec::default(), frame.clone());
        });
        prop_assert!(allocated < 64 * 1024, "allocated {} bytes", allocated);
    }
}

#[tokio::test]
async fn prop_bincode_decode_of_arbitrary_bytes_never_panics_or_allocates_much() {
    crate::child::run(module_path!(), "child_prop_decode_of_arbitrary_bytes").await;
}
