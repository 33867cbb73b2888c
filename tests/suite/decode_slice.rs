//! `Codec::decode_slice` (how connections decode frames in place, in the
//! read buffer, for codecs that copy out) agrees with `Codec::decode` for
//! every built-in codec, on good and bad frames; `copies_out` says which
//! path a connection takes.

use bytes::{Bytes, BytesMut};
use chitchat_net::{Bincode, Codec, Error, Message, PodCodec, Raw, Text};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Sample {
    seq: u64,
    value: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Reading {
    node: u16,
    name: String,
    values: Vec<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, chitchat_net::Message)]
#[message(codec = "bincode")]
enum Command {
    Put { key: String, value: Vec<u8> },
    Get(String),
    Ping,
}

/// Both ways of decoding `frame` give the same value, or errors that read
/// the same.
fn assert_agree<T: PartialEq + std::fmt::Debug + 'static>(codec: &dyn Codec<T>, frame: &[u8]) {
    let by_bytes = codec.decode(Bytes::copy_from_slice(frame));
    let by_slice = codec.decode_slice(frame);
    match (by_bytes, by_slice) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        (a, b) => panic!("decode gave {a:?}, decode_slice gave {b:?}"),
    }
}

fn encoded<T: 'static>(codec: &dyn Codec<T>, value: &T) -> Vec<u8> {
    let mut buf = BytesMut::new();
    codec.encode(value, &mut buf).expect("encode");
    buf.to_vec()
}

#[test]
fn the_built_in_codecs_that_copy_out_say_so() {
    assert!(Codec::<Sample>::copies_out(&PodCodec));
    assert!(Codec::<String>::copies_out(&Text));
    assert!(Codec::<Vec<u8>>::copies_out(&Raw));
    assert!(Codec::<Reading>::copies_out(&Bincode));
    assert!(Codec::<Command>::copies_out(
        &<Command as Message>::Codec::default()
    ));
    // Bytes keep the frame itself: a connection splits it off, no copy.
    assert!(!Codec::<Bytes>::copies_out(&Raw));
}

#[test]
fn both_decodes_agree_on_good_and_bad_frames() {
    let sample = Sample { seq: 7, value: 10 };
    let pod = encoded(&PodCodec, &sample);
    assert_agree::<Sample>(&PodCodec, &pod);
    assert_agree::<Sample>(&PodCodec, &pod[..15]);
    assert_eq!(
        Codec::<Sample>::decode_slice(&PodCodec, &pod).unwrap(),
        sample
    );

    assert_agree::<String>(&Text, "grüße".as_bytes());
    assert_agree::<String>(&Text, &[0xC3, 0x28]);

    assert_agree::<Vec<u8>>(&Raw, &[0, 10, 255]);
    assert_agree::<Bytes>(&Raw, &[0, 10, 255]);

    let reading = Reading {
        node: 3,
        name: "rack-1".into(),
        values: vec![1.5, -2.0],
    };
    let bin = encoded(&Bincode, &reading);
    assert_agree::<Reading>(&Bincode, &bin);
    assert_agree::<Reading>(&Bincode, &bin[..bin.len() - 1]);
    let mut trailing = bin.clone();
    trailing.push(0);
    assert_agree::<Reading>(&Bincode, &trailing);

    let codec = <Command as Message>::Codec::default();
    for command in [
        Command::Put {
            key: "k".into(),
            value: vec![b'\n', 0xFF],
        },
        Command::Get("k".into()),
        Command::Ping,
    ] {
        let frame = encoded(&codec, &command);
        assert_agree::<Command>(&codec, &frame);
        assert_eq!(
            Codec::<Command>::decode_slice(&codec, &frame).unwrap(),
            command
        );
    }
    // An unknown tag names the type in both.
    assert_agree::<Command>(&codec, &[9]);
}

/// A codec of one's own that keeps the default `decode_slice`: it gets a
/// copy of the frame and decodes it with `decode`.
struct Decimal;

impl Codec<u64> for Decimal {
    fn name(&self) -> &'static str {
        "decimal"
    }

    fn is_binary(&self) -> bool {
        false
    }

    fn encode(&self, item: &u64, dst: &mut BytesMut) -> Result<(), Error> {
        dst.extend_from_slice(item.to_string().as_bytes());
        Ok(())
    }

    fn decode(&self, frame: Bytes) -> Result<u64, Error> {
        std::str::from_utf8(&frame)
            .map_err(|e| Error::decode("decimal", e))?
            .parse()
            .map_err(|e| Error::decode("decimal", e))
    }
}

#[test]
fn a_codec_of_ones_own_decodes_slices_through_its_decode() {
    assert!(!Decimal.copies_out());
    assert_eq!(Decimal.decode_slice(b"1234").unwrap(), 1234);
    assert_agree::<u64>(&Decimal, b"12x");
}

proptest! {
    #[test]
    fn any_bytes_decode_alike_both_ways(frame in proptest::collection::vec(any::<u8>(), 0..64)) {
        assert_agree::<Sample>(&PodCodec, &frame);
        assert_agree::<String>(&Text, &frame);
        assert_agree::<Reading>(&Bincode, &frame);
        assert_agree::<Command>(&<Command as Message>::Codec::default(), &frame);
    }
}

#[cfg(feature = "postcard")]
#[test]
fn postcard_decodes_alike_both_ways() {
    use chitchat_net::Postcard;
    let reading = Reading {
        node: 1,
        name: "n".into(),
        values: vec![0.25],
    };
    let frame = encoded(&Postcard, &reading);
    assert!(Codec::<Reading>::copies_out(&Postcard));
    assert_agree::<Reading>(&Postcard, &frame);
    assert_agree::<Reading>(&Postcard, &frame[..frame.len() - 1]);
}
