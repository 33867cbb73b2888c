//! `PodCodec`: plain old data written as its bytes.

use bytes::{BufMut, Bytes, BytesMut};
use chitchat_net::{Codec, Error, FrameCodec, Framing, PodCodec, SizeMismatch};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Sample {
    id: u32,
    flags: u16,
    kind: u8,
    level: u8,
    value: f64,
    history: [i16; 4],
}

fn sample() -> Sample {
    Sample {
        id: 0x0A0A_FF0A,
        flags: 0xFEDF,
        kind: b'\n',
        level: 0xFF,
        value: -1.5e300,
        history: [-1, 0, 10, i16::MAX],
    }
}

fn encode<T: bytemuck::Pod + Send + Sync>(value: &T) -> BytesMut {
    let mut buf = BytesMut::new();
    PodCodec.encode(value, &mut buf).unwrap();
    buf
}

fn decode<T: bytemuck::Pod + Send + Sync>(frame: Bytes) -> Result<T, Error> {
    PodCodec.decode(frame)
}

fn assert_size_mismatch(
    result: Result<impl std::fmt::Debug, Error>,
    expected: usize,
    actual: usize,
) {
    match result {
        Err(Error::Decode { codec, source, .. }) => {
            assert_eq!(codec, "pod");
            let mismatch = source
                .downcast_ref::<SizeMismatch>()
                .unwrap_or_else(|| panic!("source is not SizeMismatch: {source:?}"));
            assert_eq!(*mismatch, SizeMismatch { expected, actual });
        }
        other => panic!("expected a pod decode error, got {other:?}"),
    }
}

#[test]
fn pod_struct_round_trips_as_its_in_memory_bytes() {
    let value = sample();
    let buf = encode(&value);
    assert_eq!(buf.len(), std::mem::size_of::<Sample>());
    assert_eq!(&buf[..], bytemuck::bytes_of(&value));
    assert_eq!(decode::<Sample>(buf.freeze()).unwrap(), value);
}

#[test]
fn pod_primitives_and_arrays_round_trip() {
    assert_eq!(decode::<u64>(encode(&u64::MAX).freeze()).unwrap(), u64::MAX);
    assert_eq!(decode::<i8>(encode(&-5i8).freeze()).unwrap(), -5);
    let array = [0xFFu8, 0x0A, 0x00, 0xDF, 0xFE, 0x0D];
    assert_eq!(decode::<[u8; 6]>(encode(&array).freeze()).unwrap(), array);
    let floats = [1.0f32, f32::MIN_POSITIVE, -0.0];
    let back = decode::<[f32; 3]>(encode(&floats).freeze()).unwrap();
    assert_eq!(back.map(f32::to_bits), floats.map(f32::to_bits));
}

#[test]
fn pod_encode_appends_to_what_dst_holds() {
    let mut buf = BytesMut::from(&b"head"[..]);
    PodCodec.encode(&7u32, &mut buf).unwrap();
    assert_eq!(&buf[..4], b"head");
    assert_eq!(&buf[4..], 7u32.to_ne_bytes());
}

#[test]
fn pod_frame_of_the_wrong_size_is_a_size_mismatch() {
    let size = std::mem::size_of::<Sample>();
    let full = encode(&sample()).freeze();
    assert_size_mismatch(decode::<Sample>(full.slice(..size - 1)), size, size - 1);
    assert_size_mismatch(decode::<Sample>(Bytes::new()), size, 0);
    let mut long = BytesMut::from(&full[..]);
    long.put_u8(0);
    assert_size_mismatch(decode::<Sample>(long.freeze()), size, size + 1);
    assert_size_mismatch(decode::<u32>(Bytes::from_static(b"\0\0\0")), 4, 3);
}

#[test]
fn pod_size_mismatch_is_a_per_frame_error_with_a_readable_message() {
    let err = decode::<u64>(Bytes::from_static(b"abc")).unwrap_err();
    assert!(!err.is_fatal());
    assert_eq!(
        err.to_string(),
        "pod decode failed: frame of 3 bytes, expected 8"
    );
    let source = std::error::Error::source(&err).unwrap();
    assert_eq!(source.to_string(), "frame of 3 bytes, expected 8");
}

#[test]
fn pod_frame_at_an_unaligned_address_decodes() {
    let value = sample();
    let align = std::mem::align_of::<Sample>();
    assert!(align > 1);
    let mut misaligned_seen = false;
    for offset in 0..align {
        let mut buf = BytesMut::new();
        buf.put_bytes(0xAA, offset);
        PodCodec.encode(&value, &mut buf).unwrap();
        let frame = buf.freeze().slice(offset..);
        misaligned_seen |= !(frame.as_ptr() as usize).is_multiple_of(align);
        assert_eq!(decode::<Sample>(frame).unwrap(), value, "offset {offset}");
    }
    assert!(misaligned_seen, "no offset gave an unaligned frame");
}

#[test]
fn pod_frame_sliced_at_offset_one_decodes() {
    let mut buf = BytesMut::new();
    buf.put_u8(0);
    PodCodec
        .encode(&0x0102_0304_0506_0708u64, &mut buf)
        .unwrap();
    let frame = buf.freeze().slice(1..);
    assert_eq!(decode::<u64>(frame).unwrap(), 0x0102_0304_0506_0708);
}

#[test]
fn pod_codec_is_binary_and_named_pod() {
    assert!(Codec::<u32>::is_binary(&PodCodec));
    assert_eq!(Codec::<u32>::name(&PodCodec), "pod");
}

#[test]
fn pod_values_holding_delimiter_bytes_cross_auto_framing() {
    // A binary codec resolves Auto to escaped mode: the 0x0A and 0xFF bytes in
    // the value cannot split or corrupt its frame.
    let framing = Framing::lines().resolve(Codec::<Sample>::is_binary(&PodCodec));
    let mut codec = FrameCodec::new(framing);
    let mut wire = BytesMut::new();
    for value in [sample(), sample()] {
        codec
            .encode_with(&mut wire, |dst| PodCodec.encode(&value, dst))
            .unwrap();
    }
    for _ in 0..2 {
        let frame = codec.decode(&mut wire).unwrap().unwrap();
        assert_eq!(decode::<Sample>(frame).unwrap(), sample());
    }
    assert!(wire.is_empty());
}

#[test]
fn pod_frame_too_short_after_framing_is_a_decode_error_not_a_panic() {
    let mut codec = FrameCodec::new(Framing::length_prefixed());
    let mut wire = BytesMut::new();
    codec.encode(&b"\x01\x02"[..], &mut wire).unwrap();
    let frame = codec.decode(&mut wire).unwrap().unwrap();
    assert_size_mismatch(decode::<u32>(frame), 4, 2);
}

proptest! {
    #[test]
    fn prop_pod_struct_round_trips(
        id in any::<u32>(),
        flags in any::<u16>(),
        kind in any::<u8>(),
        level in any::<u8>(),
        value in any::<f64>(),
        history in any::<[i16; 4]>(),
        offset in 0usize..16,
    ) {
        let original = Sample { id, flags, kind, level, value, history };
        let mut buf = BytesMut::new();
        buf.put_bytes(0, offset);
        PodCodec.encode(&original, &mut buf).unwrap();
        let back: Sample = PodCodec.decode(buf.freeze().slice(offset..)).unwrap();
        // Compare bytes: NaN != NaN.
        prop_assert_eq!(bytemuck::bytes_of(&back), bytemuck::bytes_of(&original));
    }

    #[test]
    fn prop_pod_decode_accepts_exactly_the_type_size(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
        let result: Result<[u32; 4], Error> = PodCodec.decode(Bytes::from(bytes.clone()));
        if bytes.len() == 16 {
            let value = result.unwrap();
            prop_assert_eq!(bytemuck::cast_slice::<u32, u8>(&value), &bytes[..]);
        } else {
            let is_mismatch = matches!(
                &result,
                Err(Error::Decode { codec: "pod", source, .. })
                    if source.downcast_ref::<SizeMismatch>()
                        == Some(&SizeMismatch { expected: 16, actual: bytes.len() })
            );
            prop_assert!(is_mismatch, "{:?}", result);
        }
    }
}
